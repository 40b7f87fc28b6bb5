"""The LD_PRELOAD interposer, libpyhpc_interpose.so, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from .errors import InternalError

LIBRARY_NAME = "libpyhpc_interpose.so"


def library_path() -> Path:
    """Absolute path of libpyhpc_interpose.so (to put in LD_PRELOAD)."""
    path = Path(__file__).resolve().parent / "lib" / LIBRARY_NAME
    if not path.is_file():
        raise InternalError(f"{LIBRARY_NAME} is missing from the installed package (looked at {path})")
    return path
