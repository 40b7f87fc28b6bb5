"""datatype_shapes: MPI_Pack and MPI_Unpack of the shapes applications use, by
packed size (1 KiB to 256 MiB): a 1D vector of 8-byte runs (every other double),
a 2D subarray (a block of a matrix of doubles), a 3D subarray (a sub-cube of
floats) and a nested hvector (hvector of a vector of 2-byte runs), pyhpc's
engine (pyhpc._mpi.pack/unpack, as in datatype_pack) against the system MPI,
memcpy of the same bytes as the limit.
Each pyhpc result is checked against MPI_Pack's bytes once (unpack: MPI packs
pyhpc's unpacked buffer back to the same bytes);
the engine's row names its vector path (pyhpc._mpi.host_simd).
"""

from __future__ import annotations

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, size_label


def shapes(total: int):
    """(name, make(MPI) -> committed type) packing about `total` bytes."""
    # 1D: every other double, 8-byte runs every 16 bytes.
    n1 = max(1, total // 8)
    # 2D: an n x n block of a 2n x 2n matrix of doubles (runs of 8n bytes).
    n2 = max(1, int(round((total / 8) ** 0.5)))
    # 3D: an n^3 sub-cube of a (2n)^3 array of floats (runs of 4n bytes).
    n3 = max(1, int(round((total / 4) ** (1 / 3))))
    # nested: hvector(c, 1, 64 B) of vector(8, 1, 2) of 2-byte shorts: 16 B per 64 B.
    c = max(1, total // 16)

    def vec1d(MPI):
        return MPI.DOUBLE.Create_vector(n1, 1, 2).Commit()

    def sub2d(MPI):
        return MPI.DOUBLE.Create_subarray([2 * n2, 2 * n2], [n2, n2], [n2 // 2, n2 // 2]).Commit()

    def sub3d(MPI):
        return MPI.FLOAT.Create_subarray([2 * n3] * 3, [n3] * 3, [n3 // 2] * 3).Commit()

    def nested(MPI):
        inner = MPI.SHORT.Create_vector(8, 1, 2)
        t = inner.Create_hvector(c, 1, 64).Commit()
        inner.Free()
        return t

    return [("1D vector 8 B runs", vec1d), ("2D subarray", sub2d), ("3D subarray", sub3d),
            ("nested hvector", nested)]


def run(ctx: Context) -> list[Measurement]:
    from mpi4py import MPI

    from pyhpc import _mpi, datatype

    totals = [64 << 10, 4 << 20] if ctx.quick else [1 << 10, 64 << 10, 4 << 20, 64 << 20, 256 << 20]
    path = _mpi.host_simd()
    rows: list[Measurement] = []
    for total in totals:
        reps = max(5, min(200, (256 << 20) // total)) if not ctx.quick else 10
        for name, make in shapes(total):
            ctx.progress(f"{name}, {size_label(total)}")
            t = make(MPI)
            try:
                size, extent = t.Get_size(), t.Get_extent()[1]
                src = np.random.default_rng(total).integers(0, 256, extent, dtype=np.uint8)
                ours, theirs = np.empty(size, np.uint8), np.empty(size, np.uint8)
                datatype.pack(src, t, out=ours)
                t.Pack(src, theirs, 0, MPI.COMM_SELF)
                if not np.array_equal(ours, theirs):
                    raise RuntimeError(f"datatype_shapes: {name} packs differently from MPI_Pack")
                # Unpack: one destination for both (the same bytes land in the same
                # places; at 256 MiB a second one would cost another GiB). MPI
                # must read pyhpc's unpacked bytes back as it packed them.
                dst = np.zeros_like(src)
                datatype.unpack(theirs, dst, t)
                t.Pack(dst, ours, 0, MPI.COMM_SELF)
                if not np.array_equal(ours, theirs):
                    raise RuntimeError(f"datatype_shapes: {name} unpacks differently from MPI_Unpack")
                calls = {
                    "pack": (lambda: _mpi.pack(t, 1, src, ours),
                             lambda: t.Pack(src, theirs, 0, MPI.COMM_SELF)),
                    "unpack": (lambda: _mpi.unpack(t, 1, theirs, dst),
                               lambda: t.Unpack(theirs, 0, dst, MPI.COMM_SELF)),
                }
                for op, (mine, system) in calls.items():
                    # The limit in turns with both (see datatype_pack).
                    seconds = interleave({
                        "pyhpc": lambda k: ctx.time_reps(mine, 2, k),
                        "baseline": lambda k: ctx.time_reps(system, 2, k),
                        "limit": lambda k: limits.memcpy_seconds(size, 2, k, ctx.comm),
                    }, reps)
                    case = f"{op} {name}, {size_label(size)}"
                    limit = f"memcpy {size_label(size)} ({op} {name})"
                    rows.append(Measurement(limit, "memcpy (C++), one rank", "limit", seconds["limit"],
                                            x=size, bytes_per_rep=size))
                    rows.append(Measurement(case, f"pyhpc._mpi.{op} ({path}): {name}", "pyhpc",
                                            seconds["pyhpc"], x=size, bytes_per_rep=size, limit=limit))
                    rows.append(Measurement(case, f"MPI_{op.capitalize()}: {name}", "baseline",
                                            seconds["baseline"], x=size, bytes_per_rep=size, limit=limit))
            finally:
                t.Free()
    return rows


BENCHMARK = Benchmark(
    name="datatype_shapes",
    ranks=1,
    description="pack and unpack a 1D vector of 8 B runs, a 2D subarray, a 3D subarray and a nested "
                "hvector by packed size, pyhpc's engine vs the system MPI_Pack/MPI_Unpack; "
                "limit: memcpy of the same bytes",
    run=run,
    x_label="bytes packed",
)
