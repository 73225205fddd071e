// The filesystem core's internal state and helpers, shared by the files of
// src/fs/ (namespace.cc: names and inodes; data.cc: read/write/fallocate;
// xattr.cc; filesystem.cc: mount, load, unmount).
//
// Lock order (one level): FsImpl::mutex_ (shared for pure reads: lookup,
// getattr, read, readdir, readlink, getxattr, listxattr, statfs; exclusive
// for everything that changes state; a lookup's kernel reference is an
// atomic count, see Inode::nlookup). Nothing else is locked inside it, so
// there is no order to get wrong. Public methods lock; functions with a
// leading underscore or taking a Transaction& assume the lock is held.
#pragma once

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "alloc/allocator.h"
#include "csum/checksums.h"
#include "format/layout.h"
#include "fs/extent_map.h"
#include "journal/journal.h"
#include "rmap/rmap.h"
#include "poisonfs/filesystem.h"

namespace poisonfs {

// A chain of record blocks owned by one inode (see layout.h).
struct Chain {
  ChainKind kind = ChainKind::kExtents;
  std::vector<uint64_t> blocks;       // in link order
  std::vector<SlotRef> free_slots;    // empty slots, reused first
};

struct Dirent {
  Ino ino = 0;
  uint8_t type = 0;
  SlotRef slot;
};

struct Xattr {
  std::string value;
  SlotRef slot;
};

struct Link {
  Ino parent = 0;
  std::string name;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct Inode {
  InodeRec rec;
  Chain chain;          // extents (regular, symlink) or dirents (directory)
  Chain xattr_chain;
  ExtentMap extents;
  std::unordered_map<std::string, Dirent, StringHash, std::equal_to<>> entries;
  std::map<std::string, Xattr, std::less<>> xattrs;
  uint32_t open_count = 0;
  // References the kernel holds (EntryRef::kKernel answers less forgets).
  // Atomic: a lookup counts under the shared lock; every decision to free
  // takes the exclusive one, so no count can come between.
  std::atomic<uint64_t> nlookup{0};
  bool times_dirty = false;  // rec times newer than the media copy
  uint32_t subdirs = 0;
  std::vector<Link> links;  // every name of this inode (for paths)

  bool is_dir() const;
  bool is_reg() const;
  bool is_lnk() const;
  void count_ref(EntryRef ref) {
    if (ref == EntryRef::kKernel) nlookup.fetch_add(1, std::memory_order_relaxed);
  }
  // No name, no open file, no kernel reference: nothing can reach it.
  bool unreferenced() const {
    return rec.nlink == 0 && open_count == 0 && nlookup.load(std::memory_order_relaxed) == 0;
  }
};

// Times are int64 nanoseconds since the epoch on media: 1677-09-21 to
// 2262-04-11 (see InodeRec).
inline constexpr int64_t kNsPerSec = 1'000'000'000;
int64_t now_ns();
// A time outside that range is clamped to its nearest end, as ext4 and XFS
// clamp to theirs, instead of wrapping around.
int64_t ns_of(const Timespec& t);
// nsec always in [0, 1e9): a time before the epoch has a negative sec.
Timespec timespec_of(int64_t ns);
// The read-only xattr that shows a file's known poison.
inline constexpr std::string_view kPoisonXattr = "user.poisonfs.poison";
// File capabilities: privileges granted to one content (see KillPriv).
inline constexpr std::string_view kCapabilityXattr = "security.capability";
std::string file_poison_json(const std::vector<FilePoison>& ranges);
OwnerKind owner_kind_of(ChainKind kind);
const char* chain_what(ChainKind kind);  // "extents", "directory", "xattr" (event owners)

// The mode and ACLs a new inode starts with (FsImpl::new_inode_acls): its
// access ACL and, for a directory, its default ACL, in their xattr form
// ("" for none).
struct NewInodeAcls {
  uint32_t mode = 0;
  std::string access;
  std::string default_acl;
};
// Why a stored xattr that is an ACL is bad (fsck, mount): it does not parse,
// is empty, or sits where no ACL may (a default ACL on a non-directory, any
// ACL on a symlink). nullopt when it is fine or no ACL.
std::optional<std::string> stored_acl_problem(const InodeRec& rec, std::string_view name,
                                              std::string_view value);

// fsck state: when a FsImpl loads with one, bad records are reported and
// skipped instead of failing the mount (see check.cc).
struct CheckState {
  bool repair = false;
  std::vector<std::string> problems;
  std::vector<std::string> repairs;
  std::vector<std::pair<uint64_t, size_t>> bad_records;  // media ranges to clear on repair
  // Media poison under lost records: cleared (zeroed) on repair, before the
  // records are rewritten.
  std::vector<std::pair<uint64_t, uint64_t>> poison_to_clear;
  // Chain headers to rewrite on repair (a chain cut where poison lost a link).
  std::vector<std::pair<uint64_t, ChainHeader>> header_rewrites;
  bool fatal = false;
};

class FsImpl final : public Filesystem {
 public:
  FsImpl(std::unique_ptr<Media> media, const Superblock& sb);
  ~FsImpl() override;

