"""ccl_allreduce: pyhpc.ccl's ring all-reduce over TCP against torch.distributed
gloo and MPI_Allreduce, 2 peers (``ccl_allreduce4``: the same at 4 peers).

The MPI job only starts the peers and times them: rank 0 runs the ccl masters
(threads), every rank is a ccl peer on 127.0.0.1, and each repetition is an
all-reduce (SUM, float32, out of place) on pyhpc.ccl's own TCP data plane.
pyhpc.ccl is timed plain (one connection per neighbour), in place (each
chunk's input saved before it is overwritten, for restoring on abort), with
``connections=CONNECTIONS`` (a second world of the same ranks), and with each
``quantize`` mode (on random normal data; error checked once). Baselines, over
the same buffers: torch.distributed's gloo all_reduce (``init_method``
tcp://127.0.0.1 in each rank process; skipped with the reason printed when
torch is not installed) and the job's MPI_Allreduce (mpi4py). Every case of a
size is timed in turns (``interleave``), each repetition the slowest rank's,
after a barrier. The 4 KiB case is the latency. Rate: bus bandwidth, bytes x
2(n-1)/n; limit: loopback TCP bandwidth, measured on rank 0 in the same job.
Cases other than the plain one compare with gloo (MPI when gloo is missing).
Quantized rows record the bytes rank 0 sent, quantized and float32 (goal: 4x
fewer).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, reps_for, size_label

CONNECTIONS = 4
QUANTIZE = ("minmax_uint8", "zeropoint_uint8")


def sizes(quick: bool) -> list[int]:
    if quick:
        return [4 << 10, 256 << 10, 1 << 20]
    return [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20]


def reps_and_warmup(nbytes: int, quick: bool) -> tuple[int, int]:
    if quick:
        return (30 if nbytes <= (4 << 10) else 9), 1
    if nbytes >= (64 << 20):
        return (3 if nbytes >= (256 << 20) else 6), 1
    return min(reps_for(nbytes, quick), 300), 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gloo(ctx: Context, port: int):
    """torch.distributed with gloo over 127.0.0.1 in this rank process, or the
    reason it is not available (the same on every rank)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:
        reason = f"torch is not installed ({exc}); pip install torch to compare with gloo"
    else:
        reason = None if dist.is_available() and dist.is_gloo_available() else \
            "this torch build has no gloo backend"
    reasons = ctx.comm.allgather(reason)
    if any(reasons):
        return None, next(r for r in reasons if r)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=ctx.rank,
                            world_size=ctx.size, timeout=timedelta(seconds=120))
    return (torch, dist), None


def run(ctx: Context) -> list[Measurement]:
    import secrets

    from mpi4py import MPI

    from pyhpc.ccl import Communicator, Master

    comm = ctx.comm
    masters = []
    if ctx.rank == 0:
        secret = secrets.token_bytes(32)
        masters = [Master(secret=secret).start() for _ in range(2)]
        setup = (secret, [m.address for m in masters], free_port())
    else:
        setup = None
    secret, addresses, gloo_port = comm.bcast(setup, root=0)
    plain = Communicator(addresses[0], secret=secret).connect()
    multi = Communicator(addresses[1], secret=secret, connections=CONNECTIONS).connect()
    gloo, why_not = start_gloo(ctx, gloo_port)
    if why_not:
        ctx.progress(f"gloo skipped: {why_not}")
    try:
        for peer in (plain, multi):
            while peer.world_size < ctx.size:
                peer.update_topology(timeout=30)
        comm.Barrier()

        limit = limits.tcp_loopback_limit(ctx)
        rows = [limit]
        all_sizes = sizes(ctx.quick)
        for i, nbytes in enumerate(all_sizes, 1):
            ctx.progress(f"{size_label(nbytes)} ({i}/{len(all_sizes)})")
            rows += size_rows(ctx, comm, MPI, plain, multi, gloo, nbytes, limit.case)
        comm.Barrier()
        return rows
    finally:
        plain.leave()
        multi.leave()
        if gloo is not None:
            gloo[1].destroy_process_group()
        comm.Barrier()
        for m in masters:
            m.stop()


