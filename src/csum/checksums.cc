// Data checksums on media (see checksums.h).
#include "csum/checksums.h"

#include <algorithm>

#include "format/coding.h"
#include "format/crc32c.h"

namespace poisonfs {

DataChecksums::DataChecksums(Media& media, const Superblock& sb)
    : media_(media), sb_(sb), enabled_(sb.has_checksums()) {
  if (!enabled_) return;
  intent_.resize(kCsumIntentBits / 64);
  const std::byte* bitmap = media_.at(bitmap_offset());
  // A poisoned bitmap is read as "everything dirty": recomputing is always safe.
  const bool poisoned = media_.poison().first(bitmap_offset(), kBlockSize).has_value();
  for (size_t i = 0; i < intent_.size(); ++i)
    dirty_at_mount_.push_back(poisoned ? ~uint64_t{0} : get_le<uint64_t>(bitmap + i * 8));
  intent_ = dirty_at_mount_;
  any_intent_ = std::any_of(intent_.begin(), intent_.end(), [](uint64_t w) { return w != 0; });
  table_page_stored_.resize(sb_.csum_blocks);
}

void DataChecksums::format(Media& media, const Superblock& sb) {
  if (!sb.has_checksums()) return;
  media.zero(block_offset(sb.csum_start), block_offset(sb.csum_blocks));
  media.flush(block_offset(sb.csum_start), block_offset(sb.csum_blocks));
}

uint32_t DataChecksums::of_block(const std::byte* block) { return crc32c(block, kBlockSize); }

uint64_t DataChecksums::entry_offset(uint64_t block) const {
  return block_offset(sb_.csum_start + 1) + (block - sb_.data_start) * kCsumEntrySize;
}

void DataChecksums::begin_write(uint64_t first, uint64_t count) {
  if (!enabled_ || count == 0) return;
  bool stored = false;
  for (uint64_t r = region_of(first), last = region_of(first + count - 1); r <= last; ++r) {
    uint64_t& word = intent_[r / 64];
    const uint64_t bit = uint64_t{1} << (r % 64);
    if (word & bit) continue;
    word |= bit;
    std::byte buf[8];
    put_le<uint64_t>(buf, word);
    media_.write(bitmap_offset() + (r / 64) * 8, buf, 8);
    media_.flush(bitmap_offset() + (r / 64) * 8, 8);
    stored = true;
  }
  if (stored) {
    media_.drain();  // the intent is durable before any data store it covers
    any_intent_ = true;
  }
}

uint32_t DataChecksums::get(uint64_t block) const {
  if (!enabled_ || block < sb_.data_start || block >= sb_.data_end) return 0;
  const uint64_t off = entry_offset(block);
  if (media_.poison().first(off, kCsumEntrySize)) return 0;
  return get_le<uint32_t>(media_.at(off));
}

void DataChecksums::mark_table_page(uint64_t block) {
  uint64_t page = (entry_offset(block) - bitmap_offset()) / kBlockSize;
  if (table_page_stored_[page]) return;
  table_page_stored_[page] = true;
  stored_pages_.push_back(page);
}

void DataChecksums::set(uint64_t block, uint32_t crc) {
  if (!enabled_ || block < sb_.data_start || block >= sb_.data_end) return;
  std::byte buf[kCsumEntrySize];
  put_le<uint32_t>(buf, crc);
  media_.write(entry_offset(block), buf, kCsumEntrySize);
  mark_table_page(block);
}

void DataChecksums::forget(uint64_t first, uint64_t count) {
  if (!enabled_ || count == 0) return;
  first = std::max(first, sb_.data_start);
  uint64_t end = std::min(first + count, sb_.data_end);
  if (first >= end) return;
  media_.zero(entry_offset(first), (end - first) * kCsumEntrySize);
  media_.flush(entry_offset(first), (end - first) * kCsumEntrySize);
}

void DataChecksums::checkpoint() {
  if (!enabled_ || !any_intent_) return;
  // Entries first (contiguous pages in one flush), durable before the bits go.
  std::sort(stored_pages_.begin(), stored_pages_.end());
  for (size_t i = 0; i < stored_pages_.size();) {
    size_t j = i + 1;
    while (j < stored_pages_.size() && stored_pages_[j] == stored_pages_[j - 1] + 1) ++j;
    media_.flush(bitmap_offset() + block_offset(stored_pages_[i]), block_offset(j - i));
    i = j;
  }
  media_.drain();
  for (uint64_t page : stored_pages_) table_page_stored_[page] = false;
  stored_pages_.clear();
  std::fill(intent_.begin(), intent_.end(), 0);
  rewrite_bitmap();
  any_intent_ = false;
}

void DataChecksums::rewrite_bitmap() {
  if (!enabled_) return;
  std::vector<std::byte> buf(kBlockSize);
  for (size_t i = 0; i < intent_.size(); ++i) put_le<uint64_t>(buf.data() + i * 8, intent_[i]);
  media_.write(bitmap_offset(), buf.data(), kBlockSize);
  media_.flush(bitmap_offset(), kBlockSize);
  media_.drain();
}

std::vector<BlockRange> DataChecksums::dirty_at_mount() const {
  std::vector<BlockRange> out;
  if (!enabled_) return out;
  const uint64_t region_blocks = uint64_t{1} << sb_.csum_region_shift;
  for (uint64_t r = 0; r < kCsumIntentBits; ++r) {
    if (!(dirty_at_mount_[r / 64] & (uint64_t{1} << (r % 64)))) continue;
    uint64_t start = sb_.data_start + r * region_blocks;
    if (start >= sb_.data_end) break;
    uint64_t count = std::min(region_blocks, sb_.data_end - start);
    if (!out.empty() && out.back().start + out.back().count == start) out.back().count += count;
    else out.push_back({start, count});
  }
  return out;
}

}  // namespace poisonfs
