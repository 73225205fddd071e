// The device poison list's record file (see poison_record.h): text coding
// of the base and of change groups, the loader's replay, appends and
// compaction.
#include "media/poison_record.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <system_error>

#include "format/crc32c.h"

namespace poisonfs {
namespace {

// The log may grow to twice its base plus this before it is compacted: the
// rewrite's cost (proportional to the list) is then spread over at least as
// many appends as there are bytes in the base, while a load stays cheap.
constexpr uint64_t kLogSlack = 64 * 1024;
constexpr size_t kCrcDigits = 8;

std::string errno_text(int err) { return std::generic_category().message(err); }

void append_number(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

// "OFF LEN", with " known|latent" when with_kind, then a newline.
void append_range(std::string& out, const PoisonRange& r, bool with_kind) {
  append_number(out, r.offset);
  out += ' ';
  append_number(out, r.length);
  if (with_kind) out += r.latent ? " latent" : " known";
  out += '\n';
}

void skip_blanks(std::string_view& s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
}

bool parse_number(std::string_view& s, uint64_t& v) {
  skip_blanks(s);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end == s.data()) return false;
  s.remove_prefix(static_cast<size_t>(end - s.data()));
  return true;
}

// "OFF LEN [KIND]". Any kind but "latent" reads as known, as older
// versions read it: a range of unknown kind is safer known than dropped.
bool parse_range(std::string_view s, bool with_kind, PoisonRange& r) {
  if (!parse_number(s, r.offset) || !parse_number(s, r.length)) return false;
  skip_blanks(s);
  if (!with_kind) return s.empty();
  if (s.empty()) return false;
  r.latent = s == "latent";
  return true;
}

// The end marker's text after '=': exactly kCrcDigits hex digits (a torn
// marker is too short) equal to the crc of the group's lines.
bool group_crc_matches(std::string_view lines, std::string_view marker) {
  skip_blanks(marker);
  uint32_t stored = 0;
  auto [end, ec] = std::from_chars(marker.data(), marker.data() + marker.size(), stored, 16);
  return marker.size() == kCrcDigits && ec == std::errc() && end == marker.data() + marker.size() &&
         stored == crc32c(lines.data(), lines.size());
}

// Returns 0 or the errno. A short write is continued: the record is this
// process's alone (the image's flock), so nothing lands in between.
int write_all(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
    text.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

// Replays edits on a list of its own (the same add/clear as the live list,
// so the same result), clipping added ranges to the device.
class Replay {
 public:
  explicit Replay(uint64_t device_size) : device_size_(device_size) {}
  void apply(bool removed, const PoisonRange& r) {
    if (removed) {
      if (r.length > 0) list_.clear(r.offset, r.length);
    } else if (r.offset < device_size_ && r.length > 0) {
      list_.add(r.offset, std::min(r.length, device_size_ - r.offset), r.latent);
    }
  }
  std::vector<PoisonRange> ranges() const { return list_.all(); }

 private:
  uint64_t device_size_;
  PoisonList list_;
};

}  // namespace

PoisonRecordContents parse_poison_record(std::string_view text, uint64_t device_size) {
  PoisonRecordContents out;
  Replay replay(device_size);
  struct Edit {
    bool removed;
    PoisonRange range;
  };
  std::vector<Edit> group;
  size_t group_begin = std::string_view::npos;  // offset of the open group's first line
  bool group_readable = true;
  for (size_t pos = 0; pos < text.size();) {
    const size_t line_begin = pos;
    const size_t nl = std::min(text.find('\n', pos), text.size());
    const std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    const bool in_group = group_begin != std::string_view::npos;
    if (line.front() == '+' || line.front() == '-') {
      if (!in_group) {
        group_begin = line_begin;
        group.clear();
        group_readable = true;
      }
      Edit e{line.front() == '-', {}};
      group_readable = group_readable && parse_range(line.substr(1), !e.removed, e.range);
      group.push_back(e);
    } else if (line.front() == '=') {
      const std::string_view lines = in_group ? text.substr(group_begin, line_begin - group_begin) : "";
      if (in_group && group_readable && group_crc_matches(lines, line.substr(1))) {
        for (const Edit& e : group) replay.apply(e.removed, e.range);
        ++out.groups;
      } else {
        out.damaged = true;
      }
      group_begin = std::string_view::npos;
    } else if (PoisonRange r; !in_group && parse_range(line, true, r)) {
      replay.apply(false, r);  // a line of the base
    } else {
      out.damaged = true;
      group_readable = false;
    }
  }
  if (group_begin != std::string_view::npos) out.damaged = true;  // torn: no end marker
  out.ranges = replay.ranges();
  return out;
}

std::string encode_poison_base(const std::vector<PoisonRange>& ranges) {
  std::string out;
  for (const PoisonRange& r : ranges) append_range(out, r, true);
  return out;
}

std::string encode_poison_group(const PoisonChange& change) {
  const bool removed = change.kind == PoisonChange::Kind::kRemoved;
  std::string out;
  for (const PoisonRange& r : change.ranges) {
    out += removed ? "- " : "+ ";
    append_range(out, r, !removed);
  }
  char crc[kCrcDigits + 1];
  auto [end, ec] = std::to_chars(crc, crc + sizeof crc, crc32c(out.data(), out.size()), 16);
  out += "= ";
  out.append(kCrcDigits - static_cast<size_t>(end - crc), '0');
  out.append(crc, end);
  out += '\n';
  return out;
}

PoisonRecord::~PoisonRecord() { close_log(); }

void PoisonRecord::close_log() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string PoisonRecord::read(std::string& text) const {
  text.clear();
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? std::string() : errno_text(errno);
  char buf[16384];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) text.append(buf, static_cast<size_t>(n));
  const int err = n < 0 ? errno : 0;
  ::close(fd);
  return err ? errno_text(err) : std::string();
}

std::string PoisonRecord::save(const PoisonChange& change, const PoisonList& list) {
  if (fd_ < 0 || list.empty() || log_bytes_ > 2 * base_bytes_ + kLogSlack) return compact(list.all());
  return append(encode_poison_group(change));
}

// One write and one fdatasync. A failure may leave part of the group in the
// file (the loader ignores it); the log is closed so that the next save
// compacts, which also puts this change on record.
std::string PoisonRecord::append(const std::string& group) {
  int err = write_all(fd_, group);
  if (!err && ::fdatasync(fd_) != 0) err = errno;
  if (err) {
    close_log();
    behind_ = true;
    return errno_text(err);
  }
  log_bytes_ += group.size();
  return {};
}

// An empty list leaves no file; the next save creates it. Returns 0 or the
// errno.
int PoisonRecord::remove_file() {
  return ::unlink(path_.c_str()) != 0 && errno != ENOENT ? errno : 0;
}

// Written to a temporary file and renamed, so a crash leaves the old or the
// new record, never half of one; the new file stays open as the log.
// Returns 0 or the errno.
int PoisonRecord::write_base(const std::vector<PoisonRange>& ranges) {
  const std::string tmp = path_ + ".tmp";
  const std::string text = encode_poison_base(ranges);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0666);
  if (fd < 0) return errno;
  int err = write_all(fd, text);
  if (!err && ::fdatasync(fd) != 0) err = errno;
  if (!err && ::rename(tmp.c_str(), path_.c_str()) != 0) err = errno;
  if (err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return err;
  }
  fd_ = fd;
  base_bytes_ = log_bytes_ = text.size();
  return 0;
}

std::string PoisonRecord::compact(const std::vector<PoisonRange>& ranges) {
  close_log();
  base_bytes_ = log_bytes_ = 0;
  const int err = ranges.empty() ? remove_file() : write_base(ranges);
  behind_ = err != 0;
  return err ? errno_text(err) : std::string();
}

}  // namespace poisonfs
