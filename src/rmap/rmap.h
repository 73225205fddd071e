// The reverse map: for every allocated block of the data area, who owns it.
//
// The device is cut into disjoint physical segments; each holds the sorted
// list of its owners. A data owner is (inode, file block at the segment's
// start); several data owners on one segment are reflink sharers, and their
// number is the segment's reference count. Chain blocks (extent, directory,
// xattr records) have exactly one owner of their kind. Adjacent segments
// whose owners continue each other are merged, so a file written
// sequentially costs one segment, not one per write.
//
// Segments sit in a Boost.Intrusive tree ordered by start: a range query
// finds the first overlapping segment in O(log n) and walks its neighbours,
// O(log n + hits). Nothing here is stored on media: mount rebuilds the map
// from the extent records in one pass (build), and fsck checks them against
// each other.
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <functional>
#include <vector>

#include "alloc/allocator.h"

namespace poisonfs {

enum class OwnerKind : uint8_t {
  kData = 0,
  kExtents = 1,    // an extent record block
  kDirents = 2,    // a directory block
  kXattrs = 3,     // an xattr block
};

struct Owner {
  uint64_t ino = 0;
  uint64_t offset = 0;  // data: file block at the segment start; else 0
  OwnerKind kind = OwnerKind::kData;

  auto operator<=>(const Owner&) const = default;
};

// What one record says: `owner` (offset meaning at `start`) owns
// [start, start+count). The input of Rmap::build.
struct RmapRecord {
  uint64_t start = 0;
  uint64_t count = 0;
  Owner owner;
};

// One owner of a piece of a queried range, clipped to the query.
struct RmapHit {
  uint64_t phys = 0;   // first block
  uint64_t count = 0;  // blocks
  Owner owner;         // offset adjusted to phys
  uint32_t sharers = 0;  // owners of this piece (1 = not shared)
};

class Rmap {
 public:
  Rmap();
  Rmap(const Rmap&) = delete;
  Rmap& operator=(const Rmap&) = delete;
  ~Rmap();

  // Records that `owner` (offset meaning at `start`) owns [start, start+count).
  void add(uint64_t start, uint64_t count, const Owner& owner);
  // Replaces the whole map with `records` (any order, overlaps allowed): the
  // same map as clear() and add() of each, built in one sorted sweep (mount).
  void build(std::vector<RmapRecord> records);
  // Removes that ownership; appends the pieces that no longer have any
  // owner to `unowned`. Pieces where owner was not found are ignored.
  void remove(uint64_t start, uint64_t count, const Owner& owner, std::vector<BlockRange>* unowned);
  // Calls fn for every (piece, owner) overlapping [start, start+count), in
  // physical order; fn returns false to stop.
  void query(uint64_t start, uint64_t count, const std::function<bool(const RmapHit&)>& fn) const;
  // Owners of `block` (0 = free).
  uint32_t refcount(uint64_t block) const;
  // Visits maximal segments [start, start+count) with their owner count.
  void for_each_segment(const std::function<void(uint64_t start, uint64_t count, uint32_t owners)>& fn) const;

  size_t segments() const;
  uint64_t records() const { return records_; }  // (segment, owner) pairs
  void clear();

 private:
  struct Segment;
  struct Impl;
  Segment* split(uint64_t at);  // ensures a segment boundary at `at`; returns the segment starting there or null
  void try_merge(Segment* s);   // with its right neighbour
  Impl* impl_;
  uint64_t records_ = 0;
};

}  // namespace poisonfs
