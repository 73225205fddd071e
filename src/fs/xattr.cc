// Extended attributes: one record per 4 KiB block in a chain owned by the
// inode. POSIX ACLs (system.posix_acl_access and system.posix_acl_default)
// are xattrs too, kept by the rules of fs/acl.h as ext4 keeps them: an
// access ACL sets the mode's permission bits in the same transaction, and
// one that says no more than the mode is not kept; a default ACL belongs to
// directories only and is inherited at create (namespace.cc). The kernel
// enforces them (default_permissions). Other "system." names are refused.
#include <sys/stat.h>

#include "fs/acl.h"
#include "fs/fs_impl.h"

namespace poisonfs {
namespace {

// acls: whether POSIX ACLs are in force (mount -o noacl: not).
Status check_xattr_name(std::string_view name, bool acls) {
  if (name.empty()) return fail(std::errc::invalid_argument);
  if (name.size() > kXattrNameMax) return fail(std::errc::result_out_of_range);
  if (is_acl_xattr(name)) return acls ? Status{} : fail(std::errc::operation_not_supported);
  if (name.starts_with("system.")) return fail(std::errc::operation_not_supported);
  if (!name.starts_with("user.") && !name.starts_with("trusted.") && !name.starts_with("security."))
    return fail(std::errc::operation_not_supported);
  return {};
}

}  // namespace

Result<std::string> FsImpl::getxattr(Ino ino, std::string_view name) {
  if (auto st = check_xattr_name(name, posix_acls_); !st) return std::unexpected(st.error());
  std::shared_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  if (name == kPoisonXattr) {
    auto ranges = _file_poison(**inode);
    if (ranges.empty()) return fail(std::errc::no_message_available);
    return file_poison_json(ranges);
  }
  auto it = (*inode)->xattrs.find(name);
  if (it == (*inode)->xattrs.end()) return fail(std::errc::no_message_available);  // ENODATA
  return it->second.value;
}

Status FsImpl::setxattr(Ino ino, std::string_view name, std::string_view value, int flags) {
  if (auto st = check_xattr_name(name, posix_acls_); !st) return st;
  if (name == kPoisonXattr) return fail(std::errc::operation_not_permitted);
  if (value.size() > kXattrValueMax) return fail(std::errc::argument_list_too_long);
  // The kernel ignores XATTR_CREATE and XATTR_REPLACE for ACLs (vfs_set_acl).
  if (is_acl_xattr(name)) return set_acl(ino, name, value, (flags & kXattrKillSgid) != 0);
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  const bool exists = inode.xattrs.contains(name);
  if ((flags & kXattrCreate) && exists) return fail(std::errc::file_exists);
  if ((flags & kXattrReplace) && !exists) return fail(std::errc::no_message_available);
  Transaction tx;
  if (auto st = _put_xattr(inode, name, std::string(value), tx); !st) return st;
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return commit(tx);
}

// As ext4_set_acl with posix_acl_update_mode: an access ACL gives the mode
// its permission bits, and is dropped when it says no more than they do; an
// empty value removes the ACL; a default ACL is for directories only (EACCES
// otherwise, unless it is empty) and symlinks have none (EOPNOTSUPP). All in
// one transaction, so a crash leaves the old mode and ACL or the new ones.
Status FsImpl::set_acl(Ino ino, std::string_view name, std::string_view value, bool kill_sgid) {
  auto acl = decode_acl(value);
  if (!acl) return std::unexpected(acl.error());
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  if (inode.is_lnk()) return fail(std::errc::operation_not_supported);
  const bool is_default = name == kAclDefaultXattr;
  if (is_default && !inode.is_dir())
    return acl->empty() ? Status{} : fail(std::errc::permission_denied);
  uint32_t mode = inode.rec.mode;
  if (!is_default && !acl->empty()) {
    mode = mode_from_acl(*acl, mode);
    // The kernel says so when the caller is neither in the file's group nor
    // has CAP_FSETID, as chmod would drop it.
    if (kill_sgid) mode &= ~uint32_t{S_ISGID};
    if (acl_equivalent_to_mode(*acl)) acl->clear();  // the mode says it all
  }
  if (acl->empty() && !inode.xattrs.contains(name) && mode == inode.rec.mode) return {};
  Transaction tx;
  if (acl->empty()) {
    _drop_xattr(inode, name, tx);
  } else if (auto st = _put_xattr(inode, name, encode_acl(*acl), tx); !st) {
    return st;
  }
  inode.rec.mode = mode;
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return commit(tx);
}

Status FsImpl::_put_xattr(Inode& inode, std::string_view name, std::string value, Transaction& tx) {
  SlotRef slot;
  if (auto it = inode.xattrs.find(name); it != inode.xattrs.end()) {
    slot = it->second.slot;
  } else {
    auto taken = take_slot(inode, inode.xattr_chain, tx);
    if (!taken) return std::unexpected(taken.error());
    slot = *taken;
  }
  encode_xattr(XattrRec{std::string(name), value},
               tx.reserve(slot_offset(slot.block, slot.index, kXattrSlotSize), kXattrSlotSize));
  inode.xattrs.insert_or_assign(std::string(name), Xattr{std::move(value), slot});
  return {};
}

bool FsImpl::_drop_xattr(Inode& inode, std::string_view name, Transaction& tx) {
  auto it = inode.xattrs.find(name);
  if (it == inode.xattrs.end()) return false;
  free_slot(inode.xattr_chain, it->second.slot, tx);
  inode.xattrs.erase(it);
  return true;
}

void FsImpl::chmod_access_acl(Inode& inode, Transaction& tx) {
  if (!posix_acls_) return;  // -o noacl leaves stored ACLs as they are, as ext4 does
  auto it = inode.xattrs.find(kAclAccessXattr);
  if (it == inode.xattrs.end()) return;
  auto acl = decode_acl(it->second.value);
  if (!acl || acl->empty()) return;  // mount refuses such a record: cannot be
  chmod_acl(*acl, inode.rec.mode);
  (void)_put_xattr(inode, kAclAccessXattr, encode_acl(*acl), tx);  // in its own slot: cannot fail
}

Result<NewInodeAcls> FsImpl::new_inode_acls(const Inode& dir, uint32_t mode, uint32_t umask) {
  NewInodeAcls out;
  out.mode = mode;
  if (S_ISLNK(mode)) return out;  // neither umask nor ACLs: the mode is always 0777
  auto it = dir.xattrs.find(kAclDefaultXattr);
  if (!posix_acls_ || it == dir.xattrs.end()) {
    out.mode = mode & ~(umask & 0777);
    return out;
  }
  auto acl = decode_acl(it->second.value);
  if (!acl)
    return fail(std::errc::io_error,
                "the directory's default ACL does not parse; run fsck.poisonfs");
  Acl access = *acl;
  out.mode = create_acl(access, mode);
  if (!acl_equivalent_to_mode(access)) out.access = encode_acl(access);
  if (S_ISDIR(mode)) out.default_acl = it->second.value;
  return out;
}

Status FsImpl::_put_new_inode_acls(Inode& child, const NewInodeAcls& acls, Transaction& tx) {
  if (!acls.access.empty())
    if (auto st = _put_xattr(child, kAclAccessXattr, acls.access, tx); !st) return st;
  if (!acls.default_acl.empty())
    if (auto st = _put_xattr(child, kAclDefaultXattr, acls.default_acl, tx); !st) return st;
  return {};
}

std::optional<std::string> stored_acl_problem(const InodeRec& rec, std::string_view name,
                                              std::string_view value) {
  if (!is_acl_xattr(name)) return std::nullopt;
  auto acl = decode_acl(value);
  if (!acl) return std::string(name) + " does not parse: " + acl.error().to_string();
  if (acl->empty()) return std::string(name) + " is empty";
  if (S_ISLNK(rec.mode)) return std::string(name) + " on a symlink";
  if (name == kAclDefaultXattr && !S_ISDIR(rec.mode))
    return std::string(name) + " on a non-directory";
  return std::nullopt;
}

Result<std::vector<std::string>> FsImpl::listxattr(Ino ino) {
  std::shared_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  std::vector<std::string> names;
  for (const auto& [name, x] : (*inode)->xattrs)
    if (posix_acls_ || !is_acl_xattr(name)) names.push_back(name);
  if (!_file_poison(**inode).empty()) names.emplace_back(kPoisonXattr);
  return names;
}

Status FsImpl::removexattr(Ino ino, std::string_view name) {
  if (auto st = check_xattr_name(name, posix_acls_); !st) return st;
  if (name == kPoisonXattr) return fail(std::errc::operation_not_permitted);
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  if (!inode.xattrs.contains(name)) {
    // Removing an ACL that is not there succeeds, as on ext4 and tmpfs.
    return is_acl_xattr(name) ? Status{} : fail(std::errc::no_message_available);
  }
  Transaction tx;
  _drop_xattr(inode, name, tx);
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return commit(tx);
}

}  // namespace poisonfs
