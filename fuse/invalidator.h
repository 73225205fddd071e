// Sends kernel cache invalidations (fuse_lowlevel_notify_inval_inode) from
// a thread of its own. The core reports poisoned file ranges from whatever
// thread found them - possibly a read handler serving a page fault of the
// very file, whose page lock the kernel would need to invalidate: notifying
// from there could deadlock, so the work is queued.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
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
  // Returns once everything pushed before the call has been sent (a control
  // request that injected poison replies only after the kernel dropped the
  // cached pages, so the caller's next read sees EIO).
  void wait_idle();

 private:
  struct Item {
    uint64_t ino, offset, length;
  };
  void run();

  fuse_session* se_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  uint64_t pushed_ = 0, sent_ = 0;
  std::condition_variable idle_;
  std::thread thread_;
};

}  // namespace poisonfs::fuse
