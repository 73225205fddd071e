// Mount tests of media failure and recovery through the real daemon and the
// real tools (issues 4 and 5): `poisonctl inject/badblocks/poison/events/
// status`, what readers see (EIO for buffered reads, a short read then EIO
// for O_DIRECT, SIGBUS for mmap), poison in shared blocks, across extents,
// in files not in memory, in every kind of metadata and in free space,
// latent poison, persistence across remount, and the recovery write.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "mount/mount_fixture.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::test {
namespace {

constexpr uint64_t kBlock = 4096;
constexpr std::string_view kPattern = "#POISON#";

// ---- a flat JSON reader: arrays of objects whose values are scalars (nested
// arrays are skipped); values keep their text, strings unquoted.

using Record = std::map<std::string, std::string>;

class FlatJson {
 public:
  explicit FlatJson(std::string_view s) : s_(s) {}
  bool objects(std::vector<Record>* out) {
    ws();
    if (!take('[')) return false;
    if (take(']')) return done();
    do {
      Record r;
      if (!object(&r)) return false;
      out->push_back(std::move(r));
    } while (take(','));
    return take(']') && done();
  }
  bool object(Record* r) {
    if (!take('{')) return false;
    if (take('}')) return true;
    do {
      std::string key, value;
      if (!string(&key) || !take(':') || !scalar(&value)) return false;
      (*r)[key] = value;
    } while (take(','));
    return take('}');
  }

 private:
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool take(char c) {
    ws();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool done() {
    ws();
    return i_ == s_.size();
  }
  bool string(std::string* out) {
    if (!take('"')) return false;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;
      *out += s_[i_++];
    }
    return i_++ < s_.size();
  }
  bool scalar(std::string* out) {
    ws();
    if (i_ >= s_.size()) return false;
    if (s_[i_] == '"') return string(out);
    if (s_[i_] == '[' || s_[i_] == '{') {  // skipped, balanced
      int depth = 0;
      size_t start = i_;
      bool in_string = false;
      for (; i_ < s_.size(); ++i_) {
        char c = s_[i_];
        if (in_string) {
          if (c == '\\') ++i_;
          else if (c == '"') in_string = false;
        } else if (c == '"') {
          in_string = true;
        } else if (c == '[' || c == '{') {
          ++depth;
        } else if ((c == ']' || c == '}') && --depth == 0) {
          ++i_;
          out->assign(s_.substr(start, i_ - start));
          return true;
        }
      }
      return false;
    }
    size_t start = i_;
    while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ']' &&
           !std::isspace(static_cast<unsigned char>(s_[i_])))
      ++i_;
    out->assign(s_.substr(start, i_ - start));
    return i_ > start;
  }

  std::string_view s_;
  size_t i_ = 0;
};

std::vector<Record> parse_array(const std::string& text) {
  std::vector<Record> out;
  if (!FlatJson(text).objects(&out)) {
    ADD_FAILURE() << "bad JSON array:\n" << text.substr(0, 2000);
    out.clear();
  }
  return out;
}

uint64_t num(const Record& r, const std::string& key) {
  auto it = r.find(key);
  return it == r.end() ? UINT64_MAX : std::strtoull(it->second.c_str(), nullptr, 10);
}

// ---- files ---------------------------------------------------------------------

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
  }
  return s;
}

bool write_file(const std::string& path, std::string_view data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  return close(fd) == 0 && done == data.size();
}

// A read's outcome: the bytes, or the errno of the call that failed.
struct ReadResult {
  int err = 0;
  std::string data;
};

ReadResult pread_at(const std::string& path, uint64_t off, size_t len, int flags = 0) {
  ReadResult r;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
  if (fd < 0) return {errno, {}};
  void* buf = nullptr;
  if (posix_memalign(&buf, kBlock, std::max<size_t>(len, kBlock)) != 0) abort();
  ssize_t n = pread(fd, buf, len, static_cast<off_t>(off));
  if (n < 0) r.err = errno;
  else r.data.assign(static_cast<char*>(buf), static_cast<size_t>(n));
  std::free(buf);
  close(fd);
  return r;
}

// Reads the whole file with read(2) calls; the first failure's errno.
ReadResult read_all(const std::string& path) {
  ReadResult r;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {errno, {}};
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      r.err = errno;
      break;
    }
    if (n == 0) break;
    r.data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return r;
}

int pwrite_at(const std::string& path, uint64_t off, std::string_view data, int flags = 0) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC | flags);
  if (fd < 0) return errno;
  void* buf = nullptr;
  if (posix_memalign(&buf, kBlock, std::max<size_t>(data.size(), kBlock)) != 0) abort();
  std::memcpy(buf, data.data(), data.size());
  ssize_t n = pwrite(fd, buf, data.size(), static_cast<off_t>(off));
  int err = n < 0 ? errno : (static_cast<size_t>(n) == data.size() ? 0 : EIO);
  std::free(buf);
  // A buffered recovery write that ends inside a poisoned unit fails here.
  if (close(fd) != 0 && err == 0) err = errno;
  return err;
}

bool contains_pattern(std::string_view data) { return data.find(kPattern) != std::string_view::npos; }

// Compares bytes without printing them: says where they first differ.
::testing::AssertionResult same(std::string_view got, std::string_view want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "got " << got.size() << " bytes, want " << want.size()
                                       << "; first difference at byte " << i
                                       << (contains_pattern(got) ? " (poisoned bytes leaked!)" : "");
}

uint64_t inode_of(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(line);
  return out;
}

// ---- the fixture -------------------------------------------------------------------

class PoisonTest : public MountTest {
 protected:
  RunResult ctl(const std::string& args, int timeout_s = 60) {
    return run(sh_quote(bin("poisonctl")) + " " + args, timeout_s);
  }
  std::string q(const std::string& s) { return sh_quote(s); }

  // `poisonctl inject MNT OFF LEN [--latent]`, which must succeed.
  void inject(uint64_t off, uint64_t len, bool latent = false) {
    RunResult r = ctl("inject " + q(mnt()) + " " + std::to_string(off) + " " + std::to_string(len) +
                      (latent ? " --latent" : ""));
    ASSERT_EQ(r.exit_code, 0) << r.both();
  }
  std::vector<Record> bmap(const std::string& file) {
    RunResult r = ctl("bmap --json " + q(file));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return r.exit_code == 0 ? parse_array(r.out) : std::vector<Record>{};
  }
  // Where each block of the file lives: "file_block:physical ..." (bmap
  // without its flags and its split at poisoned pieces).
  std::string block_map(const std::string& file) {
    std::string out;
    for (const Record& e : bmap(file))
      for (uint64_t b = 0; b < num(e, "length") / kBlock; ++b)
        out += std::to_string(num(e, "file_offset") / kBlock + b) + ":" +
               std::to_string(num(e, "physical") + b * kBlock) + (e.at("shared") == "true" ? "s " : " ");
    return out;
  }
  // The device offset of the file's byte `off`.
  uint64_t physical(const std::string& file, uint64_t off) {
    for (const Record& e : bmap(file)) {
      uint64_t fo = num(e, "file_offset"), len = num(e, "length");
      if (off >= fo && off < fo + len) return num(e, "physical") + (off - fo);
    }
    ADD_FAILURE() << file << " maps nothing at " << off;
    return 0;
  }
  std::vector<Record> fsmap(const std::string& range = "") {
    RunResult r = ctl("fsmap --json " + q(mnt()) + (range.empty() ? "" : " " + range));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return r.exit_code == 0 ? parse_array(r.out) : std::vector<Record>{};
  }
  // `poisonctl poison --json FILE` as (file_offset, length) pairs.
  std::vector<std::pair<uint64_t, uint64_t>> file_poison(const std::string& file) {
    RunResult r = ctl("poison --json " + q(file));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (const Record& e : parse_array(r.out)) {
      EXPECT_EQ(e.size(), 2u) << r.out;
      out.emplace_back(num(e, "file_offset"), num(e, "length"));
    }
    return out;
  }
  std::string badblocks(bool bytes = true) {
    RunResult r = ctl(std::string("badblocks ") + (bytes ? "--bytes " : "") + q(mnt()));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return r.out;
  }
  Record status() {
    RunResult r = ctl("status --json " + q(mnt()));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    Record rec;
    EXPECT_TRUE(FlatJson(r.out).object(&rec)) << r.out;
    return rec;
  }
  std::vector<std::string> events() {
    RunResult r = ctl("events --json " + q(mnt()));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return lines(r.out);
  }
  Record stat_info() {
    RunResult r = ctl("stat --json " + q(mnt()));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    Record rec;
    EXPECT_TRUE(FlatJson(r.out).object(&rec)) << r.out;
    return rec;
  }

