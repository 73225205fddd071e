// Mount, load, unmount, and the record/chain plumbing every operation uses.
//
// Mount order (DESIGN.md section 6): check the superblock (fall back to its
// copy), replay the journal, scan the inode table and every chain into the
// DRAM indexes, build the reverse map from them in one sorted pass, rebuild
// free space as the complement of what the records own, then reclaim
// orphans (inodes without a name that were open or known to the kernel
// when the daemon died).
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <limits>
#include <unordered_set>
#include "util/strfmt.h"

#include "format/layout.h"
#include "fs/fs_impl.h"

namespace poisonfs {

std::string Error::to_string() const {
  if (!message.empty()) return message;
  return std::make_error_code(code).message();
}

OwnerKind owner_kind_of(ChainKind kind) {
  switch (kind) {
    case ChainKind::kExtents: return OwnerKind::kExtents;
    case ChainKind::kDirents: return OwnerKind::kDirents;
    case ChainKind::kXattrs: return OwnerKind::kXattrs;
  }
  return OwnerKind::kExtents;
}

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * kNsPerSec + ts.tv_nsec;
}

int64_t ns_of(const Timespec& t) {
  // Exact in 128 bits for any sec and nsec, so the clamp sees the true time.
  const __int128 ns = static_cast<__int128>(t.sec) * kNsPerSec + t.nsec;
  return static_cast<int64_t>(std::clamp<__int128>(ns, std::numeric_limits<int64_t>::min(),
                                                   std::numeric_limits<int64_t>::max()));
}

Timespec timespec_of(int64_t ns) {
  // Floor division: C++ truncates toward zero, which gives -0.5 s as
  // {0, -5e8} where POSIX wants {-1, 5e8}.
  Timespec t{ns / kNsPerSec, ns % kNsPerSec};
  if (t.nsec < 0) {
    --t.sec;
    t.nsec += kNsPerSec;
  }
  return t;
}

bool Inode::is_dir() const { return S_ISDIR(rec.mode); }
bool Inode::is_reg() const { return S_ISREG(rec.mode); }
bool Inode::is_lnk() const { return S_ISLNK(rec.mode); }

FsImpl::FsImpl(std::unique_ptr<Media> media, const Superblock& sb)
    : media_(std::move(media)), poison_(media_->poison()), sb_(sb), journal_(*media_, sb_), csums_(*media_, sb_) {
  journal_.set_checkpoint_hook([this] {
    alloc_.release_pending();
    csums_.checkpoint();
  });
}

FsImpl::~FsImpl() = default;

// ---------------------------------------------------------------- mount

namespace {

// The primary superblock, or the copy in the last block when the primary is
// unreadable. Reports the primary's error when neither is good. A poisoned
// superblock is never decoded: it counts as unreadable (and is rewritten
// from the other by load()); with both poisoned there is no good copy.
Result<Superblock> read_superblock(Media& media, bool* used_copy) {
  *used_copy = false;
  if (media.size() < kSuperblockSize)
    return fail(std::errc::invalid_argument,
                strfmt("image of {} bytes is too small to hold a poisonfs superblock", media.size()));
  const uint64_t copy_off = (media.size() / kBlockSize - 1) * kBlockSize;
  auto poisoned = [&](uint64_t off) {
    return media.poison().first(off, kSuperblockSize).has_value();
  };
  const bool primary_poisoned = poisoned(0);
  if (primary_poisoned && (media.size() < 2 * kBlockSize || poisoned(copy_off)))
    return fail(std::errc::io_error,
                "both superblocks (the primary in block 0 and its copy in the last block) are poisoned: "
                "no good copy is left, the image cannot be mounted");
  auto primary = primary_poisoned ? Result<Superblock>(fail(std::errc::io_error, "primary superblock is poisoned"))
                                  : decode_superblock(media.at(0), media.size());
  if (primary || media.size() < 2 * kBlockSize) return primary;
  if (primary.error().code == std::errc::invalid_argument &&
      primary.error().message.starts_with("image is truncated"))
    return primary;
  if (poisoned(copy_off))
    return fail(std::errc::io_error,
                strfmt("primary superblock: {}; its copy in the last block is poisoned", primary.error().message));
  auto copy = decode_superblock(media.at(copy_off), media.size());
  if (!copy) return primary;
  *used_copy = true;
  return copy;
}

}  // namespace

Result<std::unique_ptr<FsImpl>> mount_impl(std::unique_ptr<Media> media, CheckState* check) {
  bool used_copy = false;
  auto sb = read_superblock(*media, &used_copy);
  if (!sb) return std::unexpected(sb.error());
  if (used_copy && check) {
    check->problems.push_back("primary superblock is corrupt; using the copy");
    if (check->repair) check->repairs.push_back("primary superblock rewritten from the copy");
  }
  auto fs = std::make_unique<FsImpl>(std::move(media), *sb);
  fs->set_check(check);
  if (auto st = fs->load(); !st) return std::unexpected(st.error());
  return fs;
}

Result<std::unique_ptr<Filesystem>> Filesystem::mount(std::unique_ptr<Media> media,
                                                      const OpenOptions& options) {
  auto fs = mount_impl(std::move(media));
  if (!fs) return std::unexpected(fs.error());
  (*fs)->set_verify_checksums(options.verify_checksums);
  (*fs)->set_posix_acls(options.posix_acls);
  return std::unique_ptr<Filesystem>(std::move(*fs));
}

