#include "ccl/master.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "ccl/net.hpp"
#include "ccl/sha256.hpp"
#include "ccl/topology.hpp"

namespace pyhpc::ccl {
namespace {
constexpr size_t kMaxOutBuffer = 16u << 20;  // a peer this far behind is dropped
constexpr char kPeerLabel[] = "pccl-peer";
constexpr char kMasterLabel[] = "pccl-master";
constexpr size_t kMaxOpenVotes = 1024;  // undecided YES votes per member
constexpr size_t kMaxAborted = 4096;    // ABORT decisions remembered per epoch
constexpr size_t kMaxOpenSyncs = 64;    // undecided shared-state sync rounds
constexpr size_t kMaxSyncsDecided = 4096;
constexpr size_t kMaxOpenTopos = 16;      // topology optimization: undecided rounds
constexpr size_t kMaxToposDecided = 4096;

std::string shape_text(const StateEntry& e) {
  std::string s = e.dtype + " (";
  for (size_t i = 0; i < e.shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(e.shape[i]);
  return s + (e.shape.size() == 1 ? ",)" : ")");
}

// Why two reports list different tensors ("" if they agree).
std::string state_difference(uint64_t id_a, const Message& a, uint64_t id_b, const Message& b) {
  const auto& x = a.tensors;
  const auto& y = b.tensors;
  size_t i = 0, j = 0;
  auto only = [](const std::string& name, uint64_t has, uint64_t lacks) {
    return "tensor '" + name + "' is in the state of peer " + std::to_string(has) +
           " but not in that of peer " + std::to_string(lacks);
  };
  while (i < x.size() || j < y.size()) {
    if (j == y.size() || (i < x.size() && x[i].name < y[j].name))
      return only(x[i].name, id_a, id_b);
    if (i == x.size() || y[j].name < x[i].name) return only(y[j].name, id_b, id_a);
    if (x[i].dtype != y[j].dtype || x[i].itemsize != y[j].itemsize || x[i].shape != y[j].shape)
      return "tensor '" + x[i].name + "' differs between peers: peer " + std::to_string(id_a) +
             " has " + shape_text(x[i]) + ", peer " + std::to_string(id_b) + " has " +
             shape_text(y[j]);
    ++i;
    ++j;
  }
  return "";
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

enum class ClientState { kAwaitAuth, kPending, kMember, kGone };

struct Master::Client {
  int fd = -1;
  ClientState state = ClientState::kAwaitAuth;
  std::array<uint8_t, kNonceSize> nonce{};
  uint64_t id = 0;
  uint64_t join = 0;
  std::string host;
  uint16_t port = 0;
  std::vector<uint8_t> in;
  std::vector<uint8_t> out;
  size_t out_off = 0;
  Clock::time_point handshake_deadline;
  Clock::time_point last_heard;
  bool wants_update = false;
  size_t open_votes = 0;  // undecided ops this member voted YES for
  bool doomed = false;  // a send failed; failed from the loop, never mid-iteration
};

enum class Gone { kNo, kDead, kLeft };

struct Master::Slot {
  uint64_t id;
  std::string host;
  uint16_t port;
  Client* client;  // null once gone
  Gone gone;
};

Master::Master(MasterOptions options) : options_(std::move(options)) {}

Master::~Master() { stop(); }

pyhpc_status Master::start() {
  if (thread_.joinable())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "the master is already running");
  if (options_.heartbeat_timeout <= 0 || options_.handshake_timeout <= 0)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "timeouts must be positive");
  PYHPC_CHECK(listen_tcp(options_.host, options_.port, &listen_fd_, &port_));
  PYHPC_CHECK(set_nonblocking(listen_fd_, true));
  if (::pipe(wake_) != 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    return PYHPC_FAIL(PYHPC_ERR_INTERNAL, "pipe: %s", std::strerror(errno));
  }
  set_nonblocking(wake_[0], true);
  set_nonblocking(wake_[1], true);
  stop_ = false;
  thread_ = std::thread([this] { run(); });
  return PYHPC_OK;
}

void Master::stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  wake_and_join(thread_, wake_[1]);
  for (auto& c : clients_)
    if (c->fd >= 0) ::close(c->fd);
  clients_.clear();
  slots_.clear();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
  listen_fd_ = wake_[0] = wake_[1] = -1;
}

MasterStats Master::stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void Master::publish() {
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.epoch = epoch_;
  stats_.members.clear();
  for (const auto& s : slots_) stats_.members.push_back(s.id);
  stats_.pending.clear();
  for (const auto& c : clients_)
    if (c->state == ClientState::kPending) stats_.pending.push_back(c->id);
}

void Master::run() {
  std::vector<pollfd> fds;
  while (!stop_) {
    fds.clear();
    fds.push_back({wake_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (auto& c : clients_) {
      short ev = POLLIN;
      if (c->out.size() > c->out_off) ev |= POLLOUT;
      fds.push_back({c->fd, ev, 0});
    }
    int rc = ::poll(fds.data(), fds.size(), 20);
    if (rc < 0 && errno != EINTR) break;
    if (stop_) break;
    if (rc > 0) {
      // Clients appended during this pass are polled next time round.
      size_t n = clients_.size();
      for (size_t i = 0; i < n; ++i) {
        Client& c = *clients_[i];
        short re = fds[i + 2].revents;
        if (c.state == ClientState::kGone || re == 0) continue;
        if (re & POLLOUT) flush(c);
        if (c.state != ClientState::kGone && (re & (POLLIN | POLLHUP | POLLERR))) read_client(c);
      }
      if (fds[1].revents & POLLIN) accept_clients();
    }
    check_deadlines();
    fail_doomed();
    reap();
  }
}

void Master::accept_clients() {
  for (;;) {
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;  // EAGAIN or a transient error: try on the next poll
    if (clients_.size() >= options_.max_clients) {
      ::close(fd);
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.rejected;
      continue;
    }
    tune_socket(fd);
    set_nonblocking(fd, true);
    auto c = std::make_unique<Client>();
    c->fd = fd;
    c->host = peer_ip(fd);
    c->handshake_deadline = after(options_.handshake_timeout);
    c->last_heard = Clock::now();
    if (random_bytes(c->nonce.data(), c->nonce.size()) != PYHPC_OK) {
      ::close(fd);
      continue;
    }
    Message m;
    m.type = MsgType::kChallenge;
    m.nonce = c->nonce;
    clients_.push_back(std::move(c));
    queue(*clients_.back(), m);
  }
}

void Master::queue(Client& c, const Message& m) {
  if (c.state == ClientState::kGone) return;
  std::vector<uint8_t> frame;
  if (encode(m, &frame) != PYHPC_OK) return;  // cannot happen for messages we build
  if (c.out.size() - c.out_off + frame.size() > kMaxOutBuffer) {
    c.doomed = true;
    return;
  }
  c.out.insert(c.out.end(), frame.begin(), frame.end());
  flush(c);
}

void Master::flush(Client& c) {
  while (c.out_off < c.out.size()) {
    ssize_t k = ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      c.out_off += size_t(k);
    } else if (k < 0 && errno == EINTR) {
      continue;
    } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      c.doomed = true;
      return;
    }
  }
  c.out.clear();
  c.out_off = 0;
}

void Master::read_client(Client& c) {
  uint8_t buf[65536];
  for (;;) {
    ssize_t k = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
      fail_client(c, FailReason::kClosed);
      return;
    }
    if (k < 0) {
      if (errno == EINTR) continue;
      break;
    }
    c.in.insert(c.in.end(), buf, buf + k);
    // Parse every complete frame; the header is judged as soon as it is in,
    // so an oversized or foreign frame is refused before its payload arrives.
    size_t off = 0;
    while (c.state != ClientState::kGone && c.in.size() - off >= kHeaderSize) {
      const uint8_t* p = c.in.data() + off;
      Header h;
      if (decode_header(p, kHeaderSize, kProtocolVersion, &h) != PYHPC_OK) {
        uint32_t magic = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
                         uint32_t(p[3]) << 24;
        uint16_t version = uint16_t(p[4] | p[5] << 8);
        std::string why = last_error();
        if (magic == kMagic && version != kProtocolVersion) {
          char text[160];
          std::snprintf(text, sizeof text,
                        "protocol version mismatch: this peer speaks PCCL protocol version %u, "
                        "the master speaks version %u",
                        unsigned(version), unsigned(kProtocolVersion));
          why = text;
        }
        clear_last_error();
        reject(c, PYHPC_ERR_PROTOCOL, why);
        return;
      }
      if (c.in.size() - off - kHeaderSize < h.length) break;
      Message m;
      pyhpc_status s = decode_payload(h, p + kHeaderSize, h.length, &m);
      off += kHeaderSize + h.length;
      if (s != PYHPC_OK) {
        std::string why = last_error();
        clear_last_error();
        reject(c, PYHPC_ERR_PROTOCOL, why);
        return;
      }
      c.last_heard = Clock::now();
      handle(c, m);
    }
    if (c.state == ClientState::kGone) return;
    c.in.erase(c.in.begin(), c.in.begin() + off);
  }
}

