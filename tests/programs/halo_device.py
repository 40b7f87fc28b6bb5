"""A 3D halo exchange on GPU (cupy) arrays through the interposer, over an MPI that
need not be CUDA-aware: a periodic Cartesian grid of ranks, each holding an
n x n x n block with one ghost layer; the six faces go out as MPI subarray types with
Isend/Irecv. Every ghost face is checked against the value its global position must
hold, so the program checks itself on any number of ranks.

    pyhpc run -n 4 --interpose python halo_device.py [n] [iterations]
"""

import sys

import cupy as cp
import numpy as np
from mpi4py import MPI

n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 3
world = MPI.COMM_WORLD
dims = MPI.Compute_dims(world.size, 3)
cart = world.Create_cart(dims, periods=[True] * 3, reorder=False)
coords = cart.Get_coords(cart.rank)
shape = [n + 2] * 3  # one ghost layer on each side


def value(g):
    """The value a cell at global index g (periodic) holds: unique per cell."""
    g = [gi % (d * n) for gi, d in zip(g, dims)]
    return (g[0] * dims[1] * n + g[1]) * dims[2] * n + g[2]


# interior cells hold value(global index); ghosts start at -1
grid = np.full(shape, -1.0)
idx = np.indices((n, n, n))
globl = [idx[d] + coords[d] * n for d in range(3)]
grid[1:-1, 1:-1, 1:-1] = value(globl)
dev = cp.asarray(grid)


def face(dim, start):
    """The subarray type of one face: layer `start` along `dim`, the interior along the others."""
    sub = [n, n, n]
    starts = [1, 1, 1]
    sub[dim], starts[dim] = 1, start
    return MPI.DOUBLE.Create_subarray(shape, sub, starts).Commit()


# per dimension: (send low interior layer, receive into high ghost) and the reverse
plan = []
for dim in range(3):
    low, high = cart.Shift(dim, 1)
    plan.append((face(dim, 1), face(dim, n + 1), low, high, 2 * dim))        # low face -> low neighbour
    plan.append((face(dim, n), face(dim, 0), high, low, 2 * dim + 1))        # high face -> high neighbour
for _ in range(iterations):
    requests = []
    for send_t, recv_t, dest, source, tag in plan:
        requests.append(cart.Irecv([dev, 1, recv_t], source=source, tag=tag))
        requests.append(cart.Isend([dev, 1, send_t], dest=dest, tag=tag))
    MPI.Request.Waitall(requests)

got = cp.asnumpy(dev)
bad = 0
for dim in range(3):
    for ghost, along in ((0, coords[dim] * n - 1), (n + 1, (coords[dim] + 1) * n)):  # low and high ghost face
        sl = [slice(1, -1)] * 3
        sl[dim] = ghost
        layer = [slice(None)] * 3
        layer[dim] = 0  # the face's other global coordinates, from the first interior layer
        g = [globl[k][tuple(layer)] for k in range(3)]
        g[dim] = np.full_like(g[0], along)
        bad += int(np.count_nonzero(got[tuple(sl)] != value(g)))
assert np.array_equal(got[1:-1, 1:-1, 1:-1], grid[1:-1, 1:-1, 1:-1]), "interior changed"
for send_t, recv_t, *_ in plan:
    send_t.Free()
    recv_t.Free()
bad = world.allreduce(bad)
if world.rank == 0:
    print(f"halo_device: {world.size} ranks, grid {dims}, {n}^3 per rank, {iterations} iterations, "
          f"{bad} wrong ghost cells")
    if bad == 0:
        print("halo_device: all checks passed")
sys.exit(0 if bad == 0 else 1)
