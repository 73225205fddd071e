// Encoding, decoding and validation of the on-media records (see layout.h).
#include "format/layout.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include "util/strfmt.h"

#include "format/coding.h"
#include "format/crc32c.h"

namespace poisonfs {
namespace {

// Every record starts with a crc32c of the bytes after it.
void seal(std::byte* rec, size_t size) { put_le<uint32_t>(rec, crc32c(rec + 4, size - 4)); }
bool sealed(const std::byte* rec, size_t size) {
  return get_le<uint32_t>(rec) == crc32c(rec + 4, size - 4);
}

uint64_t clamp_u64(uint64_t v, uint64_t lo, uint64_t hi) { return std::min(std::max(v, lo), hi); }

}  // namespace

// 64 bytes per step, OR-ed (the compiler vectorizes it): mount asks this of
// every free inode slot and every empty record slot.
bool all_zero(const std::byte* p, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t w[8];
    std::memcpy(w, p + i, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
  }
  for (; i < n; ++i)
    if (p[i] != std::byte{0}) return false;
  return true;
}

std::string uuid_to_string(const std::array<uint8_t, 16>& u) {
  std::string s;
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += strfmt("{:02x}", u[i]);
  }
  return s;
}

namespace {

// The checksum region after the inode table: the intent bitmap block, then
// a table big enough for every block after it (a slight overestimate keeps
// the computation free of a fixed point), and regions just big enough that
// one bitmap block covers the data area.
void plan_checksums(Superblock& sb) {
  sb.features_ro_compat |= kFeatureDataChecksums;
  sb.csum_start = sb.inode_start + sb.inode_blocks;
  uint64_t covered = sb.total_blocks > sb.csum_start ? sb.total_blocks - sb.csum_start : 0;
  sb.csum_blocks = 1 + (covered + kCsumEntriesPerBlock - 1) / kCsumEntriesPerBlock;
  sb.csum_region_shift = kCsumMinRegionShift;
  while ((covered >> sb.csum_region_shift) >= kCsumIntentBits) ++sb.csum_region_shift;
}

}  // namespace

Result<Superblock> plan_geometry(uint64_t bytes, uint64_t inode_count, bool data_checksums,
                                 uint64_t journal_blocks) {
  if (bytes < kMinDeviceBytes)
    return fail(std::errc::invalid_argument,
                strfmt("device of {} bytes is too small: poisonfs needs at least {} bytes",
                            bytes, kMinDeviceBytes));
  Superblock sb;
  sb.total_blocks = bytes / kBlockSize;
  // More inodes than the device has room for: refused here, before the
  // rounding below could wrap a huge count around to zero.
  if (inode_count > sb.total_blocks * kInodesPerBlock)
    return fail(std::errc::invalid_argument,
                strfmt("device of {} bytes is too small for {} inodes", bytes, inode_count));
  // Journal: 1/32 of the device, 256 KiB .. 64 MiB, big enough for the
  // largest transaction (see journal.h) with room to spare.
  if (journal_blocks != 0 && (journal_blocks < kMinJournalBlocks || journal_blocks > kMaxJournalBlocks))
    return fail(std::errc::invalid_argument,
                strfmt("a journal of {} KiB is outside {} KiB .. {} MiB", journal_blocks * 4,
                       kMinJournalBlocks * 4, kMaxJournalBlocks / 256));
  sb.journal_start = 1;
  sb.journal_blocks = journal_blocks ? journal_blocks : clamp_u64(sb.total_blocks / 32, 64, kMaxJournalBlocks);
  if (inode_count == 0) inode_count = clamp_u64(bytes / (16 << 10), 64, 1u << 22);
  sb.inode_count = (inode_count + kInodesPerBlock - 1) / kInodesPerBlock * kInodesPerBlock;
  sb.inode_start = sb.journal_start + sb.journal_blocks;
  sb.inode_blocks = sb.inode_count / kInodesPerBlock;
  sb.csum_start = sb.inode_start + sb.inode_blocks;
  if (data_checksums) plan_checksums(sb);
  sb.data_start = sb.csum_start + sb.csum_blocks;
  sb.data_end = sb.total_blocks - 1;
  if (sb.data_start + 16 > sb.data_end)
    return fail(std::errc::invalid_argument,
                strfmt("device of {} bytes is too small for {} inodes and a {} KiB journal",
                            bytes, sb.inode_count, sb.journal_blocks * 4));
  return sb;
}

