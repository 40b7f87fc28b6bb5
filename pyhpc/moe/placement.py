"""Balanced expert placement that keeps consecutive layers' experts of a token on one rank.

A placement is an int array ``ranks[l, e]``: the rank that holds expert ``e`` of
layer ``l``; balanced means every rank holds ``E / P`` experts of every layer.
Its quality on affinity counts ``C`` (:class:`~pyhpc.moe.traces.Affinity`) is the
weight of transitions whose two experts sit on one rank, ``sum_l sum_ab
C[l][a, b] [ranks[l, a] == ranks[l+1, b]]``; :func:`evaluate` reports the rest,
the fraction of transitions that cross ranks, which is what ExFlow's one
all-to-all per layer sends over the network.

Methods:

- ``heuristic`` (default): a balanced assignment per layer (Hungarian method on
  the gain of putting expert e on rank r given the neighbouring layers'
  placement), repeated over the layers as block-coordinate ascent until no layer
  improves, then "kicked" (one layer scrambled, climbed again, kept if better),
  from ``restarts`` starting partitions (contiguous first, then random ones from
  ``seed``); the best is kept. ``max_load`` adds a cap on each rank's token load.
  Deterministic for a seed; sub-second for 64 experts x 8 ranks x 32 layers.
- ``ilp``: the exact integer program (scipy.optimize.milp, HiGHS): binaries
  x[l, e, r], and z[l, a, b, r] <= x[l, a, r], x[l+1, b, r] for every pair with
  weight, maximising sum C z. Exact for small instances; within ``time_limit``
  it returns the best placement found and says whether it proved optimality.
- ``contiguous`` (experts 0..E/P-1 on rank 0, ...: what DeepSpeed-MoE and most
  frameworks do) and ``random`` (a balanced random partition per layer), for
  comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import numpy as np

from pyhpc.errors import InvalidArgumentError, UnsupportedError

from .traces import Affinity, affinity, check_trace

__all__ = ["METHODS", "Placement", "evaluate", "load_imbalance", "place_experts"]

METHODS = ("heuristic", "ilp", "contiguous", "random")
MAX_SWEEPS = 100
KICKS_PER_LAYER = 1
RESTART_BUDGET = 4096  # default restarts: this over layers x experts, within 4..32


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where each layer's experts live. ``ranks[l, e]`` is the rank holding expert e of layer l.

    method, seconds: how it was made and how long that took. optimal: the ILP
    proved it optimal (None for the other methods). gap: the ILP's relative gap
    to its bound when it stopped (0 when optimal; None for the other methods).
    """

    ranks: np.ndarray
    n_ranks: int
    method: str = "given"
    seconds: float = 0.0
    optimal: bool | None = None
    gap: float | None = None

    def __post_init__(self) -> None:
        ranks = np.asarray(self.ranks)
        if ranks.ndim != 2 or ranks.shape[0] < 1 or ranks.shape[1] < 1 or ranks.dtype.kind not in "iu":
            raise InvalidArgumentError(f"ranks: must be an integer array [layers, experts], got "
                                       f"{ranks.dtype} {ranks.shape}")
        n_ranks = _positive_int(self.n_ranks, "n_ranks")
        n_experts = ranks.shape[1]
        _check_divisible(n_experts, n_ranks)
        counts = np.stack([np.bincount(np.clip(row, 0, n_ranks - 1), minlength=n_ranks) for row in ranks])
        if ranks.min() < 0 or ranks.max() >= n_ranks or np.any(counts != n_experts // n_ranks):
            bad = int(np.argmax(np.any(counts != n_experts // n_ranks, axis=1) | np.any(ranks < 0, axis=1)
                                | np.any(ranks >= n_ranks, axis=1)))
            raise InvalidArgumentError(
                f"ranks: layer {bad} is not balanced over {n_ranks} ranks ({n_experts // n_ranks} experts "
                f"on each rank 0..{n_ranks - 1}): {ranks[bad].tolist()}")
        ranks = ranks.astype(np.int64)
        ranks.setflags(write=False)
        object.__setattr__(self, "ranks", ranks)
        object.__setattr__(self, "n_ranks", n_ranks)

    @property
    def n_layers(self) -> int:
        return self.ranks.shape[0]

    @property
    def n_experts(self) -> int:
        return self.ranks.shape[1]

    @property
    def experts_per_rank(self) -> int:
        return self.n_experts // self.n_ranks

    def experts_of(self, rank: int, layer: int) -> np.ndarray:
        """The experts of ``layer`` held by ``rank``, ascending (their local slots are 0, 1, ...)."""
        return np.flatnonzero(self.ranks[layer] == rank)

    def local_slot(self) -> np.ndarray:
        """slot[l, e]: the index of expert e among the experts of layer l on its rank."""
        slots = np.empty_like(self.ranks)
        for layer in range(self.n_layers):
            for rank in range(self.n_ranks):
                experts = self.experts_of(rank, layer)
                slots[layer, experts] = np.arange(experts.size)
        return slots

    def digest(self) -> str:
        """A hash of (n_ranks, ranks) that two processes compare to agree on a placement."""
        h = hashlib.sha256(f"{self.n_ranks}:{self.ranks.shape}".encode())
        h.update(np.ascontiguousarray(self.ranks, dtype="<i8").tobytes())
        return h.hexdigest()

    @classmethod
    def contiguous(cls, n_layers: int, n_experts: int, n_ranks: int) -> Placement:
        n_layers = _positive_int(n_layers, "n_layers")
        n_experts = _positive_int(n_experts, "n_experts")
        n_ranks = _positive_int(n_ranks, "n_ranks")
        _check_divisible(n_experts, n_ranks)
        row = np.arange(n_experts) // (n_experts // n_ranks)
        return cls(np.tile(row, (n_layers, 1)), n_ranks, "contiguous")


def evaluate(placement: Placement, data: Any) -> float:
    """The fraction of transitions that cross ranks, on a trace or an :class:`Affinity`.

    For a trace, a transition is a token's move from its home (top-1) expert at
    layer l to each of its experts at layer l+1, as :func:`~pyhpc.moe.affinity` counts them.
    """
    counts = _counts_for(placement, data)
    total = counts.sum()
    if total == 0:
        raise InvalidArgumentError("data: has no transitions to evaluate")
    return 1.0 - _local_weight(placement.ranks, counts, placement.n_ranks) / total


def load_imbalance(placement: Placement, data: Any) -> float:
    """The worst layer's busiest rank's token load over the mean load of that layer (1 = even).

    A token's load at layer l+1 falls on the rank of its expert there (counted by
    the affinity's columns; layer 0 by its rows).
    """
    counts = _counts_for(placement, data)
    load = np.concatenate([counts[:1].sum(axis=2), counts.sum(axis=1)])
    worst = 1.0
    for layer in range(placement.n_layers):
        per_rank = np.bincount(placement.ranks[layer], weights=load[layer], minlength=placement.n_ranks)
        if per_rank.sum() > 0:
            worst = max(worst, float(per_rank.max() * placement.n_ranks / per_rank.sum()))
    return worst


def place_experts(data: Any, n_ranks: int, method: str = "heuristic", seed: int = 0,
                  time_limit: float | None = 60.0, restarts: int | None = None, n_experts: int | None = None,
                  max_load: float | None = None) -> Placement:
    """A balanced placement of every layer's experts on ``n_ranks`` ranks.

    data: an :class:`Affinity` (e.g. ``Affinity(counts)`` of real co-occurrence
    counts [L-1, E, E]) or a trace (then ``n_experts`` is required). time_limit:
    seconds for the ILP (the heuristic is bounded by ``restarts`` instead, so that it
    stays deterministic; default: 4 to 32, more for smaller instances). max_load (heuristic only): keep each rank's token load of a layer
    within this multiple of the mean (e.g. 1.2), so that grouping popular experts for
    locality does not leave one rank with most of the work; None: no cap. See the
    module's doc.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method: {method!r} is not one of {METHODS}")
    aff = _as_affinity(data, n_experts)
    n_ranks = _positive_int(n_ranks, "n_ranks")
    _check_divisible(aff.n_experts, n_ranks)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentError(f"seed: must be an integer, got {seed!r}")
    if restarts is None:  # small instances are cheap: search them harder
        restarts = max(4, min(32, RESTART_BUDGET // (aff.n_layers * aff.n_experts)))
    restarts = _positive_int(restarts, "restarts")
    if max_load is not None and not (np.isfinite(max_load) and max_load >= 1):
        raise InvalidArgumentError(f"max_load: must be None or a ratio >= 1, got {max_load!r}")
    if max_load is not None and method != "heuristic":
        raise InvalidArgumentError(f"max_load: only method='heuristic' takes it, not {method!r}")
    if time_limit is not None and not (np.isfinite(time_limit) and time_limit > 0):
        raise InvalidArgumentError(f"time_limit: must be None or finite seconds > 0, got {time_limit!r}")
    layers, experts = aff.n_layers, aff.n_experts
    t0 = time.perf_counter()
    if method == "contiguous":
        return Placement.contiguous(layers, experts, n_ranks)
    if method == "random":
        rng = np.random.default_rng(seed)
        ranks = np.stack([_random_partition(experts, n_ranks, rng) for _ in range(layers)])
        return Placement(ranks, n_ranks, "random", time.perf_counter() - t0)
    if method == "ilp":
        ranks, optimal, gap = _ilp(aff.counts, n_ranks, time_limit)
        return Placement(ranks, n_ranks, "ilp", time.perf_counter() - t0, optimal, gap)
    ranks = _Heuristic(aff.counts, n_ranks, np.random.default_rng(seed), max_load).solve(restarts)
    return Placement(ranks, n_ranks, "heuristic", time.perf_counter() - t0)


# ---- heuristic -----------------------------------------------------------------------

class _Heuristic:
    """Iterated local search over per-layer balanced assignments (see the module's doc).

    With ``max_load`` (a ratio >= 1), every layer's token load on a rank (the
    transitions that arrive at its experts) must stay within max_load x the mean:
    each layer's assignment then prices load with one Lagrange multiplier per rank,
    raised on overloaded ranks until the assignment fits (subgradient steps).
    """

    def __init__(self, counts: np.ndarray, n_ranks: int, rng: np.random.Generator,
                 max_load: float | None) -> None:
        self.counts, self.n_ranks, self.rng, self.max_load = counts, n_ranks, rng, max_load
        self.layers, self.experts = counts.shape[0] + 1, counts.shape[1]
        # token load of each expert per layer: arrivals (column sums); layer 0: departures
        self.load = np.concatenate([counts[:1].sum(axis=2), counts.sum(axis=1)])

    def solve(self, restarts: int) -> np.ndarray:
        best, best_key = None, None
        for attempt in range(restarts):
            # start: one layer's partition (contiguous first, then random ones at varying
            # layers), the others assigned greedily outwards from it
            seed_layer = 0 if attempt == 0 else int(self.rng.integers(self.layers))
            start = np.arange(self.experts) // (self.experts // self.n_ranks) if attempt == 0 else \
                _random_partition(self.experts, self.n_ranks, self.rng)
            ranks = self.ascend(self.greedy(seed_layer, start))
            key = self.key(ranks)
            # kicks: scramble one layer, climb again, keep it if it is better
            for _ in range(KICKS_PER_LAYER * self.layers):
                trial = ranks.copy()
                trial[int(self.rng.integers(self.layers))] = _random_partition(self.experts, self.n_ranks, self.rng)
                trial = self.ascend(trial)
                trial_key = self.key(trial)
                if _better(trial_key, key):
                    ranks, key = trial, trial_key
            if best_key is None or _better(key, best_key):
                best, best_key = ranks, key
        assert best is not None
        return best

    def key(self, ranks: np.ndarray) -> tuple[float, float]:
        """(-overload, kept weight): fitting the load cap first, then locality."""
        return -self.overload(ranks), _local_weight(ranks, self.counts, self.n_ranks)

    def overload(self, ranks: np.ndarray, layers: Any = None) -> float:
        """How far the worst layer's busiest rank is above the cap (0 when all fit)."""
        if self.max_load is None:
            return 0.0
        worst = 0.0
        for layer in range(self.layers) if layers is None else layers:
            per_rank = np.bincount(ranks[layer], weights=self.load[layer], minlength=self.n_ranks)
            cap = self.max_load * self.load[layer].sum() / self.n_ranks
            worst = max(worst, float(per_rank.max() - cap) / max(cap, 1e-300))
        return max(worst, 0.0)

    def gain(self, ranks: np.ndarray, layer: int) -> np.ndarray:
        """gain[e, r]: the weight kept with the neighbours if expert e of this layer is on rank r."""
        gain = np.zeros((self.experts, self.n_ranks))
        if layer > 0 and ranks[layer - 1][0] >= 0:
            gain += self.counts[layer - 1].T @ _one_hot(ranks[layer - 1], self.n_ranks)
        if layer < self.layers - 1 and ranks[layer + 1][0] >= 0:
            gain += self.counts[layer] @ _one_hot(ranks[layer + 1], self.n_ranks)
        return gain

    def assign(self, gain: np.ndarray, layer: int) -> np.ndarray:
        ranks = _assign(gain, self.n_ranks)
        if self.max_load is None:
            return ranks
        load = self.load[layer]
        mean = load.sum() / self.n_ranks
        if mean <= 0:
            return ranks
        cap = self.max_load * mean
        price = np.zeros(self.n_ranks)
        scale = max(float(np.abs(gain).max()), 1.0) / max(float(load.max()), 1e-300)
        best, best_over = ranks, np.inf
        for step in range(1, 41):
            per_rank = np.bincount(ranks, weights=load, minlength=self.n_ranks)
            over = float(per_rank.max() - cap)
            if over <= 0:
                return ranks
            if over < best_over:
                best, best_over = ranks, over
            price = np.maximum(0.0, price + scale * (per_rank - mean) / mean / np.sqrt(step))
            ranks = _assign(gain - load[:, None] * price[None, :], self.n_ranks)
        return best

    def greedy(self, seed_layer: int, partition: np.ndarray) -> np.ndarray:
        ranks = np.full((self.layers, self.experts), -1, dtype=np.int64)
        ranks[seed_layer] = partition
        for layer in [*range(seed_layer + 1, self.layers), *range(seed_layer - 1, -1, -1)]:
            ranks[layer] = self.assign(self.gain(ranks, layer), layer)
        return ranks

    def ascend(self, ranks: np.ndarray) -> np.ndarray:
        """Re-assign one layer at a time, given both neighbours, until no layer can gain.

        A layer is revisited only when a neighbour changed, and a new assignment is
        taken only if it is strictly better (less overload, or as little and more
        weight kept), so the loop ends: ties cannot cycle.
        """
        dirty = np.ones(self.layers, dtype=bool)
        for _ in range(MAX_SWEEPS * self.layers):
            if not dirty.any():
                break
            layer = int(np.argmax(dirty))
            dirty[layer] = False
            gain = self.gain(ranks, layer)
            new = self.assign(gain, layer)
            rows = np.arange(self.experts)
            old_key = (-self.overload(ranks, [layer]), gain[rows, ranks[layer]].sum())
            trial = ranks.copy()
            trial[layer] = new
            new_key = (-self.overload(trial, [layer]), gain[rows, new].sum())
            if _better(new_key, old_key):
                ranks = trial
                dirty[max(layer - 1, 0):layer + 2] = True
                dirty[layer] = False
        return ranks


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a beats b: less overload, or the same overload and strictly more weight kept."""
    if a[0] > b[0] + 1e-12:
        return True
    return abs(a[0] - b[0]) <= 1e-12 and a[1] > b[1] + 1e-9 * max(1.0, abs(b[1]))


def _assign(gain: np.ndarray, n_ranks: int) -> np.ndarray:
    """The balanced rank per expert that maximises sum gain[e, rank(e)] (Hungarian method)."""
    from scipy.optimize import linear_sum_assignment

    experts = gain.shape[0]
    per_rank = experts // n_ranks
    rows, cols = linear_sum_assignment(np.repeat(gain, per_rank, axis=1), maximize=True)
    ranks = np.empty(experts, dtype=np.int64)
    ranks[rows] = cols // per_rank
    return ranks


# ---- exact ILP ----------------------------------------------------------------------------

def _ilp(counts: np.ndarray, n_ranks: int, time_limit: float | None) -> tuple[np.ndarray, bool, float]:
    try:
        from scipy import sparse
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError as exc:  # pragma: no cover - scipy is a dependency of pyhpc.moe
        raise UnsupportedError(f"method='ilp' needs scipy >= 1.9: {exc}") from None
    layers, experts = counts.shape[0] + 1, counts.shape[1]
    per_rank = experts // n_ranks

    def x(layer: int, e: np.ndarray | int, r: np.ndarray | int):
        return (layer * experts + e) * n_ranks + r

    n_x = layers * experts * n_ranks
    pairs = [(layer, a, b) for layer in range(layers - 1)
             for a, b in zip(*np.nonzero(counts[layer]))]
    n_z = len(pairs) * n_ranks
    cost = np.zeros(n_x + n_z)
    rows, cols, vals, lower, upper = [], [], [], [], []

    def constraint(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        row = len(lower)
        for col, val in entries:
            rows.append(row)
            cols.append(col)
            vals.append(val)
        lower.append(lo)
        upper.append(hi)

    ranks_all = np.arange(n_ranks)
    for layer in range(layers):
        for e in range(experts):
            constraint([(int(c), 1.0) for c in x(layer, e, ranks_all)], 1, 1)  # one rank per expert
        for r in range(n_ranks):
            constraint([(int(x(layer, e, r)), 1.0) for e in range(experts)], per_rank, per_rank)  # balance
    # Valid cuts that make the LP bound useful: expert a of layer l shares rank r
    # with at most E/P experts of layer l+1, and the same the other way round.
    out_of: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
    into: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
    for i, (layer, a, b) in enumerate(pairs):
        for r in range(n_ranks):
            z = n_x + i * n_ranks + r
            cost[z] = -counts[layer, a, b]
            constraint([(z, 1.0), (int(x(layer, a, r)), -1.0)], -np.inf, 0)
            constraint([(z, 1.0), (int(x(layer + 1, b, r)), -1.0)], -np.inf, 0)
            out_of.setdefault((layer, int(a), r), []).append((z, 1.0))
            into.setdefault((layer + 1, int(b), r), []).append((z, 1.0))
    for (layer, e, r), entries in [*out_of.items(), *into.items()]:
        if len(entries) > per_rank:
            constraint(entries + [(int(x(layer, e, r)), -float(per_rank))], -np.inf, 0)
    a_mat = sparse.csr_matrix((vals, (rows, cols)), shape=(len(lower), n_x + n_z))
    low_bound, high_bound = np.zeros(n_x + n_z), np.ones(n_x + n_z)
    # Rank labels are interchangeable: number the ranks in the order of their smallest
    # expert at layer 0, so expert e of layer 0 is on a rank <= e.
    for e in range(min(experts, n_ranks)):
        high_bound[x(0, e, np.arange(e + 1, n_ranks))] = 0.0
    integrality = np.concatenate([np.ones(n_x), np.zeros(n_z)])  # z is integral once x is
    options: dict[str, Any] = {"disp": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(cost, integrality=integrality, bounds=Bounds(low_bound, high_bound),
                  constraints=LinearConstraint(a_mat, lower, upper), options=options)
    if result.x is None:
        raise UnsupportedError(f"method='ilp' found no placement within time_limit={time_limit} s "
                               f"({result.message}); use method='heuristic'")
    chosen = result.x[:n_x].reshape(layers, experts, n_ranks)
    ranks = np.argmax(chosen, axis=2).astype(np.int64)
    gap = float(getattr(result, "mip_gap", np.nan) or 0.0)
    return ranks, bool(result.status == 0), 0.0 if result.status == 0 else gap


# ---- helpers -------------------------------------------------------------------------------

def _as_affinity(data: Any, n_experts: int | None) -> Affinity:
    if isinstance(data, Affinity):
        return data
    if n_experts is None:
        raise InvalidArgumentError("n_experts: required when data is a trace (or pass an Affinity)")
    return affinity(check_trace(data, n_experts), n_experts)


def _counts_for(placement: Placement, data: Any) -> np.ndarray:
    aff = _as_affinity(data, placement.n_experts)
    if (aff.n_layers, aff.n_experts) != (placement.n_layers, placement.n_experts):
        raise InvalidArgumentError(
            f"data: has {aff.n_layers} layers x {aff.n_experts} experts, the placement "
            f"{placement.n_layers} x {placement.n_experts}")
    return aff.counts


def _local_weight(ranks: np.ndarray, counts: np.ndarray, n_ranks: int) -> float:
    """The weight of transitions whose two experts share a rank."""
    same = ranks[:-1, :, None] == ranks[1:, None, :]  # [L-1, E, E]
    return float(counts[same].sum())


def _one_hot(ranks: np.ndarray, n_ranks: int) -> np.ndarray:
    out = np.zeros((ranks.size, n_ranks))
    out[np.arange(ranks.size), ranks] = 1.0
    return out


def _random_partition(experts: int, n_ranks: int, rng: np.random.Generator) -> np.ndarray:
    return (np.arange(experts) // (experts // n_ranks))[rng.permutation(experts)]


def _check_divisible(n_experts: int, n_ranks: int) -> None:
    if n_experts % n_ranks:
        raise InvalidArgumentError(f"n_ranks: {n_experts} experts per layer do not divide evenly over "
                                   f"{n_ranks} ranks (balanced placement needs E % P == 0)")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name}: must be an integer >= 1, got {value!r}")
    return int(value)
