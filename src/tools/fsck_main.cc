// fsck.poisonfs: verifies every structure of an unmounted image and the state
// derived from it (free space, refcounts) through check_filesystem, and
// repairs what it can. Exit codes follow e2fsck so that fsck(8) and scripts
// read them the same way.
//
//   fsck.poisonfs [-n] [-y] [-f] [-v] IMAGE
//
// Every image is first checked through a private (copy-on-write) mapping, so
// a clean, foreign, truncated or unreadable image is never written; only when
// problems were found and repair was asked for is the image mapped shared,
// repaired, and checked once more to tell "fixed" from "left uncorrected".
#include <fcntl.h>
#include <getopt.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>

#include "media/image_lock.h"
#include "poisonfs/filesystem.h"
#include "poisonfs/media.h"

namespace poisonfs {
namespace {

constexpr const char* kTool = "fsck.poisonfs";

// e2fsck's exit codes (fsck(8)); they add up when several apply.
enum Exit : int {
  kClean = 0,
  kFixed = 1,
  kUncorrected = 4,
  kOperational = 8,
  kUsage = 16,
};

struct Options {
  bool no_change = false;  // -n: report only, never write
  bool verbose = false;
  std::string image;
};

void usage(FILE* out) {
  std::fprintf(out, "usage: %s [-n] [-y] [-f] [-v] IMAGE\n", kTool);
  if (out == stderr) return;
  std::fprintf(out,
               "  -n  check only: open the image read-only and change nothing\n"
               "  -y  repair every problem found (the default; -p and -a are the same)\n"
               "  -f  check even if the filesystem seems clean (always done)\n"
               "  -v  verbose: print the counts of what was checked\n"
               "exit: 0 clean, 1 errors fixed, 4 errors left uncorrected,\n"
               "      8 operational error, 16 usage error\n");
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
  usage(stderr);
  return kUsage;
}

int operational_error(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
  return kOperational;
}

// "IMAGE: message", unless the core's message names the image already.
int image_error(const std::string& image, const Error& error) {
  std::string message = error.to_string();
  if (!message.starts_with(image + ":")) message = image + ": " + message;
  return operational_error(message);
}

// Returns kClean when the options parse, else the exit code to use.
int parse_args(int argc, char** argv, Options* opt) {
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'}, {nullptr, 0, nullptr, 0}};
  bool yes = false;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "+nyfvpah", kLong, nullptr)) != -1) {
    switch (c) {
      case 'n':
        opt->no_change = true;
        break;
      case 'y':
      case 'p':
      case 'a':
        yes = true;
        break;
      case 'f':
        break;  // every run is a full check
      case 'v':
        opt->verbose = true;
        break;
      case 'h':
        usage(stdout);
        std::exit(kClean);
      default:
        if (optopt != 0) return usage_error(std::string("unknown option '-") + char(optopt) + "'");
        return usage_error(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  if (yes && opt->no_change) return usage_error("-n and -y cannot be used together");
  if (argc - optind != 1) return usage_error("expected exactly one IMAGE");
  opt->image = argv[optind];
  if (opt->image.empty()) return usage_error("IMAGE must not be empty");
  return kClean;
}

// True when the daemon (or another tool) holds the image's lock, i.e. it is
// mounted. open_pmem_media takes an exclusive flock for shared mappings.
bool image_in_use(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool busy = lock_image(fd, path, LOCK_SH) == EWOULDBLOCK;
  close(fd);  // drops the probe's own lock
  return busy;
}

struct Outcome {
  CheckReport report;
  uint64_t total_blocks = 0;
};

// Maps the image in `mode` and runs one check over it.
Result<Outcome> check_once(const std::string& image, MapMode mode, bool repair) {
  auto media = open_pmem_media(image, mode);
  if (!media) return std::unexpected(media.error());
  auto report = check_filesystem(**media, repair);
  if (!report) return std::unexpected(report.error());
  return Outcome{std::move(*report), (*media)->size() / kBlockSize};
}

std::string problems(size_t n) { return std::to_string(n) + (n == 1 ? " problem" : " problems"); }

void print_lines(const std::string& image, const CheckReport& report, bool with_repairs) {
  for (const auto& p : report.problems) std::printf("%s: problem: %s\n", image.c_str(), p.c_str());
  if (!with_repairs) return;
  for (const auto& r : report.repairs) std::printf("%s: fixed: %s\n", image.c_str(), r.c_str());
}

void print_clean(const std::string& image, const CheckReport& report, uint64_t total_blocks,
                 bool verbose) {
  std::printf("%s: clean, %" PRIu64 " inodes, %" PRIu64 " extents, %" PRIu64 "/%" PRIu64
              " blocks\n",
              image.c_str(), report.inodes, report.extents, report.used_blocks, total_blocks);
  if (verbose) {
    std::printf("  %" PRIu64 " inodes (%" PRIu64 " directories), %" PRIu64
                " extent records, %" PRIu64 " blocks in use\n",
                report.inodes, report.directories, report.extents, report.used_blocks);
  }
}

int run(int argc, char** argv) {
  Options opt;
  if (int rc = parse_args(argc, argv, &opt); rc != kClean) return rc;
  const std::string& image = opt.image;

  struct stat st {};
  if (stat(image.c_str(), &st) != 0) {
    return operational_error(image + ": cannot open: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode) && !S_ISCHR(st.st_mode)) {
    return operational_error(image + ": not a regular file or a device");
  }
  if (image_in_use(image)) {
    return operational_error(image + " is in use (mounted?); unmount it first");
  }

  // Pass 1: read-only, through a private mapping.
  auto first = check_once(image, MapMode::kPrivate, /*repair=*/false);
  if (!first) return image_error(image, first.error());
  if (first->report.clean()) {
    print_clean(image, first->report, first->total_blocks, opt.verbose);
    return kClean;
  }
  if (opt.no_change) {
    print_lines(image, first->report, false);
    std::printf("%s: %s found, left uncorrected (-n)\n", image.c_str(),
                problems(first->report.problems.size()).c_str());
    return kUncorrected;
  }

  // Pass 2: repair in place.
  auto repaired = check_once(image, MapMode::kShared, /*repair=*/true);
  if (!repaired) return image_error(image, repaired.error());
  const CheckReport& fixes = repaired->report;
  print_lines(image, fixes, true);

  // Pass 3: what is left.
  auto after = check_once(image, MapMode::kPrivate, /*repair=*/false);
  if (!after) {
    return operational_error(image + ": does not check after repair: " + after.error().to_string());
  }
  if (after->report.clean()) {
    std::printf("%s: %s found, all fixed\n", image.c_str(),
                problems(fixes.problems.size()).c_str());
    if (opt.verbose) print_clean(image, after->report, after->total_blocks, true);
    return kFixed;
  }
  for (const auto& p : after->report.problems) {
    std::printf("%s: left uncorrected: %s\n", image.c_str(), p.c_str());
  }
  std::printf("%s: %s found, %zu fixed, %zu left uncorrected\n", image.c_str(),
              problems(fixes.problems.size()).c_str(), fixes.repairs.size(),
              after->report.problems.size());
  return kUncorrected;
}

}  // namespace
}  // namespace poisonfs

int main(int argc, char** argv) {
  try {
    return poisonfs::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", poisonfs::kTool, e.what());
    return poisonfs::kOperational;
  }
}
