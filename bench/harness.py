"""The benchmark data model, statistics, timing and JSON format.

A benchmark returns a flat list of :class:`Measurement` (one per case and
implementation: every repetition's seconds, plus the bytes or FLOPs one
repetition does, so a rate can be derived). :func:`summarize` turns them into
one :class:`CaseSummary` per case: median and spread of each side, the ratio
baseline/pyhpc (> 1 means pyhpc is faster) and the fraction of a physical
limit measured in the same job (same units: GB/s against GB/s, GFLOP/s
against GFLOP/s).

Nothing here imports ``mpi4py.MPI``: the driver (``pyhpc bench``) must not
initialise MPI; only the worker inside the MPI job does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pyhpc.errors import InvalidArgumentError

SCHEMA = "pyhpc.bench/1"
ROLES = ("pyhpc", "baseline", "limit")


# ---- data model --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stats:
    """Order statistics of a list of per-repetition seconds."""

    median: float
    min: float
    max: float
    p25: float
    p75: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        values = np.asarray(samples, dtype=float)
        if values.size == 0:
            raise InvalidArgumentError("samples: no repetitions to summarise")
        # A zero, negative or non-finite time means a broken timer or a rank
        # that did not time anything; summarising it would give fast nonsense.
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise InvalidArgumentError(f"samples: times must be finite and > 0, got {values.tolist()}")
        p25, median, p75 = np.percentile(values, [25, 50, 75])
        return cls(float(median), float(values.min()), float(values.max()),
                   float(p25), float(p75), int(values.size))

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median (0.05 = ±5 %)."""
        return (self.p75 - self.p25) / 2 / self.median


@dataclasses.dataclass
class Measurement:
    """One implementation timed on one case of a benchmark.

    seconds: every repetition, in the time unit the benchmark defines (e.g.
    one-way time for a ping-pong). bytes_per_rep or flops_per_rep (at most one)
    is the work one repetition does; the rate is that work / median time.
    limit: for pyhpc and baseline rows, the ``case`` of the limit row (in the
    same benchmark) that this row's rate is compared with.
    """

    case: str
    impl: str
    role: str
    seconds: list[float]
    x: float | None = None
    bytes_per_rep: float | None = None
    flops_per_rep: float | None = None
    limit: str | None = None
    metrics: dict[str, float] | None = None  # what a benchmark measures besides time

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidArgumentError(f"role: {self.role!r} is not one of {ROLES}")
        if self.bytes_per_rep is not None and self.flops_per_rep is not None:
            raise InvalidArgumentError(f"{self.case}/{self.impl}: give bytes_per_rep or flops_per_rep, not both")
        self.seconds = [float(s) for s in self.seconds]
        if self.metrics is not None:
            self.metrics = {str(k): float(v) for k, v in self.metrics.items()}

    @property
    def unit(self) -> str | None:
        if self.bytes_per_rep is not None:
            return "GB/s"
        if self.flops_per_rep is not None:
            return "GFLOP/s"
        return None

    @property
    def work_per_rep(self) -> float | None:
        """Bytes or FLOPs of one repetition in units of 1e9 (so work/seconds is GB/s or GFLOP/s)."""
        work = self.bytes_per_rep if self.bytes_per_rep is not None else self.flops_per_rep
        return None if work is None else work / 1e9


@dataclasses.dataclass(frozen=True)
class ImplSummary:
    impl: str
    stats: Stats
    rate: float | None  # GB/s or GFLOP/s at the median time
    unit: str | None

    @classmethod
    def of(cls, m: Measurement) -> ImplSummary:
        stats = Stats.of(m.seconds)
        work = m.work_per_rep
        return cls(m.impl, stats, None if work is None else work / stats.median, m.unit)


@dataclasses.dataclass(frozen=True)
class CaseSummary:
    """One table row: a case's pyhpc and baseline, or a limit on its own."""

    benchmark: str
    case: str
    x: float | None
    pyhpc: ImplSummary | None = None
    baseline: ImplSummary | None = None
    ratio: float | None = None          # baseline median / pyhpc median
    limit_case: str | None = None
    limit: ImplSummary | None = None    # the limit row itself (its rate is the limit)
    fraction_of_limit: float | None = None  # pyhpc rate / limit rate

    @property
    def is_limit_row(self) -> bool:
        return self.pyhpc is None and self.baseline is None


