// The peer side of topology optimization (DataPlane::probe_topology; the
// protocol is described in topology.hpp, the frames in wire.hpp and
// channel.hpp). On a probe connection, dialer A and acceptor B in turn:
//
//   1. A sends kProbePings PROBE_PINGs (u64 counter), B echoes each;
//   2. B pings, A echoes;
//   3. A sends probe_bytes as PROBE_BULK frames (at most 1 MiB each), B acks
//      with one PROBE_PING (counter = the bytes received) once all are in;
//   4. B sends, A acks.
//
// Each side keeps what it measured itself: latency = median round trip / 2,
// bandwidth = bytes / (ack received - first byte sent).
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "ccl/channel.hpp"
#include "ccl/ring.hpp"
#include "ccl/topology.hpp"

namespace pyhpc::ccl {
namespace {

constexpr uint64_t kMaxProbeBytes = uint64_t(1) << 30;

using Interrupted = std::function<bool()>;

struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Moves n bytes before the deadline, in poll slices that ask `interrupted`
// (a frozen partner is given up as soon as the master reports a failure).
pyhpc_status io_all(int fd, bool sending, uint8_t* p, size_t n, Clock::time_point deadline,
                    const Interrupted& interrupted) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = sending ? ::send(fd, p + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                        : ::recv(fd, p + done, n - done, MSG_DONTWAIT);
    if (k > 0) {
      done += size_t(k);
      continue;
    }
    if (k == 0 && !sending) return PYHPC_FAIL(PYHPC_ERR_PEER, "probe connection closed");
    if (k < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
      return PYHPC_FAIL(PYHPC_ERR_PEER, "probe connection lost: %s", std::strerror(errno));
    if (k < 0 && errno == EINTR) continue;
    if (interrupted())
      return PYHPC_FAIL(PYHPC_ERR_PEER, "interrupted: the master reports failed peers");
    if (Clock::now() >= deadline)
      return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "optimize_topology: the deadline passed mid-probe");
    pollfd pf{fd, short(sending ? POLLOUT : POLLIN), 0};
    ::poll(&pf, 1, ms_until(deadline, kPollSliceMs));
  }
  return PYHPC_OK;
}

pyhpc_status send_ping(int fd, uint16_t version, uint64_t v, Clock::time_point deadline,
                       const Interrupted& interrupted) {
  uint8_t f[kHeaderSize + kProbePingSize];
  put_header(f, version, kProbePing, kProbePingSize);
  put_le(f + kHeaderSize, v, 8);
  return io_all(fd, true, f, sizeof f, deadline, interrupted);
}

pyhpc_status recv_ping(int fd, uint16_t version, uint64_t want, Clock::time_point deadline,
                       const Interrupted& interrupted) {
  uint8_t p[kProbePingSize];
  PYHPC_CHECK(recv_small(fd, version, kProbePing, kProbePingSize, deadline, p, interrupted));
  if (get_le(p, 8) != want)
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "probe: expected counter %llu, got %llu",
                      static_cast<unsigned long long>(want),
                      static_cast<unsigned long long>(get_le(p, 8)));
  return PYHPC_OK;
}

// Pings kProbePings times; the median round trip / 2 in ns (at least 1).
pyhpc_status ping(int fd, uint16_t version, Clock::time_point deadline,
                  const Interrupted& interrupted, uint64_t* latency_ns) {
  std::vector<double> rtt;
  for (int i = 0; i < kProbePings; ++i) {
    auto t0 = Clock::now();
    PYHPC_CHECK(send_ping(fd, version, uint64_t(i), deadline, interrupted));
    PYHPC_CHECK(recv_ping(fd, version, uint64_t(i), deadline, interrupted));
    rtt.push_back(seconds_since(t0));
  }
  std::sort(rtt.begin(), rtt.end());
  *latency_ns = std::max<uint64_t>(1, uint64_t(rtt[rtt.size() / 2] / 2 * 1e9));
  return PYHPC_OK;
}

pyhpc_status echo(int fd, uint16_t version, Clock::time_point deadline,
                  const Interrupted& interrupted) {
  for (int i = 0; i < kProbePings; ++i) {
    PYHPC_CHECK(recv_ping(fd, version, uint64_t(i), deadline, interrupted));
    PYHPC_CHECK(send_ping(fd, version, uint64_t(i), deadline, interrupted));
  }
  return PYHPC_OK;
}