Result<std::unique_ptr<Filesystem>> Filesystem::mount_image(const std::string& path,
                                                            const OpenOptions& options) {
  auto media = open_pmem_media(path, options.map_mode, options.stop_waiting);
  if (!media) return std::unexpected(media.error());
  auto fs = mount(std::move(*media), options);
  if (!fs) return fail(fs.error().code, strfmt("{}: {}", path, fs.error().to_string()));
  return fs;
}

Status FsImpl::load() {
  repair_superblocks();
  if (auto st = replay_journal(); !st) return st;

  inodes_.clear();
  inodes_.resize(sb_.inode_count);
  for (uint64_t ino = sb_.inode_count; ino >= 1; --ino) {
    if (auto st = load_inode(ino); !st) return st;
    if (!inodes_[ino - 1] && !is_lost_inode(ino)) free_inos_.push_back(ino);
  }
  rmap_.build(ownership_records());
  // Free space is the complement of everything the reverse map holds
  // (adjacent segments coalesced: a fragmented but full region is one range).
  std::vector<BlockRange> used;
  rmap_.for_each_segment([&](uint64_t start, uint64_t count, uint32_t) {
    if (!used.empty() && used.back().end() == start) used.back().count += count;
    else used.push_back({start, count});
  });
  alloc_.rebuild(sb_.data_start, sb_.data_end, std::move(used));
  if (auto st = check_exclusive_metadata(); !st) return st;
  Inode* root = inodes_[kRootIno - 1].get();
  if (!root && !check_ && is_lost_inode(kRootIno)) {
    lost_to_poison("inodes", kRootIno, inode_offset(sb_, kRootIno), kInodeSize,
                   "the root directory's inode slot is poisoned");
  } else if (!root || !root->is_dir()) {
    if (check_) check_->fatal = true;
    tolerate("root directory is missing");
    return fail(std::errc::io_error, "root directory is missing; run fsck.poisonfs");
  }
  if (root)
    if (auto st = check_links(); !st) return st;
  if (!mount_damage_.empty()) {
    // Records lost to poison with no copy anywhere: serving the rest would
    // serve wrong data (holes for lost extents, missing names). Shut down
    // like xfs_force_shutdown, change nothing more, leave it to fsck.
    std::string reason = "metadata poisoned while unmounted, records lost: " + mount_damage_.front();
    if (mount_damage_.size() > 1) reason += strfmt(" (and {} more)", mount_damage_.size() - 1);
    shutdown(reason + "; unmount and run fsck.poisonfs");
    return {};
  }
  if (!check_) reclaim_unnamed_lost_inodes();
  if (auto st = reclaim_orphans(); !st) return st;
  if (auto st = finish_truncates(); !st) return st;
  // A read-only check leaves the image as it is (and skips those regions).
  if (!check_ || check_->repair) recompute_dirty_checksums();
  return check_ ? Status{} : replay_poison_list();
}

// Rewrites a bad superblock (primary or copy) from the good one we mounted
// with (a poisoned one is rewritten before its poison is forgotten).
void FsImpl::repair_superblocks() {
  std::byte buf[kSuperblockSize];
  encode_superblock(sb_, buf);
  for (uint64_t off : {uint64_t{0}, block_offset(sb_.copy_block())}) {
    const bool poisoned = poisoned_at_mount(off, kBlockSize);
    if (!poisoned && std::memcmp(buf, media_->at(off), kSuperblockSize) == 0) continue;
    if (off != 0 && !tolerate("superblock copy differs from the primary")) {}
    if (poisoned && check_) check_->problems.push_back(strfmt("superblock in block {} is poisoned", off / kBlockSize));
    if (check_ && !check_->repair) continue;
    if (!poisoned) {
      media_->write(off, buf, kSuperblockSize);
      media_->persist(off, kSuperblockSize);
      continue;
    }
    std::vector<std::byte> block(kBlockSize);  // the rest of the block is unused: zeros
    std::memcpy(block.data(), buf, kSuperblockSize);
    rewrite_poisoned_block(off / kBlockSize, block.data());
    if (check_) {
      check_->repairs.push_back(strfmt("superblock in block {} rewritten from the other copy", off / kBlockSize));
      continue;
    }
    record_event(EventKind::kRepair, off, kBlockSize,
                 off == 0 ? "poisoned primary superblock rewritten from the copy at mount"
                          : "poisoned superblock copy rewritten from the primary at mount",
                 {EventOwner{"superblock", 0, "", 0, 0}});
  }
}

// Replay never applies poisoned bytes (journal.cc). Poison past the end of
// the log costs nothing: the region is cleared and the log restarted. Poison
// in the header or in a transaction still to be replayed loses committed
// changes: a mount refuses (the transactions before it were applied), fsck
// reports it and, repairing, restarts the log and checks what is in place.
Status FsImpl::replay_journal() {
  auto replayed = journal_.replay();
  const auto found = journal_.replay_poison();
  const uint64_t region = block_offset(sb_.journal_start), region_len = block_offset(sb_.journal_blocks);
  if (found == Journal::PoisonFound::kNone) {
    if (!replayed) return std::unexpected(replayed.error());
    return {};
  }
  (void)poison().make_known(region, region_len);  // mount consumed it
  if (found == Journal::PoisonFound::kPastEnd) {
    if (check_) check_->problems.push_back("journal: poison past the end of the log");
    if (check_ && !check_->repair) return {};
    media_->clear_poison(region, region_len);
    journal_.reset();
    if (check_) {
      check_->repairs.push_back("journal: poisoned bytes cleared, log restarted");
      return {};
    }
    record_event(EventKind::kRepair, region, region_len,
                 "poison past the end of the journal's log: cleared, log restarted at mount",
                 {EventOwner{"journal", 0, "", 0, 0}});
    return {};
  }
  const std::string what =
      found == Journal::PoisonFound::kHeader
          ? std::string("journal header is poisoned (both slots): the committed changes still in the log cannot be found")
          : strfmt("journal transaction {} holds poison: it and any after it cannot be replayed "
                   "(the transactions before it were)",
                   journal_.replay_poison_seq());
  if (!check_) return fail(std::errc::io_error, what + "; run fsck.poisonfs, which restarts the journal (those changes are lost)");
  check_->problems.push_back(what);
  if (!check_->repair) return {};
  media_->clear_poison(region, region_len);
  journal_.reset();
  check_->repairs.push_back("journal: poisoned log dropped and restarted; the metadata in place is checked as it is");
  return {};
}

