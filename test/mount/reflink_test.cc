// Mount tests of reflink and the reverse map through the real daemon and the
// real tools: coreutils cp (copy_file_range), `poisonctl reflink/bmap/fsmap`,
// the control ioctls issued directly, and the offline views of an unmounted
// image, which must agree with what the mount reported.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fs/fsmap_pack.h"
#include "mount/mount_fixture.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::test {
namespace {

constexpr uint64_t kBlock = 4096;

// ---- a small JSON reader for poisonctl's output ---------------------------
// Arrays of flat objects whose values are numbers, strings, booleans, null or
// arrays of strings: exactly what bmap and fsmap print. Keys keep their order.

struct JValue {
  enum Kind { kNull, kBool, kNumber, kString, kArray } kind = kNull;
  bool boolean = false;
  uint64_t number = 0;
  std::string text;
  std::vector<std::string> strings;
};

struct JObject {
  std::vector<std::pair<std::string, JValue>> fields;

  const JValue* get(std::string_view key) const {
    for (const auto& [k, v] : fields) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  bool has(std::string_view key) const { return get(key) != nullptr; }
  uint64_t num(std::string_view key) const {
    const JValue* v = get(key);
    return v && v->kind == JValue::kNumber ? v->number : UINT64_MAX;
  }
  // -1 missing or not a bool, else 0/1.
  int flag(std::string_view key) const {
    const JValue* v = get(key);
    return v && v->kind == JValue::kBool ? v->boolean : -1;
  }
  std::string str(std::string_view key) const {
    const JValue* v = get(key);
    return v && v->kind == JValue::kString ? v->text : std::string{};
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const auto& f : fields) out.push_back(f.first);
    return out;
  }
};

class JsonReader {
 public:
  explicit JsonReader(std::string_view s) : s_(s) {}

  bool read_array(std::vector<JObject>* out) {
    ws();
    if (!take('[')) return false;
    ws();
    if (take(']')) return end();
    for (;;) {
      JObject o;
      if (!read_object(&o)) return false;
      out->push_back(std::move(o));
      ws();
      if (take(']')) return end();
      if (!take(',')) return fail("expected , or ]");
      ws();
    }
  }
  const std::string& error() const { return error_; }

 private:
  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what + " at byte " + std::to_string(i_);
    return false;
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  bool take(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool end() {
    ws();
    return i_ == s_.size() ? true : fail("trailing bytes");
  }
  bool read_string(std::string* out) {
    if (!take('"')) return fail("expected a string");
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        if (static_cast<unsigned char>(c) < 0x20) return fail("raw control byte in a string");
        *out += c;
        continue;
      }
      if (i_ >= s_.size()) return fail("cut escape");
      char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': *out += e; break;
        case 'n': *out += '\n'; break;
        case 't': *out += '\t'; break;
        case 'r': *out += '\r'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) return fail("cut \\u");
          unsigned v = std::stoul(std::string(s_.substr(i_, 4)), nullptr, 16);
          i_ += 4;
          if (v >= 0x80) return fail("non-ASCII \\u (not expected here)");
          *out += static_cast<char>(v);
          break;
        }
        default: return fail("bad escape");
      }
    }
    return take('"') ? true : fail("unterminated string");
  }
  bool read_value(JValue* v) {
    ws();
    if (i_ >= s_.size()) return fail("expected a value");
    char c = s_[i_];
    if (c == '"') {
      v->kind = JValue::kString;
      return read_string(&v->text);
    }
    if (c == '[') {
      ++i_;
      v->kind = JValue::kArray;
      ws();
      if (take(']')) return true;
      for (;;) {
        ws();
        std::string s;
        if (!read_string(&s)) return false;
        v->strings.push_back(std::move(s));
        ws();
        if (take(']')) return true;
        if (!take(',')) return fail("expected , or ] in an array");
      }
    }
    for (auto [word, kind, value] : {std::tuple{"true", JValue::kBool, true}, std::tuple{"false", JValue::kBool, false},
                                     std::tuple{"null", JValue::kNull, false}}) {
      if (s_.substr(i_).starts_with(word)) {
        i_ += std::strlen(word);
        v->kind = kind;
        v->boolean = value;
        return true;
      }
    }
    if (c >= '0' && c <= '9') {
      size_t start = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      v->kind = JValue::kNumber;
      v->number = std::stoull(std::string(s_.substr(start, i_ - start)));
      return true;
    }
    return fail("unexpected byte");
  }
  bool read_object(JObject* o) {
    if (!take('{')) return fail("expected {");
    ws();
    if (take('}')) return true;
    for (;;) {
      ws();
      std::string key;
      if (!read_string(&key)) return false;
      ws();
      if (!take(':')) return fail("expected :");
      JValue v;
      if (!read_value(&v)) return false;
      for (const auto& f : o->fields) {
        if (f.first == key) return fail("duplicate key " + key);
      }
      o->fields.emplace_back(std::move(key), std::move(v));
      ws();
      if (take('}')) return true;
      if (!take(',')) return fail("expected , or }");
    }
  }

  std::string_view s_;
  size_t i_ = 0;
  std::string error_;
};

std::vector<JObject> parse_records(const std::string& text) {
  std::vector<JObject> out;
  JsonReader reader(text);
  if (!reader.read_array(&out)) {
    ADD_FAILURE() << "bad JSON: " << reader.error() << "\n" << text.substr(0, 2000);
    out.clear();
  }
  return out;
}

// ---- files and descriptors ---------------------------------------------------

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, 8);
  }
  for (size_t i = n - n % 8; i < n; ++i) s[i] = static_cast<char>(rng());
  return s;
}

bool write_file(const std::string& path, std::string_view data, mode_t mode = 0644) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  return close(fd) == 0 && done == data.size();
}

// Bytes [off, off+len) of a file.
std::string read_range(const std::string& path, uint64_t off, size_t len) {
  std::string out(len, '\0');
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  ssize_t n = pread(fd, out.data(), len, static_cast<off_t>(off));
  close(fd);
  out.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return out;
}

uint64_t free_blocks(const std::string& path) {
  struct statvfs sv {};
  EXPECT_EQ(statvfs(path.c_str(), &sv), 0) << std::strerror(errno);
  return sv.f_bfree * sv.f_frsize / kBlock;
}

uint64_t file_size(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : UINT64_MAX;
}

// One POISONFS_IOC_CLONE_RANGE: 0 or the errno.
int clone_ioctl(int dst_fd, int src_fd, uint64_t src_off, uint64_t len, uint64_t dst_off) {
  poisonfs_clone_range args{};
  args.src_fd = src_fd;
  args.src_offset = src_off;
  args.src_length = len;
  args.dest_offset = dst_off;
  return ioctl(dst_fd, POISONFS_IOC_CLONE_RANGE, &args) == 0 ? 0 : errno;
}

size_t count_lines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }

const std::set<std::string> kOwners = {"free",    "superblock", "journal", "inodes",   "extents",
                                       "directory", "xattr",    "data",    "checksums"};

