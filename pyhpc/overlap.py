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

The CPU path is plain Python over numpy and mpi4py: the work per tile is one BLAS
call of at least tens of microseconds, the loop around it costs a few, so C++
would buy nothing here.

GPU (cupy arrays of float16, bfloat16 or float32, on the current device; the
result is a cupy array). The MPI is not assumed CUDA-aware: every message is
staged through pinned host memory, device-to-host on a copy stream before its
Isend and host-to-device on another after its Irecv. ``method="overlap"`` queues
every chunk's GEMM at once, in ring order, on a compute stream (they need no
communication), with an event after each; a host loop is the tracker. A chunk is
complete when its GEMM has run and, after step 0, its incoming partial has arrived
and been copied to the device: on arrival the loop queues the copy and the fold
(chunk += partial) on a high-priority fold stream that waits on the GEMM's and the
copy's events, then the sum's copy back to pinned memory, and fires the Isend to
the right once that copy's event is done. Between polls of MPI and the events the
loop sleeps ~50 us (ranks may outnumber cores). The all-gather copies each arriving
chunk of A to the device and multiplies it on the compute stream while the next
one is in flight, forwarding it to the right from host memory at once.
``"sequential"``: GEMM, copy to the host, the MPI collective, copy back;
``"chunked"``: per chunk, GEMM, copy, a nonblocking collective left to MPI. A chunk
is one GEMM on the GPU (``tiles`` is not used there); ``link`` works as on the CPU.
``choose_chunks`` times the GPU's sequential run (see there). All ranks may share
one GPU.

float16/bfloat16: each rank's GEMM runs in the input dtype (cuBLAS, which
accumulates in float32) and is rounded to it once; the sum over ranks is kept in
float32: the partial sums of the reduce-scatter are widened to float32 before
they leave the GPU, travel and are added in float32 (by the fold stream in the
ring, by MPI on the host in the baselines: MPI cannot add 16-bit floats), and the
result is rounded to the input dtype once at the end. The
reduce-scatter's messages are therefore twice the bytes of the output, in every
method alike; gathers (of A's rows, of the all-reduce's result) move the 16-bit
values as they are.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any

import numpy as np

from pyhpc.cuda import is_cupy_array
from pyhpc.errors import InvalidArgumentError

__all__ = ["METHODS", "Link", "all_gather_gemm", "choose_chunks", "gemm_all_reduce", "gemm_reduce_scatter"]

