// The control surface of a mounted poisonfs: restricted ioctls with
// fixed-size records, issued on any file or directory of the mount (FUSE
// passes them because the size is encoded in the command). Stable ABI:
// add new commands, never change a record.
#pragma once

#include <linux/ioctl.h>
#include <stdint.h>

#define POISONFS_IOC_MAGIC 'P'

// Geometry and usage of the mounted filesystem (`poisonctl stat`).
struct poisonfs_stat {
  uint64_t device_bytes;
  uint64_t block_size;
  uint64_t total_blocks;
  uint64_t journal_start, journal_blocks;
  uint64_t inode_start, inode_blocks, inode_count;
  uint64_t data_start, data_blocks;
  uint64_t free_blocks;
  uint64_t pending_free;
  uint64_t inodes_used;
  uint64_t extent_records;
  uint64_t journal_commits;
  uint32_t version;
  uint32_t byte_granular;
  char uuid[40];  // NUL-terminated text form
  uint64_t csum_start, csum_blocks;  // data checksum region (0 blocks: none)
  uint64_t checksum_flags;           // POISONFS_STAT_*
  // The FUSE session: flags (POISONFS_STAT_KILLPRIV_V2), and GETXATTR
  // requests served since mount (a debug counter: the kernel asks for
  // security.capability before every write unless KILLPRIV_V2 is in force).
  uint64_t session_flags;
  uint64_t getxattr_requests;
  uint64_t reserved[11];
};
#define POISONFS_STAT_DATA_CHECKSUMS 0x1u    // the image keeps a crc32c per data block
#define POISONFS_STAT_VERIFY_CHECKSUMS 0x2u  // mounted with -o verify_checksums
// The kernel accepted FUSE_HANDLE_KILLPRIV_V2: the daemon drops setuid/setgid
// and security.capability on write, truncate and chown.
#define POISONFS_STAT_KILLPRIV_V2 0x1u
// Mounted with -o direct_io and the kernel accepted FUSE_DIRECT_IO_ALLOW_MMAP:
// every open bypasses the page cache.
#define POISONFS_STAT_DIRECT_IO 0x2u

#define POISONFS_IOC_STAT _IOR(POISONFS_IOC_MAGIC, 1, struct poisonfs_stat)

// Reflink a range, like FICLONERANGE (which never reaches a FUSE
// filesystem): issued on the destination file; src_fd is a descriptor of the
// source file in the calling process. src_length 0 means "to the source's
// EOF". Errors as FICLONERANGE: EINVAL (unaligned, overlapping, past EOF),
// EISDIR, EXDEV (source on another filesystem), EBADF.
struct poisonfs_clone_range {
  int64_t src_fd;
  uint64_t src_offset;
  uint64_t src_length;
  uint64_t dest_offset;
};
#define POISONFS_IOC_CLONE_RANGE _IOW(POISONFS_IOC_MAGIC, 2, struct poisonfs_clone_range)

// A file's extents, paginated: set cursor to 0 (a file offset), call until
// POISONFS_OF_LAST is set in flags; each call continues from cursor.
#define POISONFS_BMAP_SHARED 0x1u
#define POISONFS_BMAP_UNWRITTEN 0x2u
#define POISONFS_BMAP_POISONED 0x4u
struct poisonfs_bmap_rec {
  uint64_t file_offset;
  uint64_t physical;  // device byte offset
  uint64_t length;    // bytes
  uint32_t flags;     // POISONFS_BMAP_*
  uint32_t reserved;
};
#define POISONFS_BMAP_MAX 120
#define POISONFS_OF_LAST 0x1u
struct poisonfs_bmap {
  uint64_t cursor;  // in: continue after this many records; out: next cursor
  uint32_t count;   // out: records filled
  uint32_t flags;   // out: POISONFS_OF_LAST
  uint64_t reserved[2];
  struct poisonfs_bmap_rec recs[POISONFS_BMAP_MAX];
};
#define POISONFS_IOC_BMAP _IOWR(POISONFS_IOC_MAGIC, 3, struct poisonfs_bmap)

