"""pyhpc.moe: traces, affinity, the calibrated generator, placement and the MoE runtime."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import numpy as np
import pytest
from mpi4py import MPI

from pyhpc import moe
from pyhpc.errors import InvalidArgumentError

DATA = moe.real_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="no real routing data (shared/data/moe_affinity; "
                                                      "set PYHPC_MOE_DATA)")


# ---- traces -----------------------------------------------------------------------------

@pytest.mark.parametrize("trace, n_experts, message", [
    ([[0, 1], [2]], 4, "ragged"),
    ([[0, 1], [2, 4]], 4, "expert id 4 at index (1, 1) is outside 0..3"),
    ([[0, -1]], 4, "outside"),
    ([[0.5, 1.0]], 4, "must be integers"),
    ([0, 1, 2], 4, "shape must be"),
    (np.zeros((0, 3), dtype=int), 4, "at least one token"),
    ([[[0, 0], [1, 2]]], 4, "routed to expert 0 twice at layer 0"),
])
def test_bad_traces_are_named(trace, n_experts, message):
    with pytest.raises(InvalidArgumentError, match="trace") as info:
        moe.check_trace(trace, n_experts)
    assert message in str(info.value)


def test_trace_round_trip(tmp_path):
    trace = moe.generate_trace(100, 5, 8, top_k=2, seed=4)
    moe.save_trace(tmp_path / "t.npz", trace, 8)
    back, n_experts = moe.load_trace(tmp_path / "t.npz")
    assert n_experts == 8 and np.array_equal(back, trace)
    np.savez(tmp_path / "other.npz", experts=trace)
    with pytest.raises(InvalidArgumentError, match="not a pyhpc.moe.trace"):
        moe.load_trace(tmp_path / "other.npz")
    with pytest.raises(InvalidArgumentError, match="outside 0..3"):
        moe.save_trace(tmp_path / "bad.npz", trace, 4)


def test_affinity_counts_home_to_every_choice():
    top1 = [[0, 1, 1], [0, 2, 1], [3, 1, 0]]
    counts = moe.affinity(top1, 4).counts
    assert counts.shape == (2, 4, 4)
    assert counts[0, 0, 1] == 1 and counts[0, 0, 2] == 1 and counts[0, 3, 1] == 1 and counts[0].sum() == 3
    assert counts[1, 1, 1] == 1 and counts[1, 2, 1] == 1 and counts[1, 1, 0] == 1
    topk = [[[0, 1], [2, 3]], [[1, 0], [3, 0]]]  # home = choice 0
    counts = moe.affinity(topk, 4).counts[0]
    assert counts[0, 2] == counts[0, 3] == counts[1, 3] == counts[1, 0] == 1 and counts.sum() == 4
    p = moe.affinity(top1, 4).transition()
    assert np.allclose(p[0][[0, 3]].sum(axis=1), 1) and np.all(p[0][[1, 2]] == 0)


def test_generator_is_deterministic_and_follows_its_parameters():
    a = moe.generate_trace(500, 4, 8, seed=3)
    assert np.array_equal(a, moe.generate_trace(500, 4, 8, seed=3))
    assert not np.array_equal(a, moe.generate_trace(500, 4, 8, seed=4))
    strict = moe.generate_trace(2000, 4, 8, params=moe.GeneratorParams(affinity=1.0, fanout=1), seed=0)
    p = moe.affinity(strict, 8).transition()
    seen = p.sum(axis=2) > 0
    assert np.all(p.max(axis=2)[seen] == 1.0)  # every expert has exactly one successor
    loose = moe.affinity(moe.generate_trace(20000, 3, 8, params=moe.GeneratorParams(affinity=0.0), seed=0), 8)
    rows = loose.transition()[0][loose.counts[0].sum(axis=1) > 500]
    assert np.abs(rows - rows.mean(axis=0)).max() < 0.05  # independent layers: every row alike
    topk = moe.generate_trace(300, 3, 8, top_k=3, seed=1)
    assert topk.shape == (300, 3, 3)
    moe.check_trace(topk, 8)  # distinct experts per layer
    with pytest.raises(InvalidArgumentError, match="top_k"):
        moe.generate_trace(10, 2, 4, top_k=5)
    with pytest.raises(InvalidArgumentError, match="affinity"):
        moe.GeneratorParams(affinity=1.5)


@pytest.mark.parametrize("truth, identifiable", [(moe.GeneratorParams(0.7, 0.4, 2), True),
                                                 (moe.GeneratorParams(0.3, 1.0, 4), False)])
def test_calibrate_reproduces_the_statistics_it_fits(truth, identifiable):
    counts = moe.affinity(moe.generate_trace(200_000, 2, 32, params=truth, seed=5), 32).counts[0]
    fitted = moe.calibrate([counts])
    # the generator draws its chain at random: compare the mean over a few draws
    again = [moe.affinity(moe.generate_trace(50_000, 2, 32, params=fitted, seed=s), 32).counts[0]
             for s in range(6, 12)]
    for m in (1, 2, 4, 8):
        share = np.mean([moe.traces._top_share(c, m) for c in again])
        assert share == pytest.approx(moe.traces._top_share(counts, m), abs=0.04), f"top-{m} share"
    entropy = np.mean([moe.traces._entropy(c.sum(axis=0)) for c in again])
    assert entropy == pytest.approx(moe.traces._entropy(counts.sum(axis=0)), rel=0.05)
    if identifiable:  # strong affinity: the parameters themselves come back
        assert fitted.fanout == truth.fanout and abs(fitted.affinity - truth.affinity) < 0.1


# ---- placement ------------------------------------------------------------------------------

def brute_force_best_cross(counts: np.ndarray) -> float:
    """The best cross-rank fraction over every balanced placement on 2 ranks, by enumeration."""
    layers, experts = counts.shape[0] + 1, counts.shape[1]
    partitions = []
    for half in itertools.combinations(range(experts), experts // 2):
        ranks = np.ones(experts, dtype=np.int64)
        ranks[list(half)] = 0
        partitions.append(ranks)
    return min(moe.evaluate(moe.Placement(np.array(combo), 2), moe.Affinity(counts))
               for combo in itertools.product(partitions, repeat=layers))


def test_ilp_is_exact_and_heuristic_matches_it_on_small_instances():
    rng = np.random.default_rng(0)
    for trial in range(6):
        experts, layers = (4, 4) if trial % 2 else (6, 3)
        counts = rng.integers(0, 10, size=(layers - 1, experts, experts)).astype(float)
        best = brute_force_best_cross(counts)
        ilp = moe.place_experts(moe.Affinity(counts), 2, method="ilp", time_limit=30)
        assert ilp.optimal and ilp.gap == 0.0
        assert moe.evaluate(ilp, moe.Affinity(counts)) == pytest.approx(best, abs=1e-12)
        heuristic = moe.evaluate(moe.place_experts(moe.Affinity(counts), 2, seed=trial), moe.Affinity(counts))
        assert heuristic == pytest.approx(best, abs=1e-12)  # within 2% is the goal; here it is exact


def test_heuristic_is_balanced_deterministic_and_beats_contiguous():
    trace = moe.generate_trace(5000, 8, 16, params=moe.GeneratorParams(affinity=0.9), seed=2)
    aff = moe.affinity(trace, 16)
    one, two = moe.place_experts(aff, 4, seed=7), moe.place_experts(aff, 4, seed=7)
    assert np.array_equal(one.ranks, two.ranks) and one.digest() == two.digest()
    assert all(np.array_equal(np.bincount(row, minlength=4), [4] * 4) for row in one.ranks)
    contiguous = moe.place_experts(aff, 4, method="contiguous")
    assert moe.evaluate(one, aff) < 0.6 * moe.evaluate(contiguous, aff)
    assert moe.evaluate(one, trace) == pytest.approx(moe.evaluate(one, aff))
    random = moe.place_experts(aff, 4, method="random", seed=1)
    assert moe.evaluate(one, aff) < moe.evaluate(random, aff)


def test_load_cap_evens_out_the_work_and_keeps_most_locality():
    trace = moe.generate_trace(20000, 8, 16, params=moe.GeneratorParams(affinity=0.8), seed=2)
    aff = moe.affinity(trace, 16)
    free, capped = moe.place_experts(aff, 4), moe.place_experts(aff, 4, max_load=1.2)
    assert moe.load_imbalance(free, aff) > 1.5  # locality alone piles the work up (2.2x here)
    assert moe.load_imbalance(capped, aff) <= 1.2 + 1e-9
    contiguous = moe.evaluate(moe.place_experts(aff, 4, method="contiguous"), aff)
    assert moe.evaluate(free, aff) <= moe.evaluate(capped, aff) < 0.6 * contiguous
    even = moe.Placement(np.array([[0, 1], [1, 0]]), 2)
    assert moe.load_imbalance(even, moe.Affinity(np.array([[[0.0, 3.0], [3.0, 0.0]]]))) == 1.0
    with pytest.raises(InvalidArgumentError, match="max_load"):
        moe.place_experts(aff, 4, max_load=0.9)
    with pytest.raises(InvalidArgumentError, match="only method='heuristic'"):
        moe.place_experts(aff, 4, method="ilp", max_load=1.2)


def test_placement_bad_input():
    aff = moe.affinity(moe.generate_trace(100, 3, 6, seed=0), 6)
    with pytest.raises(InvalidArgumentError, match="6 experts per layer do not divide evenly over 4 ranks"):
        moe.place_experts(aff, 4)
    with pytest.raises(InvalidArgumentError, match="method"):
        moe.place_experts(aff, 2, method="gurobi")
    with pytest.raises(InvalidArgumentError, match="n_experts"):
        moe.place_experts([[0, 1]], 2)
    with pytest.raises(InvalidArgumentError, match="layer 1 is not balanced"):
        moe.Placement(np.array([[0, 0, 1, 1], [0, 0, 0, 1]]), 2)
    with pytest.raises(InvalidArgumentError, match="time_limit"):
        moe.place_experts(aff, 2, method="ilp", time_limit=-1)
    p = moe.place_experts(aff, 2)
    with pytest.raises(InvalidArgumentError, match="has 4 layers x 6 experts"):
        moe.evaluate(p, moe.affinity(moe.generate_trace(100, 4, 6, seed=0), 6))


@needs_data
def test_real_data_loads_in_layer_order_and_places_better_than_contiguous():
    data = moe.load_cooccurrence(DATA / "mixtral_8x7b_top1.npz", domain="github")
    assert list(data) == ["github__L0_L7", "github__L7_L15"]
    with pytest.raises(InvalidArgumentError, match="domain"):
        moe.load_cooccurrence(DATA / "mixtral_8x7b_top1.npz", domain="poetry")
    aff = moe.Affinity(np.stack(list(data.values())))
    for n_ranks in (2, 4):
        heuristic = moe.evaluate(moe.place_experts(aff, n_ranks), aff)
        contiguous = moe.evaluate(moe.place_experts(aff, n_ranks, method="contiguous"), aff)
        assert heuristic < contiguous
    params = moe.calibrate(list(data.values()))
    assert 0 < params.affinity < 1 and params.popularity_skew >= 0


# ---- runtime --------------------------------------------------------------------------------

def run_steps(comm, config, mode, placement=None, steps=3, routes=None, owner=None):
    """Run `steps` decode steps on comm and the reference; return the worst relative error."""
    size, rank = comm.Get_size(), comm.Get_rank()
    stack = moe.MoEStack(config, comm, mode=mode, placement=placement)
    ref = moe.ReferenceStack(config)
    rng = np.random.default_rng(11)
    owner = np.arange(config.n_requests) % size if owner is None else owner
    worst = 0.0
    for step in range(steps):
        x = rng.standard_normal((config.n_requests, config.d_model))
        requests = rng.permutation(config.n_requests)[: config.n_requests - 3]  # not every request steps
        r = None if routes is None else routes[step][requests]
        want = ref.step(x[requests], requests, r)
        mine = np.flatnonzero(owner[requests] == rank)
        got = stack.step(x[requests][mine].astype(np.float32), requests[mine], None if r is None else r[mine])
        assert got.shape == (mine.size, config.d_model) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want[mine]).max(initial=0) / np.abs(want).max()))
    return stack, comm.allreduce(worst, op=MPI.MAX)


@pytest.mark.parametrize("mode", moe.MODES)
@pytest.mark.parametrize("top_k", [1, 2])
def test_one_rank_matches_the_reference(mode, top_k):
    config = moe.MoEConfig(n_layers=3, n_experts=4, top_k=top_k, n_requests=12, max_context=4)
    stack, error = run_steps(MPI.COMM_SELF, config, mode)
    assert error < 1e-5
    assert stack.stats["alltoall_bytes"] == 0 and stack.stats["allgather_bytes"] == 0


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", moe.MODES)
@pytest.mark.parametrize("top_k", [1, 2])
def test_every_rank_count_matches_the_reference(comm, mode, top_k):
    for size in range(1, comm.size + 1):  # 1..N ranks, in sub-communicators of this job
        sub = comm.Split(0 if comm.rank < size else MPI.UNDEFINED, comm.rank)
        if sub == MPI.COMM_NULL:
            continue
        try:
            config = moe.MoEConfig(n_layers=4, n_experts=4 * size, top_k=top_k, n_requests=21, max_context=4)
            # requests owned unevenly: rank 0 gets none when there are several ranks
            owner = np.where(np.arange(21) % size == 0, min(1, size - 1), np.arange(21) % size)
            stack, error = run_steps(sub, config, mode, owner=owner)
            assert error < 1e-5, f"{mode} top-{top_k} on {size} ranks: relative error {error:.2e}"
            if size > 1:
                expected = {"classic": 2 * config.n_layers,
                            "exflow": config.n_layers + 1 if top_k == 1 else 2 * config.n_layers + 1}
                assert stack.stats["alltoalls"] == expected[mode]
                assert sub.allreduce(stack.stats["alltoall_bytes"]) > 0
        finally:
            sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("top_k", [1, 2])
def test_exflow_with_affinity_placement_moves_fewer_bytes(comm, top_k):
    n_experts, layers, n_requests = 4 * comm.size, 5, 64
    params = moe.GeneratorParams(affinity=0.95, fanout=1)
    config = moe.MoEConfig(n_layers=layers, n_experts=n_experts, top_k=top_k, n_requests=n_requests,
                           max_context=4)
    train = moe.generate_trace(4000, layers, n_experts, top_k=top_k, params=params, seed=3)
    replay = moe.generate_trace(2 * n_requests, layers, n_experts, top_k=top_k, params=params, seed=3)[::-1]
    routes = [replay[:n_requests], replay[n_requests:]]
    placement = moe.place_experts(moe.affinity(train, n_experts), comm.size)
    sent = {}
    for mode in moe.MODES:
        stack, error = run_steps(comm, config, mode, placement=placement, steps=2, routes=routes)
        assert error < 1e-5
        sent[mode] = comm.allreduce(stack.stats["alltoall_bytes"])
    assert sent["exflow"] < (0.55 if top_k == 1 else 1.0) * sent["classic"], sent


@pytest.mark.mpi(min_size=2)
def test_bad_input_on_one_rank_raises_on_every_rank(comm):
    config = moe.MoEConfig(n_layers=2, n_experts=2 * comm.size, n_requests=8, max_context=2)
    stack = moe.MoEStack(config, comm)
    mine = np.arange(8)[np.arange(8) % comm.size == comm.rank]
    x = np.ones((mine.size, config.d_model), np.float32)
    with pytest.raises(InvalidArgumentError, match="rank 1: x: must be"):
        stack.step(x[:, :3] if comm.rank == 1 else x, mine)
    with pytest.raises(InvalidArgumentError, match="has a token on two ranks"):
        stack.step(x, mine if comm.rank else np.array([1] + mine[1:].tolist()))
    with pytest.raises(InvalidArgumentError, match="routes: given on ranks"):
        stack.step(x, mine, np.zeros((mine.size, 2), dtype=int) if comm.rank == 0 else None)
    with pytest.raises(InvalidArgumentError, match="rank 1: routes: expert id"):
        stack.step(x, mine, np.full((mine.size, 2), 99 if comm.rank == 1 else 0))
    stack.step(x, mine)  # still usable after refused steps
    stack.step(x, mine)
    with pytest.raises(InvalidArgumentError, match="max_context=2"):
        stack.step(x, mine)
    trace = moe.generate_trace(200, 2, config.n_experts, seed=comm.rank)  # each rank its own placement
    placement = moe.place_experts(moe.affinity(trace, config.n_experts), comm.size, method="random", seed=comm.rank)
    with pytest.raises(InvalidArgumentError, match="ranks disagree"):
        moe.MoEStack(config, comm, placement=placement)
    with pytest.raises(InvalidArgumentError, match="rank 0: mode"):
        moe.MoEStack(config, comm, mode="dispatch" if comm.rank == 0 else "exflow")


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_example_runs_on_two_ranks(top_k):
    done = subprocess.run([sys.executable, "-m", "pyhpc", "run", "-n", "2", "--timeout", "100", "python", "-m",
                           "pyhpc.moe", "--steps", "2", "--top-k", str(top_k)],
                          capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    error = float(re.search(r"max error against the single-process reference: (\S+)", done.stdout).group(1))
    assert error < 1e-4
    assert re.search(r"all-to-all bytes: classic [\d,]+, exflow [\d,]+", done.stdout)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", moe.MODES)
def test_cupy_stack_matches_the_reference(mode):
    from pyhpc import cuda

    cp = cuda.cupy()
    config = moe.MoEConfig(n_layers=3, n_experts=4, top_k=2, n_requests=12, max_context=4)
    stack = moe.MoEStack(config, MPI.COMM_SELF, mode=mode, xp=cp)
    ref = moe.ReferenceStack(config)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((12, config.d_model))
        want = ref.step(x, np.arange(12))
        got = stack.step(cp.asarray(x, dtype=cp.float32), np.arange(12))
        assert isinstance(got, cp.ndarray)
        assert float(np.abs(cp.asnumpy(got) - want).max() / np.abs(want).max()) < 1e-5
