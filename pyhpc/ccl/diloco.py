"""DiLoCo over pyhpc.ccl: local inner steps, an outer all-reduce of pseudo-gradients.

DiLoCo (Douillard et al., 2023) lets each peer take ``inner_steps`` optimizer
steps on its own data, then averages the *pseudo-gradients* (where the round
started minus where the peer got to) over all peers and applies them to the
shared ("global") parameters with an outer Nesterov-momentum SGD. Peers talk
once per round, so the link may be slow.

This module runs it on :class:`pyhpc.ccl.Communicator`, with peers joining
and dying while it trains:

- **One membership point per round.** After its inner steps every peer calls
  ``update_topology()``; waiting peers are admitted there. When an update
  admits someone, every member runs ``sync_shared_state`` on the global
  parameters and the outer momentum (revision = outer steps taken), so the
  newcomer receives them from a member, bit for bit.
- **Weighted average.** The all-reduce sums ``[pseudo-gradient, 1]``; a peer
  admitted mid-round contributes ``[0, 0]``, and every peer divides by the
  summed weight. Everyone applies the same bytes, so the global parameters stay
  bit-identical on every peer; :func:`run_peer` checks that each round with a
  state sync that must move 0 bytes among the members.
- **Failures.** A peer that dies makes the others' all-reduce raise
  :class:`~pyhpc.ccl.PeerFailure` with their buffers untouched; they call
  ``update_topology()`` and retry over the survivors.
- **Delayed ("async") DiLoCo** (``delayed=True``): round t's all-reduce runs on
  a background thread (``all_reduce_async``, tag t mod 2) while round t+1's
  inner steps compute; its average is applied one round late. The next round
  starts from the global parameters with every average so far applied.

The model is a small two-layer tanh MLP regressing a fixed random "teacher"
MLP; each peer draws its own batches. Run the whole demonstration, peers as
processes on this machine with one killed and one joining mid-run::

    python -m pyhpc.ccl.diloco --peers 3 --rounds 30 --kill-at 8 --join-at 12
    python -m pyhpc.ccl.diloco --peers 3 --rounds 30 --kill-at 8 --join-at 12 --delayed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

import numpy as np

from . import Communicator, Master, PeerFailure
from ..errors import InvalidArgumentError


# ----------------------------------------------------------------- the model

@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_in: int = 32
    d_hidden: int = 512
    batch: int = 256
    noise: float = 0.01

    def shapes(self) -> dict:
        return {"w1": (self.d_in, self.d_hidden), "b1": (self.d_hidden,),
                "w2": (self.d_hidden, 1), "b2": (1,)}

    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())


def views(flat: np.ndarray, config: ModelConfig) -> dict:
    """Named views into one flat float32 parameter vector."""
    out, at = {}, 0
    for name, shape in config.shapes().items():
        n = int(np.prod(shape))
        out[name] = flat[at:at + n].reshape(shape)
        at += n
    return out


def init_params(config: ModelConfig, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = np.zeros(config.size(), np.float32)
    p = views(flat, config)
    p["w1"][...] = rng.standard_normal(p["w1"].shape) / np.sqrt(config.d_in)
    p["w2"][...] = rng.standard_normal(p["w2"].shape) / np.sqrt(config.d_hidden)
    return flat


def forward(flat: np.ndarray, x: np.ndarray, config: ModelConfig):
    p = views(flat, config)
    h = np.tanh(x @ p["w1"] + p["b1"])
    return h, h @ p["w2"] + p["b2"]


def loss_and_grad(flat: np.ndarray, x: np.ndarray, y: np.ndarray, config: ModelConfig):
    """Mean squared error and its gradient (a flat float32 vector like ``flat``)."""
    p = views(flat, config)
    h, pred = forward(flat, x, config)
    err = pred - y
    loss = float(np.mean(err * err))
    grad = np.zeros_like(flat)
    g = views(grad, config)
    d_pred = (2.0 / len(x)) * err
    g["w2"][...] = h.T @ d_pred
    g["b2"][...] = d_pred.sum(0)
    d_h = (d_pred @ p["w2"].T) * (1.0 - h * h)
    g["w1"][...] = x.T @ d_h
    g["b1"][...] = d_h.sum(0)
    return loss, grad


class Task:
    """Targets from a fixed random teacher MLP; ``batch(seed)`` draws a batch."""

    def __init__(self, config: ModelConfig, seed: int = 1234) -> None:
        self.config = config
        self.teacher = init_params(config, seed) * 2.0
        self.eval_x, self.eval_y = self.batch(seed + 1, n=1024, noise=False)

    def batch(self, seed: int, n: int | None = None, noise: bool = True):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n or self.config.batch, self.config.d_in)).astype(np.float32)
        _, y = forward(self.teacher, x, self.config)
        if noise:
            y = y + self.config.noise * rng.standard_normal(y.shape).astype(np.float32)
        return x, y.astype(np.float32)

    def eval_loss(self, flat: np.ndarray) -> float:
        _, pred = forward(flat, self.eval_x, self.config)
        return float(np.mean((pred - self.eval_y) ** 2))


class Adam:
    """The inner optimizer (Adam; restarted every round, as in DiLoCo's reference runs
    with a fresh local state is not required, but keeps joiners and survivors alike)."""

    def __init__(self, size: int, lr: float, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = np.zeros(size, np.float32)
        self.v = np.zeros(size, np.float32)
        self.t = 0

    def step(self, flat: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        flat -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


def outer_step(global_flat: np.ndarray, momentum: np.ndarray, delta: np.ndarray,
               lr: float, mu: float) -> None:
    """Nesterov SGD on the averaged pseudo-gradient, in place; deterministic
    elementwise float32 arithmetic, so equal inputs give equal bytes everywhere."""
    momentum *= np.float32(mu)
    momentum += delta
    global_flat -= np.float32(lr) * (delta + np.float32(mu) * momentum)


# ------------------------------------------------------------- one DiLoCo peer

@dataclasses.dataclass
class RoundReport:
    round: int  # outer steps taken (the state's revision) after this round
    world: int
    eval_loss: float
    fetched_bytes: int  # state bytes this peer received in this round's syncs
    divergent: int  # 1 if this peer, a member already, had to fetch state (must stay 0)
    retries: int  # all-reduces retried after a PeerFailure
    digest: int  # pyhpc.ccl.hash_array of the global parameters
    seconds: float


class DiLoCo:
    """One peer's DiLoCo loop on ``comm`` (admitted or not: :meth:`join` admits it)."""

    def __init__(self, comm: Communicator, config: ModelConfig = ModelConfig(), *,
                 inner_steps: int = 10, inner_lr: float = 1e-2, outer_lr: float = 0.7,
                 momentum: float = 0.9, delayed: bool = False, seed: int = 0) -> None:
        if inner_steps < 1:
            raise InvalidArgumentError(f"inner_steps: must be >= 1, got {inner_steps}")
        if not 0 < outer_lr or not 0 <= momentum < 1:
            raise InvalidArgumentError("outer_lr must be > 0 and momentum in [0, 1)")
        self.comm, self.config = comm, config
        self.task = Task(config)
        self.inner_steps, self.inner_lr = inner_steps, inner_lr
        self.outer_lr, self.mu, self.delayed = outer_lr, momentum, delayed
        self.seed = seed
        n = config.size()
        self.global_flat = init_params(config, 7)  # the same start on every peer
        self.momentum = np.zeros(n, np.float32)
        self.revision = 0  # outer steps applied
        self.buf = np.zeros(n + 1, np.float32)  # [pseudo-gradient, weight]
        self._pending = None  # delayed mode: (handle, buffer) of the last round
        self._spare = np.zeros(n + 1, np.float32)
        self._fetched = 0
        self._divergent = 0
        self._retries = 0
        self._member = False

    # -- shared state
    def _state(self) -> dict:
        return {"params": self.global_flat, "momentum": self.momentum}

    def _sync(self) -> None:
        """Make the global state identical on every member (collective)."""
        while True:
            try:
                info = self.comm.sync_shared_state(self._state(), self.revision)
                break
            except PeerFailure:  # retried over the survivors, and whoever this update admits
                self.comm.update_topology()
        self._fetched += info.bytes_received
        if self._member and info.bytes_received:
            self._divergent = 1
        self.revision = info.revision
        self._member = True

    def _update(self) -> None:
        u = self.comm.update_topology()
        if u.joined:  # someone new (or this peer, on its first update): hand it the state
            self._sync()

    def join(self) -> None:
        """Wait to be admitted, receive the global state, and take part, with
        weight 0, in the all-reduce of the round the members are finishing."""
        while not self.comm.admitted:
            self.comm.update_topology()
        self._sync()
        buf = np.zeros_like(self.buf)
        if self.delayed:
            self._pending = (self.comm.all_reduce_async(buf, op="sum", tag=self.revision % 2), buf)
        else:
            self._reduce(buf)
            self._apply(buf)

    # -- the loop
    def _inner(self) -> float:
        local = self.global_flat.copy()
        opt = Adam(local.size, self.inner_lr)
        loss = 0.0
        for step in range(self.inner_steps):
            x, y = self.task.batch(self.seed * 1_000_003 + self.revision * 101 + step)
            loss, grad = loss_and_grad(local, x, y, self.config)
            opt.step(local, grad)
        return local

    def _reduce(self, buf: np.ndarray) -> None:
        """Blocking all-reduce of ``buf`` over the members, retried over the survivors."""
        while True:
            try:
                self.comm.all_reduce(buf, op="sum", tag=self.revision % 2)
                return
            except PeerFailure:
                self._retries += 1
                self._update()

    def _apply(self, buf: np.ndarray) -> None:
        weight = buf[-1]
        if weight > 0:
            outer_step(self.global_flat, self.momentum, buf[:-1] / weight, self.outer_lr, self.mu)
        self.revision += 1

    def round(self) -> RoundReport:
        """One outer round: inner steps, membership point, all-reduce, outer step."""
        t0 = time.perf_counter()
        self._fetched = self._divergent = self._retries = 0
        local = self._inner()
        if self._pending is not None:  # delayed: finish last round's all-reduce first
            handle, pending = self._pending
            self._pending = None
            try:
                handle.wait()
            except PeerFailure:
                self._retries += 1
                self._update()
                self._reduce(pending)
            self._apply(pending)
            self._spare = pending
        self._update()  # membership point: admit joiners, drop the dead, sync state
        buf = self._spare if self.delayed else self.buf
        buf[:-1] = self.global_flat - local
        buf[-1] = 1.0
        if self.delayed:
            self._spare = np.zeros_like(buf)
            self._pending = (self.comm.all_reduce_async(buf, op="sum", tag=self.revision % 2), buf)
        else:
            self._reduce(buf)
            self._apply(buf)
        return RoundReport(self.revision + (1 if self.delayed else 0), self.comm.world_size,
                           self.task.eval_loss(self.global_flat), self._fetched,
                           self._divergent, self._retries, hash_of(self.global_flat),
                           time.perf_counter() - t0)

    def finish(self) -> None:
        """Delayed mode: apply the last round's average (collective)."""
        if self._pending is not None:
            handle, pending = self._pending
            self._pending = None
            try:
                handle.wait()
            except PeerFailure:
                self._update()
                self._reduce(pending)
            self._apply(pending)


