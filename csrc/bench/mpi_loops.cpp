#include "bench/mpi_loops.hpp"

#include <climits>
#include <cstring>

#include "bench/buffer.hpp"
#include "common/mpi_check.hpp"

namespace pyhpc {

namespace {

using bench::Buffer;
using bench::make_buffer;

pyhpc_status check_reps(int warmup, int reps) {
  if (warmup < 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "warmup must be >= 0, got %d", warmup);
  if (reps < 1) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "reps must be >= 1, got %d", reps);
  return PYHPC_OK;
}
}  // namespace

pyhpc_status pingpong(MPI_Comm comm, size_t nbytes, int warmup, int reps,
                      std::vector<double>* seconds) {
  PYHPC_CHECK(check_reps(warmup, reps));
  if (nbytes > static_cast<size_t>(INT_MAX))
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "nbytes %zu exceeds INT_MAX", nbytes);
  int rank = 0, size = 0;
  PYHPC_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  PYHPC_MPI_CHECK(MPI_Comm_size(comm, &size));
  if (size < 2) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "pingpong needs >= 2 ranks, comm has %d", size);

  Buffer buf = make_buffer(nbytes, rank);
  if (!buf) return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate %zu bytes", nbytes);
  const int n = static_cast<int>(nbytes);
  seconds->assign(static_cast<size_t>(reps), 0.0);
  for (int i = -warmup; i < reps; ++i) {
    PYHPC_MPI_CHECK(MPI_Barrier(comm));
    const double t0 = MPI_Wtime();
    if (rank == 0) {
      PYHPC_MPI_CHECK(MPI_Send(buf.get(), n, MPI_BYTE, 1, 0, comm));
      PYHPC_MPI_CHECK(MPI_Recv(buf.get(), n, MPI_BYTE, 1, 0, comm, MPI_STATUS_IGNORE));
      if (i >= 0) (*seconds)[static_cast<size_t>(i)] = MPI_Wtime() - t0;
    } else if (rank == 1) {
      PYHPC_MPI_CHECK(MPI_Recv(buf.get(), n, MPI_BYTE, 0, 0, comm, MPI_STATUS_IGNORE));
      PYHPC_MPI_CHECK(MPI_Send(buf.get(), n, MPI_BYTE, 0, 0, comm));
    }
  }
  // Rank 1 started with ones and must now hold rank 0's zeros: the bytes moved.
  if (rank == 1) {
    for (size_t i = 0; i < nbytes; ++i)
      if (buf.get()[i] != 0) return PYHPC_FAIL(PYHPC_ERR_MPI, "pingpong: byte %zu never arrived from rank 0", i);
  }
  return PYHPC_OK;
}

pyhpc_status allreduce_sum(MPI_Comm comm, size_t count, int warmup, int reps,
                           std::vector<double>* seconds) {
  PYHPC_CHECK(check_reps(warmup, reps));
  if (count > static_cast<size_t>(INT_MAX))
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "count %zu exceeds INT_MAX", count);
  Buffer in_buf = make_buffer(count * sizeof(double), 0);
  Buffer out_buf = make_buffer(count * sizeof(double), 0);
  if (!in_buf || !out_buf)
    return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate 2 x %zu doubles", count);
  double* in = reinterpret_cast<double*>(in_buf.get());
  double* out = reinterpret_cast<double*>(out_buf.get());
  for (size_t i = 0; i < count; ++i) in[i] = 1.0;
  const int n = static_cast<int>(count);
  seconds->assign(static_cast<size_t>(reps), 0.0);
  for (int i = -warmup; i < reps; ++i) {
    PYHPC_MPI_CHECK(MPI_Barrier(comm));
    const double t0 = MPI_Wtime();
    PYHPC_MPI_CHECK(MPI_Allreduce(in, out, n, MPI_DOUBLE, MPI_SUM, comm));
    double dt = MPI_Wtime() - t0, worst = 0.0;
    PYHPC_MPI_CHECK(MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, comm));
    if (i >= 0) (*seconds)[static_cast<size_t>(i)] = worst;
  }
  int size = 0;
  PYHPC_MPI_CHECK(MPI_Comm_size(comm, &size));
  for (size_t i = 0; i < count; ++i)  // each rank contributed 1.0 per element
    if (out[i] != static_cast<double>(size))
      return PYHPC_FAIL(PYHPC_ERR_MPI, "allreduce: element %zu is %g, expected %d", i, out[i], size);
  return PYHPC_OK;
}

}  // namespace pyhpc
