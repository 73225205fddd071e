// POSIX ACLs in their xattr form: decode, validate, encode, and the mode
// arithmetic of set, chmod and create (see acl.h).
#include "fs/acl.h"

#include "format/coding.h"

namespace poisonfs {
namespace {

constexpr uint16_t kRwx = 07;

bool is_named(AclTag tag) { return tag == AclTag::kUser || tag == AclTag::kGroup; }

// The place of each tag in a valid ACL (named tags may repeat in theirs);
// -1 for a value that is no tag.
int rank_of(AclTag tag) {
  switch (tag) {
    case AclTag::kUserObj:
      return 0;
    case AclTag::kUser:
      return 1;
    case AclTag::kGroupObj:
      return 2;
    case AclTag::kGroup:
      return 3;
    case AclTag::kMask:
      return 4;
    case AclTag::kOther:
      return 5;
  }
  return -1;
}

// posix_acl_valid's rules as the kernel applies them: each tag in its place,
// named entries in any order of id, even twice (setfacl sends them sorted,
// but ext4 and tmpfs take a raw setxattr that is not; the first match
// decides access, as in posix_acl_permission).
bool is_valid(const Acl& acl) {
  int last_rank = -1;
  unsigned seen = 0;  // bit r: an entry of rank r
  for (const AclEntry& e : acl) {
    if (e.perm & ~kRwx) return false;
    const int rank = rank_of(e.tag);
    if (rank < 0 || rank < last_rank) return false;
    if (rank == last_rank && !is_named(e.tag)) return false;  // twice
    if (is_named(e.tag) && e.id == kAclUndefinedId) return false;
    seen |= 1u << rank;
    last_rank = rank;
  }
  auto bit = [](AclTag tag) { return 1u << rank_of(tag); };
  const unsigned required = bit(AclTag::kUserObj) | bit(AclTag::kGroupObj) | bit(AclTag::kOther);
  const bool named = seen & (bit(AclTag::kUser) | bit(AclTag::kGroup));
  return (seen & required) == required && (!named || (seen & bit(AclTag::kMask)));
}

// The entry of acl with tag (the first), or null.
template <class A>
auto find(A& acl, AclTag tag) -> decltype(&acl[0]) {
  for (auto& e : acl)
    if (e.tag == tag) return &e;
  return nullptr;
}

// The entry that stands for the group class: the mask, or GROUP_OBJ without
// one (null in an ACL that has neither).
template <class A>
auto group_class(A& acl) -> decltype(&acl[0]) {
  auto* mask = find(acl, AclTag::kMask);
  return mask ? mask : find(acl, AclTag::kGroupObj);
}

}  // namespace

bool is_acl_xattr(std::string_view name) {
  return name == kAclAccessXattr || name == kAclDefaultXattr;
}

Result<Acl> decode_acl(std::string_view value) {
  if (value.empty()) return Acl{};
  if (value.size() < kAclHeaderSize)
    return fail(std::errc::invalid_argument, "ACL shorter than its header");
  const auto* p = reinterpret_cast<const std::byte*>(value.data());
  if (get_le<uint32_t>(p) != kAclVersion)
    return fail(std::errc::operation_not_supported, "ACL version is not 2");
  if ((value.size() - kAclHeaderSize) % kAclEntrySize != 0)
    return fail(std::errc::invalid_argument, "ACL size is not a whole number of entries");
  Acl acl;
  acl.reserve((value.size() - kAclHeaderSize) / kAclEntrySize);
  for (size_t at = kAclHeaderSize; at < value.size(); at += kAclEntrySize) {
    const auto tag = static_cast<AclTag>(get_le<uint16_t>(p + at));
    if (rank_of(tag) < 0) return fail(std::errc::invalid_argument, "ACL entry of an unknown kind");
    AclEntry e{tag, get_le<uint16_t>(p + at + 2), get_le<uint32_t>(p + at + 4)};
    if (!is_named(e.tag)) e.id = kAclUndefinedId;  // the kernel ignores it too
    acl.push_back(e);
  }
  if (!acl.empty() && !is_valid(acl)) return fail(std::errc::invalid_argument, "invalid ACL");
  return acl;
}

std::string encode_acl(const Acl& acl) {
  std::string out(kAclHeaderSize + acl.size() * kAclEntrySize, '\0');
  auto* p = reinterpret_cast<std::byte*>(out.data());
  put_le<uint32_t>(p, kAclVersion);
  size_t at = kAclHeaderSize;
  for (const AclEntry& e : acl) {
    put_le<uint16_t>(p + at, static_cast<uint16_t>(e.tag));
    put_le<uint16_t>(p + at + 2, e.perm);
    put_le<uint32_t>(p + at + 4, is_named(e.tag) ? e.id : kAclUndefinedId);
    at += kAclEntrySize;
  }
  return out;
}

bool acl_equivalent_to_mode(const Acl& acl) { return acl.size() == 3; }

uint32_t mode_from_acl(const Acl& acl, uint32_t mode) {
  const AclEntry* user = find(acl, AclTag::kUserObj);
  const AclEntry* group = group_class(acl);
  const AclEntry* other = find(acl, AclTag::kOther);
  if (!user || !group || !other) return mode;  // not a valid ACL: nothing to say
  return (mode & ~uint32_t{0777}) | uint32_t{user->perm} << 6 | uint32_t{group->perm} << 3 |
         uint32_t{other->perm};
}

void chmod_acl(Acl& acl, uint32_t mode) {
  if (acl.empty()) return;
  find(acl, AclTag::kUserObj)->perm = (mode >> 6) & kRwx;
  group_class(acl)->perm = (mode >> 3) & kRwx;
  find(acl, AclTag::kOther)->perm = mode & kRwx;
}

uint32_t create_acl(Acl& acl, uint32_t mode) {
  if (acl.empty()) return mode;
  // Each class keeps only what both the ACL and the mode grant; the named
  // entries stay as they are, limited by the mask.
  auto limit = [&](AclEntry& e, int shift) {
    e.perm &= (mode >> shift) & kRwx;
    mode &= ~(uint32_t{kRwx} << shift) | uint32_t{e.perm} << shift;
  };
  limit(*find(acl, AclTag::kUserObj), 6);
  limit(*group_class(acl), 3);
  limit(*find(acl, AclTag::kOther), 0);
  return mode;
}

}  // namespace poisonfs
