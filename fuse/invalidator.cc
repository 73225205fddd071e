// See invalidator.h.
#include "invalidator.h"

namespace poisonfs::fuse {

CacheInvalidator::CacheInvalidator(fuse_session* se) : se_(se), thread_([this] { run(); }) {}

CacheInvalidator::~CacheInvalidator() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void CacheInvalidator::push(uint64_t ino, uint64_t offset, uint64_t length) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(Item{.ino = ino, .offset = offset, .length = length, .then = {}});
  }
  wake_.notify_one();
}

void CacheInvalidator::then(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(Item{.then = std::move(fn)});
  }
  wake_.notify_one();
}

void CacheInvalidator::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    Item item = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    if (item.then) {
      item.then();
    } else {
      // -ENOENT: the kernel holds nothing of that inode; nothing to drop.
      (void)fuse_lowlevel_notify_inval_inode(se_, item.ino, static_cast<off_t>(item.offset),
                                             static_cast<off_t>(item.length));
    }
    lock.lock();
  }
}

}  // namespace poisonfs::fuse