def size_rows(ctx, comm, MPI, plain, multi, gloo, nbytes, limit_case) -> list[Measurement]:
    label = size_label(nbytes)
    count = nbytes // 4
    n = ctx.size
    send = np.full(count, ctx.rank + 1, np.float32)
    data = np.random.default_rng(ctx.rank).standard_normal(count).astype(np.float32)
    mine = np.zeros(count, np.float32)
    theirs = np.zeros(count, np.float32)
    expected = n * (n + 1) / 2

    # Each implementation checked once, so a broken one cannot look fast.
    for peer in (plain, multi):
        peer.all_reduce(send, out=mine)
        if not np.all(mine == expected):
            raise RuntimeError(f"ccl all_reduce gave {mine[:3]}, expected {expected}")
    plain_bytes = plain.last_bytes_sent
    ref = np.empty_like(theirs)
    comm.Allreduce(data, ref, op=MPI.SUM)
    q_bytes, q_err = {}, {}
    for mode in QUANTIZE:
        plain.all_reduce(data, out=mine, quantize=mode)
        q_bytes[mode] = plain.last_bytes_sent
        q_err[mode] = float(np.abs(mine.astype(np.float64) - ref).max())
        scale = float(np.abs(ref).max()) or 1.0
        if not q_err[mode] < 0.05 * scale:
            raise RuntimeError(f"{mode} all_reduce error {q_err[mode]} vs max {scale}")
    comm.Allreduce(send, theirs, op=MPI.SUM)
    if not np.all(theirs == expected):
        raise RuntimeError("MPI Allreduce gave wrong values")

    reps, warmup = reps_and_warmup(nbytes, ctx.quick)
    zeros = np.zeros(count, np.float32)  # in place: a sum of zeros stays zeros
    timers = {
        "plain": lambda k: ctx.time_reps(lambda: plain.all_reduce(send, out=mine), warmup, k),
        "inplace": lambda k: ctx.time_reps(lambda: plain.all_reduce(zeros), warmup, k),
        "multi": lambda k: ctx.time_reps(lambda: multi.all_reduce(send, out=mine), warmup, k),
    }
    for mode in QUANTIZE:
        timers[mode] = (lambda m: lambda k: ctx.time_reps(
            lambda: plain.all_reduce(data, out=mine, quantize=m), warmup, k))(mode)
    if gloo is not None:
        torch, dist = gloo
        tensor = torch.from_numpy(send.copy())
        dist.all_reduce(tensor)
        if not np.all(tensor.numpy() == expected):
            raise RuntimeError(f"gloo all_reduce gave {tensor[:3]}, expected {expected}")
        timers["gloo"] = lambda k: ctx.time_reps(lambda: dist.all_reduce(tensor), warmup, k)
    timers["mpi"] = lambda k: ctx.time_reps(
        lambda: comm.Allreduce(send, theirs, op=MPI.SUM), warmup, k)
    timed = interleave(timers, reps)

    bus = nbytes * 2 * (n - 1) / n

    def row(case, impl, role, key, **kw):
        return Measurement(case, impl, role, timed[key], x=nbytes, bytes_per_rep=bus,
                           limit=limit_case, **kw)

    gloo_impl = f"torch {gloo[0].__version__} gloo all_reduce" if gloo else None
    mpi_impl = "MPI_Allreduce (mpi4py)"
    main_base = ("gloo", gloo_impl) if gloo else ("mpi", mpi_impl)
    rows = [row(label, "pyhpc.ccl ring over TCP, 1 connection", "pyhpc", "plain")]
    if gloo:
        rows.append(row(label, gloo_impl, "baseline", "gloo"))
    rows.append(row(label, mpi_impl, "baseline", "mpi"))
    rows += [row(f"{label} in place", "pyhpc.ccl ring over TCP, in place (inputs saved "
                 "before overwritten)", "pyhpc", "inplace"),
             row(f"{label} in place", main_base[1], "baseline", main_base[0])]
    rows += [row(f"{label} x{CONNECTIONS} conn", f"pyhpc.ccl ring, connections={CONNECTIONS}",
                 "pyhpc", "multi"),
             row(f"{label} x{CONNECTIONS} conn", main_base[1], "baseline", main_base[0])]
    for mode in QUANTIZE:
        case = f"{label} {mode}"
        note = (f"pyhpc.ccl ring, {mode}: rank 0 sent {q_bytes[mode]} B vs {plain_bytes} B "
                f"float32 ({plain_bytes / max(q_bytes[mode], 1):.2f}x fewer), max error "
                f"{q_err[mode]:.3g}")
        metrics = {"bytes_sent": float(q_bytes[mode]), "float32_bytes_sent": float(plain_bytes),
                   "bytes_ratio": plain_bytes / max(q_bytes[mode], 1),
                   "max_abs_error": q_err[mode]}
        rows += [row(case, note, "pyhpc", mode, metrics=metrics),
                 row(case, main_base[1], "baseline", main_base[0])]
    return rows


BENCHMARK = Benchmark(
    name="ccl_allreduce",
    ranks=2,
    description="pyhpc.ccl fault-tolerant ring all-reduce (SUM, float32, TCP on 127.0.0.1; "
                f"1 and {CONNECTIONS} connections, {' and '.join(QUANTIZE)}) against "
                "torch.distributed gloo and MPI_Allreduce, bus bandwidth (bytes x 2(n-1)/n); "
                "limit: loopback TCP bandwidth, measured in the same job",
    run=run,
)
