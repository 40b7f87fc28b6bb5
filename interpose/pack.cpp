// MPI_Pack / MPI_Unpack (and their MPI 4 large-count twins, which mpi4py calls
// whenever the MPI has them) through pyhpc's host engine when the type has a
// canonical form, the buffers are host memory, every argument is valid and the
// engine wins for this block size; otherwise straight to the system MPI, which
// then also reports any error exactly as it would without the interposer.
#include <cstdint>

#include "datatype/pack_host.hpp"
#include "interpose/state.hpp"

namespace pi = pyhpc::interpose;
namespace dt = pyhpc::datatype;

namespace {

using pi::engine_layout;

template <class Count>
int pack(const void* inbuf, Count incount, MPI_Datatype type, void* outbuf, Count outsize,
         Count* position, MPI_Comm comm, int (*system)(const void*, Count, MPI_Datatype, void*, Count,
                                                       Count*, MPI_Comm)) {
  dt::Strided layout;
  if (position != nullptr && inbuf != nullptr && outbuf != nullptr && *position >= 0 &&
      engine_layout("pack", inbuf, outbuf, incount, type, comm, &layout) &&
      layout.size() <= static_cast<int64_t>(outsize) - static_cast<int64_t>(*position)) {
    dt::pack_host(layout, static_cast<const char*>(inbuf), static_cast<char*>(outbuf) + *position);
    *position += static_cast<Count>(layout.size());
    pi::count(pi::kPack, true);
    return MPI_SUCCESS;
  }
  pi::count(pi::kPack);
  return system(inbuf, incount, type, outbuf, outsize, position, comm);
}

template <class Count>
int unpack(const void* inbuf, Count insize, Count* position, void* outbuf, Count outcount,
           MPI_Datatype type, MPI_Comm comm, int (*system)(const void*, Count, Count*, void*, Count,
                                                           MPI_Datatype, MPI_Comm)) {
  dt::Strided layout;
  if (position != nullptr && inbuf != nullptr && outbuf != nullptr && *position >= 0 &&
      engine_layout("unpack", outbuf, inbuf, outcount, type, comm, &layout) &&
      layout.size() <= static_cast<int64_t>(insize) - static_cast<int64_t>(*position)) {
    dt::unpack_host(layout, static_cast<const char*>(inbuf) + *position, static_cast<char*>(outbuf));
    *position += static_cast<Count>(layout.size());
    pi::count(pi::kUnpack, true);
    return MPI_SUCCESS;
  }
  pi::count(pi::kUnpack);
  return system(inbuf, insize, position, outbuf, outcount, type, comm);
}

}  // namespace

PYHPC_EXPORT int MPI_Pack(const void* inbuf, int incount, MPI_Datatype type, void* outbuf,
                          int outsize, int* position, MPI_Comm comm) {
  return pack<int>(inbuf, incount, type, outbuf, outsize, position, comm, PMPI_Pack);
}

PYHPC_EXPORT int MPI_Unpack(const void* inbuf, int insize, int* position, void* outbuf,
                            int outcount, MPI_Datatype type, MPI_Comm comm) {
  return unpack<int>(inbuf, insize, position, outbuf, outcount, type, comm, PMPI_Unpack);
}

PYHPC_EXPORT int MPI_Pack_size(int incount, MPI_Datatype type, MPI_Comm comm, int* size) {
  pi::count(pi::kPackSize);  // the system's bound: pyhpc packs exactly the type's size
  return PMPI_Pack_size(incount, type, comm, size);
}

#if MPI_VERSION >= 4
PYHPC_EXPORT int MPI_Pack_c(const void* inbuf, MPI_Count incount, MPI_Datatype type, void* outbuf,
                            MPI_Count outsize, MPI_Count* position, MPI_Comm comm) {
  return pack<MPI_Count>(inbuf, incount, type, outbuf, outsize, position, comm, PMPI_Pack_c);
}

PYHPC_EXPORT int MPI_Unpack_c(const void* inbuf, MPI_Count insize, MPI_Count* position, void* outbuf,
                              MPI_Count outcount, MPI_Datatype type, MPI_Comm comm) {
  return unpack<MPI_Count>(inbuf, insize, position, outbuf, outcount, type, comm, PMPI_Unpack_c);
}

PYHPC_EXPORT int MPI_Pack_size_c(MPI_Count incount, MPI_Datatype type, MPI_Comm comm, MPI_Count* size) {
  pi::count(pi::kPackSize);
  return PMPI_Pack_size_c(incount, type, comm, size);
}
#endif
