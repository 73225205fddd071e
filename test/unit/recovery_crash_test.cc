// Crash tests of the recovery write (issue 5, "Tests"): a plain write over
// known poison, with the crash injected at every persist point.
//
// Each case builds files and known poison, then runs the recovery write on
// a RecordingMedia. Every crash state is then mounted (journal replay, and
// the device's poison list as it was persisted at that point) and must:
// mount, pass fsck, read each poisoned range as EIO or exactly the new data
// (never the pattern or other old bytes), keep the other sharers' poison or
// original data, and keep every byte outside the write. The recovery is then
// finished on the crashed filesystem and must read back the new data.
//
// The crash model. The device's poison list lives outside the media (the
// simulated DIMM's record IMAGE.badblocks, saved by PoisonList's on_change
// callback, appended to a log and synced): a change is durable
// when the call returns, in program order with the media's persist points.
// Media stores are durable only after a barrier; between barriers any of
// them may have reached the media or not, the last one possibly torn. Two
// barrier models:
//  - kPage: an image file or /dev/shm, the daemon's case (page-granular, a
//    flush is an msync: a store is durable once a flush covered its pages);
//  - kPmem: real pmem (byte-granular, a flush is a cache-line write-back: a
//    store is durable once flushed AND a drain followed).
// A crash point is every prefix of the merged sequence of media operations
// and poison-list changes; at each, every subset of the stores in flight is
// tried (only prefixes when there are many), and each in-flight store torn.
//
// Case (ii) is written for the current behaviour (the writer of a shared
// poisoned block gets its own copy; the others stay poisoned); its
// expectations for the other sharers are one field (`others`) so that the
// "matching data heals every sharer" path can get its own.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "poisonfs/filesystem.h"
#include "unit/recording_media.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

using testing::RecordingMedia;
using Op = RecordingMedia::Op;

constexpr uint64_t B = kBlockSize;
constexpr uint64_t kDevice = 4 << 20;
const Caller kUser{1000, 1000, 022};

// Lower-case letters, different per seed: never a byte of the poison
// pattern ("#POISON#"), so a leak cannot pass for data.
std::string content(size_t len, unsigned seed) {
  std::string s(len, '\0');
  uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
  for (size_t i = 0; i < len; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>('a' + x % 26);
  }
  return s;
}

// Digits: the new data differs from the old at every byte, so a torn
// in-place overwrite is visible byte by byte.
std::string new_content(size_t len, unsigned seed) {
  std::string s = content(len, seed);
  for (char& c : s) c = static_cast<char>('0' + (c - 'a') % 10);
  return s;
}

Ino create(Filesystem& fs, std::string_view name, const std::string& data) {
  auto a = fs.mknod(kRootIno, name, S_IFREG | 0644, 0, kUser);
  EXPECT_TRUE(a) << name << ": " << (a ? "" : a.error().to_string());
  if (!a) return 0;
  auto n = fs.write(a->ino, 0, std::as_bytes(std::span(data)));
  EXPECT_TRUE(n && *n == data.size()) << name;
  return a->ino;
}

Ino ino_of(Filesystem& fs, std::string_view name) {
  auto a = fs.lookup(kRootIno, name);
  EXPECT_TRUE(a) << name;
  return a ? a->ino : 0;
}

using testing::phys_of;

void inject(Filesystem& fs, std::string_view file, uint64_t file_off, uint64_t len) {
  auto r = fs.inject_poison(phys_of(fs, ino_of(fs, file), file_off), len, false);
  ASSERT_TRUE(r) << r.error().to_string();
}

void recovery_write(Filesystem& fs, std::string_view file, uint64_t off, const std::string& data) {
  auto n = fs.write(ino_of(fs, file), off, std::as_bytes(std::span(data)));
  ASSERT_TRUE(n) << "recovery write into " << file << ": " << n.error().to_string();
  ASSERT_EQ(*n, data.size());
}

// ---------------------------------------------------------------- expectations

