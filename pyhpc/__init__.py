"""pyhpc: MPI/HPC middleware for Python.

``import pyhpc`` loads the host C++ core and checks that the libmpi in this
process is the one pyhpc was built against. It does not initialise MPI and
needs neither a GPU nor cupy; GPU support loads lazily (:mod:`pyhpc.cuda`).
"""

from __future__ import annotations

try:
    from . import _core  # noqa: F401 - the compiled host core; fails first if pyhpc is not built
except ImportError as exc:  # pragma: no cover - only reached from a source checkout
    import pathlib as _pathlib

    _here = _pathlib.Path(__file__).resolve().parent
    if (_here.parent / "CMakeLists.txt").is_file():
        raise ImportError(
            f"pyhpc was imported from its source tree ({_here}), which holds no compiled "
            f"modules. Install it (pip install .) and run from another directory, or use the "
            f"`pytest` command rather than `python -m pytest` in the checkout.") from exc
    raise

from . import errors, settings
from .errors import (
    AuthError,
    CUDAError,
    Error,
    InternalError,
    InvalidArgumentError,
    MPIError,
    MPIMismatchError,
    OutOfMemoryError,
    PeerError,
    ProtocolError,
    Status,
    TimeoutError,
    UnsupportedError,
)
from . import mpi_build as _mpi_build

__version__ = "0.1.0"

_mpi_build.check()

__all__ = [
    "__version__", "errors", "settings", "Status", "Error", "AuthError", "CUDAError",
    "InternalError", "InvalidArgumentError", "MPIError", "MPIMismatchError", "OutOfMemoryError",
    "PeerError", "ProtocolError", "TimeoutError", "UnsupportedError",
]
