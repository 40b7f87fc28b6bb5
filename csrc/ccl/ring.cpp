#include "ccl/ring.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ccl/channel.hpp"
#include "ccl/sha256.hpp"

namespace pyhpc::ccl {

struct DataPlane::Channel {
  std::mutex op_mu;  // one operation per tag at a time
  uint64_t epoch = 0;
  bool ready = false;
  bool broken = false;  // aborted in `epoch`: unusable until the next epoch
  std::vector<int> send_fds;  // streams to the right neighbour (this peer's setting)
  std::vector<int> recv_fds;  // streams from the left neighbour (its setting)
  uint64_t left_id = 0, right_id = 0;
  uint64_t seq = 0;
  std::vector<uint8_t> work;
  std::vector<std::vector<uint8_t>> stage;  // per incoming stream
  std::vector<uint8_t> qcodes, qparams;     // quantized mode
  std::vector<std::vector<uint8_t>> qsend, qstage;  // per stream
  void close_fds() {
    for (int fd : send_fds) ::close(fd);
    for (int fd : recv_fds) ::close(fd);
    send_fds.clear();
    recv_fds.clear();
    ready = false;
  }
};

namespace {

constexpr size_t kQParams = 8;  // a quantized chunk's parameters, ahead of its codes

// ---- element types and reduction ------------------------------------------

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
  if (e == 0) {
    float v = std::ldexp(float(m), -24);
    std::memcpy(&x, &v, 4);
    x |= sign;
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13);
  } else {
    x = sign | ((e - 15 + 127) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t f32_to_f16(float f) {  // round to nearest even, like numpy
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u)
    return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                   // below 2^-14: subnormal
    float v;
    std::memcpy(&v, &ax, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(v * 16777216.0f)));
  }
  uint32_t h = (((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13);
  uint32_t rest = ax & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

float bf16_to_f32(uint16_t h) {
  uint32_t x = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {  // round to nearest even, like ml_dtypes
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

// One element of a reduction: `a` is the incoming partial result, `b` this
// peer's own value (the fixed order that keeps every peer bit-identical).
template <typename T, ReduceOp Op>
inline T combine(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if constexpr (Op == ReduceOp::kMin) return (a < b || a != a) ? a : b;  // NaN propagates
    if constexpr (Op == ReduceOp::kMax) return (a > b || a != a) ? a : b;  // like numpy
    if constexpr (Op == ReduceOp::kSum || Op == ReduceOp::kAvg) return a + b;
  } else {
    using U = std::make_unsigned_t<T>;
    if constexpr (Op == ReduceOp::kMin) return a < b ? a : b;
    if constexpr (Op == ReduceOp::kMax) return a > b ? a : b;
    if constexpr (Op == ReduceOp::kSum || Op == ReduceOp::kAvg)
      return T(U(a) + U(b));  // wraps, like numpy
  }
}

// dst[i] = incoming[i] (op) own[i]; `own` may be `dst` (exactly: in place),
// else neither overlaps the other. One loop per (type, op) with no branch
// inside, kept out of all_reduce and told there is no dependence between
// iterations (ivdep: true for dst == own too), so the compiler vectorises it:
// inlined into all_reduce it stayed scalar (perf: addss, 2.5x gloo's sum).
template <typename T, ReduceOp Op>
__attribute__((noinline)) void reduce_loop(T* dst, const T* __restrict incoming, const T* own,
                                           size_t n) {
#pragma GCC ivdep
  for (size_t i = 0; i < n; ++i) dst[i] = combine<T, Op>(incoming[i], own[i]);
}

template <typename T>
void reduce_into(void* dst, const void* incoming, const void* own, size_t n, ReduceOp op) {
  T* d = static_cast<T*>(dst);
  const T* in = static_cast<const T*>(incoming);
  const T* o = static_cast<const T*>(own);
  switch (op) {
    case ReduceOp::kMin: return reduce_loop<T, ReduceOp::kMin>(d, in, o, n);
    case ReduceOp::kMax: return reduce_loop<T, ReduceOp::kMax>(d, in, o, n);
    default: return reduce_loop<T, ReduceOp::kSum>(d, in, o, n);
  }
}

void reduce_work(DType t, void* dst, const void* incoming, const void* own, size_t n,
                 ReduceOp op) {
  switch (t) {
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32: return reduce_into<float>(dst, incoming, own, n, op);
    case DType::kF64: return reduce_into<double>(dst, incoming, own, n, op);
    case DType::kI32: return reduce_into<int32_t>(dst, incoming, own, n, op);
    case DType::kI64: return reduce_into<int64_t>(dst, incoming, own, n, op);
  }
}

size_t work_size(DType t) {
  return t == DType::kF16 || t == DType::kBF16 ? 4 : dtype_size(t);
}

void load_work(DType t, const void* in, void* work, size_t n) {
  if (t == DType::kF16 || t == DType::kBF16) {
    const uint16_t* s = static_cast<const uint16_t*>(in);
    float* d = static_cast<float*>(work);
    for (size_t i = 0; i < n; ++i) d[i] = t == DType::kF16 ? f16_to_f32(s[i]) : bf16_to_f32(s[i]);
  } else if (n) {
    std::memcpy(work, in, n * dtype_size(t));
  }
}

template <typename T>
T floor_div(T a, T n) {
  T q = a / n;
  if ((a % n != 0) && (a < 0)) --q;
  return q;
}

// out = work (divided by `world` for avg), in the caller's dtype.
void store_work(DType t, ReduceOp op, const void* work, void* out, size_t n, uint32_t world) {
  bool avg = op == ReduceOp::kAvg && world > 1;
  switch (t) {
    case DType::kF16:
    case DType::kBF16: {
      const float* s = static_cast<const float*>(work);
      uint16_t* d = static_cast<uint16_t*>(out);
      float w = float(world);
      for (size_t i = 0; i < n; ++i) {
        float v = avg ? s[i] / w : s[i];
        d[i] = t == DType::kF16 ? f32_to_f16(v) : f32_to_bf16(v);
      }
      return;
    }
    case DType::kF32: {
      const float* s = static_cast<const float*>(work);
      float* d = static_cast<float*>(out);
      if (!avg) break;
      for (size_t i = 0; i < n; ++i) d[i] = s[i] / float(world);
      return;
    }
    case DType::kF64: {
      const double* s = static_cast<const double*>(work);
      double* d = static_cast<double*>(out);
      if (!avg) break;
      for (size_t i = 0; i < n; ++i) d[i] = s[i] / double(world);
      return;
    }
    case DType::kI32: {
      const int32_t* s = static_cast<const int32_t*>(work);
      int32_t* d = static_cast<int32_t*>(out);
      if (!avg) break;
      for (size_t i = 0; i < n; ++i) d[i] = floor_div(s[i], int32_t(world));
      return;
    }
    case DType::kI64: {
      const int64_t* s = static_cast<const int64_t*>(work);
      int64_t* d = static_cast<int64_t*>(out);
      if (!avg) break;
      for (size_t i = 0; i < n; ++i) d[i] = floor_div(s[i], int64_t(world));
      return;
    }
  }
  if (n && out != work) std::memcpy(out, work, n * dtype_size(t));
}

// dst = src with non-temporal stores where it can: a saved input is read
// again only if the operation aborts, so it should not evict what will be.
void copy_aside(uint8_t* dst, const uint8_t* src, size_t len) {
#if defined(__SSE2__)
  size_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  if (len >= 256 + head) {
    std::memcpy(dst, src, head);
    size_t i = head;
    for (; i + 64 <= len; i += 64)
      for (int k = 0; k < 4; ++k)
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16 * k),
                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16 * k)));
    _mm_sfence();
    std::memcpy(dst + i, src + i, len - i);
    return;
  }
#endif
  std::memcpy(dst, src, len);
}

