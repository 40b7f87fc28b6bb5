#include "datatype/pack_host.hpp"

#include <cstring>

namespace pyhpc::datatype {

namespace {

// kBlock > 0: the block size is a compile-time constant and memcpy becomes a
// single load/store; kBlock == 0: runtime size.
template <bool kPack, int64_t kBlock>
struct Mover {
  int64_t block;
  char* packed;
  inline void operator()(char* strided) {
    const int64_t n = kBlock > 0 ? kBlock : block;
    if (kPack) std::memcpy(packed, strided, static_cast<size_t>(n));
    else std::memcpy(strided, packed, static_cast<size_t>(n));
    packed += n;
  }
};

template <class Move>
void walk(const Strided& s, char* base, Move move) {
  char* p = base + s.offset;
  const int64_t* c = s.count;
  const int64_t* st = s.stride;
  switch (s.ndims) {
    case 0:
      move(p);
      return;
    case 1:
      for (int64_t i = 0; i < c[0]; ++i) move(p + i * st[0]);
      return;
    case 2:
      for (int64_t i = 0; i < c[0]; ++i) {
        char* q = p + i * st[0];
        for (int64_t j = 0; j < c[1]; ++j) move(q + j * st[1]);
      }
      return;
    case 3:
      for (int64_t i = 0; i < c[0]; ++i)
        for (int64_t j = 0; j < c[1]; ++j) {
          char* q = p + i * st[0] + j * st[1];
          for (int64_t k = 0; k < c[2]; ++k) move(q + k * st[2]);
        }
      return;
    default: {
      // Odometer over the outer ndims-1 dimensions, a plain loop inside.
      const int outer = s.ndims - 1;
      int64_t idx[kMaxDims] = {};
      for (;;) {
        char* q = p;
        for (int d = 0; d < outer; ++d) q += idx[d] * st[d];
        for (int64_t k = 0; k < c[outer]; ++k) move(q + k * st[outer]);
        int d = outer - 1;
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
    case 1: return walk(s, base, Mover<kPack, 1>{1, packed});
    case 2: return walk(s, base, Mover<kPack, 2>{2, packed});
    case 4: return walk(s, base, Mover<kPack, 4>{4, packed});
    case 8: return walk(s, base, Mover<kPack, 8>{8, packed});
    case 16: return walk(s, base, Mover<kPack, 16>{16, packed});
    default: return walk(s, base, Mover<kPack, 0>{s.block, packed});
  }
}

}  // namespace

void pack_host(const Strided& layout, const char* base, char* packed) {
  run<true>(layout, const_cast<char*>(base), packed);  // pack only reads through base
}

void unpack_host(const Strided& layout, const char* packed, char* base) {
  run<false>(layout, base, const_cast<char*>(packed));  // unpack only reads through packed
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
