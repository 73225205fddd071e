// Tests of the device poison list (include/poisonfs/poison.h) and of the
// media's poison operations (include/poisonfs/media.h):
// - PoisonList against a brute-force model (one state per 64-byte unit:
//   none, latent, known) over thousands of random add / clear / make_known /
//   overlapping / first steps, every query and the whole list compared;
//   rounding out to units; known wins over latent; a clear of partial units
//   clears only the whole units inside it; the change callback;
// - Media::inject_poison destroys the data with the pattern, clear_poison
//   leaves zeros, bad ranges are refused and change nothing;
// - the pmem media keeps the list in IMAGE.badblocks across close/reopen,
//   and a private (read-only) open never writes it;
// - the record file (src/media/poison_record.h): every change round trips
//   through the log, a torn last group (cut at every length) or a group
//   with a bad checksum is ignored, the older plain format loads and takes
//   appends, compaction keeps the list and bounds the file, failed saves
//   are reported and caught up with.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <mutex>
#include <vector>

#include "media/poison_record.h"
#include "poisonfs/media.h"
#include "poisonfs/poison.h"
#include "unit/full_disk.h"

namespace poisonfs {

// Readable failures (found by ADL).
inline void PrintTo(const PoisonRange& r, std::ostream* os) {
  *os << "[" << r.offset << "+" << r.length << (r.latent ? " latent]" : " known]");
}

namespace {

constexpr uint64_t U = kPoisonUnit;

// ------------------------------------------------------------------ model

enum State : uint8_t { kNone = 0, kLatent = 1, kKnown = 2 };

// One state per unit of [0, units * 64). Ranges are compared in their
// canonical form: maximal runs of one state (the list merges neighbours of
// the same kind).
struct Model {
  std::vector<State> unit;
  explicit Model(size_t units) : unit(units, kNone) {}

  uint64_t bytes() const { return unit.size() * U; }

  PoisonRange add(uint64_t off, uint64_t len, bool latent) {
    uint64_t lo = off / U, hi = (off + len + U - 1) / U;
    State s = latent ? kLatent : kKnown;
    for (uint64_t u = lo; u < hi; ++u) unit[u] = std::max(unit[u], s);
    return {lo * U, (hi - lo) * U, latent};
  }

  // Maximal runs of one kind (none excluded), each [start, end) in bytes.
  std::vector<PoisonRange> runs() const {
    std::vector<PoisonRange> out;
    for (size_t u = 0; u < unit.size();) {
      if (unit[u] == kNone) {
        ++u;
        continue;
      }
      size_t v = u;
      while (v < unit.size() && unit[v] == unit[u]) ++v;
      out.push_back({u * U, (v - u) * U, unit[u] == kLatent});
      u = v;
    }
    return out;
  }

  std::vector<PoisonRange> clear(uint64_t off, uint64_t len) {
    uint64_t lo = (off + U - 1) / U, hi = (off + len) / U;
    std::vector<PoisonRange> removed;
    for (uint64_t u = lo; u < hi;) {
      if (unit[u] == kNone) {
        ++u;
        continue;
      }
      uint64_t v = u;
      while (v < hi && unit[v] == unit[u]) ++v;
      removed.push_back({u * U, (v - u) * U, unit[u] == kLatent});
      for (uint64_t w = u; w < v; ++w) unit[w] = kNone;
      u = v;
    }
    return removed;
  }

  std::vector<PoisonRange> overlapping(uint64_t off, uint64_t len) const {
    std::vector<PoisonRange> out;
    uint64_t end = off + len;
    for (const PoisonRange& r : runs()) {
      uint64_t s = std::max(off, r.offset), e = std::min(end, r.end());
      if (s < e) out.push_back({s, e - s, r.latent});
    }
    return out;
  }

  // Whole latent runs touched by [off, off+len) become known.
  std::vector<PoisonRange> make_known(uint64_t off, uint64_t len) {
    std::vector<PoisonRange> found;
    for (const PoisonRange& r : runs())
      if (r.latent && r.offset < off + len && off < r.end()) found.push_back({r.offset, r.length, false});
    for (const PoisonRange& r : found)
      for (uint64_t u = r.offset / U; u < r.end() / U; ++u) unit[u] = kKnown;
    return found;
  }

  uint64_t count(State s) const {
    uint64_t n = 0;
    for (State x : unit) n += x == s ? U : 0;
    return n;
  }
};

std::string show(const std::vector<PoisonRange>& v) {
  std::ostringstream o;
  for (const PoisonRange& r : v) o << "[" << r.offset << "+" << r.length << (r.latent ? " latent" : " known") << "] ";
  return o.str();
}

// ------------------------------------------------------------------ PoisonList

TEST(PoisonList, RoundsOutToUnits) {
  PoisonList list;
  EXPECT_TRUE(list.empty());
  PoisonRange r = list.add(100, 10, false);
  EXPECT_EQ(r, (PoisonRange{64, 64, false}));
  r = list.add(127, 2, true);  // straddles 128: two units
  EXPECT_EQ(r, (PoisonRange{64, 128, true}));
  // Known wins over latent where they overlap: [64,128) stays known.
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{64, 64, false}, {128, 64, true}}));
  r = list.add(640, 64, false);  // already aligned
  EXPECT_EQ(r, (PoisonRange{640, 64, false}));
  r = list.add(0, 1, true);
  EXPECT_EQ(r, (PoisonRange{0, 64, true}));
  EXPECT_FALSE(list.empty());
  EXPECT_EQ(list.known_bytes(), 128u);
  EXPECT_EQ(list.latent_bytes(), 128u);
}

