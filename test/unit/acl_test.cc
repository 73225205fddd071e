// POSIX ACLs: the xattr form and its rules (src/fs/acl.h: decode, validate,
// encode, equivalence with the mode, chmod, create masking), and the core
// keeping them (xattr.cc, namespace.cc): setting an access ACL sets the
// mode, one equivalent to the mode is not kept, a default ACL only on
// directories, chmod rewrites the access ACL, creates inherit the
// directory's default ACL instead of applying the umask, all of it across
// remounts and clean under fsck. Crash atomicity (every prefix of the
// transaction) and running out of space are in fs_test.cc (FsCrash,
// FsSpace), next to the other operations.
#include "fs/acl.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <initializer_list>
#include <string>

#include "poisonfs/filesystem.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

constexpr uint32_t kNone = kAclUndefinedId;
const Caller kOwner{1000, 1000, 022};

AclEntry user_obj(uint16_t perm) { return {AclTag::kUserObj, perm, kNone}; }
AclEntry user(uint32_t id, uint16_t perm) { return {AclTag::kUser, perm, id}; }
AclEntry group_obj(uint16_t perm) { return {AclTag::kGroupObj, perm, kNone}; }
AclEntry group(uint32_t id, uint16_t perm) { return {AclTag::kGroup, perm, id}; }
AclEntry mask(uint16_t perm) { return {AclTag::kMask, perm, kNone}; }
AclEntry other(uint16_t perm) { return {AclTag::kOther, perm, kNone}; }

