// The redo journal: makes a multi-record metadata update atomic.
//
// A Transaction collects byte ranges of new record images (inodes, extent
// slots, dirents, chain headers). Journal::commit appends them to the journal
// region as one sealed blob (header + records + crc32c over all of it),
// flushes it and drains once - that drain is the commit point and also
// covers any data the caller flushed before - and then writes the records in
// place with flushes but no drain: the next commit's drain, or a checkpoint,
// makes them durable, and until then replay would redo them.
//
// Journal region (journal_blocks blocks from journal_start):
//   block 0: header {crc, magic, replay_seq, replay_off} in two slots (bytes
//            0 and 64), written alternately; the valid one with the higher
//            replay_seq counts, so a torn header write loses nothing
//   then transactions, appended: {crc, magic, seq, nrecs, len} {off, len, bytes}*
// Replay starts at replay_off and applies every transaction whose crc is good
// and whose seq is the expected next one; the first miss ends the log. A
// checkpoint (drain, then rewrite the header to the current end) happens when
// the region is full or the caller asks; txs are never overwritten before it.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "format/layout.h"
#include "poisonfs/media.h"

namespace poisonfs {

class Transaction {
 public:
  // Records that [off, off+len) must hold these bytes. A later write of the
  // same (off, len) replaces the earlier one.
  void write(uint64_t off, const void* data, size_t len);
  // Reserves len bytes for a record at off and returns where to encode it.
  std::byte* reserve(uint64_t off, size_t len);
  // Makes room for `records` more records of `bytes` in all at once: a
  // caller that knows a transaction is large (a clone stages one record per
  // extent) saves growing it step by step.
  void expect(size_t records, size_t bytes);
  bool empty() const { return records_.empty(); }
  size_t encoded_size() const;
  size_t record_count() const { return records_.size(); }

 private:
  friend class Journal;
  struct Record {
    uint64_t off;
    size_t pos;
    uint32_t len;
  };
  uint32_t* index_slot(uint64_t off);
  void grow_index(size_t records);

  std::vector<Record> records_;
  std::vector<std::byte> bytes_;
  // off -> 1 + index of the latest record at off (0: empty), open
  // addressing with linear probing: a clone stages one record per extent
  // (65,536 and more), and a node-based map costs an allocation for each.
  std::vector<uint32_t> index_;
  size_t record_bytes_ = 0;  // encoded records, headers included
};

class Journal {
 public:
  Journal(Media& media, const Superblock& sb);

  // Writes an empty journal header (mkfs).
  static void format(Media& media, const Superblock& sb);
  // Applies every committed transaction; returns how many. Does not store
  // anything when the log is empty. Then checkpoints.
  Result<uint64_t> replay();
  // Commits tx atomically (see above). Fails only if tx is larger than
  // max_tx_bytes(), which callers bound.
  Status commit(const Transaction& tx);
  // Drains the in-place writes and restarts the log at its beginning.
  void checkpoint();
  // Media poison met by replay (poisoned bytes are never applied):
  // kHeader: no header slot is readable and one is poisoned (the log's start
  //   and sequence are unknown; replay failed);
  // kLiveTransaction: replay stopped at `seq`, whose bytes (or the place of
  //   its header) hold poison; the earlier ones were applied, no checkpoint;
  // kPastEnd: the log ended before the poison (stale bytes): nothing lost.
  enum class PoisonFound { kNone, kHeader, kLiveTransaction, kPastEnd };
  PoisonFound replay_poison() const { return replay_poison_; }
  uint64_t replay_poison_seq() const { return seq_; }
  // Forgets the whole log (fsck, after poison lost part of it): zeroes the
  // region and writes fresh headers, so no stale transaction can match.
  void reset();
  size_t max_tx_bytes() const { return end_ - kBlockSize; }
  uint64_t commits() const { return commits_; }
  // Called after every checkpoint (the allocator releases pending frees then).
  void set_checkpoint_hook(std::function<void()> hook) { on_checkpoint_ = std::move(hook); }

 private:
  Status read_header();
  void adopt_newer_log(uint64_t header_seq);
  void write_header();
  bool record_in_bounds(uint64_t off, uint64_t len) const;
  bool poisoned(uint64_t region_off, uint64_t len) { return media_.poison().first(start_ + region_off, len).has_value(); }
  void flush_in_place(uint64_t off, size_t len);
  void flush_unflushed();

  Media& media_;
  uint64_t start_;  // byte offset of the journal region on the device
  uint64_t end_;    // byte length of the region
  uint64_t meta_lo_, meta_hi_;  // where records may point: [inode table, data end)
  uint64_t seq_ = 1;            // seq of the next transaction
  uint64_t head_ = kBlockSize;  // region-relative offset of the next transaction
  int header_slot_ = 0;         // header slot the next checkpoint writes
  uint64_t commits_ = 0;
  std::vector<uint64_t> unflushed_pages_;  // in-place pages not yet flushed (page-granular media)
  std::function<void()> on_checkpoint_;
  PoisonFound replay_poison_ = PoisonFound::kNone;
};

}  // namespace poisonfs