// Sends `bytes` and waits for the ack: bytes/s (at least 1).
pyhpc_status send_bulk(int fd, uint16_t version, uint64_t bytes, Clock::time_point deadline,
                       const Interrupted& interrupted, uint64_t* bandwidth) {
  static const std::vector<uint8_t> zeros(kProbeBulkMax, 0);
  auto t0 = Clock::now();
  for (uint64_t off = 0; off < bytes;) {
    size_t len = size_t(std::min<uint64_t>(kProbeBulkMax, bytes - off));
    uint8_t h[kHeaderSize];
    put_header(h, version, kProbeBulk, uint32_t(len));
    PYHPC_CHECK(io_all(fd, true, h, sizeof h, deadline, interrupted));
    PYHPC_CHECK(io_all(fd, true, const_cast<uint8_t*>(zeros.data()), len, deadline, interrupted));
    off += len;
  }
  PYHPC_CHECK(recv_ping(fd, version, bytes, deadline, interrupted));
  double s = seconds_since(t0);
  *bandwidth = std::max<uint64_t>(1, uint64_t(double(bytes) / std::max(s, 1e-9)));
  return PYHPC_OK;
}

pyhpc_status recv_bulk(int fd, uint16_t version, uint64_t bytes, Clock::time_point deadline,
                       const Interrupted& interrupted) {
  std::vector<uint8_t> scratch(size_t(std::min<uint64_t>(kProbeBulkMax, bytes)));
  for (uint64_t got = 0; got < bytes;) {
    uint8_t hb[kHeaderSize];
    PYHPC_CHECK(io_all(fd, false, hb, sizeof hb, deadline, interrupted));
    Header h;
    PYHPC_CHECK(decode_data_header(hb, sizeof hb, version, &h));
    if (h.type != kProbeBulk || h.length == 0 || h.length > bytes - got)
      return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "probe: unexpected frame of type %u, %u bytes",
                        unsigned(h.type), unsigned(h.length));
    PYHPC_CHECK(io_all(fd, false, scratch.data(), h.length, deadline, interrupted));
    got += h.length;
  }
  return send_ping(fd, version, bytes, deadline, interrupted);
}

}  // namespace

pyhpc_status DataPlane::probe_topology(Peer& peer, const ProbeArgs& a, ProbeResult* out,
                                       std::vector<uint64_t>* failed) {
  failed->clear();
  *out = ProbeResult{};
  if (listen_fd_ < 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "data plane not started");
  if (a.timeout_s <= 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "timeout must be > 0");
  if (a.probe_bytes == 0 || a.probe_bytes > kMaxProbeBytes)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "probe_bytes must be in 1..%llu",
                      static_cast<unsigned long long>(kMaxProbeBytes));
  PYHPC_CHECK(peer.health());
  if (!peer.admitted())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "not admitted yet: call update_topology() before optimize_topology");
  const Topology t = peer.topology();
  if (t.peers.size() > kMaxTopoWorld)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "optimize_topology supports at most %u members, this epoch has %zu",
                      unsigned(kMaxTopoWorld), t.peers.size());
  *failed = failed_members(peer, t);
  if (!failed->empty())
    return PYHPC_FAIL(PYHPC_ERR_PEER, "peers failed since the last topology update");

  std::lock_guard<std::mutex> one_at_a_time(probe_mu_);
  if (probe_epoch_ != t.epoch) {
    probe_epoch_ = t.epoch;
    probe_seq_ = 0;
  }
  return probe_round(peer, a, t, ++probe_seq_, out, failed);
}

