// The extent allocator of the data area.
//
// Free space is a set of disjoint free extents, each one node in two
// Boost.Intrusive trees (by start for merging and hint lookups, by length for
// best fit), as Ceph BlueStore does. It is never stored: mount rebuilds it as
// the complement of everything the records own, so a crash cannot leak or
// double-own a block.
//
// Blocks freed by a committed transaction are "pending" until the next
// journal checkpoint: until then replay could still rewrite an old record
// image into them (the revoke problem of redo journals), so they must not
// receive unjournaled file data.
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <vector>

namespace poisonfs {

struct BlockRange {
  uint64_t start = 0;
  uint64_t count = 0;
  uint64_t end() const { return start + count; }
  bool operator==(const BlockRange&) const = default;
};

class Allocator {
 public:
  Allocator() = default;
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;
  ~Allocator();

  // Makes [lo, hi) minus `used` the free space. `used` may be unsorted;
  // returns the ranges that overlap another used range or fall outside
  // [lo, hi) (fsck reports them; mount refuses them).
  std::vector<BlockRange> rebuild(uint64_t lo, uint64_t hi, std::vector<BlockRange> used);

  // Returns one contiguous range of 1..want blocks: at `hint` if that block
  // is free (sequential writes stay contiguous), else the smallest free
  // extent that holds `want`, else the largest. count == 0: no space.
  BlockRange allocate(uint64_t want, uint64_t hint);
  // Returns a range that was allocated but never referenced by a commit.
  void release(BlockRange r);
  // Frees a range whose last reference was removed by a committed tx.
  void defer_free(BlockRange r);
  // Called at a journal checkpoint: pending ranges become allocatable.
  void release_pending();
  // Takes every free or pending block inside r out of circulation (poisoned
  // free space is quarantined); returns the blocks taken.
  std::vector<BlockRange> withdraw(BlockRange r);

  uint64_t free_blocks() const { return free_blocks_; }
  uint64_t pending_blocks() const { return pending_blocks_; }
  size_t free_extents() const;
  bool is_free(uint64_t block) const;
  // True if any block of [start, start+count) is free.
  bool any_free(uint64_t start, uint64_t count) const;
  uint64_t data_lo() const { return lo_; }
  uint64_t data_hi() const { return hi_; }

 private:
  struct Node;
  void insert_free(uint64_t start, uint64_t count);
  void take(Node* n, uint64_t start, uint64_t count);
  void clear();

  struct Impl;
  Impl* impl_ = nullptr;
  uint64_t lo_ = 0, hi_ = 0;
  uint64_t free_blocks_ = 0;
  uint64_t pending_blocks_ = 0;
  std::vector<BlockRange> pending_;
};

}  // namespace poisonfs
