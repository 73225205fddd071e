// The MountTest fixture and the process helpers of the mount tests: running
// shell commands with captured output, running code as another user, and
// making sure no mount outlives the test program.
#include "mount/mount_fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "media/image_lock.h"  // unescape_mountinfo

namespace poisonfs::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// ---------------------------------------------------------------------------
// Leftover mounts. Every directory a fixture makes is remembered here (in
// fixed storage, so that a fatal-signal handler may read it); at exit, after
// the last test, and on a fatal signal, whatever is still mounted in them is
// detached. Only this process's directories are touched: other test runs
// may be using theirs.

constexpr size_t kMaxTracked = 256;
constexpr size_t kPathMax = 256;
char g_tracked[kMaxTracked][kPathMax];
volatile sig_atomic_t g_tracked_count = 0;

// The mountpoints a test may use inside its directory.
constexpr const char* kMountNames[] = {"/mnt", "/mnt2"};

void detach_tracked_mounts() {
  for (sig_atomic_t i = 0; i < g_tracked_count; ++i) {
    for (const char* name : kMountNames) {
      char mp[kPathMax + 16];
      size_t n = strnlen(g_tracked[i], kPathMax);
      std::memcpy(mp, g_tracked[i], n);
      std::memcpy(mp + n, name, std::strlen(name) + 1);
      umount2(mp, MNT_DETACH);  // fails harmlessly when nothing is mounted
    }
  }
}

void on_fatal_signal(int sig) {
  detach_tracked_mounts();
  signal(sig, SIG_DFL);
  raise(sig);
}

class LeftoverMounts : public ::testing::Environment {
 public:
  void SetUp() override {
    std::atexit(detach_tracked_mounts);
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGINT, SIGTERM}) {
      signal(sig, on_fatal_signal);
    }
  }
  void TearDown() override { detach_tracked_mounts(); }
};

[[maybe_unused]] ::testing::Environment* const kLeftoverMounts =
    ::testing::AddGlobalTestEnvironment(new LeftoverMounts);

void track_dir(const std::string& dir) {
  if (g_tracked_count >= static_cast<sig_atomic_t>(kMaxTracked) || dir.size() >= kPathMax) return;
  std::memcpy(g_tracked[g_tracked_count], dir.c_str(), dir.size() + 1);
  g_tracked_count = g_tracked_count + 1;
}

// ---------------------------------------------------------------------------

struct MountEntry {
  std::string mountpoint, fstype, source;
};

std::vector<MountEntry> mount_table() {
  std::vector<MountEntry> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mountpoint;
    fields >> id >> parent >> devno >> root >> mountpoint;
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream tail(line.substr(sep + 3));
    MountEntry e;
    tail >> e.fstype >> e.source;
    e.mountpoint = unescape_mountinfo(mountpoint);
    e.source = unescape_mountinfo(e.source);
    out.push_back(std::move(e));
  }
  return out;
}

// Mountpoints at or below dir.
std::vector<std::string> mounts_under(const std::string& dir) {
  std::vector<std::string> out;
  for (const MountEntry& e : mount_table()) {
    if (e.mountpoint == dir || e.mountpoint.starts_with(dir + "/")) out.push_back(e.mountpoint);
  }
  return out;
}

template <class Pred>
bool wait_until(Pred pred, milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string bin_dir() { return POISONFS_BIN_DIR; }
std::string bin(std::string_view name) { return bin_dir() + "/" + std::string(name); }

std::string sh_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

RunResult run(const std::string& cmd, int timeout_s) {
  RunResult result;
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return result;
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return result;
  }
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, STDIN_FILENO);
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return result;
  }
  auto deadline = Clock::now() + seconds(timeout_s);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  bool killed = false;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0 && !killed) {
      kill(-pid, SIGKILL);
      killed = true;
    }
    int n = poll(fds, 2, killed ? 1000 : static_cast<int>(std::min<long long>(left, 1000)));
    if (n < 0 && errno != EINTR) break;
    if (n == 0 && killed) break;  // a detached grandchild keeps the pipe
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  }
  return result;
}

bool is_poisonfs_mounted(const std::string& path) {
  for (const MountEntry& e : mount_table()) {
    if (e.mountpoint == path && e.fstype == "fuse.poisonfs") return true;
  }
  return false;
}

