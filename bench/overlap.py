"""overlap: a row-parallel GEMM + reduce-scatter (and a column-parallel all-gather + GEMM),
T3's fine-grained overlap against the sequential baseline and a naive chunked pipeline.

pyhpc: ``method="overlap"`` (ring order staggered by rank, chunk sends fired by a
tile tracker, polling between tiles). Baselines: ``"sequential"`` (one GEMM, then the
collective) and ``"chunked"`` (per chunk: GEMM, then a nonblocking collective that only
MPI progresses). Limit: the GEMM alone on the same operands (the rate if communication
were free), so "% of limit" = T_gemm / T. Cases: the job's own MPI, and a modelled link
(``pyhpc.overlap.Link``) whose bandwidth puts the transfer at 0.5x, 1x and 2x the GEMM
time, because on one machine MPI's copies share the cores with the GEMM. A repetition
counts the slowest rank. Metrics: overlap efficiency = (T_seq - T_overlap) /
min(T_gemm, T_comm) with T_comm = T_seq - T_gemm, speedup over sequential, chunks.
Goals: efficiency >= 0.8 on the modelled link where T_comm ~ T_gemm; never more than
5% slower than sequential.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Context, Measurement, interleave
from .report import case_axis, save_figure

K_PER_RANK, N = 512, 1024
RATIOS = (0.5, 1.0, 2.0)
LATENCY = 20e-6


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import overlap as ov

    m = 1024 if ctx.quick else 2048
    reps = 6 if ctx.quick else 15
    rng = np.random.default_rng(ctx.rank)
    a = rng.standard_normal((m, K_PER_RANK)).astype(np.float32)
    b = rng.standard_normal((K_PER_RANK, N)).astype(np.float32)
    flops = 2.0 * m * N * K_PER_RANK
    gemm = ctx.time_reps(lambda: a @ b, 2, reps)
    t_gemm = float(np.median(gemm))
    # check once against a reduce-scatter of the plain product
    full = a @ b
    want = np.empty_like(ov.gemm_reduce_scatter(a, b, ctx.comm, method="sequential"))
    ctx.comm.Reduce_scatter(full, want, recvcounts=[len(r) * N for r in np.array_split(np.arange(m), ctx.size)])
    got = ov.gemm_reduce_scatter(a, b, ctx.comm, method="overlap")
    if not np.allclose(got, want, rtol=1e-4, atol=1e-3):
        raise RuntimeError(f"overlap: gemm_reduce_scatter differs from GEMM + Reduce_scatter on rank {ctx.rank}")
    ring_bytes = (ctx.size - 1) / ctx.size * m * N * a.dtype.itemsize  # what each rank sends in a ring RS
    rows = [Measurement(f"gemm {m}x{N}x{K_PER_RANK}", "numpy a @ b alone", "limit", gemm, flops_per_rep=flops)]
    cases = [("job's MPI", None)] + [(f"link, comm = {r:g}x gemm", ov.Link(ring_bytes / (r * t_gemm), LATENCY))
                                     for r in RATIOS]
    for i, (label, link) in enumerate(cases, 1):
        ctx.progress(f"reduce-scatter, {label} ({i}/{len(cases)})")
        rows += compare(ctx, f"RS {label}", lambda method, link=link: ov.gemm_reduce_scatter(
            a, b, ctx.comm, method=method, link=link), reps, t_gemm, flops, rows[0].case,
            ov.choose_chunks(ctx.comm, a, b, link))
    ctx.progress("all-gather + GEMM, comm = 1x gemm")
    shard = a[: m // ctx.size]
    b_cols = b[:, : N]  # [K, N_r] with K = K_PER_RANK
    ag_bytes = (ctx.size - 1) * shard.nbytes
    ag_gemm = float(np.median(ctx.time_reps(lambda: np.concatenate([shard] * ctx.size) @ b_cols, 1, reps)))
    link = ov.Link(ag_bytes / ag_gemm, LATENCY)
    rows += compare(ctx, "AG link, comm = 1x gemm", lambda method: ov.all_gather_gemm(
        shard, b_cols, ctx.comm, method=method, link=link), reps, ag_gemm, flops, rows[0].case,
        ov.choose_chunks(ctx.comm, shard, b_cols, link))
    return rows


def compare(ctx: Context, label: str, call, reps: int, t_gemm: float, flops: float, limit: str,
            chunks: int, impl: str = "T3 overlap (tile tracker, ring, polling)") -> list[Measurement]:
    seconds = interleave({method: (lambda n, method=method: ctx.time_reps(lambda: call(method), 1, n))
                          for method in ("overlap", "sequential", "chunked")}, reps)
    t = {k: float(np.median(v)) for k, v in seconds.items()}
    t_comm = t["sequential"] - t_gemm
    metrics = {"efficiency": (t["sequential"] - t["overlap"]) / min(t_gemm, t_comm) if t_comm > 0 else float("nan"),
               "speedup_over_sequential": t["sequential"] / t["overlap"], "t_gemm_ms": t_gemm * 1e3,
               "t_comm_ms": t_comm * 1e3, "chunks": chunks}
    x = max(t_comm / t_gemm, 1e-3)
    return [Measurement(label, impl, "pyhpc", seconds["overlap"], x=x,
                        flops_per_rep=flops, limit=limit, metrics=metrics),
            Measurement(label, "sequential: GEMM, then the collective", "baseline", seconds["sequential"], x=x,
                        flops_per_rep=flops, limit=limit),
            Measurement(label, "naive chunked: GEMM per chunk + nonblocking collective", "baseline",
                        seconds["chunked"], x=x, flops_per_rep=flops, limit=limit)]


def plot(result, path) -> None:
    """Per case: the three methods' times (median, quartile bars), the GEMM alone dashed,
    and the overlap's efficiency written above its bar."""
    from matplotlib.figure import Figure

    cases = [m.case for m in result.measurements if m.role == "pyhpc"]
    by = {(m.case, m.impl): m for m in result.measurements}
    impls = list(dict.fromkeys(m.impl for m in result.measurements if m.role != "limit"))
    fig = Figure(figsize=(11, 4.8))
    ax = fig.subplots()
    xs = np.arange(len(cases))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        t = [np.asarray(by[(c, impl)].seconds) * 1e3 for c in cases]
        med = np.array([np.median(v) for v in t])
        err = [med - [np.percentile(v, 25) for v in t], [np.percentile(v, 75) for v in t] - med]
        ax.bar(xs + (j - (len(impls) - 1) / 2) * width, med, width=width, yerr=err, capsize=3, label=impl)
        if j == 0:
            for x, c, y in zip(xs, cases, med):
                eff = by[(c, impl)].metrics.get("efficiency", float("nan"))
                ax.annotate(f"eff {eff:.2f}", (x - (len(impls) - 1) / 2 * width, y), ha="center", va="bottom",
                            fontsize="x-small")
    for m in result.measurements:
        if m.role == "limit":
            ax.axhline(np.median(m.seconds) * 1e3, color="black", linestyle="--", linewidth=1,
                       label=f"limit: {m.case} alone")
    case_axis(ax, cases, "time (ms), median and quartiles; the slowest rank", fontsize="small")
    save_figure(fig, result, path)


BENCHMARK = Benchmark(
    name="overlap",
    ranks=2,
    description=f"GEMM (M x {N} x {K_PER_RANK} per rank, float32) + reduce-scatter / all-gather over 2 ranks: "
                "T3 overlap vs sequential and naive chunked, on the job's MPI and on a modelled link; "
                "limit: the GEMM alone",
    run=run,
    x_label="T_comm / T_gemm",
    plot=plot,
)