  // Loads every record into the indexes; see filesystem.cc.
  Status load();

  Status unmount() override;
  using Filesystem::link;
  using Filesystem::lookup;
  using Filesystem::mkdir;
  using Filesystem::mknod;
  using Filesystem::symlink;
  Result<Attr> lookup(Ino parent, std::string_view name, EntryRef ref) override;
  Result<Attr> getattr(Ino ino) override;
  Result<Attr> setattr(Ino ino, const SetAttr& set, const Caller& caller) override;
  Result<Attr> mknod(Ino parent, std::string_view name, uint32_t mode, uint64_t rdev,
                     const Caller& caller, EntryRef ref) override;
  Result<Attr> mkdir(Ino parent, std::string_view name, uint32_t mode, const Caller& caller,
                     EntryRef ref) override;
  Result<Attr> symlink(Ino parent, std::string_view name, std::string_view target,
                       const Caller& caller, EntryRef ref) override;
  Result<std::string> readlink(Ino ino) override;
  Result<Attr> link(Ino ino, Ino new_parent, std::string_view new_name, EntryRef ref) override;
  Status unlink(Ino parent, std::string_view name) override;
  Status rmdir(Ino parent, std::string_view name) override;
  Status rename(Ino parent, std::string_view name, Ino new_parent, std::string_view new_name,
                unsigned flags) override;
  using Filesystem::forget;
  Status forget(std::span<const Forget> forgets) override;
  Status open(Ino ino) override;
  Status release(Ino ino) override;
  Result<size_t> read(Ino ino, uint64_t off, size_t len,
                      const std::function<void(std::span<const ReadSegment>)>& sink) override;
  using Filesystem::write;
  Result<size_t> write(Ino ino, uint64_t off, std::span<const std::byte> data, OpenFileId from) override;
  Status flush(Ino ino, OpenFileId file) override;
  Status settle_recovery(Ino ino, OpenFileId file) override;
  Result<bool> drop_privileges(Ino ino, KillPriv kill) override;
  Status fallocate(Ino ino, int mode, uint64_t off, uint64_t len) override;
  Result<uint64_t> seek(Ino ino, uint64_t off, SeekFor what) override;
  Status fsync(Ino ino, bool datasync) override;
  Status readdir(Ino ino, uint64_t cookie, const std::function<bool(const DirEntry&)>& fn) override;
  Result<std::string> getxattr(Ino ino, std::string_view name) override;
  Status setxattr(Ino ino, std::string_view name, std::string_view value, int flags) override;
  Result<std::vector<std::string>> listxattr(Ino ino) override;
  Status removexattr(Ino ino, std::string_view name) override;
  Status clone_range(Ino src, uint64_t src_off, Ino dst, uint64_t dst_off, uint64_t len) override;
  Result<uint64_t> copy_range(Ino src, uint64_t src_off, Ino dst, uint64_t dst_off, uint64_t len) override;
  Result<std::vector<BmapEntry>> bmap(Ino ino) override;
  Status fsmap(uint64_t start, uint64_t length, const std::function<bool(const FsmapEntry&)>& fn) override;
  Result<std::vector<std::string>> paths(Ino ino) override;
  void paths(std::span<const Ino> inos, PathList& out) override;
  Status notify_failure(uint64_t offset, uint64_t length, int flags) override;
  Result<PoisonRange> inject_poison(uint64_t offset, uint64_t length, bool latent) override;
  std::vector<PoisonRange> badblocks() override;
  Result<std::vector<FilePoison>> file_poison(Ino ino) override;
  std::vector<Event> events(uint64_t after_seq, size_t max, uint64_t* dropped) override;
  Health health() override;
  bool has_poison() const override { return !poison().empty(); }
  Result<ScrubReport> scrub(const std::function<void(uint64_t done, uint64_t total)>& progress) override;
  void set_invalidate_hook(std::function<void(Ino, uint64_t, uint64_t)> hook) override;
  Result<size_t> read_direct(Ino ino, uint64_t off, size_t len,
                             const std::function<void(std::span<const ReadSegment>)>& sink) override;
  StatFs statfs() override;
  FsInfo info() override;

