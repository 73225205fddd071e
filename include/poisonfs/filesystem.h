// The public API of the poisonfs core: a POSIX filesystem addressed by inode
// number, shaped after the FUSE low-level operations but with no FUSE inside,
// so that the daemon, the offline tools and the tests all drive the same code.
//
// Concurrency: every public method may be called from many threads. One
// reader-writer lock guards the namespace and all metadata (see
// src/fs/fs_impl.h for the lock order); read() replies while holding it
// shared so that the mapping under a reply cannot be reused.
#pragma once

#include <sys/types.h>

#include <cassert>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "poisonfs/error.h"
#include "poisonfs/media.h"
#include "poisonfs/poison.h"

namespace poisonfs {

using Ino = uint64_t;
inline constexpr Ino kRootIno = 1;
inline constexpr uint32_t kBlockSize = 4096;
inline constexpr size_t kNameMax = 255;
// Largest file size (and offset) we support: 2^52 bytes, so block arithmetic
// never overflows. Stored on media as a limit: do not change.
inline constexpr uint64_t kMaxFileSize = 1ull << 52;

// The paths of many inodes, flat (Filesystem::paths of a batch): every path
// back to back in one buffer, so that naming a thousand sharers of a block
// allocates a few times, not once per path.
class PathList {
 public:
  // The paths of one inode, in order: a range of string_view.
  class Paths {
   public:
    class iterator {
     public:
      using value_type = std::string_view;
      using difference_type = std::ptrdiff_t;
      iterator() = default;
      iterator(const PathList* list, size_t k) : list_(list), k_(k) {}
      std::string_view operator*() const { return list_->path(k_); }
      iterator& operator++() {
        ++k_;
        return *this;
      }
      iterator operator++(int) {
        iterator old = *this;
        ++k_;
        return old;
      }
      bool operator==(const iterator& o) const { return k_ == o.k_; }

     private:
      const PathList* list_ = nullptr;
      size_t k_ = 0;
    };
    Paths(const PathList* list, size_t first, size_t end) : list_(list), first_(first), end_(end) {}
    iterator begin() const { return {list_, first_}; }
    iterator end() const { return {list_, end_}; }
    size_t size() const { return end_ - first_; }
    bool empty() const { return first_ == end_; }
    std::string_view operator[](size_t i) const { return list_->path(first_ + i); }

   private:
    const PathList* list_;
    size_t first_, end_;
  };

  void clear() {
    bytes_.clear();
    path_end_.clear();
    inode_first_.clear();
  }
  // The paths added after this belong to the next inode.
  void next_inode() { inode_first_.push_back(path_end_.size()); }
  // Appends a path of `length` bytes to the current inode; the caller
  // fills the bytes returned.
  char* add(size_t length) {
    size_t at = bytes_.size();
    bytes_.resize(at + length);
    path_end_.push_back(bytes_.size());
    return bytes_.data() + at;
  }
  void add(std::string_view path) {
    bytes_.append(path);  // path may lie in bytes_ itself
    path_end_.push_back(bytes_.size());
  }
  // Room for `inodes` more inodes with about `bytes` of paths.
  void reserve(size_t inodes, size_t bytes) {
    inode_first_.reserve(inode_first_.size() + inodes);
    path_end_.reserve(path_end_.size() + inodes);
    bytes_.reserve(bytes_.size() + bytes);
  }

  size_t inodes() const { return inode_first_.size(); }
  // The paths of the i-th inode: those added after its next_inode().
  Paths of(size_t i) const {
    assert(i < inode_first_.size());
    size_t end = i + 1 < inode_first_.size() ? inode_first_[i + 1] : path_end_.size();
    return {this, inode_first_[i], end};
  }
  std::string_view path(size_t k) const {
    size_t from = k == 0 ? 0 : path_end_[k - 1];
    return std::string_view(bytes_).substr(from, path_end_[k] - from);
  }

