"""Sequence-parallel attention over MPI (``pyhpc.attention``): ring (K/V ring) and TokenRing.

Every rank holds a slice of the sequence: ``q`` [S_local, H, D], ``k``/``v``
[S_local, H_kv, D] (GQA/MQA when H_kv divides H; K/V heads are never repeated on
the wire). Layouts: ``"contiguous"`` (rank r holds positions r*S/P ...) and
``"zigzag"`` (the sequence cut into 2P chunks, rank r holding chunks r and 2P-1-r,
which balances causal work); S_local may differ by one position between ranks'
chunks where the layout allows (``np.array_split`` order).

Block math: the attention of a block of queries against a block of keys gives
(out, lse); blocks merge exactly through their log-sum-exp in float64 on the CPU
(float32 and float64 inputs). The backward pass recomputes each block's
probabilities from the final lse (as FlashAttention does).

- :func:`ring_attention` / :func:`ring_attention_backward`: K and V travel round the
  ring (r -> r+1) while each rank computes its queries against the block in hand;
  in the backward pass dK and dV travel with their block and come home after P steps.
- :func:`token_ring_attention` / :func:`token_ring_attention_backward`: TokenRing: K
  and V stay; the query block travels one way (r -> r+1) and each block's partial
  (out, lse; in the backward, dQ) is sent straight back to the rank that owns the
  query; in the backward dK and dV accumulate where K and V live and never move.

The next step's transfers are posted before the current step computes. Bytes per
rank (``stats=``): the ring sends P-1 K/V blocks, 2 S_j H_kv D itemsize bytes each;
TokenRing sends P-1 query blocks (S_j H D itemsize) and P-1 partials (S_j (H D + H)
itemsize), S_j being the tokens of the block in hand. So for MHA TokenRing sends
about as many bytes as the ring plus the small lse, split over both directions of
every link; it sends fewer only when K/V is the bigger side (it never is with GQA). This module
is the first part of TokenRing's issue: the Ulysses variant,
``choose_attention``, GPU (cupy) and the overlap measurements are not written yet.

- :func:`allgather_attention` / :func:`allgather_attention_backward`: every rank gathers
  all of K and V (one ``Allgatherv``); the backward sums the dK/dV contributions back
  onto their owners with one ``Reduce_scatter``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pyhpc.errors import InvalidArgumentError

__all__ = ["LAYOUTS", "allgather_attention", "allgather_attention_backward", "attention_reference", "positions", "ring_attention", "ring_attention_backward",
           "token_ring_attention", "token_ring_attention_backward"]

LAYOUTS = ("contiguous", "zigzag")
_TAG = 0x7A77


def positions(layout: str, rank: int, size: int, total: int) -> np.ndarray:
    """The global positions of the tokens rank ``rank`` holds, in its local order."""
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout: {layout!r} is not one of {LAYOUTS}")
    if layout == "contiguous":
        return np.array_split(np.arange(total), size)[rank]
    chunks = np.array_split(np.arange(total), 2 * size)
    return np.concatenate([chunks[rank], chunks[2 * size - 1 - rank]])


# ---- block math --------------------------------------------------------------------------------

def _h(x: np.ndarray) -> np.ndarray:
    """[tokens, heads, dim] -> [heads, tokens, dim] (a view)."""
    return x.transpose(1, 0, 2)


_t = _h  # and back


def _expand(x: np.ndarray, heads: int) -> np.ndarray:
    """K or V heads repeated for the query heads they serve (GQA), in memory only."""
    group = heads // x.shape[1]
    return x if group == 1 else np.repeat(x, group, axis=1)


def _scores(q, k, scale, q_pos, k_pos, causal):
    s = _h(q) @ _h(_expand(k, q.shape[1])).transpose(0, 2, 1) * scale  # [H, Sq, Sk], batched BLAS
    if causal:
        s = np.where((q_pos[:, None] >= k_pos[None, :])[None], s, -np.inf)
    return s


def _block_forward(q, k, v, scale, q_pos, k_pos, causal):
    """(out [Sq, H, D], lse [H, Sq]) of queries q against one block of keys; lse = -inf where
    a query sees none of the block."""
    s = _scores(q.astype(np.float64), k.astype(np.float64), scale, q_pos, k_pos, causal)
    top = s.max(axis=2, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    p = np.exp(s - top)
    total = p.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (np.log(total) + top)[..., 0]
    out = _t(p / np.where(total > 0, total, 1.0) @ _h(_expand(v.astype(np.float64), q.shape[1])))
    return out, lse


def _merge(out, lse, block_out, block_lse):
    """Exact online-softmax merge of two partial results (log-sum-exp weights)."""
    new = np.logaddexp(lse, block_lse)
    safe = np.where(np.isfinite(new), new, 0.0)
    w_old = np.where(np.isfinite(lse), np.exp(lse - safe), 0.0)
    w_new = np.where(np.isfinite(block_lse), np.exp(block_lse - safe), 0.0)
    return out * w_old.T[..., None] + block_out * w_new.T[..., None], new


def _block_backward(q, k, v, out, lse, dout, scale, q_pos, k_pos, causal):
    """(dq, dk, dv) contributions of one key block, from the final out and lse (float64)."""
    heads = q.shape[1]
    s = _scores(q, k, scale, q_pos, k_pos, causal)
    p = np.exp(s - np.where(np.isfinite(lse), lse, 0.0)[..., None])
    p = np.where(np.isfinite(s), p, 0.0)
    ve = _expand(v, heads)
    dv_e = _t(p.transpose(0, 2, 1) @ _h(dout))
    dp = _h(dout) @ _h(ve).transpose(0, 2, 1)
    delta = (dout * out).sum(axis=2).T[..., None]
    ds = p * (dp - delta) * scale
    dq = _t(ds @ _h(_expand(k, heads)))
    dk_e = _t(ds.transpose(0, 2, 1) @ _h(q))
    return dq, _fold(dk_e, k.shape[1]), _fold(dv_e, v.shape[1])


def _fold(x: np.ndarray, kv_heads: int) -> np.ndarray:
    """Sum the gradients of the repeated heads back onto their K/V head (GQA)."""
    group = x.shape[1] // kv_heads
    return x if group == 1 else x.reshape(x.shape[0], kv_heads, group, x.shape[2]).sum(axis=2)


def attention_reference(q, k, v, causal=False, softmax_scale=None, dout=None):
    """Single-process attention in float64: (out, lse) and, with dout, (dq, dk, dv) too."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    pos = np.arange(q.shape[0])
    out, lse = _block_forward(q, k, v, scale, pos, pos, causal)
    if dout is None:
        return out, lse
    return (out, lse, *_block_backward(q, k, v, out, lse, np.asarray(dout, np.float64), scale, pos, pos, causal))