void encode_superblock(const Superblock& sb, std::byte* out) {
  std::memset(out, 0, kSuperblockSize);
  std::memcpy(out, kMagic, sizeof kMagic);
  put_le<uint32_t>(out + 8, sb.version);
  put_le<uint32_t>(out + 12, sb.block_size);
  put_le<uint64_t>(out + 16, sb.total_blocks);
  put_le<uint64_t>(out + 24, sb.features_compat);
  put_le<uint64_t>(out + 32, sb.features_incompat);
  put_le<uint64_t>(out + 40, sb.features_ro_compat);
  std::memcpy(out + 48, sb.uuid.data(), 16);
  put_le<uint64_t>(out + 64, sb.journal_start);
  put_le<uint64_t>(out + 72, sb.journal_blocks);
  put_le<uint64_t>(out + 80, sb.inode_start);
  put_le<uint64_t>(out + 88, sb.inode_blocks);
  put_le<uint64_t>(out + 96, sb.inode_count);
  put_le<uint64_t>(out + 104, sb.data_start);
  put_le<uint64_t>(out + 112, sb.data_end);
  put_le<int64_t>(out + 120, sb.created_ns);
  std::memcpy(out + 128, sb.label.data(), std::min<size_t>(sb.label.size(), 63));
  put_le<uint64_t>(out + 192, sb.csum_start);
  put_le<uint64_t>(out + 200, sb.csum_blocks);
  put_le<uint32_t>(out + 208, sb.csum_region_shift);
  // The crc sits at the end so that the magic stays at byte 0.
  put_le<uint32_t>(out + kSuperblockSize - 4, crc32c(out, kSuperblockSize - 4));
}

Result<Superblock> decode_superblock(const std::byte* in, uint64_t device_bytes) {
  if (std::memcmp(in, kMagic, sizeof kMagic) != 0)
    return fail(std::errc::invalid_argument, "not a poisonfs image (bad magic)");
  if (get_le<uint32_t>(in + kSuperblockSize - 4) != crc32c(in, kSuperblockSize - 4))
    return fail(std::errc::io_error, "superblock checksum mismatch");
  Superblock sb;
  sb.version = get_le<uint32_t>(in + 8);
  sb.block_size = get_le<uint32_t>(in + 12);
  sb.total_blocks = get_le<uint64_t>(in + 16);
  sb.features_compat = get_le<uint64_t>(in + 24);
  sb.features_incompat = get_le<uint64_t>(in + 32);
  sb.features_ro_compat = get_le<uint64_t>(in + 40);
  std::memcpy(sb.uuid.data(), in + 48, 16);
  sb.journal_start = get_le<uint64_t>(in + 64);
  sb.journal_blocks = get_le<uint64_t>(in + 72);
  sb.inode_start = get_le<uint64_t>(in + 80);
  sb.inode_blocks = get_le<uint64_t>(in + 88);
  sb.inode_count = get_le<uint64_t>(in + 96);
  sb.data_start = get_le<uint64_t>(in + 104);
  sb.data_end = get_le<uint64_t>(in + 112);
  sb.created_ns = get_le<int64_t>(in + 120);
  const char* label = reinterpret_cast<const char*>(in + 128);
  sb.label.assign(label, strnlen(label, 63));
  sb.csum_start = get_le<uint64_t>(in + 192);
  sb.csum_blocks = get_le<uint64_t>(in + 200);
  sb.csum_region_shift = get_le<uint32_t>(in + 208);

  if (sb.version != kFormatVersion)
    return fail(std::errc::not_supported,
                strfmt("unsupported format version {} (this build reads {})", sb.version,
                            kFormatVersion));
  if (sb.block_size != kBlockSize)
    return fail(std::errc::not_supported, strfmt("unsupported block size {}", sb.block_size));
  if (sb.features_incompat != 0)
    return fail(std::errc::not_supported,
                strfmt("unknown incompatible features {:#x}", sb.features_incompat));
  if (sb.features_ro_compat & ~kFeatureDataChecksums)
    return fail(std::errc::not_supported,
                strfmt("unknown read-only-compatible features {:#x}", sb.features_ro_compat & ~kFeatureDataChecksums));
  if (sb.total_blocks > device_bytes / kBlockSize)
    return fail(std::errc::invalid_argument,
                strfmt("image is truncated: the superblock says {} bytes, the device has {}",
                            sb.total_blocks * kBlockSize, device_bytes));
  // Each region is bounded by the device first, so the sums below cannot wrap.
  bool sane = sb.journal_blocks < sb.total_blocks && sb.inode_blocks < sb.total_blocks &&
              sb.journal_start == 1 && sb.journal_blocks >= 2 &&
              sb.inode_start == sb.journal_start + sb.journal_blocks &&
              sb.inode_count == sb.inode_blocks * kInodesPerBlock && sb.inode_count > 0 &&
              sb.data_start < sb.data_end && sb.data_end == sb.total_blocks - 1;
  if (sane && !sb.has_checksums()) {
    // Images without checksums: the data area follows the inode table.
    if (sb.csum_start == 0 && sb.csum_blocks == 0) sb.csum_start = sb.inode_start + sb.inode_blocks;
    sane = sb.csum_start == sb.inode_start + sb.inode_blocks && sb.csum_blocks == 0;
  } else if (sane) {
    uint64_t entries = sb.csum_blocks >= 2 ? (sb.csum_blocks - 1) * kCsumEntriesPerBlock : 0;
    sane = sb.csum_start == sb.inode_start + sb.inode_blocks && sb.csum_blocks < sb.total_blocks &&
           sb.csum_region_shift >= kCsumMinRegionShift && sb.csum_region_shift < 48 &&
           ((sb.data_end - std::min(sb.data_end, sb.data_start)) >> sb.csum_region_shift) < kCsumIntentBits &&
           entries >= sb.data_end - std::min(sb.data_end, sb.data_start);
  }
  sane = sane && sb.data_start == sb.csum_start + sb.csum_blocks;
  if (!sane) return fail(std::errc::io_error, "superblock geometry is inconsistent");
  return sb;
}

