#include "datatype/pack_cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "cuda/check.hpp"
#include "datatype/engine.hpp"     // layout_for
#include "datatype/pack_host.hpp"  // byte_span

namespace pyhpc::datatype {

namespace {

constexpr int kThreads = 256;
// Grid cap per multiprocessor: 16 blocks of 256 threads is twice what one SM
// can hold at once, enough to keep every SM full; grid-stride loops cover the
// rest, so a huge layout does not become millions of tiny blocks.
constexpr int kBlocksPerSm = 16;

// The type one thread moves. Its size is also its alignment, which the caller
// guarantees for every address it is used at (see word_bytes).
template <int W> struct WordOf;
template <> struct WordOf<1> { using type = uint8_t; };
template <> struct WordOf<2> { using type = uint16_t; };
template <> struct WordOf<4> { using type = uint32_t; };
template <> struct WordOf<8> { using type = uint64_t; };
template <> struct WordOf<16> { using type = uint4; };

// Kernel arguments, by value (about 170 bytes; the limit is 4 KiB). Index is
// uint32_t whenever the word count allows it: 32-bit division, which the
// index decomposition is made of, costs a fraction of 64-bit division on GPUs.
template <typename Index>
struct Params {
  char* first;          // base + offset: the first byte of the first run
  char* packed;         // pack writes here, unpack reads (never written then)
  Index total;          // words to copy: runs * words_per_run
  Index words_per_run;  // block / W
  int ndims;            // read by the generic kernel only
  Index count[kMaxDims];
  int64_t stride[kMaxDims];
};

// Byte offset from `first` of run r, the r-th run in packing order: r written
// in the mixed radix of the counts, innermost dimension fastest, exactly the
// odometer order pack_host walks. The outermost index needs no modulo: r is
// below the number of runs, so what is left of it is below count[0].
template <int kDims, typename Index>
__device__ __forceinline__ int64_t run_offset(const Params<Index>& p, Index r) {
  if constexpr (kDims == 1) {
    return static_cast<int64_t>(r) * p.stride[0];
  } else if constexpr (kDims == 2) {
    const Index i0 = r / p.count[1];
    const Index i1 = r - i0 * p.count[1];
    return static_cast<int64_t>(i0) * p.stride[0] + static_cast<int64_t>(i1) * p.stride[1];
  } else if constexpr (kDims == 3) {
    const Index q = r / p.count[2];
    const Index i2 = r - q * p.count[2];
    const Index i0 = q / p.count[1];
    const Index i1 = q - i0 * p.count[1];
    return static_cast<int64_t>(i0) * p.stride[0] + static_cast<int64_t>(i1) * p.stride[1] +
           static_cast<int64_t>(i2) * p.stride[2];
  } else {  // any ndims in [1, kMaxDims]
    // Unrolled over every possible dimension, skipping those past ndims, so
    // count[d] and stride[d] have constant indices and stay in the parameter
    // space instead of a copy of the parameters in local memory.
    int64_t off = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d > 0; --d) {
      if (d < p.ndims) {
        const Index q = r / p.count[d];
        off += static_cast<int64_t>(r - q * p.count[d]) * p.stride[d];
        r = q;
      }
    }
    return off + static_cast<int64_t>(r) * p.stride[0];
  }
}

// One thread per W-byte word: packed word i is word (i % words_per_run) of run
// (i / words_per_run). Consecutive threads touch consecutive packed words and,
// within a run, consecutive strided words, so both sides coalesce when blocks
// are long and the packed side always does.
template <bool kPack, int W, int kDims, typename Index>
__global__ void __launch_bounds__(kThreads) strided_copy(const Params<Index> p) {
  using Word = typename WordOf<W>::type;
  Word* const packed = reinterpret_cast<Word*>(p.packed);
  const Index step = static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x);
  for (Index i = static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + threadIdx.x;
       i < p.total; i += step) {
    const Index r = i / p.words_per_run;
    const Index w = i - r * p.words_per_run;
    Word* const strided = reinterpret_cast<Word*>(p.first + run_offset<kDims>(p, r)) + w;
    if constexpr (kPack) packed[i] = *strided;
    else *strided = packed[i];
  }
}

