// The simulated DIMM's error record, IMAGE.badblocks: where the pmem media
// keeps the device poison list (include/poisonfs/poison.h) between mounts.
//
// Rewriting the whole record at every change (temporary file, fsync, rename)
// cost a recovery write more than the write itself, so the record is a base
// list followed by an append-only log of changes, one write(2) + fdatasync
// each:
//
//   OFF LEN known|latent     the base: one range per line (also the whole
//   ...                      format of older versions, which still loads)
//   + OFF LEN known|latent   a group: one change of the list, ranges added
//   - OFF LEN                (known wins over latent) or removed, in order,
//   = CRC                    ended by the crc32c of its lines, 8 hex digits
//
// The loader applies the base and every complete group whose crc matches, in
// order, and ignores the rest: a group torn by a crash during its append (at
// the end), or damaged. The base is only ever written whole (temporary file,
// rename): compaction rewrites the record as a base of the current list when
// the log has grown past a bound, after a failed append, and at open and
// close of a shared mapping.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "poisonfs/poison.h"

namespace poisonfs {

// A record's text replayed: the list it describes, clipped to a device of
// `device_size` bytes. `damaged` when a group was torn or its crc did not
// match (ignored), or a line was unreadable.
struct PoisonRecordContents {
  std::vector<PoisonRange> ranges;
  size_t groups = 0;  // complete, valid groups applied
  bool damaged = false;
};
PoisonRecordContents parse_poison_record(std::string_view text, uint64_t device_size);

// The text of the base list (plain lines) and of one change's group.
std::string encode_poison_base(const std::vector<PoisonRange>& ranges);
std::string encode_poison_group(const PoisonChange& change);

// The record file of one image, opened by a shared mapping. Not thread-safe:
// its one caller, PoisonList's change callback, is serialized by the list.
class PoisonRecord {
 public:
  explicit PoisonRecord(std::string path) : path_(std::move(path)) {}
  ~PoisonRecord();
  PoisonRecord(const PoisonRecord&) = delete;
  PoisonRecord& operator=(const PoisonRecord&) = delete;

  const std::string& path() const { return path_; }
  // Reads the file into `text`; a missing file reads as empty. Returns the
  // error text, empty on success.
  std::string read(std::string& text) const;
  // Saves one change of `list` (its state after the change): appends its
  // group, or compacts (see above). Returns the error text, empty on
  // success; after a failure the next save compacts.
  std::string save(const PoisonChange& change, const PoisonList& list);
  // Rewrites the record as a base of `ranges` (no file when empty) and keeps
  // it open for appends. Returns the error text, empty on success.
  std::string compact(const std::vector<PoisonRange>& ranges);
  // Whether the file is more than the base of the list (groups appended
  // since the last compaction) or lacks a change (a save failed).
  bool needs_compaction() const { return log_bytes_ > base_bytes_ || behind_; }

 private:
  void close_log();
  std::string append(const std::string& group);
  int remove_file();
  int write_base(const std::vector<PoisonRange>& ranges);

  std::string path_;
  int fd_ = -1;  // O_APPEND; -1: the next save compacts
  uint64_t base_bytes_ = 0;
  uint64_t log_bytes_ = 0;  // the file's size
  bool behind_ = false;      // a save failed since the last compaction
};

}  // namespace poisonfs
