#include "datatype/measure.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/mpi_check.hpp"
#include "datatype/engine.hpp"
#include "datatype/pack_host.hpp"

namespace pyhpc::datatype {

namespace {

template <class F>
double median_seconds(int reps, F&& call) {
  using clock = std::chrono::steady_clock;
  call();  // warm-up: caches, page faults
  std::vector<double> t(static_cast<size_t>(reps));
  for (double& s : t) {
    const auto t0 = clock::now();
    call();
    s = std::chrono::duration<double>(clock::now() - t0).count();
  }
  std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
  return t[static_cast<size_t>(reps / 2)];
}

}  // namespace

pyhpc_status measure_pack(const std::vector<int64_t>& blocks, int64_t total, int reps,
                          std::vector<PackTiming>* out) {
  if (total <= 0 || total > (int64_t{1} << 30))
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "total must be in (0, 1 GiB], got %lld",
                      static_cast<long long>(total));
  if (reps < 1) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "reps must be >= 1, got %d", reps);
  out->clear();
  std::vector<char> strided(static_cast<size_t>(2 * total)), packed(static_cast<size_t>(total));
  for (size_t i = 0; i < strided.size(); ++i) strided[i] = static_cast<char>(i * 131 + 7);
  for (int64_t block : blocks) {
    if (block <= 0 || block > total)
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "block %lld is not in [1, total]",
                        static_cast<long long>(block));
    const int count = static_cast<int>(total / block);
    MPI_Datatype type;
    PYHPC_MPI_CHECK(PMPI_Type_vector(count, static_cast<int>(block), static_cast<int>(2 * block),
                                     MPI_BYTE, &type));
    PYHPC_MPI_CHECK(PMPI_Type_commit(&type));
    Canonical c;
    pyhpc_status s = canonicalize(type, &c);
    Strided layout;
    if (s == PYHPC_OK) s = layout_for(c, 1, &layout);
    if (s != PYHPC_OK) {
      PMPI_Type_free(&type);
      return s;
    }
    const int size = static_cast<int>(layout.size());
    int rc = MPI_SUCCESS;
    const double system_pack = median_seconds(reps, [&] {
      int position = 0;
      rc |= PMPI_Pack(strided.data(), 1, type, packed.data(), size, &position, MPI_COMM_SELF);
    });
    const double pyhpc_pack = median_seconds(reps, [&] { pack_host(layout, strided.data(), packed.data()); });
    const double system_unpack = median_seconds(reps, [&] {
      int position = 0;
      rc |= PMPI_Unpack(packed.data(), size, &position, strided.data(), 1, type, MPI_COMM_SELF);
    });
    const double pyhpc_unpack = median_seconds(reps, [&] { unpack_host(layout, packed.data(), strided.data()); });
    PMPI_Type_free(&type);
    if (rc != MPI_SUCCESS) return PYHPC_FAIL(PYHPC_ERR_MPI, "MPI_Pack/Unpack failed while measuring");
    out->push_back({"pack", block, pyhpc_pack, system_pack});
    out->push_back({"unpack", block, pyhpc_unpack, system_unpack});
  }
  return PYHPC_OK;
}

}  // namespace pyhpc::datatype
