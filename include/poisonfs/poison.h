// The device's poison list: the simulated DIMM's own error record (or, on a
// real pmem device, what libpmem2's badblock API reports). Poison is tracked
// at the device's clear unit, 64 bytes (a cache line): an injected or
// reported range is rounded out to whole units.
//
// Known poison has been reported (like `ndctl inject-error`, or found by a
// read); latent poison (`--no-notify`) is found only when a read consumes
// it or a scrub walks over it. Thread-safe; `empty()` is one atomic load, the
// read path's fast check.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

namespace poisonfs {

inline constexpr uint64_t kPoisonUnit = 64;

struct PoisonRange {
  uint64_t offset = 0;  // device bytes, unit aligned
  uint64_t length = 0;  // bytes, whole units
  bool latent = false;
  uint64_t end() const { return offset + length; }
  bool operator==(const PoisonRange&) const = default;
};

// One change of the list, as its saver (on_change) records it: ranges
// added (known wins over latent where they meet) or removed, in the order
// given. Replayed in order on the list before it, it gives the list after.
struct PoisonChange {
  enum class Kind : uint8_t { kAdded, kRemoved };
  Kind kind;
  std::span<const PoisonRange> ranges;
};

class PoisonList {
 public:
  // Adds [off, off+len) rounded out to units (known wins over latent where
  // they overlap). Returns the rounded range. REQUIRES: len > 0, no overflow.
  PoisonRange add(uint64_t off, uint64_t len, bool latent);
  // Removes the whole units inside [off, off+len); returns what was removed.
  std::vector<PoisonRange> clear(uint64_t off, uint64_t len);
  // The same for several ranges, with one change (one save of the record).
  std::vector<PoisonRange> clear_all(std::span<const PoisonRange> ranges);
  // Every range overlapping [off, off+len), clipped to it, in order.
  std::vector<PoisonRange> overlapping(uint64_t off, uint64_t len) const;
  // The same, appended to `out` (one allocation for several queries).
  void append_overlapping(uint64_t off, uint64_t len, std::vector<PoisonRange>& out) const;
  // The first poisoned byte in [off, off+len), if any (and its range).
  std::optional<PoisonRange> first(uint64_t off, uint64_t len) const;
  // Marks the latent ranges overlapping [off, off+len) known; returns them.
  std::vector<PoisonRange> make_known(uint64_t off, uint64_t len);
  std::vector<PoisonRange> all() const;
  void replace_all(const std::vector<PoisonRange>& ranges);
  bool empty() const { return count_.load(std::memory_order_acquire) == 0; }
  // Sizes the summary of where poison is: one bit per region of the device
  // (4 KiB, or larger so that it stays within 32 KiB), read without the
  // lock, so that first() and overlapping() on a clean region cost a few
  // loads however long the list is. Without it (0) every query searches.
  // REQUIRES: called before the list is shared between threads.
  void set_extent(uint64_t device_bytes);
  uint64_t known_bytes() const;
  uint64_t latent_bytes() const;
  // Called after every change, outside the lock that readers take: the
  // media persists its error record there. Changes and their calls are
  // serialized, in the same order, so all() inside the callback is the list
  // right after the change. REQUIRES: the callback changes no list.
  void set_on_change(std::function<void(const PoisonChange&)> fn) { on_change_ = std::move(fn); }
  // The saver (on_change) reports here that the record could not be
  // persisted. Its owner compares persist_failures() before and after a
  // change (the operation fails) and with what it reported (an event).
  void set_persist_error(std::string message);
  uint64_t persist_failures() const { return persist_failures_.load(std::memory_order_acquire); }
  std::string last_persist_error() const;

 private:
  struct Entry {
    uint64_t end;
    bool latent;
  };
  void insert_locked(uint64_t off, uint64_t end, bool latent);
  // False when no poison can be in [off, end) (the summary says so).
  bool maybe_poisoned(uint64_t off, uint64_t end) const;
  // Recomputes the summary bits of the regions [off, end) touches.
  // REQUIRES: mutex_ held exclusively.
  void summarize_locked(uint64_t off, uint64_t end);
  void resummarize_locked();  // every region, from the list
  void merge_locked(uint64_t lo, uint64_t hi);
  void changed(PoisonChange::Kind kind, std::span<const PoisonRange> ranges);

  // Lock order: change_mutex_, then mutex_. A change holds change_mutex_
  // through its on_change call, so that the record gets the changes in the
  // order they were made (a log of changes replays correctly only in that
  // order); readers take mutex_ alone and never wait for the record.
  std::mutex change_mutex_;
  mutable std::shared_mutex mutex_;
  std::map<uint64_t, Entry> ranges_;  // start -> (end, latent); disjoint
  std::atomic<size_t> count_{0};
  std::unique_ptr<std::atomic<uint64_t>[]> summary_;  // bit per region: some poison there
  size_t summary_regions_ = 0;
  unsigned region_shift_ = 12;
  void clear_locked(uint64_t off, uint64_t len, std::vector<PoisonRange>& removed);
  std::function<void(const PoisonChange&)> on_change_;
  mutable std::mutex persist_error_mutex_;
  std::string persist_error_;
  std::atomic<uint64_t> persist_failures_{0};
};

}  // namespace poisonfs
