// The session loop's wait for requests (fuse/request_wait.h), on a pipe:
// it returns what is queued, sleeps (not spins) once its window passes, and
// a stop signal that came while it spun ends the sleep instead of being
// lost before it.
#include "request_wait.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>
#include <thread>

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
  // Sends s from another thread after delay; join the thread.
  std::thread send_after(std::chrono::milliseconds delay, std::string s) const {
    return std::thread([this, delay, s] {
      std::this_thread::sleep_for(delay);
      send(s);
    });
  }
};

RequestWait spinning_for(std::chrono::microseconds spin) {
  RequestWait wait;
  wait.spin_ns = std::chrono::nanoseconds(spin).count();
  wait.window_ns = wait.spin_ns;  // in force, as on a busy mount
  pthread_sigmask(SIG_BLOCK, nullptr, &wait.sleep_mask);
  return wait;
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

// The window rests after a run of requests that came long after it, and
// comes back with the first request that comes close to the last.
TEST(RequestWait, TheWindowFollowsTheTraffic) {
  Pipe p;
  RequestWait wait = spinning_for(2000us);
  wait.window_ns = 0;  // resting, as a fresh mount
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  char buf[8];
  p.send("a");
  ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  EXPECT_EQ(wait.window_ns, wait.spin_ns) << "a queued request puts the window in force";
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(wait.window_ns, wait.spin_ns) << "still spinning before late request " << i;
    std::thread sender = p.send_after(30ms, "b");
    ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
    sender.join();
  }
  EXPECT_EQ(wait.window_ns, 0) << "eight late requests in a row: the loop rests";
  p.send("c");
  ASSERT_EQ(read_request(p.read_end, buf, sizeof buf, wait), 1);
  EXPECT_EQ(wait.window_ns, wait.spin_ns);
  EXPECT_EQ(wait.late_requests, 0);
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

// The daemon's loop: stop signals blocked except while it sleeps. A signal
// sent while it spins (here: before it even starts) must end the sleep.
TEST(RequestWait, ASignalThatCameWhileSpinningEndsTheSleep) {
  struct sigaction action {
  }, old_action{};
  action.sa_handler = count_signal;
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &action, &old_action), 0);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0);

  Pipe p;
  RequestWait wait = spinning_for(1000us);
  sigdelset(&wait.sleep_mask, SIGUSR1);
  ASSERT_EQ(prepare_request_fd(p.read_end, wait), 0);
  // If the signal were lost, this request would end the wait instead.
  std::atomic<bool> returned{false};
  std::thread watchdog([&p, &returned] {
    for (auto waited = 0ms; waited < 3s && !returned; waited += 10ms)
      std::this_thread::sleep_for(10ms);
    if (!returned) p.send("watchdog");
  });
  g_signals_seen = 0;
  ASSERT_EQ(pthread_kill(pthread_self(), SIGUSR1), 0);  // pending: blocked
  EXPECT_EQ(g_signals_seen.load(), 0);
  char buf[16];
  errno = 0;
  ssize_t n = read_request(p.read_end, buf, sizeof buf, wait);
  int read_errno = errno;
  returned = true;
  watchdog.join();
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  sigaction(SIGUSR1, &old_action, nullptr);
  EXPECT_EQ(n, -1);
  EXPECT_EQ(read_errno, EINTR);
  EXPECT_EQ(g_signals_seen.load(), 1);
}

}  // namespace
}  // namespace poisonfs::fuse
