"""pyhpc.ccl shared-state sync (Communicator.sync_shared_state): XXH64 and the
tensor hash against known answers, the SYNC_* frames, and real peer processes
on 127.0.0.1: nothing moves when all agree, a lagging peer fetches exactly the
differing arrays, a new joiner fetches everything, the majority rule and its
tie-breaks, structure mismatches raising on every peer, and kill -9 / SIGSTOP
of a source mid-transfer (every survivor raises, arrays unchanged, the retry
converges). Peers are `python -c` children driven over stdin/stdout (the
harness of test_ccl_procs.py); arrays are checked through SHA-256 digests of
their bytes, computed in the peers.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pyhpc
from pyhpc import _ccl
from pyhpc.ccl import Communicator, Master, hash_array

from test_ccl_procs import SECRET, PeerProc, Worlds

pytestmark = pytest.mark.timeout(90)

try:
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None


# ---- XXH64 and the tensor hash ----------------------------------------------------

# (input, seed, XXH64). The first three are the xxHash documentation's examples;
# the rest were computed with the reference implementation (python-xxhash 3.x,
# which wraps the official C code) and cover the short (< 32 bytes), the
# one-stripe and the multi-stripe paths, the 8/4/1-byte tails, and seeds.
XXH64_VECTORS = [
    (b"", 0, 0xEF46DB3751D8E999),
    (b"a", 0, 0xD24EC4F1A98C6E5B),
    (b"abc", 0, 0x44BC2CF5AD770999),
    (b"", 1, 0xD5AFBA1336A3BE4B),
    (b"Nobody inspects the spammish repetition", 0, 0xFBCEA83C8A378BF1),
    (bytes(range(256)), 0, 0x1FACBE8406CD904B),
    (bytes(range(256)), 2654435761, 0xD48195F45908996C),
    (b"x" * 31, 0, 0x60DD0D01083B99F0),
    (b"x" * 32, 0, 0xE2DF261FC2EC30EB),
    (b"0123456789abcdef" * 4 + b"012", 0x123456789ABCDEF0, 0x10FB53D48A3F8126),
]


@pytest.mark.parametrize("data,seed,digest", XXH64_VECTORS, ids=lambda v: str(v)[:12])
def test_xxh64_known_answers(data, seed, digest):
    assert _ccl.xxh64(data, seed) == digest


@pytest.mark.skipif(xxhash is None, reason="the reference xxhash package is not installed (pip "
                                           "install xxhash); the known answers above still ran")
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2**64 - 1))
def test_xxh64_matches_the_reference_implementation(data, seed):
    assert _ccl.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed=seed)


def tensor_hash_by_definition(a: np.ndarray, dtype: str) -> int:
    """The documented definition, spelled out in Python over _ccl.xxh64."""
    raw = a.tobytes()
    chunk = _ccl.HASH_CHUNK
    digests = [_ccl.xxh64(raw[i:i + chunk]) for i in range(0, len(raw), chunk)]
    m = struct.pack("<H", len(dtype)) + dtype.encode() + struct.pack("<I", a.ndim)
    m += b"".join(struct.pack("<Q", d) for d in a.shape) + struct.pack("<Q", a.nbytes)
    m += b"".join(struct.pack("<Q", d) for d in digests)
    return _ccl.xxh64(m)


def test_tensor_hash_definition_and_known_answer():
    a = np.arange(300_000, dtype=np.float32)  # 1.2 MB: two chunks, the second partial
    assert _ccl.HASH_CHUNK == 1 << 20
    h = hash_array(a)
    assert h == tensor_hash_by_definition(a, "<f4")
    if xxhash is not None:  # the same from the reference XXH64
        raw = a.tobytes()
        ds = [xxhash.xxh64_intdigest(raw[i:i + (1 << 20)]) for i in range(0, len(raw), 1 << 20)]
        m = struct.pack("<H", 3) + b"<f4" + struct.pack("<IQQ", 1, 300_000, a.nbytes)
        assert h == xxhash.xxh64_intdigest(m + struct.pack(f"<{len(ds)}Q", *ds))
    assert h == 0x96E15D68E6193B19  # pinned: the definition must not drift
    for b, dt in ((np.zeros((2, 0, 3), np.int16), "<i2"), (np.array(7, np.uint8), "|u1"),
                  (np.ones(5, bool), "|b1"), (np.arange(6, dtype=np.complex64), "<c8")):
        assert hash_array(b) == tensor_hash_by_definition(b, dt)
    # Same bytes, another dtype or shape: another hash.
    assert hash_array(a.view(np.int32)) != h
    assert hash_array(a.reshape(3000, 100)) != h
    with pytest.raises(pyhpc.InvalidArgumentError, match="C-contiguous"):
        hash_array(a[::2])
    with pytest.raises(TypeError):
        hash_array([1, 2])


# ---- the frames (round trips and the fuzz are in test_ccl.py's message list) -------

def test_sync_frames_reject_bad_fields():
    rep = {"type": "sync_report", "epoch": 1, "seq": 1, "revision": 3,
           "tensors": [(b"a", "<f4", 4, [2, 3], 24, 5), (b"b", "|u1", 1, [7], 7, 6)]}
    assert _ccl.decode(_ccl.encode(rep))["tensors"][1] == (b"b", "|u1", 1, [7], 7, 6)

    def bad(msg, match):
        with pytest.raises(pyhpc.ProtocolError, match=match):
            _ccl.decode(_ccl.encode(msg))

    t = rep["tensors"]
    bad(dict(rep, seq=0), "sequence number 0")
    bad(dict(rep, tensors=[t[1], t[0]]), "strictly increasing")
    bad(dict(rep, tensors=[t[0], t[0]]), "strictly increasing")  # a duplicate name
    bad(dict(rep, tensors=[(b"", "<f4", 4, [1], 4, 0)]), "empty tensor name")
    bad(dict(rep, tensors=[(b"a\0b", "<f4", 4, [1], 4, 0)]), "NUL")
    bad(dict(rep, tensors=[(b"a", "<f4", 4, [2, 3], 25, 0)]), "byte size differs")
    bad(dict(rep, tensors=[(b"a", "<f4", 3, [1], 3, 0)]), "bad itemsize")
    bad(dict(rep, tensors=[(b"a", "f 4", 4, [1], 4, 0)]), "bad dtype")
    bad(dict(rep, tensors=[(b"a", "<f4", 4, [2**40, 2**40], 0, 0)]), "too large")
    entry = struct.pack("<H", 1) + b"a" + struct.pack("<H", 3) + b"<f4" + bytes([4, 65])
    payload = struct.pack("<QQQI", 1, 1, 0, 1) + entry + struct.pack("<65Q", *[1] * 65)
    payload += struct.pack("<QQ", 4, 0)
    with pytest.raises(pyhpc.ProtocolError, match="too many dimensions"):  # not encodable
        _ccl.decode(struct.pack("<IHHI", _ccl.MAGIC, _ccl.PROTOCOL_VERSION, 17, len(payload))
                    + payload)
    with pytest.raises(pyhpc.InvalidArgumentError):  # the encoder refuses what cannot fit
        _ccl.encode(dict(rep, tensors=[(b"n" * 256, "<f4", 4, [1], 4, 0)]))
    # A tensor count that claims more entries than the payload holds.
    payload = struct.pack("<QQQI", 1, 1, 0, 4000)
    with pytest.raises(pyhpc.ProtocolError, match="truncated tensor list"):
        _ccl.decode(struct.pack("<IHHI", _ccl.MAGIC, _ccl.PROTOCOL_VERSION, 17, len(payload))
                    + payload)
    plan = {"type": "sync_plan", "epoch": 1, "seq": 1, "outcome": 1, "revision": 0,
            "fetch": [(0, 2, 9), (3, 2, 9)]}
    bad(dict(plan, fetch=[(3, 2, 9), (0, 2, 9)]), "strictly increasing")
    bad(dict(plan, fetch=[(0, 0, 9)]), "peer id 0")
    bad(dict(plan, outcome=3), "unknown outcome")
    bad({"type": "sync_done", "epoch": 1, "seq": 1, "ok": 2}, "neither 0 nor 1")
    verdict = {"type": "sync_verdict", "epoch": 1, "seq": 1, "verdict": 1, "dead": [4]}
    bad(verdict, "dead ids in a COMMIT")
    bad(dict(verdict, verdict=3), "unknown verdict")
    assert _ccl.PROTOCOL_VERSION >= 4  # the SYNC_* frames came with version 4


# ---- bad arguments (one peer: refused before any traffic) ---------------------------

def test_bad_arguments_name_what_is_wrong():
    with Master(secret=SECRET) as master:
        c = Communicator(master, secret=SECRET).connect()
        with pytest.raises(pyhpc.InvalidArgumentError, match="update_topology"):
            c.sync_shared_state({}, 0)
        c.update_topology(timeout=10)
        ok = np.zeros(4, np.float32)
        cases = [
            (([ok], 0), pyhpc.InvalidArgumentError, "state must be a dict"),
            (({1: ok}, 0), pyhpc.InvalidArgumentError, "keys must be str"),
            (({"w": np.zeros((4, 4))[:, 1]}, 0), pyhpc.InvalidArgumentError,
             r"state\['w'\] is not C-contiguous"),
            (({"w": ok}, -1), pyhpc.InvalidArgumentError, "revision"),
            (({"w": ok}, 2**64), pyhpc.InvalidArgumentError, "revision"),
            (({"w": ok}, 1.5), pyhpc.InvalidArgumentError, "revision"),
            (({"n" * 256: ok}, 0), pyhpc.InvalidArgumentError, "1..255 UTF-8 bytes"),
            (({"": ok}, 0), pyhpc.InvalidArgumentError, "1..255 UTF-8 bytes"),
            (({"w": [1.0, 2.0]}, 0), TypeError, r"state\['w'\] is a list"),
            (({"w": np.array(["a"], object)}, 0), pyhpc.InvalidArgumentError,
             r"state\['w'\] has dtype object"),
        ]
        ro = np.zeros(3)
        ro.flags.writeable = False
        cases.append((({"w": ro}, 0), pyhpc.InvalidArgumentError, "read-only"))
        for args, exc, match in cases:
            with pytest.raises(exc, match=match):
                c.sync_shared_state(*args)
        # One peer: it is the majority of itself.
        w = np.arange(5, dtype=np.uint16)
        info = c.sync_shared_state({"w": w, "é" * 127: np.zeros(1)}, 12)
        assert info.revision == 12 and info.fetched == [] and info.bytes_received == 0
        assert np.array_equal(w, np.arange(5))
        assert master.stats()["sync_commits"] == 1
        c.leave()


# ---- real peer processes --------------------------------------------------------------

def make_array(spec) -> np.ndarray:
    """[dtype, shape, seed] -> the array every process builds alike (random bytes)."""
    dtype, shape, seed = spec
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    if dt.kind == "b":
        raw %= 2
    return raw.view(dt).reshape(shape)


def digests(state: dict) -> dict:
    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in state.items()}


STATE_DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[4])
from ccl_driver import connect, out, serve
from pyhpc.ccl import PeerFailure, hash_array
from test_ccl_state import make_array, digests
c = connect()
state = {}
def set_(arg):
    global state
    state = {k: make_array(v) for k, v in json.loads(arg).items()}
    out(event="set")
def sync(arg):
    spec = json.loads(arg)
    before = digests(state)
    try:
        info = c.sync_shared_state(state, spec["revision"], timeout=spec.get("timeout", 30),
                                   _serve_delay=spec.get("delay", 0.0))
    except PeerFailure as e:
        return out(event="peer_failure", ids=e.peer_ids, msg=str(e),
                   unchanged=digests(state) == before)
    except Exception as e:
        return out(event="error", type=type(e).__name__, msg=str(e),
                   unchanged=digests(state) == before)
    out(event="synced", revision=info.revision, fetched=info.fetched,
        received=info.bytes_received, sent=info.bytes_sent,
        sources={k: v for k, v in info.sources.items()}, seconds=info.seconds,
        digests=digests(state), hashes={k: hash_array(v) for k, v in state.items()})
serve(c, {"set": set_, "sync": sync})
"""