// The xattr form of entries given as raw (tag, perm, id) triples, with any
// version: what a caller may hand over, valid or not.
std::string raw_acl(std::initializer_list<AclEntry> entries, uint32_t version = kAclVersion) {
  std::string out;
  auto put = [&](uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(version, 4);
  for (const AclEntry& e : entries) {
    put(static_cast<uint16_t>(e.tag), 2);
    put(e.perm, 2);
    put(e.id, 4);
  }
  return out;
}

// owner rw, nobody r, group r, mask r, other r: `setfacl -m u:nobody:r`
// on a 0644 file.
const Acl kNamedNobody = {user_obj(6), user(65534, 4), group_obj(4), mask(4), other(4)};

std::errc decode_error(std::string_view value) {
  auto acl = decode_acl(value);
  EXPECT_FALSE(acl) << "decoded an invalid ACL";
  return acl ? std::errc{} : acl.error().code;
}

template <class T>
std::errc err(const Result<T>& r) {
  EXPECT_FALSE(r) << "expected an error";
  return r ? std::errc{} : r.error().code;
}

// ---------------------------------------------------------------- the form

TEST(AclForm, DecodesWhatItEncodes) {
  const Acl acl = {user_obj(7),  user(3, 5), user(1000, 7), group_obj(5),
                   group(10, 1), mask(7),    other(0)};
  auto back = decode_acl(encode_acl(acl));
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(*back, acl);
  EXPECT_EQ(encode_acl(kNamedNobody).size(), 4u + 5 * 8);
}

TEST(AclForm, UnnamedEntriesGetTheUndefinedId) {
  // The kernel ignores the id of unnamed entries; stored, it is always -1.
  auto acl = decode_acl(
      raw_acl({{AclTag::kUserObj, 6, 7}, {AclTag::kGroupObj, 4, 0}, {AclTag::kOther, 4, 9}}));
  ASSERT_TRUE(acl);
  EXPECT_EQ(*acl, (Acl{user_obj(6), group_obj(4), other(4)}));
  EXPECT_EQ(encode_acl(*acl), raw_acl({user_obj(6), group_obj(4), other(4)}));
}

TEST(AclForm, NoEntriesIsTheEmptyAcl) {
  EXPECT_TRUE(decode_acl("")->empty());
  EXPECT_TRUE(decode_acl(raw_acl({}))->empty());
}

TEST(AclForm, MalformedValuesAreRefused) {
  EXPECT_EQ(decode_error("\x02\x00"), std::errc::invalid_argument);  // short header
  EXPECT_EQ(decode_error(raw_acl({user_obj(6)}) + "x"),
            std::errc::invalid_argument);  // part of an entry
  EXPECT_EQ(decode_error(raw_acl({user_obj(6), group_obj(4), other(4)}, 1)),
            std::errc::operation_not_supported);
  EXPECT_EQ(decode_error(raw_acl({user_obj(6), {AclTag{0x40}, 4, kNone}, group_obj(4), other(4)})),
            std::errc::invalid_argument);  // unknown tag
}

TEST(AclForm, InvalidAclsAreRefused) {
  const std::initializer_list<std::initializer_list<AclEntry>> invalid = {
      {group_obj(4), other(4)},                                                // no USER_OBJ
      {user_obj(6), other(4)},                                                 // no GROUP_OBJ
      {user_obj(6), group_obj(4)},                                             // no OTHER
      {user_obj(6), user_obj(6), group_obj(4), other(4)},                      // USER_OBJ twice
      {user_obj(6), group_obj(4), group_obj(4), other(4)},                     // GROUP_OBJ twice
      {user_obj(6), group_obj(4), other(4), other(4)},                         // OTHER twice
      {user_obj(6), group_obj(4), mask(4), mask(4), other(4)},                 // MASK twice
      {user_obj(6), user(5, 4), group_obj(4), other(4)},                       // named, no MASK
      {user_obj(6), group_obj(4), group(5, 4), other(4)},                      // named, no MASK
      {user_obj(6), user(kNone, 4), group_obj(4), mask(4), other(4)},  // a named nobody
      {group_obj(4), user_obj(6), other(4)},                           // out of order
      {user_obj(6), group_obj(4), user(5, 4), mask(4), other(4)},
      {user_obj(6), group_obj(4), other(4), mask(4)},
      {user_obj(8), group_obj(4), other(4)},  // perm beyond rwx
      {user_obj(6), group_obj(4), other(0x10)},
  };
  for (const auto& entries : invalid)
    EXPECT_EQ(decode_error(raw_acl(entries)), std::errc::invalid_argument)
        << ::testing::PrintToString(raw_acl(entries));
}

TEST(AclForm, ValidShapes) {
  for (const Acl& acl :
       {Acl{user_obj(7), group_obj(5), other(5)},
        Acl{user_obj(7), group_obj(5), mask(5), other(5)},  // a mask alone: the kernel takes it
        kNamedNobody,
        Acl{user_obj(0), group_obj(0), group(0, 7), group(1, 7), mask(7), other(0)},
        // Named ids unsorted or twice: the kernel (posix_acl_valid) and ext4 take them.
        Acl{user_obj(6), user(9, 4), user(5, 4), group_obj(4), mask(4), other(4)},
        Acl{user_obj(6), user(5, 4), user(5, 6), group_obj(4), mask(4), other(4)},
        Acl{user_obj(6), group_obj(4), group(9, 4), group(5, 4), mask(4), other(4)}}) {
    auto back = decode_acl(encode_acl(acl));
    ASSERT_TRUE(back) << back.error().to_string();
    EXPECT_EQ(*back, acl);
  }
}

// ---------------------------------------------------------------- the rules

TEST(AclRules, OnlyTheThreeBaseEntriesAreEquivalentToTheMode) {
  EXPECT_TRUE(acl_equivalent_to_mode({user_obj(6), group_obj(4), other(4)}));
  EXPECT_FALSE(acl_equivalent_to_mode({user_obj(6), group_obj(4), mask(4), other(4)}));
  EXPECT_FALSE(acl_equivalent_to_mode(kNamedNobody));
}

TEST(AclRules, ModeComesFromOwnerMaskOrGroupAndOther) {
  EXPECT_EQ(mode_from_acl({user_obj(7), group_obj(5), other(1)}, S_IFREG | 04000 | 0600),
            S_IFREG | 04751u);
  // With a mask, the group bits are the mask's, not GROUP_OBJ's.
  EXPECT_EQ(
      mode_from_acl({user_obj(6), user(5, 7), group_obj(4), mask(7), other(0)}, S_IFDIR | 0755),
      S_IFDIR | 0670u);
}

TEST(AclRules, ChmodRewritesOwnerMaskAndOther) {
  Acl acl = {user_obj(6), user(5, 7), group_obj(4), group(9, 6), mask(6), other(4)};
  chmod_acl(acl, S_IFREG | 0710);
  EXPECT_EQ(acl, (Acl{user_obj(7), user(5, 7), group_obj(4), group(9, 6), mask(1), other(0)}));
  // Without a mask the group bits go to GROUP_OBJ.
  Acl plain = {user_obj(6), group_obj(4), other(4)};
  chmod_acl(plain, 0750);
  EXPECT_EQ(plain, (Acl{user_obj(7), group_obj(5), other(0)}));
}

TEST(AclRules, CreateMasksTheDefaultAndTheMode) {
  // A default of rwx for the owner, nobody and the mask, r-x for the group,
  // nothing for others; a file asked for 0666 (umask not applied).
  Acl acl = {user_obj(7), user(65534, 7), group_obj(5), mask(7), other(0)};
  EXPECT_EQ(create_acl(acl, S_IFREG | 0666), S_IFREG | 0660u);
  EXPECT_EQ(acl, (Acl{user_obj(6), user(65534, 7), group_obj(5), mask(6), other(0)}));
  // Without a mask the group class is GROUP_OBJ; special bits survive.
  Acl plain = {user_obj(7), group_obj(5), other(5)};
  EXPECT_EQ(create_acl(plain, S_IFDIR | 02777), S_IFDIR | 02755u);
  EXPECT_EQ(plain, (Acl{user_obj(7), group_obj(5), other(5)}));
}

// ---------------------------------------------------------------- the core

class Device : public testing::TestDevice {
 public:
  Device() : TestDevice(64 << 20) {}
};

Ino make(Filesystem& fs, Ino dir, std::string_view name, uint32_t mode,
         const Caller& caller = kOwner) {
  auto a = S_ISDIR(mode) ? fs.mkdir(dir, name, mode & 07777, caller)
                         : fs.mknod(dir, name, mode, 0, caller);
  EXPECT_TRUE(a) << name << ": " << (a ? "" : a.error().to_string());
  return a ? a->ino : 0;
}

uint32_t perms(Filesystem& fs, Ino ino) { return fs.getattr(ino)->mode & 07777; }

// The ACL stored as name, or nullopt when there is none.
std::optional<Acl> stored(Filesystem& fs, Ino ino, std::string_view name) {
  auto value = fs.getxattr(ino, name);
  if (!value) {
    EXPECT_EQ(value.error().code, std::errc::no_message_available);
    return std::nullopt;
  }
  auto acl = decode_acl(*value);
  EXPECT_TRUE(acl) << acl.error().to_string();
  return acl.value_or(Acl{});
}

Status set(Filesystem& fs, Ino ino, std::string_view name, const Acl& acl, int flags = 0) {
  return fs.setxattr(ino, name, encode_acl(acl), flags);
}

TEST(FsAcl, AccessAclSetsTheModeAndIsKeptWhenItSaysMore) {
  Device fs;
  Ino f = make(*fs, kRootIno, "f", S_IFREG | 0600);
  const Timespec ctime0 = fs->getattr(f)->ctime;
  ASSERT_TRUE(
      set(*fs, f, kAclAccessXattr, {user_obj(7), user(65534, 6), group_obj(4), mask(6), other(1)}));
  EXPECT_EQ(perms(*fs, f), 0761u);  // the mask's bits are the group's
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr),
            (Acl{user_obj(7), user(65534, 6), group_obj(4), mask(6), other(1)}));
  auto names = fs->listxattr(f);
  ASSERT_TRUE(names);
  EXPECT_EQ(*names, std::vector<std::string>{std::string(kAclAccessXattr)});
  const Timespec ctime1 = fs->getattr(f)->ctime;
  EXPECT_TRUE(ctime1.sec > ctime0.sec || (ctime1.sec == ctime0.sec && ctime1.nsec > ctime0.nsec));
  // The same ACL without its extra entries is the mode: no xattr is kept.
  ASSERT_TRUE(set(*fs, f, kAclAccessXattr, {user_obj(6), group_obj(4), other(0)}));
  EXPECT_EQ(perms(*fs, f), 0640u);
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr), std::nullopt);
  EXPECT_TRUE(fs->listxattr(f)->empty());
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsAcl, RemovingTheAccessAclLeavesTheMode) {
  Device fs;
  Ino f = make(*fs, kRootIno, "f", S_IFREG | 0644);
  ASSERT_TRUE(set(*fs, f, kAclAccessXattr, kNamedNobody));
  ASSERT_TRUE(fs->removexattr(f, kAclAccessXattr));
  EXPECT_EQ(perms(*fs, f), 0644u);
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr), std::nullopt);
  // Removing an ACL that is not there succeeds, as on ext4; an empty value removes too.
  EXPECT_TRUE(fs->removexattr(f, kAclAccessXattr));
  EXPECT_TRUE(fs->removexattr(f, kAclDefaultXattr));
  ASSERT_TRUE(set(*fs, f, kAclAccessXattr, kNamedNobody));
  ASSERT_TRUE(fs->setxattr(f, kAclAccessXattr, "", 0));
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr), std::nullopt);
  EXPECT_EQ(perms(*fs, f), 0644u);
}

