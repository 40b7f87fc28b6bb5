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
// member may have kMaxOpenVotes undecided YES votes at most. It then admits the pending peers that asked too,
// assigns ranks (survivors keep their relative order, then the newcomers in
// the order they authenticated) and sends every member a TOPOLOGY.
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

  mutable std::mutex stats_mu_;
  MasterStats stats_;
};

}  // namespace pyhpc::ccl
