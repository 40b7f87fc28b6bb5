// Topology optimization (Communicator.optimize_topology): measure every pair of
// members, then order the ring so that its slowest link is as fast as possible.
//
// 1. Measure (DataPlane::probe_topology, topology.cpp). The pairs are scheduled
//    by the circle method (round_robin below): in each round every member is
//    in at most one pair (one sits out per round when the count is odd), so
//    measurements do not share a peer's NIC. In its round the lower rank of a
//    pair dials the other on the data plane (channel kind "probe", tag = the low
//    32 bits of the call's sequence number) and both, in turn, time
//    kProbePings small ping-pongs (latency = median round trip / 2) and send
//    `probe_bytes` one way, timed until the receiver's ack (bandwidth = bytes /
//    that time). Every peer then sends the master its row (TOPO_REPORT).
// 2. Decide (the master, master.cpp): with every member's row in, link(i, j)
//    has bandwidth min(i->j, j->i) and latency the mean of both; best_ring
//    picks the ring order. Every member gets TOPO_RESULT (the matrices and the
//    order); the master keeps the order and applies it at the next topology
//    update, which every member then asks for (so ranks follow the new order
//    in a new epoch; peers admitted by that update come after the members).
//    A member that dies, leaves or freezes (or gives up) before the decision
//    aborts the round: every member gets an ABORT naming the members gone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace pyhpc::ccl {

// Exhaustive search up to this many members; a heuristic above.
constexpr size_t kExactRingMax = 9;
constexpr int kProbePings = 9;

// Rounds of a round-robin tournament over ranks 0..n-1 (the circle method):
// round k holds disjoint pairs (lower rank first); every pair meets in exactly
// one round; n - 1 rounds for even n, n for odd n (each rank sits out once).
std::vector<std::vector<std::pair<uint32_t, uint32_t>>> round_robin(uint32_t n);

// The ring order over n nodes (bandwidth and latency: row-major n x n, symmetric
// link values; the diagonal is ignored) that maximises the slowest link's
// bandwidth, then has the lowest total latency (summed along the ring from
// node 0). Exact for n <= kExactRingMax: every cycle is tried, written from
// node 0 with its second node below its last, in lexicographic order, and the
// first best one wins (so ties are deterministic). Above (a heuristic): greedy
// widest-neighbour tours from every start node, the best then improved by
// 2-opt moves (segment reversals) while one raises the bottleneck, or keeps it
// with fewer links at it, or keeps both with a lower total latency.
// Returns node indices, starting with 0.
std::vector<uint32_t> best_ring(size_t n, const std::vector<double>& bandwidth,
                                const std::vector<double>& latency);

// The slowest link's bandwidth of the ring `order` (infinity for fewer than 2 nodes).
double ring_bottleneck(size_t n, const std::vector<double>& bandwidth,
                       const std::vector<uint32_t>& order);

}  // namespace pyhpc::ccl
