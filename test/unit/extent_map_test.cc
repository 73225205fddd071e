// Tests of the per-inode extent map (src/fs/extent_map.*): insert merges
// with file- and physically-contiguous neighbours of the same kind only;
// punch splits and drops exactly the punched blocks; and every edit reports
// what must be persisted (dirty extents, freed record slots) completely,
// checked by a random run against a block-by-block model that also keeps
// the "records on media" the edits describe.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "format/layout.h"
#include "fs/extent_map.h"

namespace poisonfs {
namespace {

struct Piece {
  uint64_t file_block, phys_block, nblocks;
  uint32_t flags;
  bool operator==(const Piece&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Piece& p) {
  return os << "{fb " << p.file_block << " phys " << p.phys_block << " n " << p.nblocks << " flags " << p.flags << "}";
}

std::vector<Piece> pieces(const ExtentMap& m) {
  std::vector<Piece> out;
  for (const Extent& e : m) out.push_back({e.file_block, e.phys_block, e.nblocks, e.flags});
  return out;
}

// The blocks of a list of ranges, sorted (a multiset), so that two lists of
// dropped blocks compare however they are cut.
template <class Range>
std::vector<uint64_t> blocks_of(const std::vector<Range>& v) {
  std::vector<uint64_t> out;
  for (const BlockRange& r : v)
    for (uint64_t b = r.start; b < r.end(); ++b) out.push_back(b);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint64_t> blocks_of(std::initializer_list<BlockRange> v) { return blocks_of(std::vector<BlockRange>(v)); }

Extent* loaded(uint64_t fb, uint64_t phys, uint64_t n, uint32_t flags, uint64_t slot_block, uint32_t slot) {
  auto* e = new Extent;
  e->file_block = fb;
  e->phys_block = phys;
  e->nblocks = n;
  e->flags = flags;
  e->slot = {slot_block, slot};
  return e;
}

TEST(ExtentMap, InsertMergesWithThePreviousContiguousExtent) {
  ExtentMap m;
  ExtentEdit e1, e2;
  m.insert(0, 4, 100, 0, e1);
  m.insert(4, 2, 104, 0, e2);
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 100, 6, 0}}));
  EXPECT_EQ(m.mapped_blocks(), 6u);
  ASSERT_EQ(e2.dirty.size(), 1u);
  EXPECT_EQ(e2.dirty[0]->nblocks, 6u);
  EXPECT_TRUE(e2.dropped.empty());
}

TEST(ExtentMap, InsertMergesWithTheNextContiguousExtentAndFreesItsSlot) {
  ExtentMap m;
  ASSERT_TRUE(m.load(loaded(10, 210, 5, 0, 7, 3)));
  ExtentEdit edit;
  m.insert(8, 2, 208, 0, edit);
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{8, 208, 7, 0}}));
  ASSERT_EQ(edit.freed_slots.size(), 1u);
  EXPECT_EQ(edit.freed_slots[0].block, 7u);
  EXPECT_EQ(edit.freed_slots[0].index, 3u);
  EXPECT_TRUE(edit.dropped.empty());  // the blocks now belong to the merged extent
}

TEST(ExtentMap, InsertFillingAGapJoinsBothNeighbours) {
  ExtentMap m;
  ExtentEdit edit;
  m.insert(0, 2, 50, 0, edit);
  m.insert(5, 3, 55, 0, edit);
  m.insert(2, 3, 52, 0, edit);
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 50, 8, 0}}));
  EXPECT_EQ(m.size(), 1u);
  EXPECT_EQ(m.mapped_blocks(), 8u);
}

TEST(ExtentMap, InsertDoesNotMergeAcrossAPhysicalGap) {
  ExtentMap m;
  ExtentEdit edit;
  m.insert(0, 2, 50, 0, edit);
  m.insert(2, 2, 60, 0, edit);  // file-contiguous, not physically
  m.insert(4, 2, 62, 0, edit);  // physically contiguous with the second
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 50, 2, 0}, {2, 60, 4, 0}}));
}

TEST(ExtentMap, InsertDoesNotMergeAcrossAFileGap) {
  ExtentMap m;
  ExtentEdit edit;
  m.insert(0, 2, 50, 0, edit);
  m.insert(3, 2, 52, 0, edit);  // physically contiguous, not in the file
  EXPECT_EQ(m.size(), 2u);
}

