"""ccl_sync: pyhpc.ccl's shared-state sync to one lagging peer, against an all-reduce
of the same bytes.

The MPI job only starts the peers and times them: rank 0 runs the ccl master
(a thread), every rank is one ccl peer on 127.0.0.1. The state is 16 float32
arrays (4 MiB each in the quick run, 64 MiB in all; 16 MiB each otherwise).
Each repetition, rank 1 changes one element of every array and syncs at
revision 0 while rank 0 syncs at revision 1: the tie goes to the higher
revision, so rank 1 fetches every array from rank 0 (hashing both sides,
transfer, hash check, commit round). A second case changes nothing: every
peer only hashes its state and agrees with the master (no bytes move).
Baseline: pyhpc.ccl's own ring all-reduce (SUM, float32) of the same bytes
(its bus bytes, 2(n-1)/n x size, equal the size on 2 peers). Limit: loopback
TCP bandwidth, measured on rank 0 in the same job.
"""

from __future__ import annotations

import numpy as np

from . import limits
from .harness import Benchmark, Context, Measurement, interleave, size_label

WARMUP = 2
ARRAYS = 16


def run(ctx: Context) -> list[Measurement]:
    import secrets

    from pyhpc.ccl import Communicator, Master, hash_array

    comm = ctx.comm
    master = None
    if ctx.rank == 0:
        secret = secrets.token_bytes(32)
        master = Master(secret=secret).start()
        address = master.address
    else:
        secret = address = None
    secret, address = comm.bcast((secret, address), root=0)
    peer = Communicator(address, secret=secret).connect()
    try:
        while peer.world_size < ctx.size:
            peer.update_topology(timeout=30)
        comm.Barrier()
        total = (64 << 20) if ctx.quick else (256 << 20)
        limit = limits.tcp_loopback_limit(ctx)
        rows = [limit]

        count = total // ARRAYS // 4
        rng = np.random.default_rng(7)
        state = {f"layer{i:02d}": rng.standard_normal(count).astype(np.float32)
                 for i in range(ARRAYS)}
        lagging = ctx.rank == 1
        flat = np.ones(total // 4, np.float32)
        out = np.empty_like(flat)

        def lag_and_sync():
            if lagging:
                for a in state.values():
                    a[0] += 1.0
            return peer.sync_shared_state(state, revision=0 if lagging else 1)

        # Checked once, so a broken sync cannot look fast.
        info = lag_and_sync()
        theirs = comm.bcast({k: hash_array(v) for k, v in state.items()}, root=0)
        if lagging and (info.bytes_received != total or len(info.fetched) != ARRAYS
                        or theirs != {k: hash_array(v) for k, v in state.items()}):
            raise RuntimeError(f"sync moved {info.bytes_received} B, fetched "
                               f"{len(info.fetched)} arrays, or left the states different")
        peer.all_reduce(flat, out=out)
        if not np.all(out == ctx.size):
            raise RuntimeError("ccl all_reduce gave wrong values")

        label = size_label(total)
        reps = 8 if ctx.quick else 20
        timed = interleave({
            "pyhpc": lambda n: ctx.time_reps(lag_and_sync, WARMUP, n),
            "baseline": lambda n: ctx.time_reps(lambda: peer.all_reduce(flat, out=out), WARMUP, n),
        }, reps)
        rows.append(Measurement(f"{label} to 1 lagging peer",
                                f"sync_shared_state, {ARRAYS} arrays, all differ", "pyhpc",
                                timed["pyhpc"], x=total, bytes_per_rep=total, limit=limit.case))
        rows.append(Measurement(f"{label} to 1 lagging peer", "ccl all_reduce of the same bytes",
                                "baseline", timed["baseline"], x=total, bytes_per_rep=total,
                                limit=limit.case))
        agree = ctx.time_reps(lambda: peer.sync_shared_state(state, revision=1), WARMUP, reps)
        rows.append(Measurement(f"{label}, all agree", "sync_shared_state: hash and agree, "
                                "nothing moves", "pyhpc", agree, x=total))
        comm.Barrier()
        return rows
    finally:
        peer.leave()
        comm.Barrier()
        if master is not None:
            master.stop()


BENCHMARK = Benchmark(
    name="ccl_sync",
    ranks=2,
    description="pyhpc.ccl shared-state sync of a whole state to one lagging peer (2 peers, TCP "
                "on 127.0.0.1) against pyhpc.ccl's ring all-reduce of the same bytes; limit: "
                "loopback TCP bandwidth, measured in the same job",
    run=run,
)
