// The packed fsmap page (POISONFS_IOC_FSMAP_PACKED): whatever the packer
// keeps comes back exactly, records and paths; pages that overflow keep a
// prefix and still make progress; malformed pages are refused, never read
// past their end.
#include "fs/fsmap_pack.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "poisonfs/ioctl.h"

namespace poisonfs {
namespace {

using Names = std::map<Ino, std::vector<std::string>>;

// The paths the packer asks for, from a fixed table (none for the rest).
FsmapPacker::PathsOf paths_from(const Names& names) {
  return [&names](std::span<const Ino> inos, PathList& out) {
    out.clear();
    for (Ino ino : inos) {
      out.next_inode();
      if (auto it = names.find(ino); it != names.end())
        for (const std::string& name : it->second) out.add(name);
    }
  };
}

struct Unpacked {
  std::vector<FsmapEntry> records;
  Names paths;
  std::vector<Ino> not_sent;
  std::vector<Ino> order;  // path table entries as they came
};

Result<Unpacked> unpack(std::span<const uint8_t> page, uint32_t count) {
  Unpacked u;
  Status st = unpack_fsmap(page, count, u.records, [&](Ino ino, bool sent, std::span<const std::string> paths) {
    u.order.push_back(ino);
    if (!sent) u.not_sent.push_back(ino);
    else u.paths[ino].assign(paths.begin(), paths.end());
  });
  if (!st) return std::unexpected(st.error());
  return u;
}

void expect_same(const FsmapEntry& a, const FsmapEntry& b, size_t i) {
  EXPECT_EQ(a.physical, b.physical) << i;
  EXPECT_EQ(a.length, b.length) << i;
  EXPECT_EQ(a.owner, b.owner) << i;
  EXPECT_EQ(a.shared, b.shared) << i;
  EXPECT_EQ(a.poisoned, b.poisoned) << i;
  if (fsmap_owner_has_inode(a.owner)) {
    EXPECT_EQ(a.ino, b.ino) << i;
  }
  if (a.owner == FsmapOwner::kData) {
    EXPECT_EQ(a.file_offset, b.file_offset) << i;
  }
}

FsmapEntry data(uint64_t physical, uint64_t length, Ino ino, uint64_t file_offset, bool shared = true) {
  return FsmapEntry{physical, length, FsmapOwner::kData, ino, file_offset, shared, false};
}

// A random listing in device order: every kind of owner, runs of sharers of
// one range, poisoned pieces, large offsets, and a record placed before the
// previous one (the superblock copy comes last but lies anywhere).
std::vector<FsmapEntry> random_listing(std::mt19937_64& rng, size_t n, Names& names) {
  std::vector<FsmapEntry> out;
  uint64_t physical = 0;
  while (out.size() < n) {
    uint64_t length = (1 + rng() % 64) * 4096;
    auto owner = static_cast<FsmapOwner>(rng() % 9);
    size_t sharers = owner == FsmapOwner::kData ? 1 + rng() % 5 : 1;
    for (size_t s = 0; s < sharers && out.size() < n; ++s) {
      FsmapEntry e{physical, length, owner, 0, 0, sharers > 1, rng() % 7 == 0};
      if (fsmap_owner_has_inode(owner)) e.ino = 1 + rng() % 300;
      if (owner == FsmapOwner::kData) e.file_offset = (rng() % 3 == 0) ? (rng() >> 8) : (rng() % 1000) * 4096;
      out.push_back(e);
      if (owner == FsmapOwner::kData && !names.contains(e.ino)) {
        std::vector<std::string>& p = names[e.ino];
        for (size_t k = 0, links = rng() % 4; k < links; ++k)
          p.push_back("/dir" + std::to_string(rng() % 5) + "/file" + std::to_string(e.ino) + "-" + std::to_string(k));
      }
    }
    physical += length;
  }
  out.push_back(FsmapEntry{4096, 4096, FsmapOwner::kSuperblock, 0, 0, false, false});
  return out;
}

TEST(FsmapPack, RandomListingsComeBackExactly) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    Names names;
    std::vector<FsmapEntry> listing = random_listing(rng, 1 + rng() % 400, names);
    std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
    FsmapPacker packer(page);
    size_t added = 0;
    while (added < listing.size() && packer.add(listing[added])) ++added;
    size_t kept = packer.finish(paths_from(names));
    ASSERT_GT(kept, 0u);
    ASSERT_LE(kept, added);
    ASSERT_LE(packer.used(), page.size());

    auto u = unpack(std::span(page).first(packer.used()), static_cast<uint32_t>(kept));
    ASSERT_TRUE(u) << u.error().to_string();
    ASSERT_EQ(u->records.size(), kept);
    for (size_t i = 0; i < kept; ++i) expect_same(u->records[i], listing[i], i);
    // Every data owner kept is named once, with all its paths.
    std::set<Ino> owners;
    for (size_t i = 0; i < kept; ++i)
      if (listing[i].owner == FsmapOwner::kData) owners.insert(listing[i].ino);
    EXPECT_EQ(u->order.size(), owners.size());
    EXPECT_TRUE(u->not_sent.empty());
    for (Ino ino : owners) EXPECT_EQ(u->paths[ino], names[ino]) << ino;
  }
}

TEST(FsmapPack, OneBlockWithAThousandSharersFitsOnePage) {
  Names names;
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  FsmapPacker packer(page);
  for (Ino ino = 2; ino < 1003; ++ino) {
    names[ino] = {"/clones/c" + std::to_string(ino)};
    ASSERT_TRUE(packer.add(data(51347456, 4096, ino, 0)));
  }
  EXPECT_EQ(packer.finish(paths_from(names)), 1001u);
  auto u = unpack(std::span(page).first(packer.used()), 1001);
  ASSERT_TRUE(u);
  EXPECT_EQ(u->paths.size(), 1001u);
  EXPECT_EQ(u->paths[1002], std::vector<std::string>{"/clones/c1002"});
}

