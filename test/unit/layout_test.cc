// Tests of the on-media format (src/format/layout.*): every record survives
// an encode/decode round trip, any damaged byte is detected, empty slots
// decode as "nothing there", decode refuses values no writer produces (even
// with a correct checksum: a hostile image), and plan_geometry lays out a
// consistent device for every size it accepts.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "format/coding.h"
#include "format/crc32c.h"
#include "format/layout.h"

namespace poisonfs {
namespace {

// Recomputes the leading crc of a record, as a writer of a hostile image would.
void reseal(std::byte* rec, size_t size) { put_le<uint32_t>(rec, crc32c(rec + 4, size - 4)); }

Superblock sample_superblock(uint64_t bytes = 64 << 20) {
  auto sb = plan_geometry(bytes, 0);
  EXPECT_TRUE(sb) << sb.error().to_string();
  for (size_t i = 0; i < sb->uuid.size(); ++i) sb->uuid[i] = static_cast<uint8_t>(0xA0 + i);
  sb->created_ns = 1'700'000'000'123'456'789;
  sb->features_compat = 0x5;
  sb->features_ro_compat = kFeatureDataChecksums;  // the only one this build knows
  sb->label = "scratch volume";
  return *sb;
}

InodeRec sample_inode() {
  InodeRec r;
  r.flags = kInodeInUse;
  r.ino = 4242;
  r.mode = 0100644;
  r.uid = 1000;
  r.gid = 100;
  r.nlink = 3;
  r.size = 123456789;
  r.rdev = 0x0801;
  r.atime_ns = 1;
  r.mtime_ns = -2;  // before the epoch
  r.ctime_ns = 1'700'000'000'000'000'003;
  r.btime_ns = 4;
  r.generation = 77;
  r.chain_head = 1000;
  r.xattr_head = 1001;
  r.parent = 1;
  return r;
}

// Flips every byte of an encoded record (three different ways) and expects
// decode to refuse each damaged copy.
template <class Decode>
void expect_every_flip_detected(const std::byte* rec, size_t size, Decode decode) {
  std::vector<std::byte> copy(rec, rec + size);
  for (size_t i = 0; i < size; ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xFF}) {
      copy[i] ^= std::byte{mask};
      EXPECT_FALSE(decode(copy.data())) << "byte " << i << " mask " << int(mask);
      copy[i] ^= std::byte{mask};
    }
  }
  EXPECT_TRUE(decode(copy.data()));  // restored: good again
}

// ---------------------------------------------------------------- superblock

TEST(LayoutSuperblock, RoundTripKeepsEveryField) {
  Superblock sb = sample_superblock();
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  EXPECT_EQ(std::memcmp(buf, kMagic, sizeof kMagic), 0);
  auto got = decode_superblock(buf, 64 << 20);
  ASSERT_TRUE(got) << got.error().to_string();
  EXPECT_EQ(got->version, kFormatVersion);
  EXPECT_EQ(got->block_size, kBlockSize);
  EXPECT_EQ(got->total_blocks, sb.total_blocks);
  EXPECT_EQ(got->features_compat, sb.features_compat);
  EXPECT_EQ(got->features_incompat, 0u);
  EXPECT_EQ(got->features_ro_compat, sb.features_ro_compat);
  EXPECT_EQ(got->uuid, sb.uuid);
  EXPECT_EQ(got->journal_start, sb.journal_start);
  EXPECT_EQ(got->journal_blocks, sb.journal_blocks);
  EXPECT_EQ(got->inode_start, sb.inode_start);
  EXPECT_EQ(got->inode_blocks, sb.inode_blocks);
  EXPECT_EQ(got->inode_count, sb.inode_count);
  EXPECT_EQ(got->csum_start, sb.csum_start);
  EXPECT_EQ(got->csum_blocks, sb.csum_blocks);
  EXPECT_EQ(got->csum_region_shift, sb.csum_region_shift);
  EXPECT_TRUE(got->has_checksums());
  EXPECT_EQ(got->data_start, sb.data_start);
  EXPECT_EQ(got->data_end, sb.data_end);
  EXPECT_EQ(got->created_ns, sb.created_ns);
  EXPECT_EQ(got->label, sb.label);
  EXPECT_EQ(got->copy_block(), sb.total_blocks - 1);
}