METHODS = ("overlap", "sequential", "chunked")
GPU_DTYPES = ("float16", "bfloat16", "float32")
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
                        method: str = "overlap", link: Link | None = None, tiles: int = 1) -> Any:
    """This rank's block of rows of ``sum_r a_r @ b_r`` (see the module's doc); numpy in,
    numpy out, cupy in, cupy out."""
    size, rank = comm.Get_size(), comm.Get_rank()
    a, b, m, n, gpu = _check_pair(comm, a, b, "gemm_reduce_scatter", method, chunks, tiles, out=out)
    xp = _xp(gpu)
    rows = _split(m, size)
    mine = rows[rank]
    if out is None:
        out = xp.empty((mine.stop - mine.start, n), dtype=a.dtype)
    if size == 1:
        xp.matmul(a, b, out=out)
        return out
    if chunks is None:
        chunks = choose_chunks(comm, a, b, link)
        if chunks == 0:  # the model says overlap would not pay: don't cut the GEMM up
            method, chunks = ("sequential" if method == "overlap" else method), 1
    if gpu:
        g = _streams()
        g.start()
        if method == "sequential":
            _gpu_rs_sequential(g, comm, a, b, rows, out, link)
        elif method == "chunked":
            _gpu_rs_chunked(g, comm, a, b, rows, out, chunks, link)
        else:
            _gpu_rs_overlap(g, comm, a, b, rows, out, chunks, link)
        return out
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
                    link: Link | None = None) -> Any:
    """``A @ b`` where A's rows are spread over the ranks (rank r holds ``a_shard``, the
    r-th row block, in rank order); every rank gets all M rows of its columns of the product."""
    size, rank = comm.Get_size(), comm.Get_rank()
    a_shard, b, _, n, gpu = _check_pair(comm, a_shard, b, "all_gather_gemm", method, chunks, 1, shard_rows=True)
    xp = _xp(gpu)
    counts = comm.allgather(a_shard.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    out = xp.empty((int(starts[-1]), n), dtype=a_shard.dtype)
    if size == 1:
        xp.matmul(a_shard, b, out=out)
        return out
    if chunks is None:
        chunks = choose_chunks(comm, a_shard, b, link, collective="all_gather")
        if chunks == 0:
            method, chunks = ("sequential" if method == "overlap" else method), 1
    if gpu:
        g = _streams()
        g.start()
        if method == "sequential":
            full = _gpu_all_gather(g, comm, a_shard, counts, starts, link)
            with g.compute:
                xp.matmul(full, b, out=out)
            g.wait(g.compute)
        else:
            _gpu_ag_ring(g, comm, a_shard, b, counts, starts, out, chunks, method, link)
        return out
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
                    link: Link | None = None) -> Any:
    """``sum_r a_r @ b_r`` on every rank: the overlapped reduce-scatter, then an all-gather of rows."""
    mine = gemm_reduce_scatter(a, b, comm, chunks=chunks, method=method, link=link)
    size = comm.Get_size()
    m, n = a.shape[0], mine.shape[1]  # a passed the checks: an array
    rows = _split(m, size)
    if size == 1:
        return mine
    if is_cupy_array(mine):
        g = _streams()
        g.start()
        return _gpu_all_gather(g, comm, mine, [len(r) for r in rows], np.array([r.start for r in rows] + [m]), link)
    out = np.empty((m, n), dtype=mine.dtype)
    if link is None:
        comm.Allgatherv(mine, [out, [(r.stop - r.start) * n for r in rows]])
    else:
        starts = np.array([r.start for r in rows] + [m])
        _ring_all_gather(comm, mine, out, starts, link)
    return out


# ---- chunk count -------------------------------------------------------------------------------------

_measured: dict[tuple, tuple[float, float, tuple[float, ...]]] = {}


