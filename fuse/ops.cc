// The low-level FUSE handlers of the poisonfs daemon. Each handler is thin:
// it decodes the request, calls the core and replies; the core owns every
// decision. Exceptions never cross a FUSE callback (bad_alloc -> ENOMEM,
// anything else -> EIO), and every request gets exactly one reply.
#include "ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "invalidator.h"
#include "killpriv.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::fuse {
namespace {

// Holes in a read reply point here: one shared, page-aligned run of zeros.
// Never written; not const so that it lives in .bss, not in the binary.
alignas(4096) std::byte g_zeros[kMaxIo];

MountContext* context(fuse_req_t req) {
  return static_cast<MountContext*>(fuse_req_userdata(req));
}

Filesystem& filesystem(fuse_req_t req) { return *context(req)->fs; }

Caller caller_of(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return Caller{.uid = ctx->uid, .gid = ctx->gid, .umask = ctx->umask};
}

timespec to_timespec(const Timespec& t) {
  return timespec{.tv_sec = static_cast<time_t>(t.sec), .tv_nsec = static_cast<long>(t.nsec)};
}

Timespec from_timespec(const timespec& t) { return Timespec{t.tv_sec, t.tv_nsec}; }

// The one place where a core Attr becomes a struct stat.
struct stat to_stat(const Attr& a) {
  struct stat st {};
  st.st_ino = a.ino;
  st.st_mode = a.mode;
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_rdev = a.rdev;
  st.st_size = static_cast<off_t>(a.size);
  st.st_blocks = static_cast<blkcnt_t>(a.blocks);
  st.st_blksize = kBlockSize;
  st.st_atim = to_timespec(a.atime);
  st.st_mtim = to_timespec(a.mtime);
  st.st_ctim = to_timespec(a.ctime);
  return st;
}

void reply_error(fuse_req_t req, const Error& err) {
  int e = err.errno_value();
  fuse_reply_err(req, e > 0 ? e : EIO);
}

void reply_status(fuse_req_t req, const Status& st) {
  if (st) {
    fuse_reply_err(req, 0);
  } else {
    reply_error(req, st.error());
  }
}

fuse_entry_param entry_of(const Attr& attr) {
  fuse_entry_param e{};
  e.ino = attr.ino;
  e.generation = attr.generation;
  e.attr = to_stat(attr);
  e.attr_timeout = kAttrTimeout;
  e.entry_timeout = kEntryTimeout;
  return e;
}

// Drops kernel references: the kernel's forgets, which get no reply, and
// the count of an entry the kernel never took (its reply was refused: the
// kernel waits for every request it has sent, so only after an abort,
// umount -f; or the create failed after the count). Nothing may escape; a
// failure to free is the core's to report (a failed commit shuts it down),
// and an orphan left behind is reclaimed at the next mount.
void forget_quietly(Filesystem& fs, std::span<const Forget> forgets) noexcept {
  try {
    (void)fs.forget(forgets);
  } catch (...) {
  }
}

void forget_quietly(Filesystem& fs, Ino ino, uint64_t nlookup = 1) noexcept {
  const Forget one{ino, nlookup};
  forget_quietly(fs, std::span(&one, 1));
}

// Every entry the daemon answers was counted (EntryRef::kKernel).
void reply_entry(fuse_req_t req, const Result<Attr>& attr) {
  if (!attr) {
    reply_error(req, attr.error());
    return;
  }
  // Taken first: the reply frees req, refused or not.
  Filesystem& fs = filesystem(req);
  fuse_entry_param e = entry_of(*attr);
  if (fuse_reply_entry(req, &e) == -ENOENT) forget_quietly(fs, attr->ino);
}

void reply_attr(fuse_req_t req, const Result<Attr>& attr) {
  if (!attr) {
    reply_error(req, attr.error());
    return;
  }
  struct stat st = to_stat(*attr);
  fuse_reply_attr(req, &st, kAttrTimeout);
}

// Runs a handler body; an escaping exception becomes the request's reply.
// REQUIRES: body has not replied when it throws.
template <class Body>
void guarded(fuse_req_t req, Body&& body) noexcept {
  try {
    body();
  } catch (const std::bad_alloc&) {
    fuse_reply_err(req, ENOMEM);
  } catch (...) {
    fuse_reply_err(req, EIO);
  }
}

void set_open_flags(fuse_req_t req, fuse_file_info* fi) {
  // O_DIRECT readers get every clean byte up to a poisoned unit instead of
  // losing the whole page; everyone else shares the page cache, which stays
  // valid because every change goes through this daemon. With -o direct_io
  // every open bypasses the page cache, as on fsdax: a read copies straight
  // from the mapping into the caller's buffer, one copy instead of two.
  // Mappings use the page cache either way (kept: keep_cache).
  fi->direct_io = (fi->flags & O_DIRECT) != 0 || context(req)->serves_direct_io();
  fi->keep_cache = 1;
  // The open flags' low bits (access mode, O_APPEND), for ioctls that need
  // to know (a reflink target must be writable).
  fi->fh = static_cast<uint64_t>(fi->flags) & kOpenFlagsInFh;
  // A writer through the page cache, opened while the device has poison,
  // may send a recovery write(2) in pieces: it gets an OpenFileId (the bits
  // above) for Filesystem::write, and a FLUSH at each close to learn of one
  // left incomplete. Other opens keep no state here and skip the FLUSH round
  // trip; their writes are judged alone.
  const bool page_cache_writer =
      (fi->flags & O_ACCMODE) != O_RDONLY && !fi->direct_io && filesystem(req).has_poison();
  if (page_cache_writer) fi->fh |= context(req)->next_open_file.fetch_add(1) << kOpenFileIdShift;
  fi->noflush = !page_cache_writer;
}

// The OpenFileId set_open_flags gave this open (kWholeWrite: none).
OpenFileId open_file_id(const fuse_file_info* fi) { return fi->fh >> kOpenFileIdShift; }

// ---------------------------------------------------------------------------
// Session

void pfs_init(void* userdata, fuse_conn_info* conn) {
  auto* mc = static_cast<MountContext*>(userdata);
  conn->max_write = kMaxIo;
  conn->max_read = mc->max_read;
  conn->max_readahead = mc->max_readahead;
  conn->time_gran = 1;
  // The kernel must send O_TRUNC as a separate setattr (whose
  // FATTR_KILL_SUIDGID covers the truncation), do permission checks itself,
  // cache nothing dirty, and hand out no handles for NFS export.
  // HANDLE_KILLPRIV (v1) stays off: killpriv.h negotiates v2, which says per
  // request whether the caller lacks CAP_FSETID.
  //
  // No AUTO_INVAL_DATA: with it the kernel drops a file's whole page cache
  // whenever a getattr shows a new mtime or size, i.e. after every write
  // through this very mount (measured: a 256 MiB file re-read at 2.4 GB/s
  // instead of 6 GB/s after a 2-byte append). Every data change comes
  // through the kernel, which keeps its cache right by itself (write-through
  // writes, truncate, fallocate, O_DIRECT, copy_file_range); the only change
  // it cannot see, poison found by notify_failure, is invalidated
  // explicitly with fuse_lowlevel_notify_inval_inode.
  conn->want &= ~(FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_EXPORT_SUPPORT | FUSE_CAP_WRITEBACK_CACHE |
                  FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK |
                  FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                  FUSE_CAP_SPLICE_MOVE);
  if (conn->capable & FUSE_CAP_IOCTL_DIR) conn->want |= FUSE_CAP_IOCTL_DIR;
  // POSIX ACLs: the kernel enforces them (POSIX_ACL implies
  // default_permissions), fetches and caches them with GETXATTR, and hands
  // their changes to us as xattrs; the core keeps the mode in step. The
  // umask must reach the core unapplied (DONT_MASK): a directory's default
  // ACL replaces it (FsImpl::new_inode_acls), which only the core knows.
  // Without DONT_MASK the kernel would apply the umask first, so both or
  // neither.
  const unsigned acl_caps = FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
  if (mc->posix_acls && (conn->capable & acl_caps) == acl_caps) conn->want |= acl_caps;
  mc->no_opendir = (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
  // Splice only on request (-o read_reply=splice): measured with fio on a
  // 2 GiB /dev/shm image, 2 CPUs, a 1 GiB file, psync, it never won. The
  // vmsplice + splice pair costs more than the one copy writev does:
  //   1 MiB O_DIRECT sequential   iov ~1.8-3.3 GB/s   splice ~1.8 GB/s
  //   128 KiB buffered sequential iov ~1.3-2.4 GB/s   splice ~0.43 GB/s
  //   4 KiB O_DIRECT random       iov ~50-70 kIOPS    splice ~24 kIOPS
  // fuse_reply_data without splice matches iov when a reply is one piece,
  // and loses ~25% on a fragmented file (16 KiB extents: 2.0-2.2 GB/s
  // against 2.5-2.9 GB/s), since libfuse copies several pieces into one
  // buffer first. Hence iov by default.
  if (mc->read_reply == ReadReply::kSplice) {
    conn->want |= conn->capable & (FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  }
}

void pfs_destroy(void* /*userdata*/) {
  // The daemon's main unmounts the core after the session ends: it must
  // also do so when the kernel connection died without a DESTROY.
}

// ---------------------------------------------------------------------------
// Names

void pfs_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, [&] {
    Result<Attr> attr = filesystem(req).lookup(parent, name, EntryRef::kKernel);
    if (!attr && attr.error().code == std::errc::no_such_file_or_directory) {
      // A negative entry: the kernel may remember the miss, since a later
      // create of the name comes through here and replaces it.
      fuse_entry_param e{};
      e.ino = 0;
      e.entry_timeout = kEntryTimeout;
      fuse_reply_entry(req, &e);
      return;
    }
    reply_entry(req, attr);
  });
}

// The kernel's references keep an inode without a name alive (see
// Filesystem::lookup): its forgets free it.
void pfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  forget_quietly(filesystem(req), ino, nlookup);
  fuse_reply_none(req);
}

