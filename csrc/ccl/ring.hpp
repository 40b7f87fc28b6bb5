// The data plane of the fault-tolerant TCP collectives: a ring all-reduce
// between peers, over their own authenticated TCP connections.
//
// Every peer listens on a TCP port (advertised to the master in AUTH and
// forwarded to everyone in TOPOLOGY). An all-reduce with tag T in topology
// epoch E uses one channel: `connections` streams (TCP connections) to the
// right neighbour (rank+1) for sending and the left neighbour's streams for
// receiving, dialled lazily at the first operation of (E, T). Each stream is
// authenticated with the shared secret in both directions before any data
// flows, and says which stream of how many it is:
//
//   acceptor -> dialer  DATA_CHALLENGE  nonce[32]
//   dialer -> acceptor  DATA_HELLO      client_nonce[32] mac[32] u64 from_id u64 epoch u32 tag
//                                       u8 kind u32 stream u32 streams
//                       mac = HMAC(secret, "pccl-data" || nonce || client_nonce || from_id
//                                  || epoch || tag || kind || stream || streams)
//                                  (integers little-endian; kind 0: ring, 1: shared-state
//                                  fetch (state.cpp), 2: topology probe (topology.cpp))
//                       (refused unless 1 <= streams <= kMaxConnections and stream < streams;
//                       a ring channel's receiver takes the count from stream 0 and all
//                       must agree; the other kinds use stream 0 of 1)
//   acceptor -> dialer  DATA_OK         proof[32] = HMAC(secret, "pccl-data-ok" || client_nonce
//                                                        || nonce)
//
// (The handshake, frame caps and helpers shared with the state sync are in channel.hpp.)
// A wrong MAC, a malformed frame or silence for 2 s closes the connection.
// Frames use the 12-byte header of wire.hpp (magic, version, type, length) with
// data-plane types only (decode_data_header refuses control types, and the
// control decoder refuses these), every length checked against its cap and
// then against the exact length the schedule expects:
//
//   OP    u64 epoch u64 seq u32 tag u32 origin_rank u8 dtype u8 op u64 count
//         u8 quantize u8 nonfinite
//   DATA  u64 seq u32 tag u32 step u32 chunk u32 quantize, then the chunk's bytes
//         (quantize 1: f32 min, f32 scale; 2: f32 scale, u32 zero point (<= 255);
//         then one uint8 code per element)
//
// One operation: (1) the OP descriptors go round the ring (n-1 steps) so every
// peer sees every peer's dtype/op/count and all fail alike on a mismatch;
// (2) 2(n-1) ring steps (reduce-scatter, then all-gather), each segment cut
// into chunks, a chunk of step s+1 sent as soon as the same chunk of step s
// arrived (pipelined). Chunk i of the schedule travels on stream
// i mod streams, so each stream carries its chunks in order and the reduction
// order does not depend on the stream count. The calling thread polls all
// streams, sending and receiving (a second, sending thread was slower here
// once the result no longer took a copy, at 2 and 4 peers, 16-256 MiB).
// Unquantized float32/float64/integer operations reduce straight into the
// caller's output and read the input in place (in place, each chunk's input
// is saved to a private buffer just before it is first overwritten); 16-bit
// floats and quantized ones reduce into a private float32 buffer, converted
// into the output on COMMIT. (3) The commit round (master.hpp): with all its
// chunks in, a peer votes YES to the master, and the result stands only on its
// COMMIT; on ABORT (a member died or froze before its YES, or aborted) the
// input is untouched or put back (in place) and an out-of-place output holds
// no defined values. So every survivor applies the operation or none does. A peer told mid-ring that a member died asks the master (QUERY):
// if that member had voted YES, every peer can still finish (CONTINUE); a
// local failure (a neighbour's connection, the deadline) is voted NO.
//
// Segment k is reduced in one fixed order (peer k first, then k+1, ...) by one
// peer and then copied to all: every peer ends bit-identical.
//
// Quantized (min-max uint8 or zero-point uint8, float16/bfloat16/float32/
// float64 in, sum/avg): the work buffer is float32. In the reduce-scatter every
// chunk travels as 8 bytes of parameters and one code per element (minmax:
// min, scale = (max - min) / 255, code = round((v - min) / scale); zeropoint:
// scale = range / 255 over the range widened to hold 0, zero point z, code =
// clamp(round(v / scale) + z, 0, 255), value = scale * (code - z)); the
// receiver adds the dequantized values to its own in float32 and re-quantizes
// for the next hop. The owner of a segment
// quantizes its fully reduced chunks once, replaces its own values by their
// dequantization, and that exact payload goes round the all-gather: every peer
// dequantizes the same bytes with the same function, so all are bit-identical.
// Each quantization moves a value by at most scale/2 (n per element: n-1 hops
// and the all-gather). Non-finite inputs are flagged in OP: every peer then
// fails with INVALID_ARGUMENT before any data moves. A partial sum that
// overflows float32 makes its chunk NaN on every peer.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "ccl/channel.hpp"
#include "ccl/net.hpp"
#include "ccl/peer.hpp"
#include "common/status.hpp"

