// bench_helper: the small programs scripts/bench.sh needs, in one binary.
// Not a benchmark itself (the CMake glob only builds *_bench.cc): bench.sh
// compiles it with g++ into its temporary directory, as compare.sh does with
// libfuse's examples. It needs only include/poisonfs/ioctl.h and Linux.
//
// Every command works on poisonfs (a FUSE mount: the poisonfs ioctls) and
// on a kernel filesystem (FICLONERANGE, FIEMAP), so one code path serves
// both sides of a comparison.
//
//   meta DIR N            create N empty files; after the 1 s FUSE entry/attr
//                         timeouts stat each twice in a row (cold, then
//                         warm: from the kernel's caches); unlink them;
//                         prints operations per second:
//                         "create stat_cold stat_warm unlink create+unlink"
//   frag DST A B BLOCKS   makes DST of BLOCKS blocks whose block i is a clone
//                         of block i/2 of A (i even) or B (i odd): BLOCKS
//                         extents, no two neighbours contiguous
//   fanout SRC DIR N      N whole-file clones of SRC as DIR/c0..c{N-1}
//   extents FILE          "EXTENTS FIRST_PHYSICAL_BYTE SHARED_EXTENTS"
//   fsmap MNT START LEN [nopaths]
//                         poisonfs owners of [START, START+LEN) as JSON with
//                         paths (one POISONFS_IOC_PATHS per inode; not with
//                         "nopaths"), through the ioctls: stands in for
//                         `poisonctl fsmap --json` where that is missing
//   interleave A B N      preallocates N blocks, one at a time, to A and B in
//                         turn: N unwritten one-block extents, none
//                         contiguous with its file neighbour, no data written
//   time REPS CMD...      runs CMD REPS times (output to /dev/null); prints
//                         "MEDIAN_S MIN_S"; fails if any run fails
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "poisonfs/ioctl.h"

namespace {

constexpr uint64_t kBlock = 4096;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_helper: %s\n", what.c_str());
  std::exit(1);
}
[[noreturn]] void die_errno(const std::string& what) { die(what + ": " + std::strerror(errno)); }

double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

uint64_t number(const char* s) {
  char* end = nullptr;
  errno = 0;
  uint64_t v = std::strtoull(s, &end, 0);
  if (errno || !end || *end || end == s) die(std::string("not a number: ") + s);
  return v;
}

int open_or_die(const std::string& path, int flags, mode_t mode = 0644) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) die_errno("open " + path);
  return fd;
}

bool is_fuse(int fd) {
  struct statfs s;
  if (fstatfs(fd, &s) != 0) die_errno("fstatfs");
  return static_cast<uint64_t>(s.f_type) == FUSE_SUPER_MAGIC;
}

// Clones [src_off, src_off+len) of src into dst at dst_off (len 0: to EOF).
void clone(int src, uint64_t src_off, int dst, uint64_t dst_off, uint64_t len, bool fuse) {
  if (fuse) {
    poisonfs_clone_range r{src, src_off, len, dst_off};
    if (ioctl(dst, POISONFS_IOC_CLONE_RANGE, &r) != 0) die_errno("POISONFS_IOC_CLONE_RANGE");
  } else {
    file_clone_range r{src, src_off, len, dst_off};
    if (ioctl(dst, FICLONERANGE, &r) != 0) die_errno("FICLONERANGE");
  }
}

int cmd_meta(const std::string& dir, uint64_t n) {
  std::vector<std::string> names;
  for (uint64_t i = 0; i < n; ++i) names.push_back(dir + "/m" + std::to_string(i));
  double t0 = now();
  for (const auto& p : names) {
    int fd = open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) die_errno("create " + p);
    close(fd);
  }
  double t_create = now() - t0;
  usleep(1'100'000);  // past FUSE's 1 s entry/attr timeouts (poisonfs and passthrough_ll alike)
  // Each file is stat'ed twice in a row: the first goes to the filesystem
  // (a LOOKUP round trip on FUSE), the second is answered from the kernel's
  // caches. Timing each call keeps the second one within the timeout however
  // slow the first pass is.
  struct stat st;
  double t_cold = 0, t_warm = 0;
  for (const auto& p : names) {
    double a = now();
    if (stat(p.c_str(), &st) != 0) die_errno("stat " + p);
    double b = now();
    if (stat(p.c_str(), &st) != 0) die_errno("stat " + p);
    t_cold += b - a;
    t_warm += now() - b;
  }
  t0 = now();
  for (const auto& p : names)
    if (unlink(p.c_str()) != 0) die_errno("unlink " + p);
  double t_unlink = now() - t0;
  double dn = static_cast<double>(n);
  std::printf("%.0f %.0f %.0f %.0f %.0f\n", dn / t_create, dn / t_cold, dn / t_warm, dn / t_unlink,
              dn / (t_create + t_unlink));
  return 0;
}