class StatePeer(PeerProc):
    DRIVER = STATE_DRIVER


@pytest.fixture
def world(tmp_path):
    """world(n) -> (master, peers in rank order); world.spawn(master) -> a new peer."""
    worlds = Worlds(tmp_path)

    def start(n, heartbeat_timeout=2.0):
        master, peers, ups = worlds.start(StatePeer, n, heartbeat_timeout, recv_timeout=20)
        for p, u in zip(peers, ups):
            p.rank = u["rank"]
        return master, sorted(peers, key=lambda p: p.rank)

    start.spawn = lambda master: worlds.spawn(StatePeer, master)
    yield start
    worlds.close()


def set_state(peer, spec: dict) -> None:
    assert peer.request("set " + json.dumps(spec), 20) == {"event": "set"}


def sync(peers, revisions, timeout=30, **extra):
    """Every peer syncs (revisions[i] for peers[i]; extra: per-peer dicts by index too)."""
    for i, p in enumerate(peers):
        spec = dict(revision=revisions[i], timeout=timeout)
        for k, v in extra.items():
            if v.get(i) is not None:
                spec[k] = v[i]
        p.send("sync " + json.dumps(spec))
    return [p.recv(60) for p in peers]


def state_spec(seeds: dict, dtype="float32", shape=(1000,)) -> dict:
    return {name: [dtype, list(shape), seed] for name, seed in seeds.items()}


