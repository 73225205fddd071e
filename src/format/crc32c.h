// CRC-32C (Castagnoli), the checksum of every on-media record and of data
// blocks. Uses the SSE4.2 crc32 instruction when the CPU has it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace poisonfs {

// Extends crc (0 to start) over [data, data+len). crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t len, uint32_t crc = 0);

}  // namespace poisonfs
