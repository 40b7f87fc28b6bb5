#include "interpose/state.hpp"

#include "datatype/engine.hpp"
#include "datatype/measure.hpp"
#include "datatype/pack_host.hpp"
#include "interpose/device_ptr.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

namespace pyhpc::interpose {

namespace {

bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return fallback;
  return !(std::strcmp(v, "0") == 0 || strcasecmp(v, "false") == 0 || strcasecmp(v, "no") == 0 ||
           strcasecmp(v, "off") == 0);
}

Settings read_settings() {
  Settings s;
  s.enabled = env_flag("PYHPC_INTERPOSE", true);
  s.log = env_flag("PYHPC_INTERPOSE_LOG", false);
  s.stats = env_flag("PYHPC_INTERPOSE_STATS", false);
  const char* strategy = std::getenv("PYHPC_INTERPOSE_STRATEGY");
  if (strategy && std::strcmp(strategy, "pyhpc") == 0) s.strategy = Strategy::kPyhpc;
  else if (strategy && std::strcmp(strategy, "system") == 0) s.strategy = Strategy::kSystem;
  else if (strategy && strategy[0] != '\0' && std::strcmp(strategy, "auto") != 0)
    std::fprintf(stderr, "pyhpc-interpose: PYHPC_INTERPOSE_STRATEGY=%s is not auto, pyhpc or system; using auto\n",
                 strategy);
  if (const char* path = std::getenv("PYHPC_SYSTEM_MODEL")) s.model_path = path;
  return s;
}

constexpr const char* kNames[kNumCalls] = {
  "MPI_Init", "MPI_Init_thread", "MPI_Finalize", "MPI_Type_commit", "MPI_Type_free", "MPI_Pack",
  "MPI_Unpack", "MPI_Pack_size", "MPI_Send", "MPI_Isend", "MPI_Recv", "MPI_Irecv", "MPI_Sendrecv",
  "MPI_Sendrecv_replace", "MPI_Send_init", "MPI_Recv_init", "MPI_Start*", "MPI_Wait*", "MPI_Test*",
  "MPI_Request_free", "MPI_Alltoallv", "MPI_Alltoallw", "MPI_Neighbor_alltoallv", "MPI_Neighbor_alltoallw",
  "MPI_Ialltoallv", "MPI_Ialltoallw", "MPI_Ineighbor_alltoallv", "MPI_Ineighbor_alltoallw",
};

std::atomic<uint64_t> g_calls[kNumCalls];
std::atomic<uint64_t> g_engine[kNumCalls];

int world_rank() {
  int initialized = 0, finalized = 0, rank = -1;
  PMPI_Initialized(&initialized);
  PMPI_Finalized(&finalized);
  if (initialized && !finalized) PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// ---- type cache --------------------------------------------------------------
std::shared_mutex g_types_mutex;
std::unordered_map<MPI_Datatype, std::shared_ptr<const datatype::Canonical>> g_types;
// Size of g_types, readable without the lock: a program that never commits a
// type with a strided form pays one atomic load per call, not a lock.
std::atomic<size_t> g_types_count{0};

// ---- system model: op -> block size -> engine wins ------------------------------
std::map<std::string, std::map<int64_t, bool>> g_model;
bool g_model_loaded = false;

}  // namespace

const Settings& settings() {
  static const Settings s = read_settings();
  return s;
}

void count(Call call, bool engine) {
  g_calls[call].fetch_add(1, std::memory_order_relaxed);
  if (engine) g_engine[call].fetch_add(1, std::memory_order_relaxed);
  if (settings().log) log_line("%s%s", kNames[call], engine ? " (pyhpc engine)" : "");
}

void log_line(const char* fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "pyhpc-interpose[%d]: %s\n", world_rank(), text);
}

void print_stats() {
  if (!settings().stats) return;
  std::ostringstream os;
  for (int c = 0; c < kNumCalls; ++c) {
    const uint64_t n = g_calls[c].load(), e = g_engine[c].load();
    if (n == 0) continue;
    os << " " << kNames[c] << "=" << n;
    if (e) os << "(pyhpc " << e << ")";
  }
  // Not through log_line: the line outgrows its buffer.
  std::fprintf(stderr, "pyhpc-interpose[%d]: stats:%s\n", world_rank(), os.str().c_str());
}

