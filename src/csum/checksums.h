// Data checksums: one crc32c per 4 KiB data block, kept by physical block
// (so every reflink sharer of a block shares its checksum) in a table on the
// device, next to a write-intent bitmap.
//
// An entry is either 0 ("unknown": not verified) or the crc32c of the
// block's current content. Entries are stored after the data they describe
// and are NOT flushed on every write (that would cost a second persist per
// write). Instead, before the first store into a region of
// 2^csum_region_shift data blocks, the region's intent bit is made durable;
// a checkpoint persists every entry stored since the last one and only then
// clears the bits. After a crash, the regions whose bit is set are the only
// ones whose entries may lag their data, and mount recomputes those from
// the data (FsImpl::recompute_dirty_checksums): a block written in place is
// never reported as corrupt because of a crash. This is the md/raid
// write-intent bitmap idea applied to checksums.
//
// Nothing here knows about files; FsImpl decides what each block holds.
#pragma once

#include <cstdint>
#include <vector>

#include "alloc/allocator.h"
#include "format/layout.h"
#include "poisonfs/media.h"

namespace poisonfs {

class DataChecksums {
 public:
  DataChecksums(Media& media, const Superblock& sb);

  // mkfs: an empty bitmap and a table of unknown entries.
  static void format(Media& media, const Superblock& sb);
  // crc32c of one 4 KiB block.
  static uint32_t of_block(const std::byte* block);

  bool enabled() const { return enabled_; }
  // Makes the write intent of data blocks [first, first+count) durable;
  // call before storing into them. Costs nothing when already set.
  void begin_write(uint64_t first, uint64_t count);
  // The entry of a data block (0: unknown, also when the entry itself sits
  // on poisoned media).
  uint32_t get(uint64_t block) const;
  // Stores an entry (durable by the next checkpoint; the intent covers it).
  void set(uint64_t block, uint32_t crc);
  // Entries of [first, first+count) become unknown, flushed: safe with or
  // without an intent (unknown is never wrong).
  void forget(uint64_t first, uint64_t count);
  // Persists the entries stored since the last checkpoint, then clears the
  // intent bits. Called from the journal's checkpoint.
  void checkpoint();

  // Data block ranges whose intent was set at mount (a crash): recompute.
  std::vector<BlockRange> dirty_at_mount() const;
  // Where block's entry lives, and the bitmap (for fsmap and repair).
  uint64_t entry_offset(uint64_t block) const;
  uint64_t bitmap_offset() const { return block_offset(sb_.csum_start); }
  // Rewrites the bitmap block from memory (after its poison was cleared).
  void rewrite_bitmap();

 private:
  uint64_t region_of(uint64_t block) const { return (block - sb_.data_start) >> sb_.csum_region_shift; }
  void mark_table_page(uint64_t block);

  Media& media_;
  const Superblock& sb_;
  bool enabled_;
  std::vector<uint64_t> intent_;          // bitmap words as on media
  std::vector<uint64_t> dirty_at_mount_;  // the words found at mount
  std::vector<bool> table_page_stored_;   // per table block: stored since the last checkpoint
  std::vector<uint64_t> stored_pages_;    // the same, as a list
  bool any_intent_ = false;
};

}  // namespace poisonfs