 private:
  std::string bytes_;
  std::vector<size_t> path_end_;     // end of each path in bytes_
  std::vector<size_t> inode_first_;  // each inode's first path
};

struct Timespec {
  int64_t sec = 0;
  int64_t nsec = 0;
};

struct Attr {
  Ino ino = 0;
  uint32_t mode = 0;
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t rdev = 0;
  uint64_t size = 0;
  uint64_t blocks = 0;  // 512-byte units actually allocated
  uint64_t generation = 0;
  Timespec atime, mtime, ctime, btime;
};

// Who asks: the FUSE request context or the tool's own credentials.
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t umask = 0;
};

// What a change of a file's bytes or owner takes away, as the VFS does
// (file_remove_privs, notify_change); a FUSE kernel told
// FUSE_HANDLE_KILLPRIV_V2 leaves it to the filesystem. security.capability
// grants privileges to exactly the old bytes, so it always goes. The setuid
// bit, and the setgid bit of a group-executable file (without
// group-execute, setgid marks locking, not privilege), go too unless the
// writer has CAP_FSETID; a chown always takes them.
enum class KillPriv : uint8_t { kCaps, kCapsAndSuid };

// The open file a write comes through, when it comes from the kernel's page
// cache: that cuts a buffered write(2) into pieces where the caller's buffer
// crosses a page it must fault in, so one piece may stop inside a poisoned
// unit that the next one covers (see Filesystem::write). kWholeWrite: a
// write judged alone (a tool, O_DIRECT, mmap write-back). Any other value
// names one open file, unique while it is open.
using OpenFileId = uint64_t;
inline constexpr OpenFileId kWholeWrite = 0;

// How many of len bytes at off a write may store: those below kMaxFileSize,
// so that a write across it is short, as Linux's generic_write_check_limits
// makes it; EFBIG when off is at or past it (0 for len 0, anywhere).
Result<uint64_t> writable_length(uint64_t off, uint64_t len);

// Which fields a setattr changes.
struct SetAttr {
  enum : uint32_t {
    kMode = 1u << 0,
    kUid = 1u << 1,
    kGid = 1u << 2,
    kSize = 1u << 3,
    kAtime = 1u << 4,
    kMtime = 1u << 5,
    kAtimeNow = 1u << 6,
    kMtimeNow = 1u << 7,
    kCtime = 1u << 8,
    // Truncate (kSize) and chown (kUid/kGid of a non-directory) drop
    // security.capability; with this bit the setuid/setgid bits too (KillPriv).
    kKillSuidSgid = 1u << 9,
  };
  uint32_t valid = 0;
  uint32_t mode = 0, uid = 0, gid = 0;
  uint64_t size = 0;
  Timespec atime, mtime, ctime;
};

struct StatFs {
  uint64_t block_size = kBlockSize;
  uint64_t blocks = 0;       // data area
  uint64_t blocks_free = 0;
  uint64_t files = 0;        // inode slots
  uint64_t files_free = 0;
  uint64_t name_max = kNameMax;
};

// Geometry and usage, as `poisonctl stat` shows it.
struct FsInfo {
  std::string uuid;
  uint32_t version = 0;
  uint64_t device_bytes = 0;
  uint64_t block_size = kBlockSize;
  uint64_t total_blocks = 0;
  uint64_t journal_start = 0, journal_blocks = 0;
  uint64_t inode_start = 0, inode_blocks = 0, inode_count = 0;
  uint64_t csum_start = 0, csum_blocks = 0;  // the data checksum region (0 blocks: none)
  uint64_t data_start = 0, data_blocks = 0;
  bool data_checksums = false;    // the image keeps a crc32c per data block
  bool verify_checksums = false;  // mounted to verify them on every read
  uint64_t free_blocks = 0;      // allocatable now
  uint64_t pending_free = 0;     // freed, reusable after the next checkpoint
  uint64_t inodes_used = 0;
  uint64_t extent_records = 0;
  uint64_t journal_commits = 0;  // since mount
  bool byte_granular = false;
};