TEST(ExtentMap, InsertDoesNotMergeDifferentFlags) {
  ExtentMap m;
  ExtentEdit edit;
  m.insert(0, 2, 50, 0, edit);
  m.insert(2, 2, 52, kExtentUnwritten, edit);
  m.insert(4, 2, 54, 0, edit);
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 50, 2, 0}, {2, 52, 2, kExtentUnwritten}, {4, 54, 2, 0}}));
  EXPECT_TRUE(m.containing(3)->unwritten());
  EXPECT_FALSE(m.containing(1)->unwritten());
}

// Loaded records carry the record's kSlotValid bit; an extent of the same
// kind inserted next to one must still merge with it.
TEST(ExtentMap, LoadedExtentMergesWithAnInsertOfTheSameKind) {
  ExtentMap m;
  ASSERT_TRUE(m.load(loaded(0, 100, 4, kSlotValid, 9, 0)));
  ASSERT_TRUE(m.load(loaded(10, 300, 4, kSlotValid | kExtentUnwritten, 9, 1)));
  ExtentEdit edit;
  m.insert(4, 2, 104, 0, edit);
  m.insert(14, 2, 304, kExtentUnwritten, edit);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.containing(0)->nblocks, 6u);
  EXPECT_EQ(m.containing(10)->nblocks, 6u);
  EXPECT_TRUE(m.containing(15)->unwritten());
}

TEST(ExtentMap, LoadRefusesOverlaps) {
  ExtentMap m;
  ASSERT_TRUE(m.load(loaded(10, 100, 10, 0, 1, 0)));
  for (auto [fb, n] : std::vector<std::pair<uint64_t, uint64_t>>{{5, 6}, {19, 5}, {12, 2}, {0, 100}, {10, 10}}) {
    Extent* e = loaded(fb, 500, n, 0, 1, 1);
    EXPECT_FALSE(m.load(e)) << fb << "+" << n;
    delete e;
  }
  EXPECT_TRUE(m.load(loaded(20, 500, 5, 0, 1, 2)));
  EXPECT_TRUE(m.load(loaded(0, 600, 10, 0, 1, 3)));
  EXPECT_EQ(m.mapped_blocks(), 25u);
}

// Records mostly come in file order (appended after the last extent with no
// search), sometimes not; an overlap is refused either way, and loading
// still works after an edit.
TEST(ExtentMap, LoadInAndOutOfFileOrder) {
  ExtentMap m;
  ASSERT_TRUE(m.load(loaded(10, 100, 5, 0, 1, 0)));
  ASSERT_TRUE(m.load(loaded(15, 200, 5, 0, 1, 1)));  // right after the last
  ASSERT_TRUE(m.load(loaded(0, 300, 5, 0, 1, 2)));   // before the first
  ASSERT_TRUE(m.load(loaded(40, 400, 5, 0, 1, 3)));  // after a gap
  for (auto [fb, n] : std::vector<std::pair<uint64_t, uint64_t>>{{44, 2}, {19, 2}, {4, 7}, {30, 11}}) {
    Extent* e = loaded(fb, 900, n, 0, 1, 9);
    EXPECT_FALSE(m.load(e)) << fb << "+" << n;
    delete e;
  }
  ASSERT_TRUE(m.load(loaded(25, 500, 5, 0, 1, 4)));  // in a gap, before the last
  ASSERT_TRUE(m.load(loaded(45, 600, 5, 0, 1, 5)));  // the last is still known
  ExtentEdit edit;
  m.punch(45, 5, edit);  // an edit: the last extent is gone
  Extent* e = loaded(47, 900, 1, 0, 1, 9);
  ASSERT_TRUE(m.load(e));
  e = loaded(44, 900, 2, 0, 1, 9);
  EXPECT_FALSE(m.load(e));
  delete e;
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 300, 5, 0}, {10, 100, 5, 0}, {15, 200, 5, 0}, {25, 500, 5, 0},
                                          {40, 400, 5, 0}, {47, 900, 1, 0}}));
  EXPECT_EQ(m.mapped_blocks(), 26u);
}

