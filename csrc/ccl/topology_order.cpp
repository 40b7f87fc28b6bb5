// The ring-order search of topology optimization (topology.hpp).
#include <algorithm>
#include <limits>
#include <numeric>

#include "ccl/topology.hpp"

namespace pyhpc::ccl {
namespace {

struct Score {
  double bottleneck = 0;
  size_t at_bottleneck = 0;
  double latency = 0;
};

Score score(size_t n, const std::vector<double>& bw, const std::vector<double>& lat,
            const std::vector<uint32_t>& order) {
  Score s;
  s.bottleneck = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < order.size(); ++i) {
    size_t a = order[i], b = order[(i + 1) % order.size()];
    double x = bw[a * n + b];
    if (x < s.bottleneck) {
      s.bottleneck = x;
      s.at_bottleneck = 1;
    } else if (x == s.bottleneck) {
      ++s.at_bottleneck;
    }
    s.latency += lat[a * n + b];
  }
  return s;
}

// The exact search's objective: bottleneck up, then latency down.
bool better_exact(const Score& a, const Score& b) {
  if (a.bottleneck != b.bottleneck) return a.bottleneck > b.bottleneck;
  return a.latency < b.latency;
}

// The heuristic's: also fewer links at the bottleneck (so 2-opt can climb).
bool better_heuristic(const Score& a, const Score& b) {
  if (a.bottleneck != b.bottleneck) return a.bottleneck > b.bottleneck;
  if (a.at_bottleneck != b.at_bottleneck) return a.at_bottleneck < b.at_bottleneck;
  return a.latency < b.latency;
}

std::vector<uint32_t> exact(size_t n, const std::vector<double>& bw,
                            const std::vector<double>& lat) {
  std::vector<uint32_t> cur(n);
  std::iota(cur.begin(), cur.end(), 0);
  std::vector<uint32_t> best = cur;
  Score best_s = score(n, bw, lat, best);
  if (n <= 3) return best;  // one cycle
  do {
    if (cur[1] > cur[n - 1]) continue;  // the mirror image of a cycle already tried
    Score s = score(n, bw, lat, cur);
    if (better_exact(s, best_s)) {
      best = cur;
      best_s = s;
    }
  } while (std::next_permutation(cur.begin() + 1, cur.end()));
  return best;
}

std::vector<uint32_t> heuristic(size_t n, const std::vector<double>& bw,
                                const std::vector<double>& lat) {
  std::vector<uint32_t> best;
  Score best_s;
  for (uint32_t start = 0; start < n; ++start) {
    std::vector<uint32_t> tour{start};
    std::vector<bool> used(n, false);
    used[start] = true;
    while (tour.size() < n) {
      uint32_t a = tour.back(), pick = 0;
      bool have = false;
      for (uint32_t b = 0; b < n; ++b) {
        if (used[b]) continue;
        if (!have || bw[a * n + b] > bw[a * n + pick] ||
            (bw[a * n + b] == bw[a * n + pick] && lat[a * n + b] < lat[a * n + pick])) {
          pick = b;
          have = true;
        }
      }
      used[pick] = true;
      tour.push_back(pick);
    }
    Score s = score(n, bw, lat, tour);
    if (best.empty() || better_heuristic(s, best_s)) {
      best = tour;
      best_s = s;
    }
  }
  // 2-opt: reversing best[i+1..j] replaces links (i, i+1) and (j, j+1) by (i, j) and
  // (i+1, j+1); the links inside keep their values (the matrices are symmetric), so a
  // move is judged from those four links and the current tour's links sorted by bandwidth.
  for (int pass = 0; pass < 100; ++pass) {
    bool improved = false;
    std::vector<double> edge(n);  // edge[k]: the link best[k] - best[k+1]
    std::vector<uint32_t> by_bw(n);
    auto refresh = [&] {
      for (size_t k = 0; k < n; ++k) edge[k] = bw[best[k] * n + best[(k + 1) % n]];
      std::iota(by_bw.begin(), by_bw.end(), 0);
      std::stable_sort(by_bw.begin(), by_bw.end(),
                       [&](uint32_t x, uint32_t y) { return edge[x] < edge[y]; });
    };
    refresh();
    for (size_t i = 0; i + 2 < n; ++i)
      for (size_t j = i + 2; j < n; ++j) {
        if (i == 0 && j == n - 1) continue;  // the same cycle
        uint32_t a = best[i], a1 = best[i + 1], b = best[j], b1 = best[(j + 1) % n];
        double f1 = bw[a * n + b], f2 = bw[a1 * n + b1];
        // The slowest kept link and how many kept links share its bandwidth.
        Score s;
        s.bottleneck = std::min(f1, f2);
        for (uint32_t k : by_bw) {
          if (k == i || k == j) continue;
          s.bottleneck = std::min(s.bottleneck, edge[k]);
          break;
        }
        for (uint32_t k : by_bw) {
          if (edge[k] > s.bottleneck) break;
          if (k != i && k != j) ++s.at_bottleneck;
        }
        s.at_bottleneck += (f1 == s.bottleneck) + (f2 == s.bottleneck);
        s.latency = best_s.latency - lat[a * n + a1] - lat[b * n + b1] + lat[a * n + b] +
                    lat[a1 * n + b1];
        if (!better_heuristic(s, best_s)) continue;
        std::vector<uint32_t> cand = best;
        std::reverse(cand.begin() + i + 1, cand.begin() + j + 1);
        Score exact_s = score(n, bw, lat, cand);  // recomputed: no drift from the updates
        if (!better_heuristic(exact_s, best_s)) continue;
        best = std::move(cand);
        best_s = exact_s;
        improved = true;
        refresh();
      }
    if (!improved) break;
  }
  // Written from node 0, second node below the last, like the exact search.
  std::rotate(best.begin(), std::find(best.begin(), best.end(), 0u), best.end());
  if (n > 2 && best[1] > best[n - 1]) std::reverse(best.begin() + 1, best.end());
  return best;
}

}  // namespace

std::vector<std::vector<std::pair<uint32_t, uint32_t>>> round_robin(uint32_t n) {
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> rounds;
  if (n < 2) return rounds;
  uint32_t m = n % 2 ? n + 1 : n;  // with a dummy player m - 1 for odd n: its partner sits out
  for (uint32_t k = 0; k + 1 < m; ++k) {
    std::vector<std::pair<uint32_t, uint32_t>> pairs;
    auto add = [&](uint32_t a, uint32_t b) {
      if (a >= n || b >= n) return;
      pairs.push_back({std::min(a, b), std::max(a, b)});
    };
    add(m - 1, k);
    for (uint32_t i = 1; i < m / 2; ++i) add((k + i) % (m - 1), (k + m - 1 - i) % (m - 1));
    rounds.push_back(std::move(pairs));
  }
  return rounds;
}

std::vector<uint32_t> best_ring(size_t n, const std::vector<double>& bandwidth,
                                const std::vector<double>& latency) {
  if (n == 0) return {};
  return n <= kExactRingMax ? exact(n, bandwidth, latency) : heuristic(n, bandwidth, latency);
}

double ring_bottleneck(size_t n, const std::vector<double>& bandwidth,
                       const std::vector<uint32_t>& order) {
  if (order.size() < 2) return std::numeric_limits<double>::infinity();
  return score(n, bandwidth, std::vector<double>(n * n, 0.0), order).bottleneck;
}

}  // namespace pyhpc::ccl
