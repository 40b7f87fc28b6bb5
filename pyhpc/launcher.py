"""Finding and wrapping the right ``mpiexec`` (``pyhpc run``).

The same command line has to work under MPICH's Hydra and Open MPI 4 (ORTE)
and 5 (PRRTE), as root in a container and with more ranks than cores; each
launcher spells that differently. Python programs run under mpi4py's runner
(``python -m mpi4py``) so that an uncaught exception on one rank calls
MPI_Abort and ends the whole job instead of leaving the others hanging in a
collective.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, Sequence

from . import settings
from .errors import InvalidArgumentError, UnsupportedError

# Python's own options that take a value (`-W error`, `-X dev`), for finding the
# program among an interpreter's leading options.
_PY_OPTS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}


@dataclasses.dataclass(frozen=True)
class Launcher:
    path: str
    flavor: str   # "mpich" (Hydra) or "openmpi"
    version: str  # launcher's version, "5.0.2"

    @property
    def major(self) -> int:
        match = re.match(r"\d+", self.version)
        return int(match.group()) if match else 0


def find_mpiexec() -> str:
    """PYHPC_MPIEXEC, else the mpiexec beside this Python (a venv with an MPI wheel), else PATH."""
    configured = settings.get("PYHPC_MPIEXEC")
    if configured:
        if not shutil.which(str(configured)):
            raise InvalidArgumentError(f"PYHPC_MPIEXEC={configured!r} is not an executable")
        return str(shutil.which(str(configured)))
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise InvalidArgumentError(
            "no mpiexec found: install an MPI (pip install mpich) or set PYHPC_MPIEXEC")
    return found


def parse_version_output(text: str) -> tuple[str, str]:
    """(flavor, version) from `mpiexec --version` output."""
    match = re.search(r"HYDRA build details:.*?Version:\s*(\S+)", text, re.S)
    if match:
        return "mpich", match.group(1)
    match = re.search(r"\((?:Open MPI|OpenRTE|PRRTE)\)\s*v?(\d[\w.]*)", text)
    if match:
        return "openmpi", match.group(1)
    match = re.search(r"Open MPI v?(\d[\w.]*)", text)
    if match:
        return "openmpi", match.group(1)
    raise UnsupportedError(
        "cannot tell which MPI launcher this is (MPICH Hydra and Open MPI are supported); "
        f"`mpiexec --version` said: {text.strip()[:200]!r}")


@functools.lru_cache(maxsize=None)
def detect(path: str) -> Launcher:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidArgumentError(f"cannot run {path} --version: {exc}") from None
    flavor, version = parse_version_output(out.stdout + out.stderr)
    return Launcher(path, flavor, version)


def wrap_python(argv: Sequence[str]) -> list[str]:
    """Run Python programs under mpi4py's runner, which aborts the job on an uncaught exception.

    `prog.py args` -> `<this python> -m mpi4py prog.py args`;
    `python [opts] (-c cmd | -m mod | prog.py) ...` -> `python [opts] -m mpi4py ...`.
    A bare `python`/`python3` means the interpreter pyhpc runs in (a venv need
    not be activated). Anything else is returned unchanged.
    """
    argv = list(argv)
    if not argv:
        raise InvalidArgumentError("program: nothing to run")
    if argv[0].endswith(".py"):
        return [sys.executable, "-m", "mpi4py", *argv]
    if not re.fullmatch(r"python[\d.]*", Path(argv[0]).name):
        return argv
    if argv[0] in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        argv[0] = sys.executable
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-c", "-m", "-"):
        i += 2 if argv[i] in _PY_OPTS_WITH_VALUE else 1
    if i < len(argv) - 1 and argv[i] == "-m" and argv[i + 1] == "mpi4py":
        return argv  # already wrapped
    if i >= len(argv):
        return argv  # interactive interpreter: nothing to wrap
    return [*argv[:i], "-m", "mpi4py", *argv[i:]]


# Variables through which a launcher (or an MPI singleton: Open MPI 4 starts a
# PMIx server inside any process that calls MPI_Init without mpiexec) tells a
# process which job it belongs to. Inherited by a new mpiexec they make it join
# or misread that job and fail, so they are removed; users' own MCA settings
# (OMPI_MCA_btl, PRTE_MCA_..., PMIX_MCA_...) are kept.
_JOB_CONTEXT_PREFIXES = ("PMIX_", "PMI_", "OMPI_COMM_WORLD_", "OMPI_APP_CTX_", "ORTE_", "HYDI_")
_JOB_CONTEXT_NAMES = {
    "OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_MCA_orte_launch", "OMPI_MCA_orte_ess_num_procs",
    "OMPI_MCA_orte_precondition_transports", "OMPI_MCA_orte_hnp_uri", "OMPI_MCA_ess_base_jobid",
    "OMPI_MCA_ess_base_vpid", "OMPI_MCA_orte_ess_node_rank", "OMPI_UNIVERSE_SIZE",
    "OMPI_FILE_LOCATION", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
}


def without_job_context(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus the variables that tie a process to an enclosing MPI job."""
    return {name: value for name, value in env.items()
            if name not in _JOB_CONTEXT_NAMES
            and not (name.startswith(_JOB_CONTEXT_PREFIXES) and not name.startswith("PMIX_MCA_"))}


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """A finite number of seconds >= 0 (0 and None mean no limit)."""
    if timeout is None:
        return None
    try:
        value = float(timeout)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name}: expected seconds, got {timeout!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name}: expected a finite number of seconds >= 0, got {timeout!r}")
    return value or None


