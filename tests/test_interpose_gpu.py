"""The interposer with GPU (cupy) buffers over an MPI that need not be
CUDA-aware: every device strategy must deliver every element. Needs a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_interpose import pyhpc_run, stats

PROGRAM = str(Path(__file__).parent / "programs" / "p2p_device.py")


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["oneshot", "staged", "auto"])
def test_device_buffers_through_the_interposer(strategy):
    from pyhpc import cuda

    if cuda.cupy() is None:
        pytest.skip("cupy is not installed")
    out = pyhpc_run("-n", "2", "--interpose", PROGRAM, PYHPC_INTERPOSE_DEVICE=strategy,
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert "p2p_device: all checks passed" in out.stdout
    counts = stats(out.stderr)
    assert counts["MPI_Isend"][1] >= 1 and counts["MPI_Irecv"][1] >= 1, counts


HALO = str(Path(__file__).parent / "programs" / "halo_device.py")


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("strategy", ["oneshot", "staged"])
def test_device_halo_exchange_through_the_interposer(ranks, strategy):
    # six faces per rank as subarray types on a periodic 3D grid of ranks; the program
    # checks every ghost cell against the value its global position must hold
    from pyhpc import cuda

    if cuda.cupy() is None:
        pytest.skip("cupy is not installed")
    out = pyhpc_run("-n", str(ranks), "--interpose", HALO, "24", "3", PYHPC_INTERPOSE_DEVICE=strategy,
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "halo_device: all checks passed" in out.stdout, out.stdout
    counts = stats(out.stderr)
    assert counts["MPI_Isend"][1] >= 18 and counts["MPI_Irecv"][1] >= 18, counts  # 6 faces x 3 iterations