 private:
  // --- lookup helpers (lock held)
  Result<Inode*> get(Ino ino);
  Result<Inode*> get_dir(Ino ino);
  Result<Inode*> _lookup(Ino parent, std::string_view name);
  Attr attr_of(const Inode& ino) const;
  static Status check_name(std::string_view name);

  // --- records and chains (lock held)
  void stage_inode(Transaction& tx, Inode& inode);
  Result<SlotRef> take_slot(Inode& owner, Chain& chain, Transaction& tx);
  Status reserve_slots(Inode& owner, Chain& chain, size_t count, Transaction& tx);
  void free_slot(Chain& chain, SlotRef slot, Transaction& tx);
  void release_chain(Inode& owner, Chain& chain, Transaction& tx, std::vector<BlockRange>& dropped);
  // Writes the records an extent edit changed into tx and updates the
  // reverse map; ranges nobody owns any more go to `freed`.
  // REQUIRES: enough free slots reserved.
  void stage_extent_edit(Inode& inode, ExtentEdit& edit, Transaction& tx, std::vector<BlockRange>& freed);
  // Commits tx, then releases what it dropped (after the commit, never before).
  Status commit(Transaction& tx, std::vector<BlockRange> dropped = {});
  // Commits what is staged and leaves tx and dropped empty for the next piece.
  Status commit_piece(Transaction& tx, std::vector<BlockRange>& dropped);
  // Operations over many extents (clone, punch) work in pieces of at most
  // this many extents, each one commit: a fragmented file can have more
  // extents than the journal holds records.
  size_t extents_per_commit() const;
  // The end of the first piece of [fb, end) of inode's blocks that holds at
  // most `max` extents (> fb).
  uint64_t piece_end(Inode& inode, uint64_t fb, uint64_t end, size_t max);

  // Allocates like Allocator::allocate and clears any poison under the new
  // blocks: free space is not patrolled, so latent poison may sit there, and
  // new blocks are always written whole before anything reads them.
  BlockRange allocate_clean(uint64_t count, uint64_t hint);

  // --- namespace (namespace.cc)
  Result<Inode*> new_inode(uint32_t mode, uint64_t rdev, const Caller& caller, Inode& parent);
  Status add_entry(Inode& dir, std::string_view name, Inode& child, Transaction& tx);
  void remove_entry(Inode& dir, std::string_view name, Transaction& tx);
  void drop_link(Inode& inode, Transaction& tx, std::vector<BlockRange>& dropped);
  void free_inode(Inode& inode, Transaction& tx, std::vector<BlockRange>& dropped);
  bool is_ancestor(Ino maybe_ancestor, Ino ino);
  Result<Attr> create_node(Ino parent, std::string_view name, uint32_t mode, uint64_t rdev,
                           const Caller& caller, std::string_view symlink_target, EntryRef ref);

