"""The `pyhpc` command: info, run, bench, measure-system, master."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any, Sequence


def collect_info() -> dict[str, Any]:
    """What `pyhpc info` reports: versions, the MPI built against and loaded, CUDA, interposer."""
    import numpy

    import pyhpc
    from . import _build_info, cuda, interpose, launcher, mpi_build

    info: dict[str, Any] = {
        "pyhpc": pyhpc.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
    try:
        import mpi4py

        info["mpi4py"] = mpi4py.__version__
    except ImportError:
        info["mpi4py"] = None
    info["mpi_built_against"] = str(mpi_build.built())
    info["mpi_c_compiler"] = _build_info.MPI_C_COMPILER
    info["mpi_loaded"] = str(mpi_build.loaded())
    from . import _core

    info["mpi_loaded_library"] = _core.mpi_loaded_library_version().strip().splitlines()[0]
    try:
        mpiexec = launcher.detect(launcher.find_mpiexec())
        info["mpiexec"] = f"{mpiexec.path} ({mpiexec.flavor} {mpiexec.version})"
    except pyhpc.Error as exc:
        info["mpiexec"] = f"not usable: {exc}"
    info["mpi_libraries"] = _build_info.MPI_C_LIBRARIES
    info["cxx_compiler"] = _build_info.CXX_COMPILER
    info["build_type"] = _build_info.BUILD_TYPE
    info["cuda_built"] = cuda.built_with_cuda()
    if cuda.built_with_cuda():
        info["cuda_architectures"] = _build_info.CUDA_ARCHITECTURES
        info["cuda_compiler"] = _build_info.CUDA_COMPILER_VERSION
    try:
        info["cuda_devices"] = cuda.device_count()
    except pyhpc.Error as exc:
        info["cuda_devices"] = 0
        info["cuda_error"] = str(exc)
    cp = cuda.cupy()
    info["cupy"] = getattr(cp, "__version__", None) if cp is not None else None
    try:
        info["interposer"] = str(interpose.library_path())
    except pyhpc.Error as exc:
        info["interposer"] = f"missing: {exc}"
    return info


def cmd_info(args: argparse.Namespace) -> int:
    if args.settings_table:
        from . import settings

        print(settings.markdown_table())
        return 0
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import launcher

    if not args.program:
        print("pyhpc run: nothing to run (usage: pyhpc run -n N [--interpose] prog.py args...)",
              file=sys.stderr)
        return 2
    return launcher.run(args.nprocs, args.program, interpose=args.interpose, timeout=args.timeout)


def cmd_measure_system(args: argparse.Namespace) -> int:
    from . import system_model

    path = Path(args.out) if args.out else system_model.default_path()
    rows = system_model.measure(quick=args.quick)
    system_model.write(path, rows)
    print(f"{'op':<7} {'block':>8} {'pyhpc':>10} {'system':>10}  faster")
    for op, block, mine, theirs in rows:
        print(f"{op:<7} {block:>8} {mine * 1e6:>8.1f}us {theirs * 1e6:>8.1f}us  "
              f"{'pyhpc' if mine < theirs else 'system'}")
    print(f"\nwrote {path}; the interposer reads it "
          f"{'by default' if not args.out else 'with PYHPC_SYSTEM_MODEL=' + str(path)}")
    return 0


def cmd_master(args: argparse.Namespace) -> int:
    """Serve a fault-tolerant-collectives master until SIGINT/SIGTERM."""
    import signal
    import threading

    from . import ccl
    from .errors import InvalidArgumentError

    try:
        secret = Path(args.secret_file).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise InvalidArgumentError(f"--secret-file: {exc}") from None
    if not secret:
        raise InvalidArgumentError(f"--secret-file {args.secret_file} is empty")
    master = ccl.Master(args.host, args.port, secret, heartbeat_timeout=args.heartbeat_timeout,
                        handshake_timeout=args.handshake_timeout).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"pyhpc master listening on {master.address}", flush=True)
    try:
        while not done.wait(0.2):
            pass
    finally:
        master.stop()
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    from . import bench  # type: ignore[attr-defined]  # installed from bench/ by CMake

    return bench.main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyhpc", description="MPI/HPC middleware for Python")
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="versions, MPI built against and loaded, CUDA, interposer")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.add_argument("--settings-table", action="store_true",
                        help="print the PYHPC_* settings as a Markdown table")

    p_run = sub.add_parser("run", help="run a program on N local ranks with the right mpiexec")
    p_run.add_argument("-n", "--nprocs", type=int, required=True, help="number of ranks")
    p_run.add_argument("--interpose", action="store_true",
                       help="LD_PRELOAD libpyhpc_interpose.so into every rank")
    p_run.add_argument("--timeout", type=float, default=None,
                       help="kill the whole job after this many seconds (default: PYHPC_RUN_TIMEOUT)")
    p_run.add_argument("program", nargs=argparse.REMAINDER, help="prog.py args... or any command")

    p_measure = sub.add_parser("measure-system",
                               help="time the system MPI's MPI_Pack/Unpack against pyhpc's engine "
                                    "and write the model the interposer decides by")
    p_measure.add_argument("--out", help="file to write (default: PYHPC_SYSTEM_MODEL, else "
                                         "~/.cache/pyhpc/system-model.txt)")
    p_measure.add_argument("--quick", action="store_true", help="fewer block sizes, smaller buffers")

    p_master = sub.add_parser("master", help="run the master of pyhpc.ccl's fault-tolerant "
                                             "collectives (peers join it over TCP)")
    p_master.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    p_master.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    p_master.add_argument("--secret-file", required=True,
                          help="file holding the shared secret peers must prove")
    p_master.add_argument("--heartbeat-timeout", type=float, default=1.5,
                          help="seconds of silence after which a peer is dead (default 1.5)")
    p_master.add_argument("--handshake-timeout", type=float, default=2.0,
                          help="seconds a new connection has to authenticate (default 2)")

    # `bench` parses its own options (pyhpc.bench.main); listed here for --help.
    sub.add_parser("bench", help="benchmarks against their baselines (pyhpc bench --help)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import pyhpc

    command = argv[0] if argv else ""
    try:
        if command == "bench":
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "measure-system":
            return cmd_measure_system(args)
        if args.command == "master":
            return cmd_master(args)
        return cmd_run(args)
    except pyhpc.Error as exc:
        print(f"pyhpc {command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
