// poisonctl: the control tool of poisonfs. Each subcommand works on a mounted
// filesystem (through the ioctls of poisonfs/ioctl.h, issued on any file of
// the mount) or, offline, on an unmounted image (through the core library on
// a private mapping, so the image is never written by a query).
//
//   poisonctl stat [--json] MOUNTPOINT|IMAGE
//   poisonctl reflink SRC DST [--range SRC_OFF DST_OFF LEN]
//   poisonctl bmap [--json] FILE | --image IMAGE PATH
//   poisonctl fsmap [--json] MOUNTPOINT|IMAGE [START [LENGTH]]
//   poisonctl inject MOUNTPOINT|IMAGE OFFSET LENGTH [--latent]
//   poisonctl badblocks [--bytes] MOUNTPOINT|IMAGE
//   poisonctl poison [--json] FILE | --image IMAGE PATH
//   poisonctl events [--json] [--follow] MOUNTPOINT
//   poisonctl status [--json] MOUNTPOINT
//   poisonctl map --svg OUT.svg MOUNTPOINT|IMAGE
//
// Subcommands live in one table (kCommands); a new one is a function plus a
// row there.
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "fs/fsmap_pack.h"
#include "poisonfs/filesystem.h"
#include "poisonfs/ioctl.h"
#include "poisonfs/media.h"
#include "util/strfmt.h"

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

// The whole of a small (procfs) file, or empty.
std::string read_small_file(const char* path) {
  std::string text;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buf[8192];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(fd);
  return text;
}

// The next space-separated field of `rest` (consumed).
std::string_view next_field(std::string_view& rest) {
  size_t end = rest.find(' ');
  std::string_view field = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
  return field;
}

// Parsed by hand, not with streams: every poisonctl call reads it, and
// stream set-up alone cost it a tenth of a millisecond.
std::vector<MountEntry> poisonfs_mounts() {
  std::vector<MountEntry> mounts;
  std::string text = read_small_file("/proc/self/mountinfo");
  std::string_view all(text);
  while (!all.empty()) {
    size_t eol = all.find('\n');
    std::string_view line = all.substr(0, eol);
    all = eol == std::string_view::npos ? std::string_view{} : all.substr(eol + 1);
    // id parent MAJ:MIN root mountpoint options [optional...] - fstype source superopts
    size_t sep = line.find(" - ");
    if (sep == std::string_view::npos) continue;
    std::string_view tail = line.substr(sep + 3);
    if (next_field(tail) != "fuse.poisonfs") continue;
    std::string_view head = line.substr(0, sep);
    MountEntry e;
    next_field(head);  // id
    next_field(head);  // parent
    e.devno = next_field(head);
    next_field(head);  // root
    e.mountpoint = unescape(std::string(next_field(head)));
    e.fstype = "fuse.poisonfs";
    e.source = unescape(std::string(next_field(tail)));
    mounts.push_back(std::move(e));
  }
  return mounts;
}

// statmount(2) (Linux 6.8; the fs subtype since 6.13), declared here: the
// C library's headers may predate it. The layout is the kernel's ABI.
constexpr long kSysStatmount = 457;
constexpr uint32_t kStatxMntIdUnique = 0x4000;
constexpr uint64_t kStatmountFsType = 0x20;
constexpr uint64_t kStatmountFsSubtype = 0x100;
struct MntIdReq {
  uint32_t size;
  uint32_t spare;
  uint64_t mnt_id;
  uint64_t param;
};
struct StatmountReply {
  uint32_t size, mnt_opts;
  uint64_t mask;
  uint32_t sb_dev_major, sb_dev_minor;
  uint64_t sb_magic;
  uint32_t sb_flags, fs_type;
  uint64_t mnt_id, mnt_parent_id;
  uint32_t mnt_id_old, mnt_parent_id_old;
  uint64_t mnt_attr, mnt_propagation, mnt_peer_group, mnt_master, propagate_from;
  uint32_t mnt_root, mnt_point;
  uint64_t mnt_ns_id;
  uint32_t fs_subtype, sb_source;
  uint32_t opt_num, opt_array, opt_sec_num, opt_sec_array;
  uint64_t spare2[46];
  char str[512];  // the strings asked for; EOVERFLOW if they do not fit
};

// Whether `path` is on a fuse.poisonfs mount, asked of the kernel in two
// system calls (statx for the mount's id, statmount for its type), or
// nothing where the kernel cannot say. Neither call reaches the daemon.
std::optional<bool> on_poisonfs_mount_by_statmount(const std::string& path) {
  struct statx sx {};
  // No attribute wanted: FUSE answers without a round trip. A refusal
  // (a seccomp filter) leaves the question to the fallback.
  if (statx(AT_FDCWD, path.c_str(), AT_STATX_DONT_SYNC, kStatxMntIdUnique, &sx) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return std::nullopt;
  }
  if (!(sx.stx_mask & kStatxMntIdUnique)) return std::nullopt;
  MntIdReq req{sizeof req, 0, sx.stx_mnt_id, kStatmountFsType | kStatmountFsSubtype};
  auto reply = std::make_unique<StatmountReply>();
  if (syscall(kSysStatmount, &req, reply.get(), sizeof *reply, 0) != 0) return std::nullopt;
  auto text = [&](uint32_t at) { return at < sizeof reply->str ? std::string_view(reply->str + at) : std::string_view{}; };
  if (!(reply->mask & kStatmountFsType)) return std::nullopt;
  if (text(reply->fs_type) != "fuse") return false;
  // A mount without a subtype has none in the mask; so has a kernel
  // older than 6.13: then only mountinfo can tell.
  if (!(reply->mask & kStatmountFsSubtype)) return std::nullopt;
  return text(reply->fs_subtype) == "poisonfs";
}

