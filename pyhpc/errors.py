"""The pyhpc.Error hierarchy.

C/C++ cores return a ``pyhpc_status`` code (csrc/common/status.hpp); the
binding turns it into one of these classes once, through :func:`from_status`.
Every error carries its ``status`` and pickles, because errors cross process
boundaries (multi-rank tests, worker pools, the PCCL master).
"""

from __future__ import annotations

import builtins
import enum


class Status(enum.IntEnum):
    """Mirror of ``pyhpc_status`` in csrc/common/status.hpp (checked by a test)."""

    OK = 0
    INVALID_ARGUMENT = 1
    UNSUPPORTED = 2
    MPI = 3
    CUDA = 4
    TIMEOUT = 5
    PEER = 6
    PROTOCOL = 7
    AUTH = 8
    NO_MEMORY = 9
    MPI_MISMATCH = 10
    INTERNAL = 11


class Error(Exception):
    """Base of every error pyhpc raises on purpose."""

    default_status = Status.INTERNAL

    def __init__(self, message: str = "", status: Status | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = Status(self.default_status if status is None else status)

    def __reduce__(self):  # keep status across pickling (default drops it)
        return (type(self), (self.message, int(self.status)))

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(Error, ValueError):
    default_status = Status.INVALID_ARGUMENT


class UnsupportedError(Error, NotImplementedError):
    default_status = Status.UNSUPPORTED


class MPIError(Error, RuntimeError):
    default_status = Status.MPI


class CUDAError(Error, RuntimeError):
    default_status = Status.CUDA


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - pyhpc.TimeoutError is deliberate
    default_status = Status.TIMEOUT


class PeerError(Error, ConnectionError):
    default_status = Status.PEER


class ProtocolError(Error, RuntimeError):
    default_status = Status.PROTOCOL


class AuthError(Error, PermissionError):
    default_status = Status.AUTH


class OutOfMemoryError(Error, MemoryError):
    default_status = Status.NO_MEMORY


class MPIMismatchError(Error, ImportError):
    """pyhpc was built against one MPI and the process loaded another."""

    default_status = Status.MPI_MISMATCH


class InternalError(Error, RuntimeError):
    default_status = Status.INTERNAL


_BY_STATUS: dict[Status, type[Error]] = {
    cls.default_status: cls
    for cls in (
        InvalidArgumentError, UnsupportedError, MPIError, CUDAError, TimeoutError, PeerError,
        ProtocolError, AuthError, OutOfMemoryError, MPIMismatchError, InternalError,
    )
}


def from_status(status: int, message: str) -> Error:
    """The exception for a failed core call (used by the C++ and Cython bindings)."""
    try:
        code = Status(status)
    except ValueError:
        return InternalError(f"unknown pyhpc_status {status}: {message}")
    if code == Status.OK:
        return InternalError(f"from_status called with OK: {message}")
    return _BY_STATUS[code](message, code)