void Master::handle(Client& c, const Message& m) {
  if (c.state == ClientState::kAwaitAuth) {
    if (m.type != MsgType::kAuth) {
      reject(c, PYHPC_ERR_PROTOCOL,
             std::string("expected AUTH, got ") + type_name(m.type));
      return;
    }
    Piece pieces[3] = {{kPeerLabel, sizeof kPeerLabel - 1},
                       {c.nonce.data(), c.nonce.size()},
                       {m.nonce.data(), m.nonce.size()}};
    Digest want = hmac_sha256(options_.secret.data(), options_.secret.size(), pieces, 3);
    if (!equal_constant_time(want.data(), m.mac.data(), want.size())) {
      reject(c, PYHPC_ERR_AUTH, "authentication failed: wrong secret");
      return;
    }
    Piece back[3] = {{kMasterLabel, sizeof kMasterLabel - 1},
                     {m.nonce.data(), m.nonce.size()},
                     {c.nonce.data(), c.nonce.size()}};
    Message ok;
    ok.type = MsgType::kAuthOk;
    ok.id = c.id = next_id_++;
    ok.mac = hmac_sha256(options_.secret.data(), options_.secret.size(), back, 3);
    if (!m.text.empty()) c.host = m.text;
    c.port = m.port;
    c.join = next_join_++;
    c.state = ClientState::kPending;
    publish();  // before AUTH_OK can reach the peer: it may ask for stats() at once
    queue(c, ok);
    return;
  }
  switch (m.type) {
    case MsgType::kHeartbeat:
      queue(c, m);  // the echo tells the peer this master is alive
      return;
    case MsgType::kUpdateRequest:
      c.wants_update = true;
      maybe_complete_update();
      return;
    case MsgType::kVote:
      on_vote(c, m);
      return;
    case MsgType::kSyncReport:
      on_sync_report(c, m);
      return;
    case MsgType::kSyncDone:
      on_sync_done(c, m);
      return;
    case MsgType::kTopoReport:  // topology optimization
      on_topo_report(c, m);
      return;
    case MsgType::kLeave: {
      for (auto& s : slots_)
        if (s.client == &c) {
          s.gone = Gone::kLeft;
          s.client = nullptr;
        }
      ::close(c.fd);
      c.fd = -1;
      c.state = ClientState::kGone;
      resolve_ops();
      resolve_syncs();
      resolve_topos();
      maybe_complete_update();
      publish();
      return;
    }
    default:
      reject(c, PYHPC_ERR_PROTOCOL,
             std::string("unexpected ") + type_name(m.type) + " message from a peer");
  }
}