void encode_inode(const InodeRec& r, std::byte* out) {
  std::memset(out, 0, kInodeSize);
  put_le<uint32_t>(out + 4, r.flags);
  put_le<uint64_t>(out + 8, r.ino);
  put_le<uint32_t>(out + 16, r.mode);
  put_le<uint32_t>(out + 20, r.uid);
  put_le<uint32_t>(out + 24, r.gid);
  put_le<uint32_t>(out + 28, r.nlink);
  put_le<uint64_t>(out + 32, r.size);
  put_le<uint64_t>(out + 40, r.rdev);
  put_le<int64_t>(out + 48, r.atime_ns);
  put_le<int64_t>(out + 56, r.mtime_ns);
  put_le<int64_t>(out + 64, r.ctime_ns);
  put_le<int64_t>(out + 72, r.btime_ns);
  put_le<uint64_t>(out + 80, r.generation);
  put_le<uint64_t>(out + 88, r.chain_head);
  put_le<uint64_t>(out + 96, r.xattr_head);
  put_le<uint64_t>(out + 104, r.parent);
  seal(out, kInodeSize);
}

Result<std::optional<InodeRec>> decode_inode(const std::byte* in) {
  if (all_zero(in, kInodeSize)) return std::nullopt;
  if (!sealed(in, kInodeSize)) return fail(std::errc::io_error, "inode checksum mismatch");
  InodeRec r;
  r.flags = get_le<uint32_t>(in + 4);
  r.ino = get_le<uint64_t>(in + 8);
  r.mode = get_le<uint32_t>(in + 16);
  r.uid = get_le<uint32_t>(in + 20);
  r.gid = get_le<uint32_t>(in + 24);
  r.nlink = get_le<uint32_t>(in + 28);
  r.size = get_le<uint64_t>(in + 32);
  r.rdev = get_le<uint64_t>(in + 40);
  r.atime_ns = get_le<int64_t>(in + 48);
  r.mtime_ns = get_le<int64_t>(in + 56);
  r.ctime_ns = get_le<int64_t>(in + 64);
  r.btime_ns = get_le<int64_t>(in + 72);
  r.generation = get_le<uint64_t>(in + 80);
  r.chain_head = get_le<uint64_t>(in + 88);
  r.xattr_head = get_le<uint64_t>(in + 96);
  r.parent = get_le<uint64_t>(in + 104);
  // A symlink's target is shorter than a block (symlink() refuses longer
  // ones) and readlink allocates its size: a huge one would exhaust memory.
  if (!(r.flags & kInodeInUse) || r.size > kMaxFileSize || (S_ISLNK(r.mode) && r.size >= kBlockSize))
    return fail(std::errc::io_error, "inode record has impossible values");
  return r;
}

void encode_chain_header(const ChainHeader& h, std::byte* out) {
  std::memset(out, 0, kChainHeaderSize);
  put_le<uint32_t>(out + 4, static_cast<uint32_t>(h.kind));
  put_le<uint64_t>(out + 8, h.owner);
  put_le<uint64_t>(out + 16, h.next);
  put_le<uint64_t>(out + 24, h.self);
  put_le<uint32_t>(out + 32, slot_size_of(h.kind));
  put_le<uint32_t>(out + 36, slots_per_block(h.kind));
  seal(out, kChainHeaderSize);
}

