"""Routing traces, their inter-layer affinity, and a generator calibrated to real models.

A trace records which experts each token was routed to at every MoE layer: an
integer array ``[tokens, layers]`` for top-1 routing or ``[tokens, layers, k]``
for top-k (choice 0 is the highest-gated expert). Expert ids are ``0..E-1``.

The affinity between layer ``l`` and ``l+1`` is a matrix of counts
``C[l][a, b]``: how many tokens had their home expert ``a`` at layer ``l`` (the
top-1 choice, where the token's hidden state lives in ExFlow's mode) and were
routed to ``b`` at layer ``l+1`` (each of the k choices counts once). Row-normalised
it is ExFlow's conditional probability P(expert b at l+1 | expert a at l).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pyhpc.errors import InvalidArgumentError

__all__ = ["Affinity", "GeneratorParams", "affinity", "calibrate", "check_trace", "generate_trace",
           "load_cooccurrence", "load_trace", "real_data_dir", "save_trace", "transition_matrices"]

TRACE_FORMAT = "pyhpc.moe.trace/1"


def check_trace(trace: Any, n_experts: int | None = None, name: str = "trace") -> np.ndarray:
    """``trace`` as an int64 array [tokens, layers] or [tokens, layers, k], validated.

    Raises InvalidArgumentError naming ``name`` for ragged or non-integer data, fewer than one
    token or layer, ids outside ``0..n_experts-1`` and a token routed twice to one expert in one layer.
    """
    try:
        arr = np.asarray(trace)
    except ValueError as exc:  # numpy >= 1.24 refuses ragged nested lists
        raise InvalidArgumentError(f"{name}: ragged (rows of different lengths): {exc}") from None
    if arr.dtype == object:
        raise InvalidArgumentError(f"{name}: ragged or not numeric (numpy made an object array)")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidArgumentError(f"{name}: expert ids must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InvalidArgumentError(f"{name}: shape must be [tokens, layers] or [tokens, layers, k], "
                                   f"got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or (arr.ndim == 3 and arr.shape[2] < 1):
        raise InvalidArgumentError(f"{name}: needs at least one token, layer and choice, got shape {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    if n_experts is not None:
        n_experts = _positive_int(n_experts, "n_experts")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or (n_experts is not None and high >= n_experts):
        where = np.argwhere((arr < 0) | (arr >= (n_experts if n_experts is not None else np.inf)))[0]
        bound = f"0..{n_experts - 1}" if n_experts is not None else ">= 0"
        raise InvalidArgumentError(f"{name}: expert id {int(arr[tuple(where)])} at index {tuple(where.tolist())} "
                                   f"is outside {bound}")
    if arr.ndim == 3 and arr.shape[2] > 1:
        ordered = np.sort(arr, axis=2)
        dup = np.argwhere(ordered[..., 1:] == ordered[..., :-1])
        if dup.size:
            t, layer = dup[0][:2].tolist()
            raise InvalidArgumentError(f"{name}: token {t} is routed to expert "
                                       f"{int(ordered[t, layer][dup[0][2]])} twice at layer {layer}")
    return arr


def save_trace(path: str | os.PathLike[str], trace: Any, n_experts: int) -> None:
    """Write a trace and its expert count to ``path`` (.npz), atomically."""
    arr = check_trace(trace, n_experts)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, format=np.array(TRACE_FORMAT), experts=arr, n_experts=np.int64(n_experts))
    os.replace(tmp, path)


def load_trace(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """(trace, n_experts) from a file written by :func:`save_trace`, validated again."""
    with np.load(path, allow_pickle=False) as data:
        if "format" not in data or str(data["format"]) != TRACE_FORMAT:
            raise InvalidArgumentError(f"path: {path} is not a {TRACE_FORMAT} file")
        n_experts = int(data["n_experts"])
        return check_trace(data["experts"], n_experts, name=f"trace in {path}"), n_experts


# ---- affinity -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Affinity:
    """Inter-layer routing counts: ``counts[l][a, b]`` for layer l -> l+1 (shape [L-1, E, E]).

    ``counts`` may be any non-negative weights (real co-occurrence counts, for
    instance); placement maximises the weight that stays on one rank.
    """

    counts: np.ndarray

    def __post_init__(self) -> None:
        c = np.asarray(self.counts, dtype=np.float64)
        if c.ndim != 3 or c.shape[1] != c.shape[2] or c.shape[0] < 1 or c.shape[1] < 1:
            raise InvalidArgumentError(f"counts: shape must be [layers-1, E, E] with layers >= 2, got {c.shape}")
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            raise InvalidArgumentError("counts: must be finite and >= 0")
        object.__setattr__(self, "counts", c)

    @property
    def n_layers(self) -> int:
        return self.counts.shape[0] + 1

    @property
    def n_experts(self) -> int:
        return self.counts.shape[1]

    def transition(self) -> np.ndarray:
        """P(b at l+1 | a at l): each row of counts normalised to 1 (rows never seen stay 0)."""
        return transition_matrices(self.counts)


def transition_matrices(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def affinity(trace: Any, n_experts: int) -> Affinity:
    """Count the transitions of a trace: home (top-1) expert at l -> each chosen expert at l+1."""
    arr = check_trace(trace, n_experts)
    if arr.shape[1] < 2:
        raise InvalidArgumentError(f"trace: affinity needs at least 2 layers, got {arr.shape[1]}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    tokens, layers, k = arr.shape
    counts = np.zeros((layers - 1, n_experts, n_experts), dtype=np.float64)
    for layer in range(layers - 1):
        home = np.repeat(arr[:, layer, 0], k)
        nxt = arr[:, layer + 1, :].reshape(-1)
        counts[layer] = np.bincount(home * n_experts + nxt, minlength=n_experts * n_experts
                                    ).reshape(n_experts, n_experts)
    return Affinity(counts)


# ---- generator ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GeneratorParams:
    """A layer-to-layer Markov chain of experts.

    popularity_skew: expert popularity follows a Zipf law ``(i+1)**-skew`` over a
    per-layer random order (0 = uniform). affinity in [0, 1]: the weight of a
    sparse successor table (each expert prefers ``fanout`` experts of the next
    layer) against the popularity (0 = layers independent, 1 = only preferred
    successors).
    """

    affinity: float = 0.8
    popularity_skew: float = 0.5
    fanout: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.affinity) <= 1.0:
            raise InvalidArgumentError(f"affinity: must be in [0, 1], got {self.affinity}")
        if not (np.isfinite(self.popularity_skew) and self.popularity_skew >= 0):
            raise InvalidArgumentError(f"popularity_skew: must be finite and >= 0, got {self.popularity_skew}")
        _positive_int(self.fanout, "fanout")

    def chain(self, n_experts: int, n_layers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(first-layer distribution [E], transition matrices [L-1, E, E]) drawn from rng."""
        fanout = min(self.fanout, n_experts)
        zipf = (np.arange(n_experts) + 1.0) ** -self.popularity_skew
        popularity = np.stack([zipf[rng.permutation(n_experts)] for _ in range(n_layers)])
        popularity /= popularity.sum(axis=1, keepdims=True)
        transitions = np.empty((n_layers - 1, n_experts, n_experts))
        for layer in range(n_layers - 1):
            successors = np.zeros((n_experts, n_experts))
            for a in range(n_experts):
                successors[a, rng.choice(n_experts, fanout, replace=False)] = 1.0 / fanout
            transitions[layer] = self.affinity * successors + (1 - self.affinity) * popularity[layer + 1]
        return popularity[0], transitions


