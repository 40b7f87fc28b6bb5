// XXH64 (xxHash, 64-bit variant), written from the published specification
// (Yann Collet, "xxHash fast digest algorithm", doc/xxhash_spec.md, v0.1.x),
// and the tensor hash of pyhpc.ccl's shared-state sync built on it.
//
// Why XXH64 rather than XXH3-64: its specification is short (five primes, one
// round function, one avalanche), it has no size-dependent code paths or
// secret table, and its 32-byte stripes map onto a GPU thread as easily as
// onto a CPU core, so a CUDA version can be checked against this one.
//
// The tensor hash (version 1) of an array's raw bytes B (C order, native
// memory as is, nbytes long):
//
//   C   = 1 MiB (1,048,576 bytes); n_chunks = ceil(nbytes / C) (0 if empty)
//   d_k = XXH64(B[k*C, min((k+1)*C, nbytes)), seed 0)       for every chunk k
//   M   = u16 len(dtype) || dtype (ASCII, e.g. "<f4", "|u1", "bfloat16")
//         || u32 ndim || u64 shape[0..ndim) || u64 nbytes || u64 d_0 .. d_{n-1}
//         (integers little-endian)
//   H   = XXH64(M, seed 0)
//
// Chunks are independent (one GPU block per chunk, then one thread hashes M),
// so a device can compute the same H without gathering the array.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyhpc::ccl {

constexpr size_t kHashChunk = size_t(1) << 20;

uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0);

// The tensor hash above.
uint64_t tensor_hash(const void* data, uint64_t nbytes, const std::string& dtype,
                     const std::vector<uint64_t>& shape);
// H from the chunk digests (the receiver hashes chunks as they arrive).
uint64_t tensor_hash_from_chunks(const std::vector<uint64_t>& chunk_digests, uint64_t nbytes,
                                 const std::string& dtype, const std::vector<uint64_t>& shape);

}  // namespace pyhpc::ccl
