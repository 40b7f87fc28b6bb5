"""The one registry of ``PYHPC_*`` environment variables.

Every setting pyhpc reads (from Python, C++ or the interposer) is declared
here, with its type, default and meaning; the README's settings table is
generated from this list (``pyhpc info --settings-table``) and a test keeps
the two in step. Read values with :func:`get`, never ``os.environ`` directly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Union

from .errors import InvalidArgumentError

Value = Union[str, int, float, bool, None]


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {text!r}")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Value]
    default: Value
    doc: str
    read_by: str = "python"  # "python", "c++" or "interposer": who reads it

    @property
    def type_name(self) -> str:
        return {_bool: "bool", int: "int", float: "float", str: "str"}.get(self.parse, "str")


REGISTRY: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("PYHPC_MPIEXEC", str, None,
                "mpiexec that `pyhpc run` wraps; default: the one beside Python, else on PATH"),
        Setting("PYHPC_SKIP_MPI_CHECK", _bool, False,
                "skip the import-time check that the loaded libmpi is the one pyhpc was built "
                "against (for ABI-compatible MPIs the check does not know)"),
        Setting("PYHPC_ATTENTION_PROGRESS", _bool, True,
                "sequence-parallel attention polls its transfers from a helper thread while a "
                "block computes (an MPI progresses them only inside MPI calls); 0: no thread"),
        Setting("PYHPC_INTERPOSE", _bool, True,
                "0: the interposer passes every call straight to the system MPI", "interposer"),
        Setting("PYHPC_INTERPOSE_LOG", _bool, False,
                "the interposer prints each MPI call it intercepts, and each type it "
                "canonicalises, to stderr", "interposer"),
        Setting("PYHPC_INTERPOSE_STATS", _bool, False,
                "the interposer prints, at MPI_Finalize, how many calls of each kind it saw "
                "and how many pyhpc's engine served", "interposer"),
        Setting("PYHPC_INTERPOSE_STRATEGY", str, "auto",
                "host buffers: `auto` (the system model decides; without one, the system MPI), "
                "`pyhpc` (always pyhpc's engine) or `system` (never)", "interposer"),
        Setting("PYHPC_INTERPOSE_DEVICE", str, "auto",
                "GPU buffers: `device` (pack on the GPU, send device memory: CUDA-aware MPI), "
                "`oneshot` (pack into pinned host memory), `staged` (pack on the GPU, copy to "
                "pinned), `system` (leave them to the MPI); `auto`: `device` under a CUDA-aware "
                "MPI, else `oneshot` below 1 MiB and `staged` above", "interposer"),
        Setting("PYHPC_SYSTEM_MODEL", str, None,
                "file written by `pyhpc measure-system` that `auto` decides from; default "
                "`$XDG_CACHE_HOME/pyhpc/system-model.txt` (else `~/.cache/pyhpc/...`)",
                "interposer"),
        Setting("PYHPC_BENCH_DIR", str, "bench/results",
                "where `pyhpc bench` writes its JSON and PNG results"),
        Setting("PYHPC_MOE_DATA", str, None,
                "folder of the real MoE routing counts (`shared/data/moe_affinity`); unset: "
                "`shared/data/moe_affinity` in the working directory or a folder above it"),
        Setting("PYHPC_RUN_TIMEOUT", float, 0.0,
                "seconds after which `pyhpc run` kills the whole job (0 = no limit)"),
        Setting("PYHPC_TEST_RANKS", int, None,
                "set by tests/run.py: the rank count a multi-rank test job must see, so a "
                "mismatched launcher fails instead of skipping every test", "tests"),
    )
}


def get(name: str) -> Value:
    """The value of setting `name` from the environment, or its default."""
    try:
        setting = REGISTRY[name]
    except KeyError:
        raise InvalidArgumentError(f"name: {name!r} is not a pyhpc setting") from None
    raw = os.environ.get(name)
    if raw is None:
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise InvalidArgumentError(f"environment variable {name}={raw!r}: {exc}") from None


def markdown_table() -> str:
    """The README's settings table, generated from the registry."""
    lines = ["| variable | type | default | read by | meaning |", "|---|---|---|---|---|"]
    for s in REGISTRY.values():
        default = "unset" if s.default is None else f"`{s.default}`"
        lines.append(f"| `{s.name}` | {s.type_name} | {default} | {s.read_by} | {s.doc} |")
    return "\n".join(lines)
