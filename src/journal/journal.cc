// The redo journal (see journal.h for the protocol).
#include "journal/journal.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include "util/strfmt.h"

#include "format/coding.h"
#include "format/crc32c.h"

namespace poisonfs {
namespace {

constexpr uint32_t kHeaderMagic = 0x4C4E4A50;  // "PJNL"
constexpr uint32_t kTxMagic = 0x58544A50;      // "PJTX"
constexpr size_t kHeaderSize = 24;             // crc, magic, seq, off
// The header has two slots in different cache lines, written in turn: a
// crash can tear the 24-byte store of one (persistence is atomic only per
// 8 bytes), never both, and the valid slot with the higher seq wins.
constexpr uint64_t kHeaderSlotStride = 64;
constexpr size_t kTxHeaderSize = 32;           // crc, magic, seq, nrecs, pad, len
constexpr size_t kRecHeaderSize = 16;          // off, len, pad

size_t pad8(size_t n) { return (n + 7) & ~size_t{7}; }

}  // namespace

// Where off's entry is or would go. REQUIRES: a free slot exists.
uint32_t* Transaction::index_slot(uint64_t off) {
  const size_t mask = index_.size() - 1;
  uint64_t h = off * 0x9e3779b97f4a7c15;  // offsets share their low bits: mix the high ones down
  for (size_t i = (h ^ (h >> 32)) & mask;; i = (i + 1) & mask) {
    uint32_t v = index_[i];
    if (v == 0 || records_[v - 1].off == off) return &index_[i];
  }
}

// Sizes the table for `records` (kept at most half full) and re-enters
// every record in order, so that each offset ends up naming its latest.
void Transaction::grow_index(size_t records) {
  index_.assign(std::bit_ceil(std::max<size_t>(64, records * 2)), 0);
  for (size_t i = 0; i < records_.size(); ++i) *index_slot(records_[i].off) = static_cast<uint32_t>(i + 1);
}

void Transaction::expect(size_t records, size_t bytes) {
  records_.reserve(records_.size() + records);
  bytes_.reserve(bytes_.size() + bytes);
  if ((records_.size() + records) * 2 > index_.size()) grow_index(records_.size() + records);
}

std::byte* Transaction::reserve(uint64_t off, size_t len) {
  if ((records_.size() + 1) * 2 > index_.size()) grow_index(2 * records_.size() + 1);
  uint32_t* slot = index_slot(off);
  if (*slot != 0 && records_[*slot - 1].len == len) return bytes_.data() + records_[*slot - 1].pos;
  size_t pos = bytes_.size();
  bytes_.resize(pos + len);
  records_.push_back(Record{off, pos, static_cast<uint32_t>(len)});
  *slot = static_cast<uint32_t>(records_.size());
  record_bytes_ += kRecHeaderSize + pad8(len);
  return bytes_.data() + pos;
}

void Transaction::write(uint64_t off, const void* data, size_t len) {
  std::memcpy(reserve(off, len), data, len);
}

size_t Transaction::encoded_size() const { return kTxHeaderSize + record_bytes_; }

Journal::Journal(Media& media, const Superblock& sb)
    : media_(media),
      start_(block_offset(sb.journal_start)),
      end_(sb.journal_blocks * kBlockSize),
      meta_lo_(block_offset(sb.inode_start)),
      meta_hi_(block_offset(sb.data_end)) {}

void Journal::format(Media& media, const Superblock& sb) {
  Journal j(media, sb);
  j.write_header();  // both slots: no stale header may outrank this one
  j.write_header();
  media.drain();
}

void Journal::write_header() {
  std::byte h[kHeaderSize] = {};
  put_le<uint32_t>(h + 4, kHeaderMagic);
  put_le<uint64_t>(h + 8, seq_);
  put_le<uint64_t>(h + 16, head_);
  put_le<uint32_t>(h, crc32c(h + 4, kHeaderSize - 4));
  uint64_t at = start_ + header_slot_ * kHeaderSlotStride;
  media_.write(at, h, kHeaderSize);
  media_.flush(at, kHeaderSize);
  header_slot_ ^= 1;
}

Status Journal::read_header() {
  int best = -1;
  uint64_t best_seq = 0;
  bool any_poisoned = false;
  for (int slot = 0; slot < 2; ++slot) {
    // A poisoned slot is never read; the other one may still be good.
    if (!media_.poison().empty() && poisoned(slot * kHeaderSlotStride, kHeaderSize)) {
      any_poisoned = true;
      continue;
    }
    const std::byte* h = media_.at(start_ + slot * kHeaderSlotStride);
    if (get_le<uint32_t>(h + 4) != kHeaderMagic || get_le<uint32_t>(h) != crc32c(h + 4, kHeaderSize - 4))
      continue;
    if (best < 0 || get_le<uint64_t>(h + 8) > best_seq) {
      best = slot;
      best_seq = get_le<uint64_t>(h + 8);
    }
  }
  if (best < 0 && any_poisoned) {
    replay_poison_ = PoisonFound::kHeader;
    return fail(std::errc::io_error, "journal header is poisoned");
  }
  if (best < 0) return fail(std::errc::io_error, "journal header is corrupt");
  const std::byte* h = media_.at(start_ + best * kHeaderSlotStride);
  seq_ = best_seq;
  head_ = get_le<uint64_t>(h + 16);
  header_slot_ = best ^ 1;  // the next checkpoint keeps this slot intact
  if (head_ < kBlockSize || head_ > end_ || head_ % 8 != 0)
    return fail(std::errc::io_error, "journal header points outside the journal");
  if (any_poisoned) adopt_newer_log(best_seq);
  return {};
}

// The other header slot is poisoned and may have been the newer one. Every
// checkpoint restarts the log at kBlockSize, so the transaction there tells:
// after the good slot's checkpoint the first one written has its seq; a
// higher seq can only come from after the lost slot's checkpoint, and that
// is where the live log starts. (Poison there is met by replay.)
void Journal::adopt_newer_log(uint64_t header_seq) {
  if (end_ - kBlockSize < kTxHeaderSize || poisoned(kBlockSize, kTxHeaderSize)) return;
  const std::byte* tx = media_.at(start_ + kBlockSize);
  uint64_t len = get_le<uint64_t>(tx + 24), seq = get_le<uint64_t>(tx + 8);
  if (get_le<uint32_t>(tx + 4) != kTxMagic || seq <= header_seq || len < kTxHeaderSize || len > end_ - kBlockSize ||
      poisoned(kBlockSize, len) || get_le<uint32_t>(tx) != crc32c(tx + 4, len - 4))
    return;
  seq_ = seq;
  head_ = kBlockSize;
}

bool Journal::record_in_bounds(uint64_t off, uint64_t len) const {
  return off >= meta_lo_ && len <= meta_hi_ - meta_lo_ && off <= meta_hi_ - len;
}

Result<uint64_t> Journal::replay() {
  if (auto st = read_header(); !st) return std::unexpected(st.error());
  uint64_t applied = 0;
  const bool any_poison = !media_.poison().empty() && poisoned(0, end_);
  for (;;) {
    if (end_ - head_ < kTxHeaderSize) break;
    // Poison where the next header would be: whether a transaction is
    // there cannot be known, so it counts as one lost.
    if (any_poison && poisoned(head_, kTxHeaderSize)) {
      replay_poison_ = PoisonFound::kLiveTransaction;
      return applied;
    }
    const std::byte* tx = media_.at(start_ + head_);
    uint64_t len = get_le<uint64_t>(tx + 24);
    if (get_le<uint32_t>(tx + 4) != kTxMagic || get_le<uint64_t>(tx + 8) != seq_ ||
        len < kTxHeaderSize || len > end_ - head_)
      break;
    // The expected transaction, with poisoned bytes: never applied.
    if (any_poison && poisoned(head_, len)) {
      replay_poison_ = PoisonFound::kLiveTransaction;
      return applied;
    }
    if (get_le<uint32_t>(tx) != crc32c(tx + 4, len - 4)) break;
    // Validate every record before applying any: a sealed but hostile
    // transaction must not write outside the metadata area.
    uint32_t nrecs = get_le<uint32_t>(tx + 16);
    size_t pos = kTxHeaderSize;
    bool valid = true;
    for (uint32_t i = 0; i < nrecs && valid; ++i) {
      if (len - pos < kRecHeaderSize) { valid = false; break; }
      uint64_t off = get_le<uint64_t>(tx + pos);
      uint32_t rlen = get_le<uint32_t>(tx + pos + 8);
      valid = record_in_bounds(off, rlen) && pad8(rlen) <= len - pos - kRecHeaderSize;
      pos += kRecHeaderSize + pad8(rlen);
    }
    if (!valid) return fail(std::errc::io_error, strfmt("journal transaction {} is malformed", seq_));
    pos = kTxHeaderSize;
    for (uint32_t i = 0; i < nrecs; ++i) {
      uint64_t off = get_le<uint64_t>(tx + pos);
      uint32_t rlen = get_le<uint32_t>(tx + pos + 8);
      media_.write(off, tx + pos + kRecHeaderSize, rlen);
      flush_in_place(off, rlen);
      pos += kRecHeaderSize + pad8(rlen);
    }
    head_ += pad8(len);
    ++seq_;
    ++applied;
  }
  if (any_poison) replay_poison_ = PoisonFound::kPastEnd;
  if (applied > 0) checkpoint();
  return applied;
}

void Journal::reset() {
  unflushed_pages_.clear();
  media_.zero(start_, end_);
  media_.flush(start_, end_);
  head_ = kBlockSize;
  write_header();  // both slots, as format does
  write_header();
  media_.drain();
  replay_poison_ = PoisonFound::kNone;
  if (on_checkpoint_) on_checkpoint_();
}

Status Journal::commit(const Transaction& tx) {
  if (tx.empty()) return {};
  size_t len = tx.encoded_size();
  if (len > max_tx_bytes())
    return fail(std::errc::file_too_large,
                strfmt("transaction of {} bytes exceeds the journal ({} bytes)", len, max_tx_bytes()));
  if (len > end_ - head_) checkpoint();

  std::vector<std::byte> blob(len);
  std::byte* b = blob.data();
  put_le<uint32_t>(b + 4, kTxMagic);
  put_le<uint64_t>(b + 8, seq_);
  put_le<uint32_t>(b + 16, static_cast<uint32_t>(tx.records_.size()));
  put_le<uint64_t>(b + 24, len);
  size_t pos = kTxHeaderSize;
  for (const auto& r : tx.records_) {
    put_le<uint64_t>(b + pos, r.off);
    put_le<uint32_t>(b + pos + 8, r.len);
    std::memcpy(b + pos + kRecHeaderSize, tx.bytes_.data() + r.pos, r.len);
    pos += kRecHeaderSize + pad8(r.len);
  }
  put_le<uint32_t>(b, crc32c(b + 4, len - 4));

  // The data the caller flushed must be durable before any byte of the
  // transaction that points at it: flushed lines persist in any order.
  media_.drain();
  uint64_t at = start_ + head_;
  media_.write(at, b, len);
  media_.flush(at, len);
  media_.drain();  // the commit point
  for (const auto& r : tx.records_) {
    media_.write(r.off, tx.bytes_.data() + r.pos, r.len);
    flush_in_place(r.off, r.len);
  }
  head_ += pad8(len);
  ++seq_;
  ++commits_;
  return {};
}

// On page-granular media a flush is an msync system call: the in-place
// copies are flushed at the checkpoint instead, page ranges merged, since
// until then replay would redo them anyway. On real pmem a flush is a cache
// line write-back, cheap enough to issue at once.
void Journal::flush_in_place(uint64_t off, size_t len) {
  if (media_.byte_granular()) {
    media_.flush(off, len);
    return;
  }
  uint64_t first = off / kBlockSize, last = (off + len - 1) / kBlockSize;
  for (uint64_t page = first; page <= last; ++page) unflushed_pages_.push_back(page);
  if (unflushed_pages_.size() > (1u << 16)) {  // the same pages again and again: dedupe
    std::sort(unflushed_pages_.begin(), unflushed_pages_.end());
    unflushed_pages_.erase(std::unique(unflushed_pages_.begin(), unflushed_pages_.end()), unflushed_pages_.end());
  }
}

void Journal::flush_unflushed() {
  std::sort(unflushed_pages_.begin(), unflushed_pages_.end());
  for (size_t i = 0; i < unflushed_pages_.size();) {
    size_t j = i;
    while (j + 1 < unflushed_pages_.size() && unflushed_pages_[j + 1] <= unflushed_pages_[j] + 1) ++j;
    uint64_t first = unflushed_pages_[i], last = unflushed_pages_[j];
    media_.flush(first * kBlockSize, (last - first + 1) * kBlockSize);
    i = j + 1;
  }
  unflushed_pages_.clear();
}

void Journal::checkpoint() {
  flush_unflushed();
  media_.drain();  // every in-place write of the logged transactions
  head_ = kBlockSize;
  write_header();
  media_.drain();
  if (on_checkpoint_) on_checkpoint_();
}

}  // namespace poisonfs
