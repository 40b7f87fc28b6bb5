"""pyhpc.ccl ring all-reduce with real peer processes on 127.0.0.1: every op and
dtype against numpy for 2, 3 and 4 peers, bit-identical results across peers,
kill -9 and SIGSTOP of a peer mid-operation (abort, restore, retry over the
survivors), a peer dying right before / right after its YES vote in the commit
round (all survivors abort alike / all commit alike), a stranger refused at a data port, mismatched arguments, tags.
The master runs in this process; each peer is a `python -c` child driven over
stdin/stdout (see test_ccl_procs.py); results travel as .npy files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest

import pyhpc
from pyhpc import _ccl
from pyhpc.ccl import Communicator, Master, PeerFailure

from test_ccl_procs import SECRET, PeerProc, Worlds  # noqa: F401 - the same peer harness

pytestmark = pytest.mark.timeout(90)

try:
    import ml_dtypes
    BF16 = [np.dtype(ml_dtypes.bfloat16)]
except ImportError:
    BF16 = []
DTYPES = [np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)] + BF16
OPS = ["sum", "avg", "min", "max"]


def make_input(pid: int, dtype: str, size: int, seed: int, kind: str) -> np.ndarray:
    """The input of peer `pid`; the test and the peer compute it alike."""
    rng = np.random.default_rng(seed * 100003 + pid)
    dt = np.dtype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)
    if kind == "random" and dt.kind == "f":
        return rng.standard_normal(size).astype(dt)
    if kind == "const":  # one value per peer: exact under min-max quantization
        return np.full(size, 0.25 * (pid % 7) + 1.0, dt)
    return rng.integers(-50, 51, size).astype(dt)  # exact in every dtype and any order


ALLREDUCE_DRIVER = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[4])
from ccl_driver import connect, out, serve
from pyhpc.ccl import PeerFailure
from test_ccl_allreduce import make_input
c = connect(connections=int(sys.argv[5]))
def ar(arg):
    spec = json.loads(arg)
    a = make_input(c.rank if spec.get("by_rank") else c.id, spec["dtype"], spec["size"],
                   spec["seed"], spec["kind"])
    if spec.get("size_override") is not None:
        a = a[:spec["size_override"]].copy()
    if spec.get("zero"):
        a[:] = 0
    if spec.get("nan") and a.size:
        a[a.size // 2] = np.nan
    orig = a.copy()
    res = np.zeros_like(a) if spec.get("out") else None
    t0 = time.time()
    try:
        r = c.all_reduce(a, op=spec["op"], out=res, tag=spec.get("tag", 0),
                         timeout=spec.get("timeout", 20),
                         _chunk_bytes=spec.get("chunk", 1 << 19),
                         _chunk_delay=spec.get("delay", 0.0),
                         _exit_at=spec.get("exit_at"), quantize=spec.get("quantize"))
    except PeerFailure as e:  # in place, a was overwritten as it went: restored?
        return out(event="peer_failure", ids=e.peer_ids, msg=str(e), t=time.time() - t0,
                   restored=bool(a.tobytes() == orig.tobytes()))
    if res is not None and a.tobytes() != orig.tobytes():
        return out(event="error", type="input modified", msg="")
    np.save(spec["path"], r)
    out(event="done", path=spec["path"], t=time.time() - t0, bytes=c.last_bytes_sent)
serve(c, {"ar": ar})
"""


class ARPeer(PeerProc):
    DRIVER = ALLREDUCE_DRIVER

    def __init__(self, address, cwd, heartbeat=0.05, connections=1):
        super().__init__(address, cwd, heartbeat, connections)


