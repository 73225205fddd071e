// Sends kernel cache invalidations (fuse_lowlevel_notify_inval_inode) from
// a thread of its own. The core reports poisoned file ranges from whatever
// thread found them - possibly a read handler serving a page fault of the
// very file, whose page lock the kernel would need to invalidate: notifying
// from there could deadlock, so the work is queued. For the same reason a
// request that must be answered only after an invalidation is answered from
// this thread (then): the thread serving requests never waits on a page
// lock, which a READ queued behind it may hold (with the single-threaded
// loop, the default, that READ would never be served).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "ops.h"

namespace poisonfs::fuse {

class CacheInvalidator {
 public:
  explicit CacheInvalidator(fuse_session* se);
  CacheInvalidator(const CacheInvalidator&) = delete;
  CacheInvalidator& operator=(const CacheInvalidator&) = delete;
  ~CacheInvalidator();  // sends what is queued, then stops

  void push(uint64_t ino, uint64_t offset, uint64_t length);
  // Runs fn on this thread once everything pushed before has been sent: a
  // control request that injected poison replies from there, only after the
  // kernel dropped the cached pages, so the caller's next read sees EIO.
  // REQUIRES: fn does not throw.
  void then(std::function<void()> fn);

 private:
  struct Item {
    uint64_t ino = 0, offset = 0, length = 0;
    std::function<void()> then;  // instead of an invalidation, when set
  };
  void run();

  fuse_session* se_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace poisonfs::fuse
