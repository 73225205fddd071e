// The on-media format of poisonfs: geometry and every record, in two forms
// (as XFS does): a native in-memory struct and a fixed little-endian byte
// encoding with a crc32c. encode_* writes the bytes, decode_* validates the
// checksum and returns the native form.
//
// Device layout (4 KiB blocks; numbers are block indexes):
//
//   0            1                J+1              I+1             C+1                   N-1
//   +------------+----------------+----------------+---------------+---------------------+-----------+
//   | superblock | journal        | inode table    | data checksums| data area           | superblock|
//   | (primary)  | hdr + tx ring  | 256 B slots    | intent bitmap,| file data, extent,  | (copy)    |
//   |            |                |                | crc32c table  | dirent, xattr blocks|           |
//   +------------+----------------+----------------+---------------+---------------------+-----------+
//
// The checksum region exists when features_ro_compat has
// kFeatureDataChecksums (images made without it have none: C == I). Its
// first block is the write-intent bitmap (one bit per region of
// 2^csum_region_shift data blocks), then one 4-byte crc32c per data block
// (entry i for block data_start + i); see src/csum/checksums.h.
//
// Extent, directory and xattr records live in chains of 4 KiB blocks owned by
// one inode; each block has a 64-byte header and fixed-size slots. A slot is
// empty when all its bytes are zero, otherwise it carries a valid crc.
// Do not change the numbers in this file: they are stored on media.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "poisonfs/filesystem.h"

namespace poisonfs {

inline constexpr char kMagic[8] = {'P', 'O', 'I', 'S', 'O', 'N', 'F', 'S'};
inline constexpr uint32_t kFormatVersion = 1;
// features_ro_compat: per-block data checksums (an implementation that does
// not maintain them must not write to the image).
inline constexpr uint64_t kFeatureDataChecksums = 1;
inline constexpr uint32_t kCsumEntrySize = 4;
inline constexpr uint64_t kCsumEntriesPerBlock = kBlockSize / kCsumEntrySize;
inline constexpr uint64_t kCsumIntentBits = kBlockSize * 8;  // regions one bitmap block tracks
inline constexpr uint32_t kCsumMinRegionShift = 8;            // 1 MiB regions at least
inline constexpr size_t kSuperblockSize = 512;
inline constexpr size_t kInodeSize = 256;
inline constexpr size_t kInodesPerBlock = kBlockSize / kInodeSize;
inline constexpr size_t kChainHeaderSize = 64;
inline constexpr size_t kExtentSlotSize = 32;
inline constexpr size_t kDirentSlotSize = 280;
inline constexpr size_t kXattrSlotSize = kBlockSize - kChainHeaderSize;
inline constexpr size_t kXattrNameMax = 255;
inline constexpr size_t kXattrValueMax = kXattrSlotSize - 272;
inline constexpr uint64_t kMinDeviceBytes = 1 << 20;
// kMaxFileSize (poisonfs/filesystem.h) bounds every file offset.

// Chain kinds (header magic).
enum class ChainKind : uint32_t {
  kExtents = 0x54584550,   // "PEXT"
  kDirents = 0x52494450,   // "PDIR"
  kXattrs = 0x54415850,    // "PXAT"
};

inline constexpr uint32_t slot_size_of(ChainKind kind) {
  return kind == ChainKind::kExtents   ? kExtentSlotSize
         : kind == ChainKind::kDirents ? kDirentSlotSize
                                       : kXattrSlotSize;
}
inline constexpr uint32_t slots_per_block(ChainKind kind) {
  return (kBlockSize - kChainHeaderSize) / slot_size_of(kind);
}

struct Superblock {
  uint32_t version = kFormatVersion;
  uint32_t block_size = kBlockSize;
  uint64_t total_blocks = 0;
  uint64_t features_compat = 0, features_incompat = 0, features_ro_compat = 0;
  std::array<uint8_t, 16> uuid{};
  uint64_t journal_start = 0, journal_blocks = 0;
  uint64_t inode_start = 0, inode_blocks = 0, inode_count = 0;
  uint64_t csum_start = 0, csum_blocks = 0;  // 0 blocks: no data checksums
  uint32_t csum_region_shift = 0;
  uint64_t data_start = 0, data_end = 0;  // [data_start, data_end) is allocatable
  int64_t created_ns = 0;
  std::string label;  // at most 63 bytes

