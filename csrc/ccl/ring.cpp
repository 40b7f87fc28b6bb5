#include "ccl/ring.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
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
  int send_fd = -1;     // to the right neighbour
  int recv_fd = -1;     // from the left neighbour
  uint64_t left_id = 0, right_id = 0;
  uint64_t seq = 0;
  std::vector<uint8_t> work, stage;
  std::vector<uint8_t> qcodes, qparams, qsend, qstage;  // quantized mode
  void close_fds() {
    if (send_fd >= 0) ::close(send_fd);
    if (recv_fd >= 0) ::close(recv_fd);
    send_fd = recv_fd = -1;
    ready = false;
  }
};

namespace {

constexpr size_t kQParams = 8;  // f32 min, f32 scale ahead of a quantized chunk's codes

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

template <typename T>
T combine(T a, T b, ReduceOp op) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      case ReduceOp::kMin: return (a < b || a != a) ? a : b;  // NaN propagates, like numpy
      case ReduceOp::kMax: return (a > b || a != a) ? a : b;
      default: return a + b;
    }
  } else {
    using U = std::make_unsigned_t<T>;
    switch (op) {
      case ReduceOp::kMin: return a < b ? a : b;
      case ReduceOp::kMax: return a > b ? a : b;
      default: return T(U(a) + U(b));  // wraps, like numpy
    }
  }
}

// dst[i] = incoming[i] (op) dst[i]
template <typename T>
void reduce_into(T* dst, const T* incoming, size_t n, ReduceOp op) {
  for (size_t i = 0; i < n; ++i) dst[i] = combine(incoming[i], dst[i], op);
}

