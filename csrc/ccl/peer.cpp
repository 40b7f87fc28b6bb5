#include "ccl/peer.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "ccl/net.hpp"
#include "ccl/sha256.hpp"

namespace pyhpc::ccl {
namespace {
constexpr char kPeerLabel[] = "pccl-peer";
constexpr char kMasterLabel[] = "pccl-master";
constexpr size_t kMaxVerdicts = 4096;  // unclaimed verdicts kept (late ones of given-up ops)

pyhpc_status status_from_code(uint16_t code) {
  return code >= PYHPC_ERR_INVALID_ARGUMENT && code <= PYHPC_ERR_INTERNAL
             ? static_cast<pyhpc_status>(code)
             : PYHPC_ERR_PROTOCOL;
}
}  // namespace

Peer::~Peer() { close(); }

pyhpc_status Peer::connect(const PeerOptions& options) {
  if (fd_ >= 0 || closed_)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "this peer is already connected or closed");
  if (options.heartbeat_interval <= 0 || options.connect_timeout <= 0 ||
      options.master_timeout <= options.heartbeat_interval)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "intervals and timeouts must be positive");
  if (options.advertise_host.size() > kMaxHost)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "advertise_host longer than %zu", kMaxHost);
  options_ = options;
  const char* host = options.host.c_str();
  unsigned port = options.port;
  auto deadline = after(options.connect_timeout);
  int fd = -1;
  PYHPC_CHECK(connect_tcp(options.host, options.port, options.connect_timeout, &fd));

  auto fail = [&](pyhpc_status s, const char* what) {
    std::string why = last_error();
    ::close(fd);
    return PYHPC_FAIL(s, "master %s:%u: %s%s", host, port, what, why.c_str());
  };
  Message challenge;
  pyhpc_status s = recv_frame(fd, options.protocol_version, deadline, &challenge);
  if (s != PYHPC_OK) return fail(s, "");
  if (challenge.type != MsgType::kChallenge)
    return fail(PYHPC_ERR_PROTOCOL, "expected CHALLENGE from the master");

  Message auth;
  auth.type = MsgType::kAuth;
  if ((s = random_bytes(auth.nonce.data(), auth.nonce.size())) != PYHPC_OK) return fail(s, "");
  Piece pieces[3] = {{kPeerLabel, sizeof kPeerLabel - 1},
                     {challenge.nonce.data(), challenge.nonce.size()},
                     {auth.nonce.data(), auth.nonce.size()}};
  auth.mac = hmac_sha256(options.secret.data(), options.secret.size(), pieces, 3);
  auth.text = options.advertise_host;
  auth.port = options.advertise_port;
  std::vector<uint8_t> frame;
  if ((s = encode(auth, &frame, options.protocol_version)) != PYHPC_OK) return fail(s, "");
  if ((s = send_all(fd, frame.data(), frame.size(), deadline)) != PYHPC_OK) return fail(s, "");

  Message reply;
  if ((s = recv_frame(fd, options.protocol_version, deadline, &reply)) != PYHPC_OK)
    return fail(s, "");
  if (reply.type == MsgType::kError) {
    ::close(fd);
    return PYHPC_FAIL(status_from_code(reply.code), "master %s:%u refused this peer: %s", host,
                      port, reply.text.c_str());
  }
  if (reply.type != MsgType::kAuthOk) return fail(PYHPC_ERR_PROTOCOL, "expected AUTH_OK");
  Piece back[3] = {{kMasterLabel, sizeof kMasterLabel - 1},
                   {auth.nonce.data(), auth.nonce.size()},
                   {challenge.nonce.data(), challenge.nonce.size()}};
  Digest want = hmac_sha256(options.secret.data(), options.secret.size(), back, 3);
  if (!equal_constant_time(want.data(), reply.mac.data(), want.size()))
    return fail(PYHPC_ERR_AUTH, "the master does not know the shared secret");

  if (::pipe(wake_) != 0) return fail(PYHPC_ERR_INTERNAL, "pipe failed");
  set_nonblocking(wake_[0], true);
  set_nonblocking(wake_[1], true);
  set_nonblocking(fd, true);
  fd_ = fd;
  id_ = reply.id;
  thread_ = std::thread([this] { loop(); });
  return PYHPC_OK;
}

