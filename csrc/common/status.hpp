// One status enum for every C/C++ core and the interposer. Cores return a
// pyhpc_status and never throw; the Python binding converts a failure once into
// the matching pyhpc.Error subclass. PYHPC_CHECK records where a failure passed
// through so the message names the file:line it came from.
#pragma once

#include <cstdarg>
#include <cstdio>
#include <string>

extern "C" {

// Keep in sync with pyhpc/errors.py (tests/test_errors.py checks the mapping).
typedef enum pyhpc_status {
  PYHPC_OK = 0,
  PYHPC_ERR_INVALID_ARGUMENT = 1,  // caller passed something wrong
  PYHPC_ERR_UNSUPPORTED = 2,       // valid, but not handled by pyhpc
  PYHPC_ERR_MPI = 3,               // an MPI call failed
  PYHPC_ERR_CUDA = 4,              // a CUDA call failed
  PYHPC_ERR_TIMEOUT = 5,           // a deadline passed
  PYHPC_ERR_PEER = 6,              // a peer died, froze or left
  PYHPC_ERR_PROTOCOL = 7,          // a malformed or unexpected message
  PYHPC_ERR_AUTH = 8,              // a peer failed authentication
  PYHPC_ERR_NO_MEMORY = 9,         // an allocation failed
  PYHPC_ERR_MPI_MISMATCH = 10,     // built against one MPI, running another
  PYHPC_ERR_INTERNAL = 11,         // a bug in pyhpc
} pyhpc_status;

const char* pyhpc_status_name(pyhpc_status s);

// C view of pyhpc::last_error() for C and Cython callers.
const char* pyhpc_last_error_message(void);
void pyhpc_clear_last_error(void);

}  // extern "C"

namespace pyhpc {

// The message of the most recent failure on this thread ("file:line: text").
const std::string& last_error();
void clear_last_error();

// Records msg (printf-style) with its origin and returns status, so a core can
// write `return fail(PYHPC_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "...")`.
pyhpc_status fail(pyhpc_status status, const char* file, int line, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

// Appends " <- file:line" to the current message: the trail a failure took.
void trace(const char* file, int line);

}  // namespace pyhpc

#define PYHPC_FAIL(status, ...) ::pyhpc::fail((status), __FILE__, __LINE__, __VA_ARGS__)

// Propagate a failed status upward, recording that it passed through here.
#define PYHPC_CHECK(expr)                          \
  do {                                             \
    pyhpc_status pyhpc_check_s_ = (expr);          \
    if (pyhpc_check_s_ != PYHPC_OK) {              \
      ::pyhpc::trace(__FILE__, __LINE__);          \
      return pyhpc_check_s_;                       \
    }                                              \
  } while (0)
