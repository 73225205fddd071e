// SEEK_DATA and SEEK_HOLE (Filesystem::seek): what `cp`, `tar -S` and
// `rsync -S` use to skip holes. Holes, unwritten (preallocated) extents and
// the end of the file are holes; answers are in whole blocks.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <string_view>

#include "poisonfs/filesystem.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

const Caller kUser{1000, 1000, 022};
constexpr uint64_t kB = kBlockSize;

class Seek : public ::testing::Test {
 protected:
  testing::TestDevice fs{64 << 20, {}};
  Ino file = 0;

  void SetUp() override {
    auto a = fs->mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser);
    ASSERT_TRUE(a);
    file = a->ino;
  }
  void write_at(uint64_t off, std::string_view s) {
    auto n = fs->write(file, off, std::as_bytes(std::span(s)));
    ASSERT_TRUE(n && *n == s.size());
  }
  uint64_t data(uint64_t off) { return at(off, SeekFor::kData); }
  uint64_t hole(uint64_t off) { return at(off, SeekFor::kHole); }
  uint64_t at(uint64_t off, SeekFor what) {
    auto to = fs->seek(file, off, what);
    EXPECT_TRUE(to) << off << ": " << (to ? "" : to.error().to_string());
    return to.value_or(~0ull);
  }
  std::errc error_at(uint64_t off, SeekFor what) {
    auto to = fs->seek(file, off, what);
    EXPECT_FALSE(to) << off << " -> " << to.value_or(0);
    return to ? std::errc{} : to.error().code;
  }
};

TEST_F(Seek, AFileWithoutHolesIsDataUpToItsEnd) {
  write_at(0, std::string(3 * kB + 100, 'x'));
  EXPECT_EQ(data(0), 0u);
  EXPECT_EQ(data(kB + 7), kB + 7);
  EXPECT_EQ(hole(0), 3 * kB + 100) << "the end of the file is a hole";
  EXPECT_EQ(hole(3 * kB + 99), 3 * kB + 100);
  EXPECT_EQ(error_at(3 * kB + 100, SeekFor::kData), std::errc::no_such_device_or_address);
  EXPECT_EQ(error_at(3 * kB + 100, SeekFor::kHole), std::errc::no_such_device_or_address);
}

TEST_F(Seek, HolesBetweenDataAreFoundInWholeBlocks) {
  write_at(0, std::string(2 * kB, 'a'));        // data [0, 2B)
  write_at(10 * kB + 5, std::string(kB, 'b'));  // data [10B, 12B) (block-aligned)
  write_at(40 * kB, "end");                     // data [40B, 40B+3)
  EXPECT_EQ(hole(0), 2 * kB);
  EXPECT_EQ(hole(kB + 1), 2 * kB);
  EXPECT_EQ(hole(2 * kB), 2 * kB);
  EXPECT_EQ(hole(5 * kB + 3), 5 * kB + 3) << "inside a hole: where it is";
  EXPECT_EQ(data(2 * kB), 10 * kB);
  EXPECT_EQ(data(5 * kB + 3), 10 * kB);
  EXPECT_EQ(data(10 * kB + 9), 10 * kB + 9);
  EXPECT_EQ(hole(10 * kB), 12 * kB);
  EXPECT_EQ(data(12 * kB), 40 * kB);
  EXPECT_EQ(hole(40 * kB), 40 * kB + 3);
}

TEST_F(Seek, AFileThatIsAllHoleHasNoData) {
  SetAttr grow;
  grow.valid = SetAttr::kSize;
  grow.size = 1 << 20;
  ASSERT_TRUE(fs->setattr(file, grow, kUser));
  EXPECT_EQ(error_at(0, SeekFor::kData), std::errc::no_such_device_or_address);
  EXPECT_EQ(hole(0), 0u);
  EXPECT_EQ(hole(12345), 12345u);
}

TEST_F(Seek, PreallocatedBlocksAreHolesUntilWritten) {
  ASSERT_TRUE(fs->fallocate(file, 0, 0, 8 * kB));
  EXPECT_EQ(error_at(0, SeekFor::kData), std::errc::no_such_device_or_address);
  EXPECT_EQ(hole(0), 0u);
  write_at(3 * kB, std::string(kB, 'w'));
  EXPECT_EQ(data(0), 3 * kB);
  EXPECT_EQ(hole(3 * kB), 4 * kB);
  EXPECT_EQ(error_at(4 * kB, SeekFor::kData), std::errc::no_such_device_or_address);
}

TEST_F(Seek, DataPastTheEndIsNotReported) {
  write_at(0, "abc");
  // KEEP_SIZE preallocation past the end: unwritten, and past the end.
  ASSERT_TRUE(fs->fallocate(file, kFallocKeepSize, kB, 4 * kB));
  EXPECT_EQ(data(0), 0u);
  EXPECT_EQ(hole(0), 3u);
  EXPECT_EQ(error_at(3, SeekFor::kData), std::errc::no_such_device_or_address);
}

TEST_F(Seek, PunchedAndReflinkedRangesAnswerByTheirExtents) {
  write_at(0, std::string(8 * kB, 'p'));
  ASSERT_TRUE(fs->fallocate(file, kFallocKeepSize | kFallocPunchHole, 2 * kB, 3 * kB));
  EXPECT_EQ(hole(0), 2 * kB);
  EXPECT_EQ(data(2 * kB), 5 * kB);
  auto copy = fs->mknod(kRootIno, "copy", S_IFREG | 0644, 0, kUser);
  ASSERT_TRUE(copy);
  ASSERT_TRUE(fs->copy_range(file, 0, copy->ino, 0, 8 * kB));
  auto in_copy = fs->seek(copy->ino, 0, SeekFor::kHole);
  ASSERT_TRUE(in_copy);
  EXPECT_EQ(*in_copy, 2 * kB) << "the clone shares the holes too";
}

TEST_F(Seek, OnlyRegularFilesAnswer) {
  EXPECT_EQ(fs->seek(kRootIno, 0, SeekFor::kData).error().code, std::errc::invalid_argument);
  EXPECT_EQ(fs->seek(999999, 0, SeekFor::kData).error().code, std::errc::no_such_file_or_directory);
}

}  // namespace
}  // namespace poisonfs