// What a read of one file range may return after a crash.
enum Outcome : unsigned {
  kEio = 1,  // fails with EIO: still poisoned
  kOld = 2,  // exactly the bytes before the recovery write
  kNew = 4,  // exactly the bytes written
  kTorn = 8, // each byte old or new: an in-place overwrite of clean bytes torn by the crash
};

std::string outcome_names(unsigned o) {
  std::string s;
  for (auto [bit, name] : {std::pair{kEio, "EIO"}, {kOld, "old"}, {kNew, "new"}, {kTorn, "torn"}})
    if (o & bit) s += (s.empty() ? "" : "|") + std::string(name);
  return s.empty() ? "nothing" : s;
}

struct Expect {
  std::string file;
  uint64_t off = 0;
  std::string old_bytes;  // for a poisoned range: unused (the pattern is never acceptable)
  std::string new_bytes;  // empty when the range is not written
  unsigned after_crash;   // allowed in every crash state
  unsigned finished;      // allowed once the recovery is finished after the crash
  bool poisoned = false;  // a poisoned range: counted in the report
};

// Reads the range and says which outcome it is (0: none of them).
unsigned classify(Filesystem& fs, const Expect& e, std::string* got) {
  const size_t len = std::max(e.old_bytes.size(), e.new_bytes.size());
  got->assign(len, '\0');
  auto n = fs.read_copy(ino_of(fs, e.file), e.off, std::as_writable_bytes(std::span(*got)));
  if (!n) return n.error().code == std::errc::io_error ? unsigned{kEio} : 0u;
  got->resize(*n);
  unsigned o = 0;
  if (!e.poisoned && *got == e.old_bytes) o |= kOld;
  if (!e.new_bytes.empty() && *got == e.new_bytes) o |= kNew;
  if (o == 0 && !e.poisoned && !e.new_bytes.empty() && got->size() == len) {
    bool torn = true;
    for (size_t i = 0; i < len && torn; ++i) torn = (*got)[i] == e.old_bytes[i] || (*got)[i] == e.new_bytes[i];
    if (torn) o |= kTorn;
  }
  return o;
}

struct Case {
  std::function<void(Filesystem&)> setup;    // files and known poison
  std::function<void(Filesystem&)> recover;  // the recovery write(s); run again to finish after a crash
  std::vector<Expect> expects;
};

// ---------------------------------------------------------------- the crash model

enum class Model { kPage, kPmem };

// One step of the run: a media operation (index into the log) or a change
// of the poison list (index into the saved snapshots).
struct Step {
  bool poison_change;
  size_t index;
};

struct Recording {
  std::vector<std::byte> initial;
  std::vector<PoisonRange> initial_poison;
  std::vector<Op> log;
  std::vector<std::vector<PoisonRange>> poison_lists;  // after each change
  std::vector<Step> steps;
  std::vector<size_t> store_log;  // log index of each store
  std::vector<size_t> durable_at; // per store: the step that makes it durable (SIZE_MAX: none)
};

