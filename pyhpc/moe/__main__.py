"""A runnable ExFlow example: ``pyhpc run -n 4 python -m pyhpc.moe [--steps N] [--top-k K]``.

Rank 0 makes a routing trace with strong inter-layer affinity and places the
experts from it; every rank then runs the same decode steps through the MoE
layer stack in classic and ExFlow mode, replaying routes from another sample of
the trace, checks both against the single-process reference, and rank 0 prints
the bytes each mode sent.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyhpc.moe", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="decode steps (default 4)")
    parser.add_argument("--top-k", type=int, default=1, help="experts per token (default 1)")
    parser.add_argument("--layers", type=int, default=6, help="MoE layers (default 6)")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    from pyhpc import moe

    comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    experts, requests = 4 * size, 32 * size
    params = moe.GeneratorParams(affinity=0.9)
    placement = None
    if rank == 0:  # one rank decides, everyone gets the same placement
        train = moe.generate_trace(10_000, args.layers, experts, top_k=args.top_k, params=params, seed=1)
        placement = moe.place_experts(moe.affinity(train, experts), size)
    placement = comm.bcast(placement)
    replay = moe.generate_trace(10_000 + requests * args.steps, args.layers, experts, top_k=args.top_k,
                                params=params, seed=1)[10_000:]
    config = moe.MoEConfig(n_layers=args.layers, n_experts=experts, top_k=args.top_k, n_requests=requests,
                           max_context=args.steps)
    reference = moe.ReferenceStack(config)
    stacks = {"classic": moe.MoEStack(config, comm, mode="classic"),
              "exflow": moe.MoEStack(config, comm, mode="exflow", placement=placement)}
    sent = {mode: 0 for mode in stacks}
    gathered = 0
    worst = 0.0
    mine = np.arange(rank, requests, size)  # this rank's requests
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        x = rng.standard_normal((requests, config.d_model))  # one new token per request
        routes = replay[step * requests:(step + 1) * requests]
        want = reference.step(x, np.arange(requests), routes)
        for mode, stack in stacks.items():
            out = stack.step(x[mine].astype(np.float32), mine, routes[mine])
            worst = max(worst, float(np.abs(out - want[mine]).max() / np.abs(want).max()))
            sent[mode] += comm.allreduce(stack.stats["alltoall_bytes"])
        gathered += comm.allreduce(stacks["exflow"].stats["allgather_bytes"])
    worst = comm.allreduce(worst, op=MPI.MAX)
    if rank == 0:
        print(f"{size} ranks, {experts} experts x {args.layers} layers, top-{args.top_k}, {args.steps} steps")
        print(f"placement: {moe.evaluate(placement, replay):.1%} of transitions cross ranks "
              f"(contiguous: {moe.evaluate(moe.Placement.contiguous(args.layers, experts, size), replay):.1%})")
        print(f"all-to-all bytes: classic {sent['classic']:,}, exflow {sent['exflow']:,} "
              f"({sent['exflow'] / max(sent['classic'], 1):.0%}); exflow's KV all-gather {gathered:,}")
        print(f"max error against the single-process reference: {worst:.1e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
