// See request_wait.h.
#include "request_wait.h"

#include <fcntl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

namespace poisonfs::fuse {
namespace {

int64_t monotonic_ns() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

// Sleeps until fd is readable (or has an error to report: a read then
// returns it) or a signal of the sleep mask arrives (-1, EINTR).
int sleep_until_readable(int fd, const RequestWait& wait) {
  pollfd readable{fd, POLLIN, 0};
  return ppoll(&readable, 1, nullptr, &wait.sleep_mask) < 0 ? -1 : 0;
}

// Spinning pays while requests come close together. A request that came
// within twice the window of the last reply (or was queued already) puts
// the window in force; after kLateRequestsBeforeRest requests in a row that
// came later, the loop rests (sleeps at once): a mount used now and then
// costs no spinning, and the first close request wakes the window again.
constexpr int kLateRequestsBeforeRest = 8;

void adapt_window(RequestWait& wait, int64_t waited_ns) {
  if (waited_ns <= 2 * wait.spin_ns) {
    wait.window_ns = wait.spin_ns;
    wait.late_requests = 0;
  } else if (++wait.late_requests >= kLateRequestsBeforeRest) {
    wait.window_ns = 0;
  }
}

}  // namespace

ssize_t read_request(int fd, void* buf, size_t len, RequestWait& wait) {
  if (!wait.spins()) return read(fd, buf, len);
  const int64_t start = monotonic_ns();
  int64_t sleep_at = start + wait.window_ns;
  for (;;) {
    ssize_t n = read(fd, buf, len);
    if (n >= 0) {
      adapt_window(wait, monotonic_ns() - start);
      return n;
    }
    if (errno != EAGAIN) return -1;
    if (monotonic_ns() < sleep_at) continue;
    if (sleep_until_readable(fd, wait) < 0) return -1;
    sleep_at = 0;  // a spurious wake-up sleeps again at once
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