  // --- xattrs and ACLs (xattr.cc)
  // Stores value as inode's xattr name (in its slot, or a new one).
  Status _put_xattr(Inode& inode, std::string_view name, std::string value, Transaction& tx);
  // Removes inode's xattr name; false when it has none.
  bool _drop_xattr(Inode& inode, std::string_view name, Transaction& tx);
  Status set_acl(Ino ino, std::string_view name, std::string_view value, bool kill_sgid);
  // chmod: the access ACL, if any, takes the new mode's permission bits
  // (posix_acl_chmod). REQUIRES: inode.rec.mode is the new mode.
  void chmod_access_acl(Inode& inode, Transaction& tx);
  // What a new inode of mode (as asked for, umask not applied) in dir
  // starts with (posix_acl_create): without a default ACL on dir the umask
  // applies; with one, the umask does not, the access ACL is the default
  // limited by the mode (none when equivalent to it), and a directory
  // inherits the default too. Symlinks get neither.
  Result<NewInodeAcls> new_inode_acls(const Inode& dir, uint32_t mode, uint32_t umask);
  Status _put_new_inode_acls(Inode& child, const NewInodeAcls& acls, Transaction& tx);

  // --- data (data.cc)
  // Every store of file data goes through these two: they keep the blocks'
  // checksums current (see src/csum/checksums.h). src null stores zeros.
  void store_data(uint64_t off, const std::byte* src, size_t len);
  void copy_data(uint64_t to, uint64_t from, size_t len);
  // The checksum `block` will have once its bytes [lo, hi) hold src (null:
  // zeros); 0 when that cannot be known (poison left in the block).
  uint32_t crc_after_store(uint64_t block, size_t lo, size_t hi, const std::byte* src);
  // Recovery: true when writing `data` at block-relative [lo, hi) of the
  // poisoned shared `block` gives back the content its checksum records.
  bool restores_recorded_content(uint64_t block, size_t lo, size_t hi, const std::byte* data);
  // The shared poisoned blocks under a recovery write of data at off that
  // it restores (sorted): written in place, healing every sharer.
  std::vector<uint64_t> healable_blocks(Inode& inode, uint64_t off, std::span<const std::byte> data);
  void record_heal(const std::vector<uint64_t>& healed);
  Result<size_t> _write(Inode& inode, uint64_t off, std::span<const std::byte> data, Transaction& tx,
                        std::vector<BlockRange>& dropped);
  Status _truncate(Inode& inode, uint64_t size, Transaction& tx, std::vector<BlockRange>& dropped);
  // Stages what kill takes from inode (see KillPriv); false when it has nothing to lose.
  bool _drop_privileges(Inode& inode, KillPriv kill, Transaction& tx);
  Status _punch(Inode& inode, uint64_t fb, uint64_t n, Transaction& tx, std::vector<BlockRange>& dropped);
  Status unmap_past_eof(Inode& inode, Transaction& tx, std::vector<BlockRange>& dropped);
  Status punch_in_pieces(Inode& inode, uint64_t fb, uint64_t n, Transaction& tx, std::vector<BlockRange>& dropped);
  Status _preallocate(Inode& inode, uint64_t fb, uint64_t n, Transaction& tx, std::vector<BlockRange>& dropped);
  Status zero_partial_block(Inode& inode, uint64_t off, Transaction& tx, std::vector<BlockRange>& dropped);
  Status zero_range_in_place(Inode& inode, uint64_t from, uint64_t to, Transaction& tx,
                             std::vector<BlockRange>& dropped);
  // Copy-on-write: gives the written blocks of [fb, fb+n) that other owners
  // share a private copy. Bytes in [keep_from, keep_to) are about to be
  // overwritten and are not copied.
  Status unshare(Inode& inode, uint64_t fb, uint64_t n, uint64_t keep_from, uint64_t keep_to,
                 Transaction& tx, std::vector<BlockRange>& dropped);
  // Length of the run starting at phys (at most max blocks) whose blocks are
  // all shared (true) or all private (false).
  std::pair<bool, uint64_t> sharing_run(uint64_t phys, uint64_t max) const;
  Result<std::pair<Inode*, Inode*>> get_regular_pair(Ino src, Ino dst);
  Status _clone(Inode& src, uint64_t src_fb, Inode& dst, uint64_t dst_fb, uint64_t n, Transaction& tx,
                std::vector<BlockRange>& dropped);
  Status clone_in_pieces(Inode& src, uint64_t src_fb, Inode& dst, uint64_t dst_fb, uint64_t n, Transaction& tx,
                         std::vector<BlockRange>& dropped, uint64_t& cloned);
  Result<uint64_t> _copy_bytes(Inode& src, uint64_t src_off, Inode& dst, uint64_t dst_off, uint64_t len,
                               Transaction& tx, std::vector<BlockRange>& dropped);
  uint64_t alloc_hint(Inode& inode, uint64_t fb);
  Result<size_t> _read_segments(Inode& inode, uint64_t off, size_t len, std::vector<ReadSegment>& out);

