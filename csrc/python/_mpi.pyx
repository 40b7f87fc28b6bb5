# cython: language_level=3
# distutils: language = c++
"""pyhpc._mpi: the bridge from mpi4py communicators to the C++ cores.

Every C++ core that calls MPI takes a raw MPI_Comm; this module is the one
place that unwraps an mpi4py.MPI.Comm into one (cimport, no handle casting),
so the handle's type always matches the MPI the cores were compiled against.
"""

from libcpp.vector cimport vector
from mpi4py.libmpi cimport MPI_Comm
from mpi4py.MPI cimport Comm

from pyhpc.errors import from_status


cdef extern from "common/status.hpp":
    ctypedef enum pyhpc_status:
        PYHPC_OK
    const char* pyhpc_last_error_message()
    void pyhpc_clear_last_error()

cdef extern from "common/comm.hpp":
    pyhpc_status c_comm_rank_size "pyhpc::comm_rank_size" (
        MPI_Comm comm, int* rank, int* size) nogil

cdef extern from "bench/mpi_loops.hpp":
    pyhpc_status c_pingpong "pyhpc::pingpong" (
        MPI_Comm comm, size_t nbytes, int warmup, int reps, vector[double]* seconds) nogil
    pyhpc_status c_allreduce_sum "pyhpc::allreduce_sum" (
        MPI_Comm comm, size_t count, int warmup, int reps, vector[double]* seconds) nogil


cdef int check(pyhpc_status status) except -1:
    if status != PYHPC_OK:
        message = pyhpc_last_error_message().decode("utf-8", "replace")
        pyhpc_clear_last_error()
        raise from_status(<int>status, message)
    return 0


def comm_rank_size(Comm comm not None):
    """(rank, size) of comm, asked of MPI from C++ through the raw handle."""
    cdef MPI_Comm c = comm.ob_mpi
    cdef int rank = 0, size = 0
    check(c_comm_rank_size(c, &rank, &size))
    return rank, size


def pingpong_seconds(Comm comm not None, size_t nbytes, int warmup, int reps):
    """Round-trip times of nbytes between ranks 0 and 1, raw MPI_Send/Recv (C++)."""
    cdef MPI_Comm c = comm.ob_mpi
    cdef vector[double] seconds
    cdef pyhpc_status s
    with nogil:
        s = c_pingpong(c, nbytes, warmup, reps, &seconds)
    check(s)
    return list(seconds)


def allreduce_seconds(Comm comm not None, size_t count, int warmup, int reps):
    """Per-repetition time (max over ranks) of MPI_Allreduce SUM of count doubles (C++)."""
    cdef MPI_Comm c = comm.ob_mpi
    cdef vector[double] seconds
    cdef pyhpc_status s
    with nogil:
        s = c_allreduce_sum(c, count, warmup, reps, &seconds)
    check(s)
    return list(seconds)
