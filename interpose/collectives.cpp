// All-to-all exchanges of derived datatypes (MPI_Alltoallv, MPI_Alltoallw,
// MPI_Neighbor_alltoallv/w, their nonblocking MPI_I* forms and the _c twins of
// all): where pyhpc serves the types, each peer's part is packed into one
// contiguous staging buffer per side and the system MPI moves MPI_PACKED bytes
// (counts and displacements in bytes), then each received part is unpacked: at
// once, or for a nonblocking call when its request completes (the staging and
// the argument arrays stay with the request until then, see requests.hpp).
//
// Host buffers are packed by pyhpc's engine, device (CUDA) buffers on the GPU
// (device_path.hpp), so an MPI that is not CUDA-aware only sees host bytes
// (or, with PYHPC_INTERPOSE_DEVICE=device, device staging). A side's memory is
// that of its buffer, and the sides are decided as follows:
//   - both sides host memory: served only when the engine serves every part of
//     both sides (a mix of served and unserved types goes to the system MPI);
//   - a side in device memory: every part of it with something to move must be
//     served on the GPU, else the whole call goes to the system MPI (as does
//     every device buffer under PYHPC_INTERPOSE_DEVICE=system). The other side,
//     when in host memory, is packed by the engine if it serves every part,
//     else handed to the system MPI with the caller's own counts,
//     displacements and types (a device send with a host receive, or the
//     reverse, thus works whatever the host strategy).
// Intercommunicators, MPI_IN_PLACE, or counts and displacements outside
// [0, INT_MAX] go to the system MPI exactly as called.
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "datatype/pack_host.hpp"
#include "interpose/device_path.hpp"
#include "interpose/device_ptr.hpp"
#include "interpose/requests.hpp"
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;
namespace dt = pyhpc::datatype;

namespace {

// How one side of an exchange is moved: with the caller's own arguments,
// packed on the host by pyhpc's engine, or packed on the GPU.
enum class Via { kAsCalled, kHost, kDevice };

// One side of an exchange: the caller's arguments (counts and displacements
// as ints) and, per peer, the part to pack or unpack (base null: nothing to
// move) at its offset in the side's staging of `total` bytes.
struct Side {
  void* buf = nullptr;
  std::vector<int> counts, displs;
  std::vector<MPI_Datatype> types;  // one per peer (the v calls: their one type, repeated)
  MPI_Datatype type = MPI_DATATYPE_NULL;  // the v calls' one type
  bool on_device = false;  // the buffer is GPU memory
  Via via = Via::kAsCalled;
  std::vector<pi::StagedPart> parts;
  int64_t total = 0;
  pi::DeviceStrategy strategy = pi::DeviceStrategy::kOneShot;  // kDevice sides
};

// Plans how `side` (its buf, counts, displs and types set) moves: each part
// served by the GPU (device buffer) or the engine (host buffer), or else the
// side as called. displs are in units of `unit` bytes (the extent of the
// type, or 1 for alltoallw).
void plan(const char* op, MPI_Aint unit, MPI_Comm comm, Side* side) {
  const size_t n = side->counts.size();
  const bool device = pi::is_device_pointer(side->buf);
  side->parts.assign(n, pi::StagedPart{});
  side->on_device = false;
  side->via = Via::kAsCalled;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    if (side->counts[i] == 0) continue;  // nothing to move for this peer
    side->on_device = device;            // a side with nothing to move is neither
    const MPI_Datatype type = side->types[i];
    char* base = static_cast<char*>(side->buf) + static_cast<int64_t>(side->displs[i]) * unit;
    pi::StagedPart& part = side->parts[i];
    if (device) {
      pi::DevicePlan gpu;
      if (!pi::device_plan(base, side->counts[i], type, comm, &gpu)) return;
      part.layout = gpu.layout;
    } else if (!pi::engine_layout(op, base, nullptr, side->counts[i], type, comm, &part.layout)) {
      return;
    }
    part.base = base;
    total += part.layout.size();
  }
  if (total > 0 && total <= std::numeric_limits<int>::max()) side->via = device ? Via::kDevice : Via::kHost;
}

// Peers of an intracommunicator (false for an intercommunicator or a bad one:
// those go to the system MPI).
bool intracomm_size(MPI_Comm comm, int* size) {
  int inter = 1;
  return comm != MPI_COMM_NULL && PMPI_Comm_test_inter(comm, &inter) == MPI_SUCCESS && !inter &&
         PMPI_Comm_size(comm, size) == MPI_SUCCESS;
}

