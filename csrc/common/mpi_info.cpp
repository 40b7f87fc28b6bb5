#include "common/mpi_info.hpp"

#include <mpi.h>

#include <cstring>

#include "common/mpi_check.hpp"

namespace pyhpc {

MpiBuildInfo mpi_build_info() {
  MpiBuildInfo info;
#if defined(OPEN_MPI) && OPEN_MPI
  info.vendor = "Open MPI";
  info.version = std::to_string(OMPI_MAJOR_VERSION) + "." + std::to_string(OMPI_MINOR_VERSION) +
                 "." + std::to_string(OMPI_RELEASE_VERSION);
#elif defined(MPICH_VERSION)
  info.vendor = "MPICH";
  info.version = MPICH_VERSION;
#else
  info.vendor = "unknown";
  info.version = "unknown";
#endif
  info.standard_version = MPI_VERSION;
  info.standard_subversion = MPI_SUBVERSION;
  return info;
}

std::string mpi_loaded_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (MPI_Get_library_version(text, &len) != MPI_SUCCESS) return "unknown";
  // Some MPIs count the terminating NUL in len; stop at the first NUL.
  return std::string(text, strnlen(text, static_cast<size_t>(len)));
}

pyhpc_status mpi_fail(int mpi_code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(mpi_code, text, &len) != MPI_SUCCESS) len = 0;
  return fail(PYHPC_ERR_MPI, file, line, "%s failed: %.*s (code %d)", call, len, text, mpi_code);
}

}  // namespace pyhpc
