// poisonctl reflink and bmap: sharing SRC's blocks with DST through a
// mount, and a file's extents; and what the per-file commands (bmap,
// poison) share: the lookup of a path in an image and their arguments.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {
namespace {

std::string parent_dir(const std::string& path) {
  auto end = path.find_last_not_of('/');
  if (end == std::string::npos) return "/";
  auto slash = path.rfind('/', end);
  if (slash == std::string::npos) return ".";
  auto keep = path.find_last_not_of('/', slash);
  return keep == std::string::npos ? "/" : path.substr(0, keep + 1);
}

// ---- reflink -----------------------------------------------------------------

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
    case EXDEV:
      return "SRC and DST must be on the same poisonfs mount";
    case EBADF:
      return "SRC must be open for reading and DST for writing";
    case EISDIR:
      return "directories cannot be reflinked";
    case ENOTTY:
    case EOPNOTSUPP:
      return "not a poisonfs file";
    default:
      return {};
  }
}

int reflink_failed(const std::string& src, const std::string& dst, const char* what, int err) {
  std::string message = "reflink " + src + " -> " + dst + ": " + what + errno_text(err);
  std::string hint = reflink_hint(err);
  if (!hint.empty()) message += ": " + hint;
  return error(message);
}

}  // namespace

int cmd_reflink(const std::vector<std::string>& args) {
  std::vector<std::string> names;
  std::vector<std::string> range;
  bool ranged = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kReflinkSynopsis.size()),
                  kReflinkSynopsis.data());
      return 0;
    } else if (a == "--range") {
      if (ranged) return usage_error("reflink", "--range given twice", kReflinkSynopsis);
      if (args.size() - i - 1 < 3) {
        return usage_error("reflink", "--range needs SRC_OFF DST_OFF LEN", kReflinkSynopsis);
      }
      ranged = true;
      range.assign(args.begin() + static_cast<long>(i) + 1,
                   args.begin() + static_cast<long>(i) + 4);
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
  struct stat s_st {
  }, d_st{};
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
    if (s_st.st_dev != d_st.st_dev)
      err = EXDEV;
    else if (whole > 0)
      err = clone_range_ioctl(dst_fd.get(), src_fd.get(), 0, whole, 0);
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
    if (!attr)
      return fail(attr.error().code, image + ": " + path + ": " + attr.error().to_string());
    ino = attr->ino;
  }
  return ino;
}

// ---- bmap --------------------------------------------------------------------

namespace {

Result<std::vector<BmapEntry>> bmap_from_mount(const std::string& file) {
  Fd fd(open_for_control(file));
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
    if (page->count > POISONFS_BMAP_MAX)
      return fail(std::errc::io_error, file + ": bad POISONFS_IOC_BMAP reply");
    for (uint32_t i = 0; i < page->count; ++i) {
      const poisonfs_bmap_rec& r = page->recs[i];
      out.push_back(BmapEntry{
          r.file_offset, r.physical, r.length, (r.flags & POISONFS_BMAP_SHARED) != 0,
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
  if (!entries)
    return fail(entries.error().code, image + ": " + path + ": " + entries.error().to_string());
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
    rows.push_back({std::to_string(e.file_offset), std::to_string(e.physical),
                    std::to_string(e.length), bmap_flags(e)});
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
  std::snprintf(line, sizeof line, "%*s  %*s  %*s  %s\n", static_cast<int>(w[0]), heads[0],
                static_cast<int>(w[1]), heads[1], static_cast<int>(w[2]), heads[2], heads[3]);
  out += line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "%*s  %*s  %*s  %s\n", static_cast<int>(w[0]), r[0].c_str(),
                  static_cast<int>(w[1]), r[1].c_str(), static_cast<int>(w[2]), r[2].c_str(),
                  r[3].c_str());
    out += line;
  }
  out += name + ": " + std::to_string(entries.size()) +
         (entries.size() == 1 ? " extent, " : " extents, ") + std::to_string(mapped) +
         " bytes mapped, " + std::to_string(shared) + " shared, " + std::to_string(unwritten) +
         " unwritten, " + std::to_string(poisoned) + " poisoned\n";
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

}  // namespace

// Parses [--json] FILE | --image IMAGE PATH. Returns -1 to go on, else the
// exit code to return (help printed, or a usage error).
int parse_file_target(const std::string& cmd, std::string_view synopsis,
                      const std::vector<std::string>& args, FileTarget* t) {
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
  if (t->file.empty())
    return usage_error(cmd, t->image.empty() ? "missing FILE" : "missing PATH", synopsis);
  return -1;
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

}  // namespace poisonfs::ctl
