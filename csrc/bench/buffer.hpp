// Benchmark buffers placed the way numpy places the arrays of the Python
// baselines they are compared with (64-byte aligned; from 4 MiB up, the pages
// inside advised to be transparent huge pages, as numpy's allocator does), so
// a difference in time is the cost of the code, not of where memory came from.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>

namespace pyhpc::bench {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, FreeDeleter>;

// nbytes (at least 1) filled with `fill`, every page faulted in; null if out of memory.
Buffer make_buffer(size_t nbytes, int fill);

}  // namespace pyhpc::bench