class ReflinkTest : public MountTest {
 protected:
  RunResult ctl(const std::string& args, int timeout_s = 60) {
    return run(sh_quote(bin("poisonctl")) + " " + args, timeout_s);
  }
  std::string q(const std::string& s) { return sh_quote(s); }

  // `poisonctl bmap --json`, parsed; empty (and a failure) on error.
  std::vector<JObject> bmap(const std::string& file) {
    RunResult r = ctl("bmap --json " + q(file));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return r.exit_code == 0 ? parse_records(r.out) : std::vector<JObject>{};
  }
  std::vector<JObject> fsmap(const std::string& target, const std::string& range = "") {
    RunResult r = ctl("fsmap --json " + q(target) + (range.empty() ? "" : " " + range));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return r.exit_code == 0 ? parse_records(r.out) : std::vector<JObject>{};
  }
  // The whole observable state of a file: bytes, size and extents.
  std::string snapshot(const std::string& file) {
    return std::to_string(file_size(file)) + "|" + read_file(file) + "|" + ctl("bmap --json " + q(file)).out;
  }
};

// Every bmap record has exactly the documented keys, in order.
void expect_bmap_keys(const std::vector<JObject>& recs) {
  const std::vector<std::string> want = {"file_offset", "physical", "length", "shared", "poisoned", "unwritten"};
  for (const JObject& r : recs) EXPECT_EQ(r.keys(), want);
}

// ---- cp ------------------------------------------------------------------------

class ReflinkCp : public ReflinkTest {};

TEST_F(ReflinkCp, PlainCpSharesExtentsThroughCopyFileRange) {
  const std::string src = path("src.bin"), dst = path("dst.bin");
  const std::string data = random_bytes((8u << 20) + 1000, 1);  // an unaligned tail too
  ASSERT_TRUE(write_file(src, data));
  const uint64_t before = free_blocks(mnt());

  const std::string log = dir() + "/cp.strace";
  RunResult cp = run("strace -f -qq -e trace=copy_file_range,ioctl -o " + q(log) + " cp " + q(src) + " " + q(dst));
  ASSERT_EQ(cp.exit_code, 0) << cp.both();
  const std::string trace = read_file(log);
  // coreutils 9 first tries FICLONE, which never reaches a FUSE filesystem,
  // then copies with copy_file_range, which the daemon turns into a reflink.
  std::regex cfr(R"(copy_file_range\([^)]*\) = (\d+))");
  uint64_t copied = 0;
  int calls = 0;
  for (auto it = std::sregex_iterator(trace.begin(), trace.end(), cfr); it != std::sregex_iterator(); ++it) {
    copied += std::stoull((*it)[1]);
    ++calls;
  }
  EXPECT_GE(calls, 1) << trace;
  EXPECT_EQ(copied, data.size()) << trace;
  std::smatch ficlone;
  if (std::regex_search(trace, ficlone, std::regex(R"(ioctl\([^)]*FICLONE[^)]*\) = (.*))"))) {
    EXPECT_NE(ficlone[1].str().find("EOPNOTSUPP"), std::string::npos) << trace;
  }

  const uint64_t after = free_blocks(mnt());
  EXPECT_LE(before - std::min(before, after), 4u) << "cp allocated " << before - after << " blocks";
  EXPECT_EQ(read_file(dst), data);

  std::vector<JObject> a = bmap(src), b = bmap(dst);
  ASSERT_FALSE(a.empty());
  expect_bmap_keys(a);
  expect_bmap_keys(b);
  ASSERT_EQ(a.size(), b.size());
  uint64_t mapped = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].num("file_offset"), b[i].num("file_offset"));
    EXPECT_EQ(a[i].num("physical"), b[i].num("physical"));
    EXPECT_EQ(a[i].num("length"), b[i].num("length"));
    EXPECT_EQ(a[i].flag("shared"), 1);
    EXPECT_EQ(b[i].flag("shared"), 1);
    EXPECT_EQ(b[i].flag("poisoned"), 0);
    mapped += b[i].num("length");
  }
  EXPECT_EQ(mapped, (data.size() + kBlock - 1) / kBlock * kBlock);
}

// ---- a 1 GiB file --------------------------------------------------------------

// Runs on a 2 GiB image on /dev/shm (in RAM, like the embedded default): the
// fixture's image is replaced by a link to it before remounting.
class ReflinkBig : public ReflinkTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(ReflinkTest::SetUp());
    char tmpl[] = "/dev/shm/poisonfs-reflink.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << std::strerror(errno);
    shm_dir_ = tmpl;
    unmount();
    std::string big = shm_dir_ + "/image";
    RunResult mkfs = run(q(bin("mkfs.poisonfs")) + " " + q(big) + " 2G");
    ASSERT_EQ(mkfs.exit_code, 0) << mkfs.both();
    ASSERT_EQ(unlink(image().c_str()), 0);
    ASSERT_EQ(symlink(big.c_str(), image().c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(mount());
  }
  void TearDown() override {
    ReflinkTest::TearDown();
    if (!shm_dir_.empty()) run("rm -rf " + q(shm_dir_));
  }
  std::string shm_dir_;
};

TEST_F(ReflinkBig, CpOfOneGibFileUsesNoNewSpace) {
  const std::string src = path("big.bin"), dst = path("big.copy");
  const size_t kChunk = 1u << 20, kChunks = 1024;
  std::string chunk = random_bytes(kChunk, 7);
  int fd = open(src.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  for (size_t i = 0; i < kChunks; ++i) {
    std::memcpy(chunk.data(), &i, sizeof i);  // every MiB differs
    ASSERT_EQ(pwrite(fd, chunk.data(), kChunk, static_cast<off_t>(i * kChunk)), static_cast<ssize_t>(kChunk))
        << std::strerror(errno);
  }
  ASSERT_EQ(close(fd), 0);
  ASSERT_EQ(file_size(src), kChunk * kChunks);

  const uint64_t before = free_blocks(mnt());
  auto t0 = std::chrono::steady_clock::now();
  RunResult cp = run("cp " + q(src) + " " + q(dst));
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(cp.exit_code, 0) << cp.both();
  const uint64_t after = free_blocks(mnt());
  EXPECT_LE(before - std::min(before, after), 8u) << "cp of 1 GiB allocated " << before - after << " blocks";
  RecordProperty("cp_1gib_ms", std::to_string(ms));
  EXPECT_EQ(file_size(dst), kChunk * kChunks);

  std::vector<JObject> a = bmap(src), b = bmap(dst);
  ASSERT_FALSE(a.empty());
  ASSERT_EQ(a.size(), b.size());
  uint64_t mapped = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].num("physical"), b[i].num("physical"));
    EXPECT_EQ(b[i].flag("shared"), 1);
    mapped += b[i].num("length");
  }
  EXPECT_EQ(mapped, kChunk * kChunks);
  // Spot checks of the bytes (reading all 2 GiB back would dominate the test).
  for (size_t i : {size_t{0}, size_t{511}, kChunks - 1}) {
    std::memcpy(chunk.data(), &i, sizeof i);
    EXPECT_EQ(read_range(dst, i * kChunk, kChunk), chunk) << "MiB " << i;
  }
}

