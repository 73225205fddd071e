// A Media for crash tests: an in-memory device that logs every store
// (write()/zero(), with the bytes stored), every persist call (flush()/
// drain()) and every change of the device's poison list, in order.
//
// Two ways to build the image a crash leaves:
//  - crash_image(initial, k): the first k logged stores applied to a copy of
//    the initial image (a crash in program order); apply_store() tears one.
//  - PersistenceModel: what pmem actually guarantees. A store is durable
//    only once a flush issued after it covered its cache line and a drain
//    followed; until then it may or may not have reached the media, in any
//    order and per 8-byte word (x86 makes aligned 8-byte stores failure
//    atomic, nothing larger). The model splits stores into pieces, one per
//    word, knows for every crash point which pieces are durable and which
//    are in flight, and builds the image for any chosen subset of the
//    in-flight ones. The device's poison list is not cached state: a crash
//    keeps it as it was at the crash point.
//    Ordering::kFlushOrdered is a weaker adversary: a flush orders the
//    stores it covers before every later store (write-back completes in
//    order, as with msync or CLFLUSH), so a later store never persists
//    without the earlier flushed ones. x86 CLWB/CLFLUSHOPT give no such
//    order; only the drain does (Ordering::kPmem).
#pragma once

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "poisonfs/media.h"

namespace poisonfs::testing {

class RecordingMedia final : public Media {
 public:
  struct Op {
    enum Kind { kWrite, kZero, kFlush, kDrain, kPoisonList } kind;
    uint64_t off = 0;
    size_t len = 0;
    std::vector<std::byte> bytes;      // what a kWrite/kZero stored
    std::vector<PoisonRange> poison;   // the whole list after a kPoisonList change
    bool is_store() const { return kind == kWrite || kind == kZero; }
  };

  explicit RecordingMedia(uint64_t size) : buf_(size) { watch_poison(); }
  explicit RecordingMedia(std::span<const std::byte> image) : buf_(image.begin(), image.end()) { watch_poison(); }
  explicit RecordingMedia(std::vector<std::byte>&& image) : buf_(std::move(image)) { watch_poison(); }

  uint64_t size() const override { return buf_.size(); }
  const std::byte* base() const override { return buf_.data(); }
  bool read_only() const override { return false; }
  bool byte_granular() const override { return byte_granular_; }

  void write(uint64_t off, const void* src, size_t len) override {
    assert(off <= buf_.size() && len <= buf_.size() - off);
    std::memcpy(buf_.data() + off, src, len);
    if (recording_) {
      auto* p = static_cast<const std::byte*>(src);
      log_.push_back(Op{Op::kWrite, off, len, std::vector<std::byte>(p, p + len), {}});
    }
  }
  void zero(uint64_t off, size_t len) override {
    assert(off <= buf_.size() && len <= buf_.size() - off);
    std::memset(buf_.data() + off, 0, len);
    if (recording_) log_.push_back(Op{Op::kZero, off, len, std::vector<std::byte>(len), {}});
  }
  void flush(uint64_t off, size_t len) override {
    if (recording_) log_.push_back(Op{Op::kFlush, off, len, {}, {}});
  }
  void drain() override {
    if (recording_) log_.push_back(Op{Op::kDrain, 0, 0, {}, {}});
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
  void watch_poison() {
    poison_.set_extent(buf_.size());
    poison_.set_on_change([this](const PoisonChange&) {
      if (recording_) log_.push_back(Op{Op::kPoisonList, 0, 0, {}, poison_.all()});
    });
  }

  std::vector<std::byte> buf_;
  std::vector<Op> log_;
  bool recording_ = true;
  bool byte_granular_ = true;
};

// A plain in-memory media holding a copy of img (for mounting a crash image),
// with the device poison list a crash left.
inline std::unique_ptr<Media> media_from(std::span<const std::byte> img, const std::vector<PoisonRange>& poison = {}) {
  auto m = make_memory_media(img.size());
  m->write(0, img.data(), img.size());
  if (!poison.empty()) m->poison().replace_all(poison);
  return m;
}

// The pmem persistence model of a recorded log (see the top of the file).
// Crash points are log indices: a crash at point p happens just before
// log entry p runs.
class PersistenceModel {
 public:
  static constexpr uint64_t kCacheLine = 64;
  static constexpr uint64_t kAtomicUnit = 8;  // failure-atomic store size
  static constexpr size_t kNever = std::numeric_limits<size_t>::max();

  enum class Ordering { kPmem, kFlushOrdered };

  // One store clipped to one failure-atomic word.
  struct Piece {
    size_t op;           // log index of its store
    uint64_t off;        // device bytes
    size_t len;
    size_t flushed_at;   // log index of the first flush after it of its line, or kNever
    size_t durable_at;   // log index of the drain that made it durable, or kNever
  };

  struct CrashImage {
    std::vector<std::byte> bytes;
    std::vector<PoisonRange> poison;
  };

  PersistenceModel(const RecordingMedia& media, std::vector<std::byte> initial, Ordering ordering = Ordering::kPmem,
                   std::vector<PoisonRange> initial_poison = {})
      : log_(media.log()),
        ordering_(ordering),
        durable_(std::move(initial)),
        initial_poison_(std::move(initial_poison)) {
    split_into_pieces();
    mark_durability();
  }