int neighbor_counts(MPI_Comm comm, int* indegree, int* outdegree) {
  int topo = MPI_UNDEFINED, rc = PMPI_Topo_test(comm, &topo);
  if (rc != MPI_SUCCESS) return rc;
  if (topo == MPI_CART) {
    int ndims = 0;
    rc = PMPI_Cartdim_get(comm, &ndims);
    *indegree = *outdegree = 2 * ndims;
  } else if (topo == MPI_GRAPH) {
    int rank = 0;
    PMPI_Comm_rank(comm, &rank);
    rc = PMPI_Graph_neighbors_count(comm, rank, indegree);
    *outdegree = *indegree;
  } else if (topo == MPI_DIST_GRAPH) {
    int weighted = 0;
    rc = PMPI_Dist_graph_neighbors_count(comm, indegree, outdegree, &weighted);
  } else {
    return MPI_ERR_TOPOLOGY;
  }
  return rc;
}

// Counts or displacements (int, MPI_Aint or MPI_Count) as the ints plan()
// takes: false unless each is in [0, INT_MAX].
template <class T>
bool ints(int n, const T values[], std::vector<int>* out) {
  if (n < 0 || values == nullptr) return false;
  out->resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (values[i] < 0 || values[i] > std::numeric_limits<int>::max()) return false;
    (*out)[static_cast<size_t>(i)] = static_cast<int>(values[i]);
  }
  return true;
}

// Both sides of an exchange.
struct Exchange {
  Side send, recv;
};

// Peers to send to and receive from: an intracommunicator's size, or a
// topology's degrees; false sends the call to the system MPI.
bool peers(MPI_Comm comm, bool neighbors, int* nsend, int* nrecv) {
  if (neighbors) return comm != MPI_COMM_NULL && neighbor_counts(comm, nrecv, nsend) == MPI_SUCCESS;
  if (!intracomm_size(comm, nsend)) return false;
  *nrecv = *nsend;
  return true;
}

// A Cartesian topology's MPI_PROC_NULL neighbours (its non-periodic edges):
// nothing goes there or comes from there, so their parts are dropped (a
// receive part left in would unpack staging bytes that never arrived).
// Neighbours are ordered per dimension, lower then upper, in and out alike.
void drop_null_neighbors(MPI_Comm comm, Exchange* x) {
  int topo = MPI_UNDEFINED, ndims = 0;
  if (PMPI_Topo_test(comm, &topo) != MPI_SUCCESS || topo != MPI_CART ||
      PMPI_Cartdim_get(comm, &ndims) != MPI_SUCCESS)
    return;
  for (int d = 0; d < ndims; ++d) {
    int peer[2] = {MPI_PROC_NULL, MPI_PROC_NULL};
    PMPI_Cart_shift(comm, d, 1, &peer[0], &peer[1]);
    for (int side = 0; side < 2; ++side) {
      const size_t i = static_cast<size_t>(2 * d + side);
      if (peer[side] != MPI_PROC_NULL || i >= x->send.parts.size() || i >= x->recv.parts.size()) continue;
      x->send.parts[i].base = nullptr;
      x->recv.parts[i].base = nullptr;
    }
  }
}

// Places each part with something to move after the one before in the
// side's staging, and picks the GPU strategy for a device side's total.
void place_parts(Side* side) {
  side->total = 0;
  for (pi::StagedPart& part : side->parts) {
    part.offset = side->total;
    if (part.base != nullptr) side->total += part.layout.size();
  }
  if (side->via == Via::kDevice) side->strategy = pi::device_strategy(side->total);
}

// Whether the interposer serves the exchange (see the file's header).
bool served(const Exchange& x) {
  const Side &s = x.send, &r = x.recv;
  if (!s.on_device && !r.on_device) return s.via == Via::kHost && r.via == Via::kHost;
  return (!s.on_device || s.via == Via::kDevice) && (!r.on_device || r.via == Via::kDevice);
}

// Plans both sides (their arguments set) and finishes a served exchange's layout.
bool plan_exchange(MPI_Aint sunit, MPI_Aint runit, MPI_Comm comm, bool neighbors, Exchange* x) {
  plan("pack", sunit, comm, &x->send);
  plan("unpack", runit, comm, &x->recv);
  if (!served(*x)) return false;
  if (neighbors) drop_null_neighbors(comm, x);
  place_parts(&x->send);
  place_parts(&x->recv);
  return true;
}

