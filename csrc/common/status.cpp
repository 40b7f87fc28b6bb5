#include "common/status.hpp"

#include <cstring>

namespace {
thread_local std::string g_last_error;

const char* basename_of(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}
}  // namespace

extern "C" const char* pyhpc_status_name(pyhpc_status s) {
  switch (s) {
    case PYHPC_OK: return "OK";
    case PYHPC_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case PYHPC_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case PYHPC_ERR_MPI: return "MPI";
    case PYHPC_ERR_CUDA: return "CUDA";
    case PYHPC_ERR_TIMEOUT: return "TIMEOUT";
    case PYHPC_ERR_PEER: return "PEER";
    case PYHPC_ERR_PROTOCOL: return "PROTOCOL";
    case PYHPC_ERR_AUTH: return "AUTH";
    case PYHPC_ERR_NO_MEMORY: return "NO_MEMORY";
    case PYHPC_ERR_MPI_MISMATCH: return "MPI_MISMATCH";
    case PYHPC_ERR_INTERNAL: return "INTERNAL";
  }
  return "UNKNOWN";
}

extern "C" const char* pyhpc_last_error_message(void) { return g_last_error.c_str(); }

extern "C" void pyhpc_clear_last_error(void) { g_last_error.clear(); }

namespace pyhpc {

const std::string& last_error() { return g_last_error; }

void clear_last_error() { g_last_error.clear(); }

pyhpc_status fail(pyhpc_status status, const char* file, int line, const char* fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  g_last_error = std::string(basename_of(file)) + ":" + std::to_string(line) + ": " + text;
  return status;
}

void trace(const char* file, int line) {
  g_last_error += " <- ";
  g_last_error += basename_of(file);
  g_last_error += ":" + std::to_string(line);
}

}  // namespace pyhpc