TEST(ExtentMap, LookupsFindContainingAndFollowingExtents) {
  ExtentMap m;
  ExtentEdit edit;
  m.insert(10, 5, 100, 0, edit);
  m.insert(30, 5, 200, 0, edit);
  EXPECT_EQ(m.containing(9), nullptr);
  EXPECT_EQ(m.containing(10)->file_block, 10u);
  EXPECT_EQ(m.containing(14)->file_block, 10u);
  EXPECT_EQ(m.containing(15), nullptr);
  EXPECT_EQ(m.at_or_after(15)->file_block, 30u);
  EXPECT_EQ(m.at_or_after(12)->file_block, 10u);
  EXPECT_EQ(m.at_or_after(35), nullptr);
  EXPECT_EQ(m.before(10), nullptr);
  EXPECT_EQ(m.before(11)->file_block, 10u);
  EXPECT_EQ(m.before(100)->file_block, 30u);
}

TEST(ExtentMap, PunchInTheMiddleSplitsIntoTwoWithTheRightPhysical) {
  ExtentMap m;
  ASSERT_TRUE(m.load(loaded(100, 1000, 50, 0, 5, 0)));
  ExtentEdit edit;
  m.punch(110, 20, edit);
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{100, 1000, 10, 0}, {130, 1030, 20, 0}}));
  EXPECT_EQ(blocks_of(edit.dropped), blocks_of({{1010, 20}}));
  EXPECT_EQ(m.mapped_blocks(), 30u);
  // The left keeps its slot, the right needs one: both are dirty.
  std::set<uint64_t> dirty_fb;
  for (Extent* e : edit.dirty)
    if (!e->erased) dirty_fb.insert(e->file_block);
  EXPECT_EQ(dirty_fb, (std::set<uint64_t>{100, 130}));
  EXPECT_TRUE(edit.freed_slots.empty());
}

TEST(ExtentMap, PunchAcrossSeveralExtentsDropsExactlyThePunchedBlocks) {
  ExtentMap m;
  ExtentEdit setup;
  m.insert(0, 10, 100, 0, setup);
  m.insert(10, 10, 500, kExtentUnwritten, setup);
  m.insert(25, 10, 900, 0, setup);
  m.insert(40, 10, 300, 0, setup);
  ExtentEdit edit;
  m.punch(5, 40, edit);  // [5, 45): tail of 1st, all of 2nd and 3rd, head of 4th
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 100, 5, 0}, {45, 305, 5, 0}}));
  EXPECT_EQ(blocks_of(edit.dropped), blocks_of({{105, 5}, {300, 5}, {500, 10}, {900, 10}}));
  EXPECT_EQ(m.mapped_blocks(), 10u);
}

TEST(ExtentMap, PunchOfAHoleOrOfNothingChangesNothing) {
  ExtentMap m;
  ExtentEdit setup;
  m.insert(0, 10, 100, 0, setup);
  ExtentEdit edit;
  m.punch(10, 100, edit);
  m.punch(3, 0, edit);
  EXPECT_TRUE(edit.dropped.empty());
  EXPECT_TRUE(edit.dirty.empty());
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 100, 10, 0}}));
}

TEST(ExtentMap, PunchToTheEndOfTheLargestFile) {
  ExtentMap m;
  ExtentEdit setup;
  const uint64_t max_blocks = kMaxFileSize / kBlockSize;
  m.insert(0, 3, 100, 0, setup);
  m.insert(max_blocks - 2, 2, 200, 0, setup);
  ExtentEdit edit;
  m.punch(1, max_blocks - 1, edit);  // what truncate to 1 block does
  EXPECT_EQ(pieces(m), (std::vector<Piece>{{0, 100, 1, 0}}));
  EXPECT_EQ(blocks_of(edit.dropped), blocks_of({{101, 2}, {200, 2}}));
}

TEST(ExtentMap, ClearDropsEverything) {
  ExtentMap m;
  ASSERT_TRUE(m.load(loaded(0, 10, 2, 0, 3, 0)));
  ExtentEdit setup;
  m.insert(5, 3, 40, 0, setup);
  ExtentEdit edit;
  m.clear(edit);
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(m.mapped_blocks(), 0u);
  EXPECT_EQ(blocks_of(edit.dropped), blocks_of({{10, 2}, {40, 3}}));
  EXPECT_EQ(edit.freed_slots.size(), 1u);  // only the loaded one had a record
}

