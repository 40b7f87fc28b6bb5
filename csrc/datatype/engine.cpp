#include "datatype/engine.hpp"

#include <cinttypes>
#include <limits>

#include "datatype/pack_host.hpp"

namespace pyhpc::datatype {

pyhpc_status layout_for(const Canonical& type, int64_t count, Strided* out) {
  if (!type.supported)
    return PYHPC_FAIL(PYHPC_ERR_UNSUPPORTED, "datatype has no strided form: %s", type.why_not.c_str());
  if (count < 0) return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "count must be >= 0, got %" PRId64, count);
  if (type.size > 0 && count > std::numeric_limits<int64_t>::max() / type.size)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "count %" PRId64 " x %" PRId64 " bytes overflows",
                      count, type.size);
  if (count == 0) {
    *out = Strided{};
    return PYHPC_OK;
  }
  if (!repeat(type.layout, count, type.extent, out))
    return PYHPC_FAIL(PYHPC_ERR_UNSUPPORTED, "count %" PRId64 " needs more than %d dimensions",
                      count, kMaxDims);
  return PYHPC_OK;
}

pyhpc_status check_span(const Strided& s, int64_t buf_len, const char* name) {
  int64_t lo = 0, hi = 0;
  byte_span(s, &lo, &hi);
  if (lo < 0 || hi > buf_len)
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT,
                      "%s: the datatype touches bytes [%" PRId64 ", %" PRId64 ") but the buffer has %" PRId64,
                      name, lo, hi, buf_len);
  return PYHPC_OK;
}

pyhpc_status pack(const Canonical& type, int64_t count, const char* buf, int64_t buf_len,
                  char* out, int64_t out_len) {
  Strided s;
  PYHPC_CHECK(layout_for(type, count, &s));
  PYHPC_CHECK(check_span(s, buf_len, "buf"));
  if (out_len < s.size())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "out: %" PRId64 " bytes needed, buffer has %" PRId64,
                      s.size(), out_len);
  pack_host(s, buf, out);
  return PYHPC_OK;
}

pyhpc_status unpack(const Canonical& type, int64_t count, const char* packed, int64_t packed_len,
                    char* buf, int64_t buf_len) {
  Strided s;
  PYHPC_CHECK(layout_for(type, count, &s));
  PYHPC_CHECK(check_span(s, buf_len, "buf"));
  if (packed_len < s.size())
    return PYHPC_FAIL(PYHPC_ERR_INVALID_ARGUMENT, "packed: %" PRId64 " bytes needed, buffer has %" PRId64,
                      s.size(), packed_len);
  unpack_host(s, packed, buf);
  return PYHPC_OK;
}

}  // namespace pyhpc::datatype
