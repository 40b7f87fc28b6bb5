// The canonical strided form of an MPI datatype (after TEMPI, Pearson et al. 2021):
// the bytes of one element are `block`-byte contiguous runs, laid out by up to
// kMaxDims nested loops of (count, byte stride) starting at byte `offset`.
//
//   for i0 < count[0]: for i1 < count[1]: ...  copy `block` bytes from
//       buf + offset + i0*stride[0] + i1*stride[1] + ...
//
// Dimensions are kept OUTERMOST FIRST, in type-map order: packing walks them in
// exactly the order MPI_Pack does, so the packed bytes are identical. Dimensions
// are never sorted by stride (TEMPI does, and can pack in the wrong order).
#pragma once

#include <cstdint>
#include <string>

namespace pyhpc::datatype {

constexpr int kMaxDims = 8;

struct Strided {
  int64_t offset = 0;  // byte displacement of the first byte (may be negative)
  int64_t block = 0;   // contiguous bytes per innermost run; 0 for an empty type
  int ndims = 0;
  int64_t count[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};  // bytes; may be negative or zero

  // Bytes of data one element holds: block * prod(count).
  int64_t size() const;
  // Number of block-sized runs: prod(count).
  int64_t runs() const;
  std::string describe() const;
};

// Simplifies in place, never changing the order in which bytes are visited:
// drops dimensions of count 1, folds dimensions whose stride equals the block
// into the block, merges an outer dimension into the inner one when the outer
// stride equals the inner dimension's whole span (count * stride).
void simplify(Strided* s);

// The layout of `count` consecutive elements `extent` bytes apart: one more
// outer dimension, then simplified. Returns false if it would exceed kMaxDims.
bool repeat(const Strided& element, int64_t count, int64_t extent, Strided* out);

}  // namespace pyhpc::datatype
