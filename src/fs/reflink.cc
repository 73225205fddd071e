// Reflink (clone and copy_file_range) and the views built on the reverse
// map: a file's block map (bmap), the owners of a device range (fsmap), and
// the paths of an inode.
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "fs/fs_impl.h"

namespace poisonfs {
namespace {

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
bool overflows(uint64_t a, uint64_t b) { return b > kMaxFileSize || a > kMaxFileSize - b; }

// The piece of device bytes [from, to) that starts at from, cut at block
// boundaries, whose blocks all hold known poison (true) or none does
// (false), and its length: bmap and fsmap mark poisoned blocks with it.
std::pair<bool, uint64_t> poison_piece(const PoisonList& list, uint64_t from, uint64_t to) {
  if (list.empty()) return {false, to - from};
  const uint64_t lo_all = from / kBlockSize * kBlockSize, hi_all = div_up(to, kBlockSize) * kBlockSize;
  uint64_t at = from;  // end of the poisoned piece so far
  for (const PoisonRange& p : list.overlapping(lo_all, hi_all - lo_all)) {
    if (p.latent) continue;
    uint64_t lo = p.offset / kBlockSize * kBlockSize, hi = div_up(p.end(), kBlockSize) * kBlockSize;
    if (lo > at) return at == from ? std::pair{false, lo - from} : std::pair{true, at - from};
    at = std::max(at, hi);
  }
  return at == from ? std::pair{false, to - from} : std::pair{true, std::min(at, to) - from};
}

// One written piece of a source file: a run of blocks to share.
struct Piece {
  uint64_t file_block, phys_block, nblocks;
};

}  // namespace

const char* fsmap_owner_name(FsmapOwner owner) {
  switch (owner) {
    case FsmapOwner::kFree: return "free";
    case FsmapOwner::kSuperblock: return "superblock";
    case FsmapOwner::kJournal: return "journal";
    case FsmapOwner::kInodes: return "inodes";
    case FsmapOwner::kExtents: return "extents";
    case FsmapOwner::kDirectory: return "directory";
    case FsmapOwner::kXattrs: return "xattr";
    case FsmapOwner::kData: return "data";
    case FsmapOwner::kChecksums: return "checksums";
  }
  return "unknown";
}

// Maps [dst_fb, dst_fb+n) of dst to the written blocks of [src_fb, src_fb+n)
// of src. Unwritten source extents become holes (both read as zeros, and a
// preallocated block must stay private to be converted in place).
Status FsImpl::_clone(Inode& src, uint64_t src_fb, Inode& dst, uint64_t dst_fb, uint64_t n,
                      Transaction& tx, std::vector<BlockRange>& dropped) {
  std::vector<Piece> pieces;
  for (Extent* e = src.extents.at_or_after(src_fb); e && e->file_block < src_fb + n; e = src.extents.next(*e)) {
    uint64_t from = std::max(src_fb, e->file_block), to = std::min(src_fb + n, e->file_end());
    if (!e->unwritten()) pieces.push_back({from, e->phys_block + (from - e->file_block), to - from});
  }
  if (auto st = reserve_slots(dst, dst.chain, pieces.size() + 2, tx); !st) return st;
  tx.expect(pieces.size() + 2, (pieces.size() + 2) * kExtentSlotSize);  // a record per piece, at most
  ExtentEdit edit;
  dst.extents.punch(dst_fb, n, edit);
  for (const Piece& p : pieces) dst.extents.insert(dst_fb + (p.file_block - src_fb), p.nblocks, p.phys_block, 0, edit);
  stage_extent_edit(dst, edit, tx, dropped);
  return {};
}

// Clones n blocks in pieces of at most extents_per_commit() extents on either
// side, committing all but the last, which stays staged in tx for the caller.
// Each commit grows dst over what is cloned so far: a crash leaves a prefix
// of the clone (as XFS, which remaps one extent per transaction), never a
// block mapped past EOF. `cloned` counts the blocks done, also on failure.
Status FsImpl::clone_in_pieces(Inode& src, uint64_t src_fb, Inode& dst, uint64_t dst_fb, uint64_t n,
                               Transaction& tx, std::vector<BlockRange>& dropped, uint64_t& cloned) {
  const size_t max = extents_per_commit();
  for (cloned = 0; cloned < n;) {
    uint64_t s = src_fb + cloned, d = dst_fb + cloned;
    uint64_t step = std::min(piece_end(src, s, src_fb + n, max) - s, piece_end(dst, d, dst_fb + n, max) - d);
    if (auto st = _clone(src, s, dst, d, step, tx, dropped); !st) return st;
    cloned += step;
    if (cloned == n) break;
    dst.rec.size = std::max(dst.rec.size, block_offset(dst_fb + cloned));
    stage_inode(tx, dst);
    if (auto st = commit_piece(tx, dropped); !st) return st;
  }
  return {};
}

// The source and destination of a clone or copy: both regular files.
Result<std::pair<Inode*, Inode*>> FsImpl::get_regular_pair(Ino src_ino, Ino dst_ino) {
  auto src = get(src_ino);
  if (!src) return std::unexpected(src.error());
  auto dst = get(dst_ino);
  if (!dst) return std::unexpected(dst.error());
  if ((*src)->is_dir() || (*dst)->is_dir()) return fail(std::errc::is_a_directory);
  if (!(*src)->is_reg() || !(*dst)->is_reg()) return fail(std::errc::invalid_argument);
  return std::pair{*src, *dst};
}

Status FsImpl::clone_range(Ino src_ino, uint64_t src_off, Ino dst_ino, uint64_t dst_off, uint64_t len) {
  std::unique_lock lock(mutex_);
  auto files = get_regular_pair(src_ino, dst_ino);
  if (!files) return std::unexpected(files.error());
  Inode &s = *files->first, &d = *files->second;
  if (src_off > s.rec.size) return fail(std::errc::invalid_argument, "source offset past EOF");
  if (len == 0) len = s.rec.size - src_off;
  // As the VFS (generic_write_check_limits): a destination starting at or
  // past the largest size is too large, one crossing it is invalid (a clone
  // is never shortened); offsets that are negative as loff_t are invalid.
  if (dst_off >= kMaxFileSize && dst_off <= static_cast<uint64_t>(INT64_MAX))
    return fail(std::errc::file_too_large, "destination past the largest file size");
  if (overflows(src_off, len) || overflows(dst_off, len)) return fail(std::errc::invalid_argument, "range overflows");
  if (src_off + len > s.rec.size) return fail(std::errc::invalid_argument, "source range past EOF");
  if (src_off % kBlockSize || dst_off % kBlockSize) return fail(std::errc::invalid_argument, "offsets not block aligned");
  // An unaligned length may only end at the source's EOF, and then must not
  // cut into bytes of dst that lie past the clone.
  if (len % kBlockSize && (src_off + len != s.rec.size || dst_off + len < d.rec.size))
    return fail(std::errc::invalid_argument, "length not block aligned");
  if (&s == &d && src_off < dst_off + len && dst_off < src_off + len)
    return fail(std::errc::invalid_argument, "overlapping ranges of one file");
  if (len == 0) return {};
  abandon_recovery_tails_of(dst_ino, "a clone replaced its bytes", dst_off, dst_off + len);
  Transaction tx;
  std::vector<BlockRange> dropped;
  Status st;
  if (dst_off + len > d.rec.size) st = zero_partial_block(d, d.rec.size, tx, dropped);
  uint64_t cloned = 0;
  if (st) st = clone_in_pieces(s, src_off / kBlockSize, d, dst_off / kBlockSize, div_up(len, kBlockSize), tx, dropped, cloned);
  if (st) {
    d.rec.size = std::max(d.rec.size, dst_off + len);
    d.rec.mtime_ns = d.rec.ctime_ns = now_ns();
    stage_inode(tx, d);
  }
  // Whatever was staged is consistent: commit it even on failure.
  auto committed = commit(tx, std::move(dropped));
  if (!st) return st;
  return committed;
}

// Copies bytes through a bounce buffer (the source may be this same file).
Result<uint64_t> FsImpl::_copy_bytes(Inode& src, uint64_t src_off, Inode& dst, uint64_t dst_off, uint64_t len,
                                     Transaction& tx, std::vector<BlockRange>& dropped) {
  std::vector<std::byte> buf(std::min<uint64_t>(len, 1 << 20));
  uint64_t done = 0;
  while (done < len) {
    size_t chunk = std::min<uint64_t>(buf.size(), len - done);
    std::vector<ReadSegment> segs;
    auto got = _read_segments(src, src_off + done, chunk, segs);
    if (!got) return std::unexpected(got.error());
    // Poisoned bytes never leave the media: the copy stops before them.
    if (!poison().empty() && first_poisoned(segs)) {
      // Latent poison found here is consumed like a read's (known, notified).
      for (const ReadSegment& seg : segs)
        if (seg.data) consume_latent(static_cast<uint64_t>(seg.data - media_->base()), seg.length);
      if (done > 0) return done;
      return fail(std::errc::io_error);
    }
    size_t at = 0;
    for (const ReadSegment& seg : segs) {
      if (seg.data) std::memcpy(buf.data() + at, seg.data, seg.length);
      else std::memset(buf.data() + at, 0, seg.length);
      at += seg.length;
    }
    auto n = _write(dst, dst_off + done, std::span(buf.data(), *got), tx, dropped);
    if (!n) return done > 0 ? Result<uint64_t>(done) : std::unexpected(n.error());
    done += *n;
    if (*n < *got || *got < chunk) break;
  }
  return done;
}

Result<uint64_t> FsImpl::copy_range(Ino src_ino, uint64_t src_off, Ino dst_ino, uint64_t dst_off, uint64_t len) {
  LatentNotifier notify_latent(*this);  // byte copies may meet latent poison
  std::unique_lock lock(mutex_);
  auto files = get_regular_pair(src_ino, dst_ino);
  if (!files) return std::unexpected(files.error());
  Inode &s = *files->first, &d = *files->second;
  if (src_off >= s.rec.size || len == 0) return 0;
  auto writable = writable_length(dst_off, std::min(len, s.rec.size - src_off));
  if (!writable) return std::unexpected(writable.error());
  len = *writable;
  if (&s == &d && src_off < dst_off + len && dst_off < src_off + len) return fail(std::errc::invalid_argument);
  abandon_recovery_tails_of(dst_ino, "a copy replaced its bytes", dst_off, dst_off + len);

  Transaction tx;
  std::vector<BlockRange> dropped;
  Result<uint64_t> copied = 0;
  if (src_off % kBlockSize != dst_off % kBlockSize) {
    copied = _copy_bytes(s, src_off, d, dst_off, len, tx, dropped);
  } else {
    // Head bytes up to a block boundary, whole blocks shared, tail bytes.
    uint64_t head = std::min(len, (kBlockSize - src_off % kBlockSize) % kBlockSize);
    uint64_t blocks = (len - head) / kBlockSize;
    uint64_t tail = len - head - blocks * kBlockSize;
    // A partial last block at the source's EOF is shared whole when the
    // bytes after it in dst are past dst's EOF anyway.
    uint64_t end = dst_off + len;
    if (tail && src_off + len == s.rec.size && end >= d.rec.size) {
      ++blocks;
      tail = 0;
    }
    if (head) copied = _copy_bytes(s, src_off, d, dst_off, head, tx, dropped);
    if (copied && *copied == head && blocks) {
      uint64_t so = src_off + head, doff = dst_off + head;
      Status st;
      if (doff > d.rec.size) st = zero_partial_block(d, d.rec.size, tx, dropped);
      uint64_t cloned = 0;
      if (st) st = clone_in_pieces(s, so / kBlockSize, d, doff / kBlockSize, blocks, tx, dropped, cloned);
      // A failure part way is a short copy of what was shared before it.
      uint64_t shared = std::min(cloned * kBlockSize, len - head);
      if (shared) d.rec.size = std::max(d.rec.size, doff + shared);
      *copied += shared;
      if (!st && *copied == 0) copied = std::unexpected(st.error());
    }
    if (copied && tail && *copied == len - tail) {
      auto more = _copy_bytes(s, src_off + len - tail, d, dst_off + len - tail, tail, tx, dropped);
      if (more) *copied += *more;
    }
  }
  d.rec.mtime_ns = d.rec.ctime_ns = now_ns();
  stage_inode(tx, d);
  auto committed = commit(tx, std::move(dropped));
  if (!committed) return std::unexpected(committed.error());
  return copied;
}

Result<std::vector<BmapEntry>> FsImpl::bmap(Ino ino) {
  std::shared_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  std::vector<BmapEntry> out;
  for (const Extent& e : inode.extents) {
    // Cut the extent where its sharing changes.
    for (uint64_t b = 0; b < e.nblocks;) {
      auto [shared, run] = sharing_run(e.phys_block + b, e.nblocks - b);
      run = std::min(run, e.nblocks - b);
      // And where known poison starts or ends.
      auto [poisoned, bytes] = poison_piece(poison(), block_offset(e.phys_block + b),
                                            block_offset(e.phys_block + b + run));
      run = bytes / kBlockSize;
      out.push_back(BmapEntry{block_offset(e.file_block + b), block_offset(e.phys_block + b), run * kBlockSize,
                              shared, e.unwritten(), poisoned});
      b += run;
    }
  }
  return out;
}

Status FsImpl::fsmap(uint64_t start, uint64_t length, const std::function<bool(const FsmapEntry&)>& fn) {
  std::shared_lock lock(mutex_);
  const uint64_t dev_end = block_offset(sb_.total_blocks);
  const uint64_t end = length > dev_end ? dev_end : std::min(dev_end, start + length);
  bool go_on = true;
  auto emit = [&](uint64_t from, uint64_t to, FsmapEntry e) {
    from = std::max(from, start);
    to = std::min(to, end);
    // In pieces where known poison starts or ends (e.file_offset is from's).
    for (uint64_t at = from; go_on && at < to;) {
      auto [poisoned, n] = poison_piece(poison(), at, to);
      FsmapEntry piece = e;
      piece.physical = at;
      piece.length = n;
      piece.poisoned = poisoned;
      if (piece.owner == FsmapOwner::kData) piece.file_offset += at - from;
      go_on = fn(piece);
      at += n;
    }
  };
  auto region = [&](uint64_t first, uint64_t count, FsmapOwner owner) {
    emit(block_offset(first), block_offset(first + count), FsmapEntry{0, 0, owner, 0, 0, false, false});
  };
  region(0, 1, FsmapOwner::kSuperblock);
  region(sb_.journal_start, sb_.journal_blocks, FsmapOwner::kJournal);
  region(sb_.inode_start, sb_.inode_blocks, FsmapOwner::kInodes);
  if (sb_.csum_blocks) region(sb_.csum_start, sb_.csum_blocks, FsmapOwner::kChecksums);
  // The data area: what the reverse map holds, free space between.
  uint64_t lo = std::max(sb_.data_start, start / kBlockSize);
  uint64_t hi = std::min(sb_.data_end, div_up(end, kBlockSize));
  uint64_t cursor = lo;
  if (lo < hi) {
    rmap_.query(lo, hi - lo, [&](const RmapHit& hit) {
      if (hit.phys > cursor) emit(block_offset(cursor), block_offset(hit.phys), FsmapEntry{});
      FsmapEntry e;
      e.ino = hit.owner.ino;
      e.shared = hit.sharers > 1;
      switch (hit.owner.kind) {
        case OwnerKind::kData:
          e.owner = FsmapOwner::kData;
          e.file_offset = block_offset(hit.owner.offset);
          break;
        case OwnerKind::kExtents: e.owner = FsmapOwner::kExtents; break;
        case OwnerKind::kDirents: e.owner = FsmapOwner::kDirectory; break;
        case OwnerKind::kXattrs: e.owner = FsmapOwner::kXattrs; break;
      }
      uint64_t from = block_offset(hit.phys);
      if (e.owner == FsmapOwner::kData && from < start) e.file_offset += start - from;
      emit(from, block_offset(hit.phys + hit.count), e);
      cursor = std::max(cursor, hit.phys + hit.count);
      return go_on;
    });
    if (cursor < hi) emit(block_offset(cursor), block_offset(hi), FsmapEntry{});
  }
  region(sb_.copy_block(), 1, FsmapOwner::kSuperblock);
  return {};
}

Result<std::vector<std::string>> FsImpl::paths(Ino ino) {
  std::shared_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  if (ino == kRootIno) return std::vector<std::string>{"/"};
  std::vector<std::string> out;
  for (const Link& link : (*got)->links) out.push_back(path_of(link));
  return out;
}

void FsImpl::paths(std::span<const Ino> inos, PathList& out) {
  std::shared_lock lock(mutex_);
  out.clear();
  out.reserve(inos.size(), inos.size() * 32);
  // The sharers of a block are scattered over the heap and cold by the
  // time a query comes: fetch each inode's list of links, then the links
  // (a name of up to 15 bytes is inline in its Link), then a longer name,
  // a few steps ahead of their use. (Measured cold, core_bench
  // Fsmap1001OwnersPacked/cold:1: 300 us with the inode's first line
  // fetched instead, 310 us with all inodes fetched in passes.)
  auto live = [&](Ino ino) { return ino > kRootIno && ino <= inodes_.size() ? inodes_[ino - 1].get() : nullptr; };
  auto first_link = [&](size_t i) -> const Link* {
    const Inode* inode = i < inos.size() ? live(inos[i]) : nullptr;
    return inode && !inode->links.empty() ? inode->links.data() : nullptr;
  };
  for (size_t i = 0; i < inos.size(); ++i) {
    if (i + 12 < inos.size())
      if (const Inode* ahead = live(inos[i + 12])) __builtin_prefetch(&ahead->links);
    if (const Link* ahead = first_link(i + 8)) __builtin_prefetch(ahead);
    if (const Link* ahead = first_link(i + 4)) __builtin_prefetch(ahead->name.data());
    out.next_inode();
    if (inos[i] == kRootIno) out.add("/");
    if (const Inode* inode = live(inos[i]))
      for (const Link& link : inode->links) {
        size_t length = path_length(link);
        write_path(link, out.add(length), length);
      }
  }
}

// The length of the path a name makes from the root. Directories have one
// name, so walking up by their only link is exact; an open, unlinked
// directory on the way up makes the path start with "?/".
size_t FsImpl::path_length(const Link& link) const {
  size_t length = 1 + link.name.size();
  for (Ino dir = link.parent; dir != kRootIno;) {
    const Inode* d = inodes_[dir - 1].get();
    if (!d || d->links.empty()) return length + 1;
    length += 1 + d->links.front().name.size();
    dir = d->links.front().parent;
  }
  return length;
}

// Writes that path into the `length` (path_length(link)) bytes at `at`,
// from the back (the names come leaf first).
void FsImpl::write_path(const Link& link, char* at, size_t length) const {
  char* end = at + length;
  auto put = [&](const std::string& name) {
    end -= name.size();
    std::memcpy(end, name.data(), name.size());
    *--end = '/';
  };
  put(link.name);
  for (Ino dir = link.parent; dir != kRootIno;) {
    const Inode* d = inodes_[dir - 1].get();
    if (!d || d->links.empty()) {
      *--end = '?';
      break;
    }
    put(d->links.front().name);
    dir = d->links.front().parent;
  }
}

// Two walks (the length, then the names from the back) build it in one
// allocation.
std::string FsImpl::path_of(const Link& link) {
  std::string path(path_length(link), '\0');
  write_path(link, path.data(), path.size());
  return path;
}

}  // namespace poisonfs
