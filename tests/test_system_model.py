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

    # Short runs also far apart ("-sparse": the engine's scalar loops).
    assert sorted((op, int(block)) for op, block, _, _ in rows) == sorted(
        [(op, b) for op in ("pack", "unpack") for b in BLOCKS_QUICK] +
        [(op, b) for op in ("pack-sparse", "unpack-sparse") for b in BLOCKS_QUICK if b < 64])
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


def test_short_runs_far_apart_follow_the_sparse_lines(pack_types, tmp_path):  # noqa: F811
    # The engine wins for runs close together and loses for short runs far
    # apart: layouts without the engine's vector path stay with the system MPI.
    from pyhpc import _mpi

    path = tmp_path / "model.txt"
    dense = "".join(f"{op} {1 << k} 1e-6 1e-3\n" for op in ("pack", "unpack") for k in range(21))
    sparse = "".join(f"{op}-sparse {1 << k} 1e-3 1e-6\n" for op in ("pack", "unpack") for k in range(6))
    path.write_text(f"# mpi: {MPI_LINE}\n{dense}{sparse}")
    out = pyhpc_run("-n", "1", "--interpose", str(pack_types), PYHPC_SYSTEM_MODEL=str(path),
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    # pack_types packs 8 types twice; all 7 with a strided form have runs under
    # 64 B. Three have them close together, on the vector path with AVX-512
    # VBMI: a byte vector (1 B every 3), an int vector (12 B every 28), a vector
    # of shorts in an hvector (4 B every 10). Four never: an interleave (8 B
    # runs move as words), two 3D subarrays (56 B every 320, 20 B every 80) and
    # an indexed block with decreasing displacements (16 B, stride -32).
    engine = 2 * 3 if _mpi.host_simd() != "scalar" else 0
    assert stats(out.stderr)["MPI_Pack"] == (16, engine)


def test_a_model_of_another_mpi_is_ignored(pack_types, tmp_path):  # noqa: F811
    model = write_model(tmp_path / "model.txt", 1e-6, 1e-3, mpi="Some Other MPI 1.0")
    out = pyhpc_run("-n", "1", "--interpose", str(pack_types), PYHPC_SYSTEM_MODEL=model,
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert stats(out.stderr)["MPI_Pack"] == (16, 0)
    assert "ignored" in out.stderr and "Some Other MPI" in out.stderr
