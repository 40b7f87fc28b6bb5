// Point-to-point with derived datatypes on host buffers: where pyhpc's engine
// serves the type, the sender packs it and sends the bytes as MPI_PACKED (which
// MPI lets any receive with a matching type map accept), and the receiver takes
// MPI_PACKED bytes into a staging buffer and unpacks what arrived. Everything
// else, errors included, is the system MPI's, unchanged.
//
// Device (CUDA) buffers of MPI_Send/Recv/Isend/Irecv/Sendrecv(_replace) are
// packed and unpacked on the GPU the same way (device_path.hpp), so the MPI
// need not be CUDA-aware. The two sides of a sendrecv are decided apart: each
// is packed on the GPU (device buffer), by the engine (host buffer it serves)
// or passed as called, so a device send with a host receive (or the reverse)
// works. A device buffer the GPU path does not serve goes to the system MPI as
// called, as under PYHPC_INTERPOSE_DEVICE=system.
//
// Persistent requests (MPI_Send_init / MPI_Recv_init, host buffers) are the
// system MPI's persistent requests on MPI_PACKED over a staging buffer the
// interposer keeps until MPI_Request_free: MPI_Start packs the user's buffer
// afresh (it may have changed since the last start), and each completion of a
// receive unpacks (completion.cpp). Only the standard mode is served, as for
// the other calls here: MPI_Bsend/Ssend/Rsend(_init), MPI_Isendrecv(_replace)
// and device buffers of persistent requests go to the system MPI as they are.
#include <limits>
#include <memory>
#include <vector>

#include "datatype/pack_host.hpp"
#include "interpose/device_path.hpp"
#include "interpose/requests.hpp"
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;
namespace dt = pyhpc::datatype;

