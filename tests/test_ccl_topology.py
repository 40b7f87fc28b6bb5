"""pyhpc.ccl topology optimization (Communicator.optimize_topology).

The ring-order search (_ccl.best_ring) against a brute force written here, its
tie rule, the heuristic above 9 members, the measurement schedule
(_ccl.round_robin), the TOPO_* frames' checks (their round trips and the
decoder fuzz are in test_ccl.py's message list); then real peer processes on
127.0.0.1: every member gets the same report, ranks follow the chosen order and
an all_reduce afterwards is exact; kill -9 and SIGSTOP of a peer mid-measurement
(every survivor raises PeerFailure naming it, then update_topology, all_reduce
and optimize_topology work). Last, with shaped links: 4 peers in 4 network
namespaces on a bridge, two pairs slowed with tc (htb), the rank-order ring crossing
both; optimize_topology must pick a ring avoiding them (needs root and
iproute2; skipped elsewhere). Peers are `python -c` children driven over
stdin/stdout (the harness of test_ccl_procs.py).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import pyhpc
from pyhpc import _ccl
from pyhpc.ccl import Communicator, Master

from test_ccl import frame
from test_ccl_procs import SECRET, PeerProc, Worlds, netns_unavailable

pytestmark = pytest.mark.timeout(120)


# ---- the ring-order search ---------------------------------------------------------

def ring_score(order, bw, lat):
    """(slowest link, total latency) of a ring, summed like the C++ search."""
    n = len(order)
    bottleneck, total = float("inf"), 0.0
    for i in range(n):
        a, b = order[i], order[(i + 1) % n]
        bottleneck = min(bottleneck, bw[a][b])
        total += lat[a][b]
    return bottleneck, total


def brute_force(bw, lat):
    """Every cycle from node 0 (second node below the last), in lexicographic
    order; the first with the highest bottleneck, then the lowest latency."""
    n = len(bw)
    if n <= 3:
        return list(range(n))
    best, best_s = None, None
    for rest in itertools.permutations(range(1, n)):
        if rest[0] > rest[-1]:
            continue
        order = [0, *rest]
        s = ring_score(order, bw, lat)
        if best is None or s[0] > best_s[0] or (s[0] == best_s[0] and s[1] < best_s[1]):
            best, best_s = order, s
    return best


def symmetric(n, rng, values):
    m = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            m[i][j] = m[j][i] = float(rng.choice(values))
    return m


@pytest.mark.parametrize("n", range(1, 10))
def test_best_ring_is_the_brute_force_optimum(n):
    rng = random.Random(1000 + n)
    reps = 30 if n <= 7 else 3  # 8! = 40320 cycles a try in Python
    for rep in range(reps):
        if rep % 2:  # few distinct values: many ties, broken by latency, then by order
            bw = symmetric(n, rng, [1, 2, 3])
            lat = symmetric(n, rng, [1, 2])
        else:
            bw = symmetric(n, rng, [rng.uniform(1e6, 1e10) for _ in range(50)])
            lat = symmetric(n, rng, [rng.uniform(1e-6, 1e-2) for _ in range(50)])
        got = _ccl.best_ring(bw, lat)
        assert got == brute_force(bw, lat), (bw, lat)
        assert sorted(got) == list(range(n))


def test_best_ring_ties_are_deterministic():
    for n in (2, 4, 7, 9, 12):
        flat = [[1.0] * n for _ in range(n)]
        assert _ccl.best_ring(flat, flat) == list(range(n))  # all equal: the join order
    # Bandwidth decides first ...
    bw = [[0, 9, 1, 9], [9, 0, 9, 1], [1, 9, 0, 9], [9, 1, 9, 0]]  # only 0-1-2-3 avoids the 1s
    lat = [[0] * 4 for _ in range(4)]
    assert _ccl.best_ring(bw, lat) == [0, 1, 2, 3]
    # ... then, among rings of equal bandwidth, the lower total latency.
    bw = [[5] * 4 for _ in range(4)]
    lat = [[0, 9, 1, 1], [9, 0, 1, 1], [1, 1, 0, 9], [1, 1, 9, 0]]  # avoid 0-1 and 2-3
    assert _ccl.best_ring(bw, lat) == [0, 2, 1, 3]
    assert _ccl.best_ring(bw, lat) == _ccl.best_ring(bw, lat)


@pytest.mark.parametrize("n", [10, 13, 40])
def test_best_ring_heuristic_above_nine_finds_a_planted_ring(n):
    rng = random.Random(n)
    for _ in range(5):
        bw = symmetric(n, rng, list(range(1, 50)))
        lat = symmetric(n, rng, [1e-4, 2e-4])
        planted = list(range(n))
        rng.shuffle(planted)
        for i in range(n):  # one ring of fast links hidden among slow ones
            a, b = planted[i], planted[(i + 1) % n]
            bw[a][b] = bw[b][a] = 100.0 + rng.random()
        got = _ccl.best_ring(bw, lat)
        assert sorted(got) == list(range(n)) and got[0] == 0 and got[1] < got[-1]
        assert ring_score(got, bw, lat)[0] > 100.0
        assert _ccl.best_ring(bw, lat) == got  # deterministic
    # never worse than the join order
    bw = symmetric(n, rng, [rng.uniform(1, 100) for _ in range(200)])
    assert (ring_score(_ccl.best_ring(bw, lat), bw, lat)[0]
            >= ring_score(list(range(n)), bw, lat)[0])


def test_best_ring_rejects_bad_matrices():
    with pytest.raises(pyhpc.InvalidArgumentError, match="n x n"):
        _ccl.best_ring([[0, 1], [1, 0]], [[0, 1]])
    with pytest.raises(pyhpc.InvalidArgumentError, match="n x n"):
        _ccl.best_ring([[0, 1], [1]], [[0, 1], [1, 0]])
    with pytest.raises(pyhpc.InvalidArgumentError, match="symmetric"):
        _ccl.best_ring([[0, 1], [2, 0]], [[0, 1], [1, 0]])


def test_best_ring_heuristic_is_fast_at_the_largest_world():
    # The master runs it on its poll thread: it must stay well under a heartbeat timeout.
    n, rng = _ccl.MAX_TOPO_WORLD, random.Random(7)
    bw = symmetric(n, rng, [rng.uniform(1e8, 1e10) for _ in range(1000)])
    lat = symmetric(n, rng, [rng.uniform(1e-6, 1e-3) for _ in range(1000)])
    t0 = time.perf_counter()
    order = _ccl.best_ring(bw, lat)
    print(f"best_ring over {n} nodes: {time.perf_counter() - t0:.3f} s")
    assert sorted(order) == list(range(n))
    assert ring_score(order, bw, lat)[0] >= ring_score(list(range(n)), bw, lat)[0]


@pytest.mark.parametrize("n", range(0, 12))
def test_round_robin_meets_every_pair_once_one_partner_per_round(n):
    rounds = _ccl.round_robin(n)
    assert len(rounds) == (0 if n < 2 else n - 1 if n % 2 == 0 else n)
    seen = []
    for pairs in rounds:
        ranks = [r for p in pairs for r in p]
        assert len(ranks) == len(set(ranks))  # each peer in at most one measurement
        assert all(a < b < n for a, b in pairs)
        seen += pairs
    assert sorted(seen) == [(a, b) for a in range(n) for b in range(a + 1, n)]


def test_topo_frames_reject_bad_fields():
    rep = {"type": "topo_report", "epoch": 1, "seq": 1, "ok": 1, "ids": [2, 3],
           "bandwidth": [5, 6], "latency_ns": [7, 8]}
    res = {"type": "topo_result", "epoch": 1, "seq": 1, "outcome": 1, "ids": [2, 3],
           "order": [3, 2], "bandwidth": [0, 5, 6, 0], "latency_ns": [0, 7, 8, 0]}

    def bad(msg, match):
        with pytest.raises(pyhpc.ProtocolError, match=match):
            _ccl.decode(_ccl.encode(msg))

    bad(dict(rep, ids=[2, 2]), "duplicate")
    bad(dict(rep, ids=[0, 3]), "peer id 0")
    bad(dict(rep, bandwidth=[0, 6]), "measurement of 0")
    bad(dict(rep, ok=0), "measurements in a give-up")
    bad(dict(rep, ok=2), "ok is neither")
    bad(dict(rep, seq=0), "sequence number 0")
    bad(dict(res, order=[2, 4]), "not a permutation")
    bad(dict(res, order=[2, 2]), "not a permutation")
    bad(dict(res, bandwidth=[1, 5, 6, 0]), "matrix entry")
    bad(dict(res, latency_ns=[0, 0, 8, 0]), "matrix entry")
    bad(dict(res, outcome=3), "unknown outcome")
    bad(dict(res, ids=[], order=[], bandwidth=[], latency_ns=[]), "no peers")
    bad({"type": "topo_result", "epoch": 1, "seq": 1, "outcome": 2, "dead": [0]}, "peer id 0")
    with pytest.raises(pyhpc.InvalidArgumentError, match="wrong length"):
        _ccl.encode(dict(rep, bandwidth=[5]))
    with pytest.raises(pyhpc.InvalidArgumentError, match="too long"):
        _ccl.encode(dict(rep, ids=list(range(1, 258)), bandwidth=[1] * 257, latency_ns=[1] * 257))
    # More than 256 members: refused from the header (the cap), or by the count.
    assert _ccl.MAX_TOPO_WORLD == 256
    head = struct.pack("<QQBI", 1, 1, 1, 257)
    with pytest.raises(pyhpc.ProtocolError, match="exceeds its cap"):
        _ccl.decode(frame(23, head + bytes(257 * 24)))
    with pytest.raises(pyhpc.ProtocolError, match="too many peers"):
        _ccl.decode(frame(23, head))
    with pytest.raises(pyhpc.ProtocolError, match="length differs"):
        _ccl.decode(frame(23, struct.pack("<QQBI", 1, 1, 1, 2) + bytes(24)))


def test_bad_arguments_name_what_is_wrong():
    master = Master(secret=SECRET).start()
    comm = Communicator(master)
    try:
        with pytest.raises(pyhpc.InvalidArgumentError, match="not admitted"):
            comm.optimize_topology()
        comm.update_topology(timeout=10)
        with pytest.raises(pyhpc.InvalidArgumentError, match="probe_bytes"):
            comm.optimize_topology(probe_bytes=0)
        with pytest.raises(pyhpc.InvalidArgumentError, match="timeout"):
            comm.optimize_topology(timeout=0)
        # One member: nothing to measure, the order is itself.
        r = comm.optimize_topology(timeout=10)
        assert r.order == r.ids == [comm.id] and r.slowest_after == float("inf")
        assert comm.rank == 0 and comm.world_size == 1
    finally:
        comm.close()
        master.stop()


# ---- real peer processes -----------------------------------------------------------

TOPO_DRIVER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[4])
from ccl_driver import connect, out, serve
from pyhpc.ccl import PeerFailure
c = connect(advertise_host=sys.argv[5])
def where():
    return dict(rank=c.rank, world=c.world_size, ids=[p.id for p in c.peers])
def optimize(arg):
    spec = json.loads(arg)
    try:
        r = c.optimize_topology(timeout=spec.get("timeout", 30),
                                probe_bytes=spec.get("probe_bytes", 1 << 20),
                                _exit_in_round=spec.get("exit_in_round", -1))
    except PeerFailure as e:
        return out(event="peer_failure", ids=e.peer_ids, msg=str(e), t=time.time())
    out(event="optimized", order=r.order, ids_matrix=r.ids,
        bandwidth=r.bandwidth.tolist(), latency=r.latency.tolist(),
        before=r.slowest_before, after=r.slowest_after, seconds=r.seconds, **where())
def allreduce(arg):
    spec = json.loads(arg)
    n = spec["count"]
    ids = [p.id for p in c.peers]
    times = []
    for rep in range(spec.get("reps", 1)):
        x = np.arange(n, dtype=np.float64) + c.id
        t0 = time.perf_counter()
        c.all_reduce(x, timeout=spec.get("timeout", 30))
        times.append(time.perf_counter() - t0)
        want = np.arange(n, dtype=np.float64) * len(ids) + sum(ids)
        exact = bool(np.array_equal(x, want))
    out(event="reduced", exact=exact, times=times, **where())
serve(c, {"optimize": optimize, "allreduce": allreduce})
"""