struct DirEntry {
  std::string_view name;
  Ino ino;
  uint32_t type;  // DT_* value
  uint64_t next_cookie;
};

// A piece of a read: either bytes in the mapping or a run of zeros (a hole).
struct ReadSegment {
  const std::byte* data;  // nullptr for zeros
  size_t length;
};

// One piece of a file's mapping (`poisonctl bmap`).
struct BmapEntry {
  uint64_t file_offset = 0;
  uint64_t physical = 0;  // device byte offset
  uint64_t length = 0;    // bytes
  bool shared = false;    // other owners map these bytes too (reflink)
  bool unwritten = false; // preallocated, reads as zeros
  bool poisoned = false;
};

// Who owns a range of the device (`poisonctl fsmap`). Do not renumber:
// the values cross the ioctl ABI.
enum class FsmapOwner : uint32_t {
  kFree = 0,
  kSuperblock = 1,
  kJournal = 2,
  kInodes = 3,
  kExtents = 4,    // extent record blocks
  kDirectory = 5,  // directory blocks
  kXattrs = 6,     // xattr blocks
  kData = 7,
  kChecksums = 8,  // the data checksum region (intent bitmap and crc32c table)
};
// "free", "superblock", "journal", "inodes", "extents", "directory", "xattr", "data", "checksums".
const char* fsmap_owner_name(FsmapOwner owner);

struct FsmapEntry {
  uint64_t physical = 0;  // device byte offset
  uint64_t length = 0;    // bytes
  FsmapOwner owner = FsmapOwner::kFree;
  Ino ino = 0;            // data and per-inode metadata
  uint64_t file_offset = 0;  // data
  bool shared = false;
  bool poisoned = false;
};

// notify_failure flags (the kernel's MF_* meanings).
inline constexpr int kMfActionRequired = 1;  // found by a consuming access (a read)
inline constexpr int kMfMemPreRemove = 2;    // the device is going away

// A file's poisoned bytes, in file coordinates.
struct FilePoison {
  uint64_t file_offset = 0;
  uint64_t length = 0;
};

enum class EventKind : uint32_t {
  kFailure = 0,     // poison reported or found; owners hit
  kRepair = 1,      // metadata rewritten from a good copy
  kQuarantine = 2,  // poisoned free space kept from the allocator
  kShutdown = 3,    // no good copy: every call fails with EIO
  kRecovery = 4,    // a write cleared poison in place
  kHeal = 5,        // one recovery healed every sharer
  kCorruption = 6,  // data does not match its checksum (silent corruption)
  kError = 7,       // the filesystem could not do what it must (e.g. save the poison record)
  kIncomplete = 8,  // a recovery write(2) delivered in pieces was not completed
};
const char* event_kind_name(EventKind kind);  // "failure", "repair", ...

struct EventOwner {
  std::string what;  // "data", "inodes", "extents", "directory", "xattr", "journal", "superblock", "free"
  Ino ino = 0;
  std::string path;  // data owners: the first path, "" if none
  uint64_t file_offset = 0;
  uint64_t length = 0;
};

struct Event {
  uint64_t seq = 0;
  int64_t time_ns = 0;
  EventKind kind = EventKind::kFailure;
  uint64_t device_offset = 0;
  uint64_t length = 0;
  std::string action;  // what was done, in words
  std::vector<EventOwner> owners;
};
// One JSON object (no newline) with keys seq, time, kind, device_offset,
// length, action, owners[{what, inode, path, file_offset, length}].
std::string event_to_json(const Event& e);

struct Health {
  bool shutdown = false;
  std::string reason;
  uint64_t known_poison_bytes = 0;
  uint64_t latent_poison_bytes = 0;
  uint64_t quarantined_bytes = 0;
  uint64_t events = 0;  // ever recorded
};

