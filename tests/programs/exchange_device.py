"""Sendrecv, Sendrecv_replace, Alltoallv, Alltoallw and Neighbor_alltoallv/w (blocking
and nonblocking) on GPU (cupy) arrays with derived datatypes, through the interposer
over an MPI that need not be CUDA-aware; any number of ranks. Each exchange is done
three ways that must agree byte for byte: on host (numpy) arrays, on device arrays,
and mixed (a device send side with a host receive side, and the reverse); and each
result is checked against the values it must hold. The halo exchanges use subarray
faces on a 3D and a 2D Cartesian grid of ranks whose edges are not periodic (the 2D
grid is periodic along a dimension of more than 2 ranks). Rank 0 prints how many
calls of each kind had a device side ("device calls: {...}"), for the test to compare
with the interposer's counters. The nonblocking calls complete through Wait, Test,
Testsome, Waitsome, Testall, Waitany and Waitall.

    pyhpc run -n 4 --interpose python exchange_device.py
"""

import json
from collections import Counter

import cupy as cp
import numpy as np
from mpi4py import MPI

world = MPI.COMM_WORLD
rank, size = world.rank, world.size
right, left = (rank + 1) % size, (rank - 1) % size
device_calls = Counter()


def host(a):
    return cp.asnumpy(a) if isinstance(a, cp.ndarray) else a


def on(where, a):
    """`a` (numpy) in host ("h") or device ("d") memory, a fresh copy."""
    return cp.asarray(a) if where == "d" else a.copy()


def same(results, want, what):
    """Every way of doing the exchange delivered `want`, byte for byte."""
    for how, got in results.items():
        got = host(got)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (what, how)


WAYS = ("hh", "dd", "dh", "hd")  # (send side, receive side): host or device memory


def counted(call, way):
    if "d" in way:
        device_calls[call] += 1


# ---- Sendrecv and Sendrecv_replace of a vector type, around a ring --------------------------
vec = MPI.DOUBLE.Create_vector(50, 2, 5).Commit()
SPAN = 49 * 5 + 2 + 247  # two elements, extent 247 doubles each
mask = np.zeros(SPAN, dtype=bool)
for e in range(2):
    for i in range(50):
        mask[e * 247 + i * 5:e * 247 + i * 5 + 2] = True


def data(r):
    return np.arange(SPAN, dtype=np.float64) + 1000.0 * r


want = np.where(mask, data(left), -1.0)
results = {}
for way in WAYS:
    send, got = on(way[0], data(rank)), on(way[1], np.full(SPAN, -1.0))
    world.Sendrecv([send, 2, vec], dest=right, sendtag=7, recvbuf=[got, 2, vec], source=left, recvtag=7)
    counted("MPI_Sendrecv", way)
    results[way] = got
same(results, want, "sendrecv")

want = np.where(mask, data(left), data(rank))
results = {}
for where in "hd":
    buf = on(where, data(rank))
    world.Sendrecv_replace([buf, 2, vec], dest=right, sendtag=8, source=left, recvtag=8)
    counted("MPI_Sendrecv_replace", where)
    results[where] = buf
same(results, want, "sendrecv_replace")
vec.Free()

# ---- Alltoallv: rank r sends (r + d) % 3 + 1 vector elements to rank d -----------------------
vec3 = MPI.DOUBLE.Create_vector(3, 1, 2).Commit()  # 3 doubles, stride 2: extent 5 doubles
EXT = 5


def v_counts(s):
    return [(s + d) % 3 + 1 for d in range(size)]


scounts = v_counts(rank)
rcounts = [(s + rank) % 3 + 1 for s in range(size)]
sdispls = np.concatenate([[0], np.cumsum(scounts)[:-1]]).astype(int).tolist()
rdispls = np.concatenate([[0], np.cumsum(rcounts)[:-1]]).astype(int).tolist()


def v_source(s):
    return np.arange(sum(v_counts(s)) * EXT, dtype=np.float64) + 1000 * s