// The widest word (16, 8, 4, 2, 1 bytes) dividing the block, the first byte's
// address, the packed buffer's address and every stride that is walked: then
// every run starts W-aligned on the strided side (first + sum of strides) and
// on the packed side (packed + r * block), and a run is a whole number of
// words. A negative stride has the same low bits as its magnitude in two's
// complement, so the mask test holds for it too.
int word_bytes(const Strided& s, const char* first, const char* packed) {
  uint64_t bits = static_cast<uint64_t>(s.block) | static_cast<uint64_t>(reinterpret_cast<uintptr_t>(first)) |
                  static_cast<uint64_t>(reinterpret_cast<uintptr_t>(packed));
  for (int d = 0; d < s.ndims; ++d) {
    if (s.count[d] > 1) bits |= static_cast<uint64_t>(s.stride[d]);  // a stride never taken cannot misalign
  }
  int w = 16;
  while (w > 1 && (bits & static_cast<uint64_t>(w - 1)) != 0) w /= 2;
  return w;
}

template <bool kPack, int W, typename Index>
pyhpc_status launch(const Strided& s, char* first, char* packed, int64_t total, int max_grid,
                    cudaStream_t stream) {
  Params<Index> p{};
  p.first = first;
  p.packed = packed;
  p.total = static_cast<Index>(total);
  p.words_per_run = static_cast<Index>(s.block / W);
  p.ndims = s.ndims;
  for (int d = 0; d < s.ndims; ++d) {
    p.count[d] = static_cast<Index>(s.count[d]);  // each count <= runs <= total: fits Index
    p.stride[d] = s.stride[d];
  }
  const int grid = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, max_grid));
  switch (s.ndims) {
    case 1: strided_copy<kPack, W, 1, Index><<<grid, kThreads, 0, stream>>>(p); break;
    case 2: strided_copy<kPack, W, 2, Index><<<grid, kThreads, 0, stream>>>(p); break;
    case 3: strided_copy<kPack, W, 3, Index><<<grid, kThreads, 0, stream>>>(p); break;
    default: strided_copy<kPack, W, 0, Index><<<grid, kThreads, 0, stream>>>(p); break;
  }
  // A launch reports configuration errors (bad stream, no device, no kernel
  // image for this GPU) only through the runtime's last error.
  PYHPC_CUDA_CHECK(cudaGetLastError());
  return PYHPC_OK;
}

template <bool kPack, typename Index>
pyhpc_status launch_word(int w, const Strided& s, char* first, char* packed, int64_t total,
                         int max_grid, cudaStream_t stream) {
  switch (w) {
    case 16: return launch<kPack, 16, Index>(s, first, packed, total, max_grid, stream);
    case 8: return launch<kPack, 8, Index>(s, first, packed, total, max_grid, stream);
    case 4: return launch<kPack, 4, Index>(s, first, packed, total, max_grid, stream);
    case 2: return launch<kPack, 2, Index>(s, first, packed, total, max_grid, stream);
    default: return launch<kPack, 1, Index>(s, first, packed, total, max_grid, stream);
  }
}

// Checks what the kernels assume of a layout handed to the raw entry points
// and returns its size in *size (0: nothing to copy).
pyhpc_status check_layout(const Strided& s, int64_t* size) {
  if (s.ndims < 0 || s.ndims > kMaxDims)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "layout: ndims must be in [0, %d], got %d", kMaxDims,
                      s.ndims);
  if (s.block < 0)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "layout: block must be >= 0, got %" PRId64, s.block);
  int64_t n = s.block;
  for (int d = 0; d < s.ndims; ++d) {
    if (s.count[d] < 0)
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "layout: count[%d] must be >= 0, got %" PRId64, d,
                        s.count[d]);
    if (s.count[d] == 0) n = 0;
  }
  if (n == 0) {
    *size = 0;
    return PYHPC_OK;
  }
  for (int d = 0; d < s.ndims; ++d) {
    if (n > std::numeric_limits<int64_t>::max() / s.count[d])
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "layout: its size overflows 64 bits (%s)",
                        s.describe().c_str());
    n *= s.count[d];
  }
  *size = n;
  return PYHPC_OK;
}