TEST(FsAcl, InvalidAclsAreRefusedAndChangeNothing) {
  Device fs;
  Ino f = make(*fs, kRootIno, "f", S_IFREG | 0644);
  ASSERT_TRUE(set(*fs, f, kAclAccessXattr, kNamedNobody));
  const std::string no_mask = raw_acl({user_obj(7), user(5, 7), group_obj(7), other(7)});
  EXPECT_EQ(err(fs->setxattr(f, kAclAccessXattr, no_mask, 0)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->setxattr(f, kAclAccessXattr, "garbage", 0)),
            std::errc::operation_not_supported);
  EXPECT_EQ(err(fs->setxattr(f, kAclAccessXattr, "ga", 0)), std::errc::invalid_argument);
  EXPECT_EQ(perms(*fs, f), 0644u);
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr), kNamedNobody);
  // Other system. names stay refused.
  EXPECT_EQ(err(fs->setxattr(f, "system.posix_acl_other", no_mask, 0)),
            std::errc::operation_not_supported);
}

TEST(FsAcl, DefaultAclOnlyOnDirectoriesAndNoAclOnSymlinks) {
  Device fs;
  Ino f = make(*fs, kRootIno, "f", S_IFREG | 0644);
  Ino d = make(*fs, kRootIno, "d", S_IFDIR | 0755);
  auto l = fs->symlink(kRootIno, "l", "f", kOwner);
  ASSERT_TRUE(l);
  // ext4 and XFS: EACCES for a default ACL on a file, an empty one is a no-op.
  EXPECT_EQ(err(set(*fs, f, kAclDefaultXattr, kNamedNobody)), std::errc::permission_denied);
  EXPECT_TRUE(fs->setxattr(f, kAclDefaultXattr, raw_acl({}), 0));
  EXPECT_EQ(err(set(*fs, l->ino, kAclAccessXattr, kNamedNobody)),
            std::errc::operation_not_supported);
  ASSERT_TRUE(set(*fs, d, kAclDefaultXattr, kNamedNobody));
  EXPECT_EQ(perms(*fs, d), 0755u);  // a default ACL leaves the mode alone
  EXPECT_EQ(stored(*fs, d, kAclDefaultXattr), kNamedNobody);
  // A default ACL equivalent to a mode is kept: it is still inherited.
  ASSERT_TRUE(set(*fs, d, kAclDefaultXattr, {user_obj(7), group_obj(0), other(0)}));
  EXPECT_EQ(stored(*fs, d, kAclDefaultXattr), (Acl{user_obj(7), group_obj(0), other(0)}));
  // An empty default ACL removes it.
  ASSERT_TRUE(fs->setxattr(d, kAclDefaultXattr, raw_acl({}), 0));
  EXPECT_EQ(stored(*fs, d, kAclDefaultXattr), std::nullopt);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsAcl, SettingAnAccessAclMayKillTheSetgidBit) {
  Device fs;
  Ino f = make(*fs, kRootIno, "f", S_IFREG | 02775);
  ASSERT_TRUE(set(*fs, f, kAclAccessXattr, kNamedNobody));
  EXPECT_EQ(perms(*fs, f), 02644u);  // in the group, or CAP_FSETID: kept
  ASSERT_TRUE(set(*fs, f, kAclAccessXattr, kNamedNobody, kXattrKillSgid));
  EXPECT_EQ(perms(*fs, f), 0644u);
}

