"""Erroneous datatype calls; prints the MPI error class each one gets. Run with
and without the interposer: the printed lines must be the same."""

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
comm.Set_errhandler(MPI.ERRORS_RETURN)
MPI.COMM_SELF.Set_errhandler(MPI.ERRORS_RETURN)


def attempt(name, call):
    try:
        call()
        print(f"{name}: ok", flush=True)
    except MPI.Exception as exc:
        print(f"{name}: error class {exc.Get_error_class()}", flush=True)


buf = np.arange(64, dtype=np.float64)
out = np.zeros(1024, dtype=np.uint8)
vec = MPI.DOUBLE.Create_vector(4, 1, 2)                  # never committed
attempt("pack uncommitted", lambda: vec.Pack(buf, out, 0, comm))
vec.Commit()
attempt("pack committed", lambda: vec.Pack(buf, out, 0, comm))
attempt("pack into too small a buffer", lambda: vec.Pack(buf, out[:16], 0, comm))
attempt("unpack from too short a buffer", lambda: vec.Unpack(out[:8], 0, buf, comm))
attempt("pack at a position past the end", lambda: vec.Pack(buf, out[:40], 30, comm))
attempt("pack with a null type", lambda: MPI.DATATYPE_NULL.Pack(buf, out, 0, comm))
# A freed handle used again is not an error MPI reports: both MPICH 5.0 and
# Open MPI 5.0 crash on it with or without the interposer, so it is not tried.
vec.Free()