# ---- over MPI ------------------------------------------------------------------------------------

def _check(comm, q, k, v, layout, causal, what, dout=None):
    """Validate, then agree across ranks (a bad argument on one rank raises on all)."""
    error, total = None, 0
    try:
        if layout not in LAYOUTS:
            raise InvalidArgumentError(f"layout: {layout!r} is not one of {LAYOUTS}")
        for name, x in (("q", q), ("k", k), ("v", v)) + ((("dout", dout),) if dout is not None else ()):
            if not isinstance(x, np.ndarray) or x.ndim != 3:
                raise InvalidArgumentError(f"{name}: must be a numpy array [tokens, heads, dim], got "
                                           f"{getattr(x, 'shape', type(x).__name__)}")
            if x.dtype not in (np.float32, np.float64):
                raise InvalidArgumentError(f"{name}: dtype must be float32 or float64, got {x.dtype}")
        if k.shape != v.shape:
            raise InvalidArgumentError(f"v: shape {v.shape} differs from k's {k.shape}")
        if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
            raise InvalidArgumentError(f"k: shape {k.shape} does not fit q's {q.shape} (same tokens and dim)")
        if q.shape[1] % k.shape[1]:
            raise InvalidArgumentError(f"k: {k.shape[1]} K/V heads do not divide {q.shape[1]} query heads")
        if dout is not None and dout.shape != q.shape:
            raise InvalidArgumentError(f"dout: shape {dout.shape} differs from q's {q.shape}")
    except InvalidArgumentError as exc:
        error = f"{what}: {exc}"
    key = None if error else (layout, bool(causal), q.shape[1:], k.shape[1:], str(q.dtype))
    reports = comm.allgather((error, key, None if error else q.shape[0]))
    bad = [r for r, (e, _, _) in enumerate(reports) if e]
    if bad:
        raise InvalidArgumentError(f"rank {bad[0]}: {reports[bad[0]][0]}")
    if any(kk != reports[0][1] for _, kk, _ in reports):
        raise InvalidArgumentError(f"{what}: ranks disagree on (layout, causal, heads/dim, dtype): "
                                   f"{sorted({str(kk) for _, kk, _ in reports})}")
    total = sum(n for _, _, n in reports)
    size, rank = comm.Get_size(), comm.Get_rank()
    expected = [len(positions(layout, r, size, total)) for r in range(size)]
    if [n for _, _, n in reports] != expected:
        raise InvalidArgumentError(f"{what}: tokens per rank {[n for _, _, n in reports]} do not fit the "
                                   f"{layout} layout of {total} tokens over {size} ranks (expected {expected})")
    return total, [positions(layout, r, size, total) for r in range(size)]