int cmd_frag(const std::string& dst_path, const std::string& a_path, const std::string& b_path, uint64_t blocks) {
  int a = open_or_die(a_path, O_RDONLY), b = open_or_die(b_path, O_RDONLY);
  int dst = open_or_die(dst_path, O_CREAT | O_RDWR);
  bool fuse = is_fuse(dst);
  double t0 = now();
  for (uint64_t i = 0; i < blocks; ++i) clone(i % 2 ? b : a, i / 2 * kBlock, dst, i * kBlock, kBlock, fuse);
  double t = now() - t0;
  close(a);
  close(b);
  close(dst);
  std::fprintf(stderr, "bench_helper: %s: %" PRIu64 " one-block clones in %.2f s\n", dst_path.c_str(), blocks, t);
  return 0;
}

int cmd_fanout(const std::string& src_path, const std::string& dir, uint64_t n) {
  int src = open_or_die(src_path, O_RDONLY);
  bool fuse = is_fuse(src);
  for (uint64_t i = 0; i < n; ++i) {
    int dst = open_or_die(dir + "/c" + std::to_string(i), O_CREAT | O_EXCL | O_RDWR);
    clone(src, 0, dst, 0, 0, fuse);
    close(dst);
  }
  close(src);
  return 0;
}

int cmd_extents(const std::string& path) {
  int fd = open_or_die(path, O_RDONLY);
  uint64_t count = 0, first = UINT64_MAX, shared = 0;
  if (is_fuse(fd)) {
    auto page = std::make_unique<poisonfs_bmap>();
    std::memset(page.get(), 0, sizeof *page);
    for (;;) {
      if (ioctl(fd, POISONFS_IOC_BMAP, page.get()) != 0) die_errno("POISONFS_IOC_BMAP");
      for (uint32_t i = 0; i < page->count; ++i) {
        if (count == 0 && i == 0) first = page->recs[i].physical;
        shared += (page->recs[i].flags & POISONFS_BMAP_SHARED) != 0;
      }
      count += page->count;
      if (page->flags & POISONFS_OF_LAST) break;
    }
  } else {
    constexpr uint32_t kBatch = 1024;
    std::vector<char> buf(sizeof(fiemap) + kBatch * sizeof(fiemap_extent));
    auto* fm = reinterpret_cast<fiemap*>(buf.data());
    uint64_t start = 0;
    for (bool last = false; !last;) {
      std::memset(buf.data(), 0, buf.size());
      fm->fm_start = start;
      fm->fm_length = FIEMAP_MAX_OFFSET - start;
      fm->fm_flags = FIEMAP_FLAG_SYNC;
      fm->fm_extent_count = kBatch;
      if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) die_errno("FS_IOC_FIEMAP");
      if (fm->fm_mapped_extents == 0) break;
      for (uint32_t i = 0; i < fm->fm_mapped_extents; ++i) {
        const fiemap_extent& e = fm->fm_extents[i];
        if (count == 0) first = e.fe_physical;
        ++count;
        shared += (e.fe_flags & FIEMAP_EXTENT_SHARED) != 0;
        last = (e.fe_flags & FIEMAP_EXTENT_LAST) != 0;
        start = e.fe_logical + e.fe_length;
      }
    }
  }
  close(fd);
  std::printf("%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", count, first == UINT64_MAX ? 0 : first, shared);
  return 0;
}

const char* owner_name(uint32_t owner) {
  static const char* const kNames[] = {"free", "superblock", "journal", "inodes",
                                       "extents", "directory", "xattr", "data"};
  return owner < 8 ? kNames[owner] : "unknown";
}

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      out += esc;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

