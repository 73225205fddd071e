// The packed fsmap page of POISONFS_IOC_FSMAP_PACKED (format in
// include/poisonfs/ioctl.h): records varint- and delta-coded, paths
// front-coded, so that one 16 KiB ioctl names about a thousand sharers of a
// block instead of twelve round trips of fixed-size records.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "poisonfs/error.h"
#include "poisonfs/filesystem.h"

namespace poisonfs {

// Owners that name an inode: data, extents, directory, xattr blocks.
bool fsmap_owner_has_inode(FsmapOwner owner);

// The distinct inodes of the data records, sorted; slot, if given, gets
// each data record's index into them (slot.size() == records.size()).
std::vector<Ino> distinct_data_inodes(const std::vector<FsmapEntry>& records, std::vector<uint32_t>* slot = nullptr);

// Fills one page: add() records in device order until it says the page is
// full, then finish() appends the paths of the data owners, dropping
// trailing records whose paths no longer fit (the first record always
// stays, its paths marked not sent if need be).
class FsmapPacker {
 public:
  // The paths of inos, flat (Filesystem::paths).
  using PathsOf = std::function<void(std::span<const Ino> inos, PathList& out)>;

  explicit FsmapPacker(std::span<uint8_t> page);

  // False (the record not taken) when the records alone fill the page.
  bool add(const FsmapEntry& e);
  // Appends the path table; returns how many records the page keeps.
  size_t finish(const PathsOf& paths_of);

  size_t used() const { return used_; }
  const std::vector<FsmapEntry>& records() const { return records_; }

 private:
  std::span<uint8_t> page_;
  size_t records_end_ = 0;          // records are encoded into page_ as added
  std::vector<size_t> record_end_;  // end of each record in page_
  std::vector<FsmapEntry> records_;
  size_t used_ = 0;
};

// The names of one inode as a page carries them; sent is false when they
// were too long for the page (ask POISONFS_IOC_PATHS_BATCH).
using OnPaths = std::function<void(Ino ino, bool sent, std::span<const std::string> paths)>;

// Decodes a page of `count` records (appended to records) and its path
// table (each entry to on_paths); EIO on anything malformed.
Status unpack_fsmap(std::span<const uint8_t> page, uint32_t count, std::vector<FsmapEntry>& records,
                    const OnPaths& on_paths);

}  // namespace poisonfs