def expected(spec: dict) -> dict:
    return digests({k: make_array(v) for k, v in spec.items()})


def nbytes(spec: dict, names) -> int:
    return sum(make_array(spec[n]).nbytes for n in names)


def test_all_agree_moves_nothing(world):
    master, peers = world(3)
    spec = {"w": ["float32", [64, 33], 1], "b": ["int8", [7], 2], "flag": ["bool", [], 3],
            "z": ["complex128", [0, 4], 4], "h": ["float16", [5, 5], 5]}
    for p in peers:
        set_state(p, spec)
    res = sync(peers, [4, 4, 4])
    for r in res:
        assert r["event"] == "synced", res
        assert r["revision"] == 4 and r["fetched"] == [] and r["received"] == r["sent"] == 0
        assert r["digests"] == expected(spec)
    # The same content at another revision: nothing moves, the majority's revision wins.
    res = sync(peers, [4, 5, 5])
    assert all(r["event"] == "synced" and r["revision"] == 5 for r in res), res
    assert all(r["fetched"] == [] and r["received"] == r["sent"] == 0 for r in res), res
    assert master.stats()["sync_commits"] == 2


def test_one_lagging_peer_fetches_exactly_the_differing_arrays(world):
    master, peers = world(3)
    good = {"a": ["float32", [300_000], 1], "b": ["float64", [1000, 3], 2],
            "c": ["uint8", [5000], 3], "d": ["int64", [17], 4]}
    stale = dict(good, b=["float64", [1000, 3], 20], d=["int64", [17], 40])
    set_state(peers[0], good)
    set_state(peers[1], good)
    set_state(peers[2], stale)
    res = sync(peers, [10, 10, 9])
    assert all(r["event"] == "synced" for r in res), res
    assert all(r["revision"] == 10 and r["digests"] == expected(good) for r in res), res
    lag = res[2]
    assert lag["fetched"] == ["b", "d"]
    assert lag["received"] == nbytes(good, ["b", "d"]) == 24_000 + 136
    assert set(lag["sources"].values()) <= {peers[0].id, peers[1].id}
    # The fetches are spread over the up-to-date peers, and they sent exactly that.
    assert len(set(lag["sources"].values())) == 2
    assert res[0]["sent"] + res[1]["sent"] == lag["received"]
    assert res[0]["received"] == res[1]["received"] == 0
    # Everyone's hashes agree.
    assert len({json.dumps(r["hashes"], sort_keys=True) for r in res}) == 1