def generate_trace(n_tokens: int, n_layers: int, n_experts: int, top_k: int = 1,
                   params: GeneratorParams | None = None, seed: int = 0) -> np.ndarray:
    """A synthetic trace from :class:`GeneratorParams` (deterministic for a seed).

    Top-1 returns [tokens, layers]; top-k returns [tokens, layers, k], the k
    distinct experts of a layer drawn without replacement from the mean of the
    rows of the previous layer's choices (Gumbel top-k), choice 0 first.
    """
    n_tokens = _positive_int(n_tokens, "n_tokens")
    n_layers = _positive_int(n_layers, "n_layers")
    n_experts = _positive_int(n_experts, "n_experts")
    top_k = _positive_int(top_k, "top_k")
    if top_k > n_experts:
        raise InvalidArgumentError(f"top_k: {top_k} is more than n_experts={n_experts}")
    params = params or GeneratorParams()
    rng = np.random.default_rng(seed)
    first, transitions = params.chain(n_experts, n_layers, rng)
    out = np.empty((n_tokens, n_layers, top_k), dtype=np.int64)
    probs = np.broadcast_to(first, (n_tokens, n_experts))
    for layer in range(n_layers):
        if layer > 0:
            probs = transitions[layer - 1][out[:, layer - 1, :]].mean(axis=1)
        out[:, layer, :] = _sample_without_replacement(probs, top_k, rng)
    return out[:, :, 0] if top_k == 1 else out


