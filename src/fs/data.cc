// File data: read straight from the mapping, write in place or into newly
// allocated blocks, truncate, punch, preallocate.
//
// Ordering (DESIGN.md section 6): data for new blocks is written and flushed
// before the transaction that maps them commits (its drain covers both), so
// metadata never points at unwritten blocks. Overwrites of mapped blocks go
// in place, like ext4 data=ordered. Bytes past EOF inside the last block are
// zeroed when the file grows, before the new size commits, so a crash can
// never expose stale bytes. Every data store keeps the block checksums
// current (store_data / copy_data; see src/csum/checksums.h).
#include <algorithm>
#include <array>
#include <cstring>

#include "format/crc32c.h"
#include "fs/fs_impl.h"
#include "util/strfmt.h"

namespace poisonfs {
namespace {

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

constexpr std::array<std::byte, kBlockSize> kZeroBlock{};
// A function, not a global: crc32c picks its implementation at first use.
uint32_t zero_block_crc() {
  static const uint32_t crc = crc32c(kZeroBlock.data(), kBlockSize);
  return crc;
}

}  // namespace

Result<uint64_t> writable_length(uint64_t off, uint64_t len) {
  if (len == 0) return 0;  // an empty write succeeds anywhere, as on Linux
  if (off >= kMaxFileSize) return fail(std::errc::file_too_large);
  return std::min(len, kMaxFileSize - off);
}

uint32_t FsImpl::crc_after_store(uint64_t block, size_t lo, size_t hi, const std::byte* src) {
  const uint64_t base = block_offset(block);
  const std::byte* old = media_->at(base);
  auto poisoned = [&](size_t from, size_t to) {
    return from < to && poison().first(base + from, to - from).has_value();
  };
  if (poison().empty() || (!poisoned(0, lo) && !poisoned(hi, kBlockSize))) {
    uint32_t crc = crc32c(old, lo);
    crc = crc32c(src ? src : kZeroBlock.data(), hi - lo, crc);
    return crc32c(old + hi, kBlockSize - hi, crc);
  }
  // Poison outside the stored bytes: their lost content stays covered by the
  // old entry, moved by the difference. crc32c is affine over equal lengths:
  // crc(a ^ b) == crc(a) ^ crc(b) ^ crc(zeros).
  uint32_t recorded = csums_.get(block);
  if (recorded == 0 || poisoned(lo, hi)) return 0;
  std::array<std::byte, kBlockSize> diff{};
  for (size_t i = lo; i < hi; ++i) diff[i] = old[i] ^ (src ? src[i - lo] : std::byte{0});
  return recorded ^ crc32c(diff.data(), kBlockSize) ^ zero_block_crc();
}

void FsImpl::store_data(uint64_t off, const std::byte* src, size_t len) {
  if (len == 0) return;
  auto store = [&] {
    if (src) media_->write(off, src, len);
    else media_->zero(off, len);
    media_->flush(off, len);
  };
  if (!csums_.enabled()) return store();
  const uint64_t first = off / kBlockSize, last = (off + len - 1) / kBlockSize;
  csums_.begin_write(first, last - first + 1);
  // Only the first and last block can be partial, and only they need their
  // old bytes: their checksums are computed before the store.
  const size_t first_lo = off % kBlockSize, last_hi = (off + len - 1) % kBlockSize + 1;
  const uint32_t first_crc = crc_after_store(first, first_lo, first == last ? last_hi : kBlockSize, src);
  const uint32_t last_crc =
      first == last ? first_crc : crc_after_store(last, 0, last_hi, src ? src + (block_offset(last) - off) : nullptr);
  store();
  for (uint64_t b = first; b <= last; ++b) {
    uint32_t crc = b == first ? first_crc : b == last ? last_crc
                 : src ? crc32c(src + (block_offset(b) - off), kBlockSize) : zero_block_crc();
    csums_.set(b, crc);
  }
}

// Whole blocks take their source's entry: a copy must not turn corrupt
// data into data with a matching checksum.
void FsImpl::copy_data(uint64_t to, uint64_t from, size_t len) {
  if (!csums_.enabled() || to % kBlockSize != 0 || from % kBlockSize != 0)
    return store_data(to, media_->at(from), len);
  const size_t whole = len / kBlockSize * kBlockSize;
  if (whole) {
    csums_.begin_write(to / kBlockSize, whole / kBlockSize);
    media_->write(to, media_->at(from), whole);
    media_->flush(to, whole);
    for (uint64_t i = 0; i < whole / kBlockSize; ++i)
      csums_.set(to / kBlockSize + i, csums_.get(from / kBlockSize + i));
  }
  store_data(to + whole, media_->at(from + whole), len - whole);
}

uint64_t FsImpl::alloc_hint(Inode& inode, uint64_t fb) {
  Extent* prev = inode.extents.before(fb + 1);
  if (prev && prev->file_block <= fb) return prev->phys_end() + (fb - prev->file_end());
  return 0;
}

// Zeroes [off, end of its block) when that block is written data: called
// before the file grows past off.
Status FsImpl::zero_partial_block(Inode& inode, uint64_t off, Transaction& tx, std::vector<BlockRange>& dropped) {
  if (off % kBlockSize == 0) return {};
  return zero_range_in_place(inode, off, (off / kBlockSize + 1) * kBlockSize, tx, dropped);
}

std::pair<bool, uint64_t> FsImpl::sharing_run(uint64_t phys, uint64_t max) const {
  const bool shared = rmap_.refcount(phys) > 1;
  uint64_t end = phys;  // the run so far is [phys, end)
  rmap_.query(phys, max, [&](const RmapHit& hit) {
    if (hit.phys < end) return true;  // another owner of a piece already counted
    if (hit.phys != end || (hit.sharers > 1) != shared) return false;
    end = hit.phys + hit.count;
    return true;
  });
  return {shared, std::max<uint64_t>(end - phys, 1)};
}

// Copy-on-write (see fs_impl.h). The new blocks are written and flushed
// before the transaction that remaps them commits, so after a crash the
// file maps either the old shared blocks or its complete private copy.
Status FsImpl::unshare(Inode& inode, uint64_t fb, uint64_t n, uint64_t keep_from, uint64_t keep_to,
                       Transaction& tx, std::vector<BlockRange>& dropped) {
  // Pieces already remapped whose [keep_from, keep_to) was not copied. If a
  // later piece fails, the caller overwrites nothing (yet commits what was
  // staged): those bytes then get the old content after all, never what the
  // new blocks held as free space.
  struct Skipped {
    uint64_t to, from, len;  // device bytes
  };
  std::vector<Skipped> skipped;
  auto give_up = [&](Status st) {
    for (const Skipped& s : skipped) copy_data(s.to, s.from, s.len);
    return st;
  };
  for (uint64_t cur = fb; cur < fb + n;) {
    Extent* e = inode.extents.at_or_after(cur);
    if (!e || e->file_block >= fb + n) return {};
    if (e->file_block > cur) cur = e->file_block;
    uint64_t stop = std::min(fb + n, e->file_end());
    if (e->unwritten()) {
      cur = stop;
      continue;
    }
    uint64_t old_phys = e->phys_block + (cur - e->file_block);
    auto [shared, run] = sharing_run(old_phys, stop - cur);
    if (!shared) {
      cur += run;
      continue;
    }
    // A copy-on-write never copies poisoned bytes; the bytes about to be
    // overwritten are not copied, so poison there does not matter (that is
    // how a recovery write to a shared poisoned block gets its own copy).
    {
      uint64_t span_from = block_offset(cur), span_to = block_offset(cur + run);
      uint64_t hole_from = std::clamp(keep_from, span_from, span_to), hole_to = std::clamp(keep_to, hole_from, span_to);
      auto poisoned = [&](uint64_t from, uint64_t to) {
        return from < to && poison().first(block_offset(old_phys) + (from - span_from), to - from);
      };
      if (poisoned(span_from, hole_from) || poisoned(hole_to, span_to)) {
        // Latent poison found here is consumed like a read's (known, notified).
        consume_latent(block_offset(old_phys), span_to - span_from);
        return give_up(fail(std::errc::io_error));
      }
    }
    if (auto st = reserve_slots(inode, inode.chain, 2, tx); !st) return give_up(st);
    BlockRange fresh = allocate_clean(run, alloc_hint(inode, cur));
    if (fresh.count == 0) return give_up(fail(std::errc::no_space_on_device));
    // Copy what will not be overwritten: whole blocks, minus [keep_from, keep_to).
    uint64_t span_from = block_offset(cur), span_to = block_offset(cur + fresh.count);
    auto copy = [&](uint64_t from, uint64_t to) {
      if (from >= to) return;
      copy_data(block_offset(fresh.start) + (from - span_from), block_offset(old_phys) + (from - span_from),
                to - from);
    };
    copy(span_from, std::min(span_to, std::max(span_from, keep_from)));
    copy(std::max(span_from, std::min(span_to, keep_to)), span_to);
    uint64_t skip_from = std::min(span_to, std::max(span_from, keep_from));
    uint64_t skip_to = std::max(skip_from, std::min(span_to, keep_to));
    if (skip_from < skip_to)
      skipped.push_back({block_offset(fresh.start) + (skip_from - span_from),
                         block_offset(old_phys) + (skip_from - span_from), skip_to - skip_from});
    ExtentEdit edit;
    inode.extents.punch(cur, fresh.count, edit);
    inode.extents.insert(cur, fresh.count, fresh.start, 0, edit);
    stage_extent_edit(inode, edit, tx, dropped);
    cur += fresh.count;
  }
  return {};
}

Result<size_t> FsImpl::_read_segments(Inode& inode, uint64_t off, size_t len, std::vector<ReadSegment>& out) {
  if (off >= inode.rec.size) return 0;
  uint64_t end = std::min<uint64_t>(inode.rec.size, off + len);
  for (uint64_t pos = off; pos < end;) {
    uint64_t fb = pos / kBlockSize;
    Extent* e = inode.extents.at_or_after(fb);
    if (!e || e->file_block > fb) {  // a hole up to the next extent
      uint64_t hole_end = e ? std::min(end, block_offset(e->file_block)) : end;
      out.push_back({nullptr, hole_end - pos});
      pos = hole_end;
      continue;
    }
    uint64_t seg_end = std::min(end, block_offset(e->file_end()));
    if (e->unwritten()) {
      out.push_back({nullptr, seg_end - pos});
    } else {
      uint64_t phys = block_offset(e->phys_block) + (pos - block_offset(e->file_block));
      out.push_back({media_->at(phys), seg_end - pos});
    }
    pos = seg_end;
  }
  return end - off;
}


// Writes data at off: in place over written blocks, into the existing blocks
// of unwritten extents (then marked written), into new blocks over holes.
// Stops early (short write) when space runs out; fails only if nothing fit.
Result<size_t> FsImpl::_write(Inode& inode, uint64_t off, std::span<const std::byte> data,
                              Transaction& tx, std::vector<BlockRange>& dropped) {
  if (data.empty()) return 0;
  // Callers cut data at the maximum size (writable_length).
  if (off >= kMaxFileSize || data.size() > kMaxFileSize - off) return fail(std::errc::file_too_large);
  const uint64_t end = off + data.size();
  if (end > inode.rec.size)
    if (auto st = zero_partial_block(inode, inode.rec.size, tx, dropped); !st) return std::unexpected(st.error());
  auto put = [&](uint64_t phys_off, uint64_t pos, uint64_t n) { store_data(phys_off, data.data() + (pos - off), n); };
  uint64_t pos = off;
  while (pos < end) {
    const uint64_t fb = pos / kBlockSize;
    Extent* e = inode.extents.at_or_after(fb);
    if (e && e->file_block <= fb && !e->unwritten()) {
      uint64_t chunk_end = std::min(end, block_offset(e->file_end()));
      uint64_t phys = e->phys_block + (fb - e->file_block);
      auto [shared, run] = sharing_run(phys, (chunk_end - block_offset(fb) + kBlockSize - 1) / kBlockSize);
      if (shared && !heal_in_place_.empty()) {
        auto heal = std::lower_bound(heal_in_place_.begin(), heal_in_place_.end(), phys);
        if (heal != heal_in_place_.end() && *heal == phys) {
          // Recovery with the recorded content: in place, every sharer
          // healed; a run of such blocks in one store.
          uint64_t healing = 1;
          while (heal + healing != heal_in_place_.end() && *(heal + healing) == phys + healing) ++healing;
          chunk_end = std::min(chunk_end, block_offset(fb + healing));
          // The bytes are the recorded content (healable_blocks checked
          // their crc): the checksum entries stay as they are.
          const uint64_t at = block_offset(phys) + (pos - block_offset(fb));
          media_->write(at, data.data() + (pos - off), chunk_end - pos);
          media_->flush(at, chunk_end - pos);
          pos = chunk_end;
          continue;
        }
        if (heal != heal_in_place_.end() && *heal < phys + run) run = *heal - phys;
      }
      if (shared) {  // copy-on-write, then go round again to write in place
        // With nothing written yet, its error is the write's (EIO when the
        // copy would carry poison), not the generic ENOSPC below.
        if (auto st = unshare(inode, fb, run, pos, end, tx, dropped); !st) {
          if (pos == off) return std::unexpected(st.error());
          break;
        }
        continue;
      }
      chunk_end = std::min(chunk_end, block_offset(fb + run));
      put(block_offset(e->phys_block) + (pos - block_offset(e->file_block)), pos, chunk_end - pos);
      pos = chunk_end;
      continue;
    }
    // New or unwritten blocks: whole blocks are written, the parts outside
    // [pos, end) as zeros (they read as zeros now and must keep doing so).
    // Record slots first: a new chain block then lands before the data, not
    // right after it where the file's next sequential extent belongs.
    if (auto st = reserve_slots(inode, inode.chain, 2, tx); !st) break;
    uint64_t fb_end = div_up(end, kBlockSize);
    uint64_t phys;
    uint64_t nblocks;
    bool fresh = !(e && e->file_block <= fb);
    if (fresh) {
      if (e) fb_end = std::min(fb_end, e->file_block);
      BlockRange r = allocate_clean(fb_end - fb, alloc_hint(inode, fb));
      if (r.count == 0) break;
      phys = r.start;
      nblocks = r.count;
    } else {
      fb_end = std::min(fb_end, e->file_end());
      phys = e->phys_block + (fb - e->file_block);
      nblocks = fb_end - fb;
    }
    uint64_t span_start = block_offset(fb), span_end = block_offset(fb + nblocks);
    uint64_t wend = std::min(end, span_end);
    if (pos > span_start) store_data(block_offset(phys), nullptr, pos - span_start);
    put(block_offset(phys) + (pos - span_start), pos, wend - pos);
    if (wend < span_end) store_data(block_offset(phys) + (wend - span_start), nullptr, span_end - wend);

    ExtentEdit edit;
    if (!fresh) {
      inode.extents.punch(fb, nblocks, edit);  // mapped again below: the rmap nets out
    }
    inode.extents.insert(fb, nblocks, phys, 0, edit);
    stage_extent_edit(inode, edit, tx, dropped);
    pos = wend;
  }
  size_t written = pos - off;
  if (written == 0) return fail(std::errc::no_space_on_device);
  inode.rec.mtime_ns = inode.rec.ctime_ns = now_ns();
  bool grew = pos > inode.rec.size;
  if (grew) inode.rec.size = pos;
  // Pure in-place overwrites keep their times in memory (written lazily).
  if (!tx.empty() || grew) stage_inode(tx, inode);
  else inode.times_dirty = true;
  return written;
}

// The poison under the bytes [off, end) of inode as the file maps them now,
// each piece unclipped to whole units. Empty when the device has none.
std::vector<PoisonRange> FsImpl::poison_under(Inode& inode, uint64_t off, uint64_t end) {
  std::vector<PoisonRange> out;
  if (poison().empty()) return out;
  for (Extent* e = inode.extents.at_or_after(off / kBlockSize); e && block_offset(e->file_block) < end;) {
    uint64_t lo = std::max(off, block_offset(e->file_block)), hi = std::min(end, block_offset(e->file_end()));
    uint64_t phys = block_offset(e->phys_block) + (lo - block_offset(e->file_block));
    uint64_t unit_lo = phys / kPoisonUnit * kPoisonUnit;
    uint64_t unit_hi = (phys + (hi - lo) + kPoisonUnit - 1) / kPoisonUnit * kPoisonUnit;
    poison().append_overlapping(unit_lo, unit_hi - unit_lo, out);
    auto next = std::next(ExtentMap::Set::s_iterator_to(*e));
    e = next == inode.extents.end() ? nullptr : &*next;
  }
  return out;
}

// Recovery (DESIGN.md section 3): a plain write over known poison. It must
// cover every poisoned unit it touches completely (else EIO, nothing
// changed). Shared blocks get a private copy as usual (copy-on-write skips
// the bytes being written, so the poison is not copied) and the other
// sharers stay poisoned; blocks this file owns alone are written in place,
// and only then, after the transaction commits, is their poison cleared: a
// crash before leaves the range poisoned (EIO), never stale bytes.
// `poison` is poison_under(inode, off, end).
Status FsImpl::check_recovery_write(Inode& inode, uint64_t off, uint64_t end, std::span<const PoisonRange> poison) {
  for (const PoisonRange& p : poison) {
    // Device bytes of p must lie inside the device bytes of [off, end).
    bool covered = false;
    for (Extent* e = inode.extents.at_or_after(off / kBlockSize); e && block_offset(e->file_block) < end;) {
      uint64_t lo = std::max(off, block_offset(e->file_block)), hi = std::min(end, block_offset(e->file_end()));
      uint64_t phys = block_offset(e->phys_block) + (lo - block_offset(e->file_block));
      if (p.offset >= phys && p.end() <= phys + (hi - lo)) covered = true;
      auto next = std::next(ExtentMap::Set::s_iterator_to(*e));
      e = next == inode.extents.end() ? nullptr : &*next;
    }
    if (!covered)
      return fail(std::errc::io_error, "a recovery write must cover every poisoned 64-byte unit it touches");
  }
  return {};
}

bool FsImpl::restores_recorded_content(uint64_t block, size_t lo, size_t hi, const std::byte* data) {
  const uint32_t recorded = csums_.get(block);
  if (recorded == 0) return false;
  const uint64_t base = block_offset(block);
  // Every poisoned byte of the block must be among the written ones.
  if ((lo > 0 && poison().first(base, lo)) || (hi < kBlockSize && poison().first(base + hi, kBlockSize - hi)))
    return false;
  const std::byte* old = media_->at(base);
  uint32_t crc = crc32c(old, lo);
  crc = crc32c(data, hi - lo, crc);
  return crc32c(old + hi, kBlockSize - hi, crc) == recorded;
}

std::vector<uint64_t> FsImpl::healable_blocks(Inode& inode, uint64_t off, std::span<const std::byte> data) {
  std::vector<uint64_t> out;
  if (!csums_.enabled()) return out;
  const uint64_t end = off + data.size();
  for (uint64_t fb = off / kBlockSize; block_offset(fb) < end; ++fb) {
    Extent* e = inode.extents.at_or_after(fb);
    if (!e) break;
    if (e->file_block > fb) {
      fb = e->file_block - 1;  // skip the hole
      continue;
    }
    const uint64_t phys = e->phys_block + (fb - e->file_block);
    if (e->unwritten() || rmap_.refcount(phys) < 2 ||
        !poison().first(block_offset(phys), kBlockSize))
      continue;
    const uint64_t lo = std::max(off, block_offset(fb)), hi = std::min(end, block_offset(fb + 1));
    if (restores_recorded_content(phys, lo - block_offset(fb), hi - block_offset(fb), data.data() + (lo - off)))
      out.push_back(phys);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// One event per run of healed blocks, naming every sharer.
void FsImpl::record_heal(const std::vector<uint64_t>& healed) {
  for (size_t i = 0; i < healed.size();) {
    size_t j = i + 1;
    while (j < healed.size() && healed[j] == healed[j - 1] + 1) ++j;
    record_event(EventKind::kHeal, block_offset(healed[i]), block_offset(j - i),
                 "recovery write matched the blocks' checksums: every sharer healed in place, sharing kept",
                 data_owners_of(healed[i], j - i));
    i = j;
  }
}

// The kernel cuts a buffered write(2) into pieces where the user's buffer
// crosses a page it must fault in first (the page-cache folio is not
// uptodate, as over poison it never is), and sends them in order, each
// answered before the next. Judged alone, a piece of a recovery write can
// stop inside a poisoned unit it does not cover. Such a piece, from an open
// file's page cache (from), is taken whole: up to its last block it is
// written now, the rest (less than a block) waits in memory and is joined to
// that file's next write, which must start where it ends; a whole block is
// then written at once, also over shared blocks. Until then the waiting
// bytes are not in the file (its poisoned units still read as EIO, the rest
// as before) and no poison is cleared. A flush (close) while a tail waits
// fails but keeps it: another descriptor's close can come between two
// pieces. A tail that no piece completes (settle_recovery: fsync, release;
// another write of its file elsewhere; a change of those bytes by anyone)
// is dropped with an event, and its file's next flush or settle fails with
// EIO. A crash loses the tail: its units stay poisoned, as before the write.
Result<size_t> FsImpl::write(Ino ino, uint64_t off, std::span<const std::byte> data, OpenFileId from) {
  // Cut first: every step below (recovery, a waiting tail) sees what is written.
  auto writable = writable_length(off, data.size());
  if (!writable) return std::unexpected(writable.error());
  data = data.first(*writable);
  LatentNotifier notify_latent(*this);  // a copy-on-write may meet latent poison
  std::unique_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  if ((*inode)->is_dir()) return fail(std::errc::is_a_directory);
  if (!(*inode)->is_reg()) return fail(std::errc::invalid_argument);
  if (recovery_tails_.empty() || data.empty()) return write_locked(**inode, ino, off, data, from);
  auto tail = from == kWholeWrite ? recovery_tails_.end() : recovery_tails_.find(from);
  if (tail != recovery_tails_.end() && (tail->second.ino != ino || tail->second.end() != off))
    abandon_recovery_tail(from, "its file wrote elsewhere");
  else if (tail != recovery_tails_.end())
    return write_joined(**inode, ino, data, from);
  Result<size_t> n = write_locked(**inode, ino, off, data, from);
  // Other files' tails under the written bytes would bring back what they replaced.
  if (n && *n > 0) abandon_recovery_tails_of(ino, "another write changed its bytes", off, off + *n, from);
  return n;
}

Result<size_t> FsImpl::write_joined(Inode& inode, Ino ino, std::span<const std::byte> data, OpenFileId from) {
  auto tail = recovery_tails_.find(from);
  std::vector<std::byte> joined = std::move(tail->second.bytes);
  const uint64_t joined_off = tail->second.off;
  const size_t carried = joined.size();
  recovery_tails_.erase(tail);
  joined.insert(joined.end(), data.begin(), data.end());
  Result<size_t> n = write_locked(inode, ino, joined_off, joined, from);
  if (n && *n > 0) abandon_recovery_tails_of(ino, "another write changed its bytes", joined_off, joined_off + *n, from);
  if (n && *n > carried) return *n - carried;
  // The bytes already answered for are lost with this piece. (A short
  // write stops at a block boundary past them: only a failure comes here.)
  mark_recovery_incomplete(from, ino, joined_off, carried, "its next piece failed");
  if (!n) return n;
  return fail(std::errc::no_space_on_device);
}

Result<size_t> FsImpl::write_locked(Inode& inode, Ino ino, uint64_t off, std::span<const std::byte> data,
                                    OpenFileId from) {
  const uint64_t end = off + data.size();
  // The hot path: one atomic load when the device has no poison.
  std::vector<PoisonRange> before;  // the poison the write starts from
  if (!poison().empty() && !data.empty() && end > off) before = poison_under(inode, off, end);
  const bool recovery = !before.empty();
  if (recovery)
    if (auto st = check_recovery_write(inode, off, end, before); !st) {
      if (from == kWholeWrite) return std::unexpected(std::move(st.error()));
      return defer_recovery_tail(inode, ino, off, data, from, std::move(st.error()));
    }
  Transaction tx;
  std::vector<BlockRange> dropped;
  if (recovery) heal_in_place_ = healable_blocks(inode, off, data);
  Result<size_t> n = _write(inode, off, data, tx, dropped);
  std::vector<uint64_t> healed;
  healed.swap(heal_in_place_);
  const bool remapped = !tx.empty();  // else every byte went in place
  // Committed even when nothing was written: a record block linked into
  // the inode's chain (in memory already) must reach the media too.
  auto committed = commit(tx, std::move(dropped));
  if (n && !committed) n = std::unexpected(committed.error());
  if (n && recovery) {
    // What is still poisoned under the written bytes was written in place.
    // A pure in-place write commits nothing: drain so that the data is
    // durable before the poison list (persisted at once) forgets the range.
    media_->drain();
    // Unless blocks were remapped (copy-on-write) or the write fell short,
    // that is the poison it started from: no second lookup.
    const std::vector<PoisonRange> recovered =
        remapped || *n != data.size() ? poison_under(inode, off, off + *n) : before;
    poison().clear_all(recovered);  // one save of the device's record
    Event e;
    e.kind = EventKind::kRecovery;
    // The poisoned device range: cleared in place, or left to the other sharers.
    const auto& range = recovered.empty() ? before : recovered;
    e.device_offset = range.front().offset;
    e.length = range.back().end() - range.front().offset;
    e.action = recovered.empty() ? "recovery write: the writer got its own copy; other sharers stay poisoned"
                                 : "recovery write: poison cleared in place";
    e.owners.push_back(EventOwner{"data", ino, first_path(ino), off, *n});
    record_event(std::move(e));
    if (!healed.empty()) record_heal(healed);
  }
  return n;
}

Result<size_t> FsImpl::defer_recovery_tail(Inode& inode, Ino ino, uint64_t off, std::span<const std::byte> data,
                                           OpenFileId from, Error err) {
  const uint64_t end = off + data.size();
  const uint64_t unit_end = div_up(end, kPoisonUnit) * kPoisonUnit;
  // Refused for more than the unit its end cuts into: the next piece cannot help.
  if (unit_end == end || !check_recovery_write(inode, off, unit_end, poison_under(inode, off, unit_end)))
    return std::unexpected(std::move(err));
  const uint64_t cut = std::max(off, end / kBlockSize * kBlockSize);
  if (cut > off) {
    // Covers every unit it touches (cut is block-aligned): a plain recovery.
    Result<size_t> n = write_locked(inode, ino, off, data.first(cut - off), kWholeWrite);
    if (!n || *n != cut - off) return n;
  }
  recovery_tails_[from] = RecoveryTail{ino, cut, {data.begin() + (cut - off), data.end()}};
  return data.size();
}

void FsImpl::abandon_recovery_tail(OpenFileId file, std::string_view why) {
  auto tail = recovery_tails_.find(file);
  if (tail == recovery_tails_.end()) return;
  const RecoveryTail dropped = std::move(tail->second);
  recovery_tails_.erase(tail);
  mark_recovery_incomplete(file, dropped.ino, dropped.off, dropped.bytes.size(), why);
}

void FsImpl::abandon_recovery_tails_of(Ino ino, std::string_view why, uint64_t off, uint64_t end,
                                       OpenFileId except) {
  if (recovery_tails_.empty()) return;  // the common case: nothing waits
  std::vector<OpenFileId> stale;
  for (const auto& [file, tail] : recovery_tails_)
    if (tail.ino == ino && file != except && tail.off < end && off < tail.end()) stale.push_back(file);
  for (OpenFileId file : stale) abandon_recovery_tail(file, why);
}

void FsImpl::mark_recovery_incomplete(OpenFileId file, Ino ino, uint64_t off, uint64_t len, std::string_view why) {
  incomplete_recovery_.insert(file);
  uint64_t device = 0;  // 0 when the bytes' block is no longer mapped
  auto inode = get(ino);
  const uint64_t fb = off / kBlockSize;
  if (Extent* e = inode ? (*inode)->extents.at_or_after(fb) : nullptr; e && e->file_block <= fb && !e->unwritten())
    device = block_offset(e->phys_block + (fb - e->file_block)) + off % kBlockSize;
  record_event(EventKind::kIncomplete, device, len,
               strfmt("recovery write incomplete: {}; {} bytes dropped, their units stay poisoned", why, len),
               {EventOwner{"data", ino, first_path(ino), off, len}});
}

bool FsImpl::has_recovery_state() const {
  std::shared_lock lock(mutex_);  // every close(2) of a writer asks: the common case shares the lock
  return !recovery_tails_.empty() || !incomplete_recovery_.empty();
}

Status FsImpl::take_incomplete_report(OpenFileId file) {
  if (incomplete_recovery_.erase(file) == 0) return {};
  return fail(std::errc::io_error, "a recovery write was left incomplete: its units stay poisoned");
}

Status FsImpl::flush(Ino, OpenFileId file) {
  if (file == kWholeWrite || !has_recovery_state()) return {};
  std::unique_lock lock(mutex_);
  if (recovery_tails_.contains(file))
    return fail(std::errc::io_error, "a recovery write still waits for its next piece: its units stay poisoned");
  return take_incomplete_report(file);
}

Status FsImpl::settle_recovery(Ino, OpenFileId file) {
  if (file == kWholeWrite || !has_recovery_state()) return {};
  std::unique_lock lock(mutex_);
  abandon_recovery_tail(file, "no piece continued it");
  return take_incomplete_report(file);
}

Status FsImpl::_punch(Inode& inode, uint64_t fb, uint64_t n, Transaction& tx,
                      std::vector<BlockRange>& dropped) {
  if (n == 0) return {};
  if (auto st = reserve_slots(inode, inode.chain, 1, tx); !st) return st;
  ExtentEdit edit;
  inode.extents.punch(fb, n, edit);
  stage_extent_edit(inode, edit, tx, dropped);
  return {};
}

// Punches [fb, fb+n) in pieces of at most extents_per_commit() extents,
// committing all but the last, which stays staged in tx. A crash leaves part
// of the range punched, as XFS, which unmaps one extent per transaction.
Status FsImpl::punch_in_pieces(Inode& inode, uint64_t fb, uint64_t n, Transaction& tx,
                               std::vector<BlockRange>& dropped) {
  const size_t max = extents_per_commit();
  for (const uint64_t end = fb + n; fb < end;) {
    uint64_t stop = piece_end(inode, fb, end, max);
    if (auto st = _punch(inode, fb, stop - fb, tx, dropped); !st) return st;
    fb = stop;
    if (fb < end)
      if (auto st = commit_piece(tx, dropped); !st) return st;
  }
  return {};
}

// The second half of a truncate in pieces; clears kInodeTruncating in the
// last piece, which stays staged in tx.
Status FsImpl::unmap_past_eof(Inode& inode, Transaction& tx, std::vector<BlockRange>& dropped) {
  uint64_t keep = div_up(inode.rec.size, kBlockSize);
  if (auto st = punch_in_pieces(inode, keep, kMaxFileSize / kBlockSize - keep, tx, dropped); !st) return st;
  if (inode.extents.size() == 0) release_chain(inode, inode.chain, tx, dropped);
  inode.rec.flags &= ~kInodeTruncating;
  stage_inode(tx, inode);
  return {};
}

Status FsImpl::_truncate(Inode& inode, uint64_t size, Transaction& tx, std::vector<BlockRange>& dropped) {
  if (size < inode.rec.size) {
    uint64_t keep = div_up(size, kBlockSize);
    if (keep == 0) {
      // Everything goes: unlink the whole record chain instead of clearing
      // each record, one small transaction however fragmented the file.
      ExtentEdit edit;
      inode.extents.clear(edit);
      for (const MappedRange& r : edit.dropped)
        rmap_.remove(r.start, r.count, Owner{inode.rec.ino, r.file_block, OwnerKind::kData}, &dropped);
      release_chain(inode, inode.chain, tx, dropped);
    } else if (inode.extents.size() > extents_per_commit()) {
      // Maybe more extents past the new EOF than one commit holds (the
      // count is O(1); walking them to be sure would walk them twice): the new size
      // and the truncating flag first, so that from the first commit on the
      // truncate has happened (what lies past EOF is unreachable), then the
      // extents in pieces; mount finishes what a crash interrupts.
      inode.rec.size = size;
      inode.rec.flags |= kInodeTruncating;
      stage_inode(tx, inode);
      if (auto st = commit_piece(tx, dropped); !st) return st;
      if (auto st = unmap_past_eof(inode, tx, dropped); !st) return st;
    } else {
      if (auto st = _punch(inode, keep, kMaxFileSize / kBlockSize - keep, tx, dropped); !st) return st;
      if (inode.extents.size() == 0) release_chain(inode, inode.chain, tx, dropped);
    }
  } else if (size > inode.rec.size) {
    if (auto st = zero_partial_block(inode, inode.rec.size, tx, dropped); !st) return st;
  }
  inode.rec.size = size;
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return {};
}

// Maps every hole of [fb, fb+n) to newly allocated unwritten blocks, one
// commit per extents_per_commit() holes (a crash keeps the holes filled so
// far, as a partial preallocation on Linux does).
Status FsImpl::_preallocate(Inode& inode, uint64_t fb, uint64_t n, Transaction& tx,
                            std::vector<BlockRange>& dropped) {
  const size_t max = extents_per_commit();
  size_t filled = 0;
  uint64_t end = fb + n;
  for (uint64_t cur = fb; cur < end;) {
    if (filled == max) {
      if (auto st = commit_piece(tx, dropped); !st) return st;
      filled = 0;
    }
    Extent* e = inode.extents.at_or_after(cur);
    if (e && e->file_block <= cur) {
      cur = e->file_end();
      continue;
    }
    uint64_t hole_end = e ? std::min(end, e->file_block) : end;
    // Slots before data, as in _write: keeps the file's extents contiguous.
    if (!reserve_slots(inode, inode.chain, 2, tx)) return fail(std::errc::no_space_on_device);
    BlockRange r = allocate_clean(hole_end - cur, alloc_hint(inode, cur));
    if (r.count == 0) return fail(std::errc::no_space_on_device);
    csums_.forget(r.start, r.count);  // what the blocks hold now means nothing
    ExtentEdit edit;
    inode.extents.insert(cur, r.count, r.start, kExtentUnwritten, edit);
    std::vector<BlockRange> none;  // inserting drops nothing
    stage_extent_edit(inode, edit, tx, none);
    cur += r.count;
    ++filled;
  }
  return {};
}

// Zeroes the written blocks under [from, to) in place (after giving shared
// ones a private copy); holes and unwritten extents already read as zeros.
Status FsImpl::zero_range_in_place(Inode& inode, uint64_t from, uint64_t to, Transaction& tx,
                                   std::vector<BlockRange>& dropped) {
  if (from >= to) return {};
  uint64_t fb = from / kBlockSize, n = (to + kBlockSize - 1) / kBlockSize - fb;
  if (auto st = unshare(inode, fb, n, from, to, tx, dropped); !st) return st;
  for (uint64_t p = from; p < to;) {
    Extent* e = inode.extents.at_or_after(p / kBlockSize);
    if (!e) break;
    if (block_offset(e->file_block) > p) {
      p = block_offset(e->file_block);
      continue;
    }
    uint64_t stop = std::min(to, block_offset(e->file_end()));
    if (!e->unwritten()) {
      uint64_t phys = block_offset(e->phys_block) + (p - block_offset(e->file_block));
      store_data(phys, nullptr, stop - p);
    }
    p = stop;
  }
  return {};
}

Status FsImpl::fallocate(Ino ino, int mode, uint64_t off, uint64_t len) {
  const int known = kFallocKeepSize | kFallocPunchHole | kFallocZeroRange;
  if ((mode & ~known) || ((mode & kFallocPunchHole) && !(mode & kFallocKeepSize)) ||
      ((mode & kFallocPunchHole) && (mode & kFallocZeroRange)))
    return fail(std::errc::operation_not_supported);
  if (len == 0) return fail(std::errc::invalid_argument);
  if (off >= kMaxFileSize || len > kMaxFileSize - off) return fail(std::errc::file_too_large);
  LatentNotifier notify_latent(*this);  // zeroing part of a shared block copies it
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  if (inode.is_dir()) return fail(std::errc::is_a_directory);
  if (!inode.is_reg()) return fail(std::errc::no_such_device);
  abandon_recovery_tails_of(ino, "fallocate changed the file", off, off + len);
  Transaction tx;
  std::vector<BlockRange> dropped;
  const uint64_t end = off + len;
  const uint64_t first_block = off / kBlockSize, end_block = div_up(end, kBlockSize);
  Status result;
  if (mode & kFallocPunchHole) {
    // Partial blocks at the edges are zeroed in place, whole blocks unmapped.
    uint64_t first_full = div_up(off, kBlockSize), last_full = end / kBlockSize;
    if (first_full >= last_full) {
      result = zero_range_in_place(inode, off, end, tx, dropped);
    } else {
      result = zero_range_in_place(inode, off, block_offset(first_full), tx, dropped);
      if (result) result = zero_range_in_place(inode, block_offset(last_full), end, tx, dropped);
      if (result) result = punch_in_pieces(inode, first_full, last_full - first_full, tx, dropped);
    }
  } else {
    if (mode & kFallocZeroRange) result = zero_range_in_place(inode, off, end, tx, dropped);
    if (result) result = _preallocate(inode, first_block, end_block - first_block, tx, dropped);
  }
  if (result && !(mode & kFallocKeepSize) && end > inode.rec.size) {
    result = zero_partial_block(inode, inode.rec.size, tx, dropped);
    if (result) inode.rec.size = end;
  }
  // Every mode, even a preallocation that allocated nothing, as XFS
  // (file_modified before any mode) and tmpfs do.
  inode.rec.mtime_ns = inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  // Whatever was staged (a partial preallocation) is kept, as on Linux.
  auto committed = commit(tx, std::move(dropped));
  if (!result) return result;
  return committed;
}

}  // namespace poisonfs
