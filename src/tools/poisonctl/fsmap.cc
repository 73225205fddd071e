// poisonctl fsmap: the owners of a device range, with the paths of the data
// owners, through a mount (pages of ioctls) or from an unmounted image.
#include "tools/poisonctl/fsmap.h"

#include <fcntl.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fs/fsmap_pack.h"

namespace poisonfs::ctl {

// ---- fsmap -------------------------------------------------------------------

namespace {

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
      std::string hint =
          err == EPERM ? " (only root and the user who mounted may list the device)" : "";
      return fail(std::errc{err}, where + ": POISONFS_IOC_FSMAP failed: " + errno_text(err) + hint);
    }
    if (page->count > POISONFS_FSMAP_MAX)
      return fail(std::errc::io_error, where + ": bad POISONFS_IOC_FSMAP reply");
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
    if (page->count == 0)
      return fail(std::errc::io_error, where + ": POISONFS_IOC_FSMAP made no progress");
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
      std::string hint =
          err == ENOTTY ? " (the daemon is older than poisonctl: remount with the new poisonfs)"
                        : "";
      return fail(std::errc{err},
                  where + ": POISONFS_IOC_PATHS_FROM failed: " + errno_text(err) + hint);
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
Status paths_batch_from_mount(int fd, const std::string& where, const std::vector<Ino>& inos,
                              PathTable& table) {
  auto rec = std::make_unique<poisonfs_paths_batch>();
  std::vector<std::string_view> names;
  for (size_t next = 0; next < inos.size();) {
    uint32_t count =
        static_cast<uint32_t>(std::min<size_t>(POISONFS_PATHS_BATCH_MAX, inos.size() - next));
    rec->count = count;
    rec->done = 0;
    std::copy_n(inos.begin() + static_cast<long>(next), count, rec->inodes);
    if (ioctl(fd, POISONFS_IOC_PATHS_BATCH, rec.get()) != 0) {
      int err = errno;
      return fail(std::errc{err}, where + ": POISONFS_IOC_PATHS_BATCH failed: " + errno_text(err));
    }
    if (rec->done > count)
      return fail(std::errc::io_error, where + ": bad POISONFS_IOC_PATHS_BATCH reply");
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
      std::string hint =
          err == EPERM ? " (only root and the user who mounted may list the device)" : "";
      return fail(std::errc{err},
                  where + ": POISONFS_IOC_FSMAP_PACKED failed: " + errno_text(err) + hint);
    }
    if (page->used > sizeof page->buf)
      return fail(std::errc::io_error, where + ": bad POISONFS_IOC_FSMAP_PACKED reply");
    table.reserve(std::min<size_t>(page->count, page->used));  // a record is at least a byte
    if (auto st = unpack_fsmap({page->buf, page->used}, page->count, entries, on_paths); !st) {
      return fail(std::errc::io_error, where + ": " + st.error().to_string());
    }
    if (page->flags & POISONFS_OF_LAST) return {};
    if (page->count == 0)
      return fail(std::errc::io_error, where + ": POISONFS_IOC_FSMAP_PACKED made no progress");
    cursor_physical = page->cursor_physical;
    cursor_skip = page->cursor_skip;
  }
}

}  // namespace

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
  if (auto more = paths_batch_from_mount(fd, where, table.missing(entries), table); !more)
    return more;
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

namespace {

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
      case FsmapOwner::kFree:
        out.lit(", \"owner\": \"free\"");
        break;
      case FsmapOwner::kSuperblock:
        out.lit(", \"owner\": \"superblock\"");
        break;
      case FsmapOwner::kJournal:
        out.lit(", \"owner\": \"journal\"");
        break;
      case FsmapOwner::kInodes:
        out.lit(", \"owner\": \"inodes\"");
        break;
      case FsmapOwner::kExtents:
        out.lit(", \"owner\": \"extents\"");
        break;
      case FsmapOwner::kDirectory:
        out.lit(", \"owner\": \"directory\"");
        break;
      case FsmapOwner::kXattrs:
        out.lit(", \"owner\": \"xattr\"");
        break;
      case FsmapOwner::kData:
        out.lit(", \"owner\": \"data\"");
        break;
      case FsmapOwner::kChecksums:
        out.lit(", \"owner\": \"checksums\"");
        break;
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
      if (e.shared)
        out.lit(", \"shared\": true");
      else
        out.lit(", \"shared\": false");
    }
    if (e.poisoned)
      out.lit(", \"poisoned\": true}");
    else
      out.lit(", \"poisoned\": false}");
  }
  out.room(8);
  if (entries.empty())
    out.lit("]\n");
  else
    out.lit("\n]\n");
}

// The aligned table of `poisonctl fsmap`, like `xfs_io -c 'fsmap -v'` but in
// device bytes: one row per record, ranges inclusive.
void print_fsmap_human(const Target& where, const std::vector<FsmapEntry>& entries,
                       const PathTable& paths, OutBuf& out) {
  constexpr int kCols = 7;
  static const char* const kHeads[kCols] = {"EXT",         "PHYSICAL", "OWNER", "INODE",
                                            "FILE_OFFSET", "PATH",     "FLAGS"};
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
      case 1:
        range(e.physical, e.length);
        break;
      case 2:
        return fsmap_owner_name(e.owner);
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
    if (is_data(e))
      data += e.length;
    else if (e.owner == FsmapOwner::kFree)
      free += e.length;
    else
      meta += e.length;
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
                        " bytes in data records, " + std::to_string(meta) + " metadata, " +
                        std::to_string(free) + " free\n";
  out.room(summary.size());
  out.raw(summary);
}

}  // namespace

int cmd_fsmap(const std::vector<std::string>& args) {
  bool json = false;
  std::vector<std::string> pos;
  for (const auto& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kFsmapSynopsis.size()),
                  kFsmapSynopsis.data());
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
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    if (auto st = named_fsmap_from_mount(fd.get(), where.mountpoint, start, length, entries, paths);
        !st) {
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
  if (json)
    fsmap_json(entries, paths, out);
  else
    print_fsmap_human(where, entries, paths, out);
  return out.finish();
}

}  // namespace poisonfs::ctl
