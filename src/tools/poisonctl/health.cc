// poisonctl status and scrub: whether a filesystem is healthy, with its
// poison and quarantine, and a scrub that finds latent poison.
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

// ---- status ------------------------------------------------------------------------

int cmd_status(const std::vector<std::string>& args) {
  bool json = false;
  std::string target;
  if (int code = parse_json_target("status", kStatusSynopsis, "MOUNTPOINT", args, json, target); code >= 0) return code;
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
          ", \"shutdown\": " + (h.shutdown ? "true" : "false") +
          ", \"reason\": " + json_string(h.reason) +
          ", \"known_poison_bytes\": " + std::to_string(h.known_poison_bytes) +
          ", \"latent_poison_bytes\": " + std::to_string(h.latent_poison_bytes) +
          ", \"quarantined_bytes\": " + std::to_string(h.quarantined_bytes) +
          ", \"events\": " + std::to_string(h.events) + "}\n";
  } else {
    std::vector<std::pair<std::string, std::string>> rows = {
        {"target", where.describe()},
        {"state", h.shutdown ? "shutdown: " + h.reason + " (every call fails with EIO)"
                             : std::string("healthy")},
        {"known poison", bytes_and_human(h.known_poison_bytes)},
        {"latent poison", bytes_and_human(h.latent_poison_bytes)},
        {"quarantined", bytes_and_human(h.quarantined_bytes)},
        {"events", std::to_string(h.events)},
    };
    out = aligned_rows(rows);
  }
  return write_stdout(out);
}

// ---- scrub ----------------------------------------------------------------------
//
// `poisonctl scrub [--json] MOUNTPOINT|IMAGE`: on a mount through
// POISONFS_IOC_SCRUB (the scrub runs inside the ioctl, so there is no
// progress over the mount: a terminal gets an elapsed-time spinner); on an
// unmounted image offline through the core on a shared mapping (it changes
// the image: quarantined free space is cleared), with a real progress bar.

namespace {

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
      std::fprintf(stderr, "\rscrubbing %s %c %.1fs (no progress over a mount)", mountpoint.c_str(),
                   kSpin[i % 4], s);
      std::fflush(stderr);
      usleep(100'000);
    }
    std::fprintf(stderr, "\r\033[K");
  }
  worker.join();
  if (rc != 0)
    return fail(std::errc{err}, ioctl_failed(mountpoint, "POISONFS_IOC_SCRUB", err, "scrub"));
  return ScrubReport{rec.bytes_scanned,       rec.latent_found,
                     rec.known_poison_bytes,  rec.quarantine_cleared_bytes,
                     rec.ranges_notified,     rec.blocks_verified,
                     rec.checksum_mismatches, (rec.flags & POISONFS_SCRUB_CHECKSUMS) != 0};
}

Result<ScrubReport> scrub_offline(const std::string& image, bool show) {
  // Shared: the scrub writes the image (poison made known, quarantine cleared).
  auto fs = open_image(image, MapMode::kShared);
  if (!fs) return std::unexpected(fs.error());
  int last = -1;
  auto rep = (*fs)->scrub([&](uint64_t done, uint64_t total) {
    if (!show || total == 0) return;
    int pct = static_cast<int>(done * 100 / total);
    if (pct == last) return;
    last = pct;
    constexpr int kWidth = 40;
    int fill = pct * kWidth / 100;
    std::fprintf(stderr, "\rscrubbing [%s%s] %3d%% %s / %s", std::string(fill, '#').c_str(),
                 std::string(kWidth - fill, ' ').c_str(), pct, human_bytes(done).c_str(),
                 human_bytes(total).c_str());
    std::fflush(stderr);
  });
  if (show && last >= 0) std::fprintf(stderr, "\r\033[K");
  if (!rep) {
    (void)(*fs)->unmount();
    return fail(rep.error().code,
                image + ": scrub failed: " + rep.error().to_string() +
                    (rep.error().code == std::errc::io_error ? " (see poisonctl status)" : ""));
  }
  if (auto u = (*fs)->unmount(); !u)
    return fail(u.error().code, image + ": unmount after scrub: " + u.error().to_string());
  return rep;
}

}  // namespace

int cmd_scrub(const std::vector<std::string>& args) {
  bool json = false;
  std::string target;
  if (int code = parse_json_target("scrub", kScrubSynopsis, "MOUNTPOINT or IMAGE", args, json, target); code >= 0) return code;
  Target where = resolve_target(target);
  const bool show = isatty(STDERR_FILENO) == 1;
  auto rep = where.mountpoint.empty() ? scrub_offline(where.arg, show)
                                      : scrub_through_mount(where.mountpoint, show);
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
          ", \"silent_corruption\": " +
          (rep->checksums ? std::to_string(rep->checksum_mismatches) : "null") +
          ", \"silent_corruption_checked\": " + (rep->checksums ? "true" : "false") + "}\n";
  } else {
    std::vector<std::pair<std::string, std::string>> rows = {
        {"target", where.describe()},
        {"bytes scanned", bytes_and_human(rep->bytes_scanned)},
        {"latent poison found", std::to_string(rep->latent_found) + " range(s)"},
        {"ranges notified", std::to_string(rep->ranges_notified)},
        {"quarantine cleared", bytes_and_human(rep->quarantine_cleared_bytes)},
        {"known poison left", bytes_and_human(rep->known_poison_bytes)},
        {"silent corruption", rep->checksums
                                  ? std::to_string(rep->checksum_mismatches) +
                                        " block(s) not matching their checksum, of " +
                                        std::to_string(rep->blocks_verified) + " verified" +
                                        (rep->checksum_mismatches ? " (see poisonctl events)" : "")
                                  : "not checked (the image has no data checksums)"},
    };
    out = aligned_rows(rows);
  }
  return write_stdout(out);
}

}  // namespace poisonfs::ctl
