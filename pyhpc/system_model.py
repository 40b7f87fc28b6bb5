"""`pyhpc measure-system`: the one-time measurement the interposer decides by.

For each block size it times the system MPI's MPI_Pack/MPI_Unpack and pyhpc's
engine on the same byte vector, in C++ (pyhpc._mpi.measure_pack): runs every
2 x block bytes ("pack", "unpack"), and for blocks under 64 B also runs 64 B
apart ("pack-sparse", "unpack-sparse": the engine's vector path serves only
runs close together, and the interposer judges a layout without it by these).
It writes one line per (operation, block size) to a text file. With
PYHPC_INTERPOSE_STRATEGY=auto (the default) the interposer serves a host
buffer with pyhpc's engine only where this file says it is faster for that
block size, and ignores a file measured under another MPI library.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from . import settings

BLOCKS_QUICK = [1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096, 65536]
BLOCKS_FULL = [1 << k for k in range(0, 21)]


def default_path() -> Path:
    """Where the interposer looks when PYHPC_SYSTEM_MODEL is not set."""
    configured = settings.get("PYHPC_SYSTEM_MODEL")
    if configured:
        return Path(str(configured))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pyhpc" / "system-model.txt"


def measure(quick: bool = False) -> list[tuple[str, int, float, float]]:
    """[(op, block, pyhpc seconds, system seconds)] on this machine and MPI."""
    from . import _mpi

    blocks = BLOCKS_QUICK if quick else BLOCKS_FULL
    return _mpi.measure_pack(blocks, (1 << 20) if quick else (4 << 20), 7 if quick else 15)


def mpi_first_line(library_version: str) -> str:
    """First line of MPI_Get_library_version, trimmed, NULs dropped (Open MPI
    counts its terminating NUL); the interposer compares it the same way."""
    text = library_version.replace("\0", "")
    return text.splitlines()[0].strip() if text.strip() else ""


def render(rows: list[tuple[str, int, float, float]]) -> str:
    from mpi4py import MPI

    mpi = mpi_first_line(MPI.Get_library_version())
    lines = [
        "# pyhpc system model v1: written by `pyhpc measure-system`, read by libpyhpc_interpose.so",
        f"# mpi: {mpi}",
        f"# host: {platform.node()} ({os.cpu_count()} cpus), {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "# op block_bytes pyhpc_seconds system_seconds",
    ]
    lines += [f"{op} {block} {mine:.9g} {theirs:.9g}" for op, block, mine, theirs in rows]
    return "\n".join(lines) + "\n"


def write(path: Path, rows: list[tuple[str, int, float, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render(rows))
    tmp.replace(path)  # never a half-written model for a running job to read
