#include "ccl/wire.hpp"

#include <algorithm>
#include <cstring>

namespace pyhpc::ccl {
namespace {

class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool bytes(void* dst, size_t k) {
    if (k > n_ - off_) return false;
    std::memcpy(dst, p_ + off_, k);
    off_ += k;
    return true;
  }
  template <typename T>
  bool uint(T* v) {
    if (sizeof(T) > n_ - off_) return false;
    T x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= T(T(p_[off_ + i]) << (8 * i));
    off_ += sizeof(T);
    *v = x;
    return true;
  }
  bool str(std::string* s, size_t cap) {
    uint16_t len = 0;
    if (!uint(&len) || len > cap || len > n_ - off_) return false;
    s->assign(reinterpret_cast<const char*>(p_ + off_), len);
    off_ += len;
    return true;
  }
  size_t left() const { return n_ - off_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
};

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>* out) : out_(out) {}
  void bytes(const void* p, size_t k) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out_->insert(out_->end(), b, b + k);
  }
  template <typename T>
  void uint(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_->push_back(uint8_t(v >> (8 * i)));
  }
  void str(const std::string& s) {
    uint(uint16_t(s.size()));
    bytes(s.data(), s.size());
  }

 private:
  std::vector<uint8_t>* out_;
};

constexpr size_t kPeerEntryMax = 8 + 2 + 2 + kMaxHost;
constexpr size_t kVoteSize = 8 + 8 + 4 + 1;
constexpr size_t kVerdictMax = kVoteSize + 4 + 8 * size_t(kMaxWorld);
constexpr size_t kTopologyMax = 8 + 4 * 4 + 2 * 8 * size_t(kMaxWorld) + kMaxWorld * kPeerEntryMax;
constexpr size_t kStateEntryMax =
    2 + kMaxStateName + 2 + kMaxDtypeName + 1 + 1 + 8 * kMaxStateDims + 8 + 8;
constexpr size_t kSyncReportMax = 8 + 8 + 8 + 4 + kMaxStateTensors * kStateEntryMax;
constexpr size_t kSyncPlanMax = 8 + 8 + 1 + 8 + 4 + kMaxStateTensors * size_t(4 + 8 + 8);
constexpr size_t kSyncDoneSize = 8 + 8 + 1;
constexpr size_t kSyncVerdictMax = kSyncDoneSize + 4 + 8 * size_t(kMaxWorld);
// topology optimization
constexpr size_t kTopoReportMax = 8 + 8 + 1 + 4 + size_t(kMaxTopoWorld) * 24;
constexpr size_t kTopoResultMax =
    8 + 8 + 1 + 4 + size_t(kMaxTopoWorld) * 16 + size_t(kMaxTopoWorld) * kMaxTopoWorld * 16;

bool valid_itemsize(uint8_t k) {
  return k == 1 || k == 2 || k == 4 || k == 8 || k == 16 || k == 32;
}

// prod(shape) * itemsize, false if it reaches kMaxStateBytes (no overflow on the way).
bool state_bytes(const std::vector<uint64_t>& shape, uint8_t itemsize, uint64_t* out) {
  uint64_t n = itemsize;
  bool zero = false;
  for (uint64_t d : shape) zero = zero || d == 0;
  if (zero) {
    *out = 0;
    // still refuse absurd dimensions
    for (uint64_t d : shape)
      if (d >= kMaxStateBytes) return false;
    return true;
  }
  for (uint64_t d : shape) {
    if (d >= kMaxStateBytes || n > (kMaxStateBytes - 1) / d) return false;
    n *= d;
  }
  *out = n;
  return true;
}

