// The one-time measurement behind the interposer's host-side choice: for each
// block size, MPI_Pack / MPI_Unpack of the system MPI against pyhpc's engine
// on the same byte vector. `pyhpc measure-system` writes the result to the
// file the interposer reads (PYHPC_SYSTEM_MODEL).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.hpp"

namespace pyhpc::datatype {

struct PackTiming {
  std::string op;     // "pack", "unpack", "pack-sparse" or "unpack-sparse"
  int64_t block;      // bytes per contiguous run
  double pyhpc_s;     // median seconds per call, pyhpc's engine
  double system_s;    // median seconds per call, the system MPI
};

// Runs of `block` bytes every 2*block bytes, `total` packed bytes per call,
// for each block size; the median of `reps` calls each (after one warm-up).
// Blocks under kSparseStride bytes are timed a second time with runs
// kSparseStride + block bytes apart, scaled to `total` bytes, as "pack-sparse"
// and "unpack-sparse": the engine's vector path serves only runs close
// together, so layouts without it are judged by these.
constexpr int64_t kSparseStride = 64;
pyhpc_status measure_pack(const std::vector<int64_t>& blocks, int64_t total, int reps,
                          std::vector<PackTiming>* out);

}  // namespace pyhpc::datatype
