#include "interpose/requests.hpp"

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "datatype/pack_host.hpp"
#include "interpose/state.hpp"

namespace pyhpc::interpose {

namespace {
std::mutex g_mutex;
std::unordered_map<MPI_Request, std::unique_ptr<Pending>> g_pending;
std::atomic<size_t> g_count{0};
std::vector<std::pair<MPI_Request, std::unique_ptr<Pending>>> g_orphans;
}  // namespace

MPI_Count bytes_received(const MPI_Status* status) {
#if MPI_VERSION >= 4
  MPI_Count n = 0;
  PMPI_Get_count_c(status, MPI_BYTE, &n);
#else
  int n = 0;
  PMPI_Get_count(status, MPI_BYTE, &n);
#endif
  return n;
}

void track(MPI_Request request, std::unique_ptr<Pending> pending) {
  std::lock_guard lock(g_mutex);
  g_pending[request] = std::move(pending);
  g_count.fetch_add(1, std::memory_order_release);
}

bool any_tracked() { return g_count.load(std::memory_order_acquire) > 0; }

std::unique_ptr<Pending> take(MPI_Request request) {
  if (request == MPI_REQUEST_NULL || !any_tracked()) return nullptr;
  std::lock_guard lock(g_mutex);
  auto it = g_pending.find(request);
  if (it == g_pending.end()) return nullptr;
  std::unique_ptr<Pending> pending = std::move(it->second);
  g_pending.erase(it);
  g_count.fetch_sub(1, std::memory_order_release);
  return pending;
}

Pending* find_persistent(MPI_Request request) {
  if (request == MPI_REQUEST_NULL || !any_tracked()) return nullptr;
  std::lock_guard lock(g_mutex);
  auto it = g_pending.find(request);
  return it != g_pending.end() && it->second->persistent ? it->second.get() : nullptr;
}

void complete(MPI_Request request, const MPI_Status* status, bool ok) {
  if (request == MPI_REQUEST_NULL || !any_tracked()) return;
  std::unique_ptr<Pending> done;
  Pending* started = nullptr;
  {
    std::lock_guard lock(g_mutex);
    auto it = g_pending.find(request);
    if (it == g_pending.end()) return;
    if (it->second->persistent) {
      if (!it->second->active) return;  // completing an inactive request does nothing
      it->second->active = false;
      if (!ok) return;
      started = it->second.get();
    } else {
      done = std::move(it->second);
      g_pending.erase(it);
      g_count.fetch_sub(1, std::memory_order_release);
      // A failed request is complete and its handle free for reuse: drop it.
      if (!ok) return;
    }
  }
  finish(done ? *done : *started, status);  // outside the lock: unpacking takes time
}

void finish(const Pending& pending, const MPI_Status* status) {
  if (!pending.receive) return;
  int cancelled = 0;
  PMPI_Test_cancelled(status, &cancelled);
  if (cancelled) return;
  if (!pending.parts.empty()) {  // a nonblocking collective: every part arrived whole
    if (pending.device) {
      if (device_unpack_parts(pending.device_plan.strategy, pending.parts, pending.staging, pending.parts_bytes) !=
          PYHPC_OK)
        log_line("device unpack failed: %s", last_error().c_str());
      return;
    }
    for (const StagedPart& part : pending.parts)
      datatype::unpack_host(part.layout, pending.staging.data() + part.offset, part.base);
    return;
  }
  if (pending.device) {
    if (device_unpack(pending.device_plan, pending.staging, bytes_received(status), pending.user_buf) != PYHPC_OK)
      log_line("device unpack failed: %s", last_error().c_str());
    return;
  }
  datatype::unpack_host_prefix(pending.layout, pending.staging.data(), bytes_received(status),
                               pending.user_buf);
}

void orphan(MPI_Request request, std::unique_ptr<Pending> pending) {
  std::lock_guard lock(g_mutex);
  g_orphans.emplace_back(request, std::move(pending));
}

void progress_orphans() {
  std::lock_guard lock(g_mutex);
  for (size_t i = 0; i < g_orphans.size();) {
    int done = 0;
    MPI_Status status;
    PMPI_Test(&g_orphans[i].first, &done, &status);
    if (done) {
      finish(*g_orphans[i].second, &status);
      if (g_orphans[i].second->persistent) PMPI_Request_free(&g_orphans[i].first);
      g_orphans.erase(g_orphans.begin() + static_cast<long>(i));
    } else {
      ++i;
    }
  }
}

void finish_orphans() {
  std::lock_guard lock(g_mutex);
  for (auto& [request, pending] : g_orphans) {
    MPI_Status status;
    PMPI_Wait(&request, &status);
    finish(*pending, &status);
    if (pending->persistent) PMPI_Request_free(&request);
  }
  g_orphans.clear();
}

}  // namespace pyhpc::interpose