void remember_type(MPI_Datatype type) {
  auto canonical = std::make_shared<datatype::Canonical>();
  if (datatype::canonicalize(type, canonical.get()) != PYHPC_OK) {
    clear_last_error();
    return;  // leave the type to the system MPI
  }
  if (settings().log)
    log_line("type committed: %s", canonical->supported ? canonical->layout.describe().c_str()
                                                        : canonical->why_not.c_str());
  if (!canonical->supported) return;
  std::unique_lock lock(g_types_mutex);
  g_types[type] = std::move(canonical);
  g_types_count.store(g_types.size(), std::memory_order_release);
}

void forget_type(MPI_Datatype type) {
  if (g_types_count.load(std::memory_order_acquire) == 0) return;
  std::unique_lock lock(g_types_mutex);
  g_types.erase(type);
  g_types_count.store(g_types.size(), std::memory_order_release);
}

std::shared_ptr<const datatype::Canonical> find_type(MPI_Datatype type) {
  if (g_types_count.load(std::memory_order_acquire) == 0) return nullptr;
  std::shared_lock lock(g_types_mutex);
  auto it = g_types.find(type);
  return it == g_types.end() ? nullptr : it->second;
}

std::string default_model_path() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && xdg[0])
    return std::string(xdg) + "/pyhpc/system-model.txt";
  if (const char* home = std::getenv("HOME"); home && home[0])
    return std::string(home) + "/.cache/pyhpc/system-model.txt";
  return "";
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r");
  const size_t b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// First line of MPI_Get_library_version, trimmed (pyhpc measure-system writes it the same way).
std::string loaded_mpi_first_line() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (PMPI_Get_library_version(text, &len) != MPI_SUCCESS) return "";
  std::string v(text, strnlen(text, static_cast<size_t>(len)));
  return trim(v.substr(0, v.find('\n')));
}

void load_model() {
  if (g_model_loaded) return;
  g_model_loaded = true;
  const bool explicit_path = !settings().model_path.empty();
  const std::string path = explicit_path ? settings().model_path : default_model_path();
  if (path.empty()) return;
  std::ifstream in(path);
  if (!in) {
    if (explicit_path || settings().log)
      log_line("cannot read the system model %s; host buffers go to the system MPI", path.c_str());
    return;
  }
  // "# mpi: <first line of MPI_Get_library_version>", then lines
  // "<op> <block bytes> <pyhpc seconds> <system seconds>"; other '#' lines are comments.
  // A model measured under another MPI says nothing about this one.
  std::string line;
  const std::string mpi = loaded_mpi_first_line();
  while (std::getline(in, line)) {
    if (line.rfind("# mpi: ", 0) == 0 && trim(line.substr(7)) != mpi) {
      log_line("system model %s was measured under '%s', not '%s': ignored (rerun pyhpc measure-system)",
               path.c_str(), line.substr(7).c_str(), mpi.c_str());
      g_model.clear();
      return;
    }
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string op;
    int64_t block = 0;
    double mine = 0, theirs = 0;
    // Only a clear win counts: within 10% is noise, and the system MPI keeps it.
    if (fields >> op >> block >> mine >> theirs) g_model[op][block] = mine < 0.9 * theirs;
  }
}

bool engine_wins(const char* op, int64_t block, bool sparse) {
  const Settings& s = settings();
  if (!s.enabled || s.strategy == Strategy::kSystem) return false;
  if (s.strategy == Strategy::kPyhpc) return true;
  auto it = g_model.end();
  if (sparse && block < datatype::kSparseStride) it = g_model.find(std::string(op) + "-sparse");
  if (it == g_model.end()) it = g_model.find(op);
  if (it == g_model.end() || it->second.empty()) return false;
  // The measured block size nearest below (or the smallest measured).
  auto at = it->second.upper_bound(block);
  if (at != it->second.begin()) --at;
  return at->second;
}

bool engine_layout(const char* op, const void* strided, const void* packed, int64_t count,
                   MPI_Datatype type, MPI_Comm comm, datatype::Strided* layout) {
  if (!settings().enabled || count < 0 || comm == MPI_COMM_NULL) return false;
  auto canonical = find_type(type);
  if (canonical == nullptr || canonical->size == 0) return false;
  if (is_device_pointer(strided) || is_device_pointer(packed)) return false;
  if (datatype::layout_for(*canonical, count, layout) != PYHPC_OK) {
    clear_last_error();
    return false;
  }
  return engine_wins(op, layout->block, !datatype::host_vector_path(*layout));
}

}  // namespace pyhpc::interpose