// The v calls: one type per side, displacements in its extents.
template <class C, class D>
bool plan_v(const void* sendbuf, const C sendcounts[], const D sdispls[], MPI_Datatype sendtype, void* recvbuf,
            const C recvcounts[], const D rdispls[], MPI_Datatype recvtype, MPI_Comm comm, bool neighbors,
            Exchange* x) {
  int nsend = 0, nrecv = 0;
  MPI_Aint lb = 0, sext = 0, rext = 0;
  if (sendbuf == MPI_IN_PLACE || sendbuf == nullptr || recvbuf == nullptr || !peers(comm, neighbors, &nsend, &nrecv) ||
      !ints(nsend, sendcounts, &x->send.counts) || !ints(nsend, sdispls, &x->send.displs) ||
      !ints(nrecv, recvcounts, &x->recv.counts) || !ints(nrecv, rdispls, &x->recv.displs) ||
      PMPI_Type_get_extent(sendtype, &lb, &sext) != MPI_SUCCESS ||
      PMPI_Type_get_extent(recvtype, &lb, &rext) != MPI_SUCCESS)
    return false;
  x->send.buf = const_cast<void*>(sendbuf);
  x->send.type = sendtype;
  x->send.types.assign(static_cast<size_t>(nsend), sendtype);
  x->recv.buf = recvbuf;
  x->recv.type = recvtype;
  x->recv.types.assign(static_cast<size_t>(nrecv), recvtype);
  return plan_exchange(sext, rext, comm, neighbors, x);
}

// The w calls: a type per peer, displacements in bytes.
template <class C, class D>
bool plan_w(const void* sendbuf, const C sendcounts[], const D sdispls[], const MPI_Datatype sendtypes[],
            void* recvbuf, const C recvcounts[], const D rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm,
            bool neighbors, Exchange* x) {
  int nsend = 0, nrecv = 0;
  if (sendbuf == MPI_IN_PLACE || sendbuf == nullptr || recvbuf == nullptr || sendtypes == nullptr ||
      recvtypes == nullptr || !peers(comm, neighbors, &nsend, &nrecv) || !ints(nsend, sendcounts, &x->send.counts) ||
      !ints(nsend, sdispls, &x->send.displs) || !ints(nrecv, recvcounts, &x->recv.counts) ||
      !ints(nrecv, rdispls, &x->recv.displs))
    return false;
  x->send.buf = const_cast<void*>(sendbuf);
  x->send.types.assign(sendtypes, sendtypes + nsend);
  x->recv.buf = recvbuf;
  x->recv.types.assign(recvtypes, recvtypes + nrecv);
  return plan_exchange(1, 1, comm, neighbors, x);
}

// What the system MPI gets for one side: the caller's own arguments, or
// MPI_PACKED byte counts and displacements into the side's staging.
struct SideArgs {
  pi::Staging staging;
  void* buf = nullptr;
  std::vector<int> counts, displs;
  std::vector<MPI_Aint> adispls;  // displs as MPI_Aint (Neighbor_alltoallw)
  std::vector<MPI_Datatype> types;  // the w calls
  MPI_Datatype type = MPI_PACKED;   // the v calls

  // Displacements of type D (int or MPI_Aint).
  template <class D>
  const D* displs_as() const {
    if constexpr (std::is_same_v<D, int>) return displs.data();
    else return adispls.data();
  }
};

// The packed exchange's arguments. A nonblocking call keeps them with its
// request (MPI reads them until it completes).
struct PackedArgs : pi::KeepAlive {
  SideArgs send, recv;
};

// The parts of a served side that have something to move.
std::vector<pi::StagedPart> moving(const Side& side) {
  std::vector<pi::StagedPart> parts;
  for (const pi::StagedPart& part : side.parts)
    if (part.base != nullptr) parts.push_back(part);
  return parts;
}