bool FsImpl::poisoned_at_mount(uint64_t off, uint64_t len) {
  if (!poison().first(off, len)) return false;
  (void)poison().make_known(off, len);  // mount consumed it
  return true;
}

void FsImpl::lost_to_poison(const char* what, Ino ino, uint64_t off, uint64_t len, const std::string& problem) {
  if (check_) {
    tolerate(problem, off, len);
    // Whole units: clear_poison clears only the units inside its range.
    for (const PoisonRange& p : poison().overlapping(off, len)) {
      uint64_t lo = p.offset / kPoisonUnit * kPoisonUnit, hi = (p.end() + kPoisonUnit - 1) / kPoisonUnit * kPoisonUnit;
      check_->poison_to_clear.emplace_back(lo, hi - lo);
    }
    return;
  }
  mount_damage_.push_back(problem);
  record_event(EventKind::kFailure, off, len, "poison found at mount: " + problem, {EventOwner{what, ino, "", 0, 0}});
}

const char* chain_what(ChainKind kind) {
  return kind == ChainKind::kExtents ? "extents" : kind == ChainKind::kDirents ? "directory" : "xattr";
}

// fsck: the chain ends before the block whose header (and link) poison took.
// The blocks after it are owned by nobody any more: free space.
void FsImpl::cut_chain_before(Inode& inode, Chain& chain) {
  if (chain.blocks.empty()) {
    (chain.kind == ChainKind::kXattrs ? inode.rec.xattr_head : inode.rec.chain_head) = 0;
    inode.times_dirty = true;  // written by repair_checked
    return;
  }
  uint64_t prev = chain.blocks.back();
  check_->header_rewrites.emplace_back(block_offset(prev), ChainHeader{chain.kind, inode.rec.ino, 0, prev});
  check_->repairs.push_back(strfmt("inode {}: chain cut after block {}", inode.rec.ino, prev));
}

void FsImpl::reclaim_unnamed_lost_inodes() {
  for (Ino ino : lost_inodes_) {
    const uint64_t off = inode_offset(sb_, ino);
    media_->clear_poison(off, kInodeSize);  // slots are unit aligned
    std::byte empty[kInodeSize] = {};
    media_->write(off, empty, kInodeSize);
    media_->persist(off, kInodeSize);
    free_inos_.push_back(ino);
    record_event(EventKind::kRepair, off, kInodeSize,
                 strfmt("poisoned inode slot {} is named nowhere (free): rewritten empty at mount", ino),
                 {EventOwner{"inodes", ino, "", 0, 0}});
  }
  lost_inodes_.clear();
  std::ranges::sort(free_inos_, std::greater<>());  // a stack, lowest on top
}

bool FsImpl::tolerate(const std::string& problem, uint64_t bad_off, size_t bad_len) {
  if (!check_) return false;
  check_->problems.push_back(problem);
  if (bad_len) {
    check_->bad_records.emplace_back(bad_off, bad_len);
    if (check_->repair) check_->repairs.push_back("cleared: " + problem);
  }
  return true;
}

// Data blocks may be shared (reflink); a record block belongs to exactly
// one inode and is never file data at the same time.
Status FsImpl::check_exclusive_metadata() {
  Status result;
  rmap_.query(sb_.data_start, sb_.data_end - sb_.data_start, [&](const RmapHit& hit) {
    if (hit.sharers < 2 || hit.owner.kind == OwnerKind::kData) return true;
    auto msg = strfmt("blocks {}..{} are owned by several records", hit.phys, hit.phys + hit.count - 1);
    if (!tolerate(msg)) {
      result = fail(std::errc::io_error, msg + "; run fsck.poisonfs");
      return false;
    }
    check_->fatal = true;  // not repaired yet: reported as left uncorrected
    return true;
  });
  return result;
}

// Every block the loaded records own, for the reverse map: built in one
// sorted sweep (Rmap::build), not one tree insert and merge per record.
std::vector<RmapRecord> FsImpl::ownership_records() const {
  size_t count = 0;
  for (const auto& inode : inodes_)
    if (inode) count += inode->chain.blocks.size() + inode->xattr_chain.blocks.size() + inode->extents.size();
  std::vector<RmapRecord> records;
  records.reserve(count);
  for (const auto& inode : inodes_) {
    if (!inode) continue;
    const Ino ino = inode->rec.ino;
    for (const Chain* chain : {&inode->chain, &inode->xattr_chain})
      for (uint64_t block : chain->blocks) records.push_back({block, 1, Owner{ino, 0, owner_kind_of(chain->kind)}});
    for (const Extent& e : inode->extents)
      records.push_back({e.phys_block, e.nblocks, Owner{ino, e.file_block, OwnerKind::kData}});
  }
  return records;
}