pyhpc_status Peer::send(const Message& m) {
  std::vector<uint8_t> frame;
  PYHPC_CHECK(encode(m, &frame, options_.protocol_version));
  std::lock_guard<std::mutex> lock(send_mu_);
  if (fd_ < 0) return PYHPC_FAIL(PYHPC_ERR_PEER, "not connected to a master");
  PYHPC_CHECK(send_all(fd_, frame.data(), frame.size(), after(2.0)));
  return PYHPC_OK;
}

void Peer::set_broken(pyhpc_status s, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_ == PYHPC_OK) {
    broken_ = s;
    broken_why_ = why;
  }
  cv_.notify_all();
}

void Peer::loop() {
  std::vector<uint8_t> in;
  auto next_beat = Clock::now();
  auto last_heard = Clock::now();  // any frame from the master
  const auto silence = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.master_timeout));
  uint8_t buf[65536];
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_ || broken_ != PYHPC_OK) return;
    }
    auto now = Clock::now();
    if (now >= next_beat) {
      Message hb;
      hb.type = MsgType::kHeartbeat;
      hb.seq = ++heartbeat_seq_;
      if (send(hb) != PYHPC_OK) {
        set_broken(PYHPC_ERR_PEER, "lost the connection to the master: " + last_error());
        return;
      }
      next_beat = now + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(options_.heartbeat_interval));
    }
    int ms = int(std::chrono::duration_cast<std::chrono::milliseconds>(next_beat - Clock::now())
                     .count()) + 1;
    pollfd fds[2] = {{wake_[0], POLLIN, 0}, {fd_, POLLIN, 0}};
    int rc = ::poll(fds, 2, ms < 1 ? 1 : ms);
    if (Clock::now() - last_heard > silence) {
      set_broken(PYHPC_ERR_PEER, "the master has been silent for " +
                                     std::to_string(options_.master_timeout) +
                                     " s (frozen, or cut off from this peer)");
      return;
    }
    if (rc <= 0 || !(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    ssize_t k = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
      set_broken(PYHPC_ERR_PEER, std::string("the master closed the connection") +
                                     (k < 0 ? std::string(": ") + std::strerror(errno) : ""));
      return;
    }
    if (k < 0) continue;
    last_heard = Clock::now();
    in.insert(in.end(), buf, buf + k);
    size_t off = 0;
    while (in.size() - off >= kHeaderSize) {
      Header h;
      if (decode_header(in.data() + off, kHeaderSize, options_.protocol_version, &h) != PYHPC_OK) {
        set_broken(PYHPC_ERR_PROTOCOL, "bad frame from the master: " + last_error());
        return;
      }
      if (in.size() - off - kHeaderSize < h.length) break;
      Message m;
      if (decode_payload(h, in.data() + off + kHeaderSize, h.length, &m) != PYHPC_OK) {
        set_broken(PYHPC_ERR_PROTOCOL, "bad frame from the master: " + last_error());
        return;
      }
      off += kHeaderSize + h.length;
      std::lock_guard<std::mutex> lock(mu_);
      if (m.type == MsgType::kTopology) {
        topology_.epoch = m.epoch;
        topology_.rank = m.your_rank;
        topology_.peers = std::move(m.peers);
        topology_.dead = std::move(m.dead);
        topology_.left = std::move(m.left);
        have_topology_ = true;
        verdicts_.erase(verdicts_.begin(), verdicts_.lower_bound(OpKey{m.epoch, 0, 0}));
        sync_plans_.erase(sync_plans_.begin(), sync_plans_.lower_bound(SyncKey{m.epoch, 0}));
        sync_verdicts_.erase(sync_verdicts_.begin(),
                             sync_verdicts_.lower_bound(SyncKey{m.epoch, 0}));
        topo_results_.erase(topo_results_.begin(),
                            topo_results_.lower_bound(SyncKey{m.epoch, 0}));
        ++topologies_seen_;
        update_outstanding_ = false;
        unclaimed_ = true;
        cv_.notify_all();
      } else if (m.type == MsgType::kVerdict) {
        if (verdicts_.size() >= kMaxVerdicts) verdicts_.erase(verdicts_.begin());
        verdicts_[OpKey{m.epoch, m.tag, m.seq}] = {static_cast<Verdict>(m.vote),
                                                   std::move(m.dead)};
        cv_.notify_all();
      } else if (m.type == MsgType::kSyncPlan || m.type == MsgType::kSyncVerdict) {
        auto& box = m.type == MsgType::kSyncPlan ? sync_plans_ : sync_verdicts_;
        if (box.size() >= kMaxVerdicts) box.erase(box.begin());
        SyncKey k{m.epoch, m.seq};
        box[k] = std::move(m);
        cv_.notify_all();
      } else if (m.type == MsgType::kTopoResult) {  // topology optimization
        if (topo_results_.size() >= kMaxVerdicts) topo_results_.erase(topo_results_.begin());
        SyncKey k{m.epoch, m.seq};
        topo_results_[k] = std::move(m);
        cv_.notify_all();
      } else if (m.type == MsgType::kHeartbeat) {  // the master's echo: it is alive
      } else if (m.type == MsgType::kPeerFailed) {
        failures_.push_back(m.id);
        cv_.notify_all();
      } else if (m.type == MsgType::kError) {
        broken_ = status_from_code(m.code);
        broken_why_ = "the master ended this peer's membership: " + m.text;
        cv_.notify_all();
        return;
      } else {
        broken_ = PYHPC_ERR_PROTOCOL;
        broken_why_ = std::string("unexpected ") + type_name(m.type) + " from the master";
        cv_.notify_all();
        return;
      }
    }
    in.erase(in.begin(), in.begin() + off);
  }
}

