// A formatted in-memory device with a mounted filesystem, shared by the
// core's unit tests. remount() moves the bytes (and the device's poison
// list) to a new device, after a clean unmount or as a crash would leave
// them (every store done, nothing after it).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "poisonfs/filesystem.h"

namespace poisonfs::testing {

class TestDevice {
 public:
  explicit TestDevice(uint64_t size, MkfsOptions mkfs = {}, OpenOptions open = {}) : open_(open) {
    auto media = make_memory_media(size);
    EXPECT_TRUE(Filesystem::format(*media, mkfs));
    mount(std::move(media));
  }
  Filesystem& operator*() { return *fs_; }
  Filesystem* operator->() { return fs_.get(); }
  Media& media() { return *raw_; }

  std::unique_ptr<Media> copy() const {
    auto m = make_memory_media(raw_->size());
    m->write(0, raw_->base(), raw_->size());
    m->poison().replace_all(raw_->poison().all());
    return m;
  }
  // The next mounts (this one included) use open (mount options).
  void remount_with(const OpenOptions& open) {
    open_ = open;
    remount();
  }
  void remount(bool clean = true) {
    if (clean) {
      EXPECT_TRUE(fs_->unmount());
    }
    auto m = copy();
    fs_.reset();
    mount(std::move(m));
  }
  // fsck (no repair) of a copy of the current bytes.
  CheckReport check() const {
    auto m = copy();
    auto report = check_filesystem(*m, false);
    EXPECT_TRUE(report) << report.error().to_string();
    return report.value_or(CheckReport{});
  }

 private:
  void mount(std::unique_ptr<Media> m) {
    raw_ = m.get();
    auto fs = Filesystem::mount(std::move(m), open_);
    ASSERT_TRUE(fs) << fs.error().to_string();
    fs_ = std::move(*fs);
  }
  OpenOptions open_;
  Media* raw_ = nullptr;
  std::unique_ptr<Filesystem> fs_;
};

// The device byte offset of byte `off` of a file (through bmap).
inline uint64_t phys_of(Filesystem& fs, Ino ino, uint64_t off) {
  auto m = fs.bmap(ino);
  EXPECT_TRUE(m);
  for (const BmapEntry& e : m.value_or(std::vector<BmapEntry>{}))
    if (e.file_offset <= off && off < e.file_offset + e.length) return e.physical + (off - e.file_offset);
  ADD_FAILURE() << "file offset " << off << " is a hole";
  return 0;
}

}  // namespace poisonfs::testing
