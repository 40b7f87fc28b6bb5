"""datatype_pack: MPI_Pack of a 1D vector type by block size, pyhpc's engine
against the system MPI's, with memcpy of the same bytes as the limit.

The type is MPI_BYTE vector(count, block, 2 * block): half of a buffer in
`block`-byte runs, the shape where per-block cost shows. Both sides are called
from Python on the same buffers: pyhpc.datatype.pack (canonical form looked up,
then the C++ engine) and mpi4py's Datatype.Pack (MPI_Pack). Every result is
checked against MPI's bytes once. Unpack is timed the same way in full mode.
"""

from __future__ import annotations

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, size_label

WARMUP = 2


def block_sizes(quick: bool) -> list[int]:
    if quick:
        return [1, 8, 64, 1024, 64 << 10]
    return [1 << k for k in range(0, 21)]  # 1 B .. 1 MiB


def run(ctx: Context) -> list[Measurement]:
    from mpi4py import MPI

    from pyhpc import datatype

    total = (4 << 20) if ctx.quick else (16 << 20)  # packed bytes per call
    reps = 10 if ctx.quick else 30
    ops = ["pack"] if ctx.quick else ["pack", "unpack"]
    rows: list[Measurement] = []
    limit = limits.memcpy_limit(ctx, total, reps)
    rows.append(limit)
    for block in block_sizes(ctx.quick):
        ctx.progress(f"block {size_label(block)}")
        count = total // block
        t = MPI.BYTE.Create_vector(count, block, 2 * block).Commit()
        try:
            extent = t.Get_extent()[1]
            src = np.random.default_rng(block).integers(0, 256, extent, dtype=np.uint8)
            ours, theirs = np.empty(total, np.uint8), np.empty(total, np.uint8)
            # One call each, untimed, to check pyhpc's bytes are MPI's bytes.
            datatype.pack(src, t, out=ours)
            t.Pack(src, theirs, 0, MPI.COMM_SELF)
            if not np.array_equal(ours, theirs):
                raise RuntimeError(f"datatype_pack: pyhpc and MPI_Pack differ for block {block}")
            dst_ours, dst_theirs = np.zeros_like(src), np.zeros_like(src)
            calls = {
                "pack": (lambda: datatype.pack(src, t, out=ours),
                         lambda: t.Pack(src, theirs, 0, MPI.COMM_SELF)),
                "unpack": (lambda: datatype.unpack(theirs, dst_ours, t),
                           lambda: t.Unpack(theirs, 0, dst_theirs, MPI.COMM_SELF)),
            }
            for op in ops:
                mine, system = calls[op]
                seconds = interleave({
                    "pyhpc": lambda n: ctx.time_reps(mine, WARMUP, n),
                    "baseline": lambda n: ctx.time_reps(system, WARMUP, n),
                }, reps)
                case = f"{op} {size_label(block)} blocks"
                for role, impl in (("pyhpc", f"pyhpc.datatype.{op}"), ("baseline", f"MPI_{op.capitalize()} (mpi4py)")):
                    rows.append(Measurement(case, impl, role, seconds[role], x=block,
                                            bytes_per_rep=total, limit=limit.case))
            if "unpack" in ops and not np.array_equal(dst_ours, dst_theirs):
                raise RuntimeError(f"datatype_pack: pyhpc and MPI_Unpack differ for block {block}")
        finally:
            t.Free()
    return rows


BENCHMARK = Benchmark(
    name="datatype_pack",
    ranks=1,
    description="pack a byte vector (blocks every 2 x block bytes) into 4 MiB (quick) / 16 MiB, "
                "pyhpc's engine vs the system MPI_Pack; limit: memcpy of the same bytes",
    run=run,
    x_label="block size (bytes)",
)
