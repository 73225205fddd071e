// See request_wait.h.
#include "request_wait.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace poisonfs::fuse {
namespace {

int64_t monotonic_ns() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

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

}  // namespace

RequestWait make_request_wait(int64_t spin_ns, const sigset_t& stop) {
  RequestWait wait;
  wait.spin_ns = spin_ns;
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
  const int64_t sleep_at = wait.window_in_force ? monotonic_ns() + wait.spin_ns : 0;
  bool slept = false;
  for (;;) {
    ssize_t n = read(fd, buf, len);
    if (n >= 0) {
      adapt_window(wait, slept);
      return n;
    }
    if (errno != EAGAIN) return -1;
    if (!slept && monotonic_ns() < sleep_at) continue;
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
