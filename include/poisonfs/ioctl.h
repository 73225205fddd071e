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
  uint64_t reserved[16];
};

#define POISONFS_IOC_STAT _IOR(POISONFS_IOC_MAGIC, 1, struct poisonfs_stat)
