#include "interpose/device_ptr.hpp"

#include <dlfcn.h>

#include <cstdint>

namespace pyhpc::interpose {

namespace {

// From cuda.h, which the interposer does not include (it builds without CUDA).
using CUresult = int;
using CUdeviceptr = unsigned long long;  // NOLINT: the driver API's own type
constexpr int kMemoryTypeAttribute = 2;  // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
constexpr unsigned kMemoryTypeDevice = 2;  // CU_MEMORYTYPE_DEVICE
constexpr unsigned kMemoryTypeUnified = 4;  // CU_MEMORYTYPE_UNIFIED
using GetAttribute = CUresult (*)(void* data, int attribute, CUdeviceptr ptr);

GetAttribute load() {
  // RTLD_NOLOAD: only a driver the application already loaded. A process that
  // never loaded libcuda cannot hold device pointers.
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  return reinterpret_cast<GetAttribute>(dlsym(lib, "cuPointerGetAttribute"));
}

}  // namespace

bool is_device_pointer(const void* p) {
  if (p == nullptr) return false;
  // Looked up on each call until found: the application may load CUDA after MPI_Init.
  static GetAttribute get = nullptr;
  if (get == nullptr) get = load();
  if (get == nullptr) return false;
  unsigned type = 0;
  if (get(&type, kMemoryTypeAttribute, reinterpret_cast<CUdeviceptr>(p)) != 0) return false;
  return type == kMemoryTypeDevice || type == kMemoryTypeUnified;
}

}  // namespace pyhpc::interpose
