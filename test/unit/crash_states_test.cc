// Crash-state enumeration (issue 6, item 1). A workload that mixes every
// operation of the core API (create, write, in-place overwrite, reflink,
// copy-on-write of a shared block, rename and exchange, link/unlink,
// truncate, punch, fallocate, xattrs, poison injection, notify_failure,
// recovery writes, scrub) runs on a RecordingMedia, against a model of what
// every file holds after each step. Then, with the pmem persistence model of
// recording_media.h, it builds the images a crash leaves: at every drain,
// and inside each epoch between drains a bounded set of subsets of the
// stores that were not yet durable (each one dropped, each prefix, random
// subsets with a fixed seed). Every image must mount, fsck clean, and show
// a state the model allows (see CrashChecker). The count of crash states is
// printed. It runs twice: with x86 pmem ordering (only a drain orders
// stores) and with flush-ordered write-back (what the core was written
// for). The core bugs it found have regression tests at the end
// (CrashRegression).
//
// POISONFS_CRASH_STATES=large checks many more subsets per crash point and
// more workload seeds (POISONFS_CRASH_SEEDS, default 8); scripts/crash.sh
// runs it on a Release build.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "poisonfs/filesystem.h"
#include "unit/recording_media.h"

namespace poisonfs {
namespace {

using testing::PersistenceModel;
using testing::RecordingMedia;

constexpr uint64_t B = kBlockSize;
constexpr uint64_t kDevice = 2 << 20;
const Caller kUser{1000, 1000, 022};

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s)); }

// File data: lowercase letters only, different for every seed. The poison
// pattern ("#POISON#") can never be mistaken for data a file held.
std::string payload(size_t len, uint64_t seed) {
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

// ---------------------------------------------------------------- the model

// One inode as the API must show it.
struct Node {
  uint32_t type = S_IFREG;  // S_IFREG, S_IFDIR or S_IFLNK
  std::string bytes;        // file contents or symlink target
  std::map<std::string, std::string> xattrs;
  std::set<uint64_t> poisoned_units;  // 64-byte file units that read EIO
};

// The whole tree after one step: paths ("/", "/a", "/d/e") -> inode.
struct Tree {
  std::map<std::string, Ino> names{{"/", kRootIno}};
  std::map<Ino, Node> nodes{{kRootIno, Node{S_IFDIR, {}, {}, {}}}};

  Node& at(const std::string& path) { return nodes.at(names.at(path)); }
};

std::string parent_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == 0 ? "/" : path.substr(0, slash);
}
std::string leaf_of(const std::string& path) { return path.substr(path.rfind('/') + 1); }

// What the API shows of a tree apart from file contents, as one comparable
// map: path -> "type ino nlink size xattrs target". Contents and poison are
// checked separately, byte by byte.
using MetaView = std::map<std::string, std::string>;

std::string describe_node(Ino ino, uint32_t type, uint64_t nlink, uint64_t size,
                          const std::map<std::string, std::string>& xattrs, const std::string& target) {
  std::string d = std::to_string(type >> 12) + " ino " + std::to_string(ino) + " nlink " + std::to_string(nlink);
  if (type != S_IFDIR) d += " size " + std::to_string(size);
  for (const auto& [k, v] : xattrs) d += " " + k + "=" + v;
  if (type == S_IFLNK) d += " -> " + target;
  return d;
}

MetaView meta_view(const Tree& t) {
  std::map<Ino, uint64_t> links;
  for (const auto& [path, ino] : t.names) {
    const Node& n = t.nodes.at(ino);
    if (n.type == S_IFDIR) {
      links[ino] += 2;
      if (path != "/") ++links[t.names.at(parent_of(path))];
    } else {
      ++links[ino];
    }
  }
  MetaView v;
  for (const auto& [path, ino] : t.names) {
    const Node& n = t.nodes.at(ino);
    v[path] = describe_node(ino, n.type, links[ino], n.bytes.size(), n.xattrs, n.bytes);
  }
  return v;
}

// The same view read through the API. Sets *problem when a name leads
// nowhere.
MetaView meta_view(Filesystem& fs, std::string* problem) {
  MetaView v;
  std::function<void(Ino, const std::string&)> walk = [&](Ino ino, const std::string& path) {
    auto a = fs.getattr(ino);
    if (!a) {
      *problem = path + ": getattr fails: " + a.error().to_string();
      return;
    }
    std::map<std::string, std::string> xattrs;
    if (auto names = fs.listxattr(ino))
      for (const std::string& x : *names)
        if (x != "user.poisonfs.poison") xattrs[x] = fs.getxattr(ino, x).value_or("<error>");
    std::string target = S_ISLNK(a->mode) ? fs.readlink(ino).value_or("<error>") : "";
    v[path] = describe_node(ino, a->mode & S_IFMT, a->nlink, a->size, xattrs, target);
    if (!S_ISDIR(a->mode)) return;
    std::vector<std::pair<std::string, Ino>> children;
    auto st = fs.readdir(ino, 0, [&](const DirEntry& e) {
      if (e.name != "." && e.name != "..") children.emplace_back(std::string(e.name), e.ino);
      return true;
    });
    if (!st) *problem = path + ": readdir fails: " + st.error().to_string();
    for (const auto& [name, child] : children) walk(child, (path == "/" ? "" : path) + "/" + name);
  };
  walk(kRootIno, "/");
  return v;
}

// A file's poisoned 64-byte units as its extents and the device list make
// them (the hardware's fact, mapped through the file's blocks).
std::set<uint64_t> poisoned_units(Filesystem& fs, Ino ino) {
  std::set<uint64_t> units;
  auto map = fs.bmap(ino);
  if (!map) return units;
  const auto bad = fs.badblocks();
  for (const BmapEntry& e : *map) {
    if (e.unwritten) continue;
    for (const PoisonRange& p : bad) {
      uint64_t lo = std::max(p.offset, e.physical), hi = std::min(p.end(), e.physical + e.length);
      for (uint64_t d = lo; d < hi; d += kPoisonUnit) units.insert((e.file_offset + (d - e.physical)) / kPoisonUnit);
    }
  }
  return units;
}

// ---------------------------------------------------------------- workload

// One step of the workload: its log range and the model after it.
struct StepRecord {
  std::string name;
  size_t log_begin = 0, log_end = 0;
  Tree after;
  std::optional<Ino> fsynced;  // an fsync of this inode
};

