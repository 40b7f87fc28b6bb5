"""The text table and the PNG plots of benchmark results."""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from .harness import CaseSummary, ImplSummary, Measurement, Result, Stats

# ---- table ---------------------------------------------------------------------

HEADER = ("benchmark", "case", "pyhpc time", "baseline time", "baseline/pyhpc", "pyhpc rate",
          "limit", "% of limit")
RIGHT_ALIGNED = {2, 3, 4, 5, 6, 7}


def format_seconds(seconds: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_time(stats: Stats) -> str:
    """Median and spread: '411 us ±2%' (± half the interquartile range, relative)."""
    return f"{format_seconds(stats.median)} ±{stats.spread * 100:.0f}%"


def format_rate(impl: ImplSummary | None) -> str:
    if impl is None or impl.rate is None:
        return "-"
    return f"{impl.rate:.3g} {impl.unit}"


def format_fraction(fraction: float) -> str:
    percent = fraction * 100
    return f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%"


def table_row(s: CaseSummary) -> tuple[str, ...]:
    if s.is_limit_row:
        assert s.limit is not None
        return (s.benchmark, f"{s.case} (limit)", "-", "-", "-", "-",
                f"{format_rate(s.limit)} ±{s.limit.stats.spread * 100:.0f}%", "-")
    return (s.benchmark, s.case,
            format_time(s.pyhpc.stats) if s.pyhpc else "-",
            format_time(s.baseline.stats) if s.baseline else "-",
            "-" if s.ratio is None else f"{s.ratio:.2f}x",
            format_rate(s.pyhpc),
            format_rate(s.limit),
            "-" if s.fraction_of_limit is None else format_fraction(s.fraction_of_limit))


def table_rows(result: Result) -> list[tuple[str, ...]]:
    """The result's rows; a limit gets a row of its own only if no row is compared with it
    (otherwise its rate is in the "limit" column of the rows that use it)."""
    summaries = result.summaries()
    used = {s.limit_case for s in summaries if not s.is_limit_row}
    return [table_row(s) for s in summaries if not (s.is_limit_row and s.case in used)]


def render_table(results: Sequence[Result]) -> str:
    """One table for all results, then a legend naming each benchmark's implementations."""
    rows = [HEADER] + [row for r in results for row in table_rows(r)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

    def line(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in RIGHT_ALIGNED else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        return " | ".join(cells).rstrip()

    out = [line(rows[0]), "-+-".join("-" * w for w in widths)]
    previous = None
    for row in rows[1:]:
        if previous is not None and row[0] != previous:
            out.append("")  # a blank line between benchmarks
        out.append(line(row))
        previous = row[0]
    out += ["", "time: median over the repetitions ± half their interquartile range. "
                "baseline/pyhpc > 1: pyhpc is faster.",
            "pyhpc rate: bytes or FLOPs per median time; limit: the same for the physical limit "
            "measured in the same job; % of limit: pyhpc rate / limit.", ""]
    for r in results:
        ranks = f"{r.ranks} rank{'s' if r.ranks > 1 else ''}"
        out.append(f"{r.benchmark} ({ranks}): {r.description}")
        for role, impl in _impls(r.measurements):
            out.append(f"    {role}: {impl}")
        for m in r.measurements:
            if m.metrics:
                values = ", ".join(f"{k}={v:.4g}" for k, v in m.metrics.items())
                out.append(f"    {m.case} / {m.impl}: {values}")
    return "\n".join(out)


def _impls(measurements: Sequence[Measurement]) -> list[tuple[str, str]]:
    """(role, implementation) pairs, each once, in order."""
    return list(dict.fromkeys((m.role, m.impl) for m in measurements))


# ---- plots ---------------------------------------------------------------------

def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_result(result: Result, path: str | os.PathLike[str]) -> None:
    """Write result's PNG: time and rate against size (log-log) with the limits dashed;
    for benchmarks without a size axis (the limits), bars per case."""
    # The object API, not pyplot: no GUI backend, no global figure state.
    from matplotlib.figure import Figure

    compared = [m for m in result.measurements if m.role != "limit"]
    limits = [m for m in result.measurements if m.role == "limit"]
    if compared and all(m.x is not None and m.x > 0 for m in compared):
        fig = _lines(Figure, result, compared, limits)
    else:
        fig = _bars(Figure, result, compared or limits)
    fig.savefig(path, dpi=110)


def case_axis(ax, labels: Sequence[str], ylabel: str, **tick_style) -> None:
    """A categorical x axis (one tick per case), its y label, a y grid and the legend:
    how the benchmarks' own plots finish each panel."""
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels(labels, **tick_style)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def save_figure(fig, result: Result, path: str | os.PathLike[str]) -> None:
    """Title (benchmark, ranks, MPI, host), layout and PNG, the same for every plot."""
    fig.suptitle(_title(result), fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _title(result: Result) -> str:
    ranks = f"{result.ranks} rank{'s' if result.ranks > 1 else ''}"
    env = result.environment
    return (f"{result.benchmark} ({ranks}{', quick' if result.quick else ''}) - "
            f"{env.get('mpi', '?')} on {env.get('hostname', '?')}")


def _lines(Figure, result: Result, compared: list[Measurement], limits: list[Measurement]):
    by_impl: dict[str, list[Measurement]] = defaultdict(list)
    for m in compared:
        by_impl[m.impl].append(m)
    units = sorted({m.unit for m in compared if m.unit})
    fig = Figure(figsize=(6 * (1 + len(units)), 4.8))
    axes = fig.subplots(1, 1 + len(units), squeeze=False)[0]
    time_ax = axes[0]
    for impl, ms in by_impl.items():
        ms.sort(key=lambda m: m.x)
        xs = [m.x for m in ms]
        stats = [Stats.of(m.seconds) for m in ms]
        marker = "o" if ms[0].role == "pyhpc" else "s"
        line, = time_ax.plot(xs, [s.median * 1e6 for s in stats], marker=marker, label=impl)
        _bands(time_ax, xs, stats, lambda i, t: t * 1e6, line.get_color())
        for ax, unit in zip(axes[1:], units):
            if ms[0].unit == unit:
                ax.plot(xs, [m.work_per_rep / s.median for m, s in zip(ms, stats)], marker=marker,
                        color=line.get_color(), label=impl)
                _bands(ax, xs, stats, lambda i, t: ms[i].work_per_rep / t, line.get_color())
    time_ax.set_ylabel("time (us): median; bands: quartiles, min..max")
    for ax, unit in zip(axes[1:], units):
        _draw_limits(ax, [m for m in limits if m.unit == unit])
        ax.set_ylabel(f"rate ({unit}): median; bands: quartiles, min..max")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(result.x_label or "x")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(_title(result), fontsize="medium")
    fig.tight_layout()
    return fig


def _bands(ax, xs: list[float], stats: list[Stats], y_of: Callable[[int, float], float], color) -> None:
    """Shade the quartiles darker and min..max lighter; y_of(i, seconds) is the plotted value
    of point i's time (a rate falls as the time grows, hence the min/max below)."""
    for low, high, alpha in (("p25", "p75", 0.25), ("min", "max", 0.1)):
        a = [y_of(i, getattr(s, low)) for i, s in enumerate(stats)]
        b = [y_of(i, getattr(s, high)) for i, s in enumerate(stats)]
        ax.fill_between(xs, np.minimum(a, b), np.maximum(a, b), color=color, alpha=alpha, linewidth=0)


def _draw_limits(ax, limits: list[Measurement]) -> None:
    """Limits as dashed lines: horizontal for a single value, a curve for one measured per size."""
    curves: dict[str, list[Measurement]] = defaultdict(list)
    for lim in limits:
        rate = lim.work_per_rep / Stats.of(lim.seconds).median
        if lim.x is None:
            ax.axhline(rate, color="black", linestyle="--", linewidth=1.2,
                       label=f"limit: {lim.case} {rate:.3g} {lim.unit}")
        else:
            curves[lim.impl].append(lim)
    for impl, ms in curves.items():
        ms.sort(key=lambda m: m.x)
        ax.plot([m.x for m in ms], [m.work_per_rep / Stats.of(m.seconds).median for m in ms],
                color="black", linestyle="--", linewidth=1.2, label=f"limit: {impl}")


def _bars(Figure, result: Result, rows: list[Measurement]):
    """One panel per unit (or time, for rows without one); a bar per row, min..max error bars."""
    panels: dict[str | None, list[Measurement]] = defaultdict(list)
    for m in rows:
        panels[m.unit].append(m)
    fig = Figure(figsize=(5 * len(panels), 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (unit, ms) in zip(axes, panels.items()):
        stats = [Stats.of(m.seconds) for m in ms]
        if unit:
            values = [m.work_per_rep / s.median for m, s in zip(ms, stats)]
            low = [v - m.work_per_rep / s.max for v, m, s in zip(values, ms, stats)]
            high = [m.work_per_rep / s.min - v for v, m, s in zip(values, ms, stats)]
            ax.set_ylabel(f"rate ({unit}): median, bars = min..max")
        else:
            values = [s.median * 1e6 for s in stats]
            low = [v - s.min * 1e6 for v, s in zip(values, stats)]
            high = [s.max * 1e6 - v for v, s in zip(values, stats)]
            ax.set_ylabel("time (us): median, bars = min..max")
        labels = [m.case if m.role == "limit" else f"{m.case}\n{m.role}" for m in ms]
        ax.bar(range(len(ms)), values, yerr=[low, high], capsize=4, color="tab:gray")
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels(labels, fontsize="small")
        for i, v in enumerate(values):  # the value inside its bar, clear of the error bar
            ax.annotate(f"{v:.3g}", (i, v / 2), ha="center", va="center", color="white",
                        fontweight="bold")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(_title(result), fontsize="medium")
    fig.tight_layout()
    return fig
