"""pyhpc's benchmark suite (``pyhpc bench``), installed as ``pyhpc.bench``.

Each benchmark is one module of this package that defines ``BENCHMARK``, a
:class:`~pyhpc.bench.harness.Benchmark` whose name is the module's name. It is
found without being listed anywhere. Its ``run(ctx)`` is called on every rank
of an MPI job of ``ranks`` ranks and returns :class:`Measurement` rows: pyhpc's
implementation, the baseline it is compared with, and the physical limit
measured in the same job. A minimal one, ``bench/example.py``::

    import numpy as np
    from . import limits
    from .harness import Benchmark, Measurement, interleave, size_label

    def run(ctx):
        rows = []
        for n in [1 << 20] if ctx.quick else [1 << 20, 1 << 26]:
            limit = limits.memcpy_limit(ctx, n, reps=20)   # limit row "memcpy 1 MiB"
            rows.append(limit)
            src, mine, theirs = np.ones(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint8)
            seconds = interleave({                         # the two take turns
                "pyhpc": lambda reps: ctx.time_reps(lambda: pyhpc_copy(mine, src), 2, reps),
                "baseline": lambda reps: ctx.time_reps(lambda: np.copyto(theirs, src), 2, reps),
            }, reps=30)
            if not np.array_equal(mine, src):              # a check that can fail
                raise RuntimeError("pyhpc_copy copied the wrong bytes")
            for role, impl in (("pyhpc", "pyhpc_copy"), ("baseline", "np.copyto")):
                rows.append(Measurement(size_label(n), impl, role, seconds[role], x=n,
                                        bytes_per_rep=n, limit=limit.case))
        return rows

    BENCHMARK = Benchmark("example", ranks=2, description="...", run=run)

Rules: import ``mpi4py.MPI`` and pyhpc's MPI modules inside ``run`` only (the
driver lists benchmarks without initialising MPI); keep ``--quick`` (ctx.quick)
to a few seconds by using fewer sizes and repetitions, never by skipping work
that the comparison needs; check the result of the code you time once, so a
broken implementation cannot look fast.
"""

from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import sys
import time
from pathlib import Path

from .harness import Benchmark, CaseSummary, Context, Measurement, Result, read_json
from .report import have_matplotlib, plot_result, render_table

__all__ = ["Benchmark", "CaseSummary", "Context", "Measurement", "Result", "benchmarks",
           "load", "main", "render_table"]

# Modules of this package that are machinery, not benchmarks.
_NOT_BENCHMARKS = {"harness", "report", "worker"}

# Seconds one benchmark job may run before it is killed.
QUICK_TIMEOUT_S = 120.0
FULL_TIMEOUT_S = 1800.0


def load(name: str) -> Benchmark:
    """The benchmark defined by module pyhpc.bench.<name>."""
    module = importlib.import_module(f"{__name__}.{name}")
    bench = getattr(module, "BENCHMARK", None)
    if not isinstance(bench, Benchmark):
        raise LookupError(f"{module.__name__} defines no BENCHMARK")
    if bench.name != name:
        raise LookupError(f"{module.__name__}.BENCHMARK is named {bench.name!r}; "
                          f"a benchmark's name must be its module's ({name!r})")
    return bench


