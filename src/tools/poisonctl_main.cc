// poisonctl: the control tool of poisonfs. Each subcommand works on a mounted
// filesystem (through the ioctls of poisonfs/ioctl.h, issued on any file of
// the mount) or, offline, on an unmounted image (through the core library on
// a private mapping, so the image is never written by a query).
//
//   poisonctl stat [--json] MOUNTPOINT|IMAGE
//
// Subcommands live in one table (kCommands); a new one is a function plus a
// row there.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "poisonfs/filesystem.h"
#include "poisonfs/ioctl.h"
#include "poisonfs/media.h"

namespace poisonfs {
namespace {

constexpr const char* kTool = "poisonctl";
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

int error(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
  return kExitError;
}

// ---- finding out what the target is --------------------------------------

struct MountEntry {
  std::string devno;  // "MAJ:MIN"
  std::string mountpoint;
  std::string fstype;
  std::string source;
};

// Undoes the octal escapes (\040 for a space) of /proc/self/mountinfo.
std::string unescape(const std::string& s) {
  auto octal = [&](size_t i) { return i < s.size() && s[i] >= '0' && s[i] <= '7'; };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<MountEntry> poisonfs_mounts() {
  std::vector<MountEntry> mounts;
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    // id parent MAJ:MIN root mountpoint options [optional...] - fstype source superopts
    std::istringstream head(line);
    MountEntry e;
    std::string id, parent, root;
    head >> id >> parent >> e.devno >> root >> e.mountpoint;
    auto sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream tail(line.substr(sep + 3));
    tail >> e.fstype >> e.source;
    if (e.fstype != "fuse.poisonfs") continue;
    e.mountpoint = unescape(e.mountpoint);
    e.source = unescape(e.source);
    mounts.push_back(std::move(e));
  }
  return mounts;
}

// True when `path` lives on a mounted poisonfs: its filesystem is FUSE and
// the mount that holds its device number is of type fuse.poisonfs.
bool on_poisonfs_mount(const std::string& path) {
  struct statfs sfs {};
  if (statfs(path.c_str(), &sfs) != 0 || static_cast<uint64_t>(sfs.f_type) != FUSE_SUPER_MAGIC) {
    return false;
  }
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  char want[32];
  std::snprintf(want, sizeof want, "%u:%u", major(st.st_dev), minor(st.st_dev));
  for (const auto& m : poisonfs_mounts()) {
    if (m.devno == want) return true;
  }
  return false;
}

// The mountpoint where the image `path` is mounted now (the daemon names
// the image as the mount's source), or empty. A mounted image is locked, so
// its live state is asked from the daemon instead.
std::string mountpoint_of_image(const std::string& path) {
  struct stat img {};
  if (stat(path.c_str(), &img) != 0 || S_ISDIR(img.st_mode)) return {};
  for (const auto& m : poisonfs_mounts()) {
    struct stat src {};
    if (stat(m.source.c_str(), &src) == 0 && src.st_dev == img.st_dev && src.st_ino == img.st_ino) {
      return m.mountpoint;
    }
  }
  return {};
}

// ---- stat ------------------------------------------------------------------

Result<FsInfo> info_from_mount(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return fail(std::errc{errno}, path + ": cannot open: " + std::strerror(errno));
  poisonfs_stat st{};
  int rc = ioctl(fd, POISONFS_IOC_STAT, &st);
  int err = errno;
  close(fd);
  if (rc != 0) {
    return fail(std::errc{err}, path + ": POISONFS_IOC_STAT failed: " + std::strerror(err));
  }
  FsInfo info;
  info.device_bytes = st.device_bytes;
  info.block_size = st.block_size;
  info.total_blocks = st.total_blocks;
  info.journal_start = st.journal_start;
  info.journal_blocks = st.journal_blocks;
  info.inode_start = st.inode_start;
  info.inode_blocks = st.inode_blocks;
  info.inode_count = st.inode_count;
  info.data_start = st.data_start;
  info.data_blocks = st.data_blocks;
  info.free_blocks = st.free_blocks;
  info.pending_free = st.pending_free;
  info.inodes_used = st.inodes_used;
  info.extent_records = st.extent_records;
  info.journal_commits = st.journal_commits;
  info.version = st.version;
  info.byte_granular = st.byte_granular != 0;
  info.uuid.assign(st.uuid, strnlen(st.uuid, sizeof st.uuid));
  return info;
}

Result<FsInfo> info_from_image(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return fail(std::errc{errno}, path + ": " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    return fail(std::errc::not_supported, path + " is a directory but not on a poisonfs mount");
  }
  auto fs = Filesystem::mount_image(path, OpenOptions{MapMode::kPrivate});
  if (!fs) {
    // The core's message names the image already when it comes from a check.
    std::string message = fs.error().to_string();
    if (!message.starts_with(path + ":")) message = path + ": " + message;
    return fail(fs.error().code, message);
  }
  return (*fs)->info();
}

std::string human_bytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " B", bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

// Blocks that hold data or records now; pending-free blocks count as free.
uint64_t used_blocks(const FsInfo& i) {
  uint64_t avail = i.free_blocks + i.pending_free;
  return i.data_blocks > avail ? i.data_blocks - avail : 0;
}

double used_percent(const FsInfo& i) {
  return i.data_blocks == 0 ? 0.0 : 100.0 * static_cast<double>(used_blocks(i)) / i.data_blocks;
}

const char* granularity(const FsInfo& i) {
  return i.byte_granular ? "byte (cache-line flush)" : "page (msync)";
}

std::string block_range(uint64_t start, uint64_t count) {
  char buf[96];
  if (count == 0) return "none";
  std::snprintf(buf, sizeof buf, "blocks %" PRIu64 "-%" PRIu64 " (%" PRIu64 " blocks, %s)", start,
                start + count - 1, count, human_bytes(count * kBlockSize).c_str());
  return buf;
}

// What was asked and where the answer came from.
struct Target {
  std::string arg;         // as typed
  std::string mountpoint;  // the mount that answered, empty for an offline image
  std::string describe() const {
    if (mountpoint.empty()) return arg + " (image)";
    if (mountpoint == arg) return arg + " (mount)";
    return arg + " (mounted on " + mountpoint + ")";
  }
};

void print_human(const Target& target, const FsInfo& i) {
  std::vector<std::pair<std::string, std::string>> rows;
  auto num = [](uint64_t v) { return std::to_string(v); };
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.1f%%", used_percent(i));
  rows = {
      {"target", target.describe()},
      {"device size", num(i.device_bytes) + " bytes (" + human_bytes(i.device_bytes) + ")"},
      {"block size", num(i.block_size)},
      {"blocks", num(i.total_blocks)},
      {"journal", block_range(i.journal_start, i.journal_blocks)},
      {"inode table", block_range(i.inode_start, i.inode_blocks)},
      {"data area", block_range(i.data_start, i.data_blocks)},
      {"free", num(i.free_blocks) + " blocks (" + human_bytes(i.free_blocks * i.block_size) +
                   "), " + num(i.pending_free) + " pending"},
      {"used", std::string(pct) + " (" + num(used_blocks(i)) + " blocks)"},
      {"inodes", num(i.inodes_used) + " used / " + num(i.inode_count) + " total"},
      {"extent records", num(i.extent_records)},
      {"journal commits", num(i.journal_commits)},
      {"uuid", i.uuid},
      {"version", num(i.version)},
      {"granularity", granularity(i)},
  };
  size_t width = 0;
  for (const auto& [k, v] : rows) width = std::max(width, k.size());
  for (const auto& [k, v] : rows) {
    std::printf("%s:%*s %s\n", k.c_str(), static_cast<int>(width - k.size()), "", v.c_str());
  }
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

void print_json(const Target& target, const FsInfo& i) {
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.2f", used_percent(i));
  std::vector<std::pair<const char*, std::string>> fields = {
      {"target", json_string(target.arg)},
      {"source", json_string(target.mountpoint.empty() ? "image" : "mount")},
      {"mountpoint", target.mountpoint.empty() ? "null" : json_string(target.mountpoint)},
      {"device_bytes", std::to_string(i.device_bytes)},
      {"block_size", std::to_string(i.block_size)},
      {"total_blocks", std::to_string(i.total_blocks)},
      {"journal_start", std::to_string(i.journal_start)},
      {"journal_blocks", std::to_string(i.journal_blocks)},
      {"inode_start", std::to_string(i.inode_start)},
      {"inode_blocks", std::to_string(i.inode_blocks)},
      {"inode_count", std::to_string(i.inode_count)},
      {"inodes_used", std::to_string(i.inodes_used)},
      {"data_start", std::to_string(i.data_start)},
      {"data_blocks", std::to_string(i.data_blocks)},
      {"free_blocks", std::to_string(i.free_blocks)},
      {"pending_free", std::to_string(i.pending_free)},
      {"used_blocks", std::to_string(used_blocks(i))},
      {"used_percent", pct},
      {"extent_records", std::to_string(i.extent_records)},
      {"journal_commits", std::to_string(i.journal_commits)},
      {"uuid", json_string(i.uuid)},
      {"version", std::to_string(i.version)},
      {"byte_granular", i.byte_granular ? "true" : "false"},
  };
  std::string out = "{";
  for (size_t n = 0; n < fields.size(); ++n) {
    if (n) out += ", ";
    out += json_string(fields[n].first) + ": " + fields[n].second;
  }
  std::printf("%s}\n", out.c_str());
}

int cmd_stat(const std::vector<std::string>& args) {
  bool json = false;
  std::string target;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s stat [--json] MOUNTPOINT|IMAGE\n", kTool);
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "%s: stat: unknown option '%s'\n", kTool, a.c_str());
      std::fprintf(stderr, "usage: %s stat [--json] MOUNTPOINT|IMAGE\n", kTool);
      return kExitUsage;
    } else if (!target.empty()) {
      std::fprintf(stderr, "%s: stat: expected one MOUNTPOINT or IMAGE\n", kTool);
      std::fprintf(stderr, "usage: %s stat [--json] MOUNTPOINT|IMAGE\n", kTool);
      return kExitUsage;
    } else {
      target = a;
    }
  }
  if (target.empty()) {
    std::fprintf(stderr, "%s: stat: missing MOUNTPOINT or IMAGE\n", kTool);
    std::fprintf(stderr, "usage: %s stat [--json] MOUNTPOINT|IMAGE\n", kTool);
    return kExitUsage;
  }
  Target where{target, {}};
  if (on_poisonfs_mount(target)) {
    where.mountpoint = target;
  } else {
    where.mountpoint = mountpoint_of_image(target);
  }
  auto info =
      where.mountpoint.empty() ? info_from_image(target) : info_from_mount(where.mountpoint);
  if (!info) return error(info.error().to_string());
  if (json) {
    print_json(where, *info);
  } else {
    print_human(where, *info);
  }
  return 0;
}

