// POSIX behaviour through a real FUSE mount: ordinary system calls and shell
// tools against the daemon, as a user would see it. Each test gets a fresh
// 256 MiB image (see mount_fixture.h); tests run as root and use uid/gid
// 65534 for the unprivileged side.
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "format/layout.h"
#include "mount/mount_fixture.h"
#include "proc_state.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::test {
namespace {

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

constexpr size_t KiB = 1024;
constexpr size_t MiB = 1024 * KiB;
constexpr uint64_t GiB = 1024ull * MiB;

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

// Writes data at off (creating the file); returns 0 or errno.
int write_at(const std::string& path, std::string_view data, off_t off = 0,
             int flags = O_WRONLY | O_CREAT) {
  int fd = open(path.c_str(), flags, 0644);
  if (fd < 0) return errno;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = pwrite(fd, data.data() + done, data.size() - done, off + static_cast<off_t>(done));
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      close(fd);
      return e;
    }
    done += static_cast<size_t>(n);
  }
  return close(fd) == 0 ? 0 : errno;
}

int write_file(const std::string& path, std::string_view data) {
  return write_at(path, data, 0, O_WRONLY | O_CREAT | O_TRUNC);
}

// Reads len bytes at off (fewer at end of file).
std::string read_at(const std::string& path, off_t off, size_t len) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return "<open: " + std::string(std::strerror(errno)) + ">";
  std::string out(len, '\0');
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, out.data() + done, len - done, off + static_cast<off_t>(done));
    if (n < 0) {
      close(fd);
      return "<read: " + std::string(std::strerror(errno)) + ">";
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  close(fd);
  out.resize(done);
  return out;
}

std::string read_file(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "<stat: " + std::string(std::strerror(errno)) + ">";
  return read_at(path, 0, static_cast<size_t>(st.st_size) + 1);
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path << ": " << std::strerror(errno);
  return st;
}

// errno of a call that returned -1, or 0.
int err_of(int ret) { return ret < 0 ? errno : 0; }

std::set<std::string> list_dir(const std::string& path) {
  std::set<std::string> names;
  DIR* d = opendir(path.c_str());
  EXPECT_NE(d, nullptr) << path << ": " << std::strerror(errno);
  if (!d) return names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.insert(n);
  }
  closedir(d);
  return names;
}

bool all_zero(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == 0; });
}

bool newer(const timespec& a, const timespec& b) {
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}

void pause_for_clock() { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }

std::string sha256_of(const std::string& path) {
  RunResult r = run("sha256sum " + sh_quote(path));
  return r.out.substr(0, 64);
}

int renameat2(const std::string& from, const std::string& to, unsigned flags) {
  return err_of(static_cast<int>(
      syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags)));
}

using PosixMount = MountTest;

// ---------------------------------------------------------------------------
// Data

TEST_F(PosixMount, CreateWriteReadBack) {
  std::string data = random_bytes(3 * MiB + 123, 1);
  ASSERT_EQ(write_file(path("f"), data), 0);
  EXPECT_EQ(stat_of(path("f")).st_size, static_cast<off_t>(data.size()));
  EXPECT_EQ(read_file(path("f")), data);

  // Unaligned overwrites inside and across block boundaries.
  std::string patch = random_bytes(10000, 2);
  ASSERT_EQ(write_at(path("f"), patch, 4090), 0);
  data.replace(4090, patch.size(), patch);
  ASSERT_EQ(write_at(path("f"), "xyz", 2 * MiB - 1), 0);
  data.replace(2 * MiB - 1, 3, "xyz");
  EXPECT_EQ(read_file(path("f")), data);
  EXPECT_EQ(read_at(path("f"), 4000, 300), data.substr(4000, 300));

  // Append.
  ASSERT_EQ(write_at(path("f"), "tail", 0, O_WRONLY | O_APPEND), 0);
  data += "tail";
  EXPECT_EQ(read_file(path("f")), data);
  // Reads past the end return nothing.
  EXPECT_EQ(read_at(path("f"), static_cast<off_t>(data.size()) + 10, 100), "");
}

TEST_F(PosixMount, ZeroByteFile) {
  int fd = open(path("empty").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(close(fd), 0);
  struct stat st = stat_of(path("empty"));
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_blocks, 0);
  EXPECT_EQ(read_file(path("empty")), "");
  // Grow, then truncate back to nothing.
  ASSERT_EQ(write_file(path("empty"), "abc"), 0);
  ASSERT_EQ(truncate(path("empty").c_str(), 0), 0);
  EXPECT_EQ(stat_of(path("empty")).st_size, 0);
  EXPECT_EQ(read_file(path("empty")), "");
  // O_TRUNC on an existing file.
  ASSERT_EQ(write_file(path("t"), "content"), 0);
  fd = open(path("t").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(stat_of(path("t")).st_size, 0);
}

TEST_F(PosixMount, SparseFileReadsZerosInHoles) {
  const off_t far = 10 * MiB + 7;
  ASSERT_EQ(write_at(path("sparse"), "head", 0), 0);
  ASSERT_EQ(write_at(path("sparse"), "tail", far), 0);
  struct stat st = stat_of(path("sparse"));
  EXPECT_EQ(st.st_size, far + 4);
  EXPECT_LT(st.st_blocks * 512, 1 * static_cast<blkcnt_t>(MiB)) << "holes must not be allocated";
  std::string all = read_file(path("sparse"));
  ASSERT_EQ(all.size(), static_cast<size_t>(far + 4));
  EXPECT_EQ(all.substr(0, 4), "head");
  EXPECT_TRUE(all_zero(std::string_view(all).substr(4, static_cast<size_t>(far) - 4)));
  EXPECT_EQ(all.substr(static_cast<size_t>(far)), "tail");
  // Growing with truncate leaves a hole too.
  ASSERT_EQ(truncate(path("sparse").c_str(), far + 4 + 3 * MiB), 0);
  EXPECT_TRUE(all_zero(read_at(path("sparse"), far + 4, 3 * MiB)));
}

TEST_F(PosixMount, OneGiBSparseFile) {
  ASSERT_EQ(truncate(path("big").c_str(), 0), -1);  // does not exist yet
  ASSERT_EQ(write_file(path("big"), ""), 0);
  ASSERT_EQ(truncate(path("big").c_str(), static_cast<off_t>(GiB)), 0);
  std::string last = random_bytes(4096, 3);
  ASSERT_EQ(write_at(path("big"), last, static_cast<off_t>(GiB - 4096)), 0);
  struct stat st = stat_of(path("big"));
  EXPECT_EQ(st.st_size, static_cast<off_t>(GiB));
  EXPECT_LT(st.st_blocks * 512, static_cast<blkcnt_t>(MiB));
  EXPECT_TRUE(all_zero(read_at(path("big"), 512 * MiB, MiB)));
  std::string tail = read_at(path("big"), static_cast<off_t>(GiB - 8192), 8192);
  ASSERT_EQ(tail.size(), 8192u);
  EXPECT_TRUE(all_zero(std::string_view(tail).substr(0, 4096)));
  EXPECT_EQ(tail.substr(4096), last);
  // Writing past the end of a 256 MiB device is fine while it is sparse.
  ASSERT_EQ(write_at(path("big"), "beyond", static_cast<off_t>(GiB + 5)), 0);
  EXPECT_EQ(stat_of(path("big")).st_size, static_cast<off_t>(GiB + 11));
}

TEST_F(PosixMount, MaximumFileSize) {
  const off_t max = static_cast<off_t>(kMaxFileSize);
  ASSERT_EQ(write_file(path("f"), ""), 0);
  ASSERT_EQ(truncate(path("f").c_str(), max), 0) << std::strerror(errno);
  EXPECT_EQ(stat_of(path("f")).st_size, max);
  ASSERT_EQ(write_at(path("f"), "last", max - 4), 0);
  EXPECT_EQ(read_at(path("f"), max - 4, 100), "last");
  EXPECT_TRUE(all_zero(read_at(path("f"), max / 2, 64 * KiB)));
  EXPECT_EQ(read_at(path("f"), max, 100), "");
  EXPECT_EQ(err_of(truncate(path("f").c_str(), max + 1)), EFBIG);
  EXPECT_EQ(write_at(path("f"), "x", max), EFBIG);
  EXPECT_EQ(stat_of(path("f")).st_size, max);
  // A write across the limit is short (up to it), buffered or O_DIRECT.
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 8192), 0);
  std::memset(buf, 'w', 8192);
  for (int flags : {0, O_DIRECT}) {
    const std::string name = flags ? "direct" : "buffered";
    int fd = open(path(name).c_str(), O_CREAT | O_WRONLY | flags, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(pwrite(fd, buf, 8192, max - 4096), 4096) << name << ": " << std::strerror(errno);
    EXPECT_EQ(err_of(static_cast<int>(pwrite(fd, buf, 8192, max))), EFBIG) << name;
    close(fd);
    EXPECT_EQ(stat_of(path(name)).st_size, max) << name;
    EXPECT_TRUE(read_at(path(name), max - 4096, 8192) == std::string(4096, 'w')) << name;
  }
  free(buf);
  ASSERT_EQ(truncate(path("f").c_str(), 0), 0);
  // The data goes, and so does the (now empty) extent record block.
  EXPECT_EQ(stat_of(path("f")).st_blocks, 0);
}