// Front coding compares paths eight bytes at a time: paths that differ at
// every byte around those boundaries, or are prefixes of each other, or
// are empty of a shared prefix, still come back exactly.
TEST(FsmapPack, PathsDifferingAtAnyByteRoundTrip) {
  const std::string base = "/0123456789abcdef0123456789abcdef";
  std::vector<std::string> all;
  for (size_t at = 1; at < base.size(); ++at) {
    std::string p = base;
    p[at] = '#';
    all.push_back(base);
    all.push_back(p);                   // differs from the one before at byte `at`
    all.push_back(base.substr(0, at));  // a prefix of the one before
  }
  all.push_back("/");
  all.push_back(base + "/deeper");
  Names names;
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  FsmapPacker packer(page);
  // One inode per path, and one inode with all of them (its own hard links).
  for (size_t k = 0; k < all.size(); ++k) {
    names[100 + k] = {all[k]};
    ASSERT_TRUE(packer.add(data(4096, 4096, 100 + k, 0)));
  }
  names[1000] = all;
  ASSERT_TRUE(packer.add(data(4096, 4096, 1000, 0)));
  const size_t count = all.size() + 1;
  ASSERT_EQ(packer.finish(paths_from(names)), count);
  auto u = unpack(std::span(page).first(packer.used()), static_cast<uint32_t>(count));
  ASSERT_TRUE(u);
  for (const auto& [ino, want] : names) EXPECT_EQ(u->paths[ino], want) << ino;
}

TEST(FsmapPack, RecordsWhosePathsDoNotFitMoveToTheNextPage) {
  Names names;
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  FsmapPacker packer(page);
  // 200 owners with 100-byte names that share no prefix (front coding
  // saves nothing): the records fit, not all their names.
  for (Ino ino = 10; ino < 210; ++ino) {
    names[ino] = {"/" + std::string(100, static_cast<char>('a' + ino % 26)) + std::to_string(ino)};
    ASSERT_TRUE(packer.add(data(8192, 4096, ino, ino * 4096)));
  }
  size_t kept = packer.finish(paths_from(names));
  EXPECT_GT(kept, 100u);
  EXPECT_LT(kept, 200u);
  EXPECT_EQ(packer.records().size(), kept);
  auto u = unpack(std::span(page).first(packer.used()), static_cast<uint32_t>(kept));
  ASSERT_TRUE(u);
  EXPECT_EQ(u->paths.size(), kept);
  EXPECT_EQ(u->paths[10], names[10]);
}

TEST(FsmapPack, AFirstRecordWithTooManyNamesIsSentWithoutThem) {
  Names names;
  for (int k = 0; k < 100; ++k) names[5].push_back("/" + std::string(200, static_cast<char>('a' + k % 26)) + std::to_string(k));
  names[6] = {"/six"};
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  FsmapPacker packer(page);
  ASSERT_TRUE(packer.add(data(4096, 4096, 5, 0)));
  ASSERT_TRUE(packer.add(data(8192, 4096, 6, 0)));
  ASSERT_EQ(packer.finish(paths_from(names)), 2u);  // the second's name still fits
  auto u = unpack(std::span(page).first(packer.used()), 2);
  ASSERT_TRUE(u);
  EXPECT_EQ(u->not_sent, std::vector<Ino>{5});
  EXPECT_EQ(u->paths[6], names[6]);
}

TEST(FsmapPack, AFullPageRefusesMoreRecords) {
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  FsmapPacker packer(page);
  size_t added = 0;
  uint64_t physical = 0;
  // Records with nothing in common with the one before: the largest kind.
  while (packer.add(FsmapEntry{physical, 1ull << 40, FsmapOwner::kExtents, (1ull << 60) + added, 0, false, false})) {
    ++added;
    physical += 1ull << 40;
  }
  EXPECT_GT(added, 100u);
  EXPECT_EQ(packer.finish(paths_from({})), added);
  EXPECT_LE(packer.used(), page.size());
}

TEST(FsmapPack, MalformedPagesAreRefused) {
  Names names{{3, {"/a/b", "/a/c"}}};
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  FsmapPacker packer(page);
  ASSERT_TRUE(packer.add(data(4096, 4096, 3, 0)));
  ASSERT_TRUE(packer.add(FsmapEntry{8192, 4096, FsmapOwner::kFree, 0, 0, false, false}));
  ASSERT_EQ(packer.finish(paths_from(names)), 2u);
  std::span<const uint8_t> good = std::span(page).first(packer.used());
  ASSERT_TRUE(unpack(good, 2));

  // Every truncation, a byte too many, a count past the records.
  for (size_t n = 0; n < good.size(); ++n) EXPECT_FALSE(unpack(good.first(n), 2)) << n;
  std::vector<uint8_t> longer(good.begin(), good.end());
  longer.push_back(0);
  EXPECT_FALSE(unpack(longer, 2));
  EXPECT_FALSE(unpack(good, 3));
  // A count no page could hold is refused before anything is reserved for it.
  EXPECT_FALSE(unpack(good, UINT32_MAX));
  // A first record that claims to repeat the one before it.
  std::vector<uint8_t> same(good.begin(), good.end());
  same[0] |= 0x40;
  EXPECT_FALSE(unpack(same, 2));

  // Random bytes: refused or decoded, never read past the end.
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> junk(rng() % 64);
    for (uint8_t& b : junk) b = static_cast<uint8_t>(rng());
    (void)unpack(junk, static_cast<uint32_t>(rng() % 4));
  }
}

}  // namespace
}  // namespace poisonfs