  // Reads [off, off+len) until it fails with EIO: the kernel's cached pages
  // are dropped by the daemon's invalidation thread just after the poison
  // is reported. Whatever a read returns meanwhile must be the true bytes.
  int eventual_error(const std::string& file, uint64_t off, size_t len, std::string_view truth) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    for (;;) {
      ReadResult r = pread_at(file, off, len);
      if (r.err) return r.err;
      EXPECT_FALSE(contains_pattern(r.data)) << file << " returned poisoned bytes at " << off;
      EXPECT_TRUE(same(r.data, truth.substr(0, r.data.size()))) << file << " returned wrong bytes at " << off;
      if (std::chrono::steady_clock::now() > deadline) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Forks a child that maps `file` and reads the page at `off`; returns the
  // signal that killed it (0: it read the page and found `expect` there).
  int mmap_child(const std::string& file, uint64_t off, std::string_view expect) {
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
      // The fixture's fatal-signal handler would detach the test's mounts.
      signal(SIGBUS, SIG_DFL);
      signal(SIGSEGV, SIG_DFL);
      int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) _exit(10);
      void* p = mmap(nullptr, off + kBlock, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) _exit(11);
      const char* page = static_cast<const char*>(p) + off;
      volatile char sink = 0;
      for (size_t i = 0; i < kBlock; ++i) sink = static_cast<char>(sink + page[i]);
      _exit(std::memcmp(page, expect.data(), std::min<size_t>(kBlock, expect.size())) == 0 ? 0 : 12);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) return WTERMSIG(status);
    return WIFEXITED(status) ? -WEXITSTATUS(status) : -100;
  }
};

// ---- one poisoned block shared by three files ------------------------------------

// a: 16 blocks; b: `cp a b` (reflink through copy_file_range); c: 4 blocks of
// its own whose block 2 is replaced by a's block 5 (`poisonctl reflink
// --range`). Poison: 1 KiB in the middle of that shared block.
class PoisonShared : public PoisonTest {
 protected:
  static constexpr uint64_t kABlock = 5 * kBlock;  // the block's offset in a and b
  static constexpr uint64_t kCBlock = 2 * kBlock;  // and in c
  static constexpr uint64_t kIn = 1024, kLen = 1024;  // the poison inside the block

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PoisonTest::SetUp());
    a_ = path("a");
    b_ = path("b");
    c_ = path("dir/c");
    other_ = path("other");
    da_ = random_bytes(16 * kBlock, 1);
    dc_ = random_bytes(4 * kBlock, 2);
    dother_ = random_bytes(8 * kBlock, 3);
    ASSERT_EQ(mkdir(path("dir").c_str(), 0755), 0);
    ASSERT_TRUE(write_file(a_, da_));
    ASSERT_TRUE(write_file(c_, dc_));
    ASSERT_TRUE(write_file(other_, dother_));
    RunResult cp = run("cp " + q(a_) + " " + q(b_));
    ASSERT_EQ(cp.exit_code, 0) << cp.both();
    RunResult rl = ctl("reflink --range " + std::to_string(kABlock) + " " + std::to_string(kCBlock) + " 4096 " +
                       q(a_) + " " + q(c_));
    ASSERT_EQ(rl.exit_code, 0) << rl.both();
    dc_.replace(kCBlock, kBlock, da_.substr(kABlock, kBlock));
    block_ = physical(a_, kABlock);
    ASSERT_EQ(physical(b_, kABlock), block_) << "cp did not share the block";
    ASSERT_EQ(physical(c_, kCBlock), block_) << "reflink --range did not share the block";
    ASSERT_NO_FATAL_FAILURE(inject(block_ + kIn, kLen));
  }

  void check_reads_fail_only_where_poisoned();
  void check_direct_read_is_short_then_eio();
  void check_mmap_of_the_poisoned_page_gets_sigbus();

  std::string a_, b_, c_, other_;
  std::string da_, dc_, dother_;
  uint64_t block_ = 0;  // device offset of the shared block
};

