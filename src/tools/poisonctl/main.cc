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
//   poisonctl scrub [--json] MOUNTPOINT|IMAGE
//
// Subcommands live in one table (kCommands, below); a new one is a function
// (declared with its synopsis in poisonctl.h, defined in a file of this
// directory) plus a row there.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {
namespace {

// ---- the subcommand table ---------------------------------------------------

struct Command {
  std::string_view name;
  std::string_view synopsis;
  std::string_view summary;
  int (*run)(const std::vector<std::string>& args);
};

constexpr Command kCommands[] = {
    {"stat", kStatSynopsis, "geometry and usage of a filesystem", cmd_stat},
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
}  // namespace poisonfs::ctl

int main(int argc, char** argv) {
  // Past a file size limit (ulimit -f) a write fails with EFBIG and is
  // reported like any write error, instead of the signal killing the tool
  // half way through a file (map's picture) or a listing.
  std::signal(SIGXFSZ, SIG_IGN);
  int rc;
  try {
    rc = poisonfs::ctl::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", poisonfs::ctl::kTool, e.what());
    rc = poisonfs::ctl::kExitError;
  }
  return poisonfs::ctl::flush_stdout(rc);
}
