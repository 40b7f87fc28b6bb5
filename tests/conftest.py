"""Test-suite plumbing shared by serial and multi-rank runs.

Multi-rank runs (`mpiexec -n N python -m mpi4py -m pytest --with-mpi`, see
tests/run.py) need two guarantees that pytest alone does not give:

* a failure on one rank ends the whole job: the failing rank prints its
  traceback and calls MPI_Abort, so the other ranks cannot hang in the next
  collective and the job cannot report a pass;
* a hung rank ends the job: the per-test timeout of pytest-timeout (its
  `timeout` setting and marker) fires a watchdog thread that writes every
  thread's stack to stderr and calls MPI_Abort. pytest-timeout's own timer
  would write the stacks through pytest's terminal, which is silenced on
  ranks > 0 and lost when another rank's exit kills the job first.

Only rank 0 writes pytest's report; other ranks speak only when they fail.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time

import pytest


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _mpi_run(config) -> bool:
    return bool(config.getoption("with_mpi", default=False))


@contextlib.contextmanager
def _uncaptured(config):
    """Write to the real stderr even while pytest captures output: the job is
    about to be aborted and captured text would die with it."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


# After a rank writes why it stops and before it calls MPI_Abort: the launcher
# drops output still in flight when it kills the job (seen with Hydra: 3 of 40
# tracebacks lost without the pause), and after a timeout every rank gets to
# dump its stacks, not only the first one to fire.
ABORT_GRACE_S = 2.0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not _mpi_run(config):
        return
    comm = _world()
    expected = os.environ.get("PYHPC_TEST_RANKS")
    if expected and int(expected) != comm.Get_size():
        # e.g. an mpiexec of another MPI started N one-rank jobs: every
        # multi-rank test would be skipped and the run would read as green.
        raise pytest.UsageError(
            f"PYHPC_TEST_RANKS={expected} but MPI.COMM_WORLD has {comm.Get_size()} rank(s): "
            f"the launcher does not match the MPI pyhpc was built against")
    if comm.Get_rank() != 0:
        # Runs before the terminal reporter binds sys.stdout: rank > 0 stays quiet,
        # and only rank 0 writes the JUnit report (one writer per file).
        sys.stdout = open(os.devnull, "w")
        config.option.xmlpath = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.failed and _mpi_run(item.config)):
        return
    comm = _world()
    if comm.Get_size() == 1:
        return
    with _uncaptured(item.config):
        sys.stderr.write(
            f"\n==== rank {comm.Get_rank()}: {item.nodeid} failed in {report.when}; "
            f"aborting the MPI job ====\n{report.longreprtext}\n")
        sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    comm.Abort(1)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from pyhpc import cuda

    if not cuda.available():
        skip = pytest.mark.skip(reason="no CUDA device, or pyhpc built without CUDA")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def comm():
    """MPI.COMM_WORLD for multi-rank tests."""
    return _world()


def _abort_after_timeout(item, timeout: float) -> None:
    comm = _world()
    with _uncaptured(item.config):
        sys.stderr.write(
            f"\n==== rank {comm.Get_rank()}: Timeout: {item.nodeid} ran over {timeout:g} s; "
            f"stacks follow; aborting the MPI job ====\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    comm.Abort(1)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    if not (_mpi_run(item.config) and settings.timeout and settings.timeout > 0):
        return None  # serial runs: pytest-timeout's own thread timer
    timer = threading.Timer(settings.timeout, _abort_after_timeout, args=(item, settings.timeout))
    timer.daemon = True
    timer.start()
    item._pyhpc_timer = timer
    return True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item):
    timer = getattr(item, "_pyhpc_timer", None)
    if timer is None:
        return None
    timer.cancel()
    del item._pyhpc_timer
    return True