@pytest.fixture
def ring(tmp_path):
    """ring(n, connections=1) -> (master, peers in rank order); ``connections``: one
    count for every peer or a list, one per peer (in the order they start)."""
    worlds = Worlds(tmp_path)

    def start(n, heartbeat_timeout=2.0, connections=1):
        counts = iter(connections if isinstance(connections, list) else [connections] * n)

        def make(address, cwd):
            return ARPeer(address, cwd, connections=next(counts))

        master, peers, ups = worlds.start(make, n, heartbeat_timeout, recv_timeout=20)
        for p, u in zip(peers, ups):
            p.rank, p.port = u["rank"], u["port"]
        return master, sorted(peers, key=lambda p: p.rank)

    yield start
    worlds.close()


def reference(inputs, op, dtype):
    dt = np.dtype(dtype)
    if op in ("min", "max"):
        return (np.minimum if op == "min" else np.maximum).reduce(inputs)
    if dt.kind == "i":
        s = np.sum(inputs, axis=0, dtype=dt)
        return s if op == "sum" else s // len(inputs)
    acc = np.dtype(np.float32) if dt.itemsize == 2 else dt  # 16-bit: float32, rounded once
    s = np.sum([x.astype(acc) for x in inputs], axis=0, dtype=acc)
    return (s if op == "sum" else s / acc.type(len(inputs))).astype(dt)


class Runner:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.k = 0

    def run(self, peers, **spec):
        spec.setdefault("seed", 1)
        spec.setdefault("kind", "exact")
        paths = []
        for p in peers:
            self.k += 1
            path = str(self.tmp / f"r{self.k}.npy")
            paths.append(path)
            p.send("ar " + json.dumps(dict(spec, path=path)))
        replies = [p.recv(30) for p in peers]
        return replies

    def results(self, replies):
        assert all(r["event"] == "done" for r in replies), replies
        return [np.load(r["path"]) for r in replies]


