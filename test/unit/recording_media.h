// A Media for crash tests: an in-memory device that logs every store
// (write()/zero(), with the bytes stored) and every persist call
// (flush()/drain()) in order. A test takes a copy of the device, runs an
// operation, and then builds the image a crash would leave after any prefix
// of the logged stores: crash_image(initial, k) applies the first k stores
// to a copy of the initial image. Torn stores are built with apply_store().
#pragma once

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "poisonfs/media.h"

namespace poisonfs::testing {

class RecordingMedia final : public Media {
 public:
  struct Op {
    enum Kind { kWrite, kZero, kFlush, kDrain } kind;
    uint64_t off = 0;
    size_t len = 0;
    std::vector<std::byte> bytes;  // what a kWrite/kZero stored
    bool is_store() const { return kind == kWrite || kind == kZero; }
  };

  explicit RecordingMedia(uint64_t size) : buf_(size) {}
  explicit RecordingMedia(std::span<const std::byte> image) : buf_(image.begin(), image.end()) {}
  explicit RecordingMedia(std::vector<std::byte>&& image) : buf_(std::move(image)) {}

  uint64_t size() const override { return buf_.size(); }
  const std::byte* base() const override { return buf_.data(); }
  bool read_only() const override { return false; }
  bool byte_granular() const override { return byte_granular_; }

  void write(uint64_t off, const void* src, size_t len) override {
    assert(off <= buf_.size() && len <= buf_.size() - off);
    std::memcpy(buf_.data() + off, src, len);
    if (recording_) {
      auto* p = static_cast<const std::byte*>(src);
      log_.push_back(Op{Op::kWrite, off, len, std::vector<std::byte>(p, p + len)});
    }
  }
  void zero(uint64_t off, size_t len) override {
    assert(off <= buf_.size() && len <= buf_.size() - off);
    std::memset(buf_.data() + off, 0, len);
    if (recording_) log_.push_back(Op{Op::kZero, off, len, std::vector<std::byte>(len)});
  }
  void flush(uint64_t off, size_t len) override {
    if (recording_) log_.push_back(Op{Op::kFlush, off, len, {}});
  }
  void drain() override {
    if (recording_) log_.push_back(Op{Op::kDrain, 0, 0, {}});
  }

  // Page-granular (like an image file, where a flush is an msync) makes the
  // core defer the in-place copies of journal records to checkpoints.
  void set_byte_granular(bool on) { byte_granular_ = on; }

  // Logging on or off (off while a test sets up the initial image).
  void set_recording(bool on) { recording_ = on; }
  void clear_log() { log_.clear(); }
  const std::vector<Op>& log() const { return log_; }
  std::vector<const Op*> stores() const {
    std::vector<const Op*> s;
    for (const Op& op : log_)
      if (op.is_store()) s.push_back(&op);
    return s;
  }
  size_t drains() const {
    size_t n = 0;
    for (const Op& op : log_) n += op.kind == Op::kDrain;
    return n;
  }

  std::vector<std::byte> image() const { return buf_; }

  // The device after a crash that kept exactly the first k logged stores.
  std::vector<std::byte> crash_image(std::span<const std::byte> initial, size_t k) const {
    std::vector<std::byte> img(initial.begin(), initial.end());
    size_t applied = 0;
    for (const Op& op : log_) {
      if (applied == k) break;
      if (!op.is_store()) continue;
      apply_store(img, op, op.len);
      ++applied;
    }
    return img;
  }

  // Applies the first `prefix` bytes of one store to img (a torn store).
  static void apply_store(std::vector<std::byte>& img, const Op& op, size_t prefix) {
    std::memcpy(img.data() + op.off, op.bytes.data(), std::min(prefix, op.len));
  }

 private:
  std::vector<std::byte> buf_;
  std::vector<Op> log_;
  bool recording_ = true;
  bool byte_granular_ = true;
};

// A plain in-memory media holding a copy of img (for mounting a crash image).
inline std::unique_ptr<Media> media_from(std::span<const std::byte> img) {
  auto m = make_memory_media(img.size());
  m->write(0, img.data(), img.size());
  return m;
}

}  // namespace poisonfs::testing
