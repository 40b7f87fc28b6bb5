// The master of the fault-tolerant TCP collectives: tracks who is in the run.
//
// One thread runs a poll() loop over the listening socket, every client socket
// and a wake pipe (for stop()). All sockets are non-blocking with TCP_NODELAY.
// A client goes through
//
//   accept -> AWAIT_AUTH --AUTH ok--> PENDING --admitted at an update--> MEMBER
//
// and is dropped (without disturbing anyone else) when it sends a malformed
// frame, a frame of the wrong protocol version, a wrong secret, or nothing
// before the handshake deadline. An authenticated client that sends nothing
// (not even a heartbeat) for heartbeat_timeout seconds, or whose connection
// closes, is dead: other members get a PEER_FAILED at once, and the next
// topology update removes it and reports its id.
//
// update_topology is a collective: it completes when every live member has
// sent UPDATE_REQUEST.
//
// The master also coordinates the commit of every all-reduce (epoch, tag,
// seq): members VOTE YES once they hold their whole result (not yet written to
// the caller's buffer). The master answers COMMIT to all once every member of
// the epoch voted YES (a member that dies after its YES does not stop that:
// everyone has the full result), or ABORT (naming the members gone without a
// YES) as soon as a member dies, leaves or freezes before its YES, or votes NO.
// A QUERY (a peer told of a death mid-operation) is answered CONTINUE if every
// dead member voted YES, else ABORT. Entries are dropped once decided, and all
// of an epoch at the next topology update (undecided ones are ABORTed); a
// member may have kMaxOpenVotes undecided YES votes at most.
//
// Shared-state sync rounds (epoch, seq) (wire.hpp SYNC_*): the master collects
// every member's SYNC_REPORT; once all are in it checks that they list the same
// tensors (names, dtypes, shapes) -- else a MISMATCH plan naming the first
// differing tensor goes to all -- and picks the winning content, the
// (revision, hashes) reported by the most members; a tie goes to the higher
// revision, then to the group holding the lowest peer id. Every member gets a
// PLAN: the winning revision and the tensors whose hash differs from the
// winner's, each to fetch from one winning member (the least loaded in bytes
// so far, then the lowest id; members in rank order, tensors in name order).
// A member sends SYNC_DONE once it holds the winning state (staged, hashes
// verified); COMMIT goes to all once every member is done. A member that dies,
// leaves or freezes while a round is undecided, or a SYNC_DONE with ok 0,
// aborts the round for all (ABORT names the members gone). At most
// kMaxOpenSyncs rounds are undecided at a time; undecided rounds are aborted
// at the next topology update.
//
// Topology optimization rounds (epoch, seq) (topology.hpp, wire.hpp TOPO_*):
// the master collects every member's TOPO_REPORT (its measurements to every
// other member), then sends all the matrices and the ring order best_ring
// picks (TOPO_RESULT ORDER), and keeps that order for the next update. A
// member that dies, leaves or freezes before every report is in, or a report
// with ok 0, aborts the round for all (ABORT names the members gone). At most
// kMaxOpenTopos rounds are undecided at a time; undecided rounds are aborted
// at the next topology update.
//
// At an update the master then admits the pending peers that asked too,
// assigns ranks (survivors keep their relative order -- or, after a topology
// optimization decided in the closing epoch, take its ring order -- then the
// newcomers in the order they authenticated) and sends every member a TOPOLOGY.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <tuple>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ccl/wire.hpp"
#include "common/status.hpp"

namespace pyhpc::ccl {

struct MasterOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string secret;
  double heartbeat_timeout = 1.5;  // s of silence after which a peer is dead
  double handshake_timeout = 2.0;  // s an unauthenticated client may take
  size_t max_clients = 1024;       // further connections are refused
};

struct MasterFailure {
  uint64_t id;
  FailReason reason;
  double unix_time;  // when the master declared it dead
};

