"""The benchmark harness (pyhpc.bench): statistics, comparisons, JSON, table, CLI.

Serial tests of the logic with made-up times, plus one real run of the 1-rank
`limits` benchmark through `pyhpc bench`. No test asserts a speed: timings on
a shared machine are noise; what is checked is that numbers are derived right
and that real ones are positive and finite.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading

import pytest

import pyhpc.bench as bench
from pyhpc.bench import limits
from pyhpc.bench.harness import (
    Benchmark, Measurement, Result, Stats, interleave, read_json, reps_for, size_label, summarize,
    time_reps, write_json,
)
from pyhpc.bench.report import format_seconds, plot_result, render_table
from pyhpc.errors import InvalidArgumentError

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(measurements: list[Measurement], name: str = "demo") -> Result:
    return Result(name, "a made-up benchmark", 2, True, "message size (bytes)",
                  {"hostname": "test", "mpi": "none"}, measurements, 1.0)


def _compared() -> list[Measurement]:
    """A limit of 4 GB/s; pyhpc moves 1 GB in 1 s (1 GB/s), the baseline takes 2 s."""
    return [
        Measurement("memcpy 1 GiB", "np.copyto", "limit", [0.25, 0.25, 0.25], x=1e9, bytes_per_rep=1e9),
        Measurement("1 GiB", "fast", "pyhpc", [0.9, 1.0, 1.1], x=1e9, bytes_per_rep=1e9,
                    limit="memcpy 1 GiB"),
        Measurement("1 GiB", "slow", "baseline", [2.0, 2.0, 2.0], x=1e9, bytes_per_rep=1e9,
                    limit="memcpy 1 GiB"),
    ]


# ---- statistics and comparisons ---------------------------------------------

def test_stats_of_known_samples():
    s = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.p25, s.p75, s.n) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    assert s.spread == pytest.approx((4.0 - 2.0) / 2 / 3.0)


@pytest.mark.parametrize("samples", [[], [1.0, 0.0], [1.0, -1.0], [1.0, math.nan], [math.inf]])
def test_stats_rejects_what_cannot_be_a_time(samples):
    with pytest.raises(InvalidArgumentError):
        Stats.of(samples)


def test_ratio_and_fraction_of_limit():
    limit_row, row = summarize("demo", _compared())
    assert limit_row.is_limit_row and limit_row.limit.rate == pytest.approx(4.0)
    assert row.pyhpc.stats.median == 1.0 and row.baseline.stats.median == 2.0
    assert row.ratio == pytest.approx(2.0)  # baseline / pyhpc: pyhpc twice as fast
    assert row.pyhpc.rate == pytest.approx(1.0) and row.pyhpc.unit == "GB/s"
    assert row.limit.rate == pytest.approx(4.0)
    assert row.fraction_of_limit == pytest.approx(0.25)


def test_flop_rates_and_a_case_without_baseline_or_limit():
    (row,) = summarize("demo", [Measurement("n=1000", "gemm", "pyhpc", [2.0], flops_per_rep=2e9)])
    assert row.pyhpc.rate == pytest.approx(1.0) and row.pyhpc.unit == "GFLOP/s"
    assert row.baseline is None and row.ratio is None and row.fraction_of_limit is None


def test_each_baseline_gets_its_own_row():
    rows = summarize("demo", [
        Measurement("c", "mine", "pyhpc", [1.0]),
        Measurement("c", "theirs", "baseline", [3.0]),
        Measurement("c", "other", "baseline", [0.5]),
    ])
    assert [(r.baseline.impl, r.ratio) for r in rows] == [("theirs", 3.0), ("other", 0.5)]


@pytest.mark.parametrize("rows, message", [
    ([Measurement("c", "a", "pyhpc", [1.0]), Measurement("c", "b", "pyhpc", [1.0])], "pyhpc rows"),
    ([Measurement("c", "a", "pyhpc", [1.0], bytes_per_rep=8, limit="memcpy")], "not measured"),
    ([Measurement("L", "x", "limit", [1.0], flops_per_rep=1e9),
      Measurement("c", "a", "pyhpc", [1.0], bytes_per_rep=8, limit="L")], "mean nothing"),
    ([Measurement("L", "x", "limit", [1.0])], "needs bytes_per_rep"),
    ([Measurement("c", "a", "pyhpc", [1.0]),
      Measurement("c", "b", "baseline", [1.0], bytes_per_rep=8, limit="gone")], "not measured"),
])
def test_summaries_refuse_meaningless_comparisons(rows, message):
    with pytest.raises(InvalidArgumentError, match=message):
        summarize("demo", rows)


def test_measurement_checks_role_and_work():
    with pytest.raises(InvalidArgumentError, match="role"):
        Measurement("c", "a", "winner", [1.0])
    with pytest.raises(InvalidArgumentError, match="not both"):
        Measurement("c", "a", "pyhpc", [1.0], bytes_per_rep=1, flops_per_rep=1)


# ---- timing helpers -----------------------------------------------------------

def test_time_reps_calls_warmup_plus_reps_and_returns_times():
    calls = []
    seconds = time_reps(lambda: calls.append(1), warmup=3, reps=7)
    assert len(calls) == 10 and len(seconds) == 7
    assert all(math.isfinite(t) and t >= 0 for t in seconds)
    with pytest.raises(InvalidArgumentError):
        time_reps(lambda: None, warmup=0, reps=0)


def test_interleave_takes_turns_and_counts_every_rep():
    calls = []

    def timer(name):
        return lambda n: calls.append((name, n)) or [float(len(calls))] * n

    seconds = interleave({"a": timer("a"), "b": timer("b")}, reps=10, rounds=3)
    assert calls == [("a", 4), ("b", 4), ("a", 3), ("b", 3), ("a", 3), ("b", 3)]
    assert seconds["a"] == [1.0] * 4 + [3.0] * 3 + [5.0] * 3 and len(seconds["b"]) == 10
    calls.clear()
    assert len(interleave({"a": timer("a")}, reps=2, rounds=5)["a"]) == 2  # never a 0-rep round
    assert calls == [("a", 1), ("a", 1)]


def test_reps_for_and_size_label():
    assert reps_for(8, True) > reps_for(64 << 20, True) >= 1  # small messages get more reps
    assert [size_label(n) for n in (8, 1024, 65536, 4 << 20, 3 << 30)] == \
        ["8 B", "1 KiB", "64 KiB", "4 MiB", "3 GiB"]
    assert [format_seconds(t) for t in (2.5, 0.0031, 1.5e-6, 9e-8)] == \
        ["2.5 s", "3.1 ms", "1.5 us", "90 ns"]


def test_memcpy_and_tcp_limits_measure_something_and_clean_up():
    threads_before = threading.active_count()
    for seconds in (limits.memcpy_seconds(1 << 20, 1, 3),
                    limits.memcpy_seconds(64, 1, 3),  # batched small copies
                    limits.tcp_loopback_seconds(1 << 20, 1, 3, chunk=256 << 10, timeout=10),
                    limits.matmul_seconds(64, "float64", 1, 2)):
        assert len(seconds) in (2, 3)
        assert all(math.isfinite(t) and t > 0 for t in seconds)
    assert threading.active_count() == threads_before  # the TCP sender thread is gone


# ---- JSON, table, plot --------------------------------------------------------

def test_json_round_trip(tmp_path):
    result = _result(_compared())
    path = tmp_path / "demo.json"
    write_json(result, path)
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temporary left behind
    data = json.loads(path.read_text())
    assert data["schema"] == "pyhpc.bench/1" and data["summaries"][1]["ratio"] == pytest.approx(2.0)
    back = read_json(path)
    assert back == result
    assert back.summaries() == result.summaries()
    data["schema"] = "something else"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidArgumentError, match="schema"):
        read_json(path)


def test_table_shows_median_ratio_and_fraction():
    text = render_table([_result(_compared())])
    header, rule, row = text.splitlines()[:3]
    for column in ("benchmark", "case", "pyhpc time", "baseline time", "baseline/pyhpc", "% of limit"):
        assert column in header
    assert set(rule) <= {"-", "+"}
    # The limit is in the row's "limit" column, not a row of its own.
    assert row.startswith("demo") and "1 GiB" in row and "memcpy" not in row
    for cell in ("1 s ±5%", "2 s ±0%", "2.00x", "1 GB/s", "4 GB/s", "25%"):
        assert cell in row
    assert "pyhpc: fast" in text and "baseline: slow" in text and "limit: np.copyto" in text


def test_table_gives_unused_limits_rows_of_their_own():
    only_limits = _result([Measurement("TCP loopback", "socket", "limit", [0.5], bytes_per_rep=1e9)],
                          name="limits")
    text = render_table([only_limits, _result(_compared())])
    assert "TCP loopback (limit)" in text and "2 GB/s" in text
    assert "\n\ndemo" in text  # a blank line between benchmarks


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib not installed")
def test_plots_of_sizes_and_of_limits(tmp_path):
    sizes = [Measurement(size_label(n), impl, role, [n / 1e9 * k, n / 1e9 * k * 1.1], x=n,
                         bytes_per_rep=n, limit=f"memcpy {size_label(n)}")
             for n in (8, 1024, 1 << 20) for impl, role, k in (("a", "pyhpc", 2), ("b", "baseline", 3))]
    sizes += [Measurement(f"memcpy {size_label(n)}", "copy", "limit", [n / 1e9], x=n, bytes_per_rep=n)
              for n in (8, 1024, 1 << 20)]
    for name, rows in (("sizes", sizes), ("bars", _compared()[:1])):
        path = tmp_path / f"{name}.png"
        plot_result(_result(rows), path)
        assert path.read_bytes()[:8] == PNG_MAGIC


# ---- registry and CLI ---------------------------------------------------------

def test_registry_holds_the_foundation_benchmarks():
    registry = bench.benchmarks()
    assert {"limits", "pingpong", "allreduce"} <= set(registry)
    for name, b in registry.items():
        assert isinstance(b, Benchmark) and b.name == name and b.ranks >= 1
        assert b.description and callable(b.run)
        assert bench.load(name) is b
    assert registry["limits"].ranks == 1 and registry["pingpong"].ranks == 2


def test_list(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("limits", "pingpong", "allreduce"))


def test_unknown_names_are_an_error_naming_them_and_the_valid_ones(tmp_path, capsys):
    out = tmp_path / "out"
    assert bench.main(["--out", str(out), "limits", "nope", "ghost"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "'ghost'" in err and "pingpong" in err and "allreduce" in err
    assert not out.exists()  # nothing ran


def test_usage_errors_return_instead_of_exiting(capsys):
    assert bench.main(["--no-such-flag"]) == 2
    assert bench.main(["--help"]) == 0


@pytest.mark.timeout(60)
def test_quick_limits_run_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the worker must not depend on the current directory
    out = tmp_path / "results"
    assert bench.main(["--quick", "--out", str(out), "limits"]) == 0
    printed = capsys.readouterr().out
    assert "matmul float64 (limit)" in printed and "GFLOP/s" in printed

    result = read_json(out / "limits.json")
    assert result.benchmark == "limits" and result.quick and result.ranks == 1
    assert {"mpi", "hostname", "cpu_count", "python", "numpy", "timestamp"} <= set(result.environment)
    rows = result.summaries()
    assert [r.case for r in rows] == ["memcpy 64 MiB", "TCP loopback", "matmul float32", "matmul float64"]
    for r in rows:
        assert r.is_limit_row and math.isfinite(r.limit.rate) and r.limit.rate > 0
        assert r.limit.stats.n >= 2 and 0 < r.limit.stats.min <= r.limit.stats.median
    if HAVE_MATPLOTLIB:
        assert (out / "limits.png").read_bytes()[:8] == PNG_MAGIC
    else:
        assert not (out / "limits.png").exists()


@pytest.mark.timeout(60)
def test_a_failing_job_is_reported_and_leaves_no_stale_result(tmp_path, monkeypatch, capsys):
    # A benchmark whose module does not exist: its worker fails on every rank.
    ghost = Benchmark("ghost", 1, "has no module", run=lambda ctx: [])
    monkeypatch.setattr(bench, "benchmarks", lambda: {"ghost": ghost})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ghost.json").write_text("{}")  # last run's result must not survive a failure
    assert bench.main(["--quick", "--out", str(tmp_path), "ghost"]) == 1
    assert "FAILED: ghost (exit status" in capsys.readouterr().err
    assert not (tmp_path / "ghost.json").exists()


def test_gpu_benchmark_is_skipped_not_failed_without_a_device(tmp_path, monkeypatch, capsys):
    from pyhpc import cuda

    monkeypatch.setattr(cuda, "available", lambda: False)
    out = tmp_path / "out"
    assert bench.main(["--quick", "--out", str(out), "gpu_copy"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "gpu_copy" in captured.out
    assert not (out / "gpu_copy.json").exists()
    assert bench.benchmarks()["gpu_copy"].needs_gpu
