"""pyhpc's CUDA pack engine (pyhpc.datatype.pack/unpack on cupy arrays),
checked byte for byte against the host engine and the system MPI's
MPI_Pack/MPI_Unpack. All but the first two tests need a GPU and cupy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

# The project runs its tests from tests/ in pytest's default (prepend) import
# mode, so the host suite's helpers import as a module: one random type
# generator and one MPI_Pack wrapper for both engines.
from test_datatype import OPEN_MPI_5, Types, describe_type, mpi_pack, nested_type, type_map

import pyhpc
from pyhpc import _mpi, cuda
from pyhpc import datatype as dt


class FakeDeviceArray:
    """Claims to be a cupy array the way pyhpc tells them apart (its type's
    module), without cupy or a GPU."""

    __module__ = "cupy._fake"


@pytest.fixture
def types():
    made = Types()
    yield made
    made.free()


@pytest.fixture
def cp():
    module = cuda.cupy()
    if module is None:
        pytest.skip("cupy is not installed")
    return module


# ---- without a GPU: routing and errors -------------------------------------------

def test_mixing_host_and_device_buffers_names_the_argument():
    host = np.zeros(16, np.uint8)
    with pytest.raises(pyhpc.InvalidArgumentError,
                       match=r"^out: a device \(cupy\) array, but buf is a host buffer"):
        dt.pack(host, MPI.INT, out=FakeDeviceArray())
    with pytest.raises(pyhpc.InvalidArgumentError,
                       match=r"^out: a host buffer, but buf is a device \(cupy\) array"):
        dt.pack(FakeDeviceArray(), MPI.INT, out=host)
    with pytest.raises(pyhpc.InvalidArgumentError,
                       match=r"^buf: a host buffer, but packed is a device \(cupy\) array"):
        dt.unpack(FakeDeviceArray(), host, MPI.INT)
    with pytest.raises(pyhpc.InvalidArgumentError,
                       match=r"^buf: a device \(cupy\) array, but packed is a host buffer"):
        dt.unpack(host, FakeDeviceArray(), MPI.INT)


def test_device_buffers_need_cuda_and_cupy(monkeypatch):
    # As on a build without CUDA (the Open MPI CI build, any machine without nvcc).
    monkeypatch.setattr(cuda, "extension", lambda: None)
    with pytest.raises(pyhpc.UnsupportedError, match=r"^buf: .*built without CUDA"):
        dt.pack(FakeDeviceArray(), MPI.INT)
    with pytest.raises(pyhpc.UnsupportedError, match=r"^packed: .*built without CUDA"):
        dt.unpack(FakeDeviceArray(), FakeDeviceArray(), MPI.INT)
    # Built with CUDA but cupy missing.
    monkeypatch.setattr(cuda, "extension", lambda: object())
    monkeypatch.setattr(cuda, "cupy", lambda: None)
    with pytest.raises(pyhpc.UnsupportedError, match=r"^buf: .*cupy cannot be imported"):
        dt.pack(FakeDeviceArray(), MPI.INT)


# ---- helpers ------------------------------------------------------------------

def to_device(cp, host: np.ndarray, shift: int = 0):
    """host's bytes in a device array whose first byte lies `shift` bytes past a
    fresh (256-byte-aligned) allocation: a C-contiguous view, as a caller's
    slice would be."""
    whole = cp.zeros(host.nbytes + shift, dtype=cp.uint8)
    view = whole[shift:]
    view[...] = cp.asarray(host.view(np.uint8).reshape(-1))
    return view


def overlaps(t, count: int, nbytes: int) -> bool:
    """Whether count elements of t visit some byte twice (the standard's type
    map, not pyhpc's): unpacking such a type is undefined on the GPU."""
    extent = t.Get_extent()[1]
    hits = np.zeros(max(nbytes, 1), dtype=np.int32)
    for i in range(count):
        for d, n in type_map(t):
            hits[i * extent + d: i * extent + d + n] += 1
    return bool((hits > 1).any())


def check_gpu(cp, t, count: int, rng, *, shift: int = 0, out_shift: int = 0, mpi: bool = True,
              unpack: bool = True) -> None:
    """GPU pack == host engine pack == MPI_Pack, and GPU unpack == host engine
    unpack == MPI_Unpack, with the device buffer `shift` bytes and the packed
    device buffer `out_shift` bytes past an aligned address."""
    true_lb, true_extent = t.Get_true_extent()
    extent = t.Get_extent()[1]
    empty = t.Get_size() == 0 or count == 0
    nbytes = 0 if empty else true_lb + true_extent + (count - 1) * extent
    # At least count extents too: mpi4py derives the count from the buffer's length.
    host = rng.integers(0, 256, size=max(nbytes, count * extent, 1), dtype=np.uint8)
    what = (describe_type(t), count, shift, out_shift)

    expected = dt.pack(host, t, count)  # the host engine
    dev = to_device(cp, host, shift)
    if out_shift:
        out = cp.zeros(expected.nbytes + out_shift, dtype=cp.uint8)[out_shift:]
        got = dt.pack(dev, t, count, out=out)
        assert got is out
    else:
        got = dt.pack(dev, t, count)
    assert isinstance(got, cp.ndarray) and got.dtype == cp.uint8 and got.shape == (expected.nbytes,)
    assert got.get().tobytes() == expected.tobytes(), what
    assert dev.get().tobytes() == host.tobytes(), what  # pack only reads

    if empty:
        assert expected.nbytes == 0
        untouched = to_device(cp, host, shift)
        assert dt.unpack(got, untouched, t, count) is untouched
        assert untouched.get().tobytes() == host.tobytes()
        return
    mpi = mpi and extent > 0
    if mpi:
        assert mpi_pack(t, host, count).tobytes() == expected.tobytes(), what
    if not unpack:
        return

    packed = to_device(cp, expected, out_shift)
    mine = to_device(cp, np.zeros_like(host), shift)
    assert dt.unpack(packed, mine, t, count) is mine
    reference = np.zeros_like(host)
    dt.unpack(expected, reference, t, count)
    assert mine.get().tobytes() == reference.tobytes(), what
    if mpi:
        theirs = np.zeros_like(host)
        t.Unpack(expected, 0, theirs[:count * extent], MPI.COMM_SELF)
        assert theirs.tobytes() == reference.tobytes(), what


# ---- shapes -----------------------------------------------------------------------

VECTOR_BLOCKS = [1, 2, 3, 4, 8, 12, 16, 32, 1024]


@pytest.mark.gpu
@pytest.mark.parametrize("block", VECTOR_BLOCKS)
@pytest.mark.parametrize("gap", ["aligned", "odd"])
def test_byte_vectors_by_block_size(cp, types, block, gap):
    # aligned: stride 2 * block keeps the block's own alignment, so the widest
    # word the block allows is used; odd: stride block + 1 forces 1-byte words.
    stride = 2 * block if gap == "aligned" else block + 1
    t = types.keep(MPI.BYTE.Create_vector(37, block, stride).Commit())
    rng = np.random.default_rng(block)
    for count in (1, 3):
        check_gpu(cp, t, count, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("block,nblocks,stride", [
    (1, 1 << 21, 3),      # more words than the grid has threads: the grid-stride loop turns
    (12, 1 << 18, 16),    # three 4-byte words per run
    (16, 1 << 20, 48),    # 16-byte words
    (1024, 4096, 2048),   # long runs
])
def test_large_vectors(cp, types, block, nblocks, stride):
    t = types.keep(MPI.BYTE.Create_vector(nblocks, block, stride).Commit())
    check_gpu(cp, t, 1, np.random.default_rng(nblocks))


SUBARRAYS = [  # (constructor, number of dimensions of its canonical form)
    (lambda: MPI.DOUBLE.Create_subarray([10, 12], [4, 5], [3, 2], order=MPI.ORDER_FORTRAN), 1),
    (lambda: MPI.DOUBLE.Create_subarray([8, 8, 8], [2, 3, 4], [1, 2, 3]), 2),
    (lambda: MPI.FLOAT.Create_subarray([4, 5, 6], [2, 2, 3], [1, 0, 2], order=MPI.ORDER_FORTRAN), 2),
    (lambda: MPI.BYTE.Create_subarray([5, 6, 7, 8], [2, 3, 4, 5], [1, 2, 3, 1]), 3),
    (lambda: MPI.SHORT.Create_subarray([5, 6, 7, 8], [2, 3, 4, 5], [3, 2, 1, 0],
                                       order=MPI.ORDER_FORTRAN), 3),
    (lambda: MPI.INT.Create_subarray([3, 4, 5, 6, 7], [2, 2, 3, 3, 4], [1, 1, 1, 2, 3]), 4),
    (lambda: MPI.BYTE.Create_subarray([3] * 8, [2] * 8, [1, 0] * 4), 7),
]


@pytest.mark.gpu
@pytest.mark.parametrize("make,ndims", SUBARRAYS)
def test_subarrays_c_and_fortran(cp, types, make, ndims):
    # Every kernel shape: 1, 2 and 3 dimensions, then the generic one (4, 7
    # and, with count 2, 8 dimensions).
    t = types.keep(make().Commit())
    assert dt.canonicalize(t).ndims == ndims
    rng = np.random.default_rng(ndims)
    for count in (1, 2):
        check_gpu(cp, t, count, rng)


@pytest.mark.gpu
def test_nested_hvector(cp, types):
    inner = types.keep(MPI.INT.Create_vector(3, 2, 4))
    mid = types.keep(MPI.Datatype.Create_hvector(inner, 4, 1, 100))
    t = types.keep(MPI.Datatype.Create_hvector(mid, 3, 1, 512).Commit())
    c = dt.canonicalize(t)
    assert (c.block, c.counts, c.strides) == (8, (3, 4, 3), (512, 100, 16))
    rng = np.random.default_rng(3)
    for count in (1, 2, 5):
        check_gpu(cp, t, count, rng)


@pytest.mark.gpu
@pytest.mark.parametrize("shift", [0, 1, 3])
@pytest.mark.parametrize("out_shift", [0, 1, 3])
def test_odd_alignments(cp, types, shift, out_shift):
    # Buffers 1 or 3 bytes past an aligned address, and datatypes whose first
    # byte is at offset 1 or 3: the word width must drop to what all allow.
    aligned = types.keep(MPI.DOUBLE.Create_vector(20, 2, 5).Commit())  # 16-byte runs, 40-byte stride
    rng = np.random.default_rng(shift * 4 + out_shift)
    check_gpu(cp, aligned, 2, rng, shift=shift, out_shift=out_shift)
    for offset in (1, 3):
        t = types.keep(MPI.BYTE.Create_hindexed_block(16, [offset, offset + 24, offset + 48]).Commit())
        assert dt.canonicalize(t).offset == offset
        check_gpu(cp, t, 3, rng, shift=shift, out_shift=out_shift)


@pytest.mark.gpu
def test_count_zero_and_empty_types(cp, types):
    empty = types.keep(MPI.INT.Create_vector(0, 1, 4).Commit())
    rng = np.random.default_rng(0)
    check_gpu(cp, empty, 3, rng)
    check_gpu(cp, MPI.INT, 0, rng)
    got = dt.pack(cp.zeros(0, cp.uint8), MPI.DOUBLE, 0)
    assert isinstance(got, cp.ndarray) and got.nbytes == 0


@pytest.mark.gpu
def test_negative_strides_keep_type_map_order(cp, types):
    rng = np.random.default_rng(5)
    t = types.keep(MPI.INT.Create_indexed_block(1, [12, 8, 4, 0]).Commit())
    assert dt.canonicalize(t).strides == (-16,)
    check_gpu(cp, t, 2, rng)
    t = types.keep(MPI.DOUBLE.Create_indexed_block(2, [9, 6, 3, 0]).Commit())
    assert dt.canonicalize(t).strides == (-24,)
    check_gpu(cp, t, 3, rng)
    inner = types.keep(MPI.SHORT.Create_indexed_block(3, [20, 10, 0]))
    t = types.keep(MPI.Datatype.Create_hvector(inner, 4, 1, 200).Commit())
    assert dt.canonicalize(t).strides == (200, -20)
    check_gpu(cp, t, 2, rng, shift=1)


@pytest.mark.gpu
def test_random_nested_types_pack_on_gpu_like_host_and_mpi(cp):
    seen = {"supported": 0, "unpacked": 0}

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def packs_alike(data):
        made = Types()
        try:
            t = made.keep(data.draw(nested_type(made)).Dup().Commit())
            count = data.draw(st.integers(0, 3))
            assume(t.Get_true_extent()[0] >= 0)
            try:
                dt.canonicalize(t)
            except pyhpc.UnsupportedError:
                return
            seen["supported"] += 1
            true_lb, true_extent = t.Get_true_extent()
            extent = t.Get_extent()[1]
            nbytes = true_lb + true_extent + max(count - 1, 0) * extent
            small = len(type_map(t)) * count <= 20_000
            unpack = small and not overlaps(t, count, nbytes)
            seen["unpacked"] += unpack
            # Open MPI 5 packs resized double-complex against the standard; the
            # host suite pins that down, here it only must not fail the GPU check.
            mpi = not (OPEN_MPI_5 and "MPI_C_DOUBLE_COMPLEX" in describe_type(t))
            check_gpu(cp, t, count, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))),
                      shift=data.draw(st.sampled_from([0, 1, 4, 8])), mpi=mpi, unpack=unpack)
        finally:
            made.free()

    packs_alike()
    assert seen["supported"] > 100 and seen["unpacked"] > 60, seen


