// The reverse map against a brute-force model: a per-block multiset of
// owners. Random adds, removes (whole records and pieces of them) and
// queries; every query, refcount and "no longer owned" report is compared.
#include "rmap/rmap.h"

#include <gtest/gtest.h>

#include <algorithm>
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

// The blocks of the ranges remove() reported as no longer owned.
std::set<uint64_t> blocks_of(const std::vector<BlockRange>& freed) {
  std::set<uint64_t> out;
  for (const BlockRange& f : freed)
    for (uint64_t b = f.start; b < f.end(); ++b) out.insert(b);
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

// Edits in physical order, as a clone's are: each lands next to the last
// edit (the finger), on a segment, in a gap before or after one, or beyond
// the last; then removed in order and in reverse. Checked against the model.
TEST(Rmap, EditsNextToThePreviousOneMatchTheModel) {
  std::mt19937_64 rng(3);
  auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  Rmap rmap;
  Model model;
  std::vector<Record> added;
  for (uint64_t b = 0; b + 8 < kBlocks; b += 1 + rnd(4)) {  // a source file, cut into pieces
    Record r{b, 1 + rnd(3), Owner{1, b, OwnerKind::kData}};
    rmap.add(r.start, r.count, r.owner);
    model.add(r);
  }
  for (uint64_t b = rnd(3); b + 4 < kBlocks; b += 1 + rnd(5)) {  // a clone of pieces of it, in order
    Record r{b, 1 + rnd(4), Owner{2, 1000 + b, OwnerKind::kData}};
    rmap.add(r.start, r.count, r.owner);
    model.add(r);
    added.push_back(r);
    ASSERT_EQ(expand(rmap, 0, kBlocks), model.query(0, kBlocks)) << "add at " << b;
  }
  for (size_t i = 0; i < added.size(); i += 2) {  // every other one, in order
    std::vector<BlockRange> freed;
    rmap.remove(added[i].start, added[i].count, added[i].owner, &freed);
    model.remove(added[i]);
  }
  for (size_t i = added.size(); i-- > 0;) {  // the rest, backwards
    if (i % 2 == 0) continue;
    std::vector<BlockRange> freed;
    rmap.remove(added[i].start, added[i].count, added[i].owner, &freed);
    ASSERT_EQ(blocks_of(freed), model.remove(added[i])) << "remove at " << added[i].start;
  }
  ASSERT_EQ(expand(rmap, 0, kBlocks), model.query(0, kBlocks));
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
      ASSERT_EQ(blocks_of(freed), model.remove(piece)) << "step " << step;
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

// Every segment with its owners, in order: two maps with equal layouts
// have equal segments, not only equal owners per block.
std::vector<std::pair<BlockRange, std::vector<Owner>>> layout(const Rmap& rmap) {
  std::vector<std::pair<BlockRange, std::vector<Owner>>> out;
  rmap.query(0, UINT64_MAX, [&](const RmapHit& h) {
    if (out.empty() || out.back().first != BlockRange{h.phys, h.count}) out.push_back({{h.phys, h.count}, {}});
    out.back().second.push_back(h.owner);
    return true;
  });
  return out;
}

// Records as an image holds them: files of extents, some physically and
// logically contiguous (they merge), some cloned whole or in part from
// another file (shared, overlapping at any offset), and chain blocks.
std::vector<Record> random_image_records(std::mt19937_64& rng) {
  auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  std::vector<Record> out;
  uint64_t files = 1 + rnd(8);
  for (uint64_t ino = 1; ino <= files; ++ino) {
    uint64_t fb = rnd(50);
    for (uint64_t n = rnd(12); n > 0; --n) {
      uint64_t start = rnd(kBlocks - 1), count = 1 + rnd(std::min<uint64_t>(30, kBlocks - start));
      // Cut into contiguous pieces, as separate records of one run.
      for (uint64_t done = 0; done < count;) {
        uint64_t piece = 1 + rnd(count - done);
        out.push_back({start + done, piece, Owner{ino, fb + done, OwnerKind::kData}});
        done += piece;
      }
      fb += count + rnd(3);
    }
    if (rnd(3) == 0) out.push_back({rnd(kBlocks), 1, Owner{ino, 0, static_cast<OwnerKind>(1 + rnd(3))}});
  }
  // Clones: another owner of a piece of an existing record.
  for (uint64_t n = rnd(10); n > 0 && !out.empty(); --n) {
    Record r = out[rnd(out.size())];
    if (r.owner.kind != OwnerKind::kData) continue;
    uint64_t skip = rnd(r.count), len = 1 + rnd(r.count - skip);
    out.push_back({r.start + skip, len, Owner{1 + rnd(files + 2), rnd(100), OwnerKind::kData}});
  }
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

TEST(Rmap, BuildEqualsIncrementalAdds) {
  std::mt19937_64 rng(7);
  uint64_t shared = 0, merged = 0;  // the cases must have come up
  for (int round = 0; round < 2000; ++round) {
    std::vector<Record> records = random_image_records(rng);
    Rmap added, built;
    std::vector<RmapRecord> input;
    for (const Record& r : records) {
      added.add(r.start, r.count, r.owner);
      input.push_back({r.start, r.count, r.owner});
    }
    built.build(input);
    ASSERT_EQ(layout(built), layout(added)) << "round " << round;
    ASSERT_EQ(built.segments(), added.segments()) << "round " << round;
    ASSERT_EQ(built.records(), added.records()) << "round " << round;
    built.for_each_segment([&](uint64_t, uint64_t, uint32_t owners) { shared += owners > 1; });
    merged += input.size() - std::min<uint64_t>(input.size(), built.records());
  }
  EXPECT_GT(shared, 1000u);
  EXPECT_GT(merged, 1000u);
}

// Thousands of records in no order: the sort takes its other path.
TEST(Rmap, BuildEqualsIncrementalAddsOfManyRecords) {
  std::mt19937_64 rng(11);
  auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  std::vector<RmapRecord> input;
  for (int i = 0; i < 20000; ++i) {
    uint64_t start = rnd(200000), count = 1 + rnd(8);
    if (rnd(4) == 0 && !input.empty()) start = input[rnd(input.size())].start;  // shared
    input.push_back({start, count, Owner{1 + rnd(50), rnd(100000), OwnerKind::kData}});
  }
  Rmap added, built;
  for (const RmapRecord& r : input) added.add(r.start, r.count, r.owner);
  built.build(input);
  EXPECT_EQ(layout(built), layout(added));
  EXPECT_EQ(built.records(), added.records());
}

TEST(Rmap, BuildHandlesDuplicatesAndLongRecords) {
  std::vector<RmapRecord> input = {
      {10, 4, Owner{3, 0, OwnerKind::kExtents}},
      {10, 4, Owner{3, 0, OwnerKind::kExtents}},  // the same chain block twice (a hostile image)
      {0, 0, Owner{9, 0, OwnerKind::kData}},      // empty: ignored
      {100, (uint64_t{1} << 31) + 5, Owner{4, 7, OwnerKind::kData}},
  };
  Rmap added, built;
  for (const RmapRecord& r : input) added.add(r.start, r.count, r.owner);
  built.build(input);
  EXPECT_EQ(layout(built), layout(added));
  EXPECT_EQ(built.refcount(11), 2u);
  EXPECT_EQ(built.records(), added.records());
}

TEST(Rmap, BuiltMapKeepsMatchingTheModel) {
  std::mt19937_64 rng(99);
  auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  Rmap rmap;
  rmap.add(5, 5, Owner{1, 0, OwnerKind::kData});  // replaced by build
  Model model;
  std::vector<Record> live = random_image_records(rng);
  std::vector<RmapRecord> input;
  for (const Record& r : live) {
    model.add(r);
    input.push_back({r.start, r.count, r.owner});
  }
  rmap.build(input);
  ASSERT_EQ(expand(rmap, 0, kBlocks), model.query(0, kBlocks));
  // Then the edits a mounted filesystem makes, on the built map.
  for (int step = 0; step < 3000; ++step) {
    if (rnd(2) == 0 || live.empty()) {
      uint64_t start = rnd(kBlocks - 1), count = 1 + rnd(std::min<uint64_t>(20, kBlocks - start));
      Record r{start, count, Owner{1 + rnd(6), rnd(200), OwnerKind::kData}};
      rmap.add(r.start, r.count, r.owner);
      model.add(r);
      live.push_back(r);
    } else {
      size_t idx = rnd(live.size());
      std::vector<BlockRange> freed;
      rmap.remove(live[idx].start, live[idx].count, live[idx].owner, &freed);
      ASSERT_EQ(blocks_of(freed), model.remove(live[idx])) << "step " << step;
      live.erase(live.begin() + static_cast<long>(idx));
    }
  }
  ASSERT_EQ(expand(rmap, 0, kBlocks), model.query(0, kBlocks));
}

}  // namespace
}  // namespace poisonfs
