"""gpu_copy: the GPU's device-to-device copy bandwidth, the physical limit for
on-device packing and staging (needs a CUDA device; skipped elsewhere).

Limit rows only, like `limits`: cudaMemcpyAsync device-to-device timed with
CUDA events by pyhpc._cuda, counting the bytes copied once (HBM traffic is
twice that: each byte is read and written). When cupy is installed, cupy's
own copy of the same buffers is reported beside it as a cross-check of the
measurement, never as the thing being sped up.
"""

from __future__ import annotations

from .harness import Benchmark, Context, Measurement, size_label


def sizes(quick: bool) -> list[int]:
    return [16 << 20, 256 << 20] if quick else [1 << 20, 16 << 20, 256 << 20, 1 << 30]


def cupy_copy_seconds(nbytes: int, reps: int) -> list[float] | None:
    from pyhpc import cuda

    cp = cuda.cupy()
    if cp is None:
        return None
    src = cp.arange(nbytes, dtype=cp.uint8)
    dst = cp.zeros_like(src)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    cp.copyto(dst, src)  # warm-up
    seconds = []
    for _ in range(reps):
        start.record()
        cp.copyto(dst, src)
        stop.record()
        stop.synchronize()
        seconds.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    if not bool((dst == src).all()):
        raise RuntimeError(f"gpu_copy: cupy copy of {nbytes} bytes came out wrong")
    return seconds


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import cuda

    ext = cuda.extension()
    rows = []
    reps = 10 if ctx.quick else 30
    for nbytes in sizes(ctx.quick):
        label = size_label(nbytes)
        ctx.progress(label)
        rows.append(Measurement(f"cudaMemcpy D2D {label}", "pyhpc._cuda, CUDA events", "limit",
                                ext.d2d_copy_seconds(0, nbytes, reps), x=nbytes, bytes_per_rep=nbytes))
        theirs = cupy_copy_seconds(nbytes, reps)
        if theirs is not None:
            rows.append(Measurement(f"cupy copyto {label}", "cupy.copyto, CUDA events", "limit",
                                    theirs, x=nbytes, bytes_per_rep=nbytes))
    return rows


BENCHMARK = Benchmark(
    name="gpu_copy",
    ranks=1,
    description="device-to-device copy bandwidth (bytes copied once), the GPU limit; needs CUDA",
    run=run,
    x_label="bytes copied",
    needs_gpu=True,
)
