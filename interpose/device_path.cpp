#include "interpose/device_path.hpp"

#ifdef PYHPC_INTERPOSE_CUDA

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

#include "cuda/check.hpp"
#include "datatype/engine.hpp"
#include "datatype/pack_cuda.hpp"
#include "interpose/device_ptr.hpp"
#include "interpose/state.hpp"

namespace pyhpc::interpose {

namespace {

constexpr int64_t kStagedFrom = int64_t{1} << 20;  // auto: one-shot below, staged from here

enum class Mode { kAuto, kDevice, kOneShot, kStaged, kSystem };

Mode mode() {
  static const Mode m = [] {
    const char* v = std::getenv("PYHPC_INTERPOSE_DEVICE");
    if (v == nullptr || v[0] == '\0' || std::strcmp(v, "auto") == 0) return Mode::kAuto;
    if (std::strcmp(v, "device") == 0) return Mode::kDevice;
    if (std::strcmp(v, "oneshot") == 0) return Mode::kOneShot;
    if (std::strcmp(v, "staged") == 0) return Mode::kStaged;
    if (std::strcmp(v, "system") == 0) return Mode::kSystem;
    log_line("PYHPC_INTERPOSE_DEVICE=%s is not auto, device, oneshot, staged or system; using auto", v);
    return Mode::kAuto;
  }();
  return m;
}

// MPIX_Query_cuda_support, where the MPI has it (Open MPI, MPICH built with CUDA).
bool mpi_is_cuda_aware() {
  static const bool aware = [] {
    using Query = int (*)(void);
    auto query = reinterpret_cast<Query>(dlsym(RTLD_DEFAULT, "MPIX_Query_cuda_support"));
    return query != nullptr && query() == 1;
  }();
  return aware;
}

pyhpc_status wait_gpu() {
  PYHPC_CUDA_CHECK(cudaStreamSynchronize(0));
  return PYHPC_OK;
}

}  // namespace

bool device_plan(const void* buf, int64_t count, MPI_Datatype type, MPI_Comm comm, DevicePlan* plan) {
  if (!settings().enabled || mode() == Mode::kSystem || buf == nullptr || count <= 0 ||
      comm == MPI_COMM_NULL || !is_device_pointer(buf))
    return false;
  if (auto cached = find_type(type)) {
    plan->type = *cached;
  } else {
    // Named types are never committed, so they are not in the cache: their
    // form is one run, found in a few calls.
    int ni = 0, na = 0, nd = 0, combiner = 0;
    if (PMPI_Type_get_envelope(type, &ni, &na, &nd, &combiner) != MPI_SUCCESS ||
        combiner != MPI_COMBINER_NAMED || datatype::canonicalize(type, &plan->type) != PYHPC_OK ||
        !plan->type.supported) {
      clear_last_error();
      return false;
    }
  }
  if (plan->type.size == 0 || datatype::layout_for(plan->type, count, &plan->layout) != PYHPC_OK) {
    clear_last_error();
    return false;
  }
  plan->count = count;
  // auto under a CUDA-aware MPI: a contiguous type the MPI moves as it is
  if (mode() == Mode::kAuto && mpi_is_cuda_aware() && plan->layout.ndims == 0) return false;
  plan->strategy = device_strategy(plan->layout.size());
  return true;
}

DeviceStrategy device_strategy(int64_t total) {
  switch (mode()) {
    case Mode::kDevice: return DeviceStrategy::kDevice;
    case Mode::kOneShot: return DeviceStrategy::kOneShot;
    case Mode::kStaged: return DeviceStrategy::kStaged;
    default:
      if (mpi_is_cuda_aware()) return DeviceStrategy::kDevice;
      return total < kStagedFrom ? DeviceStrategy::kOneShot : DeviceStrategy::kStaged;
  }
}

pyhpc_status device_pack(const DevicePlan& plan, const void* buf, Staging* out) {
  const std::vector<StagedPart> whole = {{plan.layout, static_cast<char*>(const_cast<void*>(buf)), 0}};
  return device_pack_parts(plan.strategy, whole, plan.layout.size(), out);
}

pyhpc_status device_pack_parts(DeviceStrategy strategy, const std::vector<StagedPart>& parts, int64_t total,
                               Staging* out) {
  const size_t bytes = static_cast<size_t>(total);
  if (!out->allocate(strategy == DeviceStrategy::kOneShot ? Staging::Kind::kPinned : Staging::Kind::kDevice, bytes))
    return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate %zu bytes of staging", bytes);
  for (const StagedPart& part : parts)
    PYHPC_CHECK(datatype::pack_device(part.layout, part.base, out->data() + part.offset, 0));
  if (strategy == DeviceStrategy::kStaged) {
    Staging pinned;
    if (!pinned.allocate(Staging::Kind::kPinned, bytes))
      return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate %zu bytes of pinned staging", bytes);
    PYHPC_CUDA_CHECK(cudaMemcpyAsync(pinned.data(), out->data(), bytes, cudaMemcpyDeviceToHost, 0));
    PYHPC_CHECK(wait_gpu());
    out->swap(pinned);  // the pinned copy is what goes to MPI
    return PYHPC_OK;
  }
  return wait_gpu();
}

pyhpc_status device_receive_staging(const DevicePlan& plan, Staging* out) {
  return device_receive_staging(plan.strategy, plan.layout.size(), out);
}

pyhpc_status device_receive_staging(DeviceStrategy strategy, int64_t total, Staging* out) {
  const size_t bytes = static_cast<size_t>(total);
  const Staging::Kind kind = strategy == DeviceStrategy::kDevice ? Staging::Kind::kDevice : Staging::Kind::kPinned;
  if (!out->allocate(kind, bytes))
    return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate %zu bytes of staging", bytes);
  return PYHPC_OK;
}

pyhpc_status device_unpack(const DevicePlan& plan, const Staging& in, int64_t nbytes, void* buf) {
  const int64_t element = plan.type.size;
  const int64_t whole = nbytes >= plan.layout.size() ? plan.count : nbytes / element;
  const char* src = in.data();
  if (plan.strategy == DeviceStrategy::kStaged) {
    // Received into pinned memory: one copy up, then unpack on the device.
    Staging dev;
    if (!dev.allocate(Staging::Kind::kDevice, static_cast<size_t>(nbytes)))
      return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate %lld bytes of device staging",
                        static_cast<long long>(nbytes));
    PYHPC_CUDA_CHECK(cudaMemcpyAsync(dev.data(), src, static_cast<size_t>(nbytes), cudaMemcpyHostToDevice, 0));
    DevicePlan direct = plan;
    direct.strategy = DeviceStrategy::kDevice;
    PYHPC_CHECK(device_unpack(direct, dev, nbytes, buf));
    return PYHPC_OK;
  }
  if (whole > 0) {
    datatype::Strided layout;
    PYHPC_CHECK(datatype::layout_for(plan.type, whole, &layout));
    PYHPC_CHECK(datatype::unpack_device(layout, src, buf, 0));
  }
  // A message shorter than the receive: the head of the next element, run by run.
  int64_t rest = nbytes - whole * element;
  if (rest > 0 && whole < plan.count) {
    const datatype::Strided& s = plan.type.layout;
    char* base = static_cast<char*>(buf) + whole * plan.type.extent;
    const char* packed = src + whole * element;
    int64_t idx[datatype::kMaxDims] = {};
    while (rest > 0) {
      char* q = base + s.offset;
      for (int d = 0; d < s.ndims; ++d) q += idx[d] * s.stride[d];
      const int64_t n = rest < s.block ? rest : s.block;
      PYHPC_CUDA_CHECK(cudaMemcpyAsync(q, packed, static_cast<size_t>(n), cudaMemcpyDefault, 0));
      packed += n;
      rest -= n;
      int d = s.ndims - 1;
      while (d >= 0 && ++idx[d] == s.count[d]) idx[d--] = 0;
      if (d < 0) break;
    }
  }
  return wait_gpu();
}

