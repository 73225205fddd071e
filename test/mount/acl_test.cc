// POSIX ACLs through a real mount: the kernel enforces what the daemon
// stores (FUSE_POSIX_ACL), so a named entry lets nobody (uid 65534) in where
// the mode's other bits keep them out, and the mask limits it; a directory's
// default ACL is inherited by files and directories instead of the umask
// (FUSE_DONT_MASK); chmod rewrites the mask that getxattr shows at once,
// and a stat right after setting an ACL shows the new mode (the kernel's
// caches are never stale); malformed ACLs are EINVAL, a default ACL on a
// file EACCES; setting an ACL as a non-member drops the setgid bit
// (FUSE_SETXATTR_ACL_KILL_SGID through the shim); everything survives a
// remount and fsck finds the image clean. ACLs are written as raw xattrs
// (src/fs/acl.h's form), so the tests need no setfacl.
#include "fs/acl.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <string>

#include "mount/mount_fixture.h"

namespace poisonfs::test {
namespace {

const char* const kAccess = "system.posix_acl_access";
const char* const kDefault = "system.posix_acl_default";

AclEntry user_obj(uint16_t perm) { return {AclTag::kUserObj, perm}; }
AclEntry user(uint32_t id, uint16_t perm) { return {AclTag::kUser, perm, id}; }
AclEntry group_obj(uint16_t perm) { return {AclTag::kGroupObj, perm}; }
AclEntry mask(uint16_t perm) { return {AclTag::kMask, perm}; }
AclEntry other(uint16_t perm) { return {AclTag::kOther, perm}; }

// What a failed call left in errno, or 0 when it succeeded.
int err_of(long r) { return r < 0 ? errno : 0; }

int set_acl(const std::string& path, const char* name, const Acl& acl) {
  const std::string value = encode_acl(acl);
  return err_of(setxattr(path.c_str(), name, value.data(), value.size(), 0));
}

// The ACL stored as name; nullopt when there is none (ENODATA).
std::optional<Acl> get_acl(const std::string& path, const char* name) {
  char buf[4096];
  ssize_t n = getxattr(path.c_str(), name, buf, sizeof buf);
  if (n < 0) {
    EXPECT_EQ(errno, ENODATA) << path << " " << name;
    return std::nullopt;
  }
  auto acl = decode_acl(std::string_view(buf, static_cast<size_t>(n)));
  EXPECT_TRUE(acl) << acl.error().to_string();
  return acl.value_or(Acl{});
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// errno of open(path, flags) (0: it opened).
int open_err(const std::string& path, int flags, mode_t mode = 0666) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

int nobody_opens(const std::string& path, int flags) {
  return as_user(kNobody, kNogroup, [&] { return open_err(path, flags); });
}

bool make_file(const std::string& path, mode_t mode) {
  if (open_err(path, O_WRONLY | O_CREAT | O_TRUNC) != 0) return false;
  return chmod(path.c_str(), mode) == 0;  // the umask must not decide
}

// Runs with the umask set to mask, as the caller of a create.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : old_(umask(mask)) {}
  ~ScopedUmask() { umask(old_); }

 private:
  mode_t old_;
};

class AclMount : public MountTest {};

TEST_F(AclMount, NamedUserEntryGrantsWhatTheOtherBitsDenyAndTheMaskLimitsIt) {
  const std::string secret = path("secret");
  ASSERT_TRUE(make_file(secret, 0600));
  EXPECT_EQ(nobody_opens(secret, O_RDONLY), EACCES);
  // user:nobody:rw-, but the mask grants only r--.
  ASSERT_EQ(
      set_acl(secret, kAccess, {user_obj(6), user(kNobody, 6), group_obj(0), mask(4), other(0)}),
      0);
  EXPECT_EQ(mode_of(secret), 0640u);  // the group bits show the mask
  EXPECT_EQ(nobody_opens(secret, O_RDONLY), 0);
  EXPECT_EQ(nobody_opens(secret, O_WRONLY), EACCES);
  // chmod g+w widens the mask: nobody may write now.
  ASSERT_EQ(chmod(secret.c_str(), 0660), 0);
  EXPECT_EQ(nobody_opens(secret, O_WRONLY), 0);
  // Removing the ACL leaves the mode; nobody is "other" again.
  ASSERT_EQ(err_of(removexattr(secret.c_str(), kAccess)), 0);
  EXPECT_EQ(mode_of(secret), 0660u);
  EXPECT_EQ(nobody_opens(secret, O_RDONLY), EACCES);
}

TEST_F(AclMount, ChmodUpdatesTheMaskAndSetaclTheModeWithNoStaleCache) {
  const std::string f = path("f");
  ASSERT_TRUE(make_file(f, 0644));
  for (uint16_t round = 0; round < 8; ++round) {
    const uint16_t m = round & 7;
    ASSERT_EQ(
        set_acl(f, kAccess,
                {user_obj(6), user(kNobody, 7), group_obj(4), mask(m), other(round % 2 ? 4 : 0)}),
        0);
    // A stat right after: the kernel dropped its cached attributes.
    EXPECT_EQ(mode_of(f), 0600u | m << 3 | (round % 2 ? 4u : 0u)) << "round " << round;
    // getxattr right after chmod: the kernel dropped its cached ACL.
    ASSERT_EQ(chmod(f.c_str(), 0604 | ((7 - m) << 3)), 0);
    EXPECT_EQ(get_acl(f, kAccess), (Acl{user_obj(6), user(kNobody, 7), group_obj(4),
                                        mask(static_cast<uint16_t>(7 - m)), other(4)}))
        << "round " << round;
    // And the kernel enforces the new mask at once.
    EXPECT_EQ(nobody_opens(f, O_WRONLY), (7 - m) & 2 ? 0 : EACCES) << "round " << round;
  }
  // An ACL the mode can say alone is not kept: only the mode changes.
  ASSERT_EQ(set_acl(f, kAccess, {user_obj(7), group_obj(5), other(1)}), 0);
  EXPECT_EQ(mode_of(f), 0751u);
  EXPECT_EQ(get_acl(f, kAccess), std::nullopt);
}

TEST_F(AclMount, DefaultAclIsInheritedByFilesAndDirectoriesInsteadOfTheUmask) {
  ScopedUmask umask_077(077);  // would leave nobody out, were it applied
  const std::string d = path("d");
  ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
  ASSERT_EQ(chmod(d.c_str(), 0755), 0);  // no default ACL above it: the umask applied
  const Acl inherited = {user_obj(7), user(kNobody, 7), group_obj(5), mask(7), other(0)};
  ASSERT_EQ(set_acl(d, kDefault, inherited), 0);
  EXPECT_EQ(mode_of(d), 0755u);

  ASSERT_EQ(open_err(d + "/file", O_WRONLY | O_CREAT | O_EXCL, 0666), 0);
  EXPECT_EQ(mode_of(d + "/file"), 0660u);
  EXPECT_EQ(get_acl(d + "/file", kAccess),
            (Acl{user_obj(6), user(kNobody, 7), group_obj(5), mask(6), other(0)}));
  EXPECT_EQ(get_acl(d + "/file", kDefault), std::nullopt);
  EXPECT_EQ(nobody_opens(d + "/file", O_RDWR), 0);

  ASSERT_EQ(mkdir((d + "/sub").c_str(), 0777), 0);
  EXPECT_EQ(mode_of(d + "/sub"), 0770u);
  EXPECT_EQ(get_acl(d + "/sub", kAccess), inherited);
  EXPECT_EQ(get_acl(d + "/sub", kDefault), inherited);
  // nobody may create there through the inherited entry.
  EXPECT_EQ(as_user(kNobody, kNogroup,
                    [&] { return open_err(d + "/sub/by-nobody", O_WRONLY | O_CREAT, 0640); }),
            0);
  EXPECT_EQ(get_acl(d + "/sub/by-nobody", kAccess),
            (Acl{user_obj(6), user(kNobody, 7), group_obj(5), mask(4), other(0)}));

  ASSERT_EQ(mknod((d + "/fifo").c_str(), S_IFIFO | 0644, 0), 0);
  EXPECT_EQ(mode_of(d + "/fifo"), 0640u);
  ASSERT_EQ(symlink("file", (d + "/link").c_str()), 0);
  struct stat st {};
  ASSERT_EQ(lstat((d + "/link").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0777u);

  // Without a default ACL the umask applies as always.
  ASSERT_EQ(open_err(path("plain"), O_WRONLY | O_CREAT | O_EXCL, 0666), 0);
  EXPECT_EQ(mode_of(path("plain")), 0600u);
  EXPECT_EQ(get_acl(path("plain"), kAccess), std::nullopt);
  ASSERT_EQ(mkdir(path("plaindir").c_str(), 0777), 0);
  EXPECT_EQ(mode_of(path("plaindir")), 0700u);
}

TEST_F(AclMount, InvalidAclsAreRefused) {
  const std::string f = path("f");
  ASSERT_TRUE(make_file(f, 0644));
  auto set_raw = [&](const std::string& value) {
    return err_of(setxattr(f.c_str(), kAccess, value.data(), value.size(), 0));
  };
  // A named entry without a mask, a torn entry, an unknown tag, bits beyond rwx.
  EXPECT_EQ(set_raw(encode_acl({user_obj(6), user(kNobody, 4), group_obj(4), other(4)})), EINVAL);
  EXPECT_EQ(set_raw(encode_acl({user_obj(6), group_obj(4), other(4)}).substr(0, 10)), EINVAL);
  std::string unknown = encode_acl({user_obj(6), group_obj(4), other(4)});
  unknown[4 + 8] = 0x40;
  EXPECT_EQ(set_raw(unknown), EINVAL);
  std::string perm = encode_acl({user_obj(6), group_obj(4), other(4)});
  perm[4 + 2] = 0x08;
  EXPECT_EQ(set_raw(perm), EINVAL);
  // The kernel refuses another version with EOPNOTSUPP; so does the core.
  std::string version = encode_acl({user_obj(6), group_obj(4), other(4)});
  version[0] = 1;
  EXPECT_EQ(set_raw(version), EOPNOTSUPP);
  EXPECT_EQ(mode_of(f), 0644u);
  EXPECT_EQ(get_acl(f, kAccess), std::nullopt);
}

TEST_F(AclMount, DefaultAclOnARegularFileIsRefused) {
  const std::string f = path("f");
  ASSERT_TRUE(make_file(f, 0644));
  EXPECT_EQ(set_acl(f, kDefault, {user_obj(7), user(kNobody, 7), group_obj(5), mask(7), other(0)}),
            EACCES);
  EXPECT_EQ(get_acl(f, kDefault), std::nullopt);
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  EXPECT_EQ(set_acl(path("d"), kDefault, {user_obj(7), group_obj(5), other(0)}), 0);
  // An empty default removes it.
  EXPECT_EQ(err_of(setxattr(path("d").c_str(), kDefault, encode_acl({}).data(), 4, 0)), 0);
  EXPECT_EQ(get_acl(path("d"), kDefault), std::nullopt);
}

TEST_F(AclMount, SettingAnAclAsANonMemberDropsTheSetgidBit) {
  // As posix_acl_update_mode decides: nobody is not in group 0 and lacks
  // CAP_FSETID; root keeps the bit.
  const std::string dir = path("pub");
  ASSERT_EQ(mkdir(dir.c_str(), 0777), 0);
  ASSERT_EQ(chmod(dir.c_str(), 0777), 0);
  const std::string f = dir + "/sgid";
  ASSERT_TRUE(make_file(f, 0644));
  ASSERT_EQ(chown(f.c_str(), kNobody, 0), 0);
  ASSERT_EQ(chmod(f.c_str(), 02775), 0);
  const Acl acl = {user_obj(7), user(kNobody, 7), group_obj(5), mask(7), other(5)};
  ASSERT_EQ(set_acl(f, kAccess, acl), 0);
  EXPECT_EQ(mode_of(f), 02775u);
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return set_acl(f, kAccess, acl); }), 0);
  EXPECT_EQ(mode_of(f), 0775u);
}

