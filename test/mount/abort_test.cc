// A connection aborted under the daemon (`umount -f`, or
// /sys/fs/fuse/connections/N/abort): the kernel ends every request it was
// waiting for, and refuses each reply the daemon sends afterwards (ENOENT).
// The daemon takes back what it counted for those replies and ends as after
// an unmount: exit status 0, the image consistent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <thread>

#include "mount/mount_fixture.h"

namespace poisonfs::test {
namespace {

class AbortedMount : public MountTest {
 protected:
  // Several workers: a lookup is served while a long copy holds the core.
  std::string mount_options() const override { return "multithread,max_threads=4"; }
  std::string image_size() const override { return "768M"; }
};

// A lookup waits for the core's lock behind a copy_file_range whose offsets
// differ within a block (a byte copy of 400 MiB under the exclusive lock,
// over a second here) while the connection is aborted: its entry reply is
// refused.
TEST_F(AbortedMount, RefusedEntryReplyEndsTheDaemonNormally) {
  constexpr off_t kPiece = 16 << 20;
  constexpr size_t kCopy = 25 * kPiece;
  // The source is one piece written and shared 24 more times (aligned
  // copies are reflinks): built in a moment.
  int src = open(path("src").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(src, 0);
  const std::string piece(kPiece, 's');
  ASSERT_EQ(pwrite(src, piece.data(), piece.size(), 0), ssize_t(piece.size()));
  for (off_t at = kPiece; at < off_t(kCopy); at += kPiece) {
    loff_t from = 0, to = at;
    ASSERT_EQ(copy_file_range(src, &from, src, &to, kPiece, 0), ssize_t(kPiece));
  }
  close(src);
  int g = open(path("g").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(g, 0);
  close(g);
  remount();  // the kernel knows no name: the stat below is a LOOKUP

  int in = open(path("src").c_str(), O_RDONLY | O_CLOEXEC);
  int out = open(path("dst").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(in, 0);
  ASSERT_GE(out, 0);
  // The root's attributes fresh (1 s), so that the stat's only request is
  // the LOOKUP, not a GETATTR of the root first.
  struct stat root {};
  ASSERT_EQ(stat(mnt().c_str(), &root), 0);
  std::thread copy([&] {
    loff_t from = 0, to = 1;
    (void)copy_file_range(in, &from, out, &to, kCopy, 0);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int lookup_errno = 0;
  std::thread look([&] {
    struct stat st {};
    lookup_errno = stat(path("g").c_str(), &st) == 0 ? 0 : errno;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // Aborts the connection first, then fails: the files are open.
  (void)run("umount -f " + sh_quote(mnt()));
  copy.join();
  look.join();
  close(in);
  close(out);
  EXPECT_EQ(lookup_errno, ECONNABORTED) << "the lookup was answered before the abort";
  unmount();  // expects exit status 0
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
}

}  // namespace
}  // namespace poisonfs::test