bool printable_host(const std::string& h) {
  return std::all_of(h.begin(), h.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

pyhpc_status bad(const char* type, const char* what) {
  return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "malformed %s message: %s", type, what);
}

// ---- topology optimization ----
bool unique_nonzero(std::vector<uint64_t> ids) {
  std::sort(ids.begin(), ids.end());
  return (ids.empty() || ids[0] != 0) && std::adjacent_find(ids.begin(), ids.end()) == ids.end();
}

pyhpc_status decode_topo(MsgType t, Reader& r, Message& m) {
  const char* tn = type_name(t);
  if (!r.uint(&m.epoch) || !r.uint(&m.seq) || !r.uint(&m.vote)) return bad(tn, "truncated");
  if (m.epoch == 0 || m.seq == 0) return bad(tn, "epoch or sequence number 0");
  if (t == MsgType::kTopoResult && m.vote == uint8_t(TopoOutcome::kAbort)) {
    uint32_t n_dead = 0;
    if (!r.uint(&n_dead)) return bad(tn, "truncated");
    if (n_dead > kMaxWorld) return bad(tn, "dead count too large");
    if (size_t(n_dead) * 8 != r.left()) return bad(tn, "dead list length differs from its count");
    m.dead.resize(n_dead);
    for (auto& id : m.dead) {
      r.uint(&id);
      if (id == 0) return bad(tn, "peer id 0");
    }
    return PYHPC_OK;
  }
  if (t == MsgType::kTopoResult && m.vote != uint8_t(TopoOutcome::kOrder))
    return bad(tn, "unknown outcome");
  if (t == MsgType::kTopoReport && m.vote > 1) return bad(tn, "ok is neither 0 nor 1");
  uint32_t n = 0;
  if (!r.uint(&n)) return bad(tn, "truncated");
  if (n > kMaxTopoWorld) return bad(tn, "too many peers");
  size_t want = t == MsgType::kTopoReport ? size_t(n) * 24 : size_t(n) * 16 + size_t(n) * n * 16;
  if (want != r.left()) return bad(tn, "length differs from the peer count");
  if (t == MsgType::kTopoReport) {
    if (m.vote == 0 && n != 0) return bad(tn, "measurements in a give-up");
    m.ids.resize(n);
    m.bandwidth.resize(n);
    m.latency_ns.resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      r.uint(&m.ids[i]);
      r.uint(&m.bandwidth[i]);
      r.uint(&m.latency_ns[i]);
      if (m.bandwidth[i] == 0 || m.latency_ns[i] == 0) return bad(tn, "a measurement of 0");
    }
    if (!unique_nonzero(m.ids)) return bad(tn, "peer id 0 or a duplicate id");
    return PYHPC_OK;
  }
  if (n == 0) return bad(tn, "no peers");
  m.ids.resize(n);
  m.order.resize(n);
  m.bandwidth.resize(size_t(n) * n);
  m.latency_ns.resize(size_t(n) * n);
  for (auto& id : m.ids) r.uint(&id);
  for (auto& id : m.order) r.uint(&id);
  for (auto& v : m.bandwidth) r.uint(&v);
  for (auto& v : m.latency_ns) r.uint(&v);
  if (!unique_nonzero(m.ids)) return bad(tn, "peer id 0 or a duplicate id");
  std::vector<uint64_t> a = m.ids, b = m.order;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  if (a != b) return bad(tn, "the order is not a permutation of the ids");
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t j = 0; j < n; ++j) {
      bool zero = m.bandwidth[size_t(i) * n + j] == 0 || m.latency_ns[size_t(i) * n + j] == 0;
      bool diag_set = m.bandwidth[size_t(i) * n + j] != 0 || m.latency_ns[size_t(i) * n + j] != 0;
      if (i == j ? diag_set : zero) return bad(tn, "a matrix entry out of range");
    }
  return PYHPC_OK;
}

