#include "common/comm.hpp"

#include "common/mpi_check.hpp"

namespace pyhpc {

pyhpc_status comm_rank_size(MPI_Comm comm, int* rank, int* size) {
  if (comm == MPI_COMM_NULL) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "comm is MPI_COMM_NULL");
  PYHPC_MPI_CHECK(MPI_Comm_rank(comm, rank));
  PYHPC_MPI_CHECK(MPI_Comm_size(comm, size));
  return PYHPC_OK;
}

}  // namespace pyhpc