class TopoPeer(PeerProc):
    DRIVER = TOPO_DRIVER

    def __init__(self, address, cwd, heartbeat=0.05, netns=None, advertise=""):
        super().__init__(address, cwd, heartbeat, advertise,
                         prefix=["ip", "netns", "exec", netns] if netns else [])


@pytest.fixture
def world(tmp_path):
    """world(n) -> (master, peers in rank order)."""
    worlds = Worlds(tmp_path)

    def start(n, heartbeat_timeout=2.0):
        master, peers, ups = worlds.start(TopoPeer, n, heartbeat_timeout, recv_timeout=20)
        return master, sorted(peers, key=lambda p: ups[0]["ids"].index(p.id))

    yield start
    worlds.close()


def optimize(peers, **spec):
    for p in peers:
        p.send("optimize " + json.dumps(spec))
    return [p.recv(60) for p in peers]


def allreduce(peers, count, reps=1):
    for p in peers:
        p.send("allreduce " + json.dumps(dict(count=count, reps=reps)))
    return [p.recv(60) for p in peers]


def check_report(res, peers):
    """The same report on every peer (peers: in the old rank order), consistent
    with the world after it."""
    assert all(r["event"] == "optimized" for r in res), res
    ids = [p.id for p in peers]
    first = res[0]
    for r in res:
        for key in ("order", "ids_matrix", "bandwidth", "latency", "before", "after"):
            assert r[key] == first[key], (key, res)
    order = first["order"]
    assert sorted(order) == sorted(ids)  # a permutation of the members
    assert first["ids_matrix"] == ids  # rows: the old rank order
    n = len(ids)
    bw, lat = np.array(first["bandwidth"]), np.array(first["latency"])
    off = ~np.eye(n, dtype=bool)
    assert (bw[off] > 0).all() and (lat[off] > 0).all()
    assert (np.diag(bw) == 0).all() and (np.diag(lat) == 0).all()
    assert first["after"] >= first["before"]
    # The ranks follow the new order, and everyone sees the same world.
    for p, r in zip(peers, res):
        assert r["ids"] == order and r["world"] == n
        assert r["rank"] == order.index(p.id)
    return first