// What Filesystem::scrub found and did.
struct ScrubReport {
  uint64_t bytes_scanned = 0;             // allocated data bytes + metadata bytes walked
  uint64_t latent_found = 0;              // latent poison ranges made known
  uint64_t known_poison_bytes = 0;        // known poison left on the device afterwards
  uint64_t quarantine_cleared_bytes = 0;  // quarantined free space cleared and returned
  uint64_t ranges_notified = 0;           // ranges sent through notify_failure
  uint64_t blocks_verified = 0;           // data blocks whose checksum was checked
  uint64_t checksum_mismatches = 0;       // of those, silent corruption
  bool checksums = false;                 // the image has data checksums (else nothing verified)
};

struct OpenOptions {
  MapMode map_mode = MapMode::kShared;
  // Every read checks the crc32c of the blocks it returns; a mismatch is
  // EIO and a "corruption" event (scrub always checks).
  bool verify_checksums = false;
  // POSIX ACLs (system.posix_acl_*) in force (mount -o acl, the default). Off
  // (-o noacl, as on ext4): the names are refused with EOPNOTSUPP and hidden,
  // stored ACLs stay as they are but count for nothing (no inheritance at
  // create, chmod leaves them), and creates apply the umask.
  bool posix_acls = true;
  // mount_image: asked while it waits for the lock of an image no longer
  // mounted (up to 5 s for an exiting daemon); true gives up (EINTR). The
  // daemon asks whether a stop signal is pending (fuse/main.cc).
  std::function<bool()> stop_waiting = nullptr;
};

struct MkfsOptions {
  uint64_t inode_count = 0;  // 0: derived from the size
  std::string label;
  uint32_t root_uid = 0;     // owner of the root directory
  uint32_t root_gid = 0;
  bool data_checksums = true;  // a crc32c per data block (mkfs --no-checksums: none)
  uint64_t journal_bytes = 0;  // 0: 1/32 of the device, 256 KiB .. 64 MiB (mkfs -J)
};
// The journal sizes mkfs accepts (see kMinJournalBlocks in format/layout.h).
inline constexpr uint64_t kMinJournalBytes = 256 << 10;
inline constexpr uint64_t kMaxJournalBytes = 64 << 20;

// Fallocate modes (values of the Linux FALLOC_FL_* flags; stored nowhere).
inline constexpr int kFallocKeepSize = 0x01;
inline constexpr int kFallocPunchHole = 0x02;
inline constexpr int kFallocZeroRange = 0x10;

// What Filesystem::seek looks for (SEEK_DATA, SEEK_HOLE).
enum class SeekFor : uint8_t { kData, kHole };

// Rename flags (values of RENAME_*).
inline constexpr unsigned kRenameNoReplace = 1u << 0;
inline constexpr unsigned kRenameExchange = 1u << 1;

// Xattr flags (values of XATTR_*).
inline constexpr int kXattrCreate = 1;
inline constexpr int kXattrReplace = 2;
// Not an XATTR_* value: setting system.posix_acl_access also clears the
// setgid bit, because the caller is neither in the file's group nor has
// CAP_FSETID (the kernel's FUSE_SETXATTR_ACL_KILL_SGID; as chmod would).
inline constexpr int kXattrKillSgid = 1 << 16;

// Whether a call that answers with an entry (lookup, mknod, mkdir, symlink,
// link) hands the kernel a reference to the inode. The FUSE kernel keeps an
// inode it was handed until it forgets it (its lookup count), with or
// without a name or an open file: a removed directory that is a process's
// working directory, an O_PATH descriptor. Only the daemon's replies count;
// tools and tests forget nothing and look up uncounted.
enum class EntryRef : uint8_t { kNone, kKernel };

// The kernel drops nlookup references to ino (FORGET, BATCH_FORGET).
struct Forget {
  Ino ino = 0;
  uint64_t nlookup = 0;
};