def test_new_joiner_receives_everything(world):
    master, peers = world(2)
    spec = {"emb": ["bfloat16" if _has_bf16() else "float16", [4096, 64], 1],
            "w": ["float32", [512, 512], 2], "step": ["int64", [], 3]}
    for p in peers:
        set_state(p, spec)
    assert all(r["event"] == "synced" for r in sync(peers, [7, 7]))
    joiner = world.spawn(master)
    zeros = {k: [v[0], v[1], 99] for k, v in spec.items()}
    set_state(joiner, zeros)
    for p in peers + [joiner]:
        p.send("grow 3")
    ups = [p.recv(20) for p in peers + [joiner]]
    assert all(u["event"] == "update" and u["world"] == 3 for u in ups), ups
    everyone = peers + [joiner]
    res = sync(everyone, [7, 7, 0])
    assert all(r["event"] == "synced" and r["revision"] == 7 for r in res), res
    assert res[2]["fetched"] == sorted(spec)
    assert res[2]["received"] == nbytes(spec, spec)
    assert all(r["digests"] == expected(spec) for r in res)


def test_joiners_cannot_outvote_the_members_that_hold_the_state(world):
    """One member that has synced (it holds the run's state) and two fresh peers
    admitted at once, all holding other content: the member's content wins, though
    the joiners are the majority. Only peers that took part in a committed sync vote."""
    master, peers = world(1)
    held = state_spec({"w": 1, "m": 2})
    set_state(peers[0], held)
    assert sync(peers, [3])[0]["event"] == "synced"
    joiners = [world.spawn(master), world.spawn(master)]
    fresh = state_spec({"w": 7, "m": 8})
    for j in joiners:
        set_state(j, fresh)
    everyone = peers + joiners
    for p in everyone:
        p.send("grow 3")
    assert all(p.recv(20)["world"] == 3 for p in everyone)
    res = sync(everyone, [3, 0, 0])
    assert all(r["event"] == "synced" and r["revision"] == 3 for r in res), res
    assert res[0]["received"] == 0 and res[1]["fetched"] == res[2]["fetched"] == ["m", "w"]
    assert all(r["digests"] == expected(held) for r in res)
    # Now all three hold it: a later disagreement is decided by all three again.
    set_state(joiners[1], fresh)
    res = sync(everyone, [4, 4, 4])
    assert all(r["digests"] == expected(held) for r in res), res


