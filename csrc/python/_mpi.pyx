# cython: language_level=3
# distutils: language = c++
"""pyhpc._mpi: the bridge from mpi4py communicators to the C++ cores.

Every C++ core that calls MPI takes a raw MPI_Comm; this module is the one
place that unwraps an mpi4py.MPI.Comm into one (cimport, no handle casting),
so the handle's type always matches the MPI the cores were compiled against.
"""

from libc.stdint cimport int64_t
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector
from mpi4py.libmpi cimport MPI_Comm, MPI_Datatype
from mpi4py.MPI cimport Comm, Datatype

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


cdef extern from "datatype/strided.hpp" namespace "pyhpc::datatype":
    cdef cppclass Strided:
        int64_t offset
        int64_t block
        int ndims
        int64_t count[8]
        int64_t stride[8]

cdef extern from "datatype/canonicalize.hpp" namespace "pyhpc::datatype":
    cdef cppclass Canonical:
        cbool supported
        string why_not
        Strided layout
        int64_t lb
        int64_t extent
        int64_t size

cdef extern from "datatype/engine.hpp":
    pyhpc_status c_canonicalize "pyhpc::datatype::canonicalize" (
        MPI_Datatype type, Canonical* out) nogil
    pyhpc_status c_pack "pyhpc::datatype::pack" (
        const Canonical& type, int64_t count, const char* buf, int64_t buf_len,
        char* out, int64_t out_len) nogil
    pyhpc_status c_unpack "pyhpc::datatype::unpack" (
        const Canonical& type, int64_t count, const char* packed, int64_t packed_len,
        char* buf, int64_t buf_len) nogil

cdef extern from "datatype/pack_host.hpp":
    const char* c_host_simd "pyhpc::datatype::host_simd" () nogil
    cbool c_set_host_simd "pyhpc::datatype::set_host_simd" (cbool enabled) nogil


cdef extern from "datatype/measure.hpp" namespace "pyhpc::datatype":
    cdef cppclass PackTiming:
        string op
        int64_t block
        double pyhpc_s
        double system_s

cdef extern from "datatype/measure.hpp":
    pyhpc_status c_measure_pack "pyhpc::datatype::measure_pack" (
        const vector[int64_t]& blocks, int64_t total, int reps, vector[PackTiming]* out) nogil


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


# ---- datatypes ------------------------------------------------------------------

def canonicalize(Datatype datatype not None):
    """The canonical strided form of datatype as a dict (see pyhpc.datatype)."""
    cdef Canonical c
    check(c_canonicalize(datatype.ob_mpi, &c))
    cdef int d
    return {
        "supported": c.supported,
        "why_not": c.why_not.decode("utf-8", "replace"),
        "offset": c.layout.offset,
        "block": c.layout.block,
        "counts": [c.layout.count[d] for d in range(c.layout.ndims)] if c.supported else [],
        "strides": [c.layout.stride[d] for d in range(c.layout.ndims)] if c.supported else [],
        "lb": c.lb,
        "extent": c.extent,
        "size": c.size,
    }


def pack(Datatype datatype not None, int64_t count, const unsigned char[::1] buf not None,
         unsigned char[::1] out not None):
    """Packs count elements of datatype read from buf into out (pyhpc's host engine)."""
    cdef Canonical c
    check(c_canonicalize(datatype.ob_mpi, &c))
    cdef const char* src = <const char*>&buf[0] if buf.shape[0] > 0 else NULL
    cdef char* dst = <char*>&out[0] if out.shape[0] > 0 else NULL
    cdef pyhpc_status s
    with nogil:
        s = c_pack(c, count, src, buf.shape[0], dst, out.shape[0])
    check(s)


def unpack(Datatype datatype not None, int64_t count, const unsigned char[::1] packed not None,
           unsigned char[::1] buf not None):
    """Unpacks count elements of datatype from packed into buf (pyhpc's host engine)."""
    cdef Canonical c
    check(c_canonicalize(datatype.ob_mpi, &c))
    cdef const char* src = <const char*>&packed[0] if packed.shape[0] > 0 else NULL
    cdef char* dst = <char*>&buf[0] if buf.shape[0] > 0 else NULL
    cdef pyhpc_status s
    with nogil:
        s = c_unpack(c, count, src, packed.shape[0], dst, buf.shape[0])
    check(s)


def host_simd(enabled=None):
    """The host engine's vector path ("avx512-vbmi" or "scalar"); with enabled
    given, first turns it on (where the CPU has it) or off. For tests and benchmarks."""
    if enabled is not None:
        c_set_host_simd(bool(enabled))
    return c_host_simd().decode()


def measure_pack(blocks, int64_t total, int reps):
    """[(op, block, pyhpc seconds, system seconds)]: MPI_Pack/Unpack against
    pyhpc's engine on a byte vector, per block size (see pyhpc measure-system)."""
    cdef vector[int64_t] b = [int(x) for x in blocks]
    cdef vector[PackTiming] out
    cdef pyhpc_status s
    with nogil:
        s = c_measure_pack(b, total, reps, &out)
    check(s)
    return [(t.op.decode(), t.block, t.pyhpc_s, t.system_s) for t in out]
