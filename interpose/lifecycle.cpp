// MPI_Init / MPI_Init_thread / MPI_Finalize: load the system model, report.
#include "interpose/requests.hpp"
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;

PYHPC_EXPORT int MPI_Init(int* argc, char*** argv) {
  int rc = PMPI_Init(argc, argv);
  pi::load_model();
  pi::count(pi::kInit);
  return rc;
}

PYHPC_EXPORT int MPI_Init_thread(int* argc, char*** argv, int required, int* provided) {
  int rc = PMPI_Init_thread(argc, argv, required, provided);
  pi::load_model();
  pi::count(pi::kInitThread);
  return rc;
}

PYHPC_EXPORT int MPI_Finalize(void) {
  pi::count(pi::kFinalize);
  pi::finish_orphans();  // released requests of ours must land before MPI goes away
  pi::print_stats();
  return PMPI_Finalize();
}