// ---- 1,000 clones of one file ------------------------------------------------

class ReflinkFanout : public ReflinkTest {};

TEST_F(ReflinkFanout, FsmapOfOneBlockNamesAll1001Owners) {
  const std::string src = path("source.bin");
  const std::string data = random_bytes(64 * 1024, 3);
  ASSERT_TRUE(write_file(src, data));
  ASSERT_EQ(mkdir(path("fan").c_str(), 0755), 0);

  std::set<std::string> want = {"/source.bin"};
  // 997 clones through the ioctl directly, 3 through the command.
  int src_fd = open(src.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(src_fd, 0);
  for (int i = 0; i < 997; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "fan/f%04d", i);
    int fd = open(path(name).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << name << ": " << std::strerror(errno);
    ASSERT_EQ(clone_ioctl(fd, src_fd, 0, 0, 0), 0) << name;
    close(fd);
    want.insert(std::string("/") + name);
  }
  close(src_fd);
  for (int i = 0; i < 3; ++i) {
    std::string name = "fan/cli" + std::to_string(i);
    RunResult r = ctl("reflink " + q(src) + " " + q(path(name)));
    ASSERT_EQ(r.exit_code, 0) << r.both();
    EXPECT_EQ(read_file(path(name)), data);
    want.insert("/" + name);
  }
  // A second name of one clone: its record lists both.
  ASSERT_EQ(link(path("fan/f0000").c_str(), path("fan/zz-link").c_str()), 0);
  EXPECT_EQ(read_file(path("fan/f0500")), data);

  std::vector<JObject> src_map = bmap(src);
  ASSERT_EQ(src_map.size(), 1u);
  const uint64_t block = src_map[0].num("physical") + kBlock;  // the file's second block

  auto t0 = std::chrono::steady_clock::now();
  RunResult r = ctl("fsmap --json " + q(mnt()) + " " + std::to_string(block) + " 4K");
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.both();
  RecordProperty("fsmap_1001_owners_ms", std::to_string(ms));
  std::vector<JObject> recs = parse_records(r.out);
  ASSERT_EQ(recs.size(), 1001u);
  std::set<std::string> got;
  std::set<uint64_t> inodes;
  for (const JObject& rec : recs) {
    EXPECT_EQ(rec.num("physical"), block);
    EXPECT_EQ(rec.num("length"), kBlock);
    EXPECT_EQ(rec.str("owner"), "data");
    EXPECT_EQ(rec.num("file_offset"), kBlock);
    EXPECT_EQ(rec.flag("shared"), 1);
    EXPECT_EQ(rec.flag("poisoned"), 0);
    inodes.insert(rec.num("inode"));
    const std::string p = rec.str("path");
    EXPECT_TRUE(p.starts_with("/")) << p;
    if (const JValue* all = rec.get("paths")) {
      EXPECT_EQ(all->strings, (std::vector<std::string>{"/fan/f0000", "/fan/zz-link"}));
      EXPECT_EQ(p, "/fan/f0000");
    }
    got.insert(p);
  }
  EXPECT_EQ(inodes.size(), 1001u);
  EXPECT_EQ(got, want);

  // The human table names the owners too.
  RunResult human = ctl("fsmap " + q(mnt()) + " " + std::to_string(block) + " 4096");
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_EQ(count_lines(human.out), 1001u + 2);  // heading, rows, summary
  EXPECT_NE(human.out.find("/fan/f0000 (+1 more)"), std::string::npos);
  EXPECT_NE(human.out.find("/fan/cli2"), std::string::npos);
}

// ---- bad input -------------------------------------------------------------------

class ReflinkBadInput : public ReflinkTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(ReflinkTest::SetUp());
    src_ = path("src");
    dst_ = path("dst");
    ASSERT_TRUE(write_file(src_, random_bytes(64 * 1024, 11)));
    ASSERT_TRUE(write_file(dst_, random_bytes(64 * 1024, 12)));
  }
  // Runs `poisonctl reflink ARGS`, expects exit 1 and the errno's name on
  // one line, and that neither file changed.
  void expect_refused(const std::string& args, const std::string& err_name) {
    SCOPED_TRACE("reflink " + args);
    std::string s0 = snapshot(src_), d0 = snapshot(dst_);
    RunResult r = ctl("reflink " + args);
    EXPECT_EQ(r.exit_code, 1) << r.both();
    EXPECT_NE(r.err.find("(" + err_name + ")"), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(snapshot(src_), s0);
    EXPECT_EQ(snapshot(dst_), d0);
  }
  std::string src_, dst_;
};

TEST_F(ReflinkBadInput, UnalignedRangesAreEinval) {
  const std::string files = q(src_) + " " + q(dst_);
  expect_refused(files + " --range 100 0 4096", "EINVAL");
  expect_refused(files + " --range 0 100 4096", "EINVAL");
  expect_refused(files + " --range 0 0 1000", "EINVAL");  // unaligned LEN not at EOF
  expect_refused(files + " --range 4K 8K 6K", "EINVAL");
}

TEST_F(ReflinkBadInput, RangesPastEofAreEinval) {
  const std::string files = q(src_) + " " + q(dst_);
  expect_refused(files + " --range 64K 0 4K", "EINVAL");
  expect_refused(files + " --range 128K 0 0", "EINVAL");
  expect_refused(files + " --range 60K 0 8K", "EINVAL");
  // A range whose end overflows 64 bits.
  expect_refused(files + " --range 0 18446744073709547520 4096", "EINVAL");
  expect_refused(files + " --range 0 0 18446744073709551615", "EINVAL");
}

TEST_F(ReflinkBadInput, OverlappingRangesOfOneFileAreEinval) {
  expect_refused(q(src_) + " " + q(src_) + " --range 0 4K 8K", "EINVAL");
  expect_refused(q(src_) + " " + q(src_) + " --range 8K 0 16K", "EINVAL");
  expect_refused(q(src_) + " " + q(src_) + " --range 0 0 4K", "EINVAL");
  expect_refused(q(src_) + " " + q(src_), "EINVAL");  // the whole file onto itself
}

