// The reverse map against a brute-force model: a per-block multiset of
// owners. Random adds, removes (whole records and pieces of them) and
// queries; every query, refcount and "no longer owned" report is compared.
#include "rmap/rmap.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace poisonfs {
namespace {

constexpr uint64_t kBlocks = 600;

struct Record {
  uint64_t start, count;
  Owner owner;
};

class Model {
 public:
  void add(const Record& r) {
    for (uint64_t i = 0; i < r.count; ++i) blocks_[r.start + i].insert(at(r.owner, i));
  }
  // Returns the blocks that became unowned.
  std::set<uint64_t> remove(const Record& r) {
    std::set<uint64_t> freed;
    for (uint64_t i = 0; i < r.count; ++i) {
      auto& owners = blocks_[r.start + i];
      auto it = owners.find(at(r.owner, i));
      if (it == owners.end()) continue;
      owners.erase(it);
      if (owners.empty()) freed.insert(r.start + i);
    }
    return freed;
  }
  std::multiset<std::pair<uint64_t, Owner>> query(uint64_t start, uint64_t count) const {
    std::multiset<std::pair<uint64_t, Owner>> out;
    for (uint64_t b = start; b < start + count && b < kBlocks; ++b)
      for (const Owner& o : blocks_[b]) out.insert({b, o});
    return out;
  }
  uint32_t refcount(uint64_t b) const { return static_cast<uint32_t>(blocks_[b].size()); }

  static Owner at(Owner o, uint64_t delta) {
    if (o.kind == OwnerKind::kData) o.offset += delta;
    return o;
  }

 private:
  std::multiset<Owner> blocks_[kBlocks];
};

std::multiset<std::pair<uint64_t, Owner>> expand(const Rmap& rmap, uint64_t start, uint64_t count) {
  std::multiset<std::pair<uint64_t, Owner>> out;
  rmap.query(start, count, [&](const RmapHit& h) {
    EXPECT_GE(h.phys, start);
    EXPECT_LE(h.phys + h.count, start + count);
    for (uint64_t i = 0; i < h.count; ++i) out.insert({h.phys + i, Model::at(h.owner, i)});
    return true;
  });
  return out;
}

TEST(Rmap, SharedBlockNamesEveryOwner) {
  Rmap rmap;
  for (uint64_t ino = 1; ino <= 1001; ++ino) rmap.add(100, 10, Owner{ino, 0, OwnerKind::kData});
  EXPECT_EQ(rmap.segments(), 1u);
  EXPECT_EQ(rmap.refcount(105), 1001u);
  std::set<uint64_t> inos;
  rmap.query(104, 1, [&](const RmapHit& h) {
    EXPECT_EQ(h.phys, 104u);
    EXPECT_EQ(h.count, 1u);
    EXPECT_EQ(h.owner.offset, 4u);
    EXPECT_EQ(h.sharers, 1001u);
    inos.insert(h.owner.ino);
    return true;
  });
  EXPECT_EQ(inos.size(), 1001u);
}

TEST(Rmap, SequentialAddsMergeIntoOneSegment) {
  Rmap rmap;
  for (uint64_t i = 0; i < 256; ++i) rmap.add(1000 + i * 4, 4, Owner{7, i * 4, OwnerKind::kData});
  EXPECT_EQ(rmap.segments(), 1u);
  EXPECT_EQ(rmap.records(), 1u);
  std::vector<BlockRange> freed;
  rmap.remove(1000, 1024, Owner{7, 0, OwnerKind::kData}, &freed);
  ASSERT_EQ(freed.size(), 1u);
  EXPECT_EQ(freed[0], (BlockRange{1000, 1024}));
  EXPECT_EQ(rmap.segments(), 0u);
}

TEST(Rmap, RemovingOneSharerKeepsTheBlock) {
  Rmap rmap;
  rmap.add(10, 4, Owner{1, 0, OwnerKind::kData});
  rmap.add(10, 4, Owner{2, 8, OwnerKind::kData});
  std::vector<BlockRange> freed;
  rmap.remove(11, 2, Owner{1, 1, OwnerKind::kData}, &freed);
  EXPECT_TRUE(freed.empty());
  EXPECT_EQ(rmap.refcount(10), 2u);
  EXPECT_EQ(rmap.refcount(11), 1u);
  rmap.remove(10, 4, Owner{2, 8, OwnerKind::kData}, &freed);
  ASSERT_EQ(freed.size(), 1u);
  EXPECT_EQ(freed[0], (BlockRange{11, 2}));
}

TEST(Rmap, MatchesBruteForceModel) {
  std::mt19937_64 rng(42);
  auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  Rmap rmap;
  Model model;
  std::vector<Record> live;
  for (int step = 0; step < 6000; ++step) {
    uint64_t op = rnd(10);
    if (op < 4 || live.empty()) {
      uint64_t start = rnd(kBlocks - 1), count = 1 + rnd(std::min<uint64_t>(40, kBlocks - start));
      Owner o{1 + rnd(6), rnd(3) == 0 ? 0 : rnd(1000), static_cast<OwnerKind>(rnd(5) == 0 ? 1 + rnd(3) : 0)};
      if (o.kind != OwnerKind::kData) o.offset = 0;
      Record r{start, count, o};
      rmap.add(r.start, r.count, r.owner);
      model.add(r);
      live.push_back(r);
    } else if (op < 7) {
      // Remove a piece of a live record (possibly all of it).
      size_t idx = rnd(live.size());
      Record r = live[idx];
      uint64_t skip = rnd(r.count), len = 1 + rnd(r.count - skip);
      Record piece{r.start + skip, len, Model::at(r.owner, skip)};
      std::vector<BlockRange> freed;
      rmap.remove(piece.start, piece.count, piece.owner, &freed);
      std::set<uint64_t> got;
      for (const BlockRange& f : freed)
        for (uint64_t b = f.start; b < f.end(); ++b) got.insert(b);
      ASSERT_EQ(got, model.remove(piece)) << "step " << step;
      live.erase(live.begin() + static_cast<long>(idx));
      if (skip > 0) live.push_back({r.start, skip, r.owner});
      if (skip + len < r.count)
        live.push_back({r.start + skip + len, r.count - skip - len, Model::at(r.owner, skip + len)});
    } else {
      uint64_t start = rnd(kBlocks), count = 1 + rnd(80);
      ASSERT_EQ(expand(rmap, start, count), model.query(start, count)) << "step " << step;
      uint64_t b = rnd(kBlocks);
      ASSERT_EQ(rmap.refcount(b), model.refcount(b)) << "step " << step;
    }
  }
  ASSERT_EQ(expand(rmap, 0, kBlocks), model.query(0, kBlocks));
  // Segments are maximal: no two adjacent segments continue each other
  // (checked indirectly: the record count never exceeds the model's).
  uint64_t records = 0;
  rmap.for_each_segment([&](uint64_t, uint64_t, uint32_t owners) { records += owners; });
  EXPECT_EQ(records, rmap.records());
}

}  // namespace
}  // namespace poisonfs