struct MasterStats {
  uint64_t epoch = 0;
  std::vector<uint64_t> members;  // rank order, the dead included until the next update
  std::vector<uint64_t> pending;
  std::vector<MasterFailure> failures;  // every failure so far
  uint64_t rejected = 0;                // connections dropped before or at authentication
  uint64_t commits = 0, aborts = 0;     // all-reduce commit rounds decided each way
  uint64_t continues = 0;               // QUERYs answered CONTINUE
  uint64_t sync_commits = 0, sync_aborts = 0, sync_mismatches = 0;  // shared-state sync rounds
  uint64_t topo_orders = 0, topo_aborts = 0;  // topology optimization rounds
};

class Master {
 public:
  explicit Master(MasterOptions options);
  ~Master();
  Master(const Master&) = delete;
  Master& operator=(const Master&) = delete;

  pyhpc_status start();
  void stop();
  uint16_t port() const { return port_; }
  const std::string& host() const { return options_.host; }
  MasterStats stats() const;

 private:
  struct Client;
  struct Slot;
  void run();
  void accept_clients();
  void read_client(Client& c);
  void handle(Client& c, const Message& m);
  void flush(Client& c);
  void queue(Client& c, const Message& m);
  void reject(Client& c, pyhpc_status code, const std::string& why);
  void fail_client(Client& c, FailReason reason);
  void maybe_complete_update();
  void check_deadlines();
  void fail_doomed();
  void reap();
  void publish();
  using OpKey = std::tuple<uint64_t, uint32_t, uint64_t>;  // epoch, tag, seq
  void on_vote(Client& c, const Message& m);
  void resolve_ops();
  void verdict_to(Client* c, const OpKey& k, Verdict v, const std::vector<uint64_t>& dead);
  void decide(const OpKey& k, Verdict v, const std::vector<uint64_t>& dead);
  std::vector<uint64_t> gone_without_yes(const std::vector<uint64_t>& yes) const;
  Client* member_client(uint64_t id) const;
  struct SyncRound {
    std::map<uint64_t, Message> reports;  // by peer id
    bool planned = false;
    std::set<uint64_t> done;
  };
  void on_sync_report(Client& c, const Message& m);
  void on_sync_done(Client& c, const Message& m);
  void plan_sync(uint64_t seq, SyncRound& round);
  void resolve_syncs();
  void decide_sync(uint64_t seq, Verdict v);
  void sync_verdict_to(Client* c, uint64_t epoch, uint64_t seq, Verdict v);
  std::vector<uint64_t> gone_members() const;
  // ---- topology optimization ----
  struct TopoRound {
    std::map<uint64_t, Message> reports;  // by peer id
  };
  void on_topo_report(Client& c, const Message& m);
  void decide_topo_order(uint64_t seq, TopoRound& round);
  void decide_topo_abort(uint64_t seq);
  void topo_abort_to(Client* c, uint64_t epoch, uint64_t seq);
  void resolve_topos();
  // ---- end topology optimization ----

  MasterOptions options_;
  uint16_t port_ = 0;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::thread thread_;
  std::atomic<bool> stop_{false};

  // Owned by the loop thread.
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<Slot> slots_;  // members in rank order
  uint64_t next_id_ = 1;
  uint64_t next_join_ = 0;
  uint64_t epoch_ = 0;
  std::map<OpKey, std::vector<uint64_t>> ops_;  // undecided ops of epoch_: who voted YES
  std::set<OpKey> aborted_;                      // decided ABORT in epoch_ (bounded)
  std::deque<OpKey> aborted_order_;
  std::map<uint64_t, SyncRound> syncs_;        // undecided sync rounds of epoch_, by seq
  std::map<uint64_t, Verdict> syncs_decided_;  // decided in epoch_ (bounded; MISMATCH: ABORT)
  std::deque<uint64_t> syncs_decided_order_;
  // Peers that took part in a committed sync: they hold the run's state. Only
  // they vote on a sync's winner (everyone, while none does), so peers that
  // join at once, however many, cannot outvote the members' state.
  std::set<uint64_t> state_holders_;
  // topology optimization
  std::map<uint64_t, TopoRound> topos_;      // undecided rounds of epoch_, by seq
  std::map<uint64_t, bool> topos_decided_;   // decided in epoch_: seq -> aborted (bounded)
  std::vector<uint64_t> preferred_order_;    // decided in epoch_: the next update's rank order

  mutable std::mutex stats_mu_;
  MasterStats stats_;
};

}  // namespace pyhpc::ccl
