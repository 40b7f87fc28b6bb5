// Device (CUDA) buffers of a datatype with a strided form. The MPI underneath
// need not be CUDA-aware: the interposer packs on the GPU and hands the MPI
// bytes it can move. Strategies (PYHPC_INTERPOSE_DEVICE):
//   device   pack into device memory; the device pointer goes to a CUDA-aware MPI
//   oneshot  the pack kernel writes straight into pinned host memory
//   staged   pack into device memory, then one copy to pinned host memory
//   system   leave device buffers to the system MPI
//   auto     (default) `device` where the MPI reports CUDA support
//            (MPIX_Query_cuda_support) and the type is not contiguous, the system
//            MPI for contiguous types there; otherwise `oneshot` below 1 MiB and
//            `staged` from 1 MiB (TEMPI's finding that one-shot wins for small
//            messages). A GPU measurement is to replace this rule.
// An all-to-all side packs all its parts into one staging buffer and takes
// the strategy of that buffer's size (the *_parts calls below).
// Only in builds with CUDA (PYHPC_INTERPOSE_CUDA); elsewhere device_plan() is
// always false and device buffers go to the system MPI.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <vector>

#include "common/status.hpp"
#include "datatype/canonicalize.hpp"
#include "interpose/staging.hpp"

namespace pyhpc::interpose {

enum class DeviceStrategy { kDevice, kOneShot, kStaged };

struct DevicePlan {
  DeviceStrategy strategy = DeviceStrategy::kOneShot;
  datatype::Canonical type;
  int64_t count = 0;
  datatype::Strided layout;  // count elements
};

// True if `buf` is device memory and the interposer should move it (see above).
bool device_plan(const void* buf, int64_t count, MPI_Datatype type, MPI_Comm comm, DevicePlan* plan);

// Packs into `out` (allocated here, pinned host or device memory by the
// strategy) and waits for the GPU: out->data() holds layout.size() bytes to send.
pyhpc_status device_pack(const DevicePlan& plan, const void* buf, Staging* out);

// A staging buffer to receive layout.size() packed bytes into.
pyhpc_status device_receive_staging(const DevicePlan& plan, Staging* out);

// Unpacks the first `nbytes` received into `in` to the device buffer `buf`
// and waits for the GPU.
pyhpc_status device_unpack(const DevicePlan& plan, const Staging& in, int64_t nbytes, void* buf);

// Several parts in one staging buffer of `total` bytes: an all-to-all side,
// each part's base in device memory and its layout from device_plan.

// The strategy for such a buffer: device_plan's rule for one of that size.
DeviceStrategy device_strategy(int64_t total);

// Packs every part into `out` (allocated here, pinned host or device memory by
// `strategy`) at its offset and waits for the GPU.
pyhpc_status device_pack_parts(DeviceStrategy strategy, const std::vector<StagedPart>& parts, int64_t total,
                               Staging* out);

// A staging buffer to receive `total` packed bytes into.
pyhpc_status device_receive_staging(DeviceStrategy strategy, int64_t total, Staging* out);

// Unpacks every part, arrived whole, from its offset in `in` to its device
// memory and waits for the GPU.
pyhpc_status device_unpack_parts(DeviceStrategy strategy, const std::vector<StagedPart>& parts,
                                 const Staging& in, int64_t total);

}  // namespace pyhpc::interpose
