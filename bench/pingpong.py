"""pingpong: point-to-point latency and bandwidth between two ranks.

pyhpc side: the C++ loop in pyhpc._mpi (raw MPI_Send/MPI_Recv, no Python in
the loop). Baseline: the same loop written in Python with mpi4py Send/Recv on
numpy buffers, so the difference is the cost of Python and mpi4py per message.
Both loops have the same shape (barrier, then one round trip timed on rank 0)
and the time recorded is one way: round trip / 2.
"""

from __future__ import annotations

import time

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, reps_for, size_label

WARMUP = 5


def message_sizes(quick: bool) -> list[int]:
    if quick:
        return [8, 256, 4 << 10, 64 << 10, 1 << 20, 4 << 20]
    return [1 << k for k in range(3, 27)]  # 8 B .. 64 MiB


def mpi4py_round_trips(comm, nbytes: int, warmup: int, reps: int) -> list[float]:
    """Round-trip seconds on rank 0 (zeros elsewhere): the Python twin of pyhpc::pingpong."""
    rank = comm.Get_rank()
    buf = np.full(nbytes, rank, dtype=np.uint8)
    seconds = [0.0] * reps
    for i in range(-warmup, reps):
        comm.Barrier()
        t0 = time.perf_counter()
        if rank == 0:
            comm.Send(buf, dest=1, tag=0)
            comm.Recv(buf, source=1, tag=0)
            if i >= 0:
                seconds[i] = time.perf_counter() - t0
        elif rank == 1:
            comm.Recv(buf, source=0, tag=0)
            comm.Send(buf, dest=0, tag=0)
    # Rank 1 started with its rank in every byte and received rank 0's zeros:
    # check the bytes really moved, so a broken MPI cannot be fast.
    if rank == 1 and np.any(buf):
        raise RuntimeError(f"pingpong: rank 1 did not receive rank 0's {nbytes} bytes")
    return seconds


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import _mpi  # needs MPI initialised: only inside the job

    rows = []
    sizes = message_sizes(ctx.quick)
    for i, nbytes in enumerate(sizes, 1):
        label = size_label(nbytes)
        ctx.progress(f"{label} ({i}/{len(sizes)})")
        reps = reps_for(nbytes, ctx.quick)
        limit = limits.memcpy_limit(ctx, nbytes, reps)
        rows.append(limit)
        round_trips = interleave({
            "pyhpc": lambda n: _mpi.pingpong_seconds(ctx.comm, nbytes, WARMUP, n),
            "baseline": lambda n: mpi4py_round_trips(ctx.comm, nbytes, WARMUP, n),
        }, reps)
        for role, impl in (("pyhpc", "C++ MPI via pyhpc._mpi"), ("baseline", "mpi4py Send/Recv")):
            rows.append(Measurement(label, impl, role, [t / 2 for t in round_trips[role]], x=nbytes,
                                    bytes_per_rep=nbytes, limit=limit.case))
    return rows


BENCHMARK = Benchmark(
    name="pingpong",
    ranks=2,
    description="one-way time (round trip / 2) and bandwidth between 2 ranks; "
                "limit: memcpy of the same size, measured in the same job",
    run=run,
)