pyhpc_status Peer::vote(uint64_t epoch, uint32_t tag, uint64_t seq, Vote v) {
  Message m;
  m.type = MsgType::kVote;
  m.epoch = epoch;
  m.tag = tag;
  m.seq = seq;
  m.vote = uint8_t(v);
  pyhpc_status s = send(m);
  if (s != PYHPC_OK) {
    std::string why = last_error();
    return PYHPC_FAIL(PYHPC_ERR_PEER, "cannot reach the master for the commit round: %s",
                      why.c_str());
  }
  return PYHPC_OK;
}

pyhpc_status Peer::await_verdict(uint64_t epoch, uint32_t tag, uint64_t seq,
                                 Clock::time_point deadline, Verdict* verdict,
                                 std::vector<uint64_t>* dead) {
  OpKey k{epoch, tag, seq};
  std::unique_lock<std::mutex> lock(mu_);
  // The verdict usually comes within one round trip to the master: yield the
  // CPU for a moment (to the loop thread that receives it) before sleeping on
  // the condition variable, which costs a futex wake-up more.
  for (auto spin_until = after(200e-6);
       !verdicts_.count(k) && broken_ == PYHPC_OK && !stop_ && Clock::now() < spin_until;) {
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  cv_.wait_until(lock, deadline, [&] {
    return verdicts_.count(k) || broken_ != PYHPC_OK || stop_;
  });
  auto it = verdicts_.find(k);
  if (it != verdicts_.end()) {
    *verdict = it->second.first;
    *dead = std::move(it->second.second);
    verdicts_.erase(it);
    return PYHPC_OK;
  }
  if (stop_) return PYHPC_FAIL(PYHPC_ERR_PEER, "this peer was closed during the commit round");
  if (broken_ != PYHPC_OK)
    return PYHPC_FAIL(PYHPC_ERR_PEER, "commit round: %s", broken_why_.c_str());
  return PYHPC_FAIL(PYHPC_ERR_TIMEOUT,
                    "commit round: no verdict from the master before the operation's deadline");
}

pyhpc_status Peer::sync_send(const Message& m) {
  pyhpc_status s = send(m);
  if (s != PYHPC_OK) {
    std::string why = last_error();
    return PYHPC_FAIL(PYHPC_ERR_PEER, "cannot reach the master for the state sync: %s",
                      why.c_str());
  }
  return PYHPC_OK;
}

pyhpc_status Peer::await_sync(uint64_t epoch, uint64_t seq, bool want_plan,
                              Clock::time_point deadline, Message* out) {
  SyncKey k{epoch, seq};
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [&] {
    return sync_verdicts_.count(k) || (want_plan && sync_plans_.count(k)) ||
           broken_ != PYHPC_OK || stop_;
  };
  cv_.wait_until(lock, deadline, ready);
  for (auto* box : {&sync_verdicts_, &sync_plans_}) {
    if (box == &sync_plans_ && !want_plan) break;
    auto it = box->find(k);
    if (it != box->end()) {
      *out = std::move(it->second);
      box->erase(it);
      return PYHPC_OK;
    }
  }
  if (stop_) return PYHPC_FAIL(PYHPC_ERR_PEER, "this peer was closed during the state sync");
  if (broken_ != PYHPC_OK)
    return PYHPC_FAIL(PYHPC_ERR_PEER, "state sync: %s", broken_why_.c_str());
  return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "state sync: no word from the master in time");
}

