// Requests the interposer started itself (an Isend of packed bytes, an Irecv
// into a staging buffer) stay ordinary MPI requests: the application holds the
// system MPI's own handle, so every completion call works on it. What is left
// to do when one completes (unpack a receive, free the staging buffer) is kept
// here, keyed by that handle, and done by the completion overrides.
#pragma once

#include <mpi.h>

#include <memory>

#include "datatype/strided.hpp"
#include "interpose/device_path.hpp"
#include "interpose/staging.hpp"

namespace pyhpc::interpose {

struct Pending {
  Staging staging;
  bool receive = false;
  bool device = false;        // the user buffer is GPU memory: unpack with device_plan
  datatype::Strided layout;   // host receive: where the arrived bytes go
  DevicePlan device_plan;     // device receive
  char* user_buf = nullptr;
};

// Bytes a completed receive delivered (the packed length of what arrived).
MPI_Count bytes_received(const MPI_Status* status);

void track(MPI_Request request, std::unique_ptr<Pending> pending);

// Fast path: false when no request of ours is outstanding.
bool any_tracked();

// The pending action of `request`, removed from the table; null if not ours.
std::unique_ptr<Pending> take(MPI_Request request);

// Completes a pending action: unpacks a receive that was not cancelled.
void finish(const Pending& pending, const MPI_Status* status);

// A request of ours that the application released with MPI_Request_free: the
// interposer still owns its staging buffer, so it completes it later itself.
void orphan(MPI_Request request, std::unique_ptr<Pending> pending);
void progress_orphans();  // tests them (called from every completion call)
void finish_orphans();    // waits for them (MPI_Finalize)

}  // namespace pyhpc::interpose