TEST_F(PosixMount, SharedMappingsAndDirectIoStayCoherent) {
  std::string data = random_bytes(MiB, 12);
  ASSERT_EQ(write_file(path("f"), data), 0);
  // Writes through a shared mapping reach the file.
  int fd = open(path("f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  auto* map = static_cast<char*>(mmap(nullptr, MiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(static_cast<void*>(map), MAP_FAILED);
  std::memcpy(map + 5000, "mapped", 6);
  data.replace(5000, 6, "mapped");
  ASSERT_EQ(msync(map, MiB, MS_SYNC), 0);
  munmap(map, MiB);
  close(fd);
  EXPECT_EQ(read_file(path("f")), data);
  // A cached reader sees what an O_DIRECT writer wrote.
  int cached = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(cached, 0);
  char buf[16] = {};
  ASSERT_EQ(pread(cached, buf, 8, 8192), 8);
  int direct = open(path("f").c_str(), O_WRONLY | O_DIRECT);
  ASSERT_GE(direct, 0);
  void* block = nullptr;
  ASSERT_EQ(posix_memalign(&block, 4096, 4096), 0);
  std::memset(block, 'D', 4096);
  ASSERT_EQ(pwrite(direct, block, 4096, 8192), 4096) << std::strerror(errno);
  std::free(block);
  close(direct);
  data.replace(8192, 4096, std::string(4096, 'D'));
  ASSERT_EQ(pread(cached, buf, 8, 8192), 8);
  EXPECT_EQ(std::string(buf, 8), "DDDDDDDD");
  close(cached);
  EXPECT_EQ(read_file(path("f")), data);
}

TEST_F(PosixMount, CachedReadersSeeEveryChange) {
  // The page cache is kept across opens (keep_cache) and not dropped on
  // mtime changes: every change through the mount must still show.
  std::string data = random_bytes(256 * KiB, 13);
  ASSERT_EQ(write_file(path("f"), data), 0);
  int reader = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(reader, 0);
  auto cached = [&] {
    std::string out(data.size() + 10, '\0');
    ssize_t n = pread(reader, out.data(), out.size(), 0);
    out.resize(n < 0 ? 0 : static_cast<size_t>(n));
    return out;
  };
  ASSERT_EQ(cached(), data);
  ASSERT_EQ(write_at(path("f"), "partial", 5000), 0);
  data.replace(5000, 7, "partial");
  EXPECT_EQ(cached(), data);
  ASSERT_EQ(truncate(path("f").c_str(), 100 * KiB + 3), 0);
  ASSERT_EQ(truncate(path("f").c_str(), 256 * KiB), 0);
  data.replace(100 * KiB + 3, std::string::npos, std::string(156 * KiB - 3, '\0'));
  EXPECT_EQ(cached(), data);
  int fd = open(path("f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * KiB, 8 * KiB), 0);
  close(fd);
  data.replace(8 * KiB, 8 * KiB, std::string(8 * KiB, '\0'));
  EXPECT_EQ(cached(), data);
  close(reader);
  // Another file renamed over the name: a new open sees the new file.
  std::string other = random_bytes(300 * KiB, 14);
  ASSERT_EQ(write_file(path("g"), other), 0);
  ASSERT_EQ(rename(path("g").c_str(), path("f").c_str()), 0);
  EXPECT_EQ(read_file(path("f")), other);
  // Rewriting a whole file with O_TRUNC.
  ASSERT_EQ(write_file(path("f"), "short"), 0);
  EXPECT_EQ(read_file(path("f")), "short");
}

TEST_F(PosixMount, LargeReadsAndConcurrentReaders) {
  // Extents of odd sizes with holes between them, read in many shapes.
  std::string expect(12 * MiB, '\0');
  std::mt19937 rng(4);
  for (int i = 0; i < 40; ++i) {
    size_t off = rng() % (11 * MiB);
    size_t len = 1 + rng() % (300 * KiB);
    std::string chunk = random_bytes(len, 100 + i);
    ASSERT_EQ(write_at(path("f"), chunk, static_cast<off_t>(off)), 0);
    expect.replace(off, len, chunk);
  }
  size_t size = static_cast<size_t>(stat_of(path("f")).st_size);
  expect.resize(size);
  EXPECT_EQ(read_file(path("f")), expect);
  for (size_t len : {size_t{1}, size_t{4095}, size_t{4097}, size_t{MiB}, size_t{MiB + 1}}) {
    for (size_t off : {size_t{0}, size_t{1}, size_t{4095}, size_t{MiB - 3}, size - 10}) {
      EXPECT_EQ(read_at(path("f"), static_cast<off_t>(off), len), expect.substr(off, len))
          << "off " << off << " len " << len;
    }
  }
  // O_DIRECT reads go straight to the daemon.
  int fd = open(path("f").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, MiB), 0);
  ssize_t n = pread(fd, buf, MiB, 2 * MiB);
  EXPECT_EQ(n, static_cast<ssize_t>(MiB));
  EXPECT_EQ(std::memcmp(buf, expect.data() + 2 * MiB, MiB), 0);
  std::free(buf);
  close(fd);
  // A shared read-only mapping sees the same bytes.
  fd = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  EXPECT_EQ(std::memcmp(map, expect.data(), size), 0);
  munmap(map, size);
  close(fd);
  // Readers on several threads (the daemon serves them in parallel).
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        size_t off = (static_cast<size_t>(t) * 7919 + static_cast<size_t>(i) * 104729) % size;
        size_t len = std::min<size_t>(256 * KiB, size - off);
        if (read_at(path("f"), static_cast<off_t>(off), len) != expect.substr(off, len)) ++bad;
      }
    });
  }
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---------------------------------------------------------------------------
// Shell tools

TEST_F(PosixMount, ShellToolsRoundTrip) {
  std::string m = sh_quote(mnt());
  RunResult r = run("set -e; cd " + m +
                    "; printf 'hello\\n' > a; cp a b; mv b c; ln c d; ln -s c e;"
                    " dd if=/dev/urandom of=r bs=64k count=16 status=none; cp r r2; cmp r r2;"
                    " truncate -s 100 a; truncate -s 3 c; cat e; ls -la > /dev/null;"
                    " mkdir -p x/y/z; cp -a r x/y/z/; mv x w; ls w/y/z");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_EQ(r.out, "helr\n");
  EXPECT_EQ(stat_of(path("a")).st_size, 100);
  EXPECT_EQ(read_at(path("a"), 0, 6), "hello\n");
  EXPECT_TRUE(all_zero(read_at(path("a"), 6, 94)));
  EXPECT_FALSE(access(path("b").c_str(), F_OK) == 0);
  EXPECT_EQ(stat_of(path("c")).st_nlink, 2u);
  EXPECT_EQ(stat_of(path("c")).st_ino, stat_of(path("d")).st_ino);
  EXPECT_EQ(read_file(path("d")), "hel");
  char target[64] = {};
  ASSERT_EQ(readlink(path("e").c_str(), target, sizeof target - 1), 1);
  EXPECT_STREQ(target, "c");
  EXPECT_TRUE(S_ISLNK(stat_of(path("e")).st_mode));
  EXPECT_EQ(stat_of(path("r")).st_size, static_cast<off_t>(MiB));
  EXPECT_EQ(read_file(path("w/y/z/r")), read_file(path("r")));
  // dd with odd block sizes and seek, then read back through dd.
  r = run("set -e; cd " + m +
          "; dd if=r of=s bs=3000 count=100 seek=7 status=none;"
          " dd if=s bs=7000 skip=3 count=5 status=none | od -An -tx1 | head -c 0");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_EQ(read_at(path("s"), 21000, 300000), read_at(path("r"), 0, 300000));
}

TEST_F(PosixMount, TarRoundTrip) {
  // A tree on the host filesystem: files, empty file, subdirs, symlinks,
  // a hard link, odd modes.
  std::string src = dir() + "/src";
  RunResult r = run(
      "set -e; mkdir -p " + sh_quote(src) + "; cd " + sh_quote(src) +
      "; mkdir -p a/b/c d; printf x > a/one; : > a/empty;"
      " dd if=/dev/urandom of=a/b/big bs=1k count=700 status=none; ln a/b/big d/hard;"
      " ln -s ../a/one d/link; ln -s /nonexistent d/dangling; chmod 0750 a/b; chmod 0604 a/one;"
      " for i in $(seq 1 50); do echo $i > a/b/c/f$i; done; truncate -s 5M d/sparse");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  std::string m = sh_quote(mnt());
  r = run("set -e; tar -C " + sh_quote(src) + " -cf " + m + "/tree.tar .; mkdir " + m +
          "/x; tar -C " + m + "/x -xpf " + m + "/tree.tar; diff -r --no-dereference " +
          sh_quote(src) + " " + m + "/x");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  // From the mount to the mount.
  r = run("set -e; mkdir " + m + "/y; tar -C " + m + "/x -cf - . | tar -C " + m +
          "/y -xpf -; diff -r --no-dereference " + m + "/x " + m + "/y");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_EQ(stat_of(path("y/a/b")).st_mode & 07777, 0750u);
  EXPECT_EQ(stat_of(path("y/a/one")).st_mode & 07777, 0604u);
  EXPECT_EQ(stat_of(path("y/d/hard")).st_nlink, 2u);
  EXPECT_EQ(stat_of(path("y/d/sparse")).st_size, static_cast<off_t>(5 * MiB));
}

// ---------------------------------------------------------------------------
// Names and directories

TEST_F(PosixMount, TenThousandFilesInOneDirectory) {
  constexpr int kFiles = 10000;
  ASSERT_EQ(mkdir(path("many").c_str(), 0755), 0);
  for (int i = 0; i < kFiles; ++i) {
    std::string p = path("many/file-" + std::to_string(i));
    int fd = open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    ASSERT_GE(fd, 0) << p << ": " << std::strerror(errno);
    close(fd);
  }
  std::set<std::string> names = list_dir(path("many"));
  EXPECT_EQ(names.size(), static_cast<size_t>(kFiles));
  std::set<ino_t> inos;
  for (int i = 0; i < kFiles; ++i) {
    struct stat st;
    std::string p = path("many/file-" + std::to_string(i));
    ASSERT_EQ(lstat(p.c_str(), &st), 0) << p;
    EXPECT_TRUE(S_ISREG(st.st_mode));
    inos.insert(st.st_ino);
  }
  EXPECT_EQ(inos.size(), static_cast<size_t>(kFiles)) << "inode numbers must be unique";
  for (int i = 0; i < kFiles; ++i) {
    std::string p = path("many/file-" + std::to_string(i));
    ASSERT_EQ(unlink(p.c_str()), 0) << p << ": " << std::strerror(errno);
  }
  EXPECT_TRUE(list_dir(path("many")).empty());
  EXPECT_EQ(rmdir(path("many").c_str()), 0);
}

