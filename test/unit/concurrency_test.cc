// Concurrency of the core (issue 6 item 3: these are the tests that run
// under ThreadSanitizer, `scripts/test.sh --tsan`): several threads drive
// one Filesystem at once, each on files of its own with an exact model of
// their contents (writes, overwrites, clones between its files, copy_range,
// truncates, renames, fsync), while another thread poisons a victim file
// shared with clones and recovers it, and another walks the device (fsmap,
// bmap, events, badblocks, scrub). Afterwards every file matches its model,
// no poison is left, and fsck finds the image clean after a remount.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "poisonfs/filesystem.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

constexpr uint64_t B = kBlockSize;
const Caller kUser{1000, 1000, 022};

std::string bytes_of(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>('a' + rng() % 26);
  return s;
}

Result<std::string> read_back(Filesystem& fs, Ino ino, uint64_t off, size_t len) {
  std::string out(len, '\0');
  auto n = fs.read_copy(ino, off, std::as_writable_bytes(std::span(out)));
  if (!n) return std::unexpected(n.error());
  out.resize(*n);
  return out;
}

// One thread's files and what they must hold.
struct Worker {
  unsigned id;
  std::vector<std::string> names;
  std::vector<Ino> inos;
  std::vector<std::string> model;
  std::string failure;  // the first mismatch seen

  void fail(const std::string& what) {
    if (failure.empty()) failure = what;
  }
  void write_at(size_t f, uint64_t off, const std::string& data) {
    if (model[f].size() < off + data.size()) model[f].resize(off + data.size(), '\0');
    model[f].replace(off, data.size(), data);
  }
};

void run_worker(Filesystem& fs, Worker& w, int steps) {
  std::mt19937_64 rng(1000 + w.id);
  for (int step = 0; step < steps && w.failure.empty(); ++step) {
    const size_t f = rng() % w.inos.size(), g = (f + 1) % w.inos.size();
    switch (rng() % 8) {
      case 0:
      case 1: {  // write anywhere in the first 64 KiB, unaligned
        uint64_t off = rng() % (64 * 1024);
        std::string data = bytes_of(rng, 1 + rng() % (3 * B));
        auto n = fs.write(w.inos[f], off, std::as_bytes(std::span(data)));
        if (!n || *n != data.size()) w.fail("write");
        else w.write_at(f, off, data);
        break;
      }
      case 2: {  // clone whole blocks from f to g
        uint64_t src_blocks = w.model[f].size() / B;
        if (src_blocks == 0) break;
        uint64_t src = (rng() % src_blocks) * B, dst = (rng() % 16) * B;
        uint64_t len = std::min<uint64_t>((1 + rng() % 4) * B, src_blocks * B - src);
        if (!fs.clone_range(w.inos[f], src, w.inos[g], dst, len)) {
          w.fail("clone_range");
          break;
        }
        w.write_at(g, dst, w.model[f].substr(src, len));
        break;
      }
      case 3: {  // copy_range, unaligned: shares what it can, copies the rest
        if (w.model[f].empty()) break;
        uint64_t src = rng() % w.model[f].size(), dst = rng() % (64 * 1024);
        uint64_t len = std::min<uint64_t>(1 + rng() % (2 * B), w.model[f].size() - src);
        auto n = fs.copy_range(w.inos[f], src, w.inos[g], dst, len);
        if (!n) {
          w.fail("copy_range");
          break;
        }
        w.write_at(g, dst, w.model[f].substr(src, *n));
        break;
      }
      case 4: {  // truncate
        uint64_t size = rng() % (48 * 1024);
        SetAttr set;
        set.valid = SetAttr::kSize;
        set.size = size;
        if (!fs.setattr(w.inos[f], set, kUser)) w.fail("truncate");
        else w.model[f].resize(size, '\0');
        break;
      }
      case 5: {  // rename back and forth
        std::string other = w.names[f] + ".r";
        if (!fs.rename(kRootIno, w.names[f], kRootIno, other, 0) || !fs.rename(kRootIno, other, kRootIno, w.names[f], 0))
          w.fail("rename");
        break;
      }
      case 6:
        if (!fs.fsync(w.inos[f], false)) w.fail("fsync");
        break;
      default: {  // read back and compare with the model
        auto got = read_back(fs, w.inos[f], 0, w.model[f].size() + 100);
        if (!got || *got != w.model[f]) w.fail("read of " + w.names[f] + " does not match the model");
      }
    }
  }
}

