"""pyhpc.attention: ring and TokenRing attention against a float64 single-process reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mpi4py import MPI

from pyhpc import attention as at
from pyhpc.errors import InvalidArgumentError


def naive(q, k, v, causal):
    """Softmax attention written out directly (no log-sum-exp tricks), for checking the reference."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[2])
    if causal:
        s = np.where(np.tril(np.ones((q.shape[0], k.shape[0]), bool))[None], s, -np.inf)
    p = np.exp(s - s.max(axis=2, keepdims=True))
    return np.einsum("hqk,khd->qhd", p / p.sum(axis=2, keepdims=True), v)


def tensors(s, h, hkv, d, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((s, h, d)), rng.standard_normal((s, hkv, d)),
            rng.standard_normal((s, hkv, d)), rng.standard_normal((s, h, d)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (3, 1)])
def test_reference_is_attention_and_its_gradient(causal, heads):
    q, k, v, dout = tensors(7, *heads, 5)
    out, lse, dq, dk, dv = at.attention_reference(q, k, v, causal, dout=dout)
    assert np.allclose(out, naive(q, k, v, causal), rtol=1e-12, atol=1e-12)
    # the gradient of sum(out * dout), by central differences on a few entries
    eps = 1e-6
    for name, x, grad in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        for index in [(0, 0, 0), (3, x.shape[1] - 1, 2), (6, 0, 4)]:
            plus, minus = x.copy(), x.copy()
            plus[index] += eps
            minus[index] -= eps
            args = {"q": q, "k": k, "v": v}
            f = [float((at.attention_reference(**{**args, name: y}, causal=causal)[0] * dout).sum())
                 for y in (plus, minus)]
            assert (f[0] - f[1]) / (2 * eps) == pytest.approx(grad[index], rel=1e-5, abs=1e-7), (name, index)


def test_zigzag_positions_cover_the_sequence_once():
    for total, size in ((37, 4), (8, 2), (5, 3)):
        seen = np.concatenate([at.positions("zigzag", r, size, total) for r in range(size)])
        assert np.array_equal(np.sort(seen), np.arange(total))
    assert at.positions("zigzag", 0, 2, 8).tolist() == [0, 1, 6, 7]
    with pytest.raises(InvalidArgumentError, match="layout"):
        at.positions("striped", 0, 2, 8)


@pytest.mark.parametrize("call, match", [
    (lambda q, k, v: at.ring_attention(q.astype(np.int64), k, v, MPI.COMM_SELF), "q: dtype must be"),
    (lambda q, k, v: at.ring_attention(q, k[:, :, :2], v[:, :, :2], MPI.COMM_SELF), "does not fit q's"),
    (lambda q, k, v: at.ring_attention(q, k, v[:3], MPI.COMM_SELF), "v: shape"),
    (lambda q, k, v: at.token_ring_attention(q[:, :3], k, v, MPI.COMM_SELF), "do not divide 3 query heads"),
    (lambda q, k, v: at.ring_attention(q, k, v, MPI.COMM_SELF, layout="striped"), "layout"),
    (lambda q, k, v: at.ring_attention(q[0], k, v, MPI.COMM_SELF), "q: must be a numpy or cupy array"),
])
def test_bad_input_names_the_argument(call, match):
    q, k, v, _ = tensors(6, 4, 2, 4)
    with pytest.raises(InvalidArgumentError, match=match):
        call(q, k, v)


