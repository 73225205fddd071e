// See invalidator.h.
#include "invalidator.h"

namespace poisonfs::fuse {

SerialWorker::SerialWorker() : thread_([this] { run(); }) {}

SerialWorker::~SerialWorker() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void SerialWorker::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(fn));
  }
  wake_.notify_one();
}

void SerialWorker::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    std::function<void()> job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    job();
    lock.lock();
  }
}

void CacheInvalidator::push(uint64_t ino, uint64_t offset, uint64_t length) {
  worker_.post([se = se_, ino, offset, length] {
    // -ENOENT: the kernel holds nothing of that inode; nothing to drop.
    (void)fuse_lowlevel_notify_inval_inode(se, ino, static_cast<off_t>(offset), static_cast<off_t>(length));
  });
}

}  // namespace poisonfs::fuse