TEST(LayoutSuperblock, LabelIsCutAt63Bytes) {
  Superblock sb = sample_superblock();
  sb.label = std::string(100, 'L');
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  auto got = decode_superblock(buf, 64 << 20);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->label, std::string(63, 'L'));
}

TEST(LayoutSuperblock, EveryFlippedByteIsDetected) {
  Superblock sb = sample_superblock();
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  expect_every_flip_detected(buf, kSuperblockSize,
                             [](const std::byte* p) { return decode_superblock(p, 64 << 20).has_value(); });
}

TEST(LayoutSuperblock, ForeignBytesAreNotPoisonfs) {
  std::vector<std::byte> zeros(kSuperblockSize);
  auto got = decode_superblock(zeros.data(), 64 << 20);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, std::errc::invalid_argument);
}

TEST(LayoutSuperblock, TruncatedDeviceIsRefused) {
  Superblock sb = sample_superblock();
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  auto got = decode_superblock(buf, (64 << 20) - kBlockSize);
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().message.find("truncated"), std::string::npos);
}

TEST(LayoutSuperblock, UnknownVersionAndIncompatFeaturesAreRefused) {
  Superblock sb = sample_superblock();
  std::byte buf[kSuperblockSize];
  sb.version = kFormatVersion + 1;
  encode_superblock(sb, buf);
  EXPECT_EQ(decode_superblock(buf, 64 << 20).error().code, std::errc::not_supported);
  sb = sample_superblock();
  sb.features_incompat = 1;
  encode_superblock(sb, buf);
  EXPECT_EQ(decode_superblock(buf, 64 << 20).error().code, std::errc::not_supported);
  sb = sample_superblock();
  sb.block_size = 8192;
  encode_superblock(sb, buf);
  EXPECT_EQ(decode_superblock(buf, 64 << 20).error().code, std::errc::not_supported);
}

TEST(LayoutSuperblock, InconsistentGeometryIsRefusedEvenWhenSealed) {
  const Superblock good = sample_superblock();
  std::vector<std::function<void(Superblock&)>> breakers = {
      [](Superblock& s) { s.journal_start = 0; },
      [](Superblock& s) { s.journal_blocks = 1; s.inode_start = 2; s.data_start = 2 + s.inode_blocks; },
      [](Superblock& s) { s.inode_start += 1; },
      [](Superblock& s) { s.inode_count += 1; },
      [](Superblock& s) { s.inode_count = 0; s.inode_blocks = 0; s.data_start = s.inode_start; },
      [](Superblock& s) { s.data_start += 1; },
      [](Superblock& s) { s.data_end -= 1; },
      [](Superblock& s) { s.data_start = s.data_end; s.inode_blocks = s.data_end - s.inode_start; s.inode_count = s.inode_blocks * kInodesPerBlock; },
  };
  for (size_t i = 0; i < breakers.size(); ++i) {
    Superblock sb = good;
    breakers[i](sb);
    std::byte buf[kSuperblockSize];
    encode_superblock(sb, buf);
    EXPECT_FALSE(decode_superblock(buf, 64 << 20)) << "breaker " << i;
  }
}

// A hostile image can choose sizes whose byte count wraps around 2^64; such
// a superblock must not pass as one that fits the device.
TEST(LayoutSuperblock, SizesThatOverflowAreRefused) {
  const uint64_t device = 1 << 20;
  Superblock good = sample_superblock(device);
  {
    Superblock sb = good;  // total_blocks * 4096 wraps to exactly the device size
    sb.total_blocks = (uint64_t{1} << 52) + device / kBlockSize;
    sb.data_end = sb.total_blocks - 1;
    std::byte buf[kSuperblockSize];
    encode_superblock(sb, buf);
    EXPECT_FALSE(decode_superblock(buf, device));
  }
  {
    Superblock sb = good;  // journal_start + journal_blocks wraps to 0
    sb.journal_blocks = ~uint64_t{0};
    sb.inode_start = 0;
    sb.data_start = sb.inode_blocks;
    std::byte buf[kSuperblockSize];
    encode_superblock(sb, buf);
    EXPECT_FALSE(decode_superblock(buf, device));
  }
  {
    Superblock sb = good;  // inode_blocks * 16 wraps
    sb.inode_blocks = (uint64_t{1} << 60) + 1;
    sb.inode_count = 16;
    sb.data_start = sb.inode_start + sb.inode_blocks;
    std::byte buf[kSuperblockSize];
    encode_superblock(sb, buf);
    EXPECT_FALSE(decode_superblock(buf, device));
  }
}