// `side`'s arguments, with its staging allocated (and for the send side,
// `pack`, filled): MPI_SUCCESS or the MPI error class of what failed.
int stage(const Side& side, bool pack, SideArgs* a) {
  if (side.via == Via::kAsCalled) {
    a->buf = side.buf;
    a->counts = side.counts;
    a->displs = side.displs;
    a->types = side.types;
    a->type = side.type;
  } else {
    a->counts.assign(side.parts.size(), 0);
    a->displs.assign(side.parts.size(), 0);
    for (size_t i = 0; i < side.parts.size(); ++i) {
      a->displs[i] = static_cast<int>(side.parts[i].offset);
      if (side.parts[i].base != nullptr) a->counts[i] = static_cast<int>(side.parts[i].layout.size());
    }
    a->types.assign(side.parts.size(), MPI_PACKED);
    a->type = MPI_PACKED;
    if (side.via == Via::kHost) {
      if (!a->staging.allocate(pi::Staging::Kind::kHost, static_cast<size_t>(side.total))) return MPI_ERR_NO_MEM;
      if (pack)
        for (const pi::StagedPart& part : moving(side))
          dt::pack_host(part.layout, part.base, a->staging.data() + part.offset);
    } else if (pack) {
      if (pi::device_pack_parts(side.strategy, moving(side), side.total, &a->staging) != PYHPC_OK)
        return MPI_ERR_OTHER;
    } else if (pi::device_receive_staging(side.strategy, side.total, &a->staging) != PYHPC_OK) {
      return MPI_ERR_NO_MEM;
    }
    a->buf = a->staging.data();
  }
  a->adispls.assign(a->displs.begin(), a->displs.end());
  return MPI_SUCCESS;
}

// Unpacks every part of a served receive side from `staging`.
pyhpc_status unpack(const Side& side, const pi::Staging& staging) {
  if (side.via == Via::kDevice) return pi::device_unpack_parts(side.strategy, moving(side), staging, side.total);
  if (side.via == Via::kHost)
    for (const pi::StagedPart& part : moving(side))
      dt::unpack_host(part.layout, staging.data() + part.offset, part.base);
  return PYHPC_OK;
}

// A failure of the interposer's own (an allocation, a CUDA call) reaches the
// application the way MPI reports errors: through the communicator's handler.
int fail(MPI_Comm comm, int error_class) {
  const std::string why = pyhpc::last_error();
  pi::log_line("all-to-all: %s", why.empty() ? "cannot allocate staging" : why.c_str());
  pyhpc::clear_last_error();
  PMPI_Comm_call_errhandler(comm, error_class);
  return error_class;
}

int stage(const Exchange& x, PackedArgs* a) {
  int err = stage(x.send, true, &a->send);
  return err == MPI_SUCCESS ? stage(x.recv, false, &a->recv) : err;
}

// Blocking: `move` moves the packed bytes, then every part is unpacked.
template <class Move>
int run(const Exchange& x, MPI_Comm comm, Move move) {
  PackedArgs a;
  if (int err = stage(x, &a); err != MPI_SUCCESS) return fail(comm, err);
  int err = move(a);
  if (err == MPI_SUCCESS && unpack(x.recv, a.recv.staging) != PYHPC_OK) return fail(comm, MPI_ERR_OTHER);
  return err;
}

// Nonblocking: `start` starts moving the packed bytes; when the request
// completes, completion.cpp unpacks the parts (Pending::parts), on the GPU
// for a device receive side.
template <class Start>
int start(const Exchange& x, MPI_Comm comm, MPI_Request* request, Start start_call) {
  auto args = std::make_unique<PackedArgs>();
  if (int err = stage(x, args.get()); err != MPI_SUCCESS) return fail(comm, err);
  int err = start_call(*args, request);
  if (err != MPI_SUCCESS) return err;
  auto pending = std::make_unique<pi::Pending>();
  if (x.recv.via != Via::kAsCalled) pending->parts = moving(x.recv);
  pending->receive = !pending->parts.empty();  // else completion only frees the staging
  pending->device = x.recv.via == Via::kDevice;
  pending->device_plan.strategy = x.recv.strategy;
  pending->parts_bytes = x.recv.total;
  pending->staging.swap(args->recv.staging);
  pending->keep = std::move(args);
  pi::track(*request, std::move(pending));
  return err;
}

template <class C, class D>
using VFn = int (*)(const void*, const C[], const D[], MPI_Datatype, void*, const C[], const D[], MPI_Datatype,
                    MPI_Comm);
template <class C, class D>
using IVFn = int (*)(const void*, const C[], const D[], MPI_Datatype, void*, const C[], const D[], MPI_Datatype,
                     MPI_Comm, MPI_Request*);