TEST(PoisonList, KnownWinsOverLatentBothWays) {
  PoisonList list;
  list.add(0, 4 * U, false);
  list.add(0, 8 * U, true);  // latent over known: the known part stays known
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{0, 4 * U, false}, {4 * U, 4 * U, true}}));
  list.add(2 * U, 4 * U, false);  // known over latent: becomes known, merges
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{0, 6 * U, false}, {6 * U, 2 * U, true}}));
  list.add(6 * U, 2 * U, false);
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{0, 8 * U, false}}));
}

TEST(PoisonList, ClearOfPartialUnitsClearsOnlyWholeUnits) {
  PoisonList list;
  list.add(0, 4 * U, false);
  // [32, 96) holds no whole unit: nothing is cleared.
  EXPECT_TRUE(list.clear(32, 64).empty());
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{0, 4 * U, false}}));
  // [32, 132) holds exactly the unit [64, 128).
  EXPECT_EQ(list.clear(32, 100), (std::vector<PoisonRange>{{64, 64, false}}));
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{0, 64, false}, {128, 128, false}}));
  // A clear over nothing poisoned removes nothing.
  EXPECT_TRUE(list.clear(1024, 4096).empty());
  // Zero length, and a length that ends inside the first unit.
  EXPECT_TRUE(list.clear(0, 0).empty());
  EXPECT_TRUE(list.clear(0, 63).empty());
  // A length past the end of the address space clears to its end.
  list.add(UINT64_MAX - 1000, 10, true);
  EXPECT_EQ(list.clear(64, UINT64_MAX), (std::vector<PoisonRange>{{128, 128, false}, {(UINT64_MAX - 1000) / U * U, U, true}}));
  EXPECT_EQ(list.clear(0, 1 << 20), (std::vector<PoisonRange>{{0, 64, false}}));
  EXPECT_TRUE(list.empty());
}

TEST(PoisonList, ClearSplitsByKind) {
  PoisonList list;
  list.add(0, 2 * U, true);
  list.add(2 * U, 2 * U, false);
  EXPECT_EQ(list.clear(U, 2 * U), (std::vector<PoisonRange>{{U, U, true}, {2 * U, U, false}}));
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{0, U, true}, {3 * U, U, false}}));
}

TEST(PoisonList, OverlappingAndFirstClipToTheQuery) {
  PoisonList list;
  list.add(U, 3 * U, false);
  list.add(10 * U, U, true);
  EXPECT_EQ(list.overlapping(U + 10, 5), (std::vector<PoisonRange>{{U + 10, 5, false}}));
  EXPECT_EQ(list.overlapping(0, 11 * U), (std::vector<PoisonRange>{{U, 3 * U, false}, {10 * U, U, true}}));
  EXPECT_TRUE(list.overlapping(4 * U, 6 * U).empty());
  EXPECT_TRUE(list.overlapping(U, 0).empty());
  EXPECT_EQ(list.first(0, 100 * U), (PoisonRange{U, 3 * U, false}));
  EXPECT_EQ(list.first(5 * U, 100 * U), (PoisonRange{10 * U, U, true}));
  EXPECT_FALSE(list.first(0, U).has_value());
  // A query whose end overflows reaches to the end of the address space.
  EXPECT_EQ(list.first(5 * U, UINT64_MAX), (PoisonRange{10 * U, U, true}));
  EXPECT_EQ(list.overlapping(UINT64_MAX - 10, UINT64_MAX).size(), 0u);
}

TEST(PoisonList, MakeKnownTurnsWholeLatentRangesKnown) {
  PoisonList list;
  list.add(0, 4 * U, true);
  list.add(8 * U, 2 * U, true);
  list.add(12 * U, U, false);
  // Touching one byte of the first latent range makes all of it known.
  EXPECT_EQ(list.make_known(2 * U + 5, 1), (std::vector<PoisonRange>{{0, 4 * U, false}}));
  EXPECT_TRUE(list.make_known(2 * U, 1).empty());  // already known
  EXPECT_TRUE(list.make_known(5 * U, U).empty());  // nothing there
  EXPECT_EQ(list.make_known(9 * U, 4 * U), (std::vector<PoisonRange>{{8 * U, 2 * U, false}}));
  EXPECT_EQ(list.latent_bytes(), 0u);
  EXPECT_EQ(list.known_bytes(), 7 * U);
  // The newly known range merges with a known neighbour.
  PoisonList b;
  b.add(0, U, false);
  b.add(U, U, true);
  b.add(2 * U, U, false);
  b.make_known(U, 1);
  EXPECT_EQ(b.all(), (std::vector<PoisonRange>{{0, 3 * U, false}}));
}