// Runs operations on the filesystem and the model side by side; after each
// step the live filesystem must match the model exactly.
class Workload {
 public:
  Workload(Filesystem& fs, RecordingMedia& media, uint64_t seed) : fs_(fs), media_(media), rng_(seed) {
    history_.push_back(StepRecord{"mount", 0, media_.log().size(), tree_, {}});
  }

  const std::vector<StepRecord>& history() const { return history_; }

  void run();

 private:
  uint64_t rand(uint64_t n) { return rng_() % n; }
  std::string data(size_t len) { return payload(len, rng_()); }
  Ino ino(const std::string& path) { return tree_.names.at(path); }

  // Runs op as one step; nothing may store outside a step.
  void step(const std::string& name, const std::function<void()>& op, std::optional<Ino> fsynced = {}) {
    if (::testing::Test::HasFatalFailure()) return;
    ASSERT_EQ(media_.log().size(), history_.back().log_end) << "stores outside a step before " << name;
    size_t begin = media_.log().size();
    op();
    if (::testing::Test::HasFatalFailure()) return;
    for (auto& [i, node] : tree_.nodes)
      if (node.type == S_IFREG) node.poisoned_units = poisoned_units(fs_, i);
    history_.push_back(StepRecord{name, begin, media_.log().size(), tree_, fsynced});
    expect_live_matches(name);
  }

  void expect_live_matches(const std::string& name);

  // --- operations: each changes the filesystem and the model
  void create(const std::string& path) {
    auto a = fs_.mknod(ino(parent_of(path)), leaf_of(path), S_IFREG | 0644, 0, kUser);
    ASSERT_TRUE(a) << path << ": " << a.error().to_string();
    tree_.names[path] = a->ino;
    tree_.nodes[a->ino] = Node{};
  }
  void mkdir(const std::string& path) {
    auto a = fs_.mkdir(ino(parent_of(path)), leaf_of(path), 0755, kUser);
    ASSERT_TRUE(a) << path << ": " << a.error().to_string();
    tree_.names[path] = a->ino;
    tree_.nodes[a->ino] = Node{S_IFDIR, {}, {}, {}};
  }
  void symlink(const std::string& path, const std::string& target) {
    auto a = fs_.symlink(ino(parent_of(path)), leaf_of(path), target, kUser);
    ASSERT_TRUE(a) << path << ": " << a.error().to_string();
    tree_.names[path] = a->ino;
    tree_.nodes[a->ino] = Node{S_IFLNK, target, {}, {}};
  }
  void write(const std::string& path, uint64_t off, const std::string& d) {
    auto n = fs_.write(ino(path), off, bytes_of(d));
    ASSERT_TRUE(n) << path << ": " << n.error().to_string();
    ASSERT_EQ(*n, d.size());
    std::string& m = tree_.at(path).bytes;
    if (m.size() < off + d.size()) m.resize(off + d.size(), '\0');
    m.replace(off, d.size(), d);
  }
  void clone(const std::string& src, uint64_t src_off, const std::string& dst, uint64_t dst_off, uint64_t len) {
    auto st = fs_.clone_range(ino(src), src_off, ino(dst), dst_off, len);
    ASSERT_TRUE(st) << src << " -> " << dst << ": " << st.error().to_string();
    std::string from = tree_.at(src).bytes.substr(src_off, len);
    std::string& m = tree_.at(dst).bytes;
    if (m.size() < dst_off + len) m.resize(dst_off + len, '\0');
    m.replace(dst_off, len, from);
  }
  void truncate(const std::string& path, uint64_t size) {
    SetAttr set;
    set.valid = SetAttr::kSize;
    set.size = size;
    auto a = fs_.setattr(ino(path), set, kUser);
    ASSERT_TRUE(a) << path << ": " << a.error().to_string();
    tree_.at(path).bytes.resize(size, '\0');
  }
  void fallocate(const std::string& path, int mode, uint64_t off, uint64_t len) {
    auto st = fs_.fallocate(ino(path), mode, off, len);
    ASSERT_TRUE(st) << path << ": " << st.error().to_string();
    std::string& m = tree_.at(path).bytes;
    if (mode & (kFallocPunchHole | kFallocZeroRange))
      if (off < m.size()) std::fill(m.begin() + off, m.begin() + std::min<uint64_t>(m.size(), off + len), '\0');
    if (!(mode & kFallocKeepSize) && m.size() < off + len) m.resize(off + len, '\0');
  }
  void link(const std::string& path, const std::string& new_path) {
    auto a = fs_.link(ino(path), ino(parent_of(new_path)), leaf_of(new_path));
    ASSERT_TRUE(a) << new_path << ": " << a.error().to_string();
    tree_.names[new_path] = ino(path);
  }
  void forget_name(const std::string& path) {
    Ino gone = ino(path);
    tree_.names.erase(path);
    for (const auto& [p, i] : tree_.names)
      if (i == gone) return;
    tree_.nodes.erase(gone);
  }
  void unlink(const std::string& path) {
    auto st = fs_.unlink(ino(parent_of(path)), leaf_of(path));
    ASSERT_TRUE(st) << path << ": " << st.error().to_string();
    forget_name(path);
  }
  // Files only (a directory's children would move with it).
  void rename(const std::string& from, const std::string& to, unsigned flags) {
    auto st = fs_.rename(ino(parent_of(from)), leaf_of(from), ino(parent_of(to)), leaf_of(to), flags);
    ASSERT_TRUE(st) << from << " -> " << to << ": " << st.error().to_string();
    Ino moved = ino(from);
    if (flags & kRenameExchange) {
      tree_.names[from] = ino(to);
    } else {
      if (tree_.names.contains(to)) forget_name(to);
      tree_.names.erase(from);
    }
    tree_.names[to] = moved;
  }
  void setxattr(const std::string& path, const std::string& name, const std::string& value, int flags) {
    auto st = fs_.setxattr(ino(path), name, value, flags);
    ASSERT_TRUE(st) << path << ": " << st.error().to_string();
    tree_.at(path).xattrs[name] = value;
  }
  void removexattr(const std::string& path, const std::string& name) {
    auto st = fs_.removexattr(ino(path), name);
    ASSERT_TRUE(st) << path << ": " << st.error().to_string();
    tree_.at(path).xattrs.erase(name);
  }
  void fsync(const std::string& path) {
    auto st = fs_.fsync(ino(path), false);
    ASSERT_TRUE(st) << path << ": " << st.error().to_string();
  }
  // Device offset of a file byte (it must be mapped).
  uint64_t physical(const std::string& path, uint64_t file_off) {
    auto map = fs_.bmap(ino(path));
    EXPECT_TRUE(map);
    for (const BmapEntry& e : map.value_or(std::vector<BmapEntry>{}))
      if (file_off >= e.file_offset && file_off < e.file_offset + e.length) return e.physical + (file_off - e.file_offset);
    ADD_FAILURE() << path << " maps nothing at " << file_off;
    return 0;
  }
  // Block 1 + skip of the first free run of at least 4 blocks, as fsmap shows it.
  uint64_t free_block_offset(uint64_t skip) {
    FsInfo info = fs_.info();
    uint64_t found = 0;
    EXPECT_TRUE(fs_.fsmap(info.data_start * B, info.data_blocks * B, [&](const FsmapEntry& e) {
      if (e.owner != FsmapOwner::kFree || e.length < 4 * B) return true;
      found = e.physical + (1 + skip) * B;
      return false;
    }));
    EXPECT_NE(found, 0u);
    return found;
  }
  void inject(uint64_t off, uint64_t len, bool latent) {
    auto r = fs_.inject_poison(off, len, latent);
    ASSERT_TRUE(r) << r.error().to_string();
  }

