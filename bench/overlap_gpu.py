"""overlap_gpu: T3's GEMM + collective overlap with cupy arrays on the GPU (2 ranks sharing one GPU).

pyhpc: ``pyhpc.overlap`` with cupy operands, ``method="overlap"`` (every chunk's GEMM
queued on a compute stream in ring order; a host loop folds each arriving partial in
on a second stream and fires the chunk's send once its copy to pinned memory is
done). Baselines: ``"sequential"`` (one GEMM, copy to the host, the MPI collective,
copy back) and ``"chunked"`` (per chunk: GEMM, copy, a nonblocking collective left to
MPI), in the same API. The MPI is the job's, not CUDA-aware: all three stage through
pinned host memory. ``chunks=None``: ``choose_chunks`` picks the count from one timed
sequential run (0: overlap predicted not to pay, so it runs sequentially). Limit: the
GEMM alone on the same operands, both ranks multiplying at once as in the runs, so
"% of limit" = T_gemm / T. Cases: gemm_reduce_scatter on a communication-heavy shape
(small K: a big product to reduce-scatter, a short GEMM) and a compute-heavy one (long
K), each in float16 and float32, and all_gather_gemm on a communication-heavy shape
in float16. float16's partial sums travel as float32 (see ``pyhpc.overlap``), so its
reduce-scatter moves as many bytes as float32's. A repetition counts the slowest
rank. Metrics: speedup over sequential, overlap efficiency = (T_seq - T_overlap) /
min(T_gemm, T_comm) with T_comm = T_seq - T_gemm, chunks. Goal: >= 1.2x over
sequential on a communication-heavy shape.
"""

from __future__ import annotations

import numpy as np

from . import overlap
from .harness import Benchmark, Context, Measurement

# (label, collective, dtype, M, N, K): per rank a [M, K] and b [K, N] for the reduce-scatter;
# for the all-gather a_shard [M / ranks, K] and b [K, N]
CASES = (
    ("RS comm-heavy", "reduce_scatter", "float16", 4096, 4096, 512),
    ("RS comm-heavy", "reduce_scatter", "float32", 4096, 4096, 512),
    ("RS compute-heavy", "reduce_scatter", "float16", 1024, 1024, 262144),
    ("RS compute-heavy", "reduce_scatter", "float32", 1024, 1024, 32768),
    ("AG comm-heavy", "all_gather", "float16", 8192, 512, 4096),
)


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import cuda
    from pyhpc import overlap as ov

    cp = cuda.cupy()
    if cp is None:
        raise RuntimeError("overlap_gpu: cupy is not installed")
    reps = 6 if ctx.quick else 20
    rows: list[Measurement] = []
    for i, (label, collective, name, m, n, k) in enumerate(CASES, 1):
        ctx.progress(f"{label} {name} {m}x{n}x{k} ({i}/{len(CASES)})")
        cp.random.seed(ctx.rank)
        if collective == "reduce_scatter":
            a = cp.random.standard_normal((m, k), dtype=cp.float32).astype(name)
        else:
            a = cp.random.standard_normal((m // ctx.size, k), dtype=cp.float32).astype(name)
        b = cp.random.standard_normal((k, n), dtype=cp.float32).astype(name)
        whole = a if collective == "reduce_scatter" else cp.concatenate([a] * ctx.size)
        product = cp.empty((m, n), dtype=a.dtype)
        stream = cp.cuda.get_current_stream()

        def gemm_alone():
            cp.matmul(whole, b, out=product)
            stream.synchronize()

        flops = 2.0 * m * n * k
        limit = f"gemm {m}x{n}x{k} {name}"
        seconds = ctx.time_reps(gemm_alone, 2, reps)
        rows.append(Measurement(limit, "cupy a @ b alone", "limit", seconds, flops_per_rep=flops))
        if collective == "reduce_scatter":
            def call(method, a=a, b=b):
                return ov.gemm_reduce_scatter(a, b, ctx.comm, method=method)
        else:
            def call(method, a=a, b=b):
                return ov.all_gather_gemm(a, b, ctx.comm, method=method)
        chunks = ov.choose_chunks(ctx.comm, a, b, collective=collective)
        check(ctx, cp, call, f"{label} {name}", 1e-4 if name == "float32" else 1e-2)
        rows += overlap.compare(ctx, f"{label} {name} {m}x{n}x{k}", call, reps, float(np.median(seconds)), flops,
                                limit, chunks, impl="T3 overlap (chunk tracker, ring, streams and events)")
        del a, b, whole, product
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def check(ctx: Context, cp, call, label: str, tol: float) -> None:
    """The three methods agree (each against the sequential result), on every rank."""
    want = call("sequential").astype(cp.float32)
    scale = max(float(cp.abs(want).max()), 1e-30) if want.size else 1.0
    for method in ("overlap", "chunked"):
        got = call(method).astype(cp.float32)
        error = float(cp.abs(got - want).max()) / scale if want.size else 0.0
        if ctx.comm.allreduce(error, op=_max()) > tol:
            raise RuntimeError(f"overlap_gpu: {label}: {method} differs from sequential by {error:.2e} "
                               f"(relative to the largest value) on rank {ctx.rank}")


def plot(result, path) -> None:
    """Per case: each method's speedup over sequential (median times; the slowest rank),
    the goal of 1.2x dashed, and as a marker the speedup that hiding the shorter of the
    GEMM and the collective would give (the pipelining of the copies and MPI with each
    other can pass it)."""
    from matplotlib.figure import Figure

    from .report import case_axis, save_figure

    cases = [m.case for m in result.measurements if m.role == "pyhpc"]
    by = {(m.case, m.role if m.role != "baseline" else m.impl): m for m in result.measurements}
    impls = [("pyhpc", "T3 overlap")] + [(m.impl, m.impl.split(":")[0]) for m in result.measurements
                                         if m.role == "baseline" and m.case == cases[0]]
    fig = Figure(figsize=(11, 4.8))
    ax = fig.subplots()
    xs = np.arange(len(cases))
    width = 0.8 / len(impls)
    seq = {c: float(np.median(next(m.seconds for m in result.measurements
                                   if m.case == c and m.impl.startswith("sequential")))) for c in cases}
    for j, (key, name) in enumerate(impls):
        speedup = [seq[c] / float(np.median(by[(c, key)].seconds)) for c in cases]
        ax.bar(xs + (j - (len(impls) - 1) / 2) * width, speedup, width=width, label=name)
    bound = []
    for c in cases:
        t_gemm = by[(c, "pyhpc")].metrics.get("t_gemm_ms", float("nan")) / 1e3
        bound.append(seq[c] / max(seq[c] - t_gemm, t_gemm, 1e-12))
    ax.plot(xs, bound, "k_", markersize=20, label="GEMM or collective wholly hidden")
    ax.axhline(1.2, color="black", linestyle="--", linewidth=1, label="goal 1.2x")
    case_axis(ax, cases, "speedup over sequential (median; the slowest rank)", fontsize="x-small")
    save_figure(fig, result, path)


def _max():
    from mpi4py import MPI

    return MPI.MAX


BENCHMARK = Benchmark(
    name="overlap_gpu",
    ranks=2,
    description="GEMM + reduce-scatter / all-gather with cupy on the GPU, 2 ranks on one GPU, staged through "
                "pinned host memory: T3 overlap vs sequential and naive chunked, communication- and "
                "compute-heavy shapes, float16 and float32; limit: the GEMM alone",
    run=run,
    x_label="T_comm / T_gemm",
    needs_gpu=True,
    plot=plot,
)
