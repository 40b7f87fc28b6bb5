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

// Seconds per call of MPI_Pack/MPI_Unpack and of pyhpc's engine for
// vector(count, block, stride) of MPI_BYTE over `strided`, packing into `packed`.
pyhpc_status time_vector(int64_t count, int64_t block, int64_t stride, int reps,
                         std::vector<char>* strided, std::vector<char>* packed, PackTiming* pack,
                         PackTiming* unpack) {
  MPI_Datatype type;
  PYHPC_MPI_CHECK(PMPI_Type_vector(static_cast<int>(count), static_cast<int>(block),
                                   static_cast<int>(stride), MPI_BYTE, &type));
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
  char* in = strided->data();
  char* out = packed->data();
  int rc = MPI_SUCCESS;
  pack->system_s = median_seconds(reps, [&] {
    int position = 0;
    rc |= PMPI_Pack(in, 1, type, out, size, &position, MPI_COMM_SELF);
  });
  pack->pyhpc_s = median_seconds(reps, [&] { pack_host(layout, in, out); });
  unpack->system_s = median_seconds(reps, [&] {
    int position = 0;
    rc |= PMPI_Unpack(out, size, &position, in, 1, type, MPI_COMM_SELF);
  });
  unpack->pyhpc_s = median_seconds(reps, [&] { unpack_host(layout, out, in); });
  PMPI_Type_free(&type);
  if (rc != MPI_SUCCESS) return PYHPC_FAIL(PYHPC_ERR_MPI, "MPI_Pack/Unpack failed while measuring");
  return PYHPC_OK;
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
    PackTiming pack{"pack", block, 0, 0}, unpack{"unpack", block, 0, 0};
    PYHPC_CHECK(time_vector(total / block, block, 2 * block, reps, &strided, &packed, &pack, &unpack));
    out->push_back(pack);
    out->push_back(unpack);
    if (block < kSparseStride && 2 * total >= kSparseStride + block) {
      // Short runs far apart: the engine's scalar loops, not its vector path.
      PackTiming sparse_pack{"pack-sparse", block, 0, 0}, sparse_unpack{"unpack-sparse", block, 0, 0};
      const int64_t stride = kSparseStride + block;
      PYHPC_CHECK(time_vector(2 * total / stride, block, stride, reps, &strided, &packed, &sparse_pack,
                              &sparse_unpack));
      const double scale = static_cast<double>(total / block) / static_cast<double>(2 * total / stride);
      sparse_pack.pyhpc_s *= scale;  // per `total` packed bytes, like the dense timing
      sparse_pack.system_s *= scale;
      sparse_unpack.pyhpc_s *= scale;
      sparse_unpack.system_s *= scale;
      out->push_back(sparse_pack);
      out->push_back(sparse_unpack);
    }
  }
  return PYHPC_OK;
}

}  // namespace pyhpc::datatype