// Owners of a device byte range, like GETFSMAP, paginated the same way: a
// shared piece has one record per owner; the cursor is the physical offset
// of the last record returned and how many records at that offset were.
#define POISONFS_FSMAP_SHARED 0x1u
#define POISONFS_FSMAP_POISONED 0x2u
struct poisonfs_fsmap_rec {
  uint64_t physical;  // device byte offset
  uint64_t length;    // bytes
  uint64_t inode;     // data, extents, directory, xattr owners
  uint64_t file_offset;  // data owners
  uint32_t owner;     // poisonfs::FsmapOwner value
  uint32_t flags;     // POISONFS_FSMAP_*
};
#define POISONFS_FSMAP_MAX 256
struct poisonfs_fsmap {
  uint64_t start;   // in: first device byte of the query
  uint64_t length;  // in: bytes (UINT64_MAX: to the end)
  uint64_t cursor_physical;  // in/out: 0 on the first call
  uint32_t cursor_skip;      // in/out: 0 on the first call
  uint32_t count;            // out
  uint32_t flags;            // out: POISONFS_OF_LAST
  uint32_t reserved;
  struct poisonfs_fsmap_rec recs[POISONFS_FSMAP_MAX];
};
#define POISONFS_IOC_FSMAP _IOWR(POISONFS_IOC_MAGIC, 4, struct poisonfs_fsmap)

// Every path of an inode, from the filesystem root, NUL-separated in buf.
struct poisonfs_paths {
  uint64_t inode;  // in
  uint32_t count;  // out: paths in buf
  uint32_t flags;  // out: 0x1 = truncated (buf too small)
  char buf[8192];
};
#define POISONFS_IOC_PATHS _IOWR(POISONFS_IOC_MAGIC, 5, struct poisonfs_paths)

// --- media failure (control operations: root or the mounting user, except
// FILE_POISON on a file the caller has open, and STATUS)

#define POISONFS_POISON_LATENT 0x1u

// Injects poison at device bytes [offset, offset+length), rounded out to
// 64-byte units; the rounded range comes back. Known poison is notified at
// once; POISONFS_POISON_LATENT poison waits for a read or a scrub.
struct poisonfs_inject {
  uint64_t offset;
  uint64_t length;
  uint32_t flags;  // POISONFS_POISON_LATENT
  uint32_t reserved;
  uint64_t out_offset;
  uint64_t out_length;
};
#define POISONFS_IOC_INJECT _IOWR(POISONFS_IOC_MAGIC, 6, struct poisonfs_inject)

struct poisonfs_range {
  uint64_t offset;  // device bytes (FILE_POISON: file offset)
  uint64_t length;
  uint32_t flags;   // POISONFS_POISON_LATENT
  uint32_t reserved;
};
#define POISONFS_RANGES_MAX 256

// The device poison list (BADBLOCKS) or a file's known poisoned ranges
// (FILE_POISON), paginated: cursor 0 first, until POISONFS_OF_LAST.
struct poisonfs_ranges {
  uint64_t cursor;
  uint32_t count;
  uint32_t flags;  // POISONFS_OF_LAST
  struct poisonfs_range recs[POISONFS_RANGES_MAX];
};
#define POISONFS_IOC_BADBLOCKS _IOWR(POISONFS_IOC_MAGIC, 7, struct poisonfs_ranges)
#define POISONFS_IOC_FILE_POISON _IOWR(POISONFS_IOC_MAGIC, 8, struct poisonfs_ranges)

// The event log, as JSON lines after sequence number after_seq; dropped is
// how many older events the bounded history no longer holds.
struct poisonfs_events {
  uint64_t after_seq;  // in
  uint64_t dropped;    // out
  uint64_t last_seq;   // out: seq of the last event in buf (continue from it)
  uint32_t count;      // out: events in buf
  uint32_t flags;      // out: POISONFS_OF_LAST when no newer event is left
  char buf[12288];     // NUL-terminated JSON lines
};
#define POISONFS_IOC_EVENTS _IOWR(POISONFS_IOC_MAGIC, 9, struct poisonfs_events)

struct poisonfs_status {
  uint32_t shutdown;  // 1: every call fails with EIO
  uint32_t reserved;
  uint64_t known_poison_bytes;
  uint64_t latent_poison_bytes;
  uint64_t quarantined_bytes;
  uint64_t events;  // recorded since mount
  char reason[256];
};
#define POISONFS_IOC_STATUS _IOR(POISONFS_IOC_MAGIC, 10, struct poisonfs_status)

