// Data checksums (issue 5 item 2 and 3): a crc32c per physical data block,
// shared by reflink sharers, current after every kind of write, recomputed
// after a crash for the regions whose write intent was set, verified by
// scrub, fsck and (as a mount option) every read; and the recovery write
// that heals every sharer of a poisoned block when its data matches.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "format/crc32c.h"
#include "poisonfs/filesystem.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

constexpr uint64_t B = kBlockSize;
constexpr uint64_t kDevice = 16 << 20;
const Caller kUser{1000, 1000, 022};

using Device = testing::TestDevice;

std::string content(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

Ino create(Filesystem& fs, std::string_view name, const std::string& data) {
  auto a = fs.mknod(kRootIno, name, S_IFREG | 0644, 0, kUser);
  EXPECT_TRUE(a) << name;
  if (!a) return 0;
  if (!data.empty()) {
    auto n = fs.write(a->ino, 0, std::as_bytes(std::span(data)));
    EXPECT_TRUE(n && *n == data.size()) << name;
  }
  return a->ino;
}

Result<size_t> write(Filesystem& fs, Ino ino, uint64_t off, const std::string& data) {
  return fs.write(ino, off, std::as_bytes(std::span(data)));
}

Result<std::string> read(Filesystem& fs, Ino ino, uint64_t off, size_t len) {
  std::string out(len, '\0');
  auto n = fs.read_copy(ino, off, std::as_writable_bytes(std::span(out)));
  if (!n) return std::unexpected(n.error());
  out.resize(*n);
  return out;
}

using testing::phys_of;

ScrubReport scrub(Filesystem& fs) {
  auto r = fs.scrub(nullptr);
  EXPECT_TRUE(r) << r.error().to_string();
  return r.value_or(ScrubReport{});
}

std::vector<Event> events_of(Filesystem& fs, EventKind kind) {
  std::vector<Event> out;
  for (Event& e : fs.events(0, SIZE_MAX, nullptr))
    if (e.kind == kind) out.push_back(std::move(e));
  return out;
}

// Flips one byte of the device behind the filesystem's back: what a
// misdirected write or a bit flip the media does not report looks like.
void flip_byte(Device& dev, uint64_t device_offset) {
  std::byte b = dev.media().base()[device_offset] ^ std::byte{0x40};
  dev.media().write(device_offset, &b, 1);
}

// Where a data block's crc32c entry lives (see layout.h).
uint64_t entry_offset(Filesystem& fs, uint64_t block) {
  FsInfo i = fs.info();
  return (i.csum_start + 1) * B + (block - i.data_start) * 4;
}

uint32_t entry_of(Device& dev, uint64_t block) {
  uint32_t v;
  std::memcpy(&v, dev.media().base() + entry_offset(*dev, block), 4);
  return v;
}

TEST(Checksums, EveryKindOfWriteLeavesCurrentChecksums) {
  Device dev(kDevice);
  Ino a = create(*dev, "a", content(5 * B + 100, 1));                  // new blocks, partial tail
  ASSERT_TRUE(write(*dev, a, 2 * B + 7, content(3000, 2)));  // in place
  Ino b = create(*dev, "b", "");
  ASSERT_TRUE(dev->clone_range(a, 0, b, 0, 0));                          // shared
  ASSERT_TRUE(write(*dev, b, B + 10, std::string("cow")));  // copy-on-write
  ASSERT_TRUE(dev->fallocate(a, kFallocPunchHole | kFallocKeepSize, 3 * B + 100, 200));  // zeroed in place
  ASSERT_TRUE(dev->fallocate(a, 0, 8 * B, 4 * B));                       // unwritten
  ASSERT_TRUE(write(*dev, a, 9 * B + 5, std::string("x")));  // into unwritten
  auto c = dev->copy_range(a, 100, b, 7 * B + 3, 2 * B);                 // byte copy
  ASSERT_TRUE(c);
  for (Ino ino : {a, b}) {
    auto m = dev->bmap(ino);
    ASSERT_TRUE(m);
    for (const BmapEntry& e : *m) {
      if (e.unwritten) continue;
      for (uint64_t off = 0; off < e.length; off += B) {
        const uint64_t block = (e.physical + off) / B;
        EXPECT_EQ(entry_of(dev, block), crc32c(dev.media().base() + block * B, B))
            << "inode " << ino << " file offset " << e.file_offset + off;
      }
    }
  }
  ScrubReport r = scrub(*dev);
  EXPECT_TRUE(r.checksums);
  EXPECT_GE(r.blocks_verified, 10u);
  EXPECT_EQ(r.checksum_mismatches, 0u);
  EXPECT_TRUE(dev.check().clean());
}

TEST(Checksums, SilentCorruptionIsFoundByScrubFsckAndVerifyingReads) {
  Device dev(kDevice, {}, OpenOptions{MapMode::kShared, /*verify_checksums=*/true});
  const std::string data = content(4 * B, 3);
  Ino a = create(*dev, "a", data);
  Ino b = create(*dev, "b", "");
  ASSERT_TRUE(dev->clone_range(a, 0, b, 0, 0));
  const uint64_t block = phys_of(*dev, a, 2 * B) / B;
  ASSERT_TRUE(read(*dev, a, 0, 4 * B));
  flip_byte(dev, block * B + 77);

  // A verifying read of the block fails; its neighbours still read.
  auto r = read(*dev, b, 2 * B, 10);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, std::errc::io_error);
  EXPECT_EQ(*read(*dev, b, B, B), data.substr(B, B));
  auto ev = events_of(*dev, EventKind::kCorruption);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].device_offset, block * B);
  EXPECT_EQ(ev[0].owners.size(), 2u);  // both sharers are named

  ScrubReport s = scrub(*dev);
  EXPECT_EQ(s.checksum_mismatches, 1u);
  EXPECT_EQ(events_of(*dev, EventKind::kCorruption).size(), 2u);
  dev.remount();  // clean: no region is left to recompute, fsck checks them all
  CheckReport fsck = dev.check();
  ASSERT_EQ(fsck.problems.size(), 1u);
  EXPECT_NE(fsck.problems[0].find("silent corruption"), std::string::npos) << fsck.problems[0];
}

