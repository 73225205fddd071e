// Sparse files through the mount: lseek's SEEK_DATA and SEEK_HOLE reach the
// daemon (FUSE_LSEEK), so `cp` and `tar -S` find the holes and keep them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "mount/mount_fixture.h"

namespace poisonfs::test {
namespace {

class SparseMount : public MountTest {
 protected:
  static constexpr off_t kMiB = 1 << 20;
  // f: 64 KiB of data at 0 and at 5 MiB, 16 MiB long (a hole at the end).
  void make_sparse(const std::string& f) {
    int fd = open(f.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    const std::string chunk(64 << 10, 'd');
    ASSERT_EQ(pwrite(fd, chunk.data(), chunk.size(), 0), ssize_t(chunk.size()));
    ASSERT_EQ(pwrite(fd, chunk.data(), chunk.size(), 5 * kMiB), ssize_t(chunk.size()));
    ASSERT_EQ(ftruncate(fd, 16 * kMiB), 0);
    close(fd);
  }
};

TEST_F(SparseMount, SeekDataAndSeekHoleFindTheExtents) {
  make_sparse(path("f"));
  int fd = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_HOLE), 64 << 10);
  EXPECT_EQ(lseek(fd, 100 << 10, SEEK_DATA), 5 * kMiB);
  EXPECT_EQ(lseek(fd, 5 * kMiB + 7, SEEK_DATA), 5 * kMiB + 7);
  EXPECT_EQ(lseek(fd, 5 * kMiB, SEEK_HOLE), 5 * kMiB + (64 << 10));
  errno = 0;
  EXPECT_EQ(lseek(fd, 6 * kMiB, SEEK_DATA), -1) << "only the final hole follows";
  EXPECT_EQ(errno, ENXIO);
  EXPECT_EQ(lseek(fd, 6 * kMiB, SEEK_HOLE), 6 * kMiB);
  errno = 0;
  EXPECT_EQ(lseek(fd, 16 * kMiB, SEEK_HOLE), -1) << "at the end";
  EXPECT_EQ(errno, ENXIO);
  close(fd);
}

// A negative offset is past no end, but Linux answers ENXIO for it (ext4,
// XFS, tmpfs and the generic lseek alike), not EINVAL.
TEST_F(SparseMount, SeekFromANegativeOffsetIsENXIO) {
  make_sparse(path("f"));
  int fd = open(path("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (int whence : {SEEK_DATA, SEEK_HOLE}) {
    for (off_t off : {off_t{-1}, off_t{-kMiB}}) {
      errno = 0;
      EXPECT_EQ(lseek(fd, off, whence), -1) << whence << " " << off;
      EXPECT_EQ(errno, ENXIO) << whence << " " << off;
    }
  }
  EXPECT_EQ(lseek(fd, 0, SEEK_CUR), 0) << "the position stays";
  close(fd);
}

// Runs cp without fork(): a forked copy of this process would close its
// copy of a mapping at exec, and FUSE writes the file's dirty pages back
// then (fuse_vma_close). Returns cp's wait status.
int spawn_cp(const std::string& from, const std::string& to) {
  const char* argv[] = {"cp", from.c_str(), to.c_str(), nullptr};
  pid_t pid = -1;
  if (posix_spawnp(&pid, "cp", nullptr, nullptr, const_cast<char* const*>(argv), environ) != 0)
    return -1;
  int status = -1;
  waitpid(pid, &status, 0);
  return status;
}

// Bytes stored through a shared mapping are data before they reach the
// image (the kernel writes them back later, and sends FUSE_LSEEK without
// writing them back first): a copy made meanwhile must not lose them.
TEST_F(SparseMount, DirtyMappedPagesAreData) {
  const std::string f = path("mapped");
  int fd = open(f.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4 * kMiB), 0);
  void* map = mmap(nullptr, 4 * kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  char* bytes = static_cast<char*>(map);
  std::memcpy(bytes + 2 * kMiB, "mapped", 6);  // no msync
  EXPECT_EQ(spawn_cp(f, path("copy")), 0);
  const std::string copy = read_file(path("copy"));
  EXPECT_EQ(copy.substr(2 * kMiB, 6), "mapped") << "the copy lost the mapped bytes";
  EXPECT_TRUE(copy == read_file(f));
  std::memcpy(bytes + 3 * kMiB, "again", 5);
  EXPECT_EQ(lseek(fd, 2 * kMiB + 4096, SEEK_DATA), 3 * kMiB);
  EXPECT_EQ(lseek(fd, 3 * kMiB, SEEK_HOLE), 3 * kMiB + 4096);
  munmap(map, 4 * kMiB);
  close(fd);
}

// Pages resident in the page cache among the first `pages` of fd's file.
size_t resident_pages(int fd, size_t pages) {
  const size_t len = pages * 4096;
  void* map = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return 0;
  std::vector<unsigned char> in(pages);
  size_t n = 0;
  if (mincore(map, len, in.data()) == 0)
    for (unsigned char c : in) n += c & 1;
  munmap(map, len);
  return n;
}

// A file nobody has open for writing has no pages dirtied through a mapping
// (WritableOpens): SEEK_DATA and SEEK_HOLE leave its cache alone, so `cp`
// or `tar -S` of a cached file do not make its next reader go to the image.
TEST_F(SparseMount, SeekingAFileNoOneWritesKeepsItsCache) {
  make_sparse(path("f"));
  int fd = open(path("f").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string buf(64 << 10, '\0');
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), 0), ssize_t(buf.size()));
  ASSERT_EQ(resident_pages(fd, 16), 16u);
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_HOLE), 64 << 10);
  EXPECT_EQ(resident_pages(fd, 16), 16u) << "SEEK_DATA/SEEK_HOLE dropped the cache";
  // Open for writing elsewhere: the cache goes (dirty pages are written back).
  int writer = open(path("f").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(writer, 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 0);
  EXPECT_EQ(resident_pages(fd, 16), 0u);
  close(writer);
  close(fd);
}

TEST_F(SparseMount, CpKeepsTheHoles) {
  make_sparse(path("f"));
  RunResult r = run("cp " + sh_quote(path("f")) + " " + sh_quote(path("g")));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_EQ(read_file(path("g")), read_file(path("f")));
  struct stat st {};
  ASSERT_EQ(stat(path("g").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 16 * kMiB);
  // 128 KiB of data and the extent chain; a copy that filled the holes
  // would take 16 MiB.
  EXPECT_LT(st.st_blocks * 512, 1 * kMiB) << st.st_blocks << " blocks of 512 bytes";
  int fd = open(path("g").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(lseek(fd, 100 << 10, SEEK_DATA), 5 * kMiB);
  close(fd);
  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

}  // namespace
}  // namespace poisonfs::test