def choose_chunks(comm: Any, a: Any, b: Any, link: Link | None = None,
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

    cupy arrays: the sequential version runs once untimed first (the first run of a
    shape pays for cuBLAS's setup, kernel compiles and pinned allocations), then each
    part is timed to its stream's completion. The GEMM runs on the GPU and the MPI's
    copies on the host, so C is hidden behind G, not added to it, on one node too.
    And C is itself three stages that the chunks pipeline with each other and with
    the GEMM: the copy to the host, MPI, the copy back (with the adds). So the model
    takes the four stage times s_i: max(s) + (sum(s) - max(s)) / (P c) + P c o + 3%
    of G (on the CPU the stages are G and C, which is the formula above).
    """
    if collective not in ("reduce_scatter", "all_gather"):
        raise InvalidArgumentError(f"collective: {collective!r} is not 'reduce_scatter' or 'all_gather'")
    size = comm.Get_size()
    gpu = is_cupy_array(a)
    key = (comm.py2f(), size, collective, a.shape, b.shape, a.dtype.str, gpu, link)
    if key not in _measured:
        _measured[key] = (_gpu_measure if gpu else _measure)(comm, a, b, link, collective)
    gemm, transfers, stages = _measured[key]
    rows = (a.shape[0] if collective == "reduce_scatter" else a.shape[0] * size) // size
    low = sum(stages) - max(stages)  # what a perfect pipeline of the stages would hide
    c = math.sqrt(low / (size * size * overhead)) if low > 0 else 1.0
    chunks = int(max(1, min(MAX_CHUNKS, max(rows, 1), round(c))))
    overlapped = max(stages) + low / (size * chunks) + size * chunks * overhead + 0.03 * gemm
    if link is None and not gpu and _one_node(comm):
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


def _measure(comm, a, b, link, collective) -> tuple[float, float, tuple[float, ...]]:
    """(GEMM seconds, collective seconds, the stages: both) of one sequential run, each the
    slowest rank's."""
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
    gemm, transfers = comm.allreduce(gemm, op=_mpi_max()), comm.allreduce(transfers, op=_mpi_max())
    return gemm, transfers, (gemm, transfers)


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _mpi_min():
    from mpi4py import MPI

    return MPI.MIN


# ---- GPU (cupy) ------------------------------------------------------------------------------------
#
# The MPI is not assumed CUDA-aware: device data reaches it through pinned host buffers
# (device-to-host on the d2h stream, then Isend; Irecv, then host-to-device on the h2d
# stream). Every device buffer and pinned buffer of a call is kept referenced until the
# call has waited for all of its streams: cupy's pools would hand out a freed block
# again while another stream still reads it.

class _Streams:
    """The GPU path's streams on one device, made once: ``compute`` (the GEMMs), ``fold``
    (the partial-sum adds; high priority, so they pass the GEMMs queued before them),
    ``d2h`` and ``h2d`` (the copies, one per direction: one copy engine each)."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.compute = cp.cuda.Stream(non_blocking=True)
        self.d2h = cp.cuda.Stream(non_blocking=True)
        self.h2d = cp.cuda.Stream(non_blocking=True)
        try:
            high = min(cp.cuda.runtime.deviceGetStreamPriorityRange())
            self.fold = cp.cuda.Stream(non_blocking=True, priority=high)
        except (AttributeError, TypeError):  # a cupy without stream priorities
            self.fold = cp.cuda.Stream(non_blocking=True)
        self.all = (self.compute, self.fold, self.d2h, self.h2d)

    def start(self) -> None:
        """Order our streams after the work queued so far on the caller's stream (which
        made the operands, or still uses ``out``)."""
        ready = self.cp.cuda.get_current_stream().record()
        for stream in self.all:
            stream.wait_event(ready)

    def wait(self, *streams: Any) -> None:
        """Until the work queued so far on ``streams`` (default: all) is done, polling with
        sleeps rather than spinning in a synchronize: ranks may outnumber cores."""
        for stream in streams or self.all:
            _wait_event(stream.record())

    def pinned(self, shape: tuple, dtype: Any) -> np.ndarray:
        """An uninitialised numpy array in pinned (page-locked) host memory."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        mem = self.cp.cuda.alloc_pinned_memory(max(nbytes, 1))
        return np.frombuffer(mem, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def to_host(self, x: Any, after: Any = None) -> tuple[np.ndarray, Any]:
        """Queue ``x``'s copy into a new pinned buffer on the d2h stream, after the event
        ``after``; (the buffer, the event that says it is filled)."""
        host = self.pinned(x.shape, x.dtype)
        if after is not None:
            self.d2h.wait_event(after)
        self.cp.asnumpy(x, stream=self.d2h, out=host, blocking=False)
        return host, self.d2h.record()

    def to_device(self, host: np.ndarray, dst: Any, keep: list) -> Any:
        """Queue the copy of pinned ``host`` into device ``dst`` on the h2d stream (through a
        temporary of host's dtype, cast on that stream, when the dtypes differ); its event."""
        cp = self.cp
        if host.dtype == dst.dtype:
            dst.set(host, stream=self.h2d)
        else:
            with self.h2d:
                tmp = cp.empty(host.shape, dtype=host.dtype)
                tmp.set(host, stream=self.h2d)
                dst[...] = tmp
            keep.append(tmp)
        return self.h2d.record()


_gpu_streams: dict[int, _Streams] = {}


def _streams() -> _Streams:
    cp = _xp(True)
    device = cp.cuda.Device().id
    if device not in _gpu_streams:
        _gpu_streams[device] = _Streams(cp)
    return _gpu_streams[device]


def _wait_event(event: Any, sender: _Sender | None = None) -> None:
    while not event.done:
        if sender is None:
            time.sleep(20e-6)
        else:
            sender.poll()
            sender.wait_a_little()


def _acc_dtype(dtype: Any) -> Any:
    """What partial sums are kept and sent in: float32 for the 16-bit floats (see the module's doc)."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize == 2 else np.dtype(dtype)


def _wire(x: np.ndarray) -> np.ndarray:
    """A host buffer as MPI is given it when nothing is added: 16-bit floats as uint16
    (mpi4py knows no bfloat16)."""
    return x.view(np.uint16) if x.dtype.itemsize == 2 else x


def _gpu_product(g: _Streams, a: Any, b: Any) -> tuple[Any, Any]:
    """``a @ b`` on the compute stream, widened to the accumulation dtype; (it, its event)."""
    with g.compute:
        full = g.cp.matmul(a, b)
        if full.dtype != _acc_dtype(a.dtype):
            full = full.astype(_acc_dtype(a.dtype))
    return full, g.compute.record()


def _gpu_rs_sequential(g, comm, a, b, rows, out, link) -> None:
    full, ready = _gpu_product(g, a, b)
    _gpu_reduce_scatter(g, comm, full, ready, rows, out, link)


def _gpu_reduce_scatter(g, comm, full, ready, rows, out, link, stamps=None) -> None:
    """The sequential collective: ``full`` (when ``ready``) to the host, MPI's reduce-scatter
    (or a ring over the modelled link), my rows back into ``out``. ``stamps``: a list that
    gets the time at the end of each of the three stages."""
    stamps = [] if stamps is None else stamps
    host, copied = g.to_host(full, ready)
    mine = g.pinned(out.shape, full.dtype)
    _wait_event(copied)
    stamps.append(time.perf_counter())
    if link is None:
        comm.Reduce_scatter(host, mine, recvcounts=[len(r) * full.shape[1] for r in rows])
    else:
        _ring_reduce_scatter(comm, host, rows, mine, link)
    stamps.append(time.perf_counter())
    keep: list = []
    g.to_device(mine, out, keep)
    g.wait(g.h2d)
    stamps.append(time.perf_counter())


def _gpu_rs_chunked(g, comm, a, b, rows, out, chunks, link) -> None:
    """Naive pipeline: every chunk's GEMM (a slice of every rank's block) and its copy to the
    host queued at once; each chunk's nonblocking reduce-scatter posted when its copy is
    done, left to MPI (the host sleeps in between, it does not poll MPI)."""
    from mpi4py import MPI

    cp, size, rank, n = g.cp, comm.Get_size(), comm.Get_rank(), b.shape[1]
    per_block = [_split_range(r, chunks) for r in rows]
    staged, keep = [], []
    for j in range(chunks):
        parts = [per_block[r][j] for r in range(size)]
        with g.compute:
            rows_j = cp.concatenate([a[p.start:p.stop] for p in parts])
        partial, ready = _gpu_product(g, rows_j, b)
        keep += [rows_j, partial]
        staged.append((parts, *g.to_host(partial, ready)))
    requests, results = [], []
    for parts, host, copied in staged:
        _wait_event(copied)
        mine = g.pinned((len(parts[rank]), n), host.dtype)
        if link is None:
            requests.append(comm.Ireduce_scatter(host, mine, recvcounts=[len(p) * n for p in parts]))
        else:
            local = _split_counts([len(p) for p in parts])
            _ring_reduce_scatter(comm, host, local, mine, link)
        results.append((parts[rank], mine))
    MPI.Request.Waitall(requests)
    r0 = rows[rank].start
    for p, mine in results:
        g.to_device(mine, out[p.start - r0:p.stop - r0], keep)
    g.wait()


def _gpu_rs_overlap(g, comm, a, b, rows, out, chunks, link) -> None:
    """T3's ring on the GPU (see the module's doc): the GEMMs all queued, then the tracker loop."""
    cp, size, rank = g.cp, comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % size, (rank - 1) % size
    n, r0 = b.shape[1], rows[rank].start
    acc_dtype = _acc_dtype(a.dtype)
    widen = acc_dtype != a.dtype
    sender = _Sender(comm, link)
    keep: list = []  # every buffer of the call, until its streams are done
    # 1. The GEMMs need no communication: every chunk's, in ring order, on the compute stream.
    #    At step s this rank produces block (rank - s - 1) mod P; the last step's land in out.
    product: dict[tuple[int, int], tuple[Any, Any]] = {}
    with g.compute:
        for step in range(size):
            block = (rank - step - 1) % size
            for j, p in enumerate(_split_range(rows[block], chunks)):
                dst = out[p.start - r0:p.stop - r0] if step == size - 1 else cp.empty((len(p), n), dtype=a.dtype)
                cp.matmul(a[p.start:p.stop], b, out=dst)
                product[step, j] = dst, g.compute.record()
    # 2. Every incoming partial's receive, posted now. Messages of one chunk index share a
    #    tag and match in order, so each chunk index keeps its arrivals in step order.
    arrivals: list[collections.deque] = [collections.deque() for _ in range(chunks)]
    for step in range(1, size):
        for j in range(chunks):
            host = g.pinned(product[step, j][0].shape, acc_dtype)
            arrivals[j].append((step, comm.Irecv(host, left, _TAG + j), host))
            keep.append(host)
    sends: collections.deque = collections.deque()  # (copied event, pinned sum, j), in d2h-stream order

    def ship(j: int, acc: Any, ready: Any) -> None:
        host, copied = g.to_host(acc, ready)
        sends.append((copied, host, j))
        keep.extend((acc, host))

    # step 0 has nothing to fold in: its sums leave as soon as their GEMMs are done
    for j in range(chunks):
        dst, done = product[0, j]
        if widen:
            g.fold.wait_event(done)
            with g.fold:
                dst = dst.astype(acc_dtype)
            done = g.fold.record()
        ship(j, dst, done)
    # 3. The tracker: a chunk is complete when its GEMM has run (the fold stream waits on
    #    its event) and its partial has arrived (MPI) and reached the device (an event too).
    while any(arrivals) or sends:
        progressed = False
        for j, queue in enumerate(arrivals):
            if not (queue and queue[0][1].Test()):
                continue
            step, _, host = queue.popleft()
            progressed = True
            dst, computed = product[step, j]
            with g.h2d:
                partial = cp.empty(dst.shape, dtype=acc_dtype)
            keep.append(partial)
            partial.set(host, stream=g.h2d)
            arrived = g.h2d.record()
            g.fold.wait_event(computed)
            g.fold.wait_event(arrived)
            with g.fold:
                acc = dst.astype(acc_dtype) if widen else dst
                acc += partial  # float32 for the 16-bit dtypes
                if widen and step == size - 1:
                    dst[...] = acc  # rounded once, into out
            keep.append(acc)
            if step < size - 1:
                ship(j, acc, g.fold.record())
        while sends and sends[0][0].done:  # the d2h stream finishes them in order
            _, host, j = sends.popleft()
            sender.send(host, right, _TAG + j)
            progressed = True
        sender.poll()
        if not progressed:
            sender.wait_a_little()
    sender.flush()
    g.wait()


def _gpu_all_gather(g, comm, shard, counts, starts, link, stamps=None) -> Any:
    """Rows of every rank's ``shard``, in rank order, on the device: through the host and
    MPI's Allgatherv (or a ring over the modelled link). ``stamps``: as for
    :func:`_gpu_reduce_scatter`."""
    stamps = [] if stamps is None else stamps
    cp, k = g.cp, shard.shape[1]
    host, copied = g.to_host(shard)
    full_host = g.pinned((int(starts[-1]), k), shard.dtype)
    _wait_event(copied)
    stamps.append(time.perf_counter())
    if link is None:
        comm.Allgatherv(_wire(host), [_wire(full_host), [c * k for c in counts]])
    else:
        _ring_all_gather(comm, _wire(host), _wire(full_host), starts, link)
    stamps.append(time.perf_counter())
    with g.h2d:
        full = cp.empty(full_host.shape, dtype=shard.dtype)
    g.to_device(full_host, full, [])
    g.wait(g.h2d)
    stamps.append(time.perf_counter())
    return full


def _gpu_ag_ring(g, comm, a_shard, b, counts, starts, out, chunks, method, link) -> None:
    """The all-gather ring on the GPU: at step s this rank multiplies shard (rank - s) mod P;
    each chunk of it, as it arrives from the left, is forwarded to the right from host
    memory at once, copied to the device and (overlap) multiplied there while the next
    one is in flight; "chunked" multiplies a shard once all of it is here."""
    cp, size, rank = g.cp, comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % size, (rank - 1) % size
    k = a_shard.shape[1]
    sender = _Sender(comm, link)
    # my own shard: its GEMM and its copy to the host (to send it) run side by side
    mine, copied = g.to_host(a_shard)
    with g.compute:
        cp.matmul(a_shard, b, out=out[starts[rank]:starts[rank + 1]])
    received = []  # per later step: (source rank, pinned rows, [(rows range, request)])
    for step in range(1, size):
        src = (rank - step) % size
        host = g.pinned((counts[src], k), a_shard.dtype)
        parts = _split(counts[src], chunks)
        received.append((src, host, [(p, comm.Irecv(_wire(host[p.start:p.stop]), left, _TAG + j))
                                     for j, p in enumerate(parts)]))
    with g.h2d:
        rows = cp.empty((int(starts[-1]), k), dtype=a_shard.dtype)  # the rows that arrive, on the device
    _wait_event(copied, sender)
    for j, p in enumerate(_split(counts[rank], chunks)):
        sender.send(_wire(mine[p.start:p.stop]), right, _TAG + j)
    for step, (src, host, parts) in enumerate(received, 1):
        lo = int(starts[src])
        for j, (p, request) in enumerate(parts):
            while not request.Test():
                sender.poll()
                sender.wait_a_little()
            if step < size - 1:
                sender.send(_wire(host[p.start:p.stop]), right, _TAG + j)
            here = g.to_device(host[p.start:p.stop], rows[lo + p.start:lo + p.stop], [])
            if method == "overlap":
                g.compute.wait_event(here)
                with g.compute:
                    cp.matmul(rows[lo + p.start:lo + p.stop], b, out=out[lo + p.start:lo + p.stop])
            sender.poll()
        if method == "chunked":  # the naive version: the whole shard once it is all here
            g.compute.wait_event(g.h2d.record())
            with g.compute:
                cp.matmul(rows[lo:lo + counts[src]], b, out=out[lo:lo + counts[src]])
    sender.flush()
    g.wait()


def _gpu_measure(comm, a, b, link, collective) -> tuple[float, float, tuple[float, ...]]:
    """``_measure`` for cupy arrays: one untimed sequential run, then a timed one whose
    stages (GEMM, copy to the host, MPI, copy back) each end when their streams are done;
    each the slowest rank's."""
    size, rank = comm.Get_size(), comm.Get_rank()
    g = _streams()
    g.start()
    for _ in range(2):
        comm.Barrier()
        t0 = time.perf_counter()
        stamps: list[float] = []
        if collective == "reduce_scatter":
            full, ready = _gpu_product(g, a, b)
            _wait_event(ready)
            t1 = time.perf_counter()
            rows = _split(a.shape[0], size)
            out = g.cp.empty((len(rows[rank]), b.shape[1]), dtype=a.dtype)
            _gpu_reduce_scatter(g, comm, full, ready, rows, out, link, stamps)
            gemm = t1 - t0
            copies = np.diff([t1] + stamps)
        else:
            counts = comm.allgather(a.shape[0])
            starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
            full = _gpu_all_gather(g, comm, a, counts, starts, link, stamps)
            with g.compute:
                g.cp.matmul(full, b)
            g.wait(g.compute)
            gemm = time.perf_counter() - stamps[-1]
            copies = np.diff([t0] + stamps)
    worst = np.empty(4)
    comm.Allreduce(np.array([gemm, *copies]), worst, op=_mpi_max())
    return float(worst[0]), float(worst[1:].sum()), tuple(float(t) for t in worst)