template <bool kPack>
pyhpc_status run(const Strided& s, char* base, char* packed, cudaStream_t stream) {
  int64_t size = 0;
  PYHPC_CHECK(check_layout(s, &size));
  if (size == 0) return PYHPC_OK;
  if (base == nullptr || packed == nullptr)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "%s is null but the layout holds %" PRId64 " bytes",
                      base == nullptr ? "base" : "packed", size);
  char* first = base + s.offset;
  if (s.ndims == 0) {  // one contiguous run: the copy engine does it best
    char* dst = kPack ? packed : first;
    const char* src = kPack ? first : packed;
    PYHPC_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(size), cudaMemcpyDefault, stream));
    return PYHPC_OK;
  }
  int device = 0, sms = 0;
  PYHPC_CUDA_CHECK(cudaGetDevice(&device));
  PYHPC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int max_grid = std::max(sms, 1) * kBlocksPerSm;
  // Forget an error an earlier, already reported call left behind, so the
  // check after the launch speaks only of this launch.
  (void)cudaGetLastError();
  const int w = word_bytes(s, first, packed);
  const int64_t total = size / w;
  // 32-bit indices while the grid-stride loop cannot wrap: i < total, and the
  // last increment adds at most one grid of threads.
  const int64_t grid_threads = static_cast<int64_t>(max_grid) * kThreads;
  if (total + grid_threads <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()))
    return launch_word<kPack, uint32_t>(w, s, first, packed, total, max_grid, stream);
  return launch_word<kPack, uint64_t>(w, s, first, packed, total, max_grid, stream);
}

// The address through which the current device reaches `p`, or an error
// naming the argument when it cannot. Device memory must be the current
// device's own: the kernels run there and peer access may not be enabled.
pyhpc_status device_address(const void* p, const char* name, int device, char** out) {
  if (p == nullptr) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "%s: null pointer", name);
  cudaPointerAttributes a{};
  PYHPC_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
  switch (a.type) {
    case cudaMemoryTypeDevice:
      if (a.device != device)
        return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                          "%s: memory of device %d, but the current device (where the kernels run) is %d",
                          name, a.device, device);
      *out = static_cast<char*>(const_cast<void*>(p));
      return PYHPC_OK;
    case cudaMemoryTypeManaged:
      *out = static_cast<char*>(const_cast<void*>(p));
      return PYHPC_OK;
    case cudaMemoryTypeHost:
      if (a.devicePointer == nullptr)
        return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                          "%s: pinned host memory that is not mapped into device %d's address space",
                          name, device);
      *out = static_cast<char*>(a.devicePointer);
      return PYHPC_OK;
    default:
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                        "%s: pageable host memory; the GPU engine needs device, managed or pinned "
                        "(page-locked) host memory",
                        name);
  }
}

}  // namespace

// pack only reads through base and unpack only reads through packed: the
// const_casts let both directions share one kernel.
pyhpc_status pack_device(const Strided& layout, const void* base, void* packed, cudaStream_t stream) {
  return run<true>(layout, static_cast<char*>(const_cast<void*>(base)), static_cast<char*>(packed), stream);
}

pyhpc_status unpack_device(const Strided& layout, const void* packed, void* base, cudaStream_t stream) {
  return run<false>(layout, static_cast<char*>(base), static_cast<char*>(const_cast<void*>(packed)), stream);
}

pyhpc_status pack_device(const Canonical& type, int64_t count, const void* buf, int64_t buf_len,
                         void* out, int64_t out_len, cudaStream_t stream) {
  Strided s;
  PYHPC_CHECK(layout_for(type, count, &s));
  PYHPC_CHECK(check_span(s, buf_len, "buf"));
  if (out_len < s.size())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "out: %" PRId64 " bytes needed, buffer has %" PRId64,
                      s.size(), out_len);
  // Nothing to copy: no CUDA call at all, so empty (even null) buffers work.
  if (s.size() == 0) return PYHPC_OK;
  int device = 0;
  PYHPC_CUDA_CHECK(cudaGetDevice(&device));
  char *src = nullptr, *dst = nullptr;
  PYHPC_CHECK(device_address(buf, "buf", device, &src));
  PYHPC_CHECK(device_address(out, "out", device, &dst));
  PYHPC_CHECK(pack_device(s, src, dst, stream));
  return PYHPC_OK;
}

pyhpc_status unpack_device(const Canonical& type, int64_t count, const void* packed,
                           int64_t packed_len, void* buf, int64_t buf_len, cudaStream_t stream) {
  Strided s;
  PYHPC_CHECK(layout_for(type, count, &s));
  PYHPC_CHECK(check_span(s, buf_len, "buf"));
  if (packed_len < s.size())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "packed: %" PRId64 " bytes needed, buffer has %" PRId64,
                      s.size(), packed_len);
  if (s.size() == 0) return PYHPC_OK;
  int device = 0;
  PYHPC_CUDA_CHECK(cudaGetDevice(&device));
  char *src = nullptr, *dst = nullptr;
  PYHPC_CHECK(device_address(packed, "packed", device, &src));
  PYHPC_CHECK(device_address(buf, "buf", device, &dst));
  PYHPC_CHECK(unpack_device(s, src, dst, stream));
  return PYHPC_OK;
}

}  // namespace pyhpc::datatype