  Filesystem& fs_;
  RecordingMedia& media_;
  std::mt19937_64 rng_;
  Tree tree_;
  std::vector<StepRecord> history_;
};

void Workload::expect_live_matches(const std::string& name) {
  size_t log_before = media_.log().size();
  std::string problem;
  EXPECT_EQ(meta_view(fs_, &problem), meta_view(tree_)) << "after " << name;
  EXPECT_EQ(problem, "") << "after " << name;
  for (const auto& [i, node] : tree_.nodes) {
    if (node.type != S_IFREG) continue;
    // Reads of poisoned units are left out: a read of latent poison reports
    // it, which stores, and the live check must not change the device.
    for (uint64_t pos = 0; pos < node.bytes.size();) {
      uint64_t unit = pos / kPoisonUnit;
      if (node.poisoned_units.contains(unit)) {
        pos = (unit + 1) * kPoisonUnit;
        continue;
      }
      uint64_t end = pos;
      while (end < node.bytes.size() && !node.poisoned_units.contains(end / kPoisonUnit))
        end = std::min<uint64_t>(node.bytes.size(), (end / kPoisonUnit + 1) * kPoisonUnit);
      std::string got(end - pos, '\0');
      auto n = fs_.read_copy(i, pos, std::as_writable_bytes(std::span(got)));
      ASSERT_TRUE(n) << "after " << name << ": ino " << i << " at " << pos << ": " << n.error().to_string();
      ASSERT_EQ(got, node.bytes.substr(pos, end - pos)) << "after " << name << ": ino " << i << " at " << pos;
      pos = end;
    }
  }
  ASSERT_EQ(media_.log().size(), log_before) << "checking the live filesystem stored something";
}

// Every operation at least once; offsets, lengths and data vary by seed.
// Poison comes late, on ranges no later copy-on-write has to copy.
void Workload::run() {
  step("mkdir /d", [&] { mkdir("/d"); });
  step("create /a", [&] { create("/a"); });
  step("write /a", [&] { write("/a", 0, data(5 * B + 100 + rand(B))); });
  step("fsync /a", [&] { fsync("/a"); }, ino("/a"));
  step("create /b", [&] { create("/b"); });
  step("clone /a -> /b", [&] { clone("/a", 0, "/b", 0, 4 * B); });
  step("overwrite shared block of /b (COW)", [&] { write("/b", B + 64 * rand(32), data(200 + rand(400))); });
  step("overwrite private block of /a in place", [&] { write("/a", 4 * B + rand(B), data(1 + rand(300))); });
  step("fsync /b", [&] { fsync("/b"); }, ino("/b"));
  step("create /d/e", [&] { create("/d/e"); });
  step("write /d/e", [&] { write("/d/e", 0, data(2000 + rand(2 * B))); });
  step("setxattr /d/e", [&] { setxattr("/d/e", "user.k", "v" + std::to_string(rand(1000)), kXattrCreate); });
  step("symlink /sym", [&] { symlink("/sym", "d/e"); });
  step("link /a /d/alink", [&] { link("/a", "/d/alink"); });
  step("append /a", [&] { write("/a", tree_.at("/a").bytes.size(), data(B + rand(2 * B))); });
  step("rename /d/e /c", [&] { rename("/d/e", "/c", 0); });
  step("exchange /c /d/alink", [&] { rename("/c", "/d/alink", kRenameExchange); });
  step("fsync /c", [&] { fsync("/c"); }, ino("/c"));
  step("truncate /c down", [&] { truncate("/c", 2 * B + rand(B)); });
  step("truncate /b up", [&] { truncate("/b", 6 * B + rand(B)); });
  step("punch /b", [&] { fallocate("/b", kFallocPunchHole | kFallocKeepSize, B / 2 + rand(B), 2 * B); });
  step("fallocate /d/alink keep size", [&] {
    fallocate("/d/alink", kFallocKeepSize, tree_.at("/d/alink").bytes.size() + B, 2 * B);
  });
  step("fallocate /d/alink extend", [&] { fallocate("/d/alink", 0, tree_.at("/d/alink").bytes.size(), B + rand(B)); });
  step("zero range /c", [&] { fallocate("/c", kFallocZeroRange, rand(B), B + rand(B)); });
  step("setxattr /", [&] { setxattr("/", "user.r", "1", 0); });
  step("setxattr /d/alink replace", [&] { setxattr("/d/alink", "user.k", "w" + std::to_string(rand(99)), kXattrReplace); });
  step("removexattr /d/alink", [&] { removexattr("/d/alink", "user.k"); });
  step("create /x", [&] { create("/x"); });
  step("write /x", [&] { write("/x", 0, data(3 * B + rand(B))); });
  step("unlink /x", [&] { unlink("/x"); });
  step("fsync /b", [&] { fsync("/b"); }, ino("/b"));
  step("fsync /c", [&] { fsync("/c"); }, ino("/c"));

  // Poison in a block /q and /p share: the recovery write to /q gets its own
  // copy, the one to /p (then the only owner) clears the poison in place.
  step("create /p", [&] { create("/p"); });
  step("write /p", [&] { write("/p", 0, data(2 * B + rand(B))); });
  step("create /q", [&] { create("/q"); });
  step("clone /p -> /q", [&] { clone("/p", 0, "/q", 0, B); });
  step("fsync /q", [&] { fsync("/q"); }, ino("/q"));
  const uint64_t unit = 64 * rand(60);
  step("inject poison under /p and /q", [&] { inject(physical("/q", unit), 128, false); });
  step("recovery write /q (copy-on-write)", [&] { write("/q", unit, data(128)); });
  step("recovery write /p (in place)", [&] { write("/p", unit, data(128)); });
  step("fsync /p", [&] { fsync("/p"); }, ino("/p"));
  // Poison in a private block of /p, recovered in place after an fsync.
  const uint64_t p_unit = B + 64 * rand(60);
  step("inject poison under /p block 1", [&] { inject(physical("/p", p_unit), 64, false); });
  step("recovery write /p block 1", [&] { write("/p", p_unit, data(64)); });
  step("fsync /p", [&] { fsync("/p"); }, ino("/p"));
  // Known and latent poison in free space, latent poison under /d/alink: scrub
  // finds the latent ones and clears the quarantined free space.
  step("inject poison in free space", [&] { inject(free_block_offset(0), 256, false); });
  step("inject latent poison in free space", [&] { inject(free_block_offset(1), 64, true); });
  const uint64_t l_unit = 64 * rand(30);
  step("inject latent poison under /d/alink", [&] { inject(physical("/d/alink", l_unit), 64, true); });
  step("scrub", [&] {
    auto rep = fs_.scrub({});
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_GE(rep->latent_found, 2u);
    EXPECT_GT(rep->quarantine_cleared_bytes, 0u);
  });
  step("recovery write /d/alink", [&] { write("/d/alink", l_unit, data(64)); });
  step("fsync /d/alink", [&] { fsync("/d/alink"); }, ino("/d/alink"));
  // Metadata failures repaired from memory.
  step("notify_failure on the root directory block", [&] {
    FsInfo info = fs_.info();
    uint64_t dir_block = 0;
    ASSERT_TRUE(fs_.fsmap(info.data_start * B, info.data_blocks * B, [&](const FsmapEntry& e) {
      if (e.owner == FsmapOwner::kDirectory && e.ino == kRootIno) dir_block = e.physical;
      return dir_block == 0;
    }));
    ASSERT_NE(dir_block, 0u);
    ASSERT_TRUE(fs_.notify_failure(dir_block + 64, 64, 0));
  });
  step("inject poison in the journal log", [&] { inject((fs_.info().journal_start + 1) * B + 64 * rand(8), 64, false); });
  step("inject poison in the superblock copy", [&] { inject((fs_.info().total_blocks - 1) * B, 64, false); });

  // More namespace changes after the poison.
  step("create /y", [&] { create("/y"); });
  step("write /y", [&] { write("/y", 0, data(2 * B + rand(B))); });
  step("rename /y over /a", [&] { rename("/y", "/a", 0); });
  step("unlink /sym", [&] { unlink("/sym"); });
  step("overwrite /b", [&] { write("/b", rand(B / 2), data(100 + rand(200))); });
  step("fsync /b", [&] { fsync("/b"); }, ino("/b"));
}

