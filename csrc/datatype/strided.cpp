#include "datatype/strided.hpp"

#include <sstream>

namespace pyhpc::datatype {

int64_t Strided::runs() const {
  int64_t n = 1;
  for (int d = 0; d < ndims; ++d) n *= count[d];
  return n;
}

int64_t Strided::size() const { return block * runs(); }

std::string Strided::describe() const {
  std::ostringstream os;
  os << "offset=" << offset << " block=" << block << " dims=[";
  for (int d = 0; d < ndims; ++d) os << (d ? ", " : "") << "(" << count[d] << ", " << stride[d] << ")";
  os << "]";
  return os.str();
}

namespace {
void erase_dim(Strided* s, int d) {
  for (int k = d; k + 1 < s->ndims; ++k) {
    s->count[k] = s->count[k + 1];
    s->stride[k] = s->stride[k + 1];
  }
  --s->ndims;
}
}  // namespace

void simplify(Strided* s) {
  // An empty type: nothing to visit, whatever the dimensions said.
  for (int d = 0; d < s->ndims; ++d) {
    if (s->count[d] == 0) s->block = 0;
  }
  if (s->block == 0) {
    s->ndims = 0;
    return;
  }
  for (int d = 0; d < s->ndims;) {  // a loop of one iteration is no loop
    if (s->count[d] == 1) erase_dim(s, d); else ++d;
  }
  bool changed = true;
  while (changed) {
    changed = false;
    // Innermost dimension whose runs touch end to end: one longer run.
    if (s->ndims > 0 && s->stride[s->ndims - 1] == s->block) {
      s->block *= s->count[s->ndims - 1];
      --s->ndims;
      changed = true;
      continue;
    }
    // (c0, s0) around (c1, s1) with s0 == c1 * s1 visits the same addresses in
    // the same order as one dimension (c0 * c1, s1).
    for (int d = 0; d + 1 < s->ndims; ++d) {
      if (s->stride[d] == s->count[d + 1] * s->stride[d + 1]) {
        s->count[d + 1] *= s->count[d];
        erase_dim(s, d);
        changed = true;
        break;
      }
    }
  }
}

bool repeat(const Strided& element, int64_t count, int64_t extent, Strided* out) {
  *out = element;
  if (count == 1) return true;
  if (element.ndims + 1 > kMaxDims) {
    // Simplifying first may make room.
    Strided t = element;
    simplify(&t);
    if (t.ndims + 1 > kMaxDims) return false;
    *out = t;
  }
  for (int d = out->ndims; d > 0; --d) {
    out->count[d] = out->count[d - 1];
    out->stride[d] = out->stride[d - 1];
  }
  out->count[0] = count;
  out->stride[0] = extent;
  ++out->ndims;
  simplify(out);
  return true;
}

}  // namespace pyhpc::datatype
