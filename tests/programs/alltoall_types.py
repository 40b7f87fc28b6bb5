"""An mpi4py program (any number of ranks) exchanging derived datatypes with
MPI_Alltoallv, MPI_Alltoallw (vector and subarray types, a type per peer; then
once more with a struct type the engine leaves to the system MPI) and
MPI_Neighbor_alltoallv/w, each blocking and then nonblocking (MPI_I*, the
same bytes must arrive), checking every element. Rank 0 prints a digest of
everything received (the same with and without the interposer, bit for bit)."""

import hashlib

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
blocking = dst.copy()
dst = np.full(sum(rcounts) * EXT, -1.0)
r = comm.Ialltoallv([src, (scounts, sdispls), vec], [dst, (rcounts, rdispls), vec])
while not r.Test():
    pass
assert np.array_equal(dst, blocking), "ialltoallv"

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

# Nonblocking neighbour exchanges: the same bytes as the blocking calls on the
# same communicator. On 2 ranks a periodic ring has one neighbour twice, and
# Open MPI 5.0's MPI_Ineighbor_* then swaps its two messages (without the
# interposer too): a line there instead.
nb = comm.Create_cart([size], periods=[size > 2])
blocking = np.full(2 * EXT, -1.0)
nb.Neighbor_alltoallv([src, ([1, 1], [0, 1]), vec], [blocking, ([1, 1], [0, 1]), vec])
dst = np.full(2 * EXT, -1.0)
nb.Ineighbor_alltoallv([src, ([1, 1], [0, 1]), vec], [dst, ([1, 1], [0, 1]), vec]).Wait()
assert np.array_equal(dst, blocking), "ineighbor_alltoallv"
nbr_w = np.full(2 * EXT, -1.0)
nb.Neighbor_alltoallw([src, ([1, 1], [0, EXT * 8]), [vec, vec]], [nbr_w, ([1, 1], [0, EXT * 8]), [vec, vec]])
lower, upper = nb.Shift(0, 1)  # a line's ends have MPI_PROC_NULL there: nothing arrives
for peer, part in ((lower, slice(0, EXT)), (upper, slice(EXT, 2 * EXT))):
    if peer == MPI.PROC_NULL:
        assert np.all(blocking[part] == -1.0) and np.all(nbr_w[part] == -1.0), "written from MPI_PROC_NULL"
nb_dst = np.full(2 * EXT, -1.0)  # checked after the nonblocking Alltoallw below
nb_req = nb.Ineighbor_alltoallw([src, ([1, 1], [0, EXT * 8]), [vec, vec]],
                                [nb_dst, ([1, 1], [0, EXT * 8]), [vec, vec]])

# Alltoallw: to peer d, rows [8d, 8d + 4) of an int32 grid, as a subarray (d even:
# 4 x 6 ints) or a vector (d odd: 4 x 3); a rank receives those ints from each
# peer s at rows [8s, ...) through a type of its own shape. Displacements in bytes.
R, C = 8 * size, 10
digest = hashlib.sha256()
types = [MPI.INT.Create_subarray([R, C], [4, 6], [0, 1]).Commit(),  # send, even peer
         MPI.INT.Create_vector(4, 3, C).Commit(),                   # send, odd peer
         MPI.INT.Create_vector(6, 4, C).Commit(),                   # receive, even me
         MPI.INT.Create_subarray([R, C], [3, 4], [0, 5]).Commit()]  # receive, odd me
sendtypes = [types[d % 2] for d in range(size)]
sdispls = [(8 * d * C + (0 if d % 2 == 0 else 2)) * 4 for d in range(size)]
recvtypes = [types[2 + rank % 2]] * size
rdispls = [(8 * s * C + (3 if rank % 2 == 0 else 0)) * 4 for s in range(size)]  # the subarray has its column
counts = [1] * size


def sent_to(s, d):  # what rank s sends rank d, in order
    grid = (np.arange(R * C, dtype=np.int32) + 10000 * s).reshape(R, C)
    return (grid[8 * d:8 * d + 4, 1:7] if d % 2 == 0 else grid[8 * d:8 * d + 4, 2:5]).ravel()


def check_alltoallw(dst, what):
    want = np.full((R, C), -1, dtype=np.int32)
    for s in range(size):
        if rank % 2 == 0:
            want[8 * s:8 * s + 6, 3:7] = sent_to(s, rank).reshape(6, 4)
        else:
            want[8 * s:8 * s + 3, 5:9] = sent_to(s, rank).reshape(3, 4)
    assert np.array_equal(dst, want), what
    digest.update(dst.tobytes())


src = (np.arange(R * C, dtype=np.int32) + 10000 * rank).reshape(R, C)
dst = np.full((R, C), -1, dtype=np.int32)
comm.Alltoallw([src, (counts, sdispls), sendtypes], [dst, (counts, rdispls), recvtypes])
check_alltoallw(dst, "alltoallw")
dst = np.full((R, C), -1, dtype=np.int32)
req = comm.Ialltoallw([src, (counts, sdispls), sendtypes], [dst, (counts, rdispls), recvtypes])
MPI.Request.Waitall([nb_req, req])  # with the neighbour one still in flight
check_alltoallw(dst, "ialltoallw")
assert np.array_equal(nb_dst, nbr_w), "ineighbor_alltoallw"
digest.update(nb_dst.tobytes())
nb.Free()
# The same exchange with one receive type a struct (no strided form): all of it
# goes to the system MPI, unchanged.
odd = MPI.Datatype.Create_struct([4, 4, 4], [0, C * 4, 2 * C * 4], [MPI.INT] * 3).Commit()
if rank % 2 == 1:  # from rank 0: the subarray's 3 x 4 ints at column 5, as a struct
    recvtypes = [odd] + recvtypes[1:]
    rdispls = [5 * 4] + rdispls[1:]
dst = np.full((R, C), -1, dtype=np.int32)
comm.Alltoallw([src, (counts, sdispls), sendtypes], [dst, (counts, rdispls), recvtypes])
check_alltoallw(dst, "alltoallw with a struct type")
odd.Free()
for t in types:
    t.Free()

vec.Free()
comm.Barrier()
digests = comm.gather(digest.hexdigest(), root=0)
if rank == 0:
    print("digest", hashlib.sha256("".join(digests).encode()).hexdigest())
    print("alltoall_types: all checks passed")