bool image_unlocked(const std::string& image) {
  int fd = open(image.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  bool free = flock(fd, LOCK_EX | LOCK_NB) == 0;
  close(fd);  // drops the probe's lock at once
  return free;
}

pid_t daemon_of(const std::string& image) {
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return -1;
  pid_t found = -1;
  while (dirent* e = readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::string cmdline = read_file("/proc/" + std::string(e->d_name) + "/cmdline");
    if (cmdline.find(image + '\0') != std::string::npos && cmdline.starts_with(bin("poisonfs") + '\0')) {
      found = static_cast<pid_t>(pid);
      break;
    }
  }
  closedir(proc);
  return found;
}

int as_user(uid_t uid, gid_t gid, const std::function<int()>& fn) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(250);
    int r = fn();
    _exit(r & 0xff);
  }
  if (pid < 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// ---------------------------------------------------------------------------
// MountTest

std::string MountTest::path(std::string_view rel) const {
  return mnt_ + "/" + std::string(rel);
}

std::string MountTest::daemon_log() const { return read_file(dir_ + "/daemon.log"); }

void MountTest::SetUp() {
  char tmpl[] = "/tmp/poisonfs-mount.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr) << std::strerror(errno);
  dir_ = tmpl;
  track_dir(dir_);
  // Other users (uid 65534 in the permission tests) must reach the mount.
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  image_ = dir_ + "/image";
  mnt_ = dir_ + "/mnt";
  ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
  RunResult mkfs = run(sh_quote(bin("mkfs.poisonfs")) + " " + sh_quote(image_) + " " +
                       image_size());
  ASSERT_EQ(mkfs.exit_code, 0) << "mkfs.poisonfs failed: " << mkfs.both();
  ASSERT_NO_FATAL_FAILURE(mount());
}

void MountTest::TearDown() {
  if (dir_.empty()) return;
  unmount();
  // Anything else a test mounted below its directory.
  for (const std::string& mp : mounts_under(dir_)) {
    run("fusermount3 -u -z " + sh_quote(mp));
  }
  if (!wait_until([&] { return image_unlocked(image_); }, seconds(20))) {
    ADD_FAILURE() << "the image is still locked 20 s after unmount";
  }
  if (mounts_under(dir_).empty()) {
    run("rm -rf --one-file-system " + sh_quote(dir_));
  } else {
    ADD_FAILURE() << "left " << dir_ << " in place: something is still mounted in it";
  }
}

void MountTest::mount() {
  ASSERT_FALSE(mounted()) << mnt_ << " is already mounted";
  std::string log = dir_ + "/daemon.log";
  std::string opts = mount_options();
  std::string prog = bin("poisonfs");
  std::vector<const char*> argv = {"poisonfs", "-f"};
  if (!opts.empty()) {
    argv.push_back("-o");
    argv.push_back(opts.c_str());
  }
  argv.push_back(image_.c_str());
  argv.push_back(mnt_.c_str());
  argv.push_back(nullptr);
  pid_t parent = getpid();
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    // The daemon must not outlive a test program that died: SIGTERM ends
    // its loop, and it unmounts itself.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int null = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
    }
    if (null >= 0) dup2(null, STDIN_FILENO);
    execv(prog.c_str(), const_cast<char* const*>(argv.data()));
    _exit(127);
  }
  ASSERT_GT(pid, 0) << "fork: " << std::strerror(errno);
  daemon_pid_ = pid;
  auto deadline = Clock::now() + seconds(20);
  while (!mounted()) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      daemon_pid_ = -1;
      FAIL() << "poisonfs exited before mounting (status " << status << "): " << daemon_log();
    }
    if (Clock::now() >= deadline) {
      reap_daemon(0);
      FAIL() << "poisonfs did not mount within 20 s: " << daemon_log();
    }
    std::this_thread::sleep_for(milliseconds(2));
  }
}

int MountTest::reap_daemon(int timeout_s) {
  if (daemon_pid_ <= 0) return -1;
  int status = 0;
  auto deadline = Clock::now() + seconds(timeout_s);
  for (;;) {
    pid_t r = waitpid(daemon_pid_, &status, WNOHANG);
    if (r == daemon_pid_ || (r < 0 && errno != EINTR)) break;
    if (Clock::now() >= deadline) {
      kill(daemon_pid_, SIGKILL);
      waitpid(daemon_pid_, &status, 0);
      ADD_FAILURE() << "poisonfs did not exit within " << timeout_s << " s; killed it";
      break;
    }
    std::this_thread::sleep_for(milliseconds(2));
  }
  daemon_pid_ = -1;
  return status;
}

void MountTest::unmount() {
  if (mounted()) {
    RunResult r;
    // A file still open in the mount (a test's stray descriptor, a dying
    // child) makes it busy for a moment, longer on a loaded machine (seen
    // once past 1 s while other builds ran); then fall back to a lazy
    // unmount.
    for (int attempt = 0; attempt < 250; ++attempt) {
      r = run("fusermount3 -u " + sh_quote(mnt_));
      if (r.exit_code == 0 || !mounted()) break;
      std::this_thread::sleep_for(milliseconds(20));
    }
    if (mounted()) {
      // Who holds it, for the next one who reads this failure.
      ADD_FAILURE() << "fusermount3 -u failed: " << r.both() << run("fuser -vm " + sh_quote(mnt_)).both();
      run("fusermount3 -u -z " + sh_quote(mnt_));
    }
  }
  if (daemon_pid_ > 0) {
    int status = reap_daemon(20);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "poisonfs exit status " << status << ": " << daemon_log();
  }
  // A daemonized poisonfs (started through run()) is not our child: wait
  // until it has let go of the image.
  EXPECT_TRUE(wait_until([&] { return image_unlocked(image_); }, seconds(20)))
      << "the image is still in use after unmount";
  EXPECT_TRUE(wait_until([&] { return !mounted(); }, seconds(5)));
}

void MountTest::kill_daemon(int sig) {
  ASSERT_GT(daemon_pid_, 0) << "no daemon to kill";
  ASSERT_EQ(kill(daemon_pid_, sig), 0);
  reap_daemon(20);
  run("fusermount3 -u -z " + sh_quote(mnt_));
  EXPECT_TRUE(wait_until([&] { return !mounted(); }, seconds(5)));
}

}  // namespace poisonfs::test
