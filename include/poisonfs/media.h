// The media: the byte-addressable persistent device the filesystem lives on.
// Everything above talks to this interface. Reads go straight to the mapping
// (base()); every store goes through write()/zero() so that an implementation
// can record stores for crash-state enumeration, and every persist point is
// flush() of the written ranges followed by one drain().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "poisonfs/error.h"
#include "poisonfs/poison.h"

namespace poisonfs {

class Media {
 public:
  virtual ~Media() = default;

  virtual uint64_t size() const = 0;
  // The mapping. Read only through this pointer; never store through it.
  virtual const std::byte* base() const = 0;
  virtual bool read_only() const = 0;
  // True when stores become persistent with cache flushes (real pmem),
  // false when the mapping is page-granular (a plain file, msync).
  virtual bool byte_granular() const = 0;

  // Copies len bytes to media offset off. Not durable until flush + drain.
  virtual void write(uint64_t off, const void* src, size_t len) = 0;
  virtual void zero(uint64_t off, size_t len) = 0;
  // Starts write-back of [off, off+len).
  virtual void flush(uint64_t off, size_t len) = 0;
  // Waits until every flushed range is persistent.
  virtual void drain() = 0;

  void persist(uint64_t off, size_t len) {
    flush(off, len);
    drain();
  }
  const std::byte* at(uint64_t off) const { return base() + off; }

  // The device's poison list (see poisonfs/poison.h). Virtual so that a
  // wrapper can lend the list of the media it wraps.
  virtual PoisonList& poison() { return poison_; }
  // Poisons [off, off+len) rounded out to units, and destroys the data there
  // (filled with kPoisonPattern, so a leak of poisoned bytes is visible).
  // Fails on an empty, overflowing or out-of-device range, changing nothing.
  Result<PoisonRange> inject_poison(uint64_t off, uint64_t len, bool latent);
  // The ACPI clear-error analogue: clears the whole units inside
  // [off, off+len) and leaves them zeroed. Returns what was cleared.
  std::vector<PoisonRange> clear_poison(uint64_t off, uint64_t len);

 protected:
  PoisonList poison_;
};

// What an injected range holds afterwards: 8 bytes repeated.
inline constexpr char kPoisonPattern[8] = {'#', 'P', 'O', 'I', 'S', 'O', 'N', '#'};

enum class MapMode {
  kShared,   // read-write, stores reach the image
  kPrivate,  // copy-on-write in memory: the image is never written (fsck -n, offline tools)
};

// Maps an image file (or a pmem device) with libpmem2. Takes an exclusive
// flock on the image for kShared so that a second mount is refused. While
// it waits for the lock of an image no longer mounted (media/image_lock.h),
// a true stop_waiting() ends the wait: EINTR.
Result<std::unique_ptr<Media>> open_pmem_media(const std::string& path, MapMode mode,
                                               const std::function<bool()>& stop_waiting = {});

// A Media that forwards to `media`, which the caller keeps alive and owns
// (for APIs that take ownership of a Media, like Filesystem::mount).
std::unique_ptr<Media> borrow_media(Media& media);

// A zero-filled in-memory device for tests.
std::unique_ptr<Media> make_memory_media(uint64_t size);

}  // namespace poisonfs