def summarize(benchmark: str, measurements: Sequence[Measurement]) -> list[CaseSummary]:
    """One CaseSummary per case (one per baseline when a case has several), in order of appearance.

    Raises InvalidArgumentError on what would make the comparison meaningless:
    two pyhpc rows in a case, a reference to a missing limit, a limit in other
    units than the row it bounds.
    """
    limits = {m.case: m for m in measurements if m.role == "limit"}
    if len(limits) != sum(m.role == "limit" for m in measurements):
        raise InvalidArgumentError(f"{benchmark}: two limit rows share a case label")
    cases: dict[str, list[Measurement]] = {}
    for m in measurements:
        cases.setdefault(m.case, []).append(m)

    rows: list[CaseSummary] = []
    for case, group in cases.items():
        if case in limits:
            if len(group) > 1:
                raise InvalidArgumentError(f"{benchmark}: case {case!r} is a limit and also has other rows")
            limit = limits[case]
            if limit.unit is None:
                raise InvalidArgumentError(f"{benchmark}: limit {case!r} needs bytes_per_rep or flops_per_rep")
            rows.append(CaseSummary(benchmark, case, limit.x, limit_case=case, limit=ImplSummary.of(limit)))
            continue
        mine = [m for m in group if m.role == "pyhpc"]
        theirs = [m for m in group if m.role == "baseline"]
        if len(mine) > 1:
            raise InvalidArgumentError(f"{benchmark}: case {case!r} has {len(mine)} pyhpc rows, at most 1 allowed")
        pyhpc = ImplSummary.of(mine[0]) if mine else None
        limit_m = _limit_for(benchmark, mine[0], limits) if mine else None
        limit = ImplSummary.of(limit_m) if limit_m else None
        fraction = None
        if pyhpc is not None and limit is not None and pyhpc.rate is not None:
            fraction = pyhpc.rate / limit.rate
        x = group[0].x
        for base_m in theirs or [None]:
            if base_m is not None:
                _limit_for(benchmark, base_m, limits)  # validate its reference too
            base = ImplSummary.of(base_m) if base_m else None
            ratio = base.stats.median / pyhpc.stats.median if (base and pyhpc) else None
            rows.append(CaseSummary(benchmark, case, x, pyhpc, base, ratio,
                                    limit_m.case if limit_m else None, limit, fraction))
    return rows


def _limit_for(benchmark: str, m: Measurement, limits: dict[str, Measurement]) -> Measurement | None:
    if m.limit is None:
        return None
    if m.limit not in limits:
        raise InvalidArgumentError(
            f"{benchmark}: {m.case}/{m.impl} refers to limit {m.limit!r}, which is not measured "
            f"(limits: {sorted(limits) or 'none'})")
    limit = limits[m.limit]
    if m.unit != limit.unit:
        raise InvalidArgumentError(
            f"{benchmark}: {m.case}/{m.impl} is in {m.unit or 'no unit'} but limit {m.limit!r} "
            f"is in {limit.unit}; a fraction of it would mean nothing")
    return limit


# ---- benchmarks and the context they run in ----------------------------------