  // --- media failure (poison.cc)
  struct Invalidation {
    Ino ino;
    uint64_t offset, length;
  };
  // notify_failure with the lock held; cache invalidations are returned,
  // to be sent once the lock is dropped.
  Status _notify_failure(uint64_t offset, uint64_t length, int flags, std::vector<Invalidation>& inval);
  void run_invalidations(const std::vector<Invalidation>& inval);
  void rewrite_poisoned_block(uint64_t block, const std::byte* content);
  void repair_chain_block(Inode& inode, Chain& chain, uint64_t block);
  void repair_inode_block(uint64_t block);
  void repair_journal();
  void quarantine(BlockRange r);
  void record_event(Event e);
  // The common event: one device range, what was done, its owners.
  void record_event(EventKind kind, uint64_t offset, uint64_t length, std::string action,
                    std::vector<EventOwner> owners);
  void push_event_locked(Event e);  // events_mutex_ held
  // A failed save of the poison list's record becomes an event (poison.cc).
  void report_poison_persist_error();
  void shutdown(const std::string& reason);
  std::string first_path(Ino ino);
  std::string path_of(const Link& link);
  size_t path_length(const Link& link) const;
  void write_path(const Link& link, char* at, size_t length) const;
  // Read with the poison check: EIO if [off, off+len) holds known or latent
  // poison (latent found here is reported in *found), or with short_at_poison
  // the clean bytes before the first poisoned one.
  Result<size_t> _read(Ino ino, uint64_t off, size_t len, const std::function<void(std::span<const ReadSegment>)>& sink,
                       bool short_at_poison);
  // _read of an inode under the lock the caller holds (shared or exclusive).
  // Latent poison it meets is left in `consumed` for notify_read_latent,
  // which the caller runs once it has dropped the lock (notify_failure takes it).
  Result<size_t> _read_inode(Inode& inode, uint64_t off, size_t len,
                             const std::function<void(std::span<const ReadSegment>)>& sink,
                             bool short_at_poison, std::optional<PoisonRange>& consumed);
  void notify_read_latent(const std::optional<PoisonRange>& consumed);
  // The first poisoned device byte under segs (and the file position of it).
  std::optional<std::pair<PoisonRange, size_t>> first_poisoned(std::span<const ReadSegment> segs);
  Status replay_poison_list();
  // Latent poison met by an internal read (a copy-on-write or byte copy,
  // which never copy poisoned bytes): made known at once, so the operation's
  // EIO and the poison list agree, and queued for notify_failure, which
  // takes the lock and must run after the caller has dropped it (as _read
  // does). Callers declare a LatentNotifier before taking the lock.
  void consume_latent(uint64_t dev_off, uint64_t len);
  void notify_consumed_latent();
  class LatentNotifier {
   public:
    explicit LatentNotifier(FsImpl& fs) : fs_(fs) {}
    ~LatentNotifier() { fs_.notify_consumed_latent(); }
    LatentNotifier(const LatentNotifier&) = delete;
    LatentNotifier& operator=(const LatentNotifier&) = delete;

