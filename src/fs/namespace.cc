// Names and inodes: create, link, unlink, rename, setattr, readdir, and the
// lifetime of an inode (names, open count, kernel references, orphans).
#include <dirent.h>
#include <sys/stat.h>

#include <cstring>

#include "fs/fs_impl.h"

namespace poisonfs {
namespace {

uint8_t dtype_of(uint32_t mode) { return static_cast<uint8_t>((mode & S_IFMT) >> 12); }

}  // namespace

Status FsImpl::check_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return fail(std::errc::invalid_argument);
  if (name.size() > kNameMax) return fail(std::errc::filename_too_long);
  if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos)
    return fail(std::errc::invalid_argument);
  return {};
}

Result<Inode*> FsImpl::new_inode(uint32_t mode, uint64_t rdev, const Caller& caller, Inode& parent) {
  if (free_inos_.empty()) return fail(std::errc::no_space_on_device, "no free inodes");
  uint64_t ino = free_inos_.back();
  free_inos_.pop_back();
  auto inode = std::make_unique<Inode>();
  InodeRec& r = inode->rec;
  r.flags = kInodeInUse;
  r.ino = ino;
  r.mode = mode;
  r.uid = caller.uid;
  r.gid = caller.gid;
  // setgid directories pass their group on, and their setgid bit to subdirectories.
  if (parent.rec.mode & S_ISGID) {
    r.gid = parent.rec.gid;
    if (S_ISDIR(mode)) r.mode |= S_ISGID;
  }
  r.nlink = S_ISDIR(mode) ? 2 : 1;
  r.rdev = rdev;
  r.atime_ns = r.mtime_ns = r.ctime_ns = r.btime_ns = now_ns();
  r.generation = next_generation_++;
  r.parent = parent.rec.ino;
  inode->chain.kind = S_ISDIR(mode) ? ChainKind::kDirents : ChainKind::kExtents;
  inode->xattr_chain.kind = ChainKind::kXattrs;
  Inode* raw = inode.get();
  inodes_[ino - 1] = std::move(inode);
  ++inodes_used_;
  return raw;
}

Status FsImpl::add_entry(Inode& dir, std::string_view name, Inode& child, Transaction& tx) {
  auto slot = take_slot(dir, dir.chain, tx);
  if (!slot) return std::unexpected(slot.error());
  DirentRec rec{child.rec.ino, dtype_of(child.rec.mode), std::string(name)};
  encode_dirent(rec, tx.reserve(slot_offset(slot->block, slot->index, kDirentSlotSize), kDirentSlotSize));
  dir.entries.emplace(std::string(name), Dirent{child.rec.ino, rec.type, *slot});
  child.links.push_back(Link{dir.rec.ino, std::string(name)});
  if (child.is_dir()) {
    ++dir.subdirs;
    ++dir.rec.nlink;
  }
  dir.rec.mtime_ns = dir.rec.ctime_ns = now_ns();
  stage_inode(tx, dir);
  return {};
}

void FsImpl::remove_entry(Inode& dir, std::string_view name, Transaction& tx) {
  auto it = dir.entries.find(name);
  free_slot(dir.chain, it->second.slot, tx);
  auto& links = inodes_[it->second.ino - 1]->links;
  std::erase_if(links, [&](const Link& l) { return l.parent == dir.rec.ino && l.name == name; });
  if (inodes_[it->second.ino - 1]->is_dir()) {
    --dir.subdirs;
    --dir.rec.nlink;
  }
  dir.entries.erase(it);
  dir.rec.mtime_ns = dir.rec.ctime_ns = now_ns();
  stage_inode(tx, dir);
}

// Drops one name of inode; frees it when that was the last name and no one
// has it open or a kernel reference to it (otherwise it lives on as an
// orphan until release, forget or mount).
void FsImpl::drop_link(Inode& inode, Transaction& tx, std::vector<BlockRange>& dropped) {
  inode.rec.nlink = inode.is_dir() ? 0 : inode.rec.nlink - 1;
  inode.rec.ctime_ns = now_ns();
  if (inode.unreferenced()) {
    free_inode(inode, tx, dropped);
  } else {
    stage_inode(tx, inode);
  }
}

