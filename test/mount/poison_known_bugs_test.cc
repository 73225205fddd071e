// Two core bugs the concurrent stress (scripts/stress.sh) found, both fixed
// and kept as regression tests: latent poison in a freed block ate the next
// file's data (FsImpl::allocate_clean clears latent poison under new
// blocks), and a recovery write(2) the kernel split into pieces failed with
// EIO, because each piece alone had to cover the poisoned units it touches
// (a page-cache piece that stops inside a poisoned unit is now joined to the
// next one: Filesystem::write, WriteOrigin).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <string>

#include "mount/mount_fixture.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::test {
namespace {

constexpr size_t kBlock = 4096;

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

class PoisonKnownBugs : public MountTest {
 protected:
  bool write_file(const std::string& p, const std::string& data) {
    int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    bool ok = pwrite(fd, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()) && fsync(fd) == 0;
    close(fd);
    return ok;
  }
  // The device offset of the file's first block.
  uint64_t physical(const std::string& p) {
    int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
    auto map = std::make_unique<poisonfs_bmap>();
    std::memset(map.get(), 0, sizeof *map);
    EXPECT_EQ(ioctl(fd, POISONFS_IOC_BMAP, map.get()), 0) << std::strerror(errno);
    close(fd);
    return map->count > 0 ? map->recs[0].physical : 0;
  }
  void inject(uint64_t offset, uint64_t length, bool latent) {
    int fd = open(mnt().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    poisonfs_inject args{};
    args.offset = offset;
    args.length = length;
    args.flags = latent ? POISONFS_POISON_LATENT : 0;
    EXPECT_EQ(ioctl(fd, POISONFS_IOC_INJECT, &args), 0) << std::strerror(errno);
    close(fd);
  }
};

// Latent poison is unknown to the filesystem, so a file freed over it does
// not quarantine its block: the block is handed out again. The new file's
// data must read back (the stress saw reads of never-poisoned files fail
// with EIO before new blocks were cleared on allocation).
TEST_F(PoisonKnownBugs, LatentPoisonInAFreedBlockDoesNotEatTheNextFilesData) {
  const std::string old_file = path("old"), new_file = path("new");
  ASSERT_TRUE(write_file(old_file, random_bytes(16 * kBlock, 1)));
  const uint64_t block = physical(old_file);
  inject(block + 2 * kBlock, 64, true);
  ASSERT_EQ(unlink(old_file.c_str()), 0);
  remount();  // the checkpoint returns the freed blocks to the allocator
  const std::string data = random_bytes(16 * kBlock, 2);
  ASSERT_TRUE(write_file(new_file, data));
  ASSERT_EQ(physical(new_file), block) << "the allocator no longer reuses the block: adapt the test";
  remount();  // drop the page cache
  int fd = open(new_file.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string back(data.size(), '\0');
  ssize_t n = pread(fd, back.data(), back.size(), 0);
  int err = errno;
  close(fd);
  EXPECT_EQ(n, static_cast<ssize_t>(data.size())) << std::strerror(err);
  EXPECT_TRUE(n < 0 || back == data);
}

// A recovery write(2) that covers the poisoned units (known or latent) can reach the daemon in
// pieces: when the user's buffer crosses a page that is not mapped yet, the
// kernel's buffered write copies up to that page, sends what it has (the
// page-cache folio is not uptodate) and continues in a second request.
// Here: a whole-block pwrite from a buffer whose first 904 bytes lie on a
// mapped page and the rest on a shared-memory page not mapped at the moment
// (the stress had its model in shared memory): the first piece stops inside
// the poisoned unit [896, 960). The write must recover the block, however
// the kernel cuts it, and close(2) must succeed.
// The daemon logs every request (-o debug): the test sees that the kernel
// did cut the write.
class PoisonSplitWrite : public PoisonKnownBugs {
 protected:
  std::string mount_options() const override { return "allow_other,debug"; }
};

size_t count_of(std::string_view text, std::string_view what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string_view::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

TEST_F(PoisonSplitWrite, RecoveryWriteSplitByTheKernelRecovers) {
  const std::string f = path("f");
  const std::string data = random_bytes(16 * kBlock, 3);
  ASSERT_TRUE(write_file(f, data));
  inject(physical(f) + 4 * kBlock + 832, 2304, true);
  remount();  // nothing cached: the kernel makes a new folio, not uptodate
  // The source: 904 bytes at the end of a mapped page, the rest on a page
  // of shared memory that is present but not mapped in this process.
  const size_t shift = kBlock - 904;
  auto* shm = static_cast<char*>(mmap(nullptr, 2 * kBlock, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(shm, MAP_FAILED);
  std::memcpy(shm + shift, data.data() + 4 * kBlock, kBlock);
  ASSERT_EQ(madvise(shm + kBlock, kBlock, MADV_DONTNEED), 0);  // unmaps; shmem keeps the page
  int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const size_t logged = daemon_log().size();
  ssize_t n = pwrite(fd, shm + shift, kBlock, 4 * kBlock);
  int err = errno;
  EXPECT_EQ(close(fd), 0) << std::strerror(errno);
  EXPECT_GE(count_of(daemon_log().substr(logged), "opcode: WRITE"), 2u) << "the kernel did not cut the write";
  munmap(shm, 2 * kBlock);
  EXPECT_EQ(n, static_cast<ssize_t>(kBlock)) << std::strerror(err);
  remount();  // the bytes come from the image, not the page cache
  EXPECT_EQ(read_file(f), data);
}

}  // namespace
}  // namespace poisonfs::test
