// The poison operations every media shares: injection destroys the data in
// the range (through write(), so a recording media sees it), clearing leaves
// zeros; both persist before they return.
#include <algorithm>
#include <cstring>
#include <vector>

#include "poisonfs/media.h"
#include "util/strfmt.h"

namespace poisonfs {

Result<PoisonRange> Media::inject_poison(uint64_t off, uint64_t len, bool latent) {
  if (len == 0) return fail(std::errc::invalid_argument, "poison length must not be zero");
  if (off >= size() || len > size() - off)
    return fail(std::errc::invalid_argument,
                strfmt("range {}+{} lies outside the device ({} bytes)", off, len, size()));
  PoisonRange r = poison().add(off, len, latent);
  r.length = std::min<uint64_t>(r.length, size() - r.offset);
  std::vector<char> pattern(r.length);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = kPoisonPattern[(r.offset + i) % sizeof kPoisonPattern];
  write(r.offset, pattern.data(), pattern.size());
  persist(r.offset, r.length);
  return r;
}

std::vector<PoisonRange> Media::clear_poison(uint64_t off, uint64_t len) {
  std::vector<PoisonRange> cleared = poison().clear(off, len);
  for (const PoisonRange& r : cleared) {
    uint64_t n = std::min<uint64_t>(r.length, size() - std::min(size(), r.offset));
    zero(r.offset, n);
    flush(r.offset, n);
  }
  if (!cleared.empty()) drain();
  return cleared;
}

}  // namespace poisonfs
