"""An mpi4py program (any number of ranks) exchanging derived datatypes with
MPI_Alltoallv and MPI_Neighbor_alltoallv/w and checking every element."""

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
vec = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()   # 3 doubles, stride 2: extent 5 doubles
EXT = 5

# Alltoallv: rank r sends (r + d) % 3 + 1 elements to rank d.
scounts = [(rank + d) % 3 + 1 for d in range(size)]
rcounts = [(s + rank) % 3 + 1 for s in range(size)]
sdispls = np.concatenate([[0], np.cumsum(scounts)[:-1]]).astype(int).tolist()
rdispls = np.concatenate([[0], np.cumsum(rcounts)[:-1]]).astype(int).tolist()
src = np.arange(sum(scounts) * EXT, dtype=np.float64) + 1000 * rank
dst = np.full(sum(rcounts) * EXT, -1.0)
comm.Alltoallv([src, (scounts, sdispls), vec], [dst, (rcounts, rdispls), vec])
for s in range(size):
    their_scounts = [(s + d) % 3 + 1 for d in range(size)]
    their_displ = sum(their_scounts[:rank])
    their_src = np.arange(sum(their_scounts) * EXT, dtype=np.float64) + 1000 * s
    for e in range(rcounts[s]):
        got = dst[(rdispls[s] + e) * EXT:(rdispls[s] + e + 1) * EXT]
        want = their_src[(their_displ + e) * EXT:(their_displ + e + 1) * EXT]
        assert np.array_equal(got[0::2], want[0::2]), ("alltoallv", s, e)
        assert np.all(got[1::2] == -1.0), ("alltoallv gaps written", s, e)

# Neighbour exchanges on a periodic ring.
ring = comm.Create_cart([size], periods=[True])
left, right = ring.Shift(0, 1)
src = np.arange(2 * EXT, dtype=np.float64) + 100 * rank
dst = np.full(2 * EXT, -1.0)
ring.Neighbor_alltoallv([src, ([1, 1], [0, 1]), vec], [dst, ([1, 1], [0, 1]), vec])
# From the left neighbour we get its block 1 (sent right); from the right, its block 0.
assert np.array_equal(dst[0:EXT][0::2], (np.arange(2 * EXT) + 100 * left)[EXT:2 * EXT][0::2]), "nbr v left"
assert np.array_equal(dst[EXT:][0::2], (np.arange(2 * EXT) + 100 * right)[0:EXT][0::2]), "nbr v right"
dst = np.full(2 * EXT, -1.0)
ring.Neighbor_alltoallw([src, ([1, 1], [0, EXT * 8]), [vec, vec]], [dst, ([1, 1], [0, EXT * 8]), [vec, vec]])
assert np.array_equal(dst[0:EXT][0::2], (np.arange(2 * EXT) + 100 * left)[EXT:2 * EXT][0::2]), "nbr w left"
assert np.array_equal(dst[EXT:][0::2], (np.arange(2 * EXT) + 100 * right)[0:EXT][0::2]), "nbr w right"
ring.Free()
vec.Free()
comm.Barrier()
if rank == 0:
    print("alltoall_types: all checks passed")
