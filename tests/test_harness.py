"""The multi-rank harness itself: a failing or hung rank fails the job fast
with its traceback, and a passing job passes (no hangs, no false passes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "harness_cases"
# Bound on each sub-job; a hang shows up as subprocess.TimeoutExpired, a failure.
JOB_LIMIT_S = 90


def run_cases(case: str, *extra: str, env: dict | None = None) -> tuple[int, str, float]:
    # cwd outside the checkout, so `python -m ...` imports the installed pyhpc
    # rather than the source tree (which has no compiled modules).
    cmd = [sys.executable, "-m", "pyhpc", "run", "-n", "2", "python", "-m", "pytest",
           "--with-mpi", "-p", "no:cacheprovider", "-q", "--rootdir", str(CASES.parent),
           "-c", str(CASES.parent.parent / "pyproject.toml"), *extra, str(CASES / case)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_LIMIT_S,
                          stdin=subprocess.DEVNULL, cwd=CASES, env=env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def test_passing_job_passes():
    rc, out, _ = run_cases("case_all_pass.py")
    assert rc == 0, out
    assert "1 passed" in out


def test_failing_rank_aborts_job_with_traceback():
    rc, out, _ = run_cases("case_rank_raises.py")
    assert rc != 0, out
    assert "deliberate failure on rank 1" in out
    assert "rank 1: " in out and "aborting the MPI job" in out


def test_hung_rank_times_out_and_ends_job():
    rc, out, _ = run_cases("case_rank_hangs.py", "--timeout=5", "--timeout-method=thread")
    assert rc != 0, out
    assert "Timeout" in out
    # The hung rank's own stack, at its sleep: every rank dumps before the abort.
    assert 'case_rank_hangs.py", line 12 in test_rank_one_hangs' in out, out


def test_a_job_of_the_wrong_size_fails_instead_of_skipping():
    # What a launcher of another MPI produces: ranks that each see a world of
    # their own size. tests/run.py states the size it launched; a mismatch fails.
    env = dict(os.environ, PYHPC_TEST_RANKS="3")
    rc, out, _ = run_cases("case_all_pass.py", env=env)
    assert rc != 0, out
    assert "PYHPC_TEST_RANKS=3 but MPI.COMM_WORLD has 2 rank(s)" in out
