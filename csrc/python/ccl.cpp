// pyhpc._ccl: bindings for the fault-tolerant TCP collectives (csrc/ccl/).
// Bindings only: argument conversion, the GIL released around every blocking
// call, status -> exception. No MPI here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cctype>
#include <cstring>
#include <memory>

#include "ccl/master.hpp"
#include "ccl/peer.hpp"
#include "ccl/ring.hpp"
#include "ccl/sha256.hpp"
#include "ccl/topology.hpp"
#include "ccl/wire.hpp"
#include "ccl/xxhash.hpp"
#include "common/status.hpp"
#include "python/raise_status.hpp"

namespace py = pybind11;
using namespace pyhpc::ccl;

namespace {

py::bytes to_bytes(const uint8_t* p, size_t n) {
  return py::bytes(reinterpret_cast<const char*>(p), n);
}

template <size_t N>
void fixed(const py::dict& d, const char* key, std::array<uint8_t, N>* out) {
  if (!d.contains(key)) return;
  std::string b = d[key].cast<std::string>();
  if (b.size() != N)
    pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "%s must be %zu bytes", key, N));
  std::memcpy(out->data(), b.data(), N);
}

template <typename T>
T get(const py::dict& d, const char* key, T dflt) {
  return d.contains(key) ? d[key].cast<T>() : dflt;
}

MsgType type_from_name(const std::string& name) {
  for (uint16_t t = kMinType; t <= kMaxType; ++t) {
    if (!is_control_type(t)) continue;
    std::string n = type_name(static_cast<MsgType>(t));
    for (auto& ch : n) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    if (n == name) return static_cast<MsgType>(t);
  }
  pyhpc::raise_status(
      PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "unknown message type '%s'", name.c_str()));
}

std::string lower_name(MsgType t) {
  std::string n = type_name(t);
  for (auto& ch : n) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return n;
}

py::list peer_list(const std::vector<PeerInfo>& peers) {
  py::list l;
  for (const auto& p : peers) l.append(py::make_tuple(p.id, p.host, p.port));
  return l;
}

