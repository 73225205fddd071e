// Tests of the command-line tools (mkfs.poisonfs, fsck.poisonfs, poisonctl)
// as a user runs them: the real binaries from the build tree, real image
// files in a temporary directory, exit codes and messages checked, and a
// checksum of the image wherever a tool must not write it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "mount/mount_fixture.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;  // 128+N when killed by signal N
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs a program with stdin from /dev/null and captures stdout and stderr.
RunResult run(const fs::path& dir, const std::vector<std::string>& argv) {
  RunResult r;
  fs::path out = dir / ".stdout", err = dir / ".stderr";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = "spawn failed: " + std::string(strerror(rc));
    return r;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

std::string bin(const std::string& name) { return std::string(POISONFS_BIN_DIR) + "/" + name; }

// FNV-1a over the whole file plus its length: enough to see any write.
uint64_t checksum(const fs::path& p) {
  std::string data = slurp(p);
  uint64_t h = 1469598103934665603ull ^ data.size();
  for (unsigned char c : data) h = (h ^ c) * 1099511628211ull;
  return h;
}

size_t count_lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

uint64_t json_number(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\": ([0-9]+)");
  if (!std::regex_search(json, m, re)) return UINT64_MAX;
  return std::stoull(m[1]);
}

std::string json_text(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\": \"([^\"]*)\"");
  if (!std::regex_search(json, m, re)) return {};
  return m[1];
}