def name(dt: np.dtype) -> str:
    return "bfloat16" if dt.name == "bfloat16" else dt.name


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_op_and_dtype_matches_numpy(ring, tmp_path, n):
    master, peers = ring(n)
    run = Runner(tmp_path)
    ids = [p.id for p in peers]
    for dt in DTYPES:
        for op in OPS:
            for size in (0, 1, 2 * n + 3):
                spec = dict(dtype=name(dt), op=op, size=size, chunk=8)
                outs = run.results(run.run(peers, **spec))
                ref = reference([make_input(i, name(dt), size, 1, "exact") for i in ids], op, dt)
                for o in outs:
                    assert o.dtype == dt and o.shape == (size,)
                    assert o.tobytes() == ref.tobytes(), (n, dt, op, size, o, ref)
    # A few MiB of random floats, out of place, chunked: bit-identical on every
    # peer, equal to numpy up to summation order (exact for float16: float32
    # accumulation rounded once).
    for dt, size in ((np.dtype(np.float32), (3 << 20) // 4 + 5), (np.dtype(np.float16), 100001)):
        outs = run.results(run.run(peers, dtype=name(dt), op="sum", size=size, kind="random",
                                   out=True, chunk=1 << 16))
        assert len({o.tobytes() for o in outs}) == 1, "peers differ"
        ref = reference([make_input(i, name(dt), size, 1, "random") for i in ids], "sum", dt)
        np.testing.assert_allclose(outs[0].astype(np.float64), ref.astype(np.float64),
                                   rtol=1e-2 if dt.itemsize == 2 else 1e-5, atol=1e-2)


def kill_one_mid_allreduce(peers, run, tmp_path, **extra):
    """A float32 sum of 1 MiB on 3 peers, in 4 KiB chunks 5 ms apart (seconds), with
    ``extra`` settings; the middle peer is killed 0.4 s in. Checks that both survivors
    raised PeerFailure naming it, within 5 s, with their inputs as they were, then
    updates and retries at full speed. Returns (survivors in the new ring order, their
    results, their inputs)."""
    size = 1 << 18
    spec = dict(dtype="float32", op="sum", size=size, kind="random", chunk=4096, delay=0.005,
                seed=1, **extra)
    for p in peers:
        p.send("ar " + json.dumps(dict(spec, path=str(tmp_path / f"k{p.id}.npy"))))
    time.sleep(0.4)
    victim, survivors = peers[1], [peers[0], peers[2]]
    t_kill = time.time()
    os.kill(victim.proc.pid, signal.SIGKILL)
    replies = [s.recv(20) for s in survivors]
    elapsed = time.time() - t_kill
    for r in replies:
        assert r["event"] == "peer_failure", replies
        assert r["ids"] == [victim.id], replies
        assert r["restored"], replies
    assert elapsed < 5, elapsed
    for s in survivors:
        s.send("update")
    ups = [s.recv(20) for s in survivors]
    assert all(u.get("world") == 2 and u["dead"] == [victim.id] for u in ups), ups
    survivors.sort(key=lambda s: ups[0]["ids"].index(s.id))  # the new ring order
    outs = run.results(run.run(survivors, **dict(spec, delay=0.0)))
    assert outs[0].tobytes() == outs[1].tobytes()
    return survivors, outs, [make_input(s.id, "float32", size, 1, "random") for s in survivors]


def test_kill9_mid_allreduce_aborts_restores_and_retry_reduces_survivors(ring, tmp_path):
    master, peers = ring(3)
    _, outs, inputs = kill_one_mid_allreduce(peers, Runner(tmp_path), tmp_path)
    # two peers: each element is a + b in one rounding, so exact
    assert outs[0].tobytes() == reference(inputs, "sum", np.float32).tobytes()


def test_sigstop_mid_allreduce_fails_over_and_retry_succeeds(ring, tmp_path):
    hb_timeout = 1.0
    master, peers = ring(3, heartbeat_timeout=hb_timeout)
    run = Runner(tmp_path)
    size = 1 << 17
    spec = dict(dtype="float64", op="max", size=size, kind="random", chunk=4096, delay=0.005, seed=1,
                timeout=30)
    for p in peers:
        p.send("ar " + json.dumps(dict(spec, path=str(tmp_path / f"s{p.id}.npy"))))
    time.sleep(0.3)
    victim, survivors = peers[2], peers[:2]
    t_stop = time.time()
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        replies = [s.recv(20) for s in survivors]
        elapsed = time.time() - t_stop
        for r in replies:
            assert r["event"] == "peer_failure" and r["ids"] == [victim.id], replies
            assert r["restored"], replies
        # ended by the master's notice (heartbeat timeout), far before the op's 30 s
        assert elapsed < hb_timeout + 4, elapsed
        for s in survivors:
            s.send("update")
        ups = [s.recv(20) for s in survivors]
        assert all(u.get("world") == 2 and u["dead"] == [victim.id] for u in ups), ups
        outs = run.results(run.run(survivors, **dict(spec, delay=0.0)))
        ref = reference([make_input(s.id, "float64", size, 1, "random") for s in survivors],
                        "max", np.float64)
        assert outs[0].tobytes() == outs[1].tobytes() == ref.tobytes()
    finally:
        os.kill(victim.proc.pid, signal.SIGKILL)


# ---- the commit round: a peer dying right before / right after its YES vote ---------

# (world, victim rank, elements, chunk bytes): small ops where the survivors are
# likely done and waiting for the verdict, larger ones where they are mid-ring
# when told of the death (QUERY -> CONTINUE or ABORT).
COMMIT_CASES = [(3, 1, 1024, 1 << 19, 0), (3, 0, 1 << 18, 4096, 0), (4, 2, 1 << 16, 1024, 0),
                (2, 1, 4096, 1 << 19, 0),
                # the survivors sleep 15 ms after each chunk, the victim does not: it
                # finishes (and dies) while they are mid-ring
                (3, 1, 1 << 14, 4096, 0.015), (4, 0, 1 << 14, 2048, 0.015)]


def _exit_case(ring, tmp_path, run, world, victim_rank, size, chunk, delay, exit_at, rep):
    master, peers = ring(world)
    victim = peers[victim_rank]
    survivors = [p for p in peers if p is not victim]
    spec = dict(dtype="float32", op="sum", size=size, kind="exact", chunk=chunk, seed=rep + 7,
                out=bool(rep % 2))
    inputs = {p.id: make_input(p.id, "float32", size, rep + 7, "exact") for p in peers}
    for p in peers:
        extra = dict(exit_at=exit_at) if p is victim else dict(delay=delay)
        p.send("ar " + json.dumps(dict(spec, path=str(tmp_path / f"c{rep}_{p.id}.npy"), **extra)))
    replies = [s.recv(30) for s in survivors]
    assert victim.proc.wait(10) == 3  # it _exit()ed where told
    return master, victim, survivors, spec, inputs, replies


@pytest.mark.parametrize("case", COMMIT_CASES, ids=lambda c: f"n{c[0]}-r{c[1]}-{c[2]}x{c[3]}-d{c[4]}")
def test_peer_dying_before_its_vote_aborts_every_survivor(ring, tmp_path, case):
    world, victim_rank, size, chunk, delay = case
    run = Runner(tmp_path)
    for rep in range(3):
        master, victim, survivors, spec, inputs, replies = _exit_case(
            ring, tmp_path, run, world, victim_rank, size, chunk, delay, "before_vote", rep)
        for r in replies:  # no survivor applied the op: all aborted, inputs as they were
            assert r["event"] == "peer_failure", replies
            assert r["ids"] == [victim.id], replies
            assert r["restored"], replies
        st = master.stats()
        assert st["commits"] == 0 and st["aborts"] >= 1, st
        for s in survivors:
            s.send("update")
        ups = [s.recv(20) for s in survivors]
        assert all(u.get("world") == world - 1 and u["dead"] == [victim.id] for u in ups), ups
        outs = run.results(run.run(survivors, **dict(spec, out=False)))
        ref = reference([inputs[s.id] for s in survivors], "sum", np.float32)
        for o in outs:  # exact: integers in float32
            assert o.tobytes() == ref.tobytes()


@pytest.mark.parametrize("case", COMMIT_CASES, ids=lambda c: f"n{c[0]}-r{c[1]}-{c[2]}x{c[3]}-d{c[4]}")
def test_peer_dying_after_its_vote_lets_every_survivor_commit(ring, tmp_path, case):
    world, victim_rank, size, chunk, delay = case
    run = Runner(tmp_path)
    for rep in range(3):
        master, victim, survivors, spec, inputs, replies = _exit_case(
            ring, tmp_path, run, world, victim_rank, size, chunk, delay, "after_vote", rep)
        # Every survivor committed the full result, the dead peer's share included.
        outs = run.results(replies)
        ref = reference(list(inputs.values()), "sum", np.float32)
        for o in outs:
            assert o.tobytes() == ref.tobytes()
        st = master.stats()
        assert st["commits"] == 1 and st["aborts"] == 0, st
        if delay:  # the survivors were told of the death mid-ring, asked, and went on
            assert st["continues"] >= 1, st
        # The next operation needs the update (the death was reported) and then
        # reduces over the survivors.
        for s in survivors:
            s.send("update")
        ups = [s.recv(20) for s in survivors]
        assert all(u.get("world") == world - 1 and u["dead"] == [victim.id] for u in ups), ups
        outs = run.results(run.run(survivors, **dict(spec, seed=rep + 100, out=False)))
        ref = reference([make_input(s.id, "float32", size, rep + 100, "exact") for s in survivors],
                        "sum", np.float32)
        for o in outs:
            assert o.tobytes() == ref.tobytes()


def test_master_lost_before_the_commit_round_is_a_clean_error():
    """The master stops while the ring runs: at the commit round every peer
    raises PeerError (no hang, nothing committed), its buffer untouched."""
    master = Master(secret=SECRET).start()
    out, errors = [None] * 2, []
    barrier = threading.Barrier(2)

    def body(i):
        try:
            c = Communicator(master, secret=SECRET).connect()
            while c.world_size < 2:
                c.update_topology(timeout=10)
            barrier.wait(10)
            if i == 0:
                threading.Timer(0.2, master.stop).start()
            x = np.full(1 << 16, c.rank + 1.0, np.float32)
            t0 = time.time()
            try:
                c.all_reduce(x, timeout=20, _chunk_bytes=4096, _chunk_delay=0.01)
                out[i] = ("committed", c.rank, x, time.time() - t0)
            except pyhpc.errors.Error as e:
                out[i] = (type(e).__name__, c.rank, x, time.time() - t0)
            c.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    for kind, rank, x, dt in out:
        assert kind in ("PeerError", "PeerFailure"), [o[0] for o in out]
        assert (x == rank + 1.0).all()
        assert dt < 10, dt


def test_mismatched_sizes_fail_cleanly_on_every_peer_then_ops_go_on(ring, tmp_path):
    master, peers = ring(3)
    run = Runner(tmp_path)
    replies = []
    for i, p in enumerate(peers):
        p.send("ar " + json.dumps(dict(dtype="float32", op="sum", size=10, seed=1, kind="exact",
                                       size_override=9 if i == 1 else None,
                                       path=str(tmp_path / f"m{i}.npy"))))
    replies = [p.recv(20) for p in peers]
    for r in replies:
        assert r["event"] == "error" and r["type"] == "InvalidArgumentError", replies
        assert "differ between peers" in r["msg"], r
    # the channel stayed in step: the next operation works
    outs = run.results(run.run(peers, dtype="int64", op="sum", size=5))
    ref = reference([make_input(p.id, "int64", 5, 1, "exact") for p in peers], "sum", np.int64)
    assert all(o.tobytes() == ref.tobytes() for o in outs)


def _frame(type_code: int, payload: bytes) -> bytes:
    return struct.pack("<IHHI", _ccl.MAGIC, _ccl.PROTOCOL_VERSION, type_code, len(payload)) + payload


def _hello(port: int, secret: bytes, ids: bytes) -> bytes:
    """Dial a data port, answer its challenge with a DATA_HELLO for `ids` (from_id epoch tag
    kind stream streams) under `secret`; returns what the peer sends back before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        hdr = s.recv(12, socket.MSG_WAITALL)
        magic, _, typ, length = struct.unpack("<IHHI", hdr)
        assert magic == _ccl.MAGIC and typ == 10 and length == 32
        nonce = s.recv(32, socket.MSG_WAITALL)
        mac = _ccl.hmac_sha256(secret, b"pccl-data" + nonce + b"\0" * 32 + ids)
        s.sendall(_frame(11, b"\0" * 32 + mac + ids))
        return s.recv(100)


def test_stranger_refused_at_a_data_port(ring, tmp_path):
    master, peers = ring(2)
    # A wrong MAC: the peer closes the connection without answering DATA_OK.
    ids = struct.pack("<QQIBII", peers[1].id, 1, 0, 0, 0, 1)
    assert _hello(peers[0].port, b"wrong-secret", ids) == b""
    # The right secret but a stream the hello's own count rules out (or no streams, or
    # more than 16): refused alike. The control (stream 0 of 1, a tag no op uses) gets DATA_OK.
    key = SECRET.encode()
    for stream, streams in ((2, 2), (0, 0), (0, 17)):
        ids = struct.pack("<QQIBII", peers[1].id, 1, 77, 0, stream, streams)
        assert _hello(peers[0].port, key, ids) == b"", (stream, streams)
    # An unknown channel kind, and several streams on a kind that has one (a state fetch).
    for kind, streams in ((3, 1), (1, 2)):
        ids = struct.pack("<QQIBII", peers[1].id, 1, 77, kind, 0, streams)
        assert _hello(peers[0].port, key, ids) == b"", (kind, streams)
    ok = _hello(peers[0].port, key, struct.pack("<QQIBII", peers[1].id, 1, 77, 0, 0, 1))
    assert struct.unpack("<IHHI", ok[:12])[2] == 12 and len(ok) == 12 + 32
    # Garbage and an oversized frame are dropped too.
    for junk in (b"GET / HTTP/1.0\r\n\r\n" * 4, _frame(14, b"") [:8] + struct.pack("<I", 2**31)):
        with socket.create_connection(("127.0.0.1", peers[1].port), timeout=5) as s:
            s.recv(44, socket.MSG_WAITALL)
            s.sendall(junk)
            assert s.recv(100) == b""
    # The run goes on.
    run = Runner(tmp_path)
    outs = run.results(run.run(peers, dtype="int32", op="max", size=33))
    ref = reference([make_input(p.id, "int32", 33, 1, "exact") for p in peers], "max", np.int32)
    assert all(o.tobytes() == ref.tobytes() for o in outs)


# ---- in-process (threads: the C++ core releases the GIL) ---------------------

def _world(n, master, fn):
    out, errors = [None] * n, []

    def body(i):
        try:
            c = Communicator(master, secret=SECRET).connect()
            while c.world_size < n:
                c.update_topology(timeout=10)
            out[i] = fn(c)
            c.leave()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


def test_concurrent_tags_and_async_do_not_mix():
    with Master(secret=SECRET) as master:
        def fn(c):
            a = np.full(200001, c.rank + 1, np.float32)
            b = np.full(300007, 10 * (c.rank + 1), np.int64)
            h1 = c.all_reduce_async(a, tag=1, _chunk_bytes=1 << 14)
            h2 = c.all_reduce_async(b, op="max", tag=2, _chunk_bytes=1 << 14)
            return h1.wait(30).copy(), h2.wait(30).copy()

        res = _world(3, master, fn)
    for a, b in res:
        assert (a == 6).all() and (b == 30).all()


def test_bad_arguments_are_refused_before_any_traffic():
    with Master(secret=SECRET) as master:
        def fn(c):
            errs = []
            buf = np.arange(8, dtype=np.float32)
            for call in (lambda: c.all_reduce(np.zeros(4, np.uint8)),
                         lambda: c.all_reduce(np.zeros((4, 4), np.float32)[:, 0]),
                         lambda: c.all_reduce(np.zeros(4, np.float32), op="prod"),
                         lambda: c.all_reduce(np.zeros(4, np.float32), out=np.zeros(3, np.float32)),
                         lambda: c.all_reduce(np.zeros(4, np.float32), tag=-1),
                         lambda: c.all_reduce([1.0, 2.0]),
                         lambda: c.all_reduce(buf[:4], out=buf[2:6])):  # overlapping out
                with pytest.raises(pyhpc.InvalidArgumentError) as e:
                    call()
                errs.append(str(e.value))
            x = np.arange(6, dtype=np.float64).reshape(2, 3)
            c.all_reduce(x, op="avg")  # 2-D contiguous is fine
            return errs, x

        res = _world(2, master, fn)
    errs, x = res[0]
    assert "unsupported dtype uint8" in errs[0] and "C-contiguous" in errs[1]
    assert "out overlaps array" in errs[-1]
    assert np.array_equal(res[0][1], np.arange(6.0).reshape(2, 3))
    assert np.array_equal(res[1][1], np.arange(6.0).reshape(2, 3))


def test_single_peer_world_and_not_admitted():
    with Master(secret=SECRET) as master:
        c = Communicator(master, secret=SECRET).connect()
        with pytest.raises(pyhpc.InvalidArgumentError, match="update_topology"):
            c.all_reduce(np.ones(3, np.float32))
        c.update_topology(timeout=10)
        x = np.array([1, -7, 5], np.int64)
        assert np.array_equal(c.all_reduce(x, op="avg"), [1, -7, 5])
        c.leave()
