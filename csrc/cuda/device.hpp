// GPU discovery and the device-side physical limit (device-to-device copy
// bandwidth) that GPU benchmarks report against. Compiled only with CUDA.
#pragma once

#include <string>
#include <vector>

#include "common/status.hpp"

namespace pyhpc::cuda {

struct DeviceInfo {
  int index;
  std::string name;
  int major, minor;  // compute capability
  size_t total_memory;
  int multiprocessors;
};

// Number of visible devices; 0 (and PYHPC_OK) when there is no driver or GPU.
pyhpc_status device_count(int* count);
pyhpc_status device_info(int index, DeviceInfo* info);

// Runtime and driver versions as CUDA encodes them (1000*major + 10*minor).
pyhpc_status versions(int* runtime, int* driver);

// Seconds for each of reps device-to-device copies of nbytes on `device`,
// timed with CUDA events (the bandwidth ceiling for on-device packing).
pyhpc_status d2d_copy_seconds(int device, size_t nbytes, int reps, std::vector<double>* seconds);

}  // namespace pyhpc::cuda