TEST_F(PoisonShared, EveryFileReportsItsOwnRange) {
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(file_poison(a_), (Ranges{{kABlock + kIn, kLen}}));
  EXPECT_EQ(file_poison(b_), (Ranges{{kABlock + kIn, kLen}}));
  EXPECT_EQ(file_poison(c_), (Ranges{{kCBlock + kIn, kLen}}));
  EXPECT_EQ(file_poison(other_), Ranges{});
  EXPECT_EQ(badblocks(), std::to_string(block_ + kIn) + " " + std::to_string(kLen) + "\n");
  // 512-byte sectors, like /sys/block/pmemN/badblocks.
  EXPECT_EQ(badblocks(false), std::to_string((block_ + kIn) / 512) + " " + std::to_string(kLen / 512) + "\n");

  // The read-only xattr says the same, through getxattr(2).
  char buf[256];
  ssize_t n = getxattr(c_.c_str(), "user.poisonfs.poison", nullptr, 0);
  ASSERT_GT(n, 0) << std::strerror(errno);
  ASSERT_LT(static_cast<size_t>(n), sizeof buf);
  ASSERT_EQ(getxattr(c_.c_str(), "user.poisonfs.poison", buf, sizeof buf), n);
  std::vector<Record> x = parse_array(std::string(buf, static_cast<size_t>(n)));
  ASSERT_EQ(x.size(), 1u);
  EXPECT_EQ(num(x[0], "file_offset"), kCBlock + kIn);
  EXPECT_EQ(num(x[0], "length"), kLen);
  EXPECT_EQ(getxattr(other_.c_str(), "user.poisonfs.poison", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(setxattr(a_.c_str(), "user.poisonfs.poison", "[]", 2, 0), -1);

  // The human form: a table and a summary.
  RunResult h = ctl("poison " + q(c_));
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.out.find("FILE_OFFSET"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("1 poisoned range, 1024 bytes"), std::string::npos) << h.out;
  EXPECT_NE(ctl("poison " + q(other_)).out.find("no known poison"), std::string::npos);

  // The failure event names every sharer, with its own file range.
  bool found = false;
  for (const std::string& e : events()) {
    if (e.find("\"kind\":\"failure\"") == std::string::npos) continue;
    found = true;
    EXPECT_NE(e.find("\"device_offset\":" + std::to_string(block_ + kIn)), std::string::npos) << e;
    EXPECT_NE(e.find(R"("path":"/a","file_offset":)" + std::to_string(kABlock + kIn)), std::string::npos) << e;
    EXPECT_NE(e.find(R"("path":"/b","file_offset":)" + std::to_string(kABlock + kIn)), std::string::npos) << e;
    EXPECT_NE(e.find(R"("path":"/dir/c","file_offset":)" + std::to_string(kCBlock + kIn)), std::string::npos) << e;
    for (const char* key : {"\"seq\":", "\"time\":", "\"length\":", "\"action\":", "\"owners\":[", "\"what\":\"data\"",
                            "\"inode\":"})
      EXPECT_NE(e.find(key), std::string::npos) << key << " in " << e;
  }
  EXPECT_TRUE(found);
  RunResult hv = ctl("events " + q(mnt()));
  EXPECT_EQ(hv.exit_code, 0) << hv.both();
  EXPECT_NE(hv.out.find("failure"), std::string::npos) << hv.out;
  EXPECT_NE(hv.out.find("    data inode " + std::to_string(inode_of(c_)) + " /dir/c file"), std::string::npos)
      << hv.out;

  // fsmap of the block: the three owners.
  std::vector<Record> owners = fsmap(std::to_string(block_) + " 4096");
  ASSERT_EQ(owners.size(), 3u);
  std::multiset<uint64_t> inos, want = {inode_of(a_), inode_of(b_), inode_of(c_)};
  for (const Record& o : owners) inos.insert(num(o, "inode"));
  EXPECT_EQ(inos, want);

  Record st = status();
  EXPECT_EQ(st["state"], "healthy");
  EXPECT_EQ(num(st, "known_poison_bytes"), kLen);
  EXPECT_EQ(num(st, "latent_poison_bytes"), 0u);
}

// What readers see, the same with the page cache and with -o direct_io
// (PoisonSharedDirectIo): a read of the poisoned page fails in every
// sharer, clean pages and other files read fine, O_DIRECT reads are short
// then EIO, and a mapping of the poisoned page gets SIGBUS.
void PoisonShared::check_reads_fail_only_where_poisoned() {
  // The poisoned page fails in all three files.
  EXPECT_EQ(eventual_error(a_, kABlock, kBlock, da_.substr(kABlock)), EIO);
  EXPECT_EQ(eventual_error(b_, kABlock, kBlock, da_.substr(kABlock)), EIO);
  EXPECT_EQ(eventual_error(c_, kCBlock, kBlock, dc_.substr(kCBlock)), EIO);
  // A read of the whole file fails too, and never hands out poisoned bytes.
  for (const std::string& f : {a_, b_, c_}) {
    ReadResult r = read_all(f);
    EXPECT_EQ(r.err, EIO) << f;
    EXPECT_FALSE(contains_pattern(r.data)) << f;
  }
  // Clean pages of the same files, and other files, read fine.
  for (uint64_t blk : {0u, 4u, 6u, 15u}) {
    ReadResult r = pread_at(a_, blk * kBlock, kBlock);
    EXPECT_EQ(r.err, 0) << "a block " << blk;
    EXPECT_TRUE(same(r.data, da_.substr(blk * kBlock, kBlock))) << "a block " << blk;
    r = pread_at(b_, blk * kBlock, kBlock);
    EXPECT_TRUE(same(r.data, da_.substr(blk * kBlock, kBlock))) << "b block " << blk;
  }
  for (uint64_t blk : {0u, 1u, 3u}) EXPECT_TRUE(same(pread_at(c_, blk * kBlock, kBlock).data, dc_.substr(blk * kBlock, kBlock)));
  ReadResult o = read_all(other_);
  EXPECT_EQ(o.err, 0);
  EXPECT_TRUE(same(o.data, dother_));}

void PoisonShared::check_direct_read_is_short_then_eio() {
  int fd = open(c_.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, kBlock, 4 * kBlock), 0);
  ASSERT_EQ(lseek(fd, static_cast<off_t>(kCBlock), SEEK_SET), static_cast<off_t>(kCBlock));
  // Every clean byte up to the poison, then EIO on the next call.
  ssize_t n = read(fd, buf, 2 * kBlock);
  EXPECT_EQ(n, static_cast<ssize_t>(kIn));
  if (n > 0) {
    EXPECT_EQ(std::string(static_cast<char*>(buf), static_cast<size_t>(n)), dc_.substr(kCBlock, kIn));
  }
  errno = 0;
  EXPECT_EQ(read(fd, buf, 2 * kBlock), -1);
  EXPECT_EQ(errno, EIO);
  // Past the poison, O_DIRECT reads the rest.
  ssize_t m = pread(fd, buf, kBlock, static_cast<off_t>(3 * kBlock));
  EXPECT_EQ(m, static_cast<ssize_t>(kBlock));
  EXPECT_EQ(std::string(static_cast<char*>(buf), kBlock), dc_.substr(3 * kBlock));
  // A read from before the block stops at the poison too.
  m = pread(fd, buf, 2 * kBlock, static_cast<off_t>(kCBlock - kBlock));
  EXPECT_EQ(m, static_cast<ssize_t>(kBlock + kIn));
  std::free(buf);
  close(fd);
  // The same through dd, as a user would run it.
  RunResult dd = run("dd if=" + q(c_) + " of=/dev/null bs=8192 iflag=direct");
  EXPECT_NE(dd.exit_code, 0);
  EXPECT_NE(dd.err.find(std::to_string(kCBlock + kIn) + " bytes"), std::string::npos) << dd.err;}

void PoisonShared::check_mmap_of_the_poisoned_page_gets_sigbus() {
  ASSERT_EQ(eventual_error(c_, kCBlock, kBlock, dc_.substr(kCBlock)), EIO);
  EXPECT_EQ(mmap_child(c_, kCBlock, {}), SIGBUS);
  EXPECT_EQ(mmap_child(a_, kABlock, {}), SIGBUS);
  // A clean page of the same file maps and reads right.
  EXPECT_EQ(mmap_child(c_, 0, dc_.substr(0, kBlock)), 0);
  EXPECT_EQ(mmap_child(c_, 3 * kBlock, dc_.substr(3 * kBlock, kBlock)), 0);}

TEST_F(PoisonShared, ReadsFailOnlyWherePoisoned) { check_reads_fail_only_where_poisoned(); }
TEST_F(PoisonShared, DirectReadIsShortThenEio) { check_direct_read_is_short_then_eio(); }
TEST_F(PoisonShared, MmapOfThePoisonedPageGetsSigbus) { check_mmap_of_the_poisoned_page_gets_sigbus(); }

// The same readers on a mount without the page cache for read(2): a read
// without O_DIRECT fails whole where the page cache would lose one page
// (a mapping's page faults read through the same handle, and a short read
// there would be taken for the end of the file).
class PoisonSharedDirectIo : public PoisonShared {
 protected:
  std::string mount_options() const override { return "allow_other,direct_io"; }
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PoisonShared::SetUp());
    int fd = open(mnt().c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    poisonfs_stat st{};
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_STAT, &st), 0);
    close(fd);
    ASSERT_TRUE(st.session_flags & POISONFS_STAT_DIRECT_IO) << "the kernel refused FUSE_DIRECT_IO_ALLOW_MMAP";
  }
};

TEST_F(PoisonSharedDirectIo, ReadsFailOnlyWherePoisoned) { check_reads_fail_only_where_poisoned(); }
TEST_F(PoisonSharedDirectIo, DirectReadIsShortThenEio) { check_direct_read_is_short_then_eio(); }
TEST_F(PoisonSharedDirectIo, MmapOfThePoisonedPageGetsSigbus) { check_mmap_of_the_poisoned_page_gets_sigbus(); }

// Issue 5 item 3: a recovery write whose data does not match the block's
// checksum gives the writer its own copy; the other sharers stay poisoned.
TEST_F(PoisonShared, RecoveryWithOtherDataGivesTheWriterItsOwnCopy) {
  const std::string other = random_bytes(kBlock, 9);
  ASSERT_EQ(pwrite_at(c_, kCBlock, other), 0);
  dc_.replace(kCBlock, kBlock, other);
  ReadResult rc = read_all(c_);
  EXPECT_EQ(rc.err, 0);
  EXPECT_TRUE(same(rc.data, dc_));
  EXPECT_TRUE(file_poison(c_).empty());
  EXPECT_EQ(eventual_error(a_, kABlock, kBlock, da_.substr(kABlock)), EIO);
  EXPECT_EQ(eventual_error(b_, kABlock, kBlock, da_.substr(kABlock)), EIO);
  EXPECT_EQ(file_poison(a_).size(), 1u);
  EXPECT_EQ(file_poison(b_).size(), 1u);
  for (const Record& e : bmap(c_)) {
    uint64_t fo = num(e, "file_offset"), len = num(e, "length");
    if (kCBlock < fo || kCBlock >= fo + len) continue;
    EXPECT_EQ(e.at("shared"), "false");
    EXPECT_NE(num(e, "physical") + (kCBlock - fo), block_);
  }
  EXPECT_EQ(physical(a_, kABlock), block_);
  EXPECT_EQ(badblocks(), std::to_string(block_ + kIn) + " " + std::to_string(kLen) + "\n");
  bool logged = false, healed = false;
  for (const std::string& e : events()) {
    logged |= e.find("\"kind\":\"recovery\"") != std::string::npos;
    healed |= e.find("\"kind\":\"heal\"") != std::string::npos;
  }
  EXPECT_TRUE(logged);
  EXPECT_FALSE(healed);
}

