// libpyhpc_interpose.so: MPI_* overrides for unmodified MPI programs, loaded
// with LD_PRELOAD (`pyhpc run --interpose`). Each override does its work and
// forwards to the PMPI_* profiling entry point of the real MPI.
//
// This file holds the life-cycle calls; datatype, pack and point-to-point
// overrides arrive with the datatype engine. Silent unless PYHPC_INTERPOSE_LOG=1.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#define PYHPC_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

bool log_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("PYHPC_INTERPOSE_LOG");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

void log_call(const char* call) {
  if (!log_enabled()) return;
  int initialized = 0, finalized = 0, rank = -1;
  PMPI_Initialized(&initialized);
  PMPI_Finalized(&finalized);
  if (initialized && !finalized) PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "pyhpc-interpose[%d]: %s\n", rank, call);
}

}  // namespace

PYHPC_EXPORT int MPI_Init(int* argc, char*** argv) {
  int rc = PMPI_Init(argc, argv);
  log_call("MPI_Init");
  return rc;
}

PYHPC_EXPORT int MPI_Init_thread(int* argc, char*** argv, int required, int* provided) {
  int rc = PMPI_Init_thread(argc, argv, required, provided);
  log_call("MPI_Init_thread");
  return rc;
}

PYHPC_EXPORT int MPI_Finalize(void) {
  log_call("MPI_Finalize");
  return PMPI_Finalize();
}
