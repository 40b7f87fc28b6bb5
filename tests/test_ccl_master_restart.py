"""pyhpc.ccl when the master dies (kill -9) and is restarted on the same address.

What survives, as the README documents: the peers and their data. The run's
membership does not: a new master starts a new run (epoch 0, new peer ids).
Every peer's pending call raises pyhpc.PeerError at once (its connection to
the master closed), its buffers untouched; it makes a new Communicator,
rejoins the restarted master, and the all-reduces go on, exact.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(90)

SECRET = "restart-secret"

PEER = r"""
import json, sys, time
import numpy as np
from pyhpc.ccl import Communicator, PeerFailure
from pyhpc.errors import Error
addr, secret, world, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def out(**kw):
    print(json.dumps(dict(kw, t=time.time())), flush=True)
def join():
    while True:
        try:
            c = Communicator(addr, secret=secret, update_timeout=20.0).connect()
            break
        except Error:
            time.sleep(0.05)  # the master is not back yet
    while c.world_size < world:
        c.update_topology()
    return c
c = join()
out(event="ready", id=c.id)
buf = np.full(1 << 18, 1.0, np.float32)
res = np.zeros_like(buf)
size, end = None, time.monotonic() + seconds
while time.monotonic() < end:
    try:
        u = c.update_topology()
        c.all_reduce(buf, out=res)
    except PeerFailure as e:
        out(event="failure", ids=e.peer_ids)
        continue
    except Error as e:
        out(event="lost", type=type(e).__name__, msg=str(e)[:200],
            input_intact=bool((buf == 1.0).all()))
        c.close()
        c = join()
        out(event="rejoined", id=c.id, world=c.world_size)
        size = None
        continue
    ok = bool((res == u.world_size).all())
    if u.world_size != size or not ok:
        size = u.world_size
        out(event="result", world=size, ok=ok, epoch=u.epoch)
out(event="end")
c.leave()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, argv, cwd) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd)
        self.events: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "text", "line": line.strip()})
        self.events.put({"event": "eof"})

    def expect(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(ev)
            if predicate(ev):
                return ev
            if ev["event"] == "eof":
                break
        err = self.proc.stderr.read()[-2000:] if self.proc.poll() is not None else "(running)"
        raise AssertionError(f"no matching event in {timeout} s; saw {self.seen[-8:]}; "
                             f"stderr: {err}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_master(port: int, secret_file, cwd) -> Proc:
    m = Proc([sys.executable, "-m", "pyhpc", "master", "--host", "127.0.0.1", "--port",
              str(port), "--secret-file", str(secret_file)], cwd)
    m.expect(lambda e: e["event"] == "text" and "listening" in e["line"], 20)
    return m


def test_master_killed_and_restarted_peers_rejoin_and_reduce_exactly(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    port = free_port()
    address = f"127.0.0.1:{port}"
    master = start_master(port, secret_file, tmp_path)
    peers = [Proc([sys.executable, "-c", PEER, address, SECRET, "3", "30"], tmp_path)
             for _ in range(3)]
    try:
        first_ids = {p.expect(lambda e: e["event"] == "ready", 20)["id"] for p in peers}
        for p in peers:
            p.expect(lambda e: e["event"] == "result" and e["world"] == 3, 20)
        t0 = time.time()
        master.proc.send_signal(signal.SIGKILL)
        master.proc.wait()
        for p in peers:
            lost = p.expect(lambda e: e["event"] == "lost", 10)
            assert lost["type"] == "PeerError" and lost["input_intact"], lost
            assert lost["t"] - t0 < 2.0, lost["t"] - t0  # a closed connection, not a timeout
        master = start_master(port, secret_file, tmp_path)
        new_ids = set()
        for p in peers:
            back = p.expect(lambda e: e["event"] == "rejoined", 30)
            assert back["world"] == 3, back
            new_ids.add(back["id"])
            res = p.expect(lambda e: e["event"] == "result", 20)
            assert res["ok"] and res["world"] == 3, res
        assert len(new_ids) == 3 and len(first_ids) == 3
        for p in peers:  # nothing else went wrong along the way
            assert not [e for e in p.seen if e["event"] in ("failure", "eof")
                        or e["event"] == "result" and not e["ok"]], p.seen
    finally:
        for p in peers:
            p.kill()
        master.kill()
