// See request_wait.h.
#include "request_wait.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
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

// Whether the CPUs are contended, looking at the run queue at most every
// kRunQueueLookNs (request_wait.h).
bool cpus_contended(RequestWait& wait, int64_t now) {
  if (!wait.run_queue.available() || now < wait.next_look) return wait.cpus_contended;
  std::optional<uint64_t> runnable = wait.run_queue.runnable();
  if (!runnable) {
    wait.run_queue = RunQueue();  // unreadable: never suspend the window
    return wait.cpus_contended = false;
  }
  const int look = *runnable > wait.cpus ? 1000 : 0;
  wait.oversubscribed_permille = (3 * wait.oversubscribed_permille + look) / 4;
  wait.cpus_contended = wait.oversubscribed_permille > 500;
  wait.next_look = now + kRunQueueLookNs;
  return wait.cpus_contended;
}

}  // namespace

int64_t monotonic_ns() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

RunQueue::RunQueue(const char* path) {
  if (path == nullptr || *path == '\0') return;
  fd_ = open(path, O_RDONLY | O_CLOEXEC);
  if (fd_ >= 0 && !runnable()) {
    close(fd_);
    fd_ = -1;
  }
}

RunQueue::RunQueue(RunQueue&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

RunQueue& RunQueue::operator=(RunQueue&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

RunQueue::~RunQueue() {
  if (fd_ >= 0) close(fd_);
}

std::optional<uint64_t> RunQueue::runnable() const {
  char text[128];
  const ssize_t n = pread(fd_, text, sizeof text - 1, 0);
  if (n <= 0) return std::nullopt;
  text[n] = '\0';
  // "0.52 0.58 0.59 3/467 12345": the fourth field's numerator.
  unsigned long long running = 0, tasks = 0;
  double load[3];
  if (std::sscanf(text, "%lf %lf %lf %llu/%llu", &load[0], &load[1], &load[2], &running, &tasks) !=
      5)
    return std::nullopt;
  return running;
}

RequestWait make_request_wait(int64_t spin_ns, const sigset_t& stop, const char* run_queue_path) {
  RequestWait wait;
  wait.spin_ns = spin_ns;
  if (spin_ns > 0) wait.run_queue = RunQueue(run_queue_path);
  wait.cpus = static_cast<uint64_t>(std::max(1, get_nprocs()));
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