TEST(Checksums, WithoutTheMountOptionReadsDoNotVerify) {
  Device dev(kDevice);
  Ino a = create(*dev, "a", content(2 * B, 4));
  flip_byte(dev, phys_of(*dev, a, B) + 5);
  EXPECT_TRUE(read(*dev, a, 0, 2 * B));
  EXPECT_EQ(scrub(*dev).checksum_mismatches, 1u);  // scrub always checks
}

TEST(Checksums, AnImageWithoutChecksumsWorksAndVerifiesNothing) {
  MkfsOptions mkfs;
  mkfs.data_checksums = false;
  Device dev(kDevice, mkfs, OpenOptions{MapMode::kShared, true});
  EXPECT_FALSE(dev->info().data_checksums);
  EXPECT_EQ(dev->info().csum_blocks, 0u);
  Ino a = create(*dev, "a", content(2 * B, 5));
  flip_byte(dev, phys_of(*dev, a, B) + 5);
  EXPECT_TRUE(read(*dev, a, 0, 2 * B));
  ScrubReport s = scrub(*dev);
  EXPECT_FALSE(s.checksums);
  EXPECT_EQ(s.blocks_verified, 0u);
  dev.remount();
  EXPECT_TRUE(dev.check().clean());
}

// A crash after an in-place overwrite: the data reached the media, its new
// checksum did not. The region's intent bit makes mount recompute it, so
// the block is not reported as corrupt.
TEST(Checksums, ACrashBetweenDataAndChecksumIsNotCorruption) {
  for (bool intent_survives : {true, false}) {
    SCOPED_TRACE(intent_survives ? "intent bit set" : "intent bit lost (control)");
    Device dev(kDevice);
    Ino a = create(*dev, "a", content(4 * B, 6));
    dev.remount();  // clean: every intent cleared
    a = dev->lookup(kRootIno, "a")->ino;
    const uint64_t block = phys_of(*dev, a, B) / B;
    const uint32_t old_entry = entry_of(dev, block);
    ASSERT_TRUE(write(*dev, a, B + 100, content(50, 7)));
    ASSERT_NE(entry_of(dev, block), old_entry);
    // The crash image: the entry store lost.
    auto image = dev.copy();
    image->write(entry_offset(*dev, block), &old_entry, 4);
    if (!intent_survives) image->zero(dev->info().csum_start * B, B);
    auto report = check_filesystem(*image, /*repair=*/true);
    ASSERT_TRUE(report);
    EXPECT_EQ(report->clean(), intent_survives);
    auto fs = Filesystem::mount(std::move(image), {});
    ASSERT_TRUE(fs);
    EXPECT_EQ((*fs)->scrub(nullptr)->checksum_mismatches, intent_survives ? 0u : 1u);
  }
}

