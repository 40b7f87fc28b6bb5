// All-to-all exchanges of derived datatypes: where pyhpc's engine serves the
// types, each peer's part is packed into one contiguous staging buffer and the
// system MPI moves MPI_PACKED bytes (counts and displacements in bytes), then
// each received part is unpacked. Intercommunicators, MPI_IN_PLACE, a mix of
// served and unserved types, or counts that do not fit go to the system MPI.
#include <limits>
#include <memory>
#include <vector>

#include "datatype/pack_host.hpp"
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

using VFn = int (*)(const void*, const int[], const int[], MPI_Datatype, void*, const int[], const int[],
                    MPI_Datatype, MPI_Comm);

// Alltoallv and Neighbor_alltoallv share everything but the peer counts.
int alltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[], MPI_Datatype sendtype,
              void* recvbuf, const int recvcounts[], const int rdispls[], MPI_Datatype recvtype,
              MPI_Comm comm, int nsend, int nrecv, pi::Call call, VFn system) {
  MPI_Aint lb = 0, sext = 0, rext = 0;
  std::vector<Part> sparts, rparts;
  int64_t stotal = 0, rtotal = 0;
  const bool served =
      sendbuf != MPI_IN_PLACE && sendbuf != nullptr && recvbuf != nullptr && nsend >= 0 && nrecv >= 0 &&
      PMPI_Type_get_extent(sendtype, &lb, &sext) == MPI_SUCCESS &&
      PMPI_Type_get_extent(recvtype, &lb, &rext) == MPI_SUCCESS &&
      plan("pack", sendbuf, nsend, sendcounts, sdispls, &sendtype, true, &sext, comm, &sparts, &stotal) &&
      plan("unpack", recvbuf, nrecv, recvcounts, rdispls, &recvtype, true, &rext, comm, &rparts, &rtotal);
  pi::count(call, served);
  if (!served)
    return system(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm);
  std::unique_ptr<char[]> sstage(new char[static_cast<size_t>(stotal)]);
  std::unique_ptr<char[]> rstage(new char[static_cast<size_t>(rtotal)]);
  std::vector<int> sc, sd, rc, rd;
  pack_parts(sparts, sstage.get(), &sc, &sd);
  receive_layout(rparts, &rc, &rd);
  int err = system(sstage.get(), sc.data(), sd.data(), MPI_PACKED, rstage.get(), rc.data(), rd.data(),
                   MPI_PACKED, comm);
  if (err == MPI_SUCCESS) unpack_parts(rparts, rstage.get(), rd);
  return err;
}

}  // namespace