def hash_of(a: np.ndarray) -> int:
    from . import hash_array
    return int(hash_array(a))


# ------------------------------------------------------------ the demonstration

def run_peer(address: str, secret: str, rounds: int, delayed: bool, seed: int,
             inner_steps: int, emit: Callable[[dict], None], stop_file: str | None = None) -> None:
    """One peer process: join, train until ``rounds`` outer steps (or, with
    ``stop_file``, until the revision written there), check, leave."""
    comm = Communicator(address, secret=secret, heartbeat_interval=0.05).connect()
    d = DiLoCo(comm, inner_steps=inner_steps, delayed=delayed, seed=seed)
    d.join()
    emit({"event": "joined", "id": comm.id, "revision": d.revision})
    stop = None if stop_file else rounds
    while stop is None or d.revision + (1 if d._pending else 0) < stop:
        if stop is None and os.path.exists(stop_file):
            with open(stop_file) as f:
                stop = int(f.read())
            continue
        r = d.round()
        emit({"event": "round", "id": comm.id, **dataclasses.asdict(r)})
    d.finish()
    # Final check: a sync among the finished peers must move nothing.
    before = d._fetched
    d._sync()
    emit({"event": "done", "id": comm.id, "revision": d.revision,
          "eval_loss": d.task.eval_loss(d.global_flat), "digest": hash_of(d.global_flat),
          "final_fetch": d._fetched - before})
    comm.leave()