// ---------------------------------------------------------------- checking

// The states a crash at one log point may show: metadata after any step in
// [completed, newest] (metadata is journaled and durable when an operation
// returns, so the last completed step must be there; the one in flight may
// be); each file's bytes from any state since its last completed fsync.
struct Window {
  size_t completed = 0;  // last step that returned before the crash
  size_t newest = 0;     // the step in flight, or `completed`
};

Window window_at(const std::vector<StepRecord>& history, size_t point) {
  Window w;
  for (size_t k = 0; k < history.size(); ++k) {
    if (history[k].log_end <= point) w.completed = k;
  }
  w.newest = w.completed;
  if (w.completed + 1 < history.size() && history[w.completed + 1].log_begin < point) w.newest = w.completed + 1;
  return w;
}

// One crash state to check.
struct CrashCase {
  std::string how;  // which subset of the in-flight stores, for the report
  size_t point = 0;
  std::vector<size_t> applied;  // the in-flight pieces kept
  PersistenceModel::CrashImage image;
};

// The checks every crash state must pass: fsck of the image is clean, it
// mounts, every invariant holds on the mounted filesystem, and fsck after
// that mount is clean. An invariant gets the mounted filesystem and the
// crash's window of legitimate states; more can be added to invariants_
// (e.g. "scrub finds no checksum mismatch").
class CrashChecker {
 public:
  CrashChecker(const std::vector<StepRecord>& history, const FsInfo& geometry)
      : history_(history), geometry_(geometry) {}

  // Returns "" or what is wrong.
  std::string check(const CrashCase& c) const {
    const Window w = window_at(history_, c.point);
    // Poison on metadata destroyed it (not the crash); the mount repairs it
    // from the good copy, so fsck is asked about the image after a mount.
    const bool metadata_poisoned = std::any_of(c.image.poison.begin(), c.image.poison.end(), [&](const PoisonRange& p) {
      return p.offset < geometry_.data_start * B || p.end() > (geometry_.data_start + geometry_.data_blocks) * B;
    });
    if (!metadata_poisoned)
      if (std::string problem = fsck_problems(*testing::media_from(c.image.bytes, c.image.poison)); !problem.empty())
        return problem;
    auto device = testing::media_from(c.image.bytes, c.image.poison);
    auto fs = Filesystem::mount(borrow_media(*device), {});
    if (!fs) return refused_after_journal_poison(*device, w, fs.error().to_string());
    for (const Invariant& inv : invariants_)
      if (std::string problem = (this->*inv)(**fs, w); !problem.empty()) return problem;
    // What the recovery mount (replay, orphans, poison) leaves is clean too.
    if (auto st = (*fs)->unmount(); !st) return "unmount fails: " + st.error().to_string();
    fs->reset();
    if (std::string problem = fsck_problems(*device); !problem.empty()) return "after a mount: " + problem;
    return "";
  }