Status FsImpl::load_inode(uint64_t ino) {
  uint64_t off = inode_offset(sb_, ino);
  if (poisoned_at_mount(off, kInodeSize)) {
    // Whether the slot was in use is known once the names are (check_links).
    lost_inodes_.push_back(ino);
    if (check_) lost_to_poison("inodes", ino, off, kInodeSize, strfmt("inode {}: its slot is poisoned", ino));
    return {};
  }
  auto rec = decode_inode(media_->at(off));
  std::string msg;
  if (!rec) msg = strfmt("inode {}: {}", ino, rec.error().message);
  else if (*rec && (*rec)->ino != ino) msg = strfmt("inode slot {} holds inode {}", ino, (*rec)->ino);
  if (!msg.empty()) {
    if (tolerate(msg, off, kInodeSize)) return {};
    return fail(std::errc::io_error, msg + "; run fsck.poisonfs");
  }
  if (!*rec) return {};
  auto inode = std::make_unique<Inode>();
  inode->rec = **rec;
  inode->chain.kind = inode->is_dir() ? ChainKind::kDirents : ChainKind::kExtents;
  inode->xattr_chain.kind = ChainKind::kXattrs;
  if (auto st = load_chain(*inode, inode->chain, inode->rec.chain_head); !st) return st;
  if (auto st = load_chain(*inode, inode->xattr_chain, inode->rec.xattr_head); !st) return st;
  next_generation_ = std::max(next_generation_, inode->rec.generation + 1);
  ++inodes_used_;
  inodes_[ino - 1] = std::move(inode);
  return {};
}

Status FsImpl::load_chain(Inode& inode, Chain& chain, uint64_t head) {
  const uint64_t ino = inode.rec.ino;
  const uint32_t slot_size = slot_size_of(chain.kind), nslots = slots_per_block(chain.kind);
  std::unordered_set<uint64_t> visited;  // a hostile chain may loop
  for (uint64_t block = head; block != 0;) {
    std::string msg;
    if (block < sb_.data_start || block >= sb_.data_end) {
      msg = strfmt("inode {}: chain points outside the data area", ino);
    } else if (!visited.insert(block).second) {
      msg = strfmt("inode {}: chain block {} is linked twice (a loop)", ino, block);
    } else if (poisoned_at_mount(block_offset(block), kChainHeaderSize)) {
      // The link to the rest of the chain is lost with the header.
      lost_to_poison(chain_what(chain.kind), ino, block_offset(block), kBlockSize,
                     strfmt("inode {}: {} block {} has a poisoned header: its records and the rest of the chain are lost",
                            ino, chain_what(chain.kind), block));
      if (check_) cut_chain_before(inode, chain);
      break;
    } else {
      auto h = decode_chain_header(media_->at(block_offset(block)));
      if (!h || h->kind != chain.kind || h->owner != ino || h->self != block)
        msg = strfmt("inode {}: bad chain block {}", ino, block);
    }
    if (!msg.empty()) {
      // The rest of the chain is unreachable: fsck reports it, nothing more yet.
      if (tolerate(msg)) {
        check_->fatal = true;
        break;
      }
      return fail(std::errc::io_error, msg + "; run fsck.poisonfs");
    }
    auto h = decode_chain_header(media_->at(block_offset(block)));
    chain.blocks.push_back(block);
    for (uint32_t i = 0; i < nslots; ++i) {
      const std::byte* p = media_->at(slot_offset(block, i, slot_size));
      SlotRef slot{block, i};
      if (poisoned_at_mount(slot_offset(block, i, slot_size), slot_size)) {
        // Never reused by a mount (it shuts down); fsck clears it.
        lost_to_poison(chain_what(chain.kind), ino, slot_offset(block, i, slot_size), slot_size,
                       strfmt("inode {}: {} block {} slot {} is poisoned: its record is lost", ino,
                              chain_what(chain.kind), block, i));
        if (check_) chain.free_slots.push_back(slot);
        continue;
      }
      auto bad = [&](const Error& e) -> Status {
        auto msg = strfmt("inode {}: block {} slot {}: {}", ino, block, i, e.message);
        if (tolerate(msg, slot_offset(block, i, slot_size), slot_size)) return {};
        return fail(std::errc::io_error, msg + "; run fsck.poisonfs");
      };
      bool filled = false;
      if (chain.kind == ChainKind::kExtents) {
        auto r = decode_extent(p);
        if (!r) {
          if (auto st = bad(r.error()); !st) return st;
          chain.free_slots.push_back(slot);
          continue;
        }
        if (r->has_value() && ((*r)->phys_block < sb_.data_start || (*r)->phys_block + (*r)->nblocks > sb_.data_end)) {
          if (auto st = bad(Error{std::errc::io_error, "extent lies outside the data area"}); !st) return st;
          chain.free_slots.push_back(slot);
          continue;
        }
        if ((filled = r->has_value())) {
          auto* e = new Extent;
          e->file_block = (*r)->file_block;
          e->phys_block = (*r)->phys_block;
          e->nblocks = (*r)->nblocks;
          e->flags = (*r)->flags;
          e->slot = slot;
          if (!inode.extents.load(e)) {
            delete e;
            if (auto st = bad(Error{std::errc::io_error, "extent overlaps another extent of the file"}); !st) return st;
            filled = false;
          }
        }
      } else if (chain.kind == ChainKind::kDirents) {
        auto r = decode_dirent(p);
        if (!r) {
          if (auto st = bad(r.error()); !st) return st;
        } else if ((filled = r->has_value())) {
          auto [it, fresh] = inode.entries.try_emplace((*r)->name, Dirent{(*r)->ino, (*r)->type, slot});
          if (!fresh) {
            if (auto st = bad(Error{std::errc::io_error, "duplicate name"}); !st) return st;
            filled = false;
          }
        }
      } else {
        auto r = decode_xattr(p);
        if (!r) {
          if (auto st = bad(r.error()); !st) return st;
        } else if ((filled = r->has_value())) {
          // An ACL the kernel could not read would fail every access check.
          if (auto problem = stored_acl_problem(inode.rec, (*r)->name, (*r)->value)) {
            if (auto st = bad(Error{std::errc::io_error, *problem}); !st) return st;
            filled = false;
          } else {
            inode.xattrs[(*r)->name] = Xattr{(*r)->value, slot};
          }
        }
      }
      if (!filled) chain.free_slots.push_back(slot);
    }
    block = h->next;
  }
  // Reuse low slots first: keeps records packed at the head of the chain.
  std::reverse(chain.free_slots.begin(), chain.free_slots.end());
  return {};
}