void Master::reject(Client& c, pyhpc_status code, const std::string& why) {
  if (c.state == ClientState::kGone) return;
  // Best effort: tell the client why, then drop it.
  Message e;
  e.type = MsgType::kError;
  e.code = uint16_t(code);
  e.text = why;
  std::vector<uint8_t> frame;
  if (encode(e, &frame) == PYHPC_OK)
    (void)::send(c.fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (c.state == ClientState::kAwaitAuth) {
    ::close(c.fd);
    c.fd = -1;
    c.state = ClientState::kGone;
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.rejected;
    return;
  }
  fail_client(c, FailReason::kProtocol);
}

void Master::fail_client(Client& c, FailReason reason) {
  if (c.state == ClientState::kGone) return;
  ClientState was = c.state;
  ::close(c.fd);
  c.fd = -1;
  c.state = ClientState::kGone;
  if (was == ClientState::kAwaitAuth) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.rejected;
    return;
  }
  if (was == ClientState::kMember) {
    for (auto& s : slots_)
      if (s.client == &c) {
        s.gone = Gone::kDead;
        s.client = nullptr;
      }
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      stats_.failures.push_back({c.id, reason, unix_now()});
    }
    Message f;
    f.type = MsgType::kPeerFailed;
    f.id = c.id;
    f.code = uint16_t(reason);
    for (auto& s : slots_)
      if (s.client) queue(*s.client, f);
    resolve_ops();
    resolve_syncs();
    resolve_topos();
    maybe_complete_update();
  }
  publish();
}

