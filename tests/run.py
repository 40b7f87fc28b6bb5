"""Run the whole test suite: serial tests, then the multi-rank tests at 2 and
4 ranks, and print one summary with the number of tests each part ran.

    python tests/run.py [--ranks 2,4] [extra pytest args...]

Every part runs from the tests/ directory (so `import pyhpc` finds the
installed package, not the source tree) with pytest's per-test timeout; the
multi-rank parts run under `pyhpc run`, where a failing or hung rank aborts
the job (tests/conftest.py). Exit status is non-zero if any part failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# A whole part may not run longer than this; each test has its own timeout too.
PART_LIMIT_S = 1800


def count(junit: Path) -> dict[str, int]:
    if not junit.is_file():
        return {}
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return totals


def run_part(name: str, cmd: list[str], junit: Path, ranks: int = 0) -> tuple[str, int, dict[str, int], float]:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    env = dict(os.environ)
    if ranks:
        env["PYHPC_TEST_RANKS"] = str(ranks)  # conftest fails the job if MPI disagrees
    start = time.monotonic()
    try:
        rc = subprocess.run(cmd, cwd=TESTS, timeout=PART_LIMIT_S, stdin=subprocess.DEVNULL,
                            env=env).returncode
    except subprocess.TimeoutExpired:
        print(f"=== {name}: over {PART_LIMIT_S} s, stopped", flush=True)
        rc = 124
    counts = count(junit)
    if rc == 0 and ranks and counts.get("passed", 0) == 0:
        print(f"=== {name}: no multi-rank test passed; counting the part as failed", flush=True)
        rc = 1
    return name, rc, counts, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="2,4", help="rank counts for the multi-rank parts")
    args, pytest_args = parser.parse_known_args()
    common = ["-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    results = []
    with tempfile.TemporaryDirectory(prefix="pyhpc-tests-") as tmp:
        junit = Path(tmp) / "serial.xml"
        results.append(run_part(
            "serial", [sys.executable, "-m", "pytest", *common, f"--junitxml={junit}",
                       *pytest_args, str(TESTS)], junit))
        for n in [int(x) for x in args.ranks.split(",") if x]:
            junit = Path(tmp) / f"mpi{n}.xml"
            results.append(run_part(
                f"{n} ranks", [sys.executable, "-m", "pyhpc", "run", "-n", str(n),
                               "--timeout", str(PART_LIMIT_S), "python", "-m",
                               "pytest", *common, "--with-mpi", "-m", "mpi", "-q",
                               f"--junitxml={junit}", *pytest_args, str(TESTS)], junit, ranks=n))
    print("\n=== summary")
    total = 0
    for name, rc, c, seconds in results:
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        detail = (f"{c['passed']} passed, {c['skipped']} skipped, "
                  f"{c['failures'] + c['errors']} failed" if c else "no report")
        print(f"{name:>8}: {status:<16} {detail}  [{seconds:.1f} s]")
        total += c.get("passed", 0) + c.get("failures", 0) + c.get("errors", 0)
    print(f"{'total':>8}: {total} tests run (passed or failed; each multi-rank test counted once per job)")
    return 0 if all(rc == 0 for _, rc, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