def check_matches_build(launcher: Launcher) -> None:
    """Refuse a launcher of another MPI than pyhpc was built against: its ranks
    would each start as a separate one-rank job and a multi-rank run would
    quietly test nothing."""
    from . import mpi_build

    built = mpi_build.built()
    if built.family != "unknown" and launcher.flavor != built.family:
        raise InvalidArgumentError(
            f"mpiexec {launcher.path} belongs to {launcher.flavor} but pyhpc was built against "
            f"{built}: set PYHPC_MPIEXEC to that MPI's mpiexec (or rebuild pyhpc)")


# Thread-pool sizes of OpenMP, OpenBLAS and MKL. Unset, each rank's BLAS starts a thread per
# core: n ranks then run n x cores spinning threads, and a 2-rank numpy job on 2 cores was
# measured 60x slower (moe_layers: 3.0 s against 0.05 s per step).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_rank(nprocs: int) -> int:
    """The cores this process may use, shared out over nprocs local ranks (at least 1 each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nprocs)


def build_command(nprocs: int, argv: Sequence[str], *, interpose: bool = False,
                  launcher: Launcher | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The mpiexec command line and environment that run `argv` on `nprocs` local ranks."""
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise InvalidArgumentError(f"nprocs must be a positive integer, got {nprocs!r}")
    argv = list(argv)
    if argv and argv[0] == "--":  # `pyhpc run -n 2 -- prog ...`
        argv = argv[1:]
    if launcher is None:
        launcher = detect(find_mpiexec())
        check_matches_build(launcher)
    env = without_job_context(os.environ if environ is None else environ)
    if not any(name in env for name in THREAD_VARIABLES):  # the user's setting wins
        env.update(dict.fromkeys(THREAD_VARIABLES, str(threads_per_rank(nprocs))))
    cmd = [launcher.path, "-n", str(nprocs)]
    preload = None
    if interpose:
        from .interpose import library_path

        preload = str(library_path())
        if env.get("LD_PRELOAD"):
            preload = f"{preload}:{env['LD_PRELOAD']}"
    if launcher.flavor == "openmpi":
        if os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        # Permit (not force) more ranks than slots: Open MPI counts slots in
        # physical cores, which os.cpu_count() cannot tell on SMT machines.
        if launcher.major >= 5:
            env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
        else:
            env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        # Open MPI forwards only its own variables to ranks; pass pyhpc's explicitly.
        for name in sorted(env):
            if name.startswith("PYHPC_") or name in THREAD_VARIABLES:
                cmd += ["-x", name]
        if preload:
            cmd += ["-x", f"LD_PRELOAD={preload}"]
    else:  # Hydra forwards the whole environment; it oversubscribes without asking.
        if preload:
            cmd += ["-genv", "LD_PRELOAD", preload]
    cmd += wrap_python(argv)
    return cmd, env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """mpiexec gets SIGTERM if pyhpc dies, even by SIGKILL: the job never outlives its launcher."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the signal handlers in run() still cover SIGTERM/SIGHUP


def run(nprocs: int, argv: Sequence[str], *, interpose: bool = False,
        timeout: float | None = None) -> int:
    """Run `argv` on `nprocs` local ranks; return the job's exit status.

    The job runs in its own process group, so a timeout, Ctrl-C, SIGTERM or
    SIGHUP to pyhpc ends every rank, not only mpiexec; if pyhpc itself is
    killed, mpiexec is told to stop. A timeout returns 124 (as timeout(1) does).
    """
    timeout = check_timeout(settings.get("PYHPC_RUN_TIMEOUT") if timeout is None else timeout,
                            "timeout")
    cmd, env = build_command(nprocs, argv, interpose=interpose)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def on_signal(signum, frame):  # noqa: ARG001
        raise _Stop(128 + signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"pyhpc run: job exceeded {timeout:g} s, killing it", file=sys.stderr)
        _kill_group(proc)
        return 124
    except KeyboardInterrupt:
        _kill_group(proc)
        return 130
    except _Stop as stop:
        _kill_group(proc)
        return stop.code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stop(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