// True when `path` lives on a mounted poisonfs: the mount that holds its
// device number is of type fuse.poisonfs. (No statfs first: on a FUSE
// mount it is a round trip to the daemon on every poisonctl call.)
bool on_poisonfs_mount(const std::string& path) {
  if (auto known = on_poisonfs_mount_by_statmount(path)) return *known;
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

// direct_io, if given: whether the mount serves read/write without the
// page cache (-o direct_io in force).
Result<FsInfo> info_from_mount(const std::string& path, std::optional<bool>* direct_io = nullptr) {
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
  info.csum_start = st.csum_start;
  info.csum_blocks = st.csum_blocks;
  info.data_checksums = (st.checksum_flags & POISONFS_STAT_DATA_CHECKSUMS) != 0;
  info.verify_checksums = (st.checksum_flags & POISONFS_STAT_VERIFY_CHECKSUMS) != 0;
  info.uuid.assign(st.uuid, strnlen(st.uuid, sizeof st.uuid));
  if (direct_io) *direct_io = (st.session_flags & POISONFS_STAT_DIRECT_IO) != 0;
  return info;
}

// Opens an unmounted image through the core on a private mapping: queries
// never write it.
Result<std::unique_ptr<Filesystem>> open_image(const std::string& path) {
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
  return std::move(*fs);
}

Result<FsInfo> info_from_image(const std::string& path) {
  auto fs = open_image(path);
  if (!fs) return std::unexpected(fs.error());
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

// Decides between the mount and the image for a MOUNTPOINT|IMAGE argument:
// a path on a mounted poisonfs is asked through the mount; an image that is
// mounted now is asked through its mount (it is locked, and the daemon has
// the live state); anything else is opened offline.
Target resolve_target(const std::string& arg) {
  Target where{arg, {}};
  if (on_poisonfs_mount(arg)) {
    where.mountpoint = arg;
  } else {
    where.mountpoint = mountpoint_of_image(arg);
  }
  return where;
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
                                                (i.verify_checksums ? ", verified on every read" : ", verified by scrub")
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
  if (direct_io) rows.emplace_back("page cache", *direct_io ? "bypassed by read/write (-o direct_io)" : "used by read/write");
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
      {"direct_io", !direct_io ? "null" : *direct_io ? "true" : "false"},
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
  Target where = resolve_target(target);
  std::optional<bool> direct_io;  // nothing for an image: no session
  auto info =
      where.mountpoint.empty() ? info_from_image(target) : info_from_mount(where.mountpoint, &direct_io);
  if (!info) return error(info.error().to_string());
  if (json) {
    print_json(where, *info, direct_io);
  } else {
    print_human(where, *info, direct_io);
  }
  return 0;
}

// ---- shared by reflink, bmap and fsmap ---------------------------------------

// Closes a descriptor at scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_;
};

// "Invalid argument (EINVAL)": the text and the name, so that both a reader
// and a script find what they look for.
std::string errno_text(int err) {
  std::string text = std::strerror(err);
  if (const char* name = strerrorname_np(err)) text += std::string(" (") + name + ")";
  return text;
}

int usage_error(std::string_view command, const std::string& message, std::string_view synopsis) {
  std::fprintf(stderr, "%s: %.*s: %s\n", kTool, static_cast<int>(command.size()), command.data(),
               message.c_str());
  std::fprintf(stderr, "usage: %s %.*s\n", kTool, static_cast<int>(synopsis.size()), synopsis.data());
  return kExitUsage;
}

void append_u64(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

void append_json_string(std::string& out, std::string_view s) {
  // Most names need no escape: then one copy.
  auto plain_byte = [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c >= 0x20 && c != '"' && c != '\\';
  };
  if (std::all_of(s.begin(), s.end(), plain_byte)) {
    out += '"';
    out += s;
    out += '"';
    return;
  }
  out += '"';
  size_t plain = 0;  // start of the run of bytes that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + plain, i - plain);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    }
    plain = i + 1;
  }
  out.append(s.data() + plain, s.size() - plain);
  out += '"';
}

// An output buffer filled through a cursor: a hot loop makes room for one
// record at once, then copies its pieces with no capacity check per piece.
// Built with a flush threshold it streams to stdout instead of growing: a
// large listing then touches a few pages, not a buffer its size (each new
// page is a fault, ~2 us on a VM; 1,001 fsmap records made 80 of them).
class OutBuf {
 public:
  OutBuf() = default;
  explicit OutBuf(size_t flush_at) : flush_at_(flush_at) {}
  OutBuf(const OutBuf&) = delete;
  OutBuf& operator=(const OutBuf&) = delete;
  ~OutBuf() { std::free(buf_); }

  void room(size_t n) {
    size_t used = static_cast<size_t>(at_ - buf_);
    if (flush_at_ != 0 && used != 0 && used + n > flush_at_) {
      flush();
      used = 0;
    }
    if (static_cast<size_t>(end_ - at_) >= n) return;
    size_t first = flush_at_ != 0 ? flush_at_ : size_t{1} << 16;
    size_t cap = std::max<size_t>({2 * static_cast<size_t>(end_ - buf_), used + n, first});
    char* grown = static_cast<char*>(std::realloc(buf_, cap));
    if (!grown) throw std::bad_alloc();
    buf_ = grown;
    at_ = buf_ + used;
    end_ = buf_ + cap;
  }
  template <size_t N>
  void lit(const char (&s)[N]) {
    std::memcpy(at_, s, N - 1);
    at_ += N - 1;
  }
  void raw(std::string_view s) {
    std::memcpy(at_, s.data(), s.size());
    at_ += s.size();
  }
  void u64(uint64_t v) { at_ = std::to_chars(at_, at_ + 20, v).ptr; }
  void pad(size_t n) {
    std::memset(at_, ' ', n);
    at_ += n;
  }
  std::string_view view() const { return {buf_, static_cast<size_t>(at_ - buf_)}; }
  // Writes what is left; the first write error of the stream, if any.
  int finish();

 private:
  void flush();
  size_t flush_at_ = 0;
  bool write_failed_ = false;
  int write_errno_ = 0;
  char* buf_ = nullptr;
  char* at_ = nullptr;
  char* end_ = nullptr;
};

// Writes `out` to standard output with write(2), after what stdio holds:
// no second copy through stdio's 4 KiB buffer (two system calls per 16 KiB
// flushed). 0, or the errno of the failure.
int write_all_stdout(std::string_view out) {
  if (std::fflush(stdout) != 0) return errno != 0 ? errno : EIO;
  while (!out.empty()) {
    ssize_t n = ::write(STDOUT_FILENO, out.data(), out.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    out.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

int write_stdout(std::string_view out) {
  if (int err = write_all_stdout(out)) return error(std::string("write error: ") + std::strerror(err));
  return 0;
}

void OutBuf::flush() {
  if (!write_failed_) write_errno_ = write_all_stdout(view());
  write_failed_ = write_errno_ != 0;
  at_ = buf_;
}

int OutBuf::finish() {
  if (write_failed_) return error(std::string("write error: ") + std::strerror(write_errno_));
  return write_stdout(view());
}

Result<uint64_t> parse_size_arg(const std::string& what, const std::string& text) {
  auto v = parse_size(text);
  if (!v) return fail(v.error().code, what + ": " + v.error().to_string());
  return v;
}

std::string parent_dir(const std::string& path) {
  auto end = path.find_last_not_of('/');
  if (end == std::string::npos) return "/";
  auto slash = path.rfind('/', end);
  if (slash == std::string::npos) return ".";
  auto keep = path.find_last_not_of('/', slash);
  return keep == std::string::npos ? "/" : path.substr(0, keep + 1);
}

// ---- reflink -----------------------------------------------------------------

constexpr std::string_view kReflinkSynopsis = "reflink SRC DST [--range SRC_OFF DST_OFF LEN]";

// One POISONFS_IOC_CLONE_RANGE on dst: 0 or the errno.
int clone_range_ioctl(int dst_fd, int src_fd, uint64_t src_off, uint64_t len, uint64_t dst_off) {
  poisonfs_clone_range args{};
  args.src_fd = src_fd;
  args.src_offset = src_off;
  args.src_length = len;
  args.dest_offset = dst_off;
  return ioctl(dst_fd, POISONFS_IOC_CLONE_RANGE, &args) == 0 ? 0 : errno;
}

std::string reflink_hint(int err) {
  switch (err) {
    case EINVAL:
      return "offsets (and LEN, unless the range ends at SRC's end) must be multiples of 4096, the "
             "range must lie inside SRC, and two ranges of one file must not overlap";
    case EXDEV: return "SRC and DST must be on the same poisonfs mount";
    case EBADF: return "SRC must be open for reading and DST for writing";
    case EISDIR: return "directories cannot be reflinked";
    case ENOTTY:
    case EOPNOTSUPP: return "not a poisonfs file";
    default: return {};
  }
}

int reflink_failed(const std::string& src, const std::string& dst, const char* what, int err) {
  std::string message = "reflink " + src + " -> " + dst + ": " + what + errno_text(err);
  std::string hint = reflink_hint(err);
  if (!hint.empty()) message += ": " + hint;
  return error(message);
}

int cmd_reflink(const std::vector<std::string>& args) {
  std::vector<std::string> names;
  std::vector<std::string> range;
  bool ranged = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kReflinkSynopsis.size()), kReflinkSynopsis.data());
      return 0;
    } else if (a == "--range") {
      if (ranged) return usage_error("reflink", "--range given twice", kReflinkSynopsis);
      if (args.size() - i - 1 < 3) {
        return usage_error("reflink", "--range needs SRC_OFF DST_OFF LEN", kReflinkSynopsis);
      }
      ranged = true;
      range.assign(args.begin() + static_cast<long>(i) + 1, args.begin() + static_cast<long>(i) + 4);
      i += 3;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("reflink", "unknown option '" + a + "'", kReflinkSynopsis);
    } else {
      names.push_back(a);
    }
  }
  if (names.size() != 2) return usage_error("reflink", "expected SRC and DST", kReflinkSynopsis);
  const std::string& src = names[0];
  const std::string& dst = names[1];
  uint64_t src_off = 0, dst_off = 0, len = 0;
  if (ranged) {
    auto so = parse_size_arg("SRC_OFF", range[0]);
    auto doff = parse_size_arg("DST_OFF", range[1]);
    auto ln = parse_size_arg("LEN", range[2]);
    for (auto* r : {&so, &doff, &ln}) {
      if (!*r) return usage_error("reflink", r->error().to_string(), kReflinkSynopsis);
    }
    src_off = *so;
    dst_off = *doff;
    len = *ln;
  }

  // The clone happens in the daemon: both files must be reached through a
  // mount (an image is locked by its daemon, and offline there is no
  // descriptor to hand over).
  struct stat dst_st {};
  const bool dst_exists = stat(dst.c_str(), &dst_st) == 0;
  const int dst_errno = dst_exists ? 0 : errno;
  if (!on_poisonfs_mount(dst_exists ? dst : parent_dir(dst))) {
    if (!dst_exists && (dst_errno != ENOENT || ranged)) {
      return error("reflink: " + dst + ": cannot open: " + errno_text(dst_errno));
    }
    return error("reflink: " + dst +
                 " is not on a mounted poisonfs: reflink works only through a mount (mount the "
                 "image with poisonfs and name files inside the mount)");
  }
  Fd src_fd(open(src.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!src_fd) return error("reflink: " + src + ": cannot open: " + errno_text(errno));

  if (ranged) {
    Fd dst_fd(open(dst.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY));
    if (!dst_fd) return error("reflink: " + dst + ": cannot open: " + errno_text(errno));
    if (int err = clone_range_ioctl(dst_fd.get(), src_fd.get(), src_off, len, dst_off)) {
      return reflink_failed(src, dst, "", err);
    }
    return 0;
  }

  // Whole file, like FICLONE plus cp's truncation: DST ends up with SRC's
  // bytes and size. A new DST is removed again when the clone fails.
  bool created = true;
  int raw = open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0666);
  if (raw < 0 && errno == EEXIST) {
    created = false;
    raw = open(dst.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY);
  }
  Fd dst_fd(raw);
  if (!dst_fd) return error("reflink: " + dst + ": cannot open: " + errno_text(errno));
  struct stat s_st {}, d_st {};
  if (fstat(src_fd.get(), &s_st) != 0 || fstat(dst_fd.get(), &d_st) != 0) {
    int err = errno;
    if (created) unlink(dst.c_str());
    return error("reflink: fstat: " + errno_text(err));
  }
  const uint64_t src_size = static_cast<uint64_t>(s_st.st_size);
  const uint64_t dst_size = static_cast<uint64_t>(d_st.st_size);
  int err = 0;
  const char* step = "";
  if (S_ISREG(s_st.st_mode) && dst_size > src_size && src_size % kBlockSize != 0) {
    // A clone may end in a partial block only where DST ends too: clone the
    // whole blocks first (this also checks everything else before DST is
    // touched), cut DST to SRC's size, then clone the last partial block.
    // With no whole block, the checks the daemon would make are made here,
    // so that a clone bound to fail does not cut DST first.
    const uint64_t whole = src_size - src_size % kBlockSize;
    if (s_st.st_dev != d_st.st_dev) err = EXDEV;
    else if (whole > 0) err = clone_range_ioctl(dst_fd.get(), src_fd.get(), 0, whole, 0);
    if (!err && ftruncate(dst_fd.get(), static_cast<off_t>(src_size)) != 0) {
      err = errno;
      step = "truncate: ";
    }
    if (!err) err = clone_range_ioctl(dst_fd.get(), src_fd.get(), whole, 0, whole);
  } else {
    err = clone_range_ioctl(dst_fd.get(), src_fd.get(), 0, 0, 0);
    if (!err && dst_size > src_size && ftruncate(dst_fd.get(), static_cast<off_t>(src_size)) != 0) {
      err = errno;
      step = "truncate: ";
    }
  }
  if (err) {
    if (created) unlink(dst.c_str());
    return reflink_failed(src, dst, step, err);
  }
  return 0;
}

// Looks up a path of an offline image ("/a/b" or "a/b").
Result<Ino> lookup_path(Filesystem& fs, const std::string& image, const std::string& path) {
  Ino ino = kRootIno;
  std::string_view rest = path;
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view name = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    if (name.empty() || name == ".") continue;
    auto attr = fs.lookup(ino, name);
    if (!attr) return fail(attr.error().code, image + ": " + path + ": " + attr.error().to_string());
    ino = attr->ino;
  }
  return ino;
}

// ---- bmap --------------------------------------------------------------------

constexpr std::string_view kBmapSynopsis = "bmap [--json] FILE | --image IMAGE PATH";

Result<std::vector<BmapEntry>> bmap_from_mount(const std::string& file) {
  Fd fd(open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) return fail(std::errc{errno}, file + ": cannot open: " + errno_text(errno));
  auto page = std::make_unique<poisonfs_bmap>();
  std::vector<BmapEntry> out;
  uint64_t cursor = 0;
  for (;;) {
    std::memset(page.get(), 0, offsetof(poisonfs_bmap, recs));
    page->cursor = cursor;
    if (ioctl(fd.get(), POISONFS_IOC_BMAP, page.get()) != 0) {
      int err = errno;
      return fail(std::errc{err}, file + ": POISONFS_IOC_BMAP failed: " + errno_text(err));
    }
    if (page->count > POISONFS_BMAP_MAX) return fail(std::errc::io_error, file + ": bad POISONFS_IOC_BMAP reply");
    for (uint32_t i = 0; i < page->count; ++i) {
      const poisonfs_bmap_rec& r = page->recs[i];
      out.push_back(BmapEntry{r.file_offset, r.physical, r.length, (r.flags & POISONFS_BMAP_SHARED) != 0,
                              (r.flags & POISONFS_BMAP_UNWRITTEN) != 0, (r.flags & POISONFS_BMAP_POISONED) != 0});
    }
    if (page->flags & POISONFS_OF_LAST) break;
    if (page->count == 0 || page->cursor <= cursor) {
      return fail(std::errc::io_error, file + ": POISONFS_IOC_BMAP made no progress");
    }
    cursor = page->cursor;
  }
  return out;
}

Result<std::vector<BmapEntry>> bmap_from_image(const std::string& image, const std::string& path) {
  auto fs = open_image(image);
  if (!fs) return std::unexpected(fs.error());
  auto ino = lookup_path(**fs, image, path);
  if (!ino) return std::unexpected(ino.error());
  auto entries = (*fs)->bmap(*ino);
  if (!entries) return fail(entries.error().code, image + ": " + path + ": " + entries.error().to_string());
  return entries;
}

std::string bmap_flags(const BmapEntry& e) {
  std::string f;
  if (e.shared) f += "shared";
  if (e.unwritten) f += f.empty() ? "unwritten" : ",unwritten";
  if (e.poisoned) f += f.empty() ? "poisoned" : ",poisoned";
  return f.empty() ? "-" : f;
}

void print_bmap_human(const std::string& name, const std::vector<BmapEntry>& entries) {
  const char* heads[] = {"FILE_OFFSET", "PHYSICAL", "LENGTH", "FLAGS"};
  std::vector<std::array<std::string, 4>> rows;
  uint64_t mapped = 0, shared = 0, unwritten = 0, poisoned = 0;
  for (const BmapEntry& e : entries) {
    rows.push_back({std::to_string(e.file_offset), std::to_string(e.physical), std::to_string(e.length), bmap_flags(e)});
    mapped += e.length;
    if (e.shared) shared += e.length;
    if (e.unwritten) unwritten += e.length;
    if (e.poisoned) poisoned += e.length;
  }
  size_t w[4];
  for (int c = 0; c < 4; ++c) {
    w[c] = std::strlen(heads[c]);
    for (const auto& r : rows) w[c] = std::max(w[c], r[c].size());
  }
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%*s  %*s  %*s  %s\n", static_cast<int>(w[0]), heads[0], static_cast<int>(w[1]),
                heads[1], static_cast<int>(w[2]), heads[2], heads[3]);
  out += line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "%*s  %*s  %*s  %s\n", static_cast<int>(w[0]), r[0].c_str(),
                  static_cast<int>(w[1]), r[1].c_str(), static_cast<int>(w[2]), r[2].c_str(), r[3].c_str());
    out += line;
  }
  out += name + ": " + std::to_string(entries.size()) + (entries.size() == 1 ? " extent, " : " extents, ") +
         std::to_string(mapped) + " bytes mapped, " + std::to_string(shared) + " shared, " +
         std::to_string(unwritten) + " unwritten, " + std::to_string(poisoned) + " poisoned\n";
  std::fputs(out.c_str(), stdout);
}

std::string bmap_json(const std::vector<BmapEntry>& entries) {
  std::string out;
  out.reserve(32 + entries.size() * 128);
  out += '[';
  for (size_t i = 0; i < entries.size(); ++i) {
    const BmapEntry& e = entries[i];
    out += i ? ",\n{\"file_offset\": " : "\n{\"file_offset\": ";
    append_u64(out, e.file_offset);
    out += ", \"physical\": ";
    append_u64(out, e.physical);
    out += ", \"length\": ";
    append_u64(out, e.length);
    out += e.shared ? ", \"shared\": true" : ", \"shared\": false";
    out += e.poisoned ? ", \"poisoned\": true" : ", \"poisoned\": false";
    out += e.unwritten ? ", \"unwritten\": true}" : ", \"unwritten\": false}";
  }
  out += entries.empty() ? "]\n" : "\n]\n";
  return out;
}