// ---------------------------------------------------------------- geometry

TEST(LayoutGeometry, RefusesDevicesBelowOneMiB) {
  for (uint64_t bytes : {uint64_t{0}, uint64_t{4096}, uint64_t{512 << 10}, uint64_t{(1 << 20) - 1}}) {
    auto sb = plan_geometry(bytes, 0);
    ASSERT_FALSE(sb) << bytes;
    EXPECT_EQ(sb.error().code, std::errc::invalid_argument);
  }
  EXPECT_TRUE(plan_geometry(1 << 20, 0));
}

void expect_consistent(uint64_t bytes, const Superblock& sb) {
  SCOPED_TRACE(bytes);
  EXPECT_EQ(sb.total_blocks, bytes / kBlockSize);
  EXPECT_LE(sb.total_blocks * kBlockSize, bytes);
  // Regions in order and disjoint: superblock, journal, inodes, data, copy.
  EXPECT_EQ(sb.journal_start, 1u);
  EXPECT_GE(sb.journal_blocks, 2u);
  EXPECT_EQ(sb.inode_start, sb.journal_start + sb.journal_blocks);
  EXPECT_GT(sb.inode_blocks, 0u);
  EXPECT_EQ(sb.inode_count, sb.inode_blocks * kInodesPerBlock);
  EXPECT_EQ(sb.csum_start, sb.inode_start + sb.inode_blocks);
  EXPECT_EQ(sb.data_start, sb.csum_start + sb.csum_blocks);
  if (sb.has_checksums()) {
    // One entry per data block after the bitmap block; one bit per region.
    EXPECT_GE((sb.csum_blocks - 1) * kCsumEntriesPerBlock, sb.data_end - sb.data_start);
    EXPECT_LT((sb.data_end - sb.data_start) >> sb.csum_region_shift, kCsumIntentBits);
  } else {
    EXPECT_EQ(sb.csum_blocks, 0u);
  }
  EXPECT_LT(sb.data_start, sb.data_end);
  EXPECT_EQ(sb.data_end, sb.copy_block());
  EXPECT_EQ(sb.copy_block(), sb.total_blocks - 1);
  // The journal holds a useful transaction: a create touches a few records.
  EXPECT_GE(sb.journal_blocks * kBlockSize, 64u * kBlockSize);
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  auto back = decode_superblock(buf, bytes);
  EXPECT_TRUE(back) << back.error().to_string();
}

TEST(LayoutGeometry, ConsistentFromOneMiBTo64GiB) {
  std::vector<uint64_t> sizes = {1 << 20, (1 << 20) + 1, (1 << 20) + 4095, (1 << 20) + 4096, 3 << 20,
                                 (5 << 20) + 12345};
  for (uint64_t s = 8 << 20; s <= (uint64_t{64} << 30); s *= 2) {
    sizes.push_back(s);
    sizes.push_back(s + s / 3 + 777);  // odd sizes too
  }
  for (uint64_t bytes : sizes) {
    if (bytes > (uint64_t{64} << 30)) continue;
    auto sb = plan_geometry(bytes, 0);
    ASSERT_TRUE(sb) << bytes << ": " << sb.error().to_string();
    expect_consistent(bytes, *sb);
  }
}

TEST(LayoutGeometry, WithoutChecksumsTheDataFollowsTheInodes) {
  for (uint64_t bytes : {uint64_t{1} << 20, uint64_t{64} << 20, uint64_t{5} << 30}) {
    auto sb = plan_geometry(bytes, 0, /*data_checksums=*/false);
    ASSERT_TRUE(sb);
    EXPECT_FALSE(sb->has_checksums());
    EXPECT_EQ(sb->data_start, sb->inode_start + sb->inode_blocks);
    expect_consistent(bytes, *sb);
  }
}

TEST(LayoutSuperblock, UnknownReadOnlyCompatibleFeaturesAreRefused) {
  Superblock sb = sample_superblock();
  sb.features_ro_compat |= 0x100;
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  auto got = decode_superblock(buf, 64 << 20);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, std::errc::not_supported);
  EXPECT_NE(got.error().message.find("read-only-compatible"), std::string::npos);
}

