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

// Zeroes first, then drops the units from the record: a crash in between
// leaves them poisoned (and zero), never the pattern under a range the
// record calls clean.
std::vector<PoisonRange> Media::clear_poison(uint64_t off, uint64_t len) {
  const uint64_t end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
  const uint64_t lo = off % kPoisonUnit ? off - off % kPoisonUnit + kPoisonUnit : off;
  const uint64_t hi = end - end % kPoisonUnit;
  if (off > UINT64_MAX - (kPoisonUnit - 1) || lo >= hi) return {};
  bool zeroed = false;
  for (const PoisonRange& r : poison().overlapping(lo, hi - lo)) {
    uint64_t n = std::min<uint64_t>(r.length, size() - std::min(size(), r.offset));
    if (n == 0) continue;
    zero(r.offset, n);
    flush(r.offset, n);
    zeroed = true;
  }
  if (zeroed) drain();
  return poison().clear(off, len);
}

namespace {

class BorrowedMedia final : public Media {
 public:
  explicit BorrowedMedia(Media& m) : m_(m) {}
  uint64_t size() const override { return m_.size(); }
  const std::byte* base() const override { return m_.base(); }
  bool read_only() const override { return m_.read_only(); }
  bool byte_granular() const override { return m_.byte_granular(); }
  void write(uint64_t off, const void* src, size_t len) override { m_.write(off, src, len); }
  void zero(uint64_t off, size_t len) override { m_.zero(off, len); }
  void flush(uint64_t off, size_t len) override { m_.flush(off, len); }
  void drain() override { m_.drain(); }
  PoisonList& poison() override { return m_.poison(); }

 private:
  Media& m_;
};

}  // namespace

std::unique_ptr<Media> borrow_media(Media& media) { return std::make_unique<BorrowedMedia>(media); }

}  // namespace poisonfs
