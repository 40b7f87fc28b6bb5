"""Canonical strided form and the host pack engine, checked against the
system MPI's own MPI_Pack/MPI_Unpack (mpi4py Datatype.Pack/Unpack)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

import pyhpc
from pyhpc import datatype as dt

LEAVES = [MPI.BYTE, MPI.SHORT, MPI.INT, MPI.FLOAT, MPI.DOUBLE, MPI.INT64_T, MPI.C_DOUBLE_COMPLEX]


class Types:
    """Creates datatypes and frees every one of them afterwards."""

    def __init__(self):
        self.made = []

    def keep(self, t):
        self.made.append(t)
        return t

    def free(self):
        for t in reversed(self.made):
            t.Free()
        self.made.clear()


@pytest.fixture
def types():
    made = Types()
    yield made
    made.free()


@pytest.fixture(params=["vector", "scalar"])
def host_path(request):
    """Runs a test on the host engine's vector path (where the CPU has one)
    and on its portable scalar loops; the packed bytes must not differ."""
    from pyhpc import _mpi

    before = _mpi.host_simd() != "scalar"
    if request.param == "vector" and _mpi.host_simd(True) == "scalar":
        _mpi.host_simd(before)
        pytest.skip("this CPU has no vector path for the host engine (AVX-512 VBMI)")
    if request.param == "scalar":
        _mpi.host_simd(False)
    yield request.param
    _mpi.host_simd(before)


def mpi_pack(t, buf, count):
    # mpi4py's Datatype.Pack takes count = len(inbuf) // extent: hand it a view
    # of count extents (the data may reach past it, into the rest of buf).
    extent = t.Get_extent()[1]
    out = np.empty(t.Pack_size(count, MPI.COMM_SELF), dtype=np.uint8)
    position = t.Pack(buf[:count * extent], out, 0, MPI.COMM_SELF)
    return out[:position]


def describe_type(t) -> str:
    """The constructor tree of t, for failure messages."""
    if t.is_predefined:
        return t.Get_name() or "predefined"
    base, combiner, params = t.decode()
    try:
        return f"{combiner}({describe_type(base)}, {params})"
    finally:
        if not base.is_predefined:
            base.Free()


def type_map(t) -> list[tuple[int, int]]:
    """(displacement, size) of each contiguous piece of one element, in type-map
    order, computed from the MPI standard's definitions in plain Python: an
    oracle independent of both pyhpc's C++ and the system MPI's packing."""
    if t.is_predefined:
        return [(0, t.Get_size())]
    base, combiner, p = t.decode()
    try:
        inner, ext = type_map(base), base.Get_extent()[1]
    finally:
        if not base.is_predefined:
            base.Free()

    def at(offsets):
        return [(o + d, n) for o in offsets for d, n in inner]

    name = combiner.replace("MPI_COMBINER_", "").lower()
    if name in ("dup", "resized"):
        return inner
    if name == "contiguous":
        return at(i * ext for i in range(p["count"]))
    if name in ("vector", "hvector"):
        step = p["stride"] * (ext if name == "vector" else 1)
        return at(i * step + j * ext for i in range(p["count"]) for j in range(p["blocklength"]))
    if name in ("indexed_block", "hindexed_block", "indexed", "hindexed"):
        unit = ext if name in ("indexed_block", "indexed") else 1
        lengths = p.get("blocklengths") or [p["blocklength"]] * len(p["displacements"])
        return at(d * unit + j * ext for d, n in zip(p["displacements"], lengths) for j in range(n))
    if name == "subarray":
        sizes, subs, starts = p["sizes"], p["subsizes"], p["starts"]
        fortran = p["order"] == MPI.ORDER_FORTRAN
        dims = list(range(len(sizes)))[::-1] if fortran else list(range(len(sizes)))
        strides, acc = [0] * len(sizes), ext
        for k in reversed(dims):  # fastest-varying dimension gets the element extent
            strides[k], acc = acc, acc * sizes[k]
        offsets = [0]
        for k in dims:  # slowest first: the order elements appear in the type map
            offsets = [o + (starts[k] + i) * strides[k] for o in offsets for i in range(subs[k])]
        return at(offsets)
    raise AssertionError(f"oracle does not know {combiner}")


def oracle_pack(t, buf, count) -> bytes:
    extent = t.Get_extent()[1]
    pieces = type_map(t)
    return b"".join(buf[i * extent + d: i * extent + d + n].tobytes()
                    for i in range(count) for d, n in pieces)


# System MPIs found packing against the standard (kept, not hidden: a test
# asserts pyhpc follows the standard there).
MPI_LIBRARY = MPI.Get_library_version()
OPEN_MPI_5 = MPI_LIBRARY.startswith("Open MPI v5")


def check_against_mpi(t, count, rng, mpi_bugs=None):
    """pyhpc packs and unpacks exactly as the system MPI does, and as the
    standard says (the Python oracle). If the system MPI itself departs from
    the oracle, pyhpc must follow the oracle; the case is appended to mpi_bugs."""
    true_lb, true_extent = t.Get_true_extent()
    extent = t.Get_extent()[1]
    nbytes = 0 if t.Get_size() == 0 or count == 0 else true_lb + true_extent + (count - 1) * extent
    # At least count extents too: mpi4py derives the count from the buffer's length.
    buf = rng.integers(0, 256, size=max(nbytes, count * extent, 1), dtype=np.uint8)
    ours = dt.pack(buf, t, count)
    if t.Get_size() == 0 or extent <= 0 or count == 0:
        assert ours.nbytes == 0
        return
    theirs = mpi_pack(t, buf, count)
    if mpi_bugs is not None and len(type_map(t)) * count <= 100_000:
        expected = oracle_pack(t, buf, count)
        assert ours.tobytes() == expected, (describe_type(t), count, str(dt.canonicalize(t)))
        if theirs.tobytes() != expected:
            mpi_bugs.append(describe_type(t))
            return
    assert ours.tobytes() == theirs.tobytes(), (describe_type(t), count, str(dt.canonicalize(t)))
    mine, reference = np.zeros_like(buf), np.zeros_like(buf)
    dt.unpack(theirs, mine, t, count)
    t.Unpack(theirs, 0, reference[:count * extent], MPI.COMM_SELF)
    assert mine.tobytes() == reference.tobytes()


# ---- known forms -------------------------------------------------------------

def test_named_type_is_one_run():
    c = dt.canonicalize(MPI.DOUBLE)
    assert (c.offset, c.block, c.counts, c.size, c.extent) == (0, 8, (), 8, 8)


def test_vector_keeps_its_loop(types):
    t = types.keep(MPI.INT.Create_vector(3, 2, 5).Commit())
    c = dt.canonicalize(t)
    assert (c.offset, c.block, c.counts, c.strides) == (0, 8, (3,), (20,))
    assert str(c) == "offset 0 B: 3 runs of 8 B, strides (20,) B; size 24 B, extent 48 B"


def test_contiguous_folds_into_the_block(types):
    five = types.keep(MPI.DOUBLE.Create_contiguous(5))
    t = types.keep(five.Create_vector(2, 1, 1).Commit())
    c = dt.canonicalize(t)
    assert (c.block, c.counts) == (80, ())


def test_subarray_c_and_fortran_order(types):
    rng = np.random.default_rng(0)
    tc = types.keep(MPI.DOUBLE.Create_subarray([8, 8, 8], [2, 3, 4], [1, 2, 3]).Commit())
    c = dt.canonicalize(tc)
    assert (c.offset, c.block, c.counts, c.strides) == ((64 + 16 + 3) * 8, 32, (2, 3), (512, 64))
    tf = types.keep(MPI.FLOAT.Create_subarray([4, 5, 6], [2, 2, 3], [1, 0, 2],
                                              order=MPI.ORDER_FORTRAN).Commit())
    f = dt.canonicalize(tf)
    assert (f.block, f.counts, f.strides) == (8, (3, 2), (80, 16))
    check_against_mpi(tc, 2, rng)
    check_against_mpi(tf, 3, rng)


def test_decreasing_displacements_keep_type_map_order(types):
    # Displacements 12, 8, 4, 0: MPI packs the element at 12 first. A form that
    # sorted its dimensions by stride would pack them in the opposite order.
    t = types.keep(MPI.INT.Create_indexed_block(1, [12, 8, 4, 0]).Commit())
    c = dt.canonicalize(t)
    assert (c.offset, c.counts, c.strides) == (48, (4,), (-16,))
    check_against_mpi(t, 2, np.random.default_rng(1))


def test_merging_keeps_order_and_drops_unit_dims(types):
    inner = types.keep(MPI.BYTE.Create_vector(4, 2, 3))   # runs of 2 every 3 bytes
    outer = types.keep(MPI.Datatype.Create_hvector(inner, 5, 1, 12).Commit())  # span 12 = 4 * 3
    c = dt.canonicalize(outer)
    assert (c.block, c.counts, c.strides) == (2, (20,), (3,))


def test_resized_changes_only_the_spacing_of_elements(types):
    base = types.keep(MPI.INT.Create_vector(2, 1, 2))
    t = types.keep(base.Create_resized(0, 32).Commit())
    c = dt.canonicalize(t)
    assert (c.block, c.counts, c.strides, c.extent) == (4, (2,), (8,), 32)
    check_against_mpi(t, 3, np.random.default_rng(2))


@pytest.mark.parametrize("make,why", [
    (lambda: MPI.Datatype.Create_struct([1, 1], [0, 8], [MPI.INT, MPI.DOUBLE]), "struct"),
    (lambda: MPI.INT.Create_indexed([1, 2], [0, 4]), "block lengths"),
    (lambda: MPI.INT.Create_indexed_block(1, [0, 3, 4]), "constant step"),
])
def test_types_without_a_strided_form_say_why(types, make, why):
    t = types.keep(make().Commit())
    with pytest.raises(pyhpc.UnsupportedError, match=why):
        dt.canonicalize(t)


def test_padded_pair_type_is_unsupported():
    with pytest.raises(pyhpc.UnsupportedError, match="gaps"):
        dt.canonicalize(MPI.DOUBLE_INT)


# ---- bad input -------------------------------------------------------------------

def test_bad_arguments_name_themselves(types):
    t = types.keep(MPI.INT.Create_vector(3, 1, 4).Commit())
    buf = np.zeros(64, dtype=np.uint8)
    with pytest.raises(pyhpc.InvalidArgumentError, match="datatype"):
        dt.pack(buf, "MPI_INT")
    with pytest.raises(pyhpc.InvalidArgumentError, match="datatype"):
        dt.pack(buf, MPI.DATATYPE_NULL)
    with pytest.raises(pyhpc.InvalidArgumentError, match="count"):
        dt.pack(buf, t, -1)
    with pytest.raises(pyhpc.InvalidArgumentError, match="buf: the datatype touches bytes"):
        dt.pack(buf, t, 2)  # needs 88 bytes
    with pytest.raises(pyhpc.InvalidArgumentError, match="out"):
        dt.pack(buf, t, 1, out=np.empty(4, dtype=np.uint8))
    with pytest.raises(pyhpc.InvalidArgumentError, match="read-only"):
        dt.unpack(np.zeros(12, np.uint8), bytes(64), t)
    with pytest.raises(pyhpc.InvalidArgumentError, match="C-contiguous"):
        dt.pack(np.zeros((8, 8), np.uint8)[:, ::2], t)
    with pytest.raises(pyhpc.InvalidArgumentError, match="packed"):
        dt.unpack(np.zeros(4, np.uint8), buf, t)


def test_count_zero_and_empty_types_pack_nothing(types):
    t = types.keep(MPI.INT.Create_vector(0, 1, 4).Commit())
    assert dt.canonicalize(t).size == 0
    assert dt.pack(np.zeros(8, np.uint8), t, 3).nbytes == 0
    assert dt.pack(np.zeros(8, np.uint8), MPI.INT, 0).nbytes == 0


# ---- property-based: random nested types against MPI_Pack -------------------------

@st.composite
def nested_type(draw, types: Types, depth: int = 3):
    """A random datatype built from the constructors with a strided form
    (and some without), nested up to `depth` levels, all displacements >= 0."""
    kinds = ["contiguous", "vector", "hvector", "indexed_block", "hindexed_block", "indexed",
             "subarray", "resized", "dup"]
    kind = draw(st.sampled_from(["leaf"] + kinds)) if depth > 0 else "leaf"
    if kind == "leaf":
        return draw(st.sampled_from(LEAVES))
    old = draw(nested_type(types, depth - 1))
    ext = old.Get_extent()[1]
    small = st.integers(0, 4)
    if kind == "contiguous":
        return types.keep(old.Create_contiguous(draw(small)))
    if kind == "vector":
        bl = draw(st.integers(1, 3))
        return types.keep(old.Create_vector(draw(small), bl, draw(st.integers(bl, bl + 3))))
    if kind == "hvector":
        bl = draw(st.integers(1, 3))
        stride = bl * ext + draw(st.integers(0, 16))
        return types.keep(old.Create_hvector(draw(small), bl, stride))
    if kind in ("indexed_block", "hindexed_block", "indexed"):
        n = draw(st.integers(1, 4))
        bl = draw(st.integers(1, 3))
        unit = ext if kind == "hindexed_block" else 1  # hindexed_block counts bytes
        step = draw(st.integers(bl, bl + 4)) * unit
        start = draw(st.integers(0, 2)) * unit
        order = reversed(range(n)) if draw(st.booleans()) else range(n)  # decreasing: order must hold
        displs = [start + i * step for i in order]
        if draw(st.integers(0, 9)) == 0 and n > 2:
            displs[-1] += 1  # irregular now: must be reported unsupported, never packed wrong
        if kind == "indexed_block":
            return types.keep(old.Create_indexed_block(bl, displs))
        if kind == "hindexed_block":
            return types.keep(old.Create_hindexed_block(bl, displs))
        return types.keep(old.Create_indexed([bl] * n, displs))
    if kind == "subarray":
        nd = draw(st.integers(1, 3))
        sizes = [draw(st.integers(1, 5)) for _ in range(nd)]
        subsizes = [draw(st.integers(1, s)) for s in sizes]
        starts = [draw(st.integers(0, s - ss)) for s, ss in zip(sizes, subsizes)]
        order = draw(st.sampled_from([MPI.ORDER_C, MPI.ORDER_FORTRAN]))
        return types.keep(old.Create_subarray(sizes, subsizes, starts, order=order))
    if kind == "resized":
        return types.keep(old.Create_resized(0, ext + draw(st.integers(0, 24))))
    return types.keep(old.Dup())


def test_random_nested_types_pack_like_mpi(host_path):
    seen = {"supported": 0, "unsupported": 0}

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def packs_like_mpi(data):
        made = Types()
        try:
            t = made.keep(data.draw(nested_type(made)).Dup().Commit())
            count = data.draw(st.integers(0, 3))
            assume(t.Get_true_extent()[0] >= 0)
            try:
                dt.canonicalize(t)
            except pyhpc.UnsupportedError:
                seen["unsupported"] += 1
                return
            seen["supported"] += 1
            check_against_mpi(t, count, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))),
                              mpi_bugs)
        finally:
            made.free()

    mpi_bugs: list[str] = []
    packs_like_mpi()
    # The property must not hold vacuously: most random types have a strided form.
    assert seen["supported"] > 1000 and seen["unsupported"] > 0, seen
    # The only departure from the standard known in a system MPI: see the test below.
    unexplained = [b for b in mpi_bugs if not (OPEN_MPI_5 and "MPI_C_DOUBLE_COMPLEX" in b)]
    assert not unexplained, unexplained


def test_open_mpi_5_resized_double_complex_bug_is_not_copied(types):
    # resized(MPI_C_DOUBLE_COMPLEX, extent 20) with displacements [0, 2]: the
    # standard puts the second element at 2 * 20 = 40 bytes. MPICH 5.0 and Open
    # MPI 4.1 pack it from 40; Open MPI 5.0.11 packs it from 32 (extent 16, the
    # resize ignored). pyhpc follows the standard on every MPI.
    r = types.keep(MPI.C_DOUBLE_COMPLEX.Create_resized(0, 20))
    t = types.keep(r.Create_indexed_block(1, [0, 2]).Commit())
    buf = np.arange(80, dtype=np.uint8)
    ours = dt.pack(buf, t)
    assert ours.tolist() == list(range(16)) + list(range(40, 56))
    assert ours.tobytes() == oracle_pack(t, buf, 1)
    theirs = mpi_pack(t, buf, 1)
    if OPEN_MPI_5:
        assert theirs.tolist()[16] == 32, "Open MPI 5 fixed the bug: drop this special case"
    else:
        assert theirs.tobytes() == ours.tobytes()


# ---- sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("block,count", [(1, 1 << 20), (8, 1 << 18), (4096, 1 << 12)])
def test_large_vectors_pack_like_mpi(types, block, count):
    t = types.keep(MPI.BYTE.Create_vector(count, block, block + 3).Commit())
    check_against_mpi(t, 1, np.random.default_rng(block))


# ---- the host engine's vector and scalar paths -----------------------------------

def check_gaps_kept(t, count, rng):
    """Packs like MPI_Pack, and unpacks like MPI_Unpack into a buffer full of
    other bytes: the gaps between runs keep their bytes (no read-modify-write
    of bytes outside the type)."""
    extent = t.Get_extent()[1]
    buf = rng.integers(0, 256, size=max(count * extent, 1), dtype=np.uint8)
    theirs = mpi_pack(t, buf, count)
    assert dt.pack(buf, t, count).tobytes() == theirs.tobytes(), (describe_type(t), count)
    background = rng.integers(0, 256, size=buf.size, dtype=np.uint8)
    mine, reference = background.copy(), background.copy()
    dt.unpack(theirs, mine, t, count)
    t.Unpack(theirs, 0, reference[:count * extent], MPI.COMM_SELF)
    assert mine.tobytes() == reference.tobytes(), (describe_type(t), count)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 31, 32, 33, 63, 64, 65, 100, 256, 1000])
def test_vectors_of_every_block_and_stride_pack_like_mpi(types, host_path, block):
    # Strides from touching runs to past one 64-byte window, counts across
    # whole windows and partial last ones, the data at odd offsets.
    rng = np.random.default_rng(block)
    for gap in sorted({0, 1, 2, block, 3 * block, 64 - block if block < 64 else 5, 70}):
        for count in (1, 2, 5, 31, 64, 65, 200):
            v = types.keep(MPI.BYTE.Create_vector(count, block, block + gap))
            t = types.keep(v.Create_resized(0, v.Get_extent()[1] + 3).Commit())
            check_gaps_kept(t, 3, rng)


def test_short_rows_inside_outer_loops_pack_like_mpi(types, host_path):
    # Nested hvectors whose innermost rows hold fewer runs than one window.
    rng = np.random.default_rng(7)
    for inner_count, outer_stride in ((3, 64), (8, 64), (8, 33), (20, 200)):
        inner = types.keep(MPI.SHORT.Create_vector(inner_count, 1, 2))
        mid = types.keep(inner.Create_hvector(5, 1, outer_stride))
        t = types.keep(mid.Create_hvector(3, 1, 5 * outer_stride + 16).Commit())
        check_gaps_kept(t, 2, rng)
    sub = types.keep(MPI.FLOAT.Create_subarray([6, 7, 9], [3, 4, 5], [1, 2, 3]).Commit())
    check_gaps_kept(sub, 2, rng)


# ---- across ranks ------------------------------------------------------------------------

@pytest.mark.mpi(min_size=2)
def test_pyhpc_packed_bytes_unpack_with_mpi_on_another_rank(comm, types):
    t = types.keep(MPI.DOUBLE.Create_subarray([6, 7, 8], [3, 2, 5], [2, 4, 1]).Commit())
    src = np.arange(6 * 7 * 8, dtype=np.float64) + 1000 * comm.rank
    if comm.rank == 0:
        comm.Send(dt.pack(src, t), dest=1, tag=7)
    elif comm.rank == 1:
        got = np.zeros(6 * 7 * 8, dtype=np.float64)
        comm.Recv([got, 1, t], source=0, tag=7)
        expected = np.zeros_like(got)
        view = expected.reshape(6, 7, 8)
        view[2:5, 4:6, 1:6] = (np.arange(6 * 7 * 8, dtype=np.float64)).reshape(6, 7, 8)[2:5, 4:6, 1:6]
        assert np.array_equal(got, expected)
    comm.Barrier()