void Master::maybe_complete_update() {
  bool any_live = false;
  for (const auto& s : slots_) {
    if (!s.client) continue;
    if (!s.client->wants_update) return;
    any_live = true;
  }
  std::vector<Client*> joiners;
  for (auto& c : clients_)
    if (c->state == ClientState::kPending && c->wants_update) joiners.push_back(c.get());
  if (!any_live && joiners.empty()) return;
  std::sort(joiners.begin(), joiners.end(),
            [](const Client* a, const Client* b) { return a->join < b->join; });

  // Ops of the closing epoch still undecided cannot commit any more.
  for (auto& [k, yes] : ops_)
    for (uint64_t id : yes) verdict_to(member_client(id), k, Verdict::kAbort, {});
  for (auto& cp : clients_) cp->open_votes = 0;
  ops_.clear();
  aborted_.clear();
  aborted_order_.clear();
  // So do undecided sync rounds.
  while (!syncs_.empty()) decide_sync(syncs_.begin()->first, Verdict::kAbort);
  syncs_decided_.clear();
  syncs_decided_order_.clear();
  // And undecided topology optimizations (a decided one's order applies now).
  while (!topos_.empty()) decide_topo_abort(topos_.begin()->first);
  topos_decided_.clear();
  std::vector<uint64_t> preferred;
  preferred.swap(preferred_order_);

  Message t;
  t.type = MsgType::kTopology;
  t.epoch = ++epoch_;
  std::vector<Slot> next;
  for (auto& s : slots_) {
    if (s.gone == Gone::kDead) t.dead.push_back(s.id);
    else if (s.gone == Gone::kLeft) t.left.push_back(s.id);
    else next.push_back(s);
  }
  if (!preferred.empty()) {  // topology optimization: survivors in the chosen ring order
    auto pos = [&](uint64_t id) {
      return std::find(preferred.begin(), preferred.end(), id) - preferred.begin();
    };
    std::stable_sort(next.begin(), next.end(),
                     [&](const Slot& a, const Slot& b) { return pos(a.id) < pos(b.id); });
  }
  for (Client* c : joiners) {
    if (next.size() >= kMaxWorld) break;  // the rest wait for a later update
    c->state = ClientState::kMember;
    next.push_back({c->id, c->host, c->port, c, Gone::kNo});
  }
  slots_ = std::move(next);
  for (auto it = state_holders_.begin(); it != state_holders_.end();)  // the gone hold nothing
    it = std::any_of(slots_.begin(), slots_.end(), [&](const Slot& s) { return s.id == *it; })
             ? std::next(it)
             : state_holders_.erase(it);
  for (const auto& s : slots_) t.peers.push_back({s.id, s.port, s.host});
  // Cap the departed lists (a TOPOLOGY never exceeds its own frame cap).
  if (t.dead.size() > kMaxWorld) t.dead.resize(kMaxWorld);
  if (t.left.size() > kMaxWorld) t.left.resize(kMaxWorld);
  for (uint32_t r = 0; r < slots_.size(); ++r) {
    Client* c = slots_[r].client;
    c->wants_update = false;
    t.your_rank = r;
    queue(*c, t);
  }
  publish();
}

Master::Client* Master::member_client(uint64_t id) const {
  for (const auto& s : slots_)
    if (s.id == id) return s.client;
  return nullptr;
}

std::vector<uint64_t> Master::gone_without_yes(const std::vector<uint64_t>& yes) const {
  std::vector<uint64_t> out;
  for (const auto& s : slots_)
    if (s.gone != Gone::kNo && std::find(yes.begin(), yes.end(), s.id) == yes.end())
      out.push_back(s.id);
  return out;
}

void Master::verdict_to(Client* c, const OpKey& k, Verdict v, const std::vector<uint64_t>& dead) {
  if (!c) return;
  Message m;
  m.type = MsgType::kVerdict;
  m.epoch = std::get<0>(k);
  m.tag = std::get<1>(k);
  m.seq = std::get<2>(k);
  m.vote = uint8_t(v);
  if (v == Verdict::kAbort) m.dead = dead;
  if (m.dead.size() > kMaxWorld) m.dead.resize(kMaxWorld);
  queue(*c, m);
}