TEST(PoisonList, ReplaceAllRoundsAndResolvesOverlaps) {
  PoisonList list;
  list.add(1 << 20, 64, false);
  list.replace_all({{100, 10, true}, {96, 100, false}, {1000, 0, false}, {4096, 64, true}});
  // [64,128) latent and [64,256) known overlap: known wins; the empty range is dropped.
  EXPECT_EQ(list.all(), (std::vector<PoisonRange>{{64, 192, false}, {4096, 64, true}}));
  list.replace_all({});
  EXPECT_TRUE(list.empty());
  EXPECT_TRUE(list.all().empty());
}

TEST(PoisonList, ChangeCallbackSeesEveryChangeAndOnlyChanges) {
  PoisonList list;
  int calls = 0;
  std::vector<PoisonRange> last;
  list.set_on_change([&](const PoisonChange&) {
    ++calls;
    last = list.all();
  });
  list.add(0, 64, true);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(last, list.all());
  list.make_known(0, 1);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(last, (std::vector<PoisonRange>{{0, 64, false}}));
  list.make_known(0, 1);  // nothing latent: no change
  list.clear(64, 64);     // nothing there: no change
  EXPECT_EQ(calls, 2);
  list.clear(0, 64);
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(last.empty());
}

// Thousands of random steps over a small range, every answer compared with
// the model, and the whole list (canonical runs) after every step.
TEST(PoisonList, RandomStepsMatchTheModel) {
  for (unsigned seed = 1; seed <= 4; ++seed) {
    std::mt19937_64 rng(seed);
    constexpr size_t kUnits = 48;
    Model model(kUnits);
    PoisonList list;
    auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    // A range inside the model's area, unaligned most of the time.
    auto range = [&](uint64_t& off, uint64_t& len) {
      off = rnd(model.bytes());
      uint64_t max = model.bytes() - off;
      len = 1 + (rnd(4) == 0 ? rnd(max) : rnd(std::min<uint64_t>(max, 4 * U)));
      if (rnd(3) == 0) {  // aligned sometimes
        off = off / U * U;
        len = std::min<uint64_t>(model.bytes() - off, (len + U - 1) / U * U);
      }
    };
    for (int step = 0; step < 4000; ++step) {
      uint64_t off, len;
      range(off, len);
      SCOPED_TRACE(::testing::Message() << "seed " << seed << " step " << step << " off " << off << " len " << len);
      switch (rnd(6)) {
        case 0:
        case 1: {
          bool latent = rnd(2);
          ASSERT_EQ(list.add(off, len, latent), model.add(off, len, latent));
          break;
        }
        case 2:
          ASSERT_EQ(show(list.clear(off, len)), show(model.clear(off, len)));
          break;
        case 3:
          ASSERT_EQ(show(list.make_known(off, len)), show(model.make_known(off, len)));
          break;
        case 4:
          ASSERT_EQ(show(list.overlapping(off, len)), show(model.overlapping(off, len)));
          break;
        case 5: {
          auto want = model.overlapping(off, len);
          auto got = list.first(off, len);
          ASSERT_EQ(got.has_value(), !want.empty());
          if (got) {
            ASSERT_EQ(*got, want.front());
          }
          break;
        }
      }
      ASSERT_EQ(show(list.all()), show(model.runs()));
      ASSERT_EQ(list.empty(), model.runs().empty());
      ASSERT_EQ(list.known_bytes(), model.count(kKnown));
      ASSERT_EQ(list.latent_bytes(), model.count(kLatent));
    }
    // replace_all with the list's own ranges is the identity.
    auto all = list.all();
    PoisonList copy;
    copy.replace_all(all);
    EXPECT_EQ(copy.all(), all);
  }
}

// Readers that consume latent poison race with each other (and with
// injections and repairs): each latent range must become known exactly
// once, so that it is reported (notify_failure) exactly once.
TEST(PoisonList, ConcurrentMakeKnownReportsEachRangeOnce) {
  for (int round = 0; round < 50; ++round) {
    PoisonList list;
    constexpr int kRanges = 200;
    for (int i = 0; i < kRanges; ++i) list.add(uint64_t(i) * 4 * U, U, true);  // gaps keep them apart
    std::atomic<uint64_t> reported{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < kRanges; ++i) {
          int k = (i * 7 + t * 13) % kRanges;
          for (const PoisonRange& r : list.make_known(uint64_t(k) * 4 * U, U)) reported += r.length;
        }
      });
    for (auto& th : threads) th.join();
    ASSERT_EQ(reported.load(), kRanges * U) << "round " << round;
    ASSERT_EQ(list.latent_bytes(), 0u);
  }
}