// Issue 5 item 3: the true data (it matches the block's checksum) heals
// every sharer with one write, in place: same physical block, still shared,
// and bmap identical before and after.
TEST_F(PoisonShared, RecoveryWithTheTrueDataHealsEverySharerInPlace) {
  // Block by block, where each file's bytes live (bmap splits records at
  // poison, so the records themselves differ once it is gone).
  auto blocks = [&](const std::string& file) {
    std::vector<std::pair<uint64_t, std::string>> out;
    for (const Record& e : bmap(file))
      for (uint64_t off = 0; off < num(e, "length"); off += kBlock)
        out.push_back({num(e, "file_offset") + off, std::to_string(num(e, "physical") + off) + e.at("shared")});
    return out;
  };
  const auto before_a = blocks(a_), before_b = blocks(b_), before_c = blocks(c_);
  // Only the poisoned bytes, as a careful user restores them.
  ASSERT_EQ(pwrite_at(c_, kCBlock + kIn, da_.substr(kABlock + kIn, kLen)), 0);
  EXPECT_EQ(badblocks(), "");
  for (const auto& [file, data] : {std::pair{a_, da_}, std::pair{b_, da_}, std::pair{c_, dc_}}) {
    ReadResult r = read_all(file);
    EXPECT_EQ(r.err, 0) << file;
    EXPECT_TRUE(same(r.data, data)) << file;
    EXPECT_TRUE(file_poison(file).empty()) << file;
  }
  EXPECT_EQ(blocks(a_), before_a);
  EXPECT_EQ(blocks(b_), before_b);
  EXPECT_EQ(blocks(c_), before_c);
  EXPECT_EQ(physical(c_, kCBlock), block_);
  // One heal event names all three files.
  std::string heal;
  for (const std::string& e : events())
    if (e.find("\"kind\":\"heal\"") != std::string::npos) heal = e;
  ASSERT_FALSE(heal.empty());
  for (const char* name : {"\"/a\"", "\"/b\"", "\"/dir/c\""}) EXPECT_NE(heal.find(name), std::string::npos) << heal;
}

