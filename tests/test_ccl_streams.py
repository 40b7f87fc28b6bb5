"""pyhpc.ccl all-reduce over several TCP connections per neighbour
(``Communicator(connections=N)``) with real peer processes on 127.0.0.1: the
same bits as one connection and as numpy, for 1, 2 and 4 connections and for
peers that differ in their count, sending from the calling thread or from a
second one; kill -9 mid-operation with 4 connections and a send thread (abort,
restore, PeerFailure naming the victim, retry over the survivors).
Uses the peer harness of test_ccl_allreduce.py.
"""

from __future__ import annotations


import numpy as np
import pytest

from pyhpc.ccl import Communicator
from pyhpc.errors import InvalidArgumentError
from test_ccl_allreduce import Runner, kill_one_mid_allreduce, make_input, reference, ring  # noqa: F401

pytestmark = pytest.mark.timeout(90)

SIZE = (1 << 20) // 4 + 13  # 1 MiB of float32 and a ragged tail


@pytest.mark.parametrize("n", [2, 3])
def test_results_are_the_same_bits_for_1_2_and_4_connections(ring, tmp_path, n):
    """Inputs by rank, so every world of n computes the same op: the bits must not
    depend on the connection count (mixed counts included)."""
    run = Runner(tmp_path)
    inputs = [make_input(r, "float32", SIZE, 1, "random") for r in range(n)]
    ref = reference(inputs, "sum", np.float32)
    ints = [make_input(r, "int64", 1001, 1, "exact") for r in range(n)]
    seen = {}
    for conns in (1, 2, 4, [1, 4, 2][:n]):
        master, peers = ring(n, connections=conns)
        # out=False: in place (each chunk saved before it is overwritten)
        for quantize, out in ((None, True), (None, False), ("minmax_uint8", True),
                              ("zeropoint_uint8", False)):
            outs = run.results(run.run(peers, dtype="float32", op="sum", size=SIZE,
                                       kind="random", chunk=1 << 14, out=out, by_rank=True,
                                       quantize=quantize))
            assert len({o.tobytes() for o in outs}) == 1, (conns, quantize, "peers differ")
            seen.setdefault(quantize, set()).add(outs[0].tobytes())
            if quantize is None:
                np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5)
                if n == 2:  # a + b in one rounding: exact
                    assert outs[0].tobytes() == ref.tobytes()
        outs = run.results(run.run(peers, dtype="int64", op="max", size=1001, chunk=64,
                                   by_rank=True))
        assert all(o.tobytes() == reference(ints, "max", np.int64).tobytes() for o in outs)
        for p in peers:
            p.send("leave")
    for quantize, bits in seen.items():
        assert len(bits) == 1, (quantize, "the result depends on the connection count")


def test_kill9_mid_allreduce_with_4_connections_aborts_restores_and_retry_works(ring, tmp_path):
    master, peers = ring(3, connections=4)
    _, outs, inputs = kill_one_mid_allreduce(peers, Runner(tmp_path), tmp_path,
                                             out=True)  # and out of place
    ref = reference(inputs, "sum", np.float32)
    assert outs[0].tobytes() == outs[1].tobytes() == ref.tobytes()  # two peers: exact


@pytest.mark.parametrize("bad", [0, 17, -1, 2.0, True, "4"])
def test_connections_out_of_range_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="connections"):
        Communicator("127.0.0.1:1", secret="s", connections=bad)