 private:
  // Poison in the live journal and a crash before its repair (a double
  // fault): a committed transaction whose in-place copies were not yet
  // durable is lost with its journal copy. The mount must refuse and point
  // to fsck, and `fsck -y` must make the image mount and check clean. No
  // other crash state may refuse a mount.
  std::string refused_after_journal_poison(Media& device, const Window& w, const std::string& error) const {
    if (history_[w.newest].name != "inject poison in the journal log" ||
        error.find("run fsck.poisonfs") == std::string::npos)
      return "mount fails: " + error;
    auto repaired = check_filesystem(device, true);
    if (!repaired) return "fsck -y fails after a refused mount: " + repaired.error().to_string();
    auto fs = Filesystem::mount(borrow_media(device), {});
    if (!fs) return "mount fails after fsck -y: " + fs.error().to_string();
    if (auto st = (*fs)->unmount(); !st) return "unmount fails: " + st.error().to_string();
    fs->reset();
    return fsck_problems(device);
  }

  static std::string fsck_problems(Media& device) {
    auto report = check_filesystem(device, false);
    if (!report) return "fsck fails: " + report.error().to_string();
    if (!report->clean()) return "fsck finds problems: " + ::testing::PrintToString(report->problems);
    return "";
  }

  using Invariant = std::string (CrashChecker::*)(Filesystem&, const Window&) const;

  // Names, kinds, link counts, sizes, xattrs and symlink targets are those
  // after the last completed step or after the one in flight.
  std::string metadata_is_a_step_state(Filesystem& fs, const Window& w) const {
    std::string problem;
    MetaView got = meta_view(fs, &problem);
    if (!problem.empty()) return problem;
    for (size_t j = w.completed; j <= w.newest; ++j)
      if (got == meta_view(history_[j].after)) return "";
    return "metadata is neither the state after step " + std::to_string(w.completed) + " (" +
           history_[w.completed].name + ") nor the one in flight; got " + ::testing::PrintToString(got) +
           "\nexpected " + ::testing::PrintToString(meta_view(history_[w.completed].after));
  }

  // Each byte of each file holds a value it held since its last fsync (or a
  // zero where a state had it past EOF); each 64-byte unit that reads EIO was
  // poisoned in one of those states. The poison pattern is never data.
  std::string contents_are_legitimate(Filesystem& fs, const Window& w) const {
    std::set<Ino> files;
    for (size_t j = w.completed; j <= w.newest; ++j)
      for (const auto& [ino, node] : history_[j].after.nodes)
        if (node.type == S_IFREG) files.insert(ino);
    for (Ino ino : files) {
      auto a = fs.getattr(ino);
      if (!a || !S_ISREG(a->mode)) continue;  // not a file in this state (the metadata check covers it)
      const size_t from = last_fsync(ino, w.completed);
      std::vector<const Node*> versions;
      for (size_t j = from; j <= w.newest; ++j)
        if (auto it = history_[j].after.nodes.find(ino); it != history_[j].after.nodes.end() && it->second.type == S_IFREG)
          versions.push_back(&it->second);
      if (std::string p = check_file(fs, ino, a->size, versions); !p.empty())
        return "ino " + std::to_string(ino) + " (states " + std::to_string(from) + ".." + std::to_string(w.newest) +
               "): " + p;
    }
    return "";
  }

  size_t last_fsync(Ino ino, size_t completed) const {
    for (size_t j = completed; j > 0; --j)
      if (history_[j].fsynced == ino) return j;
    return 0;
  }

  static std::string check_file(Filesystem& fs, Ino ino, uint64_t size, const std::vector<const Node*>& versions) {
    std::string got(size, '\0');
    std::vector<bool> eio(size / kPoisonUnit + 1, false);
    if (!fs.read_copy(ino, 0, std::as_writable_bytes(std::span(got)))) {
      for (uint64_t u = 0; u * kPoisonUnit < size; ++u) {
        uint64_t off = u * kPoisonUnit, n = std::min<uint64_t>(kPoisonUnit, size - off);
        auto r = fs.read_copy(ino, off, std::as_writable_bytes(std::span(got).subspan(off, n)));
        if (!r) eio[u] = true;
      }
    }
    // The common case: the file equals one state.
    for (const Node* v : versions)
      if (v->bytes == got && std::none_of(eio.begin(), eio.end(), [](bool b) { return b; })) return "";
    for (uint64_t i = 0; i < size; ++i) {
      const uint64_t unit = i / kPoisonUnit;
      if (eio[unit]) {
        if (std::none_of(versions.begin(), versions.end(),
                         [&](const Node* v) { return v->poisoned_units.contains(unit); }))
          return "bytes " + std::to_string(unit * kPoisonUnit) + "+64 read EIO but were never poisoned";
        i = (unit + 1) * kPoisonUnit - 1;
        continue;
      }
      if (got.compare(i, 8, kPoisonPattern, 8) == 0)
        return "shows the poison pattern at byte " + std::to_string(i) + " of " + std::to_string(size);
      bool legit = std::any_of(versions.begin(), versions.end(), [&](const Node* v) {
        return i < v->bytes.size() ? v->bytes[i] == got[i] : got[i] == '\0';
      });
      if (!legit) {
        std::string held;
        for (const Node* v : versions) held += i < v->bytes.size() ? v->bytes.substr(i, 16) + " " : "<EOF> ";
        return "byte " + std::to_string(i) + " of " + std::to_string(size) + " holds '" + got.substr(i, 16) +
               "', never held (states hold: " + held + ")";
      }
    }
    return "";
  }

  const std::vector<StepRecord>& history_;
  FsInfo geometry_;
  std::vector<Invariant> invariants_{&CrashChecker::metadata_is_a_step_state, &CrashChecker::contents_are_legitimate};
};

// ---------------------------------------------------------------- enumeration

// How many crash states per crash point.
struct Bounds {
  size_t dropped = 8;    // "every in-flight store but one", for this many stores
  size_t prefixes = 8;   // crashes inside the epoch, all in flight kept
  size_t random = 6;     // random subsets of the in-flight pieces
};

