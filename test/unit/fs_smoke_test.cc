// Smoke test of the core on an in-memory device: the basic namespace and
// data operations, and that a remount sees the same state.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>

#include "poisonfs/filesystem.h"

namespace poisonfs {
namespace {

// Keeps the device alive across "remounts" by copying it.
struct Device {
  std::unique_ptr<Media> media = make_memory_media(64 << 20);
  std::unique_ptr<Media> clone() const {
    auto m = make_memory_media(media->size());
    m->write(0, media->base(), media->size());
    return m;
  }
};

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s)); }

std::string read_all(Filesystem& fs, Ino ino, size_t n) {
  std::string out(n, '\0');
  auto got = fs.read_copy(ino, 0, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(got.has_value());
  out.resize(got.value_or(0));
  return out;
}

TEST(FsSmoke, CreateWriteReadRemount) {
  Device dev;
  ASSERT_TRUE(Filesystem::format(*dev.media, {}));
  Caller c{1000, 1000, 022};
  Ino file = 0;
  {
    auto fs = Filesystem::mount(dev.clone(), {});
    ASSERT_TRUE(fs) << fs.error().to_string();
    auto dir = (*fs)->mkdir(kRootIno, "d", 0777, c);
    ASSERT_TRUE(dir);
    EXPECT_EQ(dir->mode, S_IFDIR | 0755u);
    auto f = (*fs)->mknod(dir->ino, "f", S_IFREG | 0644, 0, c);
    ASSERT_TRUE(f);
    file = f->ino;
    ASSERT_EQ(*(*fs)->write(file, 0, bytes("hello")), 5u);
    ASSERT_EQ(*(*fs)->write(file, 10000, bytes("world")), 5u);
    EXPECT_EQ((*fs)->getattr(file)->size, 10005u);
    std::string content = read_all(**fs, file, 20000);
    ASSERT_EQ(content.size(), 10005u);
    EXPECT_EQ(content.substr(0, 5), "hello");
    EXPECT_EQ(content.substr(5, 9995), std::string(9995, '\0'));
    EXPECT_EQ(content.substr(10000), "world");
    auto l = (*fs)->symlink(kRootIno, "link", "d/f", c);
    ASSERT_TRUE(l);
    EXPECT_EQ(*(*fs)->readlink(l->ino), "d/f");
    ASSERT_TRUE((*fs)->setxattr(file, "user.k", "v", 0));
    ASSERT_TRUE((*fs)->rename(dir->ino, "f", kRootIno, "g", 0));
    ASSERT_TRUE((*fs)->unmount());
  }
}

TEST(FsSmoke, StatePersistsAcrossRemount) {
  auto media = make_memory_media(64 << 20);
  Media* raw = media.get();
  ASSERT_TRUE(Filesystem::format(*raw, {}));
  auto fs = Filesystem::mount(std::move(media), {});
  ASSERT_TRUE(fs) << fs.error().to_string();
  Caller c{0, 0, 0};
  auto f = (*fs)->mknod(kRootIno, "file", S_IFREG | 0600, 0, c);
  ASSERT_TRUE(f);
  std::string data(300000, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
  ASSERT_EQ(*(*fs)->write(f->ino, 0, bytes(data)), data.size());
  ASSERT_TRUE((*fs)->setxattr(f->ino, "user.color", "blue", 0));
  ASSERT_TRUE((*fs)->mkdir(kRootIno, "sub", 0755, c));
  ASSERT_TRUE((*fs)->unmount());
  // Remount a copy of the bytes.
  auto copy = make_memory_media(raw->size());
  copy->write(0, raw->base(), raw->size());
  fs->reset();
  auto fs2 = Filesystem::mount(std::move(copy), {});
  ASSERT_TRUE(fs2) << fs2.error().to_string();
  auto a = (*fs2)->lookup(kRootIno, "file");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->size, data.size());
  EXPECT_EQ(read_all(**fs2, a->ino, data.size()), data);
  EXPECT_EQ(*(*fs2)->getxattr(a->ino, "user.color"), "blue");
  EXPECT_TRUE((*fs2)->lookup(kRootIno, "sub"));
  EXPECT_EQ((*fs2)->getattr(kRootIno)->nlink, 3u);
  ASSERT_TRUE((*fs2)->unlink(kRootIno, "file"));
  EXPECT_FALSE((*fs2)->lookup(kRootIno, "file"));
}

}  // namespace
}  // namespace poisonfs
