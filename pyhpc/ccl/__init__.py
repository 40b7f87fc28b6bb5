"""Fault-tolerant collectives over TCP (after PCCL): membership and all-reduce.

A :class:`Master` tracks who is in the run; :class:`Communicator` is one peer.
Peers prove a shared secret to the master (challenge + HMAC-SHA256, both
ways), send a heartbeat every ``heartbeat_interval`` seconds, and may join at
any time: a new peer is admitted at the next :meth:`Communicator.update_topology`,
which is collective over the current members (it returns once every live
member has called it). A peer whose connection closes is dead at once; one
silent for ``heartbeat_timeout`` seconds (frozen, partitioned) is declared
dead. Dead peers are removed at the next update and reported by id::

    from pyhpc.ccl import Communicator
    comm = Communicator("10.0.0.1:4000", secret=b"...").connect()
    while comm.world_size < 4:
        comm.update_topology()
    print(comm.rank, comm.world_size, comm.peers)

:meth:`Communicator.all_reduce` is a ring all-reduce over the members, on
authenticated peer-to-peer TCP connections (the data plane, csrc/ccl/ring.hpp).
If a member dies, freezes or the operation's deadline passes, every survivor
raises :class:`PeerFailure` naming it, with its input as it was (an
out-of-place output then holds no defined values); call :meth:`~Communicator.update_topology` and retry: the result is then the
reduction over exactly the survivors::

    while True:
        try:
            comm.all_reduce(grads, op="avg")
            break
        except PeerFailure:
            comm.update_topology()

:meth:`Communicator.sync_shared_state` makes a dict of numpy arrays (model
weights, optimizer state) bit-identical on every member: each peer reports
its revision and a hash of every array (:func:`hash_array`); the master picks
the content most peers hold and the outdated peers fetch only the arrays that
differ, straight from up-to-date peers, all or nothing::

    info = comm.sync_shared_state({"w": w, "b": b}, revision=step)
    step = info.revision

:meth:`Communicator.optimize_topology` measures the bandwidth and latency
between every pair of members and reorders the ring so that its slowest link
is as fast as possible (ranks then follow the new order)::

    report = comm.optimize_topology()
    print(report.order, report.slowest_before, report.slowest_after)

With no master address the communicator starts a master in this process
(``comm.master``), whose address other peers can join. ``pyhpc master --port P
--secret-file F`` runs a stand-alone master.
"""

from __future__ import annotations

import dataclasses
import secrets as _secrets
import threading
import time
from typing import Optional, Sequence, Union

import numpy as np

from .. import _ccl
from ..errors import InvalidArgumentError, PeerError

PROTOCOL_VERSION: int = _ccl.PROTOCOL_VERSION
DEFAULT_HEARTBEAT_INTERVAL = 0.1
DEFAULT_HEARTBEAT_TIMEOUT = 1.5  # frozen or cut-off peers are dead within 2 s (15 missed heartbeats)
DEFAULT_HANDSHAKE_TIMEOUT = 2.0
DEFAULT_UPDATE_TIMEOUT = 60.0
DEFAULT_OP_TIMEOUT = 30.0
DEFAULT_CHUNK_BYTES = 1 << 19
_MAX_TAG = 2**32 - 1
# Tests only: the process _exit()s right before / right after its YES vote in the commit round.
_EXIT_AT = {None: 0, "before_vote": 1, "after_vote": 2}

_OPS = {"sum": 1, "avg": 2, "min": 3, "max": 4}
_QUANTIZE = {None: 0, "minmax_uint8": 1, "zeropoint_uint8": 2}
MAX_CONNECTIONS = 16
_DTYPES = {np.dtype(np.float16): 1, np.dtype(np.float32): 3, np.dtype(np.float64): 4,
           np.dtype(np.int32): 5, np.dtype(np.int64): 6}
try:  # bfloat16 is optional
    import ml_dtypes as _ml_dtypes
    _DTYPES[np.dtype(_ml_dtypes.bfloat16)] = 2
except ImportError:  # pragma: no cover - depends on the environment
    _ml_dtypes = None

Secret = Union[bytes, str]

__all__ = [
    "Master", "Communicator", "PeerInfo", "TopologyUpdate", "PeerFailure", "PROTOCOL_VERSION",
    "parse_address", "AllReduceHandle", "SyncInfo", "hash_array", "HASH_CHUNK",
    "TopologyReport", "DEFAULT_PROBE_BYTES",
]