void write_file(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// A fresh directory per test, removed at the end even when the test fails.
// Images live on /dev/shm like the embedded default (RAM, like pmem).
class ToolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string base = fs::is_directory("/dev/shm") ? "/dev/shm" : fs::temp_directory_path();
    std::string tmpl = base + "/poisonfs-tools.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  RunResult tool(const std::string& name, std::vector<std::string> args) {
    args.insert(args.begin(), bin(name));
    return run(dir_, args);
  }
  RunResult mkfs(std::vector<std::string> args) { return tool("mkfs.poisonfs", std::move(args)); }
  RunResult fsck(std::vector<std::string> args) { return tool("fsck.poisonfs", std::move(args)); }
  RunResult ctl(std::vector<std::string> args) { return tool("poisonctl", std::move(args)); }

  // Makes a fresh 64 MiB image and returns its path.
  std::string fresh_image(const std::string& name = "fs.img") {
    std::string img = path(name);
    RunResult r = mkfs({img, "64M"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return img;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

class MkfsTool : public ToolTest {};
class FsckTool : public ToolTest {};
class PoisonctlTool : public ToolTest {};

// ---- mkfs.poisonfs ----------------------------------------------------------

TEST_F(MkfsTool, CreatesMissingFile) {
  std::string img = path("new.img");
  ASSERT_FALSE(fs::exists(img));
  RunResult r = mkfs({img, "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(fs::file_size(img), 64u << 20);
  struct stat st {};
  ASSERT_EQ(stat(img.c_str(), &st), 0);
  mode_t mask = umask(0);
  umask(mask);
  EXPECT_EQ(st.st_mode & 0777, 0600u & ~mask);  // the image holds every file's bytes
  EXPECT_NE(r.out.find("uuid"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("checksums:"), std::string::npos) << r.out;
  EXPECT_EQ(slurp(img).substr(0, 8), "POISONFS");
}

TEST_F(MkfsTool, NoChecksumsMakesAnImageWithoutTheRegion) {
  std::string img = path("nocsum.img");
  RunResult r = mkfs({"--no-checksums", img, "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("checksums:   none"), std::string::npos) << r.out;
  RunResult s = ctl({"stat", "--json", img});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_NE(s.out.find("\"data_checksums\": false"), std::string::npos) << s.out;
  EXPECT_EQ(json_number(s.out, "csum_blocks"), 0u) << s.out;
}

TEST_F(MkfsTool, AcceptsPlainByteCount) {
  std::string img = path("bytes.img");
  RunResult r = mkfs({img, "67108864"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(fs::file_size(img), 67108864u);
}

TEST_F(MkfsTool, AcceptsBinarySuffix) {
  std::string img = path("suffix.img");
  RunResult r = mkfs({img, "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(fs::file_size(img), 67108864u);
  RunResult s = ctl({"stat", "--json", img});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(json_number(s.out, "device_bytes"), 67108864u) << s.out;
}

TEST_F(MkfsTool, JournalSizeOption) {
  std::string img = path("journal.img");
  RunResult r = mkfs({"-J", "256K", img, "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  RunResult s = ctl({"stat", "--json", img});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(json_number(s.out, "journal_blocks"), 64u) << s.out;
  EXPECT_EQ(fsck({"-n", img}).exit_code, 0);
  // Out of range or garbage: one line, nothing created or changed.
  uint64_t before = checksum(img);
  for (std::string bad : {"128K", "65M", "0", "x", "-1"}) {
    SCOPED_TRACE("-J " + bad);
    r = mkfs({"-J", bad, path("bad.img"), "64M"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_NE(r.err.find("journal size"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(path("bad.img")));
    r = mkfs({"-f", "-J", bad, img, "64M"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(checksum(img), before);
  }
}

TEST_F(MkfsTool, RefusesExistingImageWithoutForce) {
  std::string img = fresh_image();
  std::string uuid = json_text(ctl({"stat", "--json", img}).out, "uuid");
  uint64_t before = checksum(img);

  RunResult r = mkfs({img, "64M"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("already holds a poisonfs filesystem; use -f to overwrite"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_EQ(checksum(img), before);

  RunResult f = mkfs({"-f", img, "64M"});
  ASSERT_EQ(f.exit_code, 0) << f.err;
  EXPECT_NE(checksum(img), before);
  std::string new_uuid = json_text(ctl({"stat", "--json", img}).out, "uuid");
  EXPECT_FALSE(new_uuid.empty());
  EXPECT_NE(new_uuid, uuid);
  EXPECT_EQ(fsck({"-n", img}).exit_code, 0);
}

TEST_F(MkfsTool, RefusesTooSmallSize) {
  std::string img = path("small.img");
  RunResult r = mkfs({img, "100K"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("too small"), std::string::npos) << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_FALSE(fs::exists(img));

  // An existing file is left exactly as it was.
  write_file(img, "not a filesystem\n");
  uint64_t before = checksum(img);
  r = mkfs({img, "100K"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(checksum(img), before);
}

TEST_F(MkfsTool, RefusesGarbageSizes) {
  std::string img = path("garbage.img");
  std::string existing = path("existing.img");
  write_file(existing, random_bytes(8192, 1));
  uint64_t before = checksum(existing);
  for (std::string size : {"12Q", "-5", "", "M", "99999999999999999999T"}) {
    SCOPED_TRACE("size '" + size + "'");
    RunResult r = mkfs({img, size});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("mkfs.poisonfs: "), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_FALSE(fs::exists(img));
    r = mkfs({existing, size});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(checksum(existing), before);
  }
}

TEST_F(MkfsTool, RefusesBadUsage) {
  EXPECT_NE(mkfs({}).exit_code, 0);
  EXPECT_NE(mkfs({path("x.img")}).exit_code, 0);
  EXPECT_NE(mkfs({"--bogus", path("x.img"), "64M"}).exit_code, 0);
  EXPECT_FALSE(fs::exists(path("x.img")));
}

// ---- fsck.poisonfs ----------------------------------------------------------

TEST_F(FsckTool, FreshImageIsClean) {
  std::string img = fresh_image();
  uint64_t before = checksum(img);
  RunResult r = fsck({img});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("clean"), std::string::npos) << r.out;
  EXPECT_EQ(checksum(img), before);
  r = fsck({"-n", img});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

TEST_F(FsckTool, ForeignFileIsRefusedAndNeverWritten) {
  std::string img = path("foreign.img");
  write_file(img, random_bytes(4 << 20, 7));
  uint64_t before = checksum(img);
  for (auto args : {std::vector<std::string>{img}, std::vector<std::string>{"-n", img},
                    std::vector<std::string>{"-y", img}}) {
    RunResult r = fsck(args);
    EXPECT_TRUE(r.exit_code == 8 || r.exit_code == 4) << r.exit_code << r.out << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_NE(r.err.find("fsck.poisonfs: "), std::string::npos) << r.err;
    EXPECT_EQ(checksum(img), before);
  }
}

TEST_F(FsckTool, TruncatedImageIsRefusedAndNeverWritten) {
  std::string img = fresh_image();
  fs::resize_file(img, 32u << 20);
  uint64_t before = checksum(img);
  for (auto args : {std::vector<std::string>{img}, std::vector<std::string>{"-n", img}}) {
    RunResult r = fsck(args);
    EXPECT_TRUE(r.exit_code == 8 || r.exit_code == 4) << r.exit_code << r.out << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_EQ(checksum(img), before);
  }
}

TEST_F(FsckTool, MissingImageIsAnOperationalError) {
  RunResult r = fsck({path("missing.img")});
  EXPECT_EQ(r.exit_code, 8);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_FALSE(fs::exists(path("missing.img")));
}

TEST_F(FsckTool, BadUsageExits16) {
  EXPECT_EQ(fsck({}).exit_code, 16);
  EXPECT_EQ(fsck({"-Z", path("x.img")}).exit_code, 16);
  EXPECT_EQ(fsck({"-n", "-y", path("x.img")}).exit_code, 16);
}

TEST_F(FsckTool, CorruptInodeIsReportedWithoutWriting) {
  std::string img = fresh_image();
  RunResult s = ctl({"stat", "--json", img});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  uint64_t inode_start = json_number(s.out, "inode_start");
  uint64_t block_size = json_number(s.out, "block_size");
  ASSERT_NE(inode_start, UINT64_MAX) << s.out;
  ASSERT_NE(block_size, UINT64_MAX) << s.out;
  uint64_t off = inode_start * block_size + 256;
  {
    std::fstream f(img, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(off));
    f.put(static_cast<char>(c ^ 0x5a));
  }
  uint64_t before = checksum(img);
  RunResult r = fsck({"-n", img});
  EXPECT_EQ(r.exit_code, 4) << r.out << r.err;
  EXPECT_NE(r.out.find("problem"), std::string::npos) << r.out;
  EXPECT_EQ(checksum(img), before);

  // Repair either fixes it (1, then clean) or says what it left (4).
  r = fsck({"-y", img});
  EXPECT_TRUE(r.exit_code == 1 || r.exit_code == 4) << r.exit_code << r.out << r.err;
  if (r.exit_code == 1) {
    RunResult again = fsck({"-n", img});
    EXPECT_EQ(again.exit_code, 0) << again.out << again.err;
  }
}

// ---- poisonctl --------------------------------------------------------------

TEST_F(PoisonctlTool, StatImagePrintsGeometry) {
  std::string img = fresh_image();
  uint64_t before = checksum(img);
  RunResult r = ctl({"stat", img});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* key : {"device size:", "block size:", "blocks:", "journal:", "inode table:",
                          "data area:", "free:", "used:", "inodes:", "extent records:", "uuid:"}) {
    EXPECT_NE(r.out.find(key), std::string::npos) << key << "\n" << r.out;
  }
  EXPECT_NE(r.out.find("67108864"), std::string::npos) << r.out;
  EXPECT_EQ(checksum(img), before);
}

TEST_F(PoisonctlTool, StatJsonHasSnakeCaseKeys) {
  std::string img = fresh_image();
  RunResult r = ctl({"stat", "--json", img});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(count_lines(r.out), 1u) << r.out;
  EXPECT_EQ(r.out.front(), '{');
  EXPECT_EQ(json_number(r.out, "device_bytes"), 67108864u);
  EXPECT_EQ(json_number(r.out, "block_size"), 4096u);
  EXPECT_EQ(json_number(r.out, "total_blocks"), 16384u);
  for (const char* key : {"free_blocks", "inode_count", "inodes_used", "extent_records",
                          "journal_blocks", "data_blocks", "inode_start", "data_start"}) {
    EXPECT_NE(json_number(r.out, key), UINT64_MAX) << key << "\n" << r.out;
  }
  uint64_t total = json_number(r.out, "total_blocks");
  EXPECT_LE(json_number(r.out, "data_blocks"), total);
  EXPECT_LE(json_number(r.out, "free_blocks"), json_number(r.out, "data_blocks"));
  EXPECT_GE(json_number(r.out, "inodes_used"), 1u);  // the root directory
  EXPECT_EQ(json_text(r.out, "uuid").size(), 36u) << r.out;
}

TEST_F(PoisonctlTool, MissingImageIsAClearError) {
  RunResult r = ctl({"stat", path("missing.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("missing.img"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(PoisonctlTool, ForeignFileIsAClearError) {
  std::string img = path("foreign.img");
  write_file(img, random_bytes(2 << 20, 3));
  uint64_t before = checksum(img);
  RunResult r = ctl({"stat", img});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_EQ(checksum(img), before);
}

TEST_F(PoisonctlTool, UnknownCommandOrOptionExits2) {
  EXPECT_EQ(ctl({}).exit_code, 2);
  EXPECT_EQ(ctl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(ctl({"stat", "--bogus", path("x.img")}).exit_code, 2);
  EXPECT_EQ(ctl({"stat"}).exit_code, 2);
  EXPECT_EQ(ctl({"--help"}).exit_code, 0);
}

// ---- the tools against a mounted filesystem ----------------------------------

class ToolsOnMount : public poisonfs::test::MountTest {
 protected:
  RunResult tool(const std::string& name, std::vector<std::string> args) {
    args.insert(args.begin(), bin(name));
    return ::run(dir(), args);
  }
};

TEST_F(ToolsOnMount, PoisonctlStatAsksTheMountedDaemon) {
  RunResult r = tool("poisonctl", {"stat", "--json", mnt()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_text(r.out, "source"), "mount") << r.out;
  EXPECT_EQ(json_number(r.out, "block_size"), 4096u);
  EXPECT_EQ(json_number(r.out, "device_bytes"), 256u << 20) << r.out;
  uint64_t free_before = json_number(r.out, "free_blocks");
  uint64_t inodes_before = json_number(r.out, "inodes_used");

  // Usage seen through the ioctl follows writes at once.
  write_file(path("data.bin"), random_bytes(1 << 20, 5));
  RunResult after = tool("poisonctl", {"stat", "--json", path("data.bin")});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_LE(json_number(after.out, "free_blocks") + 256, free_before) << after.out;
  EXPECT_EQ(json_number(after.out, "inodes_used"), inodes_before + 1) << after.out;

  RunResult human = tool("poisonctl", {"stat", mnt()});
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_NE(human.out.find("(mount)"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("extent records:"), std::string::npos) << human.out;
}

TEST_F(ToolsOnMount, PoisonctlStatOfAMountedImageAsksItsMount) {
  RunResult r = tool("poisonctl", {"stat", "--json", image()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_text(r.out, "source"), "mount") << r.out;
  EXPECT_EQ(json_text(r.out, "mountpoint"), mnt()) << r.out;
}

// Any path to a mounted image is asked through its mount, as its own path
// is: a hard link, the image's directory bind-mounted elsewhere or reached
// through a symlink. poisonctl matches the image with a mount's source as
// the image lock does (the same file, media/image_lock.h).
TEST_F(ToolsOnMount, PoisonctlAsksTheMountForAnyPathToTheImage) {
  const std::string name = fs::path(image()).filename();
  const std::string hard = dir() + "/image-link", bound = dir() + "/bound",
                    via_symlink = dir() + "/symlinked";
  ASSERT_EQ(link(image().c_str(), hard.c_str()), 0);
  ASSERT_EQ(symlink(dir().c_str(), via_symlink.c_str()), 0);
  ASSERT_EQ(mkdir(bound.c_str(), 0755), 0);
  ASSERT_EQ(::mount(dir().c_str(), bound.c_str(), nullptr, MS_BIND, nullptr), 0) << strerror(errno);
  struct Unbind {  // before TearDown removes the directory, also after a failure
    std::string at;
    ~Unbind() { umount2(at.c_str(), MNT_DETACH); }
  } unbind{bound};
  for (const std::string& alias : {hard, bound + "/" + name, via_symlink + "/" + name}) {
    RunResult st = tool("poisonctl", {"stat", "--json", alias});
    EXPECT_EQ(st.exit_code, 0) << alias << ": " << st.err;
    EXPECT_EQ(json_text(st.out, "source"), "mount") << alias << ": " << st.out;
    EXPECT_EQ(json_text(st.out, "mountpoint"), mnt()) << alias << ": " << st.out;
    RunResult status = tool("poisonctl", {"status", "--json", alias});
    EXPECT_EQ(status.exit_code, 0) << alias << ": " << status.err;
    EXPECT_EQ(json_text(status.out, "source"), "mount") << alias << ": " << status.out;
  }
}

TEST_F(ToolsOnMount, MkfsAndFsckRefuseAMountedImage) {
  RunResult m = tool("mkfs.poisonfs", {"-f", image(), "256M"});
  EXPECT_NE(m.exit_code, 0);
  EXPECT_NE(m.err.find("in use"), std::string::npos) << m.err;
  EXPECT_EQ(count_lines(m.err), 1u) << m.err;
  RunResult f = tool("fsck.poisonfs", {image()});
  EXPECT_EQ(f.exit_code, 8) << f.out << f.err;
  EXPECT_NE(f.err.find("in use"), std::string::npos) << f.err;
  // The mount still works and, once unmounted, the image checks clean.
  write_file(path("still-here"), "yes\n");
  unmount();
  RunResult clean = tool("fsck.poisonfs", {"-n", image()});
  EXPECT_EQ(clean.exit_code, 0) << clean.out << clean.err;
  mount();
  EXPECT_EQ(slurp(path("still-here")), "yes\n");
}

// Another path to the mounted image (a hard link here; a bind mount of its
// directory is alike) is refused at once, as the image's own path is: the
// image lock waits for an exiting daemon only while no mount of that very
// file is listed, whatever path its mount was made by.
TEST_F(ToolsOnMount, AnotherPathToAMountedImageIsRefusedAtOnce) {
  const std::string alias = dir() + "/image-link";
  ASSERT_EQ(link(image().c_str(), alias.c_str()), 0);
  const std::vector<std::vector<std::string>> calls = {{"fsck.poisonfs", "-n", alias},
                                                       {"mkfs.poisonfs", "-f", alias, "256M"}};
  for (const std::vector<std::string>& call : calls) {
    const auto start = std::chrono::steady_clock::now();
    RunResult r = tool(call[0], {call.begin() + 1, call.end()});
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_NE(r.exit_code, 0) << call[0];
    EXPECT_NE(r.err.find("in use"), std::string::npos) << call[0] << ": " << r.err;
    EXPECT_LT(took, std::chrono::seconds(2)) << call[0] << " waited for a mounted image";
  }
  write_file(path("still-here"), "yes\n");
  EXPECT_EQ(slurp(path("still-here")), "yes\n");
}

}  // namespace
