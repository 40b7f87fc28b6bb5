"""moe_placement: how much routing ExFlow's expert placement keeps on one rank, and at what cost.

For synthetic traces with strong inter-layer affinity (E experts, P ranks, L
layers) and for the real OLMoE-1B-7B and Mixtral-8x7B co-occurrence counts
(shared/data/moe_affinity; layers 0 -> 7 -> 15), it places the experts with
pyhpc's heuristic and with the exact ILP (scipy milp / HiGHS, where the model is
small enough to build, under a time limit) and reports for each the fraction of
transitions that cross ranks, next to the contiguous placement (what
DeepSpeed-MoE does), a random one, and the heuristic with a load cap
(``max_load=1.2``; the load imbalance of each is reported too). Times are solve times: pyhpc = heuristic,
baseline = ILP. The traces used for placement and for evaluation are different
samples of the same generator (placement never sees the tokens it is scored on).
Goals: the heuristic within 2% of the ILP wherever the ILP proves optimality;
>= 40% fewer cross-rank transitions than contiguous on strong-affinity traces.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Context, Measurement
from .report import case_axis, save_figure

AFFINITY = 0.8        # strong affinity: most of a row's mass on 2 successors
TOKENS = 20_000
MAX_LOAD = 1.2        # the load cap of the load-aware heuristic's row (busiest rank / mean)
ILP_MAX_VARIABLES = 20_000  # z[l, a, b, r] pair variables; above this the ILP is not attempted


def grid(quick: bool) -> list[tuple[int, int, int]]:
    """(experts, ranks, layers) cases."""
    if quick:
        return [(8, 2, 4), (16, 4, 8), (64, 8, 32)]
    return [(e, p, layer) for e in (8, 16, 32, 64) for p in (2, 4, 8) if e // p >= 2
            for layer in (4, 8, 16, 32)]


def ilp_size(counts: np.ndarray, n_ranks: int) -> int:
    return int(np.count_nonzero(counts)) * n_ranks


def measure(label: str, x: float, train, test, n_ranks: int, time_limit: float, reps: int,
            extra: dict[str, float] | None = None) -> list[Measurement]:
    from pyhpc import moe

    moe.place_experts(train, n_ranks)  # warm-up: the first call also imports scipy
    heuristic = [moe.place_experts(train, n_ranks) for _ in range(reps)]
    if any(not np.array_equal(h.ranks, heuristic[0].ranks) for h in heuristic):
        raise RuntimeError(f"moe_placement {label}: the heuristic is not deterministic for a seed")
    cross = {
        "heuristic": moe.evaluate(heuristic[0], test),
        "contiguous": moe.evaluate(moe.place_experts(train, n_ranks, method="contiguous"), test),
        "random": moe.evaluate(moe.place_experts(train, n_ranks, method="random", seed=1), test),
    }
    balanced = moe.place_experts(train, n_ranks, max_load=MAX_LOAD)
    cross["heuristic_max_load"] = moe.evaluate(balanced, test)
    metrics = {f"cross_{k}": v for k, v in cross.items()}
    metrics["load_imbalance_heuristic"] = moe.load_imbalance(heuristic[0], test)
    metrics["load_imbalance_heuristic_max_load"] = moe.load_imbalance(balanced, test)
    metrics["load_imbalance_contiguous"] = moe.load_imbalance(
        moe.place_experts(train, n_ranks, method="contiguous"), test)
    metrics["reduction_vs_contiguous"] = 1 - cross["heuristic"] / cross["contiguous"]
    metrics.update(extra or {})
    rows = []
    size = ilp_size(train.counts, n_ranks)
    if size <= ILP_MAX_VARIABLES:
        ilp = moe.place_experts(train, n_ranks, method="ilp", time_limit=time_limit)
        train_cross = {"heuristic": moe.evaluate(heuristic[0], train), "ilp": moe.evaluate(ilp, train)}
        ilp_metrics = {"cross_ilp": moe.evaluate(ilp, test), "optimal": float(ilp.optimal),
                       "gap": float(ilp.gap or 0.0), "train_cross_ilp": train_cross["ilp"],
                       "train_cross_heuristic": train_cross["heuristic"]}
        # the goal compares objectives on the data both solved: kept weight, heuristic vs ILP
        ilp_metrics["heuristic_vs_ilp_kept"] = (1 - train_cross["heuristic"]) / (1 - train_cross["ilp"])
        metrics.update(ilp_metrics)
        rows.append(Measurement(label, "ILP (scipy milp/HiGHS)", "baseline", [ilp.seconds], x=x,
                                metrics=ilp_metrics))
    else:
        metrics["ilp_not_attempted_variables"] = float(size)
    rows.insert(0, Measurement(label, "heuristic (Hungarian + coordinate ascent)", "pyhpc",
                               [h.seconds for h in heuristic], x=x, metrics=metrics))
    return rows


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import moe

    rows: list[Measurement] = []
    params = moe.GeneratorParams(affinity=AFFINITY)
    time_limit = 5.0 if ctx.quick else 10.0
    cases = grid(ctx.quick)
    for i, (experts, n_ranks, layers) in enumerate(cases, 1):
        label = f"E={experts} P={n_ranks} L={layers}"
        ctx.progress(f"{label} ({i}/{len(cases)})")
        train = moe.affinity(moe.generate_trace(TOKENS, layers, experts, params=params, seed=1), experts)
        # the same chain (seed 1 draws it), other tokens: the second half of a longer trace
        test = moe.affinity(moe.generate_trace(2 * TOKENS, layers, experts, params=params, seed=1)[TOKENS:],
                            experts)
        rows += measure(label, experts * layers, train, test, n_ranks, time_limit, reps=3)
    data = moe.real_data_dir()
    if data is None:
        ctx.progress("no real routing data found (set PYHPC_MOE_DATA): real-data cases skipped")
        return rows
    for model, ranks_list in (("mixtral_8x7b", (2, 4)), ("olmoe_1b_7b", (2, 4, 8))):
        for n_ranks in ranks_list:
            domains = ("github",) if ctx.quick else ("arxiv", "book", "c4", "github", "wikipedia")
            for domain in domains:
                counts = list(moe.load_cooccurrence(data / f"{model}_top1.npz", domain=domain).values())
                aff = moe.Affinity(np.stack(counts))
                fitted = moe.calibrate(counts)
                label = f"{model} {domain} P={n_ranks}"
                ctx.progress(label)
                # real counts: placed and scored on the same counts (there is no second sample)
                rows += measure(label, aff.n_experts * 3, aff, aff, n_ranks, time_limit, reps=3,
                                extra={"calibrated_affinity": fitted.affinity,
                                       "calibrated_skew": fitted.popularity_skew,
                                       "calibrated_fanout": fitted.fanout})
    return rows


def plot(result, path) -> None:
    """Cross-rank fraction per case and method (bars), and the solve times."""
    from matplotlib.figure import Figure

    mine = [m for m in result.measurements if m.role == "pyhpc"]
    methods = ("contiguous", "random", "heuristic", "heuristic_max_load", "ilp")
    fig = Figure(figsize=(max(8, 0.45 * len(mine) + 3), 8))
    top, bottom = fig.subplots(2, 1)
    xs = np.arange(len(mine))
    for j, method in enumerate(methods):
        values = [m.metrics.get(f"cross_{method}", np.nan) for m in mine]
        top.bar(xs + (j - 2) * 0.16, values, width=0.16, label=method.replace("_", " "))
    tick_style = {"rotation": 60, "ha": "right", "fontsize": "x-small"}
    case_axis(top, [m.case for m in mine], "fraction of transitions crossing ranks", **tick_style)
    ilp = {m.case: m for m in result.measurements if m.role == "baseline"}
    bottom.semilogy(xs, [np.median(m.seconds) for m in mine], "o", label="heuristic")
    bottom.semilogy([i for i, m in enumerate(mine) if m.case in ilp],
                    [np.median(ilp[m.case].seconds) for m in mine if m.case in ilp], "s", label="ILP")
    case_axis(bottom, [m.case for m in mine], "solve time (s)", **tick_style)
    bottom.grid(True, which="both", alpha=0.3)
    save_figure(fig, result, path)


BENCHMARK = Benchmark(
    name="moe_placement",
    ranks=1,
    description="ExFlow expert placement: cross-rank transitions of heuristic, ILP, contiguous and random "
                "placement on synthetic (affinity 0.8) and real (OLMoE, Mixtral) routing; pyhpc = "
                "heuristic solve time, baseline = ILP solve time",
    run=run,
    x_label="experts x layers",
    plot=plot,
)