class Filesystem {
 public:
  virtual ~Filesystem() = default;

  // Lays a new empty filesystem on the media. REQUIRES: media writable.
  static Status format(Media& media, const MkfsOptions& options);
  // Checks the superblock, replays the journal, loads every index and
  // reclaims orphans. Fails with a clear message and no store on bad images.
  static Result<std::unique_ptr<Filesystem>> mount(std::unique_ptr<Media> media,
                                                   const OpenOptions& options);
  static Result<std::unique_ptr<Filesystem>> mount_image(const std::string& path,
                                                         const OpenOptions& options);

  // Writes back lazy state (times) and checkpoints the journal.
  virtual Status unmount() = 0;

  // Lifetime of an inode: it lives while it has a name, an open file (open
  // until release) or a kernel reference (an entry answered with
  // EntryRef::kKernel until forget). Without a name it is an orphan (nlink
  // 0, still served; no entry can be made in an orphan directory), freed by
  // whichever of unlink, rmdir, rename, release or forget drops the last
  // hold, or by the next mount after a crash.
  virtual Result<Attr> lookup(Ino parent, std::string_view name, EntryRef ref) = 0;
  Result<Attr> lookup(Ino parent, std::string_view name) {
    return lookup(parent, name, EntryRef::kNone);
  }
  virtual Result<Attr> getattr(Ino ino) = 0;
  virtual Result<Attr> setattr(Ino ino, const SetAttr& set, const Caller& caller) = 0;

  virtual Result<Attr> mknod(Ino parent, std::string_view name, uint32_t mode, uint64_t rdev,
                             const Caller& caller, EntryRef ref) = 0;
  Result<Attr> mknod(Ino parent, std::string_view name, uint32_t mode, uint64_t rdev,
                     const Caller& caller) {
    return mknod(parent, name, mode, rdev, caller, EntryRef::kNone);
  }
  virtual Result<Attr> mkdir(Ino parent, std::string_view name, uint32_t mode, const Caller& caller,
                             EntryRef ref) = 0;
  Result<Attr> mkdir(Ino parent, std::string_view name, uint32_t mode, const Caller& caller) {
    return mkdir(parent, name, mode, caller, EntryRef::kNone);
  }
  virtual Result<Attr> symlink(Ino parent, std::string_view name, std::string_view target,
                               const Caller& caller, EntryRef ref) = 0;
  Result<Attr> symlink(Ino parent, std::string_view name, std::string_view target,
                       const Caller& caller) {
    return symlink(parent, name, target, caller, EntryRef::kNone);
  }
  virtual Result<std::string> readlink(Ino ino) = 0;
  virtual Result<Attr> link(Ino ino, Ino new_parent, std::string_view new_name, EntryRef ref) = 0;
  Result<Attr> link(Ino ino, Ino new_parent, std::string_view new_name) {
    return link(ino, new_parent, new_name, EntryRef::kNone);
  }
  virtual Status unlink(Ino parent, std::string_view name) = 0;
  virtual Status rmdir(Ino parent, std::string_view name) = 0;
  virtual Status rename(Ino parent, std::string_view name, Ino new_parent,
                        std::string_view new_name, unsigned flags) = 0;
  // Drops kernel references: an orphan left with none (and not open) is
  // freed. Forgetting an inode that is not in use, or more references than
  // it holds, changes nothing beyond a count of zero.
  virtual Status forget(std::span<const Forget> forgets) = 0;
  Status forget(Ino ino, uint64_t nlookup) {
    const Forget one{ino, nlookup};
    return forget(std::span(&one, 1));
  }

  virtual Status open(Ino ino) = 0;
  virtual Status release(Ino ino) = 0;

