// The PCCL-style wire protocol between peers and the master.
//
// Every message is one frame: a 12-byte header followed by `length` payload
// bytes, all integers little-endian:
//
//   u32 magic   = 0x4C434350 ("PCCL" in byte order)
//   u16 version = kProtocolVersion
//   u16 type    = MsgType
//   u32 length  = payload bytes (at most max_payload(type))
//
// Payloads (str = u16 length + bytes; ids are u64, never 0):
//   CHALLENGE      master->peer  nonce[32]
//   AUTH           peer->master  client_nonce[32] mac[32] u16 port str host(<=255)
//                  mac = HMAC-SHA256(secret, "pccl-peer" || master_nonce || client_nonce)
//   AUTH_OK        master->peer  u64 peer_id  proof[32]
//                  proof = HMAC-SHA256(secret, "pccl-master" || client_nonce || master_nonce)
//   ERROR          both          u16 code (a pyhpc_status) str text(<=1024)
//   HEARTBEAT      peer->master  u64 seq
//   UPDATE_REQUEST peer->master  u64 seq
//   TOPOLOGY       master->peer  u64 epoch u32 your_rank u32 n_peers u32 n_dead u32 n_left
//                                u64 dead[n_dead] u64 left[n_left]
//                                n_peers x {u64 id u16 port str host}   (in rank order)
//   PEER_FAILED    master->peer  u64 peer_id u16 reason (FailReason)
//   LEAVE          peer->master  (empty)
//   VOTE           peer->master  u64 epoch u64 seq u32 tag u8 vote (Vote)
//                  the commit round of all-reduce (epoch, tag, seq): YES = this peer holds
//                  its whole result; QUERY = a member was reported dead mid-operation, may
//                  this peer go on?; NO = this peer aborted the operation
//   VERDICT        master->peer  u64 epoch u64 seq u32 tag u8 verdict (Verdict)
//                                u32 n_dead u64 dead[n_dead]
//                  COMMIT once every member of the epoch voted YES; ABORT as soon as a
//                  member voted NO or is gone without a YES (dead: the members gone
//                  without a YES); CONTINUE answers a QUERY whose dead all voted YES
//   SYNC_REPORT    peer->master  u64 epoch u64 seq u64 revision u32 n
//                                n x {str name str dtype u8 itemsize u8 ndim u64 shape[ndim]
//                                     u64 nbytes u64 hash}
//                  one sync_shared_state call (epoch, seq): this peer's revision and its
//                  tensors, names 1..255 bytes without NUL in strictly increasing byte
//                  order (so unique), dtype 1..16 printable ASCII, itemsize 1/2/4/8/16/32,
//                  ndim <= 64, nbytes = prod(shape) * itemsize < 2^48, hash the tensor
//                  hash (xxhash.hpp); n <= kMaxStateTensors
//   SYNC_PLAN      master->peer  u64 epoch u64 seq u8 outcome (SyncOutcome) u64 revision
//                  PLAN:     u32 n_fetch n_fetch x {u32 index u64 from_id u64 hash}
//                            (indices strictly increasing): fetch tensor `index` (of
//                            this peer's report) from peer from_id, expect `hash`
//                  MISMATCH: str text(<=1024): the peers' tensor lists differ
//   SYNC_DONE      peer->master  u64 epoch u64 seq u8 ok (1: this peer holds the winning
//                                state, staged; 0: it gives up and the round aborts)
//   SYNC_VERDICT   master->peer  u64 epoch u64 seq u8 verdict (Verdict: COMMIT or ABORT)
//                                u32 n_dead u64 dead[n_dead] (ABORT only)
//
// ---- topology optimization (protocol version 5; topology.hpp) ----
//   TOPO_REPORT    peer->master  u64 epoch u64 seq u8 ok u32 n
//                                n x {u64 id u64 bandwidth u64 latency_ns}
//                  one optimize_topology call (epoch, seq): what this peer measured to
//                  each other member (bandwidth: bytes/s this peer sent to it; latency:
//                  median ping-pong round trip / 2), ids unique and non-zero, values > 0;
//                  ok 0 (with n 0): this peer gave up and the round aborts
//   TOPO_RESULT    master->peer  u64 epoch u64 seq u8 outcome (TopoOutcome)
//                  ORDER: u32 n  u64 ids[n] (the epoch's members, rank order)
//                         u64 order[n] (a permutation of ids: the new ring order)
//                         u64 bandwidth[n*n] u64 latency_ns[n*n] (row i, column j: what
//                         ids[i] measured to ids[j]; the diagonal 0, the rest > 0)
//                  ABORT: u32 n_dead u64 dead[n_dead]
//                  n <= kMaxTopoWorld
// ---- end topology optimization ----
//
// Types 10..14, 21..22 and 25..26 belong to the data plane (ring.hpp, state.cpp,
// topology.cpp); the control decoder refuses them.
//
// The decoder checks the header first (magic, version, known type, length cap)
// so a reader can refuse a frame before buffering its payload, then the payload
// structure exactly (no trailing bytes); it never reads past its buffer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.hpp"