// The target of a per-file command: FILE on a mounted poisonfs, or
// --image IMAGE PATH for a file of an unmounted image.
struct FileTarget {
  bool json = false;
  std::string file, image;
};

// Parses [--json] FILE | --image IMAGE PATH. Returns -1 to go on, else the
// exit code to return (help printed, or a usage error).
int parse_file_target(const std::string& cmd, std::string_view synopsis, const std::vector<std::string>& args,
                      FileTarget* t) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--json") {
      t->json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(synopsis.size()), synopsis.data());
      return 0;
    } else if (a == "--image") {
      if (i + 1 >= args.size()) return usage_error(cmd, "--image needs IMAGE", synopsis);
      if (!t->image.empty()) return usage_error(cmd, "--image given twice", synopsis);
      t->image = args[++i];
      if (t->image.empty()) return usage_error(cmd, "empty IMAGE", synopsis);
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error(cmd, "unknown option '" + a + "'", synopsis);
    } else if (!t->file.empty()) {
      return usage_error(cmd, "expected one FILE", synopsis);
    } else {
      t->file = a;
    }
  }
  if (t->file.empty()) return usage_error(cmd, t->image.empty() ? "missing FILE" : "missing PATH", synopsis);
  return -1;
}

// Asks through the mount (from_mount(path)) or offline (from_image(image,
// path)) as the target says; a mounted image is locked by its daemon, so it
// is asked through its mount. *name: how to call the file in output.
template <class FromMount, class FromImage>
auto fetch_for_file(const std::string& cmd, const FileTarget& t, std::string* name, FromMount from_mount,
                    FromImage from_image) -> decltype(from_mount(std::string{})) {
  *name = t.file;
  if (!t.image.empty()) {
    *name = t.image + ":" + t.file;
    std::string mp = on_poisonfs_mount(t.image) ? std::string{} : mountpoint_of_image(t.image);
    if (!mp.empty()) return from_mount(mp + (t.file.starts_with("/") ? "" : "/") + t.file);
    return from_image(t.image, t.file);
  }
  if (on_poisonfs_mount(t.file)) return from_mount(t.file);
  struct stat st {};
  if (stat(t.file.c_str(), &st) != 0) return fail(std::errc::invalid_argument, t.file + ": " + errno_text(errno));
  return fail(std::errc::invalid_argument, t.file + " is not on a mounted poisonfs (for a file of an unmounted image: " +
                                               kTool + " " + cmd + " --image IMAGE PATH)");
}

int cmd_bmap(const std::vector<std::string>& args) {
  FileTarget t;
  if (int code = parse_file_target("bmap", kBmapSynopsis, args, &t); code >= 0) return code;
  std::string name;
  auto entries = fetch_for_file("bmap", t, &name, bmap_from_mount, bmap_from_image);
  if (!entries) return error(entries.error().to_string());
  if (t.json) return write_stdout(bmap_json(*entries));
  print_bmap_human(name, *entries);
  return 0;
}

// ---- fsmap -------------------------------------------------------------------

constexpr std::string_view kFsmapSynopsis = "fsmap [--json] MOUNTPOINT|IMAGE [START [LENGTH]]";

bool is_data(const FsmapEntry& e) { return e.owner == FsmapOwner::kData; }
bool has_inode(const FsmapEntry& e) { return fsmap_owner_has_inode(e.owner); }

// The paths of the data owners of a listing, kept once per inode in the
// form the listing prints: the JSON fragment every record of that inode
// repeats, or its first path and how many it has (tables, the map).
class PathTable {
 public:
  enum class Form { kJson, kFirstPath };
  explicit PathTable(Form form) : form_(form) {}
  void clear() { *this = PathTable(form_); }

  // Sets the paths of ino, in any order; the first set of an inode counts.
  // Sorted: the core lists hard links in an order a remount may change.
  // Room for `inodes` more adds of short names, grown geometrically (a
  // listing of many pages reserves once per page).
  void reserve(size_t inodes) {
    grow(slots_, slots_.size() + inodes);
    if (form_ == Form::kJson) grow(json_, json_.size() + inodes * 40);
    else grow(first_names_, first_names_.size() + inodes * 24);
  }
  template <class Paths>
  void add(Ino ino, const Paths& given) {
    std::span<const std::string_view> paths;
    std::string_view one;
    if (given.size() == 1) {
      one = *given.begin();
      paths = {&one, 1};
    } else {
      paths_.assign(given.begin(), given.end());
      std::sort(paths_.begin(), paths_.end());
      paths = paths_;
    }
    Slot slot{ino, 0, 0, paths.size()};
    if (form_ == Form::kJson) {
      slot.at = json_.size();
      append_json_paths(paths);
      slot.len = json_.size() - slot.at;
    } else if (!paths.empty()) {
      slot.at = first_names_.size();
      slot.len = paths.front().size();
      first_names_ += paths.front();
    }
    if (!slots_.empty() && slots_.back().ino >= ino) sorted_ = false;
    slots_.push_back(slot);
  }
  // The data inodes of `entries` that no add() named (both sides sorted:
  // one merge, no search per inode).
  std::vector<Ino> missing(const std::vector<FsmapEntry>& entries) {
    sort();
    std::vector<Ino> out;
    auto slot = slots_.begin();
    for (Ino ino : distinct_data_inodes(entries)) {
      while (slot != slots_.end() && slot->ino < ino) ++slot;
      if (slot == slots_.end() || slot->ino != ino) out.push_back(ino);
    }
    return out;
  }
  // Ready for lookups. An inode no add() named (gone since the listing)
  // prints as having no path.
  void finish() { sort(); }

  // Form::kJson only.
  std::string_view json(Ino ino) const {
    const Slot* s = find(ino);
    if (!s) return ", \"path\": null";
    return std::string_view(json_).substr(s->at, s->len);
  }
  // The first path and how many there are (Form::kFirstPath only).
  std::pair<std::string_view, size_t> first_path(Ino ino) const {
    const Slot* s = find(ino);
    if (!s || s->count == 0) return {{}, 0};
    return {std::string_view(first_names_).substr(s->at, s->len), s->count};
  }

 private:
  struct Slot {
    Ino ino;
    size_t at;  // its JSON fragment in json_, or its first path in first_names_
    size_t len;
    size_t count;  // paths
  };
  // ", "path": "/a"" and, for more than one, ", "paths": ["/a", "/b"]".
  void append_json_paths(std::span<const std::string_view> paths) {
    if (paths.empty()) {
      json_ += ", \"path\": null";
      return;
    }
    json_ += ", \"path\": ";
    append_json_string(json_, paths.front());
    if (paths.size() == 1) return;
    json_ += ", \"paths\": [";
    for (size_t k = 0; k < paths.size(); ++k) {
      if (k) json_ += ", ";
      append_json_string(json_, paths[k]);
    }
    json_ += ']';
  }
  template <class Container>
  static void grow(Container& c, size_t need) {
    if (c.capacity() < need) c.reserve(std::max(need, 2 * c.capacity()));
  }
  // Slots come in inode order from a listing of sharers: then nothing moves.
  void sort() {
    if (sorted_) return;
    std::stable_sort(slots_.begin(), slots_.end(), [](const Slot& a, const Slot& b) { return a.ino < b.ino; });
    slots_.erase(std::unique(slots_.begin(), slots_.end(), [](const Slot& a, const Slot& b) { return a.ino == b.ino; }),
                 slots_.end());
    sorted_ = true;
    last_ = 0;
  }
  const Slot* find(Ino ino) const {
    // Consecutive records usually name the same inode, or the next one
    // (the sharers of a block come in inode order).
    if (last_ < slots_.size() && slots_[last_].ino == ino) return &slots_[last_];
    if (last_ + 1 < slots_.size() && slots_[last_ + 1].ino == ino) return &slots_[++last_];
    auto it = std::lower_bound(slots_.begin(), slots_.end(), ino, [](const Slot& s, Ino i) { return s.ino < i; });
    if (it == slots_.end() || it->ino != ino) return nullptr;
    last_ = static_cast<size_t>(it - slots_.begin());
    return &*it;
  }
  Form form_;
  std::vector<Slot> slots_;
  bool sorted_ = true;  // strictly increasing inodes
  std::string first_names_;
  std::string json_;
  std::vector<std::string_view> paths_;  // scratch of add()
  mutable size_t last_ = 0;
};

Status fsmap_from_mount(int fd, const std::string& where, uint64_t start, uint64_t length,
                        std::vector<FsmapEntry>& out) {
  auto page = std::make_unique<poisonfs_fsmap>();
  uint64_t cursor_physical = 0;
  uint32_t cursor_skip = 0;
  for (;;) {
    std::memset(page.get(), 0, offsetof(poisonfs_fsmap, recs));
    page->start = start;
    page->length = length;
    page->cursor_physical = cursor_physical;
    page->cursor_skip = cursor_skip;
    if (ioctl(fd, POISONFS_IOC_FSMAP, page.get()) != 0) {
      int err = errno;
      std::string hint = err == EPERM ? " (only root and the user who mounted may list the device)" : "";
      return fail(std::errc{err}, where + ": POISONFS_IOC_FSMAP failed: " + errno_text(err) + hint);
    }
    if (page->count > POISONFS_FSMAP_MAX) return fail(std::errc::io_error, where + ": bad POISONFS_IOC_FSMAP reply");
    for (uint32_t i = 0; i < page->count; ++i) {
      const poisonfs_fsmap_rec& r = page->recs[i];
      FsmapEntry e;
      e.physical = r.physical;
      e.length = r.length;
      e.owner = static_cast<FsmapOwner>(r.owner);
      e.ino = r.inode;
      e.file_offset = r.file_offset;
      e.shared = (r.flags & POISONFS_FSMAP_SHARED) != 0;
      e.poisoned = (r.flags & POISONFS_FSMAP_POISONED) != 0;
      out.push_back(e);
    }
    if (page->flags & POISONFS_OF_LAST) break;
    if (page->count == 0) return fail(std::errc::io_error, where + ": POISONFS_IOC_FSMAP made no progress");
    cursor_physical = page->cursor_physical;
    cursor_skip = page->cursor_skip;
  }
  return {};
}

// The NUL-terminated name at `at` of a paths reply (at moves past it);
// nothing when the reply ends first.
std::optional<std::string_view> next_name(std::string_view buf, size_t& at) {
  size_t end = buf.find('\0', at);
  if (end == std::string_view::npos) return std::nullopt;
  std::string_view name = buf.substr(at, end - at);
  at = end + 1;
  return name;
}

// Adds every path of one inode, a page of names per round trip: for an
// inode with more names than a PATHS_BATCH reply holds (many long hard
// links). Paths too long for any reply come as "" and are left out.
Status paths_from_mount(int fd, const std::string& where, Ino ino, PathTable& table) {
  auto rec = std::make_unique<poisonfs_paths_from>();
  std::vector<std::string> names;
  for (;;) {
    std::memset(rec.get(), 0, offsetof(poisonfs_paths_from, buf));
    rec->inode = ino;
    rec->skip = static_cast<uint32_t>(names.size());
    if (ioctl(fd, POISONFS_IOC_PATHS_FROM, rec.get()) != 0) {
      int err = errno;
      if (err == ENOENT) {  // gone since the listing: no name to give
        names.clear();
        break;
      }
      std::string hint = err == ENOTTY ? " (the daemon is older than poisonctl: remount with the new poisonfs)" : "";
      return fail(std::errc{err}, where + ": POISONFS_IOC_PATHS_FROM failed: " + errno_text(err) + hint);
    }
    std::string_view buf(rec->buf, sizeof rec->buf);
    size_t at = 0;
    for (uint32_t i = 0; i < rec->count; ++i) {
      auto name = next_name(buf, at);
      if (!name) return fail(std::errc::io_error, where + ": truncated paths reply");
      names.emplace_back(*name);
    }
    if (rec->flags & POISONFS_OF_LAST) break;
    // A name is at least one byte and a NUL; an inode has fewer than 2^32
    // links: a daemon that keeps answering past that does not page.
    if (rec->count == 0 || names.size() >= UINT32_MAX)
      return fail(std::errc::io_error, where + ": POISONFS_IOC_PATHS_FROM made no progress");
  }
  std::erase(names, std::string{});
  table.add(ino, names);
  return {};
}

