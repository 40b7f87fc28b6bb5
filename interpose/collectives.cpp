// All-to-all exchanges of derived datatypes (MPI_Alltoallv, MPI_Alltoallw,
// MPI_Neighbor_alltoallv/w, their nonblocking MPI_I* forms and the _c twins of
// all): where pyhpc's engine serves the types, each peer's part is packed into
// one contiguous staging buffer and the system MPI moves MPI_PACKED bytes
// (counts and displacements in bytes), then each received part is unpacked: at
// once, or for a nonblocking call when its request completes (the staging and
// the argument arrays stay with the request until then, see requests.hpp).
// Intercommunicators, MPI_IN_PLACE, a mix of served and unserved types, or
// counts and displacements outside [0, INT_MAX] go to the system MPI exactly
// as called.
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "datatype/pack_host.hpp"
#include "interpose/requests.hpp"
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;
namespace dt = pyhpc::datatype;

namespace {

struct Part {
  dt::Strided layout;
  const char* base = nullptr;  // user buffer + displacement
};

// The parts of one side, or false if any part is not the engine's to serve.
// displs are in units of `unit` bytes (extent of the type, or 1 for alltoallw).
bool plan(const char* op, const void* buf, int n, const int counts[], const int displs[],
          const MPI_Datatype types[], bool one_type, const MPI_Aint* units, MPI_Comm comm,
          std::vector<Part>* parts, int64_t* total) {
  parts->assign(static_cast<size_t>(n), Part{});
  *total = 0;
  for (int i = 0; i < n; ++i) {
    const MPI_Datatype type = one_type ? types[0] : types[i];
    const char* base = static_cast<const char*>(buf) + static_cast<int64_t>(displs[i]) * units[one_type ? 0 : i];
    Part& part = (*parts)[static_cast<size_t>(i)];
    if (counts[i] == 0) continue;  // nothing to move for this peer
    if (!pi::engine_layout(op, base, nullptr, counts[i], type, comm, &part.layout)) return false;
    part.base = base;
    *total += part.layout.size();
  }
  return *total > 0 && *total <= std::numeric_limits<int>::max();
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

// Packs every send part into staging; returns byte counts and displacements.
void pack_parts(const std::vector<Part>& parts, char* staging, std::vector<int>* counts,
                std::vector<int>* displs) {
  counts->assign(parts.size(), 0);
  displs->assign(parts.size(), 0);
  int64_t offset = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    (*displs)[i] = static_cast<int>(offset);
    if (parts[i].base == nullptr) continue;
    dt::pack_host(parts[i].layout, parts[i].base, staging + offset);
    (*counts)[i] = static_cast<int>(parts[i].layout.size());
    offset += parts[i].layout.size();
  }
}

void receive_layout(const std::vector<Part>& parts, std::vector<int>* counts, std::vector<int>* displs) {
  counts->assign(parts.size(), 0);
  displs->assign(parts.size(), 0);
  int64_t offset = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    (*displs)[i] = static_cast<int>(offset);
    if (parts[i].base == nullptr) continue;
    (*counts)[i] = static_cast<int>(parts[i].layout.size());
    offset += parts[i].layout.size();
  }
}

void unpack_parts(const std::vector<Part>& parts, const char* staging, const std::vector<int>& displs) {
  for (size_t i = 0; i < parts.size(); ++i)
    if (parts[i].base != nullptr)
      dt::unpack_host(parts[i].layout, staging + displs[i], const_cast<char*>(parts[i].base));
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

// Both sides of a served exchange.
struct Exchange {
  std::vector<Part> sparts, rparts;
  int64_t stotal = 0, rtotal = 0;
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
      if (peer[side] != MPI_PROC_NULL || i >= x->sparts.size() || i >= x->rparts.size()) continue;
      if (x->sparts[i].base != nullptr) x->stotal -= x->sparts[i].layout.size();
      if (x->rparts[i].base != nullptr) x->rtotal -= x->rparts[i].layout.size();
      x->sparts[i].base = nullptr;
      x->rparts[i].base = nullptr;
    }
  }
}

// The v calls: one type per side, displacements in its extents.
template <class C, class D>
bool plan_v(const void* sendbuf, const C sendcounts[], const D sdispls[], MPI_Datatype sendtype, void* recvbuf,
            const C recvcounts[], const D rdispls[], MPI_Datatype recvtype, MPI_Comm comm, bool neighbors,
            Exchange* x) {
  int nsend = 0, nrecv = 0;
  std::vector<int> sc, sd, rc, rd;
  MPI_Aint lb = 0, sext = 0, rext = 0;
  const bool served =
      sendbuf != MPI_IN_PLACE && sendbuf != nullptr && recvbuf != nullptr && peers(comm, neighbors, &nsend, &nrecv) &&
      ints(nsend, sendcounts, &sc) && ints(nsend, sdispls, &sd) && ints(nrecv, recvcounts, &rc) &&
      ints(nrecv, rdispls, &rd) && PMPI_Type_get_extent(sendtype, &lb, &sext) == MPI_SUCCESS &&
      PMPI_Type_get_extent(recvtype, &lb, &rext) == MPI_SUCCESS &&
      plan("pack", sendbuf, nsend, sc.data(), sd.data(), &sendtype, true, &sext, comm, &x->sparts, &x->stotal) &&
      plan("unpack", recvbuf, nrecv, rc.data(), rd.data(), &recvtype, true, &rext, comm, &x->rparts, &x->rtotal);
  if (served && neighbors) drop_null_neighbors(comm, x);
  return served;
}