TEST(Checksums, ARecoveryWriteWithTheTrueDataHealsEverySharerInPlace) {
  Device dev(kDevice);
  const std::string data = content(4 * B, 8);
  Ino a = create(*dev, "a", data);
  Ino b = create(*dev, "b", "");
  Ino c = create(*dev, "c", content(2 * B, 9));
  ASSERT_TRUE(dev->clone_range(a, 0, b, 0, 0));
  ASSERT_TRUE(dev->clone_range(a, 2 * B, c, B, B));
  const uint64_t phys = phys_of(*dev, a, 2 * B);
  ASSERT_TRUE(dev->inject_poison(phys + 512, 256, false));
  for (Ino ino : {a, b}) EXPECT_FALSE(read(*dev, ino, 2 * B, B));
  const FsInfo before = dev->info();

  // Through c, only the poisoned bytes.
  auto n = write(*dev, c, B + 512, data.substr(2 * B + 512, 256));
  ASSERT_TRUE(n) << n.error().to_string();
  EXPECT_TRUE(dev->badblocks().empty());
  for (auto [ino, off] : {std::pair{a, 2 * B}, std::pair{b, 2 * B}, std::pair{c, B}}) {
    EXPECT_EQ(phys_of(*dev, ino, off), phys) << ino;
    auto got = read(*dev, ino, off, B);
    ASSERT_TRUE(got) << ino;
    EXPECT_EQ(*got, data.substr(2 * B, B)) << ino;
  }
  EXPECT_EQ(dev->info().free_blocks, before.free_blocks);  // no space used
  auto heal = events_of(*dev, EventKind::kHeal);
  ASSERT_EQ(heal.size(), 1u);
  EXPECT_EQ(heal[0].device_offset, phys);
  EXPECT_EQ(heal[0].owners.size(), 3u);
  dev.remount();
  EXPECT_TRUE(dev.check().clean());
}

TEST(Checksums, ARecoveryWriteWithOtherDataGivesTheWriterACopy) {
  Device dev(kDevice);
  const std::string data = content(2 * B, 10);
  Ino a = create(*dev, "a", data);
  Ino b = create(*dev, "b", "");
  ASSERT_TRUE(dev->clone_range(a, 0, b, 0, 0));
  const uint64_t phys = phys_of(*dev, a, B);
  ASSERT_TRUE(dev->inject_poison(phys + 64, 64, false));
  std::string other = data.substr(B + 64, 64);
  other[10] ^= 1;
  ASSERT_TRUE(write(*dev, b, B + 64, other));
  EXPECT_NE(phys_of(*dev, b, B), phys);
  EXPECT_EQ(phys_of(*dev, a, B), phys);
  EXPECT_FALSE(read(*dev, a, B, B));
  EXPECT_EQ(read(*dev, b, B + 64, 64).value_or(""), other);
  EXPECT_TRUE(events_of(*dev, EventKind::kHeal).empty());
  EXPECT_EQ(dev->badblocks().size(), 1u);
}

