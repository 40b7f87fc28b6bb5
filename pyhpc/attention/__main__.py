"""A runnable sequence-parallel training example: ``pyhpc run -n 4 python -m pyhpc.attention``.

One causal self-attention layer (projections W_q, W_k, W_v, W_o; GQA when
--kv-heads < --heads) is trained by SGD for a few steps on a fixed random
regression task. The sequence is spread over the ranks in the zigzag layout; the
attention runs through the chosen variant (default: the one ``choose_attention``
picks for these shapes), forward and backward; the weight gradients are summed
with ``Allreduce``. Every step is checked against the same training run in one
process in float64 (``attention_reference``): the loss and every weight gradient.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from pyhpc import attention as at


def train(comm, steps: int = 3, total: int = 96, d_model: int = 32, heads: int = 4, kv_heads: int = 2,
          dim: int = 16, variant: str = "auto", lr: float = 0.5, seed: int = 0):
    """Train; returns [(loss, reference loss, worst relative gradient error)] per step."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    if variant == "auto":
        variant = at.choose_attention(total, heads, kv_heads, dim, size, causal=True).name
    forward, backward = {"token_ring": (at.token_ring_attention, at.token_ring_attention_backward),
                         "ring": (at.ring_attention, at.ring_attention_backward),
                         "allgather": (at.allgather_attention, at.allgather_attention_backward),
                         "ulysses": (at.ulysses_attention, at.ulysses_attention_backward)}[variant]
    rng = np.random.default_rng(seed)  # the same data and initial weights on every rank
    x = rng.standard_normal((total, d_model))
    target = rng.standard_normal((total, d_model))
    widths = {"q": heads * dim, "k": kv_heads * dim, "v": kv_heads * dim}
    ref = {name: rng.standard_normal((d_model, w)) / math.sqrt(d_model) for name, w in widths.items()}
    ref["o"] = rng.standard_normal((heads * dim, d_model)) / math.sqrt(heads * dim)
    mine = {name: w.astype(np.float32) for name, w in ref.items()}
    pos = at.positions("zigzag", rank, size, total)
    scale = 2.0 / (total * d_model)  # d(mean squared error)/dy
    history = []
    for _ in range(steps):
        grads, loss = _step(mine, x[pos].astype(np.float32), target[pos].astype(np.float32), heads, kv_heads, dim,
                            scale, lambda q, k, v: forward(q, k, v, comm, causal=True),
                            lambda dout, q, k, v, out, lse: backward(dout, q, k, v, out, lse, comm, causal=True))
        loss = comm.allreduce(loss) * scale / 2
        for name, g in grads.items():
            comm.Allreduce(MPI.IN_PLACE, g)
        want, want_loss = _step(ref, x, target, heads, kv_heads, dim, scale,
                                lambda q, k, v: at.attention_reference(q, k, v, causal=True),
                                lambda dout, q, k, v, out, lse: at.attention_reference(q, k, v, True, dout=dout)[2:])
        worst = max(float(np.abs(grads[n] - want[n]).max() / np.abs(want[n]).max()) for n in want)
        history.append((loss, want_loss * scale / 2, worst))
        for name in mine:
            mine[name] -= np.float32(lr) * grads[name]
            ref[name] -= lr * want[name]
    return variant, history


def _step(w, x, target, heads, kv_heads, dim, scale, attend, attend_backward):
    """(weight gradients, sum of squared errors) of one forward and backward pass."""
    n = len(x)
    q, k, v = ((x @ w[name]).reshape(n, h, dim) for name, h in (("q", heads), ("k", kv_heads), ("v", kv_heads)))
    out, lse = attend(q, k, v)
    a = out.reshape(n, heads * dim)
    diff = a @ w["o"] - target
    dy = diff * scale
    da = (dy @ w["o"].T).reshape(n, heads, dim).astype(q.dtype)
    dq, dk, dv = attend_backward(da, q, k, v, out, lse)
    grads = {"o": a.T @ dy, "q": x.T @ dq.reshape(n, -1), "k": x.T @ dk.reshape(n, -1), "v": x.T @ dv.reshape(n, -1)}
    return {name: np.ascontiguousarray(g) for name, g in grads.items()}, float((diff.astype(np.float64) ** 2).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyhpc.attention", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="SGD steps (default 5)")
    parser.add_argument("--seq", type=int, default=256, help="sequence length (default 256)")
    parser.add_argument("--heads", type=int, default=8, help="query heads (default 8)")
    parser.add_argument("--kv-heads", type=int, default=2, help="K/V heads (default 2)")
    parser.add_argument("--variant", default="auto", choices=("auto", *at.VARIANTS),
                        help="attention variant (default: choose_attention's pick)")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    variant, history = train(comm, args.steps, args.seq, heads=args.heads, kv_heads=args.kv_heads,
                             variant=args.variant)
    worst = max(h[2] for h in history)
    if comm.Get_rank() == 0:
        print(f"{comm.Get_size()} ranks, S={args.seq}, H={args.heads}/{args.kv_heads}, causal, variant {variant}")
        for i, (loss, want, err) in enumerate(history):
            print(f"step {i}: loss {loss:.6f} (single process, float64: {want:.6f}); worst gradient error {err:.1e}")
        print(f"max gradient error against the single-process run: {worst:.1e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