   private:
    FsImpl& fs_;
  };
  std::vector<FilePoison> _file_poison(Inode& inode);
  std::vector<PoisonRange> poison_under(Inode& inode, uint64_t off, uint64_t end);
  Status check_recovery_write(Inode& inode, uint64_t off, uint64_t end, std::span<const PoisonRange> poison);
  // write() under the lock, with data already joined to a waiting tail.
  Result<size_t> write_locked(Inode& inode, Ino ino, uint64_t off, std::span<const std::byte> data,
                              OpenFileId from);
  // write() of the piece that continues from's waiting tail: both as one.
  Result<size_t> write_joined(Inode& inode, Ino ino, std::span<const std::byte> data, OpenFileId from);
  // A recovery piece refused (err) only for the poisoned unit its end cuts
  // into: writes up to its last block and keeps the rest for from's next piece.
  Result<size_t> defer_recovery_tail(Inode& inode, Ino ino, uint64_t off, std::span<const std::byte> data,
                                     OpenFileId from, Error err);
  // Drops file's waiting tail (its units stay poisoned): an event, and
  // file's next flush fails with EIO.
  void abandon_recovery_tail(OpenFileId file, std::string_view why);
  // The same for every tail of ino (overlapping [off, end) only, and not
  // except's, when given): a change of the file's bytes makes them stale.
  void abandon_recovery_tails_of(Ino ino, std::string_view why, uint64_t off = 0, uint64_t end = UINT64_MAX,
                                 OpenFileId except = kWholeWrite);
  // The bytes [off, off+len) of ino were answered for but not written: an
  // event, and file's next flush fails.
  void mark_recovery_incomplete(OpenFileId file, Ino ino, uint64_t off, uint64_t len, std::string_view why);
  // Whether any tail waits or any report is pending (the shared lock).
  bool has_recovery_state() const;
  // EIO once if file's recovery was left incomplete. REQUIRES: mutex_ held.
  Status take_incomplete_report(OpenFileId file);

  // --- checksums (checksums.cc in src/fs)
  // After a crash: recomputes the entries of the regions whose intent was
  // set, from the data (blocks with poison keep theirs).
  void recompute_dirty_checksums();
  // Rewrites the checksum table block `block` from the data it describes.
  void repair_checksum_block(uint64_t block);
  // EIO when a block under segs does not match its checksum (silent
  // corruption); records an event. Shared lock is enough.
  Status verify_segments(std::span<const ReadSegment> segs);
  // The first block of the device range whose data does not match its
  // checksum (unknown entries and poisoned blocks are skipped).
  std::optional<uint64_t> first_corrupt_block(uint64_t dev_off, uint64_t len);
  // Whether block holds what its checksum records; nullopt when that cannot
  // be told (unknown entry, or poison: the block is never read then).
  std::optional<bool> checksum_matches(uint64_t block);
  void record_corruption(uint64_t block, const std::string& found_by);
  // Every file that maps [block, block+count), piece by piece, for events.
  std::vector<EventOwner> data_owners_of(uint64_t block, uint64_t count = 1);
  // Blocks of [first, first+count) that are written file data, i.e. the
  // ones whose checksum means something.
  void for_each_written_block(uint64_t first, uint64_t count, const std::function<void(uint64_t block)>& fn);