void Master::decide(const OpKey& k, Verdict v, const std::vector<uint64_t>& dead) {
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++(v == Verdict::kCommit ? stats_.commits : stats_.aborts);
  }
  auto it = ops_.find(k);
  if (it != ops_.end()) {
    for (uint64_t id : it->second) {
      Client* c = member_client(id);
      if (c && c->open_votes) --c->open_votes;
      verdict_to(c, k, v, dead);
    }
    ops_.erase(it);
  }
  if (v == Verdict::kAbort && std::get<0>(k) == epoch_ && aborted_.insert(k).second) {
    aborted_order_.push_back(k);
    if (aborted_order_.size() > kMaxAborted) {
      aborted_.erase(aborted_order_.front());
      aborted_order_.pop_front();
    }
  }
}

void Master::on_vote(Client& c, const Message& m) {
  if (c.state != ClientState::kMember || !member_client(c.id)) {
    reject(c, PYHPC_ERR_PROTOCOL, "VOTE from a peer that is not a member");
    return;
  }
  OpKey k{m.epoch, m.tag, m.seq};
  Vote v = static_cast<Vote>(m.vote);
  if (m.epoch != epoch_ || aborted_.count(k)) {
    // Another epoch's op, or one already aborted (a late vote): it cannot commit.
    if (v != Vote::kNo)
      verdict_to(&c, k, Verdict::kAbort, m.epoch == epoch_ ? gone_without_yes({}) : std::vector<uint64_t>{});
    return;
  }
  auto it = ops_.find(k);
  const std::vector<uint64_t> none;
  const std::vector<uint64_t>& yes = it == ops_.end() ? none : it->second;
  if (std::find(yes.begin(), yes.end(), c.id) != yes.end()) {
    reject(c, PYHPC_ERR_PROTOCOL, "a second VOTE for an operation already voted YES");
    return;
  }
  std::vector<uint64_t> gone = gone_without_yes(yes);
  if (v == Vote::kNo) {
    decide(k, Verdict::kAbort, gone);
    return;
  }
  if (v == Vote::kQuery) {
    if (gone.empty()) {
      verdict_to(&c, k, Verdict::kContinue, {});
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.continues;
    } else {
      verdict_to(&c, k, Verdict::kAbort, gone);
      decide(k, Verdict::kAbort, gone);
    }
    return;
  }
  if (!gone.empty()) {
    verdict_to(&c, k, Verdict::kAbort, gone);
    decide(k, Verdict::kAbort, gone);
    return;
  }
  if (c.open_votes >= kMaxOpenVotes) {
    reject(c, PYHPC_ERR_PROTOCOL, "too many undecided operations");
    return;
  }
  ++c.open_votes;
  ops_[k].push_back(c.id);
  resolve_ops();
}

void Master::resolve_ops() {
  std::vector<std::pair<OpKey, std::vector<uint64_t>>> aborts;
  std::vector<OpKey> commits;
  for (const auto& [k, yes] : ops_) {
    std::vector<uint64_t> gone = gone_without_yes(yes);
    if (!gone.empty()) {
      aborts.push_back({k, std::move(gone)});
      continue;
    }
    bool all = true;
    for (const auto& s : slots_)
      if (std::find(yes.begin(), yes.end(), s.id) == yes.end()) all = false;
    if (all) commits.push_back(k);
  }
  for (const auto& [k, gone] : aborts) decide(k, Verdict::kAbort, gone);
  for (const auto& k : commits) decide(k, Verdict::kCommit, {});
}

// ---- shared-state sync rounds ------------------------------------------------------

std::vector<uint64_t> Master::gone_members() const {
  std::vector<uint64_t> out;
  for (const auto& s : slots_)
    if (s.gone != Gone::kNo) out.push_back(s.id);
  return out;
}

void Master::sync_verdict_to(Client* c, uint64_t epoch, uint64_t seq, Verdict v) {
  if (!c) return;
  Message m;
  m.type = MsgType::kSyncVerdict;
  m.epoch = epoch;
  m.seq = seq;
  m.vote = uint8_t(v);
  if (v == Verdict::kAbort && epoch == epoch_) m.dead = gone_members();
  if (m.dead.size() > kMaxWorld) m.dead.resize(kMaxWorld);
  queue(*c, m);
}

