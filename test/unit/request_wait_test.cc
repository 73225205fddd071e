// The session loop's wait for requests (fuse/request_wait.h), on a pipe:
// it returns what is queued, sleeps (not spins) once its window passes or
// while the CPUs are contended, and a stop signal that came while it spun
// ends the sleep instead of being lost before it.
#include "request_wait.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "proc_state.h"

namespace poisonfs::fuse {
namespace {

using namespace std::chrono_literals;

struct Pipe {
  int read_end = -1;
  int write_end = -1;
  Pipe() {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    read_end = fds[0];
    write_end = fds[1];
  }
  ~Pipe() {
    if (read_end >= 0) close(read_end);
    if (write_end >= 0) close(write_end);
  }
  void send(const std::string& s) const {
    ASSERT_EQ(write(write_end, s.data(), s.size()), ssize_t(s.size()));
  }
  // Sends s from another thread once the thread tid sleeps (in ppoll: its
  // state in /proc is S), so the request comes only after the loop slept;
  // join the thread.
  std::thread send_once_asleep(pid_t tid, std::string s) const {
    return std::thread([this, tid, s] {
      while (!sleeping(tid)) std::this_thread::sleep_for(20us);
      send(s);
    });
  }
  static bool sleeping(pid_t tid) {
    return test::proc_state("/proc/self/task/" + std::to_string(tid) + "/stat") == 'S';
  }
  // Sends s from another thread after delay; join the thread.
  std::thread send_after(std::chrono::milliseconds delay, std::string s) const {
    return std::thread([this, delay, s] {
      std::this_thread::sleep_for(delay);
      send(s);
    });
  }
};

// A wait that spins for spin, never suspended by the machine's load (the
// tests of the contention gate give it their own run queue file).
RequestWait spinning_for(std::chrono::microseconds spin, const char* run_queue_path = "") {
  sigset_t none;
  sigemptyset(&none);
  return make_request_wait(std::chrono::nanoseconds(spin).count(), none, run_queue_path);
}

bool nonblocking(int fd) { return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }

double thread_cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) / 1e9;
}

TEST(RequestWait, PrepareSetsAndClearsNonBlocking) {
  Pipe p;
  ASSERT_EQ(prepare_request_fd(p.read_end, spinning_for(50us)), 0);
  EXPECT_TRUE(nonblocking(p.read_end));
  ASSERT_EQ(prepare_request_fd(p.read_end, spinning_for(0us)), 0);
  EXPECT_FALSE(nonblocking(p.read_end));
  EXPECT_EQ(prepare_request_fd(-1, spinning_for(50us)), -EBADF);
}

TEST(RequestWait, ReturnsAQueuedRequestAtOnce) {
  Pipe p;
  RequestWait wait = spinning_for(50us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  p.send("request");
  char buf[64];
  ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 7);
  EXPECT_EQ(std::string(buf, 7), "request");
}