// Merges the log with the poison-list changes (each taken at a log
// position) and finds when each store becomes durable under the model.
void build_timeline(Recording& r, const std::vector<size_t>& change_pos, Model model) {
  size_t c = 0;
  for (size_t i = 0; i <= r.log.size(); ++i) {
    for (; c < change_pos.size() && change_pos[c] == i; ++c) r.steps.push_back({true, c});
    if (i < r.log.size()) r.steps.push_back({false, i});
  }
  const uint64_t grain = model == Model::kPage ? 4096 : 64;  // what one flush writes back
  for (size_t s = 0; s < r.steps.size(); ++s) {
    if (r.steps[s].poison_change || !r.log[r.steps[s].index].is_store()) continue;
    const Op& store = r.log[r.steps[s].index];
    r.store_log.push_back(r.steps[s].index);
    // Bytes of the store not yet covered by a later flush, as [lo, hi) pieces.
    std::vector<std::pair<uint64_t, uint64_t>> left{{store.off, store.off + store.len}};
    size_t flushed = SIZE_MAX, durable = SIZE_MAX;
    for (size_t t = s + 1; t < r.steps.size() && durable == SIZE_MAX; ++t) {
      if (r.steps[t].poison_change) continue;
      const Op& op = r.log[r.steps[t].index];
      if (op.kind == Op::kFlush && flushed == SIZE_MAX) {
        uint64_t lo = op.off / grain * grain, hi = (op.off + op.len + grain - 1) / grain * grain;
        std::vector<std::pair<uint64_t, uint64_t>> still;
        for (auto [a, b] : left) {
          if (a < lo) still.push_back({a, std::min(b, lo)});
          if (b > hi) still.push_back({std::max(a, hi), b});
        }
        left = std::move(still);
        if (left.empty()) {
          flushed = t;
          if (model == Model::kPage) durable = t;
        }
      } else if (op.kind == Op::kDrain && flushed != SIZE_MAX) {
        durable = t;
      }
    }
    r.durable_at.push_back(durable);
  }
}

struct CrashState {
  std::vector<std::byte> image;
  std::vector<PoisonRange> poison;
  std::string where;
};

// Calls fn for every distinct crash state of the recording.
void for_each_crash_state(const Recording& r, const std::function<bool(const CrashState&)>& fn) {
  constexpr size_t kMaxSubsetStores = 8;  // beyond: prefixes only
  std::set<std::string> seen;
  size_t store_no = 0, poison_no = SIZE_MAX;
  for (size_t p = 0; p <= r.steps.size(); ++p) {
    if (p > 0) {
      const Step& last = r.steps[p - 1];
      if (last.poison_change) poison_no = last.index;
      else if (r.log[last.index].is_store()) ++store_no;
    }
    std::vector<size_t> durable, in_flight;  // store numbers
    for (size_t s = 0; s < store_no; ++s) (r.durable_at[s] < p ? durable : in_flight).push_back(s);
    const auto& poison = poison_no == SIZE_MAX ? r.initial_poison : r.poison_lists[poison_no];
    // Applies the durable stores and `chosen` in log order, the last `torn_at` bytes of `torn` only.
    auto emit = [&](const std::vector<size_t>& chosen, size_t torn, size_t torn_at) {
      std::string key = std::to_string(poison_no) + ":";
      std::vector<bool> on(store_no, false);
      for (size_t s : durable) on[s] = true;
      for (size_t s : chosen) on[s] = true;
      for (size_t s = 0; s < store_no; ++s) key += on[s] ? '1' : '0';
      if (torn != SIZE_MAX) key += ":" + std::to_string(torn) + "@" + std::to_string(torn_at);
      if (!seen.insert(key).second) return true;
      CrashState st{r.initial, poison, ""};
      for (size_t s = 0; s < store_no; ++s) {
        const Op& op = r.log[r.store_log[s]];
        if (on[s]) RecordingMedia::apply_store(st.image, op, op.len);
        else if (s == torn) RecordingMedia::apply_store(st.image, op, torn_at);
      }
      st.where = "crash at step " + std::to_string(p) + " of " + std::to_string(r.steps.size()) + " (stores " +
                 key.substr(key.find(':') + 1) + ", poison list " +
                 (poison_no == SIZE_MAX ? "initial" : "after change " + std::to_string(poison_no)) + ")";
      return fn(st);
    };
    if (in_flight.size() <= kMaxSubsetStores) {
      for (uint32_t mask = 0; mask < (1u << in_flight.size()); ++mask) {
        std::vector<size_t> chosen;
        for (size_t i = 0; i < in_flight.size(); ++i)
          if (mask >> i & 1) chosen.push_back(in_flight[i]);
        if (!emit(chosen, SIZE_MAX, 0)) return;
      }
    } else {
      for (size_t j = 0; j <= in_flight.size(); ++j)
        if (!emit({in_flight.begin(), in_flight.begin() + j}, SIZE_MAX, 0)) return;
    }
    // Each in-flight store torn after the ones before it, at a few 8-byte cuts.
    for (size_t j = 0; j < in_flight.size(); ++j) {
      const Op& op = r.log[r.store_log[in_flight[j]]];
      const size_t stride = std::max<size_t>(8, op.len / 4 / 8 * 8);
      for (size_t cut = 8; cut < op.len; cut += stride)
        if (!emit({in_flight.begin(), in_flight.begin() + j}, in_flight[j], cut)) return;
    }
  }
}

