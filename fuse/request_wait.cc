// See request_wait.h.
#include "request_wait.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace poisonfs::fuse {
namespace {

bool stop_signal_pending(const RequestWait& wait) {
  sigset_t pending;
  if (sigpending(&pending) != 0) return false;
  sigandset(&pending, &pending, &wait.stop_signals);
  return !sigisemptyset(&pending);
}

// Lets the pending stop signals in (their handlers run) without sleeping.
ssize_t take_stop_signals(const RequestWait& wait) {
  const timespec now{};
  ppoll(nullptr, 0, &now, &wait.sleep_mask);
  errno = EINTR;
  return -1;
}

// Sleeps until fd is readable (or has an error to report: a read then
// returns it) or a stop signal arrives (-1, EINTR).
int sleep_until_readable(int fd, const RequestWait& wait) {
  pollfd readable{fd, POLLIN, 0};
  return ppoll(&readable, 1, nullptr, &wait.sleep_mask) < 0 ? -1 : 0;
}

// Keeps the window only while it catches requests (request_wait.h).
void adapt_window(RequestWait& wait, bool slept) {
  if (!wait.window_in_force) {
    wait.window_in_force = --wait.rest_left <= 0;
    return;
  }
  if (!slept) {
    wait.late_requests = 0;
    wait.next_rest = kFirstRest;
  } else if (++wait.late_requests >= kLateRequestsBeforeRest) {
    wait.window_in_force = false;
    wait.late_requests = 0;
    wait.rest_left = wait.next_rest;
    wait.next_rest = std::min(2 * wait.next_rest, kLongestRest);
  }
}

// Whether the CPUs are contended, looking at the pressure at most every
// kPressureIntervalNs (kContendedPauseNs after a contended look).
bool cpus_contended(RequestWait& wait, int64_t now) {
  if (!wait.pressure.available() || now < wait.next_pressure_look) return wait.cpus_contended;
  std::optional<uint64_t> stall_us = wait.pressure.stall_us();
  if (!stall_us) {
    wait.pressure = CpuPressure();  // unreadable: never suspend the window
    return wait.cpus_contended = false;
  }
  if (wait.pressure_seen_at != 0 && now > wait.pressure_seen_at) {
    const uint64_t stalled_ns =
        (std::max(*stall_us, wait.stall_seen_us) - wait.stall_seen_us) * 1000;
    const uint64_t elapsed_ns = uint64_t(now - wait.pressure_seen_at);
    wait.cpus_contended = stalled_ns * 1000 > elapsed_ns * kContendedPermille;
  }
  wait.pressure_seen_at = now;
  wait.stall_seen_us = *stall_us;
  wait.next_pressure_look = now + (wait.cpus_contended ? kContendedPauseNs : kPressureIntervalNs);
  return wait.cpus_contended;
}

}  // namespace

int64_t monotonic_ns() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

CpuPressure::CpuPressure(const char* path) {
  if (path == nullptr || *path == '\0') return;
  fd_ = open(path, O_RDONLY | O_CLOEXEC);
  if (fd_ >= 0 && !stall_us()) {
    close(fd_);
    fd_ = -1;
  }
}

CpuPressure::CpuPressure(CpuPressure&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

CpuPressure& CpuPressure::operator=(CpuPressure&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

CpuPressure::~CpuPressure() {
  if (fd_ >= 0) close(fd_);
}

std::optional<uint64_t> CpuPressure::stall_us() const {
  char text[256];
  const ssize_t n = pread(fd_, text, sizeof text - 1, 0);
  if (n <= 0) return std::nullopt;
  text[n] = '\0';
  // "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\nfull ..."
  const char* total = std::strstr(text, "total=");
  if (std::strncmp(text, "some ", 5) != 0 || total == nullptr) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(total + 6, &end, 10);
  if (errno != 0 || end == total + 6) return std::nullopt;
  return value;
}

RequestWait make_request_wait(int64_t spin_ns, const sigset_t& stop, const char* pressure_path) {
  RequestWait wait;
  wait.spin_ns = spin_ns;
  if (spin_ns > 0) wait.pressure = CpuPressure(pressure_path);
  wait.stop_signals = stop;
  pthread_sigmask(SIG_BLOCK, nullptr, &wait.sleep_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigismember(&stop, sig) == 1) sigdelset(&wait.sleep_mask, sig);
  }
  return wait;
}

ssize_t read_request(int fd, void* buf, size_t len, RequestWait& wait) {
  if (!wait.spins()) return read(fd, buf, len);
  if (stop_signal_pending(wait)) return take_stop_signals(wait);
  const int64_t start = wait.clock();
  // A contended machine neither spins nor counts toward the window's record.
  const bool contended = cpus_contended(wait, start);
  const int64_t sleep_at = wait.window_in_force && !contended ? start + wait.spin_ns : 0;
  bool slept = false;
  for (;;) {
    ssize_t n = read(fd, buf, len);
    if (n >= 0) {
      if (!contended) adapt_window(wait, slept);
      return n;
    }
    if (errno != EAGAIN) return -1;
    if (!slept && wait.clock() < sleep_at) continue;
    if (sleep_until_readable(fd, wait) < 0) return -1;
    slept = true;  // a spurious wake-up sleeps again at once
  }
}

int prepare_request_fd(int fd, const RequestWait& wait) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return -errno;
  int wanted = wait.spins() ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (wanted != flags && fcntl(fd, F_SETFL, wanted) < 0) return -errno;
  return 0;
}

}  // namespace poisonfs::fuse