def test_every_peer_gets_the_same_report_and_ranks_follow_it(world):
    master, peers = world(4)
    res = optimize(peers, probe_bytes=1 << 20)
    rep = check_report(res, peers)
    print(f"4 peers on loopback: optimize_topology took "
          f"{max(r['seconds'] for r in res):.3f} s; order {rep['order']}; slowest link "
          f"{rep['before'] / 1e9:.2f} -> {rep['after'] / 1e9:.2f} GB/s; latency median "
          f"{np.median(np.array(rep['latency'])[~np.eye(4, dtype=bool)]) * 1e6:.0f} us")
    assert master.stats()["topo_orders"] == 1
    red = allreduce(peers, 100_003)
    assert all(r["event"] == "reduced" and r["exact"] for r in red), red
    # Again, from the new order: still consistent, and all_reduce still exact.
    by_rank = sorted(peers, key=lambda p: rep["order"].index(p.id))
    res = optimize(by_rank, probe_bytes=1 << 16)
    check_report(res, by_rank)
    red = allreduce(peers, 1000)
    assert all(r["event"] == "reduced" and r["exact"] for r in red), red


def test_three_peers_odd_count(world):
    master, peers = world(3)
    check_report(optimize(peers, probe_bytes=1 << 18), peers)
    red = allreduce(peers, 5000)
    assert all(r["event"] == "reduced" and r["exact"] for r in red), red


