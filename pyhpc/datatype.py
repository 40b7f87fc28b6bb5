"""MPI derived datatypes in canonical strided form, and pyhpc's pack engine.

:func:`canonicalize` turns an ``mpi4py.MPI.Datatype`` built from contiguous,
vector, hvector, (h)indexed(_block) with a constant step, subarray, resized
and dup constructors, nested any way, into one strided block: the bytes of an
element are ``block``-byte runs visited by nested loops of ``(count, stride)``
from byte ``offset``, outermost loop first, in the type map's order, so that
:func:`pack` yields exactly the bytes ``MPI_Pack`` does::

    >>> from mpi4py import MPI
    >>> t = MPI.DOUBLE.Create_subarray([8, 8, 8], [2, 3, 4], [1, 2, 3]).Commit()
    >>> print(pyhpc.datatype.canonicalize(t))
    offset 664 B: 2 x 3 runs of 32 B, strides (512, 64) B; size 192 B, extent 4096 B

Types with no such form (struct, darray, irregular indexed, padded pair types
like MPI_DOUBLE_INT) raise :class:`pyhpc.UnsupportedError` naming why; the
interposer hands those to the system MPI untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, UnsupportedError

__all__ = ["CanonicalType", "canonicalize", "pack", "pack_size", "unpack"]


@dataclasses.dataclass(frozen=True)
class CanonicalType:
    """One element of a datatype as strided runs (all lengths in bytes)."""

    offset: int                 # first byte, relative to the buffer's start
    block: int                  # bytes per contiguous run
    counts: tuple[int, ...]     # loop counts, outermost first
    strides: tuple[int, ...]    # loop strides, outermost first (may be negative)
    lb: int                     # MPI lower bound
    extent: int                 # MPI extent: element i starts at i * extent
    size: int                   # bytes of data per element

    @property
    def ndims(self) -> int:
        return len(self.counts)

    def __str__(self) -> str:
        if self.size == 0:
            return f"empty; extent {self.extent} B"
        if not self.counts:
            runs = f"one run of {self.block} B"
        else:
            shape = " x ".join(map(str, self.counts))
            strides = ", ".join(map(str, self.strides))
            runs = f"{shape} runs of {self.block} B, strides ({strides}{',' if self.ndims == 1 else ''}) B"
        return f"offset {self.offset} B: {runs}; size {self.size} B, extent {self.extent} B"


def _mpi():
    from . import _mpi  # imports mpi4py.MPI: only when a datatype function is used

    return _mpi


def canonicalize(datatype: Any) -> CanonicalType:
    """The canonical strided form of `datatype` (an mpi4py.MPI.Datatype)."""
    info = _mpi().canonicalize(_check_datatype(datatype))
    if not info["supported"]:
        raise UnsupportedError(f"datatype has no strided form: {info['why_not']}")
    return CanonicalType(info["offset"], info["block"], tuple(info["counts"]),
                         tuple(info["strides"]), info["lb"], info["extent"], info["size"])


def pack_size(datatype: Any, count: int = 1) -> int:
    """Bytes that `count` elements of `datatype` pack into."""
    return _check_count(count) * canonicalize(datatype).size


def pack(buf: Any, datatype: Any, count: int = 1, out: Any = None) -> Any:
    """Packs `count` elements of `datatype` laid over `buf` into a uint8 array
    (`out` if given, which must hold pack_size bytes), as MPI_Pack would.

    A cupy `buf` is packed on its GPU by pyhpc's CUDA kernels into a cupy
    uint8 array (`out`, if given, must be a C-contiguous cupy array too), on
    cupy's current stream for that GPU; pack synchronises that stream before
    it returns, so the bytes are ready for any stream and the host. Host and
    device arrays cannot be mixed in one call."""
    datatype = _check_datatype(datatype)
    count = _check_count(count)
    if _on_device(buf) or _on_device(out):
        return _pack_device(buf, datatype, count, out)
    src = _byte_view(buf, "buf", writable=False)
    if out is None:
        out = np.empty(pack_size(datatype, count), dtype=np.uint8)
    dst = _byte_view(out, "out", writable=True)
    _mpi().pack(datatype, count, src, dst)
    return out


def unpack(packed: Any, buf: Any, datatype: Any, count: int = 1) -> Any:
    """Scatters `packed` bytes into `count` elements of `datatype` laid over
    `buf` (as MPI_Unpack would) and returns `buf`.

    With cupy arrays (both must be: host and device cannot be mixed) the
    bytes are scattered on `buf`'s GPU by pyhpc's CUDA kernels, on cupy's
    current stream for that GPU, which unpack synchronises before it returns."""
    datatype = _check_datatype(datatype)
    count = _check_count(count)
    if _on_device(packed) or _on_device(buf):
        return _unpack_device(packed, buf, datatype, count)
    src = _byte_view(packed, "packed", writable=False)
    dst = _byte_view(buf, "buf", writable=True)
    _mpi().unpack(datatype, count, src, dst)
    return buf


# ---- device (cupy) buffers: pyhpc._cuda's kernels ---------------------------------

def _on_device(obj: Any) -> bool:
    """Whether obj claims to be a cupy array. Decided from its type's module
    alone, so that routing never imports cupy (or needs a GPU) for host data."""
    return type(obj).__module__.startswith("cupy")


def _same_side(first: str, a: Any, second: str, b: Any) -> None:
    if _on_device(a) != _on_device(b):
        where = {True: "a device (cupy) array", False: "a host buffer"}
        raise InvalidArgumentError(
            f"{second}: {where[_on_device(b)]}, but {first} is {where[_on_device(a)]}; "
            f"pack and unpack need both on the host or both on the device")


def _device_engine(name: str) -> tuple[Any, Any]:
    """pyhpc._cuda and cupy, or UnsupportedError naming the argument that needed them."""
    from . import cuda

    ext = cuda.extension()
    if ext is None:
        raise UnsupportedError(f"{name}: device (cupy) buffers need pyhpc's CUDA pack engine, and this "
                               f"pyhpc was built without CUDA (rebuild with nvcc on PATH, or "
                               f"PYHPC_ENABLE_CUDA=ON)")
    cp = cuda.cupy()
    if cp is None:
        raise UnsupportedError(f"{name}: a cupy array was passed but cupy cannot be imported here")
    return ext, cp


def _device_array(cp: Any, obj: Any, name: str) -> Any:
    if not isinstance(obj, cp.ndarray):
        raise InvalidArgumentError(f"{name}: expected a cupy.ndarray, got {type(obj).__module__}."
                                   f"{type(obj).__name__}")
    if not obj.flags.c_contiguous:
        raise InvalidArgumentError(f"{name}: the buffer must be C-contiguous")
    return obj


def _device_layout(datatype: Any) -> dict[str, Any]:
    """The layout dict pyhpc._cuda takes; the same error as the host path when there is none."""
    info = _mpi().canonicalize(datatype)
    if not info["supported"]:
        raise UnsupportedError(f"datatype has no strided form: {info['why_not']}")
    return info


def _pack_device(buf: Any, datatype: Any, count: int, out: Any) -> Any:
    if out is not None:
        _same_side("buf", buf, "out", out)
    ext, cp = _device_engine("buf")  # buf is on the device here: out is too, or None
    src = _device_array(cp, buf, "buf")
    layout = _device_layout(datatype)
    with src.device:  # the kernels run on buf's GPU, on that GPU's current stream
        if out is None:
            out = cp.empty(count * layout["size"], dtype=cp.uint8)
        dst = _device_array(cp, out, "out")
        stream = cp.cuda.get_current_stream()
        ext.pack(layout, count, src.data.ptr, src.nbytes, dst.data.ptr, dst.nbytes, stream.ptr)
        stream.synchronize()
    return out


def _unpack_device(packed: Any, buf: Any, datatype: Any, count: int) -> Any:
    _same_side("packed", packed, "buf", buf)
    ext, cp = _device_engine("packed")
    src = _device_array(cp, packed, "packed")
    dst = _device_array(cp, buf, "buf")
    layout = _device_layout(datatype)
    with dst.device:  # the kernels run on buf's GPU, on that GPU's current stream
        stream = cp.cuda.get_current_stream()
        ext.unpack(layout, count, src.data.ptr, src.nbytes, dst.data.ptr, dst.nbytes, stream.ptr)
        stream.synchronize()
    return buf


def _check_datatype(datatype: Any) -> Any:
    from mpi4py import MPI

    if not isinstance(datatype, MPI.Datatype):
        raise InvalidArgumentError(f"datatype: expected an mpi4py.MPI.Datatype, got {type(datatype).__name__}")
    if datatype == MPI.DATATYPE_NULL:
        raise InvalidArgumentError("datatype: MPI.DATATYPE_NULL")
    return datatype


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise InvalidArgumentError(f"count: expected an integer >= 0, got {count!r}")
    return int(count)


def _byte_view(obj: Any, name: str, *, writable: bool) -> Any:
    """A flat uint8 view of a C-contiguous host buffer, without copying."""
    try:
        view = memoryview(obj)
    except TypeError:
        raise InvalidArgumentError(f"{name}: expected a buffer (numpy array, bytearray, ...), "
                                   f"got {type(obj).__name__}") from None
    if not view.c_contiguous:
        raise InvalidArgumentError(f"{name}: the buffer must be C-contiguous")
    if writable and view.readonly:
        raise InvalidArgumentError(f"{name}: the buffer is read-only")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view
