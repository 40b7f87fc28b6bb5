"""An mpi4py program (2 ranks) that sends derived datatypes every way a code
might and checks what arrives: blocking, nonblocking with each completion call,
a released request, a message shorter than the receive, a truncation error.
It checks itself (an assertion aborts the job), so it must pass with and
without the interposer alike."""

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, peer = comm.rank, 1 - comm.rank
assert comm.size == 2, "run on 2 ranks"

vec = MPI.DOUBLE.Create_vector(50, 3, 7).Commit()           # 150 doubles in runs of 3
sub = MPI.INT.Create_subarray([9, 10, 11], [4, 5, 6], [2, 3, 1]).Commit()
SPAN_VEC, SPAN_SUB = 49 * 7 + 3, 9 * 10 * 11


def pattern(n, dtype, salt):
    return (np.arange(n) * 31 + salt).astype(dtype)


def expected_vec(src):
    out = np.zeros(SPAN_VEC)
    for i in range(50):
        out[i * 7:i * 7 + 3] = src[i * 7:i * 7 + 3]
    return out


def expected_sub(src):
    out = np.zeros(SPAN_SUB, dtype=np.int32).reshape(9, 10, 11)
    out[2:6, 3:8, 1:7] = src.reshape(9, 10, 11)[2:6, 3:8, 1:7]
    return out.ravel()


# 1. blocking Send/Recv, and Sendrecv
src = pattern(SPAN_VEC, np.float64, rank)
got = np.zeros(SPAN_VEC)
if rank == 0:
    comm.Send([src, 1, vec], dest=1, tag=1)
else:
    comm.Recv([got, 1, vec], source=0, tag=1)
    assert np.array_equal(got, expected_vec(pattern(SPAN_VEC, np.float64, 0))), "Send/Recv"
got = np.zeros(SPAN_VEC)
comm.Sendrecv([src, 1, vec], dest=peer, sendtag=2, recvbuf=[got, 1, vec], source=peer, recvtag=2)
assert np.array_equal(got, expected_vec(pattern(SPAN_VEC, np.float64, peer))), "Sendrecv"

# 2. nonblocking, completed by Waitall, Waitany, Testall/Test loops, Waitsome
for how in ("waitall", "waitany", "test", "testall", "waitsome"):
    s_src = pattern(SPAN_SUB, np.int32, 10 * rank)
    s_got = np.zeros(SPAN_SUB, dtype=np.int32)
    reqs = [comm.Irecv([s_got, 1, sub], source=peer, tag=3), comm.Isend([s_src, 1, sub], dest=peer, tag=3)]
    if how == "waitall":
        MPI.Request.Waitall(reqs)
    elif how == "waitany":
        while any(r != MPI.REQUEST_NULL for r in reqs):
            MPI.Request.Waitany(reqs)
    elif how == "test":
        while not all(r.Test() for r in reqs):
            pass
    elif how == "testall":
        while not MPI.Request.Testall(reqs):
            pass
    else:
        while any(r != MPI.REQUEST_NULL for r in reqs):
            MPI.Request.Waitsome(reqs)
    assert np.array_equal(s_got, expected_sub(pattern(SPAN_SUB, np.int32, 10 * peer))), how

# 3. a send request released with Request_free, then a barrier-ordered receive
src = pattern(SPAN_VEC, np.float64, 100 + rank)
got = np.zeros(SPAN_VEC)
r = comm.Irecv([got, 1, vec], source=peer, tag=4)
comm.Isend([src, 1, vec], dest=peer, tag=4).Free()
r.Wait()
assert np.array_equal(got, expected_vec(pattern(SPAN_VEC, np.float64, 100 + peer))), "freed Isend"

# 4. a message shorter than the receive: 2 of 3 elements arrive, the rest stays
status = MPI.Status()
if rank == 0:
    comm.Send([pattern(SPAN_VEC + 2 * SPAN_VEC, np.float64, 5), 2, vec], dest=1, tag=5)
else:
    big = np.full(SPAN_VEC + 2 * SPAN_VEC, -1.0)
    comm.Recv([big, 3, vec], source=0, tag=5, status=status)
    assert status.Get_count(vec) == 2 and status.Get_count(MPI.DOUBLE) == 300, status.Get_count(MPI.DOUBLE)
    src0 = pattern(SPAN_VEC + 2 * SPAN_VEC, np.float64, 5)
    for e in range(3):
        for i in range(50):
            lo = e * SPAN_VEC + i * 7
            want = src0[lo:lo + 3] if e < 2 else [-1.0] * 3
            assert np.array_equal(big[lo:lo + 3], want), ("short message", e, i)

# 5. a message longer than the receive: the system MPI's truncation error class
comm.Set_errhandler(MPI.ERRORS_RETURN)
if rank == 0:
    comm.Send([pattern(SPAN_VEC + SPAN_VEC, np.float64, 6), 2, vec], dest=1, tag=6)
else:
    try:
        comm.Recv([np.zeros(SPAN_VEC), 1, vec], source=0, tag=6)
        raise AssertionError("a truncated receive did not fail")
    except MPI.Exception as exc:
        assert exc.Get_error_class() == MPI.ERR_TRUNCATE, exc.Get_error_class()
comm.Barrier()
vec.Free()
sub.Free()
if rank == 0:
    print("p2p_types: all checks passed")
