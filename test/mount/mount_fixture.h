// MountTest: the GoogleTest fixture of every mount test. Each test gets a
// fresh temporary directory with a new 256 MiB image made by mkfs.poisonfs
// and the real daemon mounted on <dir>/mnt (run in the foreground as a child
// of the test, so that unmount() can wait for it to exit and release the
// image). TearDown always unmounts and removes the directory; a global
// environment and an atexit handler lazily unmount whatever a crashed or
// aborted test left under the fixture's directories.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <string_view>

namespace poisonfs::test {

// Where the built binaries are (set by CMake).
std::string bin_dir();
std::string bin(std::string_view name);  // bin_dir() + "/" + name

struct RunResult {
  int exit_code = -1;  // 128 + signal when killed by one
  std::string out;
  std::string err;
  std::string both() const { return out + err; }
};

// Runs cmd with /bin/sh -c, capturing stdout and stderr. Kills it after
// timeout_s seconds (exit_code then says which signal).
RunResult run(const std::string& cmd, int timeout_s = 120);

// The whole file, bytes as they are; "" when it cannot be read.
std::string read_file(const std::string& path);

// Quotes s for /bin/sh.
std::string sh_quote(std::string_view s);

// True when a fuse.poisonfs mount sits on path (absolute).
bool is_poisonfs_mounted(const std::string& path);

// True when nobody holds the image's flock (no daemon or tool has it open).
bool image_unlocked(const std::string& image);

// The poisonfs daemon of this build whose command line names image, or -1.
pid_t daemon_of(const std::string& image);

// Runs fn in a forked child with the given credentials (supplementary groups
// dropped) and returns what fn returns (an errno value or 0 by convention),
// or -1 when the child died.
int as_user(uid_t uid, gid_t gid, const std::function<int()>& fn);

inline constexpr uid_t kNobody = 65534;
inline constexpr gid_t kNogroup = 65534;

class MountTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Options given to the daemon with -o (allow_other lets uid 65534 in).
  virtual std::string mount_options() const { return "allow_other"; }
  virtual std::string image_size() const { return "256M"; }

  const std::string& dir() const { return dir_; }
  const std::string& mnt() const { return mnt_; }
  const std::string& image() const { return image_; }
  // mnt() + "/" + rel
  std::string path(std::string_view rel) const;

  // Starts the daemon (`poisonfs -f -o OPTS IMAGE MNT`) and waits until the
  // mount is visible. Fails the test (fatally) when it does not come up.
  void mount();
  // Unmounts (fusermount3 -u) and returns only after the daemon has exited
  // and the image is free. Also handles a mount made by a daemonized
  // poisonfs started through run().
  void unmount();
  void remount() {
    unmount();
    mount();
  }
  // Kills the daemon with sig, reaps it and lazily unmounts the dead mount.
  void kill_daemon(int sig = SIGKILL);
  bool mounted() const { return is_poisonfs_mounted(mnt_); }
  pid_t daemon_pid() const { return daemon_pid_; }
  // What the foreground daemon wrote on stdout/stderr.
  std::string daemon_log() const;

  RunResult run(const std::string& cmd, int timeout_s = 120) {
    return ::poisonfs::test::run(cmd, timeout_s);
  }

 private:
  // Waits for the foreground daemon to exit (up to timeout_s); kills it
  // with SIGKILL when it does not. Returns its wait status or -1.
  int reap_daemon(int timeout_s);

  std::string dir_, mnt_, image_;
  pid_t daemon_pid_ = -1;
};

}  // namespace poisonfs::test