def benchmarks() -> dict[str, Benchmark]:
    """Every benchmark in this package by name, 1-rank ones first, then by name."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in _NOT_BENCHMARKS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "BENCHMARK"):
            found.append(load(info.name))
    return {b.name: b for b in sorted(found, key=lambda b: (b.ranks, b.name))}


def worker_argv(name: str, json_path: Path, quick: bool) -> list[str]:
    """The command each rank runs. The worker is started by its file path, not
    `-m`: `-m` would put the current directory first on sys.path, and from a
    pyhpc checkout that imports the uncompiled source tree instead of pyhpc."""
    worker = Path(__file__).with_name("worker.py")
    return [sys.executable, str(worker), name, "--json", str(json_path), *(["--quick"] if quick else [])]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyhpc bench",
        description="Run pyhpc's benchmarks, each against its baseline and a physical limit "
                    "measured in the same job; print one table, write JSON and PNG per benchmark.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repetitions (the whole suite in about a minute)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write <name>.json and <name>.png (default: $PYHPC_BENCH_DIR, "
                             "else bench/results)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help=f"seconds per benchmark job (default {QUICK_TIMEOUT_S:g} with --quick, "
                             f"else {FULL_TIMEOUT_S:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``pyhpc bench``: returns 0 if every benchmark ran, 1 if one failed, 2 on bad usage."""
    from pyhpc import cuda, launcher, settings

    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: return, don't exit the caller
        return int(exc.code or 0)
    registry = benchmarks()
    if args.list:
        width = max(map(len, registry))
        for b in registry.values():
            print(f"{b.name:<{width}}  {b.ranks} rank{'s' if b.ranks > 1 else ' '}  {b.description}")
        return 0
    unknown = [n for n in args.names if n not in registry]
    if unknown:
        print(f"pyhpc bench: unknown benchmark{'s' if len(unknown) > 1 else ''} "
              f"{', '.join(map(repr, unknown))}; valid: {', '.join(registry)}", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(args.names)) or list(registry)  # in order, each once
    out = Path(args.out or str(settings.get("PYHPC_BENCH_DIR"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        print(f"pyhpc bench: --timeout must be a finite number of seconds > 0, got {args.timeout}",
              file=sys.stderr)
        return 2
    timeout = args.timeout or (QUICK_TIMEOUT_S if args.quick else FULL_TIMEOUT_S)
    plots = have_matplotlib()
    if not plots:
        print("pyhpc bench: matplotlib is not installed, so no PNG plots "
              "(pip install 'pyhpc[bench]'); JSON and the table are still written", file=sys.stderr)

    results: list[Result] = []
    failed: list[str] = []
    skipped: list[str] = []
    written: list[Path] = []
    t_suite = time.perf_counter()
    for i, name in enumerate(names, 1):
        bench = registry[name]
        json_path, png_path = out / f"{name}.json", out / f"{name}.png"
        for stale in (json_path, png_path):  # a failed run must not leave last run's numbers
            stale.unlink(missing_ok=True)
        tag = f"[{i}/{len(names)}] {name} on {bench.ranks} rank{'s' if bench.ranks > 1 else ''}"
        if bench.needs_gpu and not cuda.available():
            skipped.append(name)
            print(f"{tag} skipped: needs a CUDA device and pyhpc built with CUDA",
                  file=sys.stderr, flush=True)
            continue
        print(f"{tag} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = launcher.run(bench.ranks, worker_argv(name, json_path, args.quick), timeout=timeout)
        took = time.perf_counter() - t0
        if rc == 130:  # Ctrl-C: the launcher ended the job; stop the suite too
            failed.append(f"{name} (interrupted)")
            print(f"{tag} interrupted", file=sys.stderr, flush=True)
            break
        if rc != 0:
            why = f"timed out after {timeout:g} s" if rc == 124 else f"exit status {rc}"
            failed.append(f"{name} ({why})")
            print(f"{tag} FAILED: {why}, {took:.1f} s", file=sys.stderr, flush=True)
            continue
        try:
            result = read_json(json_path)
            result.summaries()
        except Exception as exc:  # noqa: BLE001 - any unreadable result is this benchmark's failure
            failed.append(f"{name} (result {json_path}: {exc})")
            print(f"{tag} FAILED: cannot read its result: {exc}", file=sys.stderr, flush=True)
            continue
        results.append(result)
        written.append(json_path)
        if plots:
            try:
                (bench.plot or plot_result)(result, png_path)
                written.append(png_path)
            except Exception as exc:  # noqa: BLE001 - report it, keep the table
                failed.append(f"{name} (plot: {exc})")
                print(f"{tag} could not plot: {exc}", file=sys.stderr, flush=True)
        print(f"{tag} done in {took:.1f} s", file=sys.stderr, flush=True)

    if results:
        print(render_table(results))
    print(f"\n{len(results)} of {len(names)} benchmarks ran in {time.perf_counter() - t_suite:.1f} s; "
          f"wrote {', '.join(str(p) for p in written) or 'nothing'}")
    if skipped:
        print(f"skipped (no CUDA device here): {', '.join(skipped)}")
    if failed:
        print(f"pyhpc bench: FAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0