py::dict message_dict(const Message& m, uint16_t version) {
  py::dict d;
  d["type"] = lower_name(m.type);
  d["version"] = version;
  switch (m.type) {
    case MsgType::kChallenge:
      d["nonce"] = to_bytes(m.nonce.data(), m.nonce.size());
      break;
    case MsgType::kAuth:
      d["nonce"] = to_bytes(m.nonce.data(), m.nonce.size());
      d["mac"] = to_bytes(m.mac.data(), m.mac.size());
      d["port"] = m.port;
      d["host"] = m.text;
      break;
    case MsgType::kAuthOk:
      d["id"] = m.id;
      d["mac"] = to_bytes(m.mac.data(), m.mac.size());
      break;
    case MsgType::kError:
      d["code"] = m.code;
      d["text"] = py::bytes(m.text).attr("decode")("utf-8", "replace");
      break;
    case MsgType::kHeartbeat:
    case MsgType::kUpdateRequest:
      d["seq"] = m.seq;
      break;
    case MsgType::kTopology:
      d["epoch"] = m.epoch;
      d["rank"] = m.your_rank;
      d["peers"] = peer_list(m.peers);
      d["dead"] = m.dead;
      d["left"] = m.left;
      break;
    case MsgType::kPeerFailed:
      d["id"] = m.id;
      d["reason"] = m.code;
      break;
    case MsgType::kLeave:
      break;
    case MsgType::kSyncReport: {
      d["epoch"] = m.epoch;
      d["seq"] = m.seq;
      d["revision"] = m.revision;
      py::list l;
      for (const auto& e : m.tensors)
        l.append(py::make_tuple(py::bytes(e.name), e.dtype, e.itemsize, e.shape, e.nbytes,
                                e.hash));
      d["tensors"] = l;
      break;
    }
    case MsgType::kSyncPlan: {
      d["epoch"] = m.epoch;
      d["seq"] = m.seq;
      d["outcome"] = m.vote;
      d["revision"] = m.revision;
      if (m.vote == uint8_t(SyncOutcome::kMismatch)) {
        d["text"] = py::bytes(m.text).attr("decode")("utf-8", "replace");
      } else {
        py::list l;
        for (const auto& f : m.fetch) l.append(py::make_tuple(f.index, f.from, f.hash));
        d["fetch"] = l;
      }
      break;
    }
    case MsgType::kSyncDone:
    case MsgType::kSyncVerdict:
      d["epoch"] = m.epoch;
      d["seq"] = m.seq;
      d[m.type == MsgType::kSyncDone ? "ok" : "verdict"] = m.vote;
      if (m.type == MsgType::kSyncVerdict) d["dead"] = m.dead;
      break;
    // ---- topology optimization ----
    case MsgType::kTopoReport:
    case MsgType::kTopoResult:
      d["epoch"] = m.epoch;
      d["seq"] = m.seq;
      d[m.type == MsgType::kTopoReport ? "ok" : "outcome"] = m.vote;
      if (m.type == MsgType::kTopoResult && m.vote == uint8_t(TopoOutcome::kAbort)) {
        d["dead"] = m.dead;
        break;
      }
      d["ids"] = m.ids;
      if (m.type == MsgType::kTopoResult) d["order"] = m.order;
      d["bandwidth"] = m.bandwidth;
      d["latency_ns"] = m.latency_ns;
      break;
    // ---- end topology optimization ----
    case MsgType::kVote:
    case MsgType::kVerdict:
      d["epoch"] = m.epoch;
      d["tag"] = m.tag;
      d["seq"] = m.seq;
      d[m.type == MsgType::kVote ? "vote" : "verdict"] = m.vote;
      if (m.type == MsgType::kVerdict) d["dead"] = m.dead;
      break;
  }
  return d;
}

Message message_from_dict(const py::dict& d) {
  Message m;
  m.type = type_from_name(d["type"].cast<std::string>());
  fixed(d, "nonce", &m.nonce);
  fixed(d, "mac", &m.mac);
  m.id = get<uint64_t>(d, "id", 0);
  m.seq = get<uint64_t>(d, "seq", 0);
  m.code = get<uint16_t>(d, m.type == MsgType::kPeerFailed ? "reason" : "code", 0);
  m.port = get<uint16_t>(d, "port", 0);
  m.text = get<std::string>(d, m.type == MsgType::kAuth ? "host" : "text", "");
  m.epoch = get<uint64_t>(d, "epoch", 0);
  m.your_rank = get<uint32_t>(d, "rank", 0);
  m.tag = get<uint32_t>(d, "tag", 0);
  const char* vote_key = m.type == MsgType::kVerdict || m.type == MsgType::kSyncVerdict ? "verdict"
                         : m.type == MsgType::kSyncPlan                                 ? "outcome"
                         : m.type == MsgType::kSyncDone                                 ? "ok"
                         : m.type == MsgType::kTopoReport                               ? "ok"
                         : m.type == MsgType::kTopoResult                               ? "outcome"
                                                                                        : "vote";
  m.vote = get<uint8_t>(d, vote_key, 0);
  m.revision = get<uint64_t>(d, "revision", 0);
  if (d.contains("tensors"))
    for (auto item : d["tensors"]) {
      auto t = item.cast<std::tuple<std::string, std::string, uint8_t, std::vector<uint64_t>,
                                    uint64_t, uint64_t>>();
      m.tensors.push_back({std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t),
                           std::get<4>(t), std::get<5>(t)});
    }
  if (d.contains("fetch"))
    for (auto item : d["fetch"]) {
      auto t = item.cast<std::tuple<uint32_t, uint64_t, uint64_t>>();
      m.fetch.push_back({std::get<0>(t), std::get<1>(t), std::get<2>(t)});
    }
  // topology optimization
  m.ids = get<std::vector<uint64_t>>(d, "ids", {});
  m.order = get<std::vector<uint64_t>>(d, "order", {});
  m.bandwidth = get<std::vector<uint64_t>>(d, "bandwidth", {});
  m.latency_ns = get<std::vector<uint64_t>>(d, "latency_ns", {});
  m.dead = get<std::vector<uint64_t>>(d, "dead", {});
  m.left = get<std::vector<uint64_t>>(d, "left", {});
  if (d.contains("peers"))
    for (auto item : d["peers"]) {
      auto t = item.cast<std::tuple<uint64_t, std::string, uint16_t>>();
      m.peers.push_back({std::get<0>(t), std::get<2>(t), std::get<1>(t)});
    }
  return m;
}