# ---- checks and helpers ------------------------------------------------------------------------

def _kind(x: Any) -> str | None:
    """'cupy', 'numpy' or None (not an array we take)."""
    if is_cupy_array(x):
        return "cupy"
    return "numpy" if isinstance(x, np.ndarray) else None


def _xp(gpu: bool) -> Any:
    if not gpu:
        return np
    from pyhpc import cuda

    return cuda.cupy()


def _check_pair(comm, a, b, what, method, chunks, tiles, shard_rows=False, out=None):
    """Validate locally, then agree across ranks, so that a bad argument on one rank raises
    on every rank instead of leaving the others in the collective. Returns (a, b, M, N, gpu)."""
    error = None
    try:
        if method not in METHODS:
            raise InvalidArgumentError(f"method: {method!r} is not one of {METHODS}")
        if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer))
                                   or chunks < 1):
            raise InvalidArgumentError(f"chunks: must be None or an integer >= 1, got {chunks!r}")
        if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
            raise InvalidArgumentError(f"tiles: must be an integer >= 1, got {tiles!r}")
        first = "a_shard" if shard_rows else "a"
        kind = _kind(a)
        for name, x in ((first, a), ("b", b)):
            if _kind(x) is None:
                raise InvalidArgumentError(f"{name}: must be a numpy or cupy array, got {type(x).__name__}")
            if _kind(x) != kind:
                raise InvalidArgumentError(f"{name}: is a {_kind(x)} array and {first} a {kind} one: pass both "
                                           f"on the host (numpy) or both on the GPU (cupy)")
            if x.ndim != 2:
                raise InvalidArgumentError(f"{name}: must be 2-D, got shape {x.shape}")
            if kind == "numpy" and x.dtype not in (np.float32, np.float64):
                raise InvalidArgumentError(f"{name}: dtype must be float32 or float64, got {x.dtype}")
            if kind == "cupy" and x.dtype.name not in GPU_DTYPES:
                raise InvalidArgumentError(f"{name}: dtype must be float16, bfloat16 or float32 for cupy "
                                           f"arrays, got {x.dtype}")
        if a.dtype != b.dtype:
            raise InvalidArgumentError(f"b: dtype {b.dtype} differs from a's {a.dtype}")
        if a.shape[1] != b.shape[0]:
            raise InvalidArgumentError(f"b: has {b.shape[0]} rows, a has {a.shape[1]} columns")
        if out is not None:
            mine = _split(a.shape[0], comm.Get_size())[comm.Get_rank()]
            shape = (mine.stop - mine.start, b.shape[1])
            if not (_kind(out) == kind and out.shape == shape and out.dtype == a.dtype and out.flags.c_contiguous):
                raise InvalidArgumentError(f"out: must be a C-contiguous {a.dtype} array of shape {shape} "
                                           f"({kind}, as a), got {_kind(out) or type(out).__name__} "
                                           f"{getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
    except InvalidArgumentError as exc:
        error = f"{what}: {exc}"
    key = None if error else (method, chunks, str(a.dtype), b.shape[1] if not shard_rows else a.shape[1],
                              a.shape[0] if not shard_rows else None, kind)
    reports = comm.allgather((error, key))
    bad = [r for r, (e, _) in enumerate(reports) if e]
    if bad:
        raise InvalidArgumentError(f"rank {bad[0]}: {reports[bad[0]][0]}")
    if any(k != reports[0][1] for _, k in reports):
        names = "(method, chunks, dtype, N, M, kind)" if not shard_rows else "(method, chunks, dtype, K, kind)"
        raise InvalidArgumentError(f"{what}: ranks disagree on {names}: "
                                   f"{sorted({str(k) for _, k in reports})}")
    xp = _xp(kind == "cupy")
    a = xp.ascontiguousarray(a)
    b = xp.ascontiguousarray(b)
    return a, b, a.shape[0], b.shape[1], kind == "cupy"


def _split(n: int, parts: int) -> list[range]:
    """np.array_split's ranges of 0..n-1 into `parts` (the first n % parts one longer)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        out.append(range(start, stop))
        start = stop
    return out


def _split_counts(counts: list[int]) -> list[range]:
    """Consecutive ranges of the given lengths, from 0."""
    out, start = [], 0
    for c in counts:
        out.append(range(start, start + c))
        start += c
    return out


def _split_range(r: range, parts: int) -> list[range]:
    return [range(r.start + s.start, r.start + s.stop) for s in _split(r.stop - r.start, parts)]