// BATCH_FORGET: the core's lock once for the whole batch.
void pfs_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Filesystem& fs = filesystem(req);
  std::vector<Forget> batch;
  try {
    batch.reserve(count);
  } catch (const std::bad_alloc&) {
  }
  if (batch.capacity() < count) {  // no memory for the batch: one at a time
    for (size_t i = 0; i < count; ++i) forget_quietly(fs, forgets[i].ino, forgets[i].nlookup);
  } else {
    for (size_t i = 0; i < count; ++i) batch.push_back(Forget{forgets[i].ino, forgets[i].nlookup});
    forget_quietly(fs, batch);
  }
  fuse_reply_none(req);
}

void pfs_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  guarded(req, [&] { reply_attr(req, filesystem(req).getattr(ino)); });
}

void pfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                 fuse_file_info* /*fi*/) {
  guarded(req, [&] {
    SetAttr set;
    if (to_set & FUSE_SET_ATTR_MODE) {
      set.valid |= SetAttr::kMode;
      set.mode = attr->st_mode;
    }
    if (to_set & FUSE_SET_ATTR_UID) {
      set.valid |= SetAttr::kUid;
      set.uid = attr->st_uid;
    }
    if (to_set & FUSE_SET_ATTR_GID) {
      set.valid |= SetAttr::kGid;
      set.gid = attr->st_gid;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
      set.valid |= SetAttr::kSize;
      set.size = static_cast<uint64_t>(attr->st_size);
    }
    // The kernel sends ATIME together with ATIME_NOW; "now" wins.
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
      set.valid |= SetAttr::kAtimeNow;
    } else if (to_set & FUSE_SET_ATTR_ATIME) {
      set.valid |= SetAttr::kAtime;
      set.atime = from_timespec(attr->st_atim);
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
      set.valid |= SetAttr::kMtimeNow;
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
      set.valid |= SetAttr::kMtime;
      set.mtime = from_timespec(attr->st_mtim);
    }
    if (to_set & FUSE_SET_ATTR_CTIME) {
      set.valid |= SetAttr::kCtime;
      set.ctime = from_timespec(attr->st_ctim);
    }
    // Truncate by a caller without CAP_FSETID, or chown of a non-directory.
    if (request_kills_suid_sgid()) set.valid |= SetAttr::kKillSuidSgid;
    reply_attr(req, filesystem(req).setattr(ino, set, caller_of(req)));
  });
}