TEST_F(ReflinkBadInput, DirectoriesAreEisdir) {
  ASSERT_EQ(mkdir(path("dir").c_str(), 0755), 0);
  expect_refused(q(path("dir")) + " " + q(dst_), "EISDIR");
  expect_refused(q(src_) + " " + q(path("dir")), "EISDIR");
  expect_refused(q(path("dir")) + " " + q(dst_) + " --range 0 0 4096", "EISDIR");
  // A DST the command created for a failed clone is removed again.
  RunResult r = ctl("reflink " + q(path("dir")) + " " + q(path("new")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("EISDIR"), std::string::npos) << r.err;
  EXPECT_EQ(access(path("new").c_str(), F_OK), -1);
}

TEST_F(ReflinkBadInput, SourcesOutsideThisMountAreExdev) {
  // A file on another filesystem (the test's temporary directory).
  const std::string outside = dir() + "/outside.bin";
  ASSERT_TRUE(write_file(outside, random_bytes(8192, 5)));
  expect_refused(q(outside) + " " + q(dst_), "EXDEV");
  expect_refused(q(outside) + " " + q(dst_) + " --range 0 0 4096", "EXDEV");
  // Shorter than a block and than DST (the command cuts DST before such a
  // clone): refused before anything is cut.
  const std::string small = dir() + "/small.bin";
  ASSERT_TRUE(write_file(small, "tiny"));
  expect_refused(q(small) + " " + q(dst_), "EXDEV");

  // A file on a second poisonfs mount.
  const std::string image2 = dir() + "/image2", mnt2 = dir() + "/mnt2";
  ASSERT_EQ(mkdir(mnt2.c_str(), 0755), 0);
  RunResult mk = run(q(bin("mkfs.poisonfs")) + " " + q(image2) + " 64M");
  ASSERT_EQ(mk.exit_code, 0) << mk.both();
  RunResult up = run(q(bin("poisonfs")) + " " + q(image2) + " " + q(mnt2));
  ASSERT_EQ(up.exit_code, 0) << up.both();
  ASSERT_TRUE(is_poisonfs_mounted(mnt2));
  ASSERT_TRUE(write_file(mnt2 + "/other", random_bytes(8192, 6)));
  expect_refused(q(mnt2 + "/other") + " " + q(dst_), "EXDEV");
  expect_refused(q(src_) + " " + q(mnt2 + "/other") + " --range 0 0 4096", "EXDEV");
  RunResult down = run("fusermount3 -u " + q(mnt2));
  EXPECT_EQ(down.exit_code, 0) << down.both();
  for (int i = 0; i < 2000 && !image_unlocked(image2); ++i) usleep(5000);
  EXPECT_TRUE(image_unlocked(image2));
}

TEST_F(ReflinkBadInput, DescriptorsWithoutTheRightAccessAreEbadf) {
  const std::string s0 = snapshot(src_), d0 = snapshot(dst_);
  int src_ro = open(src_.c_str(), O_RDONLY | O_CLOEXEC);
  int src_wo = open(src_.c_str(), O_WRONLY | O_CLOEXEC);
  int src_path = open(src_.c_str(), O_PATH | O_CLOEXEC);
  int dst_ro = open(dst_.c_str(), O_RDONLY | O_CLOEXEC);
  int dst_rw = open(dst_.c_str(), O_RDWR | O_CLOEXEC);
  int dst_append = open(dst_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(dst_append, 0);
  ASSERT_GE(src_ro, 0);
  ASSERT_GE(src_wo, 0);
  ASSERT_GE(src_path, 0);
  ASSERT_GE(dst_ro, 0);
  ASSERT_GE(dst_rw, 0);
  EXPECT_EQ(clone_ioctl(dst_ro, src_ro, 0, 0, 0), EBADF);    // destination not open for writing
  EXPECT_EQ(clone_ioctl(dst_append, src_ro, 0, 0, 0), EBADF);  // append-only destination
  EXPECT_EQ(clone_ioctl(dst_rw, src_wo, 0, 0, 0), EBADF);    // source not open for reading
  EXPECT_EQ(clone_ioctl(dst_rw, src_path, 0, 0, 0), EBADF);  // O_PATH grants no reading
  EXPECT_EQ(clone_ioctl(dst_rw, 1000000, 0, 0, 0), EBADF);   // no such descriptor
  EXPECT_EQ(clone_ioctl(dst_rw, -1, 0, 0, 0), EBADF);
  for (int fd : {src_ro, src_wo, src_path, dst_ro, dst_rw, dst_append}) close(fd);
  EXPECT_EQ(snapshot(src_), s0);
  EXPECT_EQ(snapshot(dst_), d0);
}

// ---- the command itself ---------------------------------------------------------

class ReflinkCli : public ReflinkTest {};

TEST_F(ReflinkCli, WholeFilesAndRanges) {
  const std::string src = path("src");
  const std::string data = random_bytes(3 * kBlock + 123, 21);  // unaligned size
  ASSERT_TRUE(write_file(src, data));

  // A new DST gets SRC's bytes and shares all of its blocks.
  RunResult r = ctl("reflink " + q(src) + " " + q(path("new")));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_TRUE(r.out.empty() && r.err.empty()) << r.both();
  EXPECT_EQ(read_file(path("new")), data);
  std::vector<JObject> a = bmap(src), b = bmap(path("new"));
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0].num("physical"), b[0].num("physical"));
  EXPECT_EQ(b[0].flag("shared"), 1);

  // A longer DST is cut to SRC's size; a shorter one grows.
  ASSERT_TRUE(write_file(path("longer"), random_bytes(40 * kBlock + 7, 22)));
  ASSERT_TRUE(write_file(path("shorter"), random_bytes(100, 23)));
  for (const char* name : {"longer", "shorter"}) {
    std::string before = read_file(path(name));  // cached pages must not survive
    r = ctl("reflink " + q(src) + " " + q(path(name)));
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.both();
    EXPECT_EQ(file_size(path(name)), data.size()) << name;
    EXPECT_EQ(read_file(path(name)), data) << name;
  }

  // SRC shorter than one block onto a longer DST.
  ASSERT_TRUE(write_file(path("tiny"), "tiny\n"));
  r = ctl("reflink " + q(path("tiny")) + " " + q(path("longer")));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_EQ(read_file(path("longer")), "tiny\n");

  // Same size, read (and so cached) before: the new bytes show at once.
  const std::string same = path("same");
  ASSERT_TRUE(write_file(same, random_bytes(data.size(), 24)));
  EXPECT_NE(read_file(same), data);
  r = ctl("reflink " + q(src) + " " + q(same));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  EXPECT_EQ(read_file(same), data);

  // A range, with size suffixes: DST[8K, 16K) = SRC[4K, 12K), the rest kept.
  const std::string dst = path("dst");
  std::string old = random_bytes(8 * kBlock, 25);
  ASSERT_TRUE(write_file(dst, old));
  r = ctl("reflink " + q(src) + " " + q(dst) + " --range 4K 8K 8K");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  std::string want = old;
  want.replace(2 * kBlock, 2 * kBlock, data.substr(kBlock, 2 * kBlock));
  EXPECT_EQ(read_file(dst), want);
  // A range that ends at SRC's unaligned EOF, past DST's end: DST grows.
  r = ctl("reflink " + q(src) + " " + q(dst) + " --range 8K 32K 0");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  want += data.substr(2 * kBlock);
  EXPECT_EQ(read_file(dst), want);
  EXPECT_EQ(file_size(dst), 8 * kBlock + data.size() - 2 * kBlock);

  // Two ranges of one file share blocks.
  const std::string self = path("self");
  std::string self_data = random_bytes(16 * kBlock, 26);
  ASSERT_TRUE(write_file(self, self_data));
  r = ctl("reflink " + q(self) + " " + q(self) + " --range 0 8K 4K");
  ASSERT_EQ(r.exit_code, 0) << r.both();
  std::string self_want = self_data;
  self_want.replace(2 * kBlock, kBlock, self_data.substr(0, kBlock));
  EXPECT_EQ(read_file(self), self_want);
  std::vector<JObject> m = bmap(self);
  std::map<uint64_t, uint64_t> phys_at;  // file offset -> physical, per block
  for (const JObject& e : m) {
    for (uint64_t off = 0; off < e.num("length"); off += kBlock) {
      phys_at[e.num("file_offset") + off] = e.num("physical") + off;
    }
  }
  EXPECT_EQ(phys_at[0], phys_at[2 * kBlock]);
}

