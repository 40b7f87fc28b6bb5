"""datatype_pack: MPI_Pack and MPI_Unpack of a 1D vector type by block size,
1 B to 1 MiB, pyhpc's engine against the system MPI's, with memcpy of the same
bytes as the limit.

The type is MPI_BYTE vector(count, block, 2 * block): half of a buffer in
`block`-byte runs, the shape where per-block cost shows. Both sides are called
from Python on the same buffers: pyhpc._mpi.pack/unpack (the binding that
pyhpc.datatype.pack ends in: canonical form looked up, then the C++ engine,
without the public function's argument checks, which cost a few microseconds
a call) and mpi4py's Datatype.Pack/Unpack (MPI_Pack/MPI_Unpack). Every result
is checked against MPI's bytes once; the engine's row names its vector path
(pyhpc._mpi.host_simd). The packed total is fixed here; datatype_shapes varies
it (1 KiB to 256 MiB).
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

    from pyhpc import _mpi, datatype

    total = (4 << 20) if ctx.quick else (16 << 20)  # packed bytes per call
    reps = 10 if ctx.quick else 30
    path = _mpi.host_simd()
    rows: list[Measurement] = []
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
                "pack": (lambda: _mpi.pack(t, 1, src, ours),
                         lambda: t.Pack(src, theirs, 0, MPI.COMM_SELF)),
                "unpack": (lambda: _mpi.unpack(t, 1, theirs, dst_ours),
                           lambda: t.Unpack(theirs, 0, dst_theirs, MPI.COMM_SELF)),
            }
            for op, (mine, system) in calls.items():
                # The limit in turns with both: on a shared machine a memcpy
                # timed minutes earlier may have seen another load.
                seconds = interleave({
                    "pyhpc": lambda n: ctx.time_reps(mine, WARMUP, n),
                    "baseline": lambda n: ctx.time_reps(system, WARMUP, n),
                    "limit": lambda n: limits.memcpy_seconds(total, WARMUP, n, ctx.comm),
                }, reps)
                case = f"{op} {size_label(block)} blocks"
                limit = f"memcpy {size_label(total)} ({case})"
                rows.append(Measurement(limit, "memcpy (C++), one rank", "limit", seconds["limit"], x=block,
                                        bytes_per_rep=total))
                for role, impl in (("pyhpc", f"pyhpc._mpi.{op} ({path})"),
                                   ("baseline", f"MPI_{op.capitalize()} (mpi4py)")):
                    rows.append(Measurement(case, impl, role, seconds[role], x=block,
                                            bytes_per_rep=total, limit=limit))
            if not np.array_equal(dst_ours, dst_theirs):
                raise RuntimeError(f"datatype_pack: pyhpc and MPI_Unpack differ for block {block}")
        finally:
            t.Free()
    return rows


BENCHMARK = Benchmark(
    name="datatype_pack",
    ranks=1,
    description="pack and unpack a byte vector (blocks every 2 x block bytes, 1 B .. 1 MiB) to/from "
                "4 MiB (quick) / 16 MiB, pyhpc's engine vs the system MPI_Pack/MPI_Unpack; "
                "limit: memcpy of the same bytes",
    run=run,
    x_label="block size (bytes)",
)
