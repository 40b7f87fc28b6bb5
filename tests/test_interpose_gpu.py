"""The interposer with GPU (cupy) buffers over an MPI that need not be
CUDA-aware: every device strategy must deliver every element. Needs a GPU,
but for one test that checks a GPU program's own expectations on host memory."""

from __future__ import annotations

import json
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


EXCHANGE = str(Path(__file__).parent / "programs" / "exchange_device.py")


def device_calls(stdout: str) -> dict[str, int]:
    """The program's own count of calls with a device side, per call."""
    line = next(line for line in stdout.splitlines() if line.startswith("device calls: "))
    return json.loads(line.removeprefix("device calls: "))


@pytest.mark.gpu
@pytest.mark.parametrize(("ranks", "strategy"),
                         [(2, "oneshot"), (3, "staged"), (4, "staged")])
def test_device_sendrecv_and_all_to_alls_through_the_interposer(ranks, strategy):
    # Sendrecv(_replace), Alltoallv/w, Neighbor_alltoallv on a line and
    # Neighbor_alltoallw halos (3D and 2D,
    # non-periodic edges; on 3 ranks one periodic dimension), blocking and
    # nonblocking, on device, host and mixed buffers: the program checks that
    # all agree byte for byte and hold the expected values. Host buffers alone
    # stay the system MPI's (no model), so exactly the calls with a device side
    # are the interposer's.
    from pyhpc import cuda

    if cuda.cupy() is None:
        pytest.skip("cupy is not installed")
    out = pyhpc_run("-n", str(ranks), "--interpose", EXCHANGE, PYHPC_INTERPOSE_DEVICE=strategy,
                    PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exchange_device: all checks passed" in out.stdout, out.stdout
    expected = device_calls(out.stdout)
    assert set(expected) == {"MPI_Sendrecv", "MPI_Sendrecv_replace", "MPI_Alltoallv", "MPI_Ialltoallv",
                             "MPI_Alltoallw", "MPI_Ialltoallw", "MPI_Neighbor_alltoallv",
                             "MPI_Ineighbor_alltoallv", "MPI_Neighbor_alltoallw",
                             "MPI_Ineighbor_alltoallw"}, expected
    for rank in range(ranks):
        counts = stats(out.stderr, rank)
        for call, n in expected.items():
            assert n > 0 and counts[call][1] == n, (rank, call, counts)


@pytest.mark.gpu
def test_device_and_host_exchanges_both_through_the_engine():
    # With the host engine on too, a mixed call packs its host side on the host
    # and its device side on the GPU; every call is then served.
    from pyhpc import cuda

    if cuda.cupy() is None:
        pytest.skip("cupy is not installed")
    out = pyhpc_run("-n", "2", "--interpose", EXCHANGE, PYHPC_INTERPOSE_DEVICE="auto",
                    PYHPC_INTERPOSE_STRATEGY="pyhpc", PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exchange_device: all checks passed" in out.stdout, out.stdout
    for rank in range(2):
        counts = stats(out.stderr, rank)
        for call in device_calls(out.stdout):
            assert counts[call][0] > 0 and counts[call][1] == counts[call][0], (rank, call, counts)


def test_exchange_program_checks_hold_on_host_memory(tmp_path):
    # Runs without a GPU: numpy stands in for cupy, so every "device" array is
    # host memory and the interposer's host engine serves it. This checks the
    # GPU program's own expected values and argument forms, so that on a GPU a
    # failure points at the device path, not at the program.
    (tmp_path / "cupy.py").write_text(
        "import numpy as np\n"
        "class ndarray(np.ndarray):\n    pass\n"
        "def asarray(a):\n    return np.array(a).view(ndarray)\n"
        "def asnumpy(a):\n    return np.asarray(a).view(np.ndarray).copy()\n")
    out = pyhpc_run("-n", "3", "--interpose", EXCHANGE, PYHPC_INTERPOSE_STRATEGY="pyhpc",
                    PYHPC_INTERPOSE_STATS="1", PYTHONPATH=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exchange_device: all checks passed" in out.stdout, out.stdout
    counts = stats(out.stderr)
    for call in device_calls(out.stdout):
        assert counts[call][0] > 0 and counts[call][1] == counts[call][0], (call, counts)
