"""libpyhpc_interpose.so under unmodified C and mpi4py programs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyhpc import _build_info, interpose

PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture(scope="module")
def hello_mpi(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("bin") / "hello_mpi"
    subprocess.run([_build_info.MPI_C_COMPILER, str(PROGRAMS / "hello_mpi.c"), "-o", str(exe)],
                   check=True, timeout=120)
    return exe


def pyhpc_run(*args: str, log: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYHPC_INTERPOSE_LOG", None)
    if log:
        env["PYHPC_INTERPOSE_LOG"] = "1"
    return subprocess.run([sys.executable, "-m", "pyhpc", "run", *args], capture_output=True,
                          text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def test_exports_only_mpi_symbols():
    out = subprocess.run(["nm", "-D", "--defined-only", str(interpose.library_path())],
                         capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names and all(name.startswith("MPI_") for name in names), names
    assert {"MPI_Init", "MPI_Init_thread", "MPI_Finalize"} <= set(names)


def test_c_program_runs_through_the_interposer(hello_mpi):
    out = pyhpc_run("-n", "2", "--interpose", str(hello_mpi), log=True)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["hello rank 0 of 2 sum 1", "hello rank 1 of 2 sum 1"]
    for rank in (0, 1):
        assert f"pyhpc-interpose[{rank}]: MPI_Init" in out.stderr
        assert f"pyhpc-interpose[{rank}]: MPI_Finalize" in out.stderr


def test_interposer_is_silent_unless_asked(hello_mpi):
    out = pyhpc_run("-n", "2", "--interpose", str(hello_mpi), log=False)
    assert out.returncode == 0, out.stderr
    assert "pyhpc-interpose" not in out.stdout + out.stderr


def test_without_interpose_nothing_is_preloaded(hello_mpi):
    out = pyhpc_run("-n", "2", str(hello_mpi), log=True)
    assert out.returncode == 0, out.stderr
    assert "pyhpc-interpose" not in out.stderr


def test_mpi4py_program_runs_through_the_interposer():
    code = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "print(f'<sum={c.allreduce(c.rank)}>', flush=True)")
    out = pyhpc_run("-n", "2", "--interpose", "python", "-c", code, log=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("<sum=1>") == 2, out.stdout  # ranks' lines may interleave
    # mpi4py initialises with MPI_Init_thread; both ranks must be seen.
    for rank in (0, 1):
        assert f"pyhpc-interpose[{rank}]: MPI_Init_thread" in out.stderr