def _sample_without_replacement(probs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct columns per row, drawn in order with probabilities proportional to probs."""
    with np.errstate(divide="ignore"):
        keys = np.log(probs) + rng.gumbel(size=probs.shape)
    if k == 1:
        return np.argmax(keys, axis=1)[:, None]
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


# ---- real data ----------------------------------------------------------------------

def real_data_dir() -> Path | None:
    """The folder of the real routing counts: $PYHPC_MOE_DATA, else ``shared/data/moe_affinity``
    in the working directory or the nearest folder above it that has one; None if none."""
    from pyhpc import settings

    given = settings.get("PYHPC_MOE_DATA")
    if given:
        if not Path(str(given)).is_dir():
            raise InvalidArgumentError(f"PYHPC_MOE_DATA: {given} is not a folder")
        return Path(str(given))
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / "shared" / "data" / "moe_affinity"
        if candidate.is_dir():
            return candidate
    return None


def load_cooccurrence(path: str | os.PathLike[str], domain: str | None = None) -> dict[str, np.ndarray]:
    """The co-occurrence matrices of one ``.npz`` of ``shared/data/moe_affinity`` (see its README).

    Returns ``{"<domain>__L0_L7": C, ...}``; with ``domain``, only that domain's
    pairs, in layer order, so ``np.stack(list(result.values()))`` is an
    :class:`Affinity`'s counts for the layers 0 -> 7 -> 15.
    """
    with np.load(path, allow_pickle=False) as data:
        names = sorted(data.files, key=_layer_order)
        if domain is not None:
            names = [n for n in names if n.split("__")[0] == domain]
            if not names:
                domains = sorted({n.split("__")[0] for n in data.files})
                raise InvalidArgumentError(f"domain: {domain!r} is not in {path} (has {domains})")
        return {n: np.asarray(data[n]) for n in names}


def _layer_order(name: str) -> tuple[str, int]:
    domain, _, layers = name.partition("__")
    first = layers.split("_")[0].lstrip("L")
    return domain, int(first) if first.isdigit() else 0


def calibrate(counts: Sequence[np.ndarray] | np.ndarray, fanouts: Sequence[int] = (1, 2, 4, 8)) -> GeneratorParams:
    """Generator parameters that reproduce real co-occurrence counts ``[E, E]`` (one or several).

    Two statistics are matched: the entropy of the later layer's expert popularity
    (set by popularity_skew), and the share of a row's mass on its ``fanout`` most
    likely successors (set by affinity). Both are computed on the generator's
    expected joint counts, and each is monotonic in its parameter, so bisection
    finds one given the other; three rounds of alternating them settle both. The
    fanout kept is the one whose whole curve of top-m shares (m = 1, 2, 4, 8) is
    closest to the real one.
    """
    mats = [np.asarray(c, dtype=np.float64) for c in (counts if isinstance(counts, (list, tuple)) else list(counts))]
    if not mats or any(m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape != mats[0].shape for m in mats):
        raise InvalidArgumentError("counts: need one or more square [E, E] matrices of one size")
    if any(not np.all(np.isfinite(m)) or np.any(m < 0) or m.sum() <= 0 for m in mats):
        raise InvalidArgumentError("counts: must be finite, >= 0 and not all zero")
    n_experts = mats[0].shape[0]
    target_entropy = float(np.mean([_entropy(m.sum(axis=0)) for m in mats]))
    ms = [m for m in (1, 2, 4, 8) if m <= n_experts]
    real_curve = np.array([np.mean([_top_share(c, m) for c in mats]) for m in ms])

    def joints(a: float, skew: float, fanout: int) -> list[np.ndarray]:
        params = GeneratorParams(affinity=a, popularity_skew=skew, fanout=fanout)
        out = []
        for seed in range(4):  # the chain is random; average a few draws
            first, trans = params.chain(n_experts, 2, np.random.default_rng(seed))
            out.append(trans[0] * first[:, None])
        return out

    def curve(a: float, skew: float, fanout: int) -> np.ndarray:
        return np.mean([[_top_share(j, m) for m in ms] for j in joints(a, skew, fanout)], axis=0)

    def entropy(a: float, skew: float, fanout: int) -> float:
        return float(np.mean([_entropy(j.sum(axis=0)) for j in joints(a, skew, fanout)]))

    best: tuple[float, GeneratorParams] | None = None
    for fanout in sorted({min(_positive_int(f, "fanouts"), n_experts) for f in fanouts}):
        at = ms.index(fanout) if fanout in ms else len(ms) - 1
        a, skew = 0.5, 1.0
        for _ in range(3):
            skew = _bisect(lambda s: -entropy(a, s, fanout), -target_entropy, 0.0, 8.0)
            a = _bisect(lambda v: curve(v, skew, fanout)[at], real_curve[at], 0.0, 1.0)
        error = float(np.sum((curve(a, skew, fanout) - real_curve) ** 2))
        if best is None or error < best[0]:
            best = (error, GeneratorParams(affinity=round(a, 6), popularity_skew=round(skew, 6), fanout=fanout))
    assert best is not None
    return best[1]


def _bisect(f, target: float, low: float, high: float, steps: int = 20) -> float:
    """x in [low, high] with f(x) = target, for f increasing (the nearest end if out of range)."""
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) < target else (low, mid)
    return (low + high) / 2


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0] / p.sum()  # of a distribution given by non-negative weights
    return float(-(p * np.log(p)).sum())


def _top_share(counts: np.ndarray, m: int) -> float:
    """Mean over rows (weighted by row mass) of the share of the row on its m largest entries."""
    totals = counts.sum(axis=1)
    top = np.sort(counts, axis=1)[:, -m:].sum(axis=1)
    return float(top.sum() / totals.sum()) if totals.sum() > 0 else 0.0


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name}: must be an integer >= 1, got {value!r}")
    return int(value)
