// Small helpers over a raw MPI_Comm handed in from Python through pyhpc._mpi.
#pragma once

#include <mpi.h>

#include "common/status.hpp"

namespace pyhpc {

pyhpc_status comm_rank_size(MPI_Comm comm, int* rank, int* size);

}  // namespace pyhpc