// The change callback persists the record: the last call must see the
// last state, whatever threads made the changes at the same time.
TEST(PoisonList, ConcurrentChangesLeaveTheCallbackWithTheLastState) {
  for (int round = 0; round < 200; ++round) {
    PoisonList list;
    std::mutex m;
    std::vector<PoisonRange> last;
    list.set_on_change([&](const PoisonChange&) {
      std::this_thread::yield();  // a slow writer of the record
      std::lock_guard g(m);
      last = list.all();
    });
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        ++ready;
        while (ready.load() < 4) std::this_thread::yield();
        list.add(uint64_t(t) * 2 * U, U, t % 2);
      });
    for (auto& th : threads) th.join();
    std::lock_guard g(m);
    ASSERT_EQ(show(last), show(list.all())) << "round " << round;
  }
}

// ------------------------------------------------------------------ Media

bool holds_pattern(const Media& m, uint64_t off, uint64_t len) {
  for (uint64_t i = 0; i < len; ++i)
    if (static_cast<char>(m.at(off)[i]) != kPoisonPattern[(off + i) % sizeof kPoisonPattern]) return false;
  return true;
}

bool all_zero(const Media& m, uint64_t off, uint64_t len) {
  for (uint64_t i = 0; i < len; ++i)
    if (m.at(off)[i] != std::byte{0}) return false;
  return true;
}

void fill(Media& m, unsigned seed) {
  std::vector<std::byte> v(m.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::byte>((i * 131 + seed) % 251 + 1);
  m.write(0, v.data(), v.size());
}

TEST(PoisonMedia, InjectDestroysTheDataWithThePattern) {
  auto m = make_memory_media(1 << 20);
  fill(*m, 7);
  std::vector<std::byte> before(m->at(0), m->at(0) + m->size());
  auto r = m->inject_poison(4096 + 100, 10, false);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(*r, (PoisonRange{4096 + 64, 64, false}));
  EXPECT_TRUE(holds_pattern(*m, 4096 + 64, 64));
  // Only the rounded range changed.
  EXPECT_EQ(std::memcmp(m->at(0), before.data(), 4096 + 64), 0);
  EXPECT_EQ(std::memcmp(m->at(4096 + 128), before.data() + 4096 + 128, m->size() - 4096 - 128), 0);
  EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{4096 + 64, 64, false}}));
  // Latent injection destroys the data too; a range at the very end works.
  r = m->inject_poison(m->size() - 1, 1, true);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, (PoisonRange{m->size() - 64, 64, true}));
  EXPECT_TRUE(holds_pattern(*m, m->size() - 64, 64));
}

TEST(PoisonMedia, ClearLeavesZerosOnWholeUnits) {
  auto m = make_memory_media(1 << 20);
  fill(*m, 3);
  ASSERT_TRUE(m->inject_poison(8192, 4 * U, false));
  // [8192+32, 8192+132) holds one whole unit: [8256, 8320).
  auto cleared = m->clear_poison(8192 + 32, 100);
  EXPECT_EQ(cleared, (std::vector<PoisonRange>{{8192 + U, U, false}}));
  EXPECT_TRUE(all_zero(*m, 8192 + U, U));
  EXPECT_TRUE(holds_pattern(*m, 8192, U));
  EXPECT_TRUE(holds_pattern(*m, 8192 + 2 * U, 2 * U));
  EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{8192, U, false}, {8192 + 2 * U, 2 * U, false}}));
  // Clearing where nothing is poisoned changes no byte.
  std::vector<std::byte> before(m->at(0), m->at(0) + m->size());
  EXPECT_TRUE(m->clear_poison(0, 4096).empty());
  EXPECT_EQ(std::memcmp(m->at(0), before.data(), m->size()), 0);
  cleared = m->clear_poison(0, m->size());
  EXPECT_EQ(cleared.size(), 2u);
  EXPECT_TRUE(all_zero(*m, 8192, 4 * U));
  EXPECT_TRUE(m->poison().empty());
}

// The record (the change callback: IMAGE.badblocks on pmem) may only drop a
// unit once its bytes are zero: a crash in between must leave the range
// poisoned, never the pattern on a range the record calls clean.
TEST(PoisonMedia, ClearZeroesBeforeTheRecordDropsTheUnits) {
  auto m = make_memory_media(1 << 20);
  ASSERT_TRUE(m->inject_poison(4096, 4 * U, false));
  ASSERT_TRUE(m->inject_poison(8192 + U, U, true));
  int calls = 0;
  m->poison().set_on_change([&](const PoisonChange&) {
    const std::vector<PoisonRange> all = m->poison().all();
    ++calls;
    for (uint64_t off : {uint64_t{4096}, uint64_t{4096 + U}, uint64_t{4096 + 2 * U}, uint64_t{4096 + 3 * U},
                         uint64_t{8192 + U}}) {
      bool listed = false;
      for (const PoisonRange& r : all) listed |= r.offset <= off && off < r.end();
      if (!listed) {
        EXPECT_TRUE(all_zero(*m, off, U)) << "unit " << off << " dropped from the record before zeroing";
      }
    }
  });
  m->clear_poison(4096 + U, 2 * U);
  m->clear_poison(0, 1 << 20);
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(all_zero(*m, 4096, 4 * U));
  EXPECT_TRUE(all_zero(*m, 8192 + U, U));
}

