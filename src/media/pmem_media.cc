// The media over a real image: an image file (on a DAX filesystem, on tmpfs,
// or on any ordinary filesystem) or a device-dax character device, mapped with
// libpmem2. libpmem2 picks the store functions for the mapping it got: cache
// flushes on real pmem, msync on a page-granular file. An flock on the image
// keeps a second mount (or a tool) from mapping it at the same time.
#include <dlfcn.h>
#include <fcntl.h>
#include <libpmem2.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstdio>
#include <optional>
#include <system_error>
#include <vector>

#include "media/image_lock.h"
#include "media/poison_record.h"
#include "poisonfs/media.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older headers lack the names
#define MADV_POPULATE_WRITE 23
#endif

namespace poisonfs {
namespace {

// libpmem2 is loaded on first use, not linked: it pulls in libndctl,
// libdaxctl, libkmod, libcrypto and more, whose loading costs about 2.5 ms
// at every process start - most of the run time of a `poisonctl` that only
// talks to a mount and never maps anything itself.
#define POISONFS_PMEM2_FUNCTIONS(X)                                                         \
  X(source_from_fd) X(source_size) X(source_delete) X(config_new) X(config_delete)          \
  X(config_set_required_store_granularity) X(config_set_sharing) X(map_new) X(map_delete) \
  X(map_get_address) X(map_get_size) X(map_get_store_granularity) X(get_memcpy_fn)        \
  X(get_memset_fn) X(get_flush_fn) X(get_drain_fn) X(errormsg) X(badblock_context_new)   \
  X(badblock_next) X(badblock_context_delete)

struct Pmem2 {
#define POISONFS_DECLARE(name) decltype(&::pmem2_##name) name = nullptr;
  POISONFS_PMEM2_FUNCTIONS(POISONFS_DECLARE)
#undef POISONFS_DECLARE
  std::string error;  // why it could not be loaded
};

const Pmem2& load_pmem2() {
  static const Pmem2 api = [] {
    Pmem2 a;
    void* handle = dlopen("libpmem2.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      a.error = std::string("cannot load libpmem2: ") + dlerror();
      return a;
    }
#define POISONFS_RESOLVE(name)                                                          \
  a.name = reinterpret_cast<decltype(a.name)>(dlsym(handle, "pmem2_" #name));          \
  if (!a.name && a.error.empty()) a.error = "libpmem2 lacks pmem2_" #name;
    POISONFS_PMEM2_FUNCTIONS(POISONFS_RESOLVE)
#undef POISONFS_RESOLVE
    return a;
  }();
  return api;
}

// REQUIRES: open_pmem_media checked load_pmem2().error is empty.
const Pmem2& lib() { return load_pmem2(); }

constexpr const char* kNotAnImage = ": not a regular file or a device";
constexpr const char* kLockWaitInterrupted =
    ": interrupted while waiting for the image lock (held by the exiting daemon of its last "
    "mount, or by a poisonfs tool)";

std::string errno_text(int err) { return std::generic_category().message(err); }

// libpmem2 returns -errno for failed system calls and its own PMEM2_E_* codes
// (all below -100000) for everything else.
std::errc pmem2_errc(int ret) {
  if (ret < 0 && ret > -4096) return static_cast<std::errc>(-ret);
  switch (ret) {
    case PMEM2_E_NO_ACCESS:
      return std::errc::permission_denied;
    case PMEM2_E_INVALID_FILE_TYPE:
    case PMEM2_E_SOURCE_EMPTY:
    case PMEM2_E_LENGTH_UNALIGNED:
      return std::errc::invalid_argument;
    case PMEM2_E_NOSUPP:
    case PMEM2_E_GRANULARITY_NOT_SUPPORTED:
    case PMEM2_E_SRC_DEVDAX_PRIVATE:
    case PMEM2_E_SOURCE_TYPE_NOT_SUPPORTED:
      return std::errc::not_supported;
    default:
      return std::errc::io_error;
  }
}

std::unexpected<Error> pmem2_fail(const std::string& path, const char* what, int ret) {
  return fail(pmem2_errc(ret), path + ": " + what + ": " + lib().errormsg());
}

class PmemMedia final : public Media {
 public:
  explicit PmemMedia(MapMode mode) : mode_(mode) {}
  PmemMedia(const PmemMedia&) = delete;
  PmemMedia& operator=(const PmemMedia&) = delete;

  // Releases whatever the open got as far as acquiring; leaves the poison
  // record as a plain list (while the image is still locked).
  ~PmemMedia() override {
    if (mode_ == MapMode::kShared && record_ && record_->needs_compaction()) (void)record_->compact(poison_.all());
    if (map_ != nullptr) lib().map_delete(&map_);
    if (cfg_ != nullptr) lib().config_delete(&cfg_);
    if (src_ != nullptr) lib().source_delete(&src_);
    if (fd_ >= 0) close(fd_);  // drops the flock
  }

  // The two steps of open_pmem_media; map() requires open_and_lock().
  Status open_and_lock(const std::string& path, const std::function<bool()>& stop_waiting);
  Status map(const std::string& path);
  void prefault();
  Status load_poison(const std::string& path);
  void add_device_badblocks(std::vector<PoisonRange>& ranges);
  void save_poison(const PoisonChange& change);

  uint64_t size() const override { return size_; }
  const std::byte* base() const override { return base_; }
  bool read_only() const override { return mode_ == MapMode::kPrivate; }
  bool byte_granular() const override { return byte_granular_; }

  void write(uint64_t off, const void* src, size_t len) override {
    assert(off <= size_ && len <= size_ - off);
    memcpy_fn_(base_ + off, src, len, store_flags_);
  }
  void zero(uint64_t off, size_t len) override {
    assert(off <= size_ && len <= size_ - off);
    memset_fn_(base_ + off, 0, len, store_flags_);
  }
  void flush(uint64_t off, size_t len) override {
    assert(off <= size_ && len <= size_ - off);
    flush_fn_(base_ + off, len);
  }
  void drain() override { drain_fn_(); }

 private:
  int fd_ = -1;
  MapMode mode_;
  pmem2_source* src_ = nullptr;
  pmem2_config* cfg_ = nullptr;
  pmem2_map* map_ = nullptr;
  std::byte* base_ = nullptr;
  uint64_t size_ = 0;
  bool byte_granular_ = false;
  unsigned store_flags_ = PMEM2_F_MEM_NODRAIN;
  // Fetched once: libpmem2 chose them for this mapping's granularity.
  pmem2_memcpy_fn memcpy_fn_ = nullptr;
  pmem2_memset_fn memset_fn_ = nullptr;
  pmem2_flush_fn flush_fn_ = nullptr;
  pmem2_drain_fn drain_fn_ = nullptr;
  std::optional<PoisonRecord> record_;  // IMAGE.badblocks
};

Status PmemMedia::map(const std::string& path) {
  if (int ret = lib().source_from_fd(&src_, fd_); ret != 0) {
    return pmem2_fail(path, "cannot use as a pmem2 source", ret);
  }
  size_t source_size = 0;
  if (int ret = lib().source_size(src_, &source_size); ret != 0) {
    return pmem2_fail(path, "cannot read the size", ret);
  }
  if (source_size == 0) return fail(std::errc::invalid_argument, path + ": empty file");

  if (int ret = lib().config_new(&cfg_); ret != 0) {
    return pmem2_fail(path, "cannot create a pmem2 config", ret);
  }
  // Accept page granularity so that plain files (and tmpfs) map too; the
  // flush functions then msync.
  if (int ret = lib().config_set_required_store_granularity(cfg_, PMEM2_GRANULARITY_PAGE);
      ret != 0) {
    return pmem2_fail(path, "cannot set store granularity", ret);
  }
  if (mode_ == MapMode::kPrivate) {
    // libpmem2 (checked with 1.12) maps a read-only fd MAP_PRIVATE with
    // PROT_WRITE, so no O_RDWR retry or plain-mmap fallback is needed.
    // Device-dax refuses private mappings (PMEM2_E_SRC_DEVDAX_PRIVATE).
    if (int ret = lib().config_set_sharing(cfg_, PMEM2_PRIVATE); ret != 0) {
      return pmem2_fail(path, "cannot request a private mapping", ret);
    }
  }
  if (int ret = lib().map_new(&map_, cfg_, src_); ret != 0) {
    return pmem2_fail(path, "cannot map", ret);
  }

  base_ = static_cast<std::byte*>(lib().map_get_address(map_));
  size_ = lib().map_get_size(map_);
  poison_.set_extent(size_);
  byte_granular_ = lib().map_get_store_granularity(map_) != PMEM2_GRANULARITY_PAGE;
  memcpy_fn_ = lib().get_memcpy_fn(map_);
  memset_fn_ = lib().get_memset_fn(map_);
  flush_fn_ = lib().get_flush_fn(map_);
  drain_fn_ = lib().get_drain_fn(map_);
  // On a page-granular mapping libpmem2's memcpy/memset msync the range even
  // with NODRAIN (seen with strace), and flush() msyncs it again. Every store
  // is followed by flush() anyway (the Media contract), so NOFLUSH saves one
  // system call per store. On pmem keep NODRAIN alone: there the copy's own
  // flushes (non-temporal stores for large copies) are the fast path.
  if (!byte_granular_) store_flags_ |= PMEM2_F_MEM_NOFLUSH;

  if (mode_ == MapMode::kShared) prefault();
  return load_poison(path);
}

// Page faults, not copies, dominate a fresh mapping (DESIGN.md 4): take
// them all now. Best effort; older kernels or odd files may refuse.
//
// On tmpfs (/dev/shm, the usual home of an image) populating for reading
// is enough and several times cheaper (4 GiB: about 1/3 to 1/5 of the time
// here): shmem tracks no dirty pages, so a read fault of a shared writable
// mapping maps the page writable already and later stores take no fault
// (measured: none in the first write of 1 GiB after it). Elsewhere (a disk
// filesystem, DAX) a read-populated page would fault again at its first
// store, so it is populated for writing.
void PmemMedia::prefault() {
  struct statfs fs {};
  const bool tmpfs = fstatfs(fd_, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
  (void)madvise(base_, size_, tmpfs ? MADV_POPULATE_READ : MADV_POPULATE_WRITE);
}

// The simulated DIMM's error record lives beside the image, in
// IMAGE.badblocks (src/media/poison_record.h), where the filesystem cannot
// overwrite it and mkfs keeps it, as a DIMM keeps its own record. A real
// pmem device reports its bad blocks through libpmem2 (none on a plain file).
Status PmemMedia::load_poison(const std::string& path) {
  record_.emplace(path + ".badblocks");
  std::string text;
  const std::string read_error = record_->read(text);
  std::vector<PoisonRange> ranges = parse_poison_record(text, size_).ranges;
  if (byte_granular_) add_device_badblocks(ranges);
  poison_.replace_all(ranges);
  if (mode_ == MapMode::kShared) {
    // Appends start from a clean base: an older format, a group torn by a
    // crash or a long log is rewritten once here. A record that could not
    // be read is left alone until the first change rewrites it.
    if (read_error.empty() && (!text.empty() || !poison_.empty())) (void)record_->compact(poison_.all());
    poison_.set_on_change([this](const PoisonChange& change) { save_poison(change); });
  }
  return {};
}

void PmemMedia::add_device_badblocks(std::vector<PoisonRange>& ranges) {
  pmem2_badblock_context* ctx = nullptr;
  if (lib().badblock_context_new(&ctx, src_) != 0) return;  // not supported here
  pmem2_badblock bb;
  while (lib().badblock_next(ctx, &bb) == 0) ranges.push_back({bb.offset, bb.length, false});
  lib().badblock_context_delete(&ctx);
}

// A failure (read-only directory, full disk) leaves a record that no longer
// matches the device: it goes to the daemon's stderr and to the poison
// list, whose owner reports it. The next change rewrites the record whole.
void PmemMedia::save_poison(const PoisonChange& change) {
  std::string error = record_->save(change, poison_);
  if (error.empty()) return;
  std::string message = record_->path() + ": poison record not saved: " + error;
  std::fprintf(stderr, "poisonfs: %s\n", message.c_str());
  poison_.set_persist_error(std::move(message));
}

Status PmemMedia::open_and_lock(const std::string& path,
                                const std::function<bool()>& stop_waiting) {
  const bool shared = mode_ == MapMode::kShared;
  // O_CLOEXEC: a child the daemon or a tool spawns must not inherit the lock.
  // O_NONBLOCK: opening a FIFO by mistake must fail below, not hang; it
  // changes nothing for files and devices.
  fd_ = ::open(path.c_str(), (shared ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK);
  if (fd_ < 0) {
    int err = errno;
    // A directory opened O_RDWR fails here; report it as kPrivate would.
    if (err == EISDIR) return fail(std::errc::invalid_argument, path + kNotAnImage);
    return fail(static_cast<std::errc>(err), path + ": " + errno_text(err));
  }
  struct stat st {};
  if (fstat(fd_, &st) != 0) {
    int err = errno;
    return fail(static_cast<std::errc>(err), path + ": " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode) && !S_ISCHR(st.st_mode)) {
    return fail(std::errc::invalid_argument, path + kNotAnImage);
  }
  // Exclusive for a mount, shared for a private (read-only) view: readers may
  // coexist, but nobody reads an image that a mount is changing under them.
  // The lock belongs to the open file description, so it lives exactly as
  // long as this object holds fd_.
  if (int err = lock_image(fd_, path, shared ? LOCK_EX : LOCK_SH, stop_waiting); err != 0) {
    if (err == EWOULDBLOCK) {
      return fail(std::errc::device_or_resource_busy,
                  path + ": image is in use (mounted, or open in another poisonfs tool)");
    }
    if (err == EINTR) return fail(std::errc::interrupted, path + kLockWaitInterrupted);
    return fail(static_cast<std::errc>(err), path + ": cannot lock: " + errno_text(err));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<Media>> open_pmem_media(const std::string& path, MapMode mode,
                                               const std::function<bool()>& stop_waiting) {
  if (const Pmem2& api = load_pmem2(); !api.error.empty()) return fail(std::errc::not_supported, api.error);
  // A failed step just returns: the destructor releases what was acquired.
  auto media = std::make_unique<PmemMedia>(mode);
  if (Status s = media->open_and_lock(path, stop_waiting); !s)
    return std::unexpected(std::move(s.error()));
  if (Status s = media->map(path); !s) return std::unexpected(std::move(s.error()));
  return std::unique_ptr<Media>(std::move(media));
}

}  // namespace poisonfs
