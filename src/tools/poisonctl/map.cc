// poisonctl map: a picture of the device (SVG).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tools/poisonctl/fsmap.h"
#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

// ---- map: a picture of the device (SVG) ----------------------------------------
//
// `poisonctl map --svg OUT.svg MOUNTPOINT|IMAGE` draws the device as a grid
// of cells, left to right and top to bottom from byte 0. A cell is one block,
// or, on a device with more blocks than kMapMaxCells, a run of blocks drawn
// as its most important owner (poisoned > checksums > data > directory >
// xattr > extents > inodes > journal > superblock > free). Data is coloured per inode (a
// stable colour derived from the inode number), shared data is hatched,
// poisoned ranges (fsmap's flag and the device's poison list) are bright
// red, and quarantined free space (poisoned, owned by nobody) is free space
// with a red outline. The data comes from the same places as fsmap and
// badblocks: the mount's ioctls, or the core on an unmounted image.

namespace {

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

// Writes `data` to `path` through a new temporary file beside it, synced
// and renamed over it: a reader never sees half a picture, a crash leaves
// the old one or the new one, and a failed write (disk full, file size
// limit) leaves an earlier file as it was and no temporary behind. The
// temporary is created exclusively (mkostemp), so neither a name planted
// there nor a second run writing the same picture is written through.
// Empty, or what failed.
std::string replace_file(const std::string& path, std::string_view data) {
  std::string tmp = path + ".XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return path + ": cannot create a temporary file beside it: " + errno_text(errno);
  // mkostemp makes it 0600; a picture is as readable as a file made by open().
  const mode_t mask = umask(0);
  umask(mask);
  int err = fchmod(fd, 0666 & ~mask) == 0 ? 0 : errno;
  while (!data.empty() && err == 0) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n > 0) data.remove_prefix(static_cast<size_t>(n));
    else if (n == 0) err = EIO;
    else if (errno != EINTR) err = errno;
  }
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    unlink(tmp.c_str());
    return path + ": write failed: " + errno_text(err);
  }
  return {};
}

int map_rank(FsmapOwner o) {
  switch (o) {
    case FsmapOwner::kFree:
      return 0;
    case FsmapOwner::kSuperblock:
      return 1;
    case FsmapOwner::kJournal:
      return 2;
    case FsmapOwner::kInodes:
      return 3;
    case FsmapOwner::kExtents:
      return 4;
    case FsmapOwner::kXattrs:
      return 5;
    case FsmapOwner::kDirectory:
      return 6;
    case FsmapOwner::kData:
      return 7;
    case FsmapOwner::kChecksums:
      return 8;
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
  double c = (1 - std::fabs(2 * l - 1)) * s, x = c * (1 - std::fabs(std::fmod(h / 60.0, 2.0) - 1)),
         m = l - c / 2;
  double r = 0, g = 0, b = 0;
  if (h < 60)
    r = c, g = x;
  else if (h < 120)
    r = x, g = c;
  else if (h < 180)
    g = c, b = x;
  else if (h < 240)
    g = x, b = c;
  else if (h < 300)
    r = x, b = c;
  else
    r = c, b = x;
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>((r + m) * 255 + 0.5),
                static_cast<int>((g + m) * 255 + 0.5), static_cast<int>((b + m) * 255 + 0.5));
  return buf;
}