// Calls visit for every crash state of the recorded log: at each drain
// (crash just before it) and at the end of the log, the images with all
// in-flight pieces, none, all but one store's, random subsets; and crashes
// just before stores of the epoch (program-order prefixes).
void enumerate_crash_states(PersistenceModel& model, size_t log_size, const Bounds& bounds, uint64_t seed,
                            const std::function<void(CrashCase&&)>& visit) {
  std::mt19937_64 rng(seed);
  std::vector<size_t> points = model.drain_points();
  points.push_back(log_size);
  // Evenly spread picks of k out of n.
  auto spread = [](size_t n, size_t k) {
    std::vector<size_t> out;
    if (n == 0 || k == 0) return out;
    for (size_t i = 0; i < std::min(n, k); ++i) out.push_back(n <= k ? i : i * (n - 1) / (k - 1 ? k - 1 : 1));
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  };
  size_t epoch_start = 0;
  for (size_t point : points) {
    // Stores of this epoch, by log index.
    std::vector<size_t> epoch_stores;
    for (const auto& p : model.pieces())
      if (p.op >= epoch_start && p.op < point && (epoch_stores.empty() || epoch_stores.back() != p.op))
        epoch_stores.push_back(p.op);
    for (size_t pick : spread(epoch_stores.size(), bounds.prefixes)) {
      size_t at = epoch_stores[pick];
      if (pick == 0) continue;  // the same as the previous drain's "all in flight"
      model.advance_to(at);
      std::vector<size_t> all = model.in_flight(at);
      visit(CrashCase{"before store " + std::to_string(at) + ", all in flight kept", at, all, model.image(at, all)});
    }
    model.advance_to(point);
    const std::vector<size_t> flight = model.in_flight(point);
    visit(CrashCase{"all in flight kept", point, flight, model.image(point, flight)});
    if (!flight.empty()) visit(CrashCase{"only durable stores", point, {}, model.image(point, {})});
    std::vector<size_t> stores;  // in-flight stores (log indices)
    for (size_t i : flight)
      if (stores.empty() || stores.back() != model.pieces()[i].op) stores.push_back(model.pieces()[i].op);
    if (stores.size() > 1) {
      for (size_t pick : spread(stores.size(), bounds.dropped)) {
        std::vector<size_t> kept;
        for (size_t i : flight)
          if (model.pieces()[i].op != stores[pick]) kept.push_back(i);
        auto img = model.image(point, kept);
        visit(CrashCase{"store " + std::to_string(stores[pick]) + " lost", point, std::move(kept), std::move(img)});
      }
    }
    if (flight.size() > 1) {
      for (size_t r = 0; r < bounds.random; ++r) {
        std::vector<size_t> kept;
        for (size_t i : flight)
          if (rng() & 1) kept.push_back(i);
        auto img = model.image(point, kept);
        visit(CrashCase{"random subset " + std::to_string(r), point, std::move(kept), std::move(img)});
      }
    }
    epoch_start = point + 1;
  }
}

struct RunStats {
  size_t drains = 0, generated = 0, checked = 0, failed = 0;
};

// Formats, mounts and runs the workload of `seed` on a recording device,
// then checks every crash state the bounds ask for.
// The log entries of one step, for a failure report.
std::string describe_step_log(const RecordingMedia& media, const StepRecord& step, const FsInfo& geo) {
  auto region = [&](uint64_t off) -> std::string {
    uint64_t b = off / B;
    if (b == 0 || b + 1 == geo.total_blocks) return "superblock";
    if (b < geo.inode_start) return "journal";
    if (b < geo.data_start) return "inodes";
    return "data block " + std::to_string(b);
  };
  static const char* kKinds[] = {"store", "zero", "flush", "drain", "poison list"};
  std::string out;
  for (size_t i = step.log_begin; i < step.log_end && i < step.log_begin + 60; ++i) {
    const auto& op = media.log()[i];
    out += "  " + std::to_string(i) + " " + kKinds[op.kind];
    if (op.kind != RecordingMedia::Op::kDrain && op.kind != RecordingMedia::Op::kPoisonList)
      out += " " + std::to_string(op.off) + "+" + std::to_string(op.len) + " (" + region(op.off) + ")";
    out += "\n";
  }
  return out;
}

// The workload of `seed`, run on a fresh filesystem on a recording device.
struct RecordedWorkload {
  std::unique_ptr<Filesystem> fs;
  RecordingMedia* media = nullptr;
  std::vector<std::byte> initial;  // the formatted device the log starts from
  std::vector<StepRecord> history;
  FsInfo geometry;
};

RecordedWorkload record_workload(uint64_t seed) {
  RecordedWorkload r;
  auto rec = std::make_unique<RecordingMedia>(kDevice);
  r.media = rec.get();
  r.media->set_recording(false);
  EXPECT_TRUE(Filesystem::format(*r.media, {}));
  r.initial = r.media->image();
  r.media->set_recording(true);
  auto fs = Filesystem::mount(std::move(rec), {});
  EXPECT_TRUE(fs) << fs.error().to_string();
  if (!fs) return r;
  r.fs = std::move(*fs);
  Workload workload(*r.fs, *r.media, seed);
  workload.run();
  r.media->set_recording(false);
  r.history = workload.history();
  r.geometry = r.fs->info();
  return r;
}

RunStats run_crash_states(uint64_t seed, const Bounds& bounds, PersistenceModel::Ordering ordering) {
  RunStats stats;
  RecordedWorkload run = record_workload(seed);
  if (!run.fs || ::testing::Test::HasFailure()) return stats;
  RecordingMedia* media = run.media;
  stats.drains = media->drains();
  const FsInfo& geometry = run.geometry;
  const auto& history = run.history;
  CrashChecker checker(history, geometry);
  PersistenceModel model(*media, run.initial, ordering);
  std::unordered_set<size_t> seen;  // image, poison and window, hashed
  enumerate_crash_states(model, media->log().size(), bounds, seed, [&](CrashCase&& c) {
    ++stats.generated;
    Window w = window_at(history, c.point);
    size_t key = std::hash<std::string_view>{}(
        std::string_view(reinterpret_cast<const char*>(c.image.bytes.data()), c.image.bytes.size()));
    for (const PoisonRange& p : c.image.poison) key = key * 31 + p.offset * 7 + p.length * 3 + p.latent;
    key = key * 1000003 + w.completed * 1009 + w.newest;
    if (!seen.insert(key).second) return;
    ++stats.checked;
    std::string problem = checker.check(c);
    if (problem.empty()) return;
    if (++stats.failed <= 12) {
      const StepRecord& s = history[w.newest];
      ADD_FAILURE() << "seed " << seed << ", crash at log entry " << c.point << " (" << c.how << ") during step "
                    << w.newest << " '" << s.name << "' (log " << s.log_begin << ".." << s.log_end << "):\n"
                    << problem << "\nthe step's log:\n" << describe_step_log(*media, s, geometry);
    }
  });
  return stats;
}

bool large_run() {
  const char* v = std::getenv("POISONFS_CRASH_STATES");
  return v && std::string_view(v) == "large";
}

