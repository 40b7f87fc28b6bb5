// Point-to-point with derived datatypes on host buffers: where pyhpc's engine
// serves the type, the sender packs it and sends the bytes as MPI_PACKED (which
// MPI lets any receive with a matching type map accept), and the receiver takes
// MPI_PACKED bytes into a staging buffer and unpacks what arrived. Everything
// else, errors included, is the system MPI's, unchanged.
#include <limits>
#include <memory>

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

template <class Count>
int isend(const void* buf, Count count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
          MPI_Request* request, IsendFn<Count> system) {
  pi::DevicePlan plan;
  if (dest != MPI_PROC_NULL && request != nullptr && pi::device_plan(buf, count, type, comm, &plan) &&
      fits<Count>(plan.layout)) {
    auto pending = std::make_unique<pi::Pending>();
    if (pi::device_pack(plan, buf, &pending->staging) != PYHPC_OK) return fail_call(comm, MPI_ERR_OTHER);
    int rc = system(pending->staging.data(), static_cast<Count>(plan.layout.size()), MPI_PACKED, dest, tag,
                    comm, request);
    if (rc == MPI_SUCCESS) pi::track(*request, std::move(pending));
    pi::count(pi::kIsend, true);
    return rc;
  }
  dt::Strided layout;
  if (dest != MPI_PROC_NULL && buf != nullptr && request != nullptr &&
      pi::engine_layout("pack", buf, nullptr, count, type, comm, &layout) && fits<Count>(layout)) {
    auto pending = std::make_unique<pi::Pending>();
    if (!pending->staging.allocate(pi::Staging::Kind::kHost, static_cast<size_t>(layout.size())))
      return no_memory(comm);
    dt::pack_host(layout, static_cast<const char*>(buf), pending->staging.data());
    int rc = system(pending->staging.data(), static_cast<Count>(layout.size()), MPI_PACKED, dest, tag,
                    comm, request);
    if (rc == MPI_SUCCESS) pi::track(*request, std::move(pending));
    pi::count(pi::kIsend, true);
    return rc;
  }
  pi::count(pi::kIsend);
  return system(buf, count, type, dest, tag, comm, request);
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
    int rc = system(pending->staging.data(), static_cast<Count>(plan.layout.size()), MPI_PACKED, source, tag,
                    comm, request);
    if (rc == MPI_SUCCESS) pi::track(*request, std::move(pending));
    pi::count(pi::kIrecv, true);
    return rc;
  }
  dt::Strided layout;
  if (source != MPI_PROC_NULL && buf != nullptr && request != nullptr &&
      pi::engine_layout("unpack", buf, nullptr, count, type, comm, &layout) && fits<Count>(layout)) {
    auto pending = std::make_unique<pi::Pending>();
    if (!pending->staging.allocate(pi::Staging::Kind::kHost, static_cast<size_t>(layout.size())))
      return no_memory(comm);
    pending->receive = true;
    pending->layout = layout;
    pending->user_buf = static_cast<char*>(buf);
    int rc = system(pending->staging.data(), static_cast<Count>(layout.size()), MPI_PACKED, source, tag,
                    comm, request);
    if (rc == MPI_SUCCESS) pi::track(*request, std::move(pending));
    pi::count(pi::kIrecv, true);
    return rc;
  }
  pi::count(pi::kIrecv);
  return system(buf, count, type, source, tag, comm, request);
}

template <class Count>
int sendrecv(const void* sendbuf, Count sendcount, MPI_Datatype sendtype, int dest, int sendtag,
             void* recvbuf, Count recvcount, MPI_Datatype recvtype, int source, int recvtag,
             MPI_Comm comm, MPI_Status* status, SendrecvFn<Count> system) {
  dt::Strided sl, rl;
  const bool pack_send = dest != MPI_PROC_NULL && sendbuf != nullptr &&
                         pi::engine_layout("pack", sendbuf, nullptr, sendcount, sendtype, comm, &sl) &&
                         fits<Count>(sl);
  const bool unpack_recv = source != MPI_PROC_NULL && recvbuf != nullptr &&
                           pi::engine_layout("unpack", recvbuf, nullptr, recvcount, recvtype, comm, &rl) &&
                           fits<Count>(rl);
  pi::count(pi::kSendrecv, pack_send || unpack_recv);
  if (!pack_send && !unpack_recv)
    return system(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source,
                  recvtag, comm, status);
  if (pack_send) {
    char* packed = t_send.get(static_cast<size_t>(sl.size()));
    dt::pack_host(sl, static_cast<const char*>(sendbuf), packed);
    sendbuf = packed;
    sendcount = static_cast<Count>(sl.size());
    sendtype = MPI_PACKED;
  }
  void* user_recv = recvbuf;
  MPI_Status local;
  MPI_Status* st = status == MPI_STATUS_IGNORE ? &local : status;
  if (unpack_recv) {
    recvbuf = t_recv.get(static_cast<size_t>(rl.size()));
    recvcount = static_cast<Count>(rl.size());
    recvtype = MPI_PACKED;
  }
  int rc = system(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source,
                  recvtag, comm, st);
  if (rc == MPI_SUCCESS && unpack_recv)
    dt::unpack_host_prefix(rl, static_cast<const char*>(recvbuf), pi::bytes_received(st),
                           static_cast<char*>(user_recv));
  return rc;
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
#endif