TEST(RequestWait, SleepsOnceTheSpinWindowPasses) {
  Pipe p;
  RequestWait wait = spinning_for(1000us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  std::thread sender = p.send_after(300ms, "late");
  const double cpu_before = thread_cpu_seconds();
  char buf[64];
  ssize_t n = read_request(p.read_end, buf, sizeof buf, wait);
  const double cpu_used = thread_cpu_seconds() - cpu_before;
  sender.join();
  ASSERT_EQ(n, 4);
  EXPECT_EQ(std::string(buf, 4), "late");
  // It waited 300 ms; spinning all along would have used about as much CPU.
  EXPECT_LT(cpu_used, 0.1);
}

// Serves one request: queued before the read, or sent only once the loop
// went to sleep (late).
enum class Arrival { kQueued, kLate };
void serve_one(Pipe& p, RequestWait& wait, Arrival arrival) {
  char buf[8];
  if (arrival == Arrival::kQueued) {
    p.send("q");
    ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
    return;
  }
  std::thread sender = p.send_once_asleep(static_cast<pid_t>(gettid()), "s");
  ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  sender.join();
}

// The window rests after a run of requests that came only after the loop
// had gone to sleep, tries again after a rest that doubles with each try
// that fails, and a request it catches resets the rest.
TEST(RequestWait, TheWindowPaysOrRests) {
  Pipe p;
  RequestWait wait = spinning_for(1000us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  ASSERT_TRUE(wait.window_in_force);
  for (int i = 0; i < kLateRequestsBeforeRest; ++i) {
    EXPECT_TRUE(wait.window_in_force) << "still spinning before late request " << i;
    ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kLate));
  }
  EXPECT_FALSE(wait.window_in_force) << "a run of late requests: the loop rests";
  EXPECT_EQ(wait.rest_left, kFirstRest);
  for (int i = 0; i < kFirstRest; ++i)
    ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kQueued));
  EXPECT_TRUE(wait.window_in_force) << "the rest is over: try the window again";
  for (int i = 0; i < kLateRequestsBeforeRest; ++i)
    ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kLate));
  EXPECT_FALSE(wait.window_in_force);
  EXPECT_EQ(wait.rest_left, 2 * kFirstRest) << "a try that failed doubles the rest";
  for (int i = 0; i < 2 * kFirstRest; ++i)
    ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kQueued));
  ASSERT_TRUE(wait.window_in_force);
  ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kQueued));
  EXPECT_EQ(wait.next_rest, kFirstRest) << "a request caught in the window resets the rest";
  EXPECT_EQ(wait.late_requests, 0);
}

TEST(RequestWait, TheRestDoublesUpToTheLongest) {
  Pipe p;
  RequestWait wait = spinning_for(1us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  int longest = 0;
  for (int tries = 0; tries < 12; ++tries) {
    for (int i = 0; i < kLateRequestsBeforeRest; ++i)
      ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kLate));
    ASSERT_FALSE(wait.window_in_force);
    longest = std::max(longest, wait.rest_left);
    while (!wait.window_in_force) ASSERT_NO_FATAL_FAILURE(serve_one(p, wait, Arrival::kQueued));
  }
  EXPECT_EQ(longest, kLongestRest);
}

TEST(RequestWait, WithoutSpinItIsABlockingRead) {
  Pipe p;
  RequestWait wait = spinning_for(0us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  std::thread sender = p.send_after(50ms, "x");
  char buf[8];
  EXPECT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  sender.join();
}

TEST(RequestWait, ReturnsEndOfFileAndErrorsAtOnce) {
  Pipe p;
  RequestWait wait = spinning_for(10000us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  close(p.write_end);
  p.write_end = -1;
  char buf[8];
  EXPECT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 0);
  errno = 0;
  EXPECT_EQ(read_request(-1, buf, sizeof buf, wait), -1);
  EXPECT_EQ(errno, EBADF);
}

std::atomic<int> g_signals_seen{0};
void count_signal(int) { g_signals_seen.fetch_add(1); }

// SIGUSR1 as the daemon's stop signals are: blocked in this thread, let in
// only by read_request. Restores the handler and the mask.
struct Usr1AsStopSignal {
  struct sigaction old_action {};
  sigset_t old_mask{};
  Usr1AsStopSignal() {
    struct sigaction action {};
    action.sa_handler = count_signal;
    sigemptyset(&action.sa_mask);
    EXPECT_EQ(sigaction(SIGUSR1, &action, &old_action), 0);
    sigset_t usr1 = only_usr1();
    EXPECT_EQ(pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0);
    g_signals_seen = 0;
  }
  ~Usr1AsStopSignal() {
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    sigaction(SIGUSR1, &old_action, nullptr);
  }
  static sigset_t only_usr1() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    return set;
  }
  static RequestWait wait_stopped_by_usr1(std::chrono::microseconds spin) {
    return make_request_wait(std::chrono::nanoseconds(spin).count(), only_usr1(), "");
  }
};