// ---- min-max uint8 quantization ---------------------------------------------

void put_f32(uint8_t* p, float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  put_le(p, x, 4);
}
float get_f32(const uint8_t* p) {
  uint32_t x = uint32_t(get_le(p, 4));
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Both schemes send a chunk as 8 bytes of parameters and one uint8 code per
// element:
//   minmax_uint8:    f32 min, f32 scale = (max - min) / 255;
//                    code = round((v - min) / scale), value = min + scale * code
//   zeropoint_uint8: f32 scale = (max(max, 0) - min(min, 0)) / 255, u32 zero
//                    point z = round(-min(min, 0) / scale) in 0..255;
//                    code = clamp(round(v / scale) + z, 0, 255),
//                    value = scale * (code - z)  (0 is exact)
// A chunk whose range is not finite (a partial sum overflowed float32, or a
// NaN) is sent as scale = NaN: it dequantizes to NaN on every peer. Each
// quantization moves a value by at most scale / 2 (the clamp included: the
// rounded zero point is within 1/2 of the exact one).
//
// Only the sender of a chunk quantizes it, so the quantizer's arithmetic
// needs no agreement between peers; the dequantization does: every peer
// builds the chunk's 256 values with the scalar function below and looks the
// codes up, whatever the vector code of the rest of the machine.

// lo = min(v), hi = max(v) over n > 0 values; false if any is NaN.
bool min_max(const float* v, size_t n, float* lo, float* hi) {
  size_t i = 0;
  float l = v[0], h = v[0];
  bool nan = false;
#if defined(__SSE2__)
  if (n >= 16) {  // four independent accumulators: min/max latency, not throughput, bounds one
    __m128 vl[4], vh[4], vnan = _mm_setzero_ps();
    for (int k = 0; k < 4; ++k) vl[k] = vh[k] = _mm_loadu_ps(v + 4 * k);
    for (i = 0; i + 16 <= n; i += 16) {
      for (int k = 0; k < 4; ++k) {
        __m128 x = _mm_loadu_ps(v + i + 4 * k);
        vl[k] = _mm_min_ps(vl[k], x);
        vh[k] = _mm_max_ps(vh[k], x);
        vnan = _mm_or_ps(vnan, _mm_cmpunord_ps(x, x));
      }
    }
    float ls[4], hs[4];
    _mm_storeu_ps(ls, _mm_min_ps(_mm_min_ps(vl[0], vl[1]), _mm_min_ps(vl[2], vl[3])));
    _mm_storeu_ps(hs, _mm_max_ps(_mm_max_ps(vh[0], vh[1]), _mm_max_ps(vh[2], vh[3])));
    nan = _mm_movemask_ps(vnan) != 0;
    l = std::min(std::min(ls[0], ls[1]), std::min(ls[2], ls[3]));
    h = std::max(std::max(hs[0], hs[1]), std::max(hs[2], hs[3]));
  }
#endif
  for (; i < n; ++i) {
    nan |= v[i] != v[i];
    l = v[i] < l ? v[i] : l;
    h = v[i] > h ? v[i] : h;
  }
  *lo = l;
  *hi = h;
  return !nan;
}

// codes[i] = round((v[i] - sub) * mul) clamped to 0..255 (the vector and the
// scalar loops compute the same thing: clamp, add 1/2, truncate).
void codes_minmax(const float* v, size_t n, float sub, float mul, uint8_t* codes) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128 vs = _mm_set1_ps(sub), vm = _mm_set1_ps(mul), zero = _mm_setzero_ps(),
               top = _mm_set1_ps(255.0f), half = _mm_set1_ps(0.5f);
  for (; i + 16 <= n; i += 16) {
    __m128i q[4];
    for (int k = 0; k < 4; ++k) {
      __m128 x = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(v + i + 4 * k), vs), vm);
      x = _mm_min_ps(_mm_max_ps(x, zero), top);
      q[k] = _mm_cvttps_epi32(_mm_add_ps(x, half));
    }
    __m128i lo16 = _mm_packs_epi32(q[0], q[1]), hi16 = _mm_packs_epi32(q[2], q[3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(lo16, hi16));
  }
#endif
  for (; i < n; ++i) {
    float q = (v[i] - sub) * mul;
    codes[i] = q <= 0.0f ? uint8_t(0) : q >= 255.0f ? uint8_t(255) : uint8_t(q + 0.5f);
  }
}

// codes[i] = clamp(round_even(v[i] / scale) + zp, 0, 255)
void codes_zeropoint(const float* v, size_t n, float scale, int32_t zp, uint8_t* codes) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128 vs = _mm_set1_ps(scale);
  const __m128i vz = _mm_set1_epi32(zp);
  for (; i + 16 <= n; i += 16) {
    __m128i q[4];
    for (int k = 0; k < 4; ++k)  // cvtps rounds to nearest even, as nearbyint below
      q[k] = _mm_add_epi32(_mm_cvtps_epi32(_mm_div_ps(_mm_loadu_ps(v + i + 4 * k), vs)), vz);
    __m128i lo16 = _mm_packs_epi32(q[0], q[1]), hi16 = _mm_packs_epi32(q[2], q[3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(lo16, hi16));
  }
#endif
  for (; i < n; ++i) {
    int32_t q = int32_t(std::nearbyint(v[i] / scale)) + zp;
    codes[i] = uint8_t(q < 0 ? 0 : q > 255 ? 255 : q);
  }
}

