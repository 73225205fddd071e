// The control surface of the daemon: the poisonfs ioctls (see
// include/poisonfs/ioctl.h). Restricted FUSE ioctls carry fixed-size records
// whose size is in the command, so the kernel copies them in and out.
//
// Who may call what: STAT, FSMAP (and FSMAP_PACKED) and PATHS show the whole device and every
// name, so only root and the user who mounted may use them (like GETFSMAP,
// which needs CAP_SYS_ADMIN). BMAP shows a file the caller has open.
// CLONE_RANGE needs the destination open for writing and the source open
// for reading by the calling process, as FICLONERANGE does, and like any
// write it drops the destination's setuid/setgid bits. INJECT,
// BADBLOCKS, EVENTS and SCRUB change or show the device: root and the
// mounting user only. FILE_POISON shows a file the caller has open; STATUS is for all.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fs/fsmap_pack.h"
#include "invalidator.h"
#include "ops.h"
#include "poisonfs/ioctl.h"

namespace poisonfs::fuse {
namespace {

MountContext& context(fuse_req_t req) { return *static_cast<MountContext*>(fuse_req_userdata(req)); }

bool may_control(fuse_req_t req) {
  uid_t uid = fuse_req_ctx(req)->uid;
  return uid == 0 || uid == context(req).owner_uid;
}

template <class Record>
void reply_record(fuse_req_t req, const Record& rec, size_t out_bufsz) {
  if (out_bufsz < sizeof rec) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  fuse_reply_ioctl(req, 0, &rec, sizeof rec);
}

// Copies the request's input record; false (and EINVAL replied) if short.
template <class Record>
bool take_input(fuse_req_t req, const void* in_buf, size_t in_bufsz, Record* rec) {
  if (in_bufsz < sizeof *rec) {
    fuse_reply_err(req, EINVAL);
    return false;
  }
  std::memcpy(rec, in_buf, sizeof *rec);
  return true;
}

void reply_stat(fuse_req_t req, size_t out_bufsz) {
  FsInfo info = context(req).fs->info();
  poisonfs_stat st{};
  st.device_bytes = info.device_bytes;
  st.block_size = info.block_size;
  st.total_blocks = info.total_blocks;
  st.journal_start = info.journal_start;
  st.journal_blocks = info.journal_blocks;
  st.inode_start = info.inode_start;
  st.inode_blocks = info.inode_blocks;
  st.inode_count = info.inode_count;
  st.data_start = info.data_start;
  st.data_blocks = info.data_blocks;
  st.free_blocks = info.free_blocks;
  st.pending_free = info.pending_free;
  st.inodes_used = info.inodes_used;
  st.extent_records = info.extent_records;
  st.journal_commits = info.journal_commits;
  st.version = info.version;
  st.byte_granular = info.byte_granular ? 1 : 0;
  st.csum_start = info.csum_start;
  st.csum_blocks = info.csum_blocks;
  st.checksum_flags = (info.data_checksums ? POISONFS_STAT_DATA_CHECKSUMS : 0) |
                      (info.verify_checksums ? POISONFS_STAT_VERIFY_CHECKSUMS : 0);
  const bool killpriv_v2 = context(req).killpriv_v2.load(std::memory_order_relaxed);
  st.session_flags = (killpriv_v2 ? POISONFS_STAT_KILLPRIV_V2 : 0) |
                     (context(req).serves_direct_io() ? POISONFS_STAT_DIRECT_IO : 0);
  st.getxattr_requests = context(req).getxattr_requests.load(std::memory_order_relaxed);
  std::memcpy(st.uuid, info.uuid.data(), std::min(info.uuid.size(), sizeof st.uuid - 1));
  reply_record(req, st, out_bufsz);
}

// The kernel's view of a descriptor of the calling process, read from
// /proc without touching the file itself (a stat could call back into this
// very daemon).
struct FdInfo {
  unsigned flags = 0;
  long mnt_id = -1;
  uint64_t ino = 0;
};

bool read_fdinfo(pid_t pid, int64_t fd, FdInfo* out) {
  if (fd < 0 || fd > INT32_MAX) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/fdinfo/" + std::to_string(fd));
  if (!in) return false;
  std::string key;
  bool have_ino = false;
  while (in >> key) {
    if (key == "flags:") in >> std::oct >> out->flags >> std::dec;
    else if (key == "mnt_id:") in >> out->mnt_id;
    else if (key == "ino:") have_ino = static_cast<bool>(in >> out->ino);
    else in.ignore(4096, '\n');
  }
  return have_ino && out->mnt_id >= 0;
}

// This mount's id (the first field of its /proc/self/mountinfo line).
long own_mount_id(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    long id;
    std::string parent, devno, root, point;
    fields >> id >> parent >> devno >> root >> point;
    if (point == mountpoint && line.find(" fuse.poisonfs ") != std::string::npos) return id;
  }
  return -1;
}

void clone_range(fuse_req_t req, fuse_ino_t dst, fuse_file_info* fi, const void* in_buf, size_t in_bufsz) {
  poisonfs_clone_range args;
  if (!take_input(req, in_buf, in_bufsz, &args)) return;
  // As FICLONERANGE: the destination must be open for writing, not append-only.
  if ((fi->fh & O_ACCMODE) == O_RDONLY || (fi->fh & O_APPEND)) {
    fuse_reply_err(req, EBADF);
    return;
  }
  FdInfo src;
  // An O_PATH descriptor has access mode "O_RDONLY" but grants no reading:
  // anyone who may search the directory gets one, even of a 0600 file.
  if (!read_fdinfo(fuse_req_ctx(req)->pid, args.src_fd, &src) || (src.flags & O_ACCMODE) == O_WRONLY ||
      (src.flags & O_PATH)) {
    fuse_reply_err(req, EBADF);
    return;
  }
  if (src.mnt_id != own_mount_id(context(req).mountpoint)) {
    fuse_reply_err(req, EXDEV);
    return;
  }
  // As the kernel does before FICLONERANGE or any write (file_remove_privs);
  // it cannot do it here, since it does not know that this ioctl writes.
  if (Status killed = drop_privileges(req, dst, unflagged_kill(req)); !killed) {
    fuse_reply_err(req, killed.error().errno_value());
    return;
  }
  Status st = context(req).fs->clone_range(src.ino, args.src_offset, dst, args.dest_offset, args.src_length);
  if (!st) {
    fuse_reply_err(req, st.error().errno_value());
    return;
  }
  // The kernel cannot know that dst changed (unlike copy_file_range, which
  // it invalidates itself): drop its cached size and pages before the
  // caller returns, or it reads the old bytes (keep_cache) and the old size.
  if (CacheInvalidator* invalidator = context(req).invalidator) invalidator->push(dst, 0, 0);
  reply_after_invalidations(req, [req] { fuse_reply_ioctl(req, 0, nullptr, 0); });
}

void bmap(fuse_req_t req, fuse_ino_t ino, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto page = std::make_unique<poisonfs_bmap>();
  if (!take_input(req, in_buf, in_bufsz, page.get())) return;
  auto entries = context(req).fs->bmap(ino);
  if (!entries) {
    fuse_reply_err(req, entries.error().errno_value());
    return;
  }
  uint64_t first = page->cursor;
  std::memset(page.get(), 0, sizeof *page);
  for (uint64_t i = first; i < entries->size() && page->count < POISONFS_BMAP_MAX; ++i) {
    const BmapEntry& e = (*entries)[i];
    poisonfs_bmap_rec& r = page->recs[page->count++];
    r.file_offset = e.file_offset;
    r.physical = e.physical;
    r.length = e.length;
    r.flags = (e.shared ? POISONFS_BMAP_SHARED : 0) | (e.unwritten ? POISONFS_BMAP_UNWRITTEN : 0) |
              (e.poisoned ? POISONFS_BMAP_POISONED : 0);
  }
  page->cursor = first + page->count;
  if (page->cursor >= entries->size()) page->flags = POISONFS_OF_LAST;
  reply_record(req, *page, out_bufsz);
}

// Moves a GETFSMAP-style cursor (an offset and how many records there were
// returned already) past the first `count` records of a page.
template <class Records>
void advance_cursor(uint64_t& cursor_physical, uint32_t& cursor_skip, const Records& recs, size_t count) {
  if (count == 0) return;
  uint64_t last = recs[count - 1].physical;
  uint32_t same = 0;
  for (size_t i = count; i > 0 && recs[i - 1].physical == last; --i) ++same;
  // Records at `last` from an earlier page count too.
  cursor_skip = (last == cursor_physical ? cursor_skip : 0) + same;
  cursor_physical = last;
}

// Filesystem::fsmap of a page's query, resumed at its cursor: the records
// already returned at the cursor's offset are skipped. fn returns false to stop.
template <class Page>
Status fsmap_from_cursor(Filesystem& fs, const Page& page, const std::function<bool(const FsmapEntry&)>& fn) {
  uint64_t from = std::max(page.start, page.cursor_physical);
  uint64_t end = page.length > UINT64_MAX - page.start ? UINT64_MAX : page.start + page.length;
  uint32_t skip = page.cursor_physical >= page.start ? page.cursor_skip : 0;
  return fs.fsmap(from, end - from, [&](const FsmapEntry& e) {
    if (skip > 0 && e.physical == from) {
      --skip;
      return true;
    }
    return fn(e);
  });
}

void fsmap(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto page = std::make_unique<poisonfs_fsmap>();
  if (!take_input(req, in_buf, in_bufsz, page.get())) return;
  page->count = 0;
  page->flags = POISONFS_OF_LAST;
  Status st = fsmap_from_cursor(*context(req).fs, *page, [&](const FsmapEntry& e) {
    if (page->count == POISONFS_FSMAP_MAX) {
      page->flags = 0;
      return false;
    }
    poisonfs_fsmap_rec& r = page->recs[page->count++];
    r.physical = e.physical;
    r.length = e.length;
    r.inode = e.ino;
    r.file_offset = e.file_offset;
    r.owner = static_cast<uint32_t>(e.owner);
    r.flags = (e.shared ? POISONFS_FSMAP_SHARED : 0) | (e.poisoned ? POISONFS_FSMAP_POISONED : 0);
    return true;
  });
  if (!st) {
    fuse_reply_err(req, st.error().errno_value());
    return;
  }
  advance_cursor(page->cursor_physical, page->cursor_skip, page->recs, page->count);
  reply_record(req, *page, out_bufsz);
}

// FSMAP and the paths of its data owners in one packed page.
void fsmap_packed(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto page = std::make_unique<poisonfs_fsmap_packed>();
  if (!take_input(req, in_buf, in_bufsz, page.get())) return;
  FsmapPacker packer(page->buf);
  bool full = false;
  Filesystem& fs = *context(req).fs;
  Status st = fsmap_from_cursor(fs, *page, [&](const FsmapEntry& e) {
    full = !packer.add(e);
    return !full;
  });
  if (!st) {
    fuse_reply_err(req, st.error().errno_value());
    return;
  }
  size_t collected = packer.records().size();
  size_t kept = packer.finish([&fs](std::span<const Ino> inos, PathList& names) { fs.paths(inos, names); });
  page->count = static_cast<uint32_t>(kept);
  page->used = static_cast<uint32_t>(packer.used());
  page->flags = full || kept < collected ? 0 : POISONFS_OF_LAST;
  advance_cursor(page->cursor_physical, page->cursor_skip, packer.records(), kept);
  if (out_bufsz < sizeof *page) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  // Only what is used: the kernel copies back as many bytes as the reply has.
  fuse_reply_ioctl(req, 0, page.get(), offsetof(poisonfs_fsmap_packed, buf) + page->used);
}

// The names of ino, or nothing after replying the error.
std::optional<std::vector<std::string>> names_or_reply(fuse_req_t req, uint64_t ino) {
  auto names = context(req).fs->paths(ino);
  if (!names) {
    fuse_reply_err(req, names.error().errno_value());
    return std::nullopt;
  }
  return std::move(*names);
}

// Copies names[first..] NUL-terminated into buf while they fit; returns the
// index of the first name left out.
size_t put_names(const std::vector<std::string>& names, size_t first, char* buf, size_t size, uint32_t& count) {
  size_t at = 0;
  count = 0;
  for (; first < names.size() && at + names[first].size() + 1 <= size; ++first) {
    std::memcpy(buf + at, names[first].c_str(), names[first].size() + 1);
    at += names[first].size() + 1;
    ++count;
  }
  return first;
}

void paths(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto rec = std::make_unique<poisonfs_paths>();
  if (!take_input(req, in_buf, in_bufsz, rec.get())) return;
  auto names = names_or_reply(req, rec->inode);
  if (!names) return;
  size_t next = put_names(*names, 0, rec->buf, sizeof rec->buf, rec->count);
  rec->flags = next < names->size() ? 1 : 0;  // truncated
  reply_record(req, *rec, out_bufsz);
}

void paths_batch(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto rec = std::make_unique<poisonfs_paths_batch>();
  if (!take_input(req, in_buf, in_bufsz, rec.get())) return;
  uint32_t count = std::min<uint32_t>(rec->count, POISONFS_PATHS_BATCH_MAX);
  size_t at = 0;
  rec->done = 0;
  for (uint32_t i = 0; i < count; ++i) {
    auto names = context(req).fs->paths(rec->inodes[i]);
    size_t need = 1;
    if (names)
      for (const std::string& p : *names) need += p.size() + 1;
    if (at + need > sizeof rec->buf) break;
    if (names)
      for (const std::string& p : *names) {
        std::memcpy(rec->buf + at, p.c_str(), p.size() + 1);
        at += p.size() + 1;
      }
    rec->buf[at++] = '\0';
    ++rec->done;
  }
  reply_record(req, *rec, out_bufsz);
}

void paths_from(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  static_assert(sizeof(poisonfs_paths_from) <= 16383, "a restricted FUSE ioctl carries at most 16383 bytes");
  auto rec = std::make_unique<poisonfs_paths_from>();
  if (!take_input(req, in_buf, in_bufsz, rec.get())) return;
  auto names = names_or_reply(req, rec->inode);
  if (!names) return;
  size_t next = put_names(*names, std::min<size_t>(rec->skip, names->size()), rec->buf, sizeof rec->buf, rec->count);
  if (rec->count == 0 && next < names->size()) {
    rec->buf[0] = '\0';  // a path longer than any reply: sent as ""
    rec->count = 1;
    ++next;
  }
  rec->flags = next == names->size() ? POISONFS_OF_LAST : 0;
  reply_record(req, *rec, out_bufsz);
}

void inject(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  poisonfs_inject args;
  if (!take_input(req, in_buf, in_bufsz, &args)) return;
  auto r = context(req).fs->inject_poison(args.offset, args.length, args.flags & POISONFS_POISON_LATENT);
  if (!r) {
    fuse_reply_err(req, r.error().errno_value());
    return;
  }
  args.out_offset = r->offset;
  args.out_length = r->length;
  reply_after_invalidations(req, [req, args, out_bufsz] { reply_record(req, args, out_bufsz); });
}

// Fills one page of ranges from `all`, continuing at the cursor.
template <class Range, class Fill>
void reply_ranges(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz,
                  const std::vector<Range>& all, Fill fill) {
  auto page = std::make_unique<poisonfs_ranges>();
  if (!take_input(req, in_buf, in_bufsz, page.get())) return;
  uint64_t first = page->cursor;
  page->count = 0;
  page->flags = 0;
  for (uint64_t i = first; i < all.size() && page->count < POISONFS_RANGES_MAX; ++i)
    fill(all[i], &page->recs[page->count++]);
  page->cursor = first + page->count;
  if (page->cursor >= all.size()) page->flags = POISONFS_OF_LAST;
  reply_record(req, *page, out_bufsz);
}

void badblocks(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  reply_ranges(req, in_buf, in_bufsz, out_bufsz, context(req).fs->badblocks(),
               [](const PoisonRange& r, poisonfs_range* out) {
                 *out = poisonfs_range{r.offset, r.length, r.latent ? POISONFS_POISON_LATENT : 0u, 0};
               });
}

void file_poison(fuse_req_t req, fuse_ino_t ino, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto ranges = context(req).fs->file_poison(ino);
  if (!ranges) {
    fuse_reply_err(req, ranges.error().errno_value());
    return;
  }
  reply_ranges(req, in_buf, in_bufsz, out_bufsz, *ranges, [](const FilePoison& r, poisonfs_range* out) {
    *out = poisonfs_range{r.file_offset, r.length, 0, 0};
  });
}

void events(fuse_req_t req, const void* in_buf, size_t in_bufsz, size_t out_bufsz) {
  auto page = std::make_unique<poisonfs_events>();
  if (!take_input(req, in_buf, in_bufsz, page.get())) return;
  uint64_t dropped = 0;
  auto list = context(req).fs->events(page->after_seq, 256, &dropped);
  size_t at = 0;
  page->count = 0;
  page->flags = POISONFS_OF_LAST;
  page->dropped = dropped;
  page->last_seq = page->after_seq;
  for (const Event& e : list) {
    std::string line = event_to_json(e) + "\n";
    if (at + line.size() + 1 > sizeof page->buf) {
      page->flags = 0;
      break;
    }
    std::memcpy(page->buf + at, line.data(), line.size());
    at += line.size();
    page->last_seq = e.seq;
    ++page->count;
  }
  page->buf[at] = '\0';
  reply_record(req, *page, out_bufsz);
}

void status(fuse_req_t req, size_t out_bufsz) {
  Health h = context(req).fs->health();
  poisonfs_status st{};
  st.shutdown = h.shutdown ? 1 : 0;
  st.known_poison_bytes = h.known_poison_bytes;
  st.latent_poison_bytes = h.latent_poison_bytes;
  st.quarantined_bytes = h.quarantined_bytes;
  st.events = h.events;
  std::memcpy(st.reason, h.reason.data(), std::min(h.reason.size(), sizeof st.reason - 1));
  reply_record(req, st, out_bufsz);
}

void run_scrub(fuse_req_t req, size_t out_bufsz) {
  auto rep = context(req).fs->scrub(nullptr);
  if (!rep) {
    fuse_reply_err(req, rep.error().errno_value());
    return;
  }
  poisonfs_scrub out{};
  out.bytes_scanned = rep->bytes_scanned;
  out.latent_found = rep->latent_found;
  out.known_poison_bytes = rep->known_poison_bytes;
  out.quarantine_cleared_bytes = rep->quarantine_cleared_bytes;
  out.ranges_notified = rep->ranges_notified;
  out.blocks_verified = rep->blocks_verified;
  out.checksum_mismatches = rep->checksum_mismatches;
  out.flags = rep->checksums ? POISONFS_SCRUB_CHECKSUMS : 0;
  reply_after_invalidations(req, [req, out, out_bufsz] { reply_record(req, out, out_bufsz); });
}

// The whole scrub in one request (no progress over the mount), run by the
// background worker: the session loop goes on serving the mount meanwhile
// (the core locks the filesystem one chunk at a time).
void scrub(fuse_req_t req, size_t out_bufsz) {
  if (SerialWorker* background = context(req).background) {
    background->post([req, out_bufsz] { run_scrub(req, out_bufsz); });
  } else {
    run_scrub(req, out_bufsz);  // no session loop (never while requests are served)
  }
}

}  // namespace