void pfs_readlink(fuse_req_t req, fuse_ino_t ino) {
  guarded(req, [&] {
    Result<std::string> target = filesystem(req).readlink(ino);
    if (!target) {
      reply_error(req, target.error());
      return;
    }
    fuse_reply_readlink(req, target->c_str());
  });
}

void pfs_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  guarded(req, [&] {
    reply_entry(req,
                filesystem(req).mknod(parent, name, mode, rdev, caller_of(req), EntryRef::kKernel));
  });
}

void pfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  guarded(req, [&] {
    reply_entry(req, filesystem(req).mkdir(parent, name, mode | S_IFDIR, caller_of(req),
                                           EntryRef::kKernel));
  });
}

void pfs_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, [&] { reply_status(req, filesystem(req).unlink(parent, name)); });
}

void pfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, [&] { reply_status(req, filesystem(req).rmdir(parent, name)); });
}

void pfs_symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  guarded(req, [&] {
    reply_entry(req,
                filesystem(req).symlink(parent, name, link, caller_of(req), EntryRef::kKernel));
  });
}

// A directory moved to another parent changes its own ".." entry, which the
// kernel does not know: it invalidates the cached listings of the two
// parents only (without OPENDIR the kernel caches listings, see
// pfs_opendir). The moved directories' cached listings are dropped before
// the reply; with OPENDIR the kernel caches no listing and nothing is done.
void pfs_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                const char* new_name, unsigned int flags) {
  guarded(req, [&] {
    Filesystem& fs = filesystem(req);
    std::vector<Ino> moved_dirs;
    auto note_dir = [&](fuse_ino_t dir, const char* entry) {
      if (Result<Attr> a = fs.lookup(dir, entry); a && S_ISDIR(a->mode)) moved_dirs.push_back(a->ino);
    };
    if (parent != new_parent && context(req)->no_opendir.load(std::memory_order_relaxed)) {
      note_dir(parent, name);
      if (flags & kRenameExchange) note_dir(new_parent, new_name);
    }
    Status st = fs.rename(parent, name, new_parent, new_name, flags);
    CacheInvalidator* invalidator = context(req)->invalidator;
    if (!st || moved_dirs.empty() || !invalidator) {
      reply_status(req, st);
      return;
    }
    for (Ino dir : moved_dirs) invalidator->push(dir, 0, 0);
    reply_after_invalidations(req, [req] { fuse_reply_err(req, 0); });
  });
}

void pfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
  guarded(req, [&] {
    reply_entry(req, filesystem(req).link(ino, new_parent, new_name, EntryRef::kKernel));
  });
}

// ---------------------------------------------------------------------------
// Files

// Undoes an open whose reply the kernel refused (the connection was
// aborted). The request is answered already: nothing may escape.
void release_quietly(Filesystem& fs, Ino ino) noexcept {
  try {
    (void)fs.release(ino);
  } catch (...) {
  }
}

// Counts the open files that may write (WritableOpens); a count taken for
// an open whose reply is refused is given back by note_released.
void note_opened(fuse_req_t req, fuse_ino_t ino, const fuse_file_info* fi) {
  if (WritableOpens::writes(fi->flags)) context(req)->writable_opens.opened(ino);
}
void note_released(fuse_req_t req, fuse_ino_t ino, const fuse_file_info* fi) {
  if (WritableOpens::writes(fi->flags)) context(req)->writable_opens.released(ino);
}

void pfs_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(req, [&] {
    Filesystem& fs = filesystem(req);
    if (Status st = fs.open(ino); !st) {
      reply_error(req, st.error());
      return;
    }
    set_open_flags(req, fi);
    note_opened(req, ino, fi);
    // A refused open gets no release from the kernel: undo it here.
    if (fuse_reply_open(req, fi) == -ENOENT) {
      note_released(req, ino, fi);
      release_quietly(fs, ino);
    }
  });
}

void pfs_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                fuse_file_info* fi) {
  guarded(req, [&] {
    Filesystem& fs = filesystem(req);
    // Counted with the create: a concurrent unlink cannot free the new file
    // before the open below.
    Result<Attr> attr =
        fs.mknod(parent, name, (mode & ~S_IFMT) | S_IFREG, 0, caller_of(req), EntryRef::kKernel);
    if (!attr) {
      reply_error(req, attr.error());
      return;
    }
    if (Status st = fs.open(attr->ino); !st) {
      forget_quietly(fs, attr->ino);
      reply_error(req, st.error());
      return;
    }
    fuse_entry_param e = entry_of(*attr);
    set_open_flags(req, fi);
    note_opened(req, attr->ino, fi);
    if (fuse_reply_create(req, &e, fi) == -ENOENT) {
      note_released(req, attr->ino, fi);
      release_quietly(fs, attr->ino);
      forget_quietly(fs, attr->ino);
    }
  });
}