  const std::vector<Piece>& pieces() const { return pieces_; }
  // Log indices of every drain, in order.
  std::vector<size_t> drain_points() const {
    std::vector<size_t> out;
    for (size_t i = 0; i < log_.size(); ++i)
      if (log_[i].kind == RecordingMedia::Op::kDrain) out.push_back(i);
    return out;
  }

  // Moves the durable image forward to `point` (points must not decrease):
  // applies, in drain order then program order, every piece a drain before
  // `point` made durable. Pieces that overlap share a line, so the later is
  // never durable first.
  void advance_to(size_t point) {
    assert(point >= durable_point_);
    while (next_durable_ < by_durability_.size() && pieces_[by_durability_[next_durable_]].durable_at < point)
      apply(durable_, pieces_[by_durability_[next_durable_++]]);
    durable_point_ = point;
  }

  // Pieces stored before `point` that are not durable there (program order).
  // REQUIRES: advance_to(point) was the last advance.
  std::vector<size_t> in_flight(size_t point) const {
    std::vector<size_t> out;
    for (size_t i = 0; i < pieces_.size() && pieces_[i].op < point; ++i)
      if (pieces_[i].durable_at == kNever || pieces_[i].durable_at >= point) out.push_back(i);
    return out;
  }

  // The image a crash at `point` leaves when the durable pieces and
  // `applied` (in-flight pieces, in program order) reached the media; with
  // kFlushOrdered, also every in-flight piece flushed before a kept one
  // was stored.
  CrashImage image(size_t point, std::span<const size_t> applied) const { return image(point, applied, ordering_); }
  CrashImage image(size_t point, std::span<const size_t> applied, Ordering ordering) const {
    assert(point == durable_point_);
    CrashImage img{durable_, poison_at(point)};
    if (ordering == Ordering::kFlushOrdered && !applied.empty()) {
      const size_t newest = pieces_[applied.back()].op;
      std::vector<size_t> closed;
      size_t next = 0;
      for (size_t i : in_flight(point)) {
        bool kept = next < applied.size() && applied[next] == i;
        if (kept) ++next;
        if (kept || pieces_[i].flushed_at < newest) closed.push_back(i);
      }
      for (size_t i : closed) apply(img.bytes, pieces_[i]);
      return img;
    }
    for (size_t i : applied) apply(img.bytes, pieces_[i]);
    return img;
  }

  // The device poison list at `point`: the last change before it.
  std::vector<PoisonRange> poison_at(size_t point) const {
    for (size_t i = std::min(point, log_.size()); i-- > 0;)
      if (log_[i].kind == RecordingMedia::Op::kPoisonList) return log_[i].poison;
    return initial_poison_;
  }

 private:
  void split_into_pieces() {
    for (size_t i = 0; i < log_.size(); ++i) {
      const auto& op = log_[i];
      if (!op.is_store()) continue;
      for (uint64_t at = op.off; at < op.off + op.len;) {
        uint64_t word_end = (at / kAtomicUnit + 1) * kAtomicUnit;
        size_t n = static_cast<size_t>(std::min<uint64_t>(word_end, op.off + op.len) - at);
        pieces_.push_back(Piece{i, at, n, kNever, kNever});
        at += n;
      }
    }
  }

  // A flush moves the pieces waiting on its lines to "flushed"; a drain
  // makes every flushed piece durable.
  void mark_durability() {
    std::unordered_map<uint64_t, std::vector<size_t>> unflushed;  // line -> pieces
    std::vector<size_t> flushed;
    size_t next_piece = 0;
    for (size_t i = 0; i < log_.size(); ++i) {
      const auto& op = log_[i];
      if (op.is_store()) {
        for (; next_piece < pieces_.size() && pieces_[next_piece].op == i; ++next_piece)
          unflushed[pieces_[next_piece].off / kCacheLine].push_back(next_piece);
      } else if (op.kind == RecordingMedia::Op::kFlush && op.len > 0) {
        for (uint64_t line = op.off / kCacheLine; line <= (op.off + op.len - 1) / kCacheLine; ++line) {
          auto it = unflushed.find(line);
          if (it == unflushed.end()) continue;
          for (size_t p : it->second) pieces_[p].flushed_at = i;
          flushed.insert(flushed.end(), it->second.begin(), it->second.end());
          unflushed.erase(it);
        }
      } else if (op.kind == RecordingMedia::Op::kDrain) {
        for (size_t p : flushed) pieces_[p].durable_at = i;
        flushed.clear();
      }
    }
    for (size_t i = 0; i < pieces_.size(); ++i)
      if (pieces_[i].durable_at != kNever) by_durability_.push_back(i);
    std::stable_sort(by_durability_.begin(), by_durability_.end(),
                     [&](size_t a, size_t b) { return pieces_[a].durable_at < pieces_[b].durable_at; });
  }

  void apply(std::vector<std::byte>& img, const Piece& p) const {
    const auto& op = log_[p.op];
    std::memcpy(img.data() + p.off, op.bytes.data() + (p.off - op.off), p.len);
  }

  const std::vector<RecordingMedia::Op>& log_;
  Ordering ordering_;
  std::vector<Piece> pieces_;
  std::vector<size_t> by_durability_;  // durable pieces, by drain then program order
  size_t next_durable_ = 0;
  size_t durable_point_ = 0;
  std::vector<std::byte> durable_;
  std::vector<PoisonRange> initial_poison_;
};

}  // namespace poisonfs::testing