// Every name must lead to a live inode, and every nlink must match the
// names (plus "." and the subdirectories' "..") that lead to it.
Status FsImpl::check_links() {
  std::vector<uint32_t> names(inodes_.size() + 1, 0);
  for (auto& inode : inodes_) {
    if (!inode || !inode->is_dir()) continue;
    for (auto it = inode->entries.begin(); it != inode->entries.end();) {
      auto& [name, d] = *it;
      if (!check_ && d.ino && is_lost_inode(d.ino)) {
        // Named: the slot was in use; its inode is lost (the mount shuts down).
        lost_to_poison("inodes", d.ino, inode_offset(sb_, d.ino), kInodeSize,
                       strfmt("inode {} ('{}' in directory {}): its slot is poisoned", d.ino, name, inode->rec.ino));
        it = inode->entries.erase(it);
        continue;
      }
      if (d.ino == 0 || d.ino > sb_.inode_count || !inodes_[d.ino - 1]) {
        auto msg = strfmt("directory {} names '{}' -> inode {}, which is not in use", inode->rec.ino, name, d.ino);
        if (!tolerate(msg, slot_offset(d.slot.block, d.slot.index, kDirentSlotSize), kDirentSlotSize))
          return fail(std::errc::io_error, msg + "; run fsck.poisonfs");
        inode->chain.free_slots.push_back(d.slot);
        it = inode->entries.erase(it);
        continue;
      }
      ++names[d.ino];
      inodes_[d.ino - 1]->links.push_back(Link{inode->rec.ino, name});
      if (inodes_[d.ino - 1]->is_dir()) ++inode->subdirs;
      ++it;
    }
  }
  // A directory has one name, in the directory its parent field names, and
  // the root has none: is_ancestor and path_of walk up by these, so a
  // hostile image must not lead them out of the inode table or around a
  // loop. Other names are cleared (fsck) or refuse the mount.
  for (auto& inode : inodes_) {
    if (!inode || !inode->is_dir() || inode->links.empty()) continue;
    std::vector<Link>& links = inode->links;
    size_t keep = links.size();  // none, for the root
    if (inode->rec.ino != kRootIno) {
      keep = std::find_if(links.begin(), links.end(), [&](const Link& l) { return l.parent == inode->rec.parent; }) -
             links.begin();
      if (keep == links.size()) {
        auto msg = strfmt("directory {} has parent {}, but directory {} names it", inode->rec.ino,
                          inode->rec.parent, links.front().parent);
        if (!check_) return fail(std::errc::io_error, msg + "; run fsck.poisonfs");
        check_->problems.push_back(msg);
        keep = 0;
        inode->rec.parent = links.front().parent;
        if (check_->repair) {
          check_->repairs.push_back(strfmt("directory {}: parent set to {}", inode->rec.ino, inode->rec.parent));
          inode->times_dirty = true;  // written by repair_checked
        }
      }
    }
    for (size_t i = 0; i < links.size(); ++i) {
      if (i == keep) continue;
      Inode& dir = *inodes_[links[i].parent - 1];
      auto entry = dir.entries.find(links[i].name);
      auto msg = strfmt("directory {} names '{}' -> directory {}, which has a name already", dir.rec.ino,
                        links[i].name, inode->rec.ino);
      if (!tolerate(msg, slot_offset(entry->second.slot.block, entry->second.slot.index, kDirentSlotSize),
                    kDirentSlotSize))
        return fail(std::errc::io_error, msg + "; run fsck.poisonfs");
      dir.chain.free_slots.push_back(entry->second.slot);
      dir.entries.erase(entry);
      --dir.subdirs;
    }
    if (keep < links.size()) links = {links[keep]};
    else links.clear();
  }
  if (!check_) {
    // Fewer links than names would free an inode that still has names (as
    // an orphan below, or at its next unlink) and leave them dangling.
    for (auto& inode : inodes_) {
      if (!inode || inode->links.empty()) continue;
      if (inode->rec.nlink == 0 || (!inode->is_dir() && inode->links.size() > inode->rec.nlink))
        return fail(std::errc::io_error, strfmt("inode {} has nlink {}, but {} names lead to it; run fsck.poisonfs",
                                                inode->rec.ino, inode->rec.nlink, inode->links.size()));
    }
    return {};
  }
  // Only names in directories reachable from the root lead anywhere: a
  // subtree cut off by a damaged directory then counts as unnamed as a
  // whole, and one repair reclaims all of it.
  std::fill(names.begin(), names.end(), 0);
  std::vector<bool> reachable(inodes_.size() + 1, false);
  std::vector<Ino> todo{kRootIno};
  reachable[kRootIno] = true;
  while (!todo.empty()) {
    Inode& dir = *inodes_[todo.back() - 1];
    todo.pop_back();
    for (auto& [name, d] : dir.entries) {
      ++names[d.ino];
      if (inodes_[d.ino - 1]->is_dir() && !reachable[d.ino]) {
        reachable[d.ino] = true;
        todo.push_back(d.ino);
      }
    }
  }
  for (auto& inode : inodes_) {
    if (!inode) continue;
    uint32_t want = inode->is_dir() ? 2 + inode->subdirs : names[inode->rec.ino];
    if (inode->rec.ino == kRootIno) want = 2 + inode->subdirs;
    if (inode->is_dir() && names[inode->rec.ino] == 0 && inode->rec.ino != kRootIno) want = 0;
    if (inode->rec.nlink == want) continue;
    if (want == 0 && inode->rec.nlink == 0) continue;
    check_->problems.push_back(strfmt("inode {} has nlink {}, but {} links lead to it",
                                           inode->rec.ino, inode->rec.nlink, want));
    if (check_->repair) {
      check_->repairs.push_back(strfmt("inode {}: nlink set to {}", inode->rec.ino, want));
      inode->rec.nlink = want;
      inode->times_dirty = true;  // written by repair_checked
    }
  }
  return {};
}