namespace pyhpc::ccl {

enum class DType : uint8_t { kF16 = 1, kBF16 = 2, kF32 = 3, kF64 = 4, kI32 = 5, kI64 = 6 };
enum class ReduceOp : uint8_t { kSum = 1, kAvg = 2, kMin = 3, kMax = 4 };
enum class Quant : uint8_t { kNone = 0, kMinMaxU8 = 1, kZeroPointU8 = 2 };

size_t dtype_size(DType t);

struct AllReduceArgs {
  const void* in = nullptr;
  void* out = nullptr;  // may equal in
  uint64_t count = 0;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  Quant quant = Quant::kNone;
  uint32_t tag = 0;
  double timeout_s = 30.0;
  size_t chunk_bytes = size_t(1) << 19;
  double test_chunk_delay_s = 0;  // tests: sleep after each chunk received
  int test_exit_at = 0;  // tests: _exit(3) the process 1: right before its YES vote, 2: right after
  // out (optional): bytes of DATA frames (headers included) this peer sent in
  // the ring; set on success, 0 otherwise.
  uint64_t* data_bytes_sent = nullptr;
};

// Shared-state sync (state.cpp): one tensor of the caller's state.
struct StateTensor {
  std::string name;   // the key (UTF-8)
  std::string dtype;  // as in the tensor hash: "<f4", "|u1", "bfloat16", ...
  uint8_t itemsize = 0;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  void* data = nullptr;  // C-contiguous, writable; only written on COMMIT
};

struct SyncArgs {
  std::vector<StateTensor> tensors;  // names in strictly increasing byte order
  uint64_t revision = 0;
  double timeout_s = 30.0;
  double test_serve_delay_s = 0;  // tests: a source sleeps after each chunk it sends
};

struct SyncResult {
  uint64_t revision = 0;           // the winning revision, now this peer's
  std::vector<uint32_t> fetched;   // indices into SyncArgs::tensors
  std::vector<uint64_t> sources;   // the peer each was fetched from
  uint64_t bytes_received = 0;     // tensor bytes fetched (frame headers not counted)
  uint64_t bytes_sent = 0;         // tensor bytes served to other peers
};

// ---- topology optimization (topology.hpp, topology.cpp) ----
struct ProbeArgs {
  uint64_t probe_bytes = uint64_t(1) << 20;  // sent each way per pair for bandwidth
  double timeout_s = 30.0;
  int test_exit_in_round = -1;  // tests: _exit(3) when this peer's measuring round k starts
};

// What every member gets: the master's TOPO_RESULT (ORDER).
struct ProbeResult {
  std::vector<uint64_t> ids;    // the epoch's members in rank order (rows and columns)
  std::vector<uint64_t> order;  // the new ring order (ids), in effect after the next update
  std::vector<uint64_t> bandwidth, latency_ns;  // n x n, row-major
};
// ---- end topology optimization ----

class DataPlane {
 public:
  DataPlane();
  ~DataPlane();
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  // `connections`: TCP streams to the right neighbour per channel (1..
  // kMaxConnections); the left neighbour's own setting decides its streams.
  pyhpc_status start(const std::string& host, const std::string& secret,
                     uint16_t version = kProtocolVersion, uint32_t connections = 1);
  void stop();
  uint16_t port() const { return port_; }

