#include "datatype/pack_host.hpp"

#include <atomic>
#include <cstdint>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define PYHPC_PACK_X86 1
#include <immintrin.h>
#else
#define PYHPC_PACK_X86 0
#endif

namespace pyhpc::datatype {

namespace {

// ---- scalar rows ---------------------------------------------------------------

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

// Runs of a size with no specialisation, up to kInlineRunMax bytes, on any
// CPU: fixed-size moves, the last one overlapping the one before (a 3-byte
// run is two 2-byte moves), so no run costs a memcpy call. Every move stays
// inside the run, so nothing outside it is read or written.
constexpr int64_t kInlineRunMax = 256;

// One run of b bytes, kWidth <= b (< 2 * kWidth unless kWidth is 16): moves
// of kWidth from the start, then one ending at b.
template <int kWidth>
inline void copy_run(char* to, const char* from, int64_t b) {
  if (kWidth == 16) {
    for (int64_t o = 0; o + 16 < b; o += 16) std::memcpy(to + o, from + o, 16);
  } else {
    std::memcpy(to, from, kWidth);
  }
  std::memcpy(to + b - kWidth, from + b - kWidth, kWidth);
}

template <bool kPack, int kWidth>
char* inline_row(char* p, int64_t n, int64_t stride, char* packed, int64_t b) {
  for (int64_t i = 0; i < n; ++i, p += stride, packed += b) {
    if (kPack) copy_run<kWidth>(packed, p, b);
    else copy_run<kWidth>(p, packed, b);
  }
  return packed;
}

template <bool kPack>
char* inline_row(char* p, int64_t n, int64_t stride, char* packed, int64_t b) {
  if (b >= 16) return inline_row<kPack, 16>(p, n, stride, packed, b);
  if (b >= 8) return inline_row<kPack, 8>(p, n, stride, packed, b);
  if (b >= 4) return inline_row<kPack, 4>(p, n, stride, packed, b);
  if (b >= 2) return inline_row<kPack, 2>(p, n, stride, packed, b);
  return row<kPack, 1>(p, n, stride, packed, 1);
}

// ---- small runs, many per 64-byte window (AVX-512 BW + VBMI) -------------------
//
// Where runs are short and close together (block <= stride, block + stride <= 64,
// block not 8 or 16), one 64-byte window of the strided buffer holds
// m = (64 - block) / stride + 1 runs. A masked load, one byte permutation
// (vpermb) and a masked store move all m of them: pack reads the window and
// writes m * block packed bytes; unpack reads m * block packed bytes and writes
// only the bytes of the runs, never the gaps between them (a masked store
// leaves unselected bytes untouched, so a concurrent writer of the gaps is
// safe, as with MPI_Unpack). Every innermost row has the same number of runs,
// so its last, shorter window has the same masks in every row: all of it is
// built once per call, and nothing is read or written outside the layout's span.
constexpr int kWindow = 64;

struct Window {
  int64_t block = 0, stride = 0;
  int64_t runs = 0;               // m: runs per full window
  int64_t row_runs = 0;           // runs per innermost row
  uint8_t pack_index[kWindow];    // packed byte o comes from window byte pack_index[o]
  uint8_t unpack_index[kWindow];  // window byte w comes from packed byte unpack_index[w]
  uint64_t span = 0, out = 0;            // a full window: its strided bytes, its packed bytes
  uint64_t run_bytes = 0;                // bit w: window byte w belongs to a run
  uint64_t tail_span = 0, tail_out = 0;  // the same for a row's last row_runs % m runs
  uint64_t tail_run_bytes = 0;
};

// Bits [0, n) set, n in [0, 64].
inline uint64_t low_bits(int64_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }

bool window_fits(int64_t block, int64_t stride) {
  return block >= 1 && stride >= block && block + stride <= kWindow;
}

void build_window(int64_t block, int64_t stride, int64_t row_runs, Window* w) {
  w->block = block;
  w->stride = stride;
  w->runs = (kWindow - block) / stride + 1;
  w->row_runs = row_runs;
  std::memset(w->pack_index, 0, sizeof w->pack_index);
  std::memset(w->unpack_index, 0, sizeof w->unpack_index);
  w->run_bytes = 0;
  for (int64_t i = 0; i < w->runs; ++i)
    for (int64_t j = 0; j < block; ++j) {
      const int64_t src = i * stride + j, dst = i * block + j;
      w->pack_index[dst] = static_cast<uint8_t>(src);
      w->unpack_index[src] = static_cast<uint8_t>(dst);
      w->run_bytes |= uint64_t{1} << src;
    }
  w->span = low_bits((w->runs - 1) * stride + block);
  w->out = low_bits(w->runs * block);
  const int64_t k = row_runs % w->runs;
  w->tail_span = k > 0 ? low_bits((k - 1) * stride + block) : 0;
  w->tail_out = low_bits(k * block);
  w->tail_run_bytes = w->run_bytes & w->tail_span;
}

constexpr int64_t kInlineCopyMax = 4096;

#if PYHPC_PACK_X86
#define PYHPC_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))

// vpermb: out[i] = v[index[i]]. (Zero-masked with every lane kept: the plain
// intrinsic trips GCC 12's -Wmaybe-uninitialized inside its own header.)
PYHPC_VBMI inline __m512i permute(__m512i index, __m512i v) {
  return _mm512_maskz_permutexvar_epi8(~__mmask64{0}, index, v);
}

// `rows` innermost rows, `row_stride` bytes apart, each of w.row_runs runs.
template <bool kPack>
PYHPC_VBMI char* window_rows(const Window& w, char* p, int64_t rows, int64_t row_stride, char* packed) {
  const __m512i index = _mm512_loadu_si512(kPack ? w.pack_index : w.unpack_index);
  const int64_t full = w.row_runs / w.runs, step = w.runs * w.stride, bytes = w.runs * w.block;
  const int64_t tail_bytes = (w.row_runs % w.runs) * w.block;
  for (int64_t r = 0; r < rows; ++r, p += row_stride) {
    char* q = p;
    for (int64_t i = 0; i < full; ++i, q += step, packed += bytes) {
      if (kPack) {
        const __m512i v = _mm512_maskz_loadu_epi8(w.span, q);
        _mm512_mask_storeu_epi8(packed, w.out, permute(index, v));
      } else {
        const __m512i v = _mm512_maskz_loadu_epi8(w.out, packed);
        _mm512_mask_storeu_epi8(q, w.run_bytes, permute(index, v));
      }
    }
    if (tail_bytes > 0) {
      if (kPack) {
        const __m512i v = _mm512_maskz_loadu_epi8(w.tail_span, q);
        _mm512_mask_storeu_epi8(packed, w.tail_out, permute(index, v));
      } else {
        const __m512i v = _mm512_maskz_loadu_epi8(w.tail_out, packed);
        _mm512_mask_storeu_epi8(q, w.tail_run_bytes, permute(index, v));
      }
      packed += tail_bytes;
    }
  }
  return packed;
}

// Runs of any other size below kInlineCopyMax: 64-byte vector copies inline,
// the last one overlapping the previous (or masked, for runs under 64 bytes),
// which beats a memcpy call per run; from a few KiB on memcpy is as fast.
template <bool kPack>
PYHPC_VBMI char* copy_row(char* p, int64_t n, int64_t stride, char* packed, int64_t b) {
  const uint64_t short_run = low_bits(b);
  for (int64_t i = 0; i < n; ++i, p += stride, packed += b) {
    char* from = kPack ? p : packed;
    char* to = kPack ? packed : p;
    if (b < 64) {
      _mm512_mask_storeu_epi8(to, short_run, _mm512_maskz_loadu_epi8(short_run, from));
      continue;
    }
    int64_t o = 0;
    for (; o + 64 <= b; o += 64) _mm512_storeu_si512(to + o, _mm512_loadu_si512(from + o));
    if (o < b) _mm512_storeu_si512(to + b - 64, _mm512_loadu_si512(from + b - 64));
  }
  return packed;
}

bool cpu_has_vbmi() {
  __builtin_cpu_init();  // needed when called from a static initializer
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vbmi");
}
#else
template <bool kPack>
char* window_rows(const Window&, char*, int64_t, int64_t, char* packed) { return packed; }  // never called
template <bool kPack>
char* copy_row(char*, int64_t, int64_t, char* packed, int64_t) { return packed; }  // never called
bool cpu_has_vbmi() { return false; }
#endif

const bool g_cpu_has_vbmi = cpu_has_vbmi();
std::atomic<bool> g_simd_enabled{true};

bool simd() { return g_cpu_has_vbmi && g_simd_enabled.load(std::memory_order_relaxed); }

bool use_windows(const Strided& s) {
  if (!simd()) return false;
  const int inner = s.ndims - 1;
  // A row of one run gains nothing from a window; 8- and 16-byte runs already
  // move as one word each, as fast as a window holding at most 4 or 2 of them.
  return s.count[inner] >= 2 && s.block != 8 && s.block != 16 && window_fits(s.block, s.stride[inner]);
}

// ---- walking the outer dimensions ----------------------------------------------

// Calls row(p, n, stride, packed) -> end of its packed bytes, for each
// innermost row in order, the outer ndims - 1 dimensions walked around it.
template <class Row>
void walk(const Strided& s, char* base, char* packed, Row row) {
  char* p = base + s.offset;
  const int64_t* c = s.count;
  const int64_t* st = s.stride;
  const int inner = s.ndims - 1;  // ndims >= 1 here
  switch (s.ndims) {
    case 1:
      row(p, c[0], st[0], packed);
      return;
    case 2:
      for (int64_t i = 0; i < c[0]; ++i) packed = row(p + i * st[0], c[1], st[1], packed);
      return;
    case 3:
      for (int64_t i = 0; i < c[0]; ++i)
        for (int64_t j = 0; j < c[1]; ++j) packed = row(p + i * st[0] + j * st[1], c[2], st[2], packed);
      return;
    default: {
      // Odometer over the outer ndims-1 dimensions, one row inside.
      int64_t idx[kMaxDims] = {};
      for (;;) {
        char* q = p;
        for (int d = 0; d < inner; ++d) q += idx[d] * st[d];
        packed = row(q, c[inner], st[inner], packed);
        int d = inner - 1;
        while (d >= 0 && ++idx[d] == c[d]) idx[d--] = 0;
        if (d < 0) return;
      }
    }
  }
}

template <bool kPack, int64_t kBlock>
void walk_scalar(const Strided& s, char* base, char* packed) {
  walk(s, base, packed, [&s](char* p, int64_t n, int64_t stride, char* q) {
    return row<kPack, kBlock>(p, n, stride, q, s.block);
  });
}

template <bool kPack>
void run(const Strided& s, char* base, char* packed) {
  if (s.block == 0) return;
  if (s.ndims == 0) {  // one contiguous run
    if (kPack) std::memcpy(packed, base + s.offset, static_cast<size_t>(s.block));
    else std::memcpy(base + s.offset, packed, static_cast<size_t>(s.block));
    return;
  }
  if (use_windows(s)) {
    const int inner = s.ndims - 1;
    Window w;
    build_window(s.block, s.stride[inner], s.count[inner], &w);
    if (s.ndims == 1) {
      window_rows<kPack>(w, base + s.offset, 1, 0, packed);
      return;
    }
    // The walk's rows are now the second-innermost dimension: one call moves
    // a whole group of innermost rows.
    Strided outer = s;
    outer.ndims = inner;
    walk(outer, base, packed, [&w](char* p, int64_t rows, int64_t row_stride, char* q) {
      return window_rows<kPack>(w, p, rows, row_stride, q);
    });
    return;
  }
  switch (s.block) {
    case 1: return walk_scalar<kPack, 1>(s, base, packed);
    case 2: return walk_scalar<kPack, 2>(s, base, packed);
    case 4: return walk_scalar<kPack, 4>(s, base, packed);
    case 8: return walk_scalar<kPack, 8>(s, base, packed);
    case 16: return walk_scalar<kPack, 16>(s, base, packed);
    default:
      // (From 64 to 256 bytes the 16-byte moves beat two overlapping 64-byte
      // ones: unpack 67-77% of memcpy against 50-60% here, at 16 MiB.)
      if (simd() && s.block < kInlineCopyMax && (s.block < 64 || s.block > kInlineRunMax)) {
        walk(s, base, packed, [&s](char* p, int64_t n, int64_t stride, char* q) {
          return copy_row<kPack>(p, n, stride, q, s.block);
        });
        return;
      }
      if (s.block <= kInlineRunMax) {
        walk(s, base, packed, [&s](char* p, int64_t n, int64_t stride, char* q) {
          return inline_row<kPack>(p, n, stride, q, s.block);
        });
        return;
      }
      return walk_scalar<kPack, 0>(s, base, packed);
  }
}

}  // namespace

void pack_host(const Strided& layout, const char* base, char* packed) {
  run<true>(layout, const_cast<char*>(base), packed);  // pack only reads through base
}

void unpack_host(const Strided& layout, const char* packed, char* base) {
  run<false>(layout, base, const_cast<char*>(packed));  // unpack only reads through packed
}

const char* host_simd() {
  return simd() ? "avx512-vbmi" : "scalar";
}

bool host_vector_path(const Strided& layout) {
  return layout.block > 0 && layout.ndims > 0 && use_windows(layout);
}

bool set_host_simd(bool enabled) { return g_simd_enabled.exchange(enabled); }

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
