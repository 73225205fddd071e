// Two threads of the daemon besides the session loop, both SerialWorkers
// (one thread, jobs run in the order posted):
//
// CacheInvalidator sends kernel cache invalidations
// (fuse_lowlevel_notify_inval_inode). The core reports poisoned file ranges
// from whatever thread found them - possibly a read handler serving a page
// fault of the very file, whose page lock the kernel would need to
// invalidate: notifying from there could deadlock, so the work is queued.
// For the same reason a request that must be answered only after an
// invalidation is answered from this thread (then): the thread serving
// requests never waits on a page lock, which a READ queued behind it may
// hold (with the single-threaded loop, the default, that READ would never be
// served).
//
// The background worker runs control requests that take long (scrub walks
// the whole device): on the session loop they would hold up every other
// request of the mount while they run.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "ops.h"

namespace poisonfs::fuse {

class SerialWorker {
 public:
  SerialWorker();
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;
  ~SerialWorker();  // runs what is queued, then stops

  // REQUIRES: fn does not throw.
  void post(std::function<void()> fn);

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the rest exists
};

class CacheInvalidator {
 public:
  explicit CacheInvalidator(fuse_session* se) : se_(se) {}

  void push(uint64_t ino, uint64_t offset, uint64_t length);
  // Runs fn on this thread once everything pushed before has been sent: a
  // control request that injected poison replies from there, only after the
  // kernel dropped the cached pages, so the caller's next read sees EIO.
  // REQUIRES: fn does not throw.
  void then(std::function<void()> fn) { worker_.post(std::move(fn)); }

 private:
  fuse_session* se_;
  SerialWorker worker_;
};

}  // namespace poisonfs::fuse
