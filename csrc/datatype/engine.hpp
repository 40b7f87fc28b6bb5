// Packing `count` elements of a canonicalised datatype from/to caller buffers
// of known length, with every argument checked first: the one entry point the
// Python bindings use (the interposer works from raw MPI pointers instead).
#pragma once

#include <cstdint>

#include "common/status.hpp"
#include "datatype/canonicalize.hpp"

namespace pyhpc::datatype {

// Layout of `count` consecutive elements (element i at i * extent).
pyhpc_status layout_for(const Canonical& type, int64_t count, Strided* out);

// PYHPC_ERR_INVALID_ARGUMENT naming `name` unless every byte the layout
// touches lies in [0, buf_len) of its buffer (shared by the host and GPU engines).
pyhpc_status check_span(const Strided& layout, int64_t buf_len, const char* name);

// Packs count elements read from buf[0, buf_len) into out[0, out_len).
pyhpc_status pack(const Canonical& type, int64_t count, const char* buf, int64_t buf_len,
                  char* out, int64_t out_len);
// Unpacks count elements from packed[0, packed_len) into buf[0, buf_len).
pyhpc_status unpack(const Canonical& type, int64_t count, const char* packed, int64_t packed_len,
                    char* buf, int64_t buf_len);

}  // namespace pyhpc::datatype