TEST_F(PosixMount, DirectoryOperations) {
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  EXPECT_EQ(err_of(mkdir(path("d").c_str(), 0755)), EEXIST);
  ASSERT_EQ(mkdir(path("d/sub1").c_str(), 0700), 0);
  ASSERT_EQ(mkdir(path("d/sub2").c_str(), 0700), 0);
  EXPECT_EQ(stat_of(path("d")).st_nlink, 4u) << "2 + one per subdirectory";
  EXPECT_EQ(stat_of(path("d/sub1")).st_mode & 07777, 0700u);
  ASSERT_EQ(write_file(path("d/sub1/f"), "x"), 0);
  EXPECT_EQ(err_of(rmdir(path("d/sub1").c_str())), ENOTEMPTY);
  EXPECT_EQ(err_of(rmdir(path("d/sub1/f").c_str())), ENOTDIR);
  EXPECT_EQ(err_of(unlink(path("d/sub2").c_str())), EISDIR);
  EXPECT_EQ(err_of(mkdir(path("nope/x").c_str(), 0755)), ENOENT);
  EXPECT_EQ(err_of(open(path("d/sub1/f/x").c_str(), O_CREAT | O_WRONLY, 0644)), ENOTDIR);

  // Renames: file into another directory, over an existing file, directory
  // over an empty directory, into its own subtree, over a non-empty one.
  ASSERT_EQ(rename(path("d/sub1/f").c_str(), path("d/sub2/g").c_str()), 0);
  EXPECT_EQ(read_file(path("d/sub2/g")), "x");
  EXPECT_NE(access(path("d/sub1/f").c_str(), F_OK), 0);
  ASSERT_EQ(write_file(path("d/sub2/h"), "hh"), 0);
  ASSERT_EQ(rename(path("d/sub2/g").c_str(), path("d/sub2/h").c_str()), 0);
  EXPECT_EQ(read_file(path("d/sub2/h")), "x");
  EXPECT_EQ(list_dir(path("d/sub2")), std::set<std::string>{"h"});
  ASSERT_EQ(mkdir(path("empty").c_str(), 0755), 0);
  ASSERT_EQ(rename(path("d/sub1").c_str(), path("empty").c_str()), 0);
  EXPECT_EQ(stat_of(path("d")).st_nlink, 3u);
  EXPECT_EQ(err_of(rename(path("d").c_str(), path("d/sub2/inside").c_str())), EINVAL);
  ASSERT_EQ(mkdir(path("full").c_str(), 0755), 0);
  ASSERT_EQ(write_file(path("full/f"), "f"), 0);
  EXPECT_EQ(err_of(rename(path("empty").c_str(), path("full").c_str())), ENOTEMPTY);
  EXPECT_EQ(err_of(rename(path("empty").c_str(), path("full/f").c_str())), ENOTDIR);
  EXPECT_EQ(err_of(rename(path("full/f").c_str(), path("empty").c_str())), EISDIR);
  // Renaming a directory moves its ".." too.
  ASSERT_EQ(rename(path("d/sub2").c_str(), path("full/moved").c_str()), 0);
  EXPECT_EQ(read_file(path("full/moved/../f")), "f");
  EXPECT_EQ(stat_of(path("full")).st_nlink, 3u);
  // Removing everything.
  EXPECT_EQ(unlink(path("full/moved/h").c_str()), 0);
  EXPECT_EQ(rmdir(path("full/moved").c_str()), 0);
  EXPECT_EQ(rmdir(path("empty").c_str()), 0);
  EXPECT_EQ(list_dir(mnt()), (std::set<std::string>{"d", "full"}));
}

// The kernel caches directory listings (the daemon keeps no OPENDIR state,
// so the kernel opens directories itself, with FOPEN_CACHE_DIR): a listing
// taken after each kind of change, and a stream held open and rewound,
// show that change.
TEST_F(PosixMount, DirectoryListingsFollowEveryChange) {
  using Names = std::set<std::string>;
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(path("e").c_str(), 0755), 0);
  for (const char* n : {"a", "b", "c"}) ASSERT_EQ(write_file(path(std::string("d/") + n), n), 0);
  EXPECT_EQ(list_dir(path("d")), (Names{"a", "b", "c"}));
  DIR* held = opendir(path("d").c_str());
  ASSERT_NE(held, nullptr);
  auto held_names = [&] {
    rewinddir(held);
    Names names;
    while (dirent* e = readdir(held)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.insert(n);
    }
    return names;
  };
  EXPECT_EQ(held_names(), (Names{"a", "b", "c"}));
  auto expect = [&](const Names& want, const char* after) {
    EXPECT_EQ(list_dir(path("d")), want) << "after " << after;
    EXPECT_EQ(held_names(), want) << "held open, after " << after;
  };
  ASSERT_EQ(write_file(path("d/new"), "n"), 0);
  expect({"a", "b", "c", "new"}, "create");
  ASSERT_EQ(unlink(path("d/a").c_str()), 0);
  expect({"b", "c", "new"}, "unlink");
  ASSERT_EQ(rename(path("d/b").c_str(), path("d/b2").c_str()), 0);
  expect({"b2", "c", "new"}, "rename within");
  ASSERT_EQ(rename(path("d/c").c_str(), path("e/c").c_str()), 0);
  expect({"b2", "new"}, "rename out");
  EXPECT_EQ(list_dir(path("e")), (Names{"c"}));
  ASSERT_EQ(rename(path("e/c").c_str(), path("d/c-back").c_str()), 0);
  expect({"b2", "c-back", "new"}, "rename in");
  EXPECT_EQ(list_dir(path("e")), Names{});
  ASSERT_EQ(link(path("d/new").c_str(), path("d/hard").c_str()), 0);
  expect({"b2", "c-back", "hard", "new"}, "link");
  ASSERT_EQ(symlink("new", path("d/sym").c_str()), 0);
  expect({"b2", "c-back", "hard", "new", "sym"}, "symlink");
  ASSERT_EQ(mkdir(path("d/sub").c_str(), 0755), 0);
  expect({"b2", "c-back", "hard", "new", "sub", "sym"}, "mkdir");
  ASSERT_EQ(mknod(path("d/fifo").c_str(), S_IFIFO | 0644, 0), 0);
  expect({"b2", "c-back", "fifo", "hard", "new", "sub", "sym"}, "mknod");
  // An exchange keeps the names and swaps what they name: the listing's
  // inode number and type of "b2" (now a directory) follow.
  ASSERT_EQ(mkdir(path("e/xdir").c_str(), 0755), 0);
  ASSERT_EQ(renameat2(path("d/b2"), path("e/xdir"), RENAME_EXCHANGE), 0);
  expect({"b2", "c-back", "fifo", "hard", "new", "sub", "sym"}, "exchange");
  bool seen = false;
  rewinddir(held);
  while (dirent* e = readdir(held)) {
    if (std::string(e->d_name) != "b2") continue;
    seen = true;
    EXPECT_EQ(e->d_ino, stat_of(path("d/b2")).st_ino);
    EXPECT_EQ(e->d_type, DT_DIR);
  }
  EXPECT_TRUE(seen);
  ASSERT_EQ(rmdir(path("d/sub").c_str()), 0);
  expect({"b2", "c-back", "fifo", "hard", "new", "sym"}, "rmdir");
  closedir(held);
  // A directory moved to another parent: its own ".." follows, though its
  // listing was cached before (the kernel invalidates only the parents).
  auto dotdot = [&](const std::string& dir) -> ino_t {
    DIR* s = opendir(path(dir).c_str());
    EXPECT_NE(s, nullptr) << dir;
    ino_t ino = 0;
    while (dirent* e = s ? readdir(s) : nullptr)
      if (std::string(e->d_name) == "..") ino = e->d_ino;
    if (s) closedir(s);
    return ino;
  };
  ASSERT_EQ(mkdir(path("d/mover").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(path("e/other").c_str(), 0755), 0);
  EXPECT_EQ(dotdot("d/mover"), stat_of(path("d")).st_ino);
  EXPECT_EQ(dotdot("e/other"), stat_of(path("e")).st_ino);
  ASSERT_EQ(rename(path("d/mover").c_str(), path("e/mover").c_str()), 0);
  EXPECT_EQ(dotdot("e/mover"), stat_of(path("e")).st_ino) << "after a move";
  ASSERT_EQ(renameat2(path("e/mover"), path("d/b2"), RENAME_EXCHANGE), 0);  // d/b2 is a directory
  EXPECT_EQ(dotdot("d/b2"), stat_of(path("d")).st_ino) << "after an exchange";
  EXPECT_EQ(dotdot("e/mover"), stat_of(path("e")).st_ino) << "after an exchange";
  ASSERT_EQ(rmdir(path("e/other").c_str()), 0);
  ASSERT_EQ(rmdir(path("e/mover").c_str()), 0);
  // And the listing after a remount (a new kernel cache).
  remount();
  EXPECT_EQ(list_dir(path("d")), (Names{"b2", "c-back", "fifo", "hard", "new", "sym"}));
  EXPECT_EQ(list_dir(path("e")), Names{"xdir"});
}

TEST_F(PosixMount, Renameat2NoReplaceAndExchange) {
  ASSERT_EQ(write_file(path("a"), "A"), 0);
  ASSERT_EQ(write_file(path("b"), "B"), 0);
  EXPECT_EQ(renameat2(path("a"), path("b"), RENAME_NOREPLACE), EEXIST);
  EXPECT_EQ(read_file(path("a")), "A");
  EXPECT_EQ(read_file(path("b")), "B");
  EXPECT_EQ(renameat2(path("a"), path("c"), RENAME_NOREPLACE), 0);
  EXPECT_EQ(read_file(path("c")), "A");
  EXPECT_NE(access(path("a").c_str(), F_OK), 0);

  EXPECT_EQ(renameat2(path("b"), path("c"), RENAME_EXCHANGE), 0);
  EXPECT_EQ(read_file(path("b")), "A");
  EXPECT_EQ(read_file(path("c")), "B");
  EXPECT_EQ(renameat2(path("b"), path("missing"), RENAME_EXCHANGE), ENOENT);
  // A file and a directory in different parents trade places.
  ASSERT_EQ(mkdir(path("dir").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(path("other").c_str(), 0755), 0);
  ASSERT_EQ(write_file(path("dir/inner"), "I"), 0);
  EXPECT_EQ(renameat2(path("dir"), path("other/b"), RENAME_EXCHANGE), ENOENT);
  ASSERT_EQ(rename(path("b").c_str(), path("other/b").c_str()), 0);
  EXPECT_EQ(renameat2(path("dir"), path("other/b"), RENAME_EXCHANGE), 0);
  EXPECT_TRUE(S_ISREG(stat_of(path("dir")).st_mode));
  EXPECT_EQ(read_file(path("dir")), "A");
  EXPECT_EQ(read_file(path("other/b/inner")), "I");
  EXPECT_EQ(read_file(path("other/b/../b/inner")), "I");
  EXPECT_EQ(renameat2(path("c"), path("d"), RENAME_NOREPLACE | RENAME_EXCHANGE), EINVAL);
}

TEST_F(PosixMount, HardLinksKeepNlinkAndCtimeFresh) {
  ASSERT_EQ(write_file(path("f"), "data"), 0);
  struct stat before = stat_of(path("f"));
  EXPECT_EQ(before.st_nlink, 1u);
  pause_for_clock();
  ASSERT_EQ(link(path("f").c_str(), path("g").c_str()), 0);
  struct stat linked = stat_of(path("f"));
  EXPECT_EQ(linked.st_nlink, 2u);
  EXPECT_TRUE(newer(linked.st_ctim, before.st_ctim)) << "link must update ctime";
  EXPECT_EQ(stat_of(path("g")).st_ino, before.st_ino);
  pause_for_clock();
  ASSERT_EQ(unlink(path("g").c_str()), 0);
  struct stat unlinked = stat_of(path("f"));
  EXPECT_EQ(unlinked.st_nlink, 1u);
  EXPECT_TRUE(newer(unlinked.st_ctim, linked.st_ctim)) << "unlink must update ctime";
  // Links into another directory; directories cannot be hard linked.
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  ASSERT_EQ(link(path("f").c_str(), path("d/h").c_str()), 0);
  EXPECT_EQ(stat_of(path("f")).st_nlink, 2u);
  EXPECT_EQ(err_of(link(path("d").c_str(), path("dlink").c_str())), EPERM);
  EXPECT_EQ(err_of(link(path("f").c_str(), path("d/h").c_str())), EEXIST);
  // Rename of one link over another link of the same inode does nothing.
  ASSERT_EQ(rename(path("f").c_str(), path("d/h").c_str()), 0);
  EXPECT_EQ(read_file(path("d/h")), "data");
}

TEST_F(PosixMount, UnlinkedOpenFileStaysUsable) {
  int fd = open(path("f").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "hello", 5), 5);
  int fd2 = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(fd2, 0);
  ASSERT_EQ(unlink(path("f").c_str()), 0);
  EXPECT_NE(access(path("f").c_str(), F_OK), 0);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_nlink, 0u);
  std::string big = random_bytes(2 * MiB, 5);
  ASSERT_EQ(pwrite(fd, big.data(), big.size(), 5), static_cast<ssize_t>(big.size()));
  std::string back(big.size() + 5, '\0');
  ASSERT_EQ(pread(fd2, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, "hello" + big);
  ASSERT_EQ(ftruncate(fd, 3), 0);
  ASSERT_EQ(fstat(fd2, &st), 0);
  EXPECT_EQ(st.st_size, 3);
  // A new file of the same name is a different file.
  ASSERT_EQ(write_file(path("f"), "new"), 0);
  char buf[8] = {};
  EXPECT_EQ(pread(fd, buf, sizeof buf, 0), 3);
  EXPECT_STREQ(buf, "hel");
  close(fd);
  close(fd2);
  EXPECT_EQ(read_file(path("f")), "new");
}

