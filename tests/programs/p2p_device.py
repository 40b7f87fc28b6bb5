"""An mpi4py program (2 ranks) sending cupy (GPU) arrays with derived and
named datatypes through the interposer, over an MPI that need not be
CUDA-aware. It checks every element itself."""

import cupy as cp
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, peer = comm.rank, 1 - comm.rank
assert comm.size == 2, "run on 2 ranks"

vec = MPI.DOUBLE.Create_vector(1000, 3, 7).Commit()
sub = MPI.FLOAT.Create_subarray([40, 50, 60], [10, 20, 30], [5, 6, 7]).Commit()
SPAN_VEC = 999 * 7 + 3


def expected_vec(src):
    out = np.zeros(SPAN_VEC)
    for i in range(1000):
        out[i * 7:i * 7 + 3] = src[i * 7:i * 7 + 3]
    return out


host = np.arange(SPAN_VEC, dtype=np.float64) * 3 + rank
dev = cp.asarray(host)
got = cp.zeros(SPAN_VEC)
# Blocking, rank 0 first
if rank == 0:
    comm.Send([dev, 1, vec], dest=1, tag=1)
    comm.Recv([got, 1, vec], source=1, tag=2)
else:
    comm.Recv([got, 1, vec], source=0, tag=1)
    comm.Send([dev, 1, vec], dest=0, tag=2)
want = expected_vec(np.arange(SPAN_VEC, dtype=np.float64) * 3 + peer)
assert np.array_equal(cp.asnumpy(got), want), "device Send/Recv"

# Nonblocking subarray
s_host = np.arange(40 * 50 * 60, dtype=np.float32) + 10 * rank
s_dev, s_got = cp.asarray(s_host), cp.zeros(40 * 50 * 60, dtype=cp.float32)
reqs = [comm.Irecv([s_got, 1, sub], source=peer, tag=3), comm.Isend([s_dev, 1, sub], dest=peer, tag=3)]
MPI.Request.Waitall(reqs)
want = np.zeros((40, 50, 60), dtype=np.float32)
want[5:15, 6:26, 7:37] = (np.arange(40 * 50 * 60, dtype=np.float32) + 10 * peer).reshape(40, 50, 60)[5:15, 6:26, 7:37]
assert np.array_equal(cp.asnumpy(s_got), want.ravel()), "device Isend/Irecv subarray"

# A named, contiguous type: the MPI underneath may not read GPU memory at all
c_dev, c_got = cp.arange(4096, dtype=cp.float64) + rank, cp.zeros(4096)
if rank == 0:
    comm.Send([c_dev, MPI.DOUBLE], dest=1, tag=4)
    comm.Recv([c_got, MPI.DOUBLE], source=1, tag=5)
else:
    comm.Recv([c_got, MPI.DOUBLE], source=0, tag=4)
    comm.Send([c_dev, MPI.DOUBLE], dest=0, tag=5)
assert np.array_equal(cp.asnumpy(c_got), np.arange(4096, dtype=np.float64) + peer), "device contiguous"

comm.Barrier()
vec.Free()
sub.Free()
if rank == 0:
    print("p2p_device: all checks passed")