def run_all(comm, total, heads, kv_heads, dim, causal, layout, dtype, tol, xp=np):
    """Every variant, forward and backward, against the float64 reference of the same
    (rounded to ``dtype``) inputs; ``xp`` is numpy or cupy."""
    q, k, v, dout = (x.astype(dtype).astype(np.float64) for x in tensors(total, heads, kv_heads, dim, seed=total))
    out, lse, dq, dk, dv = at.attention_reference(q, k, v, causal, dout=dout)
    pos = at.positions(layout, comm.rank, comm.size, total)
    mine = [xp.asarray(x[pos].astype(dtype)) for x in (q, k, v, dout)]

    def rel(got, want):
        assert type(got) is type(mine[0]), type(got)  # noqa: E721 - numpy in, numpy out; cupy in, cupy out
        got = (got.get() if xp is not np else got).astype(np.float64)
        return float(np.abs(got - want).max(initial=0) / max(np.abs(want).max(initial=0), 1e-300))

    o, lse_ring = at.ring_attention(*mine[:3], comm, causal, layout=layout)
    o_tr, lse_tr = at.token_ring_attention(*mine[:3], comm, causal, layout=layout)
    grads = at.ring_attention_backward(mine[3], *mine[:3], o, lse_ring, comm, causal, layout=layout)
    grads_tr = at.token_ring_attention_backward(mine[3], *mine[:3], o_tr, lse_tr, comm, causal, layout=layout)
    o_ag, lse_ag = at.allgather_attention(*mine[:3], comm, causal, layout=layout)
    grads_ag = at.allgather_attention_backward(mine[3], *mine[:3], o_ag, lse_ag, comm, causal, layout=layout)
    assert o.dtype == dtype and all(g.dtype == dtype for g in (*grads, *grads_tr, *grads_ag))
    errors = {"out": rel(o, out[pos]), "lse": rel(lse_ring, lse[:, pos]), "token_ring out": rel(o_tr, out[pos]),
              "token_ring lse": rel(lse_tr, lse[:, pos]), "dq": rel(grads[0], dq[pos]),
              "dk": rel(grads[1], dk[pos]), "dv": rel(grads[2], dv[pos]),
              "token_ring dq": rel(grads_tr[0], dq[pos]), "token_ring dk": rel(grads_tr[1], dk[pos]),
              "token_ring dv": rel(grads_tr[2], dv[pos]), "allgather out": rel(o_ag, out[pos]),
              "allgather lse": rel(lse_ag, lse[:, pos]), "allgather dq": rel(grads_ag[0], dq[pos]),
              "allgather dk": rel(grads_ag[1], dk[pos]), "allgather dv": rel(grads_ag[2], dv[pos])}
    if heads % comm.size == 0 and (kv_heads % comm.size == 0 or comm.size % kv_heads == 0):  # Ulysses fits
        o_u, lse_u = at.ulysses_attention(*mine[:3], comm, causal, layout=layout)
        grads_u = at.ulysses_attention_backward(mine[3], *mine[:3], o_u, lse_u, comm, causal, layout=layout)
        assert o_u.dtype == dtype and all(g.dtype == dtype for g in grads_u)
        errors.update({"ulysses out": rel(o_u, out[pos]), "ulysses lse": rel(lse_u, lse[:, pos]),
                       "ulysses dq": rel(grads_u[0], dq[pos]), "ulysses dk": rel(grads_u[1], dk[pos]),
                       "ulysses dv": rel(grads_u[2], dv[pos])})
    worst = comm.allreduce(max(errors.values()), op=MPI.MAX)
    assert worst < tol, errors


def gpu_dtype(name):
    """(cupy, the numpy dtype, the tolerance) for a GPU test; bfloat16 is ml_dtypes' (CuPy 14)."""
    from pyhpc import cuda

    cp = cuda.cupy()
    if name == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
        try:
            cp.zeros(1, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - an older cupy without bfloat16
            pytest.skip(f"cupy has no bfloat16: {exc}")
    else:
        dtype = np.dtype(name).type
    return cp, dtype, (1e-5 if name == "float32" else 2.5e-2)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_one_rank(dtype, tol):
    run_all(MPI.COMM_SELF, 11, 4, 2, 8, True, "zigzag", dtype, tol)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("layout", at.LAYOUTS)
@pytest.mark.parametrize("causal", [False, True])
def test_every_rank_count_matches_the_reference(comm, layout, causal):
    for size in range(1, comm.size + 1):
        sub = comm.Split(0 if comm.rank < size else MPI.UNDEFINED, comm.rank)
        if sub == MPI.COMM_NULL:
            continue
        try:
            for total, heads, kv_heads, dim in ((37, 4, 2, 8), (16, 2, 2, 4), (9, 3, 1, 5)):  # GQA, MHA, MQA
                run_all(sub, total, heads, kv_heads, dim, causal, layout, np.float32, 1e-5)
            run_all(sub, 21, 2, 1, 4, causal, layout, np.float64, 1e-12)
        finally:
            sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences_match_the_reference(comm, causal):
    check_packed(comm, causal, np)


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
def test_gpu_packed_sequences_match_the_reference(comm):
    from pyhpc import cuda

    for causal in (False, True):
        check_packed(comm, causal, cuda.cupy())


def check_packed(comm, causal, xp):
    # three sequences of 5, 0 and 23 tokens, then one of 9, packed into one of 37 (cu_seqlens)
    cu = np.array([0, 5, 5, 28, 37])
    q, k, v, dout = tensors(37, 4, 2, 8, seed=5)
    out, lse, dq, dk, dv = at.attention_reference(q, k, v, causal, dout=dout, cu_seqlens=cu)
    # the reference itself: packed = each sequence alone
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            alone = at.attention_reference(q[a:b], k[a:b], v[a:b], causal, dout=dout[a:b])
            assert np.allclose(out[a:b], alone[0]) and np.allclose(dk[a:b], alone[3])
    pos = at.positions("zigzag", comm.rank, comm.size, 37)
    mine = [xp.asarray(x[pos].astype(np.float32)) for x in (q, k, v, dout)]
    variants = [(at.ring_attention, at.ring_attention_backward),
                (at.token_ring_attention, at.token_ring_attention_backward),
                (at.allgather_attention, at.allgather_attention_backward)]
    if 4 % comm.size == 0 and (2 % comm.size == 0 or comm.size % 2 == 0):
        variants.append((at.ulysses_attention, at.ulysses_attention_backward))
    worst = 0.0
    for forward, backward in variants:
        o, l = forward(*mine[:3], comm, causal, cu_seqlens=cu)
        grads = backward(mine[3], *mine[:3], o, l, comm, causal, cu_seqlens=cu)
        for got, want in zip((o, l, *grads), (out[pos], lse[:, pos], dq[pos], dk[pos], dv[pos])):
            got = got.get() if xp is not np else got
            worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    assert comm.allreduce(worst, op=MPI.MAX) < 1e-5
    with pytest.raises(InvalidArgumentError, match="cu_seqlens: must start at 0"):
        at.token_ring_attention(*mine[:3], comm, causal, cu_seqlens=np.array([0, 5, 36]))
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):
        at.ring_attention(*mine[:3], comm, causal, cu_seqlens=cu if comm.rank else None)