class World:
    """A master in this process and DiLoCo peers as child processes on 127.0.0.1."""

    def __init__(self, rounds: int, inner_steps: int, delayed: bool,
                 echo: Callable[[dict], None] | None = None, stop_file: str | None = None) -> None:
        self.secret = "diloco-demo"
        self.master = Master(secret=self.secret, heartbeat_timeout=1.0).start()
        self.rounds, self.inner_steps, self.delayed = rounds, inner_steps, delayed
        self.stop_file = stop_file
        self.echo = echo
        self.procs: dict[int, subprocess.Popen] = {}  # seed -> process
        self.events: list = []
        self.killed: list = []
        self._lock = threading.Lock()
        self._shown = 0

    def spawn(self, seed: int) -> None:
        cmd = [sys.executable, "-m", "pyhpc.ccl.diloco", "--peer", self.master.address,
               "--secret", self.secret, "--rounds", str(self.rounds),
               "--inner-steps", str(self.inner_steps), "--seed", str(seed)]
        cmd += (["--delayed"] if self.delayed else [])
        cmd += (["--stop-file", self.stop_file] if self.stop_file else [])
        # one BLAS thread per peer: several peers share the cores (OpenBLAS reads its own variable)
        one = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        # cwd: not wherever we are, which may be a pyhpc source checkout that would shadow
        # the installed package
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **one},
                             cwd=tempfile.gettempdir())
        self.procs[seed] = p
        threading.Thread(target=self._pump, args=(seed, p), daemon=True).start()

    def _pump(self, seed: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ev["seed"] = seed
            with self._lock:
                self.events.append(ev)

    def kill(self, seed: int) -> None:
        self.procs[seed].send_signal(signal.SIGKILL)
        self.killed.append(seed)

    def new_events(self) -> list:
        with self._lock:
            new, self._shown = self.events[self._shown:], len(self.events)
        for ev in new:
            if self.echo:
                self.echo(ev)
        return new

    def alive(self) -> list:
        return [s for s, p in self.procs.items() if p.poll() is None]

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        self.master.stop()

    def check(self, expected_done: int | None = None) -> dict:
        """The run's summary: finished peers, divergent states, losses, problems."""
        done = [e for e in self.events if e["event"] == "done"]
        rounds = [e for e in self.events if e["event"] == "round"]
        first_loss = rounds[0]["eval_loss"] if rounds else None
        problems = []
        if expected_done is not None and len(done) != expected_done:
            problems.append(f"{len(done)} peers finished, expected {expected_done}")
        if not done:
            problems.append("no peer finished")
        if len({e["digest"] for e in done}) > 1 or len({e["revision"] for e in done}) > 1:
            problems.append("final parameters differ between peers")
        divergent = sum(e["divergent"] for e in rounds) + sum(e["final_fetch"] > 0 for e in done)
        if divergent:
            problems.append(f"{divergent} divergent states")
        if done and first_loss is not None and not done[0]["eval_loss"] < first_loss:
            problems.append(f"eval loss did not fall ({first_loss:.4g} -> {done[0]['eval_loss']:.4g})")
        return {"event": "summary", "peers_finished": len(done),
                "revision": done[0]["revision"] if done else None,
                "joined": sum(e["event"] == "joined" for e in self.events),
                "killed": len(self.killed),
                "retries": sum(e["retries"] for e in rounds), "divergent": divergent,
                "first_eval_loss": first_loss,
                "final_eval_loss": done[0]["eval_loss"] if done else None,
                "ok": not problems, "problems": problems}


def demo(args) -> int:
    """Start a master here and peers as processes; kill one and add one mid-run."""
    echo = lambda ev: (ev["event"] != "round" or ev["seed"] == 0) and print(json.dumps(ev), flush=True)  # noqa: E731
    world = World(args.rounds, args.inner_steps, args.delayed, echo)
    for s in range(args.peers):
        world.spawn(s)
    killed = joined = False
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and world.alive():
            for ev in world.new_events():
                if ev["event"] != "round":
                    continue
                if args.kill_at and not killed and ev["round"] >= args.kill_at:
                    world.kill(args.peers - 1)
                    killed = True
                    print(json.dumps({"event": "killed", "seed": args.peers - 1}), flush=True)
                if args.join_at and not joined and ev["round"] >= args.join_at:
                    world.spawn(args.peers)
                    joined = True
                    print(json.dumps({"event": "spawned", "seed": args.peers}), flush=True)
            time.sleep(0.02)
        world.new_events()
    finally:
        world.close()
    summary = world.check(args.peers - bool(args.kill_at) + bool(args.join_at))
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


def churn(events: int, interval: float = 0.25, min_peers: int = 2, max_peers: int = 4,
          inner_steps: int = 10, delayed: bool = False, seed: int = 0,
          timeout: float = 600.0, workdir: str = ".") -> dict:
    """A churn soak: ``events`` kills (kill -9) and joins, one every ``interval``
    seconds at random, with between ``min_peers`` and ``max_peers`` peers; a
    killed peer may be a member mid-round or a joiner mid-admission or mid-sync.
    Then every peer stops at the same revision; returns :meth:`World.check`'s
    summary plus the round times of the peers (``round_seconds``)."""
    import random

    if min_peers < 2 or max_peers < min_peers:
        raise InvalidArgumentError("churn: need 2 <= min_peers <= max_peers")
    rng = random.Random(seed)
    stop_file = os.path.join(os.path.abspath(workdir), f"diloco-stop-{os.getpid()}")
    if os.path.exists(stop_file):
        os.unlink(stop_file)
    world = World(0, inner_steps, delayed, stop_file=stop_file)
    next_seed = 0
    joined: set = set()  # seeds admitted and not killed
    revision = 0
    deadline = time.monotonic() + timeout

    def poll() -> None:
        nonlocal revision
        for ev in world.new_events():
            if ev["event"] == "joined":
                joined.add(ev["seed"])
            elif ev["event"] == "round":
                revision = max(revision, ev["round"])

    try:
        for _ in range(min_peers + 1):
            world.spawn(next_seed)
            next_seed += 1
        while len(joined) < min_peers and time.monotonic() < deadline:
            poll()
            time.sleep(0.02)
        done = 0
        while done < events and time.monotonic() < deadline:
            time.sleep(interval)
            poll()
            alive = [s for s in world.alive() if s not in world.killed]
            members = [s for s in alive if s in joined]
            can_kill = len(members) > min_peers
            if len(alive) < max_peers and (not can_kill or rng.random() < 0.5):
                world.spawn(next_seed)
                next_seed += 1
            elif can_kill:
                # mostly members; sometimes a joiner still being admitted or synced
                pool = alive if rng.random() < 0.2 else members
                victim = rng.choice(pool)
                world.kill(victim)
                joined.discard(victim)
            else:
                continue
            done += 1
        # let every living joiner in, then agree where to stop
        while time.monotonic() < deadline:
            poll()
            if all(s in joined for s in world.alive()):
                break
            time.sleep(0.05)
        with open(stop_file + ".tmp", "w") as f:
            f.write(str(revision + 20))
        os.replace(stop_file + ".tmp", stop_file)
        while world.alive() and time.monotonic() < deadline:
            poll()
            time.sleep(0.05)
        poll()
    finally:
        world.close()
        if os.path.exists(stop_file):
            os.unlink(stop_file)
    summary = world.check(len([s for s in world.procs if s not in world.killed]))
    summary["events"] = done
    summary["round_seconds"] = [e["seconds"] for e in world.events if e["event"] == "round"]
    if time.monotonic() >= deadline:
        summary["problems"].append(f"timed out after {timeout} s")
        summary["ok"] = False
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyhpc.ccl.diloco", description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=3, help="peers started at once (default 3)")
    ap.add_argument("--rounds", type=int, default=30, help="outer rounds (default 30)")
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--kill-at", type=int, default=8, help="kill -9 the last peer at this round (0: never)")
    ap.add_argument("--join-at", type=int, default=12, help="start a new peer at this round (0: never)")
    ap.add_argument("--delayed", action="store_true", help="async DiLoCo: one-round-delayed outer step")
    ap.add_argument("--churn", type=int, default=0, metavar="EVENTS",
                    help="instead: a churn soak of this many random kills and joins (2-4 peers)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--peer", metavar="ADDRESS", help=argparse.SUPPRESS)
    ap.add_argument("--secret", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        run_peer(args.peer, args.secret, args.rounds, args.delayed, args.seed, args.inner_steps,
                 lambda ev: print(json.dumps(ev), flush=True), args.stop_file)
        return 0
    if args.churn:
        summary = churn(args.churn, inner_steps=args.inner_steps, delayed=args.delayed,
                        timeout=args.timeout)
        summary.pop("round_seconds")
        print(json.dumps(summary), flush=True)
        return 0 if summary["ok"] else 1
    if args.peers < 1 or args.rounds < 1:
        ap.error("--peers and --rounds must be >= 1")
    if args.kill_at and args.peers < 2:
        ap.error("--kill-at needs --peers >= 2")
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