// Poisons a block of the victim (shared by its clones) and recovers it with
// the true bytes, round after round; every sharer is healed by the one write.
void run_poisoner(Filesystem& fs, Ino victim, const std::string& truth, std::atomic<bool>& stop, std::string& failure) {
  std::mt19937_64 rng(7);
  while (!stop) {
    uint64_t block = rng() % (truth.size() / B);
    auto map = fs.bmap(victim);
    if (!map) {
      failure = "bmap of the victim";
      return;
    }
    uint64_t phys = testing::phys_of(fs, victim, block * B);
    uint64_t unit = (rng() % (B / kPoisonUnit)) * kPoisonUnit;
    if (!fs.inject_poison(phys + unit, kPoisonUnit, rng() % 2 == 0)) {
      failure = "inject";
      return;
    }
    (void)read_back(fs, victim, block * B, B);  // EIO; makes latent poison known
    auto n = fs.write(victim, block * B + unit, std::as_bytes(std::span(truth).subspan(block * B + unit, kPoisonUnit)));
    if (!n) {
      failure = "recovery write: " + n.error().to_string();
      return;
    }
  }
}

void run_observer(Filesystem& fs, std::atomic<bool>& stop, std::string& failure) {
  for (int round = 0; !stop; ++round) {
    uint64_t records = 0;
    if (!fs.fsmap(0, UINT64_MAX, [&](const FsmapEntry&) { return ++records > 0; })) failure = "fsmap";
    (void)fs.events(0, 100, nullptr);
    (void)fs.badblocks();
    (void)fs.statfs();
    if (round % 8 == 0 && !fs.scrub(nullptr)) failure = "scrub";
  }
}

TEST(Concurrency, WorkersPoisonerAndObserverShareOneFilesystem) {
  testing::TestDevice dev(32 << 20);
  Filesystem& fs = *dev;
  std::mt19937_64 rng(3);
  const std::string truth = bytes_of(rng, 16 * B);
  auto victim = fs.mknod(kRootIno, "victim", S_IFREG | 0644, 0, kUser);
  ASSERT_TRUE(victim);
  ASSERT_TRUE(fs.write(victim->ino, 0, std::as_bytes(std::span(truth))));
  for (const char* clone : {"victim.1", "victim.2"}) {
    auto c = fs.mknod(kRootIno, clone, S_IFREG | 0644, 0, kUser);
    ASSERT_TRUE(c);
    ASSERT_TRUE(fs.clone_range(victim->ino, 0, c->ino, 0, 0));
  }

  constexpr unsigned kWorkers = 3;
  std::vector<Worker> workers(kWorkers);
  for (unsigned i = 0; i < kWorkers; ++i) {
    workers[i].id = i;
    for (int f = 0; f < 3; ++f) {
      std::string name = "w" + std::to_string(i) + "-" + std::to_string(f);
      auto a = fs.mknod(kRootIno, name, S_IFREG | 0644, 0, kUser);
      ASSERT_TRUE(a);
      workers[i].names.push_back(name);
      workers[i].inos.push_back(a->ino);
      workers[i].model.emplace_back();
    }
  }
  std::atomic<bool> stop{false};
  std::string poisoner_failure, observer_failure;
  std::thread poisoner(run_poisoner, std::ref(fs), victim->ino, std::cref(truth), std::ref(stop),
                       std::ref(poisoner_failure));
  std::thread observer(run_observer, std::ref(fs), std::ref(stop), std::ref(observer_failure));
  std::vector<std::thread> threads;
  for (Worker& w : workers) threads.emplace_back(run_worker, std::ref(fs), std::ref(w), 400);
  for (std::thread& t : threads) t.join();
  stop = true;
  poisoner.join();
  observer.join();

  EXPECT_EQ(poisoner_failure, "");
  EXPECT_EQ(observer_failure, "");
  for (Worker& w : workers) EXPECT_EQ(w.failure, "") << "worker " << w.id;
  EXPECT_TRUE(fs.badblocks().empty());
  dev.remount();
  for (Worker& w : workers)
    for (size_t f = 0; f < w.names.size(); ++f) {
      auto ino = dev->lookup(kRootIno, w.names[f]);
      ASSERT_TRUE(ino);
      EXPECT_EQ(read_back(*dev, ino->ino, 0, w.model[f].size() + 100).value_or("?"), w.model[f]) << w.names[f];
    }
  for (const char* name : {"victim", "victim.1", "victim.2"})
    EXPECT_EQ(read_back(*dev, dev->lookup(kRootIno, name)->ino, 0, truth.size()).value_or("?"), truth) << name;
  CheckReport report = dev.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

// The FUSE layer's entries are counted under the core's lock
// (EntryRef::kKernel): a lookup racing an unlink either misses or holds the
// inode until it forgets it; it never answers for a number freed (and given
// to the next file) under it.
TEST(Concurrency, KernelReferencesHoldInodesAgainstConcurrentUnlinks) {
  testing::TestDevice dev(32 << 20);
  Filesystem& fs = *dev;
  const uint64_t files0 = fs.statfs().files_free;
  std::atomic<bool> stop{false}, freed_under_a_reference{false};
  std::atomic<uint64_t> held{0};
  std::thread looker([&] {
    while (!stop) {
      auto a = fs.lookup(kRootIno, "f", EntryRef::kKernel);
      if (!a) continue;
      ++held;
      // Long enough for the other thread to unlink and create again.
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      auto again = fs.getattr(a->ino);
      if (!again || again->generation != a->generation) freed_under_a_reference = true;
      (void)fs.forget(a->ino, 1);
    }
  });
  const std::string data(3 * B, 'x');
  // What the kernel does with a file it creates, writes and removes.
  auto churn = [&]() -> std::string {
    auto made = fs.mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser, EntryRef::kKernel);
    if (!made) return "mknod: " + made.error().to_string();
    if (!fs.write(made->ino, 0, std::as_bytes(std::span(data)))) return "write";
    if (!fs.unlink(kRootIno, "f")) return "unlink";
    return fs.forget(made->ino, 1) ? "" : "forget";
  };
  std::string failure;
  // At least 3000 rounds, and on until the looker held the file 100 times
  // (a loaded machine may not run it for a while), for 20 s at most.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (int i = 0; failure.empty() && (i < 3000 || held.load() < 100); ++i) {
    failure = churn();
    if (std::chrono::steady_clock::now() > deadline) break;
  }
  stop = true;
  looker.join();
  EXPECT_EQ(failure, "");
  EXPECT_GT(held.load(), 0u) << "the race never happened";
  EXPECT_FALSE(freed_under_a_reference);
  EXPECT_EQ(fs.statfs().files_free, files0);
  CheckReport report = dev.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

