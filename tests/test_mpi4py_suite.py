"""mpi4py's own test suite (about 2080 tests: datatypes, pack, point-to-point,
collectives, ...) on 2 ranks under the interposer, with pyhpc's engine forced
on every type it can serve. It must pass, and the interposer must have seen
and served traffic (counted calls, not zero).

The suite ships in mpi4py's sdist, downloaded from PyPI once into a cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import mpi4py
import pytest

from pyhpc import mpi_build

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyhpc" / "mpi4py-tests"


def suite_dir() -> Path:
    version = mpi4py.__version__
    root = CACHE / f"mpi4py-{version}"
    if (root / "test" / "main.py").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                          "--no-binary", ":all:", f"mpi4py=={version}", "-d", str(CACHE)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if got.returncode != 0:
        message = f"cannot download the mpi4py {version} sdist: {got.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has PyPI: a missing suite is a failure there
        pytest.skip(message)
    with tarfile.open(CACHE / f"mpi4py-{version}.tar.gz") as tar:
        tar.extractall(CACHE, filter="data") if sys.version_info >= (3, 12) else tar.extractall(CACHE)
    return root


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mpi4py_suite_passes_under_the_interposer():
    root = suite_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYHPC_INTERPOSE")}
    env.update(MPI4PY_TEST_SPAWN="0", PYHPC_INTERPOSE_STRATEGY="pyhpc", PYHPC_INTERPOSE_STATS="1")
    excludes = ["-e", "spawn"]
    if mpi_build.built().family == "mpich":
        excludes += ["-e", "mpiabi"]  # the PyPI mpich wheel's ABI module test, unrelated to pyhpc
    cmd = [sys.executable, "-m", "pyhpc", "run", "-n", "2", "--interpose", "--timeout", "1000",
           "python", "test/main.py", "--no-builddir", "-q", *excludes]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=1100,
                         stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-5000:]
    ran = [int(n) for n in re.findall(r"Ran (\d+) tests", text)]
    assert ran and min(ran) > 2000, ran
    assert "FAILED" not in text
    line = next(line for line in text.splitlines() if "pyhpc-interpose[0]: stats:" in line)
    print(line)  # the counters, for the record (pytest -s)
    served = {name: int(n) for name, n in re.findall(r"(MPI_\w+)=\d+\(pyhpc (\d+)\)", line)}
    # The suite's datatype and point-to-point traffic really went through pyhpc.
    assert served.get("MPI_Pack", 0) > 1000 and served.get("MPI_Unpack", 0) > 1000, line
    assert served.get("MPI_Isend", 0) > 0 and served.get("MPI_Recv", 0) > 0, line
    # Its persistent requests and Sendrecv_replace of derived types too.
    assert served.get("MPI_Send_init", 0) > 0 and served.get("MPI_Recv_init", 0) > 0, line
    assert served.get("MPI_Sendrecv_replace", 0) > 0, line