  // Blocking ring all-reduce over the peer's current topology. On
  // PYHPC_ERR_PEER (a member died, froze, or a deadline passed) `failed` names
  // the failed members (the master's word when it has spoken, else the
  // neighbours this peer was waiting on); input and output are untouched and
  // the channel stays aborted until the next topology epoch.
  pyhpc_status all_reduce(Peer& peer, const AllReduceArgs& a, std::vector<uint64_t>* failed);

  // Blocking shared-state sync over the peer's current topology (state.cpp;
  // the round is described in master.hpp). On COMMIT the fetched tensors are
  // written into the caller's arrays and `out` is filled; on PYHPC_ERR_PEER
  // `failed` names the failed members and no array was written; a MISMATCH
  // plan is INVALID_ARGUMENT with the master's text.
  pyhpc_status sync_state(Peer& peer, const SyncArgs& a, SyncResult* out,
                          std::vector<uint64_t>* failed);

  // topology optimization: measures every pair of the current epoch's members
  // and gets the master's decision (topology.hpp). On PYHPC_ERR_PEER `failed`
  // names the failed members. The caller then updates the topology.
  pyhpc_status probe_topology(Peer& peer, const ProbeArgs& a, ProbeResult* out,
                              std::vector<uint64_t>* failed);

 private:
  struct Channel;
  // from_id, epoch, kind, tag, stream
  using Key = std::tuple<uint64_t, uint64_t, uint8_t, uint32_t, uint32_t>;
  struct Pending {
    int fd;
    uint32_t streams;  // how many streams the dialer opens on this link
  };
  void accept_loop();
  void handshake(int fd);
  Channel* channel(uint32_t tag);
  // Dials `to` and runs the channel handshake for (epoch, kind, tag), as stream
  // `stream` of `streams` (ring channels only open more than one): a
  // connected, authenticated, blocking socket in *fd. PYHPC_ERR_PEER when `to`
  // cannot be reached, PROTOCOL or AUTH when it answers wrongly.
  pyhpc_status dial(Peer& peer, const Topology& t, const PeerInfo& to, ChannelKind kind,
                    uint32_t tag, Clock::time_point deadline, int* fd, uint32_t stream = 0,
                    uint32_t streams = 1);
  // An accepted connection (stream 0) from `from` for (epoch, kind, tag) if one came, else -1.
  int claim(uint64_t from, uint64_t epoch, ChannelKind kind, uint32_t tag);
  // Every accepted connection for (epoch, kind, tag), whoever dialled.
  std::vector<std::pair<uint64_t, int>> claim_all(uint64_t epoch, ChannelKind kind, uint32_t tag);
  pyhpc_status sync_round(Peer& peer, const SyncArgs& a, const Topology& t, uint64_t seq,
                          SyncResult* out, std::vector<uint64_t>* failed);
  pyhpc_status setup(Peer& peer, Channel& ch, const Topology& t, uint32_t tag,
                     Clock::time_point deadline, std::vector<uint64_t>* failed);

  std::string secret_;
  uint16_t version_ = kProtocolVersion;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint32_t connections_ = 1;
  std::map<Key, Pending> pending_;  // authenticated incoming connections not yet claimed
  std::map<uint32_t, std::unique_ptr<Channel>> channels_;
  std::mutex sync_mu_;  // one state sync at a time
  uint64_t sync_epoch_ = 0, sync_seq_ = 0;
  bool sync_broken_ = false;  // a sync of sync_epoch_ failed: the peers' seqs may differ
  // topology optimization
  pyhpc_status probe_round(Peer& peer, const ProbeArgs& a, const Topology& t, uint64_t seq,
                           ProbeResult* out, std::vector<uint64_t>* failed);
  std::mutex probe_mu_;  // one optimize_topology at a time
  uint64_t probe_epoch_ = 0, probe_seq_ = 0;
};

}  // namespace pyhpc::ccl
