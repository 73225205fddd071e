// Tests of crc32c: the standard check values, chaining, and agreement with a
// bit-at-a-time reference on random buffers. The reference is written here
// from the definition, so whichever path the library picked on this CPU
// (SSE4.2 or table) is checked against something independent of it.
#include "format/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace poisonfs {
namespace {

// Reflected CRC-32C one bit at a time: slow, but too simple to be wrong.
uint32_t reference_crc32c(const void* data, size_t len, uint32_t crc = 0) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t reg = ~crc;
  for (size_t i = 0; i < len; ++i) {
    reg ^= p[i];
    for (int k = 0; k < 8; ++k) reg = (reg >> 1) ^ ((reg & 1) ? 0x82F63B78u : 0u);
  }
  return ~reg;
}

TEST(Crc32c, StandardCheckValue) {
  const char* s = "123456789";
  EXPECT_EQ(crc32c(s, std::strlen(s)), 0xE3069283u);
  EXPECT_EQ(reference_crc32c(s, std::strlen(s)), 0xE3069283u);
}

// The iSCSI test vectors of RFC 3720, appendix B.4.
TEST(Crc32c, Rfc3720Vectors) {
  unsigned char buf[32];
  std::memset(buf, 0x00, sizeof buf);
  EXPECT_EQ(crc32c(buf, sizeof buf), 0x8A9136AAu);
  std::memset(buf, 0xFF, sizeof buf);
  EXPECT_EQ(crc32c(buf, sizeof buf), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(crc32c(buf, sizeof buf), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) buf[i] = static_cast<unsigned char>(31 - i);
  EXPECT_EQ(crc32c(buf, sizeof buf), 0x113FDB5Cu);
}

TEST(Crc32c, EmptyInputLeavesCrcUnchanged) {
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
  EXPECT_EQ(crc32c(nullptr, 0, 0xDEADBEEF), 0xDEADBEEFu);
}

TEST(Crc32c, ChainingEqualsOneShot) {
  const std::string s = "The quick brown fox jumps over the lazy dog, twice over.";
  const uint32_t whole = crc32c(s.data(), s.size());
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    uint32_t first = crc32c(s.data(), cut);
    EXPECT_EQ(crc32c(s.data() + cut, s.size() - cut, first), whole) << "cut at " << cut;
  }
}

// Random lengths cover the 8-byte main loop, the byte tail, and every
// misalignment of the start; random seeds cover chaining from any value.
TEST(Crc32c, MatchesBitwiseReferenceOnRandomBuffers) {
  std::mt19937_64 rng(20240611);
  std::vector<unsigned char> buf(16384 + 16);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (int i = 0; i < 1200; ++i) {
    size_t len = rng() % (i < 1000 ? 64 : 16384);
    size_t start = rng() % 16;
    uint32_t seed = (i % 2) ? static_cast<uint32_t>(rng()) : 0;
    ASSERT_EQ(crc32c(buf.data() + start, len, seed),
              reference_crc32c(buf.data() + start, len, seed))
        << "len " << len << " start " << start << " seed " << seed;
  }
}

// Inputs of 384 bytes and more are summed in three interleaved streams
// (rounds of 3 x 128 and 3 x 1360 bytes) joined by a shift table: every
// length up to past two long rounds, so each split into rounds and tail is
// met, from starts misaligned by 0 to 15 bytes and from chained registers.
TEST(Crc32c, MatchesBitwiseReferenceAcrossStreamRounds) {
  std::mt19937_64 rng(20261122);
  std::vector<unsigned char> buf(2 * 3 * 1360 + 3 * 128 + 64);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t len = 0; len + 16 <= buf.size(); ++len) {
    size_t start = len % 16;
    uint32_t seed = (len % 3 == 0) ? 0 : static_cast<uint32_t>(rng());
    ASSERT_EQ(crc32c(buf.data() + start, len, seed), reference_crc32c(buf.data() + start, len, seed))
        << "len " << len << " start " << start << " seed " << seed;
  }
  // A block of zeros and one of ones: shift tables that were wrong for a
  // register of all ones or all zeros would pass random data more often.
  std::vector<unsigned char> zeros(4096, 0), ones(4096, 0xFF);
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), reference_crc32c(zeros.data(), zeros.size()));
  EXPECT_EQ(crc32c(ones.data(), ones.size(), 0xFFFFFFFF), reference_crc32c(ones.data(), ones.size(), 0xFFFFFFFF));
}

}  // namespace
}  // namespace poisonfs
