// What the files of poisonctl share (main.cc has the tool's overview and its
// command table): errors and output (output.cc), finding the mount or image
// a command works on (target.cc), the helpers of the per-file commands
// (reflink.cc) and of the control ioctls (poison.cc), and each subcommand's
// entry point and synopsis. The fsmap listing with its path table, shared by
// fsmap and map, is in fsmap.h.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "poisonfs/filesystem.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::ctl {

inline constexpr const char* kTool = "poisonctl";
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// ---- errors, usage and output (output.cc) ------------------------------------

int error(const std::string& message);
std::string errno_text(int err);
int usage_error(std::string_view command, const std::string& message, std::string_view synopsis);
// `[--json] TARGET` (TARGET described as `what`: "MOUNTPOINT", "MOUNTPOINT or
// IMAGE"): -1 to go on, else the exit code to return (help printed, or a
// usage error).
int parse_json_target(std::string_view command, std::string_view synopsis, std::string_view what,
                      const std::vector<std::string>& args, bool& json, std::string& target);
// "N bytes", with the human size from 1 KiB on.
std::string bytes_and_human(uint64_t n);
// "key: value" lines, values aligned.
std::string aligned_rows(const std::vector<std::pair<std::string, std::string>>& rows);
Result<uint64_t> parse_size_arg(const std::string& what, const std::string& text);
std::string json_string(std::string_view s);
void append_u64(std::string& out, uint64_t v);
void append_json_string(std::string& out, std::string_view s);
int write_stdout(std::string_view out);

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

// ---- finding out what the target is (target.cc) ------------------------------

bool on_poisonfs_mount(const std::string& path);
std::string mountpoint_of_image(const std::string& path);
// The core on an unmounted image: a private mapping (a query never writes
// the image) unless a command changes it (inject, scrub).
Result<std::unique_ptr<Filesystem>> open_image(const std::string& path, MapMode mode = MapMode::kPrivate);

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

Target resolve_target(const std::string& arg);
// A descriptor of any file of a mount, for its ioctls.
int open_for_control(const std::string& path);

// ---- stat.cc -----------------------------------------------------------------

// direct_io, if given: whether the mount serves read/write without the
// page cache (-o direct_io in force).
Result<FsInfo> info_from_mount(const std::string& path, std::optional<bool>* direct_io = nullptr);

// ---- per-file commands: bmap and poison (reflink.cc) -------------------------

Result<Ino> lookup_path(Filesystem& fs, const std::string& image, const std::string& path);

// The target of a per-file command: FILE on a mounted poisonfs, or
// --image IMAGE PATH for a file of an unmounted image.
struct FileTarget {
  bool json = false;
  std::string file, image;
};

int parse_file_target(const std::string& cmd, std::string_view synopsis,
                      const std::vector<std::string>& args, FileTarget* t);

// Asks through the mount (from_mount(path)) or offline (from_image(image,
// path)) as the target says; a mounted image is locked by its daemon, so it
// is asked through its mount. *name: how to call the file in output.
template <class FromMount, class FromImage>
auto fetch_for_file(const std::string& cmd, const FileTarget& t, std::string* name,
                    FromMount from_mount, FromImage from_image)
    -> decltype(from_mount(std::string{})) {
  *name = t.file;
  if (!t.image.empty()) {
    *name = t.image + ":" + t.file;
    std::string mp = on_poisonfs_mount(t.image) ? std::string{} : mountpoint_of_image(t.image);
    if (!mp.empty()) return from_mount(mp + (t.file.starts_with("/") ? "" : "/") + t.file);
    return from_image(t.image, t.file);
  }
  if (on_poisonfs_mount(t.file)) return from_mount(t.file);
  struct stat st {};
  if (stat(t.file.c_str(), &st) != 0)
    return fail(std::errc::invalid_argument, t.file + ": " + errno_text(errno));
  return fail(std::errc::invalid_argument,
              t.file + " is not on a mounted poisonfs (for a file of an unmounted image: " + kTool +
                  " " + cmd + " --image IMAGE PATH)");
}

// ---- shared by the poison commands (poison.cc) -------------------------------

std::string ioctl_failed(const std::string& where, const char* name, int err,
                         std::string_view what);
std::string inclusive(uint64_t offset, uint64_t length);
Result<std::vector<poisonfs_range>> ranges_from_mount(int fd, const std::string& where,
                                                      unsigned long cmd, const char* name,
                                                      std::string_view what);

// ---- the subcommands, listed in main.cc (kCommands) --------------------------

inline constexpr std::string_view kReflinkSynopsis =
    "reflink SRC DST [--range SRC_OFF DST_OFF LEN]";
inline constexpr std::string_view kStatSynopsis = "stat [--json] MOUNTPOINT|IMAGE";
inline constexpr std::string_view kBmapSynopsis = "bmap [--json] FILE | --image IMAGE PATH";
inline constexpr std::string_view kFsmapSynopsis =
    "fsmap [--json] MOUNTPOINT|IMAGE [START [LENGTH]]";
inline constexpr std::string_view kInjectSynopsis =
    "inject MOUNTPOINT|IMAGE OFFSET LENGTH [--latent]";
inline constexpr std::string_view kBadblocksSynopsis = "badblocks [--bytes] MOUNTPOINT|IMAGE";
inline constexpr std::string_view kPoisonSynopsis = "poison [--json] FILE | --image IMAGE PATH";
inline constexpr std::string_view kEventsSynopsis = "events [--json] [--follow] MOUNTPOINT";
inline constexpr std::string_view kStatusSynopsis = "status [--json] MOUNTPOINT";
inline constexpr std::string_view kMapSynopsis = "map --svg OUT.svg MOUNTPOINT|IMAGE";
inline constexpr std::string_view kScrubSynopsis = "scrub [--json] MOUNTPOINT|IMAGE";

int cmd_stat(const std::vector<std::string>& args);       // stat.cc
int cmd_reflink(const std::vector<std::string>& args);    // reflink.cc
int cmd_bmap(const std::vector<std::string>& args);       // reflink.cc
int cmd_fsmap(const std::vector<std::string>& args);      // fsmap.cc
int cmd_inject(const std::vector<std::string>& args);     // poison.cc
int cmd_badblocks(const std::vector<std::string>& args);  // poison.cc
int cmd_poison(const std::vector<std::string>& args);     // poison.cc
int cmd_events(const std::vector<std::string>& args);     // events.cc
int cmd_status(const std::vector<std::string>& args);     // health.cc
int cmd_map(const std::vector<std::string>& args);        // map.cc
int cmd_scrub(const std::vector<std::string>& args);      // health.cc

}  // namespace poisonfs::ctl