std::unique_ptr<Media> media_with(const std::vector<std::byte>& img, const std::vector<PoisonRange>& poison) {
  auto m = testing::media_from(img);
  m->poison().replace_all(poison);
  return m;
}

// Checks every expectation (after_crash or finished); false after reporting.
bool check_expects(Filesystem& fs, const Case& c, bool finished, const std::string& where,
                   std::vector<unsigned>* seen) {
  for (size_t i = 0; i < c.expects.size(); ++i) {
    const Expect& e = c.expects[i];
    std::string got;
    const unsigned o = classify(fs, e, &got);
    const unsigned allowed = finished ? e.finished : e.after_crash;
    if (seen) (*seen)[i] |= o;
    if ((o & allowed) == 0) {
      ADD_FAILURE() << where << (finished ? ", recovery finished" : "") << ": " << e.file << " [" << e.off << ", "
                    << e.off + std::max(e.old_bytes.size(), e.new_bytes.size()) << ") reads "
                    << (o == 0 ? (got.find_first_of("#POISN") != std::string::npos ? "the poison pattern"
                                                                                    : "other bytes")
                               : outcome_names(o))
                    << ", expected " << outcome_names(allowed) << "; got \"" << got.substr(0, 48) << "\"";
      return false;
    }
  }
  return true;
}

// Runs the case under the model; returns the number of crash states checked.
size_t run_crash_case(const Case& c, Model model, const std::string& name) {
  auto rec = std::make_unique<RecordingMedia>(kDevice);
  RecordingMedia* raw = rec.get();
  rec->set_byte_granular(model == Model::kPmem);
  rec->set_recording(false);
  EXPECT_TRUE(Filesystem::format(*rec, {}));
  auto fs = Filesystem::mount(std::move(rec), {});
  EXPECT_TRUE(fs) << fs.error().to_string();
  if (!fs) return 0;
  c.setup(**fs);
  if (::testing::Test::HasFatalFailure()) return 0;

  Recording r;
  r.initial = raw->image();
  r.initial_poison = raw->poison().all();
  EXPECT_FALSE(r.initial_poison.empty());
  std::vector<size_t> change_pos;
  raw->poison().set_on_change([&](const PoisonChange&) {
    change_pos.push_back(raw->log().size());
    r.poison_lists.push_back(raw->poison().all());
  });
  raw->set_recording(true);
  c.recover(**fs);
  raw->set_recording(false);
  raw->poison().set_on_change(nullptr);
  if (::testing::Test::HasFatalFailure()) return 0;
  // Without a crash the recovery is complete.
  if (!check_expects(**fs, c, true, name + ": no crash", nullptr)) return 0;
  r.log = raw->log();
  build_timeline(r, change_pos, model);

  size_t states = 0;
  std::vector<unsigned> seen(c.expects.size(), 0);
  for_each_crash_state(r, [&](const CrashState& st) {
    ++states;
    const std::string where = name + ": " + st.where;
    auto check = check_filesystem(*media_with(st.image, st.poison), false);
    if (!check || !check->clean()) {
      ADD_FAILURE() << where << ": fsck: "
                    << (check ? ::testing::PrintToString(check->problems) : check.error().to_string());
      return false;
    }
    auto crashed = Filesystem::mount(media_with(st.image, st.poison), {});
    if (!crashed) {
      ADD_FAILURE() << where << ": mount fails: " << crashed.error().to_string();
      return false;
    }
    if (!check_expects(**crashed, c, false, where, &seen)) return false;
    c.recover(**crashed);
    if (::testing::Test::HasFatalFailure()) return false;
    return check_expects(**crashed, c, true, where, nullptr);
  });
  // Both sides of the commit point were reached: some state still poisoned,
  // some already recovered, for every poisoned range the writer recovers.
  for (size_t i = 0; i < c.expects.size(); ++i) {
    const Expect& e = c.expects[i];
    if (!e.poisoned) continue;
    if (e.after_crash & kNew) {
      EXPECT_EQ(seen[i] & (kEio | kNew), unsigned{kEio | kNew})
          << name << ": " << e.file << " at " << e.off << " was only ever " << outcome_names(seen[i]);
    }
    std::cout << "[ crash    ] " << name << ": " << e.file << " poisoned range at " << e.off << " read as "
              << outcome_names(seen[i]) << "\n";
  }
  std::cout << "[ crash    ] " << name << ": " << r.log.size() << " media operations, "
            << r.poison_lists.size() << " poison-list changes, " << states << " crash states checked\n";
  std::string key = "crash_states_" + name;
  std::replace_if(key.begin(), key.end(), [](char ch) { return !std::isalnum(static_cast<unsigned char>(ch)); }, '_');
  ::testing::Test::RecordProperty(key, static_cast<int>(states));
  return states;
}