Status FsImpl::reclaim_orphans() {
  for (auto& inode : inodes_) {
    if (!inode || inode->rec.nlink != 0) continue;
    if (check_ && !check_->repair) continue;  // a read-only check leaves them to the next mount
    Transaction tx;
    std::vector<BlockRange> dropped;
    free_inode(*inode, tx, dropped);
    if (auto st = commit(tx, std::move(dropped)); !st) return st;
  }
  return {};
}

// A truncate of a file with more extents than one commit holds sets the new
// size and kInodeTruncating first, then unmaps what lies past EOF in pieces
// (FsImpl::_truncate). A crash in between leaves the flag and the extents
// past EOF, which a later extension of the file must not bring back: the
// truncate is finished here, as ext4 does with its orphan list.
Status FsImpl::finish_truncates() {
  for (auto& inode : inodes_) {
    if (!inode || !(inode->rec.flags & kInodeTruncating)) continue;
    if (check_ && !check_->repair) continue;  // a read-only check leaves it to the next mount
    Transaction tx;
    std::vector<BlockRange> dropped;
    if (auto st = unmap_past_eof(*inode, tx, dropped); !st) return st;
    if (auto st = commit(tx, std::move(dropped)); !st) return st;
  }
  return {};
}

Status FsImpl::unmount() {
  std::unique_lock lock(mutex_);
  // Shut down: the in-memory state is not trusted; the image is left as it
  // is for fsck (unmount itself still works).
  if (shutdown_) return {};
  Transaction tx;
  for (auto& inode : inodes_)
    if (inode && inode->times_dirty) stage_inode(tx, *inode);
  if (auto st = commit(tx); !st) return st;
  journal_.checkpoint();
  return {};
}

// ---------------------------------------------------------------- records

void FsImpl::stage_inode(Transaction& tx, Inode& inode) {
  encode_inode(inode.rec, tx.reserve(inode_offset(sb_, inode.rec.ino), kInodeSize));
  inode.times_dirty = false;
}

BlockRange FsImpl::allocate_clean(uint64_t count, uint64_t hint) {
  BlockRange r = alloc_.allocate(count, hint);
  if (r.count == 0 || poison().empty()) return r;
  const uint64_t lo = block_offset(r.start), hi = block_offset(r.start + r.count);
  for (const PoisonRange& p : poison().overlapping(lo, hi - lo)) {
    const uint64_t from = std::max(lo, p.offset), to = std::min(hi, p.end());
    media_->clear_poison(from, to - from);
    record_event(EventKind::kRepair, from, to - from, "poison in free space cleared before the blocks were allocated",
                 {EventOwner{"free", 0, "", 0, 0}});
  }
  return r;
}

// A new chain block is written directly (it is not referenced by any
// committed record yet, so a crash leaves it free); only the link to it
// goes through the journal.
Status FsImpl::reserve_slots(Inode& owner, Chain& chain, size_t count, Transaction& tx) {
  const uint32_t per_block = slots_per_block(chain.kind);
  size_t blocks_needed = chain.free_slots.size() >= count
                             ? 0 : (count - chain.free_slots.size() + per_block - 1) / per_block;
  std::vector<uint64_t> fresh;
  for (size_t i = 0; i < blocks_needed; ++i) {
    uint64_t hint = chain.blocks.empty() ? 0 : chain.blocks.back() + 1;
    BlockRange r = allocate_clean(1, hint);
    if (r.count == 0) {
      for (uint64_t b : fresh) alloc_.release({b, 1});
      return fail(std::errc::no_space_on_device);
    }
    fresh.push_back(r.start);
  }
  for (uint64_t block : fresh) {
    std::byte buf[kBlockSize] = {};
    encode_chain_header(ChainHeader{chain.kind, owner.rec.ino, 0, block}, buf);
    media_->write(block_offset(block), buf, kBlockSize);
    media_->flush(block_offset(block), kBlockSize);
    if (chain.blocks.empty()) {
      (chain.kind == ChainKind::kXattrs ? owner.rec.xattr_head : owner.rec.chain_head) = block;
      stage_inode(tx, owner);
    } else {
      uint64_t prev = chain.blocks.back();
      encode_chain_header(ChainHeader{chain.kind, owner.rec.ino, block, prev},
                          tx.reserve(block_offset(prev), kChainHeaderSize));
    }
    chain.blocks.push_back(block);
    rmap_.add(block, 1, Owner{owner.rec.ino, 0, owner_kind_of(chain.kind)});
    for (uint32_t i = per_block; i-- > 0;) chain.free_slots.push_back({block, i});
  }
  return {};
}

