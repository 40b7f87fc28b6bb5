"""Run one benchmark inside an MPI job; rank 0 writes its JSON.

    mpiexec -n 2 python -m mpi4py -m pyhpc.bench.worker pingpong --quick --json out.json

``pyhpc bench`` starts this file by its path rather than with ``-m`` (see
:func:`pyhpc.bench.worker_argv`), hence the absolute imports. It runs under
mpi4py's runner, so an exception on any rank aborts the whole job instead of
leaving the other ranks waiting in a collective.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import sys
import time
from typing import Any


def environment(comm: Any, quick: bool) -> dict[str, Any]:
    """What a reader needs to judge the numbers: where, on what, with which versions."""
    import mpi4py
    import numpy
    from mpi4py import MPI

    import pyhpc
    from pyhpc import mpi_build
    from pyhpc.bench.limits import usable_cores

    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cores_usable_by_rank_0": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "mpi4py": mpi4py.__version__,
        "pyhpc": pyhpc.__version__,
        "mpi": str(mpi_build.loaded()),
        "mpi_library_version": " ".join(MPI.Get_library_version().split()),
        "mpi_built_against": str(mpi_build.built()),
        "ranks": comm.Get_size(),
        "quick": quick,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyhpc.bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="benchmark to run (a module of pyhpc.bench)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    parser.add_argument("--json", metavar="PATH", help="where rank 0 writes the result "
                        "(default: print the table)")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    from pyhpc.bench import load, render_table
    from pyhpc.bench.harness import Context, Result, write_json
    from pyhpc.errors import InvalidArgumentError

    bench = load(args.name)
    comm = MPI.COMM_WORLD
    if comm.Get_size() != bench.ranks:
        raise InvalidArgumentError(
            f"{bench.name} runs on {bench.ranks} rank(s), this job has {comm.Get_size()}")
    ctx = Context(comm=comm, quick=args.quick, benchmark=bench.name)
    t0 = time.perf_counter()
    measurements = bench.run(ctx)
    wall = time.perf_counter() - t0
    if comm.Get_rank() == 0:
        result = Result(bench.name, bench.description, bench.ranks, args.quick, bench.x_label,
                        environment(comm, args.quick), list(measurements), wall)
        result.summaries()  # raises (and so aborts the job) on results that cannot be compared
        if args.json:
            write_json(result, args.json)
        else:
            print(render_table([result]))
    comm.Barrier()  # nobody leaves before rank 0 has written
    return 0


if __name__ == "__main__":
    # Started by path, Python put this directory first on sys.path; take it off
    # so that a benchmark module's name can never shadow a top-level module.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]
    sys.exit(main())
