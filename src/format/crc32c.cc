// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every
// on-media record and of data blocks. On x86-64 CPUs with SSE4.2 the crc32
// instruction does the work eight bytes at a time, in three interleaved
// streams for longer inputs; elsewhere a byte-wise table gives the same
// values. The choice is made once per process.
#include "format/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#endif

namespace poisonfs {
namespace {

constexpr uint32_t kPolynomial = 0x82F63B78;  // 0x1EDC6F41 bit-reversed

// table[b] is the CRC register after shifting byte b through it; built at
// compile time so the fallback needs no initialisation.
constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t r = b;
    for (int k = 0; k < 8; ++k) r = (r >> 1) ^ ((r & 1) ? kPolynomial : 0);
    table[b] = r;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

// Works on the raw register (already inverted by the caller).
uint32_t crc32c_software(uint32_t reg, const unsigned char* p, size_t len) {
  while (len--) reg = kTable[(reg ^ *p++) & 0xFF] ^ (reg >> 8);
  return reg;
}

#if defined(__x86_64__)
// Compiled for SSE4.2 on its own so the rest of the binary keeps the baseline
// ISA; only called after the CPU check below.
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42_serial(uint32_t reg, const unsigned char* p,
                                                                size_t len) {
  uint64_t r = reg;
  while (len >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // unaligned load; x86 does not care
    r = _mm_crc32_u64(r, word);
    p += 8;
    len -= 8;
  }
  uint32_t r32 = static_cast<uint32_t>(r);
  while (len--) r32 = _mm_crc32_u8(r32, *p++);
  return r32;
}

// The register after `stride` zero bytes, as a table per register byte: the
// map is linear (the register of A then B is that of A shifted over |B| zero
// bytes, xor the register of B from 0), so 32 basis images give all.
template <size_t kStride>
struct ZeroShift {
  std::array<std::array<uint32_t, 256>, 4> table;

  ZeroShift() {
    static constexpr unsigned char kZeros[kStride] = {};
    uint32_t basis[32];
    for (int bit = 0; bit < 32; ++bit) basis[bit] = crc32c_sse42_serial(1u << bit, kZeros, kStride);
    for (int k = 0; k < 4; ++k)
      for (uint32_t b = 0; b < 256; ++b) {
        uint32_t image = 0;
        for (int i = 0; i < 8; ++i)
          if (b & (1u << i)) image ^= basis[8 * k + i];
        table[k][b] = image;
      }
  }
  uint32_t operator()(uint32_t reg) const {
    return table[0][reg & 0xFF] ^ table[1][(reg >> 8) & 0xFF] ^ table[2][(reg >> 16) & 0xFF] ^ table[3][reg >> 24];
  }
};

// Three streams of kStride bytes at once while `len` holds three: the crc32
// instruction takes three cycles but a new one can start every cycle, so one
// stream leaves two thirds of the unit idle. The streams' registers are
// joined by shifting over the bytes after them.
template <size_t kStride>
__attribute__((target("sse4.2"))) uint32_t crc32c_three_streams(uint32_t reg, const unsigned char*& p,
                                                                size_t& len) {
  static_assert(kStride % 8 == 0);
  static const ZeroShift<kStride> shift;
  while (len >= 3 * kStride) {
    uint64_t r0 = reg, r1 = 0, r2 = 0;
    for (size_t i = 0; i < kStride; i += 8) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p + i, 8);
      std::memcpy(&w1, p + kStride + i, 8);
      std::memcpy(&w2, p + 2 * kStride + i, 8);
      r0 = _mm_crc32_u64(r0, w0);
      r1 = _mm_crc32_u64(r1, w1);
      r2 = _mm_crc32_u64(r2, w2);
    }
    reg = shift(shift(static_cast<uint32_t>(r0)) ^ static_cast<uint32_t>(r1)) ^ static_cast<uint32_t>(r2);
    p += 3 * kStride;
    len -= 3 * kStride;
  }
  return reg;
}

// A 4 KiB block is one long round (3 x 1360 bytes) and 16 bytes; shorter
// records of 384 bytes and more take short rounds.
constexpr size_t kLongStride = 1360;
constexpr size_t kShortStride = 128;

uint32_t crc32c_sse42(uint32_t reg, const unsigned char* p, size_t len) {
  if (len >= 3 * kLongStride) reg = crc32c_three_streams<kLongStride>(reg, p, len);
  if (len >= 3 * kShortStride) reg = crc32c_three_streams<kShortStride>(reg, p, len);
  return crc32c_sse42_serial(reg, p, len);
}

// One CPUID leaf, asked on first use. Not __builtin_cpu_supports: that links
// libgcc's CPU model constructor into every binary, which probes dozens of
// CPUID leaves at each process start (each a trap to the hypervisor in a
// VM: 0.25 ms of every poisonctl call on a 2-vCPU guest).
bool cpu_has_sse42() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_SSE4_2) != 0;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t len, uint32_t crc) {
  // The register is kept inverted (initial value and final xor ~0), so a
  // finished crc passed back in continues the same computation.
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t reg = ~crc;
#if defined(__x86_64__)
  static const bool kHardware = cpu_has_sse42();
  reg = kHardware ? crc32c_sse42(reg, p, len) : crc32c_software(reg, p, len);
#else
  reg = crc32c_software(reg, p, len);
#endif
  return ~reg;
}

}  // namespace poisonfs