template <class C, class D>
using WFn = int (*)(const void*, const C[], const D[], const MPI_Datatype[], void*, const C[], const D[],
                    const MPI_Datatype[], MPI_Comm);
template <class C, class D>
using IWFn = int (*)(const void*, const C[], const D[], const MPI_Datatype[], void*, const C[], const D[],
                     const MPI_Datatype[], MPI_Comm, MPI_Request*);

// Each call below is `system` as made unless served; served, the packed bytes
// (and a host side moved as called) go through `packed`, the int-count form:
// every count and displacement then fits an int.
template <class C, class D>
int alltoallv(const void* sendbuf, const C sendcounts[], const D sdispls[], MPI_Datatype sendtype, void* recvbuf,
              const C recvcounts[], const D rdispls[], MPI_Datatype recvtype, MPI_Comm comm, bool neighbors,
              pi::Call call, VFn<C, D> system, VFn<int, int> packed) {
  Exchange x;
  const bool served = plan_v(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                             neighbors, &x);
  pi::count(call, served);
  if (!served) return system(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm);
  return run(x, comm, [&](const PackedArgs& a) {
    return packed(a.send.buf, a.send.counts.data(), a.send.displs.data(), a.send.type, a.recv.buf,
                  a.recv.counts.data(), a.recv.displs.data(), a.recv.type, comm);
  });
}

template <class C, class D>
int ialltoallv(const void* sendbuf, const C sendcounts[], const D sdispls[], MPI_Datatype sendtype, void* recvbuf,
               const C recvcounts[], const D rdispls[], MPI_Datatype recvtype, MPI_Comm comm, MPI_Request* request,
               bool neighbors, pi::Call call, IVFn<C, D> system, IVFn<int, int> packed) {
  Exchange x;
  const bool served = request != nullptr && plan_v(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts,
                                                   rdispls, recvtype, comm, neighbors, &x);
  pi::count(call, served);
  if (!served)
    return system(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm, request);
  return start(x, comm, request, [&](const PackedArgs& a, MPI_Request* r) {
    return packed(a.send.buf, a.send.counts.data(), a.send.displs.data(), a.send.type, a.recv.buf,
                  a.recv.counts.data(), a.recv.displs.data(), a.recv.type, comm, r);
  });
}

// PD: the displacement type of the int-count call (int for Alltoallw,
// MPI_Aint for Neighbor_alltoallw).
template <class C, class D, class PD>
int alltoallw(const void* sendbuf, const C sendcounts[], const D sdispls[], const MPI_Datatype sendtypes[],
              void* recvbuf, const C recvcounts[], const D rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm,
              bool neighbors, pi::Call call, WFn<C, D> system, WFn<int, PD> packed) {
  Exchange x;
  const bool served = plan_w(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls, recvtypes,
                             comm, neighbors, &x);
  pi::count(call, served);
  if (!served)
    return system(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls, recvtypes, comm);
  return run(x, comm, [&](const PackedArgs& a) {
    return packed(a.send.buf, a.send.counts.data(), a.send.displs_as<PD>(), a.send.types.data(), a.recv.buf,
                  a.recv.counts.data(), a.recv.displs_as<PD>(), a.recv.types.data(), comm);
  });
}

template <class C, class D, class PD>
int ialltoallw(const void* sendbuf, const C sendcounts[], const D sdispls[], const MPI_Datatype sendtypes[],
               void* recvbuf, const C recvcounts[], const D rdispls[], const MPI_Datatype recvtypes[],
               MPI_Comm comm, MPI_Request* request, bool neighbors, pi::Call call, IWFn<C, D> system,
               IWFn<int, PD> packed) {
  Exchange x;
  const bool served = request != nullptr && plan_w(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts,
                                                   rdispls, recvtypes, comm, neighbors, &x);
  pi::count(call, served);
  if (!served)
    return system(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls, recvtypes, comm,
                  request);
  return start(x, comm, request, [&](const PackedArgs& a, MPI_Request* r) {
    return packed(a.send.buf, a.send.counts.data(), a.send.displs_as<PD>(), a.send.types.data(), a.recv.buf,
                  a.recv.counts.data(), a.recv.displs_as<PD>(), a.recv.types.data(), comm, r);
  });
}

constexpr bool kAll = false, kNeighbors = true;

}  // namespace