def _count(stats, message: np.ndarray) -> None:
    if stats is not None:
        stats["bytes_sent"] = stats.get("bytes_sent", 0) + message.nbytes
        stats["messages"] = stats.get("messages", 0) + 1


def ring_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None):
    """(out [S_local, H, D] in q's dtype, lse [H, S_local] float64) of this rank's queries over the
    whole sequence; K and V travel round the ring. ``stats`` (a dict) gets the bytes and
    messages this rank sent."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    _, pos = _check(comm, q, k, v, layout, causal, "ring_attention")
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    out = np.zeros(q.shape, dtype=np.float64)
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    kv = np.stack([k, v])  # one message per step
    for step in range(size):
        owner = (rank - step) % size  # whose K/V block is here
        requests = []
        if step < size - 1:  # the next block is in flight while this one computes
            nxt = np.empty((2, len(pos[(owner - 1) % size]), *k.shape[1:]), dtype=k.dtype)
            requests = [comm.Isend(kv, (rank + 1) % size, _TAG), comm.Irecv(nxt, (rank - 1) % size, _TAG)]
            _count(stats, kv)
        if not causal or pos[rank].size and pos[owner].size and pos[rank].max() >= pos[owner].min():
            block_out, block_lse = _block_forward(q, kv[0], kv[1], scale, pos[rank], pos[owner], causal)
            out, lse = _merge(out, lse, block_out, block_lse)
        MPI.Request.Waitall(requests)
        if step < size - 1:
            kv = nxt
    return out.astype(q.dtype), lse


def ring_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None, layout="zigzag"):
    """(dq, dk, dv) for this rank's slices, from the forward's out and lse: K, V and their
    gradient accumulators travel round the ring and are back home after P steps."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    _, pos = _check(comm, q, k, v, layout, causal, "ring_attention_backward", dout=dout)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    q64, out64, dout64 = (np.asarray(x, np.float64) for x in (q, out, dout))
    dq = np.zeros(q.shape)
    # one travelling buffer: k, v, dk, dv of one rank's block (float64 accumulators)
    travel = np.stack([k.astype(np.float64), v.astype(np.float64), np.zeros(k.shape), np.zeros(k.shape)])
    for step in range(size):
        owner = (rank - step) % size
        if not causal or pos[rank].size and pos[owner].size and pos[rank].max() >= pos[owner].min():
            dq_b, dk_b, dv_b = _block_backward(q64, travel[0], travel[1], out64, lse, dout64, scale,
                                               pos[rank], pos[owner], causal)
            dq += dq_b
            travel[2] += dk_b
            travel[3] += dv_b
        # pass the block (with its gradients) on; after P passes it is home again
        nxt = np.empty((4, len(pos[(owner - 1) % size]), *k.shape[1:]))
        MPI.Request.Waitall([comm.Isend(travel, (rank + 1) % size, _TAG + 1),
                             comm.Irecv(nxt, (rank - 1) % size, _TAG + 1)])
        travel = nxt
    return dq.astype(q.dtype), travel[2].astype(k.dtype), travel[3].astype(v.dtype)


