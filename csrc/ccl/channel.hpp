// Pieces of the authenticated peer-to-peer data plane shared by the ring
// all-reduce (ring.cpp) and the shared-state sync (state.cpp): data-plane
// frame types and their caps, the channel handshake's MACs, small framed
// reads and writes with deadlines, and the master's failure notices filtered
// to a topology's members.
//
// A channel is dialled by one peer and accepted by another (DataPlane's
// listener); the dialer's DATA_HELLO names (from_id, epoch, kind, tag) and
// which of the link's streams it is (stream, streams):
//
//   DATA_HELLO  client_nonce[32] mac[32] u64 from_id u64 epoch u32 tag u8 kind
//               u32 stream u32 streams
//               mac = HMAC(secret, "pccl-data" || nonce || client_nonce || from_id
//                          || epoch || tag || kind || stream || streams)
//
// kind 0: a ring channel of all_reduce (tag: the caller's tag); kind 1: a
// shared-state fetch (tag: the low 32 bits of the sync's sequence number);
// kind 2: a topology probe (tag: the low 32 bits of optimize_topology's
// sequence number; topology.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ccl/net.hpp"
#include "ccl/peer.hpp"
#include "ccl/sha256.hpp"
#include "ccl/wire.hpp"
#include "common/status.hpp"

namespace pyhpc::ccl {

constexpr uint16_t kDataChallenge = 10;
constexpr uint16_t kDataHello = 11;
constexpr uint16_t kDataOk = 12;
constexpr uint16_t kDataOp = 13;
constexpr uint16_t kData = 14;
constexpr uint16_t kStateRequest = 21;  // state.cpp
constexpr uint16_t kStateData = 22;     // state.cpp
// ---- topology optimization (topology.cpp) ----
constexpr uint16_t kProbePing = 25;  // u64 counter (a ping, its echo, or a bulk transfer's ack)
constexpr uint16_t kProbeBulk = 26;  // bytes of a bandwidth measurement
constexpr size_t kProbePingSize = 8;
constexpr size_t kProbeBulkMax = size_t(1) << 20;
// ---- end topology optimization ----
constexpr size_t kDataSubHeader = 24;
constexpr size_t kMaxChunkBytes = size_t(64) << 20;
constexpr size_t kHelloSize = 32 + 32 + 8 + 8 + 4 + 1 + 4 + 4;
constexpr size_t kOpSize = 8 + 8 + 4 + 4 + 1 + 1 + 8 + 1 + 1;
constexpr size_t kHelloIds = 8 + 8 + 4 + 1 + 4 + 4;  // from_id epoch tag kind stream streams
constexpr uint32_t kMaxConnections = 16;  // streams per ring link
constexpr size_t kStateRequestSize = 8 + 8 + 4;  // u64 epoch u64 seq u32 index
constexpr size_t kStateSubHeader = 8 + 4 + 8;    // u64 seq u32 index u64 offset
constexpr double kHandshakeTimeout = 2.0;
constexpr int kPollSliceMs = 10;

enum class ChannelKind : uint8_t { kRing = 0, kState = 1, kProbe = 2 };
constexpr uint8_t kMaxChannelKind = uint8_t(ChannelKind::kProbe);

// Validates a data-plane frame header: magic, version, a data-plane type, and
// the length cap of that type.
pyhpc_status decode_data_header(const uint8_t* p, size_t n, uint16_t version, Header* out);

void put_le(uint8_t* p, uint64_t v, size_t n);
uint64_t get_le(const uint8_t* p, size_t n);
void put_header(uint8_t* p, uint16_t version, uint16_t type, uint32_t length);
// 4 MiB socket buffers.
void big_buffers(int fd);
// Milliseconds to `deadline`, at most `cap` (for poll()).
int ms_until(Clock::time_point deadline, int cap);

// Reads exactly one data-plane frame of `want_type` with a payload of exactly
// `want_len` (<= kHelloSize) bytes; `interrupted` is asked while nothing arrives.
pyhpc_status recv_small(int fd, uint16_t version, uint16_t want_type, size_t want_len,
                        Clock::time_point deadline, uint8_t* payload,
                        const std::function<bool()>& interrupted = {});
pyhpc_status send_small(int fd, uint16_t version, uint16_t type, const uint8_t* payload,
                        size_t n, Clock::time_point deadline);

Digest hello_mac(const std::string& secret, const uint8_t* nonce, const uint8_t* client_nonce,
                 const uint8_t* ids /* kHelloIds bytes */);
Digest ok_mac(const std::string& secret, const uint8_t* client_nonce, const uint8_t* nonce);

bool member(const Topology& t, uint64_t id);
// Members of `t` the master reported failed (not cleared).
std::vector<uint64_t> failed_members(const Peer& peer, const Topology& t);

// Who failed, once this peer lost a data connection to `suspects`: the
// members the master reports failed, waiting up to kFailureGrace (not past
// `deadline`) for its notices (a killed peer is reported within
// milliseconds); else `suspects`. Empty when no notice came and the master
// itself is gone (last_error() then says why): a neighbour that lost the
// master too and closed its connections is not to blame.
constexpr double kFailureGrace = 0.5;
std::vector<uint64_t> blame(const Peer& peer, const Topology& t,
                            const std::vector<uint64_t>& suspects, Clock::time_point deadline);

}  // namespace pyhpc::ccl