// ---------------------------------------------------------------------------
// Inodes the kernel still holds without a name or an open file: the kernel's
// lookup count keeps them until it forgets them (tmpfs behaves the same).

// Takes the process back to its working directory when it goes, whatever
// the test asserted after a chdir.
class WorkingDirectory {
 public:
  WorkingDirectory() : old_(open(".", O_RDONLY | O_DIRECTORY)) {}
  ~WorkingDirectory() {
    if (old_ >= 0 && fchdir(old_) != 0) ADD_FAILURE() << "fchdir back: " << std::strerror(errno);
    if (old_ >= 0) close(old_);
  }
  WorkingDirectory(const WorkingDirectory&) = delete;
  WorkingDirectory& operator=(const WorkingDirectory&) = delete;
  void leave() { ASSERT_EQ(fchdir(old_), 0) << std::strerror(errno); }

 private:
  int old_;
};

// Entries of a directory other than "." and "..", or -errno when
// readdir fails (glibc reports a removed directory's ENOENT as the end).
int count_entries(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return -errno;
  int n = 0;
  errno = 0;
  while (dirent* e = readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") ++n;
  }
  int err = errno;
  closedir(d);
  return err ? -err : n;
}

struct statvfs statfs_now(const std::string& mnt) {
  struct statvfs v {};
  EXPECT_EQ(statvfs(mnt.c_str(), &v), 0) << std::strerror(errno);
  return v;
}

// statvfs once want(it) holds (for at most 2 s). The kernel queues the
// FORGET of an inode it drops at once, but a request may still be served
// first: after every 16 forgets served ahead of waiting requests it serves
// 8 requests ahead of queued forgets (fuse_dev_do_read's forget_batch), and
// the multithreaded loop serves both at once.
struct statvfs statfs_when(const std::string& mnt,
                           const std::function<bool(const struct statvfs&)>& want) {
  struct statvfs v = statfs_now(mnt);
  for (int i = 0; i < 200 && !want(v); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    v = statfs_now(mnt);
  }
  return v;
}

// os.mkdir(D+"/victim"); os.chdir(D+"/victim"); os.rmdir(D+"/victim"); then
// stat(".") and listdir(".") work (nlink 0, empty) and the next mkdir gets
// another inode number.
void removed_working_directory(const std::string& mnt) {
  ASSERT_EQ(write_file(mnt + "/keep", "k"), 0);  // the root's directory block
  struct statvfs before = statfs_now(mnt);
  const std::string victim = mnt + "/victim";
  ASSERT_EQ(mkdir(victim.c_str(), 0755), 0);
  ASSERT_EQ(write_file(victim + "/child", "x"), 0);  // gives it a directory block
  ASSERT_EQ(unlink((victim + "/child").c_str()), 0);
  struct stat was = stat_of(victim);
  {
    WorkingDirectory cwd;
    ASSERT_EQ(chdir(victim.c_str()), 0) << std::strerror(errno);
    ASSERT_EQ(rmdir(victim.c_str()), 0) << std::strerror(errno);
    struct stat st {};
    ASSERT_EQ(stat(".", &st), 0) << std::strerror(errno);
    EXPECT_EQ(st.st_ino, was.st_ino);
    EXPECT_EQ(st.st_nlink, 0u);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(count_entries("."), 0);
    ASSERT_EQ(mkdir((mnt + "/new0").c_str(), 0755), 0);
    EXPECT_NE(stat_of(mnt + "/new0").st_ino, was.st_ino);
    ASSERT_EQ(stat(".", &st), 0) << std::strerror(errno);
    EXPECT_EQ(st.st_ino, was.st_ino);
    EXPECT_EQ(st.st_nlink, 0u);
    // A removed directory takes no new names.
    EXPECT_EQ(err_of(open("x", O_CREAT | O_WRONLY, 0644)), ENOENT);
    EXPECT_EQ(err_of(mkdir("x", 0755)), ENOENT);
    ASSERT_NO_FATAL_FAILURE(cwd.leave());
  }
  ASSERT_EQ(rmdir((mnt + "/new0").c_str()), 0);
  // Left, the directory is forgotten and freed with its block.
  struct statvfs after = statfs_when(mnt, [&](const struct statvfs& v) {
    return v.f_ffree == before.f_ffree && v.f_bfree == before.f_bfree;
  });
  EXPECT_EQ(after.f_ffree, before.f_ffree);
  EXPECT_EQ(after.f_bfree, before.f_bfree);
}

