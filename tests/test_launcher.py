"""`pyhpc run`: finding mpiexec, the flags each MPI needs, wrapping Python."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

import pyhpc
from pyhpc import launcher
from pyhpc.launcher import Launcher, build_command, parse_version_output, wrap_python

HYDRA = "HYDRA build details:\n    Version:                                 4.0.2\n    Release Date: ..."
OMPI4 = "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
OMPI5 = "mpiexec (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n"


@pytest.mark.parametrize("text,expected", [
    (HYDRA, ("mpich", "4.0.2")), (OMPI4, ("openmpi", "4.1.4")), (OMPI5, ("openmpi", "5.0.11")),
])
def test_parse_version_output(text, expected):
    assert parse_version_output(text) == expected


def test_unknown_launcher_is_a_clear_error():
    with pytest.raises(pyhpc.UnsupportedError, match="MPICH Hydra and Open MPI"):
        parse_version_output("srun 23.02")


@pytest.mark.parametrize("argv,expected", [
    (["prog.py", "a"], [sys.executable, "-m", "mpi4py", "prog.py", "a"]),
    (["python", "-c", "x"], [sys.executable, "-m", "mpi4py", "-c", "x"]),
    (["python3", "-u", "-W", "error", "s.py"], [sys.executable, "-u", "-W", "error", "-m", "mpi4py", "s.py"]),
    (["/usr/bin/python3.12", "-m", "pytest"], ["/usr/bin/python3.12", "-m", "mpi4py", "-m", "pytest"]),
    (["python", "-m", "mpi4py", "s.py"], [sys.executable, "-m", "mpi4py", "s.py"]),
    (["./a.out", "x.py"], ["./a.out", "x.py"]),
])
def test_wrap_python(argv, expected):
    assert wrap_python(argv) == expected


def test_empty_program_is_rejected():
    with pytest.raises(pyhpc.InvalidArgumentError, match="program"):
        wrap_python([])


@pytest.mark.parametrize("nprocs", [0, -1, "2"])
def test_bad_nprocs_names_the_argument(nprocs):
    with pytest.raises(pyhpc.InvalidArgumentError, match="nprocs"):
        build_command(nprocs, ["./a.out"], launcher=Launcher("mpiexec", "mpich", "5.0"))


def test_openmpi5_flags(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    env_in = {"PYHPC_INTERPOSE_LOG": "1", "PATH": "/bin", "LD_PRELOAD": "/x.so"}
    cmd, env = build_command(4, ["./a.out"], interpose=True, environ=env_in,
                             launcher=Launcher("/m/mpiexec", "openmpi", "5.0.11"))
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert env["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    assert "OMPI_MCA_rmaps_base_oversubscribe" not in env
    assert cmd[:3] == ["/m/mpiexec", "-n", "4"] and cmd[-1] == "./a.out"
    forwarded = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-x"]
    assert forwarded[:4] == ["MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                             "PYHPC_INTERPOSE_LOG"]
    preload = forwarded[4]
    assert preload.startswith("LD_PRELOAD=") and preload.endswith("libpyhpc_interpose.so:/x.so")


def test_openmpi4_permits_oversubscription_and_keeps_user_settings():
    _, env = build_command(4, ["./a.out"], environ={}, launcher=Launcher("m", "openmpi", "4.1.4"))
    assert env["OMPI_MCA_rmaps_base_oversubscribe"] == "1"
    assert "PRTE_MCA_rmaps_default_mapping_policy" not in env
    _, env = build_command(2, ["./a.out"], environ={"OMPI_MCA_rmaps_base_oversubscribe": "0"},
                           launcher=Launcher("m", "openmpi", "4.1.4"))
    assert env["OMPI_MCA_rmaps_base_oversubscribe"] == "0"  # the user's choice wins


def test_mpich_preload_goes_through_genv():
    cmd, env = build_command(2, ["./a.out"], interpose=True, environ={},
                             launcher=Launcher("m", "mpich", "5.0.2"))
    i = cmd.index("-genv")
    assert cmd[i + 1] == "LD_PRELOAD" and cmd[i + 2].endswith("libpyhpc_interpose.so")
    assert "LD_PRELOAD" not in env  # never preloaded into mpiexec itself


def test_enclosing_job_context_is_not_inherited():
    # What an Open MPI 4 singleton leaves in its environment, plus users' settings.
    env_in = {"PMIX_RANK": "0", "PMIX_SERVER_URI4": "x", "OMPI_MCA_ess": "singleton",
              "OMPI_MCA_orte_launch": "1", "PMI_FD": "5", "OMPI_COMM_WORLD_RANK": "0",
              "OMPI_MCA_btl": "self,vader", "PMIX_MCA_gds": "hash", "PATH": "/bin"}
    _, env = build_command(2, ["./a.out"], environ=env_in, launcher=Launcher("m", "openmpi", "4.1.4"))
    assert env == {"OMPI_MCA_btl": "self,vader", "PMIX_MCA_gds": "hash", "PATH": "/bin",
                   "OMPI_MCA_rmaps_base_oversubscribe": "1",
                   **dict.fromkeys(launcher.THREAD_VARIABLES, str(launcher.threads_per_rank(2))),
                   **({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
                      if os.geteuid() == 0 else {})}


def test_blas_threads_are_shared_out_unless_the_user_set_them(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    for nprocs, threads in ((1, "8"), (2, "4"), (3, "2"), (16, "1")):
        _, env = build_command(nprocs, ["./a.out"], environ={}, launcher=Launcher("m", "mpich", "5"))
        assert all(env[name] == threads for name in launcher.THREAD_VARIABLES)
    _, env = build_command(4, ["./a.out"], environ={"OPENBLAS_NUM_THREADS": "3"},
                           launcher=Launcher("m", "mpich", "5"))
    assert env["OPENBLAS_NUM_THREADS"] == "3" and "OMP_NUM_THREADS" not in env  # the user decides


def test_leading_double_dash_is_dropped():
    cmd, _ = build_command(2, ["--", "./a.out", "x"], environ={}, launcher=Launcher("m", "mpich", "5"))
    assert cmd[-2:] == ["./a.out", "x"] and "--" not in cmd


def test_launcher_of_another_mpi_is_refused(monkeypatch):
    from pyhpc import mpi_build

    other = "openmpi" if mpi_build.built().family == "mpich" else "mpich"
    with pytest.raises(pyhpc.InvalidArgumentError, match="PYHPC_MPIEXEC"):
        launcher.check_matches_build(Launcher("/x/mpiexec", other, "5.0"))
    launcher.check_matches_build(Launcher("/x/mpiexec", mpi_build.built().family, "5.0"))


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "soon"])
def test_bad_timeouts_are_rejected(value):
    with pytest.raises(pyhpc.InvalidArgumentError, match="timeout"):
        launcher.check_timeout(value)
    assert launcher.check_timeout(0) is None and launcher.check_timeout(2.5) == 2.5


def test_pyhpc_mpiexec_setting_must_exist(monkeypatch):
    monkeypatch.setenv("PYHPC_MPIEXEC", "/nonexistent/mpiexec")
    with pytest.raises(pyhpc.InvalidArgumentError, match="PYHPC_MPIEXEC"):
        launcher.find_mpiexec()


def pyhpc_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyhpc", "run", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_run_four_ranks_prints_each_rank():
    out = pyhpc_run("-n", "4", "python", "-c",
                    "import sys; from mpi4py import MPI; "
                    "sys.stdout.write(f'<rank {MPI.COMM_WORLD.rank}>\\n')")
    assert out.returncode == 0, out.stderr
    # One write per rank; ranks' lines may come in any order.
    assert sorted(re.findall(r"<rank (\d+)>", out.stdout)) == ["0", "1", "2", "3"], out.stdout


def test_run_fails_when_one_rank_raises(tmp_path):
    prog = tmp_path / "raises.py"
    prog.write_text("from mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                    "if c.rank == 1: raise RuntimeError('rank one failed on purpose')\n"
                    "c.Barrier()\n")
    out = pyhpc_run("-n", "2", str(prog))  # a hang shows up as TimeoutExpired
    assert out.returncode != 0
    assert "rank one failed on purpose" in out.stderr


def test_run_timeout_kills_the_job(tmp_path):
    prog = tmp_path / "sleeps.py"
    prog.write_text("import time\ntime.sleep(600)\n")
    out = pyhpc_run("-n", "2", "--timeout", "3", str(prog))
    assert out.returncode == 124 and "killing it" in out.stderr


def test_killing_pyhpc_run_ends_every_rank(tmp_path):
    # Even SIGKILL, which pyhpc cannot catch: mpiexec is told to stop when its
    # parent dies, and takes the ranks with it.
    prog = tmp_path / "sleeper.py"
    prog.write_text("import os, sys, time\n"
                    "from mpi4py import MPI\n"
                    f"open(os.path.join({str(tmp_path)!r}, f'pid{{MPI.COMM_WORLD.rank}}'), 'w')"
                    ".write(str(os.getpid()))\n"
                    "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-m", "pyhpc", "run", "-n", "2", str(prog)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        pids = []
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = [int(p.read_text()) for p in tmp_path.glob("pid*") if p.read_text()]
            time.sleep(0.1)
        assert len(pids) == 2, "the ranks never started"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")
                 and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
        time.sleep(0.2)
    assert not alive, f"ranks {alive} outlived pyhpc run"