// ---------------------------------------------------------------- the cases

constexpr unsigned kPoisonedOrNew = kEio | kNew;
constexpr unsigned kAnyOverwrite = kOld | kNew | kTorn;

// Pieces of one file: [off, off+len) either untouched, written (clean bytes
// under the write) or poisoned and written.
Expect untouched(const std::string& file, const std::string& data, uint64_t off, uint64_t len) {
  return {file, off, data.substr(off, len), "", kOld, kOld};
}
Expect written(const std::string& file, const std::string& data, const std::string& fresh, uint64_t write_off,
               uint64_t off, uint64_t len, unsigned after_crash = kAnyOverwrite) {
  return {file, off, data.substr(off, len), fresh.substr(off - write_off, len), after_crash, kNew};
}
Expect poisoned_written(const std::string& file, const std::string& fresh, uint64_t write_off, uint64_t off,
                        uint64_t len) {
  return {file, off, std::string(len, '#'), fresh.substr(off - write_off, len), kPoisonedOrNew, kNew, true};
}

// (i) A block the file owns alone, 512 bytes of it poisoned, rewritten
// whole: in place, the poison cleared after the write.
Case private_block() {
  const std::string a = content(4 * B, 1), fresh = new_content(B, 101);
  Case c;
  c.setup = [a](Filesystem& fs) {
    create(fs, "a", a);
    inject(fs, "a", B + 1024, 512);
  };
  c.recover = [fresh](Filesystem& fs) { recovery_write(fs, "a", B, fresh); };
  c.expects = {untouched("a", a, 0, B), written("a", a, fresh, B, B, 1024),
               poisoned_written("a", fresh, B, B + 1024, 512), written("a", a, fresh, B, B + 1536, B - 1536),
               untouched("a", a, 2 * B, 2 * B)};
  return c;
}

// What the sharers that did not write see in their poisoned range.
struct Others {
  unsigned after_crash;
  unsigned finished;
};