// Adds the paths of `inos` to the table, up to 128 inodes per round trip
// (one ioctl per inode would cost ~15 us each: 15 ms for 1,001 owners).
Status paths_batch_from_mount(int fd, const std::string& where, const std::vector<Ino>& inos, PathTable& table) {
  auto rec = std::make_unique<poisonfs_paths_batch>();
  std::vector<std::string_view> names;
  for (size_t next = 0; next < inos.size();) {
    uint32_t count = static_cast<uint32_t>(std::min<size_t>(POISONFS_PATHS_BATCH_MAX, inos.size() - next));
    rec->count = count;
    rec->done = 0;
    std::copy_n(inos.begin() + static_cast<long>(next), count, rec->inodes);
    if (ioctl(fd, POISONFS_IOC_PATHS_BATCH, rec.get()) != 0) {
      int err = errno;
      return fail(std::errc{err}, where + ": POISONFS_IOC_PATHS_BATCH failed: " + errno_text(err));
    }
    if (rec->done > count) return fail(std::errc::io_error, where + ": bad POISONFS_IOC_PATHS_BATCH reply");
    if (rec->done == 0) {
      // The first inode's names alone overflow the reply.
      if (auto st = paths_from_mount(fd, where, inos[next], table); !st) return st;
      ++next;
      continue;
    }
    // Each inode: its paths, NUL-terminated, then an empty string (an inode
    // gone since the listing has no name to give).
    std::string_view buf(rec->buf, sizeof rec->buf);
    size_t at = 0;
    for (uint32_t i = 0; i < rec->done; ++i) {
      names.clear();
      for (;;) {
        auto name = next_name(buf, at);
        if (!name) return fail(std::errc::io_error, where + ": truncated paths reply");
        if (name->empty()) break;
        names.push_back(*name);
      }
      table.add(inos[next + i], names);
    }
    next += rec->done;
  }
  return {};
}

// The owners of a range and the paths of the data owners, one packed page
// (about a thousand owners) per round trip. ENOTTY: a daemon older than
// POISONFS_IOC_FSMAP_PACKED.
Status fsmap_packed_from_mount(int fd, const std::string& where, uint64_t start, uint64_t length,
                               std::vector<FsmapEntry>& entries, PathTable& table) {
  auto page = std::make_unique<poisonfs_fsmap_packed>();
  uint64_t cursor_physical = 0;
  uint32_t cursor_skip = 0;
  auto on_paths = [&table](Ino ino, bool sent, std::span<const std::string> paths) {
    if (sent) table.add(ino, paths);
  };
  for (;;) {
    std::memset(page.get(), 0, offsetof(poisonfs_fsmap_packed, buf));
    page->start = start;
    page->length = length;
    page->cursor_physical = cursor_physical;
    page->cursor_skip = cursor_skip;
    if (ioctl(fd, POISONFS_IOC_FSMAP_PACKED, page.get()) != 0) {
      int err = errno;
      std::string hint = err == EPERM ? " (only root and the user who mounted may list the device)" : "";
      return fail(std::errc{err}, where + ": POISONFS_IOC_FSMAP_PACKED failed: " + errno_text(err) + hint);
    }
    if (page->used > sizeof page->buf) return fail(std::errc::io_error, where + ": bad POISONFS_IOC_FSMAP_PACKED reply");
    table.reserve(std::min<size_t>(page->count, page->used));  // a record is at least a byte
    if (auto st = unpack_fsmap({page->buf, page->used}, page->count, entries, on_paths); !st) {
      return fail(std::errc::io_error, where + ": " + st.error().to_string());
    }
    if (page->flags & POISONFS_OF_LAST) return {};
    if (page->count == 0) return fail(std::errc::io_error, where + ": POISONFS_IOC_FSMAP_PACKED made no progress");
    cursor_physical = page->cursor_physical;
    cursor_skip = page->cursor_skip;
  }
}

// fsmap with paths through the mount: packed pages, or FSMAP then
// PATHS_BATCH from a daemon without them; inodes whose names a page could
// not carry are asked for in batches too.
Status named_fsmap_from_mount(int fd, const std::string& where, uint64_t start, uint64_t length,
                              std::vector<FsmapEntry>& entries, PathTable& table) {
  Status st = fsmap_packed_from_mount(fd, where, start, length, entries, table);
  if (!st && st.error().code == std::errc::inappropriate_io_control_operation) {
    entries.clear();
    table.clear();
    st = fsmap_from_mount(fd, where, start, length, entries);
  }
  if (!st) return st;
  if (auto more = paths_batch_from_mount(fd, where, table.missing(entries), table); !more) return more;
  table.finish();
  return {};
}

void paths_from_core(Filesystem& fs, const std::vector<FsmapEntry>& entries, PathTable& table) {
  std::vector<Ino> inos = distinct_data_inodes(entries);
  PathList names;
  fs.paths(inos, names);
  for (size_t i = 0; i < inos.size(); ++i) table.add(inos[i], names.of(i));
  table.finish();
}

// The longest record but for its path fragment.
constexpr size_t kFsmapJsonFixed = 256;

void fsmap_json(const std::vector<FsmapEntry>& entries, const PathTable& paths, OutBuf& out) {
  out.room(8);
  out.lit("[");
  for (size_t i = 0; i < entries.size(); ++i) {
    const FsmapEntry& e = entries[i];
    std::string_view path = is_data(e) ? paths.json(e.ino) : std::string_view{};
    out.room(kFsmapJsonFixed + path.size());
    if (i) out.lit(",");
    out.lit("\n{\"physical\": ");
    out.u64(e.physical);
    out.lit(", \"length\": ");
    out.u64(e.length);
    switch (e.owner) {
      case FsmapOwner::kFree: out.lit(", \"owner\": \"free\""); break;
      case FsmapOwner::kSuperblock: out.lit(", \"owner\": \"superblock\""); break;
      case FsmapOwner::kJournal: out.lit(", \"owner\": \"journal\""); break;
      case FsmapOwner::kInodes: out.lit(", \"owner\": \"inodes\""); break;
      case FsmapOwner::kExtents: out.lit(", \"owner\": \"extents\""); break;
      case FsmapOwner::kDirectory: out.lit(", \"owner\": \"directory\""); break;
      case FsmapOwner::kXattrs: out.lit(", \"owner\": \"xattr\""); break;
      case FsmapOwner::kData: out.lit(", \"owner\": \"data\""); break;
      case FsmapOwner::kChecksums: out.lit(", \"owner\": \"checksums\""); break;
      default:
        out.lit(", \"owner\": \"");
        out.raw(fsmap_owner_name(e.owner));  // short: "unknown"
        out.lit("\"");
    }
    if (has_inode(e)) {
      out.lit(", \"inode\": ");
      out.u64(e.ino);
    }
    if (is_data(e)) {
      out.raw(path);
      out.lit(", \"file_offset\": ");
      out.u64(e.file_offset);
      if (e.shared) out.lit(", \"shared\": true");
      else out.lit(", \"shared\": false");
    }
    if (e.poisoned) out.lit(", \"poisoned\": true}");
    else out.lit(", \"poisoned\": false}");
  }
  out.room(8);
  if (entries.empty()) out.lit("]\n");
  else out.lit("\n]\n");
}

// The aligned table of `poisonctl fsmap`, like `xfs_io -c 'fsmap -v'` but in
// device bytes: one row per record, ranges inclusive.
void print_fsmap_human(const Target& where, const std::vector<FsmapEntry>& entries, const PathTable& paths,
                       OutBuf& out) {
  constexpr int kCols = 7;
  static const char* const kHeads[kCols] = {"EXT", "PHYSICAL", "OWNER", "INODE", "FILE_OFFSET", "PATH", "FLAGS"};
  // Each cell is rendered into a small buffer (paths are viewed in place):
  // once to measure the columns, once to print.
  char scratch[96];
  std::string more;
  auto cell = [&](size_t i, int c) -> std::string_view {
    const FsmapEntry& e = entries[i];
    char* p = scratch;
    auto range = [&](uint64_t from, uint64_t len) {
      *p++ = '[';
      p = std::to_chars(p, p + 20, from).ptr;
      *p++ = '.';
      *p++ = '.';
      p = std::to_chars(p, p + 20, from + len - 1).ptr;
      *p++ = ']';
    };
    switch (c) {
      case 0:
        p = std::to_chars(p, p + 20, static_cast<uint64_t>(i)).ptr;
        *p++ = ':';
        break;
      case 1: range(e.physical, e.length); break;
      case 2: return fsmap_owner_name(e.owner);
      case 3:
        if (!has_inode(e)) return "-";
        p = std::to_chars(p, p + 20, e.ino).ptr;
        break;
      case 4:
        if (!is_data(e)) return "-";
        range(e.file_offset, e.length);
        break;
      case 5: {
        if (!is_data(e)) return "-";
        auto [first, count] = paths.first_path(e.ino);
        if (count == 0) return "-";
        if (count == 1) return first;
        more.assign(first);
        more += " (+" + std::to_string(count - 1) + " more)";
        return more;
      }
      default:
        if (e.shared && e.poisoned) return "shared,poisoned";
        if (e.shared) return "shared";
        if (e.poisoned) return "poisoned";
        return "-";
    }
    return {scratch, static_cast<size_t>(p - scratch)};
  };
  size_t w[kCols];
  for (int c = 0; c < kCols; ++c) w[c] = std::strlen(kHeads[c]);
  uint64_t data = 0, meta = 0, free = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    for (int c = 0; c < kCols - 1; ++c) w[c] = std::max(w[c], cell(i, c).size());
    const FsmapEntry& e = entries[i];
    if (is_data(e)) data += e.length;
    else if (e.owner == FsmapOwner::kFree) free += e.length;
    else meta += e.length;
  }
  // Numbers right-aligned, text left-aligned, the last column unpadded.
  static const bool kRight[kCols] = {true, false, false, true, false, false, false};
  auto row = [&](auto&& text) {
    size_t need = 1;
    for (int c = 0; c < kCols; ++c) need += std::max(w[c], text(c).size()) + 2;
    out.room(need);
    for (int c = 0; c < kCols; ++c) {
      std::string_view v = text(c);
      size_t pad = c + 1 < kCols && v.size() < w[c] ? w[c] - v.size() : 0;
      if (kRight[c]) out.pad(pad);
      out.raw(v);
      if (c + 1 < kCols) {
        if (!kRight[c]) out.pad(pad);
        out.lit("  ");
      }
    }
    out.lit("\n");
  };
  row([&](int c) { return std::string_view(kHeads[c]); });
  for (size_t i = 0; i < entries.size(); ++i) row([&](int c) { return cell(i, c); });
  std::string summary = where.describe() + ": " + std::to_string(entries.size()) +
                        (entries.size() == 1 ? " record: " : " records: ") + std::to_string(data) +
                        " bytes in data records, " + std::to_string(meta) + " metadata, " + std::to_string(free) +
                        " free\n";
  out.room(summary.size());
  out.raw(summary);
}

