"""moe_layers_gpu: moe_layers with cupy arrays on the GPU (2 ranks sharing one GPU).

The same decode step, models and checks as ``moe_layers``; the layers compute on
the GPU (cuBLAS matmuls through cupy) and the all-to-alls are staged through
host memory, as ``pyhpc.moe`` does for every MPI.
"""

from __future__ import annotations

from . import moe_layers
from .harness import Benchmark, Context, Measurement


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import cuda

    cp = cuda.cupy()
    if cp is None:
        raise RuntimeError("moe_layers_gpu: cupy is not installed")
    return moe_layers.run(ctx, xp=cp)


BENCHMARK = Benchmark(
    name="moe_layers_gpu",
    ranks=2,
    description="moe_layers on the GPU (cupy), 2 ranks on one GPU: ExFlow mode vs classic dispatch+combine",
    run=run,
    x_label="ranks",
    needs_gpu=True,
    plot=moe_layers.plot,
)