// Default: two workload seeds, a dozen subsets per crash point (well under
// a minute in a Debug build). POISONFS_CRASH_STATES=large: every dropped
// store and prefix up to 64 per point, 32 random subsets, and
// POISONFS_CRASH_SEEDS workload seeds (default 8).
void check_every_crash_state(PersistenceModel::Ordering ordering) {
  const bool large = large_run();
  const Bounds bounds = large ? Bounds{64, 64, 32} : Bounds{};
  uint64_t seeds = 2;
  if (large) {
    const char* v = std::getenv("POISONFS_CRASH_SEEDS");
    seeds = v ? std::strtoull(v, nullptr, 10) : 8;
  }
  RunStats total;
  auto start = std::chrono::steady_clock::now();
  for (uint64_t seed = 1; seed <= seeds; ++seed) {
    RunStats s = run_crash_states(seed, bounds, ordering);
    total.drains += s.drains;
    total.generated += s.generated;
    total.checked += s.checked;
    total.failed += s.failed;
    if (::testing::Test::HasFatalFailure()) break;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("crash states (%s ordering): %zu checked (%zu generated, %zu duplicates), %zu failed; %zu drains; "
              "%llu workload seed(s), %s set, %.1f s\n",
              ordering == PersistenceModel::Ordering::kPmem ? "pmem" : "flush-ordered", total.checked,
              total.generated, total.generated - total.checked, total.failed, total.drains,
              static_cast<unsigned long long>(seeds), large ? "large" : "default", secs);
  EXPECT_GT(total.checked, 0u);
  EXPECT_EQ(total.failed, 0u);
}

// Write-back in flush order (msync, CLFLUSH).
TEST(CrashStates, EveryCrashStateWithFlushOrderedWriteBackMountsChecksCleanAndKeepsTheData) {
  check_every_crash_state(PersistenceModel::Ordering::kFlushOrdered);
}

// The honest x86 pmem model: only a drain orders anything.
TEST(CrashStates, EveryCrashStateWithPmemOrderingMountsChecksCleanAndKeepsTheData) {
  check_every_crash_state(PersistenceModel::Ordering::kPmem);
}

// The checker must see what it is there for: the final state passes, a byte
// a file never held fails, and so does a state from after the crash point.
TEST(CrashChecker, FlagsDataNeverHeldAndStatesFromTheFuture) {
  RecordedWorkload run = record_workload(1);
  ASSERT_TRUE(run.fs);
  ASSERT_FALSE(::testing::Test::HasFailure());
  CrashChecker checker(run.history, run.geometry);
  PersistenceModel model(*run.media, run.initial);
  const size_t end = run.media->log().size();
  model.advance_to(end);
  const std::vector<size_t> all = model.in_flight(end);
  CrashCase final_state{"all", end, all, model.image(end, all)};
  EXPECT_EQ(checker.check(final_state), "");

  Ino p = run.fs->lookup(kRootIno, "p")->ino;
  uint64_t phys = run.fs->bmap(p)->front().physical + 100;
  CrashCase flipped = final_state;
  flipped.image.bytes[phys] = std::byte{'Z'};
  EXPECT_NE(checker.check(flipped).find("never held"), std::string::npos);

  CrashCase future = final_state;
  future.point = run.history[10].log_end;
  EXPECT_NE(checker.check(future).find("metadata is neither"), std::string::npos);
}

// ---------------------------------------------------------------- regressions

// A filesystem on a RecordingMedia whose log holds exactly what one
// operation stored (setup runs unrecorded).
struct RecordedOp {
  std::unique_ptr<Filesystem> fs;
  RecordingMedia* media = nullptr;
  std::vector<std::byte> initial;
  std::vector<PoisonRange> initial_poison;
};

RecordedOp record(const std::function<void(Filesystem&)>& setup, const std::function<void(Filesystem&)>& op) {
  RecordedOp r;
  auto rec = std::make_unique<RecordingMedia>(kDevice);
  r.media = rec.get();
  r.media->set_recording(false);
  EXPECT_TRUE(Filesystem::format(*r.media, {}));
  auto fs = Filesystem::mount(std::move(rec), {});
  EXPECT_TRUE(fs) << fs.error().to_string();
  if (!fs) return r;
  r.fs = std::move(*fs);
  setup(*r.fs);
  r.initial = r.media->image();
  r.initial_poison = r.media->poison().all();
  r.media->set_recording(true);
  op(*r.fs);
  r.media->set_recording(false);
  return r;
}

Ino make_file(Filesystem& fs, std::string_view name, const std::string& content) {
  auto a = fs.mknod(kRootIno, name, S_IFREG | 0644, 0, kUser);
  EXPECT_TRUE(a);
  if (!content.empty()) {
    EXPECT_TRUE(fs.write(a->ino, 0, bytes_of(content)));
  }
  EXPECT_TRUE(fs.fsync(a->ino, false));
  return a->ino;
}

// Regression (fixed in the core): Journal::commit writes the commit record and drains once, after the
// caller's data blocks and new record blocks were only flushed. On pmem
// (CLWB + SFENCE) nothing orders those flushes before the commit record's
// own store: a crash just before that drain can keep the sealed record and
// lose the data. Replay then maps a block that never got the data: the file
// shows bytes it never held (zeros of free space here; a former owner's data
// when the block was reused). The same with a new chain block ("bad chain
// block N", found at every mkdir/first write/first xattr by the pmem-ordered
// enumeration above). Fix: drain after writing data and new record blocks,
// before the commit record is stored (two drains per such commit), or seal
// the record with a checksum of what it maps.
TEST(CrashRegression, CommitRecordIsNotDurableBeforeTheDataItMaps) {
  const std::string data(B, 'x');
  Ino ino = 0;
  RecordedOp r = record([&](Filesystem& fs) { ino = make_file(fs, "f", ""); },
                        [&](Filesystem& fs) { ASSERT_TRUE(fs.write(ino, 0, bytes_of(data))); });
  ASSERT_TRUE(r.fs);
  PersistenceModel model(*r.media, r.initial, PersistenceModel::Ordering::kPmem, r.initial_poison);
  const size_t commit = model.drain_points().front();
  model.advance_to(commit);
  std::vector<size_t> kept;  // everything in flight but the data block
  for (size_t i : model.in_flight(commit)) {
    const auto& op = r.media->log()[model.pieces()[i].op];
    if (!(op.len == B && std::all_of(op.bytes.begin(), op.bytes.end(), [](std::byte b) { return b == std::byte{'x'}; })))
      kept.push_back(i);
  }
  auto img = model.image(commit, kept);
  auto fs = Filesystem::mount(testing::media_from(img.bytes, img.poison), {});
  ASSERT_TRUE(fs) << fs.error().to_string();
  auto a = (*fs)->getattr(ino);
  ASSERT_TRUE(a);
  std::string got(a->size, '\0');
  ASSERT_TRUE((*fs)->read_copy(ino, 0, std::as_writable_bytes(std::span(got))));
  EXPECT_TRUE(got.empty() || got == data) << "the file holds " << a->size << " bytes it never held";
}

// Regression (fixed in the core): a recovery write over poison in a block the file owns alone writes in
// place (no transaction, so no drain: Journal::commit returns at once for an
// empty one) and then clears the poison in the device's list at once
// (FsImpl::write, data.cc). A crash before the next drain keeps the cleared
// list but may lose the new bytes: the file then reads the poison pattern,
// as valid data, where it must read EIO or a value it held. Seen at the
// fsync after every in-place recovery of the workload above. Fix: drain
// before poison().clear() when the recovery wrote in place.
TEST(CrashRegression, RecoveryWriteInPlaceIsDurableBeforeThePoisonIsCleared) {
  const std::string before(B, 'a'), fresh(64, 'r');
  Ino ino = 0;
  RecordedOp r = record(
      [&](Filesystem& fs) {
        ino = make_file(fs, "f", before);
        auto map = fs.bmap(ino);
        ASSERT_TRUE(map && !map->empty());
        ASSERT_TRUE(fs.inject_poison(map->front().physical, 64, false));
      },
      [&](Filesystem& fs) { ASSERT_TRUE(fs.write(ino, 0, bytes_of(fresh))); });
  ASSERT_TRUE(r.fs);
  ASSERT_TRUE(r.fs->badblocks().empty()) << "the recovery write cleared the poison";
  PersistenceModel model(*r.media, r.initial, PersistenceModel::Ordering::kFlushOrdered, r.initial_poison);
  const size_t end = r.media->log().size();
  model.advance_to(end);
  auto img = model.image(end, {});  // the crash lost what was not drained
  auto fs = Filesystem::mount(testing::media_from(img.bytes, img.poison), {});
  ASSERT_TRUE(fs) << fs.error().to_string();
  std::string got(64, '\0');
  auto n = (*fs)->read_copy(ino, 0, std::as_writable_bytes(std::span(got)));
  if (n) {
    EXPECT_TRUE(got == fresh || got == before.substr(0, 64)) << "reads '" << got << "'";
  } else {
    EXPECT_EQ(n.error().code, std::errc::io_error);
  }
}

// Regression (fixed in the core): notify_failure on metadata clears the poison first (clear_poison
// zeroes the unit, drains, drops it from the list) and only then rewrites
// the block from memory (poison.cc: the superblock rewrite in
// _notify_failure, repair_chain_block, repair_inode_block). A crash in
// between leaves an unpoisoned block with a zeroed unit. For the superblock
// copy the mount rewrites it, but fsck of the crashed image reports
// "superblock copy differs from the primary"; for a directory block (next
// test) the entry under the zeroed unit is silently gone after the mount
// (its file keeps a link count for a name that no longer exists). Fix:
// write and persist the rewritten block before dropping its poison from
// the list (zeroing first is not needed when the rewrite covers the unit).
TEST(CrashRegression, SuperblockCopyRepairIsCrashSafe) {
  RecordedOp r = record([](Filesystem&) {}, [](Filesystem& fs) {
    ASSERT_TRUE(fs.inject_poison((fs.info().total_blocks - 1) * B, 64, false));
  });
  ASSERT_TRUE(r.fs);
  // At every drain: still poisoned (mount repairs it) or rewritten and clean.
  PersistenceModel model(*r.media, r.initial, PersistenceModel::Ordering::kFlushOrdered, r.initial_poison);
  for (size_t point : model.drain_points()) {
    model.advance_to(point);
    auto img = model.image(point, {});
    if (!img.poison.empty()) {
      EXPECT_TRUE(Filesystem::mount(testing::media_from(img.bytes, img.poison), {})) << "drain " << point;
      continue;
    }
    auto report = check_filesystem(*testing::media_from(img.bytes, img.poison), false);
    ASSERT_TRUE(report) << report.error().to_string();
    EXPECT_TRUE(report->clean()) << "drain " << point << ": " << ::testing::PrintToString(report->problems);
  }
}

TEST(CrashRegression, DirectoryBlockRepairIsCrashSafe) {
  uint64_t dir_block = 0;
  RecordedOp r = record(
      [&](Filesystem& fs) {
        for (int i = 0; i < 8; ++i) make_file(fs, "f" + std::to_string(i), "");
        FsInfo info = fs.info();
        ASSERT_TRUE(fs.fsmap(info.data_start * B, info.data_blocks * B, [&](const FsmapEntry& e) {
          if (e.owner == FsmapOwner::kDirectory && e.ino == kRootIno) dir_block = e.physical;
          return dir_block == 0;
        }));
        ASSERT_NE(dir_block, 0u);
        // A checkpoint (the journal's repair path takes one), so that replay
        // cannot write the entries again.
        ASSERT_TRUE(fs.notify_failure((info.journal_start + 1) * B, 64, 0));
      },
      // The head of slot 0: the first entry's inode number and name.
      [&](Filesystem& fs) { ASSERT_TRUE(fs.inject_poison(dir_block + 64, 64, false)); });
  ASSERT_TRUE(r.fs);
  // At every drain the block is either still on the poison list (the loss
  // is visible: the records under it are gone with the bytes the poison
  // destroyed) or rewritten, and then the mount finds every name. Never
  // zeroed and believed clean.
  PersistenceModel model(*r.media, r.initial, PersistenceModel::Ordering::kFlushOrdered, r.initial_poison);
  for (size_t point : model.drain_points()) {
    model.advance_to(point);
    auto img = model.image(point, {});
    if (!img.poison.empty()) continue;
    auto fs = Filesystem::mount(testing::media_from(img.bytes, img.poison), {});
    ASSERT_TRUE(fs) << "drain " << point << ": " << fs.error().to_string();
    for (int i = 0; i < 8; ++i) EXPECT_TRUE((*fs)->lookup(kRootIno, "f" + std::to_string(i))) << "f" << i;
  }
}

}  // namespace
}  // namespace poisonfs
