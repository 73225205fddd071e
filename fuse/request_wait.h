// How the single-threaded session loop waits for its next request.
//
// Why it spins: on these 2-vCPU guests a request that has to wake a daemon
// asleep in read(2) on the other vCPU costs 35-70 us (the host must wake a
// halted vCPU), against 11-13 us when the daemon is awake. A synchronous
// client (4 KiB random I/O, O_DIRECT, create) sends its next request a few
// microseconds after it gets the reply, so after each request the loop
// keeps reading /dev/fuse (O_NONBLOCK) for a short window, and sleeps in
// ppoll only when the window passes with nothing queued. An idle mount
// costs nothing; a busy one keeps its vCPU awake (README.md, Benchmarks).
//
// The window must pay: once kLateRequestsBeforeRest requests in a row came
// only after the loop had gone to sleep, the loop rests (sleeps at once)
// for a number of requests, then tries the window again; each try that
// fails doubles the rest (kFirstRest up to kLongestRest), a request caught
// by the window resets it. A client whose requests come just too far apart
// costs at most a few windows per kLongestRest requests.
//
// A busy machine: a spinning thread keeps its CPU from the other runnable
// tasks (the client among them), and is time-sliced with them instead of
// preempting them when its request comes, as a sleeping one does. So the
// window is suspended while the CPUs are oversubscribed: at each look (every
// kRunQueueLookNs at most) the loop counts the runnable tasks of the
// machine (/proc/loadavg's fourth field; itself among them) and compares
// them with its CPUs; an average of the recent looks (each new one weighs
// a quarter) above one half suspends the window: three oversubscribed
// looks in a row suspend it on a calm machine, and a few calm ones bring it
// back. (Not the kernel's pressure stall information: a sleeping daemon
// woken on a halted vCPU counts there as a task that waited for a CPU, so
// the spin's very absence looks like contention.) Without /proc/loadavg it
// is never suspended.
//
// Signals: libfuse's handlers of the stop signals (SIGINT, SIGTERM, SIGHUP)
// only set the session's exit flag, which the loop reads between requests;
// a handler that ran while the loop spun would leave it to go to sleep
// afterwards with nothing to wake it. So the stop signals stay blocked in
// every thread of the daemon and are let in only by ppoll's mask,
// atomically with the sleep, and, when one is pending, before a request is
// read (a client that never lets the loop sleep cannot hold it off).
//
// No FUSE here: it reads a descriptor, so it is tested with a pipe.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>

namespace poisonfs::fuse {

inline constexpr int kLateRequestsBeforeRest = 8;
inline constexpr int kFirstRest = 8;  // requests served without spinning
inline constexpr int kLongestRest = 1024;
inline constexpr int64_t kRunQueueLookNs = 10'000'000;
inline constexpr const char* kRunQueuePath = "/proc/loadavg";

int64_t monotonic_ns();

// The number of runnable tasks of the machine, from a file such as
// /proc/loadavg ("0.52 0.58 0.59 3/467 12345": the 3). Move-only: it owns
// the descriptor.
class RunQueue {
 public:
  RunQueue() = default;
  // Unavailable when path is empty, missing or unreadable.
  explicit RunQueue(const char* path);
  RunQueue(RunQueue&& other) noexcept;
  RunQueue& operator=(RunQueue&& other) noexcept;
  ~RunQueue();

  bool available() const { return fd_ >= 0; }
  // The current count, or nothing when it cannot be read or parsed.
  std::optional<uint64_t> runnable() const;

 private:
  int fd_ = -1;
};

struct RequestWait {
  // How long to keep reading after a request before sleeping (the window
  // while it is in force); 0: a plain blocking read(2), with the stop
  // signals unblocked (libfuse's own way).
  int64_t spin_ns = 0;
  // The signals that end the loop (blocked but while it sleeps), and the
  // thread's mask while it sleeps: its usual mask without them.
  sigset_t stop_signals{};
  sigset_t sleep_mask{};

  // Kept by read_request: whether the window is in force, how many
  // requests in a row came after the loop went to sleep, how many requests
  // are left to serve at rest, and the length of the next rest.
  bool window_in_force = true;
  int late_requests = 0;
  int rest_left = 0;
  int next_rest = kFirstRest;

  // The contention gate: the run queue, the machine's CPUs, when to look
  // next, the average of the looks (permille of them oversubscribed, each
  // new one weighing a quarter), and whether the window is suspended.
  RunQueue run_queue;
  uint64_t cpus = 1;
  int64_t next_look = 0;
  int oversubscribed_permille = 0;
  bool cpus_contended = false;

  // CLOCK_MONOTONIC in ns; tests make time stand still.
  int64_t (*clock)() = monotonic_ns;

  bool spins() const { return spin_ns > 0; }
};

// A wait that spins for spin_ns (0: never) unless the CPUs are contended
// (run_queue_path: a file like /proc/loadavg; empty: never suspended) and
// lets the signals of stop in only while it sleeps: its sleep mask is the
// calling thread's mask without them.
RequestWait make_request_wait(int64_t spin_ns, const sigset_t& stop,
                              const char* run_queue_path = kRunQueuePath);

// Reads one request from fd into buf, as read(2) would: the request's
// length, or -1 with errno (EINTR: a stop signal came and its handler ran;
// ENODEV: the session ended). With wait.spins(), fd must be O_NONBLOCK
// (prepare_request_fd); EAGAIN is never returned.
ssize_t read_request(int fd, void* buf, size_t len, RequestWait& wait);

// Puts fd in the mode wait needs: O_NONBLOCK when it spins, blocking
// otherwise. Returns 0 or -errno.
int prepare_request_fd(int fd, const RequestWait& wait);

}  // namespace poisonfs::fuse
