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
//
// Types 10..14 belong to the data plane (ring.hpp); the control decoder refuses them.
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
// 2: VOTE/VERDICT (commit round); 3: quantize in OP descriptors; 4: stream
// index and count in DATA_HELLO, zeropoint_uint8.
constexpr uint16_t kProtocolVersion = 4;
constexpr size_t kHeaderSize = 12;
constexpr size_t kNonceSize = 32;
constexpr size_t kMaxHost = 255;
constexpr size_t kMaxErrorText = 1024;
constexpr uint32_t kMaxWorld = 4096;

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
};
constexpr uint16_t kMinType = 1;
constexpr uint16_t kMaxType = 16;
// A control-plane type (1..9, 15, 16).
bool is_control_type(uint16_t type);

enum class Vote : uint8_t { kNo = 0, kYes = 1, kQuery = 2 };
enum class Verdict : uint8_t { kCommit = 1, kAbort = 2, kContinue = 3 };

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
  uint8_t vote = 0;    // VOTE: Vote; VERDICT: Verdict
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