// Issue 5 item 7: `poisonctl map --svg` draws the device through the mount
// and offline from the image: an SVG naming the files in its legend, the
// shared block hatched, the poisoned one in poison red.
TEST_F(PoisonShared, MapSvgThroughTheMountAndOffline) {
  auto check = [&](const std::string& svg, const char* how) {
    SCOPED_TRACE(how);
    ASSERT_TRUE(svg.starts_with("<?xml")) << svg.substr(0, 200);
    EXPECT_NE(svg.find("<svg "), std::string::npos);
    EXPECT_TRUE(svg.ends_with("</svg>\n"));
    for (const char* name : {"/a<", "/b<", "/dir/c<", "/other<"}) EXPECT_NE(svg.find(name), std::string::npos) << name;
    EXPECT_NE(svg.find("fill=\"url(#hatch)\""), std::string::npos);  // a shared extent
    EXPECT_NE(svg.find("fill=\"#ff1a1a\" stroke"), std::string::npos);  // the poisoned cell
    EXPECT_NE(svg.find("poison list: 1 range, 1024 bytes"), std::string::npos);
  };
  const std::string out = dir() + "/map.svg";
  RunResult r = ctl("map --svg " + q(out) + " " + q(mnt()));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  check(read_file(out), "mount");
  unmount();
  r = ctl("map --svg " + q(out) + " " + q(image()));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  check(read_file(out), "image");
  EXPECT_EQ(ctl("map " + q(image())).exit_code, 2);  // no --svg: a usage error

  // A write that fails part way (here the file size limit, as a full disk
  // would; SIGXFSZ at its default, which would kill the tool) says so,
  // leaves the earlier picture whole and no temporary. A name planted where
  // the old code put its temporary is not written through.
  const std::string before = read_file(out);
  ASSERT_GT(before.size(), 8192u);
  const std::string planted = dir() + "/planted";
  ASSERT_EQ(symlink(planted.c_str(), (out + ".tmp").c_str()), 0);
  r = run("ulimit -f 8; " + sh_quote(bin("poisonctl")) + " map --svg " + q(out) + " " + q(image()));
  EXPECT_EQ(r.exit_code, 1) << r.both();
  EXPECT_NE(r.err.find("write failed"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(out), before);
  for (const auto& entry : std::filesystem::directory_iterator(dir())) {
    const std::string name = entry.path().filename();
    EXPECT_TRUE(!name.starts_with("map.svg.") || name == "map.svg.tmp") << "a temporary was left behind: " << name;
  }
  // Then, with room, the picture is replaced and the planted name untouched.
  r = ctl("map --svg " + q(out) + " " + q(image()));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  check(read_file(out), "image, again");
  EXPECT_NE(access(planted.c_str(), F_OK), 0) << "written through the planted symlink";
  struct stat st {};
  ASSERT_EQ(stat(out.c_str(), &st), 0);
  const mode_t mask = umask(0);
  umask(mask);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
}

// Issue 4: "bmap and fsmap mark poisoned ranges (poisoned: true)".
TEST_F(PoisonShared, BmapAndFsmapMarkThePoisonedBlock) {
  // The records over the poisoned bytes say so; no other record does.
  auto overlaps = [](uint64_t off, uint64_t len, uint64_t from, uint64_t to) { return off < to && from < off + len; };
  for (const auto& [file, at] : {std::pair{a_, kABlock}, std::pair{b_, kABlock}, std::pair{c_, kCBlock}}) {
    bool marked = false;
    for (const Record& e : bmap(file)) {
      bool hit = overlaps(num(e, "file_offset"), num(e, "length"), at + kIn, at + kIn + kLen);
      EXPECT_EQ(e.at("poisoned"), hit ? "true" : "false") << file << " at " << num(e, "file_offset");
      marked |= hit;
    }
    EXPECT_TRUE(marked) << file;
  }
  size_t poisoned = 0;
  for (const Record& o : fsmap(std::to_string(block_ - kBlock) + " " + std::to_string(3 * kBlock))) {
    bool hit = overlaps(num(o, "physical"), num(o, "length"), block_ + kIn, block_ + kIn + kLen);
    EXPECT_EQ(o.at("poisoned"), hit ? "true" : "false") << num(o, "physical");
    poisoned += hit;
  }
  EXPECT_EQ(poisoned, 3u);
  RunResult human = ctl("fsmap " + q(mnt()) + " " + std::to_string(block_) + " 4096");
  EXPECT_NE(human.out.find("shared,poisoned"), std::string::npos) << human.out;
}

// ---- where the poison lands ----------------------------------------------------------

class PoisonPlacement : public PoisonTest {};

TEST_F(PoisonPlacement, StraddlingTwoExtentsOfTwoFiles) {
  const std::string x = path("x"), y = path("y");
  // Written in turns, one block at a time, so that their extents interleave
  // on the device; fsmap then shows where an extent of one meets one of the
  // other.
  const std::string dx = random_bytes(4 * kBlock, 11), dy = random_bytes(4 * kBlock, 12);
  for (uint64_t b = 0; b < 4; ++b) {
    for (const auto& [file, data] : {std::pair{x, dx}, std::pair{y, dy}}) {
      int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(pwrite(fd, data.data() + b * kBlock, kBlock, static_cast<off_t>(b * kBlock)),
                static_cast<ssize_t>(kBlock));
      close(fd);
    }
  }
  const uint64_t xi = inode_of(x), yi = inode_of(y);
  std::vector<Record> data_recs;
  for (const Record& r : fsmap())
    if (r.at("owner") == "data" && (num(r, "inode") == xi || num(r, "inode") == yi)) data_recs.push_back(r);
  const Record* first = nullptr;
  const Record* second = nullptr;
  for (size_t i = 0; i + 1 < data_recs.size() && !first; ++i) {
    const Record& p = data_recs[i];
    const Record& n = data_recs[i + 1];
    if (num(p, "inode") != num(n, "inode") && num(p, "physical") + num(p, "length") == num(n, "physical")) {
      first = &p;
      second = &n;
    }
  }
  ASSERT_TRUE(first) << "no extent of x meets one of y on the device";
  const uint64_t boundary = num(*second, "physical");
  const std::string& f1 = num(*first, "inode") == xi ? x : y;
  const std::string& f2 = num(*second, "inode") == xi ? x : y;
  const std::string& d1 = &f1 == &x ? dx : dy;
  const std::string& d2 = &f2 == &x ? dx : dy;
  const uint64_t end1 = num(*first, "file_offset") + num(*first, "length");  // file offset in f1
  const uint64_t start2 = num(*second, "file_offset");
  ASSERT_NO_FATAL_FAILURE(inject(boundary - 512, 1024));
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(file_poison(f1), (Ranges{{end1 - 512, 512}}));
  EXPECT_EQ(file_poison(f2), (Ranges{{start2, 512}}));
  EXPECT_EQ(eventual_error(f1, end1 - kBlock, kBlock, d1.substr(end1 - kBlock)), EIO);
  EXPECT_EQ(eventual_error(f2, start2, kBlock, d2.substr(start2)), EIO);
  // Every other page of both reads right.
  for (uint64_t b = 0; b < 4; ++b) {
    if (b * kBlock != end1 - kBlock) {
      EXPECT_TRUE(same(pread_at(f1, b * kBlock, kBlock).data, d1.substr(b * kBlock, kBlock)));
    }
    if (b * kBlock != start2) {
      EXPECT_TRUE(same(pread_at(f2, b * kBlock, kBlock).data, d2.substr(b * kBlock, kBlock)));
    }
  }
  bool found = false;
  const std::string n1 = &f1 == &x ? "/x" : "/y", n2 = &f2 == &x ? "/x" : "/y";
  for (const std::string& e : events()) {
    if (e.find("\"kind\":\"failure\"") == std::string::npos) continue;
    found = true;
    EXPECT_NE(e.find("\"path\":\"" + n1 + "\",\"file_offset\":" + std::to_string(end1 - 512) + ",\"length\":512"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("\"path\":\"" + n2 + "\",\"file_offset\":" + std::to_string(start2) + ",\"length\":512"),
              std::string::npos)
        << e;
  }
  EXPECT_TRUE(found);
}

TEST_F(PoisonPlacement, FileNeverOpenedSinceAFreshMount) {
  const std::string f = path("cold/f");
  ASSERT_EQ(mkdir(path("cold").c_str(), 0755), 0);
  const std::string data = random_bytes(6 * kBlock, 21);
  ASSERT_TRUE(write_file(f, data));
  const uint64_t phys = physical(f, 2 * kBlock);
  ASSERT_NO_FATAL_FAILURE(remount());
  // Nothing has looked the file up since the mount: the core must find it
  // through the reverse map, not through the inodes it holds in memory.
  ASSERT_NO_FATAL_FAILURE(inject(phys + 128, 256));
  bool found = false;
  for (const std::string& e : events())
    found |= e.find(R"("path":"/cold/f","file_offset":)" + std::to_string(2 * kBlock + 128)) != std::string::npos;
  EXPECT_TRUE(found);
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(file_poison(f), (Ranges{{2 * kBlock + 128, 256}}));
  EXPECT_EQ(pread_at(f, 2 * kBlock, kBlock).err, EIO);
  EXPECT_TRUE(same(pread_at(f, 3 * kBlock, 3 * kBlock).data, data.substr(3 * kBlock)));
}

TEST_F(PoisonPlacement, EveryKindOfMetadataIsRepaired) {
  ASSERT_EQ(mkdir(path("d").c_str(), 0755), 0);
  std::map<std::string, std::string> files;
  for (int i = 0; i < 20; ++i) {
    std::string name = "d/file" + std::to_string(i);
    files[name] = random_bytes(kBlock + 100 * static_cast<size_t>(i), 100 + static_cast<uint64_t>(i));
    ASSERT_TRUE(write_file(path(name), files[name]));
  }
  ASSERT_EQ(setxattr(path("d/file3").c_str(), "user.color", "blue", 4, 0), 0);
  // Several extents: every other block of a second file punched out.
  files["frag"] = random_bytes(16 * kBlock, 7);
  ASSERT_TRUE(write_file(path("frag"), files["frag"]));
  {
    int fd = open(path("frag").c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    for (uint64_t b = 1; b < 16; b += 2) {
      ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(b * kBlock),
                          static_cast<off_t>(kBlock)),
                0);
      std::memset(&files["frag"][b * kBlock], 0, kBlock);
    }
    close(fd);
  }
  auto verify = [&](const std::string& when) {
    for (const auto& [name, data] : files) {
      ReadResult r = read_all(path(name));
      EXPECT_EQ(r.err, 0) << name << " " << when;
      EXPECT_TRUE(same(r.data, data)) << name << " differs " << when;
    }
    char v[16];
    EXPECT_EQ(getxattr(path("d/file3").c_str(), "user.color", v, sizeof v), 4) << when;
    RunResult ls = run("ls " + q(path("d")) + " | wc -l");
    EXPECT_EQ(ls.out, "20\n") << when;
  };

  const uint64_t d_ino = inode_of(path("d")), x_ino = inode_of(path("d/file3")), frag_ino = inode_of(path("frag"));
  std::map<std::string, uint64_t> target;  // kind -> device offset to poison
  for (const Record& r : fsmap()) {
    const std::string& owner = r.at("owner");
    uint64_t ino = r.count("inode") ? num(r, "inode") : 0;
    bool want = (owner == "superblock" || owner == "journal" || owner == "inodes") ||
                (owner == "extents" && ino == frag_ino) || (owner == "directory" && ino == d_ino) ||
                (owner == "xattr" && ino == x_ino);
    if (want && !target.count(owner)) target[owner] = num(r, "physical");
    if (owner == "superblock") target["superblock copy"] = num(r, "physical");  // the last one
  }
  for (const char* kind : {"superblock", "superblock copy", "journal", "inodes", "extents", "directory", "xattr"})
    ASSERT_TRUE(target.count(kind)) << "fsmap shows no " << kind << " record";
  ASSERT_NE(target["superblock"], target["superblock copy"]);

  uint64_t repairs = 0;
  for (const auto& [kind, off] : target) {
    SCOPED_TRACE(kind);
    ASSERT_NO_FATAL_FAILURE(inject(off, kind == "journal" ? 2 * kBlock : 256));
    Record st = status();
    EXPECT_EQ(st["state"], "healthy") << st["reason"];
    EXPECT_EQ(badblocks(), "") << "metadata poison must be repaired and cleared";
    uint64_t now = 0;
    for (const std::string& e : events()) now += e.find("\"kind\":\"repair\"") != std::string::npos;
    EXPECT_GT(now, repairs) << "no repair event";
    repairs = now;
    verify("after poisoning the " + kind);
  }
  // Still a working filesystem.
  ASSERT_TRUE(write_file(path("d/new"), "after the repairs"));
  files["d/new"] = "after the repairs";
  ASSERT_EQ(mkdir(path("d2").c_str(), 0755), 0);

  unmount();
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + q(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
  ASSERT_NO_FATAL_FAILURE(mount());
  RunResult ls = run("ls " + q(path("d")) + " | wc -l");
  EXPECT_EQ(ls.out, "21\n");
  for (const auto& [name, data] : files) EXPECT_TRUE(same(read_all(path(name)).data, data)) << name;
}

// An inode record poisoned while unmounted: no copy of it exists, so the
// mount comes up shut down (like xfs_force_shutdown): status and events say
// why, every file call fails with EIO, unmount works, fsck -y salvages (the
// lost file's name is dropped) and the image mounts healthy again.
TEST_F(PoisonPlacement, LostInodeAtMountShutsDownUntilFsck) {
  const std::string keep = path("keep"), lost = path("lost");
  const std::string data = random_bytes(4 * kBlock, 71);
  ASSERT_TRUE(write_file(keep, data));
  ASSERT_TRUE(write_file(lost, random_bytes(2 * kBlock, 72)));
  struct stat st {};
  ASSERT_EQ(::stat(lost.c_str(), &st), 0);
  const uint64_t slot = num(stat_info(), "inode_start") * kBlock + (st.st_ino - 1) * 256;
  unmount();
  // Latent: an offline injection of known poison would be repaired by the
  // core right away (it mounts the image to notify); latent poison stays
  // in IMAGE.badblocks for the next mount to find, like a DIMM that failed
  // while powered off.
  RunResult inj = ctl("inject " + q(image()) + " " + std::to_string(slot + 64) + " 64 --latent");
  ASSERT_EQ(inj.exit_code, 0) << inj.both();

  ASSERT_NO_FATAL_FAILURE(mount());
  Record status_now = status();
  EXPECT_EQ(status_now["state"], "shutdown");
  EXPECT_EQ(status_now["shutdown"], "true");
  EXPECT_NE(status_now["reason"].find("fsck"), std::string::npos) << status_now["reason"];
  RunResult human = ctl("status " + q(mnt()));
  EXPECT_NE(human.out.find("shutdown"), std::string::npos) << human.both();
  bool shut = false;
  for (const std::string& e : events()) shut |= e.find("\"kind\":\"shutdown\"") != std::string::npos;
  EXPECT_TRUE(shut) << "no shutdown event";
  EXPECT_EQ(pread_at(keep, 0, kBlock).err, EIO);
  EXPECT_FALSE(write_file(path("new"), "x"));
  RunResult scrub = ctl("scrub " + q(mnt()));
  EXPECT_NE(scrub.exit_code, 0) << scrub.both();
  unmount();

  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -y " + q(image()));
  EXPECT_EQ(fsck.exit_code, 1) << fsck.both();  // errors fixed
  RunResult again = run(sh_quote(bin("fsck.poisonfs")) + " -n " + q(image()));
  EXPECT_EQ(again.exit_code, 0) << again.both();
  ASSERT_NO_FATAL_FAILURE(mount());
  EXPECT_EQ(status()["state"], "healthy");
  EXPECT_TRUE(same(read_all(keep).data, data));
  EXPECT_FALSE(std::filesystem::exists(lost));
  EXPECT_EQ(badblocks(), "");
}

TEST_F(PoisonPlacement, FreeSpaceIsQuarantined) {
  ASSERT_TRUE(write_file(path("first"), random_bytes(4 * kBlock, 31)));
  // The lowest free block of the data area: where the next file would go.
  const uint64_t data_start = num(stat_info(), "data_start") * kBlock;
  uint64_t free_at = UINT64_MAX;
  for (const Record& r : fsmap())
    if (r.at("owner") == "free" && num(r, "physical") >= data_start && num(r, "length") >= 2 * kBlock) {
      free_at = num(r, "physical");
      break;
    }
  ASSERT_NE(free_at, UINT64_MAX);
  ASSERT_NO_FATAL_FAILURE(inject(free_at, kBlock));
  Record st = status();
  EXPECT_EQ(st["state"], "healthy");
  EXPECT_EQ(num(st, "quarantined_bytes"), kBlock);
  EXPECT_EQ(num(st, "known_poison_bytes"), kBlock);
  RunResult human = ctl("status " + q(mnt()));
  EXPECT_NE(human.out.find("quarantined:"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("4096 bytes"), std::string::npos) << human.out;
  bool logged = false;
  for (const std::string& e : events()) logged |= e.find("\"kind\":\"quarantine\"") != std::string::npos;
  EXPECT_TRUE(logged);
  // The allocator never hands the quarantined block out.
  const std::string data = random_bytes(32 * kBlock, 32);
  ASSERT_TRUE(write_file(path("second"), data));
  for (const Record& e : bmap(path("second"))) {
    uint64_t p = num(e, "physical"), len = num(e, "length");
    EXPECT_TRUE(free_at + kBlock <= p || free_at >= p + len) << "allocated over the quarantined block";
  }
  EXPECT_TRUE(same(read_all(path("second")).data, data));
  EXPECT_EQ(badblocks(), std::to_string(free_at) + " 4096\n");
}

TEST_F(PoisonPlacement, LatentPoisonFoundByARead) {
  const std::string f = path("f");
  const std::string data = random_bytes(8 * kBlock, 41);
  ASSERT_TRUE(write_file(f, data));
  const uint64_t phys = physical(f, 5 * kBlock);
  ASSERT_NO_FATAL_FAILURE(remount());  // nothing of f in the kernel's cache
  ASSERT_NO_FATAL_FAILURE(inject(phys + 64, 64, /*latent=*/true));
  EXPECT_EQ(badblocks(), std::to_string(phys + 64) + " 64 latent\n");
  EXPECT_EQ(badblocks(false), std::to_string((phys + 64) / 512) + " 1\n");  // no mark in sector form
  EXPECT_TRUE(file_poison(f).empty()) << "latent poison is not known yet";
  Record st = status();
  EXPECT_EQ(num(st, "latent_poison_bytes"), 64u);
  EXPECT_EQ(num(st, "known_poison_bytes"), 0u);
  EXPECT_EQ(num(st, "events"), 0u);
  // A clean page reads; the read of the poisoned page finds it.
  EXPECT_TRUE(same(pread_at(f, 0, kBlock).data, data.substr(0, kBlock)));
  ReadResult r = pread_at(f, 5 * kBlock, kBlock);
  EXPECT_EQ(r.err, EIO);
  EXPECT_FALSE(contains_pattern(r.data));
  EXPECT_EQ(badblocks(), std::to_string(phys + 64) + " 64\n");
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(file_poison(f), (Ranges{{5 * kBlock + 64, 64}}));
  st = status();
  EXPECT_EQ(num(st, "latent_poison_bytes"), 0u);
  EXPECT_EQ(num(st, "known_poison_bytes"), 64u);
  bool consumed = false;
  for (const std::string& e : events()) consumed |= e.find("consumed by a read") != std::string::npos;
  EXPECT_TRUE(consumed);
}

TEST_F(PoisonPlacement, PersistsAcrossRemountAndOffline) {
  const std::string f = path("f");
  const std::string data = random_bytes(8 * kBlock, 51);
  ASSERT_TRUE(write_file(f, data));
  const uint64_t p1 = physical(f, 1 * kBlock), p6 = physical(f, 6 * kBlock);
  ASSERT_NO_FATAL_FAILURE(inject(p1 + 256, 128));
  const std::string bb = badblocks(), sectors = badblocks(false), fp = ctl("poison --json " + q(f)).out;
  ASSERT_NE(bb, "");
  unmount();

  // Offline, through the core on the image (IMAGE.badblocks keeps the list).
  EXPECT_TRUE(std::filesystem::exists(image() + ".badblocks"));
  RunResult off_bb = ctl("badblocks --bytes " + q(image()));
  EXPECT_EQ(off_bb.exit_code, 0) << off_bb.both();
  EXPECT_EQ(off_bb.out, bb);
  EXPECT_EQ(ctl("badblocks " + q(image())).out, sectors);
  RunResult off_fp = ctl("poison --json --image " + q(image()) + " /f");
  EXPECT_EQ(off_fp.exit_code, 0) << off_fp.both();
  EXPECT_EQ(off_fp.out, fp);
  // An offline injection on the unmounted image.
  RunResult inj = ctl("inject " + q(image()) + " " + std::to_string(p6) + " 64");
  ASSERT_EQ(inj.exit_code, 0) << inj.both();
  EXPECT_NE(inj.out.find("(image)"), std::string::npos) << inj.out;
  EXPECT_TRUE(image_unlocked(image()));

  ASSERT_NO_FATAL_FAILURE(mount());
  EXPECT_EQ(badblocks(), bb + std::to_string(p6) + " 64\n");
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  EXPECT_EQ(file_poison(f), (Ranges{{kBlock + 256, 128}, {6 * kBlock, 64}}));
  EXPECT_EQ(pread_at(f, kBlock, kBlock).err, EIO);
  EXPECT_EQ(pread_at(f, 6 * kBlock, kBlock).err, EIO);
  EXPECT_TRUE(same(pread_at(f, 2 * kBlock, 4 * kBlock).data, data.substr(2 * kBlock, 4 * kBlock)));
  // The remount reported the list again before the first request.
  bool replayed = false;
  for (const std::string& e : events()) replayed |= e.find(R"("path":"/f")") != std::string::npos;
  EXPECT_TRUE(replayed);
}

// ---- recovery ------------------------------------------------------------------------------

class PoisonRecovery : public PoisonTest {};

TEST_F(PoisonRecovery, InPlaceWithTheTrueBytesKeepsTheExtentMap) {
  const std::string f = path("f");
  const std::string data = random_bytes(8 * kBlock, 61);
  ASSERT_TRUE(write_file(f, data));
  const uint64_t at = 3 * kBlock + 256;  // two poisoned units: [at, at+128)
  ASSERT_NO_FATAL_FAILURE(inject(physical(f, at), 128));
  const std::string before = block_map(f);
  const std::string bb = badblocks();
  const size_t events_before = events().size();

  // A write that leaves part of a poisoned unit uncovered: EIO, no change.
  EXPECT_EQ(pwrite_at(f, at + 10, data.substr(at + 10, 100)), EIO);
  EXPECT_EQ(badblocks(), bb);
  EXPECT_EQ(block_map(f), before);
  EXPECT_EQ(events().size(), events_before);
  EXPECT_EQ(pread_at(f, 3 * kBlock, kBlock).err, EIO);

  // The true bytes over exactly the poisoned units: in place.
  ASSERT_EQ(pwrite_at(f, at, data.substr(at, 128)), 0);
  ReadResult all = read_all(f);
  EXPECT_EQ(all.err, 0);
  EXPECT_TRUE(same(all.data, data));
  EXPECT_EQ(block_map(f), before) << "the recovery moved the data";
  EXPECT_EQ(badblocks(), "");
  EXPECT_TRUE(file_poison(f).empty());
  EXPECT_EQ(num(status(), "known_poison_bytes"), 0u);
  bool logged = false;
  for (const std::string& e : events())
    logged |= e.find("\"kind\":\"recovery\"") != std::string::npos && e.find("cleared in place") != std::string::npos;
  EXPECT_TRUE(logged);
}

TEST_F(PoisonRecovery, WholeBlockDirectWrite) {
  const std::string f = path("f");
  const std::string data = random_bytes(4 * kBlock, 62);
  ASSERT_TRUE(write_file(f, data));
  ASSERT_NO_FATAL_FAILURE(inject(physical(f, kBlock) + 1000, 2000));  // rounded out to units
  const std::string before = block_map(f);
  ASSERT_EQ(pwrite_at(f, kBlock, data.substr(kBlock, kBlock), O_DIRECT), 0);
  EXPECT_TRUE(same(read_all(f).data, data));
  EXPECT_EQ(block_map(f), before);
  EXPECT_EQ(badblocks(), "");
}

TEST_F(PoisonRecovery, WriteCoveringOnlyPartOfAUnitChangesNothing) {
  const std::string f = path("f");
  const std::string data = random_bytes(2 * kBlock, 63);
  ASSERT_TRUE(write_file(f, data));
  ASSERT_NO_FATAL_FAILURE(inject(physical(f, 0) + 512, 64));
  const std::string before = block_map(f);
  // Starts in the clean unit before and ends inside the poisoned one: with
  // O_DIRECT pwrite fails; buffered (the kernel may have cut a longer write
  // there) the daemon keeps the bytes for a next piece that never comes,
  // and close fails.
  EXPECT_EQ(pwrite_at(f, 500, std::string(50, 'x'), O_DIRECT), EIO);
  auto incomplete = [&] {
    return std::ranges::count_if(events(), [](const std::string& e) {
      return e.find("\"kind\":\"incomplete\"") != std::string::npos;
    });
  };
  EXPECT_EQ(incomplete(), 0);
  EXPECT_EQ(pwrite_at(f, 500, std::string(50, 'x')), EIO);
  EXPECT_EQ(incomplete(), 1);
  // Starts inside it and runs past it: refused at once either way.
  EXPECT_EQ(pwrite_at(f, 540, std::string(100, 'x'), O_DIRECT), EIO);
  EXPECT_EQ(pwrite_at(f, 540, std::string(100, 'x')), EIO);
  EXPECT_EQ(badblocks(), std::to_string(physical(f, 0) + 512) + " 64\n");
  EXPECT_EQ(block_map(f), before);
  EXPECT_EQ(pread_at(f, 0, kBlock).err, EIO);
  EXPECT_TRUE(same(pread_at(f, kBlock, kBlock).data, data.substr(kBlock)));
  // The failed writes left every byte as it was: once the unit is
  // recovered, the whole file is the original.
  ASSERT_EQ(pwrite_at(f, 512, data.substr(512, 64)), 0);
  EXPECT_TRUE(same(read_all(f).data, data));
  EXPECT_EQ(block_map(f), before);
}

// A buffered write that ends inside a poisoned unit, through a descriptor
// opened while the device has poison: the kernel may have cut a longer
// write there, so its whole blocks are written, the rest waits for a next
// piece that never comes, and close fails. Through a descriptor opened
// before the poison came (no FLUSH asked), the same write fails at once and
// changes nothing, as an O_DIRECT one.
TEST_F(PoisonRecovery, BufferedWriteEndingInsidePoisonFailsAtCloseOrAtOnce) {
  const std::string f = path("f");
  const std::string data = random_bytes(2 * kBlock, 64);
  ASSERT_TRUE(write_file(f, data));
  const int before_poison = open(f.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(before_poison, 0);
  ASSERT_NO_FATAL_FAILURE(inject(physical(f, kBlock) + 512, 64));
  const std::string fresh = random_bytes(kBlock + 550, 65);
  errno = 0;
  EXPECT_EQ(pwrite(before_poison, fresh.data(), fresh.size(), 0), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(close(before_poison), 0);
  EXPECT_TRUE(same(pread_at(f, 0, kBlock).data, data.substr(0, kBlock)));
  EXPECT_EQ(pwrite_at(f, 0, fresh), EIO);  // pwrite succeeds, close fails
  EXPECT_TRUE(same(pread_at(f, 0, kBlock).data, fresh.substr(0, kBlock))) << "block 0 was written";
  EXPECT_EQ(pread_at(f, kBlock, kBlock).err, EIO);
  ASSERT_EQ(pwrite_at(f, kBlock + 512, data.substr(kBlock + 512, 64)), 0);
  EXPECT_TRUE(same(read_all(f).data, fresh.substr(0, kBlock) + data.substr(kBlock)));
}

// ---- bad input ---------------------------------------------------------------------------

class PoisonBadInput : public PoisonTest {};

TEST_F(PoisonBadInput, InjectRefusesAndChangesNothing) {
  const std::string f = path("f");
  const std::string data = random_bytes(2 * kBlock, 71);
  ASSERT_TRUE(write_file(f, data));
  const uint64_t device = num(stat_info(), "device_bytes");
  ASSERT_GT(device, 0u);
  auto refused = [&](const std::string& args, const std::string& says) {
    RunResult r = ctl(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_EQ(r.out, "") << args;
    EXPECT_EQ(lines(r.err).size(), 1u) << args << ": " << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << args << ": " << r.err;
  };
  const std::string m = q(mnt());
  refused("inject " + m + " " + std::to_string(device) + " 64", "outside the device");
  refused("inject " + m + " " + std::to_string(device - 64) + " 128", "outside the device");
  refused("inject " + m + " 1T 4K", "outside the device");
  refused("inject " + m + " 0 0", "must not be zero");
  refused("inject " + m + " 4096 18446744073709551615", "overflows");
  refused("inject " + m + " 18446744073709551552 128", "overflows");
  // Paths that are no poisonfs.
  refused("inject " + q(dir()) + " 0 64", "not on a poisonfs mount");
  const std::string plain = dir() + "/plain";
  ASSERT_TRUE(write_file(plain, std::string(1 << 20, 'p')));
  struct stat before {};
  ASSERT_EQ(stat(plain.c_str(), &before), 0);
  RunResult r = ctl("inject " + q(plain) + " 0 64");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(lines(r.err).size(), 1u) << r.err;
  struct stat after {};
  ASSERT_EQ(stat(plain.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  EXPECT_EQ(read_file(plain), std::string(1 << 20, 'p'));
  EXPECT_FALSE(std::filesystem::exists(plain + ".badblocks"));
  refused("inject " + q(dir() + "/missing") + " 0 64", "No such file");
  refused("events " + q(plain), "not a mounted poisonfs");
  refused("poison " + q(plain), "not on a mounted poisonfs");

  // An unprivileged caller: EPERM from the daemon, through the tool and the
  // raw ioctl; the status and a file's own poison stay open to it.
  RunResult nobody = run("setpriv --reuid=65534 --regid=65534 --clear-groups " + sh_quote(bin("poisonctl")) +
                         " inject " + m + " " + std::to_string(physical(f, 0)) + " 64");
  EXPECT_NE(nobody.exit_code, 0);
  EXPECT_EQ(lines(nobody.err).size(), 1u) << nobody.err;
  EXPECT_NE(nobody.err.find("EPERM"), std::string::npos) << nobody.err;
  for (const char* cmd : {"badblocks ", "events "}) {
    RunResult n2 = run("setpriv --reuid=65534 --regid=65534 --clear-groups " + sh_quote(bin("poisonctl")) + " " +
                       cmd + m);
    EXPECT_NE(n2.exit_code, 0) << cmd;
    EXPECT_NE(n2.err.find("EPERM"), std::string::npos) << cmd << n2.err;
  }
  RunResult n3 =
      run("setpriv --reuid=65534 --regid=65534 --clear-groups " + sh_quote(bin("poisonctl")) + " status " + m);
  EXPECT_EQ(n3.exit_code, 0) << n3.both();
  RunResult n4 =
      run("setpriv --reuid=65534 --regid=65534 --clear-groups " + sh_quote(bin("poisonctl")) + " poison " + q(f));
  EXPECT_EQ(n4.exit_code, 0) << n4.both();
  const std::string target = f;
  int rc = as_user(kNobody, kNogroup, [&]() -> int {
    int fd = open(target.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 10;
    poisonfs_inject args{};
    args.offset = 0;
    args.length = 64;
    if (ioctl(fd, POISONFS_IOC_INJECT, &args) == 0 || errno != EPERM) return 11;
    close(fd);
    return 0;
  });
  EXPECT_EQ(rc, 0);

  // Nothing changed.
  EXPECT_EQ(badblocks(), "");
  Record st = status();
  EXPECT_EQ(num(st, "known_poison_bytes"), 0u);
  EXPECT_EQ(num(st, "latent_poison_bytes"), 0u);
  EXPECT_EQ(num(st, "events"), 0u);
  EXPECT_TRUE(same(read_all(f).data, data));
  EXPECT_FALSE(std::filesystem::exists(image() + ".badblocks"));
}

TEST_F(PoisonBadInput, UsageErrors) {
  const std::string m = q(mnt());
  for (const std::string& args : std::vector<std::string>{
           "inject", "inject " + m, "inject " + m + " 0", "inject " + m + " x 64", "inject " + m + " 0 64 9",
        "inject " + m + " 0 64 --bogus", "badblocks", "badblocks --sectors " + m, "poison", "poison --image",
        "events", "events --tail " + m, "status", "status " + m + " " + m}) {
    RunResult r = ctl(args);
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.both();
    EXPECT_NE(r.err.find("usage:"), std::string::npos) << args;
  }
  EXPECT_EQ(badblocks(), "");
}

// ---- the event log ---------------------------------------------------------------------

class PoisonEventLog : public PoisonTest {};

TEST_F(PoisonEventLog, FollowPrintsNewEventsUntilSigint) {
  const std::string f = path("f");
  ASSERT_TRUE(write_file(f, random_bytes(4 * kBlock, 81)));
  const std::string out = dir() + "/follow.out";
  // The follower runs in the background; `wait` returns its exit code.
  RunResult r = run("( " + sh_quote(bin("poisonctl")) + " events --json --follow " + q(mnt()) + " > " + q(out) +
                    " 2>&1 & pid=$!; sleep 0.4; " + sh_quote(bin("poisonctl")) + " inject " + q(mnt()) + " " +
                    std::to_string(physical(f, kBlock)) + " 64 >/dev/null; sleep 0.6; kill -INT $pid; wait $pid )",
                    20);
  EXPECT_EQ(r.exit_code, 0) << r.both();
  std::string text = read_file(out);
  std::vector<std::string> got = lines(text);
  ASSERT_EQ(got.size(), 1u) << text;
  EXPECT_TRUE(got[0].starts_with("{\"seq\":1,")) << got[0];
  EXPECT_NE(got[0].find(R"("path":"/f")"), std::string::npos);
}

TEST_F(PoisonEventLog, TheBoundedHistorySaysWhatItDropped) {
  ASSERT_TRUE(write_file(path("f"), "x"));
  // Poison reported again and again in one free block: two events each
  // (failure, quarantine), past what the log keeps.
  uint64_t free_at = UINT64_MAX;
  const uint64_t data_start = num(stat_info(), "data_start") * kBlock;
  for (const Record& r : fsmap())
    if (r.at("owner") == "free" && num(r, "physical") >= data_start) free_at = num(r, "physical");
  ASSERT_NE(free_at, UINT64_MAX);
  int fd = open(path("f").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  constexpr int kInjections = 2100;
  for (int i = 0; i < kInjections; ++i) {
    poisonfs_inject args{};
    args.offset = free_at;
    args.length = 64;
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_INJECT, &args), 0) << std::strerror(errno);
  }
  close(fd);
  const uint64_t total = num(status(), "events");
  ASSERT_GE(total, 2u * kInjections);

  RunResult json = ctl("events --json " + q(mnt()));
  ASSERT_EQ(json.exit_code, 0) << json.err;
  std::vector<std::string> got = lines(json.out);
  ASSERT_FALSE(got.empty());
  ASSERT_LT(got.size(), total) << "nothing was dropped";
  const uint64_t dropped = total - got.size();
  // Every line is one event, in order, the last one the newest.
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(got[i].starts_with("{\"seq\":" + std::to_string(dropped + 1 + i) + ",")) << got[i];
    ASSERT_TRUE(got[i].ends_with("]}")) << got[i];
  }
  EXPECT_EQ(json.err, "poisonctl: " + std::to_string(dropped) +
                          " older events were dropped (the daemon keeps a bounded history)\n");
  RunResult human = ctl("events " + q(mnt()));
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_TRUE(human.out.starts_with("(" + std::to_string(dropped) + " older events were dropped"))
      << human.out.substr(0, 200);
}

// ---- the scenario ------------------------------------------------------------------------

std::string source_root() {
  // This file is test/mount/poison_test.cc of the source tree.
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path().string();
}

class PoisonScenario : public ::testing::Test {};

TEST_F(PoisonScenario, SharedBlockRecoveredRunsStandalone) {
  const std::string script = source_root() + "/scripts/scenarios/a_shared_block_recovered.sh";
  ASSERT_TRUE(std::filesystem::exists(script)) << script;
  RunResult r = run("POISONFS_BUILD_DIR=" + sh_quote(bin_dir()) + " bash " + sh_quote(script), 120);
  EXPECT_EQ(r.exit_code, 0) << r.both();
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("FAIL"), std::string::npos) << r.out;
}

// Scenarios b to g of issue 5, each run standalone (its own image on
// /dev/shm and its own mount, removed on exit), each bounded to 120 s.
class PoisonScenarioStandalone : public ::testing::TestWithParam<const char*> {};

TEST_P(PoisonScenarioStandalone, RunsAndPasses) {
  const std::string script = source_root() + "/scripts/scenarios/" + GetParam() + ".sh";
  ASSERT_TRUE(std::filesystem::exists(script)) << script;
  RunResult r = run("POISONFS_BUILD_DIR=" + sh_quote(bin_dir()) + " bash " + sh_quote(script), 120);
  EXPECT_EQ(r.exit_code, 0) << r.both();
  EXPECT_NE(r.out.find("\nPASS\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("FAIL"), std::string::npos) << r.out;
  // Each writes its before/after pictures and names them.
  EXPECT_NE(r.out.find("-before.svg"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-after.svg"), std::string::npos) << r.out;
}

INSTANTIATE_TEST_SUITE_P(Scenarios, PoisonScenarioStandalone,
                         ::testing::Values("b_shared_block_other_data", "c_metadata_poison",
                                           "d_latent_read_then_scrub", "e_free_space_poison",
                                           "f_sigkill_during_recovery", "g_punch_vs_inplace"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(1, info.param[0]);
                         });

}  // namespace
}  // namespace poisonfs::test