want = np.full(sum(rcounts) * EXT, -1.0)
for s in range(size):
    theirs = sum(v_counts(s)[:rank])
    for e in range(rcounts[s]):
        at = (rdispls[s] + e) * EXT
        want[at:at + EXT:2] = v_source(s)[(theirs + e) * EXT:(theirs + e + 1) * EXT:2]
for call in ("MPI_Alltoallv", "MPI_Ialltoallv"):
    results = {}
    for way in WAYS:
        src, dst = on(way[0], v_source(rank)), on(way[1], np.full(sum(rcounts) * EXT, -1.0))
        args = [src, (scounts, sdispls), vec3], [dst, (rcounts, rdispls), vec3]
        if call == "MPI_Alltoallv":
            world.Alltoallv(*args)
        elif way in ("hh", "dd"):
            world.Ialltoallv(*args).Wait()
        elif way == "dh":
            request = world.Ialltoallv(*args)
            while not request.Test():
                pass
        else:
            requests = [world.Ialltoallv(*args)]
            while MPI.Request.Testsome(requests) is not None:  # None: no active request left
                pass
        counted(call, way)
        results[way] = dst
    same(results, want, call)

# ---- Neighbor_alltoallv on a line of ranks (a ring from 3 ranks): one vector element each way
line = world.Create_cart([size], periods=[size > 2])
lower, upper = line.Shift(0, 1)


def n_source(r):
    return np.arange(2 * EXT, dtype=np.float64) + 100 * r


want = np.full(2 * EXT, -1.0)
if lower != MPI.PROC_NULL:  # the lower neighbour's element 1 (sent up), the upper's element 0
    want[0:EXT:2] = n_source(lower)[EXT::2]
if upper != MPI.PROC_NULL:
    want[EXT::2] = n_source(upper)[0:EXT:2]
for call in ("MPI_Neighbor_alltoallv", "MPI_Ineighbor_alltoallv"):
    results = {}
    for way in WAYS:
        src, dst = on(way[0], n_source(rank)), on(way[1], np.full(2 * EXT, -1.0))
        args = [src, ([1, 1], [0, 1]), vec3], [dst, ([1, 1], [0, 1]), vec3]
        if call == "MPI_Neighbor_alltoallv":
            line.Neighbor_alltoallv(*args)
        else:
            line.Ineighbor_alltoallv(*args).Wait()
        counted(call, way)
        results[way] = dst
    same(results, want, call)
line.Free()
vec3.Free()

# ---- Alltoallw: a type per peer (subarray or vector), byte displacements ------------------
# To peer d, rows [8d, 8d + 4) of an int32 grid, as a subarray (d even: 4 x 6) or a
# vector (d odd: 4 x 3); a rank receives them into rows [8s, ...) through a type of
# its own shape.
R, C = 8 * size, 10
types = [MPI.INT.Create_subarray([R, C], [4, 6], [0, 1]).Commit(),
         MPI.INT.Create_vector(4, 3, C).Commit(),
         MPI.INT.Create_vector(6, 4, C).Commit(),
         MPI.INT.Create_subarray([R, C], [3, 4], [0, 5]).Commit()]
sendtypes = [types[d % 2] for d in range(size)]
w_sdispls = [(8 * d * C + (0 if d % 2 == 0 else 2)) * 4 for d in range(size)]
recvtypes = [types[2 + rank % 2]] * size
w_rdispls = [(8 * s * C + (3 if rank % 2 == 0 else 0)) * 4 for s in range(size)]
ones = [1] * size


def grid_of(s):
    return (np.arange(R * C, dtype=np.int32) + 10000 * s).reshape(R, C)


want = np.full((R, C), -1, dtype=np.int32)
for s in range(size):
    g = grid_of(s)
    sent = (g[8 * rank:8 * rank + 4, 1:7] if rank % 2 == 0 else g[8 * rank:8 * rank + 4, 2:5]).ravel()
    if rank % 2 == 0:
        want[8 * s:8 * s + 6, 3:7] = sent.reshape(6, 4)
    else:
        want[8 * s:8 * s + 3, 5:9] = sent.reshape(3, 4)
