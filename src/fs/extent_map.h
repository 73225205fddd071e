// The per-inode extent map: file block -> physical block runs, as a
// Boost.Intrusive tree of Extent records ordered by file block. Extents of
// one inode never overlap in file space. Each Extent remembers the slot of
// the on-media extent record that describes it, so an edit knows exactly
// which records to rewrite.
//
// Edits go through an ExtentEdit, which collects what must be persisted (the
// extents whose record changed, the record slots that became empty) and the
// physical ranges whose reference was dropped. The caller turns those into a
// journal transaction and, after the commit, into freed (or, with reflink,
// unreferenced) space.
#pragma once

#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <utility>
#include <vector>

#include "alloc/allocator.h"

namespace poisonfs {

namespace bi = boost::intrusive;

// Where a record lives on the media: chain block and slot index.
struct SlotRef {
  uint64_t block = 0;
  uint32_t index = 0;
  bool valid() const { return block != 0; }
};

struct Extent : bi::set_base_hook<bi::optimize_size<true>> {
  uint64_t file_block = 0;
  uint64_t phys_block = 0;
  uint64_t nblocks = 0;
  uint32_t flags = 0;  // 0 or kExtentUnwritten (a record's kSlotValid is not kept)
  SlotRef slot;
  bool erased = false;

  uint64_t file_end() const { return file_block + nblocks; }
  uint64_t phys_end() const { return phys_block + nblocks; }
  bool unwritten() const;
};

struct ExtentByFileBlock {
  bool operator()(const Extent& a, const Extent& b) const { return a.file_block < b.file_block; }
  bool operator()(uint64_t a, const Extent& b) const { return a < b.file_block; }
  bool operator()(const Extent& a, uint64_t b) const { return a.file_block < b; }
};

// A physical range as mapped at a file block (for the reverse map).
struct MappedRange : BlockRange {
  uint64_t file_block = 0;
};

// What one edit changed; see the file comment.
struct ExtentEdit {
  std::vector<Extent*> dirty;        // record must be (re)written; may lack a slot yet
  std::vector<SlotRef> freed_slots;  // record slots to zero
  std::vector<MappedRange> added;    // physical ranges this file now maps
  std::vector<MappedRange> dropped;  // physical ranges this file no longer maps
  std::vector<Extent*> graveyard;    // erased nodes, deleted by the caller after persisting
  ~ExtentEdit();
};

class ExtentMap {
 public:
  using Set = bi::set<Extent, bi::compare<ExtentByFileBlock>>;

  ExtentMap() = default;
  ExtentMap(const ExtentMap&) = delete;
  ExtentMap& operator=(const ExtentMap&) = delete;
  ~ExtentMap();

  // The extent containing fb, else the first one after it, else nullptr.
  Extent* at_or_after(uint64_t fb);
  Extent* containing(uint64_t fb);
  Extent* before(uint64_t fb);  // the last extent starting before fb
  Extent* next(Extent& e);      // the extent after e, else nullptr
  // Adds a loaded record; returns false if it overlaps an existing extent.
  bool load(Extent* e);
  // Removes [fb, fb+n) from the map (splitting extents at the edges).
  void punch(uint64_t fb, uint64_t n, ExtentEdit& edit);
  // Maps [fb, fb+n) to phys with flags. REQUIRES: the range is a hole.
  // Merges with file- and physically-contiguous neighbours of equal flags.
  void insert(uint64_t fb, uint64_t n, uint64_t phys, uint32_t flags, ExtentEdit& edit);
  // Removes every extent, dropping all of it (truncate to 0, inode freed).
  void clear(ExtentEdit& edit);

  size_t size() const { return set_.size(); }
  uint64_t mapped_blocks() const { return mapped_; }
  Set::iterator begin() { return set_.begin(); }
  Set::iterator end() { return set_.end(); }
  Set::const_iterator begin() const { return set_.begin(); }
  Set::const_iterator end() const { return set_.end(); }

 private:
  // Splits the extent containing fb (if fb is inside it) so that an extent starts at fb.
  void split_at(uint64_t fb, ExtentEdit& edit);
  void erase(Extent* e, ExtentEdit& edit);
  // Where insert() puts an extent at fb: the last extent starting before
  // it (or null) and the first one after it.
  std::pair<Extent*, Set::iterator> hole_at(uint64_t fb);

  Set set_;
  uint64_t mapped_ = 0;
  // The last extent while the map is being loaded (null once edited): the
  // usual next record goes right after it.
  Extent* load_tail_ = nullptr;
  // The extent of the last insert, null when an extent may have been
  // erased or added elsewhere since: the usual next insert goes right after
  // it. last_insert_is_last_: no extent follows it (Boost.Intrusive finds
  // the successor of the last one only by walking up to the root).
  Extent* last_insert_ = nullptr;
  bool last_insert_is_last_ = false;
};

}  // namespace poisonfs