  // Calls sink once with the segments covering [off, min(off+len, size)),
  // while the mapping under them is guaranteed stable. Returns bytes read.
  virtual Result<size_t> read(Ino ino, uint64_t off, size_t len,
                              const std::function<void(std::span<const ReadSegment>)>& sink) = 0;
  // Convenience copy for tools and tests.
  Result<size_t> read_copy(Ino ino, uint64_t off, std::span<std::byte> out);
  // A write over known poison is a recovery: it must cover every poisoned
  // 64-byte unit it touches, else EIO and nothing changes. A piece from an
  // open file's page cache (from != kWholeWrite) that stops inside a
  // poisoned unit is taken whole instead: its whole blocks are written, its
  // last partial block kept in memory until that file's next write continues
  // it. If none does, flush or settle_recovery of from fails with EIO.
  virtual Result<size_t> write(Ino ino, uint64_t off, std::span<const std::byte> data, OpenFileId from) = 0;
  Result<size_t> write(Ino ino, uint64_t off, std::span<const std::byte> data) {
    return write(ino, off, data, kWholeWrite);
  }
  // close(2) of a descriptor of an open file: EIO when its last recovery
  // write was left incomplete (reported once), or still waits for its next
  // piece. A close of another descriptor of the same open file (a dup, a
  // forked child's) may come between two pieces of a write(2), so a waiting
  // tail is kept: it is dropped by settle_recovery.
  virtual Status flush(Ino ino, OpenFileId file) = 0;
  // fsync(2), which never comes between the pieces of a write(2), and the
  // release of an open file: drops a waiting tail (its units stay poisoned;
  // an event says so) and returns EIO (once) when a recovery write of the
  // file was left incomplete.
  virtual Status settle_recovery(Ino ino, OpenFileId file) = 0;
  // What a writer does before it changes a file's bytes (write, fallocate,
  // copy_file_range, clone): drops what kill says (see KillPriv). Returns
  // whether the file lost anything.
  virtual Result<bool> drop_privileges(Ino ino, KillPriv kill) = 0;
  virtual Status fallocate(Ino ino, int mode, uint64_t off, uint64_t len) = 0;
  // lseek(2)'s SEEK_DATA and SEEK_HOLE from off, in whole blocks: holes and
  // unwritten (preallocated) extents read as zeros, so both are holes, and
  // so is the end of the file. ENXIO when off is at or past the end, or no
  // data follows it (SEEK_DATA).
  virtual Result<uint64_t> seek(Ino ino, uint64_t off, SeekFor what) = 0;
  virtual Status fsync(Ino ino, bool datasync) = 0;

  // Lists entries after cookie (0 = from the start, including "." and "..").
  // fn returns false to stop (reply buffer full).
  virtual Status readdir(Ino ino, uint64_t cookie,
                         const std::function<bool(const DirEntry&)>& fn) = 0;

  // Names: user., trusted., security., and the POSIX ACLs
  // system.posix_acl_access and system.posix_acl_default (src/fs/acl.h:
  // setting an access ACL sets the mode too; a default ACL is inherited by
  // what is created in its directory; chmod rewrites the access ACL).
  virtual Result<std::string> getxattr(Ino ino, std::string_view name) = 0;
  virtual Status setxattr(Ino ino, std::string_view name, std::string_view value, int flags) = 0;
  virtual Result<std::vector<std::string>> listxattr(Ino ino) = 0;
  virtual Status removexattr(Ino ino, std::string_view name) = 0;

