"""pyhpc.ccl membership with real peer processes on 127.0.0.1: join, late join,
graceful leave, kill -9 and SIGSTOP detection. The master runs in this process
(a C++ thread); each peer is a `python -c` child driven over stdin/stdout.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyhpc.ccl import Master

pytestmark = pytest.mark.timeout(60)

SECRET = "proc-secret"

# One peer: the command loop of ccl_driver.py, plus `failed T` (wait up to T s
# for the master to report a failed peer).
DRIVER = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
from ccl_driver import connect, out, serve
c = connect()
def failed(arg):
    deadline = time.monotonic() + float(arg)
    while not c.failed_peers() and time.monotonic() < deadline:
        time.sleep(0.002)
    out(event="failed", ids=c.failed_peers(), t=time.time())
serve(c, {"failed": failed})
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


def netns_unavailable(*tools: str) -> str | None:
    """Why this test cannot make network namespaces here (None: it can); ``tools``:
    further iproute2 commands it needs (``tc``)."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in ("ip", *tools) if shutil.which(t) is None]
    if missing:
        return f"needs iproute2 ({', '.join(missing)})"
    name = f"pyhpc-probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class Worlds:
    """The masters and peer processes one test starts; close() stops them all."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path, self.masters, self.procs = tmp_path, [], []

    def start(self, make, n, heartbeat_timeout=2.0, recv_timeout=15):
        """A master and n peers made by ``make(address, cwd)``, grown into one world
        of n: (master, peers, their update events)."""
        master = Master(secret=SECRET, heartbeat_timeout=heartbeat_timeout).start()
        self.masters.append(master)
        peers = [self.spawn(make, master) for _ in range(n)]
        for p in peers:
            p.send(f"grow {n}")
        ups = [p.recv(recv_timeout) for p in peers]
        assert all(u["event"] == "update" and u["world"] == n for u in ups), ups
        return master, peers, ups

    def spawn(self, make, master):
        p = make(master.address, self.tmp_path)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        for m in self.masters:
            m.stop()


@pytest.fixture
def cluster(tmp_path):
    """start(n) -> n peer processes joined into one world of n."""
    worlds = Worlds(tmp_path)

    def start(n, heartbeat_timeout=2.0):
        return worlds.start(PeerProc, n, heartbeat_timeout)

    start.spawn = lambda master: worlds.spawn(PeerProc, master)
    yield start
    worlds.close()


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
