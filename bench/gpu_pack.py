"""gpu_pack: pack a byte vector on the GPU by block size, pyhpc's CUDA kernels
against cupy doing the same gather, with a device-to-device copy of the same
bytes as the limit (needs a CUDA device and cupy; skipped elsewhere).

The type is MPI_BYTE vector(count, block, 2 * block), as in datatype_pack:
half of a device buffer in `block`-byte runs. pyhpc is timed through
pyhpc._cuda.pack, the kernel launch pyhpc.datatype.pack makes on a cupy array
without the stream synchronisation pyhpc.datatype.pack adds after it. Two cupy
baselines do the same gather on the same stream: fancy indexing with a
precomputed index array (cupy.take, the generic way to gather arbitrary
bytes), and a copy out of a strided 2-D view (cupy.copyto, which only works
because this type happens to be one reshape away from a 2-D slice). The limit
is cudaMemcpyAsync device-to-device of the packed size, bytes counted once (as
in gpu_copy). Everything is timed with CUDA events around `INNER` back-to-back
launches, so the host's launch cost overlaps the GPU's work as it would in a
pipeline. Every implementation's bytes are checked once against the host
engine. Unpack (scatter) is timed the same way in full mode.
"""

from __future__ import annotations

from .harness import Benchmark, Context, Measurement, interleave, size_label

WARMUP = 2
INNER = 20  # launches between two CUDA events


def block_sizes(quick: bool) -> list[int]:
    if quick:
        return [1, 8, 32, 256, 4096]
    return [1 << k for k in range(0, 21)]  # 1 B .. 1 MiB


def event_seconds(cp, fn, warmup: int, reps: int) -> list[float]:
    """Seconds per call of fn: each repetition is INNER calls between two CUDA
    events on the current stream, divided by INNER."""
    for _ in range(warmup):
        fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    seconds = []
    for _ in range(reps):
        start.record()
        for _ in range(INNER):
            fn()
        stop.record()
        stop.synchronize()
        seconds.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3 / INNER)
    return seconds


def run(ctx: Context) -> list[Measurement]:
    import numpy as np
    from mpi4py import MPI

    from pyhpc import _mpi, cuda, datatype

    cp = cuda.cupy()
    if cp is None:
        raise RuntimeError("gpu_pack: needs cupy for its device buffers and baselines")
    ext = cuda.extension()
    total = (16 << 20) if ctx.quick else (64 << 20)  # packed bytes per call
    reps = 10 if ctx.quick else 30
    ops = ["pack"] if ctx.quick else ["pack", "unpack"]
    rows: list[Measurement] = []
    limit = Measurement(f"cudaMemcpy D2D {size_label(total)}", "pyhpc._cuda, CUDA events", "limit",
                        ext.d2d_copy_seconds(0, total, reps), x=total, bytes_per_rep=total)
    rows.append(limit)
    stream = cp.cuda.get_current_stream()
    for block in block_sizes(ctx.quick):
        ctx.progress(f"block {size_label(block)}")
        count = total // block
        t = MPI.BYTE.Create_vector(count, block, 2 * block).Commit()
        try:
            layout = _mpi.canonicalize(t)
            host_src = np.random.default_rng(block).integers(0, 256, 2 * total, dtype=np.uint8)
            src = cp.asarray(host_src)
            ours, take_out, view_out = (cp.empty(total, cp.uint8) for _ in range(3))
            index = (cp.arange(count, dtype=cp.int64)[:, None] * (2 * block)
                     + cp.arange(block, dtype=cp.int64)[None, :]).ravel().astype(cp.int32)
            src_view = src.reshape(count, 2 * block)[:, :block]  # the same bytes, as a 2-D slice
            view_out_2d = view_out.reshape(count, block)

            def pyhpc_pack():
                ext.pack(layout, 1, src.data.ptr, src.nbytes, ours.data.ptr, ours.nbytes, stream.ptr)

            def take_pack():
                cp.take(src, index, out=take_out)

            def view_pack():
                cp.copyto(view_out_2d, src_view)

            # One call each, untimed: every implementation's bytes are the host engine's.
            expected = datatype.pack(host_src, t)
            datatype.pack(src, t, out=ours)  # the public path, synchronised
            take_pack()
            view_pack()
            stream.synchronize()
            for name, got in (("pyhpc", ours), ("cupy.take", take_out), ("cupy.copyto", view_out)):
                if not np.array_equal(cp.asnumpy(got), expected):
                    raise RuntimeError(f"gpu_pack: {name} packed the wrong bytes for block {block}")

            packed = cp.asarray(expected)
            mine, by_index, by_view = (cp.zeros_like(src) for _ in range(3))
            by_view_2d = by_view.reshape(count, 2 * block)[:, :block]
            packed_2d = packed.reshape(count, block)

            def pyhpc_unpack():
                ext.unpack(layout, 1, packed.data.ptr, packed.nbytes, mine.data.ptr, mine.nbytes,
                           stream.ptr)

            def index_unpack():
                by_index[index] = packed

            def view_unpack():
                cp.copyto(by_view_2d, packed_2d)

            calls = {
                "pack": (pyhpc_pack, take_pack, view_pack),
                "unpack": (pyhpc_unpack, index_unpack, view_unpack),
            }
            impls = {
                "pack": ("pyhpc._cuda.pack (CUDA kernels)", "cupy.take (fancy indexing)",
                         "cupy.copyto (strided view)"),
                "unpack": ("pyhpc._cuda.unpack (CUDA kernels)", "cupy scatter (fancy indexing)",
                           "cupy.copyto (strided view)"),
            }
            for op in ops:
                mine_fn, index_fn, view_fn = calls[op]
                seconds = interleave({
                    "pyhpc": lambda n: event_seconds(cp, mine_fn, WARMUP, n),
                    "index": lambda n: event_seconds(cp, index_fn, WARMUP, n),
                    "view": lambda n: event_seconds(cp, view_fn, WARMUP, n),
                }, reps)
                case = f"{op} {size_label(block)} blocks"
                for key, role, impl in zip(("pyhpc", "index", "view"), ("pyhpc", "baseline", "baseline"),
                                           impls[op]):
                    rows.append(Measurement(case, impl, role, seconds[key], x=block,
                                            bytes_per_rep=total, limit=limit.case))
            if "unpack" in ops:
                stream.synchronize()
                reference = np.zeros_like(host_src)
                datatype.unpack(expected, reference, t)
                for name, got in (("pyhpc", mine), ("cupy scatter", by_index), ("cupy.copyto", by_view)):
                    if not np.array_equal(cp.asnumpy(got), reference):
                        raise RuntimeError(f"gpu_pack: {name} unpacked the wrong bytes for block {block}")
        finally:
            t.Free()
    return rows


BENCHMARK = Benchmark(
    name="gpu_pack",
    ranks=1,
    description="pack a byte vector (blocks every 2 x block bytes) on the GPU into 16 MiB (quick) / "
                "64 MiB, pyhpc's CUDA kernels vs cupy take/copyto; limit: D2D copy of the same bytes; "
                "needs CUDA and cupy",
    run=run,
    x_label="block size (bytes)",
    needs_gpu=True,
)
