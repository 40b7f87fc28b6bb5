"""ccl_recovery: how fast pyhpc.ccl's survivors notice a dead or frozen peer and carry on.

Three peer processes on 127.0.0.1 loop ``update_topology(); all_reduce(4 MiB)``
under a master that runs in this process. A repetition kills one (``kill -9``)
or freezes one (``SIGSTOP``) at a random moment of that loop, and each survivor
reports two times, both measured from the signal:

- *detection*: its all-reduce raised PeerFailure, or an update reported the peer dead;
- *recovery*: its first all-reduce over the survivors succeeded (checked: the
  sum of ones equals the new world size).

Then a fresh peer joins and the world is three again. The goals (from the
issue): a killed peer detected in <= 0.5 s, a frozen one in <= 2 s with the
default heartbeat timeout (1.5 s), recovery within those times. No baseline: MPI
has no way to go on without a dead rank. Each row's seconds are every
survivor's time of every repetition (median and spread in the table).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .harness import Benchmark, Context, Measurement

PEER = r"""
import json, sys, time
import numpy as np
from pyhpc.ccl import Communicator, PeerFailure
addr, secret, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Communicator(addr, secret=secret).connect()
def out(**kw):
    print(json.dumps(kw), flush=True)
while c.world_size < world:
    c.update_topology(timeout=60)
out(event="ready", id=c.id)
buf = np.ones(1 << 20, np.float32)
res = np.empty_like(buf)
t_detect = None
size = c.world_size
while True:
    u = c.update_topology(timeout=60)
    if u.dead and t_detect is None:
        t_detect = time.time()
    if u.world_size != size:
        size = u.world_size
        if u.joined:
            out(event="world", id=c.id, world=size)
    try:
        c.all_reduce(buf, out=res)
    except PeerFailure as e:
        if t_detect is None:
            t_detect = time.time()
        continue
    if res[0] != size or res[-1] != size:
        out(event="error", msg=f"sum {res[0]} with {size} peers")
    if t_detect is not None:
        out(event="recovered", id=c.id, t_detect=t_detect, t_ok=time.time(), world=size)
        t_detect = None
"""


class Peer:
    def __init__(self, address: str, secret: str, world: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, address, secret, str(world)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     cwd=tempfile.gettempdir())  # not a source checkout
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def expect(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"ccl_recovery: no {event!r} from a peer in {timeout} s") from None
            if ev["event"] == "error":
                raise RuntimeError(f"ccl_recovery: a peer reported {ev['msg']}")
            if ev["event"] == event:
                return ev

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run(ctx: Context) -> list[Measurement]:
    from pyhpc.ccl import DEFAULT_HEARTBEAT_TIMEOUT, Master

    world = 3
    reps = {"kill -9": 3 if ctx.quick else 12, "SIGSTOP": 1 if ctx.quick else 5}
    secret = "ccl-recovery"
    master = Master(secret=secret, heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT).start()
    rng = random.Random(1)
    peers = [Peer(master.address, secret, world) for _ in range(world)]
    times: dict[str, dict[str, list[float]]] = {k: {"detection": [], "recovery": []} for k in reps}
    try:
        for p in peers:
            p.expect("ready", 60)
        for how, n in reps.items():
            for i in range(n):
                ctx.progress(f"{how} {i + 1}/{n}")
                time.sleep(rng.uniform(0.05, 0.25))  # a random moment of the survivors' loop
                victim, survivors = peers[-1], peers[:-1]
                t0 = time.time()
                victim.proc.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
                for p in survivors:
                    ev = p.expect("recovered", 30)
                    times[how]["detection"].append(ev["t_detect"] - t0)
                    times[how]["recovery"].append(ev["t_ok"] - t0)
                victim.kill()
                fresh = Peer(master.address, secret, world)
                peers = survivors + [fresh]
                for p in survivors:
                    p.expect("world", 60)
                fresh.expect("ready", 60)
    finally:
        for p in peers:
            p.kill()
        master.stop()
    rows = []
    for how, what in times.items():
        for kind, seconds in what.items():
            rows.append(Measurement(f"{how}: {kind}", f"pyhpc.ccl, {world} peers, 4 MiB all-reduce "
                                    f"loop, heartbeat timeout {DEFAULT_HEARTBEAT_TIMEOUT:g} s",
                                    "pyhpc", seconds))
    return rows


BENCHMARK = Benchmark(
    name="ccl_recovery",
    ranks=1,
    description="pyhpc.ccl: seconds from kill -9 / SIGSTOP of one of 3 peers (processes on "
                "127.0.0.1, looping a 4 MiB all-reduce) until each survivor detects it and until "
                "its all-reduce over the survivors succeeds; goals <= 0.5 s (killed), <= 2 s (frozen)",
    x_label="event",
    run=run,
)