def _has_bf16() -> bool:
    try:
        import ml_dtypes  # noqa: F401
        return True
    except ImportError:
        return False


def test_majority_beats_a_higher_revision_then_ties_break_by_revision_then_lowest_id(world):
    master, peers = world(4)
    major = state_spec({"x": 1, "y": 2})
    minor = state_spec({"x": 1, "y": 3})
    for p in peers[:3]:
        set_state(p, major)
    set_state(peers[3], minor)
    # 3 peers hold revision 5, one holds revision 100: the majority wins.
    res = sync(peers, [5, 5, 5, 100])
    assert all(r["event"] == "synced" and r["revision"] == 5 for r in res), res
    assert all(r["digests"] == expected(major) for r in res)
    assert res[3]["fetched"] == ["y"] and res[3]["received"] == 4000

    # 2 vs 2: the higher revision wins.
    a, b = state_spec({"x": 10, "y": 11}), state_spec({"x": 12, "y": 11})
    for p, s in zip(peers, (a, b, a, b)):
        set_state(p, s)
    res = sync(peers, [3, 4, 3, 4])
    assert all(r["event"] == "synced" and r["revision"] == 4 for r in res), res
    assert all(r["digests"] == expected(b) for r in res)
    assert res[0]["fetched"] == res[2]["fetched"] == ["x"]

    # 2 vs 2 at one revision: the content held by the lowest peer id wins.
    lowest = min(p.id for p in peers)
    for p in peers:
        set_state(p, a if p.id in (lowest, max(p.id for p in peers)) else b)
    res = sync(peers, [6] * 4)
    assert all(r["event"] == "synced" and r["revision"] == 6 for r in res), res
    assert all(r["digests"] == expected(a) for r in res)


def test_structure_mismatch_raises_on_every_peer_then_syncs_go_on(world):
    master, peers = world(3)
    base = state_spec({"a": 1, "b": 2})
    cases = [({"a": ["float32", [999], 1]}, "tensor 'a' differs between peers"),
             ({"a": ["float64", [1000], 1]}, "tensor 'a' differs between peers"),
             ({"c": ["float32", [1000], 2]}, "tensor '[bc]' is in the state of peer")]
    for change, match in cases:
        for i, p in enumerate(peers):
            spec = dict(base)
            if i == 1:
                spec.update(change)
                if "c" in change:
                    del spec["b"]
            set_state(p, spec)
        res = sync(peers, [1, 1, 1])
        for r in res:
            assert r["event"] == "error" and r["type"] == "InvalidArgumentError", res
            assert r["unchanged"], res
            assert __import__("re").search(match, r["msg"]), (match, r["msg"])
    assert master.stats()["sync_mismatches"] == 3
    for p in peers:
        set_state(p, base)
    res = sync(peers, [2, 2, 2])
    assert all(r["event"] == "synced" for r in res), res


BIG = {f"layer{i}": ["float32", [2 << 20], 100 + i] for i in range(4)}  # 4 x 8 MiB


