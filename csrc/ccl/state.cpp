// The peer side of the shared-state sync (DataPlane::sync_state; the master's
// side and the frames are described in master.hpp and wire.hpp).
//
// 1. Hash every tensor (xxhash.hpp) and send the master a SYNC_REPORT.
// 2. Wait for the plan. A peer with nothing to fetch says SYNC_DONE at once.
// 3. An outdated peer dials each of its sources on the data plane (channel
//    kind "state", tag = the low 32 bits of the sync's sequence number) and
//    asks for its tensors, one STATE_REQUEST each:
//
//      STATE_REQUEST  u64 epoch u64 seq u32 index
//      STATE_DATA     u64 seq u32 index u64 offset, then min(1 MiB, nbytes - offset)
//                     bytes (a 0-byte tensor: one frame with no bytes)
//
//    A source answers the requests of each connection in order, chunk by chunk
//    (one chunk = one chunk of the tensor hash, so the receiver hashes each
//    chunk as it lands). The receiver checks every sub-header against what it
//    expects next, stages the bytes, and compares each tensor's hash with the
//    winner's. With all its tensors in and verified it says SYNC_DONE.
// 4. Every peer keeps serving until the master's verdict: on COMMIT (every
//    member done) the staged tensors are copied into the caller's arrays; on
//    ABORT nothing is written. A broken source connection, a wrong hash or
//    the deadline makes a peer give up (SYNC_DONE ok 0), which aborts the
//    round for all.
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <new>

#include "ccl/channel.hpp"
#include "ccl/ring.hpp"
#include "ccl/xxhash.hpp"

namespace pyhpc::ccl {
namespace {

constexpr size_t kRequestFrame = kHeaderSize + kStateRequestSize;
constexpr size_t kDataHeader = kHeaderSize + kStateSubHeader;

// A connection this peer serves (a fetcher dialled it).
struct Serve {
  uint64_t to = 0;
  int fd = -1;
  std::vector<uint8_t> in;
  std::deque<uint32_t> queue;  // requested tensor indices, in order
  bool active = false;         // a chunk is going out
  uint64_t off = 0, len = 0, done = 0;
  uint8_t hdr[kDataHeader];
};

// A connection to a source this peer fetches from.
struct Source {
  uint64_t from = 0;
  int fd = -1;
  std::vector<size_t> items;  // positions in the plan's fetch list, in order
  size_t cur = 0;
  uint64_t off = 0;  // bytes of the current tensor in
  uint8_t hdr[kDataHeader];
  size_t hgot = 0;
  uint64_t len = 0, got = 0;  // the current chunk
  std::vector<uint64_t> digests;
};

struct Fds {
  std::vector<Serve>* serves;
  std::vector<Source>* sources;
  ~Fds() {
    for (auto& s : *serves)
      if (s.fd >= 0) ::close(s.fd);
    for (auto& s : *sources)
      if (s.fd >= 0) ::close(s.fd);
  }
};

const PeerInfo* find_peer(const Topology& t, uint64_t id) {
  for (const auto& p : t.peers)
    if (p.id == id) return &p;
  return nullptr;
}

void add_unique(std::vector<uint64_t>* v, uint64_t id) {
  if (std::find(v->begin(), v->end(), id) == v->end()) v->push_back(id);
}

}  // namespace

pyhpc_status DataPlane::sync_state(Peer& peer, const SyncArgs& a, SyncResult* out,
                                   std::vector<uint64_t>* failed) {
  failed->clear();
  *out = SyncResult{};
  if (listen_fd_ < 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "data plane not started");
  if (a.timeout_s <= 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "timeout must be > 0");
  if (a.tensors.size() > kMaxStateTensors)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "state: more than %u tensors",
                      unsigned(kMaxStateTensors));
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const StateTensor& x = a.tensors[i];
    if (x.name.empty() || x.name.size() > kMaxStateName || (i && !(a.tensors[i - 1].name < x.name)))
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                        "state: names must be 1..%zu bytes, unique and sorted", kMaxStateName);
    if (x.nbytes && !x.data)
      return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "state: tensor '%s' has no data",
                        x.name.c_str());
  }
  PYHPC_CHECK(peer.health());
  if (!peer.admitted())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "not admitted yet: call update_topology() before sync_shared_state");
  const Topology t = peer.topology();
  *failed = failed_members(peer, t);
  if (!failed->empty())
    return PYHPC_FAIL(PYHPC_ERR_PEER, "peers failed since the last topology update");

  std::lock_guard<std::mutex> one_at_a_time(sync_mu_);
  if (sync_epoch_ != t.epoch) {
    sync_epoch_ = t.epoch;
    sync_seq_ = 0;
    sync_broken_ = false;
  }
  if (sync_broken_)
    return PYHPC_FAIL(PYHPC_ERR_PEER,
                      "an earlier sync_shared_state failed in this topology epoch; call "
                      "update_topology() first");
  const uint64_t seq = ++sync_seq_;
  pyhpc_status result = sync_round(peer, a, t, seq, out, failed);
  if (result != PYHPC_OK && result != PYHPC_ERR_INVALID_ARGUMENT) sync_broken_ = true;
  return result;
}