// (ii) Block 1 of `a` is shared by `b` (a clone of all of a) and `c` (its
// block 0); 1 KiB of it, [512, 1536), is poisoned. The recovery write goes
// through b only and covers [lo, hi) of the block (lo <= 512, hi >= 1536):
// b gets its own copy, with the clean bytes outside [lo, hi) copied from the
// shared block. `block` is the new content of the whole block (b's block
// afterwards); `others` what a and c may read in their poisoned range.
Case shared_block(const std::string& block, Others others, uint64_t lo = 0, uint64_t hi = B) {
  const std::string a = content(4 * B, 2), c_own = content(2 * B, 3);
  std::string c_data = c_own;
  c_data.replace(0, B, a.substr(B, B));
  const std::string fresh = block.substr(lo, hi - lo);
  Case c;
  c.setup = [a, c_own](Filesystem& fs) {
    Ino ia = create(fs, "a", a);
    Ino ib = create(fs, "b", "");
    Ino ic = create(fs, "c", c_own);
    ASSERT_TRUE(fs.clone_range(ia, 0, ib, 0, 0));
    ASSERT_TRUE(fs.clone_range(ia, B, ic, 0, B));
    ASSERT_EQ(phys_of(fs, ia, B), phys_of(fs, ib, B));
    ASSERT_EQ(phys_of(fs, ia, B), phys_of(fs, ic, 0));
    inject(fs, "a", B + 512, 1024);
  };
  c.recover = [fresh, lo](Filesystem& fs) { recovery_write(fs, "b", B + lo, fresh); };
  // The writer: copy-on-write is atomic (the new block is complete before
  // the remap commits), so its written clean bytes are all old or all new.
  const uint64_t w = B + lo;  // where the write starts, in b
  c.expects = {untouched("b", a, 0, B + lo), poisoned_written("b", fresh, w, B + 512, 1024),
               untouched("b", a, B + hi, 3 * B - hi)};
  if (lo < 512) c.expects.push_back(written("b", a, fresh, w, w, 512 - lo, kOld | kNew));
  if (hi > 1536) c.expects.push_back(written("b", a, fresh, w, B + 1536, hi - 1536, kOld | kNew));
  // The other sharers: clean bytes keep their data, the poisoned range is
  // judged by `others` (new data there = the block's true content).
  for (auto [file, data, at] : {std::tuple{"a", a, B}, std::tuple{"c", c_data, uint64_t{0}}}) {
    c.expects.push_back(untouched(file, data, at, 512));
    c.expects.push_back({file, at + 512, std::string(1024, '#'), block.substr(512, 1024), others.after_crash,
                         others.finished, true});
    c.expects.push_back(untouched(file, data, at + 1536, B - 1536));
  }
  c.expects.push_back(untouched("a", a, 2 * B, 2 * B));
  c.expects.push_back(untouched("c", c_data, B, B));
  return c;
}

// (iii) A write from the middle of block 1 to the middle of block 2 (both
// owned by the file alone) over two poisoned units in block 2: clean bytes
// on both sides of the poison, and across a block boundary.
Case spanning_write() {
  const std::string a = content(4 * B, 4);
  const uint64_t off = B + 3000, len = (2 * B + 1000) - off;
  const std::string fresh = new_content(len, 104);
  Case c;
  c.setup = [a](Filesystem& fs) {
    create(fs, "a", a);
    inject(fs, "a", 2 * B + 128, 128);
  };
  c.recover = [fresh, off](Filesystem& fs) { recovery_write(fs, "a", off, fresh); };
  c.expects = {untouched("a", a, 0, off), written("a", a, fresh, off, off, 2 * B + 128 - off),
               poisoned_written("a", fresh, off, 2 * B + 128, 128),
               written("a", a, fresh, off, 2 * B + 256, off + len - (2 * B + 256)),
               untouched("a", a, off + len, 4 * B - (off + len))};
  return c;
}

// The behaviour the crash cases start from, without a crash, on a plain
// TestDevice: in place for private blocks (same mapping, poison gone), a
// copy for the writer of a shared block (the others keep the poison).
std::vector<uint64_t> mapping(Filesystem& fs, std::string_view file, uint64_t blocks) {
  std::vector<uint64_t> m;
  for (uint64_t b = 0; b < blocks; ++b) m.push_back(phys_of(fs, ino_of(fs, file), b * B));
  return m;
}