// readlink takes the inode's type, size and blocks in one look under the
// lock: racing an unlink that frees the symlink and a new symlink or file
// that takes its number, it answers one whole target or fails; it never
// mixes two inodes (one's size, another's bytes) nor reads a freed one (a
// report under ASan and TSan).
TEST(Concurrency, ReadlinkRacingUnlinkAndCreateAnswersOneWholeTarget) {
  testing::TestDevice dev(32 << 20);
  Filesystem& fs = *dev;
  const std::string short_target = "s", long_target(3000, 'L'), file_data(4000, 'F');
  auto first = fs.symlink(kRootIno, "l", short_target, kUser);
  ASSERT_TRUE(first);
  const Ino ino = first->ino;  // the number every new "l" takes (freed numbers go first)
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> answered{0};
  // The first answer that is no whole target (read after the join).
  std::optional<std::string> mixed;
  std::thread reader([&] {
    while (!stop) {
      auto target = fs.readlink(ino);
      if (!target) continue;
      ++answered;
      if (*target != short_target && *target != long_target) {
        mixed = *target;
        stop = true;
      }
    }
  });
  // Replaces "l" by a long symlink, a regular file with data, a short symlink.
  auto churn = [&](int round) -> std::string {
    if (!fs.unlink(kRootIno, "l")) return "unlink";
    if (round % 3 == 1) {
      auto made = fs.mknod(kRootIno, "l", S_IFREG | 0644, 0, kUser);
      if (!made) return "mknod: " + made.error().to_string();
      return fs.write(made->ino, 0, std::as_bytes(std::span(file_data))) ? "" : "write";
    }
    auto made = fs.symlink(kRootIno, "l", round % 3 == 0 ? long_target : short_target, kUser);
    return made ? "" : "symlink: " + made.error().to_string();
  };
  std::string failure;
  // The window was a few instructions wide: churn for 2 s (a size read after
  // the unlock mixed two inodes within a second here), and on until the
  // reader had 1000 answers (a loaded machine may not run it for a while),
  // for 20 s at most.
  using std::chrono::seconds;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; failure.empty() && !stop; ++i) {
    failure = churn(i);
    const auto ran = std::chrono::steady_clock::now() - start;
    if (ran > seconds(20) || (ran > seconds(2) && answered.load() >= 1000)) break;
  }
  stop = true;
  reader.join();
  EXPECT_EQ(failure, "");
  EXPECT_GT(answered.load(), 0u) << "the race never happened";
  EXPECT_FALSE(mixed) << "a target of " << mixed->size() << " bytes";
  CheckReport report = dev.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

}  // namespace
}  // namespace poisonfs
