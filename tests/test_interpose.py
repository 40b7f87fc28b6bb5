"""libpyhpc_interpose.so under unmodified C and mpi4py programs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyhpc import _build_info, interpose

PROGRAMS = Path(__file__).parent / "programs"
BENCH_PROGRAMS = Path(__file__).resolve().parent.parent / "bench" / "programs"


def compile_program(tmp_path_factory, source: Path) -> Path:
    exe = tmp_path_factory.mktemp("bin") / source.stem
    subprocess.run([_build_info.MPI_C_COMPILER, "-O2", str(source), "-o", str(exe)],
                   check=True, timeout=120)
    return exe


@pytest.fixture(scope="module")
def hello_mpi(tmp_path_factory) -> Path:
    return compile_program(tmp_path_factory, PROGRAMS / "hello_mpi.c")


@pytest.fixture(scope="module")
def pack_types(tmp_path_factory) -> Path:
    return compile_program(tmp_path_factory, PROGRAMS / "pack_types.c")


def pyhpc_run(*args: str, log: bool = False, **settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYHPC_INTERPOSE")}
    env.pop("PYHPC_SYSTEM_MODEL", None)
    # Not the user's own measured model (~/.cache/pyhpc): tests state theirs.
    env["XDG_CACHE_HOME"] = "/nonexistent/pyhpc-tests"
    if log:
        env["PYHPC_INTERPOSE_LOG"] = "1"
    env.update(settings)
    return subprocess.run([sys.executable, "-m", "pyhpc", "run", "--timeout", "120", *args],
                          capture_output=True, text=True, timeout=180, env=env,
                          stdin=subprocess.DEVNULL)


def stats(stderr: str, rank: int | None = None) -> dict[str, tuple[int, int]]:
    """{call: (intercepted, served by pyhpc's engine)} from PYHPC_INTERPOSE_STATS output
    (the first rank's line to appear, or `rank`'s)."""
    tag = ": stats:" if rank is None else f"pyhpc-interpose[{rank}]: stats:"
    line = next(line for line in stderr.splitlines() if tag in line)
    found = {}
    for name, n, engine in re.findall(r"(MPI_\w+\*?)=(\d+)(?:\(pyhpc (\d+)\))?", line):
        found[name] = (int(n), int(engine or 0))
    return found


def test_exports_only_mpi_symbols():
    out = subprocess.run(["nm", "-D", "--defined-only", str(interpose.library_path())],
                         capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names and all(name.startswith("MPI_") for name in names), names
    assert {"MPI_Init", "MPI_Init_thread", "MPI_Finalize", "MPI_Type_commit", "MPI_Type_free",
            "MPI_Pack", "MPI_Unpack", "MPI_Pack_size", "MPI_Send", "MPI_Recv", "MPI_Isend",
            "MPI_Irecv", "MPI_Sendrecv", "MPI_Wait", "MPI_Waitall", "MPI_Waitany", "MPI_Waitsome",
            "MPI_Test", "MPI_Testall", "MPI_Testany", "MPI_Testsome", "MPI_Request_free",
            "MPI_Alltoallv", "MPI_Alltoallw", "MPI_Neighbor_alltoallv", "MPI_Neighbor_alltoallw",
            "MPI_Send_init", "MPI_Recv_init", "MPI_Start", "MPI_Startall", "MPI_Sendrecv_replace",
            "MPI_Ialltoallv", "MPI_Ialltoallw", "MPI_Ineighbor_alltoallv",
            "MPI_Ineighbor_alltoallw"} <= set(names)


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


def test_pack_program_is_byte_identical_through_pyhpcs_engine(pack_types):
    plain = pyhpc_run("-n", "1", str(pack_types))
    assert plain.returncode == 0, plain.stderr
    served = pyhpc_run("-n", "1", "--interpose", str(pack_types),
                       PYHPC_INTERPOSE_STRATEGY="pyhpc", PYHPC_INTERPOSE_STATS="1")
    assert served.returncode == 0, served.stderr
    assert served.stdout == plain.stdout  # digests of every packed buffer
    assert "ROUND-TRIP-FAILED" not in served.stdout and served.stdout.count(" ok") == 8
    counts = stats(served.stderr)
    # 8 types, each packed twice and unpacked once; the struct goes to the system MPI.
    assert counts["MPI_Pack"] == (16, 14) and counts["MPI_Unpack"] == (8, 7)


@pytest.mark.parametrize("strategy", ["system", "auto"])
def test_engine_stays_out_unless_told_or_measured(pack_types, strategy):
    # "auto" with no system model must not guess: the system MPI keeps every call.
    out = pyhpc_run("-n", "1", "--interpose", str(pack_types),
                    PYHPC_INTERPOSE_STRATEGY=strategy, PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert stats(out.stderr)["MPI_Pack"] == (16, 0)


def test_mpi4py_pack_reaches_the_engine():
    # With MPICH, mpi4py calls MPI_Pack_c; the interposer must see it either way.
    code = ("import numpy as np; from mpi4py import MPI; "
            "t = MPI.INT.Create_vector(10, 1, 2).Commit(); a = np.arange(19, dtype=np.int32); "
            "o = np.empty(40, np.uint8); t.Pack(a, o, 0, MPI.COMM_WORLD); "
            "print(o.view(np.int32).tolist())")
    out = pyhpc_run("-n", "1", "--interpose", "python", "-c", code,
                    PYHPC_INTERPOSE_STRATEGY="pyhpc", PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(list(range(0, 19, 2)))
    assert stats(out.stderr)["MPI_Pack"] == (1, 1)


@pytest.fixture(scope="module")
def halo3d(tmp_path_factory) -> Path:
    return compile_program(tmp_path_factory, BENCH_PROGRAMS / "halo3d.c")


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("mode", ["isend", "sendrecv", "neighbor", "persistent"])
def test_halo_exchange_is_bit_identical_through_the_engine(halo3d, ranks, mode):
    plain = pyhpc_run("-n", str(ranks), str(halo3d), "10", "4", mode)
    assert plain.returncode == 0, plain.stderr
    served = pyhpc_run("-n", str(ranks), "--interpose", str(halo3d), "10", "4", mode,
                       PYHPC_INTERPOSE_STRATEGY="pyhpc", PYHPC_INTERPOSE_STATS="1")
    assert served.returncode == 0, served.stderr
    digest = plain.stdout.splitlines()[0]
    assert digest.startswith("digest ") and served.stdout.splitlines()[0] == digest
    counts = stats(served.stderr)
    if mode == "neighbor":  # one MPI_Neighbor_alltoallw of 6 faces per iteration
        assert counts["MPI_Neighbor_alltoallw"] == (4, 4), counts
        return
    if mode == "persistent":  # 12 requests on each of two grids, one MPI_Startall per iteration
        assert counts["MPI_Send_init"] == (12, 12) and counts["MPI_Recv_init"] == (12, 12), counts
        assert counts["MPI_Start*"] == (4, 4) and counts["MPI_Request_free"] == (24, 0), counts
        return
    calls = ["MPI_Isend", "MPI_Irecv"] if mode == "isend" else ["MPI_Sendrecv"]
    for call in calls:  # 6 faces x 4 iterations, every one through pyhpc's engine
        assert counts[call] == (24, 24), counts


def test_isend_sendrecv_and_persistent_agree(halo3d):
    a = pyhpc_run("-n", "2", str(halo3d), "10", "4", "isend").stdout.split()[1]
    b = pyhpc_run("-n", "2", str(halo3d), "10", "4", "sendrecv").stdout.split()[1]
    c = pyhpc_run("-n", "2", str(halo3d), "10", "4", "persistent").stdout.split()[1]
    assert a == b == c


@pytest.mark.parametrize("interpose", [False, True])
def test_mpi4py_point_to_point_with_derived_types(interpose):
    # Blocking, nonblocking with every completion call, a freed request, a short
    # message and a truncation error: the program checks every byte itself.
    program = str(PROGRAMS / "p2p_types.py")
    args = ["-n", "2", "--interpose", program] if interpose else ["-n", "2", program]
    out = pyhpc_run(*args, PYHPC_INTERPOSE_STRATEGY="pyhpc", PYHPC_INTERPOSE_STATS="1")
    assert out.returncode == 0, out.stderr
    assert "p2p_types: all checks passed" in out.stdout
    if interpose:
        counts = stats(out.stderr)  # the first rank's line: traffic went through the engine
        assert counts["MPI_Isend"][1] == 6 and counts["MPI_Irecv"][1] == 6
        assert counts["MPI_Sendrecv"] == (1, 1)


def test_bad_input_gets_the_system_mpis_own_errors():
    # Uncommitted and null types (to pack, persistent requests, MPI_Alltoallw,
    # MPI_Sendrecv_replace), too-small buffers, a position past the end:
    # whatever the system MPI answers (an error class, or, for MPICH 5.0's
    # unchecked pack size, success), the interposer answers the same.
    program = str(PROGRAMS / "bad_input.py")
    plain = pyhpc_run("-n", "1", program)
    served = pyhpc_run("-n", "1", "--interpose", program, PYHPC_INTERPOSE_STRATEGY="pyhpc")
    assert plain.returncode == 0 and served.returncode == 0, plain.stderr + served.stderr
    assert plain.stdout.count("\n") == 13 and "pack uncommitted: error class" in plain.stdout
    assert "send_init uncommitted: error class" in plain.stdout
    assert "alltoallw uncommitted: error class" in plain.stdout
    assert served.stdout == plain.stdout


def digest_line(out: subprocess.CompletedProcess, passed: str) -> str:
    assert out.returncode == 0, out.stderr
    assert passed in out.stdout, out.stdout
    return next(line for line in out.stdout.splitlines() if line.startswith("digest "))


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("strategy", ["pyhpc", "system"])
def test_mpi4py_alltoall_and_neighbor_exchanges_with_derived_types(ranks, strategy):
    # The programs check every element themselves; what arrives must also be
    # the same bytes with and without the interposer, served or passed through.
    program = str(PROGRAMS / "alltoall_types.py")
    passed = "alltoall_types: all checks passed"
    plain = digest_line(pyhpc_run("-n", str(ranks), program), passed)
    out = pyhpc_run("-n", str(ranks), "--interpose", program,
                    PYHPC_INTERPOSE_STRATEGY=strategy, PYHPC_INTERPOSE_STATS="1")
    assert digest_line(out, passed) == plain
    on = int(strategy == "pyhpc")
    for rank in (0, 1):
        counts = stats(out.stderr, rank)
        for call in ("MPI_Alltoallv", "MPI_Ialltoallv", "MPI_Ialltoallw", "MPI_Ineighbor_alltoallv",
                     "MPI_Ineighbor_alltoallw"):
            assert counts[call] == (1, on), counts
        for call in ("MPI_Neighbor_alltoallv", "MPI_Neighbor_alltoallw"):  # on a ring, then a line
            assert counts[call] == (2, 2 * on), counts
        # Two MPI_Alltoallw; in the second, odd ranks receive one part with a
        # struct type: that whole call goes to the system MPI there.
        assert counts["MPI_Alltoallw"] == (2, on * (2 if rank == 0 else 1)), counts


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("strategy", ["pyhpc", "system"])
def test_mpi4py_persistent_requests_with_random_nested_types(ranks, strategy):
    # 7 types x 4 starts with new data each time, every completion call on a mix
    # of persistent, non-persistent and inactive requests; Request_free of
    # inactive and active ones; Sendrecv_replace; Isendrecv (the system MPI's)
    # against a served Sendrecv; a truncated persistent receive.
    program = str(PROGRAMS / "persistent_types.py")
    passed = "persistent_types: all checks passed"
    plain = digest_line(pyhpc_run("-n", str(ranks), program), passed)
    out = pyhpc_run("-n", str(ranks), "--interpose", program,
                    PYHPC_INTERPOSE_STRATEGY=strategy, PYHPC_INTERPOSE_STATS="1")
    assert digest_line(out, passed) == plain
    on = int(strategy == "pyhpc")
    for rank in range(ranks):
        counts = stats(out.stderr, rank)
        assert counts["MPI_Send_init"] == (9, 9 * on) and counts["MPI_Recv_init"] == (16, 16 * on), counts
        assert counts["MPI_Start*"] == (45, 45 * on), counts  # 7 x (2 Startall + 4 Start) + 3
        assert counts["MPI_Request_free"] == (25, 0), counts
        assert counts["MPI_Sendrecv_replace"] == (1, on), counts
        assert counts.get("MPI_Sendrecv", (0, 0)) == ((1, on) if rank % 2 else (0, 0)), counts