pyhpc_status DataPlane::probe_round(Peer& peer, const ProbeArgs& a, const Topology& t,
                                    uint64_t seq, ProbeResult* out,
                                    std::vector<uint64_t>* failed) {
  const auto deadline = after(a.timeout_s);
  const uint32_t tag = uint32_t(seq);
  const uint32_t n = uint32_t(t.peers.size()), me = t.rank;
  const Interrupted interrupted = [&] { return !failed_members(peer, t).empty(); };
  std::vector<uint64_t> bandwidth(n, 0), latency(n, 0);

  auto report_and_wait = [&](bool ok, Message* res) {
    Message rep;
    rep.type = MsgType::kTopoReport;
    rep.epoch = t.epoch;
    rep.seq = seq;
    rep.vote = ok ? 1 : 0;
    if (ok)
      for (uint32_t j = 0; j < n; ++j) {
        if (j == me) continue;
        rep.ids.push_back(t.peers[j].id);
        rep.bandwidth.push_back(bandwidth[j]);
        rep.latency_ns.push_back(latency[j]);
      }
    PYHPC_CHECK(peer.topo_send(rep));
    return peer.await_topo(t.epoch, seq, ok ? deadline : std::min(deadline, after(1.0)), res);
  };
  // This peer gives up (a broken partner, the deadline): the round aborts for all.
  auto give_up = [&](uint64_t suspect, const std::string& why) {
    if (blame(peer, t, {suspect}, deadline).empty()) {  // no master to say who: not a peer's fault
      std::string lost = last_error();
      failed->clear();
      return PYHPC_FAIL(PYHPC_ERR_PEER, "optimize_topology aborted: %s; lost the master: %s",
                        why.c_str(), lost.c_str());
    }
    Message res;
    std::vector<uint64_t> dead;
    if (report_and_wait(false, &res) == PYHPC_OK && res.vote == uint8_t(TopoOutcome::kAbort))
      dead = res.dead;
    clear_last_error();
    for (uint64_t id : failed_members(peer, t))
      if (std::find(dead.begin(), dead.end(), id) == dead.end()) dead.push_back(id);
    if (dead.empty() && suspect == 0)
      return PYHPC_FAIL(PYHPC_ERR_TIMEOUT, "optimize_topology: %s", why.c_str());
    *failed = dead.empty() ? std::vector<uint64_t>{suspect} : dead;
    return PYHPC_FAIL(PYHPC_ERR_PEER, "optimize_topology aborted: %s", why.c_str());
  };

  // 1. Measure, one partner per round.
  auto rounds = round_robin(n);
  for (size_t k = 0; k < rounds.size(); ++k) {
    uint32_t partner = n;
    for (const auto& [x, y] : rounds[k])
      if (x == me || y == me) partner = x == me ? y : x;
    if (partner == n) continue;  // sitting out this round
    if (a.test_exit_in_round == int(k)) ::_exit(3);
    const PeerInfo& p = t.peers[partner];
    const bool dialer = me < partner;
    FdCloser conn;
    pyhpc_status s = PYHPC_OK;
    if (dialer) {
      s = dial(peer, t, p, ChannelKind::kProbe, tag, deadline, &conn.fd);
      if (s != PYHPC_OK) {
        std::string why = last_error();
        clear_last_error();
        return give_up(p.id, "cannot reach peer " + std::to_string(p.id) + ": " + why);
      }
    } else {
      while ((conn.fd = claim(p.id, t.epoch, ChannelKind::kProbe, tag)) < 0) {
        if (interrupted()) return give_up(p.id, "the master reports failed peers");
        if (Clock::now() >= deadline)
          return give_up(p.id, "peer " + std::to_string(p.id) +
                                   " did not connect before the deadline");
        std::unique_lock<std::mutex> lock(mu_);
        if (stop_) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "data plane stopped");
        cv_.wait_for(lock, std::chrono::milliseconds(kPollSliceMs));
      }
    }
    const int fd = conn.fd;
    if (dialer) {
      s = ping(fd, version_, deadline, interrupted, &latency[partner]);
      if (s == PYHPC_OK) s = echo(fd, version_, deadline, interrupted);
      if (s == PYHPC_OK)
        s = send_bulk(fd, version_, a.probe_bytes, deadline, interrupted, &bandwidth[partner]);
      if (s == PYHPC_OK) s = recv_bulk(fd, version_, a.probe_bytes, deadline, interrupted);
    } else {
      s = echo(fd, version_, deadline, interrupted);
      if (s == PYHPC_OK) s = ping(fd, version_, deadline, interrupted, &latency[partner]);
      if (s == PYHPC_OK) s = recv_bulk(fd, version_, a.probe_bytes, deadline, interrupted);
      if (s == PYHPC_OK)
        s = send_bulk(fd, version_, a.probe_bytes, deadline, interrupted, &bandwidth[partner]);
    }
    if (s != PYHPC_OK) {
      std::string why = last_error();
      clear_last_error();
      return give_up(p.id, "measuring the link to peer " + std::to_string(p.id) + ": " + why);
    }
  }

  // 2. The row to the master, and its decision.
  Message res;
  pyhpc_status s = report_and_wait(true, &res);
  if (s == PYHPC_ERR_TIMEOUT) {
    clear_last_error();
    return give_up(0, "no decision from the master before the deadline");
  }
  PYHPC_CHECK(s);
  if (res.vote == uint8_t(TopoOutcome::kAbort)) {
    *failed = res.dead;
    for (uint64_t id : failed_members(peer, t))
      if (std::find(failed->begin(), failed->end(), id) == failed->end()) failed->push_back(id);
    return PYHPC_FAIL(PYHPC_ERR_PEER, "optimize_topology aborted by the master: members failed");
  }
  out->ids = std::move(res.ids);
  out->order = std::move(res.order);
  out->bandwidth = std::move(res.bandwidth);
  out->latency_ns = std::move(res.latency_ns);
  return PYHPC_OK;
}

}  // namespace pyhpc::ccl
