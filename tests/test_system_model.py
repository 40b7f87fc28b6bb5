"""`pyhpc measure-system` and the interposer's `auto` strategy that reads it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mpi4py import MPI

from test_interpose import pack_types, pyhpc_run, stats  # noqa: F401 - fixture and helpers

from pyhpc.system_model import mpi_first_line  # noqa: E402

MPI_LINE = mpi_first_line(MPI.Get_library_version())


def test_measure_system_writes_a_model_for_this_mpi(tmp_path):
    path = tmp_path / "model.txt"
    out = subprocess.run([sys.executable, "-m", "pyhpc", "measure-system", "--quick", "--out", str(path)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    lines = path.read_text().splitlines()
    assert f"# mpi: {MPI_LINE}" in lines
    rows = [line.split() for line in lines if not line.startswith("#")]
    from pyhpc.system_model import BLOCKS_QUICK

    assert sorted((op, int(block)) for op, block, _, _ in rows) == sorted(
        (op, b) for op in ("pack", "unpack") for b in BLOCKS_QUICK)
    assert all(float(mine) > 0 and float(theirs) > 0 for _, _, mine, theirs in rows)
    assert str(path) in out.stdout


def write_model(path, mine: float, theirs: float, mpi: str = MPI_LINE) -> str:
    rows = "".join(f"{op} {1 << k} {mine} {theirs}\n" for op in ("pack", "unpack") for k in range(21))
    path.write_text(f"# mpi: {mpi}\n{rows}")
    return str(path)


@pytest.mark.parametrize("mine,theirs,engine_packs", [
    (1e-6, 1e-3, 14),    # pyhpc clearly faster everywhere: every strided pack is pyhpc's
    (1e-3, 1e-6, 0),     # the system MPI faster: nothing changes hands
    (0.95e-3, 1e-3, 0),  # within 10%: noise, the system MPI keeps it
])
def test_auto_follows_the_model(pack_types, tmp_path, mine, theirs, engine_packs):  # noqa: F811
    model = write_model(tmp_path / "model.txt", mine, theirs)
    out = pyhpc_run("-n", "1", "--interpose", str(pack_types), PYHPC_SYSTEM_MODEL=model,
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert stats(out.stderr)["MPI_Pack"] == (16, engine_packs)


def test_a_model_of_another_mpi_is_ignored(pack_types, tmp_path):  # noqa: F811
    model = write_model(tmp_path / "model.txt", 1e-6, 1e-3, mpi="Some Other MPI 1.0")
    out = pyhpc_run("-n", "1", "--interpose", str(pack_types), PYHPC_SYSTEM_MODEL=model,
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert stats(out.stderr)["MPI_Pack"] == (16, 0)
    assert "ignored" in out.stderr and "Some Other MPI" in out.stderr