// fd = os.open(D+"/f", os.O_PATH); os.unlink(D+"/f"): fstat(fd) works
// (nlink 0), /proc/self/fd/N opens the old bytes, and the space comes back
// once fd is closed. An unlink of a file nothing holds frees it (once the
// kernel's FORGET came).
void o_path_keeps_unlinked_file(const std::string& mnt) {
  ASSERT_EQ(write_file(mnt + "/keep", "k"), 0);  // the root's directory block
  struct statvfs before = statfs_now(mnt);
  const std::string contents = "old contents" + random_bytes(4 * MiB, 11);
  ASSERT_EQ(write_file(mnt + "/plain", contents), 0);
  ASSERT_EQ(unlink((mnt + "/plain").c_str()), 0);
  struct statvfs v =
      statfs_when(mnt, [&](const struct statvfs& s) { return s.f_bfree == before.f_bfree; });
  EXPECT_EQ(v.f_bfree, before.f_bfree) << "unlink of a file nobody holds";
  EXPECT_EQ(v.f_ffree, before.f_ffree);

  const std::string f = mnt + "/f";
  ASSERT_EQ(write_file(f, contents), 0);
  const ino_t ino = stat_of(f).st_ino;
  int fd = open(f.c_str(), O_PATH);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(unlink(f.c_str()), 0);
  struct stat st {};
  EXPECT_EQ(fstat(fd, &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_ino, ino);
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(st.st_size, static_cast<off_t>(contents.size()));
  ASSERT_EQ(write_file(mnt + "/g", "another file"), 0);
  EXPECT_NE(stat_of(mnt + "/g").st_ino, ino);
  const std::string back = read_file("/proc/self/fd/" + std::to_string(fd));
  EXPECT_TRUE(back == contents) << back.size() << " bytes: " << back.substr(0, 40);
  EXPECT_EQ(fstat(fd, &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_nlink, 0u);
  ASSERT_EQ(unlink((mnt + "/g").c_str()), 0);
  v = statfs_when(mnt, [&](const struct statvfs& s) { return s.f_ffree + 1 == before.f_ffree; });
  EXPECT_LE(v.f_bfree + contents.size() / 4096, before.f_bfree)
      << "the held file's space is in use";
  EXPECT_EQ(v.f_ffree + 1, before.f_ffree);
  close(fd);
  v = statfs_when(mnt, [&](const struct statvfs& s) {
    return s.f_bfree == before.f_bfree && s.f_ffree == before.f_ffree;
  });
  EXPECT_EQ(v.f_bfree, before.f_bfree);
  EXPECT_EQ(v.f_ffree, before.f_ffree);
}

TEST_F(PosixMount, RemovedWorkingDirectoryStaysUsable) {
  ASSERT_NO_FATAL_FAILURE(removed_working_directory(mnt()));
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

TEST_F(PosixMount, OPathDescriptorKeepsAnUnlinkedFile) {
  ASSERT_NO_FATAL_FAILURE(o_path_keeps_unlinked_file(mnt()));
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

// The daemon died while the kernel held a removed directory and an
// unlinked file: fsck accepts them and the next mount reclaims them.
TEST_F(PosixMount, HeldOrphansSurviveAKilledDaemon) {
  ASSERT_EQ(write_file(path("keep"), "k"), 0);
  struct statvfs before {};
  ASSERT_EQ(statvfs(mnt().c_str(), &before), 0);
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  ASSERT_EQ(write_file(path("f"), random_bytes(MiB, 12)), 0);
  int dfd = open(path("d").c_str(), O_RDONLY | O_DIRECTORY);
  int ffd = open(path("f").c_str(), O_PATH);
  ASSERT_GE(dfd, 0);
  ASSERT_GE(ffd, 0);
  ASSERT_EQ(rmdir(path("d").c_str()), 0);
  ASSERT_EQ(unlink(path("f").c_str()), 0);
  struct stat st {};
  EXPECT_EQ(fstat(dfd, &st), 0) << std::strerror(errno);
  EXPECT_EQ(fstat(ffd, &st), 0) << std::strerror(errno);
  ASSERT_NO_FATAL_FAILURE(kill_daemon(SIGKILL));
  close(dfd);
  close(ffd);
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
  ASSERT_NO_FATAL_FAILURE(mount());
  struct statvfs after {};
  ASSERT_EQ(statvfs(mnt().c_str(), &after), 0);
  EXPECT_EQ(after.f_bfree, before.f_bfree);
  EXPECT_EQ(after.f_ffree, before.f_ffree);
  EXPECT_EQ(list_dir(mnt()), std::set<std::string>{"keep"});
}

TEST_F(PosixMount, ExtendedAttributes) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  std::string p = path("f");
  const char* f = p.c_str();
  EXPECT_EQ(err_of(setxattr(f, "user.a", "value-a", 7, XATTR_CREATE)), 0);
  EXPECT_EQ(err_of(setxattr(f, "user.a", "again", 5, XATTR_CREATE)), EEXIST);
  EXPECT_EQ(err_of(setxattr(f, "user.b", "b", 1, XATTR_REPLACE)), ENODATA);
  std::string big(3000, 'v');
  EXPECT_EQ(err_of(setxattr(f, "user.b", big.data(), big.size(), 0)), 0);
  EXPECT_EQ(err_of(setxattr(f, "user.empty", "", 0, 0)), 0);

  EXPECT_EQ(getxattr(f, "user.a", nullptr, 0), 7);
  char small[3];
  EXPECT_EQ(getxattr(f, "user.a", small, sizeof small), -1);
  EXPECT_EQ(errno, ERANGE);
  char buf[4096];
  ASSERT_EQ(getxattr(f, "user.a", buf, sizeof buf), 7);
  EXPECT_EQ(std::string(buf, 7), "value-a");
  ASSERT_EQ(getxattr(f, "user.b", buf, sizeof buf), 3000);
  EXPECT_EQ(std::string(buf, 3000), big);
  EXPECT_EQ(getxattr(f, "user.empty", buf, sizeof buf), 0);
  EXPECT_EQ(getxattr(f, "user.missing", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(err_of(setxattr(f, "user.a", "new", 3, XATTR_REPLACE)), 0);
  ASSERT_EQ(getxattr(f, "user.a", buf, sizeof buf), 3);
  EXPECT_EQ(std::string(buf, 3), "new");

  ssize_t len = listxattr(f, nullptr, 0);
  ASSERT_GT(len, 0);
  EXPECT_EQ(listxattr(f, buf, 2), -1);
  EXPECT_EQ(errno, ERANGE);
  ASSERT_EQ(listxattr(f, buf, sizeof buf), len);
  std::set<std::string> names;
  for (ssize_t i = 0; i < len; i += static_cast<ssize_t>(std::strlen(buf + i)) + 1) {
    names.insert(buf + i);
  }
  EXPECT_EQ(names, (std::set<std::string>{"user.a", "user.b", "user.empty"}));

  EXPECT_EQ(err_of(removexattr(f, "user.a")), 0);
  EXPECT_EQ(err_of(removexattr(f, "user.a")), ENODATA);
  EXPECT_EQ(getxattr(f, "user.a", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENODATA);

  // Directories carry xattrs too.
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  EXPECT_EQ(err_of(setxattr(path("d").c_str(), "user.dir", "1", 1, 0)), 0);
  EXPECT_EQ(getxattr(path("d").c_str(), "user.dir", buf, sizeof buf), 1);

  // POSIX ACLs are system. xattrs (acl_test.cc): a valid ACL (owner rw,
  // user 65534 r, group r, mask r, other r) is taken and listed.
  struct Entry {
    uint16_t tag, perm;
    uint32_t id;
  };
  struct Acl {
    uint32_t version = 2;
    Entry e[5] = {{0x01, 6, 0xffffffffu},
                  {0x02, 4, 65534},
                  {0x04, 4, 0xffffffffu},
                  {0x10, 4, 0xffffffffu},
                  {0x20, 4, 0xffffffffu}};
  } acl;
  static_assert(sizeof(Acl) == 4 + 5 * 8);
  EXPECT_EQ(err_of(setxattr(f, "system.posix_acl_access", &acl, sizeof acl, 0)), 0);
  EXPECT_EQ(getxattr(f, "system.posix_acl_access", buf, sizeof buf),
            static_cast<ssize_t>(sizeof acl));
  EXPECT_EQ(std::memcmp(buf, &acl, sizeof acl), 0);
}

TEST_F(PosixMount, NameLengthLimits) {
  std::string name255(255, 'n');
  std::string name256(256, 'n');
  ASSERT_EQ(write_file(path(name255), "ok"), 0);
  EXPECT_EQ(read_file(path(name255)), "ok");
  EXPECT_EQ(list_dir(mnt()), std::set<std::string>{name255});
  EXPECT_EQ(err_of(open(path(name256).c_str(), O_CREAT | O_WRONLY, 0644)), ENAMETOOLONG);
  EXPECT_EQ(err_of(mkdir(path(name256).c_str(), 0755)), ENAMETOOLONG);
  EXPECT_EQ(err_of(symlink("t", path(name256).c_str())), ENAMETOOLONG);
  EXPECT_EQ(err_of(rename(path(name255).c_str(), path(name256).c_str())), ENAMETOOLONG);
  EXPECT_EQ(err_of(link(path(name255).c_str(), path(name256).c_str())), ENAMETOOLONG);
  std::string dir255(255, 'd');
  ASSERT_EQ(mkdir(path(dir255).c_str(), 0755), 0);
  ASSERT_EQ(rename(path(name255).c_str(), path(dir255 + "/" + name255).c_str()), 0);
  EXPECT_EQ(read_file(path(dir255 + "/" + name255)), "ok");
}

TEST_F(PosixMount, OddBytesInNames) {
  const std::set<std::string> names = {"\x01", "a b", " lead and trail ", "back\\slash",
                                       "new\nline", "tab\there", "\xc3\xa9t\xc3\xa9",
                                       "\xe6\x97\xa5\xe6\x9c\xac", "-dash", ".hidden",
                                       "...", "\x7f\xff\xfe", "q'uo\"te", "*?[]"};
  for (const std::string& n : names) {
    ASSERT_EQ(write_file(path(n), n), 0) << n;
  }
  EXPECT_EQ(list_dir(mnt()), names);
  for (const std::string& n : names) {
    EXPECT_EQ(read_file(path(n)), n);
    EXPECT_EQ(unlink(path(n).c_str()), 0) << n;
  }
  EXPECT_TRUE(list_dir(mnt()).empty());
}

// ---------------------------------------------------------------------------
// Ownership and permissions

TEST_F(PosixMount, FilesCreatedByAUserBelongToThem) {
  ASSERT_EQ(mkdir(path("shared").c_str(), 0777), 0);
  ASSERT_EQ(chmod(path("shared").c_str(), 0777), 0);
  std::string f = path("shared/f"), d = path("shared/d"), l = path("shared/l");
  int r = as_user(kNobody, kNogroup, [&] {
    if (write_file(f, "mine") != 0) return 1;
    if (mkdir(d.c_str(), 0755) != 0) return 2;
    if (symlink("f", l.c_str()) != 0) return 3;
    if (chmod(f.c_str(), 0600) != 0) return 4;
    return 0;
  });
  ASSERT_EQ(r, 0);
  for (const std::string& p : {f, d, l}) {
    struct stat st = stat_of(p);
    EXPECT_EQ(st.st_uid, kNobody) << p;
    EXPECT_EQ(st.st_gid, kNogroup) << p;
  }
  EXPECT_EQ(stat_of(f).st_mode & 07777, 0600u);
  // A user may not give a file away.
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return err_of(chown(f.c_str(), 0, 0)); }), EPERM);
  // Root may.
  ASSERT_EQ(chown(f.c_str(), 1234, 5678), 0);
  EXPECT_EQ(stat_of(f).st_uid, 1234u);
  EXPECT_EQ(stat_of(f).st_gid, 5678u);
}

TEST_F(PosixMount, SetgidDirectoryPassesItsGroup) {
  ASSERT_EQ(mkdir(path("sg").c_str(), 0777), 0);
  ASSERT_EQ(chown(path("sg").c_str(), 0, 4242), 0);
  ASSERT_EQ(chmod(path("sg").c_str(), 02777), 0);
  ASSERT_EQ(stat_of(path("sg")).st_mode & 07777, 02777u);
  ASSERT_EQ(write_file(path("sg/root-file"), "r"), 0);
  EXPECT_EQ(stat_of(path("sg/root-file")).st_gid, 4242u);
  ASSERT_EQ(mkdir(path("sg/sub").c_str(), 0755), 0);
  struct stat sub = stat_of(path("sg/sub"));
  EXPECT_EQ(sub.st_gid, 4242u);
  EXPECT_TRUE(sub.st_mode & S_ISGID) << "new subdirectories inherit the setgid bit";
  std::string f = path("sg/user-file");
  ASSERT_EQ(as_user(kNobody, kNogroup, [&] { return write_file(f, "u"); }), 0);
  EXPECT_EQ(stat_of(f).st_uid, kNobody);
  EXPECT_EQ(stat_of(f).st_gid, 4242u);
  ASSERT_EQ(mkdir(path("sg/sub/deeper").c_str(), 0700), 0);
  EXPECT_EQ(stat_of(path("sg/sub/deeper")).st_gid, 4242u);
  EXPECT_TRUE(stat_of(path("sg/sub/deeper")).st_mode & S_ISGID);
}

TEST_F(PosixMount, PermissionBitsAreEnforced) {
  ASSERT_EQ(write_file(path("secret"), "root only"), 0);
  ASSERT_EQ(chmod(path("secret").c_str(), 0600), 0);
  ASSERT_EQ(write_file(path("public"), "everyone reads"), 0);
  ASSERT_EQ(chmod(path("public").c_str(), 0644), 0);
  std::string secret = path("secret"), pub = path("public"), root_dir = mnt();
  auto open_errno = [](const std::string& p, int flags) {
    int fd = open(p.c_str(), flags);
    if (fd < 0) return errno;
    close(fd);
    return 0;
  };
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return open_errno(secret, O_RDONLY); }), EACCES);
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return open_errno(secret, O_WRONLY); }), EACCES);
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return open_errno(pub, O_RDONLY); }), 0);
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return open_errno(pub, O_WRONLY); }), EACCES);
  EXPECT_EQ(as_user(kNobody, kNogroup, [&] { return err_of(chmod(pub.c_str(), 0666)); }), EPERM);
  EXPECT_EQ(as_user(kNobody, kNogroup,
                    [&] { return err_of(truncate(pub.c_str(), 0)); }),
            EACCES);
  // The root directory belongs to root: others may not create in it.
  EXPECT_EQ(as_user(kNobody, kNogroup,
                    [&] { return write_file(root_dir + "/intruder", "x"); }),
            EACCES);
  // Root still reads it (and the content is intact).
  EXPECT_EQ(read_file(secret), "root only");
  EXPECT_EQ(read_file(pub), "everyone reads");
}

