// Security of a mounted poisonfs as seen by an unprivileged user (uid/gid
// 65534, "nobody"): default_permissions must keep them out of files the mode
// bits deny, the control ioctls (device map, poison injection and listing,
// scrub, events) must refuse them with EPERM whatever descriptor they use, and
// neither reflink path (copy_file_range, POISONFS_IOC_CLONE_RANGE) nor freshly
// allocated blocks may show them another user's bytes. Writers lose setuid,
// setgid and file capabilities as the VFS decides, though the daemon, not the
// kernel, drops them (FUSE_HANDLE_KILLPRIV_V2).
//
// The checks run in a forked child with nobody's credentials; a child cannot
// fail a GoogleTest test, so it reports each failed check as a line on a pipe
// and the parent turns the lines into failures.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mount/mount_fixture.h"
#include "poisonfs/filesystem.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::test {
namespace {

constexpr size_t kBlock = 4096;

// What a failed call left in errno, or 0 when it succeeded.
int err_of(long r) { return r < 0 ? errno : 0; }

int open_err(const std::string& p, int flags, mode_t mode = 0644) {
  int fd = open(p.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

bool write_file(const std::string& p, const std::string& data, mode_t mode) {
  int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  bool ok = pwrite(fd, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()) && fsync(fd) == 0;
  close(fd);
  return ok && chmod(p.c_str(), mode) == 0;  // chmod: the umask must not decide
}

// The whole file through a new descriptor ("" when it cannot be read).
std::string read_file(const std::string& p) {
  int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

std::string read_fd(int fd) {
  std::string out;
  char buf[65536];
  ssize_t n;
  for (off_t off = 0; (n = pread(fd, buf, sizeof buf, off)) > 0; off += n) out.append(buf, static_cast<size_t>(n));
  return out;
}

int clone_ioctl(int dst_fd, int64_t src_fd, uint64_t src_off = 0, uint64_t len = 0, uint64_t dst_off = 0) {
  poisonfs_clone_range args{};
  args.src_fd = src_fd;
  args.src_offset = src_off;
  args.src_length = len;
  args.dest_offset = dst_off;
  return ioctl(dst_fd, POISONFS_IOC_CLONE_RANGE, &args) == 0 ? 0 : errno;
}

// One block written with O_DIRECT at off through a second descriptor of
// the same file (fd's own flags stay).
int direct_write(int fd, off_t off = 0) {
  int dfd = open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (dfd < 0) return errno;
  void* buf = nullptr;
  if (posix_memalign(&buf, kBlock, kBlock) != 0) {
    close(dfd);
    return ENOMEM;
  }
  std::memset(buf, 'd', kBlock);
  int e = err_of(pwrite(dfd, buf, kBlock, off));
  std::free(buf);
  close(dfd);
  return e;
}

// The mode as the kernel has it cached: statx asking only for STATX_MODE is
// answered without a GETATTR unless the mode was invalidated or expired.
uint32_t cached_mode(const std::string& p) {
  struct statx sx;
  if (statx(AT_FDCWD, p.c_str(), 0, STATX_MODE, &sx) != 0) return ~0u;
  return sx.stx_mode & 07777;
}

// The mode from a full stat (after a change, the kernel asks the daemon).
uint32_t mode_of(const std::string& p) {
  struct stat st;
  if (stat(p.c_str(), &st) != 0) return ~0u;
  return st.st_mode & 07777;
}

// The child's side of a check run: each failed expectation becomes a line.
class Probe {
 public:
  explicit Probe(int fd) : fd_(fd) {}
  void expect(bool ok, const std::string& what) {
    if (ok) return;
    std::string line = what + "\n";
    (void)!write(fd_, line.data(), line.size());
  }
  void expect_errno(int got, int want, const std::string& what) {
    expect(got == want, what + ": got " + (got ? strerrorname_np(got) : "success") + ", want " +
                            (want ? strerrorname_np(want) : "success"));
  }

 private:
  int fd_;
};

// Runs body as nobody; returns the failed checks, one per line ("" if none).
std::string as_nobody(const std::function<void(Probe&)>& body) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return "pipe failed";
  // The parent reads only after the child ended: a full pipe must drop
  // lines, not hang the child.
  fcntl(fds[1], F_SETFL, O_NONBLOCK);
  int rc = as_user(kNobody, kNogroup, [&] {
    close(fds[0]);
    Probe probe(fds[1]);
    body(probe);
    return 0;
  });
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  if (rc != 0) out += "the child exited with " + std::to_string(rc) + "\n";
  return out;
}

// A command line prefix that runs a program as nobody.
const std::string kSetprivNobody = "setpriv --reuid=65534 --regid=65534 --clear-groups ";

class SecurityTest : public MountTest {
 protected:
  // A directory everyone may create in (nobody's own files live there).
  std::string shared_dir() {
    std::string d = path("pub");
    if (access(d.c_str(), F_OK) != 0) {
      EXPECT_EQ(mkdir(d.c_str(), 0777), 0);
      EXPECT_EQ(chmod(d.c_str(), 0777), 0);
    }
    return d;
  }

  // The device offset of the file's first block (root's view, by BMAP).
  uint64_t physical(const std::string& p) {
    int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0) << p;
    auto map = std::make_unique<poisonfs_bmap>();
    std::memset(map.get(), 0, sizeof *map);
    EXPECT_EQ(ioctl(fd, POISONFS_IOC_BMAP, map.get()), 0) << std::strerror(errno);
    close(fd);
    EXPECT_GE(map->count, 1u) << p;
    return map->count > 0 ? map->recs[0].physical : 0;
  }

  poisonfs_status status() {
    int fd = open(mnt().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    poisonfs_status st{};
    EXPECT_EQ(ioctl(fd, POISONFS_IOC_STATUS, &st), 0) << std::strerror(errno);
    close(fd);
    return st;
  }

  uint32_t badblock_count() {
    int fd = open(mnt().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    auto page = std::make_unique<poisonfs_ranges>();
    std::memset(page.get(), 0, sizeof *page);
    EXPECT_EQ(ioctl(fd, POISONFS_IOC_BADBLOCKS, page.get()), 0) << std::strerror(errno);
    close(fd);
    return page->count;
  }
};

// ---- mode bits -------------------------------------------------------------

TEST_F(SecurityTest, ModeBitsGuardEveryPath) {
  const std::string secret = path("secret"), pub = path("public"), wonly = path("write-only");
  const std::string priv = path("private"), inner = path("private/f");
  ASSERT_TRUE(write_file(secret, std::string(2 * kBlock, 'S'), 0600));
  ASSERT_TRUE(write_file(pub, "everyone reads this", 0644));
  ASSERT_TRUE(write_file(wonly, "a drop box", 0602));
  ASSERT_EQ(mkdir(priv.c_str(), 0700), 0);
  ASSERT_TRUE(write_file(inner, "inside a private directory", 0644));
  ASSERT_EQ(setxattr(secret.c_str(), "user.note", "hidden", 6, 0), 0);
  const std::string root_dir = mnt();
  shared_dir();

  std::string failures = as_nobody([&](Probe& p) {
    // A 0600 file of root: no access mode at all, and no detour through an
    // O_PATH descriptor (which needs only search permission) reopened by
    // /proc/self/fd.
    for (int flags : {O_RDONLY, O_WRONLY, O_RDWR, O_RDONLY | O_DIRECT})
      p.expect_errno(open_err(secret, flags), EACCES, "open secret flags " + std::to_string(flags));
    int opath = open(secret.c_str(), O_PATH | O_CLOEXEC);
    p.expect(opath >= 0, "an O_PATH descriptor of secret needs only search permission");
    if (opath >= 0) {
      char buf[16];
      p.expect_errno(err_of(read(opath, buf, sizeof buf)), EBADF, "read through O_PATH");
      p.expect_errno(open_err("/proc/self/fd/" + std::to_string(opath), O_RDONLY), EACCES,
                     "reopen O_PATH through /proc");
      close(opath);
    }
    char value[64];
    p.expect_errno(err_of(getxattr(secret.c_str(), "user.note", value, sizeof value)), EACCES, "getxattr secret");
    p.expect_errno(err_of(getxattr(secret.c_str(), "user.poisonfs.poison", value, sizeof value)), EACCES,
                   "poison xattr of secret");
    p.expect_errno(err_of(truncate(secret.c_str(), 0)), EACCES, "truncate secret");

    // A 0644 file: readable, nothing else.
    p.expect(read_file(pub) == "everyone reads this", "read public");
    for (int flags : {O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_APPEND})
      p.expect_errno(open_err(pub, flags), EACCES, "open public flags " + std::to_string(flags));
    p.expect_errno(err_of(truncate(pub.c_str(), 0)), EACCES, "truncate public");
    p.expect_errno(err_of(utimes(pub.c_str(), nullptr)), EACCES, "touch public");
    p.expect_errno(err_of(chmod(pub.c_str(), 0666)), EPERM, "chmod public");
    p.expect_errno(err_of(chown(pub.c_str(), kNobody, kNogroup)), EPERM, "chown public");
    p.expect_errno(err_of(setxattr(pub.c_str(), "user.x", "1", 1, 0)), EACCES, "setxattr public");
    p.expect_errno(err_of(removexattr(pub.c_str(), "user.x")), EACCES, "removexattr public");

    // A 0602 file: others may write but never read back.
    p.expect_errno(open_err(wonly, O_RDONLY), EACCES, "read the drop box");
    p.expect_errno(open_err(wonly, O_WRONLY), 0, "write the drop box");

    // Root's 0755 directory: no new names, no removed or moved ones.
    const std::string intruder = root_dir + "/intruder";
    p.expect_errno(open_err(intruder, O_WRONLY | O_CREAT), EACCES, "create in root's directory");
    p.expect_errno(err_of(mkdir(intruder.c_str(), 0755)), EACCES, "mkdir in root's directory");
    p.expect_errno(err_of(mknod(intruder.c_str(), S_IFIFO | 0644, 0)), EACCES, "mkfifo in root's directory");
    p.expect_errno(err_of(symlink("public", intruder.c_str())), EACCES, "symlink in root's directory");
    p.expect_errno(err_of(rename(pub.c_str(), intruder.c_str())), EACCES, "rename in root's directory");
    p.expect_errno(err_of(unlink(pub.c_str())), EACCES, "unlink in root's directory");
    p.expect_errno(err_of(rmdir(priv.c_str())), EACCES, "rmdir in root's directory");

    // A 0700 directory of root: neither listed nor entered.
    struct stat st;
    p.expect_errno(err_of(stat(inner.c_str(), &st)), EACCES, "stat inside private");
    p.expect_errno(open_err(inner, O_RDONLY), EACCES, "open inside private");
    p.expect_errno(open_err(priv, O_RDONLY | O_DIRECTORY), EACCES, "list private");

    // Device nodes and trusted xattrs need privileges, even on one's own file.
    const std::string mine = root_dir + "/pub/mine";
    p.expect_errno(open_err(mine, O_WRONLY | O_CREAT), 0, "create own file");
    // (Own file: with fs.protected_hardlinks root's files give EPERM first.)
    p.expect_errno(err_of(link(mine.c_str(), intruder.c_str())), EACCES, "link in root's directory");
    p.expect_errno(err_of(mknod((root_dir + "/pub/dev").c_str(), S_IFCHR | 0666, makedev(1, 3))), EPERM,
                   "mknod a device");
    p.expect_errno(err_of(setxattr(mine.c_str(), "trusted.x", "1", 1, 0)), EPERM, "trusted xattr");
  });
  EXPECT_EQ(failures, "");

  // Nothing changed.
  EXPECT_EQ(read_file(secret), std::string(2 * kBlock, 'S'));
  EXPECT_EQ(read_file(pub), "everyone reads this");
  EXPECT_EQ(read_file(wonly), "a drop box");
  EXPECT_EQ(read_file(inner), "inside a private directory");
  EXPECT_EQ(access(path("intruder").c_str(), F_OK), -1);
  EXPECT_EQ(access(path("pub/dev").c_str(), F_OK), -1);
  struct stat st;
  ASSERT_EQ(stat(pub.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_EQ(st.st_uid, 0u);
}

// Other users' setuid programs and device nodes on the image must not act
// through the mount: FUSE's nosuid,nodev stay on (main.cc ignores suid/dev).
TEST_F(SecurityTest, MountIsNosuidNodev) {
  struct statvfs v;
  ASSERT_EQ(statvfs(mnt().c_str(), &v), 0);
  EXPECT_TRUE(v.f_flag & ST_NOSUID);
  EXPECT_TRUE(v.f_flag & ST_NODEV);
}

// ---- control ioctls --------------------------------------------------------

TEST_F(SecurityTest, ControlIoctlsAreRefusedOnAnyDescriptor) {
  const std::string secret = path("secret"), pub = path("public"), mine = shared_dir() + "/mine";
  ASSERT_TRUE(write_file(secret, std::string(4 * kBlock, 'S'), 0600));
  ASSERT_TRUE(write_file(pub, std::string(kBlock, 'P'), 0644));
  const uint64_t target = physical(secret);
  const std::string root_dir = mnt();

  std::string failures = as_nobody([&](Probe& p) {
    int own = open(mine.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    p.expect(own >= 0 && pwrite(own, "mine", 4, 0) == 4, "create own file");
    int readable = open(pub.c_str(), O_RDONLY | O_CLOEXEC);
    int dir = open(root_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    p.expect(readable >= 0 && dir >= 0, "open public and the root directory");
    struct Named {
      int fd;
      const char* name;
    };
    for (Named d : {Named{own, "own file"}, Named{readable, "root's 0644 file"}, Named{dir, "root directory"}}) {
      const std::string on = std::string(" on ") + d.name;
      auto refused = [&](unsigned long cmd, void* arg, const char* what) {
        p.expect_errno(err_of(ioctl(d.fd, cmd, arg)), EPERM, what + on);
      };
      poisonfs_stat st{};
      refused(POISONFS_IOC_STAT, &st, "STAT");
      auto map = std::make_unique<poisonfs_fsmap>();
      std::memset(map.get(), 0, sizeof *map);
      map->length = UINT64_MAX;
      refused(POISONFS_IOC_FSMAP, map.get(), "FSMAP");
      p.expect(map->count == 0, "FSMAP filled records" + on);
      auto names = std::make_unique<poisonfs_paths>();
      std::memset(names.get(), 0, sizeof *names);
      names->inode = 1;
      refused(POISONFS_IOC_PATHS, names.get(), "PATHS");
      auto batch = std::make_unique<poisonfs_paths_batch>();
      std::memset(batch.get(), 0, sizeof *batch);
      batch->count = 1;
      batch->inodes[0] = 1;
      refused(POISONFS_IOC_PATHS_BATCH, batch.get(), "PATHS_BATCH");
      auto from = std::make_unique<poisonfs_paths_from>();
      std::memset(from.get(), 0, sizeof *from);
      from->inode = 1;
      refused(POISONFS_IOC_PATHS_FROM, from.get(), "PATHS_FROM");
      p.expect(from->count == 0, "PATHS_FROM filled names" + on);
      for (uint32_t flags : {0u, POISONFS_POISON_LATENT}) {
        poisonfs_inject inj{};
        inj.offset = target;
        inj.length = 64;
        inj.flags = flags;
        refused(POISONFS_IOC_INJECT, &inj, flags ? "INJECT latent" : "INJECT");
      }
      auto ranges = std::make_unique<poisonfs_ranges>();
      std::memset(ranges.get(), 0, sizeof *ranges);
      refused(POISONFS_IOC_BADBLOCKS, ranges.get(), "BADBLOCKS");
      auto events = std::make_unique<poisonfs_events>();
      std::memset(events.get(), 0, sizeof *events);
      refused(POISONFS_IOC_EVENTS, events.get(), "EVENTS");
      poisonfs_scrub scrub{};
      refused(POISONFS_IOC_SCRUB, &scrub, "SCRUB");
      // STATUS is open to all, as statfs is: counts only, no names.
      poisonfs_status health{};
      p.expect_errno(err_of(ioctl(d.fd, POISONFS_IOC_STATUS, &health)), 0, "STATUS" + on);
    }
    // What concerns a file the caller has open stays open to them.
    auto blocks = std::make_unique<poisonfs_bmap>();
    std::memset(blocks.get(), 0, sizeof *blocks);
    p.expect_errno(err_of(ioctl(own, POISONFS_IOC_BMAP, blocks.get())), 0, "BMAP of own file");
    auto poison = std::make_unique<poisonfs_ranges>();
    std::memset(poison.get(), 0, sizeof *poison);
    p.expect_errno(err_of(ioctl(own, POISONFS_IOC_FILE_POISON, poison.get())), 0, "FILE_POISON of own file");
    for (int fd : {own, readable, dir}) close(fd);
  });
  EXPECT_EQ(failures, "");

  // The same through the tool: one refusal each, naming EPERM.
  const std::string ctl = kSetprivNobody + sh_quote(bin("poisonctl")) + " ";
  const std::string m = sh_quote(mnt()), at = " " + std::to_string(target) + " 4096";
  for (const std::string& args :
       {"inject " + m + at, "inject " + m + at + " --latent", "badblocks " + m, "fsmap " + m, "fsmap --json " + m,
        "scrub " + m, "events " + m, "stat " + m, "map --svg /dev/null " + m}) {
    RunResult r = run(ctl + args);
    EXPECT_NE(r.exit_code, 0) << args << ": " << r.both();
    EXPECT_TRUE(r.err.find("EPERM") != std::string::npos ||
                r.err.find("Operation not permitted") != std::string::npos)
        << args << ": " << r.err;
    EXPECT_EQ(r.out.find(std::to_string(target)), std::string::npos) << args << ": " << r.out;
  }

  // Nothing was injected, scrubbed or logged, and the data is intact.
  EXPECT_EQ(badblock_count(), 0u);
  poisonfs_status st = status();
  EXPECT_EQ(st.known_poison_bytes, 0u);
  EXPECT_EQ(st.latent_poison_bytes, 0u);
  EXPECT_EQ(st.events, 0u);
  EXPECT_EQ(read_file(secret), std::string(4 * kBlock, 'S'));
}

// ---- reflink and copy_file_range ---------------------------------------------

TEST_F(SecurityTest, NoPathToOthersDataThroughReflinkOrCopy) {
  const std::string secret = path("secret"), wonly = path("write-only"), ro = path("read-only");
  const std::string dir = shared_dir(), mine = dir + "/mine", theirs = dir + "/open-to-all";
  const std::string secret_data(2 * kBlock, 'S'), wonly_data(2 * kBlock, 'W'), ro_data(2 * kBlock, 'R');
  ASSERT_TRUE(write_file(secret, secret_data, 0600));
  ASSERT_TRUE(write_file(wonly, wonly_data, 0602));
  ASSERT_TRUE(write_file(ro, ro_data, 0644));
  ASSERT_TRUE(write_file(theirs, std::string(kBlock, 'T'), 0666));
  // A descriptor of the secret held by root only: the child inherits it
  // through fork and closes it first, so the number names nothing of its own
  // (a high number, which the child's own opens never reuse).
  int opened = open(secret.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(opened, 0);
  int held = fcntl(opened, F_DUPFD_CLOEXEC, 900);
  close(opened);
  ASSERT_GE(held, 900);
  const std::string poisonctl = bin("poisonctl");

  std::string failures = as_nobody([&](Probe& p) {
    close(held);
    int own = open(mine.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    p.expect(own >= 0, "create own file");
    const std::string own_data(2 * kBlock, 'm');
    p.expect(pwrite(own, own_data.data(), own_data.size(), 0) == static_cast<ssize_t>(own_data.size()),
             "write own file");

    // Sources it may not read: the secret (only an O_PATH descriptor can be
    // had), the write-only drop box, and descriptors it does not hold.
    int opath = open(secret.c_str(), O_PATH | O_CLOEXEC);
    int wfd = open(wonly.c_str(), O_WRONLY | O_CLOEXEC);
    p.expect(opath >= 0 && wfd >= 0, "O_PATH of secret and O_WRONLY of the drop box");
    loff_t in = 0, out = 0;
    p.expect_errno(err_of(copy_file_range(opath, &in, own, &out, 2 * kBlock, 0)), EBADF,
                   "copy_file_range from O_PATH");
    in = out = 0;
    p.expect_errno(err_of(copy_file_range(wfd, &in, own, &out, 2 * kBlock, 0)), EBADF,
                   "copy_file_range from a write-only descriptor");
    p.expect_errno(clone_ioctl(own, opath), EBADF, "CLONE_RANGE from O_PATH");
    p.expect_errno(clone_ioctl(own, wfd), EBADF, "CLONE_RANGE from a write-only descriptor");
    p.expect_errno(clone_ioctl(own, held), EBADF, "CLONE_RANGE from a descriptor root holds");
    p.expect_errno(clone_ioctl(own, -1), EBADF, "CLONE_RANGE from fd -1");
    p.expect_errno(clone_ioctl(own, int64_t{1} << 40), EBADF, "CLONE_RANGE from fd 2^40");
    p.expect_errno(clone_ioctl(own, 99999), EBADF, "CLONE_RANGE from an unused fd");

    // Destinations it may not write: root's 0644 file, opened for reading,
    // and its own file opened for reading or for appending.
    int rfd = open(ro.c_str(), O_RDONLY | O_CLOEXEC);
    p.expect(rfd >= 0, "open root's 0644 file for reading");
    in = out = 0;
    p.expect_errno(err_of(copy_file_range(own, &in, rfd, &out, kBlock, 0)), EBADF,
                   "copy_file_range into a read-only descriptor");
    p.expect_errno(clone_ioctl(rfd, own), EBADF, "CLONE_RANGE into a read-only descriptor");
    int own_ro = open(mine.c_str(), O_RDONLY | O_CLOEXEC), own_app = open(mine.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    p.expect_errno(clone_ioctl(own_ro, rfd), EBADF, "CLONE_RANGE into own file opened read-only");
    p.expect_errno(clone_ioctl(own_app, rfd), EBADF, "CLONE_RANGE into own file opened O_APPEND");
    in = out = 0;
    p.expect_errno(err_of(copy_file_range(rfd, &in, own_app, &out, kBlock, 0)), EBADF,
                   "copy_file_range into O_APPEND");
    p.expect_errno(open_err(ro, O_WRONLY), EACCES, "open root's 0644 file for writing");

    // The tool finds no way either.
    std::string cmd = poisonctl + " reflink " + secret + " " + mine + " 2>/dev/null";
    p.expect(system(cmd.c_str()) != 0, "poisonctl reflink from secret");

    // Its own file holds only what it wrote.
    p.expect(read_fd(own) == own_data, "own file changed");

    // What it may do: clone a readable file into its own file, and clone or
    // copy into root's world-writable file.
    p.expect_errno(clone_ioctl(own, rfd), 0, "CLONE_RANGE from root's 0644 file");
    p.expect(read_fd(own) == ro_data, "the clone of root's 0644 file");
    int tfd = open(theirs.c_str(), O_WRONLY | O_CLOEXEC);
    p.expect_errno(clone_ioctl(tfd, rfd, 0, kBlock, 0), 0, "CLONE_RANGE into root's 0666 file");
    in = out = kBlock;
    p.expect(copy_file_range(rfd, &in, tfd, &out, kBlock, 0) == static_cast<ssize_t>(kBlock),
             "copy_file_range into root's 0666 file");
    for (int fd : {own, opath, wfd, rfd, own_ro, own_app, tfd}) close(fd);
  });
  close(held);
  EXPECT_EQ(failures, "");

  EXPECT_EQ(read_file(secret), secret_data);
  EXPECT_EQ(read_file(wonly), wonly_data);
  EXPECT_EQ(read_file(ro), ro_data);
  EXPECT_EQ(read_file(mine), ro_data);
  EXPECT_EQ(read_file(theirs), ro_data);
}

// Writing into another user's setuid file (here world-writable) must drop
// the setuid bit, and the setgid bit of a group-executable file, by every
// way of writing, as the kernel does for FICLONERANGE and copy_file_range.
// Otherwise nobody could put their own program under root's setuid bit.
TEST_F(SecurityTest, WritingIntoASetuidFileDropsTheBits) {
  const std::string dir = shared_dir(), victim = dir + "/suid", src = dir + "/payload";
  ASSERT_TRUE(write_file(src, std::string(kBlock, 'x'), 0644));
  ASSERT_EQ(chown(src.c_str(), kNobody, kNogroup), 0);
  struct Way {
    const char* name;
    std::function<int(int dst, int src)> write;
  };
  const std::vector<Way> ways = {
      {"write", [](int dst, int) { return err_of(pwrite(dst, "x", 1, 0)); }},
      {"ftruncate", [](int dst, int) { return err_of(ftruncate(dst, 1)); }},
      {"copy_file_range",
       [](int dst, int s) {
         loff_t in = 0, out = 0;
         return err_of(copy_file_range(s, &in, dst, &out, kBlock, 0));
       }},
      {"CLONE_RANGE", [](int dst, int s) { return clone_ioctl(dst, s); }},
      {"fallocate", [](int dst, int) { return err_of(fallocate(dst, 0, 0, 2 * kBlock)); }},
      {"O_DIRECT write", [](int dst, int) { return direct_write(dst); }},
  };
  for (const Way& way : ways) {
    SCOPED_TRACE(way.name);
    ASSERT_TRUE(write_file(victim, std::string(kBlock, 'v'), 0777));
    ASSERT_EQ(chmod(victim.c_str(), 06777), 0);
    std::string failures = as_nobody([&](Probe& p) {
      int dst = open(victim.c_str(), O_WRONLY | O_CLOEXEC), s = open(src.c_str(), O_RDONLY | O_CLOEXEC);
      p.expect(dst >= 0 && s >= 0, "open the files");
      p.expect_errno(way.write(dst, s), 0, way.name);
      close(dst);
      close(s);
    });
    EXPECT_EQ(failures, "");
    // What the kernel has cached first: it no longer changes the mode
    // itself, so the daemon must have told it.
    EXPECT_EQ(cached_mode(victim), 0777u) << std::oct << cached_mode(victim);
    // A fresh stat from the daemon, not the kernel's cached attributes.
    struct stat st;
    ASSERT_EQ(stat(victim.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0777u) << std::oct << (st.st_mode & 07777);
  }
}

// A privileged writer (CAP_FSETID: root here) keeps the bits it writes
// under, by every way of writing, as with any local filesystem.
TEST_F(SecurityTest, PrivilegedWritersKeepTheBits) {
  const std::string f = path("root-suid");
  const std::vector<std::pair<const char*, std::function<int(int)>>> ways = {
      {"write", [](int fd) { return err_of(pwrite(fd, "x", 1, 0)); }},
      {"ftruncate", [](int fd) { return err_of(ftruncate(fd, 1)); }},
      {"fallocate", [](int fd) { return err_of(fallocate(fd, 0, 0, 2 * kBlock)); }},
      {"O_DIRECT write", [](int fd) { return direct_write(fd); }},
  };
  for (const auto& [name, way] : ways) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(write_file(f, std::string(kBlock, 'v'), 06755));
    int fd = open(f.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(way(fd), 0);
    close(fd);
    EXPECT_EQ(cached_mode(f), 06755u) << std::oct << cached_mode(f);
    EXPECT_EQ(mode_of(f), 06755u) << std::oct << mode_of(f);
  }
}

// Without group-execute, setgid marks mandatory locking, not privilege: an
// unprivileged writer leaves it, as the VFS does.
TEST_F(SecurityTest, SetgidWithoutGroupExecuteStaysOnWrite) {
  const std::string victim = shared_dir() + "/locking";
  ASSERT_TRUE(write_file(victim, std::string(kBlock, 'v'), 02767));
  std::string failures = as_nobody([&](Probe& p) {
    int fd = open(victim.c_str(), O_WRONLY | O_CLOEXEC);
    p.expect(fd >= 0, "open");
    p.expect_errno(err_of(pwrite(fd, "x", 1, 0)), 0, "write");
    p.expect_errno(err_of(ftruncate(fd, 10)), 0, "ftruncate");
    close(fd);
  });
  EXPECT_EQ(failures, "");
  EXPECT_EQ(cached_mode(victim), 02767u) << std::oct << cached_mode(victim);
  EXPECT_EQ(mode_of(victim), 02767u) << std::oct << mode_of(victim);
}

// A write refused for its offset (at or past the largest file size) changes
// nothing, so it drops nothing either: the VFS checks the limits first.
TEST_F(SecurityTest, WriteRefusedPastTheSizeLimitKeepsTheBits) {
  const std::string victim = shared_dir() + "/suid-far";
  const off_t max = static_cast<off_t>(kMaxFileSize);
  ASSERT_TRUE(write_file(victim, std::string(kBlock, 'v'), 0777));
  ASSERT_EQ(chmod(victim.c_str(), 06777), 0);
  std::string failures = as_nobody([&](Probe& p) {
    int fd = open(victim.c_str(), O_WRONLY | O_CLOEXEC);
    p.expect(fd >= 0, "open");
    p.expect_errno(err_of(pwrite(fd, "x", 1, max)), EFBIG, "write at the limit");
    p.expect_errno(direct_write(fd, max), EFBIG, "O_DIRECT write at the limit");
    close(fd);
  });
  EXPECT_EQ(failures, "");
  EXPECT_EQ(cached_mode(victim), 06777u) << std::oct << cached_mode(victim);
  EXPECT_EQ(mode_of(victim), 06777u) << std::oct << mode_of(victim);
  EXPECT_EQ(read_file(victim), std::string(kBlock, 'v'));
}

// So do a fallocate and a copy_file_range refused for their range: the VFS
// checks the limits first (vfs_fallocate, generic_copy_file_checks).
TEST_F(SecurityTest, FallocateAndCopyRefusedPastTheSizeLimitKeepTheBits) {
  const std::string victim = shared_dir() + "/suid-far2", src = shared_dir() + "/far-payload";
  const off_t max = static_cast<off_t>(kMaxFileSize);
  ASSERT_TRUE(write_file(src, std::string(kBlock, 'x'), 0644));
  ASSERT_TRUE(write_file(victim, std::string(kBlock, 'v'), 0777));
  ASSERT_EQ(chmod(victim.c_str(), 06777), 0);
  std::string failures = as_nobody([&](Probe& p) {
    int fd = open(victim.c_str(), O_WRONLY | O_CLOEXEC),
        s = open(src.c_str(), O_RDONLY | O_CLOEXEC);
    p.expect(fd >= 0 && s >= 0, "open the files");
    p.expect_errno(err_of(fallocate(fd, 0, max - kBlock, 2 * kBlock)), EFBIG,
                   "fallocate across the limit");
    loff_t in = 0, out = max;
    p.expect_errno(err_of(copy_file_range(s, &in, fd, &out, kBlock, 0)), EFBIG,
                   "copy_file_range at the limit");
    close(fd);
    close(s);
  });
  EXPECT_EQ(failures, "");
  EXPECT_EQ(cached_mode(victim), 06777u) << std::oct << cached_mode(victim);
  EXPECT_EQ(mode_of(victim), 06777u) << std::oct << mode_of(victim);
  EXPECT_EQ(read_file(victim), std::string(kBlock, 'v'));
}

// Truncation by name and by O_TRUNC (a SETATTR of its own, since the
// daemon does not take O_TRUNC atomically) drop the bits like ftruncate.
TEST_F(SecurityTest, TruncatingByNameOrOTruncDropsTheBits) {
  const std::string victim = shared_dir() + "/suid-trunc";
  const std::vector<std::pair<const char*, std::function<int()>>> ways = {
      {"truncate", [&] { return err_of(truncate(victim.c_str(), 1)); }},
      {"O_TRUNC", [&] { return open_err(victim, O_WRONLY | O_TRUNC); }},
  };
  for (const auto& [name, way] : ways) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(write_file(victim, std::string(kBlock, 'v'), 06777));
    std::string failures = as_nobody([&](Probe& p) { p.expect_errno(way(), 0, name); });
    EXPECT_EQ(failures, "");
    EXPECT_EQ(mode_of(victim), 0777u) << std::oct << mode_of(victim);
  }
}

// chown of a file drops setuid, and setgid with group-execute, even when
// root does it; a directory keeps its setgid bit (it passes the group on).
TEST_F(SecurityTest, ChownDropsTheBitsOfFilesOnly) {
  const std::string f = path("owned"), d = path("owned-dir");
  const std::vector<std::pair<uint32_t, uint32_t>> cases = {
      {06755, 0755}, {02755, 0755}, {02745, 02745}};
  for (const auto& [before, after] : cases) {
    SCOPED_TRACE(std::to_string(before));
    ASSERT_TRUE(write_file(f, "x", before));
    ASSERT_EQ(chown(f.c_str(), kNobody, kNogroup), 0);
    EXPECT_EQ(cached_mode(f), after) << std::oct << cached_mode(f);
    EXPECT_EQ(mode_of(f), after) << std::oct << mode_of(f);
  }
  ASSERT_EQ(mkdir(d.c_str(), 0775), 0);
  ASSERT_EQ(chmod(d.c_str(), 02775), 0);
  ASSERT_EQ(chown(d.c_str(), kNobody, kNogroup), 0);
  EXPECT_EQ(mode_of(d), 02775u) << std::oct << mode_of(d);
}

// A file capability grants privileges to one content: writing, truncating
// or giving the file away removes it (even by root), and nothing else: other
// xattrs stay, and the poison xattr stays read-only.
TEST_F(SecurityTest, FileCapabilitiesGoWithTheirBytes) {
  const std::string f = path("capable");
  // VFS_CAP_REVISION_2 (magic 0x02000001, little-endian), no capabilities.
  const unsigned char cap[20] = {0x01, 0x00, 0x00, 0x02};
  const std::vector<std::pair<const char*, std::function<int()>>> ways = {
      {"write", [&] {
         int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
         int e = fd < 0 ? errno : err_of(pwrite(fd, "x", 1, 0));
         if (fd >= 0) close(fd);
         return e;
       }},
      {"truncate", [&] { return err_of(truncate(f.c_str(), 1)); }},
      {"chown", [&] { return err_of(chown(f.c_str(), kNobody, kNogroup)); }},
  };
  for (const auto& [name, way] : ways) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(write_file(f, std::string(kBlock, 'v'), 0755));
    if (setxattr(f.c_str(), "security.capability", cap, sizeof cap, 0) != 0)
      GTEST_SKIP() << "security.capability cannot be set here: " << std::strerror(errno);
    ASSERT_EQ(setxattr(f.c_str(), "user.keep", "1", 1, 0), 0);
    ASSERT_GT(getxattr(f.c_str(), "security.capability", nullptr, 0), 0);
    EXPECT_EQ(way(), 0);
    EXPECT_EQ(getxattr(f.c_str(), "security.capability", nullptr, 0), -1);
    EXPECT_EQ(errno, ENODATA);
    char v[4];
    EXPECT_EQ(getxattr(f.c_str(), "user.keep", v, sizeof v), 1);
    EXPECT_EQ(err_of(setxattr(f.c_str(), "user.poisonfs.poison", "[]", 2, 0)), EPERM);
  }
}

// The daemon tells the kernel that it drops privileges itself
// (FUSE_HANDLE_KILLPRIV_V2, fuse/killpriv.h), so the kernel stops asking
// for security.capability (GETXATTR) before every write.
TEST_F(SecurityTest, WritesDoNotAskForCapabilities) {
  const std::string f = path("many-writes");
  int fd = open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  auto stat_of = [&] {
    poisonfs_stat st{};
    EXPECT_EQ(ioctl(fd, POISONFS_IOC_STAT, &st), 0) << std::strerror(errno);
    return st;
  };
  EXPECT_EQ(stat_of().session_flags & POISONFS_STAT_KILLPRIV_V2, POISONFS_STAT_KILLPRIV_V2);
  const std::string block(kBlock, 'w');
  ASSERT_EQ(pwrite(fd, block.data(), kBlock, 0), static_cast<ssize_t>(kBlock));  // may ask once
  const uint64_t before = stat_of().getxattr_requests;
  constexpr int kWrites = 200;
  for (int i = 0; i < kWrites; ++i)
    ASSERT_EQ(pwrite(fd, block.data(), kBlock, static_cast<off_t>((i * 37 % 64) * kBlock)),
              static_cast<ssize_t>(kBlock));
  const uint64_t asked = stat_of().getxattr_requests - before;
  EXPECT_LE(asked, 1u) << "the kernel asked for security.capability " << asked << " times in "
                       << kWrites << " writes";
  close(fd);
}

// ---- stale data ---------------------------------------------------------------

// Blocks freed by one user and allocated to another must never show the old
// bytes: not in holes, not after an extending truncate or fallocate, not in
// the unwritten part of a partly written block, not past EOF in an mmap.
TEST_F(SecurityTest, FreedBlocksNeverShowTheirOldBytes) {
  constexpr char kOld = 'Z';
  constexpr size_t kFileBytes = 4u << 20;
  std::vector<uint64_t> freed;  // device offsets of the secret's first blocks
  for (int i = 0; i < 4; ++i) {
    const std::string f = path("old" + std::to_string(i));
    ASSERT_TRUE(write_file(f, std::string(kFileBytes, kOld), 0600));
    freed.push_back(physical(f));
    ASSERT_EQ(unlink(f.c_str()), 0);
  }
  // Let the daemon settle frees (a checkpoint returns pending extents).
  remount();
  const std::string dir = shared_dir();

  std::string failures = as_nobody([&](Probe& p) {
    auto clean = [&](const std::string& bytes, const std::string& what) {
      p.expect(bytes.find(kOld) == std::string::npos, what + " shows freed bytes");
    };
    for (int i = 0; i < 8; ++i) {
      const std::string f = dir + "/new" + std::to_string(i);
      int fd = open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      p.expect(fd >= 0, "create " + f);
      switch (i % 4) {
        case 0:  // one byte at the end of every 16th block: holes and partial blocks
          for (size_t off = kBlock - 1; off < kFileBytes; off += 16 * kBlock)
            p.expect(pwrite(fd, "a", 1, static_cast<off_t>(off)) == 1, "sparse write");
          break;
        case 1:  // allocated, unwritten
          p.expect_errno(err_of(fallocate(fd, 0, 0, kFileBytes)), 0, "fallocate");
          break;
        case 2:  // a short write, then an extending truncate
          p.expect(pwrite(fd, "abc", 3, 100) == 3, "short write");
          p.expect_errno(err_of(ftruncate(fd, kFileBytes)), 0, "extend");
          break;
        case 3: {  // written whole, shrunk to one byte, grown again
          const std::string mine(kFileBytes, 'm');
          p.expect(pwrite(fd, mine.data(), mine.size(), 0) == static_cast<ssize_t>(mine.size()), "fill");
          p.expect_errno(err_of(ftruncate(fd, 1)), 0, "shrink");
          p.expect_errno(err_of(ftruncate(fd, 2 * kBlock)), 0, "regrow");
          std::string back = read_fd(fd);
          p.expect(back.size() == 2 * kBlock && back[0] == 'm' && back.find_first_not_of('\0', 1) == std::string::npos,
                   "a regrown file reads zeros past the old end");
          break;
        }
      }
      clean(read_fd(fd), f);
      // The tail of the last page, past EOF, through mmap.
      struct stat st;
      fstat(fd, &st);
      if (st.st_size > 0) {
        size_t len = (static_cast<size_t>(st.st_size) + kBlock - 1) / kBlock * kBlock;
        void* m = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
        p.expect(m != MAP_FAILED, "mmap " + f);
        if (m != MAP_FAILED) {
          clean(std::string(static_cast<const char*>(m), len), "mmap of " + f);
          munmap(m, len);
        }
      }
      close(fd);
    }
  });
  EXPECT_EQ(failures, "");

  // The check means something only if freed blocks were handed out again.
  size_t reused = 0;
  for (int i = 0; i < 8; ++i) {
    int fd = open((dir + "/new" + std::to_string(i)).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    auto map = std::make_unique<poisonfs_bmap>();
    std::memset(map.get(), 0, sizeof *map);
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_BMAP, map.get()), 0);
    close(fd);
    for (uint32_t r = 0; r < map->count; ++r) {
      for (uint64_t old : freed) {
        const poisonfs_bmap_rec& rec = map->recs[r];
        if (rec.physical < old + kFileBytes && old < rec.physical + rec.length) ++reused;
      }
    }
  }
  EXPECT_GT(reused, 0u) << "no freed block was reused: the test proves nothing";
}

}  // namespace
}  // namespace poisonfs::test
