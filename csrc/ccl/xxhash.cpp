#include "ccl/xxhash.hpp"

#include <cstring>

namespace pyhpc::ccl {
namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t read64(const uint8_t* p) {  // little-endian, any alignment
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

inline uint32_t read32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

inline uint64_t round(uint64_t acc, uint64_t lane) {
  acc += lane * kP2;
  acc = rotl(acc, 31);
  return acc * kP1;
}

inline uint64_t merge(uint64_t acc, uint64_t v) {
  acc ^= round(0, v);
  return acc * kP1 + kP4;
}

void put_le(std::vector<uint8_t>* out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out->push_back(uint8_t(v >> (8 * i)));
}

}  // namespace

uint64_t xxh64(const void* data, size_t n, uint64_t seed) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const uint8_t* end = p + n;
  uint64_t acc;
  if (n >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    const uint8_t* limit = end - 32;
    do {  // one stripe: four 8-byte lanes
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
      p += 32;
    } while (p <= limit);
    acc = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    acc = merge(acc, v1);
    acc = merge(acc, v2);
    acc = merge(acc, v3);
    acc = merge(acc, v4);
  } else {
    acc = seed + kP5;
  }
  acc += uint64_t(n);
  for (; end - p >= 8; p += 8) acc = rotl(acc ^ round(0, read64(p)), 27) * kP1 + kP4;
  if (end - p >= 4) {
    acc = rotl(acc ^ (uint64_t(read32(p)) * kP1), 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) acc = rotl(acc ^ (uint64_t(*p) * kP5), 11) * kP1;
  acc ^= acc >> 33;
  acc *= kP2;
  acc ^= acc >> 29;
  acc *= kP3;
  acc ^= acc >> 32;
  return acc;
}

uint64_t tensor_hash_from_chunks(const std::vector<uint64_t>& chunk_digests, uint64_t nbytes,
                                 const std::string& dtype, const std::vector<uint64_t>& shape) {
  std::vector<uint8_t> m;
  m.reserve(2 + dtype.size() + 4 + 8 * (shape.size() + 1 + chunk_digests.size()));
  put_le(&m, dtype.size(), 2);
  m.insert(m.end(), dtype.begin(), dtype.end());
  put_le(&m, shape.size(), 4);
  for (uint64_t s : shape) put_le(&m, s, 8);
  put_le(&m, nbytes, 8);
  for (uint64_t d : chunk_digests) put_le(&m, d, 8);
  return xxh64(m.data(), m.size(), 0);
}

uint64_t tensor_hash(const void* data, uint64_t nbytes, const std::string& dtype,
                     const std::vector<uint64_t>& shape) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  std::vector<uint64_t> digests;
  digests.reserve(size_t((nbytes + kHashChunk - 1) / kHashChunk));
  for (uint64_t off = 0; off < nbytes; off += kHashChunk) {
    uint64_t len = nbytes - off < kHashChunk ? nbytes - off : kHashChunk;
    digests.push_back(xxh64(p + off, size_t(len), 0));
  }
  return tensor_hash_from_chunks(digests, nbytes, dtype, shape);
}

}  // namespace pyhpc::ccl
