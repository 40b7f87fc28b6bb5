#include "datatype/pack_host.hpp"

#include <cstring>

namespace pyhpc::datatype {

namespace {

// One innermost loop: n runs of `block` bytes, `stride` apart, to or from
// consecutive packed bytes. kBlock > 0 makes the block size a compile-time
// constant, so each memcpy becomes one load and one store; kBlock == 0 copies
// a runtime size. Index-based addressing lets the compiler unroll the loop.
template <bool kPack, int64_t kBlock>
inline char* row(char* p, int64_t n, int64_t stride, char* packed, int64_t block) {
  const int64_t b = kBlock > 0 ? kBlock : block;
  for (int64_t i = 0; i < n; ++i) {
    char* q = p + i * stride;
    char* r = packed + i * b;
    if (kPack) std::memcpy(r, q, static_cast<size_t>(b));
    else std::memcpy(q, r, static_cast<size_t>(b));
  }
  return packed + n * b;
}

template <bool kPack, int64_t kBlock>
void walk(const Strided& s, char* base, char* packed) {
  char* p = base + s.offset;
  const int64_t* c = s.count;
  const int64_t* st = s.stride;
  const int inner = s.ndims - 1;  // ndims >= 1 here
  switch (s.ndims) {
    case 1:
      row<kPack, kBlock>(p, c[0], st[0], packed, s.block);
      return;
    case 2:
      for (int64_t i = 0; i < c[0]; ++i)
        packed = row<kPack, kBlock>(p + i * st[0], c[1], st[1], packed, s.block);
      return;
    case 3:
      for (int64_t i = 0; i < c[0]; ++i)
        for (int64_t j = 0; j < c[1]; ++j)
          packed = row<kPack, kBlock>(p + i * st[0] + j * st[1], c[2], st[2], packed, s.block);
      return;
    default: {
      // Odometer over the outer ndims-1 dimensions, one row inside.
      int64_t idx[kMaxDims] = {};
      for (;;) {
        char* q = p;
        for (int d = 0; d < inner; ++d) q += idx[d] * st[d];
        packed = row<kPack, kBlock>(q, c[inner], st[inner], packed, s.block);
        int d = inner - 1;
        while (d >= 0 && ++idx[d] == c[d]) idx[d--] = 0;
        if (d < 0) return;
      }
    }
  }
}

template <bool kPack>
void run(const Strided& s, char* base, char* packed) {
  if (s.block == 0) return;
  if (s.ndims == 0) {  // one contiguous run
    if (kPack) std::memcpy(packed, base + s.offset, static_cast<size_t>(s.block));
    else std::memcpy(base + s.offset, packed, static_cast<size_t>(s.block));
    return;
  }
  switch (s.block) {
    case 1: return walk<kPack, 1>(s, base, packed);
    case 2: return walk<kPack, 2>(s, base, packed);
    case 4: return walk<kPack, 4>(s, base, packed);
    case 8: return walk<kPack, 8>(s, base, packed);
    case 16: return walk<kPack, 16>(s, base, packed);
    default: return walk<kPack, 0>(s, base, packed);
  }
}

}  // namespace

void pack_host(const Strided& layout, const char* base, char* packed) {
  run<true>(layout, const_cast<char*>(base), packed);  // pack only reads through base
}

void unpack_host(const Strided& layout, const char* packed, char* base) {
  run<false>(layout, base, const_cast<char*>(packed));  // unpack only reads through packed
}

void unpack_host_prefix(const Strided& s, const char* packed, int64_t nbytes, char* base) {
  if (nbytes >= s.size()) return unpack_host(s, packed, base);
  if (nbytes <= 0 || s.block == 0) return;
  // Rare path (a short message): a plain odometer over every run, no specialisation.
  int64_t idx[kMaxDims] = {};
  while (nbytes > 0) {
    char* q = base + s.offset;
    for (int d = 0; d < s.ndims; ++d) q += idx[d] * s.stride[d];
    const int64_t n = nbytes < s.block ? nbytes : s.block;
    std::memcpy(q, packed, static_cast<size_t>(n));
    packed += n;
    nbytes -= n;
    int d = s.ndims - 1;
    while (d >= 0 && ++idx[d] == s.count[d]) idx[d--] = 0;
    if (d < 0) return;
  }
}

void byte_span(const Strided& s, int64_t* lo, int64_t* hi) {
  if (s.block == 0) {
    *lo = *hi = 0;
    return;
  }
  int64_t a = s.offset, b = s.offset + s.block;
  for (int d = 0; d < s.ndims; ++d) {
    const int64_t reach = (s.count[d] - 1) * s.stride[d];
    if (reach < 0) a += reach; else b += reach;
  }
  *lo = a;
  *hi = b;
}

}  // namespace pyhpc::datatype
