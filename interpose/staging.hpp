// A staging buffer the interposer owns while a message is in flight: plain
// host memory for host buffers, and for device buffers pinned host memory (the
// GPU's kernels write it directly) or device memory. It frees itself the way
// it was allocated.
#pragma once

#include <cstddef>
#include <utility>

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

}  // namespace pyhpc::interpose
