// The media over a real image: an image file (on a DAX filesystem, on tmpfs,
// or on any ordinary filesystem) or a device-dax character device, mapped with
// libpmem2. libpmem2 picks the store functions for the mapping it got: cache
// flushes on real pmem, msync on a page-granular file. An flock on the image
// keeps a second mount (or a tool) from mapping it at the same time.
#include <dlfcn.h>
#include <fcntl.h>
#include <libpmem2.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>
#include <cstdio>
#include <cstring>
#include <vector>
#include <cerrno>
#include <system_error>

#include "poisonfs/media.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack the name
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

  // Releases whatever the open got as far as acquiring.
  ~PmemMedia() override {
    if (map_ != nullptr) lib().map_delete(&map_);
    if (cfg_ != nullptr) lib().config_delete(&cfg_);
    if (src_ != nullptr) lib().source_delete(&src_);
    if (fd_ >= 0) close(fd_);  // drops the flock
  }

  // The two steps of open_pmem_media; map() requires open_and_lock().
  Status open_and_lock(const std::string& path);
  Status map(const std::string& path);
  Status load_poison(const std::string& path);
  void add_device_badblocks(std::vector<PoisonRange>& ranges);
  void save_poison(const std::vector<PoisonRange>& all);
  std::string write_sidecar(const std::vector<PoisonRange>& all);

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
  std::string sidecar_;  // IMAGE.badblocks
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

  if (mode_ == MapMode::kShared) {
    // Page faults, not copies, dominate a fresh mapping (DESIGN.md 4): take
    // them all now. Best effort; older kernels or odd files may refuse.
    (void)madvise(base_, size_, MADV_POPULATE_WRITE);
  }
  return load_poison(path);
}

// The simulated DIMM's error record lives beside the image, in
// IMAGE.badblocks (one "OFFSET LENGTH known|latent" line per range), where
// the filesystem cannot overwrite it and mkfs keeps it, as a DIMM keeps its
// own record. A real pmem device reports its bad blocks through libpmem2
// (none on a plain file).
Status PmemMedia::load_poison(const std::string& path) {
  sidecar_ = path + ".badblocks";
  std::vector<PoisonRange> ranges;
  if (FILE* f = std::fopen(sidecar_.c_str(), "r")) {
    unsigned long long off, len;
    char kind[16];
    while (std::fscanf(f, "%llu %llu %15s", &off, &len, kind) == 3)
      if (len > 0 && off < size_) ranges.push_back({off, std::min<uint64_t>(len, size_ - off), std::strcmp(kind, "latent") == 0});
    std::fclose(f);
  }
  if (byte_granular_) add_device_badblocks(ranges);
  poison_.replace_all(ranges);
  if (mode_ == MapMode::kShared) {
    poison_.set_on_change([this](const std::vector<PoisonRange>& all) { save_poison(all); });
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

// Written to a temporary file and renamed, so a crash leaves the old or the
// new record, never half of one. A failure (read-only directory, full disk)
// leaves the old record, which no longer matches the device: it goes to the
// daemon's stderr and to the poison list, whose owner reports it.
void PmemMedia::save_poison(const std::vector<PoisonRange>& all) {
  std::string error = write_sidecar(all);
  if (error.empty()) return;
  std::string message = sidecar_ + ": poison record not saved: " + error;
  std::fprintf(stderr, "poisonfs: %s\n", message.c_str());
  poison_.set_persist_error(std::move(message));
}

// Returns the error text, empty on success.
std::string PmemMedia::write_sidecar(const std::vector<PoisonRange>& all) {
  if (all.empty()) {
    if (std::remove(sidecar_.c_str()) != 0 && errno != ENOENT) return errno_text(errno);
    return {};
  }
  std::string tmp = sidecar_ + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) return errno_text(errno);
  bool ok = true;
  for (const PoisonRange& r : all)
    ok = ok && std::fprintf(f, "%llu %llu %s\n", static_cast<unsigned long long>(r.offset),
                            static_cast<unsigned long long>(r.length), r.latent ? "latent" : "known") > 0;
  ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  int err = errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && std::rename(tmp.c_str(), sidecar_.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (ok) return {};
  std::remove(tmp.c_str());
  return errno_text(err ? err : EIO);
}

Status PmemMedia::open_and_lock(const std::string& path) {
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
  if (flock(fd_, (shared ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK) {
      return fail(std::errc::device_or_resource_busy,
                  path + ": image is in use (mounted, or open in another poisonfs tool)");
    }
    return fail(static_cast<std::errc>(err), path + ": cannot lock: " + errno_text(err));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<Media>> open_pmem_media(const std::string& path, MapMode mode) {
  if (const Pmem2& api = load_pmem2(); !api.error.empty()) return fail(std::errc::not_supported, api.error);
  // A failed step just returns: the destructor releases what was acquired.
  auto media = std::make_unique<PmemMedia>(mode);
  if (Status s = media->open_and_lock(path); !s) return std::unexpected(std::move(s.error()));
  if (Status s = media->map(path); !s) return std::unexpected(std::move(s.error()));
  return std::unique_ptr<Media>(std::move(media));
}

}  // namespace poisonfs