void reduce_work(DType t, void* dst, const void* incoming, size_t n, ReduceOp op) {
  switch (t) {
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
      return reduce_into(static_cast<float*>(dst), static_cast<const float*>(incoming), n, op);
    case DType::kF64:
      return reduce_into(static_cast<double*>(dst), static_cast<const double*>(incoming), n, op);
    case DType::kI32:
      return reduce_into(static_cast<int32_t*>(dst), static_cast<const int32_t*>(incoming), n,
                         op);
    case DType::kI64:
      return reduce_into(static_cast<int64_t*>(dst), static_cast<const int64_t*>(incoming), n,
                         op);
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
  if (n) std::memcpy(out, work, n * dtype_size(t));
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

// codes[i] = round((v[i] - min) / scale) in 0..255, params = (min, scale).
void quantize_chunk(const float* v, size_t n, uint8_t* codes, uint8_t* params) {
  float lo = 0, hi = 0;
  if (n) lo = hi = v[0];
  for (size_t i = 1; i < n; ++i) {
    lo = v[i] < lo ? v[i] : lo;
    hi = v[i] > hi ? v[i] : hi;
  }
  float scale = (hi - lo) / 255.0f;
  if (!std::isfinite(lo) || !std::isfinite(hi) || !std::isfinite(scale)) {
    // A partial sum overflowed float32: the chunk is NaN on every peer.
    lo = scale = std::numeric_limits<float>::quiet_NaN();
    if (n) std::memset(codes, 0, n);
  } else if (scale == 0) {
    if (n) std::memset(codes, 0, n);
  } else {
    const float inv = 1.0f / scale;
    for (size_t i = 0; i < n; ++i) {
      float q = (v[i] - lo) * inv;
      codes[i] = q <= 0.0f ? uint8_t(0) : q >= 255.0f ? uint8_t(255) : uint8_t(q + 0.5f);
    }
  }
  put_f32(params, lo);
  put_f32(params + 4, scale);
}

// The one dequantization every peer uses. scale * code is exact in double
// (24 + 8 bits), so the result does not depend on FMA contraction.
inline float dequant(double lo, double scale, uint8_t c) {
  return float(lo + scale * double(c));
}

// dst[i] = dequant(code[i]) (+ dst[i] when `add`).
void dequantize_chunk(const uint8_t* params, const uint8_t* codes, size_t n, float* dst,
                      bool add) {
  const double lo = get_f32(params), scale = get_f32(params + 4);
  if (add) {
    for (size_t i = 0; i < n; ++i) dst[i] = dequant(lo, scale, codes[i]) + dst[i];
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = dequant(lo, scale, codes[i]);
  }
}

// Quantized mode: float32 work from any float input; false if non-finite.
bool load_work_q(DType t, const void* in, float* work, size_t n) {
  if (t == DType::kF64) {
    const double* s = static_cast<const double*>(in);
    for (size_t i = 0; i < n; ++i) work[i] = float(s[i]);
  } else {
    load_work(t, in, work, n);
  }
  bool finite = true;
  for (size_t i = 0; i < n; ++i) finite &= std::isfinite(work[i]);
  return finite;
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
                              uint16_t version) {
  if (listen_fd_ >= 0) return PYHPC_OK;
  if (secret.empty()) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "empty secret");
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
  for (auto& kv : pending_) ::close(kv.second);
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
  if (kind > kMaxChannelKind) {
    ::close(fd);
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
      ::close(it->second);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  Key key{from, epoch, kind, tag};
  auto it = pending_.find(key);
  if (it != pending_.end()) ::close(it->second);  // a redial replaces the old one
  pending_[key] = fd;
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
                             int* out) {
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
  auto it = pending_.find(Key{from, epoch, uint8_t(kind), tag});
  if (it == pending_.end()) return -1;
  int fd = it->second;
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
      out.push_back({std::get<0>(it->first), it->second});
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
    std::vector<uint64_t> f = failed_members(peer, t);
    *failed = f.empty() ? std::vector<uint64_t>{who} : f;
    std::string why = last_error();
    return PYHPC_FAIL(PYHPC_ERR_PEER, "data plane: %s peer %llu: %s", what,
                      static_cast<unsigned long long>(who), why.c_str());
  };
  // Dial the right neighbour and prove the secret.
  int fd = -1;
  pyhpc_status s = dial(peer, t, right, ChannelKind::kRing, tag, deadline, &fd);
  if (s == PYHPC_ERR_PEER) return fail_peer(right.id, "cannot reach");
  if (s != PYHPC_OK) return s;
  ch.send_fd = fd;
  // Wait for the left neighbour's connection.
  std::unique_lock<std::mutex> lock(mu_);
  Key key{left.id, t.epoch, uint8_t(ChannelKind::kRing), tag};
  for (;;) {
    auto it = pending_.find(key);
    if (it != pending_.end()) {
      ch.recv_fd = it->second;
      pending_.erase(it);
      break;
    }
    if (stop_) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "data plane stopped");
    lock.unlock();
    std::vector<uint64_t> f = failed_members(peer, t);
    lock.lock();
    if (!f.empty()) {
      *failed = f;
      return PYHPC_FAIL(PYHPC_ERR_PEER, "data plane: the master reports failed peers");
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
  set_nonblocking(ch.send_fd, true);
  set_nonblocking(ch.recv_fd, true);
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
  const bool quant = a.quant == Quant::kMinMaxU8;
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
  auto abort = [&](pyhpc_status s) {
    ch.close_fds();
    ch.broken = true;
    return s;
  };
  if (!ch.ready || ch.epoch != t.epoch) {
    pyhpc_status s = setup(peer, ch, t, a.tag, deadline, failed);
    if (s != PYHPC_OK) return abort(s);
  }
  const uint64_t seq = ++ch.seq;

  // Names who failed: the master's notices if any arrive within a short grace
  // (a killed peer is reported within milliseconds), else `suspect`.
  auto peer_failure = [&](uint64_t suspect, const std::string& why) {
    auto grace = std::min(after(0.5), deadline > Clock::now() ? deadline : Clock::now());
    std::vector<uint64_t> f = failed_members(peer, t);
    while (f.empty() && Clock::now() < grace) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      f = failed_members(peer, t);
    }
    *failed = f.empty() ? std::vector<uint64_t>{suspect} : f;
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

  // The work buffer (float32 when quantized: loaded first, to flag non-finite
  // inputs in the descriptor).
  const uint64_t count = a.count;
  if (ch.work.size() < count * wsize) ch.work.resize(count * wsize);
  uint8_t* work = ch.work.data();
  bool nonfinite = false;
  if (quant)
    nonfinite = !load_work_q(a.dtype, a.in, reinterpret_cast<float*>(work), count);
  else
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
    if (send_small(ch.send_fd, version_, kDataOp, desc[send_origin].data(), kOpSize, deadline) !=
        PYHPC_OK)
      return peer_failure(ch.right_id, "sending to the right neighbour: " + last_error());
    std::vector<uint8_t> got(kOpSize);
    pyhpc_status st = recv_small(ch.recv_fd, version_, kDataOp, kOpSize, deadline, got.data(),
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
                        op_name(m[25]), m[34] ? "minmax_uint8" : "none", r,
                        static_cast<unsigned long long>(count), dtype_name(d[24]),
                        op_name(d[25]), d[34] == 1 ? "minmax_uint8" : d[34] ? "?" : "none");
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
  if (quant) {
    if (ch.qcodes.size() < count) ch.qcodes.resize(count);
    if (ch.qparams.size() < n * C * kQParams) ch.qparams.resize(n * C * kQParams);
    if (ch.qsend.size() < kQParams + chunk_elems) ch.qsend.resize(kQParams + chunk_elems);
    if (ch.qstage.size() < kQParams + chunk_elems) ch.qstage.resize(kQParams + chunk_elems);
  } else if (ch.stage.size() < chunk_elems * wsize) {
    ch.stage.resize(chunk_elems * wsize);
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

  uint64_t sent = 0, recvd = 0, bytes_sent = 0;
  uint8_t shdr[kHeaderSize + kDataSubHeader];
  uint64_t s_off = 0, s_len = 0, s_done = 0;  // current outgoing frame
  const uint8_t* s_part[2] = {nullptr, nullptr};  // its payload, in up to two pieces
  uint64_t s_part_len[2] = {0, 0};
  bool s_active = false;
  uint8_t rhdr[kHeaderSize + kDataSubHeader];
  size_t r_hgot = 0;
  uint64_t r_off = 0, r_len = 0, r_got = 0, r_plen = 0;
  uint8_t* r_dst = nullptr;
  auto last_check = Clock::now();
  while (sent < total || recvd < total) {
    if (!s_active && sent < total && (sent < C || recvd > sent - C)) {
      uint64_t s = sent / C, j = sent % C;
      uint32_t k = send_seg(s);
      chunk_range(k, j, &s_off, &s_len);
      if (!quant) {
        s_part[0] = work + s_off;
        s_part_len[0] = s_len;
        s_part[1] = nullptr;
        s_part_len[1] = 0;
      } else {
        const uint64_t e = s_len / wsize;
        float* w = reinterpret_cast<float*>(work + s_off);
        if (s < n - 1) {  // reduce-scatter: this hop's partial sum
          quantize_chunk(w, e, ch.qsend.data() + kQParams, ch.qsend.data());
          s_part[0] = ch.qsend.data();
          s_part_len[0] = kQParams + e;
          s_part[1] = nullptr;
          s_part_len[1] = 0;
        } else {  // all-gather: the segment's one quantization, forwarded as is
          uint8_t* prm = qparams(k, j);
          uint8_t* codes = ch.qcodes.data() + s_off / wsize;
          if (s == n - 1) {  // the owner: quantize once, keep what everyone gets
            quantize_chunk(w, e, codes, prm);
            dequantize_chunk(prm, codes, e, w, false);
          }
          s_part[0] = prm;
          s_part_len[0] = kQParams;
          s_part[1] = codes;
          s_part_len[1] = e;
        }
      }
      const uint64_t plen = s_part_len[0] + s_part_len[1];
      put_header(shdr, version_, kData, uint32_t(kDataSubHeader + plen));
      put_le(shdr + kHeaderSize, seq, 8);
      put_le(shdr + kHeaderSize + 8, a.tag, 4);
      put_le(shdr + kHeaderSize + 12, s, 4);
      put_le(shdr + kHeaderSize + 16, j, 4);
      put_le(shdr + kHeaderSize + 20, uint8_t(a.quant), 4);
      s_done = 0;
      s_active = true;
    }
    pollfd fds[2] = {{ch.send_fd, short(s_active ? POLLOUT : 0), 0},
                     {ch.recv_fd, short(recvd < total ? POLLIN : 0), 0}};
    int pr = ::poll(fds, 2, ms_until(deadline, kPollSliceMs));
    if (pr < 0 && errno != EINTR)
      return peer_failure(ch.left_id, std::string("poll: ") + std::strerror(errno));
    auto now = Clock::now();
    if (pr <= 0 || now - last_check > std::chrono::milliseconds(kPollSliceMs)) {
      last_check = now;
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
    if (s_active && (fds[0].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const size_t hl = sizeof shdr;
      iovec iov[3];
      int niov = 0;
      const uint8_t* pieces[3] = {shdr, s_part[0], s_part[1]};
      const uint64_t piece_len[3] = {hl, s_part_len[0], s_part_len[1]};
      uint64_t pos = s_done, frame_len = 0;
      for (int q = 0; q < 3; ++q) {
        frame_len += piece_len[q];
        if (pos < piece_len[q]) {
          iov[niov++] = {const_cast<uint8_t*>(pieces[q]) + pos, size_t(piece_len[q] - pos)};
          pos = 0;
        } else {
          pos -= piece_len[q];
        }
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = size_t(niov);
      ssize_t k = ::sendmsg(ch.send_fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return peer_failure(ch.right_id, std::string("sending to the right neighbour: ") +
                                             std::strerror(errno));
      if (k > 0) {
        s_done += uint64_t(k);
        bytes_sent += uint64_t(k);
      }
      if (s_done == frame_len) {
        s_active = false;
        ++sent;
      }
    }
    if (recvd < total && (fds[1].revents & (POLLIN | POLLERR | POLLHUP))) {
      uint64_t s = recvd / C, j = recvd % C;
      ssize_t k;
      if (r_hgot < sizeof rhdr) {
        k = ::recv(ch.recv_fd, rhdr + r_hgot, sizeof rhdr - r_hgot, MSG_DONTWAIT);
      } else {
        k = ::recv(ch.recv_fd, r_dst + r_got, size_t(r_plen - r_got), MSG_DONTWAIT);
      }
      if (k == 0)
        return peer_failure(ch.left_id, "the left neighbour closed the connection");
      if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          return peer_failure(ch.left_id, std::string("receiving from the left neighbour: ") +
                                              std::strerror(errno));
        k = 0;
      }
      if (r_hgot < sizeof rhdr) {
        r_hgot += size_t(k);
        if (r_hgot == sizeof rhdr) {
          Header h;
          if (decode_data_header(rhdr, kHeaderSize, version_, &h) != PYHPC_OK)
            return abort(PYHPC_ERR_PROTOCOL);
          uint32_t seg = recv_seg(s);
          chunk_range(seg, j, &r_off, &r_len);
          const uint64_t plen = quant ? kQParams + r_len / wsize : r_len;
          const uint8_t* sh = rhdr + kHeaderSize;
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
          r_dst = quant ? ch.qstage.data() : s < n - 1 ? ch.stage.data() : work + r_off;
          r_got = 0;
          r_plen = plen;
        }
      } else {
        r_got += uint64_t(k);
      }
      if (r_hgot == sizeof rhdr && r_got == r_plen) {
        if (quant) {
          const uint64_t e = r_len / wsize;
          const uint8_t* prm = ch.qstage.data();
          const uint8_t* codes = prm + kQParams;
          float* w = reinterpret_cast<float*>(work + r_off);
          if (s < n - 1) {
            dequantize_chunk(prm, codes, e, w, true);
          } else {  // keep the exact bytes to forward, and use them
            std::memcpy(qparams(recv_seg(s), j), prm, kQParams);
            if (e) std::memcpy(ch.qcodes.data() + r_off / wsize, codes, e);
            dequantize_chunk(prm, codes, e, w, false);
          }
        } else if (s < n - 1) {
          reduce_work(a.dtype, work + r_off, ch.stage.data(), size_t(r_len / wsize), a.op);
        }
        ++recvd;
        r_hgot = 0;
        if (a.test_chunk_delay_s > 0)
          std::this_thread::sleep_for(std::chrono::duration<double>(a.test_chunk_delay_s));
      }
    }
  }
  // Every chunk arrived: the commit round. Only on COMMIT does the caller's
  // buffer change.
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
  if (st != PYHPC_OK) return abort(st);  // lost the master: a clean error, output untouched
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
