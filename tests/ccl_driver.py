"""The command loop of the ccl tests' peer processes (the drivers in
test_ccl_procs.py, test_ccl_allreduce.py, test_ccl_state.py and
test_ccl_topology.py, run with ``python -c``; see PeerProc there).

A driver's argv: master address, secret, heartbeat interval, this directory,
then its own arguments. It reads one command per stdin line and answers each
with one JSON line. Every driver takes ``grow N`` (update until the world has N
members, at most 15 s), ``update [TIMEOUT]`` and ``leave``; a driver adds its
own commands as handlers, each given the rest of the line. An exception in a
command is answered as ``{"event": "error", ...}`` and the loop goes on.
"""

from __future__ import annotations

import json
import sys
import time

from pyhpc.ccl import Communicator


def out(**kw) -> None:
    print(json.dumps(kw), flush=True)


def connect(**kw) -> Communicator:
    """The peer's Communicator (``kw``: further constructor arguments), connected,
    announced as ``{"event": "connected", "id": ...}``."""
    c = Communicator(sys.argv[1], secret=sys.argv[2], heartbeat_interval=float(sys.argv[3]),
                     **kw).connect()
    out(event="connected", id=c.id)
    return c


def report(c: Communicator, u) -> None:
    out(event="update", epoch=u.epoch, world=u.world_size, rank=u.rank,
        ids=[p.id for p in u.peers], joined=u.joined, dead=u.dead, left=u.left,
        port=c.data_port, t=time.time())


def serve(c: Communicator, handlers: dict | None = None) -> None:
    handlers = handlers or {}
    for line in sys.stdin:
        name, _, arg = line.strip().partition(" ")
        try:
            if name == "grow":
                n, deadline = int(arg), time.monotonic() + 15
                while True:
                    u = c.update_topology(timeout=15)
                    if u.world_size >= n or time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
                report(c, u)
            elif name == "update":
                report(c, c.update_topology(timeout=float(arg) if arg else 15))
            elif name == "leave":
                c.leave()
                out(event="left")
                break
            else:
                handlers[name](arg)
        except Exception as e:
            out(event="error", type=type(e).__name__, msg=str(e))
