// Host pack/unpack of a canonical strided layout: the bytes the layout visits,
// in its order, to/from a contiguous buffer. Loops are specialised by the
// number of dimensions (0..3, then a general odometer) and by block size
// (1, 2, 4, 8, 16 bytes copied as one fixed-width word; else memcpy per run).
#pragma once

#include <cstdint>

#include "datatype/strided.hpp"

namespace pyhpc::datatype {

// `base` is the buffer the layout's offsets and strides are relative to;
// `packed` holds layout.size() bytes.
void pack_host(const Strided& layout, const char* base, char* packed);
void unpack_host(const Strided& layout, const char* packed, char* base);

// Unpacks only the first `nbytes` of the packed stream (a message shorter than
// the receive buffer): whole runs, then the head of the next one.
void unpack_host_prefix(const Strided& layout, const char* packed, int64_t nbytes, char* base);

// Lowest and one-past-highest byte offset (relative to base) the layout
// touches; both 0 for an empty layout. For bounds checks before packing.
void byte_span(const Strided& layout, int64_t* lo, int64_t* hi);

}  // namespace pyhpc::datatype