def token_ring_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None):
    """TokenRing's forward: (out, lse) like :func:`ring_attention`, but the query blocks travel
    (r -> r+1) and each partial (out, lse) goes straight back to the query's owner."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    _, pos = _check(comm, q, k, v, layout, causal, "token_ring_attention")
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    heads, dim = q.shape[1], q.shape[2]
    out = np.zeros(q.shape, dtype=np.float64)
    lse = np.full((heads, q.shape[0]), -np.inf)
    visiting = np.ascontiguousarray(q)
    pending, results = [], []
    for step in range(size):
        owner = (rank - step) % size  # whose queries are here
        requests = []
        if step < size - 1:
            nxt = np.empty((len(pos[(owner - 1) % size]), heads, dim), dtype=q.dtype)
            requests = [comm.Isend(visiting, (rank + 1) % size, _TAG + 2),
                        comm.Irecv(nxt, (rank - 1) % size, _TAG + 2)]
            _count(stats, visiting)
        # the partial this rank will receive for its own queries at this step comes from rank + step
        source = (rank + step) % size
        if step > 0:
            part = np.empty((len(pos[rank]), heads * dim + heads), dtype=q.dtype)
            results.append((part, comm.Irecv(part, source, _TAG + 3)))
        if not causal or pos[owner].size and pos[rank].size and pos[owner].max() >= pos[rank].min():
            block_out, block_lse = _block_forward(visiting, k, v, scale, pos[owner], pos[rank], causal)
        else:
            block_out = np.zeros((len(pos[owner]), heads, dim))
            block_lse = np.full((heads, len(pos[owner])), -np.inf)
        if step == 0:
            out, lse = _merge(out, lse, block_out, block_lse)
        else:
            # the partial travels in q's dtype (out and lse), merged in float64 at its owner
            packed = np.concatenate([block_out.reshape(len(pos[owner]), -1), block_lse.T], axis=1).astype(q.dtype)
            pending.append((packed, comm.Isend(packed, owner, _TAG + 3)))
            _count(stats, packed)
        MPI.Request.Waitall(requests)
        if step < size - 1:
            visiting = nxt
    for part, request in results:
        request.Wait()
        out, lse = _merge(out, lse, part[:, :heads * dim].reshape(q.shape).astype(np.float64),
                          part[:, heads * dim:].T.astype(np.float64))
    MPI.Request.Waitall([r for _, r in pending])
    return out.astype(q.dtype), lse


def token_ring_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None,
                                  layout="zigzag", stats=None):
    """TokenRing's backward: (dq, dk, dv) for this rank's slices. The query side of each block
    (q, dout, out, lse, in q's dtype) travels r -> r+1 as in the forward; every rank adds the
    block's dK/dV into its own K/V gradients, which never move, and sends the block's dQ
    partial straight back to the query's owner."""
    from mpi4py import MPI

    size, rank = comm.Get_size(), comm.Get_rank()
    _, pos = _check(comm, q, k, v, layout, causal, "token_ring_attention_backward", dout=dout)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    heads, dim = q.shape[1], q.shape[2]
    width = heads * dim
    k64, v64 = k.astype(np.float64), v.astype(np.float64)
    dq = np.zeros(q.shape)
    dk, dv = np.zeros(k.shape), np.zeros(v.shape)
    visiting = np.concatenate([q.reshape(len(q), -1), dout.reshape(len(q), -1), out.reshape(len(q), -1),
                               lse.T], axis=1).astype(q.dtype)
    pending, results = [], []
    for step in range(size):
        owner = (rank - step) % size
        requests = []
        if step < size - 1:
            nxt = np.empty((len(pos[(owner - 1) % size]), 3 * width + heads), dtype=q.dtype)
            requests = [comm.Isend(visiting, (rank + 1) % size, _TAG + 4),
                        comm.Irecv(nxt, (rank - 1) % size, _TAG + 4)]
            _count(stats, visiting)
        if step > 0:  # the dQ partial for this rank's queries computed at rank + step
            part = np.empty(q.shape, dtype=q.dtype)
            results.append((part, comm.Irecv(part, (rank + step) % size, _TAG + 5)))
        n = len(pos[owner])
        block = visiting.astype(np.float64)
        vq, vdout, vout = (block[:, i * width:(i + 1) * width].reshape(n, heads, dim) for i in range(3))
        dq_b = np.zeros((n, heads, dim))
        if not causal or n and pos[rank].size and pos[owner].max() >= pos[rank].min():
            dq_b, dk_b, dv_b = _block_backward(vq, k64, v64, vout, block[:, 3 * width:].T, vdout, scale,
                                               pos[owner], pos[rank], causal)
            dk += dk_b
            dv += dv_b
        if step == 0:
            dq += dq_b
        else:
            partial = np.ascontiguousarray(dq_b, dtype=q.dtype)
            pending.append((partial, comm.Isend(partial, owner, _TAG + 5)))
            _count(stats, partial)
        MPI.Request.Waitall(requests)
        if step < size - 1:
            visiting = nxt
    for part, request in results:
        request.Wait()
        dq += part
    MPI.Request.Waitall([r for _, r in pending])
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def allgather_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None):
    """(out, lse) after gathering every rank's K and V (one ``Allgatherv``): the simplest
    variant, and the one with the fewest messages; each rank receives the whole K/V."""
    k_all, v_all, pos, pos_all = _gather_kv(comm, q, k, v, layout, causal, "allgather_attention", stats)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    out, lse = _block_forward(q, k_all, v_all, scale, pos[comm.Get_rank()], pos_all, causal)
    return out.astype(q.dtype), lse