TEST(PoisonMedia, BadRangesAreRefusedAndChangeNothing) {
  auto m = make_memory_media(1 << 20);
  fill(*m, 5);
  ASSERT_TRUE(m->inject_poison(0, 64, true));
  std::vector<std::byte> before(m->at(0), m->at(0) + m->size());
  auto list_before = m->poison().all();
  const uint64_t size = m->size();
  struct Case {
    uint64_t off, len;
  };
  for (Case c : {Case{0, 0}, Case{size - 64, 0}, Case{size, 1}, Case{size + 4096, 64}, Case{size - 10, 11},
                 Case{0, size + 1}, Case{64, UINT64_MAX}, Case{UINT64_MAX, 1}, Case{UINT64_MAX - 63, 64},
                 Case{size - 1, UINT64_MAX}}) {
    for (bool latent : {false, true}) {
      SCOPED_TRACE(::testing::Message() << c.off << "+" << c.len);
      auto r = m->inject_poison(c.off, c.len, latent);
      ASSERT_FALSE(r);
      EXPECT_EQ(r.error().code, std::errc::invalid_argument);
      EXPECT_FALSE(r.error().to_string().empty());
    }
  }
  EXPECT_EQ(m->poison().all(), list_before);
  EXPECT_EQ(std::memcmp(m->at(0), before.data(), size), 0);
  // Clearing with an overflowing length clears nothing it should not.
  EXPECT_TRUE(m->clear_poison(UINT64_MAX - 10, 100).empty());
  EXPECT_EQ(m->poison().all(), list_before);
}

// ------------------------------------------------------------------ pmem media

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/poisonfs-poison-XXXXXX";
    const char* p = mkdtemp(tmpl);
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string image(const std::string& name, uint64_t size = 1 << 20) const {
    std::string file = path + "/" + name;
    int fd = open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) throw std::runtime_error("cannot create " + file);
    close(fd);
    return file;
  }
};

std::string slurp(const std::string& file) {
  std::ifstream in(file);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool exists(const std::string& file) { return std::filesystem::exists(file); }

std::unique_ptr<Media> open_media(const std::string& path, MapMode mode) {
  auto m = open_pmem_media(path, mode);
  EXPECT_TRUE(m) << (m ? "" : m.error().to_string());
  return m ? std::move(*m) : nullptr;
}

TEST(PoisonPmemMedia, ListPersistsAcrossCloseAndReopen) {
  TempDir dir;
  std::string img = dir.image("img");
  const std::string sidecar = img + ".badblocks";
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->poison().empty());
    EXPECT_FALSE(exists(sidecar));
    ASSERT_TRUE(m->inject_poison(4096 + 100, 100, false));
    ASSERT_TRUE(m->inject_poison(65536, 64, true));
    EXPECT_TRUE(exists(sidecar));
  }
  const std::vector<PoisonRange> want{{4096 + 64, 192, false}, {65536, 64, true}};
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->poison().all(), want);
    // The destroyed data persisted too.
    EXPECT_TRUE(holds_pattern(*m, 4096 + 64, 192));
    EXPECT_TRUE(holds_pattern(*m, 65536, 64));
    m->poison().make_known(65536, 1);
    EXPECT_EQ(m->clear_poison(4096, 4096).size(), 1u);
  }
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{65536, 64, false}}));
    EXPECT_TRUE(all_zero(*m, 4096, 4096));
    m->clear_poison(0, m->size());
    EXPECT_TRUE(m->poison().empty());
  }
  // An empty list leaves no record behind, and the next open finds none.
  EXPECT_FALSE(exists(sidecar));
  auto m = open_media(img, MapMode::kShared);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->poison().empty());
}

TEST(PoisonPmemMedia, PrivateOpenNeverWritesTheRecord) {
  TempDir dir;
  std::string img = dir.image("img");
  const std::string sidecar = img + ".badblocks";
  {
    // No record yet: a private open that injects and clears creates none.
    auto m = open_media(img, MapMode::kPrivate);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->inject_poison(0, 64, false));
    EXPECT_FALSE(exists(sidecar));
    m->clear_poison(0, 64);
    EXPECT_FALSE(exists(sidecar));
    ASSERT_TRUE(m->inject_poison(128, 64, true));
  }
  EXPECT_FALSE(exists(sidecar));
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->poison().empty());
    ASSERT_TRUE(m->inject_poison(8192, 64, false));
  }
  const std::string record = slurp(sidecar);
  ASSERT_FALSE(record.empty());
  {
    // A private view sees the record, and its changes stay in memory.
    auto m = open_media(img, MapMode::kPrivate);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{8192, 64, false}}));
    ASSERT_TRUE(m->inject_poison(12288, 64, true));
    m->clear_poison(0, m->size());
    EXPECT_TRUE(m->poison().empty());
    EXPECT_EQ(slurp(sidecar), record);
  }
  EXPECT_EQ(slurp(sidecar), record);
  EXPECT_FALSE(exists(sidecar + ".tmp"));
}