@pytest.mark.gpu
def test_more_words_than_32_bit_indices_hold(cp, types):
    # 4100 MiB of 1-byte words: the kernels switch to 64-bit indices, and run
    # offsets pass 2**32. The expected bytes come from cupy slicing (the host
    # engine on 8 GiB would be slow); bytes are hashed from their position so
    # that an offset wrong by a multiple of 2**32 shows.
    count, half = 4100, 1 << 20
    vector = types.keep(MPI.BYTE.Create_vector(half, 1, 2))
    t = types.keep(vector.Create_resized(0, 2 * half).Commit())
    packed_bytes = count * half
    # The source (2x), its hashing temporary (2x), the packed bytes (1x).
    if cp.cuda.runtime.memGetInfo()[0] < packed_bytes * 5 + (2 << 30):
        pytest.skip("needs about 22 GiB of free GPU memory")
    words = cp.arange(packed_bytes // 4, dtype=cp.uint64)  # 2 * packed_bytes bytes
    cp.multiply(words, cp.uint64(0x9E3779B97F4A7C15), out=words)
    words ^= words >> cp.uint64(32)
    src = words.view(cp.uint8)
    out = dt.pack(src, t, count)
    chunk = 1 << 28
    for i in range(0, packed_bytes, chunk):
        j = min(i + chunk, packed_bytes)
        assert bool((out[i:j] == src[2 * i:2 * j:2]).all()), f"packed bytes [{i}, {j}) differ"
    src.fill(0)
    dt.unpack(out, src, t, count)
    for i in range(0, packed_bytes, chunk):
        j = min(i + chunk, packed_bytes)
        assert bool((src[2 * i:2 * j:2] == out[i:j]).all()), f"unpacked bytes [{i}, {j}) differ"
        assert not bool(src[2 * i + 1:2 * j:2].any()), f"unpack wrote gaps in [{2 * i}, {2 * j})"


# ---- streams and memory kinds -------------------------------------------------------------

@pytest.mark.gpu
def test_pack_runs_on_cupys_current_stream_and_synchronises_it(cp, types):
    t = types.keep(MPI.INT.Create_vector(1 << 22, 1, 2).Commit())  # 16 MiB of 4-byte runs
    n = t.Get_extent()[1]
    rng = np.random.default_rng(9)
    first, second = rng.integers(0, 256, n, dtype=np.uint8), rng.integers(0, 256, n, dtype=np.uint8)
    src, update = to_device(cp, first), to_device(cp, second)
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        src[...] = update  # enqueued on `stream`: pack must run after it, on the same stream
        got = dt.pack(src, t)
        assert stream.done  # pack returned only after its stream drained
        packed = got.copy()
        back = cp.zeros_like(src)
        dt.unpack(packed, back, t)
        assert stream.done
    assert got.get().tobytes() == dt.pack(second, t).tobytes()
    reference = np.zeros_like(second)
    dt.unpack(dt.pack(second, t), reference, t)
    assert back.get().tobytes() == reference.tobytes()


@pytest.mark.gpu
def test_pinned_host_packed_buffer_through_the_binding(cp, types):
    import cupyx

    t = types.keep(MPI.DOUBLE.Create_vector(100, 3, 7).Commit())
    host = np.random.default_rng(4).integers(0, 256, t.Get_extent()[1], dtype=np.uint8)
    dev = to_device(cp, host)
    layout = _mpi.canonicalize(t)
    ext = cuda.extension()
    pinned = cupyx.empty_pinned((t.Get_size(),), dtype=np.uint8)
    ext.pack(layout, 1, dev.data.ptr, dev.nbytes, pinned.ctypes.data, pinned.nbytes)
    cp.cuda.Device().synchronize()
    assert pinned.tobytes() == dt.pack(host, t).tobytes()
    back = cp.zeros_like(dev)
    ext.unpack(layout, 1, pinned.ctypes.data, pinned.nbytes, back.data.ptr, back.nbytes)
    cp.cuda.Device().synchronize()
    reference = np.zeros_like(host)
    dt.unpack(pinned, reference, t)
    assert back.get().tobytes() == reference.tobytes()
    pageable = np.empty(t.Get_size(), np.uint8)
    with pytest.raises(pyhpc.InvalidArgumentError, match="out: pageable host memory"):
        ext.pack(layout, 1, dev.data.ptr, dev.nbytes, pageable.ctypes.data, pageable.nbytes)
    pageable = np.empty(t.Get_extent()[1], np.uint8)
    with pytest.raises(pyhpc.InvalidArgumentError, match="buf: pageable host memory"):
        ext.unpack(layout, 1, pinned.ctypes.data, pinned.nbytes, pageable.ctypes.data, pageable.nbytes)


# ---- bad input -------------------------------------------------------------------

@pytest.mark.gpu
def test_bad_device_arguments_name_themselves(cp, types):
    t = types.keep(MPI.INT.Create_vector(3, 1, 4).Commit())  # touches bytes [0, 44)
    buf = cp.zeros(64, cp.uint8)
    with pytest.raises(pyhpc.InvalidArgumentError, match="count"):
        dt.pack(buf, t, -1)
    with pytest.raises(pyhpc.InvalidArgumentError,
                       match=r"buf: the datatype touches bytes \[0, 72\) but the buffer has 64"):
        dt.pack(buf, t, 2)
    with pytest.raises(pyhpc.InvalidArgumentError, match="out: 12 bytes needed, buffer has 4"):
        dt.pack(buf, t, 1, out=cp.empty(4, cp.uint8))
    with pytest.raises(pyhpc.InvalidArgumentError, match="packed: 12 bytes needed, buffer has 4"):
        dt.unpack(cp.zeros(4, cp.uint8), buf, t)
    with pytest.raises(pyhpc.InvalidArgumentError,
                       match=r"buf: the datatype touches bytes \[0, 36\) but the buffer has 30"):
        dt.unpack(cp.zeros(24, cp.uint8), buf[:30], t, 1)
    with pytest.raises(pyhpc.InvalidArgumentError, match="^buf: the buffer must be C-contiguous"):
        dt.pack(cp.zeros((8, 16), cp.uint8)[:, ::2], t)
    with pytest.raises(pyhpc.InvalidArgumentError, match=r"^out: a host buffer, but buf is a device"):
        dt.pack(buf, t, out=np.empty(12, np.uint8))
    with pytest.raises(pyhpc.InvalidArgumentError, match=r"^buf: a host buffer, but packed is a device"):
        dt.unpack(cp.zeros(12, cp.uint8), np.zeros(64, np.uint8), t)
    with pytest.raises(pyhpc.InvalidArgumentError, match=r"^out: a device \(cupy\) array, but buf is a host"):
        dt.pack(np.zeros(64, np.uint8), t, out=cp.empty(12, cp.uint8))
    struct = types.keep(MPI.Datatype.Create_struct([1, 1], [0, 8], [MPI.INT, MPI.DOUBLE]).Commit())
    with pytest.raises(pyhpc.UnsupportedError, match="struct"):
        dt.pack(buf, struct)
    assert not bool(buf.any())  # nothing above wrote anything


@pytest.mark.gpu
def test_binding_rejects_malformed_layouts(cp):
    ext = cuda.extension()
    buf, out = cp.zeros(64, cp.uint8), cp.zeros(64, cp.uint8)
    layout = _mpi.canonicalize(MPI.INT)
    for key in ("block", "counts"):
        broken = {k: v for k, v in layout.items() if k != key}
        with pytest.raises(pyhpc.InvalidArgumentError, match=f"layout: no key '{key}'"):
            ext.pack(broken, 1, buf.data.ptr, buf.nbytes, out.data.ptr, out.nbytes)
    with pytest.raises(pyhpc.InvalidArgumentError, match="layout: 2 counts and 1 strides"):
        ext.pack(dict(layout, counts=[2, 2], strides=[8]), 1, buf.data.ptr, buf.nbytes,
                 out.data.ptr, out.nbytes)
