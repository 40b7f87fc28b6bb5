// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), self-contained so the TCP
// collectives need no OpenSSL. Used for the master's challenge-response auth.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pyhpc::ccl {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  Digest finish();  // the object is spent afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

Digest sha256(const void* data, size_t n);

// HMAC-SHA256(key, part1 || part2 || ...): the message is given in pieces so a
// caller need not concatenate nonces first.
struct Piece {
  const void* data;
  size_t size;
};
Digest hmac_sha256(const void* key, size_t key_len, const Piece* pieces, size_t n_pieces);
Digest hmac_sha256(const std::string& key, const std::string& message);

// Compares two equal-length byte strings in time independent of their content.
bool equal_constant_time(const uint8_t* a, const uint8_t* b, size_t n);

}  // namespace pyhpc::ccl
