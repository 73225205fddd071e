// Tests of the two media implementations: the libpmem2 mapping of an image
// file (persistence across a reopen, private views that never write the
// image, the flock that refuses a second user, and the errors for bad paths)
// and the in-memory media the other unit tests run on. Images live in a fresh
// directory under /tmp that is removed even when a test fails.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "poisonfs/media.h"

namespace poisonfs {
namespace {

constexpr uint64_t kImageSize = 1 << 20;

// A directory under /tmp for the images of one test, removed on destruction.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/poisonfs-media-XXXXXX";
    const char* p = mkdtemp(tmpl);
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Creates a zero-filled image of the given size and returns its path.
  std::string image(const std::string& name, uint64_t size = kImageSize) const {
    std::string file = path + "/" + name;
    int fd = open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
      throw std::runtime_error("cannot create " + file);
    }
    close(fd);
    return file;
  }
};

std::vector<std::byte> pattern(size_t len, unsigned seed) {
  std::vector<std::byte> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<std::byte>((i * 131 + seed) & 0xFF);
  return v;
}

std::vector<std::byte> read_file(const std::string& file, uint64_t off, size_t len) {
  std::vector<std::byte> v(len);
  int fd = open(file.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(pread(fd, v.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
  close(fd);
  return v;
}

bool media_equals(const Media& m, uint64_t off, const std::vector<std::byte>& want) {
  return std::memcmp(m.at(off), want.data(), want.size()) == 0;
}

bool all_zero(const Media& m, uint64_t off, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (m.at(off)[i] != std::byte{0}) return false;
  }
  return true;
}

TEST(PmemMedia, SharedWritesPersistAcrossReopen) {
  TempDir dir;
  const std::string file = dir.image("img");
  const auto a = pattern(10000, 1);
  const auto b = pattern(4096, 2);
  {
    auto m = open_pmem_media(file, MapMode::kShared);
    ASSERT_TRUE(m.has_value()) << m.error().message;
    Media& media = **m;
    EXPECT_EQ(media.size(), kImageSize);
    EXPECT_FALSE(media.read_only());
    media.write(12345, a.data(), a.size());
    media.write(kImageSize - b.size(), b.data(), b.size());
    media.zero(12345 + 100, 50);
    media.flush(12345, a.size());
    media.flush(kImageSize - b.size(), b.size());
    media.drain();
    EXPECT_TRUE(media_equals(media, kImageSize - b.size(), b));
  }
  auto expect_a = a;
  std::memset(expect_a.data() + 100, 0, 50);
  EXPECT_EQ(read_file(file, 12345, a.size()), expect_a);

  auto m = open_pmem_media(file, MapMode::kShared);
  ASSERT_TRUE(m.has_value()) << m.error().message;
  EXPECT_TRUE(media_equals(**m, 12345, expect_a));
  EXPECT_TRUE(media_equals(**m, kImageSize - b.size(), b));
  EXPECT_TRUE(all_zero(**m, 0, 12345));
}

TEST(PmemMedia, PrivateWritesNeverReachTheImage) {
  TempDir dir;
  const std::string file = dir.image("img");
  const auto original = pattern(8192, 3);
  {
    auto m = open_pmem_media(file, MapMode::kShared);
    ASSERT_TRUE(m.has_value()) << m.error().message;
    (*m)->write(0, original.data(), original.size());
    (*m)->persist(0, original.size());
  }
  const auto changed = pattern(8192, 4);
  {
    auto m = open_pmem_media(file, MapMode::kPrivate);
    ASSERT_TRUE(m.has_value()) << m.error().message;
    Media& media = **m;
    EXPECT_TRUE(media.read_only());
    EXPECT_EQ(media.size(), kImageSize);
    EXPECT_TRUE(media_equals(media, 0, original));
    // Writes work, but only on the private copy.
    media.write(0, changed.data(), changed.size());
    media.zero(100000, 4096);
    media.persist(0, changed.size());
    EXPECT_TRUE(media_equals(media, 0, changed));
    EXPECT_EQ(read_file(file, 0, original.size()), original);
  }
  EXPECT_EQ(read_file(file, 0, original.size()), original);
}

TEST(PmemMedia, PrivateOpenNeedsOnlyReadPermission) {
  TempDir dir;
  const std::string file = dir.image("img");
  ASSERT_EQ(chmod(file.c_str(), 0444), 0);
  auto m = open_pmem_media(file, MapMode::kPrivate);
  ASSERT_TRUE(m.has_value()) << m.error().message;
  const auto data = pattern(100, 5);
  (*m)->write(0, data.data(), data.size());
  EXPECT_TRUE(media_equals(**m, 0, data));
}

TEST(PmemMedia, SecondSharedOpenIsRefusedWithClearMessage) {
  TempDir dir;
  const std::string file = dir.image("img");
  auto first = open_pmem_media(file, MapMode::kShared);
  ASSERT_TRUE(first.has_value()) << first.error().message;
  auto second = open_pmem_media(file, MapMode::kShared);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code, std::errc::device_or_resource_busy);
  EXPECT_EQ(second.error().message,
            file + ": image is in use (mounted, or open in another poisonfs tool)");
}

TEST(PmemMedia, PrivateOpenIsRefusedWhileSharedIsHeld) {
  TempDir dir;
  const std::string file = dir.image("img");
  auto shared = open_pmem_media(file, MapMode::kShared);
  ASSERT_TRUE(shared.has_value()) << shared.error().message;
  auto priv = open_pmem_media(file, MapMode::kPrivate);
  ASSERT_FALSE(priv.has_value());
  EXPECT_EQ(priv.error().code, std::errc::device_or_resource_busy);
}

TEST(PmemMedia, SharedOpenIsRefusedWhilePrivateIsHeldButPrivatesCoexist) {
  TempDir dir;
  const std::string file = dir.image("img");
  auto p1 = open_pmem_media(file, MapMode::kPrivate);
  ASSERT_TRUE(p1.has_value()) << p1.error().message;
  auto p2 = open_pmem_media(file, MapMode::kPrivate);
  ASSERT_TRUE(p2.has_value()) << p2.error().message;
  auto shared = open_pmem_media(file, MapMode::kShared);
  ASSERT_FALSE(shared.has_value());
  EXPECT_EQ(shared.error().code, std::errc::device_or_resource_busy);
}

TEST(PmemMedia, LockIsReleasedWithTheMedia) {
  TempDir dir;
  const std::string file = dir.image("img");
  {
    auto first = open_pmem_media(file, MapMode::kShared);
    ASSERT_TRUE(first.has_value()) << first.error().message;
  }
  auto again = open_pmem_media(file, MapMode::kShared);
  EXPECT_TRUE(again.has_value()) << again.error().message;
}

TEST(PmemMedia, MissingFileIsNoSuchFile) {
  TempDir dir;
  const std::string file = dir.path + "/absent";
  for (MapMode mode : {MapMode::kShared, MapMode::kPrivate}) {
    auto m = open_pmem_media(file, mode);
    ASSERT_FALSE(m.has_value());
    EXPECT_EQ(m.error().code, std::errc::no_such_file_or_directory);
    EXPECT_NE(m.error().message.find(file), std::string::npos) << m.error().message;
  }
}

TEST(PmemMedia, EmptyFileIsInvalidArgument) {
  TempDir dir;
  const std::string file = dir.image("empty", 0);
  auto m = open_pmem_media(file, MapMode::kShared);
  ASSERT_FALSE(m.has_value());
  EXPECT_EQ(m.error().code, std::errc::invalid_argument);
  EXPECT_EQ(m.error().message, file + ": empty file");
}

TEST(PmemMedia, DirectoryAndFifoAreInvalidArgument) {
  TempDir dir;
  const std::string fifo = dir.path + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  for (const std::string& path : {dir.path, fifo}) {
    for (MapMode mode : {MapMode::kShared, MapMode::kPrivate}) {
      auto m = open_pmem_media(path, mode);  // a FIFO must not block here
      ASSERT_FALSE(m.has_value());
      EXPECT_EQ(m.error().code, std::errc::invalid_argument);
      EXPECT_EQ(m.error().message, path + ": not a regular file or a device");
    }
  }
}

TEST(MemoryMedia, StartsZeroedAlignedAndRoundTrips) {
  auto m = make_memory_media(3 * 4096 + 17);
  EXPECT_EQ(m->size(), 3u * 4096 + 17);
  EXPECT_FALSE(m->read_only());
  EXPECT_TRUE(m->byte_granular());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m->base()) % 4096, 0u);
  EXPECT_TRUE(all_zero(*m, 0, m->size()));

  const auto data = pattern(5000, 6);
  m->write(17, data.data(), data.size());
  m->zero(1000, 24);
  m->persist(0, m->size());
  auto want = data;
  std::memset(want.data() + 1000 - 17, 0, 24);
  EXPECT_TRUE(media_equals(*m, 17, want));
  EXPECT_TRUE(all_zero(*m, 0, 17));
  EXPECT_TRUE(all_zero(*m, 17 + data.size(), m->size() - 17 - data.size()));
}

}  // namespace
}  // namespace poisonfs
