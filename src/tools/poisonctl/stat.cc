// poisonctl stat: geometry and usage of a filesystem, from the mount
// (POISONFS_IOC_STAT) or from an unmounted image.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

// ---- stat ------------------------------------------------------------------

Result<FsInfo> info_from_mount(const std::string& path, std::optional<bool>* direct_io) {
  Fd fd(open_for_control(path));
  if (!fd) return fail(std::errc{errno}, path + ": cannot open: " + std::strerror(errno));
  poisonfs_stat st{};
  if (ioctl(fd.get(), POISONFS_IOC_STAT, &st) != 0) {
    int err = errno;
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
  info.csum_start = st.csum_start;
  info.csum_blocks = st.csum_blocks;
  info.data_checksums = (st.checksum_flags & POISONFS_STAT_DATA_CHECKSUMS) != 0;
  info.verify_checksums = (st.checksum_flags & POISONFS_STAT_VERIFY_CHECKSUMS) != 0;
  info.uuid.assign(st.uuid, strnlen(st.uuid, sizeof st.uuid));
  if (direct_io) *direct_io = (st.session_flags & POISONFS_STAT_DIRECT_IO) != 0;
  return info;
}

namespace {

Result<FsInfo> info_from_image(const std::string& path) {
  auto fs = open_image(path);
  if (!fs) return std::unexpected(fs.error());
  return (*fs)->info();
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

void print_human(const Target& target, const FsInfo& i, std::optional<bool> direct_io) {
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
      {"data checksums", i.data_checksums ? block_range(i.csum_start, i.csum_blocks) +
                                                (i.verify_checksums ? ", verified on every read"
                                                                    : ", verified by scrub")
                                          : std::string("none (made with mkfs --no-checksums)")},
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
  if (direct_io)
    rows.emplace_back("page cache",
                      *direct_io ? "bypassed by read/write (-o direct_io)" : "used by read/write");
  size_t width = 0;
  for (const auto& [k, v] : rows) width = std::max(width, k.size());
  for (const auto& [k, v] : rows) {
    std::printf("%s:%*s %s\n", k.c_str(), static_cast<int>(width - k.size()), "", v.c_str());
  }
}

void print_json(const Target& target, const FsInfo& i, std::optional<bool> direct_io) {
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
      {"csum_start", std::to_string(i.csum_start)},
      {"csum_blocks", std::to_string(i.csum_blocks)},
      {"data_checksums", i.data_checksums ? "true" : "false"},
      {"verify_checksums", i.verify_checksums ? "true" : "false"},
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
      {"direct_io", !direct_io   ? "null"
                    : *direct_io ? "true"
                                 : "false"},
  };
  std::string out = "{";
  for (size_t n = 0; n < fields.size(); ++n) {
    if (n) out += ", ";
    out += json_string(fields[n].first) + ": " + fields[n].second;
  }
  std::printf("%s}\n", out.c_str());
}

}  // namespace

int cmd_stat(const std::vector<std::string>& args) {
  bool json = false;
  std::string target;
  if (int code = parse_json_target("stat", kStatSynopsis, "MOUNTPOINT or IMAGE", args, json, target); code >= 0)
    return code;
  Target where = resolve_target(target);
  std::optional<bool> direct_io;  // nothing for an image: no session
  auto info = where.mountpoint.empty() ? info_from_image(target)
                                       : info_from_mount(where.mountpoint, &direct_io);
  if (!info) return error(info.error().to_string());
  if (json) {
    print_json(where, *info, direct_io);
  } else {
    print_human(where, *info, direct_io);
  }
  return 0;
}

}  // namespace poisonfs::ctl