TEST_F(PosixMount, StickyDirectoryProtectsOthersFiles) {
  ASSERT_EQ(mkdir(path("tmp").c_str(), 0777), 0);
  ASSERT_EQ(chmod(path("tmp").c_str(), 01777), 0);
  ASSERT_EQ(write_file(path("tmp/roots"), "r"), 0);
  ASSERT_EQ(chmod(path("tmp/roots").c_str(), 0666), 0);
  std::string roots = path("tmp/roots"), mine = path("tmp/mine"), moved = path("tmp/moved");
  int r = as_user(kNobody, kNogroup, [&] {
    int e = err_of(unlink(roots.c_str()));
    if (e != EPERM && e != EACCES) return 10;
    e = err_of(rename(roots.c_str(), moved.c_str()));
    if (e != EPERM && e != EACCES) return 11;
    // Writable, though (mode 0666), and own files come and go freely.
    if (write_at(roots, "w", 0) != 0) return 12;
    if (write_file(mine, "m") != 0) return 13;
    if (rename(mine.c_str(), moved.c_str()) != 0) return 14;
    if (unlink(moved.c_str()) != 0) return 15;
    return 0;
  });
  EXPECT_EQ(r, 0);
  EXPECT_EQ(read_file(roots), "w");
  // Root may remove anything.
  EXPECT_EQ(unlink(roots.c_str()), 0);
}

// ---------------------------------------------------------------------------
// Space

TEST_F(PosixMount, Fallocate) {
  int fd = open(path("f").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  // Default mode: allocates and grows the file; reads as zeros.
  ASSERT_EQ(fallocate(fd, 0, 0, MiB), 0) << std::strerror(errno);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(MiB));
  EXPECT_GE(st.st_blocks * 512, static_cast<blkcnt_t>(MiB));
  EXPECT_TRUE(all_zero(read_file(path("f"))));
  // KEEP_SIZE: allocates beyond the end without growing it.
  ASSERT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, MiB, MiB), 0) << std::strerror(errno);
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(MiB));
  EXPECT_GE(st.st_blocks * 512, static_cast<blkcnt_t>(2 * MiB));
  // Fill with data, then punch a hole in the middle.
  std::string data = random_bytes(2 * MiB, 6);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  blkcnt_t full_blocks = (fstat(fd, &st), st.st_blocks);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 64 * KiB, 128 * KiB), 0)
      << std::strerror(errno);
  data.replace(64 * KiB, 128 * KiB, std::string(128 * KiB, '\0'));
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(2 * MiB));
  EXPECT_LT(st.st_blocks, full_blocks) << "a punched hole frees its blocks";
  EXPECT_EQ(read_file(path("f")), data);
  // An unaligned punch zeroes exactly the range.
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 300 * KiB + 17, 5000), 0);
  data.replace(300 * KiB + 17, 5000, std::string(5000, '\0'));
  EXPECT_EQ(read_file(path("f")), data);
  // ZERO_RANGE, unaligned, and one that extends the file.
  ASSERT_EQ(fallocate(fd, FALLOC_FL_ZERO_RANGE, 700 * KiB + 5, 10000), 0) << std::strerror(errno);
  data.replace(700 * KiB + 5, 10000, std::string(10000, '\0'));
  EXPECT_EQ(read_file(path("f")), data);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_ZERO_RANGE, 2 * MiB - 100, 200), 0);
  data.replace(2 * MiB - 100, 100, std::string(100, '\0'));
  data.append(100, '\0');
  EXPECT_EQ(read_file(path("f")), data);
  // Modes poisonfs does not do.
  EXPECT_EQ(err_of(fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, 64 * KiB)), EOPNOTSUPP);
  close(fd);
}

// Every fallocate mode that succeeds changes mtime and ctime, as on tmpfs,
// ext4 and XFS; a preallocation too.
TEST_F(PosixMount, FallocateUpdatesMtimeAndCtime) {
  int fd = open(path("f").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 8192), 0);
  struct Case {
    const char* what;
    int mode;
    off_t off, len;
  };
  for (const Case& c :
       {Case{"extending", 0, 100000, 8192}, Case{"keep size", FALLOC_FL_KEEP_SIZE, 0, 8192},
        Case{"zero range", FALLOC_FL_ZERO_RANGE, 0, 100},
        Case{"punch hole", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096}}) {
    const timespec old[2] = {{1000, 0}, {1000, 0}};
    ASSERT_EQ(futimens(fd, old), 0);
    struct stat before;
    ASSERT_EQ(fstat(fd, &before), 0);
    ASSERT_EQ(fallocate(fd, c.mode, c.off, c.len), 0) << c.what << ": " << std::strerror(errno);
    struct stat after;
    ASSERT_EQ(fstat(fd, &after), 0);
    EXPECT_GT(after.st_mtim.tv_sec, 1000) << c.what;
    EXPECT_TRUE(newer(after.st_ctim, before.st_ctim)) << c.what;
  }
  close(fd);
}