void quantize_chunk(Quant scheme, const float* v, size_t n, uint8_t* codes, uint8_t* params) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float lo = 0, hi = 0;
  bool ok = n == 0 || min_max(v, n, &lo, &hi);
  if (scheme == Quant::kZeroPointU8) {
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
  }
  float scale = (hi - lo) / 255.0f;
  int32_t zp = 0;
  if (!ok || !std::isfinite(lo) || !std::isfinite(hi) || !std::isfinite(scale)) {
    lo = scale = nan;  // the chunk is NaN on every peer
    if (n) std::memset(codes, 0, n);
  } else if (scale == 0) {
    if (n) std::memset(codes, 0, n);
  } else if (scheme == Quant::kZeroPointU8) {
    zp = int32_t(std::nearbyint(-lo / scale));
    zp = zp < 0 ? 0 : zp > 255 ? 255 : zp;
    codes_zeropoint(v, n, scale, zp, codes);
  } else {
    codes_minmax(v, n, lo, 1.0f / scale, codes);
  }
  if (scheme == Quant::kZeroPointU8) {
    put_f32(params, scale);
    put_le(params + 4, uint32_t(zp), 4);
  } else {
    put_f32(params, lo);
    put_f32(params + 4, scale);
  }
}

bool valid_qparams(Quant scheme, const uint8_t* params) {
  if (scheme == Quant::kZeroPointU8)
    return !(get_f32(params) < 0) && get_le(params + 4, 4) <= 255;
  return !(get_f32(params + 4) < 0);
}

// The value of every code of a chunk. scale * code is exact in double (24 + 9
// bits), so one rounding (zeropoint) or a double add then one rounding
// (minmax) gives the same float on every peer, FMA contraction or not.
void dequant_table(Quant scheme, const uint8_t* params, float* table) {
  if (scheme == Quant::kZeroPointU8) {
    const double scale = get_f32(params);
    const int32_t zp = int32_t(get_le(params + 4, 4));
    for (int32_t c = 0; c < 256; ++c) table[c] = float(scale * double(c - zp));
  } else {
    const double lo = get_f32(params), scale = get_f32(params + 4);
    for (int32_t c = 0; c < 256; ++c) table[c] = float(lo + scale * double(c));
  }
}

// dst[i] = value(codes[i]) (+ own[i] when `own` is given; it may be `dst`).
void dequantize_chunk(Quant scheme, const uint8_t* params, const uint8_t* codes, size_t n,
                      float* dst, const float* own) {
  size_t i = 0;
#if defined(__SSE2__)
  if (scheme == Quant::kZeroPointU8) {
    // scale * float(code - z) is one correctly rounded float product of two
    // floats whose exact product fits a double: the same bits as the table's
    // double product rounded once, so this loop and the table agree.
    const __m128 vs = _mm_set1_ps(get_f32(params));
    const __m128i vz = _mm_set1_epi32(int32_t(get_le(params + 4, 4))), zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
      __m128i c8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
      __m128i c16[2] = {_mm_unpacklo_epi8(c8, zero), _mm_unpackhi_epi8(c8, zero)};
      for (int k = 0; k < 4; ++k) {
        __m128i c32 = (k & 1) ? _mm_unpackhi_epi16(c16[k / 2], zero)
                              : _mm_unpacklo_epi16(c16[k / 2], zero);
        __m128 v = _mm_mul_ps(vs, _mm_cvtepi32_ps(_mm_sub_epi32(c32, vz)));
        if (own) v = _mm_add_ps(v, _mm_loadu_ps(own + i + 4 * k));
        _mm_storeu_ps(dst + i + 4 * k, v);
      }
    }
  }
#endif
  if (i == n) return;
  float table[256];
  dequant_table(scheme, params, table);
  if (own) {
    for (; i < n; ++i) dst[i] = table[codes[i]] + own[i];
  } else {
    for (; i < n; ++i) dst[i] = table[codes[i]];
  }
}

bool all_finite(const float* v, size_t n) {
  uint32_t bad = 0;  // an exponent of all ones: inf or NaN
  for (size_t i = 0; i < n; ++i) {
    uint32_t x;
    std::memcpy(&x, v + i, 4);
    bad |= uint32_t((x & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

// Quantized mode: float32 work from any float input (float32 is read in place
// and not copied); false if non-finite.
bool load_work_q(DType t, const void* in, float* work, size_t n) {
  if (t == DType::kF32) return all_finite(static_cast<const float*>(in), n);
  if (t == DType::kF64) {
    const double* s = static_cast<const double*>(in);
    for (size_t i = 0; i < n; ++i) work[i] = float(s[i]);
  } else {
    load_work(t, in, work, n);
  }
  return all_finite(work, n);
}

const char* dtype_name(uint8_t t) {
  switch (static_cast<DType>(t)) {
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kF32: return "float32";
    case DType::kF64: return "float64";
    case DType::kI32: return "int32";
    case DType::kI64: return "int64";
  }
  return "?";
}

const char* quant_name(uint8_t q) {
  switch (static_cast<Quant>(q)) {
    case Quant::kNone: return "none";
    case Quant::kMinMaxU8: return "minmax_uint8";
    case Quant::kZeroPointU8: return "zeropoint_uint8";
  }
  return "?";
}

const char* op_name(uint8_t o) {
  switch (static_cast<ReduceOp>(o)) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kMax: return "max";
  }
  return "?";
}

}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF16:
    case DType::kBF16: return 2;
    case DType::kF32:
    case DType::kI32: return 4;
    case DType::kF64:
    case DType::kI64: return 8;
  }
  return 0;
}

DataPlane::DataPlane() = default;
DataPlane::~DataPlane() { stop(); }

pyhpc_status DataPlane::start(const std::string& host, const std::string& secret,
                              uint16_t version, uint32_t connections) {
  if (listen_fd_ >= 0) return PYHPC_OK;
  if (secret.empty()) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "empty secret");
  if (connections < 1 || connections > kMaxConnections)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "connections must be in 1..%u",
                      unsigned(kMaxConnections));
  connections_ = connections;
  secret_ = secret;
  version_ = version;
  PYHPC_CHECK(listen_tcp(host, 0, &listen_fd_, &port_));
  big_buffers(listen_fd_);
  if (::pipe(wake_) != 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "pipe failed");
  }
  set_nonblocking(listen_fd_, true);
  thread_ = std::thread([this] { accept_loop(); });
  return PYHPC_OK;
}

void DataPlane::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
    cv_.notify_all();
  }
  wake_and_join(thread_, wake_[1]);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& kv : pending_) ::close(kv.second.fd);
  pending_.clear();
  for (auto& kv : channels_) {
    std::lock_guard<std::mutex> op(kv.second->op_mu);
    kv.second->close_fds();
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  for (int& w : wake_) {
    if (w >= 0) ::close(w);
    w = -1;
  }
}

