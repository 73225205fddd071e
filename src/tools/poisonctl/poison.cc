// poisonctl inject, badblocks and poison: poison for device bytes, the
// device's poison list, a file's poisoned ranges; and the helpers of the
// control ioctls, which events, status, map and scrub use too.
#include <fcntl.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tools/poisonctl/poisonctl.h"
#include "util/strfmt.h"

namespace poisonfs::ctl {

// ---- shared by the poison commands -------------------------------------------

namespace {

// Why a control ioctl failed, in words a user can act on.
std::string control_hint(int err, std::string_view what) {
  switch (err) {
    case EPERM:
    case EACCES:
      return " (only root and the user who mounted may " + std::string(what) + ")";
    case ENOTTY:
    case EOPNOTSUPP:
      return " (not a poisonfs file)";
    case EIO:
      return " (the filesystem may be shut down: see poisonctl status)";
    default:
      return {};
  }
}

}  // namespace

// The message for a failed control ioctl: what failed, why, and a hint.
std::string ioctl_failed(const std::string& where, const char* name, int err,
                         std::string_view what) {
  return where + ": " + name + " failed: " + errno_text(err) + control_hint(err, what);
}

std::string inclusive(uint64_t offset, uint64_t length) {
  if (length == 0) return "-";
  return std::to_string(offset) + ".." + std::to_string(offset + length - 1);
}

// Reads every page of a POISONFS_IOC_BADBLOCKS or POISONFS_IOC_FILE_POISON.
Result<std::vector<poisonfs_range>> ranges_from_mount(int fd, const std::string& where,
                                                      unsigned long cmd, const char* name,
                                                      std::string_view what) {
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
    if (page->count > POISONFS_RANGES_MAX)
      return fail(std::errc::io_error, where + ": bad " + name + " reply");
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

int cmd_inject(const std::vector<std::string>& args) {
  bool latent = false;
  std::vector<std::string> pos;
  for (const auto& a : args) {
    if (a == "--latent") {
      latent = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kInjectSynopsis.size()),
                  kInjectSynopsis.data());
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("inject", "unknown option '" + a + "'", kInjectSynopsis);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 3)
    return usage_error("inject", "expected MOUNTPOINT|IMAGE OFFSET LENGTH", kInjectSynopsis);
  auto off = parse_size_arg("OFFSET", pos[1]);
  if (!off) return usage_error("inject", off.error().to_string(), kInjectSynopsis);
  auto len = parse_size_arg("LENGTH", pos[2]);
  if (!len) return usage_error("inject", len.error().to_string(), kInjectSynopsis);
  const uint64_t offset = *off, length = *len;
  if (length == 0) return error("inject: LENGTH must not be zero; nothing injected");
  if (offset > UINT64_MAX - length) {
    return error("inject: OFFSET + LENGTH (" + pos[1] + " + " + pos[2] +
                 ") overflows; nothing injected");
  }
  auto outside = [&](uint64_t device_bytes) {
    return error(
        strfmt("inject: device bytes {}..{} lie outside the device ({} bytes); nothing injected",
               offset, offset + length - 1, device_bytes));
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
    auto fs = open_image(where.arg, MapMode::kShared);
    if (!fs) return error(fs.error().to_string());
    auto r = (*fs)->inject_poison(offset, length, latent);
    Status unmounted = (*fs)->unmount();
    if (!r) return error(where.arg + ": " + r.error().to_string() + "; nothing injected");
    if (!unmounted)
      return error(where.arg + ": unmount after the injection: " + unmounted.error().to_string());
    got = *r;
  }
  std::string rounded =
      got.offset == offset && got.length == length
          ? std::string{}
          : strfmt(" (asked {}..{}, rounded out to 64-byte units)", offset, offset + length - 1);
  std::printf("%s: injected %s poison at device bytes %s: offset %" PRIu64 ", length %" PRIu64
              "%s\n",
              where.describe().c_str(), latent ? "latent" : "known",
              inclusive(got.offset, got.length).c_str(), got.offset, got.length, rounded.c_str());
  return 0;
}

// ---- badblocks -----------------------------------------------------------------

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
  if (target.empty())
    return usage_error("badblocks", "missing MOUNTPOINT or IMAGE", kBadblocksSynopsis);
  Target where = resolve_target(target);
  std::vector<PoisonRange> ranges;
  if (!where.mountpoint.empty()) {
    Fd fd(open_for_control(where.mountpoint));
    if (!fd) return error(where.mountpoint + ": cannot open: " + errno_text(errno));
    auto got = ranges_from_mount(fd.get(), where.mountpoint, POISONFS_IOC_BADBLOCKS,
                                 "POISONFS_IOC_BADBLOCKS", "read the device's poison list");
    if (!got) return error(got.error().to_string());
    for (const poisonfs_range& r : *got) {
      ranges.push_back(PoisonRange{r.offset, r.length, (r.flags & POISONFS_POISON_LATENT) != 0});
    }
  } else {
    auto fs = open_image(where.arg);
    if (!fs) return error(fs.error().to_string());
    ranges = (*fs)->badblocks();
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const PoisonRange& a, const PoisonRange& b) { return a.offset < b.offset; });
  std::string out;
  if (bytes) {
    for (const PoisonRange& r : ranges) {
      out += std::to_string(r.offset) + " " + std::to_string(r.length) +
             (r.latent ? " latent\n" : "\n");
    }
  } else {
    // Like /sys/block/pmemN/badblocks: 512-byte sectors, rounded out; ranges
    // that meet once rounded become one line.
    std::vector<std::pair<uint64_t, uint64_t>> sectors;  // [first, end)
    for (const PoisonRange& r : ranges) {
      if (r.length == 0) continue;
      uint64_t first = r.offset / 512,
               end = r.offset / 512 + (r.offset % 512 + r.length + 511) / 512;
      if (!sectors.empty() && first <= sectors.back().second) {
        sectors.back().second = std::max(sectors.back().second, end);
      } else {
        sectors.emplace_back(first, end);
      }
    }
    for (const auto& [first, end] : sectors)
      out += std::to_string(first) + " " + std::to_string(end - first) + "\n";
  }
  return write_stdout(out);
}

// ---- poison ---------------------------------------------------------------------

namespace {

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

Result<std::vector<FilePoison>> file_poison_from_image(const std::string& image,
                                                       const std::string& path) {
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
    rows.push_back({std::to_string(r.file_offset), std::to_string(r.length),
                    inclusive(r.file_offset, r.length)});
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
  out += name + ": " + std::to_string(ranges.size()) +
         (ranges.size() == 1 ? " poisoned range, " : " poisoned ranges, ") + std::to_string(total) +
         " bytes (" + human_bytes(total) + ") unreadable until rewritten\n";
  return out;
}

}  // namespace

int cmd_poison(const std::vector<std::string>& args) {
  FileTarget t;
  if (int code = parse_file_target("poison", kPoisonSynopsis, args, &t); code >= 0) return code;
  std::string name;
  auto ranges = fetch_for_file("poison", t, &name, file_poison_from_mount, file_poison_from_image);
  if (!ranges) return error(ranges.error().to_string());
  return write_stdout(t.json ? file_poison_to_json(*ranges) : file_poison_human(name, *ranges));
}

}  // namespace poisonfs::ctl