// The random run: a model of every file block (phys block and flags, or a
// hole) and of the on-media records the edits describe. After each step the
// map equals the model, its extents are maximal, the dropped blocks are
// exactly the ones that left the file, and the records (slot -> extent),
// maintained only through edit.dirty and edit.freed_slots the way FsImpl
// persists them, describe exactly the map.
TEST(ExtentMap, RandomInsertsAndPunchesMatchABlockModel) {
  struct Mapping {
    uint64_t phys;
    uint32_t flags;
  };
  const uint64_t kSpan = 600;
  std::mt19937_64 rng(2024);
  ExtentMap m;
  std::map<uint64_t, Mapping> model;  // absent: hole
  std::map<std::pair<uint64_t, uint32_t>, Piece> records;  // slot -> persisted extent
  uint32_t next_slot = 0;
  uint64_t next_phys = 10'000;

  auto persist = [&](ExtentEdit& edit) {
    for (SlotRef s : edit.freed_slots) ASSERT_EQ(records.erase({s.block, s.index}), 1u) << "slot freed twice";
    for (Extent* e : edit.dirty) {
      if (e->erased) continue;
      if (!e->slot.valid()) e->slot = {1, next_slot++};
      records[{e->slot.block, e->slot.index}] = Piece{e->file_block, e->phys_block, e->nblocks, e->flags};
    }
  };

  for (int step = 0; step < 6000; ++step) {
    ExtentEdit edit;
    uint64_t fb = rng() % kSpan;
    if (rng() % 5 < 3) {
      // Insert into the hole at fb (if any), up to its end.
      if (model.contains(fb)) continue;
      uint64_t hole_end = fb + 1;
      uint64_t want = 1 + rng() % 40;
      while (hole_end < kSpan && hole_end < fb + want && !model.contains(hole_end)) ++hole_end;
      uint64_t n = hole_end - fb;
      uint32_t flags = rng() % 4 == 0 ? kExtentUnwritten : 0;
      // Often continue the physical run of the block before: merges happen.
      uint64_t phys = next_phys;
      if (fb > 0 && model.contains(fb - 1) && rng() % 2) phys = model[fb - 1].phys + 1;
      else if (model.contains(hole_end) && rng() % 2 && model[hole_end].phys >= n) phys = model[hole_end].phys - n;
      else next_phys += n + rng() % 3;
      m.insert(fb, n, phys, flags, edit);
      for (uint64_t i = 0; i < n; ++i) model[fb + i] = Mapping{phys + i, flags};
      ASSERT_TRUE(edit.dropped.empty());
    } else {
      uint64_t n = 1 + rng() % 60;
      std::vector<BlockRange> expect;
      for (uint64_t i = fb; i < fb + n; ++i) {
        auto it = model.find(i);
        if (it == model.end()) continue;
        expect.push_back({it->second.phys, 1});
        model.erase(it);
      }
      m.punch(fb, n, edit);
      ASSERT_EQ(blocks_of(edit.dropped), blocks_of(expect)) << "step " << step;
    }
    persist(edit);
    if (::testing::Test::HasFatalFailure()) return;

    // The map equals the model, block by block.
    uint64_t mapped = 0;
    const Extent* prev = nullptr;
    for (const Extent& e : m) {
      ASSERT_GT(e.nblocks, 0u);
      if (prev) {
        ASSERT_LE(prev->file_end(), e.file_block) << "overlap at step " << step;
        bool mergeable = prev->file_end() == e.file_block && prev->phys_end() == e.phys_block &&
                         prev->flags == e.flags;
        ASSERT_FALSE(mergeable) << "unmerged neighbours at " << e.file_block << ", step " << step;
      }
      for (uint64_t i = 0; i < e.nblocks; ++i) {
        auto it = model.find(e.file_block + i);
        ASSERT_NE(it, model.end()) << "block " << e.file_block + i << " mapped but a hole, step " << step;
        ASSERT_EQ(it->second.phys, e.phys_block + i);
        ASSERT_EQ(it->second.flags, e.flags);
      }
      mapped += e.nblocks;
      prev = &e;
    }
    ASSERT_EQ(mapped, model.size()) << "step " << step;
    ASSERT_EQ(m.mapped_blocks(), mapped);
    // The records describe the map exactly: one record per extent.
    std::vector<Piece> from_records;
    for (auto& [slot, p] : records) from_records.push_back(p);
    std::sort(from_records.begin(), from_records.end(),
              [](const Piece& a, const Piece& b) { return a.file_block < b.file_block; });
    ASSERT_EQ(from_records, pieces(m)) << "records out of date at step " << step;
  }
}

}  // namespace
}  // namespace poisonfs
