// The FUSE low-level operation table of the poisonfs daemon: every handler
// (named pfs_<op>) takes the mount context from fuse_req_userdata, calls the
// core Filesystem and replies. Nothing here keeps per-file state: the core
// owns every inode, open count and lock.
#pragma once

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 314
#endif

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <cstdint>
#include <string>

#include "poisonfs/filesystem.h"
#include "request_wait.h"
#include "writable_opens.h"

namespace poisonfs::fuse {

// How a read reply leaves: fuse_reply_iov (one writev straight from the
// mapping), fuse_reply_data without splice (libfuse copies a reply of
// several pieces into one buffer first), or fuse_reply_data with
// SPLICE_WRITE|SPLICE_MOVE (vmsplice into a pipe, splice into /dev/fuse).
enum class ReadReply { kIov, kData, kSplice };

// What every handler needs: the filesystem and the few settings of the
// daemon. The daemon owns it; it outlives the session.
struct MountContext {
  Filesystem* fs = nullptr;
  // Set once the session exists, for notifications (cache invalidation).
  fuse_session* session = nullptr;
  // The uid that started the daemon: it (and root) may use the control
  // ioctls.
  uid_t owner_uid = 0;
  // Must equal the max_read mount option given to fuse_session_new
  // (libfuse refuses the INIT otherwise).
  unsigned max_read = 1u << 20;
  // The INIT reply's max_readahead: the kernel keeps the smaller of it and
  // the mount's readahead window (main.cc, set_read_ahead).
  unsigned max_readahead = 1u << 20;
  ReadReply read_reply = ReadReply::kIov;
  // Absolute mountpoint: finds this mount's id in /proc/self/mountinfo.
  std::string mountpoint;
  // Sends kernel cache invalidations; set while the session loop runs.
  class CacheInvalidator* invalidator = nullptr;
  // Runs long control requests (scrub) off the session loop; set while the
  // loop runs (invalidator.h).
  class SerialWorker* background = nullptr;
  // The kernel accepted FUSE_HANDLE_KILLPRIV_V2 (killpriv.h): it no longer
  // asks for security.capability before each write.
  std::atomic<bool> killpriv_v2{false};
  // -o direct_io: every file is opened with FOPEN_DIRECT_IO, as fsdax
  // bypasses the page cache, once the kernel accepted
  // FUSE_DIRECT_IO_ALLOW_MMAP (direct_io_mmap), without which a file opened
  // so could not be mapped shared.
  bool direct_io = false;
  // -o noacl: POSIX ACLs not negotiated (OpenOptions::posix_acls).
  bool posix_acls = true;
  // Which files may have pages dirtied through a mapping (pfs_lseek).
  WritableOpens writable_opens;
  // The kernel skips OPENDIR and RELEASEDIR once an OPENDIR got ENOSYS
  // (FUSE_NO_OPENDIR_SUPPORT, 5.1+): directories keep no per-open state
  // here, and each `poisonctl` call (it opens the mount's root for its
  // ioctls) saves a round trip.
  std::atomic<bool> no_opendir{false};
  std::atomic<bool> direct_io_mmap{false};
  // The INIT reply says FUSE_SETXATTR_EXT (killpriv.h): SETXATTR requests
  // carry setxattr_flags, which the shim takes out before libfuse sees them.
  std::atomic<bool> setxattr_ext{false};
  bool serves_direct_io() const { return direct_io && direct_io_mmap.load(std::memory_order_relaxed); }
  // GETXATTR requests served (POISONFS_IOC_STAT): shows that writes stopped
  // asking.
  std::atomic<uint64_t> getxattr_requests{0};
  // Names the open files whose writes come through the page cache while
  // the device has poison (OpenFileId, in fi->fh; see set_open_flags).
  std::atomic<uint64_t> next_open_file{1};
  // How the session loop waits for requests (-o spin_us; main.cc sets it
  // before the loop starts). Only the single-threaded loop spins, and only
  // its thread changes it.
  RequestWait request_wait;
};

// fi->fh of an open file: its open flags' low bits (kOpenFlagsInFh: the
// access mode and O_APPEND, for the ioctls) and above them its OpenFileId
// (52 bits: unique while it is open).
inline constexpr uint64_t kOpenFlagsInFh = 0xfff;
inline constexpr int kOpenFileIdShift = 12;
static_assert((O_ACCMODE | O_APPEND) <= kOpenFlagsInFh);

// Entry and attribute timeouts in seconds: every change goes through this
// daemon, and its replies refresh what the kernel caches.
inline constexpr double kAttrTimeout = 1.0;
inline constexpr double kEntryTimeout = 1.0;

// The largest request in either direction (max_write, max_read, readahead).
inline constexpr unsigned kMaxIo = 1u << 20;

// Fills the low-level op table. The session's userdata must be a
// MountContext*.
fuse_lowlevel_ops make_poisonfs_ops();

// Drops what a change of ino's bytes takes from it (KillPriv), before the
// change, and has the kernel refetch ino's attributes when it lost anything.
Status drop_privileges(fuse_req_t req, fuse_ino_t ino, KillPriv kill);

// What a change the kernel does not flag takes (fallocate, copy_file_range,
// the clone ioctl): root stands in for CAP_FSETID, which the daemon cannot
// see.
KillPriv unflagged_kill(fuse_req_t req);

// Replies (runs reply) once the cache invalidations queued so far have been
// sent (CacheInvalidator::then), in control.cc. REQUIRES: reply does not
// throw.
void reply_after_invalidations(fuse_req_t req, std::function<void()> reply);

// The poisonfs ioctls (include/poisonfs/ioctl.h), in control.cc. fi->fh
// holds the low bits of the file's open flags (kOpenFlagsInFh). Replies
// exactly once.
void handle_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, fuse_file_info* fi,
                  const void* in_buf, size_t in_bufsz, size_t out_bufsz);

}  // namespace poisonfs::fuse