// A stop signal that comes while the loop spins must end the sleep that
// follows, not be lost before it.
TEST(RequestWait, ASignalThatCameWhileSpinningEndsTheSleep) {
  Usr1AsStopSignal usr1;
  Pipe p;
  RequestWait wait = Usr1AsStopSignal::wait_stopped_by_usr1(300ms);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  // Sent while the window (300 ms) runs; if it were lost, the watchdog's
  // request would end the wait instead.
  const pthread_t loop = pthread_self();
  std::atomic<bool> returned{false};
  std::thread sender([&] {
    std::this_thread::sleep_for(30ms);
    pthread_kill(loop, SIGUSR1);
    for (auto waited = 30ms; waited < 3s && !returned; waited += 10ms)
      std::this_thread::sleep_for(10ms);
    if (!returned) p.send("watchdog");
  });
  char buf[16];
  errno = 0;
  ssize_t n = read_request(p.read_end, buf, sizeof buf, wait);
  int read_errno = errno;
  returned = true;
  sender.join();
  EXPECT_EQ(n, -1);
  EXPECT_EQ(read_errno, EINTR);
  EXPECT_EQ(g_signals_seen.load(), 1);
}

// A client that never lets the loop sleep cannot hold a stop signal off:
// the next read lets it in, and the queued requests stay for later.
TEST(RequestWait, AStopSignalGetsInWhileRequestsKeepComing) {
  Usr1AsStopSignal usr1;
  Pipe p;
  RequestWait wait = Usr1AsStopSignal::wait_stopped_by_usr1(50us);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  p.send(std::string(64, 'r'));
  char buf[1];
  ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  ASSERT_EQ(pthread_kill(pthread_self(), SIGUSR1), 0);
  EXPECT_EQ(g_signals_seen.load(), 0) << "blocked until read_request lets it in";
  errno = 0;
  EXPECT_EQ(read_request(p.read_end, buf, sizeof buf, wait), -1);
  EXPECT_EQ(errno, EINTR);
  EXPECT_EQ(g_signals_seen.load(), 1);
  EXPECT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1) << "the requests are still queued";
}

// ---- the contention gate ------------------------------------------------------

// A loadavg-like file the test writes, removed at the end.
struct RunQueueFile {
  std::string path;
  RunQueueFile() {
    char name[] = "/tmp/poisonfs-loadavg.XXXXXX";
    int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    close(fd);
    path = name;
  }
  ~RunQueueFile() { unlink(path.c_str()); }
  void write_text(const std::string& text) const {
    int fd = open(path.c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, text.data(), text.size()), ssize_t(text.size()));
    close(fd);
  }
  void set_runnable(uint64_t n) const {
    write_text("0.52 0.58 0.59 " + std::to_string(n) + "/467 12345\n");
  }
};

TEST(RunQueue, ReadsTheRunnableTasksOfALoadavgFile) {
  RunQueueFile f;
  f.set_runnable(3);
  RunQueue queue(f.path.c_str());
  ASSERT_TRUE(queue.available());
  EXPECT_EQ(queue.runnable(), 3u);
  f.set_runnable(17);
  EXPECT_EQ(queue.runnable(), 17u) << "each look reads the file again";
}

TEST(RunQueue, IsUnavailableWithoutAReadableLoadavgFile) {
  EXPECT_FALSE(RunQueue("").available());
  EXPECT_FALSE(RunQueue(nullptr).available());
  EXPECT_FALSE(RunQueue("/nonexistent/loadavg").available());
  RunQueueFile f;
  f.write_text("garbage\n");
  EXPECT_FALSE(RunQueue(f.path.c_str()).available());
  f.write_text("0.1 0.2 0.3 x/9 1\n");
  EXPECT_FALSE(RunQueue(f.path.c_str()).available());
}

TEST(RunQueue, ReadsThisMachinesRunQueue) {
  RunQueue queue(kRunQueuePath);
  ASSERT_TRUE(queue.available());
  EXPECT_GE(queue.runnable().value_or(0), 1u) << "this test itself runs";
}

