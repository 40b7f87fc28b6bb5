"""attention_gpu: attention on the GPU (cupy, float16), forward + backward, every variant, 2 ranks on one GPU.

The same comparison and checks as ``attention``, with cupy arrays: each block's
matmuls run through cuBLAS in float32 (inputs cast from float16), and every message
goes through host memory (``pyhpc.attention`` does not need a CUDA-aware MPI). Both
ranks share the one GPU, so their blocks compete for it; the numbers say how the two
variants compare under the same conditions, not what two GPUs would do.
"""

from __future__ import annotations

import numpy as np

from . import attention
from .harness import Benchmark, Context, Measurement


def run(ctx: Context) -> list[Measurement]:
    from pyhpc import cuda

    cp = cuda.cupy()
    if cp is None:
        raise RuntimeError("attention_gpu: cupy is not installed")
    shapes = [(8192, 8, 8)] if ctx.quick else [(8192, 8, 8), (8192, 8, 2), (8192, 16, 16)]
    return attention.run(ctx, xp=cp, dtype=np.float16, shapes=shapes)


BENCHMARK = Benchmark(
    name="attention_gpu",
    ranks=2,
    description=f"causal attention forward + backward on the GPU (cupy, float16, head dim {attention.HEAD_DIM}), "
                "2 ranks on one GPU: TokenRing vs the K/V ring, all-gather and Ulysses",
    run=run,
    x_label="ranks",
    needs_gpu=True,
    plot=attention.plot,
)
