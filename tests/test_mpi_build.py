"""Recording the MPI pyhpc was built against and checking it at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pyhpc
from pyhpc import mpi_build
from pyhpc.mpi_build import MPIVersion, compatibility_problem, parse_library_version

MPICH = "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 2026\nMPICH ABI:   17:2:5\n"
OMPI5 = "Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11"
OMPI4 = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022"
INTEL = "Intel(R) MPI Library 2021.10 for Linux* OS\n"


@pytest.mark.parametrize("text,family,vendor,version", [
    (MPICH, "mpich", "MPICH", "5.0.2"),
    (OMPI5, "openmpi", "Open MPI", "5.0.11"),
    (OMPI4, "openmpi", "Open MPI", "4.1.4"),
    (INTEL, "mpich", "Intel MPI", "2021.10"),
    ("Some Vendor MPI 1.0", "unknown", "Some Vendor MPI 1.0", "unknown"),
])
def test_parse_library_version(text, family, vendor, version):
    assert parse_library_version(text) == MPIVersion(family, vendor, version)


def test_compatibility_rules():
    mpich5, mpich4 = MPIVersion("mpich", "MPICH", "5.0.2"), MPIVersion("mpich", "MPICH", "4.0")
    intel = MPIVersion("mpich", "Intel MPI", "2021.10")
    ompi5, ompi4 = MPIVersion("openmpi", "Open MPI", "5.0.11"), MPIVersion("openmpi", "Open MPI", "4.1.4")
    assert compatibility_problem(mpich5, mpich4) is None   # one ABI (libmpi.so.12)
    assert compatibility_problem(mpich5, intel) is None
    assert compatibility_problem(ompi5, ompi5) is None
    assert "incompatible" in compatibility_problem(mpich5, ompi5)
    assert "older" in compatibility_problem(ompi5, ompi4)
    assert compatibility_problem(ompi4, ompi5) is None  # Open MPI's C ABI holds forward


def test_this_process_loaded_the_mpi_it_was_built_against():
    built, loaded = mpi_build.built(), mpi_build.loaded()
    assert built.family in ("mpich", "openmpi")
    assert (built.family, built.version) == (loaded.family, loaded.version)


def test_check_raises_a_clear_error_on_mismatch(monkeypatch):
    monkeypatch.delenv("PYHPC_SKIP_MPI_CHECK", raising=False)
    other = (MPIVersion("openmpi", "Open MPI", "5.0.11") if mpi_build.built().family == "mpich"
             else MPIVersion("mpich", "MPICH", "5.0.2"))
    monkeypatch.setattr(mpi_build, "loaded", lambda: other)
    with pytest.raises(pyhpc.MPIMismatchError) as info:
        mpi_build.check()
    message = str(info.value)
    assert str(mpi_build.built()) in message and str(other) in message
    assert "MPI_C_COMPILER" in message and "PYHPC_SKIP_MPI_CHECK" in message
    monkeypatch.setenv("PYHPC_SKIP_MPI_CHECK", "1")
    mpi_build.check()  # skipped on request


def test_import_needs_no_gpu_and_does_not_initialise_mpi():
    code = ("import sys, pyhpc; "
            "assert 'cupy' not in sys.modules, 'cupy imported'; "
            "assert 'mpi4py.MPI' not in sys.modules, 'MPI initialised at import'; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