TEST(PoisonPmemMedia, RecordIsRoundedAndClippedOnLoad) {
  TempDir dir;
  std::string img = dir.image("img");
  {
    std::ofstream out(img + ".badblocks");
    // Unaligned, latent, beyond the device, partly beyond, zero length.
    out << "100 10 known\n200 50 latent\n" << (2 << 20) << " 64 known\n" << ((1 << 20) - 64) << " 4096 known\n"
        << "4096 0 known\n";
  }
  auto m = open_media(img, MapMode::kPrivate);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->poison().all(),
            (std::vector<PoisonRange>{{64, 64, false}, {192, 64, true}, {(1 << 20) - 64, 64, false}}));
}


// ------------------------------------------------------------------ record file

constexpr uint64_t kRecordDevice = 1 << 30;

// A list saved to a record file at every change, as the pmem media saves it.
struct RecordedList {
  PoisonRecord record;
  PoisonList list;
  std::vector<std::string> errors;  // of failed saves
  explicit RecordedList(const std::string& path) : record(path) {
    list.set_on_change([this](const PoisonChange& change) {
      if (std::string e = record.save(change, list); !e.empty()) errors.push_back(e);
    });
  }
  std::vector<PoisonRange> loaded() const { return parse_poison_record(slurp(record.path()), kRecordDevice).ranges; }
};

TEST(PoisonRecord, EveryChangeRoundTripsThroughTheLog) {
  TempDir dir;
  RecordedList r(dir.path + "/img.badblocks");
  std::mt19937_64 rng(7);
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  for (int step = 0; step < 600; ++step) {
    const uint64_t off = pick(1024) * U + pick(2) * 7, len = 1 + pick(8 * U);
    switch (pick(4)) {
      case 0: r.list.clear(off, len); break;
      case 1: r.list.make_known(off, len); break;
      default: r.list.add(off, len, pick(2)); break;
    }
    ASSERT_EQ(show(r.loaded()), show(r.list.all())) << "step " << step;
  }
  EXPECT_TRUE(r.errors.empty());
  // The changes were appended, not rewritten: the file is a log.
  EXPECT_TRUE(r.record.needs_compaction());
  EXPECT_NE(slurp(r.record.path()).find("\n= "), std::string::npos);
  const PoisonRecordContents c = parse_poison_record(slurp(r.record.path()), kRecordDevice);
  EXPECT_GT(c.groups, 0u);
  EXPECT_FALSE(c.damaged);
}

TEST(PoisonRecord, TornLastGroupIsIgnoredAtEveryLength) {
  TempDir dir;
  RecordedList r(dir.path + "/img.badblocks");
  r.list.add(0, U, false);
  r.list.add(10 * U, 2 * U, true);
  r.list.add(20 * U, U, false);
  const std::string before_text = slurp(r.record.path());
  const std::vector<PoisonRange> before = r.list.all();
  // The last change, one group of two lines: both ranges removed.
  r.list.clear_all(std::vector<PoisonRange>{{0, U, false}, {10 * U, 2 * U, false}});
  const std::vector<PoisonRange> after = r.list.all();
  const std::string full = slurp(r.record.path());
  ASSERT_EQ(full.compare(0, before_text.size(), before_text), 0);
  const std::string group = full.substr(before_text.size());
  ASSERT_EQ(std::count(group.begin(), group.end(), '\n'), 3);
  for (size_t len = 0; len <= group.size(); ++len) {
    SCOPED_TRACE(::testing::Message() << "group cut to " << len << " of " << group.size() << " bytes");
    const PoisonRecordContents c = parse_poison_record(before_text + group.substr(0, len), kRecordDevice);
    // Only the newline may be missing from a group that counts.
    const bool whole = len + 1 >= group.size();
    EXPECT_EQ(show(c.ranges), show(whole ? after : before));
    EXPECT_EQ(c.damaged, len > 0 && !whole);
  }
}