// Sends the segments of a read as one reply, without copying the mapping.
void reply_read(fuse_req_t req, ReadReply how, std::span<const ReadSegment> segments) {
  // Holes longer than the zero buffer take several pieces.
  size_t pieces = 0;
  for (const ReadSegment& s : segments) {
    pieces += s.data ? 1 : (s.length + kMaxIo - 1) / kMaxIo;
  }
  std::array<iovec, 32> small;
  std::vector<iovec> large;
  iovec* iov = small.data();
  if (pieces > small.size()) {
    large.resize(pieces);
    iov = large.data();
  }
  size_t n = 0;
  for (const ReadSegment& s : segments) {
    if (s.data) {
      iov[n++] = iovec{const_cast<std::byte*>(s.data), s.length};
      continue;
    }
    for (size_t left = s.length; left > 0;) {
      size_t take = std::min<size_t>(left, kMaxIo);
      iov[n++] = iovec{g_zeros, take};
      left -= take;
    }
  }
  // writev takes at most IOV_MAX pieces (libfuse adds one for the header);
  // a reply in more pieces than that goes through libfuse's copy.
  if (how == ReadReply::kIov && n < IOV_MAX) {
    fuse_reply_iov(req, iov, static_cast<int>(n));
    return;
  }
  // fuse_bufvec ends in a one-element array: allocate room for n.
  size_t bytes = sizeof(fuse_bufvec) + (n > 0 ? n - 1 : 0) * sizeof(fuse_buf);
  std::vector<std::byte> storage(bytes);
  auto* bufv = reinterpret_cast<fuse_bufvec*>(storage.data());
  bufv->count = n;
  bufv->idx = 0;
  bufv->off = 0;
  for (size_t i = 0; i < n; ++i) {
    bufv->buf[i] = fuse_buf{};
    bufv->buf[i].size = iov[i].iov_len;
    bufv->buf[i].mem = iov[i].iov_base;
    bufv->buf[i].fd = -1;
  }
  fuse_reply_data(req, bufv,
                  how == ReadReply::kSplice ? FUSE_BUF_SPLICE_MOVE : fuse_buf_copy_flags{});
}

void pfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  bool replied = false;
  try {
    ReadReply how = context(req)->read_reply;
    // The core holds its lock while the sink runs, so the reply must leave
    // before the sink returns: the mapping under it may be reused after.
    auto sink = [&](std::span<const ReadSegment> segments) {
      reply_read(req, how, segments);
      replied = true;
    };
    // O_DIRECT readers get every clean byte before a poisoned one (a short
    // read, then EIO); a page-cache read of a range with poison fails whole,
    // and the kernel then retries page by page, losing only poisoned pages.
    // A read without O_DIRECT fails whole under -o direct_io too: the page
    // faults of a mapping read through the same handle, and a short read
    // there would be taken for the end of the file.
    Filesystem& fs = filesystem(req);
    // (fi->direct_io is set only for the OPEN reply; reads carry the flags.)
    Result<size_t> n = (fi->flags & O_DIRECT) ? fs.read_direct(ino, static_cast<uint64_t>(off), size, sink)
                                              : fs.read(ino, static_cast<uint64_t>(off), size, sink);
    if (replied) return;
    if (!n) {
      reply_error(req, n.error());
    } else {
      fuse_reply_buf(req, nullptr, 0);
    }
  } catch (const std::bad_alloc&) {
    if (!replied) fuse_reply_err(req, ENOMEM);
  } catch (...) {
    if (!replied) fuse_reply_err(req, EIO);
  }
}