Result<ChainHeader> decode_chain_header(const std::byte* in) {
  if (!sealed(in, kChainHeaderSize)) return fail(std::errc::io_error, "chain block checksum mismatch");
  ChainHeader h;
  uint32_t kind = get_le<uint32_t>(in + 4);
  if (kind != static_cast<uint32_t>(ChainKind::kExtents) &&
      kind != static_cast<uint32_t>(ChainKind::kDirents) &&
      kind != static_cast<uint32_t>(ChainKind::kXattrs))
    return fail(std::errc::io_error, "chain block of unknown kind");
  h.kind = static_cast<ChainKind>(kind);
  h.owner = get_le<uint64_t>(in + 8);
  h.next = get_le<uint64_t>(in + 16);
  h.self = get_le<uint64_t>(in + 24);
  if (get_le<uint32_t>(in + 32) != slot_size_of(h.kind) ||
      get_le<uint32_t>(in + 36) != slots_per_block(h.kind))
    return fail(std::errc::io_error, "chain block slot geometry mismatch");
  return h;
}

void encode_extent(const ExtentRec& r, std::byte* out) {
  std::memset(out, 0, kExtentSlotSize);
  put_le<uint32_t>(out + 4, r.flags);
  put_le<uint64_t>(out + 8, r.file_block);
  put_le<uint64_t>(out + 16, r.phys_block);
  put_le<uint64_t>(out + 24, r.nblocks);
  seal(out, kExtentSlotSize);
}

Result<std::optional<ExtentRec>> decode_extent(const std::byte* in) {
  if (all_zero(in, kExtentSlotSize)) return std::nullopt;
  if (!sealed(in, kExtentSlotSize)) return fail(std::errc::io_error, "extent checksum mismatch");
  ExtentRec r;
  r.flags = get_le<uint32_t>(in + 4);
  r.file_block = get_le<uint64_t>(in + 8);
  r.phys_block = get_le<uint64_t>(in + 16);
  r.nblocks = get_le<uint64_t>(in + 24);
  constexpr uint64_t kMaxBlocks = kMaxFileSize / kBlockSize;
  if (!(r.flags & kSlotValid) || r.nblocks == 0 || r.file_block >= kMaxBlocks ||
      r.nblocks > kMaxBlocks - r.file_block || r.phys_block + r.nblocks < r.phys_block)
    return fail(std::errc::io_error, "extent record has impossible values");
  return r;
}

void encode_dirent(const DirentRec& r, std::byte* out) {
  std::memset(out, 0, kDirentSlotSize);
  put_le<uint32_t>(out + 4, kSlotValid);
  put_le<uint64_t>(out + 8, r.ino);
  out[16] = std::byte{r.type};
  out[17] = std::byte(static_cast<uint8_t>(r.name.size()));
  std::memcpy(out + 24, r.name.data(), r.name.size());
  seal(out, kDirentSlotSize);
}

Result<std::optional<DirentRec>> decode_dirent(const std::byte* in) {
  if (all_zero(in, kDirentSlotSize)) return std::nullopt;
  if (!sealed(in, kDirentSlotSize)) return fail(std::errc::io_error, "dirent checksum mismatch");
  DirentRec r;
  r.ino = get_le<uint64_t>(in + 8);
  r.type = static_cast<uint8_t>(in[16]);
  size_t len = static_cast<uint8_t>(in[17]);
  r.name.assign(reinterpret_cast<const char*>(in + 24), len);
  if (!(get_le<uint32_t>(in + 4) & kSlotValid) || len == 0 || r.ino == 0 ||
      r.name.find('/') != std::string::npos ||
      r.name.find('\0') != std::string::npos || r.name == "." || r.name == "..")
    return fail(std::errc::io_error, "dirent record has impossible values");
  return r;
}

void encode_xattr(const XattrRec& r, std::byte* out) {
  std::memset(out, 0, kXattrSlotSize);
  put_le<uint32_t>(out + 4, kSlotValid);
  out[8] = std::byte(static_cast<uint8_t>(r.name.size()));
  put_le<uint16_t>(out + 10, static_cast<uint16_t>(r.value.size()));
  std::memcpy(out + 16, r.name.data(), r.name.size());
  std::memcpy(out + 272, r.value.data(), r.value.size());
  seal(out, kXattrSlotSize);
}

Result<std::optional<XattrRec>> decode_xattr(const std::byte* in) {
  if (all_zero(in, kXattrSlotSize)) return std::nullopt;
  if (!sealed(in, kXattrSlotSize)) return fail(std::errc::io_error, "xattr checksum mismatch");
  XattrRec r;
  size_t name_len = static_cast<uint8_t>(in[8]);
  size_t value_len = get_le<uint16_t>(in + 10);
  if (!(get_le<uint32_t>(in + 4) & kSlotValid) || name_len == 0 || value_len > kXattrValueMax)
    return fail(std::errc::io_error, "xattr record has impossible values");
  r.name.assign(reinterpret_cast<const char*>(in + 16), name_len);
  r.value.assign(reinterpret_cast<const char*>(in + 272), value_len);
  return r;
}

}  // namespace poisonfs
