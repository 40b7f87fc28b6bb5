"""pyhpc: MPI/HPC middleware for Python.

``import pyhpc`` loads the host C++ core and checks that the libmpi in this
process is the one pyhpc was built against. It does not initialise MPI and
needs neither a GPU nor cupy; GPU support loads lazily (:mod:`pyhpc.cuda`).
"""

from __future__ import annotations

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
