"""pyhpc.ccl when the master dies (kill -9) or freezes (SIGSTOP) and is restarted
on the same address.

What survives, as the README documents: the peers and their data. The run's
membership does not: a new master starts a new run (epoch 0, new peer ids).
Every peer's pending call raises pyhpc.PeerError at once (its connection to
the master closed), its buffers untouched; it makes a new Communicator,
rejoins the restarted master, and the all-reduces go on, exact.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import pytest

from ccl_loop_peer import Proc, peer_argv

pytestmark = pytest.mark.timeout(90)

SECRET = "restart-secret"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_master(port: int, secret_file, cwd) -> Proc:
    m = Proc([sys.executable, "-m", "pyhpc", "master", "--host", "127.0.0.1", "--port",
              str(port), "--secret-file", str(secret_file)], cwd)
    m.expect(lambda e: e["event"] == "text" and "listening" in e["line"], 20)
    return m


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill-9", "sigstop"])
def test_master_lost_and_restarted_peers_rejoin_and_reduce_exactly(tmp_path, sig):
    """kill -9: the peers see the connection close. SIGSTOP (a frozen master): the
    peers hear no echo of their heartbeats for 1.5 s (the default heartbeat_timeout)."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    port = free_port()
    address = f"127.0.0.1:{port}"
    master = start_master(port, secret_file, tmp_path)
    peers = [Proc(peer_argv(address, SECRET, 3, 30, on_lost="rejoin"), tmp_path)
             for _ in range(3)]
    try:
        first_ids = {p.expect(lambda e: e["event"] == "ready", 20)["id"] for p in peers}
        for p in peers:
            p.expect(lambda e: e["event"] == "result" and e["world"] == 3, 20)
        t0 = time.time()
        master.proc.send_signal(sig)
        for p in peers:
            lost = p.expect(lambda e: e["event"] == "lost", 10)
            assert lost["type"] == "PeerError" and lost["input_intact"], lost
            # killed: a closed connection, at once; frozen: 1.5 s of silence (+ slack),
            # not an operation's 3 s deadline nor an update's 8 s
            late = 1.5 if sig == signal.SIGKILL else 1.5 + 1.0
            assert lost["t"] - t0 < late, (lost["t"] - t0, lost)
            if sig == signal.SIGSTOP:
                assert "silent" in lost["msg"], lost
        master.kill()  # the frozen one too: its port must be free for the new master
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
