// MPI datatype -> canonical strided form, by walking MPI_Type_get_envelope /
// MPI_Type_get_contents through the constructors that have one: named
// (contiguous ones), contiguous, vector, hvector, indexed/hindexed (equal block
// lengths, constant displacement step), indexed_block/hindexed_block (constant
// step), subarray (C and Fortran order), resized, dup, and any nesting of them.
// A type it cannot express is reported as unsupported, with the reason, so the
// caller can hand it to the system MPI untouched.
#pragma once

#include <mpi.h>

#include <string>

#include "common/status.hpp"
#include "datatype/strided.hpp"

namespace pyhpc::datatype {

struct Canonical {
  bool supported = false;
  std::string why_not;  // when !supported: which constructor or property stopped it
  Strided layout;       // one element, simplified
  int64_t lb = 0;       // MPI_Type_get_extent: element i starts at i * extent
  int64_t extent = 0;
  int64_t size = 0;     // MPI_Type_size
};

// PYHPC_OK with out->supported telling whether the form exists; an error
// status only when an MPI call itself fails.
pyhpc_status canonicalize(MPI_Datatype type, Canonical* out);

}  // namespace pyhpc::datatype