PYHPC_EXPORT int MPI_Alltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[],
                               MPI_Datatype sendtype, void* recvbuf, const int recvcounts[], const int rdispls[],
                               MPI_Datatype recvtype, MPI_Comm comm) {
  return alltoallv<int, int>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                             kAll, pi::kAlltoallv, PMPI_Alltoallv, PMPI_Alltoallv);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[],
                                        MPI_Datatype sendtype, void* recvbuf, const int recvcounts[],
                                        const int rdispls[], MPI_Datatype recvtype, MPI_Comm comm) {
  return alltoallv<int, int>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                             kNeighbors, pi::kNeighborAlltoallv, PMPI_Neighbor_alltoallv, PMPI_Neighbor_alltoallv);
}

PYHPC_EXPORT int MPI_Alltoallw(const void* sendbuf, const int sendcounts[], const int sdispls[],
                               const MPI_Datatype sendtypes[], void* recvbuf, const int recvcounts[],
                               const int rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm) {
  return alltoallw<int, int, int>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls, recvtypes,
                                  comm, kAll, pi::kAlltoallw, PMPI_Alltoallw, PMPI_Alltoallw);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallw(const void* sendbuf, const int sendcounts[], const MPI_Aint sdispls[],
                                        const MPI_Datatype sendtypes[], void* recvbuf, const int recvcounts[],
                                        const MPI_Aint rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm) {
  return alltoallw<int, MPI_Aint, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls,
                                            recvtypes, comm, kNeighbors, pi::kNeighborAlltoallw,
                                            PMPI_Neighbor_alltoallw, PMPI_Neighbor_alltoallw);
}

PYHPC_EXPORT int MPI_Ialltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[],
                                MPI_Datatype sendtype, void* recvbuf, const int recvcounts[], const int rdispls[],
                                MPI_Datatype recvtype, MPI_Comm comm, MPI_Request* request) {
  return ialltoallv<int, int>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                              request, kAll, pi::kIalltoallv, PMPI_Ialltoallv, PMPI_Ialltoallv);
}

PYHPC_EXPORT int MPI_Ineighbor_alltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[],
                                         MPI_Datatype sendtype, void* recvbuf, const int recvcounts[],
                                         const int rdispls[], MPI_Datatype recvtype, MPI_Comm comm,
                                         MPI_Request* request) {
  return ialltoallv<int, int>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                              request, kNeighbors, pi::kIneighborAlltoallv, PMPI_Ineighbor_alltoallv,
                              PMPI_Ineighbor_alltoallv);
}

PYHPC_EXPORT int MPI_Ialltoallw(const void* sendbuf, const int sendcounts[], const int sdispls[],
                                const MPI_Datatype sendtypes[], void* recvbuf, const int recvcounts[],
                                const int rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm,
                                MPI_Request* request) {
  return ialltoallw<int, int, int>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls,
                                   recvtypes, comm, request, kAll, pi::kIalltoallw, PMPI_Ialltoallw,
                                   PMPI_Ialltoallw);
}

PYHPC_EXPORT int MPI_Ineighbor_alltoallw(const void* sendbuf, const int sendcounts[], const MPI_Aint sdispls[],
                                         const MPI_Datatype sendtypes[], void* recvbuf, const int recvcounts[],
                                         const MPI_Aint rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm,
                                         MPI_Request* request) {
  return ialltoallw<int, MPI_Aint, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls,
                                             recvtypes, comm, request, kNeighbors, pi::kIneighborAlltoallw,
                                             PMPI_Ineighbor_alltoallw, PMPI_Ineighbor_alltoallw);
}

#if MPI_VERSION >= 4
// Large-count twins (mpi4py calls these under MPICH): served when every count
// and displacement fits an int (the packed bytes then go through the int
// call), else passed to the system MPI's _c call as made.
PYHPC_EXPORT int MPI_Alltoallv_c(const void* sendbuf, const MPI_Count sendcounts[], const MPI_Aint sdispls[],
                                 MPI_Datatype sendtype, void* recvbuf, const MPI_Count recvcounts[],
                                 const MPI_Aint rdispls[], MPI_Datatype recvtype, MPI_Comm comm) {
  return alltoallv<MPI_Count, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls,
                                        recvtype, comm, kAll, pi::kAlltoallv, PMPI_Alltoallv_c, PMPI_Alltoallv);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallv_c(const void* sendbuf, const MPI_Count sendcounts[],
                                          const MPI_Aint sdispls[], MPI_Datatype sendtype, void* recvbuf,
                                          const MPI_Count recvcounts[], const MPI_Aint rdispls[],
                                          MPI_Datatype recvtype, MPI_Comm comm) {
  return alltoallv<MPI_Count, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls,
                                        recvtype, comm, kNeighbors, pi::kNeighborAlltoallv,
                                        PMPI_Neighbor_alltoallv_c, PMPI_Neighbor_alltoallv);
}

