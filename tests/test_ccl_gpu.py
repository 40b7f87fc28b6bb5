"""pyhpc.ccl with cupy arrays: all_reduce, all_reduce_async, sync_shared_state and
hash_array take device arrays, moved through host memory (the data plane is TCP).
Peers are threads of this process around an in-process master."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyhpc import ccl

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(60)]


def run_peers(n, body):
    """body(comm, rank) on n peers (threads) joined into one world; their results by rank."""
    results, errors = {}, []
    with ccl.Master(secret=b"gpu-secret") as master:
        def peer():
            try:
                comm = ccl.Communicator(master.address, secret=b"gpu-secret").connect()
                while comm.world_size < n:
                    comm.update_topology()
                results[comm.rank] = body(comm, comm.rank)
                comm.leave()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=peer) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
    if errors:
        raise errors[0]
    assert len(results) == n
    return results


def test_all_reduce_of_device_arrays_equals_numpy():
    from pyhpc import cuda

    cp = cuda.cupy()
    inputs = [np.random.default_rng(r).standard_normal(100_003).astype(np.float32) for r in range(3)]

    def body(comm, rank):
        a = cp.asarray(inputs[rank])
        out = cp.empty_like(a)
        comm.all_reduce(a, op="sum", out=out)            # out of place
        assert cp.asnumpy(a).tobytes() == inputs[rank].tobytes()  # input untouched
        b = cp.asarray(inputs[rank])
        comm.all_reduce_async(b, op="max", tag=1).wait()  # in place, another channel
        return cp.asnumpy(out), cp.asnumpy(b)

    res = run_peers(3, body)
    ref_sum = np.zeros_like(inputs[0])
    for x in inputs:
        ref_sum += x  # the ring's order differs: compare with a tolerance, and bits across peers
    for s, m in res.values():
        np.testing.assert_allclose(s, ref_sum, rtol=1e-5, atol=1e-5)
        assert m.tobytes() == np.maximum.reduce(inputs).tobytes()
    assert len({s.tobytes() for s, _ in res.values()}) == 1


def test_sync_and_hash_of_device_arrays():
    from pyhpc import cuda

    cp = cuda.cupy()
    w_good = np.arange(4096, dtype=np.float32)

    def body(comm, rank):
        state = {"w": cp.asarray(w_good if rank < 2 else np.zeros(4096, np.float32)),
                 "step": np.array(7 if rank < 2 else 0)}
        info = comm.sync_shared_state(state, revision=7 if rank < 2 else 0)
        return info, cp.asnumpy(state["w"]), int(state["step"]), ccl.hash_array(state["w"])

    res = run_peers(3, body)
    for rank, (info, w, step, h) in res.items():
        assert info.revision == 7 and step == 7 and w.tobytes() == w_good.tobytes()
        assert h == ccl.hash_array(w_good)  # the device array hashes as its host bytes
    fetched = [info.fetched for info, *_ in res.values()]
    assert sorted(fetched) == [[], [], ["step", "w"]]