TEST(FsAcl, ChmodRewritesTheAccessAcl) {
  Device fs;
  Ino f = make(*fs, kRootIno, "f", S_IFREG | 0644);
  ASSERT_TRUE(
      set(*fs, f, kAclAccessXattr, {user_obj(6), user(65534, 7), group_obj(4), mask(7), other(4)}));
  SetAttr chmod;
  chmod.valid = SetAttr::kMode;
  chmod.mode = 0640;
  ASSERT_TRUE(fs->setattr(f, chmod, kOwner));
  const Acl want = {user_obj(6), user(65534, 7), group_obj(4), mask(4), other(0)};
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr), want);
  fs.remount();
  EXPECT_EQ(stored(*fs, f, kAclAccessXattr), want);
  EXPECT_EQ(perms(*fs, f), 0640u);
  // A chmod of a file with no ACL adds none.
  Ino g = make(*fs, kRootIno, "g", S_IFREG | 0644);
  ASSERT_TRUE(fs->setattr(g, chmod, kOwner));
  EXPECT_EQ(stored(*fs, g, kAclAccessXattr), std::nullopt);
  EXPECT_TRUE(fs.check().clean());
}

// A directory with a default ACL granting nobody rwx (mask rwx) and
// others nothing; the caller's umask 022 must not count.
class FsAclInherit : public ::testing::Test {
 protected:
  void SetUp() override {
    d_ = make(*fs_, kRootIno, "d", S_IFDIR | 0755);
    ASSERT_TRUE(set(*fs_, d_, kAclDefaultXattr, kDefault));
  }
  const Acl kDefault = {user_obj(7), user(65534, 7), group_obj(5), mask(7), other(0)};
  Device fs_;
  Ino d_ = 0;
};

