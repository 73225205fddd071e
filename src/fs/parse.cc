// Sizes typed by users ("64M", "1G", "4096") and sizes shown to them.
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include "util/strfmt.h"

#include "poisonfs/filesystem.h"

namespace poisonfs {

Result<uint64_t> parse_size(std::string_view text) {
  auto bad = [&] {
    return fail(std::errc::invalid_argument,
                strfmt("invalid size '{}': use a byte count or a number with K, M, G or T", text));
  };
  if (text.empty() || text[0] < '0' || text[0] > '9') return bad();
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc()) return bad();
  std::string_view suffix(end, text.data() + text.size() - end);
  if (suffix.size() == 2 && (suffix[1] == 'B' || suffix[1] == 'b' || suffix[1] == 'i')) suffix.remove_suffix(1);
  if (suffix.size() > 1) return bad();
  unsigned shift = 0;
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      default: return bad();
    }
  }
  if (shift && value > (UINT64_MAX >> shift)) return bad();
  return value << shift;
}

std::string human_bytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " B", bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

}  // namespace poisonfs
