// A staging buffer the interposer owns while a message is in flight: plain
// host memory for host buffers, and for device buffers pinned host memory (the
// GPU's kernels write it directly) or device memory. It frees itself the way
// it was allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "datatype/strided.hpp"

namespace pyhpc::interpose {

class Staging {
 public:
  enum class Kind { kHost, kPinned, kDevice };

  Staging() = default;
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() { release(); }

  // Allocates `bytes` of `kind`; false if the allocation failed (then empty).
  bool allocate(Kind kind, size_t bytes);
  char* data() const { return data_; }
  void swap(Staging& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(kind_, other.kind_);
  }
  Kind kind() const { return kind_; }

 private:
  void release();
  char* data_ = nullptr;
  Kind kind_ = Kind::kHost;
};

// One part of an exchange packed into a staging buffer with others (an
// all-to-all side, one part per peer): `layout` at `base` in the user's memory,
// its packed bytes at `offset` in the staging.
struct StagedPart {
  datatype::Strided layout;
  char* base = nullptr;
  int64_t offset = 0;
};

}  // namespace pyhpc::interpose
