"""pyhpc.ccl: kill -9 at the membership phases (connect, waiting to be admitted,
inside a topology update), with real peer processes on 127.0.0.1. The ring
steps, the commit round and state sync have their own kill tests
(test_ccl_allreduce.py, test_ccl_state.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from test_ccl_procs import SECRET, cluster, collective  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(60)

CONNECT_ONLY = r"""
import sys
from pyhpc.ccl import Communicator
Communicator(sys.argv[1], secret=sys.argv[2]).connect()
"""


def test_kill9_inside_update_topology(cluster):
    """A member killed while it waits in an update: the others' update completes
    without it, reporting it dead."""
    master, peers, _ = cluster(3)
    early, victim, late = peers
    early.send("update 10")
    victim.send("update 10")
    time.sleep(0.2)  # both are waiting for `late`
    os.kill(victim.proc.pid, signal.SIGKILL)
    # (once the master has seen the death: were `late` to ask first, the update would
    # be complete, every member having asked, and legitimately hold the victim)
    deadline = time.monotonic() + 5
    while not master.stats()["failures"] and time.monotonic() < deadline:
        time.sleep(0.005)
    late.send("update 10")
    ups = [early.recv(10), late.recv(10)]
    assert all(u["event"] == "update" and u["world"] == 2 and u["dead"] == [victim.id]
               for u in ups), ups
    assert len({u["epoch"] for u in ups}) == 1
    assert sorted(master.stats()["members"]) == sorted([early.id, late.id])


def test_kill9_of_a_peer_waiting_to_be_admitted(cluster):
    """A joiner killed after authenticating, before the members admit it: the
    next update admits nobody and reports no member dead."""
    master, peers, _ = cluster(2)
    joiner = cluster.spawn(master)
    joiner.send("update 10")
    deadline = time.monotonic() + 10
    while master.stats()["pending"] != [joiner.id] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert master.stats()["pending"] == [joiner.id]
    os.kill(joiner.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while master.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.01)
    ups = collective(peers)
    assert all(u["world"] == 2 and u["joined"] == [] and u["dead"] == [] for u in ups), ups
    assert master.stats()["pending"] == []


def test_kill9_during_connect_does_not_disturb_members(cluster, tmp_path):
    """Processes killed at random moments of connecting (TCP connect, challenge,
    authentication): the members' updates go on, and no half-connected client
    is left pending or admitted."""
    master, peers, _ = cluster(2)
    for delay in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3):
        p = subprocess.Popen([sys.executable, "-c", CONNECT_ONLY, master.address, SECRET],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        time.sleep(0.25 + delay)  # interpreter start-up is ~0.25 s: kill around the connect
        p.kill()
        p.wait()
        ups = collective(peers)
        assert all(u["world"] == 2 and u["dead"] == [] for u in ups), ups
    deadline = time.monotonic() + 5
    while master.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert master.stats()["pending"] == []
    assert len(master.stats()["members"]) == 2
