// Host pack/unpack of a canonical strided layout: the bytes the layout visits,
// in its order, to/from a contiguous buffer. Loops are specialised by the
// number of dimensions (0..3, then a general odometer) and by block size
// (1, 2, 4, 8, 16 bytes copied as one fixed-width word; else memcpy per run).
// Where the CPU has AVX-512 VBMI (checked at run time): short runs close
// together (block <= stride, block + stride <= 64 bytes, block not 8 or 16)
// move many per byte permute, and other runs under 4 KiB are copied with
// inline 64-byte vector moves. The bytes are the same either way.
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

// The vector path the small-run loops use: "avx512-vbmi", or "scalar" where the
// CPU lacks it or it is turned off.
const char* host_simd();
// Whether packing `layout` takes the vector path (short runs close together,
// on a CPU that has it, not turned off).
bool host_vector_path(const Strided& layout);
// Turns the vector path off (false) or back on where the CPU has it; returns
// the previous setting. For tests and benchmarks comparing the two paths.
bool set_host_simd(bool enabled);

// Lowest and one-past-highest byte offset (relative to base) the layout
// touches; both 0 for an empty layout. For bounds checks before packing.
void byte_span(const Strided& layout, int64_t* lo, int64_t* hi);

}  // namespace pyhpc::datatype