#: Chunk size of the tensor hash (:func:`hash_array`).
HASH_CHUNK: int = _ccl.HASH_CHUNK
_MAX_REVISION = 2**64 - 1


class PeerFailure(PeerError):
    """Peers of the run failed (died, froze or were cut off); ``peer_ids`` names them."""

    def __init__(self, message: str = "", status=None, peer_ids: Sequence[int] = ()) -> None:
        super().__init__(message, status)
        self.peer_ids = list(peer_ids)

    def __reduce__(self):
        return (type(self), (self.message, int(self.status), self.peer_ids))


@dataclasses.dataclass(frozen=True)
class PeerInfo:
    rank: int
    id: int
    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class TopologyUpdate:
    """What one :meth:`Communicator.update_topology` changed."""

    epoch: int
    world_size: int
    rank: int
    peers: list  # PeerInfo in rank order
    joined: list  # ids admitted by this update (this peer too, on its first)
    dead: list  # ids removed because they failed
    left: list  # ids removed because they left


@dataclasses.dataclass(frozen=True)
class SyncInfo:
    """What one :meth:`Communicator.sync_shared_state` did on this peer."""

    revision: int  # the winning revision: this peer's state now is that revision's
    fetched: list  # names of the arrays this peer received (sorted)
    bytes_received: int  # array bytes received (frame headers not counted)
    bytes_sent: int  # array bytes this peer served to others
    sources: dict  # name -> id of the peer it was fetched from
    seconds: float  # wall time of the call


# ---- topology optimization ----
#: Bytes each member of a pair sends the other to measure bandwidth (optimize_topology).
DEFAULT_PROBE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class TopologyReport:
    """What one :meth:`Communicator.optimize_topology` measured and decided
    (the same on every member)."""

    order: list  # member ids in the new ring order (= rank order from now on)
    ids: list  # member ids in the old rank order: the rows and columns of the matrices
    bandwidth: np.ndarray  # [i, j]: bytes/s ids[i] sent to ids[j] (diagonal 0)
    latency: np.ndarray  # [i, j]: s, median ping-pong round trip / 2 from ids[i] to ids[j]
    slowest_before: float  # bytes/s of the slowest link of the old ring (inf: one member)
    slowest_after: float  # bytes/s of the slowest link of the new ring
    seconds: float  # wall time of the call (measurement, decision and the update)

    def link_bandwidth(self, a: int, b: int) -> float:
        """bytes/s of the link between member ids a and b: its slower direction."""
        i, j = self.ids.index(a), self.ids.index(b)
        return float(min(self.bandwidth[i, j], self.bandwidth[j, i]))

    def slowest_link(self, ring: Sequence[int]) -> float:
        """bytes/s of the slowest link of a ring of member ids (inf for fewer than 2)."""
        ring = list(ring)
        if len(ring) < 2:
            return float("inf")
        return min(self.link_bandwidth(ring[k], ring[(k + 1) % len(ring)])
                   for k in range(len(ring)))
# ---- end topology optimization ----