void Master::decide_sync(uint64_t seq, Verdict v) {
  auto it = syncs_.find(seq);
  if (it == syncs_.end()) return;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++(v == Verdict::kCommit ? stats_.sync_commits : stats_.sync_aborts);
  }
  // Members that have not reported yet hear the verdict when they do.
  for (const auto& [id, report] : it->second.reports) {
    sync_verdict_to(member_client(id), epoch_, seq, v);
    if (v == Verdict::kCommit) state_holders_.insert(id);
  }
  syncs_.erase(it);
  if (syncs_decided_.emplace(seq, v).second) {
    syncs_decided_order_.push_back(seq);
    if (syncs_decided_order_.size() > kMaxSyncsDecided) {
      syncs_decided_.erase(syncs_decided_order_.front());
      syncs_decided_order_.pop_front();
    }
  }
}

void Master::resolve_syncs() {
  if (gone_members().empty()) return;
  while (!syncs_.empty()) decide_sync(syncs_.begin()->first, Verdict::kAbort);
}

void Master::on_sync_report(Client& c, const Message& m) {
  if (c.state != ClientState::kMember || !member_client(c.id)) {
    reject(c, PYHPC_ERR_PROTOCOL, "SYNC_REPORT from a peer that is not a member");
    return;
  }
  if (m.epoch != epoch_) {  // an older epoch's round: it cannot go on
    sync_verdict_to(&c, m.epoch, m.seq, Verdict::kAbort);
    return;
  }
  auto dec = syncs_decided_.find(m.seq);
  if (dec != syncs_decided_.end()) {  // decided (aborted) before this peer reported
    sync_verdict_to(&c, m.epoch, m.seq, dec->second == Verdict::kCommit ? Verdict::kAbort
                                                                        : dec->second);
    return;
  }
  auto it = syncs_.find(m.seq);
  if (it == syncs_.end()) {
    if (syncs_.size() >= kMaxOpenSyncs) {
      reject(c, PYHPC_ERR_PROTOCOL, "too many undecided sync rounds");
      return;
    }
    it = syncs_.emplace(m.seq, SyncRound{}).first;
  }
  SyncRound& round = it->second;
  if (round.reports.count(c.id)) {
    reject(c, PYHPC_ERR_PROTOCOL, "a second SYNC_REPORT for one sync round");
    return;
  }
  round.reports.emplace(c.id, m);
  if (!gone_members().empty()) {
    decide_sync(m.seq, Verdict::kAbort);
    return;
  }
  for (const auto& s : slots_)
    if (!round.reports.count(s.id)) return;
  plan_sync(m.seq, round);
}

void Master::plan_sync(uint64_t seq, SyncRound& round) {
  const Message& first = round.reports.at(slots_[0].id);
  for (size_t r = 1; r < slots_.size(); ++r) {
    std::string why = state_difference(slots_[0].id, first, slots_[r].id,
                                       round.reports.at(slots_[r].id));
    if (why.empty()) continue;
    Message p;
    p.type = MsgType::kSyncPlan;
    p.epoch = epoch_;
    p.seq = seq;
    p.vote = uint8_t(SyncOutcome::kMismatch);
    p.text = "sync_shared_state: the peers' states differ in structure: " + why;
    for (const auto& s : slots_)
      if (s.client) queue(*s.client, p);
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.sync_mismatches;
    }
    round.reports.clear();  // all told already: decide_sync sends nothing more
    decide_sync(seq, Verdict::kAbort);
    return;
  }
  // Group the voters by content: (revision, hashes). The voters are the members
  // that hold the run's state (state_holders_), or every member while none does.
  using Content = std::pair<uint64_t, std::vector<uint64_t>>;
  std::map<Content, std::vector<uint64_t>> groups;
  std::map<uint64_t, Content> content_of;
  bool any_holder = false;
  for (const auto& s : slots_) any_holder = any_holder || state_holders_.count(s.id) > 0;
  for (const auto& s : slots_) {
    const Message& rep = round.reports.at(s.id);
    Content k{rep.revision, {}};
    for (const auto& e : rep.tensors) k.second.push_back(e.hash);
    if (!any_holder || state_holders_.count(s.id)) groups[k].push_back(s.id);
    content_of[s.id] = k;
  }
  const Content* win = nullptr;
  const std::vector<uint64_t>* win_ids = nullptr;
  for (const auto& [k, ids] : groups) {
    bool better = !win || ids.size() > win_ids->size() ||
                  (ids.size() == win_ids->size() &&
                   (k.first > win->first ||
                    (k.first == win->first &&
                     *std::min_element(ids.begin(), ids.end()) <
                         *std::min_element(win_ids->begin(), win_ids->end()))));
    if (better) {
      win = &k;
      win_ids = &ids;
    }
  }
  std::vector<uint64_t> sources = *win_ids;
  std::sort(sources.begin(), sources.end());
  std::map<uint64_t, uint64_t> load;  // bytes assigned to each source
  for (const auto& s : slots_) {
    const Message& rep = round.reports.at(s.id);
    Message p;
    p.type = MsgType::kSyncPlan;
    p.epoch = epoch_;
    p.seq = seq;
    p.vote = uint8_t(SyncOutcome::kPlan);
    p.revision = win->first;
    if (content_of[s.id] != *win) {
      for (uint32_t i = 0; i < rep.tensors.size(); ++i) {
        if (rep.tensors[i].hash == win->second[i]) continue;
        uint64_t best = sources[0];
        for (uint64_t src : sources)
          if (load[src] < load[best]) best = src;
        load[best] += rep.tensors[i].nbytes;
        p.fetch.push_back({i, best, win->second[i]});
      }
    }
    if (s.client) queue(*s.client, p);
  }
  round.planned = true;
}

