"""ccl_churn: a DiLoCo run under churn, counting divergent states.

``pyhpc.ccl.diloco.churn`` trains DiLoCo (``python -m pyhpc.ccl.diloco``) with
2-4 peer processes on 127.0.0.1 while, every 0.25 s, one peer is killed
(kill -9: a member mid-round, or now and then a joiner mid-admission or
mid-state-sync) or a new one is started. A peer that, already a member, has to
fetch state in a ``sync_shared_state`` has diverged; so has a finished peer
whose final parameters differ from the others'. Goal: 0 divergent states over
hundreds of events. Baseline: the same training with no churn (3 peers, the
same number of rounds): its round time and final loss. Rows: round times of
every peer (seconds); the summary is in the metrics.
"""

from __future__ import annotations

import tempfile

import time

from .harness import Benchmark, Context, Measurement


def run(ctx: Context) -> list[Measurement]:
    from pyhpc.ccl import diloco

    events = 8 if ctx.quick else 300
    ctx.progress(f"churn soak: {events} kill/join events")
    with tempfile.TemporaryDirectory() as tmp:
        soak = diloco.churn(events, timeout=90 if ctx.quick else 900, workdir=tmp)
    if not soak["ok"]:
        raise RuntimeError(f"ccl_churn: {soak['problems']}")
    ctx.progress(f"no churn: 3 peers, {soak['revision']} rounds")
    calm = diloco.World(soak["revision"], 10, False)
    try:
        for s in range(3):
            calm.spawn(s)
        while calm.alive():
            calm.new_events()
            time.sleep(0.05)
        calm.new_events()
    finally:
        calm.close()
    base = calm.check(3)
    if not base["ok"]:
        raise RuntimeError(f"ccl_churn baseline: {base['problems']}")
    base_rounds = [e["seconds"] for e in calm.events if e["event"] == "round"]
    keys = ("events", "killed", "joined", "divergent", "retries", "revision",
            "first_eval_loss", "final_eval_loss")
    metrics = {k: float(soak[k]) for k in keys}
    return [
        Measurement("DiLoCo round", f"under churn: {soak['events']} events ({soak['killed']} kill -9, "
                    f"{soak['joined']} joins), {soak['divergent']} divergent states",
                    "pyhpc", soak["round_seconds"], metrics=metrics),
        Measurement("DiLoCo round", "no churn, 3 peers", "baseline", base_rounds,
                    metrics={"final_eval_loss": float(base["final_eval_loss"])}),
    ]


BENCHMARK = Benchmark(
    name="ccl_churn",
    ranks=1,
    description="pyhpc.ccl DiLoCo with peers killed (kill -9) and joining every 0.25 s, 2-4 peers "
                "on 127.0.0.1: divergent states (goal 0), round time against the same run without churn",
    x_label="run",
    run=run,
)
