"""Sequence-parallel attention over MPI (``pyhpc.attention``): ring (K/V ring) and TokenRing.

Every rank holds a slice of the sequence: ``q`` [S_local, H, D], ``k``/``v``
[S_local, H_kv, D] (GQA/MQA when H_kv divides H; K/V heads are never repeated on
the wire). Layouts: ``"contiguous"`` (rank r holds positions r*S/P ...) and
``"zigzag"`` (the sequence cut into 2P chunks, rank r holding chunks r and 2P-1-r,
which balances causal work); S_local may differ by one position between ranks'
chunks where the layout allows (``np.array_split`` order).

Arrays: numpy (float32, float64) or cupy (float16, bfloat16, float32, float64); what
comes back is of the kind that went in. Block math: the attention of a block of
queries against a block of keys gives (out, lse); blocks merge exactly through their
log-sum-exp, accumulating in float64 on the CPU and in float32 on the GPU (cuBLAS
matmuls of the inputs cast to float32; float64 stays float64). The backward pass
recomputes each block's probabilities from the final lse (as FlashAttention does).
Messages are rows of bytes, one per token, so that fields of different dtypes travel
together: lse and gradient partials travel in float32 for 16-bit inputs. Device
arrays go through host memory, so the MPI need not be CUDA-aware.

- :func:`ring_attention` / :func:`ring_attention_backward`: K and V travel round the
  ring (r -> r+1) while each rank computes its queries against the block in hand;
  in the backward pass dK and dV travel with their block and come home after P steps.
- :func:`token_ring_attention` / :func:`token_ring_attention_backward`: TokenRing: K
  and V stay; the query block travels one way (r -> r+1) and each block's partial
  (out, lse; in the backward, dQ) is sent straight back to the rank that owns the
  query; in the backward dK and dV accumulate where K and V live and never move.

The next step's transfers are posted before the current step computes. Bytes per
rank (``stats=``): the ring sends P-1 K/V blocks, 2 S_j H_kv D itemsize bytes each;
TokenRing sends P-1 query blocks (S_j H D itemsize) and P-1 partials (S_j (H D itemsize
+ H lse_itemsize)), S_j being the tokens of the block in hand. So for MHA TokenRing sends
about as many bytes as the ring plus the small lse, split over both directions of
every link; it sends fewer only when K/V is the bigger side (it never is with GQA). Not
written yet: the Ulysses variant, ``choose_attention`` and the overlap measurements.

- :func:`allgather_attention` / :func:`allgather_attention_backward`: every rank gathers
  all of K and V (one ``Allgatherv``); the backward sums the dK/dV contributions back
  onto their owners with one ``Reduce_scatter``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyhpc.cuda import array_module, is_cupy_array
from pyhpc.errors import InvalidArgumentError

__all__ = ["LAYOUTS", "VARIANTS", "Choice", "allgather_attention", "allgather_attention_backward",
           "attention_reference", "choose_attention", "positions", "ring_attention", "ring_attention_backward",
           "token_ring_attention", "token_ring_attention_backward", "traffic", "ulysses_attention",
           "ulysses_attention_backward"]

LAYOUTS = ("contiguous", "zigzag")
_POLL_S = 1e-3  # how often the progress thread polls: enough to finish MB-sized blocks during a block
_TAG = 0x7A77


def positions(layout: str, rank: int, size: int, total: int) -> np.ndarray:
    """The global positions of the tokens rank ``rank`` holds, in its local order."""
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout: {layout!r} is not one of {LAYOUTS}")
    if layout == "contiguous":
        return np.array_split(np.arange(total), size)[rank]
    chunks = np.array_split(np.arange(total), 2 * size)
    return np.concatenate([chunks[rank], chunks[2 * size - 1 - rank]])


# ---- block math (numpy or cupy: ``xp``) ------------------------------------------------------------

def _h(x):
    """[tokens, heads, dim] -> [heads, tokens, dim] (a view)."""
    return x.transpose(1, 0, 2)


_t = _h  # and back


def _expand(xp, x, heads: int):
    """K or V heads repeated for the query heads they serve (GQA), in memory only."""
    group = heads // x.shape[1]
    return x if group == 1 else xp.repeat(x, group, axis=1)


@dataclass(frozen=True)
class _Mask:
    """Which keys a query sees: causal or not, and with packed sequences (``cu``: their
    boundaries, an array of the block math's kind) only keys of the query's own sequence."""

    causal: bool
    cu: Any = None


def _scores(xp, q, k, scale, q_pos, k_pos, mask):
    s = _h(q) @ _h(_expand(xp, k, q.shape[1])).transpose(0, 2, 1) * scale  # [H, Sq, Sk], batched GEMM
    causal, cu = (mask.causal, mask.cu) if isinstance(mask, _Mask) else (mask, None)
    seen = None
    if causal:
        seen = q_pos[:, None] >= k_pos[None, :]
    if cu is not None:
        same = (xp.searchsorted(cu, q_pos, side="right")[:, None] == xp.searchsorted(cu, k_pos, side="right")[None, :])
        seen = same if seen is None else seen & same
    return s if seen is None else xp.where(seen[None], s, -xp.inf)


def _block_forward(xp, acc, q, k, v, scale, q_pos, k_pos, mask):
    """(out [Sq, H, D], lse [H, Sq]) in ``acc`` of queries q against one block of keys;
    lse = -inf where a query sees none of the block."""
    s = _scores(xp, q.astype(acc), k.astype(acc), scale, q_pos, k_pos, mask)
    top = s.max(axis=2, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    p = xp.exp(s - top)
    total = p.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (xp.log(total) + top)[..., 0]
    out = _t(p / xp.where(total > 0, total, 1.0) @ _h(_expand(xp, v.astype(acc), q.shape[1])))
    return out, lse


def _merge(xp, out, lse, block_out, block_lse):
    """Exact online-softmax merge of two partial results (log-sum-exp weights)."""
    new = xp.logaddexp(lse, block_lse)
    safe = xp.where(xp.isfinite(new), new, 0.0)
    w_old = xp.where(xp.isfinite(lse), xp.exp(lse - safe), 0.0)
    w_new = xp.where(xp.isfinite(block_lse), xp.exp(block_lse - safe), 0.0)
    return out * w_old.T[..., None] + block_out * w_new.T[..., None], new


def _block_backward(xp, q, k, v, out, lse, dout, scale, q_pos, k_pos, mask):
    """(dq, dk, dv) contributions of one key block, from the final out and lse (all in one
    accumulation dtype)."""
    heads = q.shape[1]
    s = _scores(xp, q, k, scale, q_pos, k_pos, mask)
    p = xp.exp(s - xp.where(xp.isfinite(lse), lse, 0.0)[..., None])
    p = xp.where(xp.isfinite(s), p, 0.0)
    ve = _expand(xp, v, heads)
    dv_e = _t(p.transpose(0, 2, 1) @ _h(dout))
    dp = _h(dout) @ _h(ve).transpose(0, 2, 1)
    delta = (dout * out).sum(axis=2).T[..., None]
    ds = p * (dp - delta) * scale
    dq = _t(ds @ _h(_expand(xp, k, heads)))
    dk_e = _t(ds.transpose(0, 2, 1) @ _h(q))
    return dq, _fold(dk_e, k.shape[1]), _fold(dv_e, v.shape[1])


def _fold(x, kv_heads: int):
    """Sum the gradients of the repeated heads back onto their K/V head (GQA)."""
    group = x.shape[1] // kv_heads
    return x if group == 1 else x.reshape(x.shape[0], kv_heads, group, x.shape[2]).sum(axis=2)


def attention_reference(q, k, v, causal=False, softmax_scale=None, dout=None, cu_seqlens=None):
    """Single-process attention in float64: (out, lse) and, with dout, (dq, dk, dv) too;
    ``cu_seqlens``: packed sequences (each token sees only its own sequence's keys)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    pos = np.arange(q.shape[0])
    mask = _Mask(bool(causal), None if cu_seqlens is None else _check_cu(cu_seqlens, q.shape[0]))
    out, lse = _block_forward(np, np.float64, q, k, v, scale, pos, pos, mask)
    if dout is None:
        return out, lse
    return (out, lse, *_block_backward(np, q, k, v, out, lse, np.asarray(dout, np.float64), scale, pos, pos,
                                       mask))


def _check_cu(cu_seqlens, total: int) -> np.ndarray:
    """cu_seqlens as int64: 0, then each packed sequence's end, the last one ``total``."""
    cu = np.asarray(_host(cu_seqlens))
    if cu.ndim != 1 or cu.size < 2 or not np.issubdtype(cu.dtype, np.integer):
        raise InvalidArgumentError(f"cu_seqlens: must be 1-D integers [0, end_1, ..., total], got {cu!r}")
    if cu[0] != 0 or cu[-1] != total or np.any(np.diff(cu) < 0):
        raise InvalidArgumentError(f"cu_seqlens: must start at 0, never decrease and end at the {total} tokens "
                                   f"of the whole sequence, got {cu.tolist()}")
    return cu.astype(np.int64)


# ---- over MPI ------------------------------------------------------------------------------------

_CPU_DTYPES = ("float32", "float64")
_GPU_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _check(comm, q, k, v, layout, causal, what, dout=None, extra=(), cu_seqlens=None):
    """Validate, then agree across ranks (a bad argument on one rank raises on all). Returns
    every rank's positions and the checked cu_seqlens (or None)."""
    error, cu = None, None
    try:
        if layout not in LAYOUTS:
            raise InvalidArgumentError(f"layout: {layout!r} is not one of {LAYOUTS}")
        gpu = is_cupy_array(q)
        named = (("q", q), ("k", k), ("v", v)) + ((("dout", dout),) if dout is not None else ()) + tuple(extra)
        for name, x in named:
            if not (isinstance(x, np.ndarray) or is_cupy_array(x)) or x.ndim != 3 and name != "lse":
                raise InvalidArgumentError(f"{name}: must be a numpy or cupy array [tokens, heads, dim], got "
                                           f"{getattr(x, 'shape', type(x).__name__)}")
            if is_cupy_array(x) != gpu:
                raise InvalidArgumentError(f"{name}: is a {'cupy' if is_cupy_array(x) else 'numpy'} array, "
                                           f"q a {'cupy' if gpu else 'numpy'} one: pass one kind")
            allowed = _GPU_DTYPES if gpu else _CPU_DTYPES
            if name != "lse" and x.dtype.name not in allowed:
                raise InvalidArgumentError(f"{name}: dtype must be one of {allowed} for "
                                           f"{'cupy' if gpu else 'numpy'} arrays, got {x.dtype}")
            if name not in ("q", "k", "v", "lse") and x.dtype != q.dtype:
                raise InvalidArgumentError(f"{name}: dtype {x.dtype} differs from q's {q.dtype}")
        if k.shape != v.shape:
            raise InvalidArgumentError(f"v: shape {v.shape} differs from k's {k.shape}")
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise InvalidArgumentError(f"k, v: dtypes {k.dtype}, {v.dtype} differ from q's {q.dtype}")
        if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
            raise InvalidArgumentError(f"k: shape {k.shape} does not fit q's {q.shape} (same tokens and dim)")
        if q.shape[1] % k.shape[1]:
            raise InvalidArgumentError(f"k: {k.shape[1]} K/V heads do not divide {q.shape[1]} query heads")
        for name, x in named[3:]:
            want = (q.shape[1], q.shape[0]) if name == "lse" else q.shape
            if x.shape != want:
                raise InvalidArgumentError(f"{name}: shape {x.shape} differs from {want} (q's {q.shape})")
    except InvalidArgumentError as exc:
        error = f"{what}: {exc}"
    key = None if error else (layout, bool(causal), q.shape[1:], k.shape[1:], str(q.dtype), is_cupy_array(q),
                              None if cu_seqlens is None else tuple(int(x) for x in np.asarray(_host(cu_seqlens))
                                                                      .reshape(-1)[:1 << 16]))
    reports = comm.allgather((error, key, None if error else q.shape[0]))
    bad = [r for r, (e, _, _) in enumerate(reports) if e]
    if bad:
        raise InvalidArgumentError(f"rank {bad[0]}: {reports[bad[0]][0]}")
    if any(kk != reports[0][1] for _, kk, _ in reports):
        raise InvalidArgumentError(f"{what}: ranks disagree on (layout, causal, heads/dim, dtype, cupy): "
                                   f"{sorted({str(kk) for _, kk, _ in reports})}")
    total = sum(n for _, _, n in reports)
    size = comm.Get_size()
    expected = [len(positions(layout, r, size, total)) for r in range(size)]
    if [n for _, _, n in reports] != expected:
        raise InvalidArgumentError(f"{what}: tokens per rank {[n for _, _, n in reports]} do not fit the "
                                   f"{layout} layout of {total} tokens over {size} ranks (expected {expected})")
    if cu_seqlens is not None:  # the same on every rank (compared above): every rank raises alike
        try:
            cu = _check_cu(cu_seqlens, total)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{what}: {exc}") from None
    return [positions(layout, r, size, total) for r in range(size)], cu


def _width(*fields) -> int:
    """Bytes per token of a message made of ``(dtype, per-token shape)`` fields."""
    return sum(np.dtype(d).itemsize * math.prod(shape) for d, shape in fields)


class _Send:
    """A send of byte rows. From the GPU, its rows are first copied to pinned host memory on a
    copy stream; it is posted to MPI once that copy is done (by the progress thread, or by
    whoever waits for it first), so the host never stops to wait for the GPU to send."""

    __slots__ = ("copied", "host", "dest", "tag", "rows", "request")

    def __init__(self, copied, host, dest, tag, rows) -> None:
        self.copied, self.host, self.dest, self.tag, self.rows = copied, host, dest, tag, rows
        self.request = None


class _Call:
    """One call's arrays and messages.

    ``xp`` is numpy or cupy; blocks compute and accumulate in ``acc`` (float64 on the CPU,
    float32 on the GPU unless the input is float64); lse and gradient partials travel in
    ``wire`` (float32 for 16-bit inputs, else the input's dtype). A message is a run of
    byte rows, one per token (its fields side by side), so fields of different dtypes go
    in one message. Device arrays go through pinned host memory on a copy stream of their
    own: the MPI need not be CUDA-aware. Sends are posted in the order they were made.
    """

    def __init__(self, comm, q, stats=None, causal=False, cu=None) -> None:
        self.comm, self.stats = comm, stats
        self.xp = array_module(q)
        self.mask = _Mask(bool(causal), None if cu is None else self.xp.asarray(cu))
        self.gpu = self.xp is not np
        self.dtype = q.dtype
        self.acc = np.dtype(np.float32 if self.gpu and q.dtype != np.float64 else np.float64)
        self.wire = np.dtype(np.float32) if q.dtype.itemsize < 4 else q.dtype
        self.copy_stream = self.xp.cuda.Stream(non_blocking=True) if self.gpu else None
        self.lock = threading.Lock()
        self.sends: list[_Send] = []  # every send of this call, kept until it is complete
        self.queue: list[_Send] = []  # sends not yet posted to MPI, in order
        self.inflight: list[Any] = []  # every request not yet known complete

    def on_device(self, x):
        return self.xp.asarray(x) if self.gpu else x

    def pack(self, *parts):
        """Byte rows [tokens, bytes] of arrays whose first axis is the token."""
        n = parts[0].shape[0]
        return self.xp.concatenate([self.xp.ascontiguousarray(p).reshape(n, math.prod(p.shape[1:]))
                                    .view(self.xp.uint8) for p in parts], axis=1)

    def unpack(self, rows, *fields):
        """The arrays of byte rows (host or device), on the device: fields are (dtype, shape)."""
        rows, out, start = self.on_device(rows), [], 0
        for dtype, shape in fields:
            width = _width((dtype, shape))
            piece = self.xp.ascontiguousarray(rows[:, start:start + width]).view(dtype)
            out.append(piece.reshape(rows.shape[0], *shape))
            start += width
        return out

    def isend(self, rows, dest: int, tag: int, count: bool = True) -> _Send:
        if isinstance(rows, np.ndarray):
            send = _Send(None, np.ascontiguousarray(rows), dest, tag, None)
        else:  # device rows: copied to pinned memory behind the work that made them
            cp = self.xp
            host = _pinned(cp, rows.shape)
            made = cp.cuda.Event(disable_timing=True)
            made.record()
            self.copy_stream.wait_event(made)
            rows = cp.ascontiguousarray(rows)
            try:
                rows.get(stream=self.copy_stream, out=host, blocking=False)
            except TypeError:  # a cupy without blocking=: the copy is ordered on the stream all the same
                rows.get(stream=self.copy_stream, out=host)
            copied = cp.cuda.Event(disable_timing=True)
            copied.record(self.copy_stream)
            send = _Send(copied, host, dest, tag, rows)
        with self.lock:
            self.sends.append(send)
            self.queue.append(send)
        self._post(block=False)
        if count and self.stats is not None:
            self.stats["bytes_sent"] = self.stats.get("bytes_sent", 0) + send.host.nbytes
            self.stats["messages"] = self.stats.get("messages", 0) + 1
        return send

    def flush(self) -> None:
        """Post every queued send (waiting for its copy): before anything that blocks."""
        self._post(block=True)

    def _post(self, block: bool) -> None:
        """Post queued sends to MPI in order while their copies are done; with ``block``, all of
        them, waiting for the copies."""
        with self.lock:
            while self.queue:
                send = self.queue[0]
                if send.copied is not None and not send.copied.done:
                    if not block:
                        return
                    send.copied.synchronize()
                self.queue.pop(0)
                send.request = self.comm.Isend([send.host, _byte()], send.dest, send.tag)
                send.rows = None  # the device rows are copied: they may go
                self.inflight.append(send.request)

    def irecv(self, tokens: int, width: int, source: int, tag: int):
        host = _pinned(self.xp, (tokens, width)) if self.gpu else np.empty((tokens, width), dtype=np.uint8)
        request = self.comm.Irecv([host, _byte()], source, tag)
        with self.lock:
            self.inflight.append(request)
        return host, request

    @contextlib.contextmanager
    def computing(self):
        """Around a block's compute: a helper thread posts the sends whose copies are done and
        polls every transfer in flight (an MPI progresses nonblocking transfers only inside MPI
        calls, and numpy makes none), unless PYHPC_ATTENTION_PROGRESS=0 or the MPI is not
        thread-multiple."""
        start = time.perf_counter()
        stop, thread = threading.Event(), None
        if _progress_thread() and (self.inflight or self.queue):
            def poll():
                from mpi4py import MPI

                while not stop.wait(_POLL_S):
                    self._post(block=False)
                    with self.lock:
                        requests = list(self.inflight)
                    if MPI.Request.Testall(requests) and not self.queue:
                        break

            thread = threading.Thread(target=poll, name="pyhpc-attention-progress", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            self._add("compute_seconds", time.perf_counter() - start)

    def wait(self, requests) -> None:
        """Wait for a step's transfers; stats: how many were done when the compute ended, and
        how long the rest took."""
        from mpi4py import MPI

        requests = list(requests)
        if not requests:
            return
        self._add("transfers", len(requests))
        self._add("transfers_done_by_compute_end",
                  sum(bool(r.request.Test()) if isinstance(r, _Send) and r.request is not None
                      else (not isinstance(r, _Send) and bool(r.Test())) for r in requests))
        start = time.perf_counter()
        self.flush()  # never block with sends of ours unposted: a peer may be waiting for one
        MPI.Request.Waitall([r.request if isinstance(r, _Send) else r for r in requests])
        self._add("wait_seconds", time.perf_counter() - start)
        with self.lock:
            self.inflight = [r for r in self.inflight if r]  # completed requests are MPI_REQUEST_NULL (falsy)

    def _add(self, key: str, value) -> None:
        if self.stats is not None:
            self.stats[key] = self.stats.get(key, 0) + value

    def finish(self) -> None:
        self.flush()
        _waitall([s.request for s in self.sends])
        self.sends.clear()
        self.inflight.clear()


def _pinned(cp, shape) -> np.ndarray:
    """Page-locked host bytes (cupy's pinned pool), so device copies run asynchronously."""
    nbytes = math.prod(shape)
    return np.frombuffer(cp.cuda.alloc_pinned_memory(max(nbytes, 1)), dtype=np.uint8, count=nbytes).reshape(shape)


@functools.lru_cache(maxsize=None)
def _thread_multiple() -> bool:
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def _progress_thread() -> bool:
    from pyhpc import settings

    return bool(settings.get("PYHPC_ATTENTION_PROGRESS")) and _thread_multiple()


def _host(x) -> np.ndarray:
    get = getattr(x, "get", None)  # cupy
    return get() if get is not None and not isinstance(x, np.ndarray) else np.asarray(x)


def _byte():
    from mpi4py import MPI

    return MPI.BYTE


def _waitall(requests) -> None:
    from mpi4py import MPI

    MPI.Request.Waitall(list(requests))


def _visible(causal, q_pos, k_pos) -> tuple[int, int]:
    """(first query, key count): with a causal mask the queries that see any key are a suffix
    and the keys any query sees a prefix (both layouts hold positions in ascending order)."""
    if not (len(q_pos) and len(k_pos)):
        return len(q_pos), 0
    if not causal:
        return 0, len(k_pos)
    return int(np.searchsorted(q_pos, k_pos[0], side="left")), int(np.searchsorted(k_pos, q_pos[-1], side="right"))


def _attend(call, q, k, v, scale, q_pos, k_pos, causal):
    """(out, lse) of queries q over keys k, computing only the queries that see a key and the
    keys a query sees."""
    xp, acc = call.xp, call.acc
    first, n = _visible(causal, q_pos, k_pos)
    out, lse = xp.zeros(q.shape, acc), xp.full((q.shape[1], q.shape[0]), -np.inf, acc)
    if first < len(q_pos) and n:
        out[first:], lse[:, first:] = _block_forward(xp, acc, q[first:], k[:n], v[:n], scale,
                                                     call.on_device(q_pos[first:]), call.on_device(k_pos[:n]),
                                                     call.mask)
    return out, lse


def _attend_backward(call, q, k, v, out, lse, dout, scale, q_pos, k_pos, causal):
    """(dq, dk, dv) of one block (accumulation dtype), over the same visible part as
    :func:`_attend`; the gradients have all of q's and k's rows."""
    xp, acc = call.xp, call.acc
    first, n = _visible(causal, q_pos, k_pos)
    dq, dk, dv = xp.zeros(q.shape, acc), xp.zeros(k.shape, acc), xp.zeros(v.shape, acc)
    if first < len(q_pos) and n:
        dq[first:], dk[:n], dv[:n] = _block_backward(xp, q[first:], k[:n], v[:n], out[first:], lse[:, first:],
                                                     dout[first:], scale, call.on_device(q_pos[first:]),
                                                     call.on_device(k_pos[:n]), call.mask)
    return dq, dk, dv


def ring_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None, cu_seqlens=None):
    """(out [S_local, H, D] in q's dtype, lse [H, S_local] in the accumulation dtype) of this
    rank's queries over the whole sequence; K and V travel round the ring. ``stats`` (a dict)
    gets the bytes and messages this rank sent."""
    size, rank = comm.Get_size(), comm.Get_rank()
    pos, cu = _check(comm, q, k, v, layout, causal, "ring_attention", cu_seqlens=cu_seqlens)
    call = _Call(comm, q, stats, causal, cu)
    xp, scale = call.xp, softmax_scale or 1.0 / math.sqrt(q.shape[2])
    kv_fields = [(q.dtype, k.shape[1:])] * 2
    out = xp.zeros(q.shape, dtype=call.acc)
    lse = xp.full((q.shape[1], q.shape[0]), -np.inf, dtype=call.acc)
    block, kb, vb = None, k, v  # the block in hand: byte rows (None: our own) and its K, V
    for step in range(size):
        owner = (rank - step) % size  # whose K/V block is here
        requests = []
        if step < size - 1:  # the next block is in flight while this one computes
            nxt, receive = call.irecv(len(pos[(owner - 1) % size]), _width(*kv_fields), (rank - 1) % size, _TAG)
            requests = [receive, call.isend(call.pack(k, v) if block is None else block, (rank + 1) % size, _TAG)]
        with call.computing():
            block_out, block_lse = _attend(call, q, kb, vb, scale, pos[rank], pos[owner], causal)
            out, lse = _merge(xp, out, lse, block_out, block_lse)
        call.wait(requests)
        if step < size - 1:
            block = nxt
            kb, vb = call.unpack(nxt, *kv_fields)
    call.finish()
    return out.astype(q.dtype), lse


def ring_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None, layout="zigzag",
                            stats=None, cu_seqlens=None):
    """(dq, dk, dv) for this rank's slices, from the forward's out and lse: K, V and their
    gradient accumulators travel round the ring and are back home after P steps."""
    size, rank = comm.Get_size(), comm.Get_rank()
    pos, cu = _check(comm, q, k, v, layout, causal, "ring_attention_backward", dout=dout,
                 extra=(("out", out), ("lse", lse)), cu_seqlens=cu_seqlens)
    call = _Call(comm, q, stats, causal, cu)
    xp, acc, scale = call.xp, call.acc, softmax_scale or 1.0 / math.sqrt(q.shape[2])
    qa, outa, douta, lsea = q.astype(acc), out.astype(acc), dout.astype(acc), lse.astype(acc)
    dq = xp.zeros(q.shape, dtype=acc)
    # k, v travel ahead of the compute (the next block is in flight while this one computes);
    # each block's dk, dv accumulators travel behind it, one step later, and come home after P
    kv_fields, acc_fields = [(q.dtype, k.shape[1:])] * 2, [(acc, k.shape[1:])] * 2
    kb, vb = k, v
    block, incoming = None, None  # the block in hand as byte rows (None: our own); its accumulators
    for step in range(size):
        owner = (rank - step) % size
        requests = []
        if step < size - 1:
            nxt, receive = call.irecv(len(pos[(owner - 1) % size]), _width(*kv_fields), (rank - 1) % size, _TAG)
            requests = [receive, call.isend(call.pack(k, v) if block is None else block, (rank + 1) % size, _TAG)]
        with call.computing():
            dq_b, dk_b, dv_b = _attend_backward(call, qa, kb.astype(acc), vb.astype(acc), outa, lsea, douta, scale,
                                                pos[rank], pos[owner], causal)
            dq += dq_b
        if incoming is not None:  # this block's accumulators, from the rank that had it before
            call.wait([incoming[1]])
            got_k, got_v = call.unpack(incoming[0], *acc_fields)
            dk_b, dv_b = dk_b + got_k, dv_b + got_v
        call.isend(call.pack(dk_b, dv_b), (rank + 1) % size, _TAG + 1)
        incoming = call.irecv(len(pos[(owner - 1) % size]), _width(*acc_fields), (rank - 1) % size, _TAG + 1)
        call.wait(requests)
        if step < size - 1:
            block = nxt
            kb, vb = call.unpack(nxt, *kv_fields)
    call.wait([incoming[1]])  # this rank's own block, home after P steps
    dkb, dvb = call.unpack(incoming[0], *acc_fields)
    call.finish()
    return dq.astype(q.dtype), dkb.astype(k.dtype), dvb.astype(v.dtype)


def token_ring_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None, cu_seqlens=None):
    """TokenRing's forward: (out, lse) like :func:`ring_attention`, but the query blocks travel
    (r -> r+1) and each partial (out in q's dtype, lse in the wire dtype) goes straight back
    to the query's owner."""
    size, rank = comm.Get_size(), comm.Get_rank()
    pos, cu = _check(comm, q, k, v, layout, causal, "token_ring_attention", cu_seqlens=cu_seqlens)
    call = _Call(comm, q, stats, causal, cu)
    xp, acc, scale = call.xp, call.acc, softmax_scale or 1.0 / math.sqrt(q.shape[2])
    heads, dim = q.shape[1], q.shape[2]
    q_fields = [(q.dtype, (heads, dim))]
    part_fields = [(q.dtype, (heads, dim)), (call.wire, (heads,))]
    out = xp.zeros(q.shape, dtype=acc)
    lse = xp.full((heads, q.shape[0]), -np.inf, dtype=acc)
    if causal and layout == "zigzag" and size > 1:
        def compute(owner, rows, fields):
            block_out, block_lse = _attend(call, fields[0], k, v, scale, pos[owner][rows], pos[rank], causal)
            return [block_out.astype(q.dtype), block_lse.T.astype(call.wire)]

        for rows, (part_out, part_lse) in _zigzag_token_ring(call, pos, q_fields, lambda rows: call.pack(q[rows]),
                                                               compute, part_fields, _TAG + 8):
            out[rows], lse[:, rows] = _merge(xp, out[rows], lse[:, rows], part_out.astype(acc),
                                             part_lse.T.astype(acc))
        call.finish()
        return out.astype(q.dtype), lse
    k_pos = call.on_device(pos[rank])
    block, visiting = None, q  # the query block in hand: byte rows (None: our own) and its q
    results = []
    for step in range(size):
        owner = (rank - step) % size  # whose queries are here
        requests = []
        if step < size - 1:
            nxt, receive = call.irecv(len(pos[(owner - 1) % size]), _width(*q_fields), (rank - 1) % size, _TAG + 2)
            requests = [receive, call.isend(call.pack(q) if block is None else block, (rank + 1) % size, _TAG + 2)]
        if step > 0:  # the partial for this rank's queries computed at this step comes from rank + step
            results.append(call.irecv(len(pos[rank]), _width(*part_fields), (rank + step) % size, _TAG + 3))
        with call.computing():
            block_out, block_lse = _attend(call, visiting, k, v, scale, pos[owner], pos[rank], causal)
            if step == 0:
                out, lse = _merge(xp, out, lse, block_out, block_lse)
            else:
                call.isend(call.pack(block_out.astype(q.dtype), block_lse.T.astype(call.wire)), owner, _TAG + 3)
        call.wait(requests)
        if step < size - 1:
            block = nxt
            (visiting,) = call.unpack(nxt, *q_fields)
    call.flush()
    for part, request in results:
        request.Wait()
        part_out, part_lse = call.unpack(part, *part_fields)
        out, lse = _merge(xp, out, lse, part_out.astype(acc), part_lse.T.astype(acc))
    call.finish()
    return out.astype(q.dtype), lse


