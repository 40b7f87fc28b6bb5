"""Which MPI pyhpc was built against, which one this process loaded, and the
import-time check that they agree.

A pyhpc built with MPICH's mpi.h and run over Open MPI's libmpi (or the other
way round) would pass garbage handles between the two; instead of a crash
deep inside a collective, ``import pyhpc`` fails with a message naming both.
"""

from __future__ import annotations

import dataclasses
import re

from . import _core
from . import settings
from .errors import MPIMismatchError


@dataclasses.dataclass(frozen=True)
class MPIVersion:
    family: str   # "mpich" (MPICH ABI: MPICH, Intel MPI, MVAPICH...), "openmpi" or "unknown"
    vendor: str   # as printed: "MPICH", "Open MPI", "Intel MPI", ...
    version: str  # vendor version, "5.0.2"

    @property
    def major(self) -> str:
        return self.version.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.vendor} {self.version}"


_PATTERNS = (
    # (regex over MPI_Get_library_version text, family, vendor)
    (r"Open MPI v(\d+[\w.]*)", "openmpi", "Open MPI"),
    (r"Intel\(R\) MPI Library (\d[\w.]*)", "mpich", "Intel MPI"),
    (r"MVAPICH2? Version:\s*(\S+)", "mpich", "MVAPICH"),
    (r"MPICH Version:\s*(\S+)", "mpich", "MPICH"),
)


def parse_library_version(text: str) -> MPIVersion:
    """Vendor and version from an MPI_Get_library_version() string."""
    for pattern, family, vendor in _PATTERNS:
        match = re.search(pattern, text)
        if match:
            return MPIVersion(family, vendor, match.group(1).rstrip(",."))
    first_line = text.strip().splitlines()[0] if text.strip() else "unknown"
    return MPIVersion("unknown", first_line[:60], "unknown")


def built() -> MPIVersion:
    """The MPI whose mpi.h pyhpc's extensions were compiled with."""
    info = _core.mpi_build_info()
    family = {"MPICH": "mpich", "Open MPI": "openmpi"}.get(info["vendor"], "unknown")
    return MPIVersion(family, info["vendor"], info["version"])


def loaded() -> MPIVersion:
    """The libmpi loaded in this process (no MPI_Init needed)."""
    return parse_library_version(_core.mpi_loaded_library_version())


def compatibility_problem(built_mpi: MPIVersion, loaded_mpi: MPIVersion) -> str | None:
    """Why `built_mpi` headers cannot be used with `loaded_mpi`, or None if they can.

    MPICH-family libraries share one ABI (libmpi.so.12) across versions and
    vendors. Open MPI keeps its C ABI forward-compatible from 4.x to 5.x (both
    libmpi.so.40): a build against an older major runs on a newer one, not the
    other way round.
    """
    if "unknown" in (built_mpi.family, loaded_mpi.family):
        return None  # cannot tell: do not block an MPI we do not recognise
    if built_mpi.family != loaded_mpi.family:
        return "different MPI implementations (their ABIs are incompatible)"
    if built_mpi.family == "openmpi" and _major(built_mpi) > _major(loaded_mpi):
        return (f"a build against Open MPI {built_mpi.major}.x cannot run on the older "
                f"{loaded_mpi.major}.x")
    return None


def _major(v: MPIVersion) -> int:
    return int(v.major) if v.major.isdigit() else 0


def check() -> None:
    """Raise MPIMismatchError if the loaded libmpi does not match the build."""
    if settings.get("PYHPC_SKIP_MPI_CHECK"):
        return
    b, l = built(), loaded()
    problem = compatibility_problem(b, l)
    if problem:
        from . import _build_info

        raise MPIMismatchError(
            f"pyhpc was built against {b} (MPI_C_COMPILER={_build_info.MPI_C_COMPILER}) but this "
            f"process loaded {l}: {problem}. Rebuild pyhpc against the MPI you run with "
            f"(pip install --force-reinstall --no-deps . with MPI_C_COMPILER=/path/to/mpicc), or "
            f"make the dynamic linker find the original libmpi (LD_LIBRARY_PATH). "
            f"PYHPC_SKIP_MPI_CHECK=1 skips this check."
        )
