// Which MPI pyhpc was compiled against (from mpi.h) and which one is loaded in
// this process (MPI_Get_library_version, callable before MPI_Init). Python
// compares the two at import so a mismatched libmpi fails loudly, not randomly.
#pragma once

#include <string>

namespace pyhpc {

struct MpiBuildInfo {
  std::string vendor;   // "MPICH", "Open MPI" or "unknown"
  std::string version;  // vendor's version, e.g. "5.0.2"
  int standard_version; // MPI_VERSION
  int standard_subversion;
};

MpiBuildInfo mpi_build_info();

// The full MPI_Get_library_version string of the libmpi this process loaded.
std::string mpi_loaded_library_version();

}  // namespace pyhpc