// ---- topology optimization ----
pyhpc_status Peer::topo_send(const Message& m) {
  pyhpc_status s = send(m);
  if (s != PYHPC_OK) {
    std::string why = last_error();
    return PYHPC_FAIL(PYHPC_ERR_PEER, "cannot reach the master for optimize_topology: %s",
                      why.c_str());
  }
  return PYHPC_OK;
}

pyhpc_status Peer::await_topo(uint64_t epoch, uint64_t seq, Clock::time_point deadline,
                              Message* out) {
  SyncKey k{epoch, seq};
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_until(lock, deadline,
                 [&] { return topo_results_.count(k) || broken_ != PYHPC_OK || stop_; });
  auto it = topo_results_.find(k);
  if (it != topo_results_.end()) {
    *out = std::move(it->second);
    topo_results_.erase(it);
    return PYHPC_OK;
  }
  if (stop_) return PYHPC_FAIL(PYHPC_ERR_PEER, "this peer was closed during optimize_topology");
  if (broken_ != PYHPC_OK)
    return PYHPC_FAIL(PYHPC_ERR_PEER, "optimize_topology: %s", broken_why_.c_str());
  return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "optimize_topology: no word from the master in time");
}
// ---- end topology optimization ----

pyhpc_status Peer::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "this peer has left or was closed");
  if (fd_ < 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "not connected");
  if (broken_ != PYHPC_OK) return PYHPC_FAIL(broken_, "%s", broken_why_.c_str());
  return PYHPC_OK;
}

pyhpc_status Peer::update_topology(double timeout_s, Topology* out) {
  PYHPC_CHECK(health());
  std::unique_lock<std::mutex> lock(mu_);
  if (unclaimed_) {  // an update asked for by a call that timed out completed since
    unclaimed_ = false;
    *out = topology_;
    return PYHPC_OK;
  }
  uint64_t seen = topologies_seen_;
  if (!update_outstanding_) {
    Message req;
    req.type = MsgType::kUpdateRequest;
    req.seq = ++update_seq_;
    update_outstanding_ = true;
    lock.unlock();
    pyhpc_status s = send(req);
    lock.lock();
    if (s != PYHPC_OK) return s;
  }
  bool done = cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] {
    return topologies_seen_ > seen || !update_outstanding_ || broken_ != PYHPC_OK || stop_;
  });
  if (stop_) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "this peer was closed");
  if (broken_ != PYHPC_OK) return PYHPC_FAIL(broken_, "%s", broken_why_.c_str());
  if (!done)
    return PYHPC_FAIL(PYHPC_ERR_TIMEOUT,
                      "update_topology: the master completed no update within %.3g s (it waits "
                      "for every live member to call update_topology)",
                      timeout_s);
  unclaimed_ = false;
  *out = topology_;
  return PYHPC_OK;
}

bool Peer::admitted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return have_topology_;
}

Topology Peer::topology() const {
  std::lock_guard<std::mutex> lock(mu_);
  return topology_;
}

std::vector<uint64_t> Peer::take_failures() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> out;
  out.swap(failures_);
  return out;
}

std::vector<uint64_t> Peer::peek_failures() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failures_;
}

pyhpc_status Peer::leave() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return PYHPC_OK;
  }
  if (fd_ >= 0) {
    Message m;
    m.type = MsgType::kLeave;
    (void)send(m);  // the master treats a vanished peer as dead instead of left
    clear_last_error();
  }
  close();
  return PYHPC_OK;
}

void Peer::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    stop_ = true;
    cv_.notify_all();
  }
  wake_and_join(thread_, wake_[1]);
  std::lock_guard<std::mutex> lock(send_mu_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  for (int& w : wake_) {
    if (w >= 0) ::close(w);
    w = -1;
  }
}

}  // namespace pyhpc::ccl
