// PYHPC_CUDA_CHECK: turn a failed CUDA runtime call into a pyhpc_status that
// names the call, CUDA's message and error name, and the file:line, so every
// CUDA core reports failures the same way. Only for functions returning
// pyhpc_status. No Python here.
#pragma once

#include <cuda_runtime_api.h>

#include "common/status.hpp"

namespace pyhpc::cuda {

inline pyhpc_status cuda_fail(cudaError_t err, const char* call, const char* file, int line) {
  return ::pyhpc::fail(PYHPC_ERR_CUDA, file, line, "%s failed: %s (%s)", call,
                       cudaGetErrorString(err), cudaGetErrorName(err));
}

}  // namespace pyhpc::cuda

#define PYHPC_CUDA_CHECK(call)                                                      \
  do {                                                                              \
    cudaError_t pyhpc_cuda_err_ = (call);                                           \
    if (pyhpc_cuda_err_ != cudaSuccess)                                             \
      return ::pyhpc::cuda::cuda_fail(pyhpc_cuda_err_, #call, __FILE__, __LINE__);  \
  } while (0)