def _survivors_recover(master, survivors, victim_id):
    for s in survivors:
        s.send("update")
    ups = [s.recv(20) for s in survivors]
    assert all(u.get("world") == len(survivors) and u["dead"] == [victim_id] for u in ups), ups
    red = allreduce(survivors, 10_000)
    assert all(r["event"] == "reduced" and r["exact"] for r in red), red
    by_rank = sorted(survivors, key=lambda p: ups[0]["ids"].index(p.id))
    check_report(optimize(by_rank, probe_bytes=1 << 18), by_rank)
    red = allreduce(survivors, 10_000)
    assert all(r["event"] == "reduced" and r["exact"] for r in red), red


def test_kill9_at_a_measuring_round_every_survivor_raises_naming_it(world):
    master, peers = world(4)
    victim, survivors = peers[1], peers[:1] + peers[2:]
    # The victim _exit()s as its second measuring round starts (after its first
    # pair was measured): its partner sees the connection die, the others learn
    # of it from the master mid-measurement or when they report.
    for p in peers:
        spec = dict(probe_bytes=1 << 20, exit_in_round=1 if p is victim else -1)
        p.send("optimize " + json.dumps(spec))
    replies = [s.recv(30) for s in survivors]
    for r in replies:
        assert r["event"] == "peer_failure" and r["ids"] == [victim.id], replies
    print("kill at round 1: " + " | ".join(r["msg"] for r in replies))
    assert master.stats()["topo_orders"] == 0 and master.stats()["topo_aborts"] == 1
    _survivors_recover(master, survivors, victim.id)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill9", "sigstop"])