def token_ring_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None,
                                  layout="zigzag", stats=None, cu_seqlens=None):
    """TokenRing's backward: (dq, dk, dv) for this rank's slices. The query side of each block
    (q, dout, out in q's dtype, lse in the wire dtype) travels r -> r+1 as in the forward;
    every rank adds the block's dK/dV into its own K/V gradients, which never move, and
    sends the block's dQ partial (wire dtype) straight back to the query's owner."""
    size, rank = comm.Get_size(), comm.Get_rank()
    pos, cu = _check(comm, q, k, v, layout, causal, "token_ring_attention_backward", dout=dout,
                 extra=(("out", out), ("lse", lse)), cu_seqlens=cu_seqlens)
    call = _Call(comm, q, stats, causal, cu)
    xp, acc, scale = call.xp, call.acc, softmax_scale or 1.0 / math.sqrt(q.shape[2])
    heads, dim = q.shape[1], q.shape[2]
    fields = [(q.dtype, (heads, dim))] * 3 + [(call.wire, (heads,))]
    dq_fields = [(call.wire, (heads, dim))]
    ka, va = k.astype(acc), v.astype(acc)
    dq = xp.zeros(q.shape, dtype=acc)
    dk, dv = xp.zeros(k.shape, dtype=acc), xp.zeros(v.shape, dtype=acc)
    block = call.pack(q, dout, out.astype(q.dtype), lse.T.astype(call.wire))
    if causal and layout == "zigzag" and size > 1:
        def compute(owner, rows, got):
            vq, vdout, vout, vlse = (x.astype(acc) for x in got)
            dq_b, dk_b, dv_b = _attend_backward(call, vq, ka, va, vout, vlse.T, vdout, scale, pos[owner][rows],
                                                pos[rank], causal)
            dk[...] += dk_b
            dv[...] += dv_b
            return [dq_b.astype(call.wire)]

        for rows, (part,) in _zigzag_token_ring(call, pos, fields, lambda rows: block[rows], compute, dq_fields,
                                                _TAG + 12):
            dq[rows] += part.astype(acc)
        call.finish()
        return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)
    results = []
    for step in range(size):
        owner = (rank - step) % size
        requests = []
        if step < size - 1:
            nxt, receive = call.irecv(len(pos[(owner - 1) % size]), _width(*fields), (rank - 1) % size, _TAG + 4)
            requests = [receive, call.isend(block, (rank + 1) % size, _TAG + 4)]
        if step > 0:  # the dQ partial for this rank's queries computed at rank + step
            results.append(call.irecv(len(pos[rank]), _width(*dq_fields), (rank + step) % size, _TAG + 5))
        with call.computing():
            vq, vdout, vout, vlse = (x.astype(acc) for x in call.unpack(block, *fields))
            dq_b, dk_b, dv_b = _attend_backward(call, vq, ka, va, vout, vlse.T, vdout, scale, pos[owner],
                                                pos[rank], causal)
            dk += dk_b
            dv += dv_b
            if step == 0:
                dq += dq_b
            else:
                call.isend(call.pack(dq_b.astype(call.wire)), owner, _TAG + 5)
        call.wait(requests)
        if step < size - 1:
            block = nxt
    call.flush()
    for part, request in results:
        request.Wait()
        dq += call.unpack(part, *dq_fields)[0].astype(acc)
    call.finish()
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _zigzag_token_ring(call, pos, fields, half_of, compute, part_fields, tag):
    """TokenRing's schedule for causal attention on the zigzag layout, where each query block
    travels as two halves that go separate ways. Rank o holds chunk o ("low") and chunk
    2P-1-o ("high"). Every rank's keys are visible to o's high half, so it travels right
    round the whole ring; only ranks r < o see o's low half (against their own low chunk),
    so it travels left, o -> o-1 -> ... -> 0, and no further. Each half's partial goes
    straight back to its owner. Over the ring that is 3/4 of the bytes of whole blocks.

    ``half_of(rows)`` gives this rank's byte rows for a slice of its tokens; ``compute(owner,
    rows, arrays)`` the partial (arrays of ``part_fields``) of that owner's rows ``rows``
    against this rank's keys. Returns [(rows, partial arrays)] for this rank's own tokens,
    the own block's included.
    """
    comm, size, rank = call.comm, call.comm.Get_size(), call.comm.Get_rank()
    total = sum(len(p) for p in pos)
    low = [len(c) for c in np.array_split(np.arange(total), 2 * size)[:size]]
    rows = [(slice(0, low[o]), slice(low[o], len(pos[o]))) for o in range(size)]  # (low, high) of each owner
    width, part_width = _width(*fields), _width(*part_fields)
    right, left = (rank + 1) % size, rank - 1
    mine = rows[rank]
    # partials of this rank's halves: the high one from every other rank, the low one from ranks below
    results = [(mine[1], call.irecv(len(pos[rank]) - low[rank], part_width, (rank + s) % size, tag + 2))
               for s in range(1, size)]
    results += [(mine[0], call.irecv(low[rank], part_width, rank - s, tag + 3)) for s in range(1, rank + 1)]
    got = []

    def work(s, high, low_half):
        """Compute the halves in hand after s steps (the own whole block at s = 0); send the
        partials home."""
        if s == 0:
            whole = slice(0, len(pos[rank]))
            got.append((whole, compute(rank, whole, call.unpack(half_of(whole), *fields))))
            return
        o = (rank - s) % size
        call.isend(call.pack(*compute(o, rows[o][1], call.unpack(high, *fields))), o, tag + 2)
        if low_half is not None:
            o = rank + s
            call.isend(call.pack(*compute(o, rows[o][0], call.unpack(low_half, *fields))), o, tag + 3)

    high, low_half = half_of(mine[1]), half_of(mine[0])  # in hand after step s: owners r-s and r+s
    for step in range(1, size + 1):  # post step's transfers, then compute what is in hand
        requests, nxt_high, nxt_low = [], None, None
        if step < size:
            o_high, o_low = (rank - step) % size, rank + step
            nxt_high, receive = call.irecv(len(pos[o_high]) - low[o_high], width, (rank - 1) % size, tag)
            requests += [receive, call.isend(high, right, tag)]
            if o_low < size:
                nxt_low, receive = call.irecv(low[o_low], width, rank + 1, tag + 1)
                requests.append(receive)
            if left >= 0 and low_half is not None:
                requests.append(call.isend(low_half, left, tag + 1))
        with call.computing():
            work(step - 1, high, low_half if step > 1 else None)
        call.wait(requests)
        high, low_half = nxt_high, nxt_low
    call.flush()
    for where, (part, request) in results:
        request.Wait()
        got.append((where, call.unpack(part, *part_fields)))
    return got