// Runs reply once the invalidations queued so far have been sent (see
// CacheInvalidator::then). REQUIRES: reply does not throw.
void reply_after_invalidations(fuse_req_t req, std::function<void()> reply) {
  if (CacheInvalidator* invalidator = context(req).invalidator) {
    invalidator->then(std::move(reply));
  } else {
    reply();  // no session loop (never while requests are served)
  }
}

void handle_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, fuse_file_info* fi, const void* in_buf,
                  size_t in_bufsz, size_t out_bufsz) {
  const bool control = cmd == static_cast<unsigned>(POISONFS_IOC_STAT) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_FSMAP) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_PATHS) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_PATHS_BATCH) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_PATHS_FROM) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_FSMAP_PACKED) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_INJECT) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_BADBLOCKS) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_EVENTS) ||
                       cmd == static_cast<unsigned>(POISONFS_IOC_SCRUB);
  if (control && !may_control(req)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  switch (cmd) {
    case POISONFS_IOC_STAT: return reply_stat(req, out_bufsz);
    case POISONFS_IOC_CLONE_RANGE: return clone_range(req, ino, fi, in_buf, in_bufsz);
    case POISONFS_IOC_BMAP: return bmap(req, ino, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_FSMAP: return fsmap(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_PATHS: return paths(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_PATHS_BATCH: return paths_batch(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_PATHS_FROM: return paths_from(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_FSMAP_PACKED: return fsmap_packed(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_INJECT: return inject(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_BADBLOCKS: return badblocks(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_FILE_POISON: return file_poison(req, ino, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_EVENTS: return events(req, in_buf, in_bufsz, out_bufsz);
    case POISONFS_IOC_STATUS: return status(req, out_bufsz);
    case POISONFS_IOC_SCRUB: return scrub(req, out_bufsz);
    default: fuse_reply_err(req, ENOTTY);
  }
}

}  // namespace poisonfs::fuse