def test_signal_mid_measurement_every_survivor_raises_naming_it(world, sig):
    hb_timeout = 1.0
    master, peers = world(4, heartbeat_timeout=hb_timeout)
    victim, survivors = peers[2], peers[:2] + peers[3:]
    # 1 GiB each way per pair: the measurement takes seconds on loopback, and
    # the victim is hit 0.3 s in.
    for p in peers:
        p.send("optimize " + json.dumps(dict(probe_bytes=1 << 30, timeout=60)))
    time.sleep(0.3)
    t0 = time.time()
    os.kill(victim.proc.pid, sig)
    try:
        replies = [s.recv(30) for s in survivors]
        for r in replies:
            assert r["event"] == "peer_failure" and r["ids"] == [victim.id], replies
        elapsed = max(r["t"] for r in replies) - t0
        print(f"{signal.Signals(sig).name} mid-measurement: every survivor raised within "
              f"{elapsed:.2f} s: " + " | ".join(r["msg"] for r in replies))
        assert elapsed < hb_timeout + 10, elapsed  # bounded by the heartbeat timeout, no hang
        _survivors_recover(master, survivors, victim.id)
    finally:
        if sig == signal.SIGSTOP:
            os.kill(victim.proc.pid, signal.SIGKILL)


# ---- shaped links: 4 network namespaces on a bridge -----------------------------------

class Bridge:
    """n namespaces, each with a veth into one bridge here: here .254, ns k .k+1 of a /24.
    slow(a, b, rate): traffic between namespaces a and b (both ways) is capped at rate."""

    def __init__(self, n: int) -> None:
        tag = os.getpid() % 10000
        self.net = f"10.{200 + os.getpid() % 50}.{tag % 250}"
        self.br = f"pyb{tag}"
        self.here = f"{self.net}.254"
        self.names = [f"pyhpc-b{tag}-{k}" for k in range(n)]
        self.ips = [f"{self.net}.{k + 1}" for k in range(n)]
        self.ifs = [f"pyb{tag}v{k}" for k in range(n)]
        self.shaped: set[int] = set()
        self.run(f"ip link add {self.br} type bridge")
        self.run(f"ip addr add {self.here}/24 dev {self.br}")
        self.run(f"ip link set {self.br} up")
        for k, name in enumerate(self.names):
            self.run(f"ip netns add {name}")
            self.run(f"ip link add {self.ifs[k]} type veth peer name eth0 netns {name}")
            self.run(f"ip link set {self.ifs[k]} master {self.br}")
            self.run(f"ip link set {self.ifs[k]} up")
            self.ns(k, f"ip addr add {self.ips[k]}/24 dev eth0")
            self.ns(k, "ip link set eth0 up")
            self.ns(k, "ip link set lo up")

    @staticmethod
    def run(cmd: str) -> None:
        r = subprocess.run(cmd.split(), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd}: {r.stderr.strip()}")

    def ns(self, k: int, cmd: str) -> None:
        self.run(f"ip netns exec {self.names[k]} {cmd}")

    def slow(self, a: int, b: int, rate: str) -> None:
        """Traffic between namespaces a and b, both ways, through an htb class capped at
        `rate` (u32 filters on the destination IP; everything else in an uncapped class).
        htb, not netem, because netem is missing from some kernels (this one's included)."""
        for src, dst in ((a, b), (b, a)):
            if src not in self.shaped:
                self.ns(src, "tc qdisc add dev eth0 root handle 1: htb default 10 r2q 100000")
                self.ns(src, "tc class add dev eth0 parent 1: classid 1:10 htb rate 100gbit")
                self.ns(src, f"tc class add dev eth0 parent 1: classid 1:20 htb rate {rate} "
                             f"ceil {rate}")
                self.shaped.add(src)
            self.ns(src, f"tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip "
                         f"dst {self.ips[dst]}/32 flowid 1:20")

    def close(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.br], capture_output=True)