TEST_F(ReflinkCli, RefusesWhatIsNotOnAMount) {
  const std::string src = path("src");
  ASSERT_TRUE(write_file(src, random_bytes(8192, 31)));
  // DST outside any poisonfs mount, or the image file itself.
  for (const std::string& dst : {dir() + "/elsewhere", image()}) {
    RunResult r = ctl("reflink " + q(src) + " " + q(dst));
    EXPECT_EQ(r.exit_code, 1) << r.both();
    EXPECT_NE(r.err.find("reflink works only through a mount"), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  }
  EXPECT_EQ(access((dir() + "/elsewhere").c_str(), F_OK), -1);

  RunResult b = ctl("bmap " + q(dir() + "/daemon.log"));
  EXPECT_EQ(b.exit_code, 1) << b.both();
  EXPECT_NE(b.err.find("--image IMAGE PATH"), std::string::npos) << b.err;

  // Usage errors exit 2.
  EXPECT_EQ(ctl("reflink").exit_code, 2);
  EXPECT_EQ(ctl("reflink " + q(src)).exit_code, 2);
  EXPECT_EQ(ctl("reflink " + q(src) + " " + q(path("x")) + " --range 0 0").exit_code, 2);
  EXPECT_EQ(ctl("reflink " + q(src) + " " + q(path("x")) + " --range 0 0 12Q").exit_code, 2);
  EXPECT_EQ(ctl("bmap").exit_code, 2);
  EXPECT_EQ(ctl("bmap --bogus " + q(src)).exit_code, 2);
  EXPECT_EQ(ctl("fsmap").exit_code, 2);
  EXPECT_EQ(ctl("fsmap " + q(mnt()) + " 0 4096 9").exit_code, 2);
  EXPECT_EQ(ctl("fsmap " + q(mnt()) + " 1X").exit_code, 2);
  EXPECT_EQ(access(path("x").c_str(), F_OK), -1);
}

// ---- permissions -----------------------------------------------------------------

class ReflinkPermissions : public ReflinkTest {};

TEST_F(ReflinkPermissions, UnprivilegedCallers) {
  const std::string secret = path("secret"), open_file = path("public");
  const std::string secret_data = random_bytes(3 * kBlock, 41), public_data = random_bytes(5 * kBlock, 42);
  ASSERT_TRUE(write_file(secret, secret_data, 0600));
  ASSERT_EQ(chmod(secret.c_str(), 0600), 0);
  ASSERT_TRUE(write_file(open_file, public_data, 0644));
  ASSERT_EQ(mkdir(path("pub").c_str(), 0777), 0);
  ASSERT_EQ(chmod(path("pub").c_str(), 0777), 0);
  const std::string mine = path("pub/mine"), stolen = path("pub/stolen");

  // Each step returns its own code, so a failure says which one.
  int rc = as_user(kNobody, kNogroup, [&]() -> int {
    int fd = open(open_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 10;
    auto map = std::make_unique<poisonfs_fsmap>();
    std::memset(map.get(), 0, sizeof *map);
    map->length = UINT64_MAX;
    if (ioctl(fd, POISONFS_IOC_FSMAP, map.get()) == 0 || errno != EPERM) return 11;
    auto names = std::make_unique<poisonfs_paths>();
    std::memset(names.get(), 0, sizeof *names);
    names->inode = 1;
    if (ioctl(fd, POISONFS_IOC_PATHS, names.get()) == 0 || errno != EPERM) return 12;
    auto blocks = std::make_unique<poisonfs_bmap>();
    std::memset(blocks.get(), 0, sizeof *blocks);
    if (ioctl(fd, POISONFS_IOC_BMAP, blocks.get()) != 0) return 13;
    if (blocks->count != 1 || !(blocks->flags & POISONFS_OF_LAST) || blocks->recs[0].length != 5 * kBlock) return 14;

    // The secret cannot be opened, and the ioctl offers no way around it.
    if (open(secret.c_str(), O_RDONLY | O_CLOEXEC) >= 0 || errno != EACCES) return 20;
    int opath = open(secret.c_str(), O_PATH | O_CLOEXEC);  // needs only search permission
    if (opath < 0) return 21;
    int out = open(stolen.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0) return 22;
    if (clone_ioctl(out, opath, 0, 0, 0) != EBADF) return 23;
    close(out);

    // A file it can read may be reflinked into its own.
    int own = open(mine.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (own < 0) return 30;
    if (int err = clone_ioctl(own, fd, 0, 0, 0); err != 0) return 31;
    close(own);
    close(fd);
    return 0;
  });
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(read_file(mine), public_data);
  EXPECT_EQ(file_size(stolen), 0u);
  struct stat st {};
  ASSERT_EQ(stat(mine.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kNobody);

  // The command as that user: fsmap is refused with a clear line, bmap works.
  const std::string as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  RunResult f = run(as_nobody + q(bin("poisonctl")) + " fsmap --json " + q(mnt()));
  EXPECT_EQ(f.exit_code, 1) << f.both();
  EXPECT_NE(f.err.find("EPERM"), std::string::npos) << f.err;
  EXPECT_TRUE(f.out.empty()) << f.out;
  RunResult b = run(as_nobody + q(bin("poisonctl")) + " bmap --json " + q(mine));
  EXPECT_EQ(b.exit_code, 0) << b.both();
  std::vector<JObject> recs = parse_records(b.out);
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].flag("shared"), 1);
}

// ---- the packed fsmap page ---------------------------------------------------

class ReflinkPackedFsmap : public ReflinkTest {};

// POISONFS_IOC_FSMAP_PACKED (what `poisonctl fsmap` asks) pages through a
// listing of several packed pages and says exactly what POISONFS_IOC_FSMAP
// and POISONFS_IOC_PATHS say, record for record and name for name.
TEST_F(ReflinkPackedFsmap, PagesMatchTheFixedRecordsAndPaths) {
  // 6,000 blocks with every other one punched: 3,000 extents and 3,000
  // free gaps, several packed pages; plus shared blocks and hard links.
  const std::string frag = path("fragmented");
  int fd = open(frag.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fallocate(fd, 0, 0, 6000 * kBlock), 0);
  for (uint64_t b = 1; b < 6000; b += 2)
    ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, b * kBlock, kBlock), 0);
  ASSERT_TRUE(write_file(path("shared"), random_bytes(8 * kBlock, 61)));
  ASSERT_EQ(mkdir(path("clones").c_str(), 0755), 0);
  for (int i = 0; i < 50; ++i)
    ASSERT_EQ(ctl("reflink " + q(path("shared")) + " " + q(path("clones/c" + std::to_string(i)))).exit_code, 0);
  ASSERT_EQ(link(path("clones/c3").c_str(), path("c3-again").c_str()), 0);

  // The packed pages, decoded.
  std::vector<FsmapEntry> packed;
  std::map<Ino, std::vector<std::string>> packed_paths;
  auto page = std::make_unique<poisonfs_fsmap_packed>();
  std::memset(page.get(), 0, sizeof *page);
  page->length = UINT64_MAX;
  int pages = 0;
  for (;;) {
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_FSMAP_PACKED, page.get()), 0) << strerror(errno);
    ++pages;
    ASSERT_LE(page->used, sizeof page->buf);
    ASSERT_GT(page->count, 0u);
    Status st = unpack_fsmap({page->buf, page->used}, page->count, packed,
                             [&](Ino ino, bool sent, std::span<const std::string> names) {
                               EXPECT_TRUE(sent) << ino;
                               packed_paths[ino].assign(names.begin(), names.end());
                             });
    ASSERT_TRUE(st) << st.error().to_string();
    if (page->flags & POISONFS_OF_LAST) break;
  }
  EXPECT_GE(pages, 3);

  // The fixed-size records.
  std::vector<poisonfs_fsmap_rec> fixed;
  auto map = std::make_unique<poisonfs_fsmap>();
  std::memset(map.get(), 0, sizeof *map);
  map->length = UINT64_MAX;
  for (;;) {
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_FSMAP, map.get()), 0) << strerror(errno);
    fixed.insert(fixed.end(), map->recs, map->recs + map->count);
    if (map->flags & POISONFS_OF_LAST) break;
  }
  ASSERT_EQ(packed.size(), fixed.size());
  EXPECT_GT(packed.size(), 6000u);
  std::set<Ino> data_owners;
  for (size_t i = 0; i < fixed.size(); ++i) {
    const FsmapEntry& p = packed[i];
    const poisonfs_fsmap_rec& f = fixed[i];
    ASSERT_EQ(p.physical, f.physical) << i;
    ASSERT_EQ(p.length, f.length) << i;
    ASSERT_EQ(static_cast<uint32_t>(p.owner), f.owner) << i;
    ASSERT_EQ(p.shared, (f.flags & POISONFS_FSMAP_SHARED) != 0) << i;
    ASSERT_EQ(p.poisoned, (f.flags & POISONFS_FSMAP_POISONED) != 0) << i;
    if (fsmap_owner_has_inode(p.owner)) {
      ASSERT_EQ(p.ino, f.inode) << i;
    }
    if (p.owner == FsmapOwner::kData) {
      ASSERT_EQ(p.file_offset, f.file_offset) << i;
      data_owners.insert(p.ino);
    }
  }
  // Every data owner named, with every one of its names.
  for (Ino ino : data_owners) {
    auto names = std::make_unique<poisonfs_paths>();
    std::memset(names.get(), 0, sizeof *names);
    names->inode = ino;
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_PATHS, names.get()), 0);
    std::vector<std::string> want;
    for (const char* at = names->buf; want.size() < names->count; at += std::strlen(at) + 1) want.emplace_back(at);
    ASSERT_TRUE(packed_paths.contains(ino)) << ino;
    std::vector<std::string> got = packed_paths[ino];
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want) << ino;
  }
  EXPECT_EQ(packed_paths.size(), data_owners.size());
  close(fd);
}

