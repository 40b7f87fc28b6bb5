"""A stack of MoE transformer layers over MPI: classic expert parallelism and ExFlow's mode.

The model (:class:`MoEConfig`, weights drawn from its seed, the same on every
rank) is a decoder of ``n_layers`` layers; layer l maps a token's hidden state h to

    a = h + Attn_l(h | the request's cached keys and values at layer l)
    h' = a + sum_j g_j * FFN_{l, e_j}(a)       e_j, g_j: the router's top-k experts and gates

(single-head attention of width d_kv, FFN(x) = relu(x W1) W2, gates = softmax
of the k chosen router logits). A decode step takes one new token per request.

``mode="classic"`` (DeepSpeed-MoE's expert parallelism): a request's token and
its KV cache stay on the rank that owns it; each layer sends every token to the
ranks of its experts (dispatch ``Alltoallv``) and the partial results back
(combine ``Alltoallv``): two all-to-alls per layer.

``mode="exflow"`` (ExFlow's context-coherent expert parallelism): every rank
keeps every request's KV cache, so a token's attention can run wherever its
hidden state is. With top-1 routing the token moves to its expert's rank, the
expert output *is* the next layer's input, and the next layer's attention and
router run there: one ``Alltoallv`` per layer, plus one to bring the final
states home. With an affinity-aware placement (:func:`~pyhpc.moe.place_experts`)
most moves stay on the rank. Keeping the caches coherent costs one
``Allgatherv`` per step of the new tokens' keys and values of every layer.
Top-k (k > 1): the token's next home is its top-1 expert's rank; it is sent to
its other experts' ranks (dispatch) and their partial outputs come to the new
home (combine), so k > 1 takes two exchanges per layer, each of only the
transitions that leave a rank.

Every exchange sends counts first (``Alltoall``) and sizes the buffers exactly.
Expert ids, gates and request ids travel as extra float columns. cupy arrays are
staged through host memory for MPI. Bytes are counted per step in
:attr:`MoEStack.stats` (only what leaves the rank).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np

from pyhpc.errors import InvalidArgumentError

from .placement import Placement

__all__ = ["MODES", "MoEConfig", "MoEStack", "ReferenceStack"]

MODES = ("classic", "exflow")
_MAX_ID = 1 << 24  # ids travel as float32 columns: exact below 2**24


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    n_layers: int
    n_experts: int
    d_model: int = 64
    d_kv: int = 16
    d_ff: int = 128
    top_k: int = 1
    n_requests: int = 64
    max_context: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_experts", "d_model", "d_kv", "d_ff", "top_k", "n_requests", "max_context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidArgumentError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.top_k > self.n_experts:
            raise InvalidArgumentError(f"top_k: {self.top_k} is more than n_experts={self.n_experts}")
        if self.n_requests >= _MAX_ID or self.n_experts >= _MAX_ID:
            raise InvalidArgumentError(f"n_requests and n_experts: must be < {_MAX_ID}")

    def digest(self) -> str:
        return hashlib.sha256(repr(dataclasses.astuple(self)).encode()).hexdigest()

    # ---- weights: a function of (seed, layer[, expert]) only, so any rank can make any part
    def attention_weights(self, layer: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, layer, 0])
        d, kv = self.d_model, self.d_kv
        return {"wq": rng.standard_normal((d, kv)) / np.sqrt(d),
                "wk": rng.standard_normal((d, kv)) / np.sqrt(d),
                "wv": rng.standard_normal((d, kv)) / np.sqrt(d),
                "wo": rng.standard_normal((kv, d)) / np.sqrt(kv),
                "wg": rng.standard_normal((d, self.n_experts)) / np.sqrt(d)}

    def expert_weights(self, layer: int, expert: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, layer, 1, expert])
        return (rng.standard_normal((self.d_model, self.d_ff)) / np.sqrt(self.d_model),
                rng.standard_normal((self.d_ff, self.d_model)) / np.sqrt(self.d_ff) / 2)


class _Layers:
    """Weights and KV caches of every layer, plus the block math shared by both stacks."""

    def __init__(self, config: MoEConfig, xp: Any, dtype: Any, experts: list[np.ndarray]) -> None:
        self.config, self.xp, self.dtype = config, xp, dtype
        self.attn = [{k: xp.asarray(v, dtype=dtype) for k, v in config.attention_weights(layer).items()}
                     for layer in range(config.n_layers)]
        # experts[l]: the expert ids of layer l held here; w1[l][i], w2[l][i] their weights
        self.experts = experts
        self.w1, self.w2 = [], []
        for layer, ids in enumerate(experts):
            pairs = [config.expert_weights(layer, int(e)) for e in ids]
            shape = (0, config.d_model, config.d_ff)
            self.w1.append(xp.asarray(np.stack([p[0] for p in pairs]) if pairs else np.empty(shape), dtype=dtype))
            self.w2.append(xp.asarray(np.stack([p[1] for p in pairs]) if pairs else np.empty(shape[::-1]),
                                      dtype=dtype))
        cache = (config.n_layers, config.n_requests, config.max_context, config.d_kv)
        self.keys = xp.zeros(cache, dtype=dtype)
        self.values = xp.zeros(cache, dtype=dtype)
        self.lengths = np.zeros(config.n_requests, dtype=np.int64)

    def attention(self, layer: int, h: Any, requests: np.ndarray) -> tuple[Any, Any, Any]:
        """(h + attention output, new keys, new values); the new keys/values are written to the cache."""
        xp, w = self.xp, self.attn[layer]
        q, k, v = h @ w["wq"], h @ w["wk"], h @ w["wv"]
        if requests.size == 0:
            return h, k, v
        pos = self.lengths[requests]
        self.keys[layer, requests, pos] = k
        self.values[layer, requests, pos] = v
        width = int(pos.max()) + 1
        keys, values = self.keys[layer, requests, :width], self.values[layer, requests, :width]
        scores = xp.einsum("nd,ncd->nc", q, keys) / math.sqrt(self.config.d_kv)
        scores = xp.where(xp.asarray(np.arange(width)[None, :] <= pos[:, None]), scores, -xp.inf)
        scores = xp.exp(scores - scores.max(axis=1, keepdims=True))
        probs = scores / scores.sum(axis=1, keepdims=True)
        return h + xp.einsum("nc,ncd->nd", probs, values) @ w["wo"], k, v

    def route(self, layer: int, a: Any, forced: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """(experts [n, k] ordered by gate, gates [n, k]): top-k router logits, softmax over the k.
        forced [n, k]: use these experts instead of the top-k (replaying a trace)."""
        xp, k = self.xp, self.config.top_k
        logits = a @ self.attn[layer]["wg"]
        top = xp.argsort(-logits, axis=1)[:, :k] if forced is None else xp.asarray(forced)
        chosen = xp.take_along_axis(logits, top, axis=1)
        gates = xp.exp(chosen - chosen.max(axis=1, keepdims=True))
        gates = gates / gates.sum(axis=1, keepdims=True)
        return _host(top).astype(np.int64), gates

    def experts_apply(self, layer: int, a: Any, experts: np.ndarray, gates: Any) -> Any:
        """sum_j gates[:, j] * FFN_{experts[:, j]}(a) over the (row, j) whose expert is held here
        (rows whose experts are elsewhere must have gate 0)."""
        xp = self.xp
        out = xp.zeros_like(a)
        held = self.experts[layer]
        slot = np.full(self.config.n_experts, -1)
        slot[held] = np.arange(held.size)
        local = slot[experts]  # [n, k]; -1 where the expert is not here
        for i in range(held.size):
            rows, js = np.nonzero(local == i)
            if rows.size == 0:
                continue
            x = a[rows]
            y = xp.maximum(x @ self.w1[layer][i], 0) @ self.w2[layer][i]
            g = gates[xp.asarray(rows), xp.asarray(js)][:, None]
            if np.unique(rows).size == rows.size:
                out[rows] += g * y
            else:  # pragma: no cover - a token never picks one expert twice
                xp.add.at(out, rows, g * y)
        return out


class ReferenceStack:
    """The same model in one process with every expert, for checking the distributed stacks."""

    def __init__(self, config: MoEConfig, dtype: Any = np.float64) -> None:
        self.config = config
        self.layers = _Layers(config, np, dtype, [np.arange(config.n_experts)] * config.n_layers)
        self.routes: list[np.ndarray] = []  # experts chosen per layer at the last step

    def step(self, x: np.ndarray, requests: np.ndarray, routes: Any = None) -> np.ndarray:
        x, requests, routes = _check_step(self.config, x, requests, routes)
        h = x.astype(self.layers.dtype)
        self.routes = []
        for layer in range(self.config.n_layers):
            a, _, _ = self.layers.attention(layer, h, requests)
            experts, gates = self.layers.route(layer, a, None if routes is None else routes[:, layer])
            self.routes.append(experts)
            h = a + self.layers.experts_apply(layer, a, experts, gates)
        self.layers.lengths[requests] += 1
        return h


class MoEStack:
    """The model over ``comm``, every rank holding its experts of ``placement``.

    All ranks call :meth:`step` together, each with its own tokens: ``x`` [n, d_model]
    and the request id of each (unique over all ranks in a step). A request's tokens
    should always come from the same rank (in classic mode that rank holds its cache).
    """

    def __init__(self, config: MoEConfig, comm: Any, mode: str = "exflow", placement: Placement | None = None,
                 xp: Any = np, dtype: Any = np.float32) -> None:
        size, rank = comm.Get_size(), comm.Get_rank()
        error = None
        try:
            if mode not in MODES:
                raise InvalidArgumentError(f"mode: {mode!r} is not one of {MODES}")
            if placement is None:
                placement = Placement.contiguous(config.n_layers, config.n_experts, size)
            if (placement.n_layers, placement.n_experts, placement.n_ranks) != (config.n_layers, config.n_experts, size):
                raise InvalidArgumentError(
                    f"placement: is for {placement.n_layers} layers x {placement.n_experts} experts on "
                    f"{placement.n_ranks} ranks; the model has {config.n_layers} x {config.n_experts} "
                    f"on {size} ranks")
        except InvalidArgumentError as exc:
            error = str(exc)
        key = None if error else (mode, config.digest(), placement.digest(), np.dtype(dtype).str)
        _agree(comm, error, "MoEStack")
        keys = comm.allgather(key)
        if any(k != keys[0] for k in keys):
            differ = [r for r, k in enumerate(keys) if k != keys[0]]
            raise InvalidArgumentError(f"placement: ranks disagree on (mode, config, placement, dtype): "
                                       f"ranks {differ} differ from rank 0")
        self.config, self.comm, self.mode, self.placement = config, comm, mode, placement
        self.rank, self.size, self.xp, self.dtype = rank, size, xp, np.dtype(dtype)
        held = [placement.experts_of(rank, layer) for layer in range(config.n_layers)]
        self.layers = _Layers(config, xp, self.dtype, held)
        self.stats: dict[str, int] = {}
        self._routes: np.ndarray | None = None
        self._step_requests: list[np.ndarray] = []

    # ---- one decode step --------------------------------------------------------
    def step(self, x: Any, requests: Any, routes: Any = None) -> Any:
        """The final hidden states of this rank's tokens, in the order given.

        routes: optional experts per token [n, layers] (top-1) or [n, layers, k] to use
        instead of the router's choice, for replaying a trace; all ranks give routes or none.
        """
        error = None
        try:
            x, requests, routes = _check_step(self.config, x, requests, routes, self.xp)
        except InvalidArgumentError as exc:
            error = str(exc)
        _agree(self.comm, error, "step")
        everyone = self.comm.allgather(requests)
        given = self.comm.allgather(routes is not None)
        if any(given) and not all(given):
            raise InvalidArgumentError(f"routes: given on ranks {[r for r, g in enumerate(given) if g]} only; "
                                       f"give routes on every rank or on none")
        self._routes = None
        if routes is not None:  # every rank may host any token: a table of all routes, by request
            table = np.zeros((self.config.n_requests, self.config.n_layers, self.config.top_k), dtype=np.int64)
            for reqs, r in zip(everyone, self.comm.allgather(routes)):
                table[reqs] = r
            self._routes = table
        self._step_requests = everyone
        stepped = np.concatenate(everyone)
        if np.unique(stepped).size != stepped.size:
            values, counts = np.unique(stepped, return_counts=True)
            raise InvalidArgumentError(f"requests: request {int(values[counts > 1][0])} has a token on "
                                       f"two ranks in one step")
        if self.layers.lengths[stepped].max(initial=0) >= self.config.max_context:
            raise InvalidArgumentError(f"requests: a request would exceed max_context={self.config.max_context}")
        self.stats = {"alltoalls": 0, "alltoall_bytes": 0, "allgather_bytes": 0}
        h = self.xp.asarray(x, dtype=self.dtype)
        if self.mode == "classic":
            out = self._classic(h, requests)
            self.layers.lengths[requests] += 1
        else:
            out = self._exflow(h, requests)
            self.layers.lengths[stepped] += 1
        return out

    def _classic(self, h: Any, requests: np.ndarray) -> Any:
        cfg, xp, layers = self.config, self.xp, self.layers
        for layer in range(cfg.n_layers):
            a, _, _ = layers.attention(layer, h, requests)
            experts, gates = layers.route(layer, a, self._forced(requests, layer))
            token, dest = _token_rank_pairs(self.placement.ranks[layer][experts])
            # one row per (token, rank of its experts): a, then k expert ids, then k gates (0 for
            # experts on other ranks)
            owner = self.placement.ranks[layer][experts[token]]  # [m, k]
            row_gates = xp.where(xp.asarray(owner == dest[:, None]), gates[token], 0)
            rows = xp.concatenate([a[token], xp.asarray(experts[token], dtype=self.dtype), row_gates], axis=1)
            got, back = self._exchange(dest, rows)
            d, k = cfg.d_model, cfg.top_k
            ids = _host(got[:, d:d + k]).astype(np.int64)
            partial = layers.experts_apply(layer, got[:, :d], ids, got[:, d + k:])
            returned = back(partial)  # rows in the order of (token, dest)
            h = a + _scatter_add(xp, xp.zeros_like(a), token, returned)
        return h

    def _exflow(self, h: Any, requests: np.ndarray) -> Any:
        cfg, xp, layers, d, k = self.config, self.xp, self.layers, self.config.d_model, self.config.top_k
        home_rank = np.full(h.shape[0], self.rank)
        order = requests.copy()  # requests whose state is here, in row order
        new_kv = []
        for layer in range(cfg.n_layers):
            a, kk, vv = layers.attention(layer, h, order)
            new_kv.append((layer, order, kk, vv))
            experts, gates = layers.route(layer, a, self._forced(order, layer))
            ranks = self.placement.ranks[layer][experts]  # [n, k]
            ids = xp.asarray(experts, dtype=self.dtype)
            req_col = xp.asarray(order, dtype=self.dtype)[:, None]
            if k == 1:
                dest = ranks[:, 0]
                got, _ = self._exchange(dest, xp.concatenate([a, ids, gates, req_col], axis=1))
                a_in, order = got[:, :d], _host(got[:, d + 2]).astype(np.int64)
                h = a_in + layers.experts_apply(layer, a_in, _host(got[:, d:d + 1]).astype(np.int64),
                                                got[:, d + 1:d + 2])
                continue
            # top-k: send a to the ranks of all experts; each computes its partial; partials
            # and (from the top-1 rank) a itself meet at the token's new home, its top-1 expert's rank
            token, dest = _token_rank_pairs(ranks)
            row_gates = xp.where(xp.asarray(ranks[token] == dest[:, None]), gates[token], 0)
            home = ranks[token, 0]
            rows = xp.concatenate([a[token], ids[token], row_gates, req_col[token],
                                   xp.asarray(home, dtype=self.dtype)[:, None]], axis=1)
            got, _ = self._exchange(dest, rows)
            a_in = got[:, :d]
            partial = layers.experts_apply(layer, a_in, _host(got[:, d:d + k]).astype(np.int64),
                                           got[:, d + k:d + 2 * k])
            got_req = _host(got[:, d + 2 * k]).astype(np.int64)
            got_home = _host(got[:, d + 2 * k + 1]).astype(np.int64)
            is_home = got_home == self.rank  # this rank is the new home of these tokens: add a
            partial[xp.asarray(is_home)] += a_in[xp.asarray(is_home)]
            summed, _ = self._exchange(got_home, xp.concatenate([partial, xp.asarray(got_req, dtype=self.dtype)[:, None]],
                                                                axis=1))
            reqs = _host(summed[:, d]).astype(np.int64)
            order = np.unique(reqs)
            h = _scatter_add(xp, xp.zeros((order.size, d), dtype=self.dtype), np.searchsorted(order, reqs),
                             summed[:, :d])
        # home again, in the caller's order
        got, _ = self._exchange(self._owner_of(order), xp.concatenate([h, xp.asarray(order, dtype=self.dtype)[:, None]],
                                                                    axis=1))
        back = _host(got[:, d]).astype(np.int64)
        out = xp.empty((requests.size, d), dtype=self.dtype)
        position = {int(r): i for i, r in enumerate(requests)}
        out[xp.asarray(np.array([position[int(r)] for r in back], dtype=np.int64))] = got[:, :d]
        self._share_kv(new_kv)
        return out

    def _forced(self, requests: np.ndarray, layer: int) -> np.ndarray | None:
        return None if self._routes is None else self._routes[requests, layer]

    def _owner_of(self, requests: np.ndarray) -> np.ndarray:
        owner = np.full(self.config.n_requests, -1)
        for r, reqs in enumerate(self._step_requests):
            owner[reqs] = r
        return owner[requests]

    # ---- communication ------------------------------------------------------------
    def _exchange(self, dest: np.ndarray, rows: Any):
        """Send rows[i] to rank dest[i]; returns (rows received, grouped by source rank, and a
        function that sends a reply row per received row back and returns the replies in the
        order of ``rows``)."""
        from mpi4py import MPI

        comm, size, xp = self.comm, self.size, self.xp
        order = np.argsort(dest, kind="stable")
        send_counts = np.bincount(dest, minlength=size).astype(np.int64)
        recv_counts = np.empty(size, dtype=np.int64)
        comm.Alltoall(send_counts, recv_counts)
        width = rows.shape[1]
        send = _host(rows[xp.asarray(order)] if order.size else rows)
        send = np.ascontiguousarray(send, dtype=self.dtype)
        recv = np.empty((int(recv_counts.sum()), width), dtype=self.dtype)
        mpi_type = MPI.FLOAT if self.dtype == np.float32 else MPI.DOUBLE
        comm.Alltoallv([send, (send_counts * width, _displs(send_counts) * width), mpi_type],
                       [recv, (recv_counts * width, _displs(recv_counts) * width), mpi_type])
        self._count(send_counts, width)

        def back(reply: Any) -> Any:
            reply_width = reply.shape[1]
            out = np.empty((int(send_counts.sum()), reply_width), dtype=self.dtype)
            comm.Alltoallv([np.ascontiguousarray(_host(reply), dtype=self.dtype),
                            (recv_counts * reply_width, _displs(recv_counts) * reply_width), mpi_type],
                           [out, (send_counts * reply_width, _displs(send_counts) * reply_width), mpi_type])
            self._count(recv_counts, reply_width)
            unsorted = np.empty_like(out)
            unsorted[order] = out
            return xp.asarray(unsorted)

        return xp.asarray(recv), back

    def _count(self, send_counts: np.ndarray, width: int) -> None:
        off_rank = int(send_counts.sum() - send_counts[self.rank])
        self.stats["alltoalls"] += 1
        self.stats["alltoall_bytes"] += off_rank * width * self.dtype.itemsize

    def _share_kv(self, new_kv: list) -> None:
        """Allgatherv of this step's new keys and values of every layer, written into every cache."""
        from mpi4py import MPI

        xp, kv = self.xp, self.config.d_kv
        mine = [np.concatenate([np.full((r.size, 1), layer), r[:, None], _host(k), _host(v)], axis=1)
                for layer, r, k, v in new_kv]
        send = np.ascontiguousarray(np.concatenate(mine, axis=0), dtype=self.dtype)
        width = send.shape[1]
        counts = np.array(self.comm.allgather(send.shape[0]), dtype=np.int64)
        recv = np.empty((int(counts.sum()), width), dtype=self.dtype)
        mpi_type = MPI.FLOAT if self.dtype == np.float32 else MPI.DOUBLE
        self.comm.Allgatherv([send, mpi_type], [recv, (counts * width, _displs(counts) * width), mpi_type])
        self.stats["allgather_bytes"] += int(counts.sum() - counts[self.rank]) * width * self.dtype.itemsize
        layer_ids, reqs = recv[:, 0].astype(np.int64), recv[:, 1].astype(np.int64)
        pos = self.layers.lengths[reqs]
        self.layers.keys[layer_ids, reqs, pos] = xp.asarray(recv[:, 2:2 + kv])
        self.layers.values[layer_ids, reqs, pos] = xp.asarray(recv[:, 2 + kv:])