int cmd_fsmap(const std::vector<std::string>& args) {
  bool json = false;
  std::vector<std::string> pos;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kFsmapSynopsis.size()), kFsmapSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("fsmap", "unknown option '" + a + "'", kFsmapSynopsis);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.empty()) return usage_error("fsmap", "missing MOUNTPOINT or IMAGE", kFsmapSynopsis);
  if (pos.size() > 3) return usage_error("fsmap", "too many arguments", kFsmapSynopsis);
  uint64_t start = 0, length = UINT64_MAX;
  if (pos.size() > 1) {
    auto v = parse_size_arg("START", pos[1]);
    if (!v) return usage_error("fsmap", v.error().to_string(), kFsmapSynopsis);
    start = *v;
  }
  if (pos.size() > 2) {
    auto v = parse_size_arg("LENGTH", pos[2]);
    if (!v) return usage_error("fsmap", v.error().to_string(), kFsmapSynopsis);
    length = *v;
  }
  Target where = resolve_target(pos[0]);
  std::vector<FsmapEntry> entries;
  PathTable paths(json ? PathTable::Form::kJson : PathTable::Form::kFirstPath);
  if (!where.mountpoint.empty()) {
    Fd fd(open(where.mountpoint.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    if (auto st = named_fsmap_from_mount(fd.get(), where.mountpoint, start, length, entries, paths); !st) {
      return error(st.error().to_string());
    }
  } else {
    auto fs = open_image(where.arg);
    if (!fs) return error(fs.error().to_string());
    Status st = (*fs)->fsmap(start, length, [&](const FsmapEntry& e) {
      entries.push_back(e);
      return true;
    });
    if (!st) return error(where.arg + ": " + st.error().to_string());
    paths_from_core(**fs, entries, paths);
  }
  // The listing is fetched whole before a byte is printed (nothing is
  // printed when a query fails half-way), then streamed out 16 KiB at a time.
  OutBuf out(16 << 10);
  if (json) fsmap_json(entries, paths, out);
  else print_fsmap_human(where, entries, paths, out);
  return out.finish();
}

// ---- shared by the poison commands -------------------------------------------

// Why a control ioctl failed, in words a user can act on.
std::string control_hint(int err, std::string_view what) {
  switch (err) {
    case EPERM:
    case EACCES: return " (only root and the user who mounted may " + std::string(what) + ")";
    case ENOTTY:
    case EOPNOTSUPP: return " (not a poisonfs file)";
    case EIO: return " (the filesystem may be shut down: see poisonctl status)";
    default: return {};
  }
}

// The outcome of a control ioctl: 0 or a message already printed.
std::string ioctl_failed(const std::string& where, const char* name, int err, std::string_view what) {
  return where + ": " + name + " failed: " + errno_text(err) + control_hint(err, what);
}

// A descriptor of any file of a mount, for its control ioctls.
int open_for_control(const std::string& path) {
  return open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
}

std::string inclusive(uint64_t offset, uint64_t length) {
  if (length == 0) return "-";
  return std::to_string(offset) + ".." + std::to_string(offset + length - 1);
}

// Reads every page of a POISONFS_IOC_BADBLOCKS or POISONFS_IOC_FILE_POISON.
Result<std::vector<poisonfs_range>> ranges_from_mount(int fd, const std::string& where, unsigned long cmd,
                                                      const char* name, std::string_view what) {
  auto page = std::make_unique<poisonfs_ranges>();
  std::vector<poisonfs_range> out;
  uint64_t cursor = 0;
  for (;;) {
    std::memset(page.get(), 0, offsetof(poisonfs_ranges, recs));
    page->cursor = cursor;
    if (ioctl(fd, cmd, page.get()) != 0) {
      int err = errno;
      return fail(std::errc{err}, ioctl_failed(where, name, err, what));
    }
    if (page->count > POISONFS_RANGES_MAX) return fail(std::errc::io_error, where + ": bad " + name + " reply");
    out.insert(out.end(), page->recs, page->recs + page->count);
    if (page->flags & POISONFS_OF_LAST) break;
    if (page->count == 0 || page->cursor <= cursor) {
      return fail(std::errc::io_error, where + ": " + name + " made no progress");
    }
    cursor = page->cursor;
  }
  return out;
}

// ---- inject ------------------------------------------------------------------

constexpr std::string_view kInjectSynopsis = "inject MOUNTPOINT|IMAGE OFFSET LENGTH [--latent]";

int cmd_inject(const std::vector<std::string>& args) {
  bool latent = false;
  std::vector<std::string> pos;
  for (const auto& a : args) {
    if (a == "--latent") {
      latent = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kInjectSynopsis.size()), kInjectSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("inject", "unknown option '" + a + "'", kInjectSynopsis);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 3) return usage_error("inject", "expected MOUNTPOINT|IMAGE OFFSET LENGTH", kInjectSynopsis);
  auto off = parse_size_arg("OFFSET", pos[1]);
  if (!off) return usage_error("inject", off.error().to_string(), kInjectSynopsis);
  auto len = parse_size_arg("LENGTH", pos[2]);
  if (!len) return usage_error("inject", len.error().to_string(), kInjectSynopsis);
  const uint64_t offset = *off, length = *len;
  if (length == 0) return error("inject: LENGTH must not be zero; nothing injected");
  if (offset > UINT64_MAX - length) {
    return error("inject: OFFSET + LENGTH (" + pos[1] + " + " + pos[2] + ") overflows; nothing injected");
  }
  auto outside = [&](uint64_t device_bytes) {
    return error(strfmt("inject: device bytes {}..{} lie outside the device ({} bytes); nothing injected", offset,
                        offset + length - 1, device_bytes));
  };

  Target where = resolve_target(pos[0]);
  PoisonRange got;
  if (!where.mountpoint.empty()) {
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    poisonfs_inject rec{};
    rec.offset = offset;
    rec.length = length;
    rec.flags = latent ? POISONFS_POISON_LATENT : 0;
    if (ioctl(fd.get(), POISONFS_IOC_INJECT, &rec) != 0) {
      int err = errno;
      if (err == EINVAL) {
        poisonfs_stat st{};
        if (ioctl(fd.get(), POISONFS_IOC_STAT, &st) == 0 &&
            (offset >= st.device_bytes || length > st.device_bytes - offset)) {
          return outside(st.device_bytes);
        }
      }
      return error(ioctl_failed(where.mountpoint, "POISONFS_IOC_INJECT", err, "inject poison") +
                   "; nothing injected");
    }
    got = PoisonRange{rec.out_offset, rec.out_length, latent};
  } else {
    // Offline: mount the image read-write through the core, inject (the
    // destroyed bytes and the poison list, IMAGE.badblocks, persist), unmount.
    {
      auto probe = open_image(where.arg);
      if (!probe) return error(probe.error().to_string());
      uint64_t device_bytes = (*probe)->info().device_bytes;
      if (offset >= device_bytes || length > device_bytes - offset) return outside(device_bytes);
    }
    auto fs = Filesystem::mount_image(where.arg, OpenOptions{MapMode::kShared});
    if (!fs) return error(where.arg + ": " + fs.error().to_string());
    auto r = (*fs)->inject_poison(offset, length, latent);
    Status unmounted = (*fs)->unmount();
    if (!r) return error(where.arg + ": " + r.error().to_string() + "; nothing injected");
    if (!unmounted) return error(where.arg + ": unmount after the injection: " + unmounted.error().to_string());
    got = *r;
  }
  std::string rounded = got.offset == offset && got.length == length
                            ? std::string{}
                            : strfmt(" (asked {}..{}, rounded out to 64-byte units)", offset, offset + length - 1);
  std::printf("%s: injected %s poison at device bytes %s: offset %" PRIu64 ", length %" PRIu64 "%s\n",
              where.describe().c_str(), latent ? "latent" : "known", inclusive(got.offset, got.length).c_str(),
              got.offset, got.length, rounded.c_str());
  return 0;
}

// ---- badblocks -----------------------------------------------------------------

constexpr std::string_view kBadblocksSynopsis = "badblocks [--bytes] MOUNTPOINT|IMAGE";

int cmd_badblocks(const std::vector<std::string>& args) {
  bool bytes = false;
  std::string target;
  for (const auto& a : args) {
    if (a == "--bytes") {
      bytes = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kBadblocksSynopsis.size()),
                  kBadblocksSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("badblocks", "unknown option '" + a + "'", kBadblocksSynopsis);
    } else if (!target.empty()) {
      return usage_error("badblocks", "expected one MOUNTPOINT or IMAGE", kBadblocksSynopsis);
    } else {
      target = a;
    }
  }
  if (target.empty()) return usage_error("badblocks", "missing MOUNTPOINT or IMAGE", kBadblocksSynopsis);
  Target where = resolve_target(target);
  std::vector<PoisonRange> ranges;
  if (!where.mountpoint.empty()) {
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    auto got = ranges_from_mount(fd.get(), where.mountpoint, POISONFS_IOC_BADBLOCKS, "POISONFS_IOC_BADBLOCKS",
                                 "read the device's poison list");
    if (!got) return error(got.error().to_string());
    for (const poisonfs_range& r : *got) {
      ranges.push_back(PoisonRange{r.offset, r.length, (r.flags & POISONFS_POISON_LATENT) != 0});
    }
  } else {
    auto fs = open_image(where.arg);
    if (!fs) return error(fs.error().to_string());
    ranges = (*fs)->badblocks();
  }
  std::sort(ranges.begin(), ranges.end(), [](const PoisonRange& a, const PoisonRange& b) { return a.offset < b.offset; });
  std::string out;
  if (bytes) {
    for (const PoisonRange& r : ranges) {
      out += std::to_string(r.offset) + " " + std::to_string(r.length) + (r.latent ? " latent\n" : "\n");
    }
  } else {
    // Like /sys/block/pmemN/badblocks: 512-byte sectors, rounded out; ranges
    // that meet once rounded become one line.
    std::vector<std::pair<uint64_t, uint64_t>> sectors;  // [first, end)
    for (const PoisonRange& r : ranges) {
      if (r.length == 0) continue;
      uint64_t first = r.offset / 512, end = r.offset / 512 + (r.offset % 512 + r.length + 511) / 512;
      if (!sectors.empty() && first <= sectors.back().second) {
        sectors.back().second = std::max(sectors.back().second, end);
      } else {
        sectors.emplace_back(first, end);
      }
    }
    for (const auto& [first, end] : sectors) out += std::to_string(first) + " " + std::to_string(end - first) + "\n";
  }
  return write_stdout(out);
}

// ---- poison ---------------------------------------------------------------------

constexpr std::string_view kPoisonSynopsis = "poison [--json] FILE | --image IMAGE PATH";

Result<std::vector<FilePoison>> file_poison_from_mount(const std::string& file) {
  Fd fd(open_for_control(file));
  if (!fd) return fail(std::errc{errno}, file + ": cannot open: " + errno_text(errno));
  auto got = ranges_from_mount(fd.get(), file, POISONFS_IOC_FILE_POISON, "POISONFS_IOC_FILE_POISON",
                               "read a file's poison");
  if (!got) return std::unexpected(got.error());
  std::vector<FilePoison> out;
  for (const poisonfs_range& r : *got) out.push_back(FilePoison{r.offset, r.length});
  return out;
}

Result<std::vector<FilePoison>> file_poison_from_image(const std::string& image, const std::string& path) {
  auto fs = open_image(image);
  if (!fs) return std::unexpected(fs.error());
  auto ino = lookup_path(**fs, image, path);
  if (!ino) return std::unexpected(ino.error());
  auto got = (*fs)->file_poison(*ino);
  if (!got) return fail(got.error().code, image + ": " + path + ": " + got.error().to_string());
  return got;
}

std::string file_poison_to_json(const std::vector<FilePoison>& ranges) {
  std::string out = "[";
  for (size_t i = 0; i < ranges.size(); ++i) {
    out += i ? ",\n{\"file_offset\": " : "\n{\"file_offset\": ";
    append_u64(out, ranges[i].file_offset);
    out += ", \"length\": ";
    append_u64(out, ranges[i].length);
    out += '}';
  }
  out += ranges.empty() ? "]\n" : "\n]\n";
  return out;
}

std::string file_poison_human(const std::string& name, const std::vector<FilePoison>& ranges) {
  if (ranges.empty()) return name + ": no known poison\n";
  const char* heads[] = {"FILE_OFFSET", "LENGTH", "BYTES"};
  std::vector<std::array<std::string, 3>> rows;
  uint64_t total = 0;
  for (const FilePoison& r : ranges) {
    rows.push_back({std::to_string(r.file_offset), std::to_string(r.length), inclusive(r.file_offset, r.length)});
    total += r.length;
  }
  size_t w[3];
  for (int c = 0; c < 3; ++c) {
    w[c] = std::strlen(heads[c]);
    for (const auto& r : rows) w[c] = std::max(w[c], r[c].size());
  }
  std::string out;
  auto line = [&](std::string_view a, std::string_view b, std::string_view c) {
    out.append(w[0] - a.size(), ' ').append(a).append("  ");
    out.append(w[1] - b.size(), ' ').append(b).append("  ");
    out.append(c).append("\n");
  };
  line(heads[0], heads[1], heads[2]);
  for (const auto& r : rows) line(r[0], r[1], r[2]);
  out += name + ": " + std::to_string(ranges.size()) + (ranges.size() == 1 ? " poisoned range, " : " poisoned ranges, ") +
         std::to_string(total) + " bytes (" + human_bytes(total) + ") unreadable until rewritten\n";
  return out;
}

int cmd_poison(const std::vector<std::string>& args) {
  FileTarget t;
  if (int code = parse_file_target("poison", kPoisonSynopsis, args, &t); code >= 0) return code;
  std::string name;
  auto ranges = fetch_for_file("poison", t, &name, file_poison_from_mount, file_poison_from_image);
  if (!ranges) return error(ranges.error().to_string());
  return write_stdout(t.json ? file_poison_to_json(*ranges) : file_poison_human(name, *ranges));
}

// ---- events ----------------------------------------------------------------------

constexpr std::string_view kEventsSynopsis = "events [--json] [--follow] MOUNTPOINT";

// Just enough JSON for the daemon's event lines: objects, arrays, strings,
// numbers (kept as text, so "1712345678.123456789" loses nothing), literals.
struct JsonValue {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  std::string text;  // number or string
  bool boolean = false;
  std::vector<JsonValue> items;
  std::vector<std::pair<std::string, JsonValue>> fields;

