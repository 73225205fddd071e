// An image on a tmpfs mounted with huge=always, the fast setup (DESIGN.md:
// the analogue of fsdax PMD mappings): the daemon maps every byte of it
// with 2 MiB pages (libpmem2's mapping is 2 MiB-aligned and the pre-fault
// maps huge pages), and the filesystem works there as anywhere else.
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>

#include "mount/mount_fixture.h"

namespace poisonfs::test {
namespace {

// A tmpfs with huge=always at path, unmounted on destruction (also when the
// test fails).
struct HugeTmpfs {
  std::string path;
  bool mounted = false;
  int error = 0;
  explicit HugeTmpfs(std::string p) : path(std::move(p)) {
    mkdir(path.c_str(), 0755);
    mounted = ::mount("tmpfs", path.c_str(), "tmpfs", 0, "huge=always,size=128m") == 0;
    error = mounted ? 0 : errno;
  }
  ~HugeTmpfs() {
    if (mounted) umount2(path.c_str(), MNT_DETACH);
  }
};

// A daemonized poisonfs mount of image on mnt, unmounted on destruction;
// returns once the daemon has let go of the image.
struct DaemonMount {
  std::string image, mnt;
  ~DaemonMount() {
    if (is_poisonfs_mounted(mnt)) run("fusermount3 -u " + sh_quote(mnt));
    for (int i = 0; i < 2000 && !image_unlocked(image); ++i) usleep(10000);
  }
};

// Field (in kB) of the mapping of file in /proc/pid/smaps.
std::optional<uint64_t> smaps_field(pid_t pid, const std::string& file, const std::string& field) {
  std::istringstream smaps(read_file("/proc/" + std::to_string(pid) + "/smaps"));
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    // A mapping's header starts with its address range ("lo-hi"), a field with "Name:".
    if (line.find('-') < line.find(' ')) {
      inside = line.ends_with(" " + file);
      continue;
    }
    if (inside && line.starts_with(field + ":")) return std::stoull(line.substr(field.size() + 1));
  }
  return std::nullopt;
}

class HugePages : public MountTest {};

TEST_F(HugePages, AnImageOnAHugeTmpfsIsMappedWithHugePagesAndWorks) {
  if (geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const std::string thp = read_file("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  if (thp.empty() || thp.find("[deny]") != std::string::npos) GTEST_SKIP() << "no huge pages for tmpfs here: " << thp;
  unmount();  // the fixture's image is not used here
  HugeTmpfs tmpfs(dir() + "/huge");
  ASSERT_TRUE(tmpfs.mounted) << "mount -t tmpfs -o huge=always: " << std::strerror(tmpfs.error);
  DaemonMount m{tmpfs.path + "/image", dir() + "/hmnt"};
  ASSERT_EQ(mkdir(m.mnt.c_str(), 0755), 0);
  RunResult mkfs = run(sh_quote(bin("mkfs.poisonfs")) + " " + sh_quote(m.image) + " 64M");
  ASSERT_EQ(mkfs.exit_code, 0) << mkfs.both();
  RunResult daemon = run(sh_quote(bin("poisonfs")) + " " + sh_quote(m.image) + " " + sh_quote(m.mnt));
  ASSERT_EQ(daemon.exit_code, 0) << daemon.both();
  const pid_t pid = daemon_of(m.image);
  ASSERT_GT(pid, 0) << "no daemon found for " << m.image;
  auto size = smaps_field(pid, m.image, "Size");
  auto huge = smaps_field(pid, m.image, "ShmemPmdMapped");
  ASSERT_TRUE(size && huge) << read_file("/proc/" + std::to_string(pid) + "/smaps");
  EXPECT_EQ(*size, 64u << 10);
  EXPECT_EQ(*huge, *size) << "kB of the mapping in 2 MiB pages";

  std::mt19937 rng(7);
  std::string data(8 << 20, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  const std::string f = m.mnt + "/f";
  {
    std::ofstream out(f, std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    ASSERT_TRUE(out.good());
  }
  EXPECT_EQ(read_file(f), data);
  ASSERT_EQ(run("fusermount3 -u " + sh_quote(m.mnt)).exit_code, 0);
  for (int i = 0; i < 2000 && !image_unlocked(m.image); ++i) usleep(10000);
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + sh_quote(m.image));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
  ASSERT_EQ(run(sh_quote(bin("poisonfs")) + " " + sh_quote(m.image) + " " + sh_quote(m.mnt)).exit_code, 0);
  EXPECT_EQ(read_file(f), data) << "after a remount";
}

}  // namespace
}  // namespace poisonfs::test
