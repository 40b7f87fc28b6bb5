#include "bench/memcpy_limit.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "bench/buffer.hpp"

namespace pyhpc::bench {

pyhpc_status memcpy_seconds(size_t nbytes, int warmup, int reps, std::vector<double>* seconds) {
  if (nbytes == 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "nbytes must be > 0");
  if (warmup < 0 || reps < 1)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "warmup must be >= 0 and reps >= 1, got %d, %d", warmup, reps);
  Buffer src = make_buffer(nbytes, 0), dst = make_buffer(nbytes, 0);
  if (!src || !dst) return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "cannot allocate 2 x %zu bytes", nbytes);
  for (size_t i = 0; i < nbytes; ++i) src.get()[i] = static_cast<char>(i * 7 + 1);
  // About 64 KiB of copying per repetition, so the clock's cost does not count.
  const size_t batch = std::max<size_t>(1, std::min<size_t>(4096, (size_t{64} << 10) / nbytes));
  seconds->assign(static_cast<size_t>(reps), 0.0);
  using clock = std::chrono::steady_clock;
  for (int r = -warmup; r < reps; ++r) {
    const auto t0 = clock::now();
    for (size_t b = 0; b < batch; ++b) {
      std::memcpy(dst.get(), src.get(), nbytes);
      asm volatile("" : : "r"(dst.get()) : "memory");  // each copy must happen
    }
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (r >= 0) (*seconds)[static_cast<size_t>(r)] = dt / static_cast<double>(batch);
  }
  if (std::memcmp(dst.get(), src.get(), nbytes) != 0)
    return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "memcpy limit: the copy did not arrive");
  return PYHPC_OK;
}

}  // namespace pyhpc::bench
