"""ccl_allreduce: pyhpc.ccl's ring all-reduce over TCP against MPI_Allreduce.

The MPI job only starts the peers and times them: rank 0 runs the ccl master
(a thread), every rank is one ccl peer on 127.0.0.1, and each repetition is an
all-reduce (SUM, float32, out of place) on pyhpc.ccl's own TCP data plane.
Baseline: the job's MPI_Allreduce (mpi4py) of the same buffers. Both time a
repetition as the slowest rank's, after a barrier. The 4 KiB case is the
latency. Rate: bus bandwidth, bytes x 2(n-1)/n (as in ``allreduce``); limit:
loopback TCP bandwidth, measured on rank 0 in the same job.
"""

from __future__ import annotations

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, reps_for, size_label

WARMUP = 3


def sizes(quick: bool) -> list[int]:
    if quick:
        return [4 << 10, 256 << 10, 4 << 20, 16 << 20]
    return [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]


def run(ctx: Context) -> list[Measurement]:
    import secrets

    from mpi4py import MPI

    from pyhpc.ccl import Communicator, Master

    comm = ctx.comm
    master = None
    if ctx.rank == 0:
        secret = secrets.token_bytes(32)
        master = Master(secret=secret).start()
        address = master.address
    else:
        secret = address = None
    secret, address = comm.bcast((secret, address), root=0)
    peer = Communicator(address, secret=secret).connect()
    try:
        while peer.world_size < ctx.size:
            peer.update_topology(timeout=30)
        comm.Barrier()

        tcp_bytes = (64 << 20) if ctx.quick else (256 << 20)
        tcp_reps = 3 if ctx.quick else 8
        seconds = limits.tcp_loopback_seconds(tcp_bytes, 1, tcp_reps) if ctx.rank == 0 else None
        seconds = comm.bcast(seconds, root=0)
        limit = Measurement("TCP loopback", f"socket over 127.0.0.1, {size_label(tcp_bytes)} a rep",
                            "limit", seconds, bytes_per_rep=tcp_bytes)
        rows = [limit]
        all_sizes = sizes(ctx.quick)
        for i, nbytes in enumerate(all_sizes, 1):
            label = size_label(nbytes)
            ctx.progress(f"{label} ({i}/{len(all_sizes)})")
            count = nbytes // 4
            send = np.full(count, ctx.rank + 1, np.float32)
            mine = np.zeros(count, np.float32)
            theirs = np.zeros(count, np.float32)
            expected = ctx.size * (ctx.size + 1) / 2
            peer.all_reduce(send, out=mine)  # checked once, so a broken ring cannot look fast
            if not np.all(mine == expected):
                raise RuntimeError(f"ccl all_reduce gave {mine[:3]}, expected {expected}")
            reps = min(reps_for(nbytes, ctx.quick), 200 if ctx.quick else 1000)
            if ctx.quick and nbytes >= (4 << 20):
                reps = 8
            timed = interleave({
                "pyhpc": lambda n: ctx.time_reps(lambda: peer.all_reduce(send, out=mine),
                                                 WARMUP, n),
                "baseline": lambda n: ctx.time_reps(
                    lambda: comm.Allreduce(send, theirs, op=MPI.SUM), WARMUP, n),
            }, reps)
            if not np.all(theirs == expected):
                raise RuntimeError("MPI Allreduce gave wrong values")
            bus = nbytes * 2 * (ctx.size - 1) / ctx.size
            for role, impl in (("pyhpc", "pyhpc.ccl ring over TCP"),
                               ("baseline", "MPI_Allreduce (mpi4py)")):
                rows.append(Measurement(label, impl, role, timed[role], x=nbytes,
                                        bytes_per_rep=bus, limit=limit.case))
        comm.Barrier()
        return rows
    finally:
        peer.leave()
        comm.Barrier()
        if master is not None:
            master.stop()


BENCHMARK = Benchmark(
    name="ccl_allreduce",
    ranks=2,
    description="pyhpc.ccl fault-tolerant ring all-reduce (SUM, float32, TCP on 127.0.0.1) "
                "against the job's MPI_Allreduce, bus bandwidth (bytes x 2(n-1)/n); "
                "limit: loopback TCP bandwidth, measured in the same job",
    run=run,
)