// Clearing the inode record releases everything it owns at once: its
// chains and extents are no longer referenced by any record.
void FsImpl::free_inode(Inode& inode, Transaction& tx, std::vector<BlockRange>& dropped) {
  uint64_t ino = inode.rec.ino;
  // Blocks still shared with other files stay theirs: only what nobody
  // owns any more is freed.
  for (const Extent& e : inode.extents)
    rmap_.remove(e.phys_block, e.nblocks, Owner{ino, e.file_block, OwnerKind::kData}, &dropped);
  for (Chain* chain : {&inode.chain, &inode.xattr_chain})
    for (uint64_t b : chain->blocks) rmap_.remove(b, 1, Owner{ino, 0, owner_kind_of(chain->kind)}, &dropped);
  std::memset(tx.reserve(inode_offset(sb_, ino), kInodeSize), 0, kInodeSize);
  // A recovery's tail must not pass to the next file given this number.
  abandon_recovery_tails_of(ino, "its file was freed");
  inodes_[ino - 1].reset();
  free_inos_.push_back(ino);
  --inodes_used_;
}

bool FsImpl::is_ancestor(Ino maybe_ancestor, Ino ino) {
  for (Ino cur = ino; cur != 0;) {
    if (cur == maybe_ancestor) return true;
    if (cur == kRootIno) return false;
    cur = inodes_[cur - 1]->rec.parent;
  }
  return false;
}

Result<Attr> FsImpl::create_node(Ino parent, std::string_view name, uint32_t mode, uint64_t rdev,
                                 const Caller& caller, std::string_view symlink_target,
                                 EntryRef ref) {
  if (auto st = check_name(name); !st) return std::unexpected(st.error());
  std::unique_lock lock(mutex_);
  auto dir = get_dir(parent);
  if (!dir) return std::unexpected(dir.error());
  if ((*dir)->rec.nlink == 0) return fail(std::errc::no_such_file_or_directory);
  if ((*dir)->entries.contains(name)) return fail(std::errc::file_exists);
  if (free_inos_.empty()) return fail(std::errc::no_space_on_device, "no free inodes");
  auto acls = new_inode_acls(**dir, mode, caller.umask);
  if (!acls) return std::unexpected(acls.error());
  Transaction tx;
  auto child = new_inode(acls->mode, rdev, caller, **dir);
  if (!child) return std::unexpected(child.error());
  std::vector<BlockRange> dropped;
  // The child's blocks first, the directory's slot last: on failure tx is
  // dropped, so it may hold nothing but the child's own records (a new
  // directory block linked in it would stay linked in memory only). Its
  // ACLs are in the same transaction: after a crash the file exists with
  // them or not at all.
  Status st;
  if (!symlink_target.empty()) {
    auto n = _write(**child, 0, std::as_bytes(std::span(symlink_target)), tx, dropped);
    if (!n || *n != symlink_target.size()) st = fail(std::errc::no_space_on_device);
  }
  if (st) st = _put_new_inode_acls(**child, *acls, tx);
  if (st) st = reserve_slots(**dir, (*dir)->chain, 1, tx);
  if (!st) {
    free_inode(**child, tx, dropped);
    for (const BlockRange& r : dropped) alloc_.release(r);  // never committed
    return std::unexpected(st.error());
  }
  if (auto st = add_entry(**dir, name, **child, tx); !st) return std::unexpected(st.error());
  stage_inode(tx, **child);
  if (auto st = commit(tx, std::move(dropped)); !st) return std::unexpected(st.error());
  (*child)->count_ref(ref);
  return attr_of(**child);
}

Result<Attr> FsImpl::mknod(Ino parent, std::string_view name, uint32_t mode, uint64_t rdev,
                           const Caller& caller, EntryRef ref) {
  if (S_ISDIR(mode) || S_ISLNK(mode)) return fail(std::errc::invalid_argument);
  if ((mode & S_IFMT) == 0) mode |= S_IFREG;
  return create_node(parent, name, mode, rdev, caller, {}, ref);  // umask: see new_inode_acls
}

Result<Attr> FsImpl::mkdir(Ino parent, std::string_view name, uint32_t mode, const Caller& caller,
                           EntryRef ref) {
  return create_node(parent, name, S_IFDIR | (mode & 07777), 0, caller, {}, ref);
}

Result<Attr> FsImpl::symlink(Ino parent, std::string_view name, std::string_view target,
                             const Caller& caller, EntryRef ref) {
  if (target.empty()) return fail(std::errc::no_such_file_or_directory);
  if (target.size() >= 4096) return fail(std::errc::filename_too_long);
  return create_node(parent, name, S_IFLNK | 0777, 0, caller, target, ref);
}