std::string svg_escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += (static_cast<unsigned char>(ch) < 0x20) ? '?' : ch;
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
    if (!fd)
      return fail(std::errc{errno}, where.mountpoint + ": cannot open: " + errno_text(errno));
    if (auto st =
            named_fsmap_from_mount(fd.get(), where.mountpoint, 0, UINT64_MAX, d.entries, d.paths);
        !st) {
      return std::unexpected(st.error());
    }
    auto got = ranges_from_mount(fd.get(), where.mountpoint, POISONFS_IOC_BADBLOCKS,
                                 "POISONFS_IOC_BADBLOCKS", "read the device's poison list");
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
        who = e.owner == FsmapOwner::kFree ? "free space (quarantined)"
                                           : std::string(fsmap_owner_name(e.owner));
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
  std::snprintf(
      buf, sizeof buf,
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"DejaVu Sans, sans-serif\" font-size=\"12\">\n",
      width, height, width, height);
  s += buf;
  s += "<defs><pattern id=\"hatch\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\" "
       "patternTransform=\"rotate(45)\"><rect width=\"1.6\" height=\"4\" fill=\"#000\" "
       "fill-opacity=\"0.55\"/>"
       "</pattern></defs>\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";

  // Title.
  std::string title = "poisonfs map: " + where.describe();
  std::snprintf(buf, sizeof buf,
                "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", margin,
                svg_escape(title).c_str());
  s += buf;
  std::string sub = human_bytes(d.info.device_bytes) + ", " + std::to_string(blocks) +
                    " blocks of " + std::to_string(bs) +
                    " B; one cell = " + std::to_string(per_cell) +
                    (per_cell == 1 ? " block" : " blocks") + " (" + human_bytes(cell_bytes) +
                    "); " + std::to_string(order.size()) + " files with data, " +
                    human_bytes(shared_bytes) + " in shared extent records, metadata " +
                    human_bytes(meta_bytes) + ", free " + human_bytes(free_bytes);
  std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"40\">%s</text>\n", margin,
                svg_escape(sub).c_str());
  s += buf;
  std::string poison = "poison list: " + std::to_string(d.bad.size()) +
                       (d.bad.size() == 1 ? " range, " : " ranges, ") + std::to_string(bad_bytes) +
                       " bytes; poisoned owned records " + std::to_string(poisoned_owned) +
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
  std::snprintf(
      buf, sizeof buf,
      "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n",
      margin - 1, top - 1, grid_w + 2, grid_h + 2);
  s += buf;
  for (uint64_t r = 0; r < rows; ++r) {
    uint64_t c = r * kMapColumns, end = std::min(ncells, c + kMapColumns);
    while (c < end) {
      std::string f = fill_of(cells[c]);
      bool hatch = cells[c].shared && !cells[c].poisoned;
      uint64_t run = c + 1;
      while (run < end && fill_of(cells[run]) == f &&
             (cells[run].shared && !cells[run].poisoned) == hatch)
        ++run;
      int x = margin + static_cast<int>(c - r * kMapColumns) * cell,
          y = top + static_cast<int>(r) * cell;
      int w = static_cast<int>(run - c) * cell;
      std::snprintf(buf, sizeof buf,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", x, y, w,
                    cell, f.c_str());
      s += buf;
      if (hatch) {
        std::snprintf(buf, sizeof buf,
                      "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"url(#hatch)\"/>\n",
                      x, y, w, cell);
        s += buf;
      }
      c = run;
    }
  }
  // Poison and quarantine on top, outlined so a single cell stands out.
  for (uint64_t c = 0; c < ncells; ++c) {
    const MapCell& m = cells[c];
    if (!m.poisoned && !m.quarantined) continue;
    int x = margin + static_cast<int>(c % kMapColumns) * cell,
        y = top + static_cast<int>(c / kMapColumns) * cell;
    if (m.poisoned) {
      std::snprintf(
          buf, sizeof buf,
          "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#ff1a1a\" stroke=\"#8b0000\" "
          "stroke-width=\"1.5\"/>\n",
          x - 1, y - 1, cell + 2, cell + 2);
    } else {
      std::snprintf(
          buf, sizeof buf,
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
  kinds.push_back({kMapKindColour[0], "quarantined (poisoned free space)",
                   "stroke=\"#ff1a1a\" stroke-width=\"2\""});
  kinds.push_back({"#7aa6d6", "shared extent (hatched)", "hatch"});
  const int col_w = grid_w / 3;
  for (size_t i = 0; i < kinds.size(); ++i) {
    int x = margin + static_cast<int>(i % 3) * col_w, y = legend_top + static_cast<int>(i / 3) * 18;
    bool hatch = kinds[i].extra == "hatch";
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\" %s/>"
                  "<text x=\"%d\" y=\"%d\">%s</text>\n",
                  x, y, kinds[i].fill.c_str(),
                  hatch ? "stroke=\"#444\" stroke-width=\"0.5\"" : kinds[i].extra.c_str(), x + 17,
                  y + 11, svg_escape(kinds[i].label).c_str());
    s += buf;
    if (hatch) {
      std::snprintf(buf, sizeof buf,
                    "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"url(#hatch)\"/>\n",
                    x, y);
      s += buf;
    }
  }
  int y0 = legend_top + kinds_h;
  if (!bad_lines.empty()) {
    std::snprintf(buf, sizeof buf,
                  "<text x=\"%d\" y=\"%d\" font-weight=\"bold\" fill=\"#d00000\">poisoned ranges "
                  "and their owners</text>\n",
                  margin, y0);
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
  std::snprintf(buf, sizeof buf,
                "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">files (colour per inode%s)</text>\n",
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
                  "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%d\" "
                  "y=\"%d\">%s</text>\n",
                  x, y, map_file_colour(ino).c_str(), x + 17, y + 11, svg_escape(name).c_str());
    s += buf;
  }
  if (order.size() > listed) {
    int y = y0 + 8 + static_cast<int>((listed + 1) / 2) * 16;
    std::snprintf(buf, sizeof buf, "<text x=\"%d\" y=\"%d\">... and %zu more files</text>\n",
                  margin, y + 11, order.size() - listed);
    s += buf;
  }
  s += "</svg>\n";
  return s;
}

}  // namespace

int cmd_map(const std::vector<std::string>& args) {
  std::string out_path, target;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--svg") {
      if (i + 1 >= args.size()) return usage_error("map", "--svg needs OUT.svg", kMapSynopsis);
      out_path = args[++i];
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s %.*s\n", kTool, static_cast<int>(kMapSynopsis.size()),
                  kMapSynopsis.data());
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
  if (std::string failed = replace_file(out_path, svg); !failed.empty()) return error(failed);
  return 0;
}

}  // namespace poisonfs::ctl
