// Process-wide state of the interposer: its settings (read once from the
// PYHPC_* environment), per-call counters, the cache of canonical datatype
// forms kept from MPI_Type_commit to MPI_Type_free, and the host-side
// decision between pyhpc's engine and the system MPI.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>

#include "datatype/canonicalize.hpp"

#define PYHPC_EXPORT extern "C" __attribute__((visibility("default")))

namespace pyhpc::interpose {

enum class Strategy { kAuto, kPyhpc, kSystem };

struct Settings {
  bool enabled = true;  // PYHPC_INTERPOSE=0: pass every call straight through
  bool log = false;     // PYHPC_INTERPOSE_LOG: one line per intercepted call / decision
  bool stats = false;   // PYHPC_INTERPOSE_STATS: call counts at MPI_Finalize
  Strategy strategy = Strategy::kAuto;  // PYHPC_INTERPOSE_STRATEGY
  std::string model_path;               // PYHPC_SYSTEM_MODEL
};
const Settings& settings();

// The calls the interposer counts; keep kNames in state.cpp in step.
enum Call : int {
  kInit, kInitThread, kFinalize, kTypeCommit, kTypeFree, kPack, kUnpack, kPackSize,
  kSend, kIsend, kRecv, kIrecv, kSendrecv, kSendrecvReplace, kSendInit, kRecvInit, kStart, kWait, kTest,
  kRequestFree, kAlltoallv, kAlltoallw, kNeighborAlltoallv, kNeighborAlltoallw, kIalltoallv, kIalltoallw,
  kIneighborAlltoallv, kIneighborAlltoallw, kNumCalls
};

// Counts one intercepted call; `engine` says pyhpc's engine did the work.
void count(Call call, bool engine = false);
void log_line(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void print_stats();  // to stderr, when PYHPC_INTERPOSE_STATS is set

// Canonical forms of committed datatypes. find() returns null for types that
// were never committed through the interposer or have no strided form.
void remember_type(MPI_Datatype type);
void forget_type(MPI_Datatype type);
std::shared_ptr<const datatype::Canonical> find_type(MPI_Datatype type);

// Host buffers: should pyhpc's engine do `op` ("pack", "unpack") for runs of
// `block` bytes? By PYHPC_INTERPOSE_STRATEGY, else by the system model file
// written by `pyhpc measure-system`, else no (the system MPI is never beaten
// by a guess). `sparse`: the runs are too far apart for the engine's vector
// path; short runs are then judged by the model's "<op>-sparse" lines.
bool engine_wins(const char* op, int64_t block, bool sparse = false);

// Loads the model file if configured (called from MPI_Init*).
void load_model();

// Should pyhpc's engine move `count` elements of `type` between the strided
// user buffer and a packed one for `op` ("pack" or "unpack")? True only for a
// committed type with a strided form, host memory, a valid count and
// communicator and a block size the engine wins; then *layout is set.
bool engine_layout(const char* op, const void* strided, const void* packed, int64_t count,
                   MPI_Datatype type, MPI_Comm comm, datatype::Strided* layout);

}  // namespace pyhpc::interpose