Result<std::string> FsImpl::readlink(Ino ino) {
  std::string target;
  auto append = [&target](std::span<const ReadSegment> segs) {
    for (const ReadSegment& s : segs) {
      if (s.data)
        target.append(reinterpret_cast<const char*>(s.data), s.length);
      else
        target.append(s.length, '\0');
    }
  };
  std::optional<PoisonRange> consumed;  // latent poison under the target
  Result<size_t> n;
  {
    // Type, size and blocks in one look: once the lock is dropped, an unlink
    // may free the inode and a new file take its number.
    std::shared_lock lock(mutex_);
    auto inode = get(ino);
    if (!inode) return std::unexpected(inode.error());
    if (!(*inode)->is_lnk()) return fail(std::errc::invalid_argument);
    n = _read_inode(**inode, 0, (*inode)->rec.size, append, false, consumed);
  }
  notify_read_latent(consumed);
  if (!n) return std::unexpected(n.error());
  return target;
}

Result<Attr> FsImpl::link(Ino ino, Ino new_parent, std::string_view new_name, EntryRef ref) {
  if (auto st = check_name(new_name); !st) return std::unexpected(st.error());
  std::unique_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  auto dir = get_dir(new_parent);
  if (!dir) return std::unexpected(dir.error());
  if ((*inode)->is_dir()) return fail(std::errc::operation_not_permitted);
  if ((*inode)->rec.nlink == 0 || (*dir)->rec.nlink == 0)
    return fail(std::errc::no_such_file_or_directory);
  if ((*inode)->rec.nlink >= 65000) return fail(std::errc::too_many_links);
  if ((*dir)->entries.contains(new_name)) return fail(std::errc::file_exists);
  Transaction tx;
  if (auto st = add_entry(**dir, new_name, **inode, tx); !st) return std::unexpected(st.error());
  ++(*inode)->rec.nlink;
  (*inode)->rec.ctime_ns = now_ns();
  stage_inode(tx, **inode);
  if (auto st = commit(tx); !st) return std::unexpected(st.error());
  (*inode)->count_ref(ref);
  return attr_of(**inode);
}

Status FsImpl::unlink(Ino parent, std::string_view name) {
  std::unique_lock lock(mutex_);
  auto dir = get_dir(parent);
  if (!dir) return std::unexpected(dir.error());
  auto it = (*dir)->entries.find(name);
  if (it == (*dir)->entries.end()) return fail(std::errc::no_such_file_or_directory);
  Inode& child = *inodes_[it->second.ino - 1];
  if (child.is_dir()) return fail(std::errc::is_a_directory);
  Transaction tx;
  std::vector<BlockRange> dropped;
  remove_entry(**dir, name, tx);
  drop_link(child, tx, dropped);
  return commit(tx, std::move(dropped));
}

Status FsImpl::rmdir(Ino parent, std::string_view name) {
  if (name == ".") return fail(std::errc::invalid_argument);
  if (name == "..") return fail(std::errc::directory_not_empty);
  std::unique_lock lock(mutex_);
  auto dir = get_dir(parent);
  if (!dir) return std::unexpected(dir.error());
  auto it = (*dir)->entries.find(name);
  if (it == (*dir)->entries.end()) return fail(std::errc::no_such_file_or_directory);
  Inode& child = *inodes_[it->second.ino - 1];
  if (!child.is_dir()) return fail(std::errc::not_a_directory);
  if (!child.entries.empty()) return fail(std::errc::directory_not_empty);
  Transaction tx;
  std::vector<BlockRange> dropped;
  remove_entry(**dir, name, tx);
  drop_link(child, tx, dropped);
  return commit(tx, std::move(dropped));
}