// A file with more names than any one reply holds: 150 hard links with
// 200-byte names in a directory with a 200-byte name, 60 KB of paths. The
// packed page marks them not sent, PATHS_BATCH has no room for them
// (done = 0), PATHS_FROM pages through them: fsmap names every one.
TEST_F(ReflinkPackedFsmap, AnInodeWithMoreNamesThanAPageIsNamedWhole) {
  const std::string dir = std::string(200, 'd');
  ASSERT_EQ(mkdir(path(dir).c_str(), 0755), 0);
  ASSERT_TRUE(write_file(path(dir + "/f"), random_bytes(kBlock, 81)));
  std::vector<std::string> want = {"/" + dir + "/f"};
  for (int i = 0; i < 150; ++i) {
    std::string name = std::to_string(1000 + i) + std::string(196, 'n');
    ASSERT_EQ(link(path(dir + "/f").c_str(), path(dir + "/" + name).c_str()), 0) << i;
    want.push_back("/" + dir + "/" + name);
  }
  std::sort(want.begin(), want.end());
  const uint64_t block = bmap(path(dir + "/f")).at(0).num("physical");
  std::vector<JObject> recs = fsmap(mnt(), std::to_string(block) + " 4096");
  ASSERT_EQ(recs.size(), 1u);
  const JValue* paths = recs[0].get("paths");
  ASSERT_NE(paths, nullptr);
  EXPECT_EQ(paths->strings, want);
  EXPECT_EQ(recs[0].str("path"), want.front());
  RunResult human = ctl("fsmap " + q(mnt()) + " " + std::to_string(block) + " 4096");
  EXPECT_NE(human.out.find(want.front() + " (+150 more)"), std::string::npos) << human.out;

  // The ioctl itself: pages that end where the next begins, then nothing.
  int fd = open(mnt().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto from = std::make_unique<poisonfs_paths_from>();
  std::memset(from.get(), 0, sizeof *from);
  struct stat st {};
  ASSERT_EQ(stat(path(dir + "/f").c_str(), &st), 0);
  from->inode = st.st_ino;
  size_t pages = 0, names = 0;
  for (;;) {
    from->skip = static_cast<uint32_t>(names);
    ASSERT_EQ(ioctl(fd, POISONFS_IOC_PATHS_FROM, from.get()), 0) << strerror(errno);
    ++pages;
    names += from->count;
    if (from->flags & POISONFS_OF_LAST) break;
    ASSERT_GT(from->count, 0u);
  }
  EXPECT_EQ(names, want.size());
  EXPECT_GE(pages, 4u);
  from->skip = 1000;
  ASSERT_EQ(ioctl(fd, POISONFS_IOC_PATHS_FROM, from.get()), 0);
  EXPECT_EQ(from->count, 0u);
  EXPECT_TRUE(from->flags & POISONFS_OF_LAST);
  from->inode = 1u << 30;  // no such inode
  EXPECT_NE(ioctl(fd, POISONFS_IOC_PATHS_FROM, from.get()), 0);
  close(fd);
}

// As the other control ioctls: root and the user who mounted only.
TEST_F(ReflinkPackedFsmap, UnprivilegedCallersGetEperm) {
  ASSERT_TRUE(write_file(path("f"), random_bytes(kBlock, 62)));
  ASSERT_EQ(chmod(path("f").c_str(), 0644), 0);
  const std::string file = path("f");
  int rc = as_user(kNobody, kNogroup, [&]() -> int {
    int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 10;
    auto page = std::make_unique<poisonfs_fsmap_packed>();
    std::memset(page.get(), 0, sizeof *page);
    page->length = UINT64_MAX;
    if (ioctl(fd, POISONFS_IOC_FSMAP_PACKED, page.get()) == 0 || errno != EPERM) return 11;
    close(fd);
    return 0;
  });
  EXPECT_EQ(rc, 0);
}

// ---- offline views -------------------------------------------------------------

class ReflinkOffline : public ReflinkTest {
 protected:
  // Files of every kind of owner: shared and private data, a hole, a
  // directory with enough entries for several directory blocks, an xattr,
  // a hard link, and enough small files that fsmap takes several pages.
  void populate() {
    ASSERT_TRUE(write_file(path("a"), random_bytes(1 << 20, 51)));
    ASSERT_EQ(ctl("reflink " + q(path("a")) + " " + q(path("b"))).exit_code, 0);
    ASSERT_TRUE(write_file(path("c"), random_bytes(64 * kBlock, 52)));
    ASSERT_EQ(ctl("reflink " + q(path("a")) + " " + q(path("c")) + " --range 128K 16K 32K").exit_code, 0);
    int fd = open(path("c").c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 40 * kBlock, 4 * kBlock), 0);
    ASSERT_EQ(pwrite(fd, "overwritten", 11, 17 * kBlock + 5), 11);  // copy-on-write of a shared block
    close(fd);
    ASSERT_EQ(setxattr(path("c").c_str(), "user.note", "hello", 5, 0), 0);
    ASSERT_EQ(mkdir(path("many").c_str(), 0755), 0);
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(write_file(path("many/f" + std::to_string(i)), random_bytes(100 + i * 37, 100 + i)));
    }
    ASSERT_EQ(link(path("many/f7").c_str(), path("f7-again").c_str()), 0);
    ASSERT_EQ(unlink(path("many/f8").c_str()), 0);  // a free gap
  }
};

