"""ccl_allreduce: pyhpc.ccl's ring all-reduce over TCP against MPI_Allreduce.

The MPI job only starts the peers and times them: rank 0 runs the ccl master
(a thread), every rank is one ccl peer on 127.0.0.1, and each repetition is an
all-reduce (SUM, float32, out of place) on pyhpc.ccl's own TCP data plane.
Baseline: the job's MPI_Allreduce (mpi4py) of the same buffers. Both time a
repetition as the slowest rank's, after a barrier. The 4 KiB case is the
latency. Rate: bus bandwidth, bytes x 2(n-1)/n (as in ``allreduce``); limit:
loopback TCP bandwidth, measured on rank 0 in the same job.

Quantized rows (``quantize="minmax_uint8"``, at 4 and 16 MiB): time against the
same MPI_Allreduce, and the bytes rank 0 sent per repetition, quantized and
float32, with their ratio (goal: 4x fewer).
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
            if nbytes >= (4 << 20):
                rows += quantized_rows(ctx, peer, comm, MPI, label, nbytes, send, mine, theirs,
                                       reps, bus, limit.case)
        comm.Barrier()
        return rows
    finally:
        peer.leave()
        comm.Barrier()
        if master is not None:
            master.stop()


def quantized_rows(ctx, peer, comm, MPI, label, nbytes, send, mine, theirs, reps, bus, limit_case):
    rng = np.random.default_rng(ctx.rank)
    data = rng.standard_normal(send.size).astype(np.float32)
    peer.all_reduce(send, out=mine)
    plain_bytes = peer.last_bytes_sent
    peer.all_reduce(data, out=mine, quantize="minmax_uint8")
    q_bytes = peer.last_bytes_sent
    ref = np.empty_like(theirs)
    comm.Allreduce(data, ref, op=MPI.SUM)
    err = float(np.abs(mine.astype(np.float64) - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    if not err < 0.05 * scale:  # checked once, so a broken ring cannot look fast
        raise RuntimeError(f"quantized all_reduce error {err} vs max {scale}")
    timed = interleave({
        "pyhpc": lambda n: ctx.time_reps(
            lambda: peer.all_reduce(data, out=mine, quantize="minmax_uint8"), WARMUP, n),
        "baseline": lambda n: ctx.time_reps(
            lambda: comm.Allreduce(data, theirs, op=MPI.SUM), WARMUP, n),
    }, reps)
    case = f"{label} quantized"
    note = (f"pyhpc.ccl ring, minmax_uint8: rank 0 sent {q_bytes} B vs {plain_bytes} B "
            f"float32 ({plain_bytes / max(q_bytes, 1):.2f}x fewer), max error {err:.3g}")
    metrics = {"bytes_sent": float(q_bytes), "float32_bytes_sent": float(plain_bytes),
               "bytes_ratio": plain_bytes / max(q_bytes, 1), "max_abs_error": err}
    return [Measurement(case, note, "pyhpc", timed["pyhpc"], x=nbytes, bytes_per_rep=bus,
                        limit=limit_case, metrics=metrics),
            Measurement(case, "MPI_Allreduce (mpi4py)", "baseline", timed["baseline"], x=nbytes,
                        bytes_per_rep=bus, limit=limit_case)]


BENCHMARK = Benchmark(
    name="ccl_allreduce",
    ranks=2,
    description="pyhpc.ccl fault-tolerant ring all-reduce (SUM, float32, TCP on 127.0.0.1) "
                "against the job's MPI_Allreduce, bus bandwidth (bytes x 2(n-1)/n); "
                "limit: loopback TCP bandwidth, measured in the same job",
    run=run,
)
