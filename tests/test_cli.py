"""`pyhpc info` and the CLI's error paths."""

from __future__ import annotations

import json
import subprocess
import sys

from pyhpc import mpi_build, settings


def pyhpc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyhpc", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_info_json_names_the_mpi_in_use():
    out = pyhpc("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["mpi_built_against"] == str(mpi_build.built())
    assert info["mpi_loaded"] == str(mpi_build.loaded())
    assert info["interposer"].endswith("libpyhpc_interpose.so")
    assert isinstance(info["cuda_built"], bool) and info["cuda_devices"] >= 0
    assert "mpich" in info["mpiexec"] or "openmpi" in info["mpiexec"]


def test_info_text_and_settings_table():
    out = pyhpc("info")
    assert out.returncode == 0 and "mpi_loaded" in out.stdout
    out = pyhpc("info", "--settings-table")
    assert out.returncode == 0 and out.stdout.strip() == settings.markdown_table()


def test_run_without_program_is_a_usage_error():
    out = pyhpc("run", "-n", "2")
    assert out.returncode == 2 and "nothing to run" in out.stderr


def test_run_with_bad_nprocs_is_a_clear_error():
    out = pyhpc("run", "-n", "0", "true")
    assert out.returncode == 2 and "nprocs" in out.stderr
