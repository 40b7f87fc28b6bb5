"""Physical limits, measured in the same run as what they bound.

A benchmark's "% of limit" is only honest if the limit comes from the same
machine, at the same moment, under the same load; on a shared machine a
number from last week means little. So each benchmark job measures the limit
it is compared with, and the `limits` benchmark reports them all:

- memcpy bandwidth: memcpy timed in C++, in bytes copied per second (each
  byte read once and written once). A shared-memory MPI transfer of n bytes needs at
  least one copy of n bytes, so memcpy of the same size bounds ping-pong and
  allreduce bandwidth between ranks on one node; the `limits` benchmark
  reports it for a buffer larger than any cache (memory bandwidth).
- loopback TCP bandwidth: a socket pair over 127.0.0.1 in one process, a
  sender thread against a receiving one; what any TCP transport (the
  fault-tolerant allreduce) can get on this host.
- FLOP rate: numpy matmul (the installed BLAS, its default threads) in
  float32 and float64; what any GEMM-based kernel can get.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import numpy as np

from .harness import Benchmark, Context, Measurement, size_label, time_reps

def _sizes(quick: bool) -> dict[str, int]:
    # Buffers well beyond the last-level cache; the FLOP-rate matrices large
    # enough for BLAS to reach its plateau (n=2048 costs ~17 GFLOP a product).
    if quick:
        return {"memcpy": 64 << 20, "memcpy_reps": 20, "tcp": 128 << 20, "tcp_reps": 8,
                "matmul": 1024, "matmul_reps": 10}
    return {"memcpy": 256 << 20, "memcpy_reps": 30, "tcp": 512 << 20, "tcp_reps": 10,
            "matmul": 2048, "matmul_reps": 10}


# ---- the measurements ----------------------------------------------------------

def memcpy_seconds(nbytes: int, warmup: int, reps: int, comm: Any = None) -> list[float]:
    """Seconds of one memcpy of nbytes, timed in C++ (pyhpc._core.memcpy_seconds):
    numpy's own per-call cost would otherwise make small sizes a measure of
    Python. Small copies run in batches (time / copies). With comm, all ranks
    copy at the same time (they share the memory bus) and each repetition
    counts the slowest rank. The C++ side checks that the bytes arrived.
    """
    from pyhpc import _core

    if comm is not None:
        comm.Barrier()
    seconds = np.asarray(_core.memcpy_seconds(nbytes, warmup, reps))
    if comm is not None:
        from mpi4py import MPI

        slowest = np.empty_like(seconds)
        comm.Allreduce(seconds, slowest, op=MPI.MAX)
        seconds = slowest
    return seconds.tolist()


def memcpy_limit(ctx: Context, nbytes: int, reps: int) -> Measurement:
    """The limit row "memcpy <size>": copy bandwidth of nbytes, measured by all ranks of ctx at once.

    A message of n bytes between ranks on one node needs at least one copy of
    n bytes, from the same level of cache or memory as a memcpy of n bytes, so
    the limit for each message size is memcpy of that size. Rows compared with
    it pass ``limit=row.case``.
    """
    who = "one rank" if ctx.size == 1 else f"each of {ctx.size} ranks at once"
    return Measurement(f"memcpy {size_label(nbytes)}", f"memcpy (C++), {who}", "limit",
                       memcpy_seconds(nbytes, 2, reps, ctx.comm), x=nbytes, bytes_per_rep=nbytes)


def tcp_loopback_limit(ctx: Context) -> Measurement:
    """The limit row "TCP loopback": 64 MiB (quick) or 256 MiB a repetition streamed
    over 127.0.0.1, measured on rank 0 alone (the others wait) and shared with all."""
    nbytes, reps = ((64 << 20), 3) if ctx.quick else ((256 << 20), 8)
    seconds = tcp_loopback_seconds(nbytes, 1, reps) if ctx.rank == 0 else None
    seconds = ctx.comm.bcast(seconds, root=0)
    return Measurement("TCP loopback", f"socket over 127.0.0.1, {size_label(nbytes)} a rep",
                       "limit", seconds, bytes_per_rep=nbytes)


def tcp_loopback_seconds(nbytes: int, warmup: int, reps: int, chunk: int = 4 << 20,
                         timeout: float = 30.0) -> list[float]:
    """Seconds to stream nbytes through a TCP connection over 127.0.0.1.

    A sender thread `sendall`s while this thread `recv_into`s; both release the
    GIL in the kernel call, so this is the kernel's loopback rate. Every socket
    operation has a timeout, and everything is closed on the way out, error or not.
    """
    send_buf = memoryview(np.full(chunk, 7, dtype=np.uint8)).cast("B")
    recv_arr = np.zeros(chunk, dtype=np.uint8)
    recv_buf = memoryview(recv_arr).cast("B")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(timeout)
        sender = socket.create_connection(listener.getsockname(), timeout=timeout)
        try:
            receiver, _ = listener.accept()
        except BaseException:
            sender.close()
            raise
    receiver.settimeout(timeout)
    start = threading.Barrier(2, timeout=timeout)  # both sides begin each rep together
    errors: list[BaseException] = []

    def send_all_reps() -> None:
        try:
            for _ in range(warmup + reps):
                start.wait()
                left = nbytes
                while left > 0:
                    n = min(left, chunk)
                    sender.sendall(send_buf[:n])
                    left -= n
        except BaseException as exc:  # reported by the receiving side
            errors.append(exc)
            start.abort()

    thread = threading.Thread(target=send_all_reps, name="tcp-limit-sender", daemon=True)
    thread.start()
    seconds: list[float] = []
    try:
        for i in range(warmup + reps):
            start.wait()
            t0 = time.perf_counter()
            got = 0
            while got < nbytes:
                n = receiver.recv_into(recv_buf, min(chunk, nbytes - got))
                if n == 0:
                    raise ConnectionError("TCP limit: sender closed the connection early")
                got += n
            dt = time.perf_counter() - t0
            if i >= warmup:
                seconds.append(dt)
    except threading.BrokenBarrierError:
        raise (errors[0] if errors else RuntimeError("TCP limit: sender thread stopped")) from None
    finally:
        # Closing the sockets ends a sender blocked in sendall, so the join is bounded.
        sender.close()
        receiver.close()
        thread.join(timeout)
    if errors:
        raise errors[0]
    if recv_arr[0] != 7:
        raise RuntimeError("TCP limit: received bytes are not the ones sent")
    return seconds


def matmul_seconds(n: int, dtype: Any, warmup: int, reps: int) -> list[float]:
    """Seconds of an n x n @ n x n numpy matmul (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    seconds = time_reps(lambda: np.matmul(a, b, out=out), warmup, reps)
    # One entry against a dot product computed independently of the BLAS call.
    expected = float(np.dot(a[0].astype(np.float64), b[:, 0].astype(np.float64)))
    if not np.isclose(float(out[0, 0]), expected, rtol=1e-3, atol=1e-3 * np.sqrt(n)):
        raise RuntimeError(f"FLOP-rate limit: matmul result is wrong ({out[0, 0]} != {expected})")
    return seconds


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---- the `limits` benchmark ----------------------------------------------------

def run(ctx: Context) -> list[Measurement]:
    sizes = _sizes(ctx.quick)
    rows = []
    ctx.progress("memcpy bandwidth")
    rows.append(memcpy_limit(ctx, sizes["memcpy"], sizes["memcpy_reps"]))
    ctx.progress("loopback TCP bandwidth")
    nbytes = sizes["tcp"]
    rows.append(Measurement("TCP loopback", f"socket over 127.0.0.1, {size_label(nbytes)} a rep",
                            "limit", tcp_loopback_seconds(nbytes, 1, sizes["tcp_reps"]),
                            bytes_per_rep=nbytes))
    n = sizes["matmul"]
    # The launcher may pin the rank to fewer cores than the machine has (Open MPI
    # binds a 1-rank job to one core), and BLAS can only use those: say so.
    cores = usable_cores()
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        ctx.progress(f"FLOP rate, {name} matmul")
        rows.append(Measurement(f"matmul {name}",
                                f"numpy matmul {n}x{n}, BLAS on the {cores} core(s) this rank may use",
                                "limit", matmul_seconds(n, dtype, 1, sizes["matmul_reps"]),
                                flops_per_rep=2.0 * n**3))
    return rows


BENCHMARK = Benchmark(
    name="limits",
    ranks=1,
    description="physical limits of this machine: memcpy and loopback TCP bandwidth, "
                "float32/float64 matmul FLOP rate",
    run=run,
    x_label="",
)