Status FsImpl::rename(Ino parent, std::string_view name, Ino new_parent, std::string_view new_name,
                      unsigned flags) {
  if (flags & ~(kRenameNoReplace | kRenameExchange)) return fail(std::errc::invalid_argument);
  if ((flags & kRenameNoReplace) && (flags & kRenameExchange)) return fail(std::errc::invalid_argument);
  if (auto st = check_name(new_name); !st) return st;
  std::unique_lock lock(mutex_);
  auto from_dir = get_dir(parent);
  if (!from_dir) return std::unexpected(from_dir.error());
  auto to_dir = get_dir(new_parent);
  if (!to_dir) return std::unexpected(to_dir.error());
  Inode &src_dir = **from_dir, &dst_dir = **to_dir;
  // A removed directory takes no names (and its parent field leads nowhere).
  if (dst_dir.rec.nlink == 0) return fail(std::errc::no_such_file_or_directory);
  auto src_it = src_dir.entries.find(name);
  if (src_it == src_dir.entries.end()) return fail(std::errc::no_such_file_or_directory);
  Inode& src = *inodes_[src_it->second.ino - 1];
  auto dst_it = dst_dir.entries.find(new_name);
  Inode* dst = dst_it == dst_dir.entries.end() ? nullptr : inodes_[dst_it->second.ino - 1].get();

  if (dst == &src) return {};  // same inode: POSIX says do nothing
  if ((flags & kRenameNoReplace) && dst) return fail(std::errc::file_exists);
  if ((flags & kRenameExchange) && !dst) return fail(std::errc::no_such_file_or_directory);
  // A directory cannot move below itself.
  if (src.is_dir() && is_ancestor(src.rec.ino, dst_dir.rec.ino)) return fail(std::errc::invalid_argument);
  if ((flags & kRenameExchange) && dst->is_dir() && is_ancestor(dst->rec.ino, src_dir.rec.ino))
    return fail(std::errc::invalid_argument);
  if (dst && !(flags & kRenameExchange)) {
    if (src.is_dir() && !dst->is_dir()) return fail(std::errc::not_a_directory);
    if (!src.is_dir() && dst->is_dir()) return fail(std::errc::is_a_directory);
    if (dst->is_dir() && !dst->entries.empty()) return fail(std::errc::directory_not_empty);
  }

  Transaction tx;
  std::vector<BlockRange> dropped;
  if (!dst && (&src_dir != &dst_dir || true))
    if (auto st = reserve_slots(dst_dir, dst_dir.chain, 1, tx); !st) return st;
  std::string src_name(name), dst_name(new_name);
  remove_entry(src_dir, src_name, tx);
  if (dst) remove_entry(dst_dir, dst_name, tx);
  if (auto st = add_entry(dst_dir, dst_name, src, tx); !st) return st;
  src.rec.parent = dst_dir.rec.ino;
  src.rec.ctime_ns = now_ns();
  stage_inode(tx, src);
  if (dst && (flags & kRenameExchange)) {
    if (auto st = add_entry(src_dir, src_name, *dst, tx); !st) return st;
    dst->rec.parent = src_dir.rec.ino;
    dst->rec.ctime_ns = now_ns();
    stage_inode(tx, *dst);
  } else if (dst) {
    drop_link(*dst, tx, dropped);
  }
  return commit(tx, std::move(dropped));
}

Result<Attr> FsImpl::setattr(Ino ino, const SetAttr& set, const Caller&) {
  LatentNotifier notify_latent(*this);  // truncate zeroes a (maybe shared) tail block
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  Transaction tx;
  std::vector<BlockRange> dropped;
  int64_t now = now_ns();
  if (set.valid & SetAttr::kSize) {
    if (inode.is_dir()) return fail(std::errc::is_a_directory);
    if (!inode.is_reg()) return fail(std::errc::invalid_argument);
    if (set.size > kMaxFileSize) return fail(std::errc::file_too_large);
    abandon_recovery_tails_of(ino, "the file was truncated");
    if (auto st = _truncate(inode, set.size, tx, dropped); !st) {
      // Committed even on failure, as write() and fallocate() do: what was
      // staged (a record block linked into the chain in memory, blocks
      // already given a private copy) must reach the media too.
      (void)commit(tx, std::move(dropped));
      return std::unexpected(st.error());
    }
    inode.rec.mtime_ns = now;
  }
  if (set.valid & SetAttr::kMode) {
    inode.rec.mode = (inode.rec.mode & S_IFMT) | (set.mode & 07777);
    chmod_access_acl(inode, tx);
  }
  if (set.valid & SetAttr::kUid) inode.rec.uid = set.uid;
  if (set.valid & SetAttr::kGid) inode.rec.gid = set.gid;
  // New contents or a new owner lose what was granted to the old (as
  // notify_change does for truncate and chown).
  const bool chown = (set.valid & (SetAttr::kUid | SetAttr::kGid)) && !inode.is_dir();
  if ((set.valid & SetAttr::kSize) || chown) {
    const bool suid = (set.valid & SetAttr::kKillSuidSgid) != 0;
    (void)_drop_privileges(inode, suid ? KillPriv::kCapsAndSuid : KillPriv::kCaps, tx);
  }
  if (set.valid & SetAttr::kAtime) inode.rec.atime_ns = ns_of(set.atime);
  if (set.valid & SetAttr::kAtimeNow) inode.rec.atime_ns = now;
  if (set.valid & SetAttr::kMtime) inode.rec.mtime_ns = ns_of(set.mtime);
  if (set.valid & SetAttr::kMtimeNow) inode.rec.mtime_ns = now;
  inode.rec.ctime_ns = (set.valid & SetAttr::kCtime) ? ns_of(set.ctime) : now;
  stage_inode(tx, inode);
  if (auto st = commit(tx, std::move(dropped)); !st) return std::unexpected(st.error());
  return attr_of(inode);
}

