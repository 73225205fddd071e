// How the single-threaded session loop waits for its next request.
//
// Why it spins: on these 2-vCPU guests a request that has to wake a daemon
// asleep in read(2) on the other vCPU costs 35-70 us (the host must wake a
// halted vCPU), against 11-13 us when the daemon is awake. A synchronous
// client (4 KiB random I/O, O_DIRECT, stat, create) sends its next request
// a few microseconds after it gets the reply, so after each request the
// loop keeps reading /dev/fuse (O_NONBLOCK) for a short window, and sleeps
// in ppoll only when the window passes with nothing queued: an idle mount
// costs nothing, a busy one keeps its vCPU awake (README.md, Benchmarks).
// The window follows the traffic: after a run of requests that came long
// after their window, the loop stops spinning until one comes close again.
//
// Signals: while it spins the loop's thread never blocks in a system call,
// so a stop signal (SIGINT, SIGTERM, SIGHUP) cannot interrupt it, and one
// that arrived just before the sleep would be lost until the next request.
// So the stop signals stay blocked in every thread of the daemon and are
// let in only by ppoll's mask, atomically with the sleep: a signal that
// came while the loop spun or served a request ends the next sleep at once.
//
// No FUSE here: it reads a descriptor, so it is tested with a pipe.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace poisonfs::fuse {

struct RequestWait {
  // How long to keep reading after a request before sleeping (the window
  // while it is in force); 0: a plain blocking read(2), with the stop
  // signals unblocked (libfuse's own way).
  int64_t spin_ns = 0;
  // The thread's signal mask while it sleeps (spin_ns > 0): its usual mask
  // without the stop signals.
  sigset_t sleep_mask{};

  // Kept by read_request: the window in force (spin_ns, or 0 while
  // requests come too far apart for spinning to pay) and how many requests
  // in a row came later than twice the window.
  int64_t window_ns = 0;
  int late_requests = 0;

  bool spins() const { return spin_ns > 0; }
};

// Reads one request from fd into buf, as read(2) would: the request's
// length, or -1 with errno (EINTR: a signal came during the sleep; ENODEV:
// the session ended). With wait.spins(), fd must be O_NONBLOCK
// (prepare_request_fd); EAGAIN is never returned.
ssize_t read_request(int fd, void* buf, size_t len, RequestWait& wait);

// Puts fd in the mode wait needs: O_NONBLOCK when it spins, blocking
// otherwise. Returns 0 or -errno.
int prepare_request_fd(int fd, const RequestWait& wait);

}  // namespace poisonfs::fuse