PYHPC_EXPORT int MPI_Alltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[],
                               MPI_Datatype sendtype, void* recvbuf, const int recvcounts[],
                               const int rdispls[], MPI_Datatype recvtype, MPI_Comm comm) {
  int size = -1;
  if (!intracomm_size(comm, &size)) {
    pi::count(pi::kAlltoallv);
    return PMPI_Alltoallv(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm);
  }
  return alltoallv(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                   size, size, pi::kAlltoallv, PMPI_Alltoallv);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallv(const void* sendbuf, const int sendcounts[], const int sdispls[],
                                        MPI_Datatype sendtype, void* recvbuf, const int recvcounts[],
                                        const int rdispls[], MPI_Datatype recvtype, MPI_Comm comm) {
  int indegree = -1, outdegree = -1;
  if (comm == MPI_COMM_NULL || neighbor_counts(comm, &indegree, &outdegree) != MPI_SUCCESS) {
    pi::count(pi::kNeighborAlltoallv);
    return PMPI_Neighbor_alltoallv(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls,
                                   recvtype, comm);
  }
  return alltoallv(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm,
                   outdegree, indegree, pi::kNeighborAlltoallv, PMPI_Neighbor_alltoallv);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallw(const void* sendbuf, const int sendcounts[], const MPI_Aint sdispls[],
                                        const MPI_Datatype sendtypes[], void* recvbuf, const int recvcounts[],
                                        const MPI_Aint rdispls[], const MPI_Datatype recvtypes[],
                                        MPI_Comm comm) {
  int indegree = -1, outdegree = -1;
  std::vector<Part> sparts, rparts;
  int64_t stotal = 0, rtotal = 0;
  bool served = comm != MPI_COMM_NULL && sendbuf != MPI_IN_PLACE && sendbuf != nullptr &&
                recvbuf != nullptr && neighbor_counts(comm, &indegree, &outdegree) == MPI_SUCCESS;
  if (served) {
    // Byte displacements: convert to the int form plan() takes when they fit.
    std::vector<int> sd(static_cast<size_t>(outdegree)), rd(static_cast<size_t>(indegree));
    const MPI_Aint one = 1;
    std::vector<MPI_Aint> sunits(static_cast<size_t>(outdegree), one), runits(static_cast<size_t>(indegree), one);
    for (int i = 0; i < outdegree && served; ++i) {
      served = sdispls[i] >= 0 && sdispls[i] <= std::numeric_limits<int>::max();
      sd[static_cast<size_t>(i)] = static_cast<int>(sdispls[i]);
    }
    for (int i = 0; i < indegree && served; ++i) {
      served = rdispls[i] >= 0 && rdispls[i] <= std::numeric_limits<int>::max();
      rd[static_cast<size_t>(i)] = static_cast<int>(rdispls[i]);
    }
    served = served &&
             plan("pack", sendbuf, outdegree, sendcounts, sd.data(), sendtypes, false, sunits.data(), comm,
                  &sparts, &stotal) &&
             plan("unpack", recvbuf, indegree, recvcounts, rd.data(), recvtypes, false, runits.data(), comm,
                  &rparts, &rtotal);
  }
  pi::count(pi::kNeighborAlltoallw, served);
  if (!served)
    return PMPI_Neighbor_alltoallw(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls,
                                   recvtypes, comm);
  std::unique_ptr<char[]> sstage(new char[static_cast<size_t>(stotal)]);
  std::unique_ptr<char[]> rstage(new char[static_cast<size_t>(rtotal)]);
  std::vector<int> sc, sd, rc, rd;
  pack_parts(sparts, sstage.get(), &sc, &sd);
  receive_layout(rparts, &rc, &rd);
  std::vector<MPI_Aint> sdb(sd.begin(), sd.end()), rdb(rd.begin(), rd.end());
  std::vector<MPI_Datatype> stypes(sparts.size(), MPI_PACKED), rtypes(rparts.size(), MPI_PACKED);
  int err = PMPI_Neighbor_alltoallw(sstage.get(), sc.data(), sdb.data(), stypes.data(), rstage.get(),
                                    rc.data(), rdb.data(), rtypes.data(), comm);
  if (err == MPI_SUCCESS) unpack_parts(rparts, rstage.get(), rd);
  return err;
}

#if MPI_VERSION >= 4
// Large-count twins (mpi4py calls these under MPICH): served through the int
// path when every count and displacement fits an int, else left to the system.
namespace {
template <class C, class D>
bool narrow(int n, const C* counts, const D* displs, std::vector<int>* c, std::vector<int>* d) {
  if (n < 0 || counts == nullptr || displs == nullptr) return false;
  c->resize(static_cast<size_t>(n));
  d->resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (counts[i] < 0 || counts[i] > std::numeric_limits<int>::max() || displs[i] < 0 ||
        displs[i] > std::numeric_limits<int>::max())
      return false;
    (*c)[static_cast<size_t>(i)] = static_cast<int>(counts[i]);
    (*d)[static_cast<size_t>(i)] = static_cast<int>(displs[i]);
  }
  return true;
}
}  // namespace

PYHPC_EXPORT int MPI_Alltoallv_c(const void* sendbuf, const MPI_Count sendcounts[], const MPI_Aint sdispls[],
                                 MPI_Datatype sendtype, void* recvbuf, const MPI_Count recvcounts[],
                                 const MPI_Aint rdispls[], MPI_Datatype recvtype, MPI_Comm comm) {
  int size = -1;
  std::vector<int> sc, sd, rc, rd;
  if (sendbuf != MPI_IN_PLACE && intracomm_size(comm, &size) && narrow(size, sendcounts, sdispls, &sc, &sd) &&
      narrow(size, recvcounts, rdispls, &rc, &rd))
    return alltoallv(sendbuf, sc.data(), sd.data(), sendtype, recvbuf, rc.data(), rd.data(), recvtype, comm,
                     size, size, pi::kAlltoallv, PMPI_Alltoallv);
  pi::count(pi::kAlltoallv);
  return PMPI_Alltoallv_c(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls, recvtype, comm);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallv_c(const void* sendbuf, const MPI_Count sendcounts[],
                                          const MPI_Aint sdispls[], MPI_Datatype sendtype, void* recvbuf,
                                          const MPI_Count recvcounts[], const MPI_Aint rdispls[],
                                          MPI_Datatype recvtype, MPI_Comm comm) {
  int indegree = -1, outdegree = -1;
  std::vector<int> sc, sd, rc, rd;
  if (comm != MPI_COMM_NULL && sendbuf != MPI_IN_PLACE &&
      neighbor_counts(comm, &indegree, &outdegree) == MPI_SUCCESS &&
      narrow(outdegree, sendcounts, sdispls, &sc, &sd) && narrow(indegree, recvcounts, rdispls, &rc, &rd))
    return alltoallv(sendbuf, sc.data(), sd.data(), sendtype, recvbuf, rc.data(), rd.data(), recvtype, comm,
                     outdegree, indegree, pi::kNeighborAlltoallv, PMPI_Neighbor_alltoallv);
  pi::count(pi::kNeighborAlltoallv);
  return PMPI_Neighbor_alltoallv_c(sendbuf, sendcounts, sdispls, sendtype, recvbuf, recvcounts, rdispls,
                                   recvtype, comm);
}

PYHPC_EXPORT int MPI_Neighbor_alltoallw_c(const void* sendbuf, const MPI_Count sendcounts[],
                                          const MPI_Aint sdispls[], const MPI_Datatype sendtypes[],
                                          void* recvbuf, const MPI_Count recvcounts[], const MPI_Aint rdispls[],
                                          const MPI_Datatype recvtypes[], MPI_Comm comm) {
  int indegree = -1, outdegree = -1;
  std::vector<int> sc, sd, rc, rd;
  if (comm != MPI_COMM_NULL && neighbor_counts(comm, &indegree, &outdegree) == MPI_SUCCESS &&
      narrow(outdegree, sendcounts, sdispls, &sc, &sd) && narrow(indegree, recvcounts, rdispls, &rc, &rd)) {
    std::vector<MPI_Aint> sda(sdispls, sdispls + outdegree), rda(rdispls, rdispls + indegree);
    return MPI_Neighbor_alltoallw(sendbuf, sc.data(), sda.data(), sendtypes, recvbuf, rc.data(), rda.data(),
                                  recvtypes, comm);
  }
  pi::count(pi::kNeighborAlltoallw);
  return PMPI_Neighbor_alltoallw_c(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls,
                                   recvtypes, comm);
}
#endif
