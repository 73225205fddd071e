// The filesystem's side of data checksums (the table itself is
// src/csum/checksums.h): which blocks they describe, recomputing them after
// a crash, repairing a poisoned table block, verifying reads.
#include <algorithm>

#include "format/coding.h"
#include "fs/fs_impl.h"
#include "util/strfmt.h"

namespace poisonfs {

void FsImpl::for_each_written_block(uint64_t first, uint64_t count, const std::function<void(uint64_t)>& fn) {
  uint64_t next = first;  // blocks before it were visited (sharers come one after another)
  rmap_.query(first, count, [&](const RmapHit& hit) {
    if (hit.owner.kind != OwnerKind::kData) return true;
    ExtentMap& extents = inodes_[hit.owner.ino - 1]->extents;
    for (uint64_t i = std::max(next, hit.phys) - hit.phys; i < hit.count;) {
      const uint64_t fb = hit.owner.offset + i;
      const Extent* e = extents.at_or_after(fb);
      if (!e || e->file_block > fb) break;  // cannot happen: the rmap mirrors the extents
      const uint64_t run = std::min(hit.count - i, e->file_end() - fb);
      if (!e->unwritten()) {
        for (uint64_t k = 0; k < run; ++k) fn(hit.phys + i + k);
        next = hit.phys + i + run;
      }
      i += run;
    }
    return true;
  });
}

std::vector<EventOwner> FsImpl::data_owners_of(uint64_t block, uint64_t count) {
  std::vector<EventOwner> owners;
  rmap_.query(block, count, [&](const RmapHit& hit) {
    if (hit.owner.kind == OwnerKind::kData)
      owners.push_back(EventOwner{"data", hit.owner.ino, first_path(hit.owner.ino), block_offset(hit.owner.offset),
                                  block_offset(hit.count)});
    return true;
  });
  return owners;
}

void FsImpl::recompute_dirty_checksums() {
  if (!csums_.enabled()) return;
  for (const BlockRange& r : csums_.dirty_at_mount()) {
    for_each_written_block(r.start, r.count, [&](uint64_t b) {
      // A poisoned block keeps its entry: it still describes the lost
      // content, which a recovery write can then be matched against.
      if (poison().first(block_offset(b), kBlockSize)) return;
      csums_.set(b, DataChecksums::of_block(media_->at(block_offset(b))));
    });
  }
  csums_.checkpoint();
}

void FsImpl::repair_checksum_block(uint64_t block) {
  if (block == sb_.csum_start) {
    csums_.rewrite_bitmap();  // durable before the poison is forgotten
    poison().clear(block_offset(block), kBlockSize);
    return;
  }
  // Entries from the data they describe; what cannot be read stays unknown.
  std::vector<std::byte> buf(kBlockSize);
  const uint64_t first = sb_.data_start + (block - sb_.csum_start - 1) * kCsumEntriesPerBlock;
  const uint64_t end = std::min(sb_.data_end, first + kCsumEntriesPerBlock);
  if (first < end)
    for_each_written_block(first, end - first, [&](uint64_t b) {
      if (poison().first(block_offset(b), kBlockSize)) return;
      put_le<uint32_t>(buf.data() + (b - first) * kCsumEntrySize, DataChecksums::of_block(media_->at(block_offset(b))));
    });
  rewrite_poisoned_block(block, buf.data());
}

std::optional<bool> FsImpl::checksum_matches(uint64_t block) {
  const uint32_t recorded = csums_.get(block);
  if (recorded == 0 || poison().first(block_offset(block), kBlockSize)) return std::nullopt;
  return DataChecksums::of_block(media_->at(block_offset(block))) == recorded;
}

std::optional<uint64_t> FsImpl::first_corrupt_block(uint64_t dev_off, uint64_t len) {
  for (uint64_t b = dev_off / kBlockSize; block_offset(b) < dev_off + len; ++b)
    if (checksum_matches(b) == false) return b;
  return std::nullopt;
}

void FsImpl::record_corruption(uint64_t block, const std::string& found_by) {
  record_event(EventKind::kCorruption, block_offset(block), kBlockSize,
               strfmt("checksum mismatch (silent corruption) found by {}", found_by), data_owners_of(block));
}

Status FsImpl::verify_segments(std::span<const ReadSegment> segs) {
  for (const ReadSegment& s : segs) {
    if (!s.data) continue;
    if (auto bad = first_corrupt_block(static_cast<uint64_t>(s.data - media_->base()), s.length)) {
      record_corruption(*bad, "a read");
      return fail(std::errc::io_error);
    }
  }
  return {};
}

std::vector<std::string> FsImpl::verify_data_checksums() {
  std::shared_lock lock(mutex_);
  std::vector<std::string> problems;
  if (!csums_.enabled()) return problems;
  // A read-only check did not recompute what a crash left behind.
  std::vector<BlockRange> stale;
  if (check_ && !check_->repair) stale = csums_.dirty_at_mount();
  auto is_stale = [&](uint64_t b) {
    return std::any_of(stale.begin(), stale.end(), [&](const BlockRange& r) { return b >= r.start && b < r.start + r.count; });
  };
  for_each_written_block(sb_.data_start, sb_.data_end - sb_.data_start, [&](uint64_t b) {
    // fsck meets latent poison here (and skips the block): known from now
    // on, so the next mount notifies every sharer. Not a problem of the
    // filesystem's structure: data poison is reported by the mount.
    if (check_ && !poison().empty()) (void)poison().make_known(block_offset(b), kBlockSize);
    if (is_stale(b) || !first_corrupt_block(block_offset(b), kBlockSize)) return;
    std::string owners;
    for (const EventOwner& o : data_owners_of(b))
      owners += strfmt("{}inode {} offset {}", owners.empty() ? "" : ", ", o.ino, o.file_offset);
    problems.push_back(strfmt("data block {} does not match its checksum (silent corruption): {}", b, owners));
  });
  return problems;
}

}  // namespace poisonfs
