// Requests the interposer started itself (an Isend of packed bytes, an Irecv
// into a staging buffer, a persistent send or receive of MPI_PACKED over a
// staging buffer, a nonblocking all-to-all of packed parts) stay ordinary MPI
// requests: the application holds the system MPI's own handle, so every
// completion call works on it. What is left to do when one completes (unpack
// a receive, free the staging buffer) is kept here, keyed by that handle, and
// done by the completion overrides. A persistent request stays here from its
// *_init to its MPI_Request_free: MPI_Start packs a send again each time, and
// each completion unpacks a receive.
#pragma once

#include <mpi.h>

#include <memory>
#include <vector>

#include "datatype/strided.hpp"
#include "interpose/device_path.hpp"
#include "interpose/staging.hpp"

namespace pyhpc::interpose {

// What the system MPI reads until a nonblocking call completes (a nonblocking
// collective's staging and argument arrays), freed with the Pending.
struct KeepAlive {
  virtual ~KeepAlive() = default;
};

struct Pending {
  Staging staging;
  bool receive = false;
  bool device = false;        // the user buffer (or the parts') is GPU memory: unpack on the GPU
  datatype::Strided layout;   // host receive: where the arrived bytes go
  DevicePlan device_plan;     // device receive (device parts: only its strategy is set)
  char* user_buf = nullptr;
  bool persistent = false;    // from MPI_Send_init / MPI_Recv_init (host buffers)
  bool active = false;        // persistent: started and not yet completed
  std::vector<StagedPart> parts;  // nonblocking collective: unpacked from staging
  int64_t parts_bytes = 0;    // the staging's size for those parts
  std::unique_ptr<KeepAlive> keep;
};

// Bytes a completed receive delivered (the packed length of what arrived).
MPI_Count bytes_received(const MPI_Status* status);

void track(MPI_Request request, std::unique_ptr<Pending> pending);

// Fast path: false when no request of ours is outstanding.
bool any_tracked();

// The pending action of `request`, removed from the table; null if not ours.
std::unique_ptr<Pending> take(MPI_Request request);

// The persistent request of ours behind `request`, left in the table; null if
// `request` is not one. Valid until that request is freed.
Pending* find_persistent(MPI_Request request);

// Completes a pending action: unpacks a receive that was not cancelled.
void finish(const Pending& pending, const MPI_Status* status);

// `request` (its handle before the completion call) completed with `status`,
// fine (`ok`) or with an error: finishes it if it is ours, unpacking only if
// `ok`. A non-persistent request leaves the table (its handle may be reused);
// a persistent one is finished once per start (an inactive one is left alone).
void complete(MPI_Request request, const MPI_Status* status, bool ok);

// A request of ours that the application released with MPI_Request_free while
// it was active: the interposer still owns its staging buffer, so it completes
// it later itself (and then frees a persistent one's handle).
void orphan(MPI_Request request, std::unique_ptr<Pending> pending);
void progress_orphans();  // tests them (called from every completion call)
void finish_orphans();    // waits for them (MPI_Finalize)

}  // namespace pyhpc::interpose
