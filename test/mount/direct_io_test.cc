// A mount with -o direct_io: read(2) and write(2) bypass the page cache
// (FOPEN_DIRECT_IO on every open) while mappings still work, shared and
// coherent with both (the daemon negotiates FUSE_DIRECT_IO_ALLOW_MMAP);
// files, sizes and tools behave as on the default mount.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>

#include "mount/mount_fixture.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::test {
namespace {

std::string random_text(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>('a' + rng() % 26);
  return s;
}

uint64_t session_flags(const std::string& mnt) {
  int fd = open(mnt.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  poisonfs_stat st{};
  int rc = ioctl(fd, POISONFS_IOC_STAT, &st);
  close(fd);
  return rc == 0 ? st.session_flags : 0;
}

class DirectIoMount : public MountTest {
 protected:
  std::string mount_options() const override { return "direct_io"; }
};

TEST_F(DirectIoMount, EveryOpenBypassesThePageCache) {
  EXPECT_TRUE(session_flags(mnt()) & POISONFS_STAT_DIRECT_IO);
  // poisonctl stat says so (the mount would fall back to the page cache
  // on a kernel without FUSE_DIRECT_IO_ALLOW_MMAP).
  RunResult human = run(sh_quote(bin("poisonctl")) + " stat " + sh_quote(mnt()));
  EXPECT_NE(human.out.find("page cache:"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("bypassed by read/write (-o direct_io)"), std::string::npos) << human.out;
  RunResult json = run(sh_quote(bin("poisonctl")) + " stat --json " + sh_quote(mnt()));
  EXPECT_NE(json.out.find("\"direct_io\": true"), std::string::npos) << json.out;
}

TEST_F(DirectIoMount, MappingsSeeWritesAndWritesSeeMappings) {
  const std::string f = path("mapped");
  int fd = open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  const std::string first = random_text(3 * 4096, 1);
  ASSERT_EQ(pwrite(fd, first.data(), first.size(), 0), static_cast<ssize_t>(first.size()));
  void* p = mmap(nullptr, first.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
  char* map = static_cast<char*>(p);
  EXPECT_EQ(std::string(map, first.size()), first);

  // A write(2) after the pages are mapped: the mapping shows it.
  ASSERT_EQ(pwrite(fd, "WRITTEN", 7, 4096 + 10), 7);
  EXPECT_EQ(std::string(map + 4096 + 10, 7), "WRITTEN");
  // A store through the mapping, written back: read(2) shows it.
  std::memcpy(map + 2 * 4096 + 5, "STORED", 6);
  ASSERT_EQ(msync(map, first.size(), MS_SYNC), 0);
  char back[6] = {};
  ASSERT_EQ(pread(fd, back, 6, 2 * 4096 + 5), 6);
  EXPECT_EQ(std::string(back, 6), "STORED");
  munmap(p, first.size());
  close(fd);

  // And after a remount, from the image.
  remount();
  std::string want = first;
  want.replace(4096 + 10, 7, "WRITTEN");
  want.replace(2 * 4096 + 5, 6, "STORED");
  fd = open(f.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string got(want.size(), '\0');
  ASSERT_EQ(pread(fd, got.data(), got.size(), 0), static_cast<ssize_t>(got.size()));
  EXPECT_EQ(got, want);
  close(fd);
}

TEST_F(DirectIoMount, SizesAndToolsBehaveAsOnTheDefaultMount) {
  const std::string data = random_text(1 << 20, 2);
  const std::string src = dir() + "/src.bin";
  int fd = open(src.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  close(fd);
  // Odd sizes and offsets, appends and truncation, as tools do them.
  RunResult r = run("dd if=" + sh_quote(src) + " of=" + sh_quote(path("dd")) + " bs=3001 status=none && cmp " +
                    sh_quote(src) + " " + sh_quote(path("dd")));
  EXPECT_EQ(r.exit_code, 0) << r.both();
  r = run("cat " + sh_quote(src) + " " + sh_quote(src) + " > " + sh_quote(path("twice")) + " && printf tail >> " +
          sh_quote(path("twice")));
  ASSERT_EQ(r.exit_code, 0) << r.both();
  struct stat st {};
  ASSERT_EQ(stat(path("twice").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(2 * data.size() + 4));
  ASSERT_EQ(truncate(path("twice").c_str(), 12345), 0);
  ASSERT_EQ(stat(path("twice").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 12345);
  r = run("head -c 12345 " + sh_quote(src) + " | cmp - " + sh_quote(path("twice")));
  EXPECT_EQ(r.exit_code, 0) << r.both();
  // A small read of an unaligned range, served straight from the image.
  fd = open(path("dd").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  char buf[100];
  ASSERT_EQ(pread(fd, buf, sizeof buf, 777777), static_cast<ssize_t>(sizeof buf));
  EXPECT_EQ(std::string(buf, sizeof buf), data.substr(777777, sizeof buf));
  close(fd);
}

// Without the option the page cache serves read(2) (no FOPEN_DIRECT_IO).
class DefaultMount : public MountTest {};

TEST_F(DefaultMount, UsesThePageCache) {
  EXPECT_FALSE(session_flags(mnt()) & POISONFS_STAT_DIRECT_IO);
  RunResult human = run(sh_quote(bin("poisonctl")) + " stat " + sh_quote(mnt()));
  EXPECT_NE(human.out.find("used by read/write"), std::string::npos) << human.out;
  RunResult json = run(sh_quote(bin("poisonctl")) + " stat --json " + sh_quote(mnt()));
  EXPECT_NE(json.out.find("\"direct_io\": false"), std::string::npos) << json.out;
  // An image has no session: null.
  unmount();
  RunResult offline = run(sh_quote(bin("poisonctl")) + " stat --json " + sh_quote(image()));
  EXPECT_EQ(offline.exit_code, 0) << offline.both();
  EXPECT_NE(offline.out.find("\"direct_io\": null"), std::string::npos) << offline.out;
}

// The option takes no value.
TEST_F(DefaultMount, DirectIoWithAValueIsRefused) {
  RunResult r = run(sh_quote(bin("poisonfs")) + " -f -o direct_io=1 " + sh_quote(image()) + " " + sh_quote(dir()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("direct_io=1"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace poisonfs::test