TEST_F(AclMount, AclsSurviveARemountAndFsckFindsTheImageClean) {
  ScopedUmask umask_022(022);
  const std::string d = path("d");
  ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
  const Acl inherited = {user_obj(7), user(kNobody, 5), group_obj(5), mask(5), other(0)};
  ASSERT_EQ(set_acl(d, kDefault, inherited), 0);
  ASSERT_EQ(open_err(d + "/f", O_WRONLY | O_CREAT, 0600), 0);
  ASSERT_EQ(mkdir((d + "/sub").c_str(), 0777), 0);
  const std::string secret = path("secret");
  ASSERT_TRUE(make_file(secret, 0600));
  ASSERT_EQ(
      set_acl(secret, kAccess, {user_obj(6), user(kNobody, 4), group_obj(0), mask(4), other(0)}),
      0);
  remount();
  EXPECT_EQ(get_acl(d, kDefault), inherited);
  EXPECT_EQ(get_acl(d + "/f", kAccess),
            (Acl{user_obj(6), user(kNobody, 5), group_obj(5), mask(0), other(0)}));
  EXPECT_EQ(get_acl(d + "/sub", kDefault), inherited);
  EXPECT_EQ(mode_of(d + "/sub"), 0750u);
  EXPECT_EQ(nobody_opens(secret, O_RDONLY), 0);
  EXPECT_EQ(mode_of(secret), 0640u);
  unmount();
  RunResult fsck = run(bin("fsck.poisonfs") + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
  mount();  // TearDown unmounts
}

// The same image mounted with -o noacl: the kernel is told of no ACLs, so
// it asks for none and nobody's access is the mode's alone; ACL names are
// refused; creates get the umask; the ACLs are back under a mount without it.
class NoaclMount : public MountTest {
 protected:
  std::string mount_options() const override { return noacl_ ? "allow_other,noacl" : "allow_other"; }
  bool noacl_ = false;
};

TEST_F(NoaclMount, StoredAclsCountForNothingAndNewOnesAreRefused) {
  ScopedUmask umask_022(022);
  const std::string secret = path("secret"), d = path("d");
  ASSERT_TRUE(make_file(secret, 0600));
  const Acl granted = {user_obj(6), user(kNobody, 4), group_obj(0), mask(4), other(0)};
  ASSERT_EQ(set_acl(secret, kAccess, granted), 0);
  ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
  const Acl inherited = {user_obj(7), user(kNobody, 7), group_obj(5), mask(7), other(7)};
  ASSERT_EQ(set_acl(d, kDefault, inherited), 0);
  ASSERT_EQ(nobody_opens(secret, O_RDONLY), 0);
  noacl_ = true;
  remount();
  EXPECT_EQ(mode_of(secret), 0640u);
  EXPECT_EQ(nobody_opens(secret, O_RDONLY), EACCES);  // other bits: ---
  char buf[256];
  EXPECT_EQ(err_of(getxattr(secret.c_str(), kAccess, buf, sizeof buf)), EOPNOTSUPP);
  EXPECT_EQ(set_acl(secret, kAccess, granted), EOPNOTSUPP);
  EXPECT_EQ(set_acl(d, kDefault, inherited), EOPNOTSUPP);
  EXPECT_EQ(listxattr(secret.c_str(), buf, sizeof buf), 0);
  ASSERT_EQ(open_err(d + "/f", O_WRONLY | O_CREAT, 0666), 0);
  EXPECT_EQ(mode_of(d + "/f"), 0644u);  // the umask, not the default ACL
  noacl_ = false;
  remount();
  EXPECT_EQ(get_acl(secret, kAccess), granted);
  EXPECT_EQ(get_acl(d, kDefault), inherited);
  EXPECT_EQ(get_acl(d + "/f", kAccess), std::nullopt);
  EXPECT_EQ(nobody_opens(secret, O_RDONLY), 0);
}

}  // namespace
}  // namespace poisonfs::test
