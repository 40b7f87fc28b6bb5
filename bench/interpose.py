"""interpose: unmodified C MPI programs run with and without libpyhpc_interpose.so.

- pass-through: an 8-byte contiguous MPI_Send/MPI_Recv ping-pong (nothing to
  pack), one-way ns per message; the difference is what the interposer costs
  every call it only forwards.
- halo3d: a 3D halo exchange of six subarray faces per rank (Isend/Irecv/
  Waitall), seconds per exchange, with the interposer serving the faces with
  pyhpc's engine (PYHPC_INTERPOSE_STRATEGY=pyhpc) against the system MPI's own
  datatype handling. Limit: memcpy of the same face bytes (each byte must be
  copied at least once to leave the grid), measured in the same run.

Each repetition is one whole job; the two configurations take turns. The
programs (bench/programs/*.c) are compiled with the mpicc pyhpc was built with;
the halo program checks nothing itself, so its result digest must agree
between the two runs of a pair or the benchmark fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import limits
from .harness import Benchmark, Context, Measurement

PROGRAMS = Path(__file__).with_name("programs")


def compile_program(name: str, into: Path) -> Path:
    from pyhpc import _build_info

    exe = into / name
    subprocess.run([_build_info.MPI_C_COMPILER, "-O2", str(PROGRAMS / f"{name}.c"), "-o", str(exe)],
                   check=True, timeout=300, stdin=subprocess.DEVNULL)
    return exe


def run_job(ranks: int, argv: list[str], interpose: bool, cwd: Path) -> dict[str, str]:
    """One job; its `key value` output lines as a dict. Runs in `cwd`, away from
    the current directory: `python -m pyhpc` in a pyhpc checkout would import
    the uncompiled source tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYHPC_INTERPOSE")}
    env["PYHPC_INTERPOSE_STRATEGY"] = "pyhpc"
    cmd = [sys.executable, "-m", "pyhpc", "run", "-n", str(ranks), "--timeout", "300",
           *(["--interpose"] if interpose else []), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400,
                         stdin=subprocess.DEVNULL, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    fields = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value
    return fields


def run(ctx: Context) -> list[Measurement]:
    reps = 5 if ctx.quick else 11
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="pyhpc-bench-") as tmp:
        pingpong = compile_program("pingpong8", Path(tmp))
        halo = compile_program("halo3d", Path(tmp))

        ctx.progress("pass-through: 8 B contiguous send")
        trips = "20000" if ctx.quick else "100000"
        ns = {False: [], True: []}
        for _ in range(reps):
            for interpose in (False, True):
                ns[interpose].append(float(run_job(2, [str(pingpong), trips], interpose, Path(tmp))["ns_per_message"]))
        for interpose, role, impl in ((True, "pyhpc", "with the interposer"),
                                      (False, "baseline", "system MPI alone")):
            rows.append(Measurement("pass-through 8 B send", impl, role, [t * 1e-9 for t in ns[interpose]]))

        grids = [(2, 32), (2, 64)] if ctx.quick else [(2, 32), (2, 64), (2, 128), (4, 32), (4, 64)]
        for ranks, n in grids:
            ctx.progress(f"halo3d n={n} on {ranks} ranks")
            face_bytes = 6 * n * n * 8  # per rank and exchange, sent (and as many received)
            limit = limits.memcpy_limit(ctx, face_bytes, 20)
            limit.case = f"memcpy {n}x{n}x6 faces"
            rows.append(limit)
            seconds = {False: [], True: []}
            iterations = "20" if ctx.quick else "50"
            for _ in range(reps):
                digests = {}
                for interpose in (False, True):
                    fields = run_job(ranks, [str(halo), str(n), iterations], interpose, Path(tmp))
                    seconds[interpose].append(float(fields["seconds_per_exchange"]))
                    digests[interpose] = fields["digest"]
                if digests[True] != digests[False]:
                    raise RuntimeError(f"halo3d n={n}: different grids with and without the interposer")
            case = f"halo3d n={n}, {ranks} ranks"
            for interpose, role, impl in ((True, "pyhpc", "interposer, pyhpc engine"),
                                          (False, "baseline", "system MPI datatypes")):
                rows.append(Measurement(case, impl, role, seconds[interpose], x=n,
                                        bytes_per_rep=face_bytes, limit=limit.case))
    return rows


BENCHMARK = Benchmark(
    name="interpose",
    ranks=1,
    description="C programs with and without libpyhpc_interpose.so: pass-through cost of an 8 B "
                "send, and a 3D halo exchange of subarray faces (pyhpc engine vs system MPI)",
    run=run,
    x_label="local grid edge n (n^3 doubles per rank)",
)