pyhpc_status encode_topo(const Message& m, Writer& w) {
  auto too_long = [](const char* what) {
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "cannot encode: %s too long", what);
  };
  w.uint(m.epoch);
  w.uint(m.seq);
  w.uint(m.vote);
  if (m.type == MsgType::kTopoResult && m.vote == uint8_t(TopoOutcome::kAbort)) {
    if (m.dead.size() > kMaxWorld) return too_long("dead list");
    w.uint(uint32_t(m.dead.size()));
    for (uint64_t id : m.dead) w.uint(id);
    return PYHPC_OK;
  }
  size_t n = m.ids.size();
  if (n > kMaxTopoWorld) return too_long("peer list");
  size_t per = m.type == MsgType::kTopoReport ? n : n * n;
  if (m.bandwidth.size() != per || m.latency_ns.size() != per ||
      (m.type == MsgType::kTopoResult && m.order.size() != n))
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "cannot encode %s: measurement lists of the wrong length",
                      type_name(m.type));
  w.uint(uint32_t(n));
  if (m.type == MsgType::kTopoReport) {
    for (size_t i = 0; i < n; ++i) {
      w.uint(m.ids[i]);
      w.uint(m.bandwidth[i]);
      w.uint(m.latency_ns[i]);
    }
    return PYHPC_OK;
  }
  for (uint64_t id : m.ids) w.uint(id);
  for (uint64_t id : m.order) w.uint(id);
  for (uint64_t v : m.bandwidth) w.uint(v);
  for (uint64_t v : m.latency_ns) w.uint(v);
  return PYHPC_OK;
}
// ---- end topology optimization ----

}  // namespace

const char* type_name(MsgType t) {
  switch (t) {
    case MsgType::kChallenge: return "CHALLENGE";
    case MsgType::kAuth: return "AUTH";
    case MsgType::kAuthOk: return "AUTH_OK";
    case MsgType::kError: return "ERROR";
    case MsgType::kHeartbeat: return "HEARTBEAT";
    case MsgType::kUpdateRequest: return "UPDATE_REQUEST";
    case MsgType::kTopology: return "TOPOLOGY";
    case MsgType::kPeerFailed: return "PEER_FAILED";
    case MsgType::kLeave: return "LEAVE";
    case MsgType::kVote: return "VOTE";
    case MsgType::kVerdict: return "VERDICT";
    case MsgType::kSyncReport: return "SYNC_REPORT";
    case MsgType::kSyncPlan: return "SYNC_PLAN";
    case MsgType::kSyncDone: return "SYNC_DONE";
    case MsgType::kSyncVerdict: return "SYNC_VERDICT";
    case MsgType::kTopoReport: return "TOPO_REPORT";  // topology optimization
    case MsgType::kTopoResult: return "TOPO_RESULT";
  }
  return "UNKNOWN";
}

bool is_control_type(uint16_t type) {
  return (type >= kMinType && type <= uint16_t(MsgType::kLeave)) ||
         (type >= uint16_t(MsgType::kVote) && type <= uint16_t(MsgType::kSyncVerdict)) ||
         type == uint16_t(MsgType::kTopoReport) || type == uint16_t(MsgType::kTopoResult);
}

size_t max_payload(uint16_t type) {
  switch (static_cast<MsgType>(type)) {
    case MsgType::kChallenge: return kNonceSize;
    case MsgType::kAuth: return kNonceSize + 32 + 2 + 2 + kMaxHost;
    case MsgType::kAuthOk: return 8 + 32;
    case MsgType::kError: return 2 + 2 + kMaxErrorText;
    case MsgType::kHeartbeat: return 8;
    case MsgType::kUpdateRequest: return 8;
    case MsgType::kTopology: return kTopologyMax;
    case MsgType::kPeerFailed: return 8 + 2;
    case MsgType::kLeave: return 0;
    case MsgType::kVote: return kVoteSize;
    case MsgType::kVerdict: return kVerdictMax;
    case MsgType::kSyncReport: return kSyncReportMax;
    case MsgType::kSyncPlan: return kSyncPlanMax;
    case MsgType::kSyncDone: return kSyncDoneSize;
    case MsgType::kSyncVerdict: return kSyncVerdictMax;
    case MsgType::kTopoReport: return kTopoReportMax;  // topology optimization
    case MsgType::kTopoResult: return kTopoResultMax;
  }
  return 0;
}

size_t max_frame() {
  return kHeaderSize + std::max({kTopologyMax, kSyncReportMax, kTopoResultMax});
}

