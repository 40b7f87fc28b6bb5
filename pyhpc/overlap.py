"""Fine-grained overlap of a GEMM with its collective, after T3 (Pati et al., ASPLOS 2024).

Tensor-parallel sublayers multiply and then communicate:

- :func:`gemm_reduce_scatter` (row-parallel): rank r holds ``a_r`` [M, K_r] and
  ``b_r`` [K_r, N]; the product ``sum_r a_r @ b_r`` [M, N] is reduce-scattered over
  rows, rank r keeping the r-th block of rows (``np.array_split`` order).
- :func:`all_gather_gemm` (column-parallel): rank r holds rows ``a_r`` of A and
  ``b`` [K, N_r]; every rank computes ``A @ b`` while A's rows are gathered.
- :func:`gemm_all_reduce`: the reduce-scatter's result all-gathered, so every rank
  has the whole product.

``method="overlap"`` is T3's mechanism in software. The reduce-scatter runs as a
ring: at step s rank r produces block (r - s - 1) mod P, so ranks are staggered and
each block's partial sum travels r -> r+1 -> ... until it reaches its owner. Each
block is cut into ``chunks`` chunks and each chunk into column tiles; a tracker
counts the writes into a chunk (its tiles, plus the partial arriving from the
previous rank, folded in with an add) and fires the chunk's send the moment the count
is complete, while the GEMM goes on with the next tiles. MPI does not progress a
nonblocking transfer by itself while numpy computes (Open MPI does not at all), so
the loop polls the outstanding requests after every tile; one thread does it all, so
the BLAS threads and communication never fight over cores. ``method="sequential"``
is the baseline (one GEMM, then the MPI collective) and ``method="chunked"`` the
naive pipeline (per chunk: GEMM, then a nonblocking collective left to MPI).

``link``: a modelled link (:class:`Link`), because on one machine the MPI's copies
run on the cores that do the GEMM: every message a rank sends is held back until
its rank's link, serving messages in order at ``bandwidth`` bytes/s after
``latency`` s, would have delivered it. All three methods then talk over the same
ring of modelled messages.

This module is plain Python over numpy and mpi4py: the work per tile is one BLAS
call of at least tens of microseconds, the loop around it costs a few, so C++
would buy nothing here (the GPU path, with streams and events, is not written yet).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from pyhpc.errors import InvalidArgumentError

__all__ = ["METHODS", "Link", "all_gather_gemm", "choose_chunks", "gemm_all_reduce", "gemm_reduce_scatter"]

METHODS = ("overlap", "sequential", "chunked")
MAX_CHUNKS = 16
_TAG = 0x7333


@dataclasses.dataclass(frozen=True)
class Link:
    """A modelled point-to-point link: ``bandwidth`` bytes/s, ``latency`` s per message."""

    bandwidth: float
    latency: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise InvalidArgumentError(f"link.bandwidth: must be finite bytes/s > 0, got {self.bandwidth!r}")
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise InvalidArgumentError(f"link.latency: must be finite seconds >= 0, got {self.latency!r}")

    def seconds(self, nbytes: int) -> float:
        return self.latency + nbytes / self.bandwidth


class _Sender:
    """Point-to-point sends, through a modelled link or straight to MPI.

    With a link, a message is posted to MPI only once the link would have delivered
    it (messages leave in order, one at a time); until then it waits in a queue that
    :meth:`poll` serves. Receives are plain MPI.
    """

    def __init__(self, comm: Any, link: Link | None) -> None:
        self.comm, self.link = comm, link
        self.free_at = 0.0  # when this rank's link has sent everything queued so far
        self.queue: list[tuple[float, np.ndarray, int, int]] = []
        self.requests: list[Any] = []
        self.sent_bytes = 0

    def send(self, buf: np.ndarray, dest: int, tag: int) -> None:
        self.sent_bytes += buf.nbytes
        if self.link is None:
            self.requests.append(self.comm.Isend(buf, dest, tag))
            return
        self.free_at = max(time.perf_counter(), self.free_at) + self.link.seconds(buf.nbytes)
        self.queue.append((self.free_at, buf, dest, tag))
        self.poll()

    def poll(self) -> None:
        """Post the messages whose modelled delivery time has come; progress MPI."""
        now = time.perf_counter()
        while self.queue and self.queue[0][0] <= now:
            _, buf, dest, tag = self.queue.pop(0)
            self.requests.append(self.comm.Isend(buf, dest, tag))
        if self.requests:
            from mpi4py import MPI

            MPI.Request.Testall(self.requests)  # progresses everything outstanding

    def wait_a_little(self) -> None:
        """Sleep until the next queued message is due, at most 50 us (never spin: with more
        ranks than cores a spinning rank takes the core from the one it waits for)."""
        due = self.queue[0][0] - time.perf_counter() if self.queue else 50e-6
        time.sleep(min(max(due, 0.0), 50e-6))

    def flush(self) -> None:
        """Wait until every message is sent (sleeping while the modelled link is busy)."""
        from mpi4py import MPI

        while self.queue:
            time.sleep(max(0.0, self.queue[0][0] - time.perf_counter()))
            self.poll()
        MPI.Request.Waitall(self.requests)
        self.requests.clear()


class _Tracker:
    """Counts the writes into each chunk; says when a chunk has all of them."""

    def __init__(self, expected: list[int]) -> None:
        self.expected, self.done = list(expected), [0] * len(expected)

    def add(self, chunk: int) -> bool:
        self.done[chunk] += 1
        if self.done[chunk] > self.expected[chunk]:
            raise AssertionError(f"chunk {chunk} written {self.done[chunk]} times, expected {self.expected[chunk]}")
        return self.done[chunk] == self.expected[chunk]


# ---- reduce-scatter ----------------------------------------------------------------------------

def gemm_reduce_scatter(a: Any, b: Any, comm: Any, chunks: int | None = None, out: Any = None,
                        method: str = "overlap", link: Link | None = None, tiles: int = 1) -> np.ndarray:
    """This rank's block of rows of ``sum_r a_r @ b_r`` (see the module's doc)."""
    size, rank = comm.Get_size(), comm.Get_rank()
    a, b, m, n = _check_pair(comm, a, b, "gemm_reduce_scatter", method, chunks, tiles)
    rows = _split(m, size)
    mine = rows[rank]
    if out is None:
        out = np.empty((mine.stop - mine.start, n), dtype=a.dtype)
    elif not (isinstance(out, np.ndarray) and out.shape == (mine.stop - mine.start, n) and out.dtype == a.dtype
              and out.flags.c_contiguous):
        raise InvalidArgumentError(f"out: must be a C-contiguous {a.dtype} array of shape "
                                   f"{(mine.stop - mine.start, n)}, got {getattr(out, 'dtype', None)} "
                                   f"{getattr(out, 'shape', type(out).__name__)}")
    if size == 1:
        np.matmul(a, b, out=out)
        return out
    if chunks is None:
        chunks = choose_chunks(comm, a, b, link)
        if chunks == 0:  # the model says overlap would not pay: don't cut the GEMM up
            method, chunks = ("sequential" if method == "overlap" else method), 1
    if method == "sequential":
        _rs_sequential(comm, a, b, rows, out, link)
    elif method == "chunked":
        _rs_chunked(comm, a, b, rows, out, chunks, link)
    else:
        _rs_overlap(comm, a, b, rows, out, chunks, tiles, link)
    return out


def _rs_overlap(comm, a, b, rows, out, chunks, tiles, link) -> None:
    size, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % size, (rank - 1) % size
    n = b.shape[1]
    sender = _Sender(comm, link)
    cols = _split(n, tiles)
    for step in range(size):
        block = (rank - step - 1) % size
        parts = _split_range(rows[block], chunks)
        last = step == size - 1
        # this step's buffers; the incoming partial of each chunk is posted before the GEMM starts
        bufs = [out[p.start - rows[rank].start:p.stop - rows[rank].start] if last
                else np.empty((p.stop - p.start, n), dtype=a.dtype) for p in parts]
        incoming = [np.empty_like(buf) for buf in bufs] if step > 0 else []
        recvs = [comm.Irecv(inc, left, _TAG + j) for j, inc in enumerate(incoming)]
        tracker = _Tracker([tiles + (step > 0)] * len(parts))
        folded = [False] * len(parts)

        def fire(j: int) -> None:
            if not last:
                sender.send(bufs[j], right, _TAG + j)

        def fold_arrived() -> None:
            # a partial that has arrived is added into its chunk: one more write for the tracker
            for j, req in enumerate(recvs):
                if not folded[j] and tracker.done[j] == tiles and req.Test():
                    bufs[j] += incoming[j]
                    folded[j] = True
                    if tracker.add(j):
                        fire(j)

        for j, part in enumerate(parts):
            for c in cols:
                np.matmul(a[part.start:part.stop], b[:, c.start:c.stop], out=bufs[j][:, c.start:c.stop])
                if tracker.add(j):
                    fire(j)
                sender.poll()
                fold_arrived()
        while not all(folded) and step > 0:  # the last partials of this step
            sender.wait_a_little()
            sender.poll()
            fold_arrived()
    sender.flush()


def _rs_sequential(comm, a, b, rows, out, link) -> None:
    full = a @ b
    if link is None:
        counts = [(r.stop - r.start) * b.shape[1] for r in rows]
        comm.Reduce_scatter(full, out, recvcounts=counts)
        return
    _ring_reduce_scatter(comm, full, rows, out, link)


def _rs_chunked(comm, a, b, rows, out, chunks, link) -> None:
    """Naive pipeline: per chunk (a slice of every rank's block), GEMM, then a nonblocking
    reduce-scatter that only MPI progresses (or, with a link, a ring of modelled messages)."""
    from mpi4py import MPI

    size, rank, n = comm.Get_size(), comm.Get_rank(), b.shape[1]
    per_block = [_split_range(r, chunks) for r in rows]
    requests, keep = [], []
    for j in range(chunks):
        parts = [per_block[r][j] for r in range(size)]
        idx = np.concatenate([np.arange(p.start, p.stop) for p in parts])
        partial = a[idx] @ b
        mine = parts[rank]
        dst = out[mine.start - rows[rank].start:mine.stop - rows[rank].start]
        if link is None:
            counts = [(p.stop - p.start) * n for p in parts]
            requests.append(comm.Ireduce_scatter(partial, dst, recvcounts=counts))
            keep.append(partial)
        else:
            local = [range(0, 0)] * size
            start = 0
            for r, p in enumerate(parts):
                local[r] = range(start, start + p.stop - p.start)
                start += p.stop - p.start
            _ring_reduce_scatter(comm, partial, local, dst, link)
    MPI.Request.Waitall(requests)


def _ring_reduce_scatter(comm, full, rows, out, link) -> None:
    """Ring reduce-scatter of full's row blocks over modelled messages, without overlap."""
    size, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % size, (rank - 1) % size
    sender = _Sender(comm, link)
    acc = None
    for step in range(size):
        block = (rank - step - 1) % size
        piece = full[rows[block].start:rows[block].stop]
        if step > 0:
            piece = piece + incoming
        if step == size - 1:
            out[...] = piece
            break
        acc = np.ascontiguousarray(piece)
        sender.send(acc, right, _TAG)
        incoming = np.empty((rows[(rank - step - 2) % size].stop - rows[(rank - step - 2) % size].start,
                             full.shape[1]), dtype=full.dtype)
        req = comm.Irecv(incoming, left, _TAG)
        sender.flush()
        req.Wait()


# ---- all-gather ------------------------------------------------------------------------------------

def all_gather_gemm(a_shard: Any, b: Any, comm: Any, chunks: int | None = None, method: str = "overlap",
                    link: Link | None = None) -> np.ndarray:
    """``A @ b`` where A's rows are spread over the ranks (rank r holds ``a_shard``, the
    r-th row block, in rank order); every rank gets all M rows of its columns of the product."""
    size, rank = comm.Get_size(), comm.Get_rank()
    a_shard, b, _, n = _check_pair(comm, a_shard, b, "all_gather_gemm", method, chunks, 1, shard_rows=True)
    counts = comm.allgather(a_shard.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    out = np.empty((int(starts[-1]), n), dtype=a_shard.dtype)
    if size == 1:
        np.matmul(a_shard, b, out=out)
        return out
    if chunks is None:
        chunks = choose_chunks(comm, a_shard, b, link, collective="all_gather")
        if chunks == 0:
            method, chunks = ("sequential" if method == "overlap" else method), 1
    k = a_shard.shape[1]
    if method == "sequential":
        full = np.empty((int(starts[-1]), k), dtype=a_shard.dtype)
        if link is None:
            comm.Allgatherv(a_shard, [full, [c * k for c in counts]])
        else:
            _ring_all_gather(comm, a_shard, full, starts, link)
        np.matmul(full, b, out=out)
        return out
    # ring: at step s, rank r multiplies shard (r - s) mod P chunk by chunk, each chunk as
    # soon as it has arrived from the left, forwarding it to the right first (the trigger)
    right, left = (rank + 1) % size, (rank - 1) % size
    sender = _Sender(comm, link)
    shards: list[np.ndarray] = [np.ascontiguousarray(a_shard)]
    arriving: list[list[Any]] = [[]]
    for step in range(size):
        src = (rank - step) % size
        if step < size - 1:  # post the next shard's receives before computing this one
            prev = (rank - step - 1) % size
            shards.append(np.empty((counts[prev], k), dtype=a_shard.dtype))
            arriving.append([comm.Irecv(shards[-1][p.start:p.stop], left, _TAG + j)
                             for j, p in enumerate(_split(counts[prev], chunks))])
        shard = shards[step]
        for j, p in enumerate(_split(shard.shape[0], chunks)):
            if step > 0:
                while not arriving[step][j].Test():  # keep our own queued sends moving meanwhile
                    sender.wait_a_little()
                    sender.poll()
            if step < size - 1:
                sender.send(shard[p.start:p.stop], right, _TAG + j)
            if method != "chunked":
                np.matmul(shard[p.start:p.stop], b, out=out[starts[src] + p.start:starts[src] + p.stop])
                sender.poll()
        if method == "chunked":  # the naive version: the whole shard once it is all here
            np.matmul(shard, b, out=out[starts[src]:starts[src + 1]])
    sender.flush()
    return out


def _ring_all_gather(comm, shard, full, starts, link) -> None:
    size, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % size, (rank - 1) % size
    sender = _Sender(comm, link)
    full[starts[rank]:starts[rank + 1]] = shard
    for step in range(size - 1):
        send_block = (rank - step) % size
        recv_block = (rank - step - 1) % size
        sender.send(np.ascontiguousarray(full[starts[send_block]:starts[send_block + 1]]), right, _TAG)
        req = comm.Irecv(full[starts[recv_block]:starts[recv_block + 1]], left, _TAG)
        sender.flush()
        req.Wait()


def gemm_all_reduce(a: Any, b: Any, comm: Any, chunks: int | None = None, method: str = "overlap",
                    link: Link | None = None) -> np.ndarray:
    """``sum_r a_r @ b_r`` on every rank: the overlapped reduce-scatter, then an all-gather of rows."""
    mine = gemm_reduce_scatter(a, b, comm, chunks=chunks, method=method, link=link)
    size = comm.Get_size()
    m, n = np.asarray(a).shape[0], mine.shape[1]
    rows = _split(m, size)
    out = np.empty((m, n), dtype=mine.dtype)
    if size == 1:
        out[...] = mine
        return out
    if link is None:
        comm.Allgatherv(mine, [out, [(r.stop - r.start) * n for r in rows]])
    else:
        starts = np.array([r.start for r in rows] + [m])
        _ring_all_gather(comm, mine, out, starts, link)
    return out


# ---- chunk count -------------------------------------------------------------------------------------

_measured: dict[tuple, tuple[float, float]] = {}


def choose_chunks(comm: Any, a: np.ndarray, b: np.ndarray, link: Link | None = None,
                  overhead: float = 100e-6, collective: str = "reduce_scatter") -> int:
    """Chunks per block from the measured GEMM and collective; 0 if overlap is not worth it.

    Collective: every rank calls it and gets the same answer. The first call for a
    shape (per communicator, dtype and link) runs the sequential version once and
    times its two parts: the GEMM (G) and the collective (C), the slowest rank's.
    With P ranks, c chunks then cost about max(G, C) + min(G, C) / (P c) + P c o
    (o: one chunk's message and loop) plus 3% of G for cutting the GEMM up, against
    G + C sequentially. The best c is sqrt(min(G, C) / (P^2 o)), clamped to 1..16 and
    to the rows of a block. Without a link, on ranks of one node, the MPI's copies
    are work for the same cores, so C is added rather than hidden. When the model
    gives overlap less than 3% over sequential, the answer is 0.
    """
    if collective not in ("reduce_scatter", "all_gather"):
        raise InvalidArgumentError(f"collective: {collective!r} is not 'reduce_scatter' or 'all_gather'")
    size = comm.Get_size()
    key = (comm.py2f(), size, collective, a.shape, b.shape, a.dtype.str, link)
    if key not in _measured:
        _measured[key] = _measure(comm, a, b, link, collective)
    gemm, transfers = _measured[key]
    rows = (a.shape[0] if collective == "reduce_scatter" else a.shape[0] * size) // size
    low = min(gemm, transfers)
    c = math.sqrt(low / (size * size * overhead)) if low > 0 else 1.0
    chunks = int(max(1, min(MAX_CHUNKS, max(rows, 1), round(c))))
    overlapped = max(gemm, transfers) + low / (size * chunks) + size * chunks * overhead + 0.03 * gemm
    if link is None and _one_node(comm):
        # shared memory: the MPI copies with the same cores that run the GEMM, so there is
        # nothing to hide the transfers behind (measured: 0.86x with 7 chunks, 2048x1024x512)
        overlapped += transfers
    return 0 if overlapped > 0.97 * (gemm + transfers) else chunks


def _one_node(comm: Any) -> bool:
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size() == comm.Get_size()
    finally:
        local.Free()


def _measure(comm, a, b, link, collective) -> tuple[float, float]:
    """(GEMM seconds, collective seconds) of one sequential run, each the slowest rank's."""
    size, rank = comm.Get_size(), comm.Get_rank()
    comm.Barrier()
    t0 = time.perf_counter()
    if collective == "reduce_scatter":
        full = a @ b
        t1 = time.perf_counter()
        rows = _split(a.shape[0], size)
        out = np.empty((len(rows[rank]), b.shape[1]), dtype=a.dtype)
        if link is None:
            comm.Reduce_scatter(full, out, recvcounts=[len(r) * b.shape[1] for r in rows])
        else:
            _ring_reduce_scatter(comm, full, rows, out, link)
        t2 = time.perf_counter()
        gemm, transfers = t1 - t0, t2 - t1
    else:
        counts = comm.allgather(a.shape[0])
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        full = np.empty((int(starts[-1]), a.shape[1]), dtype=a.dtype)
        if link is None:
            comm.Allgatherv(a, [full, [c * a.shape[1] for c in counts]])
        else:
            _ring_all_gather(comm, a, full, starts, link)
        t1 = time.perf_counter()
        full @ b
        t2 = time.perf_counter()
        gemm, transfers = t2 - t1, t1 - t0
    return comm.allreduce(gemm, op=_mpi_max()), comm.allreduce(transfers, op=_mpi_max())


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _mpi_min():
    from mpi4py import MPI

    return MPI.MIN


# ---- checks and helpers ------------------------------------------------------------------------

def _check_pair(comm, a, b, what, method, chunks, tiles, shard_rows=False):
    """Validate locally, then agree across ranks, so that a bad argument on one rank raises
    on every rank instead of leaving the others in the collective."""
    error = None
    try:
        if method not in METHODS:
            raise InvalidArgumentError(f"method: {method!r} is not one of {METHODS}")
        if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer))
                                   or chunks < 1):
            raise InvalidArgumentError(f"chunks: must be None or an integer >= 1, got {chunks!r}")
        if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
            raise InvalidArgumentError(f"tiles: must be an integer >= 1, got {tiles!r}")
        for name, x in (("a_shard" if shard_rows else "a", a), ("b", b)):
            if not isinstance(x, np.ndarray):
                raise InvalidArgumentError(f"{name}: must be a numpy array (cupy is not supported yet), "
                                           f"got {type(x).__name__}")
            if x.ndim != 2:
                raise InvalidArgumentError(f"{name}: must be 2-D, got shape {x.shape}")
            if x.dtype not in (np.float32, np.float64):
                raise InvalidArgumentError(f"{name}: dtype must be float32 or float64, got {x.dtype}")
        if a.dtype != b.dtype:
            raise InvalidArgumentError(f"b: dtype {b.dtype} differs from a's {a.dtype}")
        if a.shape[1] != b.shape[0]:
            raise InvalidArgumentError(f"b: has {b.shape[0]} rows, a has {a.shape[1]} columns")
    except InvalidArgumentError as exc:
        error = f"{what}: {exc}"
    key = None if error else (method, chunks, str(a.dtype), b.shape[1] if not shard_rows else a.shape[1],
                              a.shape[0] if not shard_rows else None)
    reports = comm.allgather((error, key))
    bad = [r for r, (e, _) in enumerate(reports) if e]
    if bad:
        raise InvalidArgumentError(f"rank {bad[0]}: {reports[bad[0]][0]}")
    if any(k != reports[0][1] for _, k in reports):
        names = "(method, chunks, dtype, N, M)" if not shard_rows else "(method, chunks, dtype, K)"
        raise InvalidArgumentError(f"{what}: ranks disagree on {names}: "
                                   f"{sorted({str(k) for _, k in reports})}")
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return a, b, a.shape[0], b.shape[1]


def _split(n: int, parts: int) -> list[range]:
    """np.array_split's ranges of 0..n-1 into `parts` (the first n % parts one longer)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        out.append(range(start, stop))
        start = stop
    return out


def _split_range(r: range, parts: int) -> list[range]:
    return [range(r.start + s.start, r.start + s.stop) for s in _split(r.stop - r.start, parts)]
