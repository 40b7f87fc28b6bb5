"""pyhpc.ccl membership with real peer processes on 127.0.0.1: join, late join,
graceful leave, kill -9 and SIGSTOP detection. The master runs in this process
(a C++ thread); each peer is a `python -c` child driven over stdin/stdout.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyhpc.ccl import Master

pytestmark = pytest.mark.timeout(60)

SECRET = "proc-secret"

# One peer: reads commands from stdin, answers each with one JSON line.
DRIVER = r"""
import json, sys, time
from pyhpc.ccl import Communicator
addr, secret, hb = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = Communicator(addr, secret=secret, heartbeat_interval=hb).connect()
def out(**kw):
    print(json.dumps(kw), flush=True)
def report(u):
    out(event="update", epoch=u.epoch, world=u.world_size, rank=u.rank,
        ids=[p.id for p in u.peers], joined=u.joined, dead=u.dead, left=u.left,
        t=time.time())
out(event="connected", id=c.id)
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "update":
            report(c.update_topology(timeout=float(cmd[1])))
        elif cmd[0] == "grow":
            n, deadline = int(cmd[1]), time.monotonic() + 15
            while True:
                u = c.update_topology(timeout=15)
                if u.world_size >= n or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            report(u)
        elif cmd[0] == "failed":
            deadline = time.monotonic() + float(cmd[1])
            while not c.failed_peers() and time.monotonic() < deadline:
                time.sleep(0.002)
            out(event="failed", ids=c.failed_peers(), t=time.time())
        elif cmd[0] == "leave":
            c.leave()
            out(event="left")
            break
    except Exception as e:
        out(event="error", type=type(e).__name__, msg=str(e))
