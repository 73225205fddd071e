// Two core bugs the concurrent stress (scripts/stress.sh) found, both fixed
// and kept as regression tests: latent poison in a freed block ate the next
// file's data (FsImpl::allocate_clean clears latent poison under new
// blocks), and a recovery write(2) the kernel split into pieces failed with
// EIO, because each piece alone had to cover the poisoned units it touches
// (a page-cache piece that stops inside a poisoned unit is now joined to the
// next one: Filesystem::write, OpenFileId).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

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

// The sizes of the WRITE requests in a libfuse debug log ("opcode: WRITE
// (16), nodeid: N, insize: S"): S less the two headers.
std::vector<size_t> write_sizes(std::string_view log) {
  constexpr size_t kHeaders = 80;  // fuse_in_header + fuse_write_in
  std::vector<size_t> out;
  for (size_t at = log.find("opcode: WRITE"); at != std::string_view::npos; at = log.find("opcode: WRITE", at + 1)) {
    size_t in = log.find("insize: ", at);
    if (in == std::string_view::npos) break;
    out.push_back(std::stoul(std::string(log.substr(in + 8, 12))) - kHeaders);
  }
  return out;
}

// A whole-block recovery pwrite from a source whose first `first` bytes end
// a mapped page and whose rest lies on a page of shared memory present but
// not mapped in this process: the kernel cuts it after `first` bytes.
class SplitSource {
 public:
  SplitSource(std::string_view block, size_t first) : shift_(kBlock - first) {
    mem_ = static_cast<char*>(mmap(nullptr, 2 * kBlock, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    if (mem_ == MAP_FAILED) return;
    std::memcpy(mem_ + shift_, block.data(), kBlock);
    unmap_second_page();
  }
  ~SplitSource() {
    if (ok()) munmap(mem_, 2 * kBlock);
  }
  bool ok() const { return mem_ != MAP_FAILED; }
  const char* data() const { return mem_ + shift_; }
  // Unmaps the second page again (shmem keeps it): the next write faults.
  void unmap_second_page() { madvise(mem_ + kBlock, kBlock, MADV_DONTNEED); }

 private:
  size_t shift_;
  char* mem_ = static_cast<char*>(MAP_FAILED);
};

TEST_F(PoisonSplitWrite, RecoveryWriteSplitByTheKernelRecovers) {
  const std::string f = path("f");
  const std::string data = random_bytes(16 * kBlock, 3);
  ASSERT_TRUE(write_file(f, data));
  inject(physical(f) + 4 * kBlock + 832, 2304, true);
  remount();  // nothing cached: the kernel makes a new folio, not uptodate
  SplitSource source(std::string_view(data).substr(4 * kBlock, kBlock), 904);
  ASSERT_TRUE(source.ok());
  int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const size_t logged = daemon_log().size();
  ssize_t n = pwrite(fd, source.data(), kBlock, 4 * kBlock);
  int err = errno;
  EXPECT_EQ(close(fd), 0) << std::strerror(errno);
  EXPECT_EQ(write_sizes(daemon_log().substr(logged)), (std::vector<size_t>{904, kBlock - 904}))
      << "the kernel did not cut the write where the source's mapped page ends";
  EXPECT_EQ(n, static_cast<ssize_t>(kBlock)) << std::strerror(err);
  remount();  // the bytes come from the image, not the page cache
  EXPECT_TRUE(read_file(f) == data) << "the file differs from what was written";
}

// Closes of other descriptors of the open file (dups) between the pieces
// of split recovery writes: each write must still recover its block (the
// dups' closes may fail; the writer's must not, nor lose a byte).
TEST_F(PoisonKnownBugs, ClosesOfDupsBetweenPiecesLoseNothing) {
  const std::string f = path("f");
  const std::string data = random_bytes(8 * kBlock, 4);
  ASSERT_TRUE(write_file(f, data));
  const uint64_t block = physical(f) + 2 * kBlock;
  SplitSource source(std::string_view(data).substr(2 * kBlock, kBlock), 904);
  ASSERT_TRUE(source.ok());
  inject(block + 832, 2304, false);
  int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);  // opened while poisoned: pieces are joined
  ASSERT_GE(fd, 0);
  std::atomic<bool> stop{false};
  std::thread closer([&] {
    while (!stop.load()) close(dup(fd));
  });
  int short_writes = 0;
  for (int round = 0; round < 40; ++round) {
    if (round > 0) inject(block + 832, 2304, false);  // drops the kernel's cached page too
    source.unmap_second_page();
    if (pwrite(fd, source.data(), kBlock, 2 * kBlock) != static_cast<ssize_t>(kBlock)) ++short_writes;
  }
  stop = true;
  closer.join();
  EXPECT_EQ(short_writes, 0);
  EXPECT_EQ(close(fd), 0) << std::strerror(errno);
  remount();
  EXPECT_TRUE(read_file(f) == data) << "the file differs from what was written";
}

}  // namespace
}  // namespace poisonfs::test
