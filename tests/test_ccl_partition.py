"""pyhpc.ccl under a network partition: one peer's traffic is silently dropped.

The partitioned peer runs in a network namespace of its own, joined to this one
by a veth pair; the master and two peers run here. Taking the veth link down
drops every packet both ways without a reset, so nothing closes: only the
heartbeat timeout and the operation deadlines can tell. The survivors must raise
PeerFailure naming the cut-off peer, retry, and get exactly the sum over the
two of them; the cut-off peer must raise too (never hang, never return a
result), and keep raising once the link is back.

Needs root and iproute2 (`ip netns`); skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ccl_loop_peer import Proc, peer_argv
from pyhpc.ccl import Master
from test_ccl_procs import netns_unavailable

pytestmark = pytest.mark.timeout(90)

SECRET = "partition-secret"


class Netns:
    """A namespace with one veth link to this one: here .1, there .2 of a /30."""

    def __init__(self) -> None:
        tag = os.getpid() % 10000
        self.name, self.host_if, self.ns_if = f"pyhpc-t{tag}", f"pyv{tag}a", f"pyv{tag}b"
        net = 200 + os.getpid() % 50
        self.here, self.there = f"10.{net}.{tag % 250}.1", f"10.{net}.{tag % 250}.2"
        for cmd in (f"ip netns add {self.name}",
                    f"ip link add {self.host_if} type veth peer name {self.ns_if}",
                    f"ip link set {self.ns_if} netns {self.name}",
                    f"ip addr add {self.here}/30 dev {self.host_if}",
                    f"ip link set {self.host_if} up",
                    f"ip netns exec {self.name} ip addr add {self.there}/30 dev {self.ns_if}",
                    f"ip netns exec {self.name} ip link set {self.ns_if} up",
                    f"ip netns exec {self.name} ip link set lo up"):
            subprocess.run(cmd.split(), check=True, capture_output=True)

    def link(self, up: bool) -> None:
        subprocess.run(["ip", "link", "set", self.host_if, "up" if up else "down"], check=True)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns():
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


def test_partitioned_peer_is_dropped_and_survivors_reduce_exactly(netns, tmp_path):
    master = Master(host=netns.here, secret=SECRET, heartbeat_timeout=1.0).start()
    here = peer_argv(master.address, SECRET, 3, 25)
    peers = [Proc(here, tmp_path), Proc(here, tmp_path),
             Proc(["ip", "netns", "exec", netns.name] + here, tmp_path)]
    try:
        ids = [p.expect(lambda e: e["event"] == "ready", 20)["id"] for p in peers]
        for p in peers:
            p.expect(lambda e: e["event"] == "result" and e["world"] == 3, 20)
        cut = ids[2]
        t0 = time.time()
        netns.link(False)
        for p in peers[:2]:
            # told by a failed all-reduce, or by the update that removed it (if the cut
            # came while the survivors waited in update_topology)
            seen = p.expect(lambda e: e["event"] == "failure" or e.get("dead"), 10)
            assert seen.get("ids") == [cut] if seen["event"] == "failure" else seen["dead"] == [cut], seen
            # heartbeat timeout 1.0 s (master) or the 3 s operation deadline, whichever first
            assert seen["t"] - t0 < 3.0 + 1.5, seen["t"] - t0
            res = seen if seen["event"] == "result" else p.expect(lambda e: e["event"] == "result", 10)
            assert res["world"] == 2 and res["ok"] and cut not in res["ids"], res
            p.mark = len(p.seen)
        # the cut-off peer raises (its neighbours and master are gone), never returns a sum
        err = peers[2].expect(lambda e: e["event"] in ("failure", "lost", "result"), 15)
        assert err["event"] in ("failure", "lost"), err
        netns.link(True)
        # after the link is back it is not let back in silently: no result with it counted
        time.sleep(2.0)
        for p in peers[:2]:
            p.drain()
            after = p.seen[p.mark:]
            assert all(e["event"] == "result" and e["world"] == 2 and e["ok"] for e in after), after
        assert sorted(master.stats()["members"]) == sorted(ids[:2])
        # and once the link is back, it learns that the master dropped it, and stops
        peers[2].expect(lambda e: e["event"] == "end", 15)
        assert any(e["event"] == "lost" for e in peers[2].seen), peers[2].seen
        assert all(e["event"] != "result" or e["world"] == 3 for e in peers[2].seen), peers[2].seen
    finally:
        for p in peers:
            p.kill()
        master.stop()
