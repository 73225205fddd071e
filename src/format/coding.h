// Fixed little-endian encoding of integers into byte buffers: the only way
// records reach the media, so the format does not depend on the host.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace poisonfs {

template <class T>
inline void put_le(std::byte* dst, T value) {
  static_assert(std::is_integral_v<T>);
  if constexpr (std::endian::native == std::endian::big) value = std::byteswap(value);
  std::memcpy(dst, &value, sizeof value);
}

template <class T>
inline T get_le(const std::byte* src) {
  static_assert(std::is_integral_v<T>);
  T value;
  std::memcpy(&value, src, sizeof value);
  if constexpr (std::endian::native == std::endian::big) value = std::byteswap(value);
  return value;
}

}  // namespace poisonfs
