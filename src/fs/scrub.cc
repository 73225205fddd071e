// Scrub: a patrol over the device. Every allocated byte of the data area and
// every metadata region is walked; latent poison there (the DIMM knows, the
// filesystem does not yet) becomes known and goes through notify_failure
// exactly as a consuming read would report it, only with flags 0 (nothing
// was consumed). Latent poison in free space is found too (a device patrol
// covers the whole device) and ends up quarantined, and then every
// quarantined range is cleared (zeroed, dropped from the poison list) and
// returned to the allocator.
//
// Silent corruption: every written data block with a known checksum is
// read and its crc32c compared (after the chunk's poison was handled, so
// poisoned blocks are skipped, never read); a mismatch is counted and
// becomes a "corruption" event naming every file that shares the block.
//
// Locking: the exclusive lock is taken per chunk, never for the whole scrub,
// so reads and writes go on between chunks. Cache invalidations are sent
// after the chunk's lock is dropped, like notify_failure does.
#include <algorithm>

#include "fs/fs_impl.h"
#include "util/strfmt.h"

namespace poisonfs {
namespace {

constexpr uint64_t kScrubChunkBlocks = 1024;  // 4 MiB per lock hold

}  // namespace

Result<ScrubReport> FsImpl::scrub(const std::function<void(uint64_t done, uint64_t total)>& progress) {
  auto refuse = [&]() -> Result<ScrubReport> {
    return fail(std::errc::io_error, "filesystem is shut down: " + shutdown_reason_);
  };
  if (shutdown_) return refuse();
  ScrubReport rep;
  rep.checksums = csums_.enabled();
  const uint64_t total_blocks = sb_.total_blocks;
  const uint64_t total_bytes = block_offset(total_blocks);

  for (uint64_t b = 0; b < total_blocks; b += kScrubChunkBlocks) {
    const uint64_t n = std::min(kScrubChunkBlocks, total_blocks - b);
    std::vector<Invalidation> inval;
    {
      std::unique_lock lock(mutex_);
      if (shutdown_) return refuse();
      // Bytes walked: metadata blocks and allocated data blocks.
      uint64_t meta_lo = b, meta_hi = std::min(b + n, sb_.data_start);
      if (meta_lo < meta_hi) rep.bytes_scanned += block_offset(meta_hi - meta_lo);
      uint64_t tail_lo = std::max(b, sb_.data_end), tail_hi = b + n;
      if (tail_lo < tail_hi) rep.bytes_scanned += block_offset(tail_hi - tail_lo);
      uint64_t data_lo = std::max(b, sb_.data_start), data_hi = std::min(b + n, sb_.data_end);
      if (data_lo < data_hi) {
        uint64_t covered = data_lo;  // sharers report the same piece once each
        rmap_.query(data_lo, data_hi - data_lo, [&](const RmapHit& hit) {
          uint64_t from = std::max(covered, hit.phys), to = hit.phys + hit.count;
          if (from < to) {
            rep.bytes_scanned += block_offset(to - from);
            covered = to;
          }
          return true;
        });
      }
      // Latent poison anywhere in the chunk becomes known and is notified.
      if (!poison().empty()) {
        for (const PoisonRange& r : poison().make_known(block_offset(b), block_offset(n))) {
          ++rep.latent_found;
          if (r.offset >= total_bytes) continue;
          uint64_t len = std::min(r.length, total_bytes - r.offset);
          if (auto st = _notify_failure(r.offset, len, 0, inval); !st) return std::unexpected(st.error());
          ++rep.ranges_notified;
        }
      }
      if (data_lo < data_hi && csums_.enabled())
        for_each_written_block(data_lo, data_hi - data_lo, [&](uint64_t block) {
          const std::optional<bool> matches = checksum_matches(block);
          if (!matches) return;
          ++rep.blocks_verified;
          if (!*matches) {
            ++rep.checksum_mismatches;
            record_corruption(block, "scrub");
          }
        });
    }
    run_invalidations(inval);
    if (progress) progress(block_offset(b + n), total_bytes);
  }

  // Quarantined free space: clear it and hand it back.
  {
    std::unique_lock lock(mutex_);
    if (shutdown_) return refuse();
    std::vector<BlockRange> ranges;
    ranges.swap(quarantine_);
    // Some of these blocks may have been freed by a transaction still in the
    // journal (pending): checkpoint first, so no replay can touch them once
    // they are handed back.
    if (!ranges.empty()) journal_.checkpoint();
    for (const BlockRange& r : ranges) {
      media_->clear_poison(block_offset(r.start), block_offset(r.count));
      alloc_.release(r);
      rep.quarantine_cleared_bytes += block_offset(r.count);
      record_event(EventKind::kRepair, block_offset(r.start), block_offset(r.count),
                   "quarantined free space cleared and returned", {EventOwner{"free", 0, "", 0, 0}});
    }
  }
  rep.known_poison_bytes = poison().known_bytes();
  return rep;
}

}  // namespace poisonfs