// A listing longer than the 16 KiB poisonctl streams out at a time, into a
// full disk: the write error is said (once) and the exit code is not 0,
// for both tables; a pipe that takes everything gets the whole listing.
TEST_F(ReflinkOffline, WriteErrorsOfLongListingsAreReported) {
  // 2,000 extents and as many free gaps: ~4,000 records, ~500 KB of JSON.
  int fd = open(path("fragmented").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fallocate(fd, 0, 0, 4000 * kBlock), 0);
  for (uint64_t b = 1; b < 4000; b += 2)
    ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, b * kBlock, kBlock), 0);
  close(fd);
  RunResult whole = ctl("fsmap --json " + q(mnt()));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  ASSERT_GT(whole.out.size(), 3u << 16);  // several flushes
  EXPECT_EQ(whole.out.substr(whole.out.size() - 4), "}\n]\n");
  EXPECT_GT(parse_records(whole.out).size(), 4000u);
  RunResult piped = run(q(bin("poisonctl")) + " fsmap --json " + q(mnt()) + " | cat");
  EXPECT_EQ(piped.out, whole.out);
  for (const std::string& json : {std::string(" --json"), std::string()}) {
    RunResult full = run(q(bin("poisonctl")) + " fsmap" + json + " " + q(mnt()) + " >/dev/full");
    EXPECT_EQ(full.exit_code, 1) << json;
    EXPECT_NE(full.err.find("write error"), std::string::npos) << full.err;
    EXPECT_EQ(count_lines(full.err), 1u) << full.err;
  }
}

// Short outputs sit in stdio's buffer until exit: a write error there is
// reported (exit 1) as for a long listing, not lost with exit 0.
TEST_F(ReflinkOffline, WriteErrorsOfShortOutputsAreReported) {
  ASSERT_TRUE(write_file(path("one"), random_bytes(kBlock, 5)));
  for (const std::string& cmd : {std::string("help"), "stat " + q(mnt()), "stat --json " + q(mnt()), "bmap " + q(path("one")),
                                 "bmap --json " + q(path("one")), "fsmap " + q(mnt()) + " 0 4096"}) {
    RunResult ok = ctl(cmd);
    ASSERT_EQ(ok.exit_code, 0) << cmd << ": " << ok.err;
    ASSERT_FALSE(ok.out.empty()) << cmd;
    RunResult full = run(q(bin("poisonctl")) + " " + cmd + " >/dev/full");
    EXPECT_EQ(full.exit_code, 1) << cmd;
    EXPECT_NE(full.err.find("write error"), std::string::npos) << cmd << ": " << full.err;
  }
}

// Runs poisonctl with `args` under a seccomp filter that answers statmount
// (457) with ENOSYS, as a kernel before 6.8 would, and statx with EPERM when
// refuse_statx (as some container profiles do): poisonctl must then find
// out from stat and /proc/self/mountinfo. Output goes through files in
// `scratch`; everything the child needs is made before fork.
RunResult ctl_without_statmount(const std::string& scratch, const std::vector<std::string>& args,
                                bool refuse_statx) {
  const std::string out_path = scratch + "/ctl.out", err_path = scratch + "/ctl.err", ctl = bin("poisonctl");
  std::vector<char*> argv{const_cast<char*>(ctl.c_str())};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 457, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_statx, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, refuse_statx ? (SECCOMP_RET_ERRNO | EPERM) : SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
  pid_t pid = fork();
  if (pid == 0) {
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
      _exit(125);
    execv(argv[0], argv.data());
    _exit(127);
  }
  RunResult r;
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  std::remove(out_path.c_str());
  std::remove(err_path.c_str());
  return r;
}

// Without statmount (and without statx), poisonctl still tells a poisonfs
// mount from other directories, through /proc/self/mountinfo, and gives
// the same answers as with them.
TEST_F(ReflinkOffline, MountsAreFoundWithoutStatmount) {
  ASSERT_TRUE(write_file(path("one"), random_bytes(kBlock, 9)));
  RunResult with = ctl("fsmap --json " + q(mnt()));
  ASSERT_EQ(with.exit_code, 0) << with.err;
  for (bool refuse_statx : {false, true}) {
    SCOPED_TRACE(refuse_statx ? "statx refused" : "statmount missing");
    RunResult fsmap = ctl_without_statmount(dir(), {"fsmap", "--json", mnt()}, refuse_statx);
    ASSERT_EQ(fsmap.exit_code, 0) << fsmap.err;
    EXPECT_EQ(fsmap.out, with.out);
    RunResult bmap = ctl_without_statmount(dir(), {"bmap", path("one")}, refuse_statx);
    EXPECT_EQ(bmap.exit_code, 0) << bmap.err;
    EXPECT_NE(bmap.out.find("1 extent"), std::string::npos) << bmap.out;
    RunResult other = ctl_without_statmount(dir(), {"stat", dir()}, refuse_statx);
    EXPECT_EQ(other.exit_code, 1);
    EXPECT_NE(other.err.find("not on a poisonfs mount"), std::string::npos) << other.err;
  }
}