// The w calls: a type per peer, displacements in bytes.
template <class C, class D>
bool plan_w(const void* sendbuf, const C sendcounts[], const D sdispls[], const MPI_Datatype sendtypes[],
            void* recvbuf, const C recvcounts[], const D rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm,
            bool neighbors, Exchange* x) {
  int nsend = 0, nrecv = 0;
  std::vector<int> sc, sd, rc, rd;
  if (sendbuf == MPI_IN_PLACE || sendbuf == nullptr || recvbuf == nullptr || sendtypes == nullptr ||
      recvtypes == nullptr || !peers(comm, neighbors, &nsend, &nrecv) || !ints(nsend, sendcounts, &sc) ||
      !ints(nsend, sdispls, &sd) || !ints(nrecv, recvcounts, &rc) || !ints(nrecv, rdispls, &rd))
    return false;
  std::vector<MPI_Aint> sunits(static_cast<size_t>(nsend), 1), runits(static_cast<size_t>(nrecv), 1);
  const bool served = plan("pack", sendbuf, nsend, sc.data(), sd.data(), sendtypes, false, sunits.data(), comm,
                           &x->sparts, &x->stotal) &&
                      plan("unpack", recvbuf, nrecv, rc.data(), rd.data(), recvtypes, false, runits.data(), comm,
                           &x->rparts, &x->rtotal);
  if (served && neighbors) drop_null_neighbors(comm, x);
  return served;
}

// The packed exchange's arguments: staging, byte counts and displacements,
// MPI_PACKED per peer. A nonblocking call keeps them with its request (MPI
// reads them until it completes).
struct PackedArgs : pi::KeepAlive {
  pi::Staging send, recv;
  std::vector<int> sc, sd, rc, rd;
  std::vector<MPI_Aint> sda, rda;  // the byte displacements as MPI_Aint (Neighbor_alltoallw)
  std::vector<MPI_Datatype> stypes, rtypes;

  // Displacements of type D (int or MPI_Aint).
  template <class D>
  const D* sdispls() const {
    if constexpr (std::is_same_v<D, int>) return sd.data();
    else return sda.data();
  }
  template <class D>
  const D* rdispls() const {
    if constexpr (std::is_same_v<D, int>) return rd.data();
    else return rda.data();
  }
};

bool pack_exchange(const Exchange& x, PackedArgs* a) {
  if (!a->send.allocate(pi::Staging::Kind::kHost, static_cast<size_t>(x.stotal)) ||
      !a->recv.allocate(pi::Staging::Kind::kHost, static_cast<size_t>(x.rtotal)))
    return false;
  pack_parts(x.sparts, a->send.data(), &a->sc, &a->sd);
  receive_layout(x.rparts, &a->rc, &a->rd);
  a->sda.assign(a->sd.begin(), a->sd.end());
  a->rda.assign(a->rd.begin(), a->rd.end());
  a->stypes.assign(x.sparts.size(), MPI_PACKED);
  a->rtypes.assign(x.rparts.size(), MPI_PACKED);
  return true;
}

int no_memory(MPI_Comm comm) {
  pi::log_line("cannot allocate staging for an all-to-all");
  PMPI_Comm_call_errhandler(comm, MPI_ERR_NO_MEM);
  return MPI_ERR_NO_MEM;
}

// Blocking: `move` moves the packed bytes, then every part is unpacked.
template <class Move>
int run(const Exchange& x, MPI_Comm comm, Move move) {
  PackedArgs a;
  if (!pack_exchange(x, &a)) return no_memory(comm);
  int err = move(a);
  if (err == MPI_SUCCESS) unpack_parts(x.rparts, a.recv.data(), a.rd);
  return err;
}

// Nonblocking: `start` starts moving the packed bytes; when the request
// completes, completion.cpp unpacks the parts (Pending::parts).
template <class Start>
int start(const Exchange& x, MPI_Comm comm, MPI_Request* request, Start start_call) {
  auto args = std::make_unique<PackedArgs>();
  if (!pack_exchange(x, args.get())) return no_memory(comm);
  int err = start_call(*args, request);
  if (err != MPI_SUCCESS) return err;
  auto pending = std::make_unique<pi::Pending>();
  for (size_t i = 0; i < x.rparts.size(); ++i)
    if (x.rparts[i].base != nullptr)
      pending->parts.push_back({x.rparts[i].layout, const_cast<char*>(x.rparts[i].base), args->rd[i]});
  pending->receive = !pending->parts.empty();  // else completion only frees the staging
  pending->staging.swap(args->recv);
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
// go through `packed` (the int-count form: byte counts fit an int).
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
    return packed(a.send.data(), a.sc.data(), a.sd.data(), MPI_PACKED, a.recv.data(), a.rc.data(), a.rd.data(),
                  MPI_PACKED, comm);
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
    return packed(a.send.data(), a.sc.data(), a.sd.data(), MPI_PACKED, a.recv.data(), a.rc.data(), a.rd.data(),
                  MPI_PACKED, comm, r);
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
    return packed(a.send.data(), a.sc.data(), a.sdispls<PD>(), a.stypes.data(), a.recv.data(), a.rc.data(),
                  a.rdispls<PD>(), a.rtypes.data(), comm);
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
    return packed(a.send.data(), a.sc.data(), a.sdispls<PD>(), a.stypes.data(), a.recv.data(), a.rc.data(),
                  a.rdispls<PD>(), a.rtypes.data(), comm, r);
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