  const JsonValue* get(std::string_view key) const {
    for (const auto& [k, v] : fields) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  std::string str(std::string_view key) const {
    const JsonValue* v = get(key);
    return v && (v->kind == kString || v->kind == kNumber) ? v->text : std::string{};
  }
  uint64_t u64(std::string_view key) const {
    const JsonValue* v = get(key);
    uint64_t n = 0;
    if (v && v->kind == kNumber) std::from_chars(v->text.data(), v->text.data() + v->text.size(), n);
    return n;
  }
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view s) : s_(s) {}
  bool parse(JsonValue* out) {
    if (!value(out, 0)) return false;
    ws();
    return i_ == s_.size();
  }

 private:
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  bool take(char c) {
    ws();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool string(std::string* out) {
    if (!take('"')) return false;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      switch (e) {
        case 'n': *out += '\n'; break;
        case 't': *out += '\t'; break;
        case 'r': *out += '\r'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) return false;
          unsigned v = 0;
          auto [p, ec] = std::from_chars(s_.data() + i_, s_.data() + i_ + 4, v, 16);
          if (ec != std::errc() || p != s_.data() + i_ + 4) return false;
          i_ += 4;
          *out += v < 0x80 ? static_cast<char>(v) : '?';
          break;
        }
        default: *out += e;
      }
    }
    return i_++ < s_.size();
  }
  bool value(JsonValue* v, int depth) {
    if (depth > 16) return false;
    ws();
    if (i_ >= s_.size()) return false;
    char c = s_[i_];
    if (c == '"') {
      v->kind = JsonValue::kString;
      return string(&v->text);
    }
    if (c == '{') {
      ++i_;
      v->kind = JsonValue::kObject;
      if (take('}')) return true;
      do {
        std::string key;
        JsonValue item;
        if (!string(&key) || !take(':') || !value(&item, depth + 1)) return false;
        v->fields.emplace_back(std::move(key), std::move(item));
      } while (take(','));
      return take('}');
    }
    if (c == '[') {
      ++i_;
      v->kind = JsonValue::kArray;
      if (take(']')) return true;
      do {
        JsonValue item;
        if (!value(&item, depth + 1)) return false;
        v->items.push_back(std::move(item));
      } while (take(','));
      return take(']');
    }
    for (std::string_view word : {"true", "false", "null"}) {
      if (s_.substr(i_).starts_with(word)) {
        i_ += word.size();
        v->kind = word == "null" ? JsonValue::kNull : JsonValue::kBool;
        v->boolean = word == "true";
        return true;
      }
    }
    size_t start = i_;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' || s_[i_] == '-' ||
                              s_[i_] == '+' || s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
    }
    if (i_ == start) return false;
    v->kind = JsonValue::kNumber;
    v->text.assign(s_.substr(start, i_ - start));
    return true;
  }

  std::string_view s_;
  size_t i_ = 0;
};

// "2024-05-01 12:00:00.123" (local time) from "SECONDS.NANOSECONDS".
std::string event_time(const std::string& text) {
  int64_t sec = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), sec);
  if (ec != std::errc()) return text;
  std::string frac = p < text.data() + text.size() && *p == '.' ? std::string(p + 1, text.data() + text.size()) : "";
  frac = (frac + "000").substr(0, 3);
  time_t t = static_cast<time_t>(sec);
  struct tm tm {};
  if (!localtime_r(&t, &tm)) return text;
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return std::string(buf) + "." + frac;
}

// One event as a line, and one indented line per owner it hit.
std::string event_human(std::string_view line) {
  JsonValue e;
  if (!JsonParser(line).parse(&e) || e.kind != JsonValue::kObject) return "? " + std::string(line) + "\n";
  uint64_t length = e.u64("length");
  std::string out = event_time(e.str("time")) + "  #" + e.str("seq") + "  " + e.str("kind");
  out += length ? "  device " + inclusive(e.u64("device_offset"), length) + " (" + std::to_string(length) + " bytes)"
                : std::string("  device -");
  out += "  " + e.str("action") + "\n";
  if (const JsonValue* owners = e.get("owners"); owners && owners->kind == JsonValue::kArray) {
    for (const JsonValue& o : owners->items) {
      std::string what = o.str("what");
      out += "    " + (what == "free" ? std::string("free space") : what);
      if (uint64_t ino = o.u64("inode")) out += " inode " + std::to_string(ino);
      if (std::string path = o.str("path"); !path.empty()) out += " " + path;
      if (what == "data") {
        uint64_t n = o.u64("length");
        out += " file " + inclusive(o.u64("file_offset"), n) + " (" + std::to_string(n) + " bytes)";
      }
      out += "\n";
    }
  }
  return out;
}

volatile sig_atomic_t g_stop = 0;
void on_stop(int) { g_stop = 1; }

int cmd_events(const std::vector<std::string>& args) {
  bool json = false, follow = false;
  std::string target;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "--follow" || a == "-f") {
      follow = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kEventsSynopsis.size()), kEventsSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("events", "unknown option '" + a + "'", kEventsSynopsis);
    } else if (!target.empty()) {
      return usage_error("events", "expected one MOUNTPOINT", kEventsSynopsis);
    } else {
      target = a;
    }
  }
  if (target.empty()) return usage_error("events", "missing MOUNTPOINT", kEventsSynopsis);
  Target where = resolve_target(target);
  if (where.mountpoint.empty()) {
    struct stat st {};
    if (stat(target.c_str(), &st) != 0) return error(target + ": " + errno_text(errno));
    return error(target + " is not a mounted poisonfs: the event log lives in the daemon (mount the image first)");
  }
  if (follow) {
    struct sigaction sa {};
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
  }
  auto page = std::make_unique<poisonfs_events>();
  uint64_t after = 0, dropped_told = 0;
  while (!g_stop) {
    // A descriptor per poll: a follower must not keep the mount busy.
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    for (;;) {
      std::memset(page.get(), 0, offsetof(poisonfs_events, buf));
      page->after_seq = after;
      if (ioctl(fd.get(), POISONFS_IOC_EVENTS, page.get()) != 0) {
        int err = errno;
        if (g_stop && err == EINTR) break;
        return error(ioctl_failed(where.mountpoint, "POISONFS_IOC_EVENTS", err, "read the event log"));
      }
      page->buf[sizeof page->buf - 1] = '\0';
      std::string out;
      if (page->dropped > std::max(after, dropped_told)) {
        uint64_t missed = page->dropped - std::max(after, dropped_told);
        std::string message = std::to_string(missed) + (missed == 1 ? " older event was" : " older events were") +
                              " dropped (the daemon keeps a bounded history)";
        if (json) std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
        else out += "(" + message + ")\n";
        dropped_told = page->dropped;
      }
      std::string_view text(page->buf);
      if (json) {
        out += text;
      } else {
        while (!text.empty()) {
          size_t nl = text.find('\n');
          std::string_view line = text.substr(0, nl);
          if (!line.empty()) out += event_human(line);
          text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        }
      }
      if (int rc = write_stdout(out)) return rc;
      bool progressed = page->last_seq > after;
      after = std::max(after, page->last_seq);
      if ((page->flags & POISONFS_OF_LAST) || !progressed) break;
    }
    if (!follow) break;
    for (int i = 0; i < 4 && !g_stop; ++i) usleep(50'000);  // 200 ms, woken early by a signal
  }
  return 0;
}

// ---- status ------------------------------------------------------------------------

constexpr std::string_view kStatusSynopsis = "status [--json] MOUNTPOINT";

int cmd_status(const std::vector<std::string>& args) {
  bool json = false;
  std::string target;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kStatusSynopsis.size()), kStatusSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("status", "unknown option '" + a + "'", kStatusSynopsis);
    } else if (!target.empty()) {
      return usage_error("status", "expected one MOUNTPOINT", kStatusSynopsis);
    } else {
      target = a;
    }
  }
  if (target.empty()) return usage_error("status", "missing MOUNTPOINT", kStatusSynopsis);
  Target where = resolve_target(target);
  Health h;
  if (!where.mountpoint.empty()) {
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    poisonfs_status st{};
    if (ioctl(fd.get(), POISONFS_IOC_STATUS, &st) != 0) {
      int err = errno;
      return error(ioctl_failed(where.mountpoint, "POISONFS_IOC_STATUS", err, "read the status"));
    }
    h.shutdown = st.shutdown != 0;
    h.reason.assign(st.reason, strnlen(st.reason, sizeof st.reason));
    h.known_poison_bytes = st.known_poison_bytes;
    h.latent_poison_bytes = st.latent_poison_bytes;
    h.quarantined_bytes = st.quarantined_bytes;
    h.events = st.events;
  } else {
    // An unmounted image: what a mount would find (its poison list replayed).
    auto fs = open_image(where.arg);
    if (!fs) return error(fs.error().to_string());
    h = (*fs)->health();
  }
  std::string out;
  if (json) {
    out = "{\"target\": " + json_string(where.arg) +
          ", \"source\": " + json_string(where.mountpoint.empty() ? "image" : "mount") +
          ", \"state\": " + json_string(h.shutdown ? "shutdown" : "healthy") +
          ", \"shutdown\": " + (h.shutdown ? "true" : "false") + ", \"reason\": " + json_string(h.reason) +
          ", \"known_poison_bytes\": " + std::to_string(h.known_poison_bytes) +
          ", \"latent_poison_bytes\": " + std::to_string(h.latent_poison_bytes) +
          ", \"quarantined_bytes\": " + std::to_string(h.quarantined_bytes) +
          ", \"events\": " + std::to_string(h.events) + "}\n";
  } else {
    auto bytes = [](uint64_t n) {
      return n < 1024 ? std::to_string(n) + " bytes" : std::to_string(n) + " bytes (" + human_bytes(n) + ")";
    };
    std::vector<std::pair<std::string, std::string>> rows = {
        {"target", where.describe()},
        {"state", h.shutdown ? "shutdown: " + h.reason + " (every call fails with EIO)" : std::string("healthy")},
        {"known poison", bytes(h.known_poison_bytes)},
        {"latent poison", bytes(h.latent_poison_bytes)},
        {"quarantined", bytes(h.quarantined_bytes)},
        {"events", std::to_string(h.events)},
    };
    size_t width = 0;
    for (const auto& [k, v] : rows) width = std::max(width, k.size());
    for (const auto& [k, v] : rows) out += k + ":" + std::string(width - k.size() + 1, ' ') + v + "\n";
  }
  return write_stdout(out);
}

// ---- map: a picture of the device (SVG) ----------------------------------------
//
// `poisonctl map --svg OUT.svg MOUNTPOINT|IMAGE` draws the device as a grid
// of cells, left to right and top to bottom from byte 0. A cell is one block,
// or, on a device with more blocks than kMapMaxCells, a run of blocks drawn
// as its most important owner (poisoned > data > directory > xattr > extents
// > inodes > journal > superblock > free). Data is coloured per inode (a
// stable colour derived from the inode number), shared data is hatched,
// poisoned ranges (fsmap's flag and the device's poison list) are bright
// red, and quarantined free space (poisoned, owned by nobody) is free space
// with a red outline. The data comes from the same places as fsmap and
// badblocks: the mount's ioctls, or the core on an unmounted image.

constexpr std::string_view kMapSynopsis = "map --svg OUT.svg MOUNTPOINT|IMAGE";
constexpr uint64_t kMapColumns = 128;
constexpr uint64_t kMapMaxCells = kMapColumns * 128;

struct MapCell {
  uint8_t rank = 0;  // of the owner drawn; 0 = free
  bool shared = false;
  bool poisoned = false;     // poisoned bytes owned by someone
  bool quarantined = false;  // poisoned bytes in free space
  bool bad = false;          // on the device's poison list
  Ino ino = 0;
};

int map_rank(FsmapOwner o) {
  switch (o) {
    case FsmapOwner::kFree: return 0;
    case FsmapOwner::kSuperblock: return 1;
    case FsmapOwner::kJournal: return 2;
    case FsmapOwner::kInodes: return 3;
    case FsmapOwner::kExtents: return 4;
    case FsmapOwner::kXattrs: return 5;
    case FsmapOwner::kDirectory: return 6;
    case FsmapOwner::kData: return 7;
    case FsmapOwner::kChecksums: return 8;
  }
  return 1;
}

// Neutral colours for the kinds that are not file data (by rank).
// Rank 7 is file data (coloured per file).
constexpr const char* kMapKindColour[] = {"#f2f2ee", "#3b3b3b", "#8c8c8c", "#b58b5a", "#c9a77c",
                                          "#9fb3c8", "#6f8faf", "",        "#d8c36a"};