int cmd_fsmap(const std::string& mnt, uint64_t start, uint64_t length, bool with_paths) {
  int fd = open_or_die(mnt, O_RDONLY | O_DIRECTORY);
  auto page = std::make_unique<poisonfs_fsmap>();
  std::memset(page.get(), 0, sizeof *page);
  page->start = start;
  page->length = length;
  auto paths = std::make_unique<poisonfs_paths>();
  std::map<uint64_t, std::string> path_of;  // first path of each inode
  std::string out = "[";
  uint64_t records = 0;
  char num[256];
  for (;;) {
    if (ioctl(fd, POISONFS_IOC_FSMAP, page.get()) != 0) die_errno("POISONFS_IOC_FSMAP");
    for (uint32_t i = 0; i < page->count; ++i) {
      const poisonfs_fsmap_rec& r = page->recs[i];
      if (records++) out += ",";
      std::snprintf(num, sizeof num, "\n{\"physical\":%" PRIu64 ",\"length\":%" PRIu64 ",\"owner\":\"%s\"",
                    r.physical, r.length, owner_name(r.owner));
      out += num;
      if (r.owner == 7) {
        auto it = path_of.find(r.inode);
        if (it == path_of.end() && !with_paths) {
          it = path_of.emplace(r.inode, "").first;
        } else if (it == path_of.end()) {
          std::memset(paths.get(), 0, sizeof *paths);
          paths->inode = r.inode;
          std::string p = "?";
          if (ioctl(fd, POISONFS_IOC_PATHS, paths.get()) == 0 && paths->count > 0) p = paths->buf;
          it = path_of.emplace(r.inode, p).first;
        }
        std::snprintf(num, sizeof num, ",\"inode\":%" PRIu64 ",\"file_offset\":%" PRIu64 ",\"shared\":%s,\"path\":",
                      r.inode, r.file_offset, r.flags & POISONFS_FSMAP_SHARED ? "true" : "false");
        out += num;
        json_string(out, it->second);
      }
      out += "}";
    }
    if (page->flags & POISONFS_OF_LAST) break;
  }
  out += "\n]\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  close(fd);
  return 0;
}

int cmd_interleave(const std::string& a_path, const std::string& b_path, uint64_t n) {
  int fds[2] = {open_or_die(a_path, O_CREAT | O_RDWR), open_or_die(b_path, O_CREAT | O_RDWR)};
  double t0 = now();
  for (uint64_t i = 0; i < n; ++i)
    if (fallocate(fds[i % 2], 0, static_cast<off_t>(i / 2 * kBlock), kBlock) != 0) die_errno("fallocate");
  std::fprintf(stderr, "bench_helper: %" PRIu64 " one-block preallocations in %.1f s\n", n, now() - t0);
  close(fds[0]);
  close(fds[1]);
  return 0;
}

int cmd_time(uint64_t reps, char** argv) {
  std::vector<double> times;
  for (uint64_t r = 0; r < reps; ++r) {
    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) die_errno("fork");
    if (pid == 0) {
      int null = open("/dev/null", O_WRONLY);
      if (null >= 0) dup2(null, STDOUT_FILENO);
      execvp(argv[0], argv);
      std::fprintf(stderr, "bench_helper: exec %s: %s\n", argv[0], std::strerror(errno));
      _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
      if (errno != EINTR) die_errno("waitpid");
    times.push_back(now() - t0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die(std::string(argv[0]) + " failed");
  }
  std::sort(times.begin(), times.end());
  std::printf("%.6f %.6f\n", times[times.size() / 2], times.front());
  return 0;
}

void usage() {
  std::fprintf(stderr,
               "usage: bench_helper meta DIR N | frag DST A B BLOCKS | fanout SRC DIR N | extents FILE |\n"
               "                    fsmap MNT START LEN [nopaths] | interleave A B N | time REPS CMD...\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage();
  std::string cmd = argv[1];
  if (cmd == "meta" && argc == 4) return cmd_meta(argv[2], number(argv[3]));
  if (cmd == "frag" && argc == 6) return cmd_frag(argv[2], argv[3], argv[4], number(argv[5]));
  if (cmd == "fanout" && argc == 5) return cmd_fanout(argv[2], argv[3], number(argv[4]));
  if (cmd == "extents" && argc == 3) return cmd_extents(argv[2]);
  if (cmd == "fsmap" && (argc == 5 || (argc == 6 && std::strcmp(argv[5], "nopaths") == 0)))
    return cmd_fsmap(argv[2], number(argv[3]), number(argv[4]), argc == 5);
  if (cmd == "interleave" && argc == 5) return cmd_interleave(argv[2], argv[3], number(argv[4]));
  if (cmd == "time" && argc >= 4) return cmd_time(number(argv[2]), argv + 3);
  usage();
}
