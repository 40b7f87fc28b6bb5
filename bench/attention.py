"""attention: sequence-parallel attention, one training step's attention (forward + backward), every variant.

pyhpc: ``token_ring_attention`` (queries travel, partials come back to their owner;
causal zigzag sends each query block as two halves). Baselines, the same inputs in
the same job: ``ring_attention`` (K/V ring, what ring-flash-attention and most
frameworks use), ``allgather_attention`` and ``ulysses_attention`` (where its head
split fits). Causal, zigzag layout; outputs checked against the ring once. A
repetition is one forward and one backward pass (the slowest rank).

Metrics on TokenRing's row, per variant: the bytes the busiest rank sent (counted
by the implementation); for ring and TokenRing, the share of a step's transfers
already done when its compute ended and the time spent waiting for the rest (one
forward + backward, the slowest rank); the bytes on the busiest link (``attention.traffic``, the
most any rank sends or receives), and a modelled time per step at link bandwidths
of 3, 13, 50 and 450 GB/s: for the pipelined variants (ring, TokenRing) the
measured time or the busiest link's transfer time, whichever is longer, plus one
step's transfer that nothing hides; for all-gather and Ulysses, whose collectives
come before (and after) the compute, the sum. The measured time includes this
machine's shared-memory transfers.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Context, Measurement, interleave
from .report import case_axis, save_figure

HEAD_DIM = 64
BANDWIDTHS_GBS = (3, 13, 50, 450)
PIPELINED = ("ring", "token_ring")


def run(ctx: Context, xp=np, dtype=np.float32, shapes=None) -> list[Measurement]:
    from mpi4py import MPI

    rows = []
    reps = 3 if ctx.quick else 7
    shapes = shapes or ([(1024, 8, 8)] if ctx.quick else [(4096, 8, 8), (4096, 8, 2)])
    for size in [n for n in (2, 4) if n <= ctx.size]:
        for total, heads, kv_heads in shapes:
            ctx.progress(f"{size} ranks, S={total} H={heads} H_kv={kv_heads}")
            sub = ctx.comm.Split(0 if ctx.rank < size else MPI.UNDEFINED, ctx.rank)
            if sub != MPI.COMM_NULL:
                rows += case(Context(sub, ctx.quick, ctx.benchmark), total, heads, kv_heads, reps, xp, dtype)
                sub.Free()
            ctx.comm.Barrier()
    return rows


def case(ctx: Context, total: int, heads: int, kv_heads: int, reps: int, xp=np,
         dtype=np.float32) -> list[Measurement]:
    from pyhpc import attention as at

    pos = [at.positions("zigzag", r, ctx.size, total) for r in range(ctx.size)]
    rng = np.random.default_rng(ctx.rank)
    q, k, v, dout = (xp.asarray(rng.standard_normal((pos[ctx.rank].size, h, HEAD_DIM)).astype(dtype))
                     for h in (heads, kv_heads, kv_heads, heads))
    sync = xp.cuda.Device().synchronize if xp is not np else (lambda: None)
    variants = {"token_ring": (at.token_ring_attention, at.token_ring_attention_backward),
                "ring": (at.ring_attention, at.ring_attention_backward),
                "allgather": (at.allgather_attention, at.allgather_attention_backward),
                "ulysses": (at.ulysses_attention, at.ulysses_attention_backward)}
    if heads % ctx.size or kv_heads % ctx.size and ctx.size % kv_heads:
        del variants["ulysses"]

    def step(name, sent=None):
        forward, backward = variants[name]
        out, lse = forward(q, k, v, ctx.comm, causal=True, stats=sent)
        grads = backward(dout, q, k, v, out, lse, ctx.comm, causal=True, stats=sent)
        sync()  # the GPU's work counts
        return out, grads

    sent = {name: {} for name in variants}
    results = {name: step(name, sent[name]) for name in variants}
    tol = 1e-3 if np.dtype(dtype).itemsize >= 4 else 3e-2
    for name, (out, grads) in results.items():
        for got, want in zip((out, *grads), (results["ring"][0], *results["ring"][1])):
            got, want = ((x.get() if xp is not np else x).astype(np.float64) for x in (got, want))
            if not np.allclose(got, want, rtol=tol, atol=tol * np.abs(want).max()):
                raise RuntimeError(f"attention: {name} and ring differ on rank {ctx.rank}")
    seconds = interleave({name: (lambda n, name=name: ctx.time_reps(lambda: step(name), 0, n))
                          for name in variants}, reps)
    tokens = [len(p) for p in pos]
    metrics = {}
    for name in variants:
        t = sum(at.traffic(name, tokens, heads, kv_heads, HEAD_DIM, dtype, gpu=xp is not np, backward=b,
                           causal=True) for b in (False, True))
        busiest = int(max(t.sum(axis=0).max(), t.sum(axis=1).max()))
        metrics[f"bytes_sent_max_rank_{name}"] = ctx.comm.allreduce(sent[name]["bytes_sent"], op=_max())
        if "transfers" in sent[name]:  # the point-to-point variants: did the transfers finish during compute?
            metrics[f"wait_after_compute_ms_{name}"] = ctx.comm.allreduce(sent[name]["wait_seconds"], op=_max()) * 1e3
            metrics[f"transfers_done_by_compute_end_{name}"] = (
                ctx.comm.allreduce(sent[name]["transfers_done_by_compute_end"]) /
                ctx.comm.allreduce(sent[name]["transfers"]))
        metrics[f"bytes_busiest_link_{name}"] = busiest
        measured = float(np.median(seconds[name]))
        for bw in BANDWIDTHS_GBS:
            wire = busiest / (bw * 1e9)
            modelled = (max(measured, wire) + wire / max(ctx.size - 1, 1) if name in PIPELINED
                        else measured + wire)
            metrics[f"modelled_ms_{name}_{bw}GBs"] = modelled * 1e3
    metrics["bytes_ratio_token_ring_over_ring"] = metrics["bytes_sent_max_rank_token_ring"] / \
        metrics["bytes_sent_max_rank_ring"]
    label = f"{ctx.size} ranks S={total} H={heads}/{kv_heads}"
    names = {"token_ring": "TokenRing (Q travels, partials return)", "ring": "ring attention (K/V ring)",
             "allgather": "all-gather attention", "ulysses": "Ulysses (all-to-all over heads)"}
    return [Measurement(label, names[name], "pyhpc" if name == "token_ring" else "baseline", seconds[name],
                        x=ctx.size, metrics=metrics if name == "token_ring" else None) for name in variants]


def _max():
    from mpi4py import MPI

    return MPI.MAX


def plot(result, path) -> None:
    """Left: each variant's measured time per case. Right: the modelled time per step of the
    last case against link bandwidth, per variant."""
    from matplotlib.figure import Figure

    cases = list(dict.fromkeys(m.case for m in result.measurements))
    impls = list(dict.fromkeys(m.impl for m in result.measurements))
    by = {(m.case, m.impl): m for m in result.measurements}
    fig = Figure(figsize=(12, 4.8))
    left, right = fig.subplots(1, 2)
    xs = np.arange(len(cases))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        med = [np.median(by[(c, impl)].seconds) * 1e3 if (c, impl) in by else np.nan for c in cases]
        left.bar(xs + (j - (len(impls) - 1) / 2) * width, med, width=width, label=impl)
    case_axis(left, cases, "forward + backward (ms), median; the slowest rank", fontsize="x-small")
    last = [m for m in result.measurements if m.case == cases[-1] and m.metrics]
    if last:
        metrics = last[0].metrics
        for name in ("token_ring", "ring", "allgather", "ulysses"):
            ys = [metrics.get(f"modelled_ms_{name}_{bw}GBs") for bw in BANDWIDTHS_GBS]
            if None not in ys:
                right.plot(BANDWIDTHS_GBS, ys, marker="o", label=name)
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("link bandwidth (GB/s)")
        right.set_ylabel("modelled time per step (ms)")
        right.set_title(f"modelled: {cases[-1]}", fontsize="small")
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize="small")
    save_figure(fig, result, path)


BENCHMARK = Benchmark(
    name="attention",
    ranks=4,
    description=f"causal sequence-parallel attention, forward + backward (zigzag, float32, head dim {HEAD_DIM}) "
                "on 2 and 4 ranks: TokenRing vs the K/V ring, all-gather and Ulysses; modelled link times",
    run=run,
    x_label="ranks",
    plot=plot,
)
