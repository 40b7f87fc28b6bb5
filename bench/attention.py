"""attention: sequence-parallel attention forward, TokenRing against the K/V ring, 2 and 4 ranks.

pyhpc: ``token_ring_attention`` (queries travel, partial out/lse come back to their
owner). Baseline: ``ring_attention`` (K/V ring), the variant ring-flash-attention and
most frameworks use. Both causal, zigzag layout, float32, the same inputs; outputs
checked against each other once. A repetition is one forward pass (the slowest rank).
Metrics: bytes each rank sent (the implementation's count) for each variant.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Context, Measurement, interleave

HEAD_DIM = 64


def run(ctx: Context, xp=np, dtype=np.float32, shapes=None) -> list[Measurement]:
    from mpi4py import MPI

    rows = []
    reps = 5 if ctx.quick else 10
    shapes = shapes or ([(2048, 8, 8)] if ctx.quick else [(4096, 8, 8), (4096, 8, 2)])
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

    pos = at.positions("zigzag", ctx.rank, ctx.size, total)
    rng = np.random.default_rng(ctx.rank)
    q, k, v = (xp.asarray(rng.standard_normal((pos.size, h, HEAD_DIM)).astype(dtype))
               for h in (heads, kv_heads, kv_heads))
    sync = xp.cuda.Device().synchronize if xp is not np else (lambda: None)

    def forward(variant, **kw):
        out = variant(q, k, v, ctx.comm, causal=True, **kw)[0]
        sync()  # the GPU's work counts
        return out

    sent = {"token_ring": {}, "ring": {}}
    mine = forward(at.token_ring_attention, stats=sent["token_ring"])
    theirs = forward(at.ring_attention, stats=sent["ring"])
    host = [(x.get() if xp is not np else x).astype(np.float64) for x in (mine, theirs)]
    tol = 1e-4 if np.dtype(dtype).itemsize >= 4 else 2e-2
    if not np.allclose(host[0], host[1], rtol=tol, atol=tol):
        raise RuntimeError(f"attention: TokenRing and ring outputs differ on rank {ctx.rank}")
    seconds = interleave({
        "pyhpc": lambda n: ctx.time_reps(lambda: forward(at.token_ring_attention), 0, n),
        "baseline": lambda n: ctx.time_reps(lambda: forward(at.ring_attention), 0, n),
    }, reps)
    label = f"{ctx.size} ranks S={total} H={heads}/{kv_heads}"
    bytes_sent = {name: ctx.comm.allreduce(s["bytes_sent"], op=_max()) for name, s in sent.items()}
    metrics = {"max_bytes_sent_per_rank_token_ring": bytes_sent["token_ring"],
               "max_bytes_sent_per_rank_ring": bytes_sent["ring"],
               "bytes_ratio_token_ring_over_ring": bytes_sent["token_ring"] / bytes_sent["ring"]}
    return [Measurement(label, "TokenRing forward (Q travels, out/lse return)", "pyhpc", seconds["pyhpc"],
                        x=ctx.size, metrics=metrics),
            Measurement(label, "ring attention forward (K/V ring)", "baseline", seconds["baseline"], x=ctx.size)]


def _max():
    from mpi4py import MPI

    return MPI.MAX


BENCHMARK = Benchmark(
    name="attention",
    ranks=4,
    description=f"causal sequence-parallel attention forward (zigzag, float32, head dim {HEAD_DIM}) on 2 and "
                "4 ranks: TokenRing vs the K/V ring",
    run=run,
    x_label="ranks",
)
