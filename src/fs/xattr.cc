// Extended attributes: one record per 4 KiB block in a chain owned by the
// inode. POSIX ACLs are refused with EOPNOTSUPP (default_permissions does the
// permission checks from the mode bits).
#include "fs/fs_impl.h"

namespace poisonfs {
namespace {

Status check_xattr_name(std::string_view name) {
  if (name.empty()) return fail(std::errc::invalid_argument);
  if (name.size() > kXattrNameMax) return fail(std::errc::result_out_of_range);
  if (name.starts_with("system.")) return fail(std::errc::operation_not_supported);
  if (!name.starts_with("user.") && !name.starts_with("trusted.") && !name.starts_with("security."))
    return fail(std::errc::operation_not_supported);
  return {};
}

}  // namespace

Result<std::string> FsImpl::getxattr(Ino ino, std::string_view name) {
  if (auto st = check_xattr_name(name); !st) return std::unexpected(st.error());
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
  if (auto st = check_xattr_name(name); !st) return st;
  if (name == kPoisonXattr) return fail(std::errc::operation_not_permitted);
  if (value.size() > kXattrValueMax) return fail(std::errc::argument_list_too_long);
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  auto it = inode.xattrs.find(name);
  if ((flags & kXattrCreate) && it != inode.xattrs.end()) return fail(std::errc::file_exists);
  if ((flags & kXattrReplace) && it == inode.xattrs.end()) return fail(std::errc::no_message_available);
  Transaction tx;
  SlotRef slot;
  if (it != inode.xattrs.end()) {
    slot = it->second.slot;
  } else {
    auto taken = take_slot(inode, inode.xattr_chain, tx);
    if (!taken) return std::unexpected(taken.error());
    slot = *taken;
  }
  encode_xattr(XattrRec{std::string(name), std::string(value)},
               tx.reserve(slot_offset(slot.block, slot.index, kXattrSlotSize), kXattrSlotSize));
  inode.xattrs[std::string(name)] = Xattr{std::string(value), slot};
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return commit(tx);
}

Result<std::vector<std::string>> FsImpl::listxattr(Ino ino) {
  std::shared_lock lock(mutex_);
  auto inode = get(ino);
  if (!inode) return std::unexpected(inode.error());
  std::vector<std::string> names;
  for (const auto& [name, x] : (*inode)->xattrs) names.push_back(name);
  if (!_file_poison(**inode).empty()) names.emplace_back(kPoisonXattr);
  return names;
}

Status FsImpl::removexattr(Ino ino, std::string_view name) {
  if (auto st = check_xattr_name(name); !st) return st;
  if (name == kPoisonXattr) return fail(std::errc::operation_not_permitted);
  std::unique_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  auto it = inode.xattrs.find(name);
  if (it == inode.xattrs.end()) return fail(std::errc::no_message_available);
  Transaction tx;
  free_slot(inode.xattr_chain, it->second.slot, tx);
  inode.xattrs.erase(it);
  inode.rec.ctime_ns = now_ns();
  stage_inode(tx, inode);
  return commit(tx);
}

}  // namespace poisonfs
