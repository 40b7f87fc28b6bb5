// Raw-MPI timing loops, the C baseline that pyhpc's benchmarks set beside
// mpi4py and beside each capability: what the network and the MPI library give
// with no Python in the loop. Each returns the seconds of every repetition.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <vector>

#include "common/status.hpp"

namespace pyhpc {

// Round trips of nbytes between ranks 0 and 1 of comm (other ranks idle).
// seconds[i] = time of one round trip, measured on rank 0 (others get zeros).
pyhpc_status pingpong(MPI_Comm comm, size_t nbytes, int warmup, int reps,
                      std::vector<double>* seconds);

// MPI_Allreduce(SUM) of count doubles. seconds[i] = max over ranks of rep i.
pyhpc_status allreduce_sum(MPI_Comm comm, size_t count, int warmup, int reps,
                           std::vector<double>* seconds);

}  // namespace pyhpc