// ---- the subcommand table ---------------------------------------------------

struct Command {
  std::string_view name;
  std::string_view synopsis;
  std::string_view summary;
  int (*run)(const std::vector<std::string>& args);
};

constexpr Command kCommands[] = {
    {"stat", "stat [--json] MOUNTPOINT|IMAGE", "geometry and usage of a filesystem", cmd_stat},
};

void usage(FILE* out) {
  std::fprintf(out, "usage: %s COMMAND [ARGS]\n", kTool);
  for (const auto& c : kCommands) {
    std::fprintf(out, "  %-36.*s %.*s\n", static_cast<int>(c.synopsis.size()), c.synopsis.data(),
                 static_cast<int>(c.summary.size()), c.summary.data());
  }
}

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "%s: missing COMMAND\n", kTool);
    usage(stderr);
    return kExitUsage;
  }
  std::string_view name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") {
    usage(stdout);
    return 0;
  }
  for (const auto& c : kCommands) {
    if (c.name == name) return c.run(std::vector<std::string>(argv + 2, argv + argc));
  }
  std::fprintf(stderr, "%s: unknown command '%s'\n", kTool, argv[1]);
  usage(stderr);
  return kExitUsage;
}

}  // namespace
}  // namespace poisonfs

int main(int argc, char** argv) {
  try {
    return poisonfs::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", poisonfs::kTool, e.what());
    return poisonfs::kExitError;
  }
}