TEST_F(FsAclInherit, FileGetsTheDefaultMaskedByItsModeAndNoUmask) {
  Ino f = make(*fs_, d_, "f", S_IFREG | 0666);
  EXPECT_EQ(perms(*fs_, f), 0660u);
  EXPECT_EQ(stored(*fs_, f, kAclAccessXattr),
            (Acl{user_obj(6), user(65534, 7), group_obj(5), mask(6), other(0)}));
  EXPECT_EQ(stored(*fs_, f, kAclDefaultXattr), std::nullopt);  // files have none
  // mknod of other kinds too.
  Ino fifo = make(*fs_, d_, "fifo", S_IFIFO | 0640);
  EXPECT_EQ(perms(*fs_, fifo), 0640u);
  EXPECT_EQ(stored(*fs_, fifo, kAclAccessXattr),
            (Acl{user_obj(6), user(65534, 7), group_obj(5), mask(4), other(0)}));
}

TEST_F(FsAclInherit, DirectoryGetsTheDefaultAsBothAcls) {
  Ino sub = make(*fs_, d_, "sub", S_IFDIR | 0777);
  EXPECT_EQ(perms(*fs_, sub), 0770u);
  EXPECT_EQ(stored(*fs_, sub, kAclAccessXattr),
            (Acl{user_obj(7), user(65534, 7), group_obj(5), mask(7), other(0)}));
  EXPECT_EQ(stored(*fs_, sub, kAclDefaultXattr), kDefault);
  // And passes it on.
  Ino deeper = make(*fs_, sub, "f", S_IFREG | 0600);
  EXPECT_EQ(perms(*fs_, deeper), 0600u);
  EXPECT_EQ(stored(*fs_, deeper, kAclAccessXattr),
            (Acl{user_obj(6), user(65534, 7), group_obj(5), mask(0), other(0)}));
}

TEST_F(FsAclInherit, AnInheritedAclEquivalentToTheModeIsNotKept) {
  ASSERT_TRUE(set(*fs_, d_, kAclDefaultXattr, {user_obj(7), group_obj(5), other(1)}));
  Ino f = make(*fs_, d_, "f", S_IFREG | 0666);
  EXPECT_EQ(perms(*fs_, f), 0640u);  // the default masks (others: x of rw-), the umask 022 not
  EXPECT_EQ(stored(*fs_, f, kAclAccessXattr), std::nullopt);
  Ino sub = make(*fs_, d_, "sub", S_IFDIR | 0777);
  EXPECT_EQ(perms(*fs_, sub), 0751u);
  EXPECT_EQ(stored(*fs_, sub, kAclAccessXattr), std::nullopt);
  EXPECT_EQ(stored(*fs_, sub, kAclDefaultXattr), (Acl{user_obj(7), group_obj(5), other(1)}));
}