pyhpc_status DataPlane::sync_round(Peer& peer, const SyncArgs& a, const Topology& t,
                                   uint64_t seq, SyncResult* out, std::vector<uint64_t>* failed) {
  const auto deadline = after(a.timeout_s);
  const uint32_t tag = uint32_t(seq);

  // 1. The report.
  Message rep;
  rep.type = MsgType::kSyncReport;
  rep.epoch = t.epoch;
  rep.seq = seq;
  rep.revision = a.revision;
  for (const auto& x : a.tensors)
    rep.tensors.push_back({x.name, x.dtype, x.itemsize, x.shape, x.nbytes,
                           tensor_hash(x.data, x.nbytes, x.dtype, x.shape)});
  PYHPC_CHECK(peer.sync_send(rep));

  std::vector<Serve> serves;
  std::vector<Source> sources;
  Fds closer{&serves, &sources};
  bool done_sent = false;

  // The round aborted (by the master's ABORT `dead`, or this peer gave up):
  // names the failed members, waiting a moment for the master's notices.
  auto aborted = [&](std::vector<uint64_t> dead, std::vector<uint64_t> suspects,
                     const std::string& why) {
    for (uint64_t id : failed_members(peer, t)) add_unique(&dead, id);
    if (dead.empty()) dead = blame(peer, t, suspects, deadline);
    *failed = dead;
    if (dead.empty()) {  // no master to say who: not a peer's fault
      std::string lost = last_error();
      return PYHPC_FAIL(PYHPC_ERR_PEER, "sync_shared_state aborted: %s; lost the master: %s; no "
                        "array was changed", why.c_str(), lost.c_str());
    }
    return PYHPC_FAIL(PYHPC_ERR_PEER, "sync_shared_state aborted: %s; no array was changed",
                      why.c_str());
  };
  // This peer gives up: the round aborts for all; hear the verdict.
  Message verdict;
  auto give_up = [&](std::vector<uint64_t> suspects, const std::string& why) {
    if (!suspects.empty()) {  // a broken source: the master's notice usually follows at once
      auto grace = std::min(after(kFailureGrace), std::max(deadline, Clock::now()));
      while (failed_members(peer, t).empty() && Clock::now() < grace)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    Message d;
    d.type = MsgType::kSyncDone;
    d.epoch = t.epoch;
    d.seq = seq;
    d.vote = 0;
    std::vector<uint64_t> dead;
    if (peer.sync_send(d) == PYHPC_OK &&
        peer.await_sync(t.epoch, seq, false, after(1.0), &verdict) == PYHPC_OK)
      dead = verdict.dead;
    clear_last_error();
    return aborted(dead, suspects, why);
  };

  // 2. The plan.
  Message plan;
  pyhpc_status st = peer.await_sync(t.epoch, seq, true, deadline, &plan);
  if (st == PYHPC_ERR_TIMEOUT) {
    clear_last_error();
    pyhpc_status s = give_up({}, "no plan from the master before the deadline");
    if (failed->empty())
      return PYHPC_FAIL(PYHPC_ERR_TIMEOUT,
                        "sync_shared_state: no plan from the master within %.3g s (did every "
                        "peer call sync_shared_state?); no array was changed",
                        a.timeout_s);
    return s;
  }
  if (st != PYHPC_OK) return st;
  if (plan.type == MsgType::kSyncVerdict)
    return aborted(plan.dead, {}, plan.dead.empty()
                                      ? "a peer gave up before the plan (see its own error)"
                                      : "a member failed before the plan");
  if (plan.vote == uint8_t(SyncOutcome::kMismatch))
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "%s", plan.text.c_str());
  for (const auto& f : plan.fetch) {
    const PeerInfo* src = find_peer(t, f.from);
    if (f.index >= a.tensors.size() || !src || f.from == peer.id()) {
      give_up({}, "bad plan");
      return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "sync_shared_state: the master's plan names a "
                                            "tensor or source that does not exist");
    }
  }

  // 3. Fetch: staging, one connection per source, every request sent at once.
  std::vector<std::vector<uint8_t>> staging(plan.fetch.size());
  try {
    for (size_t k = 0; k < plan.fetch.size(); ++k)
      staging[k].resize(a.tensors[plan.fetch[k].index].nbytes);
  } catch (const std::bad_alloc&) {
    give_up({}, "out of memory");
    return PYHPC_FAIL(PYHPC_ERR_NO_MEMORY, "sync_shared_state: no memory to stage the "
                                               "fetched tensors");
  }
  for (size_t k = 0; k < plan.fetch.size(); ++k) {
    auto it = std::find_if(sources.begin(), sources.end(),
                           [&](const Source& s) { return s.from == plan.fetch[k].from; });
    if (it == sources.end()) {
      sources.emplace_back();
      sources.back().from = plan.fetch[k].from;
      it = sources.end() - 1;
    }
    it->items.push_back(k);
  }
  for (auto& src : sources) {
    st = dial(peer, t, *find_peer(t, src.from), ChannelKind::kState, tag, deadline, &src.fd);
    if (st != PYHPC_OK) {
      std::string why = last_error();
      clear_last_error();
      return give_up({src.from}, "cannot reach source peer " + std::to_string(src.from) + ": " +
                                     why);
    }
    for (size_t k : src.items) {
      uint8_t req[kStateRequestSize];
      put_le(req, t.epoch, 8);
      put_le(req + 8, seq, 8);
      put_le(req + 16, plan.fetch[k].index, 4);
      if (send_small(src.fd, version_, kStateRequest, req, sizeof req, deadline) != PYHPC_OK) {
        std::string why = last_error();
        clear_last_error();
        return give_up({src.from}, "lost source peer " + std::to_string(src.from) + ": " + why);
      }
    }
    set_nonblocking(src.fd, true);
  }

  // 4. Serve and fetch until the verdict.
  size_t verified = 0;
  bool gave_up_at_deadline = false;
  std::vector<pollfd> fds;
  for (;;) {
    if (!done_sent && verified == plan.fetch.size()) {
      Message d;
      d.type = MsgType::kSyncDone;
      d.epoch = t.epoch;
      d.seq = seq;
      d.vote = 1;
      PYHPC_CHECK(peer.sync_send(d));
      done_sent = true;
    }
    st = peer.await_sync(t.epoch, seq, false, Clock::now(), &verdict);
    if (st == PYHPC_OK) break;
    if (st != PYHPC_ERR_TIMEOUT) return st;  // lost the master: nothing written
    clear_last_error();
    if (gave_up_at_deadline) {
      if (Clock::now() > deadline + std::chrono::seconds(1))
        return PYHPC_FAIL(PYHPC_ERR_TIMEOUT,
                          "sync_shared_state: no verdict from the master in time (is it "
                          "frozen?); no array was changed");
    } else if (Clock::now() >= deadline) {
      if (!done_sent) {
        std::vector<uint64_t> late;
        for (const auto& s : sources)
          if (s.fd >= 0) late.push_back(s.from);
        return give_up(late, "the deadline passed while fetching (a source frozen?)");
      }
      Message d;  // withdraw: an undecided round aborts, a decided one is repeated
      d.type = MsgType::kSyncDone;
      d.epoch = t.epoch;
      d.seq = seq;
      d.vote = 0;
      (void)peer.sync_send(d);
      clear_last_error();
      gave_up_at_deadline = true;
    }

    for (auto& [from, fd] : claim_all(t.epoch, ChannelKind::kState, tag)) {
      set_nonblocking(fd, true);
      serves.emplace_back();
      serves.back().to = from;
      serves.back().fd = fd;
    }
    fds.clear();
    for (auto& s : serves) {
      const bool sending = s.active || !s.queue.empty();
      fds.push_back({s.fd, short(s.fd < 0 ? 0 : POLLIN | (sending ? POLLOUT : 0)), 0});
    }
    for (auto& s : sources) fds.push_back({s.fd, short(s.fd < 0 ? 0 : POLLIN), 0});
    int pr = ::poll(fds.data(), fds.size(), ms_until(deadline, done_sent ? 2 : kPollSliceMs));
    if (pr < 0 && errno != EINTR)
      return give_up({}, std::string("poll: ") + std::strerror(errno));
    if (pr <= 0) continue;

    // Serving.
    for (size_t i = 0; i < serves.size(); ++i) {
      Serve& s = serves[i];
      short re = fds[i].revents;
      if (s.fd < 0 || re == 0) continue;
      auto drop = [&] {
        ::close(s.fd);
        s.fd = -1;
        s.queue.clear();
        s.active = false;
      };
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        uint8_t buf[4096];
        ssize_t k = ::recv(s.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          drop();  // the fetcher is done or gone: its own side decides
          continue;
        }
        if (k > 0) s.in.insert(s.in.end(), buf, buf + k);
        size_t off = 0;
        bool bad = false;
        while (s.in.size() - off >= kRequestFrame) {
          Header h;
          const uint8_t* p = s.in.data() + off;
          if (decode_data_header(p, kHeaderSize, version_, &h) != PYHPC_OK ||
              h.type != kStateRequest || h.length != kStateRequestSize ||
              get_le(p + kHeaderSize, 8) != t.epoch || get_le(p + kHeaderSize + 8, 8) != seq ||
              get_le(p + kHeaderSize + 16, 4) >= a.tensors.size() ||
              s.queue.size() >= kMaxStateTensors) {
            bad = true;
            break;
          }
          s.queue.push_back(uint32_t(get_le(p + kHeaderSize + 16, 4)));
          off += kRequestFrame;
        }
        clear_last_error();
        if (bad) {
          drop();
          continue;
        }
        s.in.erase(s.in.begin(), s.in.begin() + off);
      }
      while (s.fd >= 0 && (re & POLLOUT) && (s.active || !s.queue.empty())) {
        const StateTensor& x = a.tensors[s.queue.front()];
        if (!s.active) {
          s.len = std::min<uint64_t>(kHashChunk, x.nbytes - s.off);
          put_header(s.hdr, version_, kStateData, uint32_t(kStateSubHeader + s.len));
          put_le(s.hdr + kHeaderSize, seq, 8);
          put_le(s.hdr + kHeaderSize + 8, s.queue.front(), 4);
          put_le(s.hdr + kHeaderSize + 12, s.off, 8);
          s.done = 0;
          s.active = true;
        }
        iovec iov[2];
        int n = 0;
        if (s.done < kDataHeader) iov[n++] = {s.hdr + s.done, size_t(kDataHeader - s.done)};
        uint64_t body = s.done > kDataHeader ? s.done - kDataHeader : 0;
        if (s.len > body)
          iov[n++] = {static_cast<uint8_t*>(x.data) + s.off + body, size_t(s.len - body)};
        msghdr mh{};
        mh.msg_iov = iov;
        mh.msg_iovlen = size_t(n);
        ssize_t k = ::sendmsg(s.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          drop();
          break;
        }
        if (k < 0) break;  // the socket is full: wait for POLLOUT
        s.done += uint64_t(k);
        if (s.done < kDataHeader + s.len) continue;
        out->bytes_sent += s.len;
        s.active = false;
        s.off += s.len;
        if (s.off >= x.nbytes) {
          s.off = 0;
          s.queue.pop_front();
        }
        if (a.test_serve_delay_s > 0)
          std::this_thread::sleep_for(std::chrono::duration<double>(a.test_serve_delay_s));
      }
    }

    // Fetching: read each ready source until it runs dry.
    for (size_t i = 0; i < sources.size(); ++i) {
      Source& s = sources[i];
      if (!(fds[serves.size() + i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      while (s.fd >= 0) {
        const StateFetch& f = plan.fetch[s.items[s.cur]];
        const StateTensor& x = a.tensors[f.index];
        ssize_t k = s.hgot < kDataHeader
                        ? ::recv(s.fd, s.hdr + s.hgot, kDataHeader - s.hgot, MSG_DONTWAIT)
                        : ::recv(s.fd, staging[s.items[s.cur]].data() + s.off + s.got,
                                 size_t(s.len - s.got), MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          std::string why = k == 0 ? std::string("closed the connection") : std::strerror(errno);
          return give_up({s.from}, "source peer " + std::to_string(s.from) + " " + why +
                                       " while sending tensor '" + x.name + "'");
        }
        if (k < 0) break;
        if (s.hgot < kDataHeader) {
          s.hgot += size_t(k);
          if (s.hgot < kDataHeader) continue;
          Header h;
          const uint8_t* sh = s.hdr + kHeaderSize;
          const uint64_t want = std::min<uint64_t>(kHashChunk, x.nbytes - s.off);
          if (decode_data_header(s.hdr, kHeaderSize, version_, &h) != PYHPC_OK ||
              h.type != kStateData || h.length != kStateSubHeader + want ||
              get_le(sh, 8) != seq || get_le(sh + 8, 4) != f.index ||
              get_le(sh + 12, 8) != s.off) {
            clear_last_error();
            return give_up({s.from}, "source peer " + std::to_string(s.from) +
                                         " sent an unexpected frame for tensor '" + x.name + "'");
          }
          s.len = want;
          s.got = 0;
        } else {
          s.got += uint64_t(k);
        }
        if (s.got < s.len) continue;
        // A whole chunk is in: hash it now, while it is in cache.
        const uint8_t* chunk = staging[s.items[s.cur]].data() + s.off;
        if (s.len) s.digests.push_back(xxh64(chunk, size_t(s.len), 0));
        s.off += s.len;
        out->bytes_received += s.len;
        s.hgot = 0;
        s.len = s.got = 0;
        if (s.off < x.nbytes) continue;
        if (tensor_hash_from_chunks(s.digests, x.nbytes, x.dtype, x.shape) != f.hash)
          return give_up({s.from}, "tensor '" + x.name + "' from peer " +
                                       std::to_string(s.from) +
                                       " does not match the winner's hash");
        ++verified;
        s.digests.clear();
        s.off = 0;
        if (++s.cur == s.items.size()) {
          ::close(s.fd);
          s.fd = -1;
        }
      }
    }
  }

  // The verdict.
  if (verdict.vote != uint8_t(Verdict::kCommit))
    return aborted(verdict.dead, {}, verdict.dead.empty()
                                         ? "a peer gave up (see its own error)"
                                         : "a member failed before every peer was done");
  if (!done_sent || verified != plan.fetch.size())
    return PYHPC_FAIL(PYHPC_ERR_PROTOCOL, "sync_shared_state: COMMIT before this peer was done");
  for (size_t k = 0; k < plan.fetch.size(); ++k) {
    const StateTensor& x = a.tensors[plan.fetch[k].index];
    if (x.nbytes) std::memcpy(x.data, staging[k].data(), x.nbytes);
    out->fetched.push_back(plan.fetch[k].index);
    out->sources.push_back(plan.fetch[k].from);
  }
  out->revision = plan.revision;
  return PYHPC_OK;
}

}  // namespace pyhpc::ccl
