// String formatting for messages. g++ 12 (Debian 12) has no <format>, so the
// core uses {fmt}, whose syntax std::format adopted; switch when the
// toolchain has it.
#pragma once

#include <fmt/format.h>

namespace poisonfs {
template <class... Args>
inline std::string strfmt(fmt::format_string<Args...> f, Args&&... args) {
  return fmt::format(f, std::forward<Args>(args)...);
}
}  // namespace poisonfs