Result<SlotRef> FsImpl::take_slot(Inode& owner, Chain& chain, Transaction& tx) {
  if (chain.free_slots.empty())
    if (auto st = reserve_slots(owner, chain, 1, tx); !st) return std::unexpected(st.error());
  SlotRef s = chain.free_slots.back();
  chain.free_slots.pop_back();
  return s;
}

// Unlinks a chain whose records are all empty and drops its blocks (a file
// truncated to zero keeps no record block).
void FsImpl::release_chain(Inode& owner, Chain& chain, Transaction& tx, std::vector<BlockRange>& dropped) {
  if (chain.blocks.empty()) return;
  for (uint64_t b : chain.blocks) rmap_.remove(b, 1, Owner{owner.rec.ino, 0, owner_kind_of(chain.kind)}, &dropped);
  chain.blocks.clear();
  chain.free_slots.clear();
  (chain.kind == ChainKind::kXattrs ? owner.rec.xattr_head : owner.rec.chain_head) = 0;
  stage_inode(tx, owner);
}

void FsImpl::free_slot(Chain& chain, SlotRef slot, Transaction& tx) {
  size_t size = slot_size_of(chain.kind);
  std::memset(tx.reserve(slot_offset(slot.block, slot.index, static_cast<uint32_t>(size)), size), 0, size);
  chain.free_slots.push_back(slot);
}

void FsImpl::stage_extent_edit(Inode& inode, ExtentEdit& edit, Transaction& tx,
                               std::vector<BlockRange>& freed) {
  // Adds before drops: an edit that maps the same blocks again (unwritten
  // to written) must never see them unowned in between. Each in physical
  // order: the reverse map then finds every range next to the previous one
  // without a search (a clone's blocks come in file order, from anywhere).
  auto by_start = [](const MappedRange& a, const MappedRange& b) { return a.start < b.start; };
  for (auto* ranges : {&edit.added, &edit.dropped})
    if (!std::is_sorted(ranges->begin(), ranges->end(), by_start)) std::sort(ranges->begin(), ranges->end(), by_start);
  for (const MappedRange& r : edit.added)
    rmap_.add(r.start, r.count, Owner{inode.rec.ino, r.file_block, OwnerKind::kData});
  for (const MappedRange& r : edit.dropped)
    rmap_.remove(r.start, r.count, Owner{inode.rec.ino, r.file_block, OwnerKind::kData}, &freed);
  edit.added.clear();
  edit.dropped.clear();
  for (SlotRef s : edit.freed_slots) free_slot(inode.chain, s, tx);
  for (Extent* e : edit.dirty) {
    if (e->erased) continue;
    if (!e->slot.valid()) {
      // Reserved beforehand by the caller, so this cannot fail.
      e->slot = inode.chain.free_slots.back();
      inode.chain.free_slots.pop_back();
    }
    ExtentRec rec{e->flags | kSlotValid, e->file_block, e->phys_block, e->nblocks};
    encode_extent(rec, tx.reserve(slot_offset(e->slot.block, e->slot.index, kExtentSlotSize), kExtentSlotSize));
  }
  edit.dirty.clear();
  edit.freed_slots.clear();
}

Status FsImpl::commit(Transaction& tx, std::vector<BlockRange> dropped) {
  if (auto st = journal_.commit(tx); !st) {
    // The in-memory state already holds the change the media refused: serving
    // on would serve what a remount cannot find. Stop, as XFS does when a
    // dirty transaction cannot commit; the media keeps the last commit.
    if (!tx.empty()) shutdown("a metadata transaction could not be committed (" + st.error().to_string() + ")");
    return st;
  }
  for (const BlockRange& r : dropped) alloc_.defer_free(r);
  // Freed blocks under known poison are poisoned free space: quarantined
  // now, as notify_failure and the next mount would do, so the allocator
  // never hands them to a new owner (DESIGN.md section 3). Not in fsck,
  // whose space accounting knows no quarantine.
  if (!check_ && !poison().empty()) {
    for (const BlockRange& r : dropped) {
      for (const PoisonRange& p : poison().overlapping(block_offset(r.start), r.count * kBlockSize)) {
        if (p.latent) continue;
        quarantine({p.offset / kBlockSize, (p.end() + kBlockSize - 1) / kBlockSize - p.offset / kBlockSize});
        Event q;
        q.kind = EventKind::kQuarantine;
        q.device_offset = p.offset;
        q.length = p.length;
        q.action = "freed poisoned blocks quarantined until cleared";
        record_event(std::move(q));
      }
    }
  }
  // Running low while freed space waits for a checkpoint: take one now.
  if (alloc_.pending_blocks() > alloc_.free_blocks()) journal_.checkpoint();
  return {};
}

Status FsImpl::commit_piece(Transaction& tx, std::vector<BlockRange>& dropped) {
  Status st = commit(tx, std::move(dropped));
  tx = Transaction{};
  dropped.clear();
  return st;
}

// A changed extent costs one 48-byte journal record (a 32-byte slot and its
// header) on each side of a clone; 128 bytes each leaves room for the inode,
// chain links and the records of split extents.
size_t FsImpl::extents_per_commit() const { return std::max<size_t>(1, journal_.max_tx_bytes() / 128); }