constexpr const char* kMapKindName[] = {"free",  "superblock", "journal", "inodes",   "extents",
                                        "xattr", "directory",  "",        "checksums"};

// A stable, saturated colour per inode: golden-angle hues, two lightness
// bands, none of them near the red of poison.
std::string map_file_colour(Ino ino) {
  double h = std::fmod(static_cast<double>(ino) * 137.508 + 40.0, 360.0);
  if (h < 25.0 || h > 335.0) h = std::fmod(h + 60.0, 360.0);  // keep red for poison
  double s = 0.62, l = (ino % 2) ? 0.50 : 0.38;
  double c = (1 - std::fabs(2 * l - 1)) * s, x = c * (1 - std::fabs(std::fmod(h / 60.0, 2.0) - 1)), m = l - c / 2;
  double r = 0, g = 0, b = 0;
  if (h < 60) r = c, g = x;
  else if (h < 120) r = x, g = c;
  else if (h < 180) g = c, b = x;
  else if (h < 240) g = x, b = c;
  else if (h < 300) r = x, b = c;
  else r = c, b = x;
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>((r + m) * 255 + 0.5),
                static_cast<int>((g + m) * 255 + 0.5), static_cast<int>((b + m) * 255 + 0.5));
  return buf;
}

std::string svg_escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += (static_cast<unsigned char>(ch) < 0x20) ? '?' : ch;
    }
  }
  return out;
}

struct MapData {
  FsInfo info;
  std::vector<FsmapEntry> entries;
  PathTable paths{PathTable::Form::kFirstPath};
  std::vector<PoisonRange> bad;
};

Result<MapData> map_collect(const Target& where) {
  MapData d;
  if (!where.mountpoint.empty()) {
    auto info = info_from_mount(where.mountpoint);
    if (!info) return std::unexpected(info.error());
    d.info = *info;
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return fail(std::errc{errno}, where.mountpoint + ": cannot open: " + errno_text(errno));
    if (auto st = named_fsmap_from_mount(fd.get(), where.mountpoint, 0, UINT64_MAX, d.entries, d.paths); !st) {
      return std::unexpected(st.error());
    }
    auto got = ranges_from_mount(fd.get(), where.mountpoint, POISONFS_IOC_BADBLOCKS, "POISONFS_IOC_BADBLOCKS",
                                 "read the device's poison list");
    if (!got) return std::unexpected(got.error());
    for (const poisonfs_range& r : *got) {
      d.bad.push_back(PoisonRange{r.offset, r.length, (r.flags & POISONFS_POISON_LATENT) != 0});
    }
  } else {
    auto fs = open_image(where.arg);
    if (!fs) return std::unexpected(fs.error());
    d.info = (*fs)->info();
    Status st = (*fs)->fsmap(0, UINT64_MAX, [&](const FsmapEntry& e) {
      d.entries.push_back(e);
      return true;
    });
    if (!st) return fail(st.error().code, where.arg + ": " + st.error().to_string());
    paths_from_core(**fs, d.entries, d.paths);
    d.bad = (*fs)->badblocks();
  }
  return d;
}

std::string map_svg(const Target& where, const MapData& d) {
  const uint64_t bs = d.info.block_size ? d.info.block_size : kBlockSize;
  const uint64_t blocks = std::max<uint64_t>(1, (d.info.device_bytes + bs - 1) / bs);
  const uint64_t per_cell = (blocks + kMapMaxCells - 1) / kMapMaxCells;
  const uint64_t cell_bytes = per_cell * bs;
  const uint64_t ncells = (blocks + per_cell - 1) / per_cell;
  const uint64_t rows = (ncells + kMapColumns - 1) / kMapColumns;
  std::vector<MapCell> cells(ncells);
  auto cell_range = [&](uint64_t off, uint64_t len) -> std::pair<uint64_t, uint64_t> {
    uint64_t first = std::min(off / cell_bytes, ncells);
    uint64_t last = len == 0 ? first : std::min((off + len - 1) / cell_bytes + 1, ncells);
    return {first, last};
  };

  // Counts for the title and legend.
  std::vector<Ino> order;  // data inodes, by first appearance on the device
  std::vector<std::pair<Ino, uint64_t>> file_bytes;
  uint64_t shared_bytes = 0, poisoned_owned = 0, quarantined = 0, meta_bytes = 0, free_bytes = 0;
  for (const FsmapEntry& e : d.entries) {
    int rank = map_rank(e.owner);
    if (is_data(e)) {
      if (std::find(order.begin(), order.end(), e.ino) == order.end()) order.push_back(e.ino);
      if (e.shared) shared_bytes += e.length;
    } else if (rank == 0) {
      free_bytes += e.length;
    } else {
      meta_bytes += e.length;
    }
    if (e.poisoned) (rank == 0 ? quarantined : poisoned_owned) += e.length;
    auto [first, last] = cell_range(e.physical, e.length);
    for (uint64_t c = first; c < last; ++c) {
      MapCell& m = cells[c];
      bool better = rank > m.rank || (rank == m.rank && is_data(e) && !m.shared && e.shared);
      if (better) {
        m.rank = static_cast<uint8_t>(rank);
        m.ino = e.ino;
      }
      if (is_data(e) && e.shared) m.shared = true;
      if (e.poisoned) (rank == 0 ? m.quarantined : m.poisoned) = true;
    }
  }
  uint64_t bad_bytes = 0;
  for (const PoisonRange& r : d.bad) {
    bad_bytes += r.length;
    auto [first, last] = cell_range(r.offset, r.length);
    for (uint64_t c = first; c < last; ++c) cells[c].bad = true;
  }
  for (MapCell& m : cells) {
    if (m.bad && !m.poisoned && !m.quarantined) (m.rank == 0 ? m.quarantined : m.poisoned) = true;
  }
  const bool big = order.size() > 400;  // too many files for a per-file legend

  // Geometry.
  const int cell = 7, margin = 16, top = 64;
  const int grid_w = static_cast<int>(kMapColumns) * cell;
  const int grid_h = static_cast<int>(rows) * cell;
  const size_t kMaxListed = 40;
  size_t listed = std::min(order.size(), kMaxListed);
  const int legend_top = top + grid_h + 20;
  const int kinds_h = 4 * 18 + 10;
  // The poisoned ranges and who owns them, one line each (the first few).
  std::vector<std::string> bad_lines;
  for (const PoisonRange& r : d.bad) {
    if (bad_lines.size() == 6) {
      bad_lines.push_back("... and " + std::to_string(d.bad.size() - 6) + " more ranges");
      break;
    }
    std::string owners;
    size_t n = 0;
    for (const FsmapEntry& e : d.entries) {
      if (e.physical >= r.offset + r.length || e.physical + e.length <= r.offset) continue;
      std::string who;
      if (is_data(e)) {
        auto [first, count] = d.paths.first_path(e.ino);
        who = count ? std::string(first) : "inode " + std::to_string(e.ino);
      } else {
        who = e.owner == FsmapOwner::kFree ? "free space (quarantined)" : std::string(fsmap_owner_name(e.owner));
      }
      if (owners.find(who) != std::string::npos) continue;
      if (++n > 4) {
        owners += ", ...";
        break;
      }
      owners += (owners.empty() ? "" : ", ") + who;
    }
    bad_lines.push_back("device " + std::to_string(r.offset) + "+" + std::to_string(r.length) +
                        (r.latent ? " (latent)" : "") + ": " + (owners.empty() ? "-" : owners));
  }
  const int bad_h = bad_lines.empty() ? 0 : 20 + static_cast<int>(bad_lines.size()) * 16;
  const int files_rows = static_cast<int>((listed + 1) / 2) + (order.size() > listed ? 1 : 0);
  const int width = grid_w + 2 * margin;
  const int height = legend_top + kinds_h + bad_h + 18 + files_rows * 16 + margin;

  std::string s;
  s.reserve(ncells * 40 + 8192);
  char buf[8192];
  std::snprintf(buf, sizeof buf,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                "font-family=\"DejaVu Sans, sans-serif\" font-size=\"12\">\n",
                width, height, width, height);
  s += buf;
  s += "<defs><pattern id=\"hatch\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\" "
       "patternTransform=\"rotate(45)\"><rect width=\"1.6\" height=\"4\" fill=\"#000\" fill-opacity=\"0.55\"/>"
       "</pattern></defs>\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";

  // Title.
  std::string title = "poisonfs map: " + where.describe();
  std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", margin,
                svg_escape(title).c_str());
  s += buf;
  std::string sub = human_bytes(d.info.device_bytes) + ", " + std::to_string(blocks) + " blocks of " +
                    std::to_string(bs) + " B; one cell = " + std::to_string(per_cell) +
                    (per_cell == 1 ? " block" : " blocks") + " (" + human_bytes(cell_bytes) + "); " +
                    std::to_string(order.size()) + " files with data, " + human_bytes(shared_bytes) +
                    " in shared extent records, metadata " + human_bytes(meta_bytes) + ", free " +
                    human_bytes(free_bytes);
  std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"40\">%s</text>\n", margin, svg_escape(sub).c_str());
  s += buf;
  std::string poison = "poison list: " + std::to_string(d.bad.size()) + (d.bad.size() == 1 ? " range, " : " ranges, ") +
                       std::to_string(bad_bytes) + " bytes; poisoned owned records " + std::to_string(poisoned_owned) +
                       " bytes; quarantined free " + std::to_string(quarantined) + " bytes";
  std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"56\" fill=\"%s\">%s</text>\n", margin,
                d.bad.empty() ? "#333" : "#d00000", svg_escape(poison).c_str());
  s += buf;

  // The grid: runs of equal cells along a row become one rect.
  auto fill_of = [&](const MapCell& m) -> std::string {
    if (m.poisoned) return "#ff1a1a";
    if (m.rank == 7) return map_file_colour(m.ino);
    return kMapKindColour[m.rank];
  };
  std::snprintf(buf, sizeof buf, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n",
                margin - 1, top - 1, grid_w + 2, grid_h + 2);
  s += buf;
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t c = r * kMapColumns, end = std::min(ncells, c + kMapColumns);
    while (c < end) {
      std::string f = fill_of(cells[c]);
      bool hatch = cells[c].shared && !cells[c].poisoned;
      uint64_t run = c + 1;
      while (run < end && fill_of(cells[run]) == f && (cells[run].shared && !cells[run].poisoned) == hatch) ++run;
      int x = margin + static_cast<int>(c - r * kMapColumns) * cell, y = top + static_cast<int>(r) * cell;
      int w = static_cast<int>(run - c) * cell;
      std::snprintf(buf, sizeof buf, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", x, y, w, cell,
                    f.c_str());
      s += buf;
      if (hatch) {
        std::snprintf(buf, sizeof buf, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"url(#hatch)\"/>\n", x,
                      y, w, cell);
        s += buf;
      }
      c = run;
    }
  }
  // Poison and quarantine on top, outlined so a single cell stands out.
  for (uint64_t c = 0; c < ncells; ++c) {
    const MapCell& m = cells[c];
    if (!m.poisoned && !m.quarantined) continue;
    int x = margin + static_cast<int>(c % kMapColumns) * cell, y = top + static_cast<int>(c / kMapColumns) * cell;
    if (m.poisoned) {
      std::snprintf(buf, sizeof buf,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#ff1a1a\" stroke=\"#8b0000\" "
                    "stroke-width=\"1.5\"/>\n",
                    x - 1, y - 1, cell + 2, cell + 2);
    } else {
      std::snprintf(buf, sizeof buf,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#ff1a1a\" "
                    "stroke-width=\"2\"/>\n",
                    x + 1, y + 1, cell - 2, cell - 2, kMapKindColour[0]);
    }
    s += buf;
  }

  // Legend: kinds, then files.
  struct Swatch {
    std::string fill, label, extra;
  };
  std::vector<Swatch> kinds;
  for (int k : {0, 1, 2, 3, 8, 4, 5, 6}) kinds.push_back({kMapKindColour[k], kMapKindName[k], ""});
  kinds.push_back({"#ff1a1a", "poisoned (owned)", "stroke=\"#8b0000\" stroke-width=\"1.5\""});
  kinds.push_back({kMapKindColour[0], "quarantined (poisoned free space)", "stroke=\"#ff1a1a\" stroke-width=\"2\""});
  kinds.push_back({"#7aa6d6", "shared extent (hatched)", "hatch"});
  const int col_w = grid_w / 3;
  for (size_t i = 0; i < kinds.size(); ++i) {
    int x = margin + static_cast<int>(i % 3) * col_w, y = legend_top + static_cast<int>(i / 3) * 18;
    bool hatch = kinds[i].extra == "hatch";
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\" %s/>"
                  "<text x=\"%d\" y=\"%d\">%s</text>\n",
                  x, y, kinds[i].fill.c_str(), hatch ? "stroke=\"#444\" stroke-width=\"0.5\"" : kinds[i].extra.c_str(),
                  x + 17, y + 11, svg_escape(kinds[i].label).c_str());
    s += buf;
    if (hatch) {
      std::snprintf(buf, sizeof buf, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"url(#hatch)\"/>\n", x, y);
      s += buf;
    }
  }
  int y0 = legend_top + kinds_h;
  if (!bad_lines.empty()) {
    std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\" fill=\"#d00000\">poisoned ranges and their owners</text>\n", margin, y0);
    s += buf;
    for (size_t i = 0; i < bad_lines.size(); ++i) {
      std::string line = bad_lines[i];
      if (line.size() > 130) line = line.substr(0, 127) + "...";
      std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\" fill=\"#d00000\">%s</text>\n", margin,
                    y0 + 16 + static_cast<int>(i) * 16, svg_escape(line).c_str());
      s += buf;
    }
    y0 += bad_h;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">files (colour per inode%s)</text>\n",
                margin, y0, big ? "; too many to list" : "");
  s += buf;
  const int half = grid_w / 2;
  for (size_t i = 0; i < listed && !big; ++i) {
    Ino ino = order[i];
    auto [first, count] = d.paths.first_path(ino);
    std::string name = count == 0 ? "(no path)" : std::string(first);
    if (count > 1) name += " (+" + std::to_string(count - 1) + " links)";
    if (name.size() > 58) name = "..." + name.substr(name.size() - 55);
    name = "inode " + std::to_string(ino) + "  " + name;
    int x = margin + static_cast<int>(i % 2) * half, y = y0 + 8 + static_cast<int>(i / 2) * 16;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
                  x, y, map_file_colour(ino).c_str(), x + 17, y + 11, svg_escape(name).c_str());
    s += buf;
  }
  if (order.size() > listed) {
    int y = y0 + 8 + static_cast<int>((listed + 1) / 2) * 16;
    std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\">... and %zu more files</text>\n", margin, y + 11,
                  order.size() - listed);
    s += buf;
  }
  s += "</svg>\n";
  return s;
}