namespace {

// The mode bits kill takes from mode.
uint32_t suid_bits(uint32_t mode, KillPriv kill) {
  if (kill != KillPriv::kCapsAndSuid) return 0;
  uint32_t bits = mode & S_ISUID;
  if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) bits |= S_ISGID;
  return bits;
}

bool has_privileges(const Inode& inode, KillPriv kill) {
  return suid_bits(inode.rec.mode, kill) != 0 || inode.xattrs.contains(kCapabilityXattr);
}

}  // namespace

bool FsImpl::_drop_privileges(Inode& inode, KillPriv kill, Transaction& tx) {
  if (!has_privileges(inode, kill)) return false;
  _drop_xattr(inode, kCapabilityXattr, tx);
  inode.rec.mode &= ~suid_bits(inode.rec.mode, kill);
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return true;
}

Result<bool> FsImpl::drop_privileges(Ino ino, KillPriv kill) {
  {
    // Called before every write: most files have nothing to lose, and
    // finding that out needs no exclusive lock.
    std::shared_lock lock(mutex_);
    auto got = get(ino);
    if (!got) return std::unexpected(got.error());
    if (!has_privileges(**got, kill)) return false;
  }
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Transaction tx;
  if (!_drop_privileges(**got, kill, tx)) return false;
  if (auto st = commit(tx); !st) return std::unexpected(st.error());
  return true;
}

Status FsImpl::open(Ino ino) {
  std::unique_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  ++(*inode)->open_count;
  return {};
}

Status FsImpl::release(Ino ino) {
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  if (inode.open_count > 0) --inode.open_count;
  if (inode.open_count > 0) return {};
  Transaction tx;
  std::vector<BlockRange> dropped;
  if (inode.unreferenced()) {
    free_inode(inode, tx, dropped);
  } else if (inode.times_dirty) {
    stage_inode(tx, inode);
  }
  return commit(tx, std::move(dropped));
}

Status FsImpl::forget(std::span<const Forget> forgets) {
  std::unique_lock lock(mutex_);
  // Shut down: nothing more is written; the next mount reclaims orphans.
  if (shutdown_) return {};
  for (const Forget& f : forgets) {
    Inode* inode = f.ino == 0 || f.ino > inodes_.size() ? nullptr : inodes_[f.ino - 1].get();
    if (!inode) continue;  // never handed out (or a kernel out of step): nothing to drop
    const uint64_t held = inode->nlookup.load(std::memory_order_relaxed);
    inode->nlookup.store(held - std::min(held, f.nlookup), std::memory_order_relaxed);
    if (!inode->unreferenced()) continue;
    // One commit per freed inode, as at mount: a batch may free hundreds.
    Transaction tx;
    std::vector<BlockRange> dropped;
    free_inode(*inode, tx, dropped);
    if (auto st = commit(tx, std::move(dropped)); !st) return st;
  }
  return {};
}

Status FsImpl::fsync(Ino ino, bool) {
  // Data and metadata are durable when each call returns; only lazily kept
  // times remain to be written.
  std::unique_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  if (!(*inode)->times_dirty) return {};
  Transaction tx;
  stage_inode(tx, **inode);
  return commit(tx);
}

Status FsImpl::readdir(Ino ino, uint64_t cookie, const std::function<bool(const DirEntry&)>& fn) {
  std::shared_lock lock(mutex_);
  auto dir = get_dir(ino);
  if (!dir) return std::unexpected(dir.error());
  // Cookies: 0 start, 1 after ".", 2 after "..", k+3 after slot k of the chain.
  if (cookie == 0 && !fn(DirEntry{".", ino, DT_DIR, 1})) return {};
  if (cookie <= 1 && !fn(DirEntry{"..", (*dir)->rec.parent, DT_DIR, 2})) return {};
  const uint32_t per_block = slots_per_block(ChainKind::kDirents);
  uint64_t first = cookie <= 2 ? 0 : cookie - 2;
  const auto& blocks = (*dir)->chain.blocks;
  for (uint64_t k = first; k < blocks.size() * per_block; ++k) {
    const std::byte* p = media_->at(slot_offset(blocks[k / per_block], k % per_block, kDirentSlotSize));
    auto rec = decode_dirent(p);
    if (!rec || !*rec) continue;
    if (!fn(DirEntry{(*rec)->name, (*rec)->ino, (*rec)->type, k + 3})) return {};
  }
  return {};
}

}  // namespace poisonfs
