"""pyhpc.ccl quantized all-reduce (quantize="minmax_uint8" and "zeropoint_uint8")
with real peer processes on 127.0.0.1: bit-identical results on every peer,
error within the bound the scheme guarantees, constant arrays exact (minmax;
zeros for zeropoint), empty arrays, the exact number of bytes sent (about 1/4
of float32), a mismatched setting or a NaN input raising on every peer, and
kill -9 mid-operation (abort, restore, retry).
Uses the peer harness of test_ccl_allreduce.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_ccl_allreduce import BF16, Runner, kill_one_mid_allreduce, make_input, ring  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(90)

FRAME_OVERHEAD = 12 + 24  # frame header + DATA sub-header
QPARAMS = 8  # per quantized chunk: f32 min, f32 scale / f32 scale, u32 zero point
SCHEMES = ["minmax_uint8", "zeropoint_uint8"]


def seg_bounds(count: int, n: int, k: int) -> tuple[int, int]:
    base, rem = divmod(count, n)
    start = k * base + min(k, rem)
    return start, start + base + (1 if k < rem else 0)


def expected_bytes(count: int, n: int, rank: int, chunk_bytes: int, quant: bool,
                   itemsize: int = 4) -> int:
    """DATA-frame bytes one peer sends: 2(n-1) steps of C frames each (C: chunks of
    the longest segment; a shorter segment's surplus chunks are empty frames)."""
    wsize = 4 if quant else itemsize
    chunk_elems = max(1, chunk_bytes // wsize)
    max_seg = -(-count // n)
    c = -(-max_seg // chunk_elems)
    segs = [(rank - s) % n for s in range(n - 1)] + [(rank + 1 - s) % n for s in range(n - 1)]
    elems = sum(seg_bounds(count, n, k)[1] - seg_bounds(count, n, k)[0] for k in segs)
    frames = 2 * (n - 1) * c
    if quant:
        return frames * (FRAME_OVERHEAD + QPARAMS) + elems
    return frames * FRAME_OVERHEAD + elems * wsize


def error_bound(inputs: list[np.ndarray], scheme: str = "minmax_uint8") -> np.ndarray:
    """Per-element bound on |quantized all-reduce sum - exact sum| (inputs in ring
    rank order). Segment k is reduced peer k, k+1, ... and quantized n times: after
    each of the n-1 hops of the reduce-scatter and once for the all-gather. A
    quantization of values v moves each by at most scale/2, scale = range(v)/255;
    v is the exact partial sum p_i plus the error so far (|e| <= E_{i-1}), so
    range(v) <= range(p_i over the segment) + 2 E_{i-1} (a chunk's range is at most
    its segment's). zeropoint_uint8 widens the range to hold 0 (and its rounded zero
    point keeps the clamp within scale/2). E_i = E_{i-1} + scale_i/2 + float32
    rounding of the add and the dequantization (2 ulp of max|p_i|, generous)."""
    n = len(inputs)
    count = inputs[0].size
    x = [a.astype(np.float64) for a in inputs]
    bound = np.zeros(count)
    for k in range(n):
        lo, hi = seg_bounds(count, n, k)
        if lo == hi:
            continue
        e = 0.0
        p = np.zeros(hi - lo)
        for i in range(n):
            p = p + x[(k + i) % n][lo:hi]
            top, bottom = p.max(), p.min()
            if scheme == "zeropoint_uint8":
                top, bottom = max(top, 0.0), min(bottom, 0.0)
            scale = (top - bottom + 2 * e) / 255 * (1 + 1e-4)
            e = e + scale / 2 + 2 * np.abs(p).max() * 2.0 ** -23
        bound[lo:hi] = e
    return bound


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_quantized_bit_identical_within_bound_and_a_quarter_of_the_bytes(ring, tmp_path, n,
                                                                        scheme):
    master, peers = ring(n)
    run = Runner(tmp_path)
    ids = [p.id for p in peers]  # rank order
    size, chunk = 100003, 1 << 16
    for op in ("sum", "avg"):
        spec = dict(dtype="float32", op=op, size=size, kind="random", chunk=chunk,
                    quantize=scheme)
        replies = run.run(peers, **spec)
        outs = run.results(replies)
        assert len({o.tobytes() for o in outs}) == 1, "peers differ"
        inputs = [make_input(i, "float32", size, 1, "random") for i in ids]
        exact = np.sum([a.astype(np.float64) for a in inputs], axis=0)
        bound = error_bound(inputs, scheme)
        if op == "avg":
            exact, bound = exact / n, bound / n + np.abs(exact / n) * 2.0 ** -23
        err = np.abs(outs[0].astype(np.float64) - exact)
        assert np.all(err <= bound), (op, float((err - bound).max()))
        assert err.max() > 0  # it did quantize
        for p, r in zip(peers, replies):
            assert r["bytes"] == expected_bytes(size, n, p.rank, chunk, True), (r, p.rank)
    # The same op unquantized: exactly the float32 formula, ~4x the bytes.
    plain = run.run(peers, dtype="float32", op="sum", size=size, kind="random", chunk=chunk)
    run.results(plain)
    for p, r, q in zip(peers, plain, replies):
        assert r["bytes"] == expected_bytes(size, n, p.rank, chunk, False)
        assert 3.95 < r["bytes"] / q["bytes"] <= 4.0, (r["bytes"], q["bytes"])
    # Other float dtypes: bit-identical, within the bound (plus the output's rounding).
    others = [("float64", 2.0 ** -23), ("float16", 2.0 ** -11)] + [("bfloat16", 2.0 ** -8)] * len(BF16)
    for dt, eps in others:
        outs = run.results(run.run(peers, dtype=dt, op="sum", size=4099, kind="random",
                                   chunk=4096, quantize=scheme))
        assert len({o.tobytes() for o in outs}) == 1, (dt, "peers differ")
        inputs = [make_input(i, dt, 4099, 1, "random").astype(np.float32) for i in ids]
        exact = np.sum([a.astype(np.float64) for a in inputs], axis=0)
        err = np.abs(outs[0].astype(np.float64) - exact)
        assert np.all(err <= error_bound(inputs, scheme) * (1 + eps) + np.abs(exact) * eps), dt


@pytest.mark.parametrize("n", [2, 3, 4])
def test_quantized_constant_and_empty_arrays_are_exact(ring, tmp_path, n):
    master, peers = ring(n)
    run = Runner(tmp_path)
    ids = [p.id for p in peers]
    for size in (0, 1, n + 1, 5000):
        for op in ("sum", "avg"):
            replies = run.run(peers, dtype="float32", op=op, size=size, kind="const", chunk=1024,
                              quantize="minmax_uint8")
            outs = run.results(replies)
            ref = np.sum([make_input(i, "float32", size, 1, "const") for i in ids], axis=0,
                         dtype=np.float32)
            if op == "avg":
                ref = ref / np.float32(n)
            for o in outs:
                assert o.shape == (size,) and o.tobytes() == ref.tobytes(), (size, op, o[:3], ref[:3])
            if size == 0:
                assert all(r["bytes"] == expected_bytes(0, n, p.rank, 1024, True)
                           for p, r in zip(peers, replies))


@pytest.mark.parametrize("n", [2, 3])
def test_zeropoint_zeros_exact_constants_within_bound_and_empty(ring, tmp_path, n):
    master, peers = ring(n)
    run = Runner(tmp_path)
    ids = [p.id for p in peers]
    for size in (0, 1, n + 1, 5000):
        zeros = run.results(run.run(peers, dtype="float32", op="sum", size=size, kind="exact",
                                    seed=0, chunk=1024, quantize="zeropoint_uint8",
                                    zero=True))
        for o in zeros:
            assert o.shape == (size,) and not o.any() and not np.signbit(o).any()
        replies = run.run(peers, dtype="float32", op="sum", size=size, kind="const", chunk=1024,
                          quantize="zeropoint_uint8")
        outs = run.results(replies)
        assert len({o.tobytes() for o in outs}) == 1
        inputs = [make_input(i, "float32", size, 1, "const") for i in ids]
        exact = np.sum([a.astype(np.float64) for a in inputs], axis=0)
        if size:
            assert np.all(np.abs(outs[0] - exact) <= error_bound(inputs, "zeropoint_uint8"))
        else:
            assert all(r["bytes"] == expected_bytes(0, n, p.rank, 1024, True)
                       for p, r in zip(peers, replies))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_mismatch_and_nan_raise_on_every_peer_then_next_op_works(ring, tmp_path,
                                                                          scheme):
    master, peers = ring(3)
    run = Runner(tmp_path)
    spec = dict(dtype="float32", op="sum", size=1000, kind="random", seed=1)
    for i, p in enumerate(peers):
        extra = dict(quantize=scheme) if i != 1 else {}
        p.send("ar " + json.dumps(dict(spec, path=str(tmp_path / f"m{i}.npy"), **extra)))
    replies = [p.recv(30) for p in peers]
    for r in replies:
        assert r["event"] == "error" and r["type"] == "InvalidArgumentError", replies
        assert "quantize" in r["msg"], r
    # NaN in one peer's input: every peer refuses alike.
    for i, p in enumerate(peers):
        extra = dict(nan=True) if i == 2 else {}
        p.send("ar " + json.dumps(dict(spec, quantize=scheme,
                                       path=str(tmp_path / f"n{i}.npy"), **extra)))
    replies = [p.recv(30) for p in peers]
    for r in replies:
        assert r["event"] == "error" and r["type"] == "InvalidArgumentError", replies
        assert "NaN" in r["msg"], r
    outs = run.results(run.run(peers, **dict(spec, quantize=scheme)))
    assert len({o.tobytes() for o in outs}) == 1
    inputs = [make_input(p.id, "float32", 1000, 1, "random") for p in peers]
    exact = np.sum([a.astype(np.float64) for a in inputs], axis=0)
    assert np.all(np.abs(outs[0] - exact) <= error_bound(inputs, scheme))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_kill9_mid_quantized_allreduce_aborts_restores_and_retry_works(ring, tmp_path, scheme):
    master, peers = ring(3)
    _, outs, inputs = kill_one_mid_allreduce(
        peers, Runner(tmp_path), tmp_path, quantize=scheme, out=scheme == "zeropoint_uint8")
    exact = np.sum([a.astype(np.float64) for a in inputs], axis=0)
    assert np.all(np.abs(outs[0] - exact) <= error_bound(inputs, scheme))