uint64_t FsImpl::piece_end(Inode& inode, uint64_t fb, uint64_t end, size_t max) {
  size_t count = 0;
  for (Extent* e = inode.extents.at_or_after(fb); e && e->file_block < end; e = inode.extents.next(*e))
    if (++count > max) return std::max(fb + 1, e->file_block);
  return end;
}

// ---------------------------------------------------------------- attributes

Result<Inode*> FsImpl::get(Ino ino) {
  if (shutdown_.load(std::memory_order_relaxed)) return fail(std::errc::io_error, "filesystem is shut down");
  if (ino == 0 || ino > inodes_.size() || !inodes_[ino - 1]) return fail(std::errc::no_such_file_or_directory);
  return inodes_[ino - 1].get();
}

Result<Inode*> FsImpl::get_dir(Ino ino) {
  auto inode = get(ino);
  if (inode && !(*inode)->is_dir()) return fail(std::errc::not_a_directory);
  return inode;
}

Attr FsImpl::attr_of(const Inode& inode) const {
  const InodeRec& r = inode.rec;
  Attr a;
  a.ino = r.ino;
  a.mode = r.mode;
  a.nlink = r.nlink;
  a.uid = r.uid;
  a.gid = r.gid;
  a.rdev = r.rdev;
  a.generation = r.generation;
  a.atime = timespec_of(r.atime_ns);
  a.mtime = timespec_of(r.mtime_ns);
  a.ctime = timespec_of(r.ctime_ns);
  a.btime = timespec_of(r.btime_ns);
  if (inode.is_dir()) {
    a.size = inode.chain.blocks.size() * kBlockSize;
    a.blocks = a.size / 512;
  } else {
    a.size = r.size;
    a.blocks = (inode.extents.mapped_blocks() + inode.chain.blocks.size()) * (kBlockSize / 512);
  }
  return a;
}

Result<Attr> FsImpl::getattr(Ino ino) {
  std::shared_lock lock(mutex_);
  if (shutdown_ && ino == kRootIno) {
    // The one call a shut-down filesystem answers: the mountpoint must stay
    // openable for `poisonctl status|events` (their ioctls) and unmount.
    Attr a;
    a.ino = kRootIno;
    a.mode = S_IFDIR | 0755;
    a.nlink = 2;
    return a;
  }
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  return attr_of(**inode);
}

Result<Attr> FsImpl::lookup(Ino parent, std::string_view name, EntryRef ref) {
  std::shared_lock lock(mutex_);
  auto found = _lookup(parent, name);
  if (!found) return std::unexpected(found.error());
  (*found)->count_ref(ref);
  return attr_of(**found);
}

Result<Inode*> FsImpl::_lookup(Ino parent, std::string_view name) {
  auto dir = get_dir(parent);
  if (!dir) return std::unexpected(dir.error());
  if (name.size() > kNameMax) return fail(std::errc::filename_too_long);
  if (name == ".") return *dir;
  if (name == "..") {
    // A removed directory's parent may be gone, or its number reused.
    if ((*dir)->rec.nlink == 0) return fail(std::errc::no_such_file_or_directory);
    return get((*dir)->rec.parent);
  }
  auto it = (*dir)->entries.find(name);
  if (it == (*dir)->entries.end()) return fail(std::errc::no_such_file_or_directory);
  return inodes_[it->second.ino - 1].get();
}

StatFs FsImpl::statfs() {
  std::shared_lock lock(mutex_);
  StatFs s;
  s.blocks = sb_.data_end - sb_.data_start;
  s.blocks_free = alloc_.free_blocks() + alloc_.pending_blocks();
  s.files = sb_.inode_count;
  s.files_free = sb_.inode_count - inodes_used_;
  return s;
}

FsInfo FsImpl::info() {
  std::shared_lock lock(mutex_);
  FsInfo i;
  i.uuid = uuid_to_string(sb_.uuid);
  i.version = sb_.version;
  i.device_bytes = sb_.total_blocks * kBlockSize;
  i.total_blocks = sb_.total_blocks;
  i.journal_start = sb_.journal_start;
  i.journal_blocks = sb_.journal_blocks;
  i.inode_start = sb_.inode_start;
  i.inode_blocks = sb_.inode_blocks;
  i.inode_count = sb_.inode_count;
  i.csum_start = sb_.csum_start;
  i.csum_blocks = sb_.csum_blocks;
  i.data_checksums = csums_.enabled();
  i.verify_checksums = verify_checksums_;
  i.data_start = sb_.data_start;
  i.data_blocks = sb_.data_end - sb_.data_start;
  i.free_blocks = alloc_.free_blocks();
  i.pending_free = alloc_.pending_blocks();
  i.inodes_used = inodes_used_;
  for (auto& inode : inodes_)
    if (inode) i.extent_records += inode->extents.size();
  i.journal_commits = journal_.commits();
  i.byte_granular = media_->byte_granular();
  return i;
}

Result<size_t> Filesystem::read_copy(Ino ino, uint64_t off, std::span<std::byte> out) {
  size_t copied = 0;
  auto n = read(ino, off, out.size(), [&](std::span<const ReadSegment> segs) {
    for (const ReadSegment& s : segs) {
      if (s.data) std::memcpy(out.data() + copied, s.data, s.length);
      else std::memset(out.data() + copied, 0, s.length);
      copied += s.length;
    }
  });
  return n;
}

}  // namespace poisonfs