void Master::on_sync_done(Client& c, const Message& m) {
  if (c.state != ClientState::kMember || !member_client(c.id)) {
    reject(c, PYHPC_ERR_PROTOCOL, "SYNC_DONE from a peer that is not a member");
    return;
  }
  if (m.epoch != epoch_) {
    sync_verdict_to(&c, m.epoch, m.seq, Verdict::kAbort);
    return;
  }
  auto dec = syncs_decided_.find(m.seq);
  if (dec != syncs_decided_.end()) {  // e.g. a give-up crossing the verdict: repeat it
    sync_verdict_to(&c, m.epoch, m.seq, dec->second);
    return;
  }
  auto it = syncs_.find(m.seq);
  if (it == syncs_.end() || !it->second.reports.count(c.id) ||
      (m.vote == 1 && !it->second.planned)) {
    if (m.vote == 0 && it != syncs_.end()) {  // giving up before the plan: abort
      it->second.reports.emplace(c.id, Message{});
      decide_sync(m.seq, Verdict::kAbort);
      return;
    }
    reject(c, PYHPC_ERR_PROTOCOL, "SYNC_DONE for a sync round this peer has no plan for");
    return;
  }
  SyncRound& round = it->second;
  if (m.vote == 0) {
    decide_sync(m.seq, Verdict::kAbort);
    return;
  }
  round.done.insert(c.id);
  for (const auto& s : slots_)
    if (!round.done.count(s.id)) return;
  decide_sync(m.seq, Verdict::kCommit);
}

// ---- topology optimization ------------------------------------------------------

void Master::topo_abort_to(Client* c, uint64_t epoch, uint64_t seq) {
  if (!c) return;
  Message m;
  m.type = MsgType::kTopoResult;
  m.epoch = epoch;
  m.seq = seq;
  m.vote = uint8_t(TopoOutcome::kAbort);
  if (epoch == epoch_) m.dead = gone_members();
  if (m.dead.size() > kMaxWorld) m.dead.resize(kMaxWorld);
  queue(*c, m);
}

void Master::decide_topo_abort(uint64_t seq) {
  auto it = topos_.find(seq);
  if (it == topos_.end()) return;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.topo_aborts;
  }
  // Members that have not reported yet hear the ABORT when they do.
  for (const auto& [id, report] : it->second.reports) topo_abort_to(member_client(id), epoch_, seq);
  topos_.erase(it);
  topos_decided_[seq] = true;
  if (topos_decided_.size() > kMaxToposDecided) topos_decided_.erase(topos_decided_.begin());
}

void Master::resolve_topos() {
  if (gone_members().empty()) return;
  while (!topos_.empty()) decide_topo_abort(topos_.begin()->first);
}