TEST(LayoutSuperblock, ChecksumRegionTooSmallForTheDataIsRefused) {
  Superblock sb = sample_superblock();
  sb.csum_blocks -= 1;  // the table no longer covers the data area
  sb.data_start -= 1;
  std::byte buf[kSuperblockSize];
  encode_superblock(sb, buf);
  auto got = decode_superblock(buf, 64 << 20);
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().message.find("inconsistent"), std::string::npos);
}

TEST(LayoutGeometry, HonoursAndRoundsTheInodeCount) {
  auto sb = plan_geometry(16 << 20, 100);
  ASSERT_TRUE(sb);
  EXPECT_EQ(sb->inode_count, 112u);  // rounded up to whole blocks
  expect_consistent(16 << 20, *sb);
}

TEST(LayoutGeometry, RefusesMoreInodesThanFit) {
  EXPECT_FALSE(plan_geometry(1 << 20, 1 << 20));
  EXPECT_FALSE(plan_geometry(1 << 20, ~uint64_t{0}));  // must not wrap to 0 inodes
  EXPECT_FALSE(plan_geometry(1 << 20, ~uint64_t{0} - 3));
}

// ---------------------------------------------------------------- inode

TEST(LayoutInode, RoundTripKeepsEveryField) {
  InodeRec r = sample_inode();
  std::byte buf[kInodeSize];
  encode_inode(r, buf);
  auto got = decode_inode(buf);
  ASSERT_TRUE(got) << got.error().to_string();
  ASSERT_TRUE(got->has_value());
  const InodeRec& g = **got;
  EXPECT_EQ(g.flags, r.flags);
  EXPECT_EQ(g.ino, r.ino);
  EXPECT_EQ(g.mode, r.mode);
  EXPECT_EQ(g.uid, r.uid);
  EXPECT_EQ(g.gid, r.gid);
  EXPECT_EQ(g.nlink, r.nlink);
  EXPECT_EQ(g.size, r.size);
  EXPECT_EQ(g.rdev, r.rdev);
  EXPECT_EQ(g.atime_ns, r.atime_ns);
  EXPECT_EQ(g.mtime_ns, r.mtime_ns);
  EXPECT_EQ(g.ctime_ns, r.ctime_ns);
  EXPECT_EQ(g.btime_ns, r.btime_ns);
  EXPECT_EQ(g.generation, r.generation);
  EXPECT_EQ(g.chain_head, r.chain_head);
  EXPECT_EQ(g.xattr_head, r.xattr_head);
  EXPECT_EQ(g.parent, r.parent);
}

TEST(LayoutInode, EveryFlippedByteIsDetected) {
  std::byte buf[kInodeSize];
  encode_inode(sample_inode(), buf);
  expect_every_flip_detected(buf, kInodeSize, [](const std::byte* p) { return decode_inode(p).has_value(); });
}

TEST(LayoutInode, EmptySlotDecodesAsNothing) {
  std::byte buf[kInodeSize] = {};
  auto got = decode_inode(buf);
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
}

TEST(LayoutInode, ImpossibleValuesAreRefused) {
  std::byte buf[kInodeSize];
  InodeRec r = sample_inode();
  r.flags = 0;  // a sealed record that is not in use
  encode_inode(r, buf);
  EXPECT_FALSE(decode_inode(buf));
  r = sample_inode();
  r.size = kMaxFileSize + 1;
  encode_inode(r, buf);
  EXPECT_FALSE(decode_inode(buf));
  r.size = kMaxFileSize;
  encode_inode(r, buf);
  EXPECT_TRUE(decode_inode(buf));
}

// ---------------------------------------------------------------- chain header

TEST(LayoutChainHeader, RoundTripForEveryKind) {
  for (ChainKind kind : {ChainKind::kExtents, ChainKind::kDirents, ChainKind::kXattrs}) {
    ChainHeader h{kind, 17, 99999, 12345};
    std::byte buf[kChainHeaderSize];
    encode_chain_header(h, buf);
    auto got = decode_chain_header(buf);
    ASSERT_TRUE(got) << got.error().to_string();
    EXPECT_EQ(got->kind, kind);
    EXPECT_EQ(got->owner, 17u);
    EXPECT_EQ(got->next, 99999u);
    EXPECT_EQ(got->self, 12345u);
  }
}