"""


# The drivers' argv: address, secret, heartbeat interval, this directory (to import
# the test modules' helpers), then what a subclass's driver adds.
HERE = os.path.dirname(os.path.abspath(__file__))


class PeerProc:
    """A peer process running ``DRIVER`` (a subclass names its own), driven over
    stdin/stdout; ``extra`` are the driver's further arguments, ``prefix`` runs it
    under another command (``ip netns exec NAME``)."""

    DRIVER = DRIVER

    def __init__(self, address: str, cwd, heartbeat: float = 0.05, *extra, prefix=()) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", self.DRIVER, address, SECRET, str(heartbeat), HERE,
             *map(str, extra)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=cwd)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        hello = self.recv(20)
        assert hello["event"] == "connected", hello
        self.id = hello["id"]

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 15) -> dict:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"peer exited: {self.proc.stderr.read()}")
        return json.loads(line)

    def request(self, command: str, timeout: float = 15) -> dict:
        self.send(command)
        return self.recv(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def start_world(masters, procs, peer_class, tmp_path, n, heartbeat_timeout=2.0, recv_timeout=15):
    """A master and n peer processes of ``peer_class`` grown into one world of n (both
    recorded in ``masters``/``procs`` for cleanup); (master, peers, their update events)."""
    master = Master(secret=SECRET, heartbeat_timeout=heartbeat_timeout).start()
    masters.append(master)
    peers = [peer_class(master.address, tmp_path) for _ in range(n)]
    procs.extend(peers)
    for p in peers:
        p.send(f"grow {n}")
    ups = [p.recv(recv_timeout) for p in peers]
    assert all(u["event"] == "update" and u["world"] == n for u in ups), ups
    return master, peers, ups


@pytest.fixture
def cluster(tmp_path):
    """start(n) -> n peer processes joined into one world of n."""
    masters, procs = [], []

    def start(n, heartbeat_timeout=2.0):
        return start_world(masters, procs, PeerProc, tmp_path, n, heartbeat_timeout)

    def spawn(master):
        p = PeerProc(master.address, tmp_path)
        procs.append(p)
        return p

    start.spawn = spawn
    yield start
    for p in procs:
        p.stop()
    for m in masters:
        m.stop()


def collective(peers, command="update 10"):
    for p in peers:
        p.send(command)
    return [p.recv() for p in peers]


def test_three_processes_join_late_joiner_and_leave(cluster):
    master, peers, ups = cluster(3)
    assert sorted(u["rank"] for u in ups) == [0, 1, 2]
    assert len({tuple(u["ids"]) for u in ups}) == 1  # one agreed world
    assert sorted(ups[0]["ids"]) == sorted(p.id for p in peers)
    for p, u in zip(peers, ups):
        assert u["ids"][u["rank"]] == p.id

    # A 4th peer connects and asks to join: pending until the members update.
    fourth = cluster.spawn(master)
    fourth.send("update 10")
    time.sleep(0.3)
    assert fourth.lines.empty()
    assert master.stats()["pending"] == [fourth.id]
    ups = collective(peers)
    ups.append(fourth.recv())
    assert all(u["world"] == 4 for u in ups), ups
    assert all(u["joined"] == [fourth.id] for u in ups[:3])
    assert ups[3]["rank"] == 3 and len({u["epoch"] for u in ups}) == 1
    old_ranks = {p.id: u["rank"] for p, u in zip(peers, ups)}

    # Graceful leave: reported as left, not dead; survivors keep their order.
    leaver = peers.pop(0)
    assert leaver.request("leave")["event"] == "left"
    survivors = peers + [fourth]
    ups = collective(survivors)
    assert all(u["world"] == 3 and u["left"] == [leaver.id] and u["dead"] == [] for u in ups)
    # survivors keep their relative order (ranks follow join order, not spawn order)
    old_ranks[fourth.id] = 3
    new_ranks = {p.id: u["rank"] for p, u in zip(survivors, ups)}
    by_old = sorted(new_ranks, key=lambda pid: old_ranks[pid])
    assert [new_ranks[pid] for pid in by_old] == [0, 1, 2], (old_ranks, new_ranks)
    assert master.stats()["failures"] == []


def test_kill9_detected_and_reported(cluster):
    master, peers, _ = cluster(3)
    victim, survivors = peers[1], [peers[0], peers[2]]
    for s in survivors:
        s.send("failed 5")
    t_kill = time.time()
    os.kill(victim.proc.pid, signal.SIGKILL)
    notices = [s.recv() for s in survivors]
    failures = master.stats()["failures"]
    assert [f[0] for f in failures] == [victim.id]
    detect_s = failures[0][2] - t_kill
    notify_s = max(n["t"] for n in notices) - t_kill
    assert all(n["ids"] == [victim.id] for n in notices), notices
    assert detect_s < 0.5 and notify_s < 0.5, (detect_s, notify_s)
    t0 = time.time()
    ups = collective(survivors)
    update_s = time.time() - t0
    assert all(u["world"] == 2 and u["dead"] == [victim.id] for u in ups), ups
    assert sorted(u["rank"] for u in ups) == [0, 1]
    print(f"kill -9: master detected in {detect_s * 1e3:.1f} ms, survivors notified in "
          f"{notify_s * 1e3:.1f} ms, update {update_s * 1e3:.1f} ms")


def test_sigstop_detected_within_heartbeat_timeout(cluster):
    timeout = 1.0
    master, peers, _ = cluster(3, heartbeat_timeout=timeout)
    victim, survivors = peers[2], peers[:2]
    # The survivors ask for an update first: it cannot complete while the
    # frozen peer still counts as alive, and completes once it is declared dead.
    for s in survivors:
        s.send("update 10")
    time.sleep(0.1)
    t_stop = time.time()
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        ups = [s.recv(10) for s in survivors]
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    failures = master.stats()["failures"]
    assert [f[0] for f in failures] == [victim.id]
    detect_s = failures[0][2] - t_stop
    update_s = max(u["t"] for u in ups) - t_stop
    assert all(u["event"] == "update" and u["world"] == 2 and u["dead"] == [victim.id]
               for u in ups), ups
    assert timeout - 0.5 < detect_s < timeout + 1.0, detect_s  # not early; late only by scheduling
    # Woken up, the victim finds itself cut off (the master closed its socket).
    err = victim.request("update 5")
    assert err["event"] == "error" and err["type"] in ("PeerError", "TimeoutError"), err
    print(f"SIGSTOP: declared dead after {detect_s * 1e3:.0f} ms (timeout {timeout} s), "
          f"survivors' update done after {update_s * 1e3:.0f} ms")
