"""pyhpc.ccl, in one process: SHA-256/HMAC, the wire protocol (round trips and
a decoder fuzz), authentication, version checks, hostile clients, the CLI.

The multi-process membership tests (join, leave, kill -9, SIGSTOP) are in
test_ccl_procs.py.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyhpc
from pyhpc import _ccl
from pyhpc.ccl import Communicator, Master, PeerFailure

pytestmark = pytest.mark.timeout(60)

SECRET = b"test-secret"


# ---- SHA-256 / HMAC-SHA256 ------------------------------------------------------

SHA256_VECTORS = [  # FIPS 180-4 examples (NIST CSRC "SHA256.pdf", SHAVS short messages)
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
     b"lmnopqrsmnopqrstnopqrstu",
     "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]

HMAC_VECTORS = [  # RFC 4231 test cases 1, 2, 3, 4, 6, 7 (HMAC-SHA-256)
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data. "
     b"The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("data,digest", SHA256_VECTORS, ids=lambda v: str(len(v)))
def test_sha256_fips_vectors(data, digest):
    assert _ccl.sha256(data).hex() == digest


@pytest.mark.parametrize("key,data,mac", HMAC_VECTORS)
def test_hmac_sha256_rfc4231_vectors(key, data, mac):
    assert _ccl.hmac_sha256(key, data).hex() == mac


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_sha256_and_hmac_match_hashlib(key, data):
    assert _ccl.sha256(data) == hashlib.sha256(data).digest()
    assert _ccl.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


# ---- the wire protocol ----------------------------------------------------------

NONCE = bytes(range(32))
MAC = bytes(range(100, 132))
MESSAGES = [
    {"type": "challenge", "nonce": NONCE},
    {"type": "auth", "nonce": NONCE, "mac": MAC, "port": 4242, "host": "10.0.0.7"},
    {"type": "auth", "nonce": NONCE, "mac": MAC, "port": 0, "host": ""},
    {"type": "auth_ok", "id": 7, "mac": MAC},
    {"type": "error", "code": 8, "text": "authentication failed"},
    {"type": "heartbeat", "seq": 2**64 - 1},
    {"type": "update_request", "seq": 3},
    {"type": "topology", "epoch": 9, "rank": 1,
     "peers": [(5, "127.0.0.1", 0), (9, "host-b", 65535)], "dead": [3, 4], "left": [8]},
    {"type": "peer_failed", "id": 12, "reason": 2},
    {"type": "leave"},
    {"type": "vote", "epoch": 3, "tag": 2**32 - 1, "seq": 2**64 - 1, "vote": 0},
    {"type": "vote", "epoch": 1, "tag": 0, "seq": 1, "vote": 2},
    {"type": "verdict", "epoch": 4, "tag": 7, "seq": 9, "verdict": 1, "dead": []},
    {"type": "verdict", "epoch": 4, "tag": 7, "seq": 9, "verdict": 2, "dead": [3, 2**64 - 1]},
    {"type": "verdict", "epoch": 4, "tag": 7, "seq": 9, "verdict": 3, "dead": []},
    {"type": "sync_report", "epoch": 2, "seq": 1, "revision": 2**64 - 1, "tensors": [
        (b"bias", "<f4", 4, [3], 12, 7), (b"w\xc3\xa9", "bfloat16", 2, [2, 0, 5], 0, 2**64 - 1),
        (b"x" * 255, "|u1", 1, [], 1, 0)]},
    {"type": "sync_report", "epoch": 1, "seq": 5, "revision": 0, "tensors": []},
    {"type": "sync_plan", "epoch": 3, "seq": 2, "outcome": 1, "revision": 7,
     "fetch": [(0, 4, 2**64 - 1), (4095, 2**64 - 1, 0)]},
    {"type": "sync_plan", "epoch": 3, "seq": 2, "outcome": 1, "revision": 0, "fetch": []},
    {"type": "sync_plan", "epoch": 3, "seq": 2, "outcome": 2, "revision": 0,
     "text": "tensor 'w' differs"},
    {"type": "sync_done", "epoch": 6, "seq": 2**64 - 1, "ok": 1},
    {"type": "sync_done", "epoch": 6, "seq": 1, "ok": 0},
    {"type": "sync_verdict", "epoch": 6, "seq": 1, "verdict": 1, "dead": []},
    {"type": "sync_verdict", "epoch": 6, "seq": 1, "verdict": 2, "dead": [9, 2**64 - 1]},
    # topology optimization
    {"type": "topo_report", "epoch": 2, "seq": 1, "ok": 1, "ids": [3, 2**64 - 1],
     "bandwidth": [10**9, 1], "latency_ns": [2**64 - 1, 50_000]},
    {"type": "topo_report", "epoch": 2, "seq": 2**64 - 1, "ok": 1, "ids": [], "bandwidth": [],
     "latency_ns": []},
    {"type": "topo_report", "epoch": 2, "seq": 3, "ok": 0, "ids": [], "bandwidth": [],
     "latency_ns": []},
    {"type": "topo_result", "epoch": 4, "seq": 1, "outcome": 1, "ids": [7, 3, 9],
     "order": [7, 9, 3], "bandwidth": [0, 5, 6, 7, 0, 8, 9, 10, 0],
     "latency_ns": [0, 1, 2, 3, 0, 4, 5, 6, 0]},
    {"type": "topo_result", "epoch": 4, "seq": 1, "outcome": 1, "ids": [7], "order": [7],
     "bandwidth": [0], "latency_ns": [0]},
    {"type": "topo_result", "epoch": 4, "seq": 1, "outcome": 2, "dead": [3, 2**64 - 1]},
]


def frame(type_code: int, payload: bytes, version: int = _ccl.PROTOCOL_VERSION,
          length: int | None = None, magic: int = _ccl.MAGIC) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("<IHHI", magic, version, type_code, n) + payload


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m["type"])
def test_wire_round_trip(msg):
    data = _ccl.encode(msg)
    assert data[:4] == b"PCCL"
    assert len(data) == _ccl.HEADER_SIZE + struct.unpack_from("<I", data, 8)[0]
    out = _ccl.decode(data)
    assert out.pop("version") == _ccl.PROTOCOL_VERSION
    assert out == msg


_ids = st.integers(1, 2**64 - 1)
_hosts = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-:", max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**64 - 1), st.lists(st.tuples(_ids, _hosts, st.integers(0, 65535)),
                                           min_size=1, max_size=20, unique_by=lambda p: p[0]),
       st.lists(_ids, max_size=10), st.lists(_ids, max_size=10), st.data())
def test_wire_topology_round_trip(epoch, peers, dead, left, data):
    rank = data.draw(st.integers(0, len(peers) - 1))
    msg = {"type": "topology", "epoch": epoch, "rank": rank, "peers": peers, "dead": dead,
           "left": left}
    out = _ccl.decode(_ccl.encode(msg))
    out.pop("version")
    assert out == msg


def _clean_decode(data: bytes) -> None:
    """Either a message or a ProtocolError: nothing else, never a crash."""
    try:
        _ccl.decode(data)
    except pyhpc.ProtocolError:
        pass


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decode_fuzz_random_bytes(data):
    _clean_decode(data)
    _clean_decode(frame(data[0] % 28 if data else 0, data))  # a valid header, random payload


VALID_FRAMES = [_ccl.encode(m) for m in MESSAGES]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID_FRAMES), st.lists(st.tuples(
    st.sampled_from(["truncate", "flip", "length", "append", "count"]),
    st.integers(0, 2**32 - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_decode_fuzz_mutated_frames(base, edits):
    data = bytearray(base)
    for op, where, value in edits:
        if op == "truncate":
            del data[where % (len(data) + 1):]
        elif op == "flip" and data:
            data[where % len(data)] ^= value or 1
        elif op == "length" and len(data) >= 12:
            struct.pack_into("<I", data, 8, where)
        elif op == "append":
            data += bytes([value]) * (where % 64)
        elif op == "count" and len(data) >= 12 + 8 + 16:  # a topology count, say
            struct.pack_into("<I", data, 12 + 8 + 4 * (where % 4), where)
    _clean_decode(bytes(data))


def test_decode_rejects_with_clear_messages():
    with pytest.raises(pyhpc.ProtocolError, match="not a PCCL frame"):
        _ccl.decode(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(pyhpc.ProtocolError, match="truncated frame header"):
        _ccl.decode(b"PCCL")
    with pytest.raises(pyhpc.ProtocolError, match="unknown message type 77"):
        _ccl.decode(frame(77, b""))
    # The cap is judged from the header alone: a 4 GiB claim costs nothing.
    with pytest.raises(pyhpc.ProtocolError, match="exceeds its cap"):
        _ccl.decode(frame(5, b"", length=2**32 - 1))
    with pytest.raises(pyhpc.ProtocolError, match="header says 8"):
        _ccl.decode(frame(5, b"\0" * 4, length=8))
    with pytest.raises(pyhpc.ProtocolError, match="exceeds its cap of 0"):
        _ccl.decode(frame(9, b"x"))  # LEAVE carries nothing
    with pytest.raises(pyhpc.ProtocolError, match="trailing bytes"):
        _ccl.decode(frame(4, struct.pack("<HH", 8, 1) + b"ab"))
    with pytest.raises(pyhpc.ProtocolError, match="frame holds 1 payload bytes"):
        _ccl.decode(_ccl.encode({"type": "leave"}) + b"x")
    with pytest.raises(pyhpc.ProtocolError, match="rank not below"):
        _ccl.decode(_ccl.encode({"type": "topology", "epoch": 1, "rank": 3,
                                 "peers": [(1, "a", 0)], "dead": [], "left": []}))
    with pytest.raises(pyhpc.ProtocolError, match="duplicate peer id"):
        _ccl.decode(_ccl.encode({"type": "topology", "epoch": 1, "rank": 0,
                                 "peers": [(1, "a", 0), (1, "b", 0)], "dead": [], "left": []}))
    v, other = _ccl.PROTOCOL_VERSION, _ccl.PROTOCOL_VERSION + 1
    with pytest.raises(pyhpc.ProtocolError, match=f"version {other}.*version {v}"):
        _ccl.decode(_ccl.encode({"type": "leave"}, version=other))
    with pytest.raises(pyhpc.ProtocolError, match=f"version {v - 1}.*version {v}"):
        _ccl.decode(_ccl.encode({"type": "leave"}, version=v - 1))  # the previous version
    # The data-plane types (10..14, 21, 22, 25, 26) are not control messages.
    for t in (10, 11, 12, 13, 14, 21, 22, 25, 26):
        with pytest.raises(pyhpc.ProtocolError, match=f"unknown message type {t}"):
            _ccl.decode(frame(t, b""))
    vote = {"type": "vote", "epoch": 1, "tag": 0, "seq": 1, "vote": 1}
    with pytest.raises(pyhpc.ProtocolError, match="unknown vote"):
        _ccl.decode(_ccl.encode(dict(vote, vote=3)))
    with pytest.raises(pyhpc.ProtocolError, match="sequence number 0"):
        _ccl.decode(_ccl.encode(dict(vote, seq=0)))
    verdict = {"type": "verdict", "epoch": 1, "tag": 0, "seq": 1, "verdict": 2, "dead": [5]}
    with pytest.raises(pyhpc.ProtocolError, match="unknown verdict"):
        _ccl.decode(_ccl.encode(dict(verdict, verdict=4)))
    with pytest.raises(pyhpc.ProtocolError, match="dead ids in a non-ABORT"):
        _ccl.decode(_ccl.encode(dict(verdict, verdict=1)))
    with pytest.raises(pyhpc.ProtocolError, match="peer id 0"):
        _ccl.decode(_ccl.encode(dict(verdict, dead=[0])))
    with pytest.raises(pyhpc.ProtocolError, match="dead list length"):
        _ccl.decode(frame(16, struct.pack("<QQIBIQ", 1, 1, 0, 2, 2, 5)))  # 2 ids claimed, 1 sent
    with pytest.raises(pyhpc.ProtocolError, match="exceeds its cap"):
        _ccl.decode(frame(15, b"\0" * 22))
    with pytest.raises(pyhpc.InvalidArgumentError):
        _ccl.encode({"type": "auth", "nonce": NONCE, "mac": MAC, "host": "h" * 300})


def test_peer_failure_pickles():
    err = PeerFailure("peers 3, 4 failed", peer_ids=[3, 4])
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, pyhpc.PeerError) and isinstance(back, ConnectionError)
    assert back.peer_ids == [3, 4] and back.status == pyhpc.Status.PEER and str(back) == str(err)


# ---- master and peers in one process --------------------------------------------


def on_all(comms, fn, timeout):
    """fn(i) for every communicator at once, each in its own thread (as separate
    processes would); the first error is raised here."""
    errors = []

    def run(i):
        try:
            fn(i)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(comms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    assert not errors, errors


def collective_update(comms, timeout=10.0):
    """update_topology on every communicator at once (it is collective)."""
    results = [None] * len(comms)

    def update(i):
        results[i] = comms[i].update_topology(timeout=timeout)

    on_all(comms, update, timeout)
    return results


@pytest.fixture
def master():
    m = Master(secret=SECRET, heartbeat_timeout=1.0, handshake_timeout=0.5).start()
    yield m
    m.stop()


def grow(comms, n, timeout=10.0):
    """Every communicator updates until the world has n members: the first admitted
    peer sees a world of 1 and must update again to admit the others."""
    results = [None] * len(comms)

    def until_n(i):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            results[i] = comms[i].update_topology(timeout=timeout)
            if results[i].world_size >= n:
                return
            time.sleep(0.005)

    on_all(comms, until_n, timeout)
    assert all(r is not None and r.world_size == n for r in results), results
    return results


def test_in_process_join_ranks_and_leave(master):
    comms = [Communicator(master, heartbeat_interval=0.05).connect() for _ in range(3)]
    try:
        ups = grow(comms, 3)
        assert sorted(u.rank for u in ups) == [0, 1, 2]
        assert len({tuple(p.id for p in u.peers) for u in ups}) == 1
        assert all(c.world_size == 3 and c.peers[c.rank].id == c.id for c in comms)
        leaver = comms.pop(1)
        leaver.leave()
        ups = collective_update(comms)
        assert all(u.world_size == 2 and u.left == [leaver.id] and u.dead == [] for u in ups)
        assert [c.rank for c in comms] == [0, 1]  # survivors keep their order
        with pytest.raises(pyhpc.InvalidArgumentError, match="left"):
            leaver.update_topology(timeout=1)
    finally:
        for c in comms:
            c.close()


def test_wrong_secret_refused_and_run_undisturbed(master):
    comms = [Communicator(master.address, secret=SECRET).connect() for _ in range(2)]
    try:
        grow(comms, 2)
        with pytest.raises(pyhpc.AuthError, match="wrong secret"):
            Communicator(master.address, secret=b"not-the-secret").connect()
        # A master that does not know the secret is refused by the peer too.
        impostor = Master(secret=b"impostor").start()
        try:
            with pytest.raises(pyhpc.Error, match="wrong secret|does not know the shared"):
                Communicator(impostor.address, secret=SECRET).connect()
        finally:
            impostor.stop()
        ups = collective_update(comms)
        assert all(u.world_size == 2 and not u.dead for u in ups)
        assert master.stats()["rejected"] == 1
    finally:
        for c in comms:
            c.close()


def test_protocol_version_mismatch_is_a_clear_error(master):
    # A peer of another version refuses the master's CHALLENGE ...
    v, other = _ccl.PROTOCOL_VERSION, _ccl.PROTOCOL_VERSION + 1
    with pytest.raises(pyhpc.ProtocolError,
                       match=rf"protocol version mismatch.*version {v}.*version {other}"):
        Communicator(master.address, secret=SECRET, _protocol_version=other).connect()
    # A peer of the previous version (without the commit round) is refused too.
    with pytest.raises(pyhpc.ProtocolError,
                       match=rf"protocol version mismatch.*version {v}.*version {v - 1}"):
        Communicator(master.address, secret=SECRET, _protocol_version=v - 1).connect()
    # ... and the master answers a frame of another version with an ERROR naming both.
    with socket.create_connection((master.host, master.port), timeout=5) as s:
        s.settimeout(5)
        challenge = _read_frame(s)
        assert _ccl.decode(challenge)["type"] == "challenge"
        s.sendall(frame(2, b"\0" * 68, version=other))
        err = _ccl.decode(_read_frame(s))
        assert err["type"] == "error" and err["code"] == int(pyhpc.Status.PROTOCOL)
        assert (f"peer speaks PCCL protocol version {other}, the master speaks version {v}"
                in err["text"])
        assert s.recv(1) == b""  # and drops it


def _read_frame(s: socket.socket) -> bytes:
    head = _read_exact(s, 12)
    return head + _read_exact(s, struct.unpack_from("<I", head, 8)[0])


def _read_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except (socket.timeout, ConnectionResetError):
        return False


def test_garbage_and_silent_clients_are_dropped(master):
    comms = [Communicator(master, heartbeat_interval=0.05).connect() for _ in range(2)]
    hostile = []
    try:
        grow(comms, 2)
        addr = (master.host, master.port)
        garbage = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                     # not PCCL at all
            frame(5, b"", length=2**31),                               # oversized claim
            frame(6, struct.pack("<Q", 1)),                            # UPDATE before AUTH
            frame(2, b"\0" * 10),                                      # truncated AUTH
            frame(2, b"\0" * 64 + struct.pack("<HH", 0, 9) + b"abc"),  # string past its end
            os.urandom(4096),
        ]
        t0 = time.monotonic()
        for g in garbage:
            s = socket.create_connection(addr, timeout=5)
            s.sendall(g)
            hostile.append(s)
        for s in hostile:
            assert _closed_within(s, 2.0), "a garbage client was not dropped"
        garbage_s = time.monotonic() - t0
        silent = [socket.create_connection(addr, timeout=5) for _ in range(3)]
        half = socket.create_connection(addr, timeout=5)
        half.sendall(frame(2, b"\0" * 20, length=68))  # half an AUTH, then nothing
        silent.append(half)
        hostile += silent
        # The run goes on while the silent ones wait out the handshake deadline.
        ups = collective_update(comms)
        assert all(u.world_size == 2 and not u.dead for u in ups)
        t0 = time.monotonic()
        for s in silent:
            assert _closed_within(s, 3.0), "a silent client was not dropped"
        silent_s = time.monotonic() - t0
        assert silent_s < 0.5 + 1.0, silent_s  # the handshake deadline, plus scheduling slack
        ups = collective_update(comms)
        assert all(u.world_size == 2 and not u.dead for u in ups)
        assert master.stats()["rejected"] == len(garbage) + len(silent)
        assert master.stats()["failures"] == []
        print(f"garbage dropped in {garbage_s:.3f} s, silent clients after {silent_s:.3f} s")
    finally:
        for s in hostile:
            s.close()
        for c in comms:
            c.close()


def test_embedded_master_and_late_joiner():
    first = Communicator(secret=SECRET, heartbeat_interval=0.05)  # starts its own master
    try:
        assert first.master is not None
        up = first.update_topology(timeout=5)
        assert (up.world_size, up.rank, up.joined) == (1, 0, [first.id])
        late = Communicator(first.master_address, secret=SECRET).connect()
        assert first.master.stats()["pending"] == [late.id]
        # Pending until the members' next update: the late peer waits ...
        waiter = threading.Thread(target=lambda: late.update_topology(timeout=5))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and first.world_size == 1 and not late.admitted
        up = first.update_topology(timeout=5)  # ... and is admitted here
        waiter.join(5)
        assert up.world_size == 2 and up.joined == [late.id] and late.rank == 1
        late.close()
    finally:
        first.close()


def test_update_timeout_and_retry(master):
    a, b = (Communicator(master, heartbeat_interval=0.05).connect() for _ in range(2))
    try:
        grow([a, b], 2)
        with pytest.raises(pyhpc.TimeoutError, match="no update within"):
            a.update_topology(timeout=0.2)  # b does not take part
        up_b = b.update_topology(timeout=5)  # completes the update a asked for
        up_a = a.update_topology(timeout=5)  # a's retry collects it
        assert up_a.epoch == up_b.epoch and up_a.world_size == 2
    finally:
        a.close()
        b.close()


def test_cli_master(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"cli-secret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyhpc", "master", "--host", "127.0.0.1", "--port", "0",
         "--secret-file", str(secret_file), "--heartbeat-timeout", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pyhpc master listening on 127.0.0.1:"), line
        address = line.split()[-1]
        comm = Communicator(address, secret="cli-secret").connect()
        up = comm.update_topology(timeout=5)
        assert up.world_size == 1
        comm.leave()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "pyhpc", "master", "--secret-file",
                          str(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=30, cwd=tmp_path)
    assert bad.returncode == 2 and "secret-file" in bad.stderr