void pfs_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
               fuse_file_info* fi) {
  guarded(req, [&] {
    // The kernel says whether the writer lacks CAP_FSETID (killpriv.h); a
    // write-back of mmapped pages drops nothing, as in the VFS. Nor does a
    // write the core refuses (EFBIG) or an empty one: the VFS checks the
    // limits first (generic_write_checks); the kernel's FUSE knows no limit
    // below 2^63, so the core's rule is asked here.
    const Result<uint64_t> writable = writable_length(static_cast<uint64_t>(off), size);
    const bool writes_nothing = !writable || *writable == 0;
    if (!request_is_page_writeback() && !writes_nothing) {
      KillPriv kill = request_kills_suid_sgid() ? KillPriv::kCapsAndSuid : KillPriv::kCaps;
      if (Status st = drop_privileges(req, ino, kill); !st) {
        reply_error(req, st.error());
        return;
      }
    }
    // O_DIRECT set since the open (fcntl), and mmap write-back (whole
    // pages, the handle borrowed from any writer), come whole.
    const bool whole = (fi->flags & O_DIRECT) != 0 || fi->writepage;
    Result<size_t> n = filesystem(req).write(
        ino, static_cast<uint64_t>(off), std::span<const std::byte>(reinterpret_cast<const std::byte*>(buf), size),
        whole ? kWholeWrite : open_file_id(fi));
    if (!n) {
      reply_error(req, n.error());
      return;
    }
    fuse_reply_write(req, *n);
  });
}

void pfs_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  // close(2) learns here of a recovery write left incomplete (Filesystem::flush).
  guarded(req, [&] { reply_status(req, filesystem(req).flush(ino, open_file_id(fi))); });
}

void pfs_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(req, [&] {
    (void)filesystem(req).settle_recovery(ino, open_file_id(fi));  // no one left to tell: the event says it
    note_released(req, ino, fi);
    reply_status(req, filesystem(req).release(ino));
  });
}

void pfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  guarded(req, [&] {
    Status reported = filesystem(req).settle_recovery(ino, open_file_id(fi));
    Status synced = filesystem(req).fsync(ino, datasync != 0);
    reply_status(req, reported ? synced : reported);
  });
}

void pfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t length,
                   fuse_file_info* /*fi*/) {
  guarded(req, [&] {
    if (off < 0 || length <= 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    // Refused before anything is dropped, as vfs_fallocate checks the
    // size limit first (the kernel's FUSE knows none below 2^63).
    if (static_cast<uint64_t>(off) + static_cast<uint64_t>(length) > kMaxFileSize) {
      fuse_reply_err(req, EFBIG);
      return;
    }
    if (Status st = drop_privileges(req, ino, unflagged_kill(req)); !st) {
      reply_error(req, st.error());
      return;
    }
    reply_status(req, filesystem(req).fallocate(ino, mode, static_cast<uint64_t>(off),
                                                static_cast<uint64_t>(length)));
  });
}

// Answers an lseek from the extent map.
void reply_seek(fuse_req_t req, Filesystem& fs, Ino ino, uint64_t off, SeekFor what) noexcept {
  guarded(req, [&] {
    Result<uint64_t> to = fs.seek(ino, off, what);
    if (!to) {
      reply_error(req, to.error());
      return;
    }
    fuse_reply_lseek(req, static_cast<off_t>(*to));
  });
}

// SEEK_DATA and SEEK_HOLE (the kernel answers the other whences itself).
// Bytes stored through a shared mapping are data before they reach the
// image, and the kernel sends LSEEK without writing them back: while the
// file is open for writing, its cached pages from off on are dropped first,
// which writes the dirty ones back (WRITE requests, served meanwhile), and
// the answer comes from the invalidation thread after that.
void pfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* /*fi*/) {
  guarded(req, [&] {
    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    // The kernel passes a negative offset on; Linux's file systems answer
    // it as one past the end.
    if (off < 0) {
      fuse_reply_err(req, ENXIO);
      return;
    }
    const SeekFor what = whence == SEEK_DATA ? SeekFor::kData : SeekFor::kHole;
    const uint64_t from = static_cast<uint64_t>(off);
    Filesystem& fs = filesystem(req);
    // Only a file open for writing can have dirty mapped pages
    // (WritableOpens); any other keeps its cache.
    CacheInvalidator* invalidator = context(req)->invalidator;
    if (!invalidator || !context(req)->writable_opens.any(ino)) {
      reply_seek(req, fs, ino, from, what);
      return;
    }
    invalidator->push(ino, from, 0);
    reply_after_invalidations(
        req, [req, &fs, ino, from, what] { reply_seek(req, fs, ino, from, what); });
  });
}

// ---------------------------------------------------------------------------
// Directories

