// Regression tests of the findings of the image fuzzer (scripts/fuzz.sh),
// each as a direct edit of a small image; the fuzzer's own reproducers are
// in test/fuzz/regressions/ (run by fuzz_corpus_test.cc).
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <string>

#include "format/layout.h"
#include "poisonfs/filesystem.h"

namespace poisonfs {
namespace {

constexpr uint64_t kDevice = 4 << 20;
const Caller kUser{1000, 1000, 022};

std::unique_ptr<Media> copy_of(const Media& m) {
  auto c = make_memory_media(m.size());
  c->write(0, m.base(), m.size());
  return c;
}

// An unmounted image with "/dir/sub" and "/other".
struct Image {
  std::unique_ptr<Media> media = make_memory_media(kDevice);
  Superblock sb;
  Ino dir = 0, sub = 0, other = 0;

  Image() {
    EXPECT_TRUE(Filesystem::format(*media, {}));
    auto fs = Filesystem::mount(borrow_media(*media), {});
    EXPECT_TRUE(fs);
    dir = (*fs)->mkdir(kRootIno, "dir", 0755, kUser)->ino;
    sub = (*fs)->mkdir(dir, "sub", 0755, kUser)->ino;
    other = (*fs)->mkdir(kRootIno, "other", 0755, kUser)->ino;
    EXPECT_TRUE((*fs)->unmount());
    sb = *decode_superblock(media->at(0), media->size());
  }
  InodeRec inode(Ino ino) const { return **decode_inode(media->at(inode_offset(sb, ino))); }
  void put_inode(const InodeRec& rec) {
    std::byte buf[kInodeSize];
    encode_inode(rec, buf);
    media->write(inode_offset(sb, rec.ino), buf, kInodeSize);
  }
  // Adds the name `name` -> ino in the first empty slot of directory `in`,
  // which must have a dirent block (a name in it).
  void add_name(Ino in, const std::string& name, Ino ino) {
    uint64_t block = inode(in).chain_head;
    ASSERT_NE(block, 0u);
    for (uint32_t i = 0; i < slots_per_block(ChainKind::kDirents); ++i) {
      uint64_t off = slot_offset(block, i, kDirentSlotSize);
      if (!all_zero(media->at(off), kDirentSlotSize)) continue;
      std::byte buf[kDirentSlotSize];
      encode_dirent(DirentRec{ino, DT_DIR, name}, buf);
      media->write(off, buf, kDirentSlotSize);
      return;
    }
    FAIL() << "no free dirent slot";
  }
  Result<std::unique_ptr<Filesystem>> mount() const { return Filesystem::mount(copy_of(*media), {}); }
  CheckReport check(bool repair) {
    auto report = check_filesystem(*media, repair);
    EXPECT_TRUE(report) << report.error().to_string();
    return report.value_or(CheckReport{});
  }
};

bool mentions(const CheckReport& report, const std::string& what) {
  for (const std::string& p : report.problems)
    if (p.find(what) != std::string::npos) return true;
  return false;
}

// Finding 1: a directory's parent field is trusted by rename (is_ancestor
// walks up by it), so a parent out of the inode table read past the table
// (UBSan: pointer overflow in std::vector::operator[]). Now the mount
// refuses a parent that is not the directory naming it, and fsck resets it.
TEST(FuzzRegression, DirectoryParentOutOfRangeIsRefusedAndRepaired) {
  Image img;
  InodeRec rec = img.inode(img.sub);
  rec.parent = UINT64_MAX;
  img.put_inode(rec);
  auto mounted = img.mount();
  ASSERT_FALSE(mounted);
  EXPECT_NE(mounted.error().message.find("fsck"), std::string::npos);
  EXPECT_TRUE(mentions(img.check(false), "has parent"));
  auto repaired = img.check(true);
  EXPECT_FALSE(repaired.repairs.empty());
  EXPECT_EQ(img.inode(img.sub).parent, img.dir);
  EXPECT_TRUE(img.check(false).clean());
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  // The walk up from a directory works again: sub cannot move below itself.
  ASSERT_TRUE((*fs)->rename(kRootIno, "other", img.sub, "moved", 0));
  auto below = (*fs)->rename(img.dir, "sub", img.other, "x", 0);
  ASSERT_FALSE(below);
  EXPECT_EQ(below.error().code, std::errc::invalid_argument);
}

// A parent field that names a live directory other than the one naming it
// would send is_ancestor around a loop (dir's parent is sub, sub's is dir).
TEST(FuzzRegression, DirectoryParentLoopIsRefused) {
  Image img;
  InodeRec rec = img.inode(img.dir);
  rec.parent = img.sub;
  img.put_inode(rec);
  ASSERT_FALSE(img.mount());
  img.check(true);
  EXPECT_EQ(img.inode(img.dir).parent, kRootIno);
  EXPECT_TRUE(img.check(false).clean());
}

// A second name for a directory (or any name for the root) makes a loop of
// names; it is refused at mount and cleared by fsck, keeping the name in
// the directory the parent field names.
TEST(FuzzRegression, SecondNameOfADirectoryIsRefusedAndCleared) {
  Image img;
  img.add_name(img.dir, "alias", img.other);
  img.add_name(img.dir, "root", kRootIno);
  ASSERT_FALSE(img.mount());
  auto report = img.check(false);
  EXPECT_TRUE(mentions(report, "'alias' -> directory")) << ::testing::PrintToString(report.problems);
  EXPECT_TRUE(mentions(report, "'root' -> directory")) << ::testing::PrintToString(report.problems);
  img.check(true);
  EXPECT_TRUE(img.check(false).clean()) << ::testing::PrintToString(img.check(false).problems);
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  EXPECT_TRUE((*fs)->lookup(kRootIno, "other"));
  EXPECT_FALSE((*fs)->lookup(img.dir, "alias"));
  EXPECT_FALSE((*fs)->lookup(img.dir, "root"));
  EXPECT_EQ((*fs)->getattr(img.dir)->nlink, 3u);  // ".", its name, sub's ".."
}

// Finding 2: readlink allocates the symlink's size, so a symlink inode of
// 2^52 bytes made the walk abort (ASan: allocation size too big; a plain
// build throws std::bad_alloc out of the daemon). Targets are shorter than
// a block, so decode_inode rejects a symlink of a block or more.
TEST(FuzzRegression, SymlinkOfABlockOrMoreIsAnImpossibleInode) {
  InodeRec r;
  r.flags = kInodeInUse;
  r.ino = 2;
  r.mode = S_IFLNK | 0777;
  r.nlink = 1;
  std::byte buf[kInodeSize];
  for (uint64_t size : {uint64_t{0}, uint64_t{kBlockSize - 1}}) {
    r.size = size;
    encode_inode(r, buf);
    EXPECT_TRUE(decode_inode(buf)) << size;
  }
  for (uint64_t size : {uint64_t{kBlockSize}, kMaxFileSize}) {
    r.size = size;
    encode_inode(r, buf);
    EXPECT_FALSE(decode_inode(buf)) << size;
  }
  r.mode = S_IFREG | 0644;  // a sparse regular file may be that big
  encode_inode(r, buf);
  EXPECT_TRUE(decode_inode(buf));
}

TEST(FuzzRegression, HugeSymlinkIsRefusedAtMountAndClearedByFsck) {
  Image img;
  Ino link = 0;
  {
    auto fs = Filesystem::mount(borrow_media(*img.media), {});
    ASSERT_TRUE(fs);
    link = (*fs)->symlink(kRootIno, "link", "dir/sub", kUser)->ino;
    ASSERT_TRUE((*fs)->unmount());
  }
  InodeRec rec = img.inode(link);
  rec.size = kMaxFileSize;
  img.put_inode(rec);
  ASSERT_FALSE(img.mount());
  img.check(true);
  EXPECT_TRUE(img.check(false).clean()) << ::testing::PrintToString(img.check(false).problems);
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  EXPECT_FALSE((*fs)->lookup(kRootIno, "link"));
}

// Finding 3: an inode with fewer links than names was freed while named -
// at mount as an orphan when nlink was 0, at the next unlink otherwise -
// and the names left pointed at nothing (UBSan: reference binding to null
// in lookup). Now such an image is refused at mount; fsck sets the count.
TEST(FuzzRegression, NamedInodeWithNlinkZeroIsRefusedNotReclaimed) {
  Image img;
  InodeRec rec = img.inode(img.sub);
  rec.nlink = 0;
  img.put_inode(rec);
  auto mounted = img.mount();
  ASSERT_FALSE(mounted);
  EXPECT_NE(mounted.error().message.find("fsck"), std::string::npos);
  img.check(true);
  EXPECT_EQ(img.inode(img.sub).nlink, 2u);
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  EXPECT_TRUE((*fs)->lookup(img.dir, "sub"));
}

TEST(FuzzRegression, FileWithFewerLinksThanNamesIsRefused) {
  Image img;
  Ino file = 0;
  {
    auto fs = Filesystem::mount(borrow_media(*img.media), {});
    ASSERT_TRUE(fs);
    file = (*fs)->mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser)->ino;
    ASSERT_TRUE((*fs)->link(file, img.dir, "g"));
    ASSERT_TRUE((*fs)->unmount());
  }
  InodeRec rec = img.inode(file);
  rec.nlink = 1;
  img.put_inode(rec);
  ASSERT_FALSE(img.mount());
  img.check(true);
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  ASSERT_TRUE((*fs)->unlink(kRootIno, "f"));
  auto other = (*fs)->lookup(img.dir, "g");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->nlink, 1u);
}

}  // namespace
}  // namespace poisonfs