def allgather_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None, cu_seqlens=None):
    """(out, lse) after gathering every rank's K and V (one ``Allgatherv``): the simplest
    variant, and the one with the fewest messages; each rank receives the whole K/V."""
    pos, cu = _check(comm, q, k, v, layout, causal, "allgather_attention", cu_seqlens=cu_seqlens)
    call = _Call(comm, q, stats, causal, cu)
    k_all, v_all = _gather_kv(call, k, v, pos)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    out, lse = _block_forward(call.xp, call.acc, q, k_all, v_all, scale, call.on_device(pos[comm.Get_rank()]),
                              call.on_device(np.concatenate(pos)), call.mask)
    return out.astype(q.dtype), lse


def allgather_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None,
                                 layout="zigzag", stats=None, cu_seqlens=None):
    """(dq, dk, dv): K and V gathered again, every rank's dK/dV contributions summed back onto
    their owners with one ``Reduce_scatter`` (in the accumulation dtype)."""
    pos, cu = _check(comm, q, k, v, layout, causal, "allgather_attention_backward", dout=dout,
                 extra=(("out", out), ("lse", lse)), cu_seqlens=cu_seqlens)
    call = _Call(comm, q, stats, causal, cu)
    xp, acc = call.xp, call.acc
    k_all, v_all = _gather_kv(call, k, v, pos)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[2])
    dq, dk_all, dv_all = _block_backward(xp, q.astype(acc), k_all.astype(acc), v_all.astype(acc), out.astype(acc),
                                         lse.astype(acc), dout.astype(acc), scale,
                                         call.on_device(pos[comm.Get_rank()]), call.on_device(np.concatenate(pos)),
                                         call.mask)
    both = np.ascontiguousarray(_host(xp.stack([dk_all, dv_all], axis=1)))  # [S, 2, H_kv, D]: one collective
    mine = np.empty((k.shape[0], 2, *k.shape[1:]), dtype=acc)
    per_token = 2 * k.shape[1] * k.shape[2]
    comm.Reduce_scatter(both, mine, recvcounts=[len(p) * per_token for p in pos])
    if stats is not None:  # counted as a direct exchange: every other rank's rows, once
        stats["bytes_sent"] += (both.shape[0] - k.shape[0]) * per_token * both.itemsize
        stats["messages"] += comm.Get_size() - 1
    mine = call.on_device(mine)
    return dq.astype(q.dtype), mine[:, 0].astype(k.dtype), mine[:, 1].astype(v.dtype)