// Issue 5, bad input: a shared poisoned block on a full device. Other data
// needs a copy that cannot be made: ENOSPC and nothing lost. The true data
// needs no space at all: every sharer is healed.
TEST(Checksums, RecoveryOfASharedBlockOnAFullDevice) {
  Device dev(8 << 20);
  const std::string data = content(2 * B, 14);
  Ino a = create(*dev, "a", data);
  Ino b = create(*dev, "b", "");
  ASSERT_TRUE(dev->clone_range(a, 0, b, 0, 0));
  const uint64_t phys = phys_of(*dev, a, B);
  ASSERT_TRUE(dev->inject_poison(phys + 128, 64, false));
  Ino filler = create(*dev, "filler", "");
  const std::string chunk(256 * 1024, 'f');
  for (uint64_t off = 0;; off += chunk.size()) {
    auto n = write(*dev, filler, off, chunk);
    if (!n || *n < chunk.size()) break;
  }
  ASSERT_LT(dev->statfs().blocks_free, 4u);

  std::string other = data.substr(B, B);
  other[0] ^= 1;
  auto n = write(*dev, b, B, other);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code, std::errc::no_space_on_device);
  for (Ino ino : {a, b}) {
    EXPECT_EQ(phys_of(*dev, ino, B), phys);
    EXPECT_EQ(read(*dev, ino, 0, B).value_or(""), data.substr(0, B));
    EXPECT_FALSE(read(*dev, ino, B, B));
  }
  EXPECT_EQ(dev->badblocks().size(), 1u);

  ASSERT_TRUE(write(*dev, b, B, data.substr(B, B)));
  EXPECT_TRUE(dev->badblocks().empty());
  for (Ino ino : {a, b}) EXPECT_EQ(read(*dev, ino, 0, 2 * B).value_or(""), data);
  dev.remount();
  EXPECT_TRUE(dev.check().clean());
}

// Poison in one part of a block, an in-place write in another: the entry
// still describes the lost bytes (crc32c is affine), so after the block is
// shared a recovery write of the true bytes still heals every sharer.
TEST(Checksums, AWriteBesidePoisonKeepsTheChecksumOfTheLostBytes) {
  Device dev(kDevice);
  std::string data = content(2 * B, 11);
  Ino a = create(*dev, "a", data);
  const uint64_t phys = phys_of(*dev, a, B);
  ASSERT_TRUE(dev->inject_poison(phys + 1024, 64, false));
  const std::string patch = content(100, 12);
  ASSERT_TRUE(write(*dev, a, B + 3000, patch));
  data.replace(B + 3000, 100, patch);
  Ino b = create(*dev, "b", "");
  ASSERT_TRUE(dev->clone_range(a, 0, b, 0, 0));
  ASSERT_TRUE(write(*dev, b, B + 1024, data.substr(B + 1024, 64)));
  EXPECT_EQ(events_of(*dev, EventKind::kHeal).size(), 1u);
  EXPECT_EQ(phys_of(*dev, b, B), phys);
  EXPECT_EQ(read(*dev, a, B, B).value_or(""), data.substr(B, B));
  EXPECT_EQ(scrub(*dev).checksum_mismatches, 0u);
}

TEST(Checksums, APoisonedChecksumTableBlockIsRecomputedFromTheData) {
  Device dev(kDevice);
  Ino a = create(*dev, "a", content(8 * B, 13));
  const uint64_t block = phys_of(*dev, a, 3 * B) / B;
  const uint32_t entry = entry_of(dev, block);
  const uint64_t table_block = entry_offset(*dev, block) / B;
  ASSERT_TRUE(dev->inject_poison(table_block * B, B, false));
  EXPECT_TRUE(dev->badblocks().empty());  // repaired at once
  EXPECT_EQ(entry_of(dev, block), entry);
  auto repairs = events_of(*dev, EventKind::kRepair);
  ASSERT_FALSE(repairs.empty());
  EXPECT_EQ(repairs.back().owners.at(0).what, "checksums");
  EXPECT_EQ(scrub(*dev).checksum_mismatches, 0u);
  // The intent bitmap too.
  ASSERT_TRUE(dev->inject_poison(dev->info().csum_start * B, 64, false));
  EXPECT_TRUE(dev->badblocks().empty());
  dev.remount();
  EXPECT_TRUE(dev.check().clean());
}

TEST(Checksums, FsmapNamesTheChecksumRegion) {
  Device dev(kDevice);
  const FsInfo i = dev->info();
  uint64_t seen = 0;
  ASSERT_TRUE(dev->fsmap(i.csum_start * B, i.csum_blocks * B, [&](const FsmapEntry& e) {
    EXPECT_EQ(e.owner, FsmapOwner::kChecksums);
    seen += e.length;
    return true;
  }));
  EXPECT_EQ(seen, i.csum_blocks * B);
  EXPECT_STREQ(fsmap_owner_name(FsmapOwner::kChecksums), "checksums");
}

}  // namespace
}  // namespace poisonfs