PYHPC_EXPORT int MPI_Alltoallw_c(const void* sendbuf, const MPI_Count sendcounts[], const MPI_Aint sdispls[],
                                 const MPI_Datatype sendtypes[], void* recvbuf, const MPI_Count recvcounts[],
                                 const MPI_Aint rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm) {
  return alltoallw<MPI_Count, MPI_Aint, int>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls,
                                             recvtypes, comm, kAll, pi::kAlltoallw, PMPI_Alltoallw_c,
                                             PMPI_Alltoallw);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallw_c(const void* sendbuf, const MPI_Count sendcounts[],
                                          const MPI_Aint sdispls[], const MPI_Datatype sendtypes[], void* recvbuf,
                                          const MPI_Count recvcounts[], const MPI_Aint rdispls[],
                                          const MPI_Datatype recvtypes[], MPI_Comm comm) {
  return alltoallw<MPI_Count, MPI_Aint, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts,
                                                  rdispls, recvtypes, comm, kNeighbors, pi::kNeighborAlltoallw,
                                                  PMPI_Neighbor_alltoallw_c, PMPI_Neighbor_alltoallw);
}

PYHPC_EXPORT int MPI_Ialltoallv_c(const void* sendbuf, const MPI_Count sendcounts[], const MPI_Aint sdispls[],
                                  MPI_Datatype sendtype, void* recvbuf, const MPI_Count recvcounts[],
                                  const MPI_Aint rdispls[], MPI_Datatype recvtype, MPI_Comm comm,
                                  MPI_Request* request) {
  return ialltoallv<MPI_Count, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls,
                                         recvtype, comm, request, kAll, pi::kIalltoallv, PMPI_Ialltoallv_c,
                                         PMPI_Ialltoallv);
}

PYHPC_EXPORT int MPI_Ineighbor_alltoallv_c(const void* sendbuf, const MPI_Count sendcounts[],
                                           const MPI_Aint sdispls[], MPI_Datatype sendtype, void* recvbuf,
                                           const MPI_Count recvcounts[], const MPI_Aint rdispls[],
                                           MPI_Datatype recvtype, MPI_Comm comm, MPI_Request* request) {
  return ialltoallv<MPI_Count, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls,
                                         recvtype, comm, request, kNeighbors, pi::kIneighborAlltoallv,
                                         PMPI_Ineighbor_alltoallv_c, PMPI_Ineighbor_alltoallv);
}

PYHPC_EXPORT int MPI_Ialltoallw_c(const void* sendbuf, const MPI_Count sendcounts[], const MPI_Aint sdispls[],
                                  const MPI_Datatype sendtypes[], void* recvbuf, const MPI_Count recvcounts[],
                                  const MPI_Aint rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm,
                                  MPI_Request* request) {
  return ialltoallw<MPI_Count, MPI_Aint, int>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts,
                                              rdispls, recvtypes, comm, request, kAll, pi::kIalltoallw,
                                              PMPI_Ialltoallw_c, PMPI_Ialltoallw);
}

PYHPC_EXPORT int MPI_Ineighbor_alltoallw_c(const void* sendbuf, const MPI_Count sendcounts[],
                                           const MPI_Aint sdispls[], const MPI_Datatype sendtypes[], void* recvbuf,
                                           const MPI_Count recvcounts[], const MPI_Aint rdispls[],
                                           const MPI_Datatype recvtypes[], MPI_Comm comm, MPI_Request* request) {
  return ialltoallw<MPI_Count, MPI_Aint, MPI_Aint>(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts,
                                                   rdispls, recvtypes, comm, request, kNeighbors,
                                                   pi::kIneighborAlltoallw, PMPI_Ineighbor_alltoallw_c,
                                                   PMPI_Ineighbor_alltoallw);
}
#endif
