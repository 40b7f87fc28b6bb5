"""pyhpc.ccl.diloco: the DiLoCo example's model and optimizers, and whole runs with
peer processes on loopback, one killed and one joining mid-run, in both the
blocking and the one-round-delayed (async) mode."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pyhpc.ccl import diloco
from pyhpc.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(120)


def test_gradient_matches_central_differences():
    cfg = diloco.ModelConfig(d_in=5, d_hidden=7, batch=9)
    task = diloco.Task(cfg)
    flat = diloco.init_params(cfg, 3).astype(np.float64)
    x, y = (a.astype(np.float64) for a in task.batch(11))
    _, grad = diloco.loss_and_grad(flat, x, y, cfg)
    rng = np.random.default_rng(0)
    for i in rng.choice(flat.size, 12, replace=False):
        e = np.zeros_like(flat)
        e[i] = 1e-6
        num = (diloco.loss_and_grad(flat + e, x, y, cfg)[0]
               - diloco.loss_and_grad(flat - e, x, y, cfg)[0]) / 2e-6
        assert abs(num - grad[i]) <= 1e-6 + 1e-5 * abs(num), (i, num, grad[i])


def test_outer_step_is_nesterov_and_deterministic():
    g = np.array([1.0, -2.0], np.float32)
    m = np.array([0.5, 0.0], np.float32)
    d = np.array([0.1, 0.2], np.float32)
    g2, m2 = g.copy(), m.copy()
    diloco.outer_step(g, m, d, lr=0.7, mu=0.9)
    m_ref = 0.9 * np.array([0.5, 0.0]) + np.array([0.1, 0.2])
    g_ref = np.array([1.0, -2.0]) - 0.7 * (np.array([0.1, 0.2]) + 0.9 * m_ref)
    np.testing.assert_allclose(m, m_ref, rtol=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)
    diloco.outer_step(g2, m2, d, lr=0.7, mu=0.9)
    assert g.tobytes() == g2.tobytes() and m.tobytes() == m2.tobytes()


def test_inner_steps_lower_the_loss():
    cfg = diloco.ModelConfig()
    task = diloco.Task(cfg)
    flat = diloco.init_params(cfg, 7)
    before = task.eval_loss(flat)
    opt = diloco.Adam(flat.size, 1e-2)
    for step in range(30):
        _, grad = diloco.loss_and_grad(flat, *task.batch(step), cfg)
        opt.step(flat, grad)
    assert task.eval_loss(flat) < 0.5 * before


def test_bad_arguments_are_named():
    with pytest.raises(InvalidArgumentError, match="inner_steps"):
        diloco.DiLoCo(comm=None, inner_steps=0)
    with pytest.raises(InvalidArgumentError, match="outer_lr"):
        diloco.DiLoCo(comm=None, outer_lr=0.0)


def _run(tmp_path, *args):
    proc = subprocess.run([sys.executable, "-m", "pyhpc.ccl.diloco", "--timeout", "90", *args],
                          capture_output=True, text=True, timeout=110, cwd=tmp_path)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "summary", proc.stdout + proc.stderr
    return proc.returncode, events


@pytest.mark.parametrize("delayed", [False, True], ids=["blocking", "delayed"])
def test_run_with_a_peer_killed_and_one_joining(tmp_path, delayed):
    rc, events = _run(tmp_path, "--peers", "3", "--rounds", "40", "--kill-at", "6",
                      "--join-at", "10", *(["--delayed"] if delayed else []))
    summary = events[-1]
    assert summary["problems"] == [] and rc == 0, summary
    done = [e for e in events if e["event"] == "done"]
    # 3 started, 1 killed, 1 joined; all finished at the same revision with the same bytes
    assert len(done) == 3 and {e["revision"] for e in done} == {40}
    assert len({e["digest"] for e in done}) == 1
    assert summary["divergent"] == 0
    assert summary["final_eval_loss"] < 0.7 * summary["first_eval_loss"]
    joiner = [e for e in events if e["event"] == "joined" and e["seed"] == 3]
    assert len(joiner) == 1 and joiner[0]["revision"] > 0, joiner  # it received a trained state
    assert any(e["event"] == "killed" for e in events)