TEST(RecoveryCrash, WithoutACrashTheCasesBehaveAsDescribed) {
  for (Case c : {private_block(), spanning_write()}) {
    testing::TestDevice dev(kDevice);
    c.setup(*dev);
    const auto before = mapping(*dev, "a", 4);
    c.recover(*dev);
    EXPECT_EQ(mapping(*dev, "a", 4), before);
    EXPECT_TRUE(dev->badblocks().empty());
    dev.remount();
    EXPECT_TRUE(check_expects(*dev, c, true, "after remount", nullptr));
    EXPECT_TRUE(dev.check().clean());
  }
  testing::TestDevice dev(kDevice);
  Case c = shared_block(new_content(B, 102), {kEio, kEio});
  c.setup(*dev);
  const uint64_t block = phys_of(*dev, ino_of(*dev, "a"), B);
  c.recover(*dev);
  EXPECT_NE(phys_of(*dev, ino_of(*dev, "b"), B), block);
  EXPECT_EQ(phys_of(*dev, ino_of(*dev, "a"), B), block);
  EXPECT_EQ(phys_of(*dev, ino_of(*dev, "c"), 0), block);
  EXPECT_FALSE(dev->badblocks().empty());
  dev.remount();
  EXPECT_TRUE(check_expects(*dev, c, true, "after remount", nullptr));
  EXPECT_TRUE(dev.check().clean());
}

// ---- page-granular media: an image file or /dev/shm, where the daemon runs

TEST(RecoveryCrash, PrivateBlockInPlace) {
  EXPECT_GT(run_crash_case(private_block(), Model::kPage, "private/page"), 0u);
}

TEST(RecoveryCrash, SharedBlockWithOtherDataGivesTheWriterACopy) {
  EXPECT_GT(run_crash_case(shared_block(new_content(B, 102), {kEio, kEio}), Model::kPage, "shared-other/page"), 0u);
  // Only the poisoned units written: the copy takes the rest of the block
  // from the shared one, around the poison.
  EXPECT_GT(run_crash_case(shared_block(new_content(B, 103), {kEio, kEio}, 512, 1536), Model::kPage,
                           "shared-units/page"),
            0u);
}

// The block's true content written through one sharer: it matches the
// block's checksum, so the block is written in place and every sharer is
// healed (DESIGN.md section 3): the others read EIO or the healed bytes
// after a crash, the healed bytes once the recovery is finished.
Case shared_block_true_content() {
  return shared_block(content(4 * B, 2).substr(B, B), {kEio | kNew, kNew});
}

TEST(RecoveryCrash, SharedBlockWithItsTrueContent) {
  EXPECT_GT(run_crash_case(shared_block_true_content(), Model::kPage, "shared-true/page"), 0u);
}

TEST(RecoveryCrash, WriteSpanningPoisonAndCleanBytes) {
  EXPECT_GT(run_crash_case(spanning_write(), Model::kPage, "spanning/page"), 0u);
}

// ---- byte-granular media (real pmem): only flushed-and-drained stores are
// durable. These found two ordering bugs, now fixed: the poison record was
// cleared before the in-place data was drained (src/fs/data.cc), and a
// transaction could persist before the new data it maps (a drain now comes
// first in Journal::commit).

TEST(RecoveryCrash, PrivateBlockInPlaceOnPmem) {
  EXPECT_GT(run_crash_case(private_block(), Model::kPmem, "private/pmem"), 0u);
}

TEST(RecoveryCrash, SharedBlockOnPmem) {
  EXPECT_GT(run_crash_case(shared_block(new_content(B, 102), {kEio, kEio}), Model::kPmem, "shared-other/pmem"), 0u);
  EXPECT_GT(run_crash_case(shared_block_true_content(), Model::kPmem, "shared-true/pmem"), 0u);
}

TEST(RecoveryCrash, WriteSpanningPoisonAndCleanBytesOnPmem) {
  EXPECT_GT(run_crash_case(spanning_write(), Model::kPmem, "spanning/pmem"), 0u);
}

}  // namespace
}  // namespace poisonfs