// A data-plane collective: runs `run` (returns a status, fills `failed`) without
// the GIL. A peer failure that names peers is (failed ids, message, on_failure);
// any other failure raises; success is ([], "", result()).
template <class Run, class Result>
py::object peer_collective(Run run, Result result, py::object on_failure) {
  std::vector<uint64_t> failed;
  pyhpc_status s;
  {
    py::gil_scoped_release release;
    s = run(&failed);
  }
  if (s == PYHPC_ERR_PEER && !failed.empty()) {
    std::string why = pyhpc::last_error();
    pyhpc::clear_last_error();
    return py::make_tuple(failed, why, on_failure);
  }
  pyhpc::check(s);
  return py::make_tuple(failed, std::string(), result());
}

py::dict topology_dict(const Topology& t) {
  py::dict d;
  d["epoch"] = t.epoch;
  d["rank"] = t.rank;
  d["peers"] = peer_list(t.peers);
  d["dead"] = t.dead;
  d["left"] = t.left;
  return d;
}

}  // namespace

PYBIND11_MODULE(_ccl, m) {
  m.doc() = "pyhpc fault-tolerant TCP collectives: wire protocol, master, peer (no MPI)";
  m.attr("PROTOCOL_VERSION") = kProtocolVersion;
  m.attr("MAGIC") = kMagic;
  m.attr("HEADER_SIZE") = kHeaderSize;
  m.attr("MAX_WORLD") = kMaxWorld;
  m.attr("MAX_FRAME") = max_frame();

  m.def("sha256", [](py::bytes data) {
    std::string s = data;
    Digest d = sha256(s.data(), s.size());
    return to_bytes(d.data(), d.size());
  }, py::arg("data"), "SHA-256 of data (FIPS 180-4).");
  m.def("hmac_sha256", [](py::bytes key, py::bytes msg) {
    Digest d = hmac_sha256(std::string(key), std::string(msg));
    return to_bytes(d.data(), d.size());
  }, py::arg("key"), py::arg("message"), "HMAC-SHA256 (RFC 2104).");

  m.attr("HASH_CHUNK") = kHashChunk;
  m.attr("MAX_STATE_TENSORS") = kMaxStateTensors;
  m.attr("MAX_STATE_NAME") = kMaxStateName;
  m.def("xxh64", [](py::bytes data, uint64_t seed) {
    std::string s = data;
    return xxh64(s.data(), s.size(), seed);
  }, py::arg("data"), py::arg("seed") = 0, "XXH64 of data (xxHash specification).");
  m.def("tensor_hash",
        [](uintptr_t ptr, uint64_t nbytes, const std::string& dtype,
           const std::vector<uint64_t>& shape) {
          py::gil_scoped_release release;
          return tensor_hash(reinterpret_cast<const void*>(ptr), nbytes, dtype, shape);
        },
        py::arg("ptr"), py::arg("nbytes"), py::arg("dtype"), py::arg("shape"),
        "The tensor hash of nbytes at ptr (csrc/ccl/xxhash.hpp); the caller keeps them alive.");

  m.def("decode", [](py::bytes frame, uint16_t version) {
    std::string s = frame;
    Message msg;
    pyhpc_status st;
    {
      py::gil_scoped_release release;
      st = decode_frame(reinterpret_cast<const uint8_t*>(s.data()), s.size(), version, &msg);
    }
    pyhpc::check(st);
    return message_dict(msg, version);
  }, py::arg("frame"), py::arg("version") = kProtocolVersion,
     "Decode exactly one frame into a dict; ProtocolError if it is malformed.");
  m.def("encode", [](py::dict d, uint16_t version) {
    Message msg = message_from_dict(d);
    std::vector<uint8_t> out;
    pyhpc::check(encode(msg, &out, version));
    return to_bytes(out.data(), out.size());
  }, py::arg("message"), py::arg("version") = kProtocolVersion,
     "Encode a message dict (as decode returns) into one frame.");
  m.def("max_payload", &max_payload, py::arg("type"));

  // ---- topology optimization ----
  m.attr("MAX_TOPO_WORLD") = kMaxTopoWorld;
  m.attr("EXACT_RING_MAX") = kExactRingMax;
  m.def("best_ring",
        [](const std::vector<std::vector<double>>& bandwidth,
           const std::vector<std::vector<double>>& latency) {
          size_t n = bandwidth.size();
          if (latency.size() != n || n > kMaxTopoWorld)
            pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                                           "best_ring: bandwidth and latency must be n x n with "
                                           "n <= %u",
                                           unsigned(kMaxTopoWorld)));
          std::vector<double> bw, lat;
          for (size_t i = 0; i < n; ++i) {
            if (bandwidth[i].size() != n || latency[i].size() != n)
              pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                                             "best_ring: bandwidth and latency must be n x n"));
            bw.insert(bw.end(), bandwidth[i].begin(), bandwidth[i].end());
            lat.insert(lat.end(), latency[i].begin(), latency[i].end());
          }
          for (size_t i = 0; i < n; ++i)
            for (size_t j = 0; j < i; ++j)
              if (bw[i * n + j] != bw[j * n + i] || lat[i * n + j] != lat[j * n + i])
                pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                                               "best_ring: bandwidth and latency must be "
                                               "symmetric (link values)"));
          py::gil_scoped_release release;
          return best_ring(n, bw, lat);
        },
        py::arg("bandwidth"), py::arg("latency"),
        "The ring order (node indices from 0) maximising the slowest link, then the lowest "
        "total latency (csrc/ccl/topology.hpp).");
  m.def("round_robin", &round_robin, py::arg("n"),
        "The measurement rounds of optimize_topology over ranks 0..n-1 (pairs, lower first).");
  // ---- end topology optimization ----

  py::class_<Master>(m, "Master")
      .def(py::init([](const std::string& host, uint16_t port, py::bytes secret,
                       double heartbeat_timeout, double handshake_timeout, size_t max_clients) {
             MasterOptions o;
             o.host = host;
             o.port = port;
             o.secret = secret;
             o.heartbeat_timeout = heartbeat_timeout;
             o.handshake_timeout = handshake_timeout;
             o.max_clients = max_clients;
             return std::make_unique<Master>(o);
           }),
           py::arg("host"), py::arg("port"), py::arg("secret"), py::arg("heartbeat_timeout"),
           py::arg("handshake_timeout"), py::arg("max_clients"))
      .def("start", [](Master& self) { pyhpc::check(self.start()); })
      .def("stop", [](Master& self) {
        py::gil_scoped_release release;
        self.stop();
      })
      .def_property_readonly("port", &Master::port)
      .def_property_readonly("host", &Master::host)
      .def("stats", [](const Master& self) {
        MasterStats s = self.stats();
        py::dict d;
        d["epoch"] = s.epoch;
        d["members"] = s.members;
        d["pending"] = s.pending;
        py::list f;
        for (const auto& x : s.failures)
          f.append(py::make_tuple(x.id, static_cast<int>(x.reason), x.unix_time));
        d["failures"] = f;
        d["rejected"] = s.rejected;
        d["commits"] = s.commits;
        d["aborts"] = s.aborts;
        d["continues"] = s.continues;
        d["sync_commits"] = s.sync_commits;
        d["sync_aborts"] = s.sync_aborts;
        d["sync_mismatches"] = s.sync_mismatches;
        d["topo_orders"] = s.topo_orders;  // topology optimization
        d["topo_aborts"] = s.topo_aborts;
        return d;
      });

  py::class_<Peer>(m, "Peer")
      .def(py::init<>())
      .def("connect",
           [](Peer& self, const std::string& host, uint16_t port, py::bytes secret,
              double connect_timeout, double heartbeat_interval,
              const std::string& advertise_host, uint16_t advertise_port,
              uint16_t protocol_version, double master_timeout) {
             PeerOptions o;
             o.master_timeout = master_timeout;
             o.host = host;
             o.port = port;
             o.secret = secret;
             o.connect_timeout = connect_timeout;
             o.heartbeat_interval = heartbeat_interval;
             o.advertise_host = advertise_host;
             o.advertise_port = advertise_port;
             o.protocol_version = protocol_version;
             pyhpc_status s;
             {
               py::gil_scoped_release release;
               s = self.connect(o);
             }
             pyhpc::check(s);
           },
           py::arg("host"), py::arg("port"), py::arg("secret"), py::arg("connect_timeout"),
           py::arg("heartbeat_interval"), py::arg("advertise_host"), py::arg("advertise_port"),
           py::arg("protocol_version") = kProtocolVersion, py::arg("master_timeout") = 1.5)
      .def("update_topology", [](Peer& self, double timeout) {
        Topology t;
        pyhpc_status s;
        {
          py::gil_scoped_release release;
          s = self.update_topology(timeout, &t);
        }
        pyhpc::check(s);
        return topology_dict(t);
      }, py::arg("timeout"))
      .def("topology", [](const Peer& self) { return topology_dict(self.topology()); })
      .def("take_failures", &Peer::take_failures)
      .def("health", [](const Peer& self) { pyhpc::check(self.health()); })
      .def("leave", [](Peer& self) {
        pyhpc_status s;
        {
          py::gil_scoped_release release;
          s = self.leave();
        }
        pyhpc::check(s);
      })
      .def("close", [](Peer& self) {
        py::gil_scoped_release release;
        self.close();
      })
      .def_property_readonly("id", &Peer::id)
      .def_property_readonly("admitted", &Peer::admitted);

  py::class_<DataPlane>(m, "DataPlane")
      .def(py::init<>())
      .def("start",
           [](DataPlane& self, const std::string& host, py::bytes secret, uint16_t version,
              uint32_t connections) {
             pyhpc::check(self.start(host, secret, version, connections));
           },
           py::arg("host"), py::arg("secret"), py::arg("protocol_version") = kProtocolVersion,
           py::arg("connections") = 1)
      .def("stop", [](DataPlane& self) {
        py::gil_scoped_release release;
        self.stop();
      })
      .def_property_readonly("port", &DataPlane::port)
      // Returns ([], "", data bytes sent) on success, (failed peer ids,
      // message, 0) on a peer failure; raises for anything else. Pointers: the caller keeps the
      // arrays alive and checks their size.
      .def("all_reduce",
           [](DataPlane& self, Peer& peer, uintptr_t in, uintptr_t out, uint64_t count,
              int dtype, int op, uint32_t tag, double timeout, size_t chunk_bytes,
              double test_chunk_delay, int test_exit_at, int quantize) {
             if (dtype < 1 || dtype > 6 || op < 1 || op > 4 || quantize < 0 || quantize > 2)
               pyhpc::raise_status(PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                                              "bad dtype %d, op %d or quantize %d", dtype, op,
                                              quantize));
             AllReduceArgs a;
             a.in = reinterpret_cast<const void*>(in);
             a.out = reinterpret_cast<void*>(out);
             a.count = count;
             a.dtype = static_cast<DType>(dtype);
             a.op = static_cast<ReduceOp>(op);
             a.tag = tag;
             a.timeout_s = timeout;
             a.chunk_bytes = chunk_bytes;
             a.test_chunk_delay_s = test_chunk_delay;
             a.test_exit_at = test_exit_at;
             a.quant = static_cast<Quant>(quantize);
             uint64_t bytes = 0;
             a.data_bytes_sent = &bytes;
             return peer_collective(
                 [&](std::vector<uint64_t>* failed) { return self.all_reduce(peer, a, failed); },
                 [&] { return py::int_(bytes); }, py::int_(0));
           },
           py::arg("peer"), py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"),
           py::arg("op"), py::arg("tag"), py::arg("timeout"), py::arg("chunk_bytes"),
           py::arg("test_chunk_delay") = 0.0, py::arg("test_exit_at") = 0,
           py::arg("quantize") = 0)
      // tensors: [(name bytes, dtype, itemsize, shape, nbytes, data pointer)], names sorted.
      // Returns ([], "", result dict) on success, (failed peer ids, message, None) on a
      // peer failure; raises for anything else. The caller keeps the arrays alive.
      .def("sync_state",
           [](DataPlane& self, Peer& peer, py::list tensors, uint64_t revision, double timeout,
              double test_serve_delay) {
             SyncArgs a;
             for (auto item : tensors) {
               auto t = item.cast<std::tuple<std::string, std::string, uint8_t,
                                             std::vector<uint64_t>, uint64_t, uintptr_t>>();
               a.tensors.push_back({std::get<0>(t), std::get<1>(t), std::get<2>(t),
                                    std::get<3>(t), std::get<4>(t),
                                    reinterpret_cast<void*>(std::get<5>(t))});
             }
             a.revision = revision;
             a.timeout_s = timeout;
             a.test_serve_delay_s = test_serve_delay;
             SyncResult r;
             return peer_collective(
                 [&](std::vector<uint64_t>* failed) {
                   return self.sync_state(peer, a, &r, failed);
                 },
                 [&] {
                   py::dict d;
                   d["revision"] = r.revision;
                   d["fetched"] = r.fetched;
                   d["sources"] = r.sources;
                   d["bytes_received"] = r.bytes_received;
                   d["bytes_sent"] = r.bytes_sent;
                   return d;
                 },
                 py::none());
           },
           py::arg("peer"), py::arg("tensors"), py::arg("revision"), py::arg("timeout"),
           py::arg("test_serve_delay") = 0.0)
      // ---- topology optimization ----
      // Returns ([], "", result dict) on success, (failed peer ids, message, None) on a
      // peer failure; raises for anything else.
      .def("probe_topology",
           [](DataPlane& self, Peer& peer, uint64_t probe_bytes, double timeout,
              int test_exit_in_round) {
             ProbeArgs a;
             a.probe_bytes = probe_bytes;
             a.timeout_s = timeout;
             a.test_exit_in_round = test_exit_in_round;
             ProbeResult r;
             return peer_collective(
                 [&](std::vector<uint64_t>* failed) {
                   return self.probe_topology(peer, a, &r, failed);
                 },
                 [&] {
                   py::dict d;
                   d["ids"] = r.ids;
                   d["order"] = r.order;
                   d["bandwidth"] = r.bandwidth;
                   d["latency_ns"] = r.latency_ns;
                   return d;
                 },
                 py::none());
           },
           py::arg("peer"), py::arg("probe_bytes"), py::arg("timeout"),
           py::arg("test_exit_in_round") = -1);
      // ---- end topology optimization ----
}