int cmd_map(const std::vector<std::string>& args) {
  std::string out_path, target;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--svg") {
      if (i + 1 >= args.size()) return usage_error("map", "--svg needs OUT.svg", kMapSynopsis);
      out_path = args[++i];
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kMapSynopsis.size()), kMapSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("map", "unknown option '" + a + "'", kMapSynopsis);
    } else if (!target.empty()) {
      return usage_error("map", "expected one MOUNTPOINT or IMAGE", kMapSynopsis);
    } else {
      target = a;
    }
  }
  if (out_path.empty()) return usage_error("map", "missing --svg OUT.svg", kMapSynopsis);
  if (target.empty()) return usage_error("map", "missing MOUNTPOINT or IMAGE", kMapSynopsis);
  Target where = resolve_target(target);
  auto data = map_collect(where);
  if (!data) return error(data.error().to_string());
  std::string svg = map_svg(where, *data);
  // Written to a temporary name and renamed: a reader never sees half a picture.
  std::string tmp = out_path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return error(tmp + ": cannot create: " + errno_text(errno));
    f.write(svg.data(), static_cast<std::streamsize>(svg.size()));
    if (!f.flush()) return error(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), out_path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    return error(out_path + ": cannot rename: " + errno_text(err));
  }
  return 0;
}

// ---- the subcommand table ---------------------------------------------------

// ---- scrub ----------------------------------------------------------------------
//
// `poisonctl scrub MOUNTPOINT|IMAGE [--json]`: on a mount through
// POISONFS_IOC_SCRUB (the scrub runs inside the ioctl, so there is no
// progress over the mount: a terminal gets an elapsed-time spinner); on an
// unmounted image offline through the core on a shared mapping (it changes
// the image: quarantined free space is cleared), with a real progress bar.

constexpr std::string_view kScrubSynopsis = "scrub [--json] MOUNTPOINT|IMAGE";

Result<ScrubReport> scrub_through_mount(const std::string& mountpoint, bool show) {
  Fd fd(open_for_control(mountpoint));
  if (!fd) return fail(std::errc{errno}, mountpoint + ": cannot open: " + errno_text(errno));
  poisonfs_scrub rec{};
  std::atomic<bool> done{false};
  int rc = 0, err = 0;
  std::thread worker([&] {
    rc = ioctl(fd.get(), POISONFS_IOC_SCRUB, &rec);
    err = errno;
    done = true;
  });
  if (show) {
    static const char kSpin[] = "|/-\\";
    timespec t0{}, t{};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned i = 0; !done; ++i) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      double s = static_cast<double>(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
      std::fprintf(stderr, "\rscrubbing %s %c %.1fs (no progress over a mount)", mountpoint.c_str(), kSpin[i % 4], s);
      std::fflush(stderr);
      usleep(100'000);
    }
    std::fprintf(stderr, "\r\033[K");
  }
  worker.join();
  if (rc != 0) return fail(std::errc{err}, ioctl_failed(mountpoint, "POISONFS_IOC_SCRUB", err, "scrub"));
  return ScrubReport{rec.bytes_scanned,   rec.latent_found,        rec.known_poison_bytes,
                     rec.quarantine_cleared_bytes, rec.ranges_notified, rec.blocks_verified,
                     rec.checksum_mismatches, (rec.flags & POISONFS_SCRUB_CHECKSUMS) != 0};
}

Result<ScrubReport> scrub_offline(const std::string& image, bool show) {
  struct stat st {};
  if (stat(image.c_str(), &st) != 0) return fail(std::errc{errno}, image + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return fail(std::errc::not_supported, image + " is a directory but not on a poisonfs mount");
  // Shared: the scrub writes the image (poison made known, quarantine cleared).
  auto fs = Filesystem::mount_image(image, OpenOptions{MapMode::kShared});
  if (!fs) {
    std::string message = fs.error().to_string();
    if (!message.starts_with(image + ":")) message = image + ": " + message;
    return fail(fs.error().code, message);
  }
  int last = -1;
  auto rep = (*fs)->scrub([&](uint64_t done, uint64_t total) {
    if (!show || total == 0) return;
    int pct = static_cast<int>(done * 100 / total);
    if (pct == last) return;
    last = pct;
    constexpr int kWidth = 40;
    int fill = pct * kWidth / 100;
    std::fprintf(stderr, "\rscrubbing [%s%s] %3d%% %s / %s", std::string(fill, '#').c_str(),
                 std::string(kWidth - fill, ' ').c_str(), pct, human_bytes(done).c_str(), human_bytes(total).c_str());
    std::fflush(stderr);
  });
  if (show && last >= 0) std::fprintf(stderr, "\r\033[K");
  if (!rep) {
    (void)(*fs)->unmount();
    return fail(rep.error().code, image + ": scrub failed: " + rep.error().to_string() +
                                      (rep.error().code == std::errc::io_error ? " (see poisonctl status)" : ""));
  }
  if (auto u = (*fs)->unmount(); !u) return fail(u.error().code, image + ": unmount after scrub: " + u.error().to_string());
  return rep;
}

int cmd_scrub(const std::vector<std::string>& args) {
  bool json = false;
  std::string target;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kScrubSynopsis.size()), kScrubSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("scrub", "unknown option '" + a + "'", kScrubSynopsis);
    } else if (!target.empty()) {
      return usage_error("scrub", "expected one MOUNTPOINT or IMAGE", kScrubSynopsis);
    } else {
      target = a;
    }
  }
  if (target.empty()) return usage_error("scrub", "missing MOUNTPOINT or IMAGE", kScrubSynopsis);
  Target where = resolve_target(target);
  const bool show = isatty(STDERR_FILENO) == 1;
  auto rep = where.mountpoint.empty() ? scrub_offline(where.arg, show) : scrub_through_mount(where.mountpoint, show);
  if (!rep) return error(rep.error().to_string());
  std::string out;
  if (json) {
    out = "{\"target\": " + json_string(where.arg) +
          ", \"source\": " + json_string(where.mountpoint.empty() ? "image" : "mount") +
          ", \"bytes_scanned\": " + std::to_string(rep->bytes_scanned) +
          ", \"latent_found\": " + std::to_string(rep->latent_found) +
          ", \"ranges_notified\": " + std::to_string(rep->ranges_notified) +
          ", \"quarantine_cleared_bytes\": " + std::to_string(rep->quarantine_cleared_bytes) +
          ", \"known_poison_bytes\": " + std::to_string(rep->known_poison_bytes) +
          ", \"blocks_verified\": " + std::to_string(rep->blocks_verified) +
          ", \"silent_corruption\": " + (rep->checksums ? std::to_string(rep->checksum_mismatches) : "null") +
          ", \"silent_corruption_checked\": " + (rep->checksums ? "true" : "false") + "}\n";
  } else {
    auto bytes = [](uint64_t n) {
      return n < 1024 ? std::to_string(n) + " bytes" : std::to_string(n) + " bytes (" + human_bytes(n) + ")";
    };
    std::vector<std::pair<std::string, std::string>> rows = {
        {"target", where.describe()},
        {"bytes scanned", bytes(rep->bytes_scanned)},
        {"latent poison found", std::to_string(rep->latent_found) + " range(s)"},
        {"ranges notified", std::to_string(rep->ranges_notified)},
        {"quarantine cleared", bytes(rep->quarantine_cleared_bytes)},
        {"known poison left", bytes(rep->known_poison_bytes)},
        {"silent corruption",
         rep->checksums ? std::to_string(rep->checksum_mismatches) + " block(s) not matching their checksum, of " +
                              std::to_string(rep->blocks_verified) + " verified" +
                              (rep->checksum_mismatches ? " (see poisonctl events)" : "")
                        : "not checked (the image has no data checksums)"},
    };
    size_t width = 0;
    for (const auto& [k, v] : rows) width = std::max(width, k.size());
    for (const auto& [k, v] : rows) out += k + ":" + std::string(width - k.size() + 1, ' ') + v + "\n";
  }
  return write_stdout(out);
}

struct Command {
  std::string_view name;
  std::string_view synopsis;
  std::string_view summary;
  int (*run)(const std::vector<std::string>& args);
};

constexpr Command kCommands[] = {
    {"stat", "stat [--json] MOUNTPOINT|IMAGE", "geometry and usage of a filesystem", cmd_stat},
    {"reflink", kReflinkSynopsis, "share SRC's blocks with DST (through a mount)", cmd_reflink},
    {"bmap", kBmapSynopsis, "a file's extents: physical place, sharing", cmd_bmap},
    {"fsmap", kFsmapSynopsis, "owners of a device range, with paths", cmd_fsmap},
    {"inject", kInjectSynopsis, "poison device bytes (known, or latent until read)", cmd_inject},
    {"badblocks", kBadblocksSynopsis, "the device's poison list (512-byte sectors)", cmd_badblocks},
    {"poison", kPoisonSynopsis, "a file's known poisoned ranges", cmd_poison},
    {"events", kEventsSynopsis, "the failure/repair/recovery event log", cmd_events},
    {"status", kStatusSynopsis, "healthy or shut down; poison and quarantine", cmd_status},
    {"map", kMapSynopsis, "a picture of the device: owners, sharing, poison (SVG)", cmd_map},
    {"scrub", kScrubSynopsis, "find latent poison, clear quarantined free space", cmd_scrub},
};

void usage(FILE* out) {
  std::fprintf(out, "usage: %s COMMAND [ARGS]\n", kTool);
  for (const auto& c : kCommands) {
    std::fprintf(out, "  %-50.*s %.*s\n", static_cast<int>(c.synopsis.size()), c.synopsis.data(),
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

// What a command printf'd may still be in stdio's buffer, and an earlier
// flush of it may have failed: a write error (a full disk) must not go
// unreported with exit 0.
int flush_stdout(int rc) {
  errno = 0;
  bool failed = std::fflush(stdout) != 0 || std::ferror(stdout);
  if (!failed || rc != 0) return rc;
  return error(std::string("write error: ") + std::strerror(errno != 0 ? errno : EIO));
}

}  // namespace
}  // namespace poisonfs

int main(int argc, char** argv) {
  int rc;
  try {
    rc = poisonfs::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", poisonfs::kTool, e.what());
    rc = poisonfs::kExitError;
  }
  return poisonfs::flush_stdout(rc);
}