pyhpc_status device_unpack_parts(DeviceStrategy strategy, const std::vector<StagedPart>& parts,
                                 const Staging& in, int64_t total) {
  const char* src = in.data();
  Staging dev;
  if (strategy == DeviceStrategy::kStaged) {
    // Received into pinned memory: one copy up, then unpack on the device.
    if (!dev.allocate(Staging::Kind::kDevice, static_cast<size_t>(total)))
      return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate %lld bytes of device staging",
                        static_cast<long long>(total));
    PYHPC_CUDA_CHECK(cudaMemcpyAsync(dev.data(), src, static_cast<size_t>(total), cudaMemcpyHostToDevice, 0));
    src = dev.data();
  }
  for (const StagedPart& part : parts)
    PYHPC_CHECK(datatype::unpack_device(part.layout, src + part.offset, part.base, 0));
  return wait_gpu();  // before `dev` is freed
}

}  // namespace pyhpc::interpose

#else  // no CUDA in this build: device buffers are the system MPI's

namespace pyhpc::interpose {
bool device_plan(const void*, int64_t, MPI_Datatype, MPI_Comm, DevicePlan*) { return false; }
pyhpc_status device_pack(const DevicePlan&, const void*, Staging*) { return PYHPC_ERR_UNSUPPORTED; }
pyhpc_status device_receive_staging(const DevicePlan&, Staging*) { return PYHPC_ERR_UNSUPPORTED; }
pyhpc_status device_unpack(const DevicePlan&, const Staging&, int64_t, void*) { return PYHPC_ERR_UNSUPPORTED; }
DeviceStrategy device_strategy(int64_t) { return DeviceStrategy::kOneShot; }
pyhpc_status device_pack_parts(DeviceStrategy, const std::vector<StagedPart>&, int64_t, Staging*) {
  return PYHPC_ERR_UNSUPPORTED;
}
pyhpc_status device_receive_staging(DeviceStrategy, int64_t, Staging*) { return PYHPC_ERR_UNSUPPORTED; }
pyhpc_status device_unpack_parts(DeviceStrategy, const std::vector<StagedPart>&, const Staging&, int64_t) {
  return PYHPC_ERR_UNSUPPORTED;
}
}  // namespace pyhpc::interpose

#endif
