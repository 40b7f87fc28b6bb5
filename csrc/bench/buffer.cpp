#include "bench/buffer.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace pyhpc::bench {

Buffer make_buffer(size_t nbytes, int fill) {
  const size_t size = (std::max<size_t>(nbytes, 1) + 63) / 64 * 64;  // aligned_alloc wants a multiple
  char* p = static_cast<char*>(std::aligned_alloc(64, size));
  if (p == nullptr) return Buffer();
#ifdef MADV_HUGEPAGE
  constexpr size_t kPage = 4096;
  if (nbytes >= (size_t{4} << 20)) {
    const uintptr_t first = (reinterpret_cast<uintptr_t>(p) + kPage - 1) / kPage * kPage;
    madvise(reinterpret_cast<void*>(first), nbytes - (first - reinterpret_cast<uintptr_t>(p)),
            MADV_HUGEPAGE);
  }
#endif
  std::memset(p, fill, size);  // fault every page in before timing
  return Buffer(p);
}

}  // namespace pyhpc::bench
