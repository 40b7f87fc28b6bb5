"""A looping pyhpc.ccl peer process and its driver, for the fault tests
(partition, master restart, join and death storms).

The peer joins, waits for ``world`` members, then loops ``update_topology();
all_reduce(ones)`` for ``seconds``, printing one JSON line per event: ``ready``;
``result`` whenever the world size changes or a sum is wrong (``ok``: every
element equals the world size); ``failure`` (PeerFailure, with the ids);
``lost`` (any other pyhpc error, with ``input_intact``: the input still all
ones); ``rejoined``; ``end``. On ``lost`` it stops (``on_lost="stop"``) or
makes a new Communicator and joins again (``"rejoin"``: a restarted master).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

PEER = r"""
import json, sys, time
import numpy as np
from pyhpc.ccl import Communicator, PeerFailure
from pyhpc.errors import Error
addr, secret, world, seconds, on_lost = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def out(**kw):
    print(json.dumps(dict(kw, t=time.time())), flush=True)
def join():
    while True:
        try:
            c = Communicator(addr, secret=secret, heartbeat_interval=0.05, update_timeout=8.0)
            c.connect()
            break
        except Error:
            time.sleep(0.05)  # the master is not (yet, or again) there
    c.op_timeout = 3.0
    while c.world_size < world:
        c.update_topology()
    return c
c = join()
out(event="ready", id=c.id)
buf = np.ones(1 << 16, np.float32)
res = np.zeros_like(buf)
size, end = None, time.monotonic() + seconds
while time.monotonic() < end:
    try:
        u = c.update_topology()
        c.all_reduce(buf, out=res)
    except PeerFailure as e:
        out(event="failure", ids=e.peer_ids, msg=str(e)[:300])
        continue
    except Error as e:
        out(event="lost", type=type(e).__name__, msg=str(e)[:200],
            input_intact=bool((buf == 1.0).all()))
        if on_lost == "stop":
            break
        c.close()
        c = join()
        out(event="rejoined", id=c.id, world=c.world_size)
        size = None
        continue
    ok = bool((res == u.world_size).all())
    if u.world_size != size or not ok:
        size = u.world_size
        out(event="result", world=size, ok=ok, ids=[p.id for p in u.peers], dead=u.dead,
            epoch=u.epoch)
out(event="end")
"""


def peer_argv(address: str, secret: str, world: int, seconds: float, on_lost: str = "stop") -> list:
    return [sys.executable, "-c", PEER, address, secret, str(world), str(seconds), on_lost]


class Proc:
    """A child process whose stdout lines (JSON, else ``{"event": "text"}``) are events."""

    def __init__(self, argv: list, cwd) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd)
        self.events: queue.Queue = queue.Queue()
        self.seen: list = []
        self.mark = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "text", "line": line.strip()})
        self.events.put({"event": "eof"})

    def expect(self, predicate, timeout: float) -> dict:
        """The next event that satisfies predicate, within timeout seconds."""
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

    def drain(self) -> None:
        while not self.events.empty():
            self.seen.append(self.events.get())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