void Master::on_topo_report(Client& c, const Message& m) {
  if (c.state != ClientState::kMember || !member_client(c.id)) {
    reject(c, PYHPC_ERR_PROTOCOL, "TOPO_REPORT from a peer that is not a member");
    return;
  }
  if (m.epoch != epoch_) {  // an older epoch's round: it cannot go on
    topo_abort_to(&c, m.epoch, m.seq);
    return;
  }
  if (topos_decided_.count(m.seq)) {  // aborted before this peer reported
    topo_abort_to(&c, m.epoch, m.seq);
    return;
  }
  if (m.vote == 1) {  // the row must name exactly the other members
    std::vector<uint64_t> want, got = m.ids;
    for (const auto& s : slots_)
      if (s.id != c.id) want.push_back(s.id);
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    if (want != got) {
      reject(c, PYHPC_ERR_PROTOCOL, "a TOPO_REPORT that does not measure every other member");
      return;
    }
  }
  auto it = topos_.find(m.seq);
  if (it == topos_.end()) {
    if (topos_.size() >= kMaxOpenTopos) {
      reject(c, PYHPC_ERR_PROTOCOL, "too many undecided topology optimizations");
      return;
    }
    it = topos_.emplace(m.seq, TopoRound{}).first;
  }
  TopoRound& round = it->second;
  if (round.reports.count(c.id)) {
    reject(c, PYHPC_ERR_PROTOCOL, "a second TOPO_REPORT for one topology optimization");
    return;
  }
  round.reports.emplace(c.id, m);
  if (m.vote == 0 || !gone_members().empty()) {
    decide_topo_abort(m.seq);
    return;
  }
  for (const auto& s : slots_)
    if (!round.reports.count(s.id)) return;
  decide_topo_order(m.seq, round);
}

void Master::decide_topo_order(uint64_t seq, TopoRound& round) {
  const size_t n = slots_.size();
  Message r;
  r.type = MsgType::kTopoResult;
  r.epoch = epoch_;
  r.seq = seq;
  r.vote = uint8_t(TopoOutcome::kOrder);
  r.bandwidth.assign(n * n, 0);
  r.latency_ns.assign(n * n, 0);
  for (const auto& s : slots_) r.ids.push_back(s.id);
  for (size_t i = 0; i < n; ++i) {
    const Message& rep = round.reports.at(r.ids[i]);
    for (size_t k = 0; k < rep.ids.size(); ++k) {
      size_t j = std::find(r.ids.begin(), r.ids.end(), rep.ids[k]) - r.ids.begin();
      r.bandwidth[i * n + j] = rep.bandwidth[k];
      r.latency_ns[i * n + j] = rep.latency_ns[k];
    }
  }
  // A link is as fast as its slower direction; its latency the mean of both.
  std::vector<double> bw(n * n, 0.0), lat(n * n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      if (i == j) continue;
      bw[i * n + j] = double(std::min(r.bandwidth[i * n + j], r.bandwidth[j * n + i]));
      lat[i * n + j] = (double(r.latency_ns[i * n + j]) + double(r.latency_ns[j * n + i])) / 2;
    }
  for (uint32_t k : best_ring(n, bw, lat)) r.order.push_back(r.ids[k]);
  for (const auto& s : slots_)
    if (s.client) queue(*s.client, r);
  preferred_order_ = r.order;
  topos_.erase(seq);
  topos_decided_[seq] = false;
  if (topos_decided_.size() > kMaxToposDecided) topos_decided_.erase(topos_decided_.begin());
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++stats_.topo_orders;
}

// ---- end topology optimization ----

void Master::check_deadlines() {
  auto now = Clock::now();
  auto silence = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.heartbeat_timeout));
  for (auto& cp : clients_) {
    Client& c = *cp;
    if (c.state == ClientState::kAwaitAuth && now > c.handshake_deadline)
      reject(c, PYHPC_ERR_TIMEOUT, "no authentication before the handshake deadline");
    else if ((c.state == ClientState::kPending || c.state == ClientState::kMember) &&
             now - c.last_heard > silence)
      fail_client(c, FailReason::kTimeout);
  }
}

void Master::fail_doomed() {
  // Failing one client queues PEER_FAILED to the others, which may doom them.
  for (bool again = true; again;) {
    again = false;
    for (size_t i = 0; i < clients_.size(); ++i) {
      Client& c = *clients_[i];
      if (c.doomed && c.state != ClientState::kGone) {
        fail_client(c, FailReason::kClosed);
        again = true;
      }
    }
  }
}

void Master::reap() {
  // Slots hold raw pointers to clients; gone members were detached from their
  // slot before being marked gone, so erasing gone clients is safe.
  size_t before = clients_.size();
  clients_.erase(std::remove_if(clients_.begin(), clients_.end(),
                                [](const std::unique_ptr<Client>& c) {
                                  return c->state == ClientState::kGone;
                                }),
                 clients_.end());
  if (clients_.size() != before) publish();
}

}  // namespace pyhpc::ccl