namespace pyhpc::ccl {

constexpr uint32_t kMagic = 0x4C434350u;
// 2: VOTE/VERDICT (commit round); 3: quantize in OP descriptors; 4: shared-state sync
// (SYNC_* frames, STATE_* data frames, a channel kind in DATA_HELLO); 5: topology
// optimization (TOPO_* frames, PROBE_* data frames, channel kind "probe"); 6: stream
// index and count in DATA_HELLO (several connections per neighbour), zeropoint_uint8;
// 7: the master echoes every HEARTBEAT (a peer notices a silent master).
constexpr uint16_t kProtocolVersion = 7;
constexpr size_t kHeaderSize = 12;
constexpr size_t kNonceSize = 32;
constexpr size_t kMaxHost = 255;
constexpr size_t kMaxErrorText = 1024;
constexpr uint32_t kMaxWorld = 4096;
constexpr uint32_t kMaxStateTensors = 4096;
constexpr size_t kMaxStateName = 255;
constexpr size_t kMaxDtypeName = 16;
constexpr uint32_t kMaxStateDims = 64;
constexpr uint64_t kMaxStateBytes = uint64_t(1) << 48;
constexpr uint32_t kMaxTopoWorld = 256;  // topology optimization: TOPO_RESULT holds n*n values

enum class MsgType : uint16_t {
  kChallenge = 1,
  kAuth = 2,
  kAuthOk = 3,
  kError = 4,
  kHeartbeat = 5,
  kUpdateRequest = 6,
  kTopology = 7,
  kPeerFailed = 8,
  kLeave = 9,
  kVote = 15,
  kVerdict = 16,
  kSyncReport = 17,
  kSyncPlan = 18,
  kSyncDone = 19,
  kSyncVerdict = 20,
  // topology optimization
  kTopoReport = 23,
  kTopoResult = 24,
};
constexpr uint16_t kMinType = 1;
constexpr uint16_t kMaxType = 24;
// A control-plane type (1..9, 15..20, 23..24).
bool is_control_type(uint16_t type);

enum class Vote : uint8_t { kNo = 0, kYes = 1, kQuery = 2 };
enum class Verdict : uint8_t { kCommit = 1, kAbort = 2, kContinue = 3 };

enum class SyncOutcome : uint8_t { kPlan = 1, kMismatch = 2 };

enum class TopoOutcome : uint8_t { kOrder = 1, kAbort = 2 };  // topology optimization

enum class FailReason : uint16_t { kClosed = 1, kTimeout = 2, kProtocol = 3 };

const char* type_name(MsgType t);
// The largest payload a frame of this type may carry (0 for an unknown type).
size_t max_payload(uint16_t type);
size_t max_frame();

struct PeerInfo {
  uint64_t id = 0;
  uint16_t port = 0;
  std::string host;
};

// One tensor of a SYNC_REPORT.
struct StateEntry {
  std::string name;
  std::string dtype;
  uint8_t itemsize = 0;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  uint64_t hash = 0;
};

// One fetch of a SYNC_PLAN.
struct StateFetch {
  uint32_t index = 0;
  uint64_t from = 0;
  uint64_t hash = 0;
};

// One decoded message; only the fields of its type are meaningful.
struct Message {
  MsgType type = MsgType::kError;
  std::array<uint8_t, kNonceSize> nonce{};  // CHALLENGE nonce, AUTH client nonce
  std::array<uint8_t, 32> mac{};            // AUTH mac, AUTH_OK proof
  uint64_t id = 0;                          // AUTH_OK, PEER_FAILED
  uint64_t seq = 0;                         // HEARTBEAT, UPDATE_REQUEST
  uint16_t code = 0;                        // ERROR code, PEER_FAILED reason
  uint16_t port = 0;                        // AUTH
  std::string text;                         // AUTH host, ERROR text
  uint64_t epoch = 0;                       // TOPOLOGY, VOTE, VERDICT
  uint32_t your_rank = 0;
  std::vector<uint64_t> dead, left;         // TOPOLOGY; dead: VERDICT too
  std::vector<PeerInfo> peers;
  uint32_t tag = 0;    // VOTE, VERDICT (with epoch, seq)
  uint8_t vote = 0;    // VOTE: Vote; VERDICT, SYNC_VERDICT: Verdict; SYNC_PLAN: SyncOutcome;
                       // SYNC_DONE: ok
  uint64_t revision = 0;            // SYNC_REPORT, SYNC_PLAN (the winner's)
  std::vector<StateEntry> tensors;  // SYNC_REPORT
  std::vector<StateFetch> fetch;    // SYNC_PLAN (PLAN); its text: MISMATCH
  // topology optimization. TOPO_REPORT: ids, bandwidth, latency_ns (one per id), vote = ok;
  // TOPO_RESULT: vote = TopoOutcome; ORDER: ids, order, bandwidth, latency_ns (n*n);
  // ABORT: dead
  std::vector<uint64_t> ids, order, bandwidth, latency_ns;
};

struct Header {
  uint32_t magic = 0;
  uint16_t version = 0;
  uint16_t type = 0;
  uint32_t length = 0;
};

// Validates a header (n >= kHeaderSize bytes at p) against `version`.
pyhpc_status decode_header(const uint8_t* p, size_t n, uint16_t version, Header* out);
// Validates and decodes a payload of a header already accepted.
pyhpc_status decode_payload(const Header& h, const uint8_t* p, size_t n, Message* out);
// Exactly one frame, nothing after it.
pyhpc_status decode_frame(const uint8_t* p, size_t n, uint16_t version, Message* out);

// The frame of `m`. Fails (INVALID_ARGUMENT) if a field exceeds its cap.
pyhpc_status encode(const Message& m, std::vector<uint8_t>* out,
                    uint16_t version = kProtocolVersion);

}  // namespace pyhpc::ccl