TEST(LayoutChainHeader, EveryFlippedByteIsDetected) {
  std::byte buf[kChainHeaderSize];
  encode_chain_header(ChainHeader{ChainKind::kDirents, 3, 0, 700}, buf);
  expect_every_flip_detected(buf, kChainHeaderSize,
                             [](const std::byte* p) { return decode_chain_header(p).has_value(); });
}

TEST(LayoutChainHeader, UnknownKindAndWrongSlotGeometryAreRefused) {
  std::byte buf[kChainHeaderSize];
  encode_chain_header(ChainHeader{ChainKind::kExtents, 3, 0, 700}, buf);
  put_le<uint32_t>(buf + 4, 0x12345678);
  reseal(buf, kChainHeaderSize);
  EXPECT_FALSE(decode_chain_header(buf));
  encode_chain_header(ChainHeader{ChainKind::kExtents, 3, 0, 700}, buf);
  put_le<uint32_t>(buf + 32, kDirentSlotSize);  // slot size of another kind
  reseal(buf, kChainHeaderSize);
  EXPECT_FALSE(decode_chain_header(buf));
  std::byte zeros[kChainHeaderSize] = {};
  EXPECT_FALSE(decode_chain_header(zeros));  // a chain block always has a header
}

TEST(LayoutChainHeader, SlotsFitTheBlock) {
  for (ChainKind kind : {ChainKind::kExtents, ChainKind::kDirents, ChainKind::kXattrs}) {
    EXPECT_GE(slots_per_block(kind), 1u);
    EXPECT_LE(kChainHeaderSize + slots_per_block(kind) * slot_size_of(kind), kBlockSize);
  }
  EXPECT_EQ(slots_per_block(ChainKind::kExtents), 126u);
  EXPECT_EQ(slots_per_block(ChainKind::kDirents), 14u);
  EXPECT_EQ(slots_per_block(ChainKind::kXattrs), 1u);
  EXPECT_EQ(slot_offset(10, 2, kExtentSlotSize), 10 * kBlockSize + kChainHeaderSize + 64);
}

// ---------------------------------------------------------------- extent

