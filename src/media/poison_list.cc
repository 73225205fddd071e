// The device's poison list (see include/poisonfs/poison.h): disjoint ranges
// in a map keyed by start; neighbours of the same kind merge.
#include <algorithm>
#include <array>
#include <mutex>

#include "poisonfs/poison.h"

namespace poisonfs {
namespace {

uint64_t round_down(uint64_t v) { return v / kPoisonUnit * kPoisonUnit; }
uint64_t round_up(uint64_t v) { return (v + kPoisonUnit - 1) / kPoisonUnit * kPoisonUnit; }

}  // namespace


void PoisonList::set_extent(uint64_t device_bytes) {
  constexpr size_t kMaxRegions = size_t{32} << 13;  // 32 KiB of bits
  region_shift_ = 12;
  while ((device_bytes >> region_shift_) >= kMaxRegions) ++region_shift_;
  summary_regions_ = static_cast<size_t>((device_bytes + (uint64_t{1} << region_shift_) - 1) >> region_shift_);
  summary_ = std::make_unique<std::atomic<uint64_t>[]>((summary_regions_ + 63) / 64);
  std::unique_lock lock(mutex_);
  resummarize_locked();
}

bool PoisonList::maybe_poisoned(uint64_t off, uint64_t end) const {
  if (!summary_) return true;
  const uint64_t first = off >> region_shift_, last = (end - 1) >> region_shift_;
  if (last >= summary_regions_) return true;  // past the device: search
  for (uint64_t r = first; r <= last;) {
    uint64_t word = summary_[r / 64].load(std::memory_order_relaxed) >> (r % 64);
    const uint64_t bits = std::min<uint64_t>(64 - r % 64, last - r + 1);
    if (bits < 64) word &= (uint64_t{1} << bits) - 1;
    if (word) return true;
    r += bits;
  }
  return false;
}

void PoisonList::summarize_locked(uint64_t off, uint64_t end) {
  if (!summary_ || off >= end) return;
  const uint64_t region = uint64_t{1} << region_shift_;
  const uint64_t first = off >> region_shift_;
  const uint64_t last = std::min<uint64_t>((end - 1) >> region_shift_, summary_regions_ - 1);
  if (first > last) return;
  if (last - first > 4096) {
    resummarize_locked();  // one pass over the list beats a search per region
    return;
  }
  for (uint64_t r = first; r <= last; ++r) {
    // The region holds poison if a range starts in it or runs into it.
    const uint64_t lo = r * region, hi = lo + region;
    auto it = ranges_.lower_bound(lo);
    bool poisoned = it != ranges_.end() && it->first < hi;
    if (!poisoned && it != ranges_.begin()) poisoned = std::prev(it)->second.end > lo;
    const uint64_t bit = uint64_t{1} << (r % 64);
    if (poisoned) summary_[r / 64].fetch_or(bit, std::memory_order_relaxed);
    else summary_[r / 64].fetch_and(~bit, std::memory_order_relaxed);
  }
}

void PoisonList::resummarize_locked() {
  if (!summary_) return;
  for (size_t w = 0; w < (summary_regions_ + 63) / 64; ++w) summary_[w].store(0, std::memory_order_relaxed);
  for (const auto& [start, e] : ranges_) {
    const uint64_t first = start >> region_shift_;
    if (first >= summary_regions_) break;
    const uint64_t last = std::min<uint64_t>((e.end - 1) >> region_shift_, summary_regions_ - 1);
    for (uint64_t r = first; r <= last; ++r)
      summary_[r / 64].fetch_or(uint64_t{1} << (r % 64), std::memory_order_relaxed);
  }
}

void PoisonList::insert_locked(uint64_t off, uint64_t end, bool latent) {
  // Split ranges that straddle the edges, then replace the inside.
  auto split = [&](uint64_t at) {
    auto it = ranges_.upper_bound(at);
    if (it == ranges_.begin()) return;
    --it;
    if (it->first < at && at < it->second.end) {
      ranges_[at] = Entry{it->second.end, it->second.latent};
      it->second.end = at;
    }
  };
  split(off);
  split(end);
  // Inside [off, end): existing known ranges stay known; gaps and latent
  // ranges take the new kind (known wins).
  uint64_t cur = off;
  std::vector<std::pair<uint64_t, Entry>> fresh;
  for (auto it = ranges_.lower_bound(off); it != ranges_.end() && it->first < end;) {
    if (it->first > cur) fresh.push_back({cur, Entry{it->first, latent}});
    bool keep_known = !it->second.latent;
    fresh.push_back({it->first, Entry{it->second.end, keep_known ? false : latent}});
    cur = it->second.end;
    it = ranges_.erase(it);
  }
  if (cur < end) fresh.push_back({cur, Entry{end, latent}});
  for (auto& [start, e] : fresh) ranges_[start] = e;
  merge_locked(off, end);
}

// Merges adjacent ranges of the same kind around [lo, hi].
void PoisonList::merge_locked(uint64_t lo, uint64_t hi) {
  auto it = ranges_.upper_bound(lo);
  for (int back = 0; back < 2 && it != ranges_.begin(); ++back) --it;
  while (it != ranges_.end() && it->first <= hi) {
    auto next = std::next(it);
    if (next != ranges_.end() && it->second.end == next->first && it->second.latent == next->second.latent) {
      it->second.end = next->second.end;
      ranges_.erase(next);
      continue;
    }
    it = next;
  }
  count_.store(ranges_.size(), std::memory_order_release);
}

// REQUIRES: change_mutex_ held (since before the change), mutex_ not.
void PoisonList::changed(PoisonChange::Kind kind, std::span<const PoisonRange> ranges) {
  if (on_change_) on_change_(PoisonChange{kind, ranges});
}

void PoisonList::set_persist_error(std::string message) {
  std::lock_guard lock(persist_error_mutex_);
  persist_error_ = std::move(message);
  persist_failures_.fetch_add(1, std::memory_order_acq_rel);
}

std::string PoisonList::last_persist_error() const {
  std::lock_guard lock(persist_error_mutex_);
  return persist_error_;
}

PoisonRange PoisonList::add(uint64_t off, uint64_t len, bool latent) {
  PoisonRange r{round_down(off), round_up(off + len) - round_down(off), latent};
  std::lock_guard changing(change_mutex_);
  {
    std::unique_lock lock(mutex_);
    insert_locked(r.offset, r.end(), latent);
    summarize_locked(r.offset, r.end());
    // Published again after the summary: a reader that sees the new count
    // sees the new bits.
    count_.store(ranges_.size(), std::memory_order_release);
  }
  changed(PoisonChange::Kind::kAdded, std::span(&r, 1));
  return r;
}

// Removes the whole units inside [off, off+len) (clipped to the address
// space) and appends what it removed. REQUIRES: mutex_ held.
void PoisonList::clear_locked(uint64_t off, uint64_t len, std::vector<PoisonRange>& removed) {
  // An end past the address space is clipped to it, and a start in the
  // last partial unit has no whole unit after it (round_up would wrap).
  const uint64_t end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
  if (off > UINT64_MAX - (kPoisonUnit - 1) && off % kPoisonUnit) return;
  uint64_t lo = round_up(off), hi = round_down(end);
  if (lo >= hi) return;
  auto it = ranges_.upper_bound(lo);
  if (it != ranges_.begin()) --it;
  while (it != ranges_.end() && it->first < hi) {
    uint64_t s = it->first, e = it->second.end;
    bool latent = it->second.latent;
    if (e <= lo) {
      ++it;
      continue;
    }
    it = ranges_.erase(it);
    if (s < lo) ranges_[s] = Entry{lo, latent};
    if (e > hi) ranges_[hi] = Entry{e, latent};
    removed.push_back({std::max(s, lo), std::min(e, hi) - std::max(s, lo), latent});
    if (e > hi) break;
  }
  count_.store(ranges_.size(), std::memory_order_release);
}

std::vector<PoisonRange> PoisonList::clear(uint64_t off, uint64_t len) {
  return clear_all(std::span<const PoisonRange>(std::array{PoisonRange{off, len, false}}));
}

std::vector<PoisonRange> PoisonList::clear_all(std::span<const PoisonRange> ranges) {
  std::vector<PoisonRange> removed;
  std::lock_guard changing(change_mutex_);
  {
    std::unique_lock lock(mutex_);
    for (const PoisonRange& r : ranges) clear_locked(r.offset, r.length, removed);
    for (const PoisonRange& r : removed) summarize_locked(r.offset, r.end());
  }
  if (!removed.empty()) changed(PoisonChange::Kind::kRemoved, removed);  // one save of the record for them all
  return removed;
}

std::vector<PoisonRange> PoisonList::overlapping(uint64_t off, uint64_t len) const {
  std::vector<PoisonRange> out;
  append_overlapping(off, len, out);
  return out;
}

void PoisonList::append_overlapping(uint64_t off, uint64_t len, std::vector<PoisonRange>& out) const {
  if (empty() || len == 0) return;
  uint64_t end = off + len < off ? UINT64_MAX : off + len;
  if (!maybe_poisoned(off, end)) return;
  std::shared_lock lock(mutex_);
  auto it = ranges_.upper_bound(off);
  if (it != ranges_.begin()) --it;
  for (; it != ranges_.end() && it->first < end; ++it) {
    if (it->second.end <= off) continue;
    uint64_t s = std::max(off, it->first), e = std::min(end, it->second.end);
    out.push_back({s, e - s, it->second.latent});
  }
}

// On hot paths (reads, checksum checks): no allocation, one lookup.
std::optional<PoisonRange> PoisonList::first(uint64_t off, uint64_t len) const {
  if (empty() || len == 0) return std::nullopt;
  const uint64_t end = off + len < off ? UINT64_MAX : off + len;
  if (!maybe_poisoned(off, end)) return std::nullopt;
  std::shared_lock lock(mutex_);
  auto it = ranges_.upper_bound(off);
  if (it != ranges_.begin() && std::prev(it)->second.end > off) --it;
  if (it == ranges_.end() || it->first >= end) return std::nullopt;
  const uint64_t s = std::max(off, it->first), e = std::min(end, it->second.end);
  return PoisonRange{s, e - s, it->second.latent};
}

std::vector<PoisonRange> PoisonList::make_known(uint64_t off, uint64_t len) {
  std::vector<PoisonRange> found;
  if (empty() || len == 0) return found;
  const uint64_t end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
  std::lock_guard changing(change_mutex_);
  {
    // Found and marked under one lock: two readers consuming the same
    // latent range race here, and only one of them may report it.
    std::unique_lock lock(mutex_);
    auto it = ranges_.upper_bound(off);
    if (it != ranges_.begin()) --it;
    // Whole latent ranges become known: the read found the DIMM's record.
    for (; it != ranges_.end() && it->first < end; ++it) {
      if (it->second.end <= off || !it->second.latent) continue;
      it->second.latent = false;
      found.push_back({it->first, it->second.end - it->first, false});
    }
    for (const PoisonRange& r : found) merge_locked(r.offset, r.end());
  }
  if (!found.empty()) changed(PoisonChange::Kind::kAdded, found);  // added known: known wins
  return found;
}

std::vector<PoisonRange> PoisonList::all() const {
  std::shared_lock lock(mutex_);
  std::vector<PoisonRange> out;
  out.reserve(ranges_.size());
  for (auto& [s, e] : ranges_) out.push_back({s, e.end - s, e.latent});
  return out;
}

void PoisonList::replace_all(const std::vector<PoisonRange>& ranges) {
  std::unique_lock lock(mutex_);
  ranges_.clear();
  for (const PoisonRange& r : ranges)
    if (r.length > 0) insert_locked(round_down(r.offset), round_up(r.end()), r.latent);
  resummarize_locked();
  count_.store(ranges_.size(), std::memory_order_release);
}

uint64_t PoisonList::known_bytes() const {
  std::shared_lock lock(mutex_);
  uint64_t n = 0;
  for (auto& [s, e] : ranges_)
    if (!e.latent) n += e.end - s;
  return n;
}

uint64_t PoisonList::latent_bytes() const {
  std::shared_lock lock(mutex_);
  uint64_t n = 0;
  for (auto& [s, e] : ranges_)
    if (e.latent) n += e.end - s;
  return n;
}

}  // namespace poisonfs
