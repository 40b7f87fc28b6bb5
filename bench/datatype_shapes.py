"""datatype_shapes: MPI_Pack of the shapes applications use, by packed size:
a 2D subarray (a block of a matrix of doubles), a 3D subarray (a sub-cube of
floats) and a nested hvector (hvector of a vector of 2-byte runs), pyhpc's
engine against the system MPI_Pack, memcpy of the same bytes as the limit.
Each pyhpc result is checked against MPI_Pack's bytes once.
"""

from __future__ import annotations

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, size_label


def shapes(total: int):
    """(name, make(MPI) -> committed type, source bytes) packing `total` bytes."""
    # 2D: an n x n block of a 2n x 2n matrix of doubles (runs of 8n bytes).
    n2 = max(1, int(round((total / 8) ** 0.5)))
    # 3D: an n^3 sub-cube of a (2n)^3 array of floats (runs of 4n bytes).
    n3 = max(1, int(round((total / 4) ** (1 / 3))))
    # nested: hvector(c, 1, 64 B) of vector(8, 1, 2) of 2-byte shorts: 16 B per 64 B.
    c = max(1, total // 16)

    def sub2d(MPI):
        return MPI.DOUBLE.Create_subarray([2 * n2, 2 * n2], [n2, n2], [n2 // 2, n2 // 2]).Commit()

    def sub3d(MPI):
        return MPI.FLOAT.Create_subarray([2 * n3] * 3, [n3] * 3, [n3 // 2] * 3).Commit()

    def nested(MPI):
        inner = MPI.SHORT.Create_vector(8, 1, 2)
        t = inner.Create_hvector(c, 1, 64).Commit()
        inner.Free()
        return t

    return [("2D subarray", sub2d), ("3D subarray", sub3d), ("nested hvector", nested)]


def run(ctx: Context) -> list[Measurement]:
    from mpi4py import MPI

    from pyhpc import datatype

    totals = [64 << 10, 4 << 20] if ctx.quick else [1 << 10, 64 << 10, 4 << 20, 64 << 20, 256 << 20]
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
                limit = limits.memcpy_limit(ctx, size, reps)
                limit.case = f"memcpy {size_label(size)} ({name})"
                rows.append(limit)
                seconds = interleave({
                    "pyhpc": lambda k: ctx.time_reps(lambda: datatype.pack(src, t, out=ours), 2, k),
                    "baseline": lambda k: ctx.time_reps(lambda: t.Pack(src, theirs, 0, MPI.COMM_SELF), 2, k),
                }, reps)
                case = f"{name}, {size_label(size)}"
                rows.append(Measurement(case, f"pyhpc: {name}", "pyhpc", seconds["pyhpc"], x=size,
                                        bytes_per_rep=size, limit=limit.case))
                rows.append(Measurement(case, f"MPI_Pack: {name}", "baseline", seconds["baseline"],
                                        x=size, bytes_per_rep=size, limit=limit.case))
            finally:
                t.Free()
    return rows


BENCHMARK = Benchmark(
    name="datatype_shapes",
    ranks=1,
    description="pack a 2D subarray, a 3D subarray and a nested hvector by packed size, pyhpc's "
                "engine vs the system MPI_Pack; limit: memcpy of the same bytes",
    run=run,
    x_label="bytes packed",
)