TEST_F(PosixMount, StatfsFollowsUsage) {
  struct statvfs before;
  ASSERT_EQ(statvfs(mnt().c_str(), &before), 0);
  EXPECT_EQ(before.f_bsize, 4096u);
  EXPECT_GT(before.f_blocks, 0u);
  EXPECT_LE(before.f_bfree, before.f_blocks);
  EXPECT_GT(before.f_files, 0u);
  EXPECT_EQ(before.f_namemax, 255u);
  EXPECT_GE(before.f_blocks * before.f_frsize, 200 * MiB);
  EXPECT_LE(before.f_blocks * before.f_frsize, 256 * MiB);
  ASSERT_EQ(write_file(path("big"), random_bytes(32 * MiB, 7)), 0);
  struct statvfs after;
  ASSERT_EQ(statvfs(mnt().c_str(), &after), 0);
  EXPECT_LE(after.f_bfree + (32 * MiB) / 4096, before.f_bfree);
  EXPECT_LT(after.f_ffree, before.f_ffree);
  // The kernel refuses what does not fit.
  std::string huge = random_bytes(MiB, 8);
  int fd = open(path("fill").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  int err = 0;
  for (int i = 0; i < 400 && err == 0; ++i) {
    if (write(fd, huge.data(), huge.size()) < 0) err = errno;
  }
  close(fd);
  EXPECT_EQ(err, ENOSPC);
  // And the filesystem keeps working after ENOSPC.
  ASSERT_EQ(unlink(path("fill").c_str()), 0);
  EXPECT_EQ(read_at(path("big"), 0, 16), random_bytes(16, 7));
}

// ---------------------------------------------------------------------------
// Persistence and crashes

TEST_F(PosixMount, StatePersistsAcrossRemount) {
  std::string data = random_bytes(3 * MiB + 5, 9);
  ASSERT_EQ(write_file(path("data"), data), 0);
  ASSERT_EQ(chmod(path("data").c_str(), 0640), 0);
  ASSERT_EQ(chown(path("data").c_str(), 1000, 2000), 0);
  ASSERT_EQ(setxattr(path("data").c_str(), "user.k", "v1", 2, 0), 0);
  ASSERT_EQ(symlink("data", path("link").c_str()), 0);
  ASSERT_EQ(symlink(std::string(1000, 's').c_str(), path("longlink").c_str()), 0);
  ASSERT_EQ(link(path("data").c_str(), path("hard").c_str()), 0);
  ASSERT_EQ(mkdir(path("d").c_str(), 0711), 0);
  ASSERT_EQ(write_file(path("d/empty"), ""), 0);
  ASSERT_EQ(write_at(path("d/sparse"), "end", static_cast<off_t>(5 * MiB)), 0);
  ASSERT_EQ(mknod(path("fifo").c_str(), S_IFIFO | 0600, 0), 0);
  timespec times[2] = {{1000000000, 123}, {1200000000, 456}};
  ASSERT_EQ(utimensat(AT_FDCWD, path("d/empty").c_str(), times, 0), 0);
  struct stat data_st = stat_of(path("data"));

  remount();

  EXPECT_EQ(read_file(path("data")), data);
  struct stat st = stat_of(path("data"));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_uid, 1000u);
  EXPECT_EQ(st.st_gid, 2000u);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_EQ(st.st_ino, data_st.st_ino);
  EXPECT_EQ(st.st_mtim.tv_sec, data_st.st_mtim.tv_sec);
  EXPECT_EQ(st.st_mtim.tv_nsec, data_st.st_mtim.tv_nsec);
  char buf[1100] = {};
  ASSERT_EQ(getxattr(path("data").c_str(), "user.k", buf, sizeof buf), 2);
  EXPECT_EQ(std::string(buf, 2), "v1");
  ASSERT_EQ(readlink(path("link").c_str(), buf, sizeof buf), 4);
  EXPECT_EQ(std::string(buf, 4), "data");
  ASSERT_EQ(readlink(path("longlink").c_str(), buf, sizeof buf), 1000);
  EXPECT_EQ(std::string(buf, 1000), std::string(1000, 's'));
  EXPECT_EQ(read_file(path("hard")), data);
  EXPECT_EQ(stat_of(path("d")).st_mode & 07777, 0711u);
  EXPECT_EQ(stat_of(path("d/empty")).st_size, 0);
  EXPECT_EQ(stat_of(path("d/empty")).st_atim.tv_sec, 1000000000);
  EXPECT_EQ(stat_of(path("d/empty")).st_mtim.tv_sec, 1200000000);
  EXPECT_EQ(stat_of(path("d/empty")).st_mtim.tv_nsec, 456);
  EXPECT_EQ(stat_of(path("d/sparse")).st_size, static_cast<off_t>(5 * MiB + 3));
  EXPECT_EQ(read_at(path("d/sparse"), 5 * MiB - 2, 10), std::string(2, '\0') + "end");
  EXPECT_TRUE(S_ISFIFO(stat_of(path("fifo")).st_mode));
  EXPECT_EQ(list_dir(mnt()), (std::set<std::string>{"data", "link", "longlink", "hard", "d",
                                                     "fifo"}));
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

// Times before 1970 keep their fraction (tv_nsec in [0, 1e9)); times
// outside what int64 nanoseconds hold (1677-09-21 .. 2262-04-11) are
// clamped to the nearest end, as ext4 and XFS clamp to their range.
TEST_F(PosixMount, TimesBeforeTheEpochAndOutOfRange) {
  const timespec kMax{9'223'372'036, 854'775'807}, kMin{-9'223'372'037, 145'224'192};
  ASSERT_EQ(write_file(path("old"), ""), 0);
  ASSERT_EQ(write_file(path("far"), ""), 0);
  const timespec old[2] = {{-1, 999'999'995}, {-2, 500'000'000}};  // -5 ns, -1.5 s
  ASSERT_EQ(utimensat(AT_FDCWD, path("old").c_str(), old, 0), 0) << std::strerror(errno);
  const timespec far[2] = {{-11'676'096'000, 0}, {10'413'792'000, 0}};  // 1600 and 2300
  ASSERT_EQ(utimensat(AT_FDCWD, path("far").c_str(), far, 0), 0) << std::strerror(errno);
  auto expect = [&](const char* when) {
    auto same = [](const timespec& a, const timespec& b) {
      return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
    };
    struct stat st = stat_of(path("old"));
    EXPECT_TRUE(same(st.st_atim, old[0]))
        << when << ": " << st.st_atim.tv_sec << "." << st.st_atim.tv_nsec;
    EXPECT_TRUE(same(st.st_mtim, old[1]))
        << when << ": " << st.st_mtim.tv_sec << "." << st.st_mtim.tv_nsec;
    st = stat_of(path("far"));
    EXPECT_TRUE(same(st.st_atim, kMin))
        << when << ": " << st.st_atim.tv_sec << "." << st.st_atim.tv_nsec;
    EXPECT_TRUE(same(st.st_mtim, kMax))
        << when << ": " << st.st_mtim.tv_sec << "." << st.st_mtim.tv_nsec;
  };
  expect("mounted");
  remount();
  expect("remounted");
  // touch -d with a fraction before the epoch, as a user would.
  RunResult touch = run("touch -d '1969-12-31 23:59:59.5 UTC' " + sh_quote(path("old")));
  ASSERT_EQ(touch.exit_code, 0) << touch.both();
  EXPECT_EQ(stat_of(path("old")).st_mtim.tv_sec, -1);
  EXPECT_EQ(stat_of(path("old")).st_mtim.tv_nsec, 500'000'000);
}

TEST_F(PosixMount, KilledDaemonReplaysJournalOnRemount) {
  ASSERT_EQ(mkdir(path("c").c_str(), 0755), 0);
  // A child creates files as fast as it can and publishes how many
  // completed; the daemon is killed in the middle of the stream.
  auto* done = static_cast<std::atomic<int>*>(
      mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
           -1, 0));
  ASSERT_NE(static_cast<void*>(done), MAP_FAILED);
  new (done) std::atomic<int>(0);
  std::string base = path("c/");
  std::fflush(nullptr);
  pid_t writer = fork();
  if (writer == 0) {
    for (int i = 0; i < 1000000; ++i) {
      std::string name = "file-" + std::to_string(i);
      if (write_file(base + name, name) != 0) _exit(0);
      done->store(i + 1);
    }
    _exit(0);
  }
  ASSERT_GT(writer, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (done->load() < 300 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_NO_FATAL_FAILURE(kill_daemon(SIGKILL));
  int status = 0;
  waitpid(writer, &status, 0);
  int completed = done->load();
  munmap(done, sizeof(std::atomic<int>));
  ASSERT_GE(completed, 300);

  ASSERT_NO_FATAL_FAILURE(mount());
  std::set<std::string> names = list_dir(path("c"));
  // Every create that returned survives (the mapping outlives the process);
  // the one in flight may or may not.
  EXPECT_GE(names.size(), static_cast<size_t>(completed));
  EXPECT_LE(names.size(), static_cast<size_t>(completed) + 1);
  for (int i = 0; i < completed; ++i) {
    std::string name = "file-" + std::to_string(i);
    ASSERT_EQ(read_file(path("c/" + name)), name);
  }
  // Still a working filesystem.
  ASSERT_EQ(write_file(path("after"), "ok"), 0);
  EXPECT_EQ(read_file(path("after")), "ok");
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

// ---------------------------------------------------------------------------
// The daemon's command line and mount handling

TEST_F(PosixMount, SecondMountOfTheSameImageIsRefused) {
  std::string mnt2 = dir() + "/mnt2";
  ASSERT_EQ(mkdir(mnt2.c_str(), 0755), 0);
  RunResult r = run(sh_quote(bin("poisonfs")) + " " + sh_quote(image()) + " " + sh_quote(mnt2));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
  EXPECT_FALSE(is_poisonfs_mounted(mnt2));
  // The first mount is unaffected.
  ASSERT_EQ(write_file(path("f"), "still fine"), 0);
  EXPECT_EQ(read_file(path("f")), "still fine");
}

TEST_F(PosixMount, UmountByImagePathThenImmediateRemount) {
  ASSERT_EQ(write_file(path("f"), "persisted"), 0);
  RunResult found = run("findmnt -n -o TARGET -S " + sh_quote(image()));
  EXPECT_EQ(found.out, mnt() + "\n") << found.both();
  RunResult r = run("umount " + sh_quote(image()));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  // At once, daemonized, options after the positionals as mount.fuse3 does.
  r = run(sh_quote(bin("poisonfs")) + " " + sh_quote(image()) + " " + sh_quote(mnt()) +
          " -o rw,dev,suid,allow_other");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  ASSERT_TRUE(mounted());
  EXPECT_EQ(read_file(path("f")), "persisted");
  // The foreground daemon of the first mount has exited cleanly.
  r = run("umount " + sh_quote(image()));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  unmount();
  EXPECT_TRUE(image_unlocked(image()));
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

// umount returns once the kernel let go of the mount, while the daemon may
// still be writing back with the image locked: the tools wait for it.
TEST_F(PosixMount, UmountThenAtOnceFsckStatAndMkfsOfTheImage) {
  const std::string img = sh_quote(image());
  for (int round = 0; round < 5; ++round) {
    ASSERT_EQ(write_file(path("f" + std::to_string(round)), std::string(1 << 20, 'x')), 0);
    RunResult r = run("umount " + img + " && " + sh_quote(bin("fsck.poisonfs")) + " -n " + img);
    ASSERT_EQ(r.exit_code, 0) << "round " << round << ": " << r.both();
    unmount();  // reaps the daemon
    mount();
    r = run("umount " + img + " && " + sh_quote(bin("poisonctl")) + " stat " + img);
    ASSERT_EQ(r.exit_code, 0) << "round " << round << ": " << r.both();
    unmount();
    mount();
  }
  RunResult r = run("umount " + img + " && " + sh_quote(bin("mkfs.poisonfs")) + " -f " + img + " " + image_size());
  EXPECT_EQ(r.exit_code, 0) << r.both();
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + img);
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

TEST_F(PosixMount, BadCommandLinesLeaveTheImageUntouched) {
  unmount();
  const std::string sum = sha256_of(image());
  ASSERT_EQ(sum.size(), 64u);
  const std::string prog = sh_quote(bin("poisonfs"));
  const std::string img = sh_quote(image()), mp = sh_quote(mnt());
  struct Case {
    std::string args;
    std::string message;  // expected in stderr
  };
  const Case cases[] = {
      {"-o bogus " + img + " " + mp, "poisonfs: unknown option 'bogus'"},
      {img + " " + mp + " -o rw,nodev,bogus2", "poisonfs: unknown option 'bogus2'"},
      {"--frobnicate " + img + " " + mp, "poisonfs: unknown option '--frobnicate'"},
      {img + " " + sh_quote(dir() + "/missing"), "missing"},
      {img + " " + img, "not a directory"},
      {img, "MOUNTPOINT"},
      {"", "IMAGE"},
      {img + " " + mp + " extra", "extra"},
      {"-o read_reply=bogus " + img + " " + mp, "read_reply"},
      {"-o spin_us=abc " + img + " " + mp, "spin_us must be a number of microseconds"},
      {"-o spin_us=-1 " + img + " " + mp, "spin_us must be a number of microseconds"},
      {"-o spin_us=10001 " + img + " " + mp, "from 0 to 10000"},
      {"-o spin_us= " + img + " " + mp, "spin_us must be a number of microseconds"},
      {"-o multithread,spin_us=50 " + img + " " + mp, "spin_us is for the single-threaded loop"},
  };
  for (const Case& c : cases) {
    RunResult r = run(prog + " " + c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one clear line: " << r.err;
    EXPECT_FALSE(mounted());
  }
  EXPECT_EQ(sha256_of(image()), sum);
  // A missing image names the image.
  RunResult r = run(prog + " " + sh_quote(dir() + "/no-image") + " " + mp);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no-image"), std::string::npos) << r.err;
  // Help and version.
  r = run(prog + " --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("singlethread"), std::string::npos) << r.out;
  r = run(prog + " -V");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("poisonfs"), std::string::npos) << r.out;
}

TEST_F(PosixMount, GenericMountOptionsAreAccepted) {
  unmount();
  RunResult r = run(sh_quote(bin("poisonfs")) + " " + sh_quote(image()) + " " + sh_quote(mnt()) +
                    " -o rw,dev,suid,nodev,nosuid,exec,noexec,auto,noauto,user,nouser,_netdev,"
                    "defaults,allow_other,noatime");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_TRUE(mounted());
  RunResult info = run("findmnt -n -o SOURCE,FSTYPE,OPTIONS " + sh_quote(mnt()));
  EXPECT_NE(info.out.find(image()), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("fuse.poisonfs"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("default_permissions"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("allow_other"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("noexec"), std::string::npos) << info.out;
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  unmount();
}

TEST_F(PosixMount, SessionLoopVariants) {
  // Every loop setup the benchmark compares must serve requests.
  for (const char* opts : {"singlethread", "clone_fd,max_idle_threads=2",
                           "max_threads=4,read_reply=data", "read_reply=splice", "spin_us=0",
                           "spin_us=10000", "multithread,spin_us=0"}) {
    unmount();
    RunResult r = run(sh_quote(bin("poisonfs")) + " -o allow_other," + opts + " " +
                      sh_quote(image()) + " " + sh_quote(mnt()));
    ASSERT_EQ(r.exit_code, 0) << opts << ": " << r.both();
    std::string data = random_bytes(3 * MiB + 11, 10);
    std::string name = std::string("f-") + opts;
    ASSERT_EQ(write_file(path(name), data), 0) << opts;
    ASSERT_EQ(write_at(path(name), "tail", static_cast<off_t>(6 * MiB)), 0) << opts;
    data.resize(6 * MiB, '\0');
    data += "tail";
    EXPECT_EQ(read_file(path(name)), data) << opts;
  }
}

// Whether pid runs (a zombie waiting for init to reap it does not).
bool running(pid_t pid) {
  char state = proc_state("/proc/" + std::to_string(pid) + "/stat");
  return state != '\0' && state != 'Z';
}

// SIGTERM ends the daemon cleanly (it unmounts, exits 0, loses nothing),
// also when it comes while the loop spins between the requests of a busy
// client that never lets it sleep (fuse/request_wait.h), and in each way
// the loop can wait.
TEST_F(PosixMount, SigtermWhileBusyEndsTheDaemonCleanly) {
  for (const char* opts : {"allow_other", "allow_other,spin_us=10000", "allow_other,spin_us=0",
                           "allow_other,multithread"}) {
    unmount();
    std::string run_opts = std::string(" -o ") + opts;
    RunResult started = run(sh_quote(bin("poisonfs")) + run_opts + " " + sh_quote(image()) + " " +
                            sh_quote(mnt()));
    ASSERT_EQ(started.exit_code, 0) << opts << ": " << started.both();
    const pid_t daemon = daemon_of(image());
    ASSERT_GT(daemon, 0) << opts;
    const std::string name = std::string("kept-") + opts;
    ASSERT_EQ(write_file(path(name), name), 0) << opts;
    // A client that keeps the loop busy until the mount goes away: every
    // O_DIRECT read is a READ request, one right after the other.
    std::atomic<bool> stop{false};
    std::atomic<long> reads{0};
    std::thread client([&] {
      int fd = open(path(name).c_str(), O_RDONLY | O_DIRECT);
      if (fd < 0) return;
      alignas(4096) static thread_local char block[4096];
      while (!stop && pread(fd, block, sizeof block, 0) >= 0) ++reads;
      close(fd);
    });
    while (reads < 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(kill(daemon, SIGTERM), 0) << opts;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while ((mounted() || running(daemon)) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    stop = true;
    client.join();
    ASSERT_FALSE(mounted() || running(daemon)) << opts << ": the daemon did not end within 5 s of SIGTERM";
    EXPECT_TRUE(image_unlocked(image())) << opts;
    mount();
    EXPECT_EQ(read_file(path(name)), name) << opts;
  }
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

// Whether pid has the file `path` open (as the same file, by any name).
bool has_open(pid_t pid, const std::string& path) {
  struct stat want {};
  if (stat(path.c_str(), &want) != 0) return false;
  const std::string fds = "/proc/" + std::to_string(pid) + "/fd";
  DIR* dir = opendir(fds.c_str());
  if (!dir) return false;
  bool found = false;
  while (dirent* e = readdir(dir)) {
    struct stat st {};
    if (fstatat(dirfd(dir), e->d_name, &st, 0) == 0 && st.st_dev == want.st_dev &&
        st.st_ino == want.st_ino)
      found = true;
  }
  closedir(dir);
  return found;
}

// A foreground daemon waits up to 5 s for the lock of an image that is not
// mounted (its last daemon may still be writing back). Ctrl-C or SIGTERM in
// that wait ends it at once with a message and exit code 1, mounting
// nothing, though it blocks those signals before it opens the image (they
// end the session loop, fuse/main.cc). The test holds the lock itself.
// The process of a daemon that has the image open: pid itself (-f), or its
// child (a parent waiting for the child's verdict), 0 when none yet.
pid_t image_holder(pid_t pid, const std::string& image) {
  if (has_open(pid, image)) return pid;
  std::ifstream children("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  pid_t child = 0;
  while (children >> child)
    if (has_open(child, image)) return child;
  return 0;
}

// A stop signal to the daemon, or to the parent a background start leaves
// waiting (Ctrl-C), ends its wait of up to 5 s for the lock of an image
// that is still locked: exit 1, a clear message, nothing mounted.
TEST_F(PosixMount, StopSignalEndsTheWaitForTheImageLock) {
  unmount();
  const int held = open(image().c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(held, 0);
  ASSERT_EQ(flock(held, LOCK_SH), 0);
  const std::string prog = bin("poisonfs"), log = dir() + "/waiting.log";
  const char* const foreground[] = {"poisonfs", "-f", image().c_str(), mnt().c_str(), nullptr};
  const char* const background[] = {"poisonfs", image().c_str(), mnt().c_str(), nullptr};
  for (const char* const* argv : {foreground, background})
    for (int sig : {SIGINT, SIGTERM}) {
      const std::string what = std::string(argv == foreground ? "-f, " : "background, ") + strsignal(sig);
      const pid_t parent = getpid();
      std::fflush(nullptr);
      const pid_t pid = fork();
      if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);  // as the fixture's daemon
        if (getppid() != parent) _exit(1);
        int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
        execv(prog.c_str(), const_cast<char* const*>(argv));
        _exit(127);
      }
      ASSERT_GT(pid, 0) << std::strerror(errno);
      // Once it has the image open it is in the wait (or about to be).
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
      while (!image_holder(pid, image()) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      EXPECT_NE(image_holder(pid, image()), 0) << what << ": the daemon never opened the image";
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const auto sent = std::chrono::steady_clock::now();
      ASSERT_EQ(kill(pid, sig), 0);
      int status = 0;
      pid_t exited = 0;
      deadline = sent + std::chrono::seconds(10);
      while ((exited = waitpid(pid, &status, WNOHANG)) == 0 &&
             std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      const auto took = std::chrono::steady_clock::now() - sent;
      if (exited != pid) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
      }
      // It looks every 20 ms; the wait it must not finish is 5 s.
      EXPECT_LT(took, std::chrono::seconds(2)) << what << ": the daemon waited on";
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << what << ": wait status " << status;
      const std::string err = read_file(log);
      EXPECT_NE(err.find("interrupted while waiting for the image lock"), std::string::npos)
          << what << ": " << err;
      EXPECT_FALSE(mounted()) << what;
    }
  close(held);
  // The daemon a background start forked has let go of the image too.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!image_unlocked(image()) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(image_unlocked(image()));
  mount();  // TearDown unmounts it
}

TEST_F(PosixMount, MountHelperWorksWhenInstalled) {
  std::string installed;
  for (const char* d : {"/sbin", "/usr/sbin", "/usr/local/sbin", "/bin", "/usr/bin"}) {
    std::string p = std::string(d) + "/poisonfs";
    if (access(p.c_str(), X_OK) == 0) {
      installed = p;
      break;
    }
  }
  if (installed.empty()) GTEST_SKIP() << "poisonfs is not installed in a system path";
  ASSERT_EQ(write_file(path("f"), "via mount"), 0);
  unmount();
  RunResult r = run("mount -t fuse.poisonfs " + sh_quote(image()) + " " + sh_quote(mnt()));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  ASSERT_TRUE(mounted());
  EXPECT_EQ(read_file(path("f")), "via mount");
  r = run("umount " + sh_quote(mnt()));
  EXPECT_EQ(r.exit_code, 0) << r.both();
  unmount();
}

// ---------------------------------------------------------------------------
// Control ioctl

// The daemon raises its mount's readahead window from the kernel's 128 KiB
// to 1 MiB (sysfs, before it answers INIT; fuse/main.cc set_read_ahead).
TEST_F(PosixMount, ReadaheadWindowIsOneMiB) {
  struct stat st {};
  ASSERT_EQ(stat(mnt().c_str(), &st), 0);
  const std::string knob = "/sys/class/bdi/" + std::to_string(major(st.st_dev)) + ":" +
                           std::to_string(minor(st.st_dev)) + "/read_ahead_kb";
  EXPECT_EQ(read_file(knob), "1024\n") << knob;
}

TEST_F(PosixMount, StatIoctlReportsGeometry) {
  ASSERT_EQ(write_file(path("f"), random_bytes(MiB, 11)), 0);
  int fd = open(mnt().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  poisonfs_stat st{};
  ASSERT_EQ(ioctl(fd, POISONFS_IOC_STAT, &st), 0) << std::strerror(errno);
  close(fd);
  EXPECT_EQ(st.device_bytes, 256 * MiB);
  EXPECT_EQ(st.block_size, 4096u);
  EXPECT_EQ(st.total_blocks * st.block_size, st.device_bytes);
  EXPECT_GT(st.journal_blocks, 0u);
  EXPECT_GT(st.inode_count, 0u);
  EXPECT_GT(st.data_blocks, 0u);
  EXPECT_LE(st.data_start + st.data_blocks, st.total_blocks);
  EXPECT_LE(st.free_blocks + st.pending_free, st.data_blocks);
  EXPECT_LE(st.free_blocks + MiB / 4096, st.data_blocks);
  EXPECT_GE(st.inodes_used, 2u);  // root and f
  EXPECT_GE(st.version, 1u);
  size_t uuid_len = strnlen(st.uuid, sizeof st.uuid);
  EXPECT_EQ(uuid_len, 36u) << st.uuid;

  // On a regular file too.
  fd = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  poisonfs_stat again{};
  EXPECT_EQ(ioctl(fd, POISONFS_IOC_STAT, &again), 0) << std::strerror(errno);
  EXPECT_EQ(again.device_bytes, st.device_bytes);
  // An unknown command.
  EXPECT_EQ(err_of(ioctl(fd, _IOR('P', 99, uint64_t), &again)), ENOTTY);
  close(fd);

  // A control operation: not for other users.
  std::string root = mnt();
  EXPECT_EQ(as_user(kNobody, kNogroup,
                    [&] {
                      int dfd = open(root.c_str(), O_RDONLY | O_DIRECTORY);
                      if (dfd < 0) return 100;
                      poisonfs_stat s{};
                      int e = err_of(ioctl(dfd, POISONFS_IOC_STAT, &s));
                      close(dfd);
                      return e;
                    }),
            EPERM);
}

// The same with libfuse's worker threads: the counts live under the core's
// lock, whichever thread serves a lookup or a forget.
class MultithreadMount : public MountTest {
 protected:
  std::string mount_options() const override { return "allow_other,multithread,max_threads=4"; }
};

TEST_F(MultithreadMount, HeldInodesOutliveTheirNames) {
  ASSERT_NO_FATAL_FAILURE(removed_working_directory(mnt()));
  ASSERT_NO_FATAL_FAILURE(o_path_keeps_unlinked_file(mnt()));
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

}  // namespace
}  // namespace poisonfs::test
