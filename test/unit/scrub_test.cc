// Tests of Filesystem::scrub (src/fs/scrub.cc) on an in-memory device:
// latent poison under a file becomes known and is reported like a read
// would; latent and known poison in free space ends up cleared and the
// blocks allocatable again; a fresh filesystem scrubs clean; progress is
// reported per chunk; the filesystem stays usable afterwards.
//
// Not tested here: scrub of a shut-down filesystem (refused with EIO). The
// public API has no way to shut a filesystem down (FsImpl::shutdown is
// private and nothing in the core calls it yet).
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "poisonfs/filesystem.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

constexpr uint64_t B = kBlockSize;
const Caller kUser{1000, 1000, 022};

using Device = testing::TestDevice;

Ino create(Filesystem& fs, Ino dir, std::string_view name) {
  auto a = fs.mknod(dir, name, S_IFREG | 0644, 0, kUser);
  EXPECT_TRUE(a) << name << ": " << (a ? "" : a.error().to_string());
  return a ? a->ino : 0;
}

void write_str(Filesystem& fs, Ino ino, uint64_t off, const std::string& s) {
  auto n = fs.write(ino, off, std::as_bytes(std::span(s)));
  ASSERT_TRUE(n) << n.error().to_string();
  ASSERT_EQ(*n, s.size());
}

using testing::phys_of;

// A block in the middle of the largest free run.
uint64_t free_block(Filesystem& fs) {
  uint64_t block = 0, best = 0;
  EXPECT_TRUE(fs.fsmap(0, UINT64_MAX, [&](const FsmapEntry& e) {
    if (e.owner == FsmapOwner::kFree && e.length > best) {
      best = e.length;
      block = e.physical / B + e.length / B / 2;
    }
    return true;
  }));
  EXPECT_NE(block, 0u);
  return block;
}

std::optional<Event> find_event(Filesystem& fs, EventKind kind, uint64_t device_offset, uint64_t after = 0) {
  for (const Event& e : fs.events(after, SIZE_MAX, nullptr))
    if (e.kind == kind && e.device_offset <= device_offset && device_offset < e.device_offset + e.length) return e;
  return std::nullopt;
}

uint64_t last_seq(Filesystem& fs) {
  auto ev = fs.events(0, SIZE_MAX, nullptr);
  return ev.empty() ? 0 : ev.back().seq;
}

ScrubReport scrub(Filesystem& fs) {
  auto r = fs.scrub(nullptr);
  EXPECT_TRUE(r) << r.error().to_string();
  return r.value_or(ScrubReport{});
}

// Issue 5: scrub on a shut-down filesystem. A file's inode lost to poison
// while unmounted shuts the mount down: scrub refuses with EIO, walks
// nothing and clears nothing (not even quarantined free space).
TEST(Scrub, RefusedOnAShutDownFilesystem) {
  Device dev(16 << 20);
  Ino f = create(*dev, kRootIno, "f");
  write_str(*dev, f, 0, std::string(3 * B, 'x'));
  const uint64_t slot = dev->info().inode_start * B + (f - 1) * 256;
  const uint64_t free_at = free_block(*dev) * B;
  ASSERT_TRUE(dev->unmount());
  ASSERT_TRUE(dev.media().inject_poison(slot, 64, true));
  ASSERT_TRUE(dev.media().inject_poison(free_at, 64, true));
  auto fs = Filesystem::mount(dev.copy(), {});
  ASSERT_TRUE(fs) << fs.error().to_string();
  ASSERT_TRUE((*fs)->health().shutdown);
  const uint64_t seq = last_seq(**fs);
  auto r = (*fs)->scrub(nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, std::errc::io_error);
  EXPECT_NE(r.error().to_string().find("shut down"), std::string::npos) << r.error().to_string();
  EXPECT_EQ(last_seq(**fs), seq) << "scrub recorded events";
  EXPECT_EQ((*fs)->health().latent_poison_bytes, 64u) << "scrub walked the free space";
  EXPECT_TRUE((*fs)->unmount());
}

TEST(Scrub, FreshFilesystemFindsNothing) {
  Device dev(16 << 20);
  Ino f = create(*dev, kRootIno, "f");
  write_str(*dev, f, 0, std::string(8 * B, 'a'));
  uint64_t calls = 0, last_done = 0, last_total = 0;
  auto r = dev->scrub([&](uint64_t done, uint64_t total) {
    ++calls;
    EXPECT_GT(done, last_done);
    EXPECT_LE(done, total);
    last_done = done;
    last_total = total;
  });
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->latent_found, 0u);
  EXPECT_EQ(r->ranges_notified, 0u);
  EXPECT_EQ(r->quarantine_cleared_bytes, 0u);
  EXPECT_EQ(r->known_poison_bytes, 0u);
  // Metadata plus the file's 8 blocks and the directory, not the free space.
  FsInfo info = dev->info();
  EXPECT_GE(r->bytes_scanned, info.data_start * B + 8 * B);
  EXPECT_LT(r->bytes_scanned, info.device_bytes / 2);
  EXPECT_GE(calls, 2u);  // 16 MiB in 4 MiB chunks
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, info.device_bytes);
  EXPECT_TRUE(dev->badblocks().empty());
}

