#include "cuda/device.hpp"

#include <cuda_runtime.h>

#include "cuda/check.hpp"

namespace pyhpc::cuda {

pyhpc_status device_count(int* count) {
  cudaError_t err = cudaGetDeviceCount(count);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    *count = 0;
    return PYHPC_OK;
  }
  PYHPC_CUDA_CHECK(err);
  return PYHPC_OK;
}

pyhpc_status device_info(int index, DeviceInfo* info) {
  int count = 0;
  PYHPC_CHECK(device_count(&count));
  if (index < 0 || index >= count)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "device index %d out of range [0, %d)", index, count);
  cudaDeviceProp prop;
  PYHPC_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  info->index = index;
  info->name = prop.name;
  info->major = prop.major;
  info->minor = prop.minor;
  info->total_memory = prop.totalGlobalMem;
  info->multiprocessors = prop.multiProcessorCount;
  return PYHPC_OK;
}

pyhpc_status versions(int* runtime, int* driver) {
  PYHPC_CUDA_CHECK(cudaRuntimeGetVersion(runtime));
  cudaError_t err = cudaDriverGetVersion(driver);
  if (err != cudaSuccess) *driver = 0;
  return PYHPC_OK;
}

pyhpc_status d2d_copy_seconds(int device, size_t nbytes, int reps, std::vector<double>* seconds) {
  if (reps < 1) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "reps must be >= 1, got %d", reps);
  if (nbytes == 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "nbytes must be > 0");
  PYHPC_CUDA_CHECK(cudaSetDevice(device));
  void *src = nullptr, *dst = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  pyhpc_status status = PYHPC_OK;
  // One cleanup path: every allocation is released whatever fails.
  auto run = [&]() -> pyhpc_status {
    PYHPC_CUDA_CHECK(cudaMalloc(&src, nbytes));
    PYHPC_CUDA_CHECK(cudaMalloc(&dst, nbytes));
    PYHPC_CUDA_CHECK(cudaMemset(src, 1, nbytes));
    PYHPC_CUDA_CHECK(cudaEventCreate(&start));
    PYHPC_CUDA_CHECK(cudaEventCreate(&stop));
    PYHPC_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDeviceToDevice));  // warm-up
    seconds->assign(static_cast<size_t>(reps), 0.0);
    for (int i = 0; i < reps; ++i) {
      PYHPC_CUDA_CHECK(cudaEventRecord(start));
      PYHPC_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice));
      PYHPC_CUDA_CHECK(cudaEventRecord(stop));
      PYHPC_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.f;
      PYHPC_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      (*seconds)[static_cast<size_t>(i)] = ms * 1e-3;
    }
    return PYHPC_OK;
  };
  status = run();
  if (start) cudaEventDestroy(start);
  if (stop) cudaEventDestroy(stop);
  if (src) cudaFree(src);
  if (dst) cudaFree(dst);
  return status;
}

}  // namespace pyhpc::cuda