// The paths of many inodes in one call (fsmap output names every owner).
// In: count inodes. Out: done = how many of them have their paths in buf,
// in order, each as its paths NUL-terminated followed by one empty string;
// call again with the rest when done < count.
#define POISONFS_PATHS_BATCH_MAX 128
struct poisonfs_paths_batch {
  uint32_t count;
  uint32_t done;
  uint64_t inodes[POISONFS_PATHS_BATCH_MAX];
  char buf[14336];
};
#define POISONFS_IOC_PATHS_BATCH _IOWR(POISONFS_IOC_MAGIC, 11, struct poisonfs_paths_batch)

// The paths of one inode from its `skip`-th on, as many as buf holds,
// NUL-terminated: for an inode whose names do not fit a PATHS_BATCH reply
// (PATHS_BATCH then answers done = 0 for it). Call again with skip + count
// until POISONFS_OF_LAST. A path longer than buf alone comes as "". skip
// counts names: a link or unlink of the inode between two calls can repeat
// or skip one. ENOENT: the inode is gone.
#define POISONFS_PATHS_FROM_BYTES 16320
struct poisonfs_paths_from {
  uint64_t inode;  // in
  uint32_t skip;   // in: paths received so far
  uint32_t count;  // out: paths in buf
  uint32_t flags;  // out: POISONFS_OF_LAST when no path follows them
  uint32_t reserved;
  char buf[POISONFS_PATHS_FROM_BYTES];
};
#define POISONFS_IOC_PATHS_FROM _IOWR(POISONFS_IOC_MAGIC, 18, struct poisonfs_paths_from)

// Owners of a device byte range and the paths of their data owners in one
// round trip (FSMAP plus PATHS_BATCH, packed: one call names ~1,000 sharers
// of a block). Paginated like POISONFS_IOC_FSMAP. buf holds `count`
// records, then the path table, `used` bytes in all; integers are LEB128
// varints (7 bits a byte, low first):
//   record: head byte = owner (bits 0-3) | 0x10 shared | 0x20 poisoned |
//           0x40 same physical and length as the record before;
//           unless 0x40: zigzag(physical - previous physical), length;
//           owners with an inode (data, extents, directory, xattr): inode;
//           data: file_offset.
//   path table: entries; each: inode, paths + 1 (0: not sent, ask
//           POISONFS_IOC_PATHS_BATCH), then per path: bytes shared with the
//           previous path of the table, suffix length, suffix bytes.
#define POISONFS_FSMAP_PACKED_BYTES 16336
struct poisonfs_fsmap_packed {
  uint64_t start;            // in
  uint64_t length;           // in
  uint64_t cursor_physical;  // in/out: 0 on the first call
  uint32_t cursor_skip;      // in/out: 0 on the first call
  uint32_t count;            // out: records in buf
  uint32_t used;             // out: bytes of buf used
  uint32_t flags;            // out: POISONFS_OF_LAST
  uint8_t buf[POISONFS_FSMAP_PACKED_BYTES];
};
#define POISONFS_IOC_FSMAP_PACKED _IOWR(POISONFS_IOC_MAGIC, 17, struct poisonfs_fsmap_packed)

// Scrub (control operation): walks every allocated byte and the metadata;
// latent poison found becomes known and is notified, quarantined free space
// is cleared and returned. Runs inside the ioctl request: no progress is
// reported over the mount (the tool shows elapsed time instead). Silent
// corruption is checked when the image has data checksums
// (POISONFS_SCRUB_CHECKSUMS in flags).
#define POISONFS_SCRUB_CHECKSUMS 0x1u
struct poisonfs_scrub {
  uint64_t bytes_scanned;
  uint64_t latent_found;              // latent ranges made known
  uint64_t known_poison_bytes;        // known poison left afterwards
  uint64_t quarantine_cleared_bytes;
  uint64_t ranges_notified;
  uint64_t blocks_verified;           // data blocks whose crc32c was compared
  uint64_t checksum_mismatches;       // silent corruption found
  uint64_t flags;
};
#define POISONFS_IOC_SCRUB _IOR(POISONFS_IOC_MAGIC, 16, struct poisonfs_scrub)