for call in ("MPI_Alltoallw", "MPI_Ialltoallw"):
    results, requests = {}, []
    for way in WAYS:
        src, dst = on(way[0], grid_of(rank)), on(way[1], np.full((R, C), -1, dtype=np.int32))
        args = [src, (ones, w_sdispls), sendtypes], [dst, (ones, w_rdispls), recvtypes]
        if call == "MPI_Alltoallw":
            world.Alltoallw(*args)
        else:
            requests.append(world.Ialltoallw(*args))  # all four in flight at once
        counted(call, way)
        results[way] = dst
    while requests and MPI.Request.Waitsome(requests) is not None:
        pass
    same(results, want, call)
for t in types:
    t.Free()


# ---- Neighbor_alltoallw: halo exchanges of subarray faces on Cartesian grids ----------------
def halo(dims, periods, n, label):
    ndim = len(dims)
    cart = world.Create_cart(dims, periods=periods, reorder=False)
    coords = cart.Get_coords(cart.rank)
    shape = [n + 2] * ndim
    extent = [d * n for d in dims]
    glob = [np.indices(shape)[d] - 1 + coords[d] * n for d in range(ndim)]  # each cell's global index
    value = np.zeros(shape)
    for d in range(ndim):  # unique per global (periodically wrapped) position
        value = value * extent[d] + glob[d] % extent[d]
    grid = np.full(shape, -1.0)
    inner = (slice(1, -1),) * ndim
    grid[inner] = value[inner]
    want = grid.copy()  # faces arrive where a neighbour is; the rest keeps -1 (and the interior)

    def face(d, start):
        sub, starts = [n] * ndim, [1] * ndim
        sub[d], starts[d] = 1, start
        return MPI.DOUBLE.Create_subarray(shape, sub, starts).Commit()

    sendtypes, recvtypes = [], []
    for d in range(ndim):
        lower, upper = cart.Shift(d, 1)
        sendtypes += [face(d, 1), face(d, n)]       # to the lower neighbour, to the upper
        recvtypes += [face(d, 0), face(d, n + 1)]   # from the lower neighbour, from the upper
        for ghost, peer in ((0, lower), (n + 1, upper)):
            if peer != MPI.PROC_NULL:
                at = [slice(1, -1)] * ndim
                at[d] = ghost
                want[tuple(at)] = value[tuple(at)]
    counts, displs = [1] * 2 * ndim, [0] * 2 * ndim
    for call in ("MPI_Neighbor_alltoallw", "MPI_Ineighbor_alltoallw"):
        results = {}
        for way in WAYS:
            src, dst = on(way[0], grid), on(way[1], grid)
            args = [src, (counts, displs), sendtypes], [dst, (counts, displs), recvtypes]
            if call == "MPI_Neighbor_alltoallw":
                cart.Neighbor_alltoallw(*args)
            elif way == "dd":
                request = cart.Ineighbor_alltoallw(*args)
                while not MPI.Request.Testall([request]):
                    pass
            elif way == "dh":
                MPI.Request.Waitany([cart.Ineighbor_alltoallw(*args)])
            else:
                MPI.Request.Waitall([cart.Ineighbor_alltoallw(*args)])
            counted(call, way)
            results[way] = dst
        same(results, want, (label, call))
    for t in sendtypes + recvtypes:
        t.Free()
    cart.Free()


dims3 = MPI.Compute_dims(size, 3)
halo(dims3, [d > 2 for d in dims3], 6, "3d halo")     # non-periodic where a neighbour would repeat
halo([size, 1], [size > 2, False], 5, "2d halo")     # periodic along the ranks from 3 of them

world.Barrier()
if rank == 0:
    print("device calls:", json.dumps(dict(sorted(device_calls.items()))))
    print("exchange_device: all checks passed")
