#include "interpose/device_ptr.hpp"

#include <dlfcn.h>
#include <link.h>

#include <atomic>
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

// How many shared objects this process has loaded so far (glibc's dlpi_adds):
// one callback of dl_iterate_phdr, far cheaper than dlopen(RTLD_NOLOAD), which
// searches the library path each time it fails (9 us measured here).
int first_object(struct dl_phdr_info* info, size_t, void* out) {
  *static_cast<unsigned long long*>(out) = info->dlpi_adds;
  return 1;  // stop after the first object
}

unsigned long long objects_loaded() {
  unsigned long long adds = 0;
  dl_iterate_phdr(first_object, &adds);
  return adds;
}

}  // namespace

bool is_device_pointer(const void* p) {
  if (p == nullptr) return false;
  // The application may load CUDA after MPI_Init (mpi4py first, cupy later):
  // look for the driver again whenever a new shared object has been loaded.
  static std::atomic<GetAttribute> get{nullptr};
  static std::atomic<unsigned long long> seen{~0ull};
  GetAttribute f = get.load(std::memory_order_acquire);
  if (f == nullptr) {
    const unsigned long long adds = objects_loaded();
    if (adds == seen.load(std::memory_order_relaxed)) return false;
    seen.store(adds, std::memory_order_relaxed);
    f = load();
    if (f == nullptr) return false;
    get.store(f, std::memory_order_release);
  }
  unsigned type = 0;
  if (f(&type, kMemoryTypeAttribute, reinterpret_cast<CUdeviceptr>(p)) != 0) return false;
  return type == kMemoryTypeDevice || type == kMemoryTypeUnified;
}

}  // namespace pyhpc::interpose