pyhpc_status decode_header(const uint8_t* p, size_t n, uint16_t version, Header* out) {
  Reader r(p, n);
  Header h;
  if (!r.uint(&h.magic) || !r.uint(&h.version) || !r.uint(&h.type) || !r.uint(&h.length))
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "truncated frame header: %zu of %zu bytes", n,
                      kHeaderSize);
  if (h.magic != kMagic)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                      "not a PCCL frame: magic 0x%08x, expected 0x%08x", h.magic, kMagic);
  if (h.version != version)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                      "protocol version mismatch: the other side speaks PCCL protocol "
                      "version %u, this side speaks version %u",
                      unsigned(h.version), unsigned(version));
  if (!is_control_type(h.type))
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "unknown message type %u", unsigned(h.type));
  if (h.length > max_payload(h.type))
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "%s payload of %u bytes exceeds its cap of %zu",
                      type_name(static_cast<MsgType>(h.type)), unsigned(h.length),
                      max_payload(h.type));
  *out = h;
  return PYHPC_OK;
}

pyhpc_status decode_payload(const Header& h, const uint8_t* p, size_t n, Message* out) {
  if (n != h.length)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "payload of %zu bytes, header says %u", n,
                      unsigned(h.length));
  MsgType t = static_cast<MsgType>(h.type);
  const char* tn = type_name(t);
  Reader r(p, n);
  Message m;
  m.type = t;
  switch (t) {
    case MsgType::kChallenge:
      if (!r.bytes(m.nonce.data(), kNonceSize)) return bad(tn, "short nonce");
      break;
    case MsgType::kAuth:
      if (!r.bytes(m.nonce.data(), kNonceSize) || !r.bytes(m.mac.data(), 32) ||
          !r.uint(&m.port))
        return bad(tn, "truncated");
      if (!r.str(&m.text, kMaxHost)) return bad(tn, "bad host string");
      if (!printable_host(m.text)) return bad(tn, "host is not printable ASCII");
      break;
    case MsgType::kAuthOk:
      if (!r.uint(&m.id) || !r.bytes(m.mac.data(), 32)) return bad(tn, "truncated");
      if (m.id == 0) return bad(tn, "peer id 0");
      break;
    case MsgType::kError:
      if (!r.uint(&m.code)) return bad(tn, "truncated");
      if (!r.str(&m.text, kMaxErrorText)) return bad(tn, "bad text string");
      break;
    case MsgType::kHeartbeat:
    case MsgType::kUpdateRequest:
      if (!r.uint(&m.seq)) return bad(tn, "truncated");
      break;
    case MsgType::kTopology: {
      uint32_t n_peers = 0, n_dead = 0, n_left = 0;
      if (!r.uint(&m.epoch) || !r.uint(&m.your_rank) || !r.uint(&n_peers) ||
          !r.uint(&n_dead) || !r.uint(&n_left))
        return bad(tn, "truncated");
      if (n_peers == 0 || n_peers > kMaxWorld) return bad(tn, "peer count out of range");
      if (n_dead > kMaxWorld || n_left > kMaxWorld) return bad(tn, "departed count too large");
      if (m.your_rank >= n_peers) return bad(tn, "rank not below the world size");
      // Each count is checked against what is left before anything is reserved.
      if (size_t(n_dead + n_left) * 8 > r.left()) return bad(tn, "truncated id lists");
      m.dead.resize(n_dead);
      m.left.resize(n_left);
      for (auto& id : m.dead) r.uint(&id);
      for (auto& id : m.left) r.uint(&id);
      if (size_t(n_peers) * 12 > r.left()) return bad(tn, "truncated peer list");
      m.peers.resize(n_peers);
      for (auto& pi : m.peers) {
        if (!r.uint(&pi.id) || !r.uint(&pi.port) || !r.str(&pi.host, kMaxHost))
          return bad(tn, "truncated peer entry");
        if (pi.id == 0) return bad(tn, "peer id 0");
        if (!printable_host(pi.host)) return bad(tn, "host is not printable ASCII");
      }
      std::vector<uint64_t> ids;
      ids.reserve(n_peers);
      for (auto& pi : m.peers) ids.push_back(pi.id);
      std::sort(ids.begin(), ids.end());
      if (std::adjacent_find(ids.begin(), ids.end()) != ids.end())
        return bad(tn, "duplicate peer id");
      break;
    }
    case MsgType::kPeerFailed:
      if (!r.uint(&m.id) || !r.uint(&m.code)) return bad(tn, "truncated");
      if (m.id == 0) return bad(tn, "peer id 0");
      if (m.code < 1 || m.code > 3) return bad(tn, "unknown reason");
      break;
    case MsgType::kLeave:
      break;
    case MsgType::kVote:
    case MsgType::kVerdict: {
      if (!r.uint(&m.epoch) || !r.uint(&m.seq) || !r.uint(&m.tag) || !r.uint(&m.vote))
        return bad(tn, "truncated");
      if (m.epoch == 0 || m.seq == 0) return bad(tn, "epoch or sequence number 0");
      if (t == MsgType::kVote) {
        if (m.vote > uint8_t(Vote::kQuery)) return bad(tn, "unknown vote");
        break;
      }
      if (m.vote < uint8_t(Verdict::kCommit) || m.vote > uint8_t(Verdict::kContinue))
        return bad(tn, "unknown verdict");
      uint32_t n_dead = 0;
      if (!r.uint(&n_dead)) return bad(tn, "truncated");
      if (n_dead > kMaxWorld) return bad(tn, "dead count too large");
      if (size_t(n_dead) * 8 != r.left()) return bad(tn, "dead list length differs from its count");
      if (n_dead && m.vote != uint8_t(Verdict::kAbort)) return bad(tn, "dead ids in a non-ABORT");
      m.dead.resize(n_dead);
      for (auto& id : m.dead) {
        r.uint(&id);
        if (id == 0) return bad(tn, "peer id 0");
      }
      break;
    }
    case MsgType::kSyncReport: {
      uint32_t count = 0;
      if (!r.uint(&m.epoch) || !r.uint(&m.seq) || !r.uint(&m.revision) || !r.uint(&count))
        return bad(tn, "truncated");
      if (m.epoch == 0 || m.seq == 0) return bad(tn, "epoch or sequence number 0");
      if (count > kMaxStateTensors) return bad(tn, "too many tensors");
      // The smallest entry is 24 bytes: the count is checked before anything is reserved.
      if (size_t(count) * 24 > r.left()) return bad(tn, "truncated tensor list");
      m.tensors.resize(count);
      for (uint32_t i = 0; i < count; ++i) {
        StateEntry& e = m.tensors[i];
        uint8_t ndim = 0;
        if (!r.str(&e.name, kMaxStateName) || !r.str(&e.dtype, kMaxDtypeName) ||
            !r.uint(&e.itemsize) || !r.uint(&ndim))
          return bad(tn, "truncated tensor entry");
        if (e.name.empty() || e.name.find('\0') != std::string::npos)
          return bad(tn, "empty tensor name or one with a NUL byte");
        if (i > 0 && !(m.tensors[i - 1].name < e.name))
          return bad(tn, "tensor names not in strictly increasing order");
        if (e.dtype.empty() || !printable_host(e.dtype)) return bad(tn, "bad dtype string");
        if (!valid_itemsize(e.itemsize)) return bad(tn, "bad itemsize");
        if (ndim > kMaxStateDims) return bad(tn, "too many dimensions");
        e.shape.resize(ndim);
        for (auto& d : e.shape)
          if (!r.uint(&d)) return bad(tn, "truncated shape");
        if (!r.uint(&e.nbytes) || !r.uint(&e.hash)) return bad(tn, "truncated tensor entry");
        uint64_t want = 0;
        if (!state_bytes(e.shape, e.itemsize, &want)) return bad(tn, "tensor too large");
        if (e.nbytes != want) return bad(tn, "byte size differs from shape x itemsize");
      }
      break;
    }
    case MsgType::kSyncPlan: {
      if (!r.uint(&m.epoch) || !r.uint(&m.seq) || !r.uint(&m.vote) || !r.uint(&m.revision))
        return bad(tn, "truncated");
      if (m.epoch == 0 || m.seq == 0) return bad(tn, "epoch or sequence number 0");
      if (m.vote == uint8_t(SyncOutcome::kMismatch)) {
        if (!r.str(&m.text, kMaxErrorText)) return bad(tn, "bad text string");
        break;
      }
      if (m.vote != uint8_t(SyncOutcome::kPlan)) return bad(tn, "unknown outcome");
      uint32_t count = 0;
      if (!r.uint(&count)) return bad(tn, "truncated");
      if (count > kMaxStateTensors) return bad(tn, "too many fetches");
      if (size_t(count) * 20 != r.left())
        return bad(tn, "fetch list length differs from its count");
      m.fetch.resize(count);
      for (uint32_t i = 0; i < count; ++i) {
        StateFetch& f = m.fetch[i];
        r.uint(&f.index);
        r.uint(&f.from);
        r.uint(&f.hash);
        if (f.from == 0) return bad(tn, "peer id 0");
        if (f.index >= kMaxStateTensors) return bad(tn, "tensor index out of range");
        if (i > 0 && f.index <= m.fetch[i - 1].index)
          return bad(tn, "fetch indices not strictly increasing");
      }
      break;
    }
    case MsgType::kSyncDone:
    case MsgType::kSyncVerdict: {
      if (!r.uint(&m.epoch) || !r.uint(&m.seq) || !r.uint(&m.vote)) return bad(tn, "truncated");
      if (m.epoch == 0 || m.seq == 0) return bad(tn, "epoch or sequence number 0");
      if (t == MsgType::kSyncDone) {
        if (m.vote > 1) return bad(tn, "ok is neither 0 nor 1");
        break;
      }
      if (m.vote != uint8_t(Verdict::kCommit) && m.vote != uint8_t(Verdict::kAbort))
        return bad(tn, "unknown verdict");
      uint32_t n_dead = 0;
      if (!r.uint(&n_dead)) return bad(tn, "truncated");
      if (n_dead > kMaxWorld) return bad(tn, "dead count too large");
      if (size_t(n_dead) * 8 != r.left()) return bad(tn, "dead list length differs from its count");
      if (n_dead && m.vote != uint8_t(Verdict::kAbort)) return bad(tn, "dead ids in a COMMIT");
      m.dead.resize(n_dead);
      for (auto& id : m.dead) {
        r.uint(&id);
        if (id == 0) return bad(tn, "peer id 0");
      }
      break;
    }
    case MsgType::kTopoReport:  // topology optimization
    case MsgType::kTopoResult:
      PYHPC_CHECK(decode_topo(t, r, m));
      break;
  }
  if (r.left() != 0) return bad(tn, "trailing bytes");
  *out = std::move(m);
  return PYHPC_OK;
}

