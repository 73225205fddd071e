// POSIX ACLs in the form the kernel hands them over as the xattrs
// system.posix_acl_access and system.posix_acl_default: a little-endian
// header (version 2) and entries {u16 tag, u16 perm, u32 id}. poisonfs keeps
// them as ordinary xattrs of the inode, in that form, so what is stored is
// what getxattr returns. These are fs/posix_acl.c's rules on that form, with
// no inode and no lock in sight: which ACLs are valid, which say no more than
// the mode, what mode an ACL implies, how chmod rewrites one and how a new
// file inherits its directory's default ACL. FsImpl applies them
// (xattr.cc, namespace.cc) and fsck checks stored ACLs with decode_acl.
//
//   +---------+--------+--------+--------+--------+-----
//   | version | tag    | perm   | id     | tag    | ...
//   | u32 = 2 | u16    | u16    | u32    | u16    |
//   +---------+--------+--------+--------+--------+-----
//   0         4        6        8        12
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "poisonfs/error.h"

namespace poisonfs {

inline constexpr std::string_view kAclAccessXattr = "system.posix_acl_access";
inline constexpr std::string_view kAclDefaultXattr = "system.posix_acl_default";
bool is_acl_xattr(std::string_view name);

// The values of Linux's ACL_* tags. Do not change: stored on media.
enum class AclTag : uint16_t {
  kUserObj = 0x01,
  kUser = 0x02,
  kGroupObj = 0x04,
  kGroup = 0x08,
  kMask = 0x10,
  kOther = 0x20,
};
// The id of every entry that names nobody (all but kUser and kGroup).
inline constexpr uint32_t kAclUndefinedId = 0xffffffff;
inline constexpr uint32_t kAclVersion = 2;
inline constexpr size_t kAclHeaderSize = 4;
inline constexpr size_t kAclEntrySize = 8;

struct AclEntry {
  AclTag tag;
  uint16_t perm;  // rwx: 4, 2, 1
  uint32_t id = kAclUndefinedId;
  bool operator==(const AclEntry&) const = default;
};

// The entries in the order a valid ACL has them: USER_OBJ, USER (by id),
// GROUP_OBJ, GROUP (by id), MASK, OTHER. Empty: no ACL.
using Acl = std::vector<AclEntry>;

// Decodes and validates a value. A value of no entries (empty, or a header
// alone) is the empty ACL, which removes one, as the kernel reads it. A
// version other than 2 is EOPNOTSUPP (posix_acl_from_xattr); any other
// malformed or invalid ACL is EINVAL. Valid: one USER_OBJ, GROUP_OBJ and
// OTHER each, named entries with real ids in ascending order without
// duplicates, a MASK exactly when there are named entries (or alone, which
// the kernel accepts too), perms within rwx.
Result<Acl> decode_acl(std::string_view value);
// The xattr form, with kAclUndefinedId as the id of the unnamed entries.
std::string encode_acl(const Acl& acl);

// Whether acl says no more than a mode's permission bits would: only the
// three entries USER_OBJ, GROUP_OBJ, OTHER (posix_acl_equiv_mode). Such an
// ACL is not kept; the mode alone says it.
bool acl_equivalent_to_mode(const Acl& acl);
// mode with its permission bits (0777) taken from acl: USER_OBJ, the MASK
// (GROUP_OBJ when there is none) and OTHER. File type and the setuid,
// setgid and sticky bits are kept.
uint32_t mode_from_acl(const Acl& acl, uint32_t mode);
// The three below take a valid, non-empty ACL (as decode_acl returns one).
//
// chmod of a file with an access ACL (posix_acl_chmod): the mode's
// permission bits become USER_OBJ, the MASK (GROUP_OBJ when there is none)
// and OTHER; named entries are kept, their rights still limited by the mask.
void chmod_acl(Acl& acl, uint32_t mode);
// A new file in a directory with a default ACL (posix_acl_create): acl, a
// copy of that default ACL, becomes the file's access ACL limited by the
// mode asked for, and the mode by acl. Returns the new mode (file type and
// special bits kept). The umask is not applied.
uint32_t create_acl(Acl& acl, uint32_t mode);

}  // namespace poisonfs
