// GPU pack/unpack of a canonical strided layout: the bytes the layout visits,
// in its order (the order pack_host and MPI_Pack use), to/from a contiguous
// buffer, by CUDA kernels launched on a caller's stream. Compiled only with
// CUDA. No Python here.
//
// Kernels are chosen by the number of dimensions (1, 2, 3, then a generic
// index decomposition up to kMaxDims) and by the widest word (16, 8, 4, 2 or 1
// bytes) that divides the block and every address involved: the first byte,
// each stride and the packed buffer. One thread copies one word, in a
// grid-stride loop, so a 12-byte block at 4-byte-aligned addresses is three
// threads of one 4-byte word each. A layout of one run (no dimensions) is a
// cudaMemcpyAsync.
//
// Nothing here synchronises: the copy is only enqueued on `stream`, and the
// caller must synchronise it (or order later work after it) before reading the
// destination or reusing the source.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.hpp"
#include "datatype/canonicalize.hpp"
#include "datatype/strided.hpp"

namespace pyhpc::datatype {

// Raw entry points: `base` is the address the layout's offset and strides are
// relative to, `packed` holds layout.size() bytes. Both must be addresses the
// current device can dereference (its own memory, managed memory, or the device
// address of mapped pinned host memory) and the layout must stay inside the
// memory behind `base`: nothing is bounds-checked here (see below). Unpacking
// a layout that visits a byte twice leaves that byte undefined (MPI forbids
// such receive types; the host engine keeps the last write, threads race).
pyhpc_status pack_device(const Strided& layout, const void* base, void* packed, cudaStream_t stream);
pyhpc_status unpack_device(const Strided& layout, const void* packed, void* base, cudaStream_t stream);

// `count` elements of a canonicalised datatype, checked like the host engine
// (datatype::pack/unpack in engine.hpp): the layout must stay within
// buf[0, buf_len) and the packed side must hold count * type.size bytes, else
// PYHPC_ERR_INVALID_ARGUMENT naming the argument ("buf", "out", "packed").
// When there are bytes to copy, each pointer must be device memory of the
// current device, managed memory, or pinned host memory mapped into the
// device's address space; pageable host memory is refused (the kernels cannot
// read it). Enqueued on `stream`, not synchronised.
pyhpc_status pack_device(const Canonical& type, int64_t count, const void* buf, int64_t buf_len,
                         void* out, int64_t out_len, cudaStream_t stream);
pyhpc_status unpack_device(const Canonical& type, int64_t count, const void* packed,
                           int64_t packed_len, void* buf, int64_t buf_len, cudaStream_t stream);

}  // namespace pyhpc::datatype