namespace {

// A growable per-thread buffer for blocking calls (no allocation per message).
class Staging {
 public:
  char* get(size_t n) {
    if (n > capacity_) {
      data_.reset(new char[n]);
      capacity_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<char[]> data_;
  size_t capacity_ = 0;
};

thread_local Staging t_send, t_recv;

template <class Count>
bool fits(const dt::Strided& layout) {
  return layout.size() <= static_cast<int64_t>(std::numeric_limits<Count>::max());
}

template <class Count>
using SendFn = int (*)(const void*, Count, MPI_Datatype, int, int, MPI_Comm);
template <class Count>
using RecvFn = int (*)(void*, Count, MPI_Datatype, int, int, MPI_Comm, MPI_Status*);
template <class Count>
using IsendFn = int (*)(const void*, Count, MPI_Datatype, int, int, MPI_Comm, MPI_Request*);
template <class Count>
using IrecvFn = int (*)(void*, Count, MPI_Datatype, int, int, MPI_Comm, MPI_Request*);
template <class Count>
using SendrecvFn = int (*)(const void*, Count, MPI_Datatype, int, int, void*, Count, MPI_Datatype,
                           int, int, MPI_Comm, MPI_Status*);
template <class Count>
using ReplaceFn = int (*)(void*, Count, MPI_Datatype, int, int, int, int, MPI_Comm, MPI_Status*);

// A failure of the interposer's own (an allocation, a CUDA call) reaches the
// application the way MPI reports errors: through the communicator's handler.
int fail_call(MPI_Comm comm, int error_class) {
  pi::log_line("%s", pyhpc::last_error().c_str());
  pyhpc::clear_last_error();
  PMPI_Comm_call_errhandler(comm, error_class);
  return error_class;
}

int no_memory(MPI_Comm comm) { return fail_call(comm, MPI_ERR_NO_MEM); }

template <class Count>
int send(const void* buf, Count count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
         SendFn<Count> system) {
  pi::DevicePlan plan;
  if (dest != MPI_PROC_NULL && pi::device_plan(buf, count, type, comm, &plan) && fits<Count>(plan.layout)) {
    pi::Staging staging;
    if (pi::device_pack(plan, buf, &staging) != PYHPC_OK) return fail_call(comm, MPI_ERR_OTHER);
    pi::count(pi::kSend, true);
    return system(staging.data(), static_cast<Count>(plan.layout.size()), MPI_PACKED, dest, tag, comm);
  }
  dt::Strided layout;
  if (dest != MPI_PROC_NULL && buf != nullptr &&
      pi::engine_layout("pack", buf, nullptr, count, type, comm, &layout) && fits<Count>(layout)) {
    char* packed = t_send.get(static_cast<size_t>(layout.size()));
    dt::pack_host(layout, static_cast<const char*>(buf), packed);
    pi::count(pi::kSend, true);
    return system(packed, static_cast<Count>(layout.size()), MPI_PACKED, dest, tag, comm);
  }
  pi::count(pi::kSend);
  return system(buf, count, type, dest, tag, comm);
}

template <class Count>
int recv(void* buf, Count count, MPI_Datatype type, int source, int tag, MPI_Comm comm,
         MPI_Status* status, RecvFn<Count> system) {
  pi::DevicePlan plan;
  if (source != MPI_PROC_NULL && pi::device_plan(buf, count, type, comm, &plan) && fits<Count>(plan.layout)) {
    pi::Staging staging;
    if (pi::device_receive_staging(plan, &staging) != PYHPC_OK) return no_memory(comm);
    MPI_Status local;
    MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
    pi::count(pi::kRecv, true);
    int rc = system(staging.data(), static_cast<Count>(plan.layout.size()), MPI_PACKED, source, tag, comm, st);
    if (rc == MPI_SUCCESS && pi::device_unpack(plan, staging, pi::bytes_received(st), buf) != PYHPC_OK)
      return fail_call(comm, MPI_ERR_OTHER);
    return rc;
  }
  dt::Strided layout;
  if (source != MPI_PROC_NULL && buf != nullptr &&
      pi::engine_layout("unpack", buf, nullptr, count, type, comm, &layout) && fits<Count>(layout)) {
    char* packed = t_recv.get(static_cast<size_t>(layout.size()));
    MPI_Status local;
    MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
    pi::count(pi::kRecv, true);
    int rc = system(packed, static_cast<Count>(layout.size()), MPI_PACKED, source, tag, comm, st);
    if (rc == MPI_SUCCESS)
      dt::unpack_host_prefix(layout, packed, pi::bytes_received(st), static_cast<char*>(buf));
    return rc;
  }
  pi::count(pi::kRecv);
  return system(buf, count, type, source, tag, comm, status);
}

// A request of ours whose host staging holds `bytes`; null when out of memory.
std::unique_ptr<pi::Pending> host_pending(int64_t bytes) {
  auto pending = std::make_unique<pi::Pending>();
  if (!pending->staging.allocate(pi::Staging::Kind::kHost, static_cast<size_t>(bytes))) return nullptr;
  return pending;
}

// Posts `system` (Isend, Irecv, Send_init or Recv_init) on `pending`'s staging as
// `bytes` of MPI_PACKED, hands the staging to the request it makes, and counts
// `call` as served by the engine.
template <class Count, class Fn>
int post_packed(std::unique_ptr<pi::Pending> pending, int64_t bytes, int peer, int tag, MPI_Comm comm,
                MPI_Request* request, Fn system, pi::Call call) {
  int rc = system(pending->staging.data(), static_cast<Count>(bytes), MPI_PACKED, peer, tag, comm, request);
  if (rc == MPI_SUCCESS) pi::track(*request, std::move(pending));
  pi::count(call, true);
  return rc;
}

// A request on host memory (Isend or Send_init): packed into staging by the
// engine where it serves the type, else the system MPI's call as made. A
// persistent send packs at each MPI_Start instead (MPI_Start below).
template <class Count, class Fn>
int host_send_request(const void* buf, Count count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
                      MPI_Request* request, Fn system, pi::Call call, bool persistent) {
  dt::Strided layout;
  if (dest != MPI_PROC_NULL && buf != nullptr && request != nullptr &&
      pi::engine_layout("pack", buf, nullptr, count, type, comm, &layout) && fits<Count>(layout)) {
    auto pending = host_pending(layout.size());
    if (!pending) return no_memory(comm);
    if (persistent) {
      pending->persistent = true;
      pending->layout = layout;
      pending->user_buf = static_cast<char*>(const_cast<void*>(buf));  // only read, at each MPI_Start
    } else {
      dt::pack_host(layout, static_cast<const char*>(buf), pending->staging.data());
    }
    return post_packed<Count>(std::move(pending), layout.size(), dest, tag, comm, request, system, call);
  }
  pi::count(call);
  return system(buf, count, type, dest, tag, comm, request);
}

// A receive request on host memory (Irecv or Recv_init): into staging, unpacked
// when it completes, where the engine serves the type; else the system MPI's.
template <class Count, class Fn>
int host_receive_request(void* buf, Count count, MPI_Datatype type, int source, int tag, MPI_Comm comm,
                         MPI_Request* request, Fn system, pi::Call call, bool persistent) {
  dt::Strided layout;
  if (source != MPI_PROC_NULL && buf != nullptr && request != nullptr &&
      pi::engine_layout("unpack", buf, nullptr, count, type, comm, &layout) && fits<Count>(layout)) {
    auto pending = host_pending(layout.size());
    if (!pending) return no_memory(comm);
    pending->persistent = persistent;
    pending->receive = true;
    pending->layout = layout;
    pending->user_buf = static_cast<char*>(buf);
    return post_packed<Count>(std::move(pending), layout.size(), source, tag, comm, request, system, call);
  }
  pi::count(call);
  return system(buf, count, type, source, tag, comm, request);
}

template <class Count>
int isend(const void* buf, Count count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
          MPI_Request* request, IsendFn<Count> system) {
  pi::DevicePlan plan;
  if (dest != MPI_PROC_NULL && request != nullptr && pi::device_plan(buf, count, type, comm, &plan) &&
      fits<Count>(plan.layout)) {
    auto pending = std::make_unique<pi::Pending>();
    if (pi::device_pack(plan, buf, &pending->staging) != PYHPC_OK) return fail_call(comm, MPI_ERR_OTHER);
    return post_packed<Count>(std::move(pending), plan.layout.size(), dest, tag, comm, request, system,
                              pi::kIsend);
  }
  return host_send_request<Count>(buf, count, type, dest, tag, comm, request, system, pi::kIsend, false);
}

template <class Count>
int irecv(void* buf, Count count, MPI_Datatype type, int source, int tag, MPI_Comm comm,
          MPI_Request* request, IrecvFn<Count> system) {
  pi::DevicePlan plan;
  if (source != MPI_PROC_NULL && request != nullptr && pi::device_plan(buf, count, type, comm, &plan) &&
      fits<Count>(plan.layout)) {
    auto pending = std::make_unique<pi::Pending>();
    if (pi::device_receive_staging(plan, &pending->staging) != PYHPC_OK) return no_memory(comm);
    pending->receive = true;
    pending->device = true;
    pending->device_plan = plan;
    pending->user_buf = static_cast<char*>(buf);
    return post_packed<Count>(std::move(pending), plan.layout.size(), source, tag, comm, request, system,
                              pi::kIrecv);
  }
  return host_receive_request<Count>(buf, count, type, source, tag, comm, request, system, pi::kIrecv,
                                     false);
}

// How one side of a sendrecv is moved: as called, packed on the host by
// pyhpc's engine, or packed on the GPU (a device buffer; see device_path.hpp).
// The two sides are decided apart, so a device send with a host receive (or
// the reverse) works: each side takes its own path.
struct Side {
  enum { kAsCalled, kHost, kDevice } via = kAsCalled;
  dt::Strided layout;   // kHost
  pi::DevicePlan plan;  // kDevice
  int64_t bytes() const { return via == kDevice ? plan.layout.size() : layout.size(); }
};

template <class Count>
Side sendrecv_side(const char* op, const void* buf, Count count, MPI_Datatype type, int peer, MPI_Comm comm) {
  Side side;
  if (peer == MPI_PROC_NULL) return side;
  if (pi::device_plan(buf, count, type, comm, &side.plan) && fits<Count>(side.plan.layout))
    side.via = Side::kDevice;
  else if (buf != nullptr && pi::engine_layout(op, buf, nullptr, count, type, comm, &side.layout) &&
           fits<Count>(side.layout))
    side.via = Side::kHost;
  return side;
}

// A sendrecv with at least one side served: the send side is packed into
// staging before anything is received, so recvbuf may be sendbuf (this also
// serves MPI_Sendrecv_replace).
template <class Count>
int sendrecv_served(const void* sendbuf, Count sendcount, MPI_Datatype sendtype, int dest, int sendtag,
                    void* recvbuf, Count recvcount, MPI_Datatype recvtype, int source, int recvtag,
                    MPI_Comm comm, MPI_Status* status, const Side& send, const Side& recv,
                    SendrecvFn<Count> system) {
  pi::Staging send_staging, recv_staging;  // the device sides'
  if (send.via == Side::kHost) {
    char* packed = t_send.get(static_cast<size_t>(send.bytes()));
    dt::pack_host(send.layout, static_cast<const char*>(sendbuf), packed);
    sendbuf = packed;
  } else if (send.via == Side::kDevice) {
    if (pi::device_pack(send.plan, sendbuf, &send_staging) != PYHPC_OK) return fail_call(comm, MPI_ERR_OTHER);
    sendbuf = send_staging.data();
  }
  if (send.via != Side::kAsCalled) {
    sendcount = static_cast<Count>(send.bytes());
    sendtype = MPI_PACKED;
  }
  void* user_recv = recvbuf;
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  if (recv.via == Side::kHost) {
    recvbuf = t_recv.get(static_cast<size_t>(recv.bytes()));
  } else if (recv.via == Side::kDevice) {
    if (pi::device_receive_staging(recv.plan, &recv_staging) != PYHPC_OK) return no_memory(comm);
    recvbuf = recv_staging.data();
  }
  if (recv.via != Side::kAsCalled) {
    recvcount = static_cast<Count>(recv.bytes());
    recvtype = MPI_PACKED;
  }
  int rc = system(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source,
                  recvtag, comm, st);
  if (rc != MPI_SUCCESS) return rc;
  if (recv.via == Side::kHost)
    dt::unpack_host_prefix(recv.layout, static_cast<const char*>(recvbuf), pi::bytes_received(st),
                           static_cast<char*>(user_recv));
  else if (recv.via == Side::kDevice &&
           pi::device_unpack(recv.plan, recv_staging, pi::bytes_received(st), user_recv) != PYHPC_OK)
    return fail_call(comm, MPI_ERR_OTHER);
  return rc;
}

template <class Count>
int sendrecv(const void* sendbuf, Count sendcount, MPI_Datatype sendtype, int dest, int sendtag,
             void* recvbuf, Count recvcount, MPI_Datatype recvtype, int source, int recvtag,
             MPI_Comm comm, MPI_Status* status, SendrecvFn<Count> system) {
  const Side send = sendrecv_side("pack", sendbuf, sendcount, sendtype, dest, comm);
  const Side recv = sendrecv_side("unpack", recvbuf, recvcount, recvtype, source, comm);
  const bool served = send.via != Side::kAsCalled || recv.via != Side::kAsCalled;
  pi::count(pi::kSendrecv, served);
  if (!served)
    return system(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source,
                  recvtag, comm, status);
  return sendrecv_served(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source,
                         recvtag, comm, status, send, recv, system);
}

// MPI_Sendrecv_replace: as MPI_Sendrecv from and into the same buffer when a
// side is served (the send is staged first), else the system's own call.
template <class Count>
int sendrecv_replace(void* buf, Count count, MPI_Datatype type, int dest, int sendtag, int source,
                     int recvtag, MPI_Comm comm, MPI_Status* status, ReplaceFn<Count> replace,
                     SendrecvFn<Count> system) {
  const Side send = sendrecv_side("pack", buf, count, type, dest, comm);
  const Side recv = sendrecv_side("unpack", buf, count, type, source, comm);
  const bool served = send.via != Side::kAsCalled || recv.via != Side::kAsCalled;
  pi::count(pi::kSendrecvReplace, served);
  if (!served) return replace(buf, count, type, dest, sendtag, source, recvtag, comm, status);
  return sendrecv_served<Count>(buf, count, type, dest, sendtag, buf, count, type, source, recvtag, comm, status,
                                send, recv, system);
}

template <class Count>
using SendInitFn = IsendFn<Count>;  // MPI_Send_init has MPI_Isend's arguments
template <class Count>
using RecvInitFn = IrecvFn<Count>;

// Persistent send / receive of a served type on host memory: the system MPI's
// persistent request on MPI_PACKED over staging kept until MPI_Request_free.
template <class Count>
int send_init(const void* buf, Count count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
              MPI_Request* request, SendInitFn<Count> system) {
  return host_send_request<Count>(buf, count, type, dest, tag, comm, request, system, pi::kSendInit, true);
}

template <class Count>
int recv_init(void* buf, Count count, MPI_Datatype type, int source, int tag, MPI_Comm comm,
              MPI_Request* request, RecvInitFn<Count> system) {
  return host_receive_request<Count>(buf, count, type, source, tag, comm, request, system, pi::kRecvInit,
                                     true);
}

// The persistent request of ours behind `request` that MPI_Start may start,
// with a send's bytes packed; null if not ours, or already active (starting it
// again is erroneous: the system MPI reports it, and staging in flight stays).
pi::Pending* prepare_start(MPI_Request request) {
  pi::Pending* pending = pi::find_persistent(request);
  if (pending == nullptr || pending->active) return nullptr;
  if (!pending->receive) dt::pack_host(pending->layout, pending->user_buf, pending->staging.data());
  return pending;
}

}  // namespace

PYHPC_EXPORT int MPI_Send(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm) {
  return send<int>(buf, count, type, dest, tag, comm, PMPI_Send);
}
PYHPC_EXPORT int MPI_Recv(void* buf, int count, MPI_Datatype type, int source, int tag, MPI_Comm comm,
                          MPI_Status* status) {
  return recv<int>(buf, count, type, source, tag, comm, status, PMPI_Recv);
}
PYHPC_EXPORT int MPI_Isend(const void* buf, int count, MPI_Datatype type, int dest, int tag,
                           MPI_Comm comm, MPI_Request* request) {
  return isend<int>(buf, count, type, dest, tag, comm, request, PMPI_Isend);
}
PYHPC_EXPORT int MPI_Irecv(void* buf, int count, MPI_Datatype type, int source, int tag,
                           MPI_Comm comm, MPI_Request* request) {
  return irecv<int>(buf, count, type, source, tag, comm, request, PMPI_Irecv);
}
PYHPC_EXPORT int MPI_Sendrecv(const void* sendbuf, int sendcount, MPI_Datatype sendtype, int dest,
                              int sendtag, void* recvbuf, int recvcount, MPI_Datatype recvtype,
                              int source, int recvtag, MPI_Comm comm, MPI_Status* status) {
  return sendrecv<int>(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype,
                       source, recvtag, comm, status, PMPI_Sendrecv);
}
PYHPC_EXPORT int MPI_Sendrecv_replace(void* buf, int count, MPI_Datatype type, int dest, int sendtag,
                                      int source, int recvtag, MPI_Comm comm, MPI_Status* status) {
  return sendrecv_replace<int>(buf, count, type, dest, sendtag, source, recvtag, comm, status,
                               PMPI_Sendrecv_replace, PMPI_Sendrecv);
}
PYHPC_EXPORT int MPI_Send_init(const void* buf, int count, MPI_Datatype type, int dest, int tag,
                               MPI_Comm comm, MPI_Request* request) {
  return send_init<int>(buf, count, type, dest, tag, comm, request, PMPI_Send_init);
}
PYHPC_EXPORT int MPI_Recv_init(void* buf, int count, MPI_Datatype type, int source, int tag,
                               MPI_Comm comm, MPI_Request* request) {
  return recv_init<int>(buf, count, type, source, tag, comm, request, PMPI_Recv_init);
}

PYHPC_EXPORT int MPI_Start(MPI_Request* request) {
  pi::Pending* pending = request != nullptr ? prepare_start(*request) : nullptr;
  pi::count(pi::kStart, pending != nullptr);
  int rc = PMPI_Start(request);
  if (rc == MPI_SUCCESS && pending != nullptr) pending->active = true;
  return rc;
}

PYHPC_EXPORT int MPI_Startall(int count, MPI_Request requests[]) {
  std::vector<pi::Pending*> ours;
  if (pi::any_tracked() && requests != nullptr)
    for (int i = 0; i < count; ++i)
      if (pi::Pending* pending = prepare_start(requests[i])) ours.push_back(pending);
  pi::count(pi::kStart, !ours.empty());
  int rc = PMPI_Startall(count, requests);
  if (rc == MPI_SUCCESS)
    for (pi::Pending* pending : ours) pending->active = true;
  return rc;
}

#if MPI_VERSION >= 4
PYHPC_EXPORT int MPI_Send_c(const void* buf, MPI_Count count, MPI_Datatype type, int dest, int tag,
                            MPI_Comm comm) {
  return send<MPI_Count>(buf, count, type, dest, tag, comm, PMPI_Send_c);
}
PYHPC_EXPORT int MPI_Recv_c(void* buf, MPI_Count count, MPI_Datatype type, int source, int tag,
                            MPI_Comm comm, MPI_Status* status) {
  return recv<MPI_Count>(buf, count, type, source, tag, comm, status, PMPI_Recv_c);
}
PYHPC_EXPORT int MPI_Isend_c(const void* buf, MPI_Count count, MPI_Datatype type, int dest, int tag,
                             MPI_Comm comm, MPI_Request* request) {
  return isend<MPI_Count>(buf, count, type, dest, tag, comm, request, PMPI_Isend_c);
}
PYHPC_EXPORT int MPI_Irecv_c(void* buf, MPI_Count count, MPI_Datatype type, int source, int tag,
                             MPI_Comm comm, MPI_Request* request) {
  return irecv<MPI_Count>(buf, count, type, source, tag, comm, request, PMPI_Irecv_c);
}
PYHPC_EXPORT int MPI_Sendrecv_c(const void* sendbuf, MPI_Count sendcount, MPI_Datatype sendtype,
                                int dest, int sendtag, void* recvbuf, MPI_Count recvcount,
                                MPI_Datatype recvtype, int source, int recvtag, MPI_Comm comm,
                                MPI_Status* status) {
  return sendrecv<MPI_Count>(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount,
                             recvtype, source, recvtag, comm, status, PMPI_Sendrecv_c);
}
PYHPC_EXPORT int MPI_Sendrecv_replace_c(void* buf, MPI_Count count, MPI_Datatype type, int dest, int sendtag,
                                        int source, int recvtag, MPI_Comm comm, MPI_Status* status) {
  return sendrecv_replace<MPI_Count>(buf, count, type, dest, sendtag, source, recvtag, comm, status,
                                     PMPI_Sendrecv_replace_c, PMPI_Sendrecv_c);
}
PYHPC_EXPORT int MPI_Send_init_c(const void* buf, MPI_Count count, MPI_Datatype type, int dest, int tag,
                                 MPI_Comm comm, MPI_Request* request) {
  return send_init<MPI_Count>(buf, count, type, dest, tag, comm, request, PMPI_Send_init_c);
}
PYHPC_EXPORT int MPI_Recv_init_c(void* buf, MPI_Count count, MPI_Datatype type, int source, int tag,
                                 MPI_Comm comm, MPI_Request* request) {
  return recv_init<MPI_Count>(buf, count, type, source, tag, comm, request, PMPI_Recv_init_c);
}
#endif
