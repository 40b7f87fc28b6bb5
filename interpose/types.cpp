// MPI_Type_commit keeps the canonical form of each committed type;
// MPI_Type_free forgets it (handles are reused after a free).
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;

PYHPC_EXPORT int MPI_Type_commit(MPI_Datatype* type) {
  int rc = PMPI_Type_commit(type);
  pi::count(pi::kTypeCommit);
  if (rc == MPI_SUCCESS && pi::settings().enabled) pi::remember_type(*type);
  return rc;
}

PYHPC_EXPORT int MPI_Type_free(MPI_Datatype* type) {
  pi::count(pi::kTypeFree);
  if (type != nullptr) pi::forget_type(*type);
  return PMPI_Type_free(type);
}
