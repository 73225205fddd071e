// Open files that may write, counted per inode. Only such a file can hold
// pages dirtied through a shared mapping, which SEEK_DATA and SEEK_HOLE
// must count as data: without the writeback cache write(2) is write-through,
// a shared writable mapping needs a descriptor opened for writing, and the
// open file lives (no RELEASE) until the last mapping of it is gone, whose
// unmapping writes the dirty pages back (fuse_vma_close). So a file with no
// writable open has no dirty pages, and its cached pages may stay.
#pragma once

#include <fcntl.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace poisonfs::fuse {

class WritableOpens {
 public:
  static bool writes(int open_flags) { return (open_flags & O_ACCMODE) != O_RDONLY; }

  void opened(uint64_t ino) {
    std::lock_guard lock(mutex_);
    ++count_[ino];
  }
  void released(uint64_t ino) {
    std::lock_guard lock(mutex_);
    auto it = count_.find(ino);
    if (it != count_.end() && --it->second == 0) count_.erase(it);
  }
  bool any(uint64_t ino) const {
    std::lock_guard lock(mutex_);
    return count_.contains(ino);
  }

 private:
  mutable std::mutex mutex_;  // -o multithread
  std::unordered_map<uint64_t, uint32_t> count_;
};

}  // namespace poisonfs::fuse