TEST(PoisonRecord, GroupWithABadChecksumIsIgnored) {
  TempDir dir;
  RecordedList r(dir.path + "/img.badblocks");
  r.list.add(0, U, false);  // the base (the first save compacts)
  const size_t base = slurp(r.record.path()).size();
  r.list.add(10 * U, U, false);
  const size_t first = slurp(r.record.path()).size();
  r.list.add(20 * U, U, true);
  const size_t second = slurp(r.record.path()).size();
  r.list.add(30 * U, U, false);
  const std::string text = slurp(r.record.path());
  ASSERT_GT(first, base);
  const std::vector<PoisonRange> without_second{{0, U, false}, {10 * U, U, false}, {30 * U, U, false}};
  // A changed byte in the second group's line, or in its checksum.
  for (size_t at : {first + 3, second - 2}) {
    std::string bad = text;
    bad[at] = bad[at] == '1' ? '2' : '1';
    const PoisonRecordContents c = parse_poison_record(bad, kRecordDevice);
    EXPECT_EQ(show(c.ranges), show(without_second)) << "byte " << at << " changed";
    EXPECT_TRUE(c.damaged);
    EXPECT_EQ(c.groups, 2u);
  }
}

TEST(PoisonRecord, OlderPlainRecordStillLoadsAndTakesAppends) {
  TempDir dir;
  const std::string img = dir.image("img");
  {
    std::ofstream out(img + ".badblocks");
    out << "4096 64 known\n8192 128 latent\n";
  }
  const std::vector<PoisonRange> old{{4096, 64, false}, {8192, 128, true}};
  EXPECT_EQ(parse_poison_record(slurp(img + ".badblocks"), 1 << 20).ranges, old);
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->poison().all(), old);
    m->poison().make_known(8192, 1);
    ASSERT_TRUE(m->inject_poison(65536, 64, true));
    // A daemon that dies here leaves the log: it loads the same.
    EXPECT_EQ(parse_poison_record(slurp(img + ".badblocks"), 1 << 20).ranges, m->poison().all());
  }
  auto m = open_media(img, MapMode::kPrivate);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{4096, 64, false}, {8192, 128, false}, {65536, 64, true}}));
}

// A shared open rewrites a record that carries a torn group (left by a
// crash) as a clean base, so that appends never follow the torn bytes.
TEST(PoisonRecord, SharedOpenCompactsATornLog) {
  TempDir dir;
  const std::string img = dir.image("img");
  {
    std::ofstream out(img + ".badblocks");
    out << "4096 64 known\n+ 8192 64 latent\n= 0123";
  }
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{4096, 64, false}}));
    EXPECT_EQ(slurp(img + ".badblocks"), "4096 64 known\n");
    ASSERT_TRUE(m->inject_poison(12288, 64, false));
  }
  auto m = open_media(img, MapMode::kPrivate);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->poison().all(), (std::vector<PoisonRange>{{4096, 64, false}, {12288, 64, false}}));
}

TEST(PoisonRecord, CompactionKeepsTheListAndBoundsTheLog) {
  TempDir dir;
  RecordedList r(dir.path + "/img.badblocks");
  for (uint64_t i = 0; i < 300; ++i) r.list.add(i * 2 * U, U, true);
  const uint64_t base = encode_poison_base(r.list.all()).size();
  // Thousands of changes over a list of a constant size: the file stays
  // within the bound (twice the base plus 64 KiB, plus the last group).
  uintmax_t largest = 0;
  for (uint64_t i = 0; i < 6000; ++i) {
    const uint64_t off = (i % 300) * 2 * U;
    if (i % 2 == 0) r.list.make_known(off, U);
    else r.list.add(off, U, false);
    largest = std::max(largest, std::filesystem::file_size(r.record.path()));
  }
  EXPECT_LE(largest, 2 * base + 64 * 1024 + 64);
  EXPECT_TRUE(r.errors.empty());
  EXPECT_EQ(show(r.loaded()), show(r.list.all()));
  // An explicit compaction leaves the base alone, in the plain format.
  ASSERT_EQ(r.record.compact(r.list.all()), "");
  EXPECT_FALSE(r.record.needs_compaction());
  EXPECT_EQ(slurp(r.record.path()), encode_poison_base(r.list.all()));
  r.list.add(1 << 20, U, false);
  EXPECT_EQ(show(r.loaded()), show(r.list.all()));
}

TEST(PoisonRecord, CloseOfASharedMappingCompacts) {
  TempDir dir;
  const std::string img = dir.image("img");
  std::vector<PoisonRange> list;
  {
    auto m = open_media(img, MapMode::kShared);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->inject_poison(4096, 64, false));
    ASSERT_TRUE(m->inject_poison(8192, 64, true));
    m->clear_poison(4096, 64);
    ASSERT_TRUE(m->inject_poison(12288, 128, false));
    EXPECT_NE(slurp(img + ".badblocks").find("\n= "), std::string::npos);  // a log
    list = m->poison().all();
  }
  EXPECT_EQ(slurp(img + ".badblocks"), encode_poison_base(list));
  EXPECT_FALSE(exists(img + ".badblocks.tmp"));
}