// Time stands still for the gate's tests: the window never passes by itself,
// so a loop that spins would spin until its request comes.
std::atomic<int64_t> g_now{0};
int64_t frozen_clock() { return g_now.load(); }
constexpr int64_t kMs = 1'000'000;

// Reads one request that is sent only once the loop sleeps, or after
// `patience` if it never does. Returns whether it went to sleep.
bool went_to_sleep_before_its_request(Pipe& p, RequestWait& wait,
                                      std::chrono::milliseconds patience) {
  const pid_t tid = static_cast<pid_t>(gettid());
  std::atomic<bool> asleep{false};
  std::thread sender([&] {
    for (auto waited = 0ms; waited < patience; waited += 1ms) {
      if (Pipe::sleeping(tid)) {
        asleep = true;
        break;
      }
      std::this_thread::sleep_for(1ms);
    }
    p.send("r");
  });
  char buf[8];
  EXPECT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  sender.join();
  return asleep;
}

// Serves queued requests one look apart (kRunQueueLookNs) with the run
// queue at `runnable`.
void look(Pipe& p, RequestWait& wait, const RunQueueFile& f, uint64_t runnable, int looks) {
  f.set_runnable(runnable);
  for (int i = 0; i < looks; ++i) {
    g_now += kRunQueueLookNs;
    p.send("q");
    char buf[8];
    ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  }
}

// A wait on p's read end for a 2-CPU machine, its clock frozen, whose run
// queue is read from f.
RequestWait gated_wait(Pipe& p, const RunQueueFile& f) {
  f.set_runnable(1);
  RequestWait wait = spinning_for(10000us, f.path.c_str());
  EXPECT_TRUE(wait.run_queue.available());
  wait.cpus = 2;
  wait.clock = frozen_clock;
  g_now = 1000 * kMs;
  EXPECT_EQ(prepare_request_fd(p.read_end, wait), 0);
  return wait;
}

TEST(RequestWait, AnOversubscribedMachineSleepsAtOnce) {
  Pipe p;
  RunQueueFile f;
  RequestWait wait = gated_wait(p, f);
  ASSERT_NO_FATAL_FAILURE(look(p, wait, f, 3, 2));
  EXPECT_FALSE(wait.cpus_contended) << "two looks do not suspend the window";
  ASSERT_NO_FATAL_FAILURE(look(p, wait, f, 3, 1));
  EXPECT_TRUE(wait.cpus_contended) << "three in a row do";
  EXPECT_EQ(wait.late_requests, 0) << "a contended machine does not count against the window";
  EXPECT_TRUE(went_to_sleep_before_its_request(p, wait, 2000ms));
}

TEST(RequestWait, AMachineWithACpuForEachRunnableTaskSpins) {
  Pipe p;
  RunQueueFile f;
  RequestWait wait = gated_wait(p, f);
  ASSERT_NO_FATAL_FAILURE(look(p, wait, f, 2, 5));  // the daemon and its client
  EXPECT_FALSE(wait.cpus_contended);
  EXPECT_FALSE(went_to_sleep_before_its_request(p, wait, 200ms));
}

TEST(RequestWait, TheWindowComesBackWhenTheContentionEnds) {
  Pipe p;
  RunQueueFile f;
  RequestWait wait = gated_wait(p, f);
  ASSERT_NO_FATAL_FAILURE(look(p, wait, f, 5, 6));
  ASSERT_TRUE(wait.cpus_contended);
  ASSERT_NO_FATAL_FAILURE(look(p, wait, f, 1, 1));
  EXPECT_TRUE(wait.cpus_contended) << "one calm look is not enough";
  ASSERT_NO_FATAL_FAILURE(look(p, wait, f, 1, 1));
  EXPECT_FALSE(wait.cpus_contended) << "the average is below one half again";
  EXPECT_FALSE(went_to_sleep_before_its_request(p, wait, 200ms));
}

}  // namespace
}  // namespace poisonfs::fuse
