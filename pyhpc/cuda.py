"""Optional GPU support, loaded lazily.

Nothing here runs at ``import pyhpc``. :func:`available` is true only when
pyhpc was built with CUDA and a device is visible; :func:`cupy` returns the
cupy module or None. Capabilities use :func:`array_module` to serve numpy and
cupy arrays alike and return the kind they were given.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from .errors import UnsupportedError


@functools.lru_cache(maxsize=None)
def extension() -> ModuleType | None:
    """pyhpc._cuda, or None when pyhpc was built without CUDA."""
    try:
        return importlib.import_module("pyhpc._cuda")
    except ImportError:
        return None


def built_with_cuda() -> bool:
    from . import _build_info

    return bool(_build_info.CUDA_ENABLED)


def device_count() -> int:
    ext = extension()
    return ext.device_count() if ext is not None else 0


def available() -> bool:
    """True when pyhpc's CUDA code can run here (built with CUDA, a GPU present).
    A driver that fails to answer counts as no GPU (device_count() raises why)."""
    try:
        return device_count() > 0
    except Exception:  # noqa: BLE001 - any CUDA failure means: not usable here
        return False


@functools.lru_cache(maxsize=None)
def cupy() -> ModuleType | None:
    """The cupy module, or None if it is not installed or cannot load."""
    try:
        return importlib.import_module("cupy")
    except Exception:  # cupy raises more than ImportError without a driver
        return None


def is_cupy_array(obj: Any) -> bool:
    cp = cupy() if type(obj).__module__.startswith("cupy") else None
    return cp is not None and isinstance(obj, cp.ndarray)


def array_module(obj: Any) -> ModuleType:
    """numpy or cupy, whichever `obj` belongs to."""
    if is_cupy_array(obj):
        return cupy()  # type: ignore[return-value]
    if type(obj).__module__.startswith("cupy"):
        raise UnsupportedError("a cupy array was passed but cupy cannot be imported here")
    import numpy

    return numpy