TEST(PoisonRecord, FailedSavesAreReportedAndCaughtUpWith) {
  TempDir dir;
  RecordedList r(dir.path + "/img.badblocks");
  // The rewrite fails: a directory where its temporary file goes.
  ASSERT_EQ(mkdir((r.record.path() + ".tmp").c_str(), 0755), 0);
  r.list.add(0, U, false);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_FALSE(exists(r.record.path()));
  EXPECT_TRUE(r.record.needs_compaction());  // a close would try again
  ASSERT_EQ(rmdir((r.record.path() + ".tmp").c_str()), 0);
  r.list.add(4 * U, U, true);  // rewritten whole: the lost change is back
  EXPECT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(show(r.loaded()), show(r.list.all()));
  // An append fails: the disk under the open log is full.
  ASSERT_EQ(testing::fill_disk_under(r.record.path()), 1);
  r.list.make_known(4 * U, 1);
  ASSERT_EQ(r.errors.size(), 2u);
  EXPECT_NE(r.errors.back().find("space"), std::string::npos) << r.errors.back();
  r.list.add(8 * U, U, false);  // the next save compacts
  EXPECT_EQ(r.errors.size(), 2u);
  EXPECT_EQ(show(r.loaded()), show(r.list.all()));
  EXPECT_EQ(r.list.all(), (std::vector<PoisonRange>{{0, U, false}, {4 * U, U, false}, {8 * U, U, false}}));
}

TEST(PoisonRecord, FailedAppendIsReportedByTheMedia) {
  TempDir dir;
  const std::string img = dir.image("img");
  auto m = open_media(img, MapMode::kShared);
  ASSERT_TRUE(m);
  ASSERT_TRUE(m->inject_poison(4096, 64, false));
  EXPECT_EQ(m->poison().persist_failures(), 0u);
  ASSERT_EQ(testing::fill_disk_under(img + ".badblocks"), 1);
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(m->inject_poison(8192, 64, false));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(m->poison().persist_failures(), 1u);
  EXPECT_NE(m->poison().last_persist_error().find("not saved"), std::string::npos);
  EXPECT_NE(err.find(".badblocks"), std::string::npos) << err;
}

}  // namespace
}  // namespace poisonfs

namespace poisonfs {
namespace {

// The summary read without the lock (set_extent) never hides poison: a list
// with it answers every query as a list without it, through random adds,
// clears, kind changes and whole replacements, for devices whose regions
// are one block and ones whose regions are larger.
TEST(PoisonListSummary, AnswersAsTheListWithoutIt) {
  for (uint64_t device : {uint64_t{1} << 20, uint64_t{3} << 40}) {
    std::mt19937_64 rng(device);
    PoisonList summarized, plain;
    summarized.set_extent(device);
    // Offsets near a few spots, so that ranges meet region edges often.
    auto offset = [&] {
      uint64_t spot = (rng() % 8) * (device / 8);
      uint64_t near = rng() % (1 << 16);
      return std::min(device - 1, rng() % 2 ? spot + near : (spot > near ? spot - near : 0));
    };
    for (int step = 0; step < 4000; ++step) {
      uint64_t off = offset(), len = 1 + rng() % (rng() % 4 == 0 ? (1 << 20) : 8192);
      switch (rng() % 6) {
        case 0:
        case 1: {
          bool latent = rng() % 2;
          ASSERT_EQ(summarized.add(off, len, latent), plain.add(off, len, latent));
          break;
        }
        case 2: ASSERT_EQ(summarized.clear(off, len), plain.clear(off, len)); break;
        case 3: ASSERT_EQ(summarized.make_known(off, len), plain.make_known(off, len)); break;
        default: break;
      }
      if (step % 1000 == 999) {
        std::vector<PoisonRange> all = plain.all();
        summarized.replace_all(all);
      }
      for (int q = 0; q < 4; ++q) {
        uint64_t qoff = offset(), qlen = 1 + rng() % (rng() % 2 ? 4096 : (1 << 21));
        ASSERT_EQ(summarized.first(qoff, qlen), plain.first(qoff, qlen)) << step << " " << qoff << "+" << qlen;
        ASSERT_EQ(summarized.overlapping(qoff, qlen), plain.overlapping(qoff, qlen)) << step;
      }
    }
    ASSERT_EQ(summarized.all(), plain.all());
    // Past the device, and to the end of the address space: searched.
    summarized.add(device + 4096, 64, false);
    EXPECT_TRUE(summarized.first(device, 8192).has_value());
    EXPECT_TRUE(summarized.first(0, UINT64_MAX).has_value());
  }
}

TEST(PoisonListSummary, ClearedRegionsReadAsClean) {
  PoisonList list;
  list.set_extent(1 << 20);
  list.add(8192 + 64, 64, false);
  list.add(8192 + 1024, 64, true);
  EXPECT_TRUE(list.first(8192, 4096).has_value());
  list.clear(8192, 1024);  // one of the two left in the block
  EXPECT_EQ(list.first(8192, 4096), (PoisonRange{8192 + 1024, 64, true}));
  list.clear(8192 + 1024, 64);
  EXPECT_FALSE(list.first(8192, 4096).has_value());
  EXPECT_TRUE(list.empty());
}

}  // namespace
}  // namespace poisonfs