TEST(Scrub, LatentPoisonUnderAFileBecomesKnownAndIsReported) {
  Device dev(16 << 20);
  Ino f = create(*dev, kRootIno, "f");
  write_str(*dev, f, 0, std::string(4 * B, 'a'));
  const uint64_t p = phys_of(*dev, f, 2 * B) + 128;
  ASSERT_TRUE(dev->inject_poison(p, 64, true));
  EXPECT_TRUE(dev->file_poison(f)->empty());  // latent: nobody knows yet
  const uint64_t seq = last_seq(*dev);
  ScrubReport r = scrub(*dev);
  EXPECT_EQ(r.latent_found, 1u);
  EXPECT_EQ(r.ranges_notified, 1u);
  EXPECT_EQ(r.known_poison_bytes, 64u);
  EXPECT_EQ(dev->badblocks(), (std::vector<PoisonRange>{{p, 64, false}}));
  auto fp = dev->file_poison(f);
  ASSERT_TRUE(fp);
  ASSERT_EQ(fp->size(), 1u);
  EXPECT_EQ((*fp)[0].file_offset, 2 * B + 128);
  EXPECT_EQ((*fp)[0].length, 64u);
  auto ev = find_event(*dev, EventKind::kFailure, p, seq);
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->action, "poison reported");  // flags 0: nothing consumed it
  ASSERT_EQ(ev->owners.size(), 1u);
  EXPECT_EQ(ev->owners[0].path, "/f");
  EXPECT_EQ(ev->owners[0].file_offset, 2 * B + 128);
  // A second scrub finds nothing new; file poison is not free space.
  ScrubReport again = scrub(*dev);
  EXPECT_EQ(again.latent_found, 0u);
  EXPECT_EQ(again.quarantine_cleared_bytes, 0u);
  EXPECT_EQ(again.known_poison_bytes, 64u);
}

TEST(Scrub, LatentPoisonInFreeSpaceIsClearedAndReturned) {
  Device dev(16 << 20);
  const uint64_t block = free_block(*dev);
  const uint64_t free_before = dev->info().free_blocks;
  ASSERT_TRUE(dev->inject_poison(block * B + 256, 64, true));
  EXPECT_EQ(dev->health().quarantined_bytes, 0u);  // latent: not known yet
  const uint64_t seq = last_seq(*dev);
  ScrubReport r = scrub(*dev);
  EXPECT_EQ(r.latent_found, 1u);
  EXPECT_EQ(r.ranges_notified, 1u);
  EXPECT_EQ(r.quarantine_cleared_bytes, B);
  EXPECT_EQ(r.known_poison_bytes, 0u);
  EXPECT_TRUE(dev->badblocks().empty());
  Health h = dev->health();
  EXPECT_EQ(h.quarantined_bytes, 0u);
  EXPECT_EQ(h.known_poison_bytes, 0u);
  EXPECT_EQ(h.latent_poison_bytes, 0u);
  EXPECT_EQ(dev->info().free_blocks, free_before);
  EXPECT_TRUE(find_event(*dev, EventKind::kQuarantine, block * B + 256, seq));
  auto rep = find_event(*dev, EventKind::kRepair, block * B, seq);
  ASSERT_TRUE(rep);
  EXPECT_EQ(rep->action, "quarantined free space cleared and returned");
  // The block is zeroed and allocatable: fill the device and someone gets it.
  bool owned = false;
  for (int i = 0; i < 10000 && !owned; ++i) {
    Ino x = create(*dev, kRootIno, "x" + std::to_string(i));
    const std::string data(64 * B, 'z');
    auto n = dev->write(x, 0, std::as_bytes(std::span(data)));
    if (!n) break;
    ASSERT_TRUE(dev->fsmap(block * B, B, [&](const FsmapEntry& e) {
      if (e.owner == FsmapOwner::kData) owned = true;
      return true;
    }));
  }
  EXPECT_TRUE(owned) << "block " << block << " never allocated again";
  EXPECT_TRUE(dev.check().clean());
}

TEST(Scrub, KnownPoisonInFreeSpaceIsCleared) {
  Device dev(16 << 20);
  const uint64_t block = free_block(*dev);
  const uint64_t free_before = dev->info().free_blocks;
  ASSERT_TRUE(dev->inject_poison(block * B, 2 * B, false));
  EXPECT_EQ(dev->health().quarantined_bytes, 2 * B);
  EXPECT_EQ(dev->info().free_blocks, free_before - 2);
  ScrubReport r = scrub(*dev);
  EXPECT_EQ(r.latent_found, 0u);
  EXPECT_EQ(r.quarantine_cleared_bytes, 2 * B);
  EXPECT_TRUE(dev->badblocks().empty());
  EXPECT_EQ(dev->health().quarantined_bytes, 0u);
  EXPECT_EQ(dev->info().free_blocks, free_before);
  // Cleared means zeroed: no poison pattern left on the media.
  for (uint64_t i = 0; i < 2 * B; ++i) ASSERT_EQ(dev.media().base()[block * B + i], std::byte{0}) << i;
  // Survives a remount: nothing is quarantined again.
  dev.remount();
  EXPECT_EQ(dev->health().quarantined_bytes, 0u);
  EXPECT_TRUE(dev->badblocks().empty());
}

TEST(Scrub, MetadataLatentPoisonIsRepaired) {
  Device dev(16 << 20);
  Ino f = create(*dev, kRootIno, "f");
  write_str(*dev, f, 0, "hello");
  FsInfo info = dev->info();
  // The inode table block.
  ASSERT_TRUE(dev->inject_poison(info.inode_start * B + 64, 64, true));
  ScrubReport r = scrub(*dev);
  EXPECT_EQ(r.latent_found, 1u);
  EXPECT_TRUE(dev->badblocks().empty());  // rewritten from memory
  EXPECT_TRUE(find_event(*dev, EventKind::kRepair, info.inode_start * B + 64));
  dev.remount();
  auto a = dev->lookup(kRootIno, "f");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->size, 5u);
}

}  // namespace
}  // namespace poisonfs