  uint64_t copy_block() const { return total_blocks - 1; }
  bool has_checksums() const { return features_ro_compat & kFeatureDataChecksums; }
};

// The journal sizes mkfs accepts, in blocks: the smallest holds the largest
// transaction whose size does not grow with a file's extent count (a 64 KiB
// xattr value and its record blocks); the largest is the default's cap.
// Operations over many extents (clone, truncate, punch) commit in pieces
// that fit.
inline constexpr uint64_t kMinJournalBlocks = kMinJournalBytes / kBlockSize;
inline constexpr uint64_t kMaxJournalBlocks = kMaxJournalBytes / kBlockSize;

// Computes the geometry for a device of `bytes`; fails when it is too small.
// journal_blocks 0: 1/32 of the device, 64 .. kMaxJournalBlocks.
Result<Superblock> plan_geometry(uint64_t bytes, uint64_t inode_count, bool data_checksums = true,
                                 uint64_t journal_blocks = 0);
void encode_superblock(const Superblock& sb, std::byte* out /* kSuperblockSize */);
// Validates magic, checksum, version and internal consistency.
Result<Superblock> decode_superblock(const std::byte* in, uint64_t device_bytes);
std::string uuid_to_string(const std::array<uint8_t, 16>& uuid);

inline constexpr uint32_t kInodeInUse = 1;
// A truncate is unmapping what lies past EOF in several commits; mount
// finishes it (FsImpl::finish_truncates).
inline constexpr uint32_t kInodeTruncating = 2;

struct InodeRec {
  uint32_t flags = 0;
  uint64_t ino = 0;
  uint32_t mode = 0, uid = 0, gid = 0, nlink = 0;
  uint64_t size = 0, rdev = 0;
  int64_t atime_ns = 0, mtime_ns = 0, ctime_ns = 0, btime_ns = 0;
  uint64_t generation = 0;
  uint64_t chain_head = 0;  // extents (regular, symlink) or dirents (directory)
  uint64_t xattr_head = 0;
  uint64_t parent = 0;
};
void encode_inode(const InodeRec& rec, std::byte* out /* kInodeSize */);
// nullopt: empty slot. Error: bad checksum or impossible values.
Result<std::optional<InodeRec>> decode_inode(const std::byte* in);

struct ChainHeader {
  ChainKind kind = ChainKind::kExtents;
  uint64_t owner = 0, next = 0, self = 0;
};
void encode_chain_header(const ChainHeader& h, std::byte* out /* kChainHeaderSize */);
Result<ChainHeader> decode_chain_header(const std::byte* in);

inline constexpr uint32_t kSlotValid = 1;
inline constexpr uint32_t kExtentUnwritten = 2;  // preallocated: reads as zeros

struct ExtentRec {
  uint32_t flags = kSlotValid;
  uint64_t file_block = 0, phys_block = 0, nblocks = 0;
};
void encode_extent(const ExtentRec& rec, std::byte* out /* kExtentSlotSize */);
Result<std::optional<ExtentRec>> decode_extent(const std::byte* in);

struct DirentRec {
  uint64_t ino = 0;
  uint8_t type = 0;  // DT_*
  std::string name;
};
void encode_dirent(const DirentRec& rec, std::byte* out /* kDirentSlotSize */);
Result<std::optional<DirentRec>> decode_dirent(const std::byte* in);

struct XattrRec {
  std::string name;
  std::string value;
};
void encode_xattr(const XattrRec& rec, std::byte* out /* kXattrSlotSize */);
Result<std::optional<XattrRec>> decode_xattr(const std::byte* in);

// True when every byte is zero (an empty slot).
bool all_zero(const std::byte* p, size_t n);

// Byte offsets of records on the device.
inline uint64_t block_offset(uint64_t block) { return block * kBlockSize; }
inline uint64_t inode_offset(const Superblock& sb, uint64_t ino) {
  return block_offset(sb.inode_start) + (ino - 1) * kInodeSize;
}
inline uint64_t slot_offset(uint64_t block, uint32_t slot, uint32_t slot_size) {
  return block_offset(block) + kChainHeaderSize + uint64_t{slot} * slot_size;
}

}  // namespace poisonfs
