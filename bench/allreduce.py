"""allreduce: MPI_Allreduce(SUM) of float64 buffers over all ranks of the job.

pyhpc side: the C++ loop in pyhpc._mpi (raw MPI_Allreduce, no Python in the
loop). Baseline: mpi4py ``Allreduce`` on numpy buffers in a Python loop. Both
time a repetition as the slowest rank's, after a barrier.

The rate is bus bandwidth, as nccl-tests report it: the buffer's bytes times
2(n-1)/n, the data each rank must send and receive in any allreduce, so the
number can be compared with the memcpy limit whatever the rank count.
"""

from __future__ import annotations

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, reps_for, size_label

WARMUP = 5


def counts(quick: bool) -> list[int]:
    """Element counts (float64) of the buffers reduced."""
    if quick:
        return [1, 32, 512, 8 << 10, 128 << 10, 512 << 10]  # 8 B .. 4 MiB
    return [1 << k for k in range(0, 24, 2)]  # 8 B .. 32 MiB


def mpi4py_allreduce_seconds(ctx: Context, count: int, warmup: int, reps: int) -> list[float]:
    from mpi4py import MPI

    send = np.full(count, ctx.rank + 1, dtype=np.float64)
    recv = np.zeros(count, dtype=np.float64)
    seconds = ctx.time_reps(lambda: ctx.comm.Allreduce(send, recv, op=MPI.SUM), warmup, reps)
    # Every element must be 1 + 2 + ... + size, so a broken MPI cannot be fast.
    expected = ctx.size * (ctx.size + 1) / 2
    if not np.all(recv == expected):
        bad = recv[recv != expected][:3].tolist()
        raise RuntimeError(f"allreduce: mpi4py Allreduce gave {bad}, expected {expected} everywhere")
    return seconds


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import _mpi  # needs MPI initialised: only inside the job

    rows = []
    all_counts = counts(ctx.quick)
    for i, count in enumerate(all_counts, 1):
        nbytes = 8 * count
        label = size_label(nbytes)
        ctx.progress(f"{label} ({i}/{len(all_counts)})")
        reps = reps_for(nbytes, ctx.quick)
        bus_bytes = nbytes * 2 * (ctx.size - 1) / ctx.size
        limit = limits.memcpy_limit(ctx, nbytes, reps)
        rows.append(limit)
        seconds = interleave({
            "pyhpc": lambda n: _mpi.allreduce_seconds(ctx.comm, count, WARMUP, n),
            "baseline": lambda n: mpi4py_allreduce_seconds(ctx, count, WARMUP, n),
        }, reps)
        for role, impl in (("pyhpc", "C++ MPI via pyhpc._mpi"), ("baseline", "mpi4py Allreduce")):
            rows.append(Measurement(label, impl, role, seconds[role], x=nbytes,
                                    bytes_per_rep=bus_bytes, limit=limit.case))
    return rows


BENCHMARK = Benchmark(
    name="allreduce",
    ranks=2,
    description="MPI_Allreduce SUM of float64 buffers over 2 ranks, bus bandwidth "
                "(bytes x 2(n-1)/n); limit: memcpy of the same size, measured in the same job",
    run=run,
)