@pytest.mark.mpi(min_size=2)
def test_bad_input_on_one_rank_raises_on_every_rank(comm):
    total = 8 * comm.size
    q, k, v, _ = tensors(total, 4, 2, 4)
    pos = at.positions("zigzag", comm.rank, comm.size, total)
    q, k, v = q[pos], k[pos], v[pos]
    with pytest.raises(InvalidArgumentError, match="rank 1: ring_attention: q: dtype"):
        at.ring_attention(q.astype(np.float16) if comm.rank == 1 else q, k, v, comm)
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):
        at.token_ring_attention(q, k, v, comm, causal=comm.rank == 0)
    with pytest.raises(InvalidArgumentError, match="do not fit the zigzag layout"):
        at.ring_attention(q[2:], k[2:], v[2:], comm) if comm.rank == 0 else at.ring_attention(q, k, v, comm)
    out, _ = at.ring_attention(q, k, v, comm)  # still usable
    assert out.shape == q.shape


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("heads", [(4, 4), (4, 1), (8, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bytes_sent_are_the_closed_form(comm, heads, dtype):
    total, dim = 8 * comm.size + 3, 8
    h, hkv = heads
    q, k, v, dout = tensors(total, h, hkv, dim)
    pos = [at.positions("zigzag", r, comm.size, total) for r in range(comm.size)]
    tokens = [len(p) for p in pos]
    mine = [x[pos[comm.rank]].astype(dtype) for x in (q, k, v, dout)]
    variants = {"ring": (at.ring_attention, at.ring_attention_backward),
                "token_ring": (at.token_ring_attention, at.token_ring_attention_backward),
                "allgather": (at.allgather_attention, at.allgather_attention_backward),
                "ulysses": (at.ulysses_attention, at.ulysses_attention_backward)}
    assert set(variants) == set(at.VARIANTS)
    for name, (forward, backward) in variants.items():
        if name == "ulysses" and (h % comm.size or hkv % comm.size and comm.size % hkv):
            continue
        sent, sent_back = {}, {}
        out, lse = forward(*mine[:3], comm, True, stats=sent)
        backward(mine[3], *mine[:3], out, lse, comm, True, stats=sent_back)
        for stats, back in ((sent, False), (sent_back, True)):
            want = at.traffic(name, tokens, h, hkv, dim, dtype, backward=back, causal=True)
            assert stats["bytes_sent"] == want[comm.rank].sum(), (name, back)
    # by hand, for the forward: the block in hand is sent on at steps 0..P-2; TokenRing's
    # partials (out and lse) go back at steps 1..P-1
    item = np.dtype(dtype).itemsize
    held = [tokens[(comm.rank - s) % comm.size] for s in range(comm.size)]
    assert at.traffic("ring", tokens, h, hkv, dim, dtype)[comm.rank].sum() == sum(
        2 * n * hkv * dim * item for n in held[:-1])
    assert at.traffic("token_ring", tokens, h, hkv, dim, dtype)[comm.rank].sum() == sum(
        n * h * dim * item for n in held[:-1]) + sum(n * (h * dim + h) * item for n in held[1:])


def test_choose_attention_picks_the_fewest_bytes_on_the_busiest_link():
    # MHA on 8 ranks: Ulysses moves each token's q, k, v and out once; the rings move K/V
    # (or Q and partials) 7 times
    choice = at.choose_attention(8192, 32, 32, 128, 8)
    assert choice.name == "ulysses" and choice.forward is at.ulysses_attention
    assert choice.busiest["ulysses"] < choice.busiest["ring"] / 2
    # GQA 32/2 on 2 ranks: the K/V ring sends one small K/V block; Ulysses sends half of q
    choice = at.choose_attention(8192, 32, 2, 128, 2)
    assert choice.name in ("ring", "allgather") and choice.busiest["ring"] < choice.busiest["token_ring"]
    # 3 ranks do not split 32 heads: no Ulysses
    assert "ulysses" not in at.choose_attention(999, 32, 8, 64, 3).busiest
    # the busiest link is the closed form's: ring, forward only, 2 ranks of 4096 tokens
    assert at.choose_attention(8192, 8, 8, 64, 2, backward=False).busiest["ring"] == 4096 * 2 * 8 * 64 * 4
    with pytest.raises(InvalidArgumentError, match="ranks"):
        at.choose_attention(64, 8, 8, 64, 0)
    with pytest.raises(InvalidArgumentError, match="kv_heads"):
        at.choose_attention(64, 8, 3, 64, 2)
    with pytest.raises(InvalidArgumentError, match="variant"):
        at.traffic("stripe", [4, 4], 8, 8, 64)

@pytest.mark.gpu
@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_one_rank(name, causal):
    cp, dtype, tol = gpu_dtype(name)
    run_all(MPI.COMM_SELF, 11, 4, 2, 8, causal, "zigzag", dtype, tol, xp=cp)


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_gpu_every_variant_matches_the_reference(comm, name):
    cp, dtype, tol = gpu_dtype(name)
    for causal in (False, True):
        for layout in at.LAYOUTS:
            run_all(comm, 8 * comm.size + 3, 4, 2, 16, causal, layout, dtype, tol, xp=cp)  # GQA, uneven
        run_all(comm, 64 * comm.size, 4, 4, 64, causal, "zigzag", dtype, tol, xp=cp)  # MHA, longer


@pytest.mark.gpu
@pytest.mark.mpi(min_size=2)
def test_gpu_mixed_kinds_raise_on_every_rank(comm):
    from pyhpc import cuda

    cp = cuda.cupy()
    total = 8 * comm.size
    q, k, v, _ = tensors(total, 4, 2, 4)
    pos = at.positions("zigzag", comm.rank, comm.size, total)
    q, k, v = (cp.asarray(x[pos].astype(np.float32)) for x in (q, k, v))
    with pytest.raises(InvalidArgumentError, match="rank 1: token_ring_attention: k: is a numpy array"):
        at.token_ring_attention(q, k.get() if comm.rank == 1 else k, v, comm)
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):
        at.ring_attention(q.get() if comm.rank == 0 else q, k.get() if comm.rank == 0 else k,
                          v.get() if comm.rank == 0 else v, comm)


def test_token_ring_halves_move_a_quarter_fewer_bytes_than_the_ring():
    # causal MHA on the zigzag layout: high halves go round, low halves only to the ranks below
    # their owner, so over all links TokenRing moves 3/4 of the K/V ring's bytes (plus lse)
    for ranks in (2, 3, 4, 8):
        total = 4096 * ranks
        tokens = [len(at.positions("zigzag", r, ranks, total)) for r in range(ranks)]
        ring = at.traffic("ring", tokens, 8, 8, 64, causal=True).sum()
        token = at.traffic("token_ring", tokens, 8, 8, 64, causal=True).sum()
        plain = at.traffic("token_ring", tokens, 8, 8, 64, causal=False).sum()
        assert token / ring == pytest.approx(0.75 * (1 + 1 / 128), rel=1e-9), ranks  # lse: 1 float per 64 + 64
        assert plain / ring == pytest.approx(1 + 1 / 128, rel=1e-9)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("variant", at.VARIANTS)
def test_training_a_layer_matches_the_single_process_run(comm, variant):
    from pyhpc.attention.__main__ import train

    heads = 4 if variant != "ulysses" or 4 % comm.size == 0 else comm.size  # Ulysses splits heads over ranks
    _, history = train(comm, steps=3, total=16 * comm.size + 3, heads=heads, kv_heads=heads // 2 if heads % 2 == 0
                       else heads, variant=variant)
    for loss, want, worst in history:
        assert loss == pytest.approx(want, rel=1e-5) and worst < 1e-4, history
    assert history[-1][0] < history[0][0]  # it learns


def test_the_training_example_runs_on_two_ranks():
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pyhpc", "run", "-n", "2", "--timeout", "100", "python", "-m",
                           "pyhpc.attention", "--steps", "2", "--seq", "64", "--variant", "token_ring"],
                          capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert float(re.search(r"max gradient error against the single-process run: (\S+)", done.stdout).group(1)) < 1e-4
