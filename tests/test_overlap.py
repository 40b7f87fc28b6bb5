"""pyhpc.overlap: GEMM + reduce-scatter / all-gather / all-reduce, overlapped (T3), against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from pyhpc import overlap as ov
from pyhpc.errors import InvalidArgumentError

LINK = ov.Link(bandwidth=2e9, latency=1e-5)


def operands(m, n, k_per_rank, size, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k_per_rank * size)).astype(dtype)
    b = rng.standard_normal((k_per_rank * size, n)).astype(dtype)
    return a, b, a.astype(np.float64) @ b.astype(np.float64)


def relative_error(got, want):
    return float(np.abs(got - want).max(initial=0) / max(np.abs(want).max(initial=0), 1e-300))


def check_all(comm, m, n, k, dtype, method, chunks, link, tol):
    size, rank = comm.Get_size(), comm.Get_rank()
    a, b, want = operands(m, n, k, size, dtype)
    mine_a, mine_b = a[:, rank * k:(rank + 1) * k], b[rank * k:(rank + 1) * k]
    rows = np.array_split(np.arange(m), size)[rank]
    got = ov.gemm_reduce_scatter(mine_a, mine_b, comm, chunks=chunks, method=method, link=link)
    assert got.shape == (rows.size, n) and got.dtype == dtype
    assert relative_error(got, want[rows]) < tol
    assert relative_error(ov.gemm_all_reduce(mine_a, mine_b, comm, chunks=chunks, method=method, link=link),
                          want) < tol
    shard = np.array_split(a, size)[rank]
    got = ov.all_gather_gemm(shard, b, comm, chunks=chunks, method=method, link=link)
    assert got.shape == (m, n) and relative_error(got, want) < tol


def test_split_is_array_split():
    for n in (0, 1, 7, 64):
        for parts in (1, 3, 4):
            assert [list(r) for r in ov._split(n, parts)] == [list(x) for x in np.array_split(np.arange(n), parts)]


@pytest.mark.parametrize("method", ov.METHODS)
def test_one_rank_is_the_gemm(method):
    check_all(MPI.COMM_SELF, 17, 5, 8, np.float32, method, None, None, 1e-5)


def test_out_is_used_and_checked():
    a, b, want = operands(6, 4, 3, 1, np.float64)
    out = np.empty((6, 4))
    assert ov.gemm_reduce_scatter(a, b, MPI.COMM_SELF, out=out) is out
    assert relative_error(out, want) < 1e-12
    with pytest.raises(InvalidArgumentError, match="out: must be a C-contiguous float64 array of shape"):
        ov.gemm_reduce_scatter(a, b, MPI.COMM_SELF, out=np.empty((6, 4), np.float32))


@pytest.mark.parametrize("call, match", [
    (lambda a, b: ov.gemm_reduce_scatter(a.astype(np.int32), b, MPI.COMM_SELF), "a: dtype must be float32"),
    (lambda a, b: ov.gemm_reduce_scatter(a, b.astype(np.float64), MPI.COMM_SELF), "b: dtype float64 differs"),
    (lambda a, b: ov.gemm_reduce_scatter(a, b[1:], MPI.COMM_SELF), "b: has 2 rows, a has 3 columns"),
    (lambda a, b: ov.gemm_reduce_scatter(a[0], b, MPI.COMM_SELF), "a: must be 2-D"),
    (lambda a, b: ov.gemm_reduce_scatter(a, b, MPI.COMM_SELF, chunks=0), "chunks: must be None or an integer"),
    (lambda a, b: ov.gemm_reduce_scatter(a, b, MPI.COMM_SELF, method="fused"), "method: 'fused' is not one of"),
    (lambda a, b: ov.all_gather_gemm(a.tolist(), b, MPI.COMM_SELF), "a_shard: must be a numpy or cupy array"),
])
def test_bad_arguments_name_themselves(call, match):
    a, b, _ = operands(4, 2, 3, 1, np.float32)
    with pytest.raises(InvalidArgumentError, match=match):
        call(a, b)


@pytest.mark.mpi(min_size=2)
def test_choose_chunks_agrees_across_ranks_and_follows_the_link(comm):
    a, b, _ = operands(512, 256, 1024, 1, np.float32, seed=comm.rank)
    # transfers of a few ms next to a GEMM of a few ms: overlap pays, with some chunks
    chunks = ov.choose_chunks(comm, a, b, ov.Link(bandwidth=5e7))
    assert comm.allgather(chunks) == [chunks] * comm.size and 1 <= chunks <= ov.MAX_CHUNKS
    with pytest.raises(InvalidArgumentError, match="collective"):
        ov.choose_chunks(comm, a, b, collective="broadcast")


def test_link_validates_itself():
    with pytest.raises(InvalidArgumentError, match="link.bandwidth"):
        ov.Link(0)
    with pytest.raises(InvalidArgumentError, match="link.latency"):
        ov.Link(1e9, -1)
    assert ov.Link(1e9, 1e-6).seconds(1000) == pytest.approx(2e-6)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("method", ov.METHODS)
@pytest.mark.parametrize("link", [None, LINK], ids=["mpi", "modelled-link"])
def test_every_rank_count_matches_numpy(comm, method, link):
    for size in range(1, comm.size + 1):
        sub = comm.Split(0 if comm.rank < size else MPI.UNDEFINED, comm.rank)
        if sub == MPI.COMM_NULL:
            continue
        try:
            # M = 37 divides neither by ranks x chunks nor by ranks; M = 3 leaves a rank without rows
            for m, n, k, chunks in ((37, 13, 8, 3), (64, 32, 16, None), (3, 5, 4, 2), (40, 8, 4, 1)):
                check_all(sub, m, n, k, np.float32, method, chunks, link, 1e-5)
            check_all(sub, 29, 7, 5, np.float64, method, 4, link, 1e-12)
        finally:
            sub.Free()


@pytest.mark.mpi(min_size=2)
def test_bad_input_on_one_rank_raises_on_every_rank(comm):
    a, b, _ = operands(8, 4, 2, comm.size, np.float32)
    mine_a, mine_b = a[:, :2], b[:2]
    with pytest.raises(InvalidArgumentError, match="rank 1: gemm_reduce_scatter: b: dtype"):
        ov.gemm_reduce_scatter(mine_a, mine_b.astype(np.float64) if comm.rank == 1 else mine_b, comm)
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):
        ov.gemm_reduce_scatter(mine_a, mine_b, comm, chunks=1 + comm.rank)
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):
        ov.gemm_reduce_scatter(mine_a[: 8 - comm.rank], mine_b, comm)  # M differs
    with pytest.raises(InvalidArgumentError, match="rank 0: all_gather_gemm: b: has"):
        ov.all_gather_gemm(a, b[1:] if comm.rank == 0 else b, comm)
    got = ov.gemm_all_reduce(mine_a, mine_b, comm)  # still usable afterwards
    assert got.shape == (8, 4)


# ---- GPU (cupy) -------------------------------------------------------------------------------------

def gpu_dtype(name):
    """(cupy, the numpy dtype, the tolerance) for a GPU test; bfloat16 is ml_dtypes' (CuPy 14).
    float16/bfloat16: each rank's product is rounded to the dtype once, the sum over ranks
    kept in float32, the result rounded once: a few units of the 16-bit roundoff."""
    from pyhpc import cuda

    cp = cuda.cupy()
    if cp is None:
        pytest.skip("cupy is not installed")
    if name == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
        try:
            cp.zeros((2, 2), dtype=dtype) @ cp.zeros((2, 2), dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - an older cupy without bfloat16
            pytest.skip(f"cupy has no bfloat16: {exc}")
    else:
        dtype = np.dtype(name).type
    return cp, dtype, (1e-5 if name == "float32" else 2.5e-2)


def check_all_gpu(cp, comm, m, n, k, dtype, method, chunks, link, tol):
    """As check_all, with cupy operands: the results are cupy arrays of the input dtype."""
    size, rank = comm.Get_size(), comm.Get_rank()
    a, b, want = operands(m, n, k, size, dtype)
    mine_a, mine_b = cp.asarray(a[:, rank * k:(rank + 1) * k]), cp.asarray(b[rank * k:(rank + 1) * k])
    rows = np.array_split(np.arange(m), size)[rank]
    errors = {}
    got = ov.gemm_reduce_scatter(mine_a, mine_b, comm, chunks=chunks, method=method, link=link)
    assert isinstance(got, cp.ndarray) and got.shape == (rows.size, n) and got.dtype == dtype
    errors["reduce-scatter"] = relative_error(got.get().astype(np.float64), want[rows])
    out = cp.full((rows.size, n), 7, dtype=dtype)
    assert ov.gemm_reduce_scatter(mine_a, mine_b, comm, chunks=chunks, method=method, link=link, out=out) is out
    errors["reduce-scatter into out"] = relative_error(out.get().astype(np.float64), want[rows])
    full = ov.gemm_all_reduce(mine_a, mine_b, comm, chunks=chunks, method=method, link=link)
    assert isinstance(full, cp.ndarray) and full.shape == (m, n) and full.dtype == dtype
    errors["all-reduce"] = relative_error(full.get().astype(np.float64), want)
    shard = cp.asarray(np.array_split(a, size)[rank])
    got = ov.all_gather_gemm(shard, cp.asarray(b), comm, chunks=chunks, method=method, link=link)
    assert isinstance(got, cp.ndarray) and got.shape == (m, n) and got.dtype == dtype
    errors["all-gather"] = relative_error(got.get().astype(np.float64), want)
    worst = comm.allreduce(max(errors.values()), op=MPI.MAX)
    assert worst < tol, (method, chunks, link, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("method", ov.METHODS)
def test_gpu_one_rank_is_the_gemm(name, method):
    cp, dtype, tol = gpu_dtype(name)
    check_all_gpu(cp, MPI.COMM_SELF, 37, 13, 8, dtype, method, 3, None, tol)


@pytest.mark.gpu
def test_gpu_bad_arguments_name_themselves():
    cp, _, _ = gpu_dtype("float32")
    a, b = cp.ones((4, 3), cp.float32), cp.ones((3, 2), cp.float32)
    with pytest.raises(InvalidArgumentError, match="b: is a numpy array and a a cupy one"):
        ov.gemm_reduce_scatter(a, b.get(), MPI.COMM_SELF)
    with pytest.raises(InvalidArgumentError, match="a: dtype must be float16, bfloat16 or float32 for cupy"):
        ov.gemm_reduce_scatter(a.astype(cp.float64), b.astype(cp.float64), MPI.COMM_SELF)
    with pytest.raises(InvalidArgumentError, match="out: must be a C-contiguous float32 array"):
        ov.gemm_reduce_scatter(a, b, MPI.COMM_SELF, out=np.empty((4, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match="out: must be a C-contiguous float32 array"):
        ov.gemm_reduce_scatter(a.get(), b.get(), MPI.COMM_SELF, out=cp.empty((4, 2), cp.float32))


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("method", ov.METHODS)
def test_gpu_every_method_matches_numpy(comm, name, method):
    cp, dtype, tol = gpu_dtype(name)
    # M = 37 divides neither by ranks x chunks nor by ranks; M = 3 leaves a rank without rows;
    # chunks=None lets choose_chunks time the GPU (a collective: every rank gets the same answer)
    for m, n, k, chunks in ((37, 13, 8, 3), (3, 5, 4, 2), (256, 96, 64, None)):
        check_all_gpu(cp, comm, m, n, k, dtype, method, chunks, None, tol)
    check_all_gpu(cp, comm, 45, 24, 16, dtype, method, 4, LINK, tol)  # the modelled link, on the GPU too


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
def test_gpu_mixed_kinds_raise_on_every_rank(comm):
    cp, _, _ = gpu_dtype("float32")
    a, b, _ = operands(8, 4, 2, comm.size, np.float32)
    mine_a, mine_b = cp.asarray(a[:, :2]), cp.asarray(b[:2])
    with pytest.raises(InvalidArgumentError, match="rank 1: gemm_reduce_scatter: b: is a numpy array"):
        ov.gemm_reduce_scatter(mine_a, mine_b.get() if comm.rank == 1 else mine_b, comm)
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):  # numpy on rank 0, cupy elsewhere
        ov.all_gather_gemm(mine_a.get() if comm.rank == 0 else mine_a, mine_b.get() if comm.rank == 0 else mine_b,
                           comm)
    with pytest.raises(InvalidArgumentError, match="rank 0: gemm_all_reduce|rank 0: gemm_reduce_scatter: a: dtype"):
        ov.gemm_all_reduce(mine_a.astype(cp.float64) if comm.rank == 0 else mine_a,
                           mine_b.astype(cp.float64) if comm.rank == 0 else mine_b, comm)
    rows = len(np.array_split(np.arange(8), comm.size)[comm.rank])
    with pytest.raises(InvalidArgumentError, match="out: must be a C-contiguous float32 array"):
        ov.gemm_reduce_scatter(mine_a, mine_b, comm, out=np.empty((rows, 4), np.float32) if comm.rank == 1
                               else cp.empty((rows, 4), cp.float32))
    got = ov.gemm_all_reduce(mine_a, mine_b, comm)  # still usable afterwards
    assert isinstance(got, cp.ndarray) and got.shape == (8, 4)