def allgather_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None,
                                 layout="zigzag"):
    """(dq, dk, dv): K and V gathered again, every rank's dK/dV contributions summed back onto
    their owners with one ``Reduce_scatter``."""
    k_all, v_all, pos, pos_all = _gather_kv(comm, q, k, v, layout, causal, "allgather_attention_backward",
                                            None, dout=dout)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    dq, dk_all, dv_all = _block_backward(np.asarray(q, np.float64), k_all.astype(np.float64),
                                         v_all.astype(np.float64), np.asarray(out, np.float64), lse,
                                         np.asarray(dout, np.float64), scale, pos[comm.Get_rank()], pos_all, causal)
    both = np.ascontiguousarray(np.stack([dk_all, dv_all], axis=1))  # [S, 2, H_kv, D]: one collective
    mine = np.empty((k.shape[0], 2, *k.shape[1:]))
    per_token = 2 * k.shape[1] * k.shape[2]
    comm.Reduce_scatter(both, mine, recvcounts=[len(p) * per_token for p in pos])
    return dq.astype(q.dtype), mine[:, 0].astype(k.dtype), mine[:, 1].astype(v.dtype)


def _gather_kv(comm, q, k, v, layout, causal, what, stats, dout=None):
    _, pos = _check(comm, q, k, v, layout, causal, what, dout=dout)
    per_token = 2 * k.shape[1] * k.shape[2]
    mine = np.ascontiguousarray(np.stack([k, v], axis=1))  # [S_local, 2, H_kv, D]
    total = sum(len(p) for p in pos)
    gathered = np.empty((total, 2, *k.shape[1:]), dtype=k.dtype)
    comm.Allgatherv(mine, [gathered, [len(p) * per_token for p in pos]])
    if stats is not None:
        stats["bytes_sent"] = stats.get("bytes_sent", 0) + (comm.Get_size() - 1) * mine.nbytes
        stats["messages"] = stats.get("messages", 0) + comm.Get_size() - 1
    return gathered[:, 0], gathered[:, 1], pos, np.concatenate(pos)
