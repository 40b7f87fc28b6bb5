// MPI return codes -> pyhpc_status, with MPI's own error string recorded.
#pragma once

#include <mpi.h>

#include "common/status.hpp"

namespace pyhpc {
pyhpc_status mpi_fail(int mpi_code, const char* call, const char* file, int line);
}

#define PYHPC_MPI_CHECK(call)                                              \
  do {                                                                     \
    int pyhpc_mpi_rc_ = (call);                                            \
    if (pyhpc_mpi_rc_ != MPI_SUCCESS)                                      \
      return ::pyhpc::mpi_fail(pyhpc_mpi_rc_, #call, __FILE__, __LINE__);  \
  } while (0)
