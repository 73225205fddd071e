// Tests of the extent allocator (src/alloc/): rebuild gives exactly the
// complement of the used ranges and reports bad ones; allocation honours
// the hint, then best fit, then gives what it can; release merges free
// neighbours; deferred frees wait for release_pending(); and a long random
// run against a plain bitmap never hands out a block twice.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "alloc/allocator.h"

namespace poisonfs {
namespace {

// The free extents as ranges, found by probing every block.
std::vector<BlockRange> free_ranges(const Allocator& a) {
  std::vector<BlockRange> out;
  for (uint64_t b = a.data_lo(); b < a.data_hi(); ++b) {
    if (!a.is_free(b)) continue;
    if (!out.empty() && out.back().end() == b) ++out.back().count;
    else out.push_back({b, 1});
  }
  return out;
}

TEST(Allocator, RebuildGivesTheExactComplementOfUsedRanges) {
  Allocator a;
  auto bad = a.rebuild(100, 200, {{150, 10}, {100, 5}, {190, 10}, {120, 1}, {170, 0}});
  EXPECT_TRUE(bad.empty());
  std::vector<BlockRange> want = {{105, 15}, {121, 29}, {160, 30}};
  EXPECT_EQ(free_ranges(a), want);
  EXPECT_EQ(a.free_blocks(), 15u + 29 + 30);
  EXPECT_EQ(a.free_extents(), 3u);
  EXPECT_FALSE(a.is_free(99));
  EXPECT_FALSE(a.is_free(200));
}

TEST(Allocator, RebuildOfAnEmptyOrFullAreaIsRight) {
  Allocator a;
  EXPECT_TRUE(a.rebuild(10, 50, {}).empty());
  EXPECT_EQ(a.free_blocks(), 40u);
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_TRUE(a.rebuild(10, 50, {{10, 40}}).empty());
  EXPECT_EQ(a.free_blocks(), 0u);
  EXPECT_EQ(a.free_extents(), 0u);
  EXPECT_EQ(a.allocate(1, 0).count, 0u);
}

TEST(Allocator, RebuildReturnsOverlappingAndOutOfRangeRangesAsBad) {
  Allocator a;
  std::vector<BlockRange> used = {{100, 10}, {105, 2},  // inside the first
                                  {109, 5},             // straddles its end
                                  {90, 20},             // starts below the area
                                  {195, 10},            // ends past the area
                                  {~uint64_t{0} - 1, 4},  // wraps around
                                  {150, 1}};
  auto bad = a.rebuild(100, 200, used);
  auto has = [&](BlockRange r) { return std::find(bad.begin(), bad.end(), r) != bad.end(); };
  EXPECT_EQ(bad.size(), 5u);
  EXPECT_TRUE(has({105, 2}));
  EXPECT_TRUE(has({109, 5}));
  EXPECT_TRUE(has({90, 20}));
  EXPECT_TRUE(has({195, 10}));
  EXPECT_TRUE(has({~uint64_t{0} - 1, 4}));
  // The in-range ranges, good or overlapping, are still owned.
  for (uint64_t b = 100; b < 114; ++b) EXPECT_FALSE(a.is_free(b)) << b;
  EXPECT_FALSE(a.is_free(150));
  EXPECT_TRUE(a.is_free(114));
  EXPECT_EQ(a.free_blocks(), 100u - 14 - 1);
}

TEST(Allocator, AllocateAtAFreeHintGivesThatBlockOnward) {
  Allocator a;
  a.rebuild(0, 1000, {{500, 10}});
  BlockRange r = a.allocate(20, 300);
  EXPECT_EQ(r, (BlockRange{300, 20}));
  BlockRange next = a.allocate(20, r.end());  // a sequential writer continues
  EXPECT_EQ(next, (BlockRange{320, 20}));
  // The hint's free extent is shorter than wanted: what is there, contiguous.
  BlockRange tail = a.allocate(50, 490);
  EXPECT_EQ(tail, (BlockRange{490, 10}));
  EXPECT_EQ(a.free_blocks(), 990u - 50);
}

TEST(Allocator, AllocateWithoutAUsableHintIsBestFit) {
  Allocator a;
  // Free: [0,50) [60,70) [80,83) [90,1000)
  a.rebuild(0, 1000, {{50, 10}, {70, 10}, {83, 7}});
  EXPECT_EQ(a.allocate(3, 0 + 1000), (BlockRange{80, 3}));  // hint outside the area
  EXPECT_EQ(a.allocate(8, 55), (BlockRange{60, 8}));         // hint in used space
  EXPECT_EQ(a.allocate(40, 0 + 2000), (BlockRange{0, 40}));
  EXPECT_EQ(a.allocate(100, 2000), (BlockRange{90, 100}));
}

TEST(Allocator, FragmentedSpaceGivesTheLargestPieceFirst) {
  Allocator a;
  std::vector<BlockRange> used;
  for (uint64_t b = 0; b < 100; b += 4) used.push_back({b, 2});  // free: pairs
  used.push_back({100, 100});
  a.rebuild(0, 300, used);
  // [202,300) would be best for 50, but nothing holds 500: the largest wins.
  EXPECT_EQ(a.allocate(500, 10000), (BlockRange{200, 100}));
  BlockRange r = a.allocate(10, 10000);
  EXPECT_EQ(r.count, 2u);  // only pairs are left
  EXPECT_EQ(r.start % 4, 2u);
  uint64_t got = r.count;
  while (true) {
    BlockRange x = a.allocate(10, 10000);
    if (x.count == 0) break;
    got += x.count;
  }
  EXPECT_EQ(got, 50u);
  EXPECT_EQ(a.free_blocks(), 0u);
}

TEST(Allocator, ReleaseMergesBothNeighbours) {
  Allocator a;
  a.rebuild(0, 100, {});
  BlockRange x = a.allocate(10, 10), y = a.allocate(10, 20), z = a.allocate(10, 30);
  ASSERT_EQ(x, (BlockRange{10, 10}));
  ASSERT_EQ(y, (BlockRange{20, 10}));
  ASSERT_EQ(z, (BlockRange{30, 10}));
  EXPECT_EQ(a.free_extents(), 2u);  // [0,10) [40,100)
  a.release(x);                     // merges with [0,10)
  EXPECT_EQ(a.free_extents(), 2u);
  a.release(z);                     // merges with [40,100)
  EXPECT_EQ(a.free_extents(), 2u);
  EXPECT_EQ(a.free_blocks(), 90u);
  a.release(y);                     // joins both into one
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_EQ(a.free_blocks(), 100u);
  EXPECT_EQ(a.allocate(100, 0), (BlockRange{0, 100}));
}

TEST(Allocator, ReleaseBetweenUsedBlocksMakesANewExtent) {
  Allocator a;
  a.rebuild(0, 100, {{0, 100}});
  a.release({50, 1});
  a.release({52, 1});
  EXPECT_EQ(a.free_extents(), 2u);
  a.release({51, 1});
  EXPECT_EQ(a.free_extents(), 1u);
  EXPECT_EQ(a.free_blocks(), 3u);
  a.release({0, 0});  // nothing
  EXPECT_EQ(a.free_blocks(), 3u);
}

TEST(Allocator, DeferredFreesWaitForReleasePending) {
  Allocator a;
  a.rebuild(0, 100, {{0, 100}});
  a.defer_free({10, 5});
  a.defer_free({40, 1});
  EXPECT_EQ(a.pending_blocks(), 6u);
  EXPECT_EQ(a.free_blocks(), 0u);
  EXPECT_FALSE(a.is_free(10));
  EXPECT_EQ(a.allocate(1, 10).count, 0u);
  a.release_pending();
  EXPECT_EQ(a.pending_blocks(), 0u);
  EXPECT_EQ(a.free_blocks(), 6u);
  EXPECT_EQ(a.allocate(5, 10), (BlockRange{10, 5}));
  EXPECT_EQ(a.allocate(5, 0), (BlockRange{40, 1}));
}

TEST(Allocator, RebuildForgetsPendingFrees) {
  Allocator a;
  a.rebuild(0, 100, {{0, 100}});
  a.defer_free({10, 5});
  a.rebuild(0, 100, {{0, 100}});
  EXPECT_EQ(a.pending_blocks(), 0u);
  a.release_pending();
  EXPECT_EQ(a.free_blocks(), 0u);
}

// A long random run against a bitmap: every allocated range was free, every
// count agrees, and at the end everything released gives one extent back.
TEST(Allocator, RandomRunMatchesABitmapModel) {
  const uint64_t lo = 1000, hi = 1000 + 4096;
  std::mt19937_64 rng(12345);
  std::vector<bool> used(hi - lo, false);
  std::vector<BlockRange> initial;
  for (uint64_t b = lo; b < hi;) {
    uint64_t len = 1 + rng() % 20;
    if (rng() % 3 == 0) {
      initial.push_back({b, std::min(len, hi - b)});
      for (uint64_t i = b; i < std::min(b + len, hi); ++i) used[i - lo] = true;
    }
    b += len;
  }
  Allocator a;
  ASSERT_TRUE(a.rebuild(lo, hi, initial).empty());
  std::vector<BlockRange> held = initial, pending;
  uint64_t model_free_count = static_cast<uint64_t>(std::count(used.begin(), used.end(), false));
  auto model_free = [&] { return model_free_count; };
  auto mark = [&](uint64_t b, bool on) {
    used[b - lo] = on;
    model_free_count += on ? -1 : 1;
  };
  uint64_t pending_count = 0;
  for (int step = 0; step < 20000; ++step) {
    int op = static_cast<int>(rng() % 10);
    if (op < 5) {
      uint64_t want = 1 + rng() % (rng() % 4 == 0 ? 300 : 16);
      uint64_t hint = rng() % 3 == 0 ? 0 : lo + rng() % (hi - lo + 10);
      BlockRange r = a.allocate(want, hint);
      if (r.count == 0) {
        ASSERT_EQ(model_free(), 0u) << "step " << step;
        continue;
      }
      ASSERT_LE(r.count, want);
      ASSERT_GE(r.start, lo);
      ASSERT_LE(r.end(), hi);
      if (hint >= lo && hint < hi && !used[hint - lo]) {
        ASSERT_EQ(r.start, hint) << "step " << step;
      }
      for (uint64_t b = r.start; b < r.end(); ++b) {
        ASSERT_FALSE(used[b - lo]) << "block " << b << " handed out twice, step " << step;
        mark(b, true);
      }
      held.push_back(r);
    } else if (op < 8 && !held.empty()) {
      size_t i = rng() % held.size();
      BlockRange r = held[i];
      held[i] = held.back();
      held.pop_back();
      // Release a random piece and keep the rest.
      uint64_t cut = rng() % r.count;
      BlockRange part{r.start + cut, 1 + rng() % (r.count - cut)};
      if (part.start > r.start) held.push_back({r.start, part.start - r.start});
      if (part.end() < r.end()) held.push_back({part.end(), r.end() - part.end()});
      if (rng() % 2) {
        a.release(part);
        for (uint64_t b = part.start; b < part.end(); ++b) mark(b, false);
      } else {
        a.defer_free(part);
        pending.push_back(part);
        pending_count += part.count;
      }
    } else if (op == 9) {
      a.release_pending();
      for (const BlockRange& r : pending)
        for (uint64_t b = r.start; b < r.end(); ++b) mark(b, false);
      pending.clear();
      pending_count = 0;
    }
    ASSERT_EQ(a.free_blocks(), model_free()) << "step " << step;
    ASSERT_EQ(a.pending_blocks(), pending_count) << "step " << step;
    if (step % 500 == 0) {
      for (uint64_t b = lo; b < hi; ++b) ASSERT_EQ(a.is_free(b), !used[b - lo]) << "block " << b;
      // Free extents are maximal: as many as the model's runs of free blocks.
      size_t runs = 0;
      for (uint64_t i = 0; i < used.size(); ++i) runs += !used[i] && (i == 0 || used[i - 1]);
      ASSERT_EQ(a.free_extents(), runs) << "step " << step;
    }
  }
  for (const BlockRange& r : held) a.release(r);
  a.release_pending();
  EXPECT_EQ(a.free_blocks(), hi - lo);
  EXPECT_EQ(a.free_extents(), 1u);
}

}  // namespace
}  // namespace poisonfs