def _gather_kv(call, k, v, pos):
    """Every rank's K and V (in global order of the ranks' tokens), on the device."""
    fields = [(k.dtype, k.shape[1:])] * 2
    mine = np.ascontiguousarray(_host(call.pack(k, v)))
    width = _width(*fields)
    gathered = np.empty((sum(len(p) for p in pos), width), dtype=np.uint8)
    call.comm.Allgatherv([mine, _byte()], [gathered, [len(p) * width for p in pos], _byte()])
    size = call.comm.Get_size()
    if call.stats is not None:
        call.stats["bytes_sent"] = call.stats.get("bytes_sent", 0) + (size - 1) * mine.nbytes
        call.stats["messages"] = call.stats.get("messages", 0) + size - 1
    return call.unpack(gathered, *fields)


# ---- Ulysses: all-to-all over heads ------------------------------------------------------------------

def _ulysses_heads(heads: int, kv_heads: int, size: int) -> list[tuple[slice, slice]]:
    """Per rank: (its query heads, the K/V heads they read) for the Ulysses exchange."""
    h, group = heads // size, heads // kv_heads
    return [(slice(j * h, (j + 1) * h), slice(j * h // group, ((j + 1) * h - 1) // group + 1)) for j in range(size)]


def _ulysses_shares(q, k, pos, rank):
    """(every rank's (query heads, K/V heads), every rank's tokens, this rank's query and
    K/V head counts)."""
    split = _ulysses_heads(q.shape[1], k.shape[1], len(pos))
    qh, kh = split[rank]
    return split, [len(p) for p in pos], qh.stop - qh.start, kh.stop - kh.start


def _check_ulysses(comm, q, k, what) -> None:
    """Ulysses splits heads over ranks: P must divide H, and P and H_kv one another (each
    rank's query heads then read a whole number of K/V heads). Shapes agree across ranks
    already, so every rank raises alike."""
    size, heads, kv_heads = comm.Get_size(), q.shape[1], k.shape[1]
    if heads % size:
        raise InvalidArgumentError(f"{what}: q: {heads} heads do not split over {size} ranks")
    if kv_heads % size and size % kv_heads:
        raise InvalidArgumentError(f"{what}: k: {kv_heads} K/V heads and {size} ranks: one must divide the other")


def _alltoall(call, parts, recv_rows, recv_width):
    """One ``Alltoallv`` of byte rows: ``parts[j]`` (rows for rank j, on the host or device)
    out; back the rows from every rank in rank order ([sum(recv_rows), recv_width], host)."""
    size, rank = call.comm.Get_size(), call.comm.Get_rank()
    flat = [p.reshape(-1) for p in parts]
    send = np.ascontiguousarray(_host(call.xp.concatenate(flat)))
    counts = [int(p.size) for p in flat]
    recv = np.empty((sum(recv_rows), recv_width), dtype=np.uint8)
    rcounts = [n * recv_width for n in recv_rows]
    call.comm.Alltoallv([send, counts, _offsets(counts), _byte()], [recv, rcounts, _offsets(rcounts), _byte()])
    if call.stats is not None:
        call.stats["bytes_sent"] = call.stats.get("bytes_sent", 0) + sum(counts) - counts[rank]
        call.stats["messages"] = call.stats.get("messages", 0) + size - 1
    return recv


def _offsets(counts):
    return [int(x) for x in np.concatenate([[0], np.cumsum(counts)[:-1]])]


def ulysses_attention(q, k, v, comm, causal=False, softmax_scale=None, layout="zigzag", stats=None, cu_seqlens=None):
    """DeepSpeed-Ulysses: (out, lse) like :func:`ring_attention`. One all-to-all gives each rank
    all tokens of H/P query heads (and the K/V heads they read); it computes their attention
    over the whole sequence; one all-to-all sends out and lse back to the tokens' owners.
    P must divide H, and P and H_kv one another."""
    size, rank = comm.Get_size(), comm.Get_rank()
    pos, cu = _check(comm, q, k, v, layout, causal, "ulysses_attention", cu_seqlens=cu_seqlens)
    _check_ulysses(comm, q, k, "ulysses_attention")
    call = _Call(comm, q, stats, causal, cu)
    xp, acc, scale = call.xp, call.acc, softmax_scale or 1.0 / math.sqrt(q.shape[2])
    split, tokens, h, kv = _ulysses_shares(q, k, pos, rank)
    dim = q.shape[2]
    fields = [(q.dtype, (h, dim)), (q.dtype, (kv, dim)), (q.dtype, (kv, dim))]
    rows = _alltoall(call, [call.pack(q[:, a], k[:, b], v[:, b]) for a, b in split], tokens, _width(*fields))
    qa, ka, va = call.unpack(rows, *fields)
    every = call.on_device(np.concatenate(pos))
    out_h, lse_h = _block_forward(xp, acc, qa, ka, va, scale, every, every, call.mask)  # [S, h, D], [h, S]
    starts = np.concatenate([[0], np.cumsum(tokens)]).astype(int)
    back = [call.pack(out_h[starts[i]:starts[i + 1]].astype(q.dtype), lse_h[:, starts[i]:starts[i + 1]].T
                      .astype(call.wire)) for i in range(size)]
    part_fields = [(q.dtype, (h, dim)), (call.wire, (h,))]
    parts_out, parts_lse = call.unpack(_alltoall(call, back, [len(q)] * size, _width(*part_fields)), *part_fields)
    # from rank j: this rank's tokens for heads j*h..(j+1)*h-1; heads in rank order are all H
    out = parts_out.reshape(size, len(q), h, dim).transpose(1, 0, 2, 3).reshape(q.shape)
    lse = parts_lse.reshape(size, len(q), h).transpose(0, 2, 1).reshape(q.shape[1], len(q))
    return out.astype(q.dtype), lse.astype(acc)


def ulysses_attention_backward(dout, q, k, v, out, lse, comm, causal=False, softmax_scale=None,
                               layout="zigzag", stats=None, cu_seqlens=None):
    """(dq, dk, dv) for Ulysses: one all-to-all of the query side and K/V by heads, the
    backward of whole-sequence attention for H/P heads, one all-to-all of dQ and dK/dV
    back (dK/dV in the wire dtype, summed at the owner where K/V heads were shared)."""
    size, rank = comm.Get_size(), comm.Get_rank()
    pos, cu = _check(comm, q, k, v, layout, causal, "ulysses_attention_backward", dout=dout,
                 extra=(("out", out), ("lse", lse)), cu_seqlens=cu_seqlens)
    _check_ulysses(comm, q, k, "ulysses_attention_backward")
    call = _Call(comm, q, stats, causal, cu)
    xp, acc, scale = call.xp, call.acc, softmax_scale or 1.0 / math.sqrt(q.shape[2])
    split, tokens, h, kv = _ulysses_shares(q, k, pos, rank)
    dim = q.shape[2]
    fields = [(q.dtype, (h, dim))] * 3 + [(call.wire, (h,))] + [(q.dtype, (kv, dim))] * 2
    out_, lse_t = out.astype(q.dtype), lse.T.astype(call.wire)
    rows = _alltoall(call, [call.pack(q[:, a], dout[:, a], out_[:, a], lse_t[:, a], k[:, b], v[:, b])
                            for a, b in split], tokens, _width(*fields))
    qa, da, oa, la, ka, va = (x.astype(acc) for x in call.unpack(rows, *fields))
    every = call.on_device(np.concatenate(pos))
    dq_h, dk_h, dv_h = _block_backward(xp, qa, ka, va, oa, la.T, da, scale, every, every, call.mask)
    starts = np.concatenate([[0], np.cumsum(tokens)]).astype(int)
    back = [call.pack(dq_h[starts[i]:starts[i + 1]].astype(q.dtype), dk_h[starts[i]:starts[i + 1]].astype(call.wire),
                      dv_h[starts[i]:starts[i + 1]].astype(call.wire)) for i in range(size)]
    dq = xp.empty(q.shape, dtype=q.dtype)
    dk, dv = xp.zeros(k.shape, dtype=acc), xp.zeros(v.shape, dtype=acc)
    widths = [_width((q.dtype, (a.stop - a.start, dim)), (call.wire, (2 * (b.stop - b.start), dim)))
              for a, b in split]
    if len(set(widths)) != 1:  # never: every rank's share has the same shape
        raise AssertionError(f"ulysses: uneven shares {widths}")
    got = _alltoall(call, back, [len(q)] * size, widths[0])
    for j, (a, b) in enumerate(split):
        n = b.stop - b.start
        gq, gk, gv = call.unpack(got[j * len(q):(j + 1) * len(q)], (q.dtype, (a.stop - a.start, dim)),
                                 (call.wire, (n, dim)), (call.wire, (n, dim)))
        dq[:, a] = gq
        dk[:, b] += gk.astype(acc)
        dv[:, b] += gv.astype(acc)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype)


# ---- bytes on the wire, and the choice of a variant ---------------------------------------------------

VARIANTS = ("ring", "token_ring", "allgather", "ulysses")


def traffic(variant: str, tokens, heads: int, kv_heads: int, dim: int, dtype=np.float32, gpu: bool = False,
            backward: bool = False, causal: bool = False, layout: str = "zigzag") -> np.ndarray:
    """Bytes rank i sends rank j ([P, P]) in one forward (or backward) pass of ``variant``, as
    the implementation sends them; ``tokens`` are the ranks' tokens (S_r). The all-gather's
    collectives count as pairwise exchanges (the Reduce_scatter's partial sums too)."""
    if variant not in VARIANTS:
        raise InvalidArgumentError(f"variant: {variant!r} is not one of {VARIANTS}")
    size = len(tokens)
    item = np.dtype(dtype).itemsize
    wire = 4 if item < 4 else item
    acc = 8 if not gpu or item == 8 else 4
    s, hd, kvd = np.asarray(tokens, dtype=np.int64), heads * dim, kv_heads * dim
    t = np.zeros((size, size), dtype=np.int64)
    for r in range(size):
        right = (r + 1) % size
        if variant == "ring":
            for step in range(size - 1):  # k, v of the block in hand, on to the next rank
                t[r, right] += s[(r - step) % size] * 2 * kvd * item
            for step in range(size if backward else 0):  # dk, dv behind it; the last pass takes them home
                t[r, right] += s[(r - step) % size] * 2 * kvd * acc
        elif variant == "token_ring":
            visit = 3 * hd * item + heads * wire if backward else hd * item  # q (dout, out, lse)
            back = hd * wire if backward else hd * item + heads * wire  # dq partial (out, lse)
            if causal and layout == "zigzag" and size > 1:  # halves: see _zigzag_token_ring
                low = np.array([len(c) for c in np.array_split(np.arange(s.sum()), 2 * size)[:size]])
                high = s - low
                for step in range(size - 1):  # high halves right, every step
                    t[r, right] += high[(r - step) % size] * visit
                if r > 0:  # low halves left, owners r..P-1
                    t[r, r - 1] += low[r:].sum() * visit
                for step in range(1, size):  # partials: every owner's high half, the low halves of owners above
                    o = (r - step) % size
                    t[r, o] += high[o] * back + (low[o] * back if o > r else 0)
                continue
            for step in range(size - 1):
                t[r, right] += s[(r - step) % size] * visit
            for step in range(1, size):
                t[r, (r - step) % size] += s[(r - step) % size] * back
        elif variant == "allgather":
            for j in range(size):
                t[r, j] += s[r] * 2 * kvd * item + (s[j] * 2 * kvd * acc if backward else 0)
        else:
            split = _ulysses_heads(heads, kv_heads, size)
            h = heads // size
            kv = [b.stop - b.start for _, b in split]
            for j in range(size):
                if backward:  # q, dout, out, lse and k, v out; dq and dk, dv back
                    t[r, j] += s[r] * ((3 * h * dim + 2 * kv[j] * dim) * item + h * wire)
                    t[r, j] += s[j] * (h * dim * item + 2 * kv[r] * dim * wire)
                else:  # q, k, v out; out and lse back
                    t[r, j] += s[r] * (h * dim + 2 * kv[j] * dim) * item + s[j] * h * (dim * item + wire)
    np.fill_diagonal(t, 0)
    return t


@dataclass(frozen=True)
class Choice:
    """What :func:`choose_attention` found: the variant, its functions, and per variant the
    bytes on the busiest link (the most any rank sends or receives, forward + backward)."""

    name: str
    forward: Any
    backward: Any
    busiest: dict


def choose_attention(total: int, heads: int, kv_heads: int, dim: int, ranks: int, dtype=np.float32,
                     causal: bool = False, layout: str = "zigzag", gpu: bool = False, backward: bool = True) -> Choice:
    """The variant that puts the fewest bytes on the busiest link (each rank's own link to the
    others, full duplex: the most any rank sends or receives) for these shapes and ranks,
    forward plus (``backward=True``) backward. Ulysses takes part where its head split fits.
    Ties go to the variant earlier in :data:`VARIANTS`. Pure arithmetic: no communication."""
    for name, value in (("total", total), ("heads", heads), ("kv_heads", kv_heads), ("dim", dim), ("ranks", ranks)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{name}: must be an integer >= 1, got {value!r}")
    if heads % kv_heads:
        raise InvalidArgumentError(f"kv_heads: {kv_heads} does not divide heads={heads}")
    tokens = [len(positions(layout, r, ranks, total)) for r in range(ranks)]
    busiest = {}
    for variant in VARIANTS:
        if variant == "ulysses" and (heads % ranks or kv_heads % ranks and ranks % kv_heads):
            continue
        t = sum(traffic(variant, tokens, heads, kv_heads, dim, dtype, gpu, b, causal, layout)
                for b in (False, True)[:1 + backward])
        busiest[variant] = int(max(t.sum(axis=1).max(), t.sum(axis=0).max()))
    name = min(busiest, key=lambda v: (busiest[v], VARIANTS.index(v)))
    table = {"ring": (ring_attention, ring_attention_backward),
             "token_ring": (token_ring_attention, token_ring_attention_backward),
             "allgather": (allgather_attention, allgather_attention_backward),
             "ulysses": (ulysses_attention, ulysses_attention_backward)}
    return Choice(name, *table[name], busiest)