  // --- load (filesystem.cc)
  Status load_inode(uint64_t ino);
  Status load_chain(Inode& inode, Chain& chain, uint64_t head);
  std::vector<RmapRecord> ownership_records() const;
  Status reclaim_orphans();
  Status finish_truncates();
  Status check_links();
  Status check_exclusive_metadata();
  // In check mode records the problem and returns true (go on); else false.
  bool tolerate(const std::string& problem, uint64_t bad_off = 0, size_t bad_len = 0);
  // --- metadata poisoned while unmounted (filesystem.cc). No in-memory
  // copy exists at mount: poisoned records are never decoded but lost.
  // True when [off, off+len) holds poison (latent poison becomes known).
  bool poisoned_at_mount(uint64_t off, uint64_t len);
  // A record lost to poison: fsck reports it and clears it on repair (with
  // the poison); a mount records it, and shuts down once loaded.
  void lost_to_poison(const char* what, Ino ino, uint64_t off, uint64_t len, const std::string& problem);
  Status replay_journal();
  void repair_superblocks();
  // Poisoned inode slots that no name leads to were free (or orphans, which
  // mount reclaims anyway): cleared and rewritten empty.
  void reclaim_unnamed_lost_inodes();
  void cut_chain_before(Inode& inode, Chain& chain);
  std::vector<std::string> mount_damage_;  // records lost, found at mount
  std::vector<Ino> lost_inodes_;           // their inode slots
  bool is_lost_inode(Ino ino) const { return std::find(lost_inodes_.begin(), lost_inodes_.end(), ino) != lost_inodes_.end(); }

 public:
  void set_check(CheckState* check) { check_ = check; }
  void set_verify_checksums(bool on) { verify_checksums_ = on; }
  void set_posix_acls(bool on) { posix_acls_ = on; }
  Status repair_checked();
  // Problems found cross-checking the in-memory indexes (fsck, tests).
  std::vector<std::string> verify_derived_state();
  // Data blocks that do not match their checksum (fsck; data is never repaired).
  std::vector<std::string> verify_data_checksums();
  uint64_t count_extents() const;
  uint64_t count_directories() const;

 private:
  CheckState* check_ = nullptr;


  mutable std::shared_mutex mutex_;
  std::unique_ptr<Media> media_;
  // The device's poison list, fetched once: every read and write asks it
  // whether it is empty, and Media::poison() is a virtual call.
  PoisonList& poison_;
  PoisonList& poison() const { return poison_; }
  Superblock sb_;
  Journal journal_;
  DataChecksums csums_;
  bool verify_checksums_ = false;      // mount option: verify data on every read
  bool posix_acls_ = true;             // mount option: POSIX ACLs in force (OpenOptions)
  std::vector<uint64_t> heal_in_place_;  // during a recovery write: see healable_blocks
  // The kernel cuts a buffered write(2) into pieces (see write() in data.cc);
  // a recovery piece that stops inside a poisoned unit leaves its last
  // partial block here, in memory, until its open file's next piece joins it.
  struct RecoveryTail {
    Ino ino = 0;
    uint64_t off = 0;  // file offset of bytes[0]
    std::vector<std::byte> bytes;
    uint64_t end() const { return off + bytes.size(); }
  };
  std::unordered_map<OpenFileId, RecoveryTail> recovery_tails_;
  std::unordered_set<OpenFileId> incomplete_recovery_;  // reported by the file's next flush
  Allocator alloc_;
  Rmap rmap_;
  std::vector<std::unique_ptr<Inode>> inodes_;  // [ino - 1]
  std::vector<uint64_t> free_inos_;             // stack, lowest on top
  uint64_t next_generation_ = 1;
  uint64_t inodes_used_ = 0;

  // Media failure state. events_ has its own lock: a failure found by a
  // reader (shared lock) records events too.
  std::function<void(Ino, uint64_t, uint64_t)> invalidate_;
  std::vector<BlockRange> quarantine_;  // poisoned free space, kept from the allocator
  std::atomic<bool> shutdown_{false};
  std::string shutdown_reason_;
  std::mutex consumed_mutex_;
  std::vector<PoisonRange> consumed_latent_;  // see consume_latent
  std::atomic<bool> has_consumed_latent_{false};  // the fast check
  std::atomic<uint64_t> persist_failures_reported_{0};
  std::mutex events_mutex_;
  std::deque<Event> events_;
  size_t event_owners_ = 0;  // owners named by events_ (a bound of the history)
  uint64_t next_event_seq_ = 1;
};

// Mount-time helper used by the public factories.
Result<std::unique_ptr<FsImpl>> mount_impl(std::unique_ptr<Media> media, CheckState* check = nullptr);

}  // namespace poisonfs