  // Reflink: makes [dst_off, dst_off+len) of dst share the blocks of
  // [src_off, src_off+len) of src, with FICLONERANGE's rules: offsets block
  // aligned, len too unless it ends at src's EOF (0 = to EOF), ranges of one
  // file must not overlap. Grows dst if needed. Nothing changes on error.
  virtual Status clone_range(Ino src, uint64_t src_off, Ino dst, uint64_t dst_off, uint64_t len) = 0;
  // copy_file_range(2): shares whole blocks (reflink) where both offsets have
  // the same alignment, copies bytes for the unaligned head and tail.
  // Returns bytes copied (short at src's EOF).
  virtual Result<uint64_t> copy_range(Ino src, uint64_t src_off, Ino dst, uint64_t dst_off,
                                      uint64_t len) = 0;
  virtual Result<std::vector<BmapEntry>> bmap(Ino ino) = 0;
  // Owners of the device bytes [start, start+length), in physical order;
  // each shared piece once per owner. fn returns false to stop.
  virtual Status fsmap(uint64_t start, uint64_t length,
                       const std::function<bool(const FsmapEntry&)>& fn) = 0;
  // Every path of ino from the root ("/a/b"), one per hard link.
  virtual Result<std::vector<std::string>> paths(Ino ino) = 0;
  // The paths of many inodes under one lock (fsmap names thousands), flat:
  // those of inos[i] are out.of(i) (none for an inode that no longer
  // exists). out is cleared first.
  virtual void paths(std::span<const Ino> inos, PathList& out) = 0;

  // --- media failure (DESIGN.md section 2)
  // A media error at device bytes [offset, offset+length): every owner is
  // told (file data: recorded and its cached pages invalidated through the
  // hook; metadata: rewritten from memory; free space: quarantined).
  virtual Status notify_failure(uint64_t offset, uint64_t length, int flags) = 0;
  // Injects poison (rounded out to 64-byte units); known poison is notified
  // at once, latent poison only when a read or a scrub finds it.
  virtual Result<PoisonRange> inject_poison(uint64_t offset, uint64_t length, bool latent) = 0;
  virtual std::vector<PoisonRange> badblocks() = 0;
  // The known poisoned bytes of a file, in file offsets.
  virtual Result<std::vector<FilePoison>> file_poison(Ino ino) = 0;
  // Events after `after_seq` (at most max); *dropped: how many older events
  // the bounded history no longer holds.
  virtual std::vector<Event> events(uint64_t after_seq, size_t max, uint64_t* dropped) = 0;
  virtual Health health() = 0;
  // Whether the device has poison, known or latent (one atomic load): only
  // then can a write be a recovery, or a flush have something to report.
  virtual bool has_poison() const = 0;
  // Walks every allocated byte of the data area and the metadata regions in
  // chunks (the lock is taken per chunk, so the filesystem stays usable):
  // latent poison found becomes known and is notified like a read would;
  // then quarantined free space is cleared and returned to the allocator.
  // progress(done, total) is called after every chunk (device bytes). EIO
  // when the filesystem is shut down. No checksum verification yet.
  virtual Result<ScrubReport> scrub(const std::function<void(uint64_t done, uint64_t total)>& progress) = 0;
  // Called (from the failing thread, with no lock held) for every cached
  // file range the kernel must drop. The daemon sets it.
  virtual void set_invalidate_hook(std::function<void(Ino, uint64_t offset, uint64_t length)> hook) = 0;
  // Like read(), but stops short at the first poisoned byte (O_DIRECT):
  // returns the clean bytes before it, or EIO when it is at `off`.
  virtual Result<size_t> read_direct(Ino ino, uint64_t off, size_t len,
                                     const std::function<void(std::span<const ReadSegment>)>& sink) = 0;

  virtual StatFs statfs() = 0;
  virtual FsInfo info() = 0;
};

// Parses "4096", "64K", "16M", "1G", "2T" (binary units) into bytes.
Result<uint64_t> parse_size(std::string_view text);
// A size for people: "512 B", "1.5 GiB" (binary units, one decimal).
std::string human_bytes(uint64_t bytes);

// fsck: verifies every structure and the derived state. See src/fs/check.cc.
struct CheckReport {
  std::vector<std::string> problems;  // found
  std::vector<std::string> repairs;   // done (only when repair was asked for)
  uint64_t inodes = 0, extents = 0, directories = 0, used_blocks = 0;
  bool clean() const { return problems.empty(); }
};
Result<CheckReport> check_filesystem(Media& media, bool repair);

}  // namespace poisonfs
