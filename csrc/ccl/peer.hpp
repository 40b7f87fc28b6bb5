// The peer side of the fault-tolerant TCP collectives: one connection to the
// master, authenticated by challenge-response, kept alive by a background
// thread that sends a HEARTBEAT every heartbeat_interval seconds and receives
// what the master sends (TOPOLOGY, PEER_FAILED, ERROR, and the echo of each
// HEARTBEAT: a master silent for master_timeout seconds, frozen or cut off, is
// lost to this peer, which fails what waits on it).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <tuple>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ccl/net.hpp"
#include "ccl/wire.hpp"
#include "common/status.hpp"

namespace pyhpc::ccl {

struct PeerOptions {
  std::string host = "127.0.0.1";  // the master
  uint16_t port = 0;
  std::string secret;
  double connect_timeout = 5.0;      // connect + authenticate
  double heartbeat_interval = 0.1;   // s between heartbeats
  double master_timeout = 1.5;       // s of silence from the master (which echoes every
                                     // heartbeat) after which it is lost to this peer
  std::string advertise_host;        // what other peers should dial; empty: as the master sees us
  uint16_t advertise_port = 0;
  uint16_t protocol_version = kProtocolVersion;  // tests speak another one on purpose
};

struct Topology {
  uint64_t epoch = 0;
  uint32_t rank = 0;
  std::vector<PeerInfo> peers;  // rank order
  std::vector<uint64_t> dead;   // removed by this update: failed
  std::vector<uint64_t> left;   // removed by this update: left gracefully
};

class Peer {
 public:
  Peer() = default;
  ~Peer();
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // Connects, authenticates (and checks the master knows the secret too), and
  // starts the heartbeat thread. The peer is then pending until admitted.
  pyhpc_status connect(const PeerOptions& options);
  // Blocks until the master completes the next topology update (every live
  // member asked for it) or `timeout_s` passes (TIMEOUT; asking again keeps
  // waiting for the same update, and returns it if it completed meanwhile).
  pyhpc_status update_topology(double timeout_s, Topology* out);
  // Tells the master we leave, then closes. Idempotent.
  pyhpc_status leave();
  void close();

  uint64_t id() const { return id_; }
  bool admitted() const;
  Topology topology() const;
  // Peers the master reported failed since the last call (ids).
  std::vector<uint64_t> take_failures();
  // The same, without clearing them (the data plane polls this mid-operation).
  std::vector<uint64_t> peek_failures() const;
  // The commit round of an all-reduce (master.hpp): sends a VOTE, and waits
  // for the master's VERDICT on (epoch, tag, seq) until `deadline`. Fails
  // (PYHPC_ERR_PEER) if the connection to the master breaks or the peer is
  // closed, TIMEOUT at the deadline.
  pyhpc_status vote(uint64_t epoch, uint32_t tag, uint64_t seq, Vote v);
  pyhpc_status await_verdict(uint64_t epoch, uint32_t tag, uint64_t seq,
                             Clock::time_point deadline, Verdict* verdict,
                             std::vector<uint64_t>* dead);
  // Shared-state sync (master.hpp): sends a SYNC_REPORT / SYNC_DONE (PYHPC_ERR_PEER
  // if the master cannot be reached).
  pyhpc_status sync_send(const Message& m);
  // The master's SYNC_VERDICT on (epoch, seq) if one came (it wins), else its
  // SYNC_PLAN if `want_plan` and one came, waiting until `deadline` (a past
  // deadline only looks). Fails like await_verdict.
  pyhpc_status await_sync(uint64_t epoch, uint64_t seq, bool want_plan,
                          Clock::time_point deadline, Message* out);
  // topology optimization (topology.hpp): sends a TOPO_REPORT (PYHPC_ERR_PEER if the
  // master cannot be reached); waits until `deadline` for the master's TOPO_RESULT
  // on (epoch, seq). Fails like await_verdict.
  pyhpc_status topo_send(const Message& m);
  pyhpc_status await_topo(uint64_t epoch, uint64_t seq, Clock::time_point deadline,
                          Message* out);
  // OK while connected; else why not (and the message through last_error()).
  pyhpc_status health() const;

 private:
  void loop();
  pyhpc_status send(const Message& m);
  void set_broken(pyhpc_status s, const std::string& why);

  PeerOptions options_;
  int fd_ = -1;
  int wake_[2] = {-1, -1};
  uint64_t id_ = 0;
  std::thread thread_;
  std::mutex send_mu_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool closed_ = false;
  pyhpc_status broken_ = PYHPC_OK;
  std::string broken_why_;
  bool have_topology_ = false;
  Topology topology_;
  uint64_t topologies_seen_ = 0;
  bool update_outstanding_ = false;
  bool unclaimed_ = false;  // a TOPOLOGY no update_topology call returned yet
  uint64_t update_seq_ = 0;
  uint64_t heartbeat_seq_ = 0;
  std::vector<uint64_t> failures_;
  using OpKey = std::tuple<uint64_t, uint32_t, uint64_t>;  // epoch, tag, seq
  std::map<OpKey, std::pair<Verdict, std::vector<uint64_t>>> verdicts_;  // not yet claimed
  using SyncKey = std::pair<uint64_t, uint64_t>;                        // epoch, seq
  std::map<SyncKey, Message> sync_plans_, sync_verdicts_;               // not yet claimed
  std::map<SyncKey, Message> topo_results_;  // topology optimization: not yet claimed
};

}  // namespace pyhpc::ccl