@pytest.fixture
def bridge():
    why = netns_unavailable("tc")
    if why:
        pytest.skip(why)
    br = Bridge(4)
    try:
        yield br
    finally:
        br.close()


def test_shaped_links_the_chosen_ring_avoids_the_slow_pairs(bridge, tmp_path):
    # The rank-order ring 0-1-2-3 crosses the slow pairs of ranks (0, 1) and (2, 3); the
    # ring 0-2-1-3 (links 0-2, 2-1, 1-3, 3-0) avoids both: the only one that does.
    master = Master(host=bridge.here, secret=SECRET, heartbeat_timeout=2.0).start()
    peers = []
    try:
        for k in range(4):
            peers.append(TopoPeer(master.address, tmp_path, netns=bridge.names[k],
                                  advertise=bridge.ips[k]))
            peers[-1].netns_index = k
        for p in peers:
            p.send("grow 4")
        ups = [p.recv(30) for p in peers]
        assert all(u["event"] == "update" and u["world"] == 4 for u in ups), ups
        peers.sort(key=lambda p: ups[0]["ids"].index(p.id))  # rank order
        try:  # slow the links rank 0 - rank 1 and rank 2 - rank 3
            bridge.slow(peers[0].netns_index, peers[1].netns_index, "40mbit")
            bridge.slow(peers[2].netns_index, peers[3].netns_index, "40mbit")
        except RuntimeError as e:
            pytest.skip(f"tc cannot shape here: {e}")
        slow = {frozenset((peers[0].id, peers[1].id)), frozenset((peers[2].id, peers[3].id))}

        count, reps = 1 << 19, 3  # 4 MiB of float64
        before = allreduce(peers, count, reps)
        assert all(r["event"] == "reduced" and r["exact"] for r in before), before

        res = optimize(peers, probe_bytes=1 << 20)
        rep = check_report(res, peers)
        order = rep["order"]
        links = {frozenset((order[i], order[(i + 1) % 4])) for i in range(4)}
        assert not links & slow, (order, slow)
        ids = rep["ids_matrix"]
        bw = np.array(rep["bandwidth"])
        link = lambda a, b: min(bw[ids.index(a), ids.index(b)], bw[ids.index(b), ids.index(a)])
        slow_bw = [link(*sorted(s)) for s in slow]
        fast_bw = [link(a, b) for a, b in itertools.combinations(ids, 2)
                   if frozenset((a, b)) not in slow]
        assert max(slow_bw) < min(fast_bw), (slow_bw, fast_bw)

        after = allreduce(peers, count, reps)
        assert all(r["event"] == "reduced" and r["exact"] for r in after), after
        t_before = np.median([max(r["times"][k] for r in before) for k in range(reps)])
        t_after = np.median([max(r["times"][k] for r in after) for k in range(reps)])
        print(f"\nshaped links (ranks 0-1 and 2-3 capped at 40 Mbit/s): rank order "
              f"{[p.id for p in peers]}, optimized ring {order}; optimize_topology took "
              f"{max(r['seconds'] for r in res):.2f} s")
        print("slow links measured: " + ", ".join(f"{x / 1e6:.1f} MB/s" for x in slow_bw)
              + f"; other links: {min(fast_bw) / 1e6:.0f}..{max(fast_bw) / 1e6:.0f} MB/s")
        print(f"slowest ring link {rep['before'] / 1e6:.1f} -> {rep['after'] / 1e6:.1f} MB/s; "
              f"all_reduce of 4 MiB (float64, median of {reps}): {t_before * 1e3:.0f} ms "
              f"before, {t_after * 1e3:.0f} ms after")
    finally:
        for p in peers:
            p.stop()
        master.stop()