// Names with bytes JSON must escape (quote, backslash, control bytes) and
// names that need none, sharing one block: fsmap names each exactly,
// through the mount and offline.
TEST_F(ReflinkOffline, NamesThatNeedEscapesComeBackExactly) {
  const std::vector<std::string> names = {"plain", "q\"uote", "back\\slash", std::string("ctl\x01\x1f") + "end",
                                          "tab\tnew\nline", "utf8-\xc3\xa9"};
  ASSERT_TRUE(write_file(path("src"), random_bytes(kBlock, 71)));
  for (const std::string& n : names) ASSERT_EQ(ctl("reflink " + q(path("src")) + " " + q(path(n))).exit_code, 0) << n;
  const uint64_t block = bmap(path("src")).at(0).num("physical");
  for (bool offline : {false, true}) {
    if (offline) unmount();
    std::vector<JObject> recs = fsmap(offline ? image() : mnt(), std::to_string(block) + " 4096");
    std::set<std::string> got;
    for (const JObject& r : recs) got.insert(r.str("path"));
    std::set<std::string> want = {"/src"};
    for (const std::string& n : names) want.insert("/" + n);
    EXPECT_EQ(got, want) << (offline ? "offline" : "mounted");
  }
}

TEST_F(ReflinkOffline, ImageViewsMatchWhatTheMountReported) {
  ASSERT_NO_FATAL_FAILURE(populate());
  RunResult mounted_fsmap = ctl("fsmap --json " + q(mnt()));
  ASSERT_EQ(mounted_fsmap.exit_code, 0) << mounted_fsmap.err;
  ASSERT_GT(parse_records(mounted_fsmap.out).size(), 2u * POISONFS_FSMAP_MAX);  // several pages
  RunResult mounted_human = ctl("fsmap " + q(mnt()));
  // The image, while mounted, is asked through its mount.
  RunResult via_image = ctl("fsmap --json " + q(image()));
  EXPECT_EQ(via_image.out, mounted_fsmap.out);
  const std::vector<std::string> files = {"/a", "/b", "/c", "/many/f7", "/many/f299"};
  std::map<std::string, std::string> mounted_bmap;
  for (const std::string& f : files) {
    RunResult r = ctl("bmap --json " + q(mnt() + f));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    mounted_bmap[f] = r.out;
    RunResult through = ctl("bmap --json --image " + q(image()) + " " + q(f));
    EXPECT_EQ(through.out, r.out) << f;
  }
  // A range in the middle, through the mount.
  std::vector<JObject> a = parse_records(mounted_bmap["/a"]);
  ASSERT_FALSE(a.empty());
  const std::string range = std::to_string(a[0].num("physical") + 100 * kBlock) + " 64K";
  RunResult mounted_range = ctl("fsmap --json " + q(mnt()) + " " + range);
  ASSERT_EQ(mounted_range.exit_code, 0);

  unmount();
  RunResult offline = ctl("fsmap --json " + q(image()));
  ASSERT_EQ(offline.exit_code, 0) << offline.err;
  EXPECT_EQ(offline.out, mounted_fsmap.out);
  RunResult offline_range = ctl("fsmap --json " + q(image()) + " " + range);
  EXPECT_EQ(offline_range.out, mounted_range.out);
  for (const std::string& f : files) {
    RunResult r = ctl("bmap --json --image " + q(image()) + " " + q(f));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, mounted_bmap[f]) << f;
  }
  // The human tables agree but for the line that names the source.
  RunResult offline_human = ctl("fsmap " + q(image()));
  auto body = [](const std::string& s) { return s.substr(0, s.rfind('\n', s.size() - 2)); };
  EXPECT_EQ(body(offline_human.out), body(mounted_human.out));
  EXPECT_NE(offline_human.out.find("(image)"), std::string::npos);

  RunResult missing = ctl("bmap --image " + q(image()) + " /nope");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(count_lines(missing.err), 1u) << missing.err;
  // Queries never write the image.
  RunResult fsck = run(q(bin("fsck.poisonfs")) + " -n " + q(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

TEST_F(ReflinkOffline, WholeDeviceListingCoversEveryByteInOrder) {
  ASSERT_NO_FATAL_FAILURE(populate());
  RunResult st = ctl("stat --json " + q(mnt()));
  ASSERT_EQ(st.exit_code, 0);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(st.out, m, std::regex(R"("device_bytes": (\d+))")));
  const uint64_t device = std::stoull(m[1]);

  auto check = [&](const std::vector<JObject>& recs) {
    ASSERT_FALSE(recs.empty());
    uint64_t at = 0;  // the next byte to cover
    size_t i = 0;
    std::set<uint64_t> shared_data_inodes;
    while (i < recs.size()) {
      // One physical piece: all records at the same offset (its owners).
      const uint64_t start = recs[i].num("physical"), len = recs[i].num("length");
      ASSERT_EQ(start, at) << "record " << i << " leaves a gap or overlaps";
      ASSERT_GT(len, 0u);
      size_t j = i;
      size_t data_owners = 0;
      for (; j < recs.size() && recs[j].num("physical") == start; ++j) {
        const JObject& r = recs[j];
        EXPECT_EQ(r.num("length"), len) << "record " << j;
        EXPECT_TRUE(kOwners.count(r.str("owner"))) << r.str("owner");
        EXPECT_EQ(r.flag("poisoned"), 0);
        const std::string owner = r.str("owner");
        if (owner == "data") {
          ++data_owners;
          EXPECT_TRUE(r.str("path").starts_with("/")) << "record " << j;
          EXPECT_NE(r.num("inode"), UINT64_MAX);
          EXPECT_NE(r.num("file_offset"), UINT64_MAX);
        } else if (owner == "extents" || owner == "directory" || owner == "xattr") {
          EXPECT_NE(r.num("inode"), UINT64_MAX);
          EXPECT_FALSE(r.has("path"));
        } else {
          EXPECT_FALSE(r.has("inode"));
        }
      }
      if (j - i > 1) {
        EXPECT_EQ(data_owners, j - i) << "only data is shared, at " << start;
      }
      for (size_t k = i; k < j; ++k) {
        if (recs[k].str("owner") == "data") {
          EXPECT_EQ(recs[k].flag("shared"), data_owners > 1 ? 1 : 0);
        }
      }
      at = start + len;
      i = j;
    }
    EXPECT_EQ(at, device);
    EXPECT_EQ(recs.front().str("owner"), "superblock");
    EXPECT_EQ(recs.back().str("owner"), "superblock");
  };
  std::vector<JObject> live = fsmap(mnt());
  ASSERT_NO_FATAL_FAILURE(check(live));
  unmount();
  std::vector<JObject> offline = fsmap(image());
  ASSERT_NO_FATAL_FAILURE(check(offline));
  std::set<std::string> owners;
  for (const JObject& r : offline) owners.insert(r.str("owner"));
  EXPECT_EQ(owners, kOwners);
  EXPECT_EQ(offline.size(), live.size());
}

}  // namespace
}  // namespace poisonfs::test
