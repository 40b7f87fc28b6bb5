"""moe_layers: one decode step through a stack of MoE layers, ExFlow's mode against classic
expert parallelism, on 2 and 4 ranks of one job.

pyhpc: ``MoEStack(mode="exflow")`` with the heuristic's affinity placement
(load capped at 1.2x the mean per rank and layer; one
``Alltoallv`` per layer for top-1, plus the keys/values ``Allgatherv`` that keeps
every rank's context coherent). Baseline: ``mode="classic"`` with the contiguous
placement (DeepSpeed-MoE: dispatch and combine ``Alltoallv`` per layer). Both
replay the same routing trace (inter-layer affinity 0.8; the placement was made
from another sample of the same generator) on the same inputs, and their outputs
are checked against each other once. A repetition is one step (the slowest rank).
Metrics: bytes that leave a rank per step and per layer in each mode, summed over ranks.
Goal: ExFlow moves <= 55% of classic's all-to-all bytes and is faster on 4 ranks.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Context, Measurement, interleave
from .report import case_axis, save_figure

LAYERS, EXPERTS_PER_RANK = 8, 4
D_MODEL, D_KV, D_FF = 1024, 128, 512  # a communication-heavy shape: small experts, wide tokens
TOKENS_PER_RANK = 64
WARMUP = 2
# ExFlow's placement keeps each rank's token load within 1.2x the mean: without a cap,
# grouping popular experts for locality left one rank 2.2x the mean, and the step waits for it
MAX_LOAD = 1.2


def run(ctx: Context, xp=np) -> list[Measurement]:
    from mpi4py import MPI

    rows = []
    reps = 6 if ctx.quick else 24
    for size in [n for n in (2, 4) if n <= ctx.size]:
        for top_k in ((1,) if ctx.quick else (1, 2)):
            ctx.progress(f"{size} ranks, top-{top_k}")
            sub = ctx.comm.Split(0 if ctx.rank < size else MPI.UNDEFINED, ctx.rank)
            if sub != MPI.COMM_NULL:
                rows += case(Context(sub, ctx.quick, ctx.benchmark), top_k, reps, xp)
                sub.Free()
            ctx.comm.Barrier()
    return rows


def case(ctx: Context, top_k: int, reps: int, xp=np) -> list[Measurement]:
    from pyhpc import moe

    size, rank = ctx.size, ctx.rank
    experts = EXPERTS_PER_RANK * size
    n_requests = TOKENS_PER_RANK * size
    steps = WARMUP + reps + 1  # +1: the checked step
    config = moe.MoEConfig(n_layers=LAYERS, n_experts=experts, d_model=D_MODEL, d_kv=D_KV, d_ff=D_FF,
                           top_k=top_k, n_requests=n_requests, max_context=steps)
    params = moe.GeneratorParams(affinity=0.8)
    train = moe.generate_trace(20_000, LAYERS, experts, top_k=top_k, params=params, seed=2)
    replay = moe.generate_trace(20_000 + n_requests * steps, LAYERS, experts, top_k=top_k, params=params,
                                seed=2)[20_000:]
    placement = moe.place_experts(moe.affinity(train, experts), size, max_load=MAX_LOAD)
    stacks = {"exflow": moe.MoEStack(config, ctx.comm, mode="exflow", placement=placement, xp=xp),
              "classic": moe.MoEStack(config, ctx.comm, mode="classic", xp=xp)}
    mine = np.arange(rank, n_requests, size)
    rng = np.random.default_rng(rank)
    x = xp.asarray(rng.standard_normal((mine.size, D_MODEL)).astype(np.float32))
    step_of = {"exflow": 0, "classic": 0}

    def one_step(mode: str):
        s = step_of[mode]
        step_of[mode] += 1
        routes = replay[s * n_requests:(s + 1) * n_requests][mine]
        return stacks[mode].step(x, mine, routes)

    outputs = {mode: moe.runtime._host(one_step(mode)) for mode in stacks}  # step 0: same inputs, routes
    scale = float(np.abs(outputs["classic"]).max(initial=0))
    if not np.allclose(outputs["exflow"], outputs["classic"], rtol=1e-4, atol=1e-4 * max(scale, 1.0)):
        raise RuntimeError(f"moe_layers: exflow and classic outputs differ on rank {rank}")
    sent = {mode: {k: ctx.comm.allreduce(v) for k, v in stacks[mode].stats.items()} for mode in stacks}
    for mode in stacks:
        for _ in range(WARMUP):
            one_step(mode)
    seconds = interleave({mode: (lambda n, m=mode: ctx.time_reps(lambda: one_step(m), 0, n)) for mode in stacks},
                         reps)
    label = f"{size} ranks top-{top_k}"
    metrics = {
        "a2a_bytes_per_layer_exflow": sent["exflow"]["alltoall_bytes"] / LAYERS,
        "a2a_bytes_per_layer_classic": sent["classic"]["alltoall_bytes"] / LAYERS,
        "a2a_bytes_ratio": sent["exflow"]["alltoall_bytes"] / max(sent["classic"]["alltoall_bytes"], 1),
        "kv_allgather_bytes_per_step": sent["exflow"]["allgather_bytes"],
        "total_bytes_ratio": (sent["exflow"]["alltoall_bytes"] + sent["exflow"]["allgather_bytes"])
        / max(sent["classic"]["alltoall_bytes"], 1),
        "alltoalls_exflow": sent["exflow"]["alltoalls"] / size,
        "alltoalls_classic": sent["classic"]["alltoalls"] / size,
        "cross_fraction_of_placement": moe.evaluate(placement, replay[:n_requests * steps]),
        "load_imbalance_exflow": moe.load_imbalance(placement, replay[:n_requests * steps]),
        "load_imbalance_classic": moe.load_imbalance(stacks["classic"].placement, replay[:n_requests * steps]),
    }
    return [Measurement(label, "ExFlow mode, affinity placement", "pyhpc", seconds["exflow"], x=size,
                        metrics=metrics),
            Measurement(label, "classic expert parallelism (dispatch + combine), contiguous", "baseline",
                        seconds["classic"], x=size)]


def plot(result, path) -> None:
    """Step time per case (median, quartile bars) and all-to-all / all-gather bytes per step."""
    from matplotlib.figure import Figure

    rows = {(m.case, m.role): m for m in result.measurements}
    cases = list(dict.fromkeys(m.case for m in result.measurements))
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    xs = np.arange(len(cases))
    for j, (role, name) in enumerate((("pyhpc", "ExFlow mode"), ("baseline", "classic"))):
        seconds = [np.asarray(rows[(c, role)].seconds) * 1e3 for c in cases]
        med = [np.median(t) for t in seconds]
        low = [m - np.percentile(t, 25) for m, t in zip(med, seconds)]
        high = [np.percentile(t, 75) - m for m, t in zip(med, seconds)]
        left.bar(xs + (j - 0.5) * 0.4, med, width=0.4, yerr=[low, high], capsize=3, label=name)
        metrics = [rows[(c, "pyhpc")].metrics for c in cases]
        key = "a2a_bytes_per_layer_exflow" if role == "pyhpc" else "a2a_bytes_per_layer_classic"
        right.bar(xs + (j - 0.5) * 0.4, [m[key] * LAYERS / 1e6 for m in metrics], width=0.4,
                  label=f"{name}: all-to-all")
    right.bar(xs - 0.2, [rows[(c, "pyhpc")].metrics["kv_allgather_bytes_per_step"] / 1e6 for c in cases],
              width=0.4, bottom=[rows[(c, "pyhpc")].metrics["a2a_bytes_per_layer_exflow"] * LAYERS / 1e6
                                 for c in cases], color="tab:blue", alpha=0.4, label="ExFlow mode: KV all-gather")
    case_axis(left, cases, "step time (ms), median and quartiles")
    case_axis(right, cases, "MB leaving the ranks per step")
    save_figure(fig, result, path)


BENCHMARK = Benchmark(
    name="moe_layers",
    ranks=4,
    description=f"decode step of {LAYERS} MoE layers (d_model {D_MODEL}, d_kv {D_KV}, d_ff {D_FF}, "
                f"{EXPERTS_PER_RANK} experts and {TOKENS_PER_RANK} tokens per rank) on 2 and 4 ranks: "
                "ExFlow mode vs classic dispatch+combine",
    run=run,
    x_label="ranks",
    plot=plot,
)