@dataclasses.dataclass
class Context:
    """What a benchmark's run() gets, on every rank of the job."""

    comm: Any  # mpi4py.MPI.Comm
    quick: bool
    benchmark: str = ""

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    def progress(self, message: str) -> None:
        """A progress line on stderr, from rank 0 only."""
        if self.rank == 0:
            print(f"      {self.benchmark}: {message}", file=sys.stderr, flush=True)

    def time_reps(self, fn: Callable[[], object], warmup: int, reps: int) -> list[float]:
        """time_reps over this job's ranks: all call fn together, each rep counts the slowest rank."""
        return time_reps(fn, warmup, reps, comm=self.comm)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark: ``run`` is called on every rank; what it returns on rank 0 is recorded."""

    name: str
    ranks: int
    description: str
    run: Callable[[Context], list[Measurement]]
    x_label: str = "message size (bytes)"
    needs_gpu: bool = False  # skipped (not failed) where pyhpc.cuda.available() is false
    # writes the PNG instead of the generic time/rate plot: plot(result, path)
    plot: Callable[[Result, Any], None] | None = None


def time_reps(fn: Callable[[], object], warmup: int, reps: int, comm: Any = None) -> list[float]:
    """Seconds of each of `reps` calls of fn, after `warmup` untimed calls.

    With a communicator, every call starts after a barrier and a repetition's
    time is the maximum over ranks (the collective is as slow as its slowest
    rank). The maximum is taken once at the end, outside the timed region.
    """
    if warmup < 0 or reps < 1:
        raise InvalidArgumentError(f"warmup must be >= 0 and reps >= 1, got {warmup}, {reps}")
    for _ in range(warmup):
        if comm is not None:
            comm.Barrier()
        fn()
    local = np.empty(reps)
    for i in range(reps):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        fn()
        local[i] = time.perf_counter() - t0
    if comm is None or comm.Get_size() == 1:
        return local.tolist()
    from mpi4py import MPI  # only inside a job: the driver never initialises MPI

    worst = np.empty_like(local)
    comm.Allreduce(local, worst, op=MPI.MAX)
    return worst.tolist()


def interleave(timers: dict[str, Callable[[int], list[float]]], reps: int,
               rounds: int = 3) -> dict[str, list[float]]:
    """Time several implementations in turns: each timer(n) runs n repetitions and
    returns their seconds; every timer runs `rounds` times, in turn, for `reps`
    repetitions in all. A burst of load from the rest of a shared machine then
    falls on all of them alike, instead of on whichever was running at the time.
    """
    rounds = max(1, min(rounds, reps))
    seconds: dict[str, list[float]] = {name: [] for name in timers}
    for r in range(rounds):
        n = reps // rounds + (1 if r < reps % rounds else 0)
        for name, timer in timers.items():
            seconds[name] += timer(n)
    return seconds


# ---- results and their JSON --------------------------------------------------

@dataclasses.dataclass
class Result:
    """Everything one benchmark job produced."""

    benchmark: str
    description: str
    ranks: int
    quick: bool
    x_label: str
    environment: dict[str, Any]
    measurements: list[Measurement]
    wall_seconds: float | None = None

    def summaries(self) -> list[CaseSummary]:
        return summarize(self.benchmark, self.measurements)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "description": self.description,
            "ranks": self.ranks,
            "quick": self.quick,
            "x_label": self.x_label,
            "wall_seconds": self.wall_seconds,
            "environment": self.environment,
            "measurements": [dataclasses.asdict(m) for m in self.measurements],
            # Derived from the measurements (which stay the source of truth) for
            # readers that want the numbers without redoing the statistics.
            "summaries": [dataclasses.asdict(s) for s in self.summaries()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        if data.get("schema") != SCHEMA:
            raise InvalidArgumentError(f"not a {SCHEMA} result (schema {data.get('schema')!r})")
        return cls(
            benchmark=data["benchmark"], description=data["description"], ranks=data["ranks"],
            quick=data["quick"], x_label=data["x_label"], environment=data["environment"],
            measurements=[Measurement(**m) for m in data["measurements"]],
            wall_seconds=data.get("wall_seconds"),
        )


def write_json(result: Result, path: str | os.PathLike[str]) -> None:
    """Write atomically, so a reader never sees half a file (or a stale one after a crash)."""
    path = Path(path)
    text = json.dumps(result.to_json(), indent=1, allow_nan=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike[str]) -> Result:
    return Result.from_json(json.loads(Path(path).read_text()))


# ---- small helpers for benchmarks --------------------------------------------

def size_label(nbytes: float) -> str:
    """8 -> '8 B', 65536 -> '64 KiB', 4194304 -> '4 MiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def reps_for(nbytes: int, quick: bool) -> int:
    """Repetitions for one message size: many for small messages (cheap and
    noisy), fewer for large ones, so each size costs about the same time."""
    budget, low, high = (2**28, 30, 1000) if quick else (2**30, 60, 2000)
    return int(min(high, max(low, budget // max(nbytes, 1))))