def _state_dtype(a: np.ndarray) -> Optional[str]:
    """The dtype string of the tensor hash, None if the dtype is not a fixed-size number."""
    if a.dtype.kind in "biufc":
        return a.dtype.str
    if _ml_dtypes is not None and a.dtype == np.dtype(_ml_dtypes.bfloat16):
        return "bfloat16"
    return None


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two C-contiguous arrays share any byte (views of one buffer included)."""
    a0, b0 = a.ctypes.data, b.ctypes.data
    return a.nbytes > 0 and b.nbytes > 0 and a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def _on_gpu(a) -> bool:
    """A cupy array (cupy itself is imported only when one is passed)."""
    return type(a).__module__.split(".")[0] == "cupy"


def _to_host(a, what: str) -> np.ndarray:
    """A host copy of the C-contiguous cupy array ``a``. The data plane is TCP: device
    arrays travel through host memory, and the collectives write them back only once
    the host result is final."""
    import cupy

    if not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{what}: the array must be C-contiguous "
                                   f"(cupy.ascontiguousarray makes a copy)")
    return cupy.asnumpy(a)


def hash_array(a) -> int:
    """The tensor hash (an unsigned 64-bit int) of a C-contiguous numpy array.

    Version 1, defined so that a GPU can compute the same value: XXH64 (seed 0)
    of every 1 MiB chunk of the array's raw bytes, then XXH64 of
    ``u16 len(dtype) || dtype || u32 ndim || u64 shape[...] || u64 nbytes ||
    u64 chunk digests...`` (little-endian; dtype as numpy's ``dtype.str``, e.g.
    ``"<f4"``, or ``"bfloat16"``). The same bytes with another dtype or shape
    hash differently. A cupy array hashes as its bytes copied to the host do."""
    if _on_gpu(a):
        a = _to_host(a, "hash_array")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"hash_array: expected a numpy or cupy array, got {type(a).__name__}")
    dt = _state_dtype(a)
    if dt is None:
        raise InvalidArgumentError(f"hash_array: dtype {a.dtype} is not a fixed-size number")
    if not a.flags.c_contiguous:
        raise InvalidArgumentError("hash_array: the array must be C-contiguous")
    return _ccl.tensor_hash(a.ctypes.data, a.nbytes, dt, list(a.shape))


def _secret_bytes(secret: Secret | None, what: str) -> bytes:
    if secret is None:
        raise InvalidArgumentError(f"{what}: a shared secret is needed (bytes or str)")
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, (bytes, bytearray)) or len(secret) == 0:
        raise InvalidArgumentError(f"{what}: the secret must be non-empty bytes or str")
    return bytes(secret)


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` too) -> (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"master address: expected 'host:port', got {address!r}")
    return host.strip("[]"), int(port)


class AllReduceHandle:
    """An all-reduce running on a background thread; :meth:`wait` returns its
    result or raises what it raised (PeerFailure included)."""

    def __init__(self, fn, *args, **kwargs) -> None:
        self._result = None
        self._error: Optional[BaseException] = None

        def body():
            try:
                self._result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to wait()
                self._error = e

        self._thread = threading.Thread(target=body, name="ccl-all-reduce", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None):
        self._thread.join(timeout)
        if self._thread.is_alive():
            from ..errors import TimeoutError as _Timeout
            raise _Timeout("all_reduce_async: still running after wait(timeout)")
        if self._error is not None:
            raise self._error
        return self._result


class Master:
    """The membership master, served by a C++ thread of this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: Secret | None = None,
                 heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_clients: int = 1024) -> None:
        if heartbeat_timeout <= 0 or handshake_timeout <= 0:
            raise InvalidArgumentError("heartbeat_timeout and handshake_timeout must be > 0")
        if not 0 <= int(port) < 65536:
            raise InvalidArgumentError(f"port: {port} is not a TCP port")
        self.secret = _secret_bytes(_secrets.token_bytes(32) if secret is None else secret,
                                    "Master")
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._impl = _ccl.Master(host, int(port), self.secret, float(heartbeat_timeout),
                                 float(handshake_timeout), int(max_clients))
        self._running = False

    def start(self) -> "Master":
        if not self._running:
            self._impl.start()
            self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._impl.stop()
            self._running = False

    @property
    def host(self) -> str:
        return self._impl.host

    @property
    def port(self) -> int:
        return self._impl.port

    @property
    def address(self) -> str:
        host = self._impl.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def stats(self) -> dict:
        """epoch, members (ids, rank order), pending (ids), failures [(id, reason, unix time)],
        rejected (connections dropped at or before authentication), commits / aborts
        (all-reduce commit rounds decided each way), sync_commits / sync_aborts (shared-state
        sync rounds; aborts count mismatches too) / sync_mismatches, continues (QUERYs answered CONTINUE:
        a peer told of a death mid-operation went on because the dead had voted YES)."""
        return self._impl.stats()

    def __enter__(self) -> "Master":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class Communicator:
    """One peer of a fault-tolerant run.

    ``master`` is ``"host:port"`` or a :class:`Master`; ``None`` starts a master
    in this process (``self.master``; its secret is ``secret`` or a random one).
    ``connections`` (1..16, default 1): TCP connections this peer opens to its
    right neighbour per all-reduce channel, each authenticated; every ring
    step's chunks are striped over them. Peers may differ (a receiver follows
    its left neighbour's count); results are the same bits for any count.
    ``heartbeat_timeout``: seconds of silence after which this peer's own
    master counts as lost (the master echoes every heartbeat; a frozen or
    cut-off master then fails every pending call with PeerError), and the
    timeout of the master it starts when ``master`` is None.
    """

    def __init__(self, master: str | Master | None = None, secret: Secret | None = None, *,
                 connect_timeout: float = 5.0,
                 heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
                 heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
                 update_timeout: float = DEFAULT_UPDATE_TIMEOUT,
                 advertise_host: str = "", advertise_port: int = 0,
                 connections: int = 1,
                 _protocol_version: int = PROTOCOL_VERSION) -> None:
        self.master: Optional[Master] = None
        if master is None:
            self.master = Master(secret=secret, heartbeat_timeout=heartbeat_timeout).start()
            self._host, self._port = self.master.host, self.master.port
            self._secret = self.master.secret
        elif isinstance(master, Master):
            self._host, self._port = master.host, master.port
            self._secret = master.secret if secret is None else _secret_bytes(secret,
                                                                                "Communicator")
        else:
            self._host, self._port = parse_address(master)
            self._secret = _secret_bytes(secret, "Communicator")
        if heartbeat_interval <= 0 or connect_timeout <= 0 or update_timeout <= 0:
            raise InvalidArgumentError("intervals and timeouts must be > 0")
        if heartbeat_timeout <= heartbeat_interval:
            raise InvalidArgumentError(f"heartbeat_timeout ({heartbeat_timeout}) must exceed "
                                       f"heartbeat_interval ({heartbeat_interval})")
        self._heartbeat_timeout = float(heartbeat_timeout)
        if (not isinstance(connections, (int, np.integer)) or isinstance(connections, bool)
                or not 1 <= int(connections) <= MAX_CONNECTIONS):
            raise InvalidArgumentError(f"Communicator: connections must be an int in "
                                       f"1..{MAX_CONNECTIONS}, got {connections!r}")
        #: TCP connections to the right neighbour per all-reduce channel; each
        #: step's chunks are striped over them (chunk i on connection i mod N).
        self.connections = int(connections)
        self._connect_timeout = float(connect_timeout)
        self._heartbeat_interval = float(heartbeat_interval)
        self.update_timeout = float(update_timeout)
        self._advertise = (advertise_host, int(advertise_port))
        self._version = int(_protocol_version)
        self._impl = _ccl.Peer()
        self._data = _ccl.DataPlane()
        #: Bytes of ring data frames (frame headers included) this peer sent in its
        #: last successful all_reduce (0 after a failure); with concurrent tags,
        #: the last one to finish.
        self.last_bytes_sent = 0
        self.op_timeout = DEFAULT_OP_TIMEOUT
        self._connected = False
        self._ids: set[int] = set()
        self._failed: list[int] = []

    @property
    def master_address(self) -> str:
        return f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"

    def connect(self) -> "Communicator":
        """Connect and authenticate; the peer then waits to be admitted.

        Starts this peer's data-plane listener first and advertises its port
        (on 127.0.0.1 when the master is on loopback, else on every interface)."""
        host, port = self._advertise
        if host:
            listen = host
        elif self._host in ("127.0.0.1", "localhost", "::1"):
            listen = "127.0.0.1" if self._host != "::1" else "::1"
        else:
            listen = "0.0.0.0"
        self._data.start(listen, self._secret, self._version, self.connections)
        self._impl.connect(self._host, self._port, self._secret, self._connect_timeout,
                           self._heartbeat_interval, host, port or self._data.port,
                           self._version, self._heartbeat_timeout)
        self._connected = True
        return self

    def update_topology(self, timeout: float | None = None) -> TopologyUpdate:
        """Collective with every live member: admit waiting peers, drop dead ones.

        Raises pyhpc.TimeoutError after ``timeout`` (default ``update_timeout``)
        seconds; calling again waits for the same update.
        """
        if not self._connected:
            self.connect()
        t = self._impl.update_topology(self.update_timeout if timeout is None else float(timeout))
        peers = [PeerInfo(rank, pid, host, port) for rank, (pid, host, port) in
                 enumerate(t["peers"])]
        ids = {p.id for p in peers}
        joined = sorted(ids - self._ids)
        self._ids = ids
        self._drain_failures()
        gone = set(t["dead"]) | set(t["left"])
        self._failed = [i for i in self._failed if i not in gone]
        return TopologyUpdate(t["epoch"], len(peers), t["rank"], peers, joined,
                              list(t["dead"]), list(t["left"]))

    @property
    def id(self) -> int:
        """This peer's id, assigned by the master at authentication (0 before)."""
        return self._impl.id

    @property
    def admitted(self) -> bool:
        return self._impl.admitted

    @property
    def world_size(self) -> int:
        """Members after the last update (0 before this peer is admitted)."""
        return len(self._impl.topology()["peers"]) if self._impl.admitted else 0

    @property
    def rank(self) -> Optional[int]:
        return self._impl.topology()["rank"] if self._impl.admitted else None

    @property
    def peers(self) -> list:
        if not self._impl.admitted:
            return []
        return [PeerInfo(rank, pid, host, port)
                for rank, (pid, host, port) in enumerate(self._impl.topology()["peers"])]

    def _drain_failures(self) -> None:
        for pid in self._impl.take_failures():
            if pid not in self._failed:
                self._failed.append(pid)

    def failed_peers(self) -> list:
        """Members the master declared dead since the last update (ids)."""
        self._drain_failures()
        return list(self._failed)

    def raise_if_failed(self) -> None:
        """Raise :class:`PeerFailure` if a member failed since the last update,
        or the error that cut this peer from the master."""
        self._impl.health()
        failed = self.failed_peers()
        if failed:
            raise PeerFailure(f"peer(s) {', '.join(map(str, failed))} failed; call "
                              f"update_topology() to continue without them", peer_ids=failed)

    @property
    def data_port(self) -> int:
        """The TCP port of this peer's data plane (0 before connect)."""
        return self._data.port

    def all_reduce(self, array, op: str = "sum", out=None, tag: int = 0,
                   timeout: float | None = None, quantize: str | None = None, *, _chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                   _chunk_delay: float = 0.0, _exit_at: str | None = None):
        """Reduce ``array`` over every member (blocking); returns the result.

        op: "sum", "avg" (sum / world size; floor division for integers), "min",
        "max". dtypes: float16, bfloat16 (with ml_dtypes), float32, float64,
        int32, int64; C-contiguous numpy arrays, the same size, dtype and op on
        every peer (checked: all peers raise InvalidArgumentError otherwise).
        Result in place, or in ``out`` (same shape and dtype, not overlapping
        ``array``, which is then only read). 16-bit floats are accumulated in float32 and rounded once.
        Every peer gets bit-identical results.

        The outcome is agreed through the master (a commit round): either
        every surviving peer returns the full result, or every one raises.
        On :class:`PeerFailure` (a member died, froze or aborted before it held
        its whole result, or ``timeout`` seconds, default ``op_timeout``,
        passed) ``array`` holds its input again (in place it is restored;
        out of place it was only read) and ``out`` holds no defined values:
        call :meth:`update_topology` and retry. A member that dies after it held its whole result does not
        stop the others from committing (its contribution is in the result).
        If the master is lost during the commit round the peers raise
        :class:`pyhpc.PeerError` (or TimeoutError if it froze), input restored. ``tag`` (0..2**32-1) selects the
        channel: operations with different tags may run at the same time from
        different threads; the ones with one tag run in the order called, which
        must be the same on every peer.

        ``quantize="minmax_uint8"`` or ``"zeropoint_uint8"`` (float16,
        bfloat16, float32, float64 with op sum or avg): every chunk travels as
        uint8 codes plus 8 bytes of parameters, about 4x fewer bytes than
        float32. minmax_uint8: (min, scale = (max - min) / 255), value = min +
        scale * code. zeropoint_uint8 (asymmetric affine, as int8 schemes do):
        the range widened to hold 0, scale = range / 255, an integer zero point
        z, code = clamp(round(x / scale) + z, 0, 255), value = scale * (code -
        z), so 0 is exact. Partial sums are re-quantized at each hop of the
        reduce-scatter and accumulated in float32; each reduced segment is
        quantized once and those exact bytes are what every peer (its owner
        included) dequantizes, so all peers stay bit-identical. Error per
        element: at most the sum of scale/2 over the n quantizations it went
        through (n - 1 hops and the all-gather; divided by n for avg), plus
        float32 rounding. The setting must match on every peer
        (InvalidArgumentError on all otherwise); NaN or inf in any peer's input
        (or float64 beyond float32's range) makes every peer raise
        InvalidArgumentError; a float32 overflow of a partial sum makes that
        chunk NaN on every peer. minmax_uint8 returns constant arrays exactly;
        zeropoint_uint8 returns zeros exactly. A single peer returns its input.
        :attr:`last_bytes_sent` counts the bytes this peer sent.

        cupy arrays (both ``array`` and ``out``) are reduced through a host
        copy, and written back only when the result is committed.
        """
        if not self._connected or not self._impl.admitted:
            raise InvalidArgumentError("all_reduce: not admitted yet; call update_topology()")
        if _on_gpu(array) or _on_gpu(out):
            if not _on_gpu(array) or not (out is None or _on_gpu(out)):
                raise InvalidArgumentError("all_reduce: array and out must both be cupy arrays "
                                           "or both numpy arrays")
            if out is not None and (out.shape != array.shape or out.dtype != array.dtype
                                    or not out.flags.c_contiguous):
                raise InvalidArgumentError("all_reduce: out must be a C-contiguous array of "
                                           "the input's shape and dtype")
            host = _to_host(array, "all_reduce")  # reduced on the host, written back on success
            self.all_reduce(host, op, None, tag, timeout, quantize, _chunk_bytes=_chunk_bytes,
                            _chunk_delay=_chunk_delay, _exit_at=_exit_at)
            target = array if out is None else out
            target.set(host)
            return target
        if op not in _OPS:
            raise InvalidArgumentError(f"all_reduce: op must be one of {sorted(_OPS)}, got {op!r}")
        if not isinstance(array, np.ndarray):
            raise InvalidArgumentError(f"all_reduce: expected a numpy array, got {type(array).__name__}")
        code = _DTYPES.get(array.dtype)
        if code is None:
            names = ", ".join(sorted(str(d) for d in _DTYPES))
            raise InvalidArgumentError(f"all_reduce: unsupported dtype {array.dtype} (supported: "
                                       f"{names}{'' if _ml_dtypes else '; bfloat16 needs ml_dtypes'})")
        if not array.flags.c_contiguous:
            raise InvalidArgumentError("all_reduce: the array must be C-contiguous "
                                       "(np.ascontiguousarray makes a copy)")
        if out is None:
            out = array
        elif (not isinstance(out, np.ndarray) or out.dtype != array.dtype
              or out.shape != array.shape or not out.flags.c_contiguous):
            raise InvalidArgumentError("all_reduce: out must be a C-contiguous array of the "
                                       "input's shape and dtype")
        if not out.flags.writeable:
            raise InvalidArgumentError("all_reduce: the output array is read-only")
        if out.ctypes.data != array.ctypes.data and _overlap(array, out):
            raise InvalidArgumentError("all_reduce: out overlaps array (pass out=None, or the "
                                       "same array, to reduce in place)")
        if not isinstance(tag, (int, np.integer)) or not 0 <= int(tag) <= _MAX_TAG:
            raise InvalidArgumentError(f"all_reduce: tag must be an int in 0..{_MAX_TAG}")
        timeout = self.op_timeout if timeout is None else float(timeout)
        if timeout <= 0:
            raise InvalidArgumentError("all_reduce: timeout must be > 0")
        if quantize not in _QUANTIZE:
            raise InvalidArgumentError(f"all_reduce: quantize must be None, 'minmax_uint8' or "
                                       f"'zeropoint_uint8', got {quantize!r}")
        if quantize is not None and (array.dtype.kind != "f" and array.dtype.name != "bfloat16"
                                     or op not in ("sum", "avg")):
            raise InvalidArgumentError(f"all_reduce: quantize={quantize!r} takes float16, "
                                       "bfloat16, float32 or float64 with op 'sum' or 'avg'")
        if _exit_at not in _EXIT_AT:
            raise InvalidArgumentError(f"all_reduce: _exit_at must be one of {sorted(_EXIT_AT, key=str)}")
        self.raise_if_failed()
        self.last_bytes_sent = 0
        failed, why, nbytes = self._data.all_reduce(
            self._impl, array.ctypes.data, out.ctypes.data, array.size, code, _OPS[op],
            int(tag), timeout, int(_chunk_bytes), float(_chunk_delay), _EXIT_AT[_exit_at],
            _QUANTIZE[quantize])
        self.last_bytes_sent = int(nbytes)
        if failed:
            raise PeerFailure(f"all_reduce: peer(s) {', '.join(map(str, failed))} failed ({why}); "
                              f"inputs restored; call update_topology() and retry",
                              peer_ids=failed)
        return out

    def all_reduce_async(self, array, op: str = "sum", out=None, tag: int = 0,
                         timeout: float | None = None, **kw) -> AllReduceHandle:
        """:meth:`all_reduce` on a background thread; ``.wait()`` returns the result.
        Don't touch ``array``/``out`` until then. Give concurrent operations
        different tags."""
        return AllReduceHandle(self.all_reduce, array, op, out, tag, timeout, **kw)

    def sync_shared_state(self, state: dict, revision: int, timeout: float | None = None, *,
                          _serve_delay: float = 0.0) -> SyncInfo:
        """Make ``state`` (a dict name -> numpy or cupy array) identical on every member.

        Collective over the members of the current epoch, like :meth:`all_reduce`;
        every peer passes the same names, dtypes and shapes (else every peer
        raises InvalidArgumentError naming the first differing tensor) and its
        ``revision`` (an int, 0..2**64-1). Arrays: C-contiguous, writable, any
        fixed-size numeric dtype (bool, ints, floats, complex, bfloat16); names:
        non-empty str of at most 255 UTF-8 bytes; at most 4096 arrays.

        The winner is the content, (revision, every array's :func:`hash_array`),
        held by the most voters; among equally common contents the higher
        revision wins, then the one held by the lowest peer id. The voters are
        the members that took part in a committed sync before (they hold the
        run's state), or every member while none has: peers that join, however
        many at once, cannot outvote the state the members hold. A peer whose
        content differs fetches only the arrays whose hash differs from the
        winner's, each straight from one up-to-date peer (spread over them by
        bytes), checks every hash, and only when all arrived and every peer is
        done writes them into its arrays in place. Returns a :class:`SyncInfo`
        (its ``revision`` is the winning one). After it returns every member
        holds bit-identical arrays.

        If a member dies, freezes or leaves mid-sync (a source mid-transfer
        included), or ``timeout`` seconds (default ``op_timeout``) pass, every
        survivor raises :class:`PeerFailure` naming it and no array changed:
        call :meth:`update_topology` and sync again. cupy arrays are hashed and
        sent from host copies, and the fetched ones written back after COMMIT.
        """
        if not self._connected or not self._impl.admitted:
            raise InvalidArgumentError("sync_shared_state: not admitted yet; "
                                       "call update_topology()")
        if not isinstance(state, dict):
            raise InvalidArgumentError(f"sync_shared_state: state must be a dict of name -> numpy "
                                       f"array, got {type(state).__name__}")
        on_gpu = {k: v for k, v in state.items() if _on_gpu(v)}
        if on_gpu:  # synced through host copies; the fetched ones written back after COMMIT
            host = {k: (_to_host(v, f"sync_shared_state: state[{k!r}]") if k in on_gpu else v)
                    for k, v in state.items()}
            info = self.sync_shared_state(host, revision, timeout, _serve_delay=_serve_delay)
            for name in info.fetched:
                if name in on_gpu:
                    on_gpu[name].set(host[name])
            return info
        if (isinstance(revision, bool) or not isinstance(revision, (int, np.integer))
                or not 0 <= int(revision) <= _MAX_REVISION):
            raise InvalidArgumentError(f"sync_shared_state: revision must be an int in "
                                       f"0..2**64-1, got {revision!r}")
        if len(state) > _ccl.MAX_STATE_TENSORS:
            raise InvalidArgumentError(f"sync_shared_state: state has {len(state)} arrays, at most "
                                       f"{_ccl.MAX_STATE_TENSORS}")
        timeout = self.op_timeout if timeout is None else float(timeout)
        if timeout <= 0:
            raise InvalidArgumentError("sync_shared_state: timeout must be > 0")
        entries = []
        for name, a in state.items():
            if not isinstance(name, str):
                raise InvalidArgumentError(f"sync_shared_state: state keys must be str, got "
                                           f"{name!r} ({type(name).__name__})")
            raw = name.encode("utf-8", "surrogatepass")
            if not raw or len(raw) > _ccl.MAX_STATE_NAME or b"\0" in raw:
                raise InvalidArgumentError(
                    f"sync_shared_state: state key {name[:40]!r}: names must be "
                    f"1..{_ccl.MAX_STATE_NAME} UTF-8 bytes without NUL")
            if not isinstance(a, np.ndarray):
                raise TypeError(f"sync_shared_state: state[{name!r}] is a {type(a).__name__}, "
                                f"not a numpy array")
            dt = _state_dtype(a)
            if dt is None:
                raise InvalidArgumentError(f"sync_shared_state: state[{name!r}] has dtype "
                                           f"{a.dtype}, not a fixed-size number")
            if not a.flags.c_contiguous:
                raise InvalidArgumentError(f"sync_shared_state: state[{name!r}] is not "
                                           f"C-contiguous")
            if not a.flags.writeable:
                raise InvalidArgumentError(f"sync_shared_state: state[{name!r}] is read-only")
            entries.append((raw, dt, a.dtype.itemsize, list(a.shape), a.nbytes, a.ctypes.data,
                            name))
        entries.sort(key=lambda e: e[0])
        self.raise_if_failed()
        t0 = time.perf_counter()
        failed, why, r = self._data.sync_state(self._impl, [e[:6] for e in entries], int(revision),
                                               timeout, float(_serve_delay))
        if failed:
            raise PeerFailure(f"sync_shared_state: peer(s) {', '.join(map(str, failed))} failed "
                              f"({why}); call update_topology() and retry", peer_ids=failed)
        names = [entries[i][6] for i in r["fetched"]]
        return SyncInfo(r["revision"], sorted(names), r["bytes_received"], r["bytes_sent"],
                        dict(zip(names, r["sources"])), time.perf_counter() - t0)

    # ---- topology optimization ----
    def optimize_topology(self, timeout: float | None = None, *,
                          probe_bytes: int = DEFAULT_PROBE_BYTES,
                          _exit_in_round: int = -1) -> TopologyReport:
        """Measure every pair of members and order the ring for its slowest link.

        Collective over the members of the current epoch, like :meth:`all_reduce`.
        Pairs are measured over the authenticated data plane in round-robin
        rounds (each peer in at most one measurement at a time): latency is the
        median of 9 small ping-pongs (round trip / 2), bandwidth the time to
        send ``probe_bytes`` one way until the receiver's ack (each direction;
        a link counts at its slower one). The master then picks the ring order
        that maximises the slowest link's bandwidth, ties going to the lower
        total latency (then deterministically): exact for up to 9 members, a
        greedy + 2-opt heuristic above (at most 256 members).

        The new order takes effect through a topology update that this call
        runs (every member does): ranks follow the new order in a new epoch,
        so the ring all-reduce's neighbours do too. Peers waiting to join are
        admitted by that update, after the members; dead ones are dropped.
        Returns the same :class:`TopologyReport` on every member.

        If a member dies, freezes or leaves during the measurement, or
        ``timeout`` seconds (default ``op_timeout``) pass, every survivor
        raises :class:`PeerFailure` naming it and the order is unchanged: call
        :meth:`update_topology`; all_reduce and optimize_topology then work.
        """
        if not self._connected or not self._impl.admitted:
            raise InvalidArgumentError("optimize_topology: not admitted yet; call update_topology()")
        timeout = self.op_timeout if timeout is None else float(timeout)
        if timeout <= 0:
            raise InvalidArgumentError("optimize_topology: timeout must be > 0")
        if (isinstance(probe_bytes, bool) or not isinstance(probe_bytes, (int, np.integer))
                or not 1 <= int(probe_bytes) <= 1 << 30):
            raise InvalidArgumentError(f"optimize_topology: probe_bytes must be an int in "
                                       f"1..2**30, got {probe_bytes!r}")
        self.raise_if_failed()
        t0 = time.perf_counter()
        failed, why, r = self._data.probe_topology(self._impl, int(probe_bytes), timeout,
                                                   int(_exit_in_round))
        if failed:
            raise PeerFailure(f"optimize_topology: peer(s) {', '.join(map(str, failed))} failed "
                              f"({why}); the ring order is unchanged; call update_topology()",
                              peer_ids=failed)
        n = len(r["ids"])
        bandwidth = np.array(r["bandwidth"], dtype=np.float64).reshape(n, n)
        latency = np.array(r["latency_ns"], dtype=np.float64).reshape(n, n) * 1e-9
        self.update_topology(timeout)
        report = TopologyReport(list(r["order"]), list(r["ids"]), bandwidth, latency, 0.0, 0.0,
                                0.0)
        return dataclasses.replace(report, slowest_before=report.slowest_link(r["ids"]),
                                   slowest_after=report.slowest_link(r["order"]),
                                   seconds=time.perf_counter() - t0)
    # ---- end topology optimization ----

    def leave(self) -> None:
        """Leave the run gracefully (reported to the others as left, not dead)."""
        self._impl.leave()
        self._data.stop()
        self._stop_master()

    def close(self) -> None:
        self._impl.close()
        self._data.stop()
        self._stop_master()

    def _stop_master(self) -> None:
        if self.master is not None:
            self.master.stop()

    def __enter__(self) -> "Communicator":
        if not self._connected:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.leave()
