// The media as a plain heap buffer, for unit tests of the layers above: no
// file, no lock, and nothing to persist, so flush and drain do nothing. The
// buffer is page-aligned like a real mapping, so alignment bugs show up here
// too.
#include <cassert>
#include <cstdlib>
#include <cstring>
#include <new>

#include "poisonfs/media.h"

namespace poisonfs {
namespace {

constexpr size_t kAlignment = 4096;

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

class MemoryMedia final : public Media {
 public:
  explicit MemoryMedia(uint64_t size) : size_(size) {
    // aligned_alloc wants a multiple of the alignment (and at least one page,
    // so size 0 still yields a valid pointer).
    size_t alloc = (size + kAlignment - 1) / kAlignment * kAlignment;
    if (alloc == 0) alloc = kAlignment;
    buf_.reset(static_cast<std::byte*>(std::aligned_alloc(kAlignment, alloc)));
    if (!buf_) throw std::bad_alloc();
    std::memset(buf_.get(), 0, alloc);
    poison_.set_extent(size);
  }

  uint64_t size() const override { return size_; }
  const std::byte* base() const override { return buf_.get(); }
  bool read_only() const override { return false; }
  bool byte_granular() const override { return true; }

  void write(uint64_t off, const void* src, size_t len) override {
    assert(off <= size_ && len <= size_ - off);
    std::memcpy(buf_.get() + off, src, len);
  }
  void zero(uint64_t off, size_t len) override {
    assert(off <= size_ && len <= size_ - off);
    std::memset(buf_.get() + off, 0, len);
  }
  void flush(uint64_t, size_t) override {}
  void drain() override {}

 private:
  uint64_t size_;
  std::unique_ptr<std::byte, FreeDeleter> buf_;
};

}  // namespace

std::unique_ptr<Media> make_memory_media(uint64_t size) {
  return std::make_unique<MemoryMedia>(size);
}

}  // namespace poisonfs