pyhpc_status decode_frame(const uint8_t* p, size_t n, uint16_t version, Message* out) {
  Header h;
  PYHPC_CHECK(decode_header(p, n, version, &h));
  if (n - kHeaderSize != h.length)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "frame holds %zu payload bytes, header says %u",
                      n - kHeaderSize, unsigned(h.length));
  PYHPC_CHECK(decode_payload(h, p + kHeaderSize, h.length, out));
  return PYHPC_OK;
}

pyhpc_status encode(const Message& m, std::vector<uint8_t>* out, uint16_t version) {
  std::vector<uint8_t> payload;
  Writer w(&payload);
  auto too_long = [](const char* what) {
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "cannot encode: %s too long", what);
  };
  switch (m.type) {
    case MsgType::kChallenge:
      w.bytes(m.nonce.data(), kNonceSize);
      break;
    case MsgType::kAuth:
      if (m.text.size() > kMaxHost) return too_long("host");
      w.bytes(m.nonce.data(), kNonceSize);
      w.bytes(m.mac.data(), 32);
      w.uint(m.port);
      w.str(m.text);
      break;
    case MsgType::kAuthOk:
      w.uint(m.id);
      w.bytes(m.mac.data(), 32);
      break;
    case MsgType::kError:
      w.uint(m.code);
      w.str(m.text.size() > kMaxErrorText ? m.text.substr(0, kMaxErrorText) : m.text);
      break;
    case MsgType::kHeartbeat:
    case MsgType::kUpdateRequest:
      w.uint(m.seq);
      break;
    case MsgType::kTopology:
      if (m.peers.size() > kMaxWorld || m.dead.size() > kMaxWorld || m.left.size() > kMaxWorld)
        return too_long("peer list");
      w.uint(m.epoch);
      w.uint(m.your_rank);
      w.uint(uint32_t(m.peers.size()));
      w.uint(uint32_t(m.dead.size()));
      w.uint(uint32_t(m.left.size()));
      for (uint64_t id : m.dead) w.uint(id);
      for (uint64_t id : m.left) w.uint(id);
      for (const auto& pi : m.peers) {
        if (pi.host.size() > kMaxHost) return too_long("host");
        w.uint(pi.id);
        w.uint(pi.port);
        w.str(pi.host);
      }
      break;
    case MsgType::kPeerFailed:
      w.uint(m.id);
      w.uint(m.code);
      break;
    case MsgType::kLeave:
      break;
    case MsgType::kVote:
    case MsgType::kVerdict:
      if (m.type == MsgType::kVerdict && m.dead.size() > kMaxWorld) return too_long("dead list");
      w.uint(m.epoch);
      w.uint(m.seq);
      w.uint(m.tag);
      w.uint(m.vote);
      if (m.type == MsgType::kVerdict) {
        w.uint(uint32_t(m.dead.size()));
        for (uint64_t id : m.dead) w.uint(id);
      }
      break;
    case MsgType::kSyncReport:
      if (m.tensors.size() > kMaxStateTensors) return too_long("tensor list");
      w.uint(m.epoch);
      w.uint(m.seq);
      w.uint(m.revision);
      w.uint(uint32_t(m.tensors.size()));
      for (const auto& e : m.tensors) {
        if (e.name.size() > kMaxStateName) return too_long("tensor name");
        if (e.dtype.size() > kMaxDtypeName) return too_long("dtype");
        if (e.shape.size() > kMaxStateDims) return too_long("shape");
        w.str(e.name);
        w.str(e.dtype);
        w.uint(e.itemsize);
        w.uint(uint8_t(e.shape.size()));
        for (uint64_t d : e.shape) w.uint(d);
        w.uint(e.nbytes);
        w.uint(e.hash);
      }
      break;
    case MsgType::kSyncPlan:
      w.uint(m.epoch);
      w.uint(m.seq);
      w.uint(m.vote);
      w.uint(m.revision);
      if (m.vote == uint8_t(SyncOutcome::kMismatch)) {
        w.str(m.text.size() > kMaxErrorText ? m.text.substr(0, kMaxErrorText) : m.text);
        break;
      }
      if (m.fetch.size() > kMaxStateTensors) return too_long("fetch list");
      w.uint(uint32_t(m.fetch.size()));
      for (const auto& f : m.fetch) {
        w.uint(f.index);
        w.uint(f.from);
        w.uint(f.hash);
      }
      break;
    case MsgType::kSyncDone:
    case MsgType::kSyncVerdict:
      if (m.dead.size() > kMaxWorld) return too_long("dead list");
      w.uint(m.epoch);
      w.uint(m.seq);
      w.uint(m.vote);
      if (m.type == MsgType::kSyncVerdict) {
        w.uint(uint32_t(m.dead.size()));
        for (uint64_t id : m.dead) w.uint(id);
      }
      break;
    case MsgType::kTopoReport:  // topology optimization
    case MsgType::kTopoResult:
      PYHPC_CHECK(encode_topo(m, w));
      break;
    default:
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "cannot encode message type %u",
                        unsigned(m.type));
  }
  out->clear();
  out->reserve(kHeaderSize + payload.size());
  Writer h(out);
  h.uint(kMagic);
  h.uint(version);
  h.uint(uint16_t(m.type));
  h.uint(uint32_t(payload.size()));
  h.bytes(payload.data(), payload.size());
  return PYHPC_OK;
}

}  // namespace pyhpc::ccl
