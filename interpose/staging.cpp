#include "interpose/staging.hpp"

#include <new>

#ifdef PYHPC_INTERPOSE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace pyhpc::interpose {

bool Staging::allocate(Kind kind, size_t bytes) {
  release();
  kind_ = kind;
  if (bytes == 0) bytes = 1;
  switch (kind) {
    case Kind::kHost:
      data_ = new (std::nothrow) char[bytes];
      break;
#ifdef PYHPC_INTERPOSE_CUDA
    case Kind::kPinned: {
      void* p = nullptr;
      // Portable + mapped: any device's kernels write it directly (one-shot packing).
      if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped) == cudaSuccess)
        data_ = static_cast<char*>(p);
      break;
    }
    case Kind::kDevice: {
      void* p = nullptr;
      if (cudaMalloc(&p, bytes) == cudaSuccess) data_ = static_cast<char*>(p);
      break;
    }
#else
    default:
      break;  // no CUDA in this build: only host staging exists
#endif
  }
  return data_ != nullptr;
}

void Staging::release() {
  if (data_ == nullptr) return;
  switch (kind_) {
    case Kind::kHost:
      delete[] data_;
      break;
#ifdef PYHPC_INTERPOSE_CUDA
    case Kind::kPinned:
      cudaFreeHost(data_);
      break;
    case Kind::kDevice:
      cudaFree(data_);
      break;
#else
    default:
      break;
#endif
  }
  data_ = nullptr;
}

}  // namespace pyhpc::interpose