TEST(LayoutExtent, RoundTripWrittenAndUnwritten) {
  for (uint32_t flags : {kSlotValid, kSlotValid | kExtentUnwritten}) {
    ExtentRec r{flags, 1'000'000, 123'456, 789};
    std::byte buf[kExtentSlotSize];
    encode_extent(r, buf);
    auto got = decode_extent(buf);
    ASSERT_TRUE(got) << got.error().to_string();
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ((*got)->flags, flags);
    EXPECT_EQ((*got)->file_block, r.file_block);
    EXPECT_EQ((*got)->phys_block, r.phys_block);
    EXPECT_EQ((*got)->nblocks, r.nblocks);
  }
}

TEST(LayoutExtent, EveryFlippedByteIsDetected) {
  std::byte buf[kExtentSlotSize];
  encode_extent(ExtentRec{kSlotValid, 5, 6, 7}, buf);
  expect_every_flip_detected(buf, kExtentSlotSize, [](const std::byte* p) { return decode_extent(p).has_value(); });
}

TEST(LayoutExtent, EmptySlotDecodesAsNothing) {
  std::byte buf[kExtentSlotSize] = {};
  auto got = decode_extent(buf);
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
}

TEST(LayoutExtent, ImpossibleValuesAreRefused) {
  const uint64_t max_blocks = kMaxFileSize / kBlockSize;
  std::vector<ExtentRec> bad = {
      {kSlotValid, 0, 100, 0},                        // zero blocks
      {0, 0, 100, 1},                                 // not marked valid
      {kExtentUnwritten, 0, 100, 1},                  // unwritten but not valid
      {kSlotValid, max_blocks, 100, 1},               // past the largest file
      {kSlotValid, ~uint64_t{0}, 100, 2},             // file_block + nblocks wraps
      {kSlotValid, 0, ~uint64_t{0}, 2},               // phys_block + nblocks wraps
      {kSlotValid, 1, 100, ~uint64_t{0}},             // absurd length
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    std::byte buf[kExtentSlotSize];
    encode_extent(bad[i], buf);
    EXPECT_FALSE(decode_extent(buf)) << "record " << i;
  }
  std::byte buf[kExtentSlotSize];
  encode_extent(ExtentRec{kSlotValid, max_blocks - 1, 100, 1}, buf);  // the last block is fine
  EXPECT_TRUE(decode_extent(buf));
}

// ---------------------------------------------------------------- dirent

TEST(LayoutDirent, RoundTripIncludingLongAndOddNames) {
  std::string odd = "a\x01\xff\t b";
  for (const std::string& name : {std::string("f"), std::string(255, 'n'), odd, std::string("...")}) {
    DirentRec r{99, 4, name};
    std::byte buf[kDirentSlotSize];
    encode_dirent(r, buf);
    auto got = decode_dirent(buf);
    ASSERT_TRUE(got) << got.error().to_string();
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ((*got)->ino, 99u);
    EXPECT_EQ((*got)->type, 4);
    EXPECT_EQ((*got)->name, name);
  }
}

TEST(LayoutDirent, EveryFlippedByteIsDetected) {
  std::byte buf[kDirentSlotSize];
  encode_dirent(DirentRec{12, 8, "hello.txt"}, buf);
  expect_every_flip_detected(buf, kDirentSlotSize, [](const std::byte* p) { return decode_dirent(p).has_value(); });
}

TEST(LayoutDirent, EmptySlotDecodesAsNothing) {
  std::byte buf[kDirentSlotSize] = {};
  auto got = decode_dirent(buf);
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
}

TEST(LayoutDirent, ImpossibleValuesAreRefused) {
  std::vector<DirentRec> bad = {
      {5, 8, "a/b"}, {5, 8, std::string("a\0b", 3)}, {5, 4, "."}, {5, 4, ".."}, {5, 8, ""}, {0, 8, "zero"},
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    std::byte buf[kDirentSlotSize];
    encode_dirent(bad[i], buf);
    EXPECT_FALSE(decode_dirent(buf)) << "record " << i;
  }
  // A slot that is not marked valid is refused as well.
  std::byte buf[kDirentSlotSize];
  encode_dirent(DirentRec{5, 8, "x"}, buf);
  put_le<uint32_t>(buf + 4, 0);
  reseal(buf, kDirentSlotSize);
  EXPECT_FALSE(decode_dirent(buf));
}

// ---------------------------------------------------------------- xattr

TEST(LayoutXattr, RoundTripIncludingLargestValueAndBinaryBytes) {
  std::string binary;
  for (int i = 0; i < 256; ++i) binary += static_cast<char>(i);
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"user.a", ""}, {"user.bin", binary}, {std::string(255, 'x'), std::string(kXattrValueMax, 'v')}}) {
    std::vector<std::byte> buf(kXattrSlotSize);
    encode_xattr(XattrRec{name, value}, buf.data());
    auto got = decode_xattr(buf.data());
    ASSERT_TRUE(got) << got.error().to_string();
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ((*got)->name, name);
    EXPECT_EQ((*got)->value, value);
  }
}

TEST(LayoutXattr, EveryFlippedByteIsDetected) {
  std::vector<std::byte> buf(kXattrSlotSize);
  encode_xattr(XattrRec{"user.k", "value"}, buf.data());
  expect_every_flip_detected(buf.data(), kXattrSlotSize, [](const std::byte* p) { return decode_xattr(p).has_value(); });
}

TEST(LayoutXattr, EmptySlotDecodesAsNothing) {
  std::vector<std::byte> buf(kXattrSlotSize);
  auto got = decode_xattr(buf.data());
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->has_value());
}

TEST(LayoutXattr, ImpossibleValuesAreRefused) {
  std::vector<std::byte> buf(kXattrSlotSize);
  encode_xattr(XattrRec{"", "v"}, buf.data());  // empty name
  EXPECT_FALSE(decode_xattr(buf.data()));
  encode_xattr(XattrRec{"user.k", "v"}, buf.data());
  put_le<uint16_t>(buf.data() + 10, static_cast<uint16_t>(kXattrValueMax + 1));  // value past the slot
  reseal(buf.data(), kXattrSlotSize);
  EXPECT_FALSE(decode_xattr(buf.data()));
  encode_xattr(XattrRec{"user.k", "v"}, buf.data());
  put_le<uint32_t>(buf.data() + 4, 0);  // not marked valid
  reseal(buf.data(), kXattrSlotSize);
  EXPECT_FALSE(decode_xattr(buf.data()));
}

}  // namespace
}  // namespace poisonfs