// Readdir is stateless (cookies are positions in the directory), so an
// open directory needs nothing from the daemon: ENOSYS tells a kernel that
// can do without OPENDIR and RELEASEDIR to stop sending them. It then
// caches listings (FOPEN_CACHE_DIR), which stays right because every
// change of a directory comes through the kernel, which invalidates the
// parents it touches; pfs_rename drops the one it misses (a moved
// directory's ".."). Poisoned directory blocks are rewritten from memory:
// listings never change under the kernel. After a shutdown, cached
// listings are still served, as cached file pages are.
void pfs_opendir(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  if (context(req)->no_opendir.load(std::memory_order_relaxed)) {
    fuse_reply_err(req, ENOSYS);
    return;
  }
  fuse_reply_open(req, fi);
}

void pfs_releasedir(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* /*fi*/) {
  fuse_reply_err(req, 0);
}

void pfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  guarded(req, [&] {
    std::vector<char> buf(size);
    size_t used = 0;
    std::string name;  // fuse_add_direntry wants a C string
    Status st = filesystem(req).readdir(
        ino, static_cast<uint64_t>(off), [&](const DirEntry& entry) {
          name.assign(entry.name);
          struct stat attr {};
          attr.st_ino = entry.ino;
          attr.st_mode = DTTOIF(entry.type);
          size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &attr,
                                          static_cast<off_t>(entry.next_cookie));
          if (need > size - used) return false;
          used += need;
          return true;
        });
    if (!st && used == 0) {
      reply_error(req, st.error());
      return;
    }
    fuse_reply_buf(req, buf.data(), used);
  });
}

void pfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* /*fi*/) {
  guarded(req, [&] { reply_status(req, filesystem(req).fsync(ino, datasync != 0)); });
}

// ---------------------------------------------------------------------------
// Filesystem-wide

void pfs_statfs(fuse_req_t req, fuse_ino_t /*ino*/) {
  guarded(req, [&] {
    StatFs s = filesystem(req).statfs();
    struct statvfs v {};
    v.f_bsize = s.block_size;
    v.f_frsize = s.block_size;
    v.f_blocks = s.blocks;
    v.f_bfree = s.blocks_free;
    v.f_bavail = s.blocks_free;
    v.f_files = s.files;
    v.f_ffree = s.files_free;
    v.f_favail = s.files_free;
    v.f_namemax = s.name_max;
    fuse_reply_statfs(req, &v);
  });
}

void pfs_access(fuse_req_t req, fuse_ino_t /*ino*/, int /*mask*/) {
  // With default_permissions the kernel checks; this is not even called.
  fuse_reply_err(req, 0);
}

// ---------------------------------------------------------------------------
// Extended attributes

// Answers the size protocol of getxattr/listxattr: size 0 asks for the
// length, a too small buffer is ERANGE.
void reply_sized(fuse_req_t req, size_t size, std::string_view value) {
  if (size == 0) {
    fuse_reply_xattr(req, value.size());
  } else if (size < value.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}

void pfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                  int flags) {
  guarded(req, [&] {
    // POSIX ACLs arrive here checked and normalized by the kernel
    // (vfs_set_acl: owner or CAP_FOWNER, posix_acl_valid), which also drops
    // its cached ACLs and attributes once we answer (fuse_set_acl), and
    // after every chmod (fuse_setattr): a stat or getfacl after either asks
    // us again, so the mode and ACL the core changed together are never
    // seen stale. The setgid bit goes as posix_acl_update_mode would drop
    // it, when the kernel says so (killpriv.h).
    if (request_kills_acl_sgid()) flags |= kXattrKillSgid;
    reply_status(req, filesystem(req).setxattr(ino, name, std::string_view(value, size), flags));
  });
}

void pfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  guarded(req, [&] {
    context(req)->getxattr_requests.fetch_add(1, std::memory_order_relaxed);
    Result<std::string> value = filesystem(req).getxattr(ino, name);
    if (!value) {
      reply_error(req, value.error());
      return;
    }
    reply_sized(req, size, *value);
  });
}

void pfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  guarded(req, [&] {
    Result<std::vector<std::string>> names = filesystem(req).listxattr(ino);
    if (!names) {
      reply_error(req, names.error());
      return;
    }
    std::string list;
    for (const std::string& n : *names) {
      list += n;
      list += '\0';
    }
    reply_sized(req, size, list);
  });
}

void pfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  guarded(req, [&] { reply_status(req, filesystem(req).removexattr(ino, name)); });
}

// ---------------------------------------------------------------------------
// Control ioctls

void pfs_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void* /*arg*/, fuse_file_info* fi,
               unsigned flags, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  guarded(req, [&] {
    if (flags & FUSE_IOCTL_COMPAT) {
      fuse_reply_err(req, ENOSYS);
      return;
    }
    handle_ioctl(req, ino, cmd, fi, in_buf, in_bufsz, out_bufsz);
  });
}

// The kernel hands copy_file_range(2) (and so cp) to us; the core shares
// whole blocks (reflink) and copies only unaligned heads and tails.
void pfs_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, fuse_file_info* /*fi_in*/,
                         fuse_ino_t ino_out, off_t off_out, fuse_file_info* /*fi_out*/, size_t len,
                         int flags) {
  guarded(req, [&] {
    if (flags != 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    // As generic_copy_file_checks: refused at the size limit before
    // anything is dropped.
    if (static_cast<uint64_t>(off_out) >= kMaxFileSize) {
      fuse_reply_err(req, EFBIG);
      return;
    }
    if (Status st = drop_privileges(req, ino_out, unflagged_kill(req)); !st) {
      reply_error(req, st.error());
      return;
    }
    Result<uint64_t> n = filesystem(req).copy_range(ino_in, static_cast<uint64_t>(off_in), ino_out,
                                                    static_cast<uint64_t>(off_out), len);
    if (!n) {
      reply_error(req, n.error());
      return;
    }
    fuse_reply_write(req, *n);
  });
}

}  // namespace

Status drop_privileges(fuse_req_t req, fuse_ino_t ino, KillPriv kill) {
  Result<bool> dropped = filesystem(req).drop_privileges(ino, kill);
  if (!dropped) return std::unexpected(dropped.error());
  // The kernel no longer changes the mode itself (killpriv.h), and after a
  // write it refetches only size and times: without this, a stat(STATX_MODE)
  // or an exec right after the write would see the old setuid bit until the
  // attribute timeout. An offset of -1 drops attributes, not pages, and
  // takes no page lock, so it can be sent from the handler, before the reply.
  fuse_session* se = context(req)->session;
  if (*dropped && se) fuse_lowlevel_notify_inval_inode(se, ino, -1, 0);
  return {};
}

KillPriv unflagged_kill(fuse_req_t req) {
  return fuse_req_ctx(req)->uid == 0 ? KillPriv::kCaps : KillPriv::kCapsAndSuid;
}

fuse_lowlevel_ops make_poisonfs_ops() {
  fuse_lowlevel_ops ops{};
  ops.init = pfs_init;
  ops.destroy = pfs_destroy;
  ops.lookup = pfs_lookup;
  ops.forget = pfs_forget;
  ops.forget_multi = pfs_forget_multi;
  ops.getattr = pfs_getattr;
  ops.setattr = pfs_setattr;
  ops.readlink = pfs_readlink;
  ops.mknod = pfs_mknod;
  ops.mkdir = pfs_mkdir;
  ops.unlink = pfs_unlink;
  ops.rmdir = pfs_rmdir;
  ops.symlink = pfs_symlink;
  ops.rename = pfs_rename;
  ops.link = pfs_link;
  ops.open = pfs_open;
  ops.read = pfs_read;
  ops.write = pfs_write;
  ops.flush = pfs_flush;
  ops.release = pfs_release;
  ops.fsync = pfs_fsync;
  ops.opendir = pfs_opendir;
  ops.readdir = pfs_readdir;
  ops.releasedir = pfs_releasedir;
  ops.fsyncdir = pfs_fsyncdir;
  ops.statfs = pfs_statfs;
  ops.setxattr = pfs_setxattr;
  ops.getxattr = pfs_getxattr;
  ops.listxattr = pfs_listxattr;
  ops.removexattr = pfs_removexattr;
  ops.access = pfs_access;
  ops.create = pfs_create;
  ops.ioctl = pfs_ioctl;
  ops.copy_file_range = pfs_copy_file_range;
  ops.fallocate = pfs_fallocate;
  ops.lseek = pfs_lseek;
  return ops;
}

}  // namespace poisonfs::fuse