void DataPlane::accept_loop() {
  for (;;) {
    pollfd fds[2] = {{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    int rc = ::poll(fds, 2, 1000);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    if (rc <= 0 || !(fds[1].revents & POLLIN)) continue;
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    tune_socket(fd);
    set_nonblocking(fd, false);
    handshake(fd);  // closes fd on failure
  }
}

void DataPlane::handshake(int fd) {
  auto deadline = after(kHandshakeTimeout);
  uint8_t nonce[kNonceSize], hello[kHelloSize];
  if (random_bytes(nonce, sizeof nonce) != PYHPC_OK ||
      send_small(fd, version_, kDataChallenge, nonce, sizeof nonce, deadline) != PYHPC_OK ||
      recv_small(fd, version_, kDataHello, kHelloSize, deadline, hello) != PYHPC_OK) {
    clear_last_error();
    ::close(fd);
    return;
  }
  Digest want = hello_mac(secret_, nonce, hello, hello + 64);
  if (!equal_constant_time(want.data(), hello + 32, want.size())) {
    ::close(fd);  // a stranger: no data from it ever reaches an operation
    return;
  }
  uint64_t from = get_le(hello + 64, 8), epoch = get_le(hello + 72, 8);
  uint32_t tag = uint32_t(get_le(hello + 80, 4));
  uint8_t kind = hello[84];
  uint32_t stream = uint32_t(get_le(hello + 85, 4)), streams = uint32_t(get_le(hello + 89, 4));
  if (kind > kMaxChannelKind || streams < 1 || streams > kMaxConnections || stream >= streams ||
      (kind != uint8_t(ChannelKind::kRing) && streams != 1)) {
    ::close(fd);  // malformed (authenticated, but not a channel this side can take)
    return;
  }
  Digest proof = ok_mac(secret_, hello, nonce);
  if (send_small(fd, version_, kDataOk, proof.data(), proof.size(), deadline) != PYHPC_OK) {
    clear_last_error();
    ::close(fd);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  // Connections of older epochs will never be claimed.
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (std::get<1>(it->first) + 1 < epoch) {
      ::close(it->second.fd);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  Key key{from, epoch, kind, tag, stream};
  auto it = pending_.find(key);
  if (it != pending_.end()) ::close(it->second.fd);  // a redial replaces the old one
  pending_[key] = Pending{fd, streams};
  cv_.notify_all();
}

DataPlane::Channel* DataPlane::channel(uint32_t tag) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& c = channels_[tag];
  if (!c) c = std::make_unique<Channel>();
  return c.get();
}

pyhpc_status DataPlane::dial(Peer& peer, const Topology& t, const PeerInfo& to,
                             ChannelKind kind, uint32_t tag, Clock::time_point deadline,
                             int* out, uint32_t stream, uint32_t streams) {
  double left_s = std::chrono::duration<double>(deadline - Clock::now()).count();
  int fd = -1;
  if (connect_tcp(to.host, to.port, left_s > 0.001 ? left_s : 0.001, &fd) != PYHPC_OK) {
    std::string why = last_error();
    return PYHPC_FAIL(PYHPC_ERR_PEER, "cannot connect: %s", why.c_str());
  }
  big_buffers(fd);
  uint8_t nonce[kNonceSize], hello[kHelloSize], proof[32];
  auto interrupted = [&] { return !failed_members(peer, t).empty(); };
  pyhpc_status s =
      recv_small(fd, version_, kDataChallenge, kNonceSize, deadline, nonce, interrupted);
  if (s == PYHPC_OK) s = random_bytes(hello, 32);
  if (s == PYHPC_OK) {
    put_le(hello + 64, peer.id(), 8);
    put_le(hello + 72, t.epoch, 8);
    put_le(hello + 80, tag, 4);
    hello[84] = uint8_t(kind);
    put_le(hello + 85, stream, 4);
    put_le(hello + 89, streams, 4);
    Digest mac = hello_mac(secret_, nonce, hello, hello + 64);
    std::memcpy(hello + 32, mac.data(), 32);
    s = send_small(fd, version_, kDataHello, hello, kHelloSize, deadline);
  }
  if (s == PYHPC_OK) s = recv_small(fd, version_, kDataOk, 32, deadline, proof, interrupted);
  if (s != PYHPC_OK) {
    ::close(fd);
    if (s == PYHPC_ERR_PROTOCOL) return s;
    std::string why = last_error();
    return PYHPC_FAIL(PYHPC_ERR_PEER, "handshake failed: %s", why.c_str());
  }
  Digest want = ok_mac(secret_, hello, nonce);
  if (!equal_constant_time(want.data(), proof, 32)) {
    ::close(fd);
    return PYHPC_FAIL(PYHPC_ERR_AUTH, "data plane: peer %llu does not know the shared secret",
                      static_cast<unsigned long long>(to.id));
  }
  *out = fd;
  return PYHPC_OK;
}

int DataPlane::claim(uint64_t from, uint64_t epoch, ChannelKind kind, uint32_t tag) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(Key{from, epoch, uint8_t(kind), tag, 0});
  if (it == pending_.end()) return -1;
  int fd = it->second.fd;
  pending_.erase(it);
  return fd;
}

std::vector<std::pair<uint64_t, int>> DataPlane::claim_all(uint64_t epoch, ChannelKind kind,
                                                           uint32_t tag) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uint64_t, int>> out;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (std::get<1>(it->first) == epoch && std::get<2>(it->first) == uint8_t(kind) &&
        std::get<3>(it->first) == tag) {
      out.push_back({std::get<0>(it->first), it->second.fd});
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

pyhpc_status DataPlane::setup(Peer& peer, Channel& ch, const Topology& t, uint32_t tag,
                              Clock::time_point deadline, std::vector<uint64_t>* failed) {
  uint32_t n = uint32_t(t.peers.size());
  const PeerInfo& right = t.peers[(t.rank + 1) % n];
  const PeerInfo& left = t.peers[(t.rank + n - 1) % n];
  ch.close_fds();
  ch.epoch = t.epoch;
  ch.broken = false;
  ch.seq = 0;
  ch.left_id = left.id;
  ch.right_id = right.id;
  auto fail_peer = [&](uint64_t who, const char* what) {
    std::string why = last_error();
    *failed = blame(peer, t, {who}, deadline);
    if (failed->empty()) {
      std::string lost = last_error();
      return PYHPC_FAIL(PYHPC_ERR_PEER, "data plane: %s peer %llu: %s; lost the master: %s", what,
                        static_cast<unsigned long long>(who), why.c_str(), lost.c_str());
    }
    return PYHPC_FAIL(PYHPC_ERR_PEER, "data plane: %s peer %llu: %s", what,
                      static_cast<unsigned long long>(who), why.c_str());
  };
  // Dial the right neighbour once per stream and prove the secret on each.
  for (uint32_t stream = 0; stream < connections_; ++stream) {
    int fd = -1;
    pyhpc_status s =
        dial(peer, t, right, ChannelKind::kRing, tag, deadline, &fd, stream, connections_);
    if (s == PYHPC_ERR_PEER) return fail_peer(right.id, "cannot reach");
    if (s != PYHPC_OK) return s;
    ch.send_fds.push_back(fd);
  }
  // Wait for the left neighbour's streams: stream 0 says how many it dials.
  std::unique_lock<std::mutex> lock(mu_);
  uint32_t streams = 1;
  for (uint32_t stream = 0; stream < streams;) {
    auto it = pending_.find(Key{left.id, t.epoch, uint8_t(ChannelKind::kRing), tag, stream});
    if (it != pending_.end()) {
      if (stream == 0) streams = it->second.streams;
      bool agrees = it->second.streams == streams;
      ch.recv_fds.push_back(it->second.fd);
      pending_.erase(it);
      if (!agrees)
        return PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                          "data plane: peer %llu announced different stream counts on one link",
                          static_cast<unsigned long long>(left.id));
      ++stream;
      continue;
    }
    if (stop_) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "data plane stopped");
    lock.unlock();
    std::vector<uint64_t> f = failed_members(peer, t);
    lock.lock();
    if (!f.empty()) {
      *failed = f;
      return PYHPC_FAIL(PYHPC_ERR_PEER, "data plane: the master reports failed peers");
    }
    if (peer.health() != PYHPC_OK) {  // the master is gone: nobody can tell who failed
      std::string why = last_error();
      return PYHPC_FAIL(PYHPC_ERR_PEER, "data plane: lost the master: %s", why.c_str());
    }
    if (Clock::now() >= deadline) {
      *failed = {left.id};
      return PYHPC_FAIL(PYHPC_ERR_PEER,
                        "data plane: peer %llu did not connect before the operation's deadline",
                        static_cast<unsigned long long>(left.id));
    }
    cv_.wait_for(lock, std::chrono::milliseconds(kPollSliceMs));
  }
  lock.unlock();
  for (int fd : ch.send_fds) set_nonblocking(fd, true);
  for (int fd : ch.recv_fds) set_nonblocking(fd, true);
  ch.ready = true;
  return PYHPC_OK;
}

pyhpc_status DataPlane::all_reduce(Peer& peer, const AllReduceArgs& a,
                                   std::vector<uint64_t>* failed) {
  failed->clear();
  if (listen_fd_ < 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "data plane not started");
  if (dtype_size(a.dtype) == 0 || a.op < ReduceOp::kSum || a.op > ReduceOp::kMax)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "unsupported dtype or op");
  if (a.timeout_s <= 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "timeout must be > 0");
  if (a.data_bytes_sent) *a.data_bytes_sent = 0;
  const bool quant = a.quant == Quant::kMinMaxU8 || a.quant == Quant::kZeroPointU8;
  if (a.quant != Quant::kNone && !quant)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "unknown quantization %u", unsigned(a.quant));
  if (quant && (a.dtype == DType::kI32 || a.dtype == DType::kI64 ||
                (a.op != ReduceOp::kSum && a.op != ReduceOp::kAvg)))
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "quantized all_reduce takes float16/bfloat16/float32/float64 with op sum "
                      "or avg");
  if (a.chunk_bytes == 0 || a.chunk_bytes > kMaxChunkBytes)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "chunk_bytes must be in 1..%zu",
                      kMaxChunkBytes);
  PYHPC_CHECK(peer.health());
  if (!peer.admitted())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "not admitted yet: call update_topology() before all_reduce");
  auto deadline = after(a.timeout_s);
  Topology t = peer.topology();
  const uint32_t n = uint32_t(t.peers.size());
  const uint32_t rank = t.rank;
  *failed = failed_members(peer, t);
  if (!failed->empty())
    return PYHPC_FAIL(PYHPC_ERR_PEER, "peers failed since the last topology update");

  Channel& ch = *channel(a.tag);
  std::lock_guard<std::mutex> op_lock(ch.op_mu);
  const size_t wsize = quant ? sizeof(float) : work_size(a.dtype);
  if (n == 1) {
    std::vector<uint8_t> work(a.count * wsize);
    if (quant) {  // nothing travels, so nothing is quantized; non-finite still refused
      if (!load_work_q(a.dtype, a.in, reinterpret_cast<float*>(work.data()), a.count))
        return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                          "quantized all_reduce: the input of rank 0 holds NaN or inf");
      if (a.count && a.out != a.in) std::memmove(a.out, a.in, a.count * dtype_size(a.dtype));
      return PYHPC_OK;
    }
    load_work(a.dtype, a.in, work.data(), a.count);
    store_work(a.dtype, a.op, work.data(), a.out, a.count, 1);
    return PYHPC_OK;
  }
  if (ch.epoch == t.epoch && ch.broken)
    return PYHPC_FAIL(PYHPC_ERR_PEER,
                      "an earlier operation with tag %u failed in this topology epoch; call "
                      "update_topology() first",
                      unsigned(a.tag));
  // In place, the caller's buffer is overwritten chunk by chunk; each chunk's
  // input is saved (in ch.work) first, and these byte ranges are put back
  // on abort.
  std::vector<std::pair<uint64_t, uint64_t>> saved;
  uint8_t* backup = nullptr;
  auto abort = [&](pyhpc_status s) {
    for (const auto& r : saved) std::memcpy(static_cast<uint8_t*>(a.out) + r.first,
                                            backup + r.first, r.second);
    saved.clear();
    ch.close_fds();
    ch.broken = true;
    return s;
  };
  if (!ch.ready || ch.epoch != t.epoch) {
    pyhpc_status s = setup(peer, ch, t, a.tag, deadline, failed);
    if (s != PYHPC_OK) return abort(s);
  }
  const uint64_t seq = ++ch.seq;

  // Names who failed (blame(): the master's notices, else `suspect`).
  auto peer_failure = [&](uint64_t suspect, const std::string& why) {
    *failed = blame(peer, t, {suspect}, deadline);
    if (failed->empty()) {  // no master to say who: not a peer's fault
      std::string lost = last_error();
      return abort(PYHPC_FAIL(PYHPC_ERR_PEER, "all_reduce (tag %u) aborted: %s; lost the master: %s",
                              unsigned(a.tag), why.c_str(), lost.c_str()));
    }
    (void)peer.vote(t.epoch, a.tag, seq, Vote::kNo);  // best effort: YES voters abort at once
    clear_last_error();
    return abort(PYHPC_FAIL(PYHPC_ERR_PEER, "all_reduce (tag %u) aborted: %s", unsigned(a.tag),
                            why.c_str()));
  };
  // Aborted by the master's verdict: names the members it reports gone (else
  // the ones this peer was told of).
  auto aborted_by_master = [&](std::vector<uint64_t> dead, const char* why) {
    for (uint64_t id : failed_members(peer, t))
      if (std::find(dead.begin(), dead.end(), id) == dead.end()) dead.push_back(id);
    *failed = std::move(dead);
    return abort(PYHPC_FAIL(PYHPC_ERR_PEER, "all_reduce (tag %u) aborted by the master: %s",
                            unsigned(a.tag), why));
  };
  // Members reported dead that the master said this op can do without.
  std::vector<uint64_t> cleared;

  // Where this peer's own values are read from: float32/float64/integer input
  // (float32 only when quantized) is read in place (the reduce-scatter's first
  // send and its reductions read it, and every byte of the result is written
  // by a reduction or an all-gather chunk), so it is never copied whole.
  const uint64_t count = a.count;
  const bool direct = quant ? a.dtype == DType::kF32 : work_size(a.dtype) == dtype_size(a.dtype);
  // Where the result is built: a private buffer (float32 when quantized or for
  // 16-bit floats: loaded first, to flag non-finite inputs in the descriptor),
  // copied out on COMMIT; or, unquantized with the caller's dtype, the caller's
  // output itself (out of place, the input is read only; in place, each chunk
  // is saved before it is first overwritten, and restored on abort).
  const bool in_out = direct && !quant;
  const bool in_place = a.out == a.in;
  if ((!in_out || in_place) && ch.work.size() < count * wsize) ch.work.resize(count * wsize);
  uint8_t* work = in_out ? static_cast<uint8_t*>(a.out) : ch.work.data();
  if (in_out && in_place) backup = ch.work.data();
  const uint8_t* own = direct ? static_cast<const uint8_t*>(a.in) : work;
  auto save = [&](uint64_t off, uint64_t len) {
    if (!backup || len == 0) return;
    copy_aside(backup + off, work + off, len);
    saved.push_back({off, len});
  };
  bool nonfinite = false;
  if (quant)
    nonfinite = !load_work_q(a.dtype, a.in, reinterpret_cast<float*>(work), count);
  else if (!direct)
    load_work(a.dtype, a.in, work, count);

  // (1) Descriptors round the ring: every peer learns every peer's op.
  std::vector<std::vector<uint8_t>> desc(n, std::vector<uint8_t>(kOpSize));
  {
    uint8_t* d = desc[rank].data();
    put_le(d, t.epoch, 8);
    put_le(d + 8, seq, 8);
    put_le(d + 16, a.tag, 4);
    put_le(d + 20, rank, 4);
    d[24] = uint8_t(a.dtype);
    d[25] = uint8_t(a.op);
    put_le(d + 26, a.count, 8);
    d[34] = uint8_t(a.quant);
    d[35] = nonfinite ? 1 : 0;
  }
  for (uint32_t s = 0; s + 1 < n; ++s) {
    uint32_t send_origin = (rank + n - s) % n, recv_origin = (rank + n - s - 1) % n;
    if (send_small(ch.send_fds[0], version_, kDataOp, desc[send_origin].data(), kOpSize,
                   deadline) != PYHPC_OK)
      return peer_failure(ch.right_id, "sending to the right neighbour: " + last_error());
    std::vector<uint8_t> got(kOpSize);
    pyhpc_status st = recv_small(ch.recv_fds[0], version_, kDataOp, kOpSize, deadline, got.data(),
                                 [&] { return !failed_members(peer, t).empty(); });
    if (st == PYHPC_ERR_PROTOCOL) return abort(st);
    if (st != PYHPC_OK)
      return peer_failure(ch.left_id, "waiting for the left neighbour: " + last_error());
    if (get_le(got.data(), 8) != t.epoch || get_le(got.data() + 8, 8) != seq ||
        get_le(got.data() + 16, 4) != a.tag || get_le(got.data() + 20, 4) != recv_origin)
      return abort(PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                              "data plane: descriptor out of order (epoch/seq/tag/origin differ: "
                              "the peers called all_reduce in different orders?)"));
    desc[recv_origin] = std::move(got);
  }
  for (uint32_t r = 0; r < n; ++r) {
    const uint8_t* d = desc[r].data();
    uint64_t count = get_le(d + 26, 8);
    if (d[24] != uint8_t(a.dtype) || d[25] != uint8_t(a.op) || count != a.count ||
        d[34] != uint8_t(a.quant)) {
      // Every peer saw the same descriptors, so every peer fails here alike and
      // the channel stays in step.
      const uint8_t* m = desc[rank].data();
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                        "all_reduce arguments differ between peers: rank %u has %llu x %s op=%s "
                        "quantize=%s, rank %u has %llu x %s op=%s quantize=%s",
                        rank, static_cast<unsigned long long>(a.count), dtype_name(m[24]),
                        op_name(m[25]), quant_name(m[34]), r,
                        static_cast<unsigned long long>(count), dtype_name(d[24]),
                        op_name(d[25]), quant_name(d[34]));
    }
  }
  for (uint32_t r = 0; r < n; ++r)
    if (desc[r][35])  // seen alike by every peer: all fail here alike
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                        "quantized all_reduce: the input of rank %u holds NaN or inf (or a "
                        "float64 value beyond float32's range)",
                        r);

  // (2) The ring.
  const uint64_t base = count / n, rem = count % n;
  auto seg_start = [&](uint32_t k) { return k * base + std::min<uint64_t>(k, rem); };
  auto seg_len = [&](uint32_t k) { return base + (k < rem ? 1 : 0); };
  const uint64_t chunk_elems = std::max<uint64_t>(1, a.chunk_bytes / wsize);
  const uint64_t max_seg = base + (rem ? 1 : 0);
  const uint64_t C = (max_seg + chunk_elems - 1) / chunk_elems;
  const uint64_t steps = 2 * uint64_t(n - 1), total = steps * C;
  // One staging buffer per stream (each has one frame in flight).
  auto grow = [](std::vector<std::vector<uint8_t>>& bufs, size_t streams, size_t bytes) {
    bufs.resize(std::max(bufs.size(), streams));
    for (size_t q = 0; q < streams; ++q)
      if (bufs[q].size() < bytes) bufs[q].resize(bytes);
  };
  if (quant) {
    if (ch.qcodes.size() < count) ch.qcodes.resize(count);
    if (ch.qparams.size() < n * C * kQParams) ch.qparams.resize(n * C * kQParams);
    grow(ch.qsend, ch.send_fds.size(), kQParams + chunk_elems);
    grow(ch.qstage, ch.recv_fds.size(), kQParams + chunk_elems);
  } else {
    grow(ch.stage, ch.recv_fds.size(), chunk_elems * wsize);
  }
  auto qparams = [&](uint32_t k, uint64_t j) { return ch.qparams.data() + (k * C + j) * kQParams; };
  // Segment a step sends / receives.
  auto send_seg = [&](uint64_t s) {
    return s < n - 1 ? uint32_t((rank + n - s) % n) : uint32_t((rank + 1 + n - (s - (n - 1))) % n);
  };
  auto recv_seg = [&](uint64_t s) {
    return s < n - 1 ? uint32_t((rank + 2 * n - s - 1) % n) : uint32_t((rank + n - (s - (n - 1))) % n);
  };
  // Byte range [off, off+len) of chunk j of segment k within work.
  auto chunk_range = [&](uint32_t k, uint64_t j, uint64_t* off, uint64_t* len) {
    uint64_t sl = seg_len(k), lo = std::min(sl, j * chunk_elems),
             hi = std::min(sl, (j + 1) * chunk_elems);
    *off = (seg_start(k) + lo) * wsize;
    *len = (hi - lo) * wsize;
  };

  // Chunk i of the schedule (step i / C, chunk i % C) travels on stream
  // i % streams of its link: each stream carries its chunks in order, so the
  // receiver knows what every frame must be. Chunk i of a step > 0 leaves
  // only once chunk i - C (the same chunk of the step before) has arrived.
  struct Outgoing {
    uint64_t next = 0;  // the next chunk of the schedule on this stream
    bool active = false;
    uint8_t hdr[kHeaderSize + kDataSubHeader];
    const uint8_t* part[2] = {nullptr, nullptr};  // the payload, in up to two pieces
    uint64_t part_len[2] = {0, 0};
    uint64_t done = 0;
  };
  struct Incoming {
    uint64_t next = 0;
    uint8_t hdr[kHeaderSize + kDataSubHeader];
    size_t hgot = 0;
    uint64_t off = 0, len = 0, got = 0, plen = 0;
    uint8_t* dst = nullptr;
  };
  const size_t ns = ch.send_fds.size(), nr = ch.recv_fds.size();
  std::vector<Outgoing> sends(ns);
  std::vector<Incoming> recvs(nr);
  for (size_t q = 0; q < ns; ++q) sends[q].next = q;
  for (size_t q = 0; q < nr; ++q) recvs[q].next = q;
  std::vector<uint8_t> arrived(total, 0);
  std::vector<pollfd> fds(ns + nr);
  uint64_t sent = 0, recvd = 0, bytes_sent = 0;
  auto last_check = Clock::now();

  // Prepares the frame of chunk o.next (its payload quantized when it must be).
  auto start_send = [&](size_t q) {
    Outgoing& o = sends[q];
    const uint64_t s = o.next / C, j = o.next % C;
    const uint32_t k = send_seg(s);
    uint64_t off = 0, len = 0;
    chunk_range(k, j, &off, &len);
    o.part[1] = nullptr;
    o.part_len[1] = 0;
    if (!quant) {
      o.part[0] = (s == 0 ? own : work) + off;
      o.part_len[0] = len;
    } else {
      const uint64_t e = len / wsize;
      float* w = reinterpret_cast<float*>(work + off);
      if (s < n - 1) {  // reduce-scatter: this hop's partial sum
        uint8_t* buf = ch.qsend[q].data();
        quantize_chunk(a.quant, reinterpret_cast<const float*>((s == 0 ? own : work) + off), e,
                       buf + kQParams, buf);
        o.part[0] = buf;
        o.part_len[0] = kQParams + e;
      } else {  // all-gather: the segment's one quantization, forwarded as is
        uint8_t* prm = qparams(k, j);
        uint8_t* codes = ch.qcodes.data() + off / wsize;
        if (s == n - 1) {  // the owner: quantize once, keep what everyone gets
          quantize_chunk(a.quant, w, e, codes, prm);
          dequantize_chunk(a.quant, prm, codes, e, w, nullptr);
        }
        o.part[0] = prm;
        o.part_len[0] = kQParams;
        o.part[1] = codes;
        o.part_len[1] = e;
      }
    }
    const uint64_t plen = o.part_len[0] + o.part_len[1];
    put_header(o.hdr, version_, kData, uint32_t(kDataSubHeader + plen));
    put_le(o.hdr + kHeaderSize, seq, 8);
    put_le(o.hdr + kHeaderSize + 8, a.tag, 4);
    put_le(o.hdr + kHeaderSize + 12, s, 4);
    put_le(o.hdr + kHeaderSize + 16, j, 4);
    put_le(o.hdr + kHeaderSize + 20, uint8_t(a.quant), 4);
    o.done = 0;
    o.active = true;
  };

  auto can_start = [&](size_t q) {
    const Outgoing& o = sends[q];
    return !o.active && o.next < total &&
           (o.next < C || arrived[o.next - C]);
  };
  // One sendmsg on stream q; false (and `err`) if the connection failed.
  auto send_some = [&](size_t q, std::string* err) {
    Outgoing& o = sends[q];
    iovec iov[3];
    int niov = 0;
    const uint8_t* pieces[3] = {o.hdr, o.part[0], o.part[1]};
    const uint64_t piece_len[3] = {sizeof o.hdr, o.part_len[0], o.part_len[1]};
    uint64_t pos = o.done, frame_len = 0;
    for (int p = 0; p < 3; ++p) {
      frame_len += piece_len[p];
      if (pos < piece_len[p]) {
        iov[niov++] = {const_cast<uint8_t*>(pieces[p]) + pos, size_t(piece_len[p] - pos)};
        pos = 0;
      } else {
        pos -= piece_len[p];
      }
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = size_t(niov);
    ssize_t k = ::sendmsg(ch.send_fds[q], &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      *err = std::string("sending to the right neighbour: ") + std::strerror(errno);
      return false;
    }
    if (k > 0) {
      o.done += uint64_t(k);
      bytes_sent += uint64_t(k);
    }
    if (o.done == frame_len) {
      o.active = false;
      o.next += ns;
      ++sent;
    }
    return true;
  };

  while (recvd < total || sent < total) {
    for (size_t q = 0; q < ns; ++q) {
      if (can_start(q)) start_send(q);
      fds[q] = {ch.send_fds[q], short(sends[q].active ? POLLOUT : 0), 0};
    }
    for (size_t q = 0; q < nr; ++q)
      fds[ns + q] = {ch.recv_fds[q], short(recvs[q].next < total ? POLLIN : 0), 0};
    int pr = ::poll(fds.data(), nfds_t(fds.size()), ms_until(deadline, kPollSliceMs));
    if (pr < 0 && errno != EINTR)
      return peer_failure(ch.left_id, std::string("poll: ") + std::strerror(errno));
    auto now = Clock::now();
    if (pr <= 0 || now - last_check > std::chrono::milliseconds(kPollSliceMs)) {
      last_check = now;
      if (peer.health() != PYHPC_OK) {  // the master is gone: this op can never commit
        std::string why = last_error();
        failed->clear();
        return abort(PYHPC_FAIL(PYHPC_ERR_PEER, "all_reduce (tag %u) aborted: lost the master: %s",
                                unsigned(a.tag), why.c_str()));
      }
      std::vector<uint64_t> f = failed_members(peer, t);
      if (f.size() > cleared.size()) {
        // Did they all vote YES (then every peer can still finish)? Ask.
        Verdict v = Verdict::kAbort;
        std::vector<uint64_t> dead;
        pyhpc_status st = peer.vote(t.epoch, a.tag, seq, Vote::kQuery);
        if (st == PYHPC_OK) st = peer.await_verdict(t.epoch, a.tag, seq, deadline, &v, &dead);
        if (st != PYHPC_OK) return peer_failure(0, "the master reports failed peers");
        if (v != Verdict::kContinue)
          return aborted_by_master(std::move(dead), "a member failed before finishing");
        cleared = std::move(f);
      }
      if (now >= deadline)
        return peer_failure(recvd < total ? ch.left_id : ch.right_id,
                            "the operation's deadline passed (a peer is frozen or cut off?)");
      if (pr <= 0) continue;
    }
    std::string err;
    for (size_t q = 0; q < ns; ++q)
      if (sends[q].active && (fds[q].revents & (POLLOUT | POLLERR | POLLHUP)) &&
          !send_some(q, &err))
        return peer_failure(ch.right_id, err);
    for (size_t q = 0; q < nr; ++q) {
      Incoming& r = recvs[q];
      if (r.next >= total || !(fds[ns + q].revents & (POLLIN | POLLERR | POLLHUP))) continue;
      const uint64_t s = r.next / C, j = r.next % C;
      const uint32_t seg = recv_seg(s);
      ssize_t k;
      if (r.hgot < sizeof r.hdr)
        k = ::recv(ch.recv_fds[q], r.hdr + r.hgot, sizeof r.hdr - r.hgot, MSG_DONTWAIT);
      else
        k = ::recv(ch.recv_fds[q], r.dst + r.got, size_t(r.plen - r.got), MSG_DONTWAIT);
      if (k == 0) return peer_failure(ch.left_id, "the left neighbour closed the connection");
      if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          return peer_failure(ch.left_id, std::string("receiving from the left neighbour: ") +
                                              std::strerror(errno));
        k = 0;
      }
      if (r.hgot < sizeof r.hdr) {
        r.hgot += size_t(k);
        if (r.hgot == sizeof r.hdr) {
          Header h;
          if (decode_data_header(r.hdr, kHeaderSize, version_, &h) != PYHPC_OK)
            return abort(PYHPC_ERR_PROTOCOL);
          chunk_range(seg, j, &r.off, &r.len);
          const uint64_t plen = quant ? kQParams + r.len / wsize : r.len;
          const uint8_t* sh = r.hdr + kHeaderSize;
          if (h.type != kData || h.length != kDataSubHeader + plen || get_le(sh, 8) != seq ||
              get_le(sh + 8, 4) != a.tag || get_le(sh + 12, 4) != s ||
              get_le(sh + 16, 4) != j || get_le(sh + 20, 4) != uint8_t(a.quant))
            return abort(PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                                    "data plane: unexpected DATA frame (type %u, %u bytes) for "
                                    "op %llu step %llu chunk %llu",
                                    unsigned(h.type), unsigned(h.length),
                                    static_cast<unsigned long long>(seq),
                                    static_cast<unsigned long long>(s),
                                    static_cast<unsigned long long>(j)));
          if (!quant && s >= n - 1 && recv_seg(s) == rank) save(r.off, r.len);  // sent at step 0 only
          r.dst = quant ? ch.qstage[q].data() : s < n - 1 ? ch.stage[q].data() : work + r.off;
          r.got = 0;
          r.plen = plen;
        }
      } else {
        r.got += uint64_t(k);
      }
      if (r.hgot < sizeof r.hdr || r.got < r.plen) continue;
      if (quant) {
        const uint64_t e = r.len / wsize;
        const uint8_t* prm = ch.qstage[q].data();
        const uint8_t* codes = prm + kQParams;
        if (!valid_qparams(a.quant, prm))
          return abort(PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                                  "data plane: invalid quantization parameters in op %llu step "
                                  "%llu chunk %llu",
                                  static_cast<unsigned long long>(seq),
                                  static_cast<unsigned long long>(s),
                                  static_cast<unsigned long long>(j)));
        float* w = reinterpret_cast<float*>(work + r.off);
        if (s < n - 1) {
          dequantize_chunk(a.quant, prm, codes, e, w,
                           reinterpret_cast<const float*>(own + r.off));
        } else {  // keep the exact bytes to forward, and use them
          std::memcpy(qparams(seg, j), prm, kQParams);
          if (e) std::memcpy(ch.qcodes.data() + r.off / wsize, codes, e);
          dequantize_chunk(a.quant, prm, codes, e, w, nullptr);
        }
      } else if (s < n - 1) {
        save(r.off, r.len);  // (in place: own + r.off is work + r.off)
        reduce_work(a.dtype, work + r.off, ch.stage[q].data(), own + r.off,
                    size_t(r.len / wsize), a.op);
      }
      arrived[r.next] = 1;
      r.next += nr;
      ++recvd;
      r.hgot = 0;
      if (a.test_chunk_delay_s > 0)
        std::this_thread::sleep_for(std::chrono::duration<double>(a.test_chunk_delay_s));
    }
  }
  // Every chunk arrived: the commit round. Only on COMMIT does the result
  // stand (an abort puts an in-place input back).
  if (a.test_exit_at == 1) ::_exit(3);
  Verdict v = Verdict::kAbort;
  std::vector<uint64_t> dead;
  pyhpc_status st = peer.vote(t.epoch, a.tag, seq, Vote::kYes);
  if (a.test_exit_at == 2) ::_exit(3);
  if (st == PYHPC_OK) st = peer.await_verdict(t.epoch, a.tag, seq, deadline, &v, &dead);
  if (st == PYHPC_ERR_TIMEOUT) {
    // Withdraw (an undecided op then aborts for everyone) and hear the answer.
    clear_last_error();
    st = peer.vote(t.epoch, a.tag, seq, Vote::kNo);
    if (st == PYHPC_OK) st = peer.await_verdict(t.epoch, a.tag, seq, after(1.0), &v, &dead);
    if (st == PYHPC_ERR_TIMEOUT)
      return abort(PYHPC_FAIL(PYHPC_ERR_TIMEOUT,
                              "all_reduce (tag %u): no verdict from the master in the commit "
                              "round before the deadline (is the master frozen?); the output "
                              "is untouched",
                              unsigned(a.tag)));
  }
  if (st != PYHPC_OK) return abort(st);  // lost the master: a clean error, input restored
  if (v != Verdict::kCommit)
    return aborted_by_master(std::move(dead), "a member failed or aborted before finishing");
  if (quant && a.dtype == DType::kF64) {
    const float* w = reinterpret_cast<const float*>(work);
    double* o = static_cast<double*>(a.out);
    const bool avg = a.op == ReduceOp::kAvg;
    for (uint64_t i = 0; i < count; ++i) o[i] = avg ? double(w[i]) / double(n) : double(w[i]);
  } else {
    store_work(quant ? (a.dtype == DType::kF64 ? DType::kF32 : a.dtype) : a.dtype, a.op, work,
               a.out, count, n);
  }
  if (a.data_bytes_sent) *a.data_bytes_sent = bytes_sent;
  return PYHPC_OK;
}

}  // namespace pyhpc::ccl