# ---- helpers ---------------------------------------------------------------------------

def _check_step(config: MoEConfig, x: Any, requests: Any, routes: Any = None,
                xp: Any = np) -> tuple[Any, np.ndarray, np.ndarray | None]:
    if getattr(x, "ndim", None) != 2 or x.shape[1] != config.d_model:
        raise InvalidArgumentError(f"x: must be [tokens, d_model={config.d_model}], got "
                                   f"{getattr(x, 'shape', type(x).__name__)}")
    if getattr(x, "dtype", np.dtype(object)).kind != "f":
        raise InvalidArgumentError(f"x: must be floating point, got {getattr(x, 'dtype', None)}")
    requests = np.asarray(requests)
    if requests.ndim != 1 or requests.shape[0] != x.shape[0] or (requests.size and requests.dtype.kind not in "iu"):
        raise InvalidArgumentError(f"requests: must be integer ids, one per row of x ({x.shape[0]}), got "
                                   f"{requests.dtype} {requests.shape}")
    requests = requests.astype(np.int64)
    if requests.size and (requests.min() < 0 or requests.max() >= config.n_requests):
        raise InvalidArgumentError(f"requests: ids must be in 0..{config.n_requests - 1}")
    if np.unique(requests).size != requests.size:
        raise InvalidArgumentError("requests: a request has two tokens in one step")
    if not bool(xp.all(xp.isfinite(x))):
        raise InvalidArgumentError("x: has NaN or infinite values")
    if routes is not None:
        from .traces import check_trace

        routes = check_trace(routes, config.n_experts, name="routes") if len(routes) else \
            np.zeros((0, config.n_layers, config.top_k), dtype=np.int64)
        if routes.ndim == 2:
            routes = routes[:, :, None]
        if routes.shape != (requests.size, config.n_layers, config.top_k):
            raise InvalidArgumentError(f"routes: must be [tokens={requests.size}, layers={config.n_layers}"
                                       f"{'' if config.top_k == 1 else f', k={config.top_k}'}], got {routes.shape}")
    return x, requests, routes


