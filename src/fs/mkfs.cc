// mkfs: lays an empty filesystem on the media. The primary superblock is
// written last, after everything it describes is persistent, so a crash in
// the middle of mkfs leaves no image that looks valid.
#include <sys/stat.h>

#include <random>

#include "format/layout.h"
#include "fs/fs_impl.h"
#include "csum/checksums.h"
#include "journal/journal.h"

namespace poisonfs {

Status Filesystem::format(Media& media, const MkfsOptions& options) {
  uint64_t journal_blocks = options.journal_bytes / kBlockSize + (options.journal_bytes % kBlockSize != 0);
  auto planned = plan_geometry(media.size(), options.inode_count, options.data_checksums, journal_blocks);
  if (!planned) return std::unexpected(planned.error());
  Superblock sb = *planned;
  std::random_device rd;
  for (auto& b : sb.uuid) b = static_cast<uint8_t>(rd());
  sb.uuid[6] = (sb.uuid[6] & 0x0f) | 0x40;  // RFC 4122 version 4
  sb.uuid[8] = (sb.uuid[8] & 0x3f) | 0x80;
  sb.created_ns = now_ns();
  sb.label = options.label.substr(0, 63);

  media.zero(0, kBlockSize);
  media.zero(block_offset(sb.copy_block()), kBlockSize);
  media.zero(block_offset(sb.journal_start), sb.journal_blocks * kBlockSize);
  media.zero(block_offset(sb.inode_start), sb.inode_blocks * kBlockSize);
  media.flush(0, block_offset(sb.data_start));
  Journal::format(media, sb);
  DataChecksums::format(media, sb);

  InodeRec root;
  root.flags = kInodeInUse;
  root.ino = kRootIno;
  root.mode = S_IFDIR | 0755;
  root.uid = options.root_uid;
  root.gid = options.root_gid;
  root.nlink = 2;
  root.atime_ns = root.mtime_ns = root.ctime_ns = root.btime_ns = sb.created_ns;
  root.generation = 1;
  root.parent = kRootIno;
  std::byte rec[kInodeSize];
  encode_inode(root, rec);
  media.write(inode_offset(sb, kRootIno), rec, kInodeSize);
  media.flush(inode_offset(sb, kRootIno), kInodeSize);
  media.drain();

  std::byte super[kSuperblockSize];
  encode_superblock(sb, super);
  media.write(block_offset(sb.copy_block()), super, kSuperblockSize);
  media.persist(block_offset(sb.copy_block()), kSuperblockSize);
  media.write(0, super, kSuperblockSize);
  media.persist(0, kSuperblockSize);
  return {};
}

}  // namespace poisonfs