TEST_F(FsAclInherit, WithoutADefaultAclTheUmaskApplies) {
  Ino f = make(*fs_, kRootIno, "f", S_IFREG | 0666);
  EXPECT_EQ(perms(*fs_, f), 0644u);
  Ino sub = make(*fs_, kRootIno, "sub", S_IFDIR | 0777);
  EXPECT_EQ(perms(*fs_, sub), 0755u);
  EXPECT_TRUE(fs_->listxattr(f)->empty());
  EXPECT_TRUE(fs_->listxattr(sub)->empty());
}

TEST_F(FsAclInherit, SymlinksInheritNothing) {
  auto l = fs_->symlink(d_, "l", "target", kOwner);
  ASSERT_TRUE(l);
  EXPECT_EQ(perms(*fs_, l->ino), 0777u);
  EXPECT_TRUE(fs_->listxattr(l->ino)->empty());
}

TEST_F(FsAclInherit, AclsSurviveRemountsCleanAndCrashed) {
  Ino f = make(*fs_, d_, "f", S_IFREG | 0666);
  Ino sub = make(*fs_, d_, "sub", S_IFDIR | 0777);
  for (bool clean : {true, false}) {
    fs_.remount(clean);
    EXPECT_EQ(perms(*fs_, f), 0660u);
    EXPECT_EQ(stored(*fs_, f, kAclAccessXattr),
              (Acl{user_obj(6), user(65534, 7), group_obj(5), mask(6), other(0)}));
    EXPECT_EQ(stored(*fs_, sub, kAclDefaultXattr), kDefault);
    EXPECT_EQ(stored(*fs_, d_, kAclDefaultXattr), kDefault);
  }
  EXPECT_TRUE(fs_.check().clean());
}

// -o noacl: ACL names are refused and hidden, stored ACLs stay untouched
// but count for nothing (no inheritance, chmod leaves them, the umask
// applies), and they are back as they were under -o acl.
TEST_F(FsAclInherit, NoaclIgnoresStoredAclsAndKeepsThem) {
  Ino f = make(*fs_, d_, "f", S_IFREG | 0666);
  const Acl f_acl = {user_obj(6), user(65534, 7), group_obj(5), mask(6), other(0)};
  ASSERT_EQ(stored(*fs_, f, kAclAccessXattr), f_acl);
  fs_.remount_with(OpenOptions{.posix_acls = false});
  for (std::string_view name : {kAclAccessXattr, kAclDefaultXattr}) {
    EXPECT_EQ(fs_->getxattr(f, name).error().code, std::errc::operation_not_supported) << name;
    EXPECT_EQ(fs_->getxattr(d_, name).error().code, std::errc::operation_not_supported) << name;
    EXPECT_EQ(err(set(*fs_, d_, name, kDefault)), std::errc::operation_not_supported) << name;
    EXPECT_EQ(err(fs_->removexattr(d_, name)), std::errc::operation_not_supported) << name;
  }
  EXPECT_TRUE(fs_->listxattr(f)->empty());
  EXPECT_TRUE(fs_->listxattr(d_)->empty());
  // No inheritance: the umask (022) decides, and nothing is stored.
  Ino g = make(*fs_, d_, "g", S_IFREG | 0666);
  EXPECT_EQ(perms(*fs_, g), 0644u);
  Ino sub = make(*fs_, d_, "sub", S_IFDIR | 0777);
  EXPECT_EQ(perms(*fs_, sub), 0755u);
  // chmod changes only the mode.
  SetAttr to_0600;
  to_0600.valid = SetAttr::kMode;
  to_0600.mode = 0600;
  ASSERT_TRUE(fs_->setattr(f, to_0600, kOwner));
  EXPECT_EQ(perms(*fs_, f), 0600u);
  fs_.remount_with(OpenOptions{});
  EXPECT_EQ(stored(*fs_, f, kAclAccessXattr), f_acl);
  EXPECT_EQ(stored(*fs_, d_, kAclDefaultXattr), kDefault);
  EXPECT_EQ(stored(*fs_, g, kAclAccessXattr), std::nullopt);
  EXPECT_EQ(stored(*fs_, sub, kAclDefaultXattr), std::nullopt);
  EXPECT_TRUE(fs_.check().clean());
}

}  // namespace
}  // namespace poisonfs