def _agree(comm: Any, error: str | None, what: str) -> None:
    """Raise on every rank if any rank found an error, naming the ranks and the first error."""
    errors = comm.allgather(error)
    bad = [r for r, e in enumerate(errors) if e is not None]
    if bad:
        raise InvalidArgumentError(f"{what}: rank {bad[0]}: {errors[bad[0]]}"
                                   + (f" (ranks {bad} failed)" if len(bad) > 1 else ""))


def _token_rank_pairs(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token, rank) for each distinct rank among each token's experts (ranks: [n, k])."""
    n, k = ranks.shape
    token = np.repeat(np.arange(n), k)
    flat = ranks.reshape(-1)
    keep = np.ones(n * k, dtype=bool)
    for j in range(1, k):  # drop a rank already listed for the same token
        keep[j::k] = np.all(ranks[:, j:j + 1] != ranks[:, :j], axis=1)
    return token[keep], flat[keep]


def _scatter_add(xp: Any, out: Any, index: np.ndarray, rows: Any) -> Any:
    """out[index[i]] += rows[i] (indices may repeat); returns out."""
    if index.size:
        if xp is np or hasattr(xp.add, "at"):  # cupy >= 13 has add.at; cupyx.scatter_add is deprecated
            xp.add.at(out, index if xp is np else xp.asarray(index), rows)
        else:
            import cupyx

            cupyx.scatter_add(out, xp.asarray(index), rows)
    return out


def _displs(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _host(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)  # cupy
    return get() if callable(get) else np.asarray(a)
