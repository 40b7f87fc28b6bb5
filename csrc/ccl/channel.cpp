#include "ccl/channel.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "ccl/xxhash.hpp"

namespace pyhpc::ccl {
namespace {

constexpr char kDataLabel[] = "pccl-data";
constexpr char kDataOkLabel[] = "pccl-data-ok";
constexpr int kSockBuf = 4 << 20;

size_t data_cap(uint16_t type) {
  switch (type) {
    case kDataChallenge: return kNonceSize;
    case kDataHello: return kHelloSize;
    case kDataOk: return 32;
    case kDataOp: return kOpSize;
    case kData: return kDataSubHeader + kMaxChunkBytes;
    case kStateRequest: return kStateRequestSize;
    case kStateData: return kStateSubHeader + kHashChunk;
    case kProbePing: return kProbePingSize;  // topology optimization
    case kProbeBulk: return kProbeBulkMax;
    default: return 0;
  }
}

}  // namespace

void put_le(uint8_t* p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint64_t get_le(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

void put_header(uint8_t* p, uint16_t version, uint16_t type, uint32_t length) {
  put_le(p, kMagic, 4);
  put_le(p + 4, version, 2);
  put_le(p + 6, type, 2);
  put_le(p + 8, length, 4);
}

void big_buffers(int fd) {
  int sz = kSockBuf;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
}

int ms_until(Clock::time_point deadline, int cap) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms < 0 ? 0 : (ms > cap ? cap : int(ms) + 1);
}

pyhpc_status recv_small(int fd, uint16_t version, uint16_t want_type, size_t want_len,
                        Clock::time_point deadline, uint8_t* payload,
                        const std::function<bool()>& interrupted) {
  uint8_t buf[kHeaderSize + kHelloSize];
  size_t total = kHeaderSize + want_len, got = 0;
  while (got < total) {
    pollfd pf{fd, POLLIN, 0};
    int pr = ::poll(&pf, 1, ms_until(deadline, kPollSliceMs));
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0 && interrupted && interrupted())
      return PYHPC_FAIL(PYHPC_ERR_PEER, "interrupted: the master reports failed peers");
    if (pr == 0 && Clock::now() >= deadline)
      return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "no data-plane frame before the deadline");
    if (pr == 0) continue;
    ssize_t k = ::recv(fd, buf + got, total - got, MSG_DONTWAIT);
    if (k == 0) return PYHPC_FAIL(PYHPC_ERR_PEER, "data connection closed by the other side");
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return PYHPC_FAIL(PYHPC_ERR_PEER, "data connection lost: %s", std::strerror(errno));
    }
    got += size_t(k);
    if (got >= kHeaderSize && got - size_t(k) < kHeaderSize) {
      Header h;
      PYHPC_CHECK(decode_data_header(buf, kHeaderSize, version, &h));
      if (h.type != want_type || h.length != want_len)
        return PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                          "data plane: expected a frame of type %u with %zu bytes, got type %u "
                          "with %u",
                          unsigned(want_type), want_len, unsigned(h.type), unsigned(h.length));
    }
  }
  std::memcpy(payload, buf + kHeaderSize, want_len);
  return PYHPC_OK;
}

pyhpc_status send_small(int fd, uint16_t version, uint16_t type, const uint8_t* payload,
                        size_t n, Clock::time_point deadline) {
  uint8_t buf[kHeaderSize + kHelloSize];
  put_header(buf, version, type, uint32_t(n));
  std::memcpy(buf + kHeaderSize, payload, n);
  return send_all(fd, buf, kHeaderSize + n, deadline);
}

Digest hello_mac(const std::string& secret, const uint8_t* nonce, const uint8_t* client_nonce,
                 const uint8_t* ids) {
  Piece pieces[4] = {{kDataLabel, sizeof kDataLabel - 1},
                     {nonce, kNonceSize},
                     {client_nonce, kNonceSize},
                     {ids, kHelloIds}};
  return hmac_sha256(secret.data(), secret.size(), pieces, 4);
}

Digest ok_mac(const std::string& secret, const uint8_t* client_nonce, const uint8_t* nonce) {
  Piece pieces[3] = {{kDataOkLabel, sizeof kDataOkLabel - 1},
                     {client_nonce, kNonceSize},
                     {nonce, kNonceSize}};
  return hmac_sha256(secret.data(), secret.size(), pieces, 3);
}

pyhpc_status decode_data_header(const uint8_t* p, size_t n, uint16_t version, Header* out) {
  if (n < kHeaderSize)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "truncated data-plane header: %zu bytes", n);
  Header h;
  h.magic = uint32_t(get_le(p, 4));
  h.version = uint16_t(get_le(p + 4, 2));
  h.type = uint16_t(get_le(p + 6, 2));
  h.length = uint32_t(get_le(p + 8, 4));
  if (h.magic != kMagic)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "not a PCCL frame: magic 0x%08x", h.magic);
  if (h.version != version)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL,
                      "protocol version mismatch on the data plane: the other side speaks "
                      "version %u, this side %u",
                      unsigned(h.version), unsigned(version));
  if (data_cap(h.type) == 0)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "not a data-plane message type: %u", unsigned(h.type));
  if (h.length > data_cap(h.type))
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "data-plane frame of type %u: %u bytes exceed the cap",
                      unsigned(h.type), unsigned(h.length));
  *out = h;
  return PYHPC_OK;
}


bool member(const Topology& t, uint64_t id) {
  for (const auto& p : t.peers)
    if (p.id == id) return true;
  return false;
}

std::vector<uint64_t> failed_members(const Peer& peer, const Topology& t) {
  std::vector<uint64_t> out;
  for (uint64_t id : peer.peek_failures())
    if (member(t, id) && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  return out;
}

std::vector<uint64_t> blame(const Peer& peer, const Topology& t,
                            const std::vector<uint64_t>& suspects, Clock::time_point deadline) {
  auto grace = std::min(after(kFailureGrace), std::max(deadline, Clock::now()));
  std::vector<uint64_t> f = failed_members(peer, t);
  while (f.empty() && Clock::now() < grace) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    f = failed_members(peer, t);
  }
  if (!f.empty()) return f;
  if (peer.health() != PYHPC_OK) return {};
  return suspects;
}


}  // namespace pyhpc::ccl
