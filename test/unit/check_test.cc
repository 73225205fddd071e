// Tests of check_filesystem (fsck, src/fs/check.cc): a fresh filesystem is
// clean; damaged inode records, names of freed inodes, wrong link counts,
// doubly owned blocks and a destroyed primary superblock are each reported,
// an ACL xattr the kernel could not read, a check without repair never
// changes a byte, and a repair leaves an image
// that checks clean and mounts; bytes that are not poisonfs are an error.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "format/layout.h"
#include "poisonfs/filesystem.h"

namespace poisonfs {
namespace {

constexpr uint64_t kDevice = 8 << 20;
const Caller kUser{1000, 1000, 022};

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s)); }

std::unique_ptr<Media> copy_of(const Media& m) {
  auto c = make_memory_media(m.size());
  c->write(0, m.base(), m.size());
  return c;
}

std::string read_all(Filesystem& fs, Ino ino) {
  std::string out(fs.getattr(ino)->size, '\0');
  auto n = fs.read_copy(ino, 0, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(n);
  return out;
}

// A small populated, unmounted image: "/keep" and "/victim" with data, and
// "/dir/inner" with an xattr.
struct Image {
  std::unique_ptr<Media> media;
  Superblock sb;
  Ino keep = 0, victim = 0, dir = 0, inner = 0;

  Image() {
    auto m = make_memory_media(kDevice);
    Media* device = m.get();
    EXPECT_TRUE(Filesystem::format(*m, {}));
    auto fs = Filesystem::mount(std::move(m), {});
    EXPECT_TRUE(fs);
    Filesystem& f = **fs;
    keep = f.mknod(kRootIno, "keep", S_IFREG | 0644, 0, kUser)->ino;
    EXPECT_TRUE(f.write(keep, 0, bytes(std::string(10000, 'k'))));
    victim = f.mknod(kRootIno, "victim", S_IFREG | 0644, 0, kUser)->ino;
    EXPECT_TRUE(f.write(victim, 0, bytes(std::string(20000, 'v'))));
    dir = f.mkdir(kRootIno, "dir", 0755, kUser)->ino;
    inner = f.mknod(dir, "inner", S_IFREG | 0644, 0, kUser)->ino;
    EXPECT_TRUE(f.setxattr(inner, "user.a", "b", 0));
    EXPECT_TRUE(f.unmount());
    media = copy_of(*device);
    sb = *decode_superblock(media->at(0), media->size());
  }

  std::vector<std::byte> bytes_now() const { return {media->base(), media->base() + media->size()}; }
  InodeRec inode(Ino ino) const { return **decode_inode(media->at(inode_offset(sb, ino))); }
  void put_inode(const InodeRec& rec) {
    std::byte buf[kInodeSize];
    encode_inode(rec, buf);
    media->write(inode_offset(sb, rec.ino), buf, kInodeSize);
  }
  void flip(uint64_t off) {
    std::byte b = *media->at(off) ^ std::byte{0x20};
    media->write(off, &b, 1);
  }
  Result<std::unique_ptr<Filesystem>> mount() const { return Filesystem::mount(copy_of(*media), {}); }
};

// A check without repair must not write: compares every byte.
CheckReport check_readonly(Image& img) {
  auto before = img.bytes_now();
  auto report = check_filesystem(*img.media, false);
  EXPECT_TRUE(report) << report.error().to_string();
  EXPECT_TRUE(img.bytes_now() == before) << "a check without repair changed the image";
  if (report) {
    EXPECT_TRUE(report->repairs.empty());
  }
  return report.value_or(CheckReport{});
}

CheckReport check_repair(Image& img) {
  auto report = check_filesystem(*img.media, true);
  EXPECT_TRUE(report) << report.error().to_string();
  return report.value_or(CheckReport{});
}

TEST(Check, FreshAndPopulatedFilesystemsAreClean) {
  auto m = make_memory_media(kDevice);
  ASSERT_TRUE(Filesystem::format(*m, {}));
  auto fresh = check_filesystem(*m, false);
  ASSERT_TRUE(fresh) << fresh.error().to_string();
  EXPECT_TRUE(fresh->clean()) << ::testing::PrintToString(fresh->problems);
  EXPECT_EQ(fresh->inodes, 1u);
  EXPECT_EQ(fresh->used_blocks, 0u);
  Image img;
  auto report = check_readonly(img);
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
  EXPECT_EQ(report.inodes, 5u);
  // keep: 3 data blocks, victim: 5; one extent chain block each; root and
  // dir: one dirent block each; inner: one xattr block.
  EXPECT_EQ(report.used_blocks, 3u + 5 + 2 + 2 + 1);
  // Repair on a clean image repairs nothing.
  auto again = check_repair(img);
  EXPECT_TRUE(again.clean());
  EXPECT_TRUE(again.repairs.empty());
}

TEST(Check, CorruptInodeRecordIsReportedAndCleared) {
  Image img;
  img.flip(inode_offset(img.sb, img.victim) + 40);
  auto mounted = img.mount();
  ASSERT_FALSE(mounted);  // refused, with a hint to run fsck
  EXPECT_NE(mounted.error().message.find("fsck"), std::string::npos);
  auto report = check_readonly(img);
  EXPECT_FALSE(report.clean());
  auto repaired = check_repair(img);
  EXPECT_FALSE(repaired.problems.empty());
  EXPECT_FALSE(repaired.repairs.empty());
  auto second = check_readonly(img);
  EXPECT_TRUE(second.clean()) << ::testing::PrintToString(second.problems);
  // The damaged file is gone (with its name); everything else is intact.
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  EXPECT_FALSE((*fs)->lookup(kRootIno, "victim"));
  EXPECT_EQ(read_all(**fs, img.keep), std::string(10000, 'k'));
  EXPECT_TRUE((*fs)->lookup(img.dir, "inner"));
  // Its blocks are free again: a new file can use them.
  EXPECT_EQ(second.used_blocks, 3u + 1 + 2 + 1);
}

// A damaged directory takes its names with it: its children are left with
// no name. One repair must leave an image that checks clean.
TEST(Check, CorruptDirectoryInodeIsRepairedInOnePass) {
  Image img;
  {
    // A subtree below dir: dir/sub/deep (with data).
    auto m = copy_of(*img.media);
    Media* raw = m.get();
    auto fs = Filesystem::mount(std::move(m), {});
    ASSERT_TRUE(fs);
    auto sub = (*fs)->mkdir(img.dir, "sub", 0755, kUser);
    auto deep = (*fs)->mknod(sub->ino, "deep", S_IFREG | 0644, 0, kUser);
    ASSERT_TRUE((*fs)->write(deep->ino, 0, bytes("deep data")));
    ASSERT_TRUE((*fs)->unmount());
    img.media = copy_of(*raw);
  }
  img.flip(inode_offset(img.sb, img.dir) + 20);
  auto report = check_readonly(img);
  EXPECT_FALSE(report.clean());
  check_repair(img);
  auto second = check_readonly(img);
  EXPECT_TRUE(second.clean()) << ::testing::PrintToString(second.problems);
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  EXPECT_FALSE((*fs)->lookup(kRootIno, "dir"));
  EXPECT_EQ((*fs)->getattr(kRootIno)->nlink, 2u);
  EXPECT_EQ(read_all(**fs, img.keep), std::string(10000, 'k'));
}

// A sealed xattr record whose value is no valid POSIX ACL (the kernel would
// fail every permission check of the file with it) or a default ACL on a
// file: the mount refuses it, fsck reports and clears it.
TEST(Check, AclThatDoesNotParseIsReportedAndCleared) {
  // A named user and no mask (posix_acl_valid refuses it).
  const std::string named_without_mask(
      "\x02\x00\x00\x00"
      "\x01\x00\x06\x00\xff\xff\xff\xff"
      "\x02\x00\x04\x00\x05\x00\x00\x00"
      "\x04\x00\x04\x00\xff\xff\xff\xff"
      "\x20\x00\x04\x00\xff\xff\xff\xff",
      4 + 4 * 8);
  // owner, group, other: valid, but a default ACL belongs to directories.
  const std::string base_entries = named_without_mask.substr(0, 4 + 8) + named_without_mask.substr(4 + 2 * 8);
  for (const auto& [name, value] :
       {std::pair{"system.posix_acl_access", named_without_mask},
        std::pair{"system.posix_acl_access", std::string("\x02\x00\x00")},
        std::pair{"system.posix_acl_default", base_entries}}) {
    Image img;
    // Over inner's user.a, sealed as any record is.
    const uint64_t block = img.inode(img.inner).xattr_head;
    std::byte slot[kXattrSlotSize];
    encode_xattr(XattrRec{name, value}, slot);
    img.media->write(slot_offset(block, 0, kXattrSlotSize), slot, kXattrSlotSize);
    auto mounted = img.mount();
    ASSERT_FALSE(mounted) << name;
    EXPECT_NE(mounted.error().message.find("fsck"), std::string::npos);
    auto report = check_readonly(img);
    ASSERT_EQ(report.problems.size(), 1u) << ::testing::PrintToString(report.problems);
    EXPECT_NE(report.problems[0].find(name), std::string::npos) << report.problems[0];
    auto repaired = check_repair(img);
    EXPECT_EQ(repaired.repairs.size(), 1u);
    auto second = check_readonly(img);
    EXPECT_TRUE(second.clean()) << ::testing::PrintToString(second.problems);
    auto fs = img.mount();
    ASSERT_TRUE(fs) << fs.error().to_string();
    EXPECT_EQ((*fs)->getxattr(img.inner, name).error().code, std::errc::no_message_available);
  }
}

TEST(Check, NameOfAFreedInodeIsReportedAndRemoved) {
  Image img;
  std::vector<std::byte> zeros(kInodeSize);
  img.media->write(inode_offset(img.sb, img.inner), zeros.data(), kInodeSize);  // freed, name left
  ASSERT_FALSE(img.mount());
  auto report = check_readonly(img);
  ASSERT_FALSE(report.clean());
  bool named = false;
  for (const std::string& p : report.problems) named |= p.find("inner") != std::string::npos;
  EXPECT_TRUE(named) << ::testing::PrintToString(report.problems);
  auto repaired = check_repair(img);
  EXPECT_FALSE(repaired.repairs.empty());
  auto second = check_readonly(img);
  EXPECT_TRUE(second.clean()) << ::testing::PrintToString(second.problems);
  auto fs = img.mount();
  ASSERT_TRUE(fs) << fs.error().to_string();
  EXPECT_FALSE((*fs)->lookup(img.dir, "inner"));
  EXPECT_TRUE((*fs)->rmdir(kRootIno, "dir"));  // now empty
}

TEST(Check, WrongLinkCountIsReportedAndFixed) {
  Image img;
  InodeRec rec = img.inode(img.keep);
  rec.nlink = 7;
  img.put_inode(rec);
  InodeRec d = img.inode(img.dir);
  d.nlink = 5;
  img.put_inode(d);
  auto report = check_readonly(img);
  EXPECT_EQ(report.problems.size(), 2u) << ::testing::PrintToString(report.problems);
  auto repaired = check_repair(img);
  EXPECT_EQ(repaired.repairs.size(), 2u);
  EXPECT_EQ(img.inode(img.keep).nlink, 1u);
  EXPECT_EQ(img.inode(img.dir).nlink, 2u);
  EXPECT_TRUE(check_readonly(img).clean());
}

TEST(Check, BlocksOwnedTwiceAreReportedAndNotCountedAsFixed) {
  Image img;
  // Point victim's first extent at keep's first block.
  InodeRec v = img.inode(img.victim), k = img.inode(img.keep);
  auto ext_at = [&](const InodeRec& r) { return slot_offset(r.chain_head, 0, kExtentSlotSize); };
  auto ke = **decode_extent(img.media->at(ext_at(k)));
  auto ve = **decode_extent(img.media->at(ext_at(v)));
  ve.phys_block = ke.phys_block;
  std::byte buf[kExtentSlotSize];
  encode_extent(ve, buf);
  img.media->write(ext_at(v), buf, kExtentSlotSize);
  auto mounted = img.mount();
  ASSERT_FALSE(mounted);
  auto report = check_readonly(img);
  EXPECT_FALSE(report.clean());
  auto repaired = check_repair(img);
  EXPECT_LT(repaired.repairs.size(), repaired.problems.size());  // left uncorrected
}

// A hostile chain that links back to itself: the loop is reported, and a
// repair must not take the second visit of a good record for a duplicate
// and clear the record itself.
TEST(Check, ChainLoopIsReportedAndGoodRecordsSurviveRepair) {
  Image img;
  const uint64_t head = img.inode(img.dir).chain_head;
  auto h = decode_chain_header(img.media->at(block_offset(head)));
  ASSERT_TRUE(h);
  h->next = head;  // a loop of one block
  std::byte buf[kChainHeaderSize];
  encode_chain_header(*h, buf);
  img.media->write(block_offset(head), buf, kChainHeaderSize);
  ASSERT_FALSE(img.mount());
  auto report = check_readonly(img);
  EXPECT_FALSE(report.clean());
  EXPECT_LE(report.problems.size(), 3u) << ::testing::PrintToString(report.problems);
  const uint64_t first_slot = slot_offset(head, 0, kDirentSlotSize);
  std::vector<std::byte> slot_before(img.media->at(first_slot), img.media->at(first_slot) + kDirentSlotSize);
  check_repair(img);
  EXPECT_EQ(std::memcmp(img.media->at(first_slot), slot_before.data(), kDirentSlotSize), 0)
      << "the repair cleared the good record 'inner'";
}

TEST(Check, DestroyedPrimarySuperblockFallsBackToTheCopyAndRepairRewritesIt) {
  Image img;
  std::vector<std::byte> junk(kBlockSize);
  std::mt19937 rng(3);
  for (auto& b : junk) b = std::byte(rng());
  img.media->write(0, junk.data(), junk.size());
  ASSERT_FALSE(decode_superblock(img.media->at(0), kDevice));
  {
    auto fs = img.mount();  // a copy: the mount may rewrite its own device
    ASSERT_TRUE(fs) << fs.error().to_string();
    EXPECT_EQ(read_all(**fs, img.keep), std::string(10000, 'k'));
  }
  auto report = check_readonly(img);
  EXPECT_FALSE(report.clean());
  ASSERT_FALSE(decode_superblock(img.media->at(0), kDevice));
  auto repaired = check_repair(img);
  EXPECT_FALSE(repaired.repairs.empty());
  auto primary = decode_superblock(img.media->at(0), kDevice);
  ASSERT_TRUE(primary) << primary.error().to_string();
  EXPECT_EQ(primary->uuid, img.sb.uuid);
  EXPECT_TRUE(check_readonly(img).clean());
}

TEST(Check, DamagedSuperblockCopyIsReportedAndRewritten) {
  Image img;
  img.flip(block_offset(img.sb.copy_block()) + 70);
  auto report = check_readonly(img);
  EXPECT_FALSE(report.clean());
  check_repair(img);
  EXPECT_TRUE(decode_superblock(img.media->at(block_offset(img.sb.copy_block())), kDevice));
  EXPECT_TRUE(check_readonly(img).clean());
}

TEST(Check, BytesThatAreNotPoisonfsAreAnError) {
  auto zeros = make_memory_media(kDevice);
  auto r = check_filesystem(*zeros, false);
  EXPECT_FALSE(r);
  auto junk = make_memory_media(kDevice);
  std::vector<std::byte> noise(kDevice);
  std::mt19937 rng(9);
  for (auto& b : noise) b = std::byte(rng());
  junk->write(0, noise.data(), noise.size());
  EXPECT_FALSE(check_filesystem(*junk, true));
  auto tiny = make_memory_media(100);
  EXPECT_FALSE(check_filesystem(*tiny, false));
  // And mount refuses them too, with the reason.
  auto m = Filesystem::mount(copy_of(*zeros), {});
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().to_string().find("not a poisonfs"), std::string::npos);
}

}  // namespace
}  // namespace poisonfs