def _source_dies_mid_transfer(world, sig, heartbeat_timeout):
    master, peers = world(3, heartbeat_timeout=heartbeat_timeout)
    stale = {k: [v[0], v[1], v[2] + 50] for k, v in BIG.items()}
    set_state(peers[0], BIG)
    set_state(peers[1], BIG)
    set_state(peers[2], stale)
    before = expected(stale)
    # The sources pause 80 ms after each 1 MiB chunk: 32 chunks over two
    # sources take ~1.3 s, and the victim is stopped 0.5 s in (after the
    # hashing and the plan, even on a loaded machine).
    for p, rev in zip(peers, [10, 10, 9]):
        p.send("sync " + json.dumps(dict(revision=rev, timeout=30, delay=0.08)))
    time.sleep(0.5)
    victim, survivors = peers[0], peers[1:]
    t0 = time.time()
    os.kill(victim.proc.pid, sig)
    try:
        replies = [s.recv(30) for s in survivors]
        elapsed = time.time() - t0
        for r in replies:
            assert r["event"] == "peer_failure", replies
            assert r["ids"] == [victim.id], replies
            assert r["unchanged"], replies
        assert elapsed < heartbeat_timeout + 5, elapsed
        print(f"{signal.Signals(sig).name} of a source: survivors raised after {elapsed:.2f} s: "
              + " | ".join(r["msg"] for r in replies))
        st = master.stats()
        assert st["sync_commits"] == 0 and st["sync_aborts"] == 1, st
        for s in survivors:
            s.send("update")
        ups = [s.recv(20) for s in survivors]
        assert all(u.get("world") == 2 and u["dead"] == [victim.id] for u in ups), ups
        # The retry: 1 vs 1, the higher revision (the survivor source's) wins.
        res = sync(survivors, [10, 9])
        assert all(r["event"] == "synced" and r["revision"] == 10 for r in res), res
        assert res[1]["fetched"] == sorted(BIG)
        assert res[1]["received"] == 4 * (8 << 20)
        assert res[0]["digests"] == res[1]["digests"] == expected(BIG) != before
        assert res[0]["hashes"] == res[1]["hashes"]
    finally:
        if sig == signal.SIGSTOP:
            os.kill(victim.proc.pid, signal.SIGKILL)


def test_kill9_of_the_fetching_peer_mid_transfer_aborts_the_sources(world):
    master, peers = world(3)
    stale = {k: [v[0], v[1], v[2] + 50] for k, v in BIG.items()}
    for p, spec in zip(peers, (BIG, BIG, stale)):
        set_state(p, spec)
    for p, rev in zip(peers, [10, 10, 9]):
        p.send("sync " + json.dumps(dict(revision=rev, timeout=30, delay=0.04)))
    time.sleep(0.25)
    victim, survivors = peers[2], peers[:2]
    os.kill(victim.proc.pid, signal.SIGKILL)
    replies = [s.recv(30) for s in survivors]
    for r in replies:
        assert r["event"] == "peer_failure" and r["ids"] == [victim.id], replies
        assert r["unchanged"], replies
    for s in survivors:
        s.send("update")
    assert all(s.recv(20).get("world") == 2 for s in survivors)
    res = sync(survivors, [10, 10])
    assert all(r["event"] == "synced" and r["received"] == 0 for r in res), res
    assert res[0]["digests"] == res[1]["digests"] == expected(BIG)


def test_kill9_of_a_source_mid_transfer_aborts_everyone_and_retry_converges(world):
    _source_dies_mid_transfer(world, signal.SIGKILL, 2.0)


def test_sigstop_of_a_source_mid_transfer_aborts_everyone_and_retry_converges(world):
    _source_dies_mid_transfer(world, signal.SIGSTOP, 1.0)


def test_a_peer_that_never_syncs_times_the_others_out_then_update_and_retry(world):
    master, peers = world(2)
    spec = state_spec({"a": 1})
    for p in peers:
        set_state(p, spec)
    set_state(peers[1], state_spec({"a": 2}))
    t0 = time.time()
    r = sync(peers[:1], [1], timeout=1.0)[0]  # peers[1] does not take part
    assert r["event"] == "error" and r["type"] == "TimeoutError", r
    assert "did every peer call sync_shared_state" in r["msg"] and r["unchanged"], r
    assert time.time() - t0 < 10
    # The round's sequence numbers may now differ: the same epoch refuses another sync.
    r = sync(peers[:1], [1], timeout=1.0)[0]
    assert r["event"] == "error" and "update_topology() first" in r["msg"], r
    for p in peers:
        p.send("update")
    assert all(p.recv(20)["event"] == "update" for p in peers)
    res = sync(peers, [1, 2])
    assert all(r["event"] == "synced" and r["revision"] == 2 for r in res), res
    assert res[0]["fetched"] == ["a"] and res[0]["digests"] == expected(state_spec({"a": 2}))
