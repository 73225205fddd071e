#include "fs/fsmap_pack.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "poisonfs/ioctl.h"

namespace poisonfs {
namespace {

static_assert(sizeof(poisonfs_fsmap_packed) <= 16383, "a restricted FUSE ioctl carries at most 16383 bytes");

constexpr uint8_t kOwnerMask = 0x0f;
constexpr uint8_t kShared = 0x10;
constexpr uint8_t kPoisoned = 0x20;
constexpr uint8_t kSameRange = 0x40;

// Writes v at `at`; the caller has made room for kMaxVarint bytes.
constexpr size_t kMaxVarint = 10;
uint8_t* put_varint(uint8_t* at, uint64_t v) {
  while (v >= 0x80) {
    *at++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *at++ = static_cast<uint8_t>(v);
  return at;
}

size_t varint_size(uint64_t v) {
  size_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

uint64_t zigzag(int64_t v) { return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63); }
int64_t unzigzag(uint64_t v) { return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1); }

// Eight bytes at a time: sibling paths share all but their last few bytes.
size_t common_prefix(std::string_view a, std::string_view b) {
  const size_t limit = std::min(a.size(), b.size());
  size_t n = 0;
  for (; n + 8 <= limit; n += 8) {
    uint64_t x, y;
    std::memcpy(&x, a.data() + n, 8);
    std::memcpy(&y, b.data() + n, 8);
    if (x == y) continue;
    // The first differing byte: the lowest one in memory order.
    const int bits = std::endian::native == std::endian::little ? std::countr_zero(x ^ y) : std::countl_zero(x ^ y);
    return n + static_cast<size_t>(bits) / 8;
  }
  while (n < limit && a[n] == b[n]) ++n;
  return n;
}

constexpr size_t kMaxRecord = 1 + 4 * kMaxVarint;

// Writes a record at `at` (kMaxRecord bytes of room); returns its end.
uint8_t* encode_record(const FsmapEntry* prev, const FsmapEntry& e, uint8_t* at) {
  uint8_t head = static_cast<uint8_t>(static_cast<uint32_t>(e.owner) & kOwnerMask);
  if (e.shared) head |= kShared;
  if (e.poisoned) head |= kPoisoned;
  bool same = prev && prev->physical == e.physical && prev->length == e.length;
  if (same) head |= kSameRange;
  *at++ = head;
  if (!same) {
    uint64_t base = prev ? prev->physical : 0;
    at = put_varint(at, zigzag(static_cast<int64_t>(e.physical - base)));
    at = put_varint(at, e.length);
  }
  if (fsmap_owner_has_inode(e.owner)) at = put_varint(at, e.ino);
  if (e.owner == FsmapOwner::kData) at = put_varint(at, e.file_offset);
  return at;
}

// Writes one path table entry, front-coded against `prev_path`, into the
// `room` bytes at `at`: its size, or 0 (prev_path untouched) when it does
// not fit. One pass: the prefix of each path is compared once.
size_t encode_paths(Ino ino, const PathList::Paths& paths, std::string_view& prev_path, uint8_t* at, size_t room) {
  uint8_t* p = at;
  uint8_t* const end = at + room;
  auto varint = [&](uint64_t v) {
    if (static_cast<size_t>(end - p) < varint_size(v)) return false;
    p = put_varint(p, v);
    return true;
  };
  if (!varint(ino) || !varint(paths.size() + 1)) return 0;
  std::string_view prev = prev_path;
  for (std::string_view path : paths) {
    size_t shared = common_prefix(path, prev);
    size_t suffix = path.size() - shared;
    if (!varint(shared) || !varint(suffix) || static_cast<size_t>(end - p) < suffix) return 0;
    std::memcpy(p, path.data() + shared, suffix);
    p += suffix;
    prev = path;
  }
  prev_path = prev;
  return static_cast<size_t>(p - at);
}

// Reads a page, failing (false) past its end.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : in_(in) {}
  bool byte(uint8_t& v) {
    if (at_ >= in_.size()) return false;
    v = in_[at_++];
    return true;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!byte(b)) return false;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;  // more than ten bytes
  }
  bool bytes(size_t n, std::string& out) {
    if (n > in_.size() - at_) return false;
    out.append(reinterpret_cast<const char*>(in_.data() + at_), n);
    at_ += n;
    return true;
  }
  bool at_end() const { return at_ == in_.size(); }
  size_t left() const { return in_.size() - at_; }

 private:
  std::span<const uint8_t> in_;
  size_t at_ = 0;
};

Status malformed(const char* what) { return fail(std::errc::io_error, std::string("malformed fsmap page: ") + what); }

bool decode_record(Reader& in, const FsmapEntry* prev, FsmapEntry& e) {
  uint8_t head;
  if (!in.byte(head)) return false;
  e.owner = static_cast<FsmapOwner>(head & kOwnerMask);
  e.shared = head & kShared;
  e.poisoned = head & kPoisoned;
  if (head & kSameRange) {
    if (!prev) return false;
    e.physical = prev->physical;
    e.length = prev->length;
  } else {
    uint64_t delta;
    if (!in.varint(delta) || !in.varint(e.length)) return false;
    e.physical = (prev ? prev->physical : 0) + static_cast<uint64_t>(unzigzag(delta));
  }
  if (fsmap_owner_has_inode(e.owner) && !in.varint(e.ino)) return false;
  if (e.owner == FsmapOwner::kData && !in.varint(e.file_offset)) return false;
  return true;
}

// One path table entry into `paths` (reused), each path front-coded
// against the one before: the last of the entry before (`prev_path`) for
// the first.
bool decode_paths(Reader& in, Ino& ino, bool& sent, std::vector<std::string>& paths, size_t& count,
                  const std::string& prev_path) {
  uint64_t n;
  if (!in.varint(ino) || !in.varint(n) || n > in.left() + 1) return false;
  sent = n > 0;
  count = sent ? n - 1 : 0;
  if (paths.size() < count) paths.resize(count);
  for (size_t i = 0; i < count; ++i) {
    const std::string& prev = i == 0 ? prev_path : paths[i - 1];
    uint64_t shared, suffix;
    if (!in.varint(shared) || !in.varint(suffix) || shared > prev.size()) return false;
    std::string& path = paths[i];
    path.assign(prev, 0, shared);
    if (!in.bytes(suffix, path)) return false;
  }
  return true;
}

}  // namespace

bool fsmap_owner_has_inode(FsmapOwner owner) {
  return owner == FsmapOwner::kData || owner == FsmapOwner::kExtents || owner == FsmapOwner::kDirectory ||
         owner == FsmapOwner::kXattrs;
}

// The sharers of a range come in inode order: one pass then; otherwise one
// sort of (inode, record) keys, no search per record.
std::vector<Ino> distinct_data_inodes(const std::vector<FsmapEntry>& records, std::vector<uint32_t>* slot) {
  std::vector<Ino> inos;
  auto is_data = [](const FsmapEntry& e) { return e.owner == FsmapOwner::kData; };
  bool in_order = true;
  Ino last = 0;
  for (const FsmapEntry& e : records) {
    if (!is_data(e)) continue;
    in_order = in_order && e.ino >= last;
    last = e.ino;
  }
  if (in_order) {
    for (uint32_t r = 0; r < records.size(); ++r) {
      if (!is_data(records[r])) continue;
      if (inos.empty() || inos.back() != records[r].ino) inos.push_back(records[r].ino);
      if (slot) (*slot)[r] = static_cast<uint32_t>(inos.size() - 1);
    }
    return inos;
  }
  std::vector<std::pair<Ino, uint32_t>> keys;
  keys.reserve(records.size());
  for (uint32_t r = 0; r < records.size(); ++r)
    if (is_data(records[r])) keys.emplace_back(records[r].ino, r);
  std::sort(keys.begin(), keys.end());
  for (const auto& [ino, r] : keys) {
    if (inos.empty() || inos.back() != ino) inos.push_back(ino);
    if (slot) (*slot)[r] = static_cast<uint32_t>(inos.size() - 1);
  }
  return inos;
}

FsmapPacker::FsmapPacker(std::span<uint8_t> page) : page_(page) {
  // A page holds about a thousand owners of a shared block: one growth.
  records_.reserve(1024);
  record_end_.reserve(1024);
}

bool FsmapPacker::add(const FsmapEntry& e) {
  // Records go straight into the page; one byte stays for the path table's
  // entry count.
  if (records_end_ + kMaxRecord + 1 > page_.size()) return false;
  uint8_t* at = page_.data() + records_end_;
  records_end_ = static_cast<size_t>(encode_record(records_.empty() ? nullptr : &records_.back(), e, at) - page_.data());
  records_.push_back(e);
  record_end_.push_back(records_end_);
  return true;
}

size_t FsmapPacker::finish(const PathsOf& paths_of) {
  // The data owners' paths, fetched at once (one lock, no per-inode calls);
  // slot[r]: record r's inode in inos.
  std::vector<uint32_t> slot(records_.size());
  std::vector<Ino> inos = distinct_data_inodes(records_, &slot);
  PathList names;
  if (!inos.empty()) paths_of(inos, names);
  std::vector<bool> named(inos.size());

  // The path table is built in a scratch page, then moved behind the
  // records kept (its entry count, a varint, goes between).
  std::vector<uint8_t> table(page_.size());
  size_t table_used = 0;
  std::string_view prev_path;  // into names: stable while encoding
  size_t entries = 0;
  size_t kept = 0;
  for (; kept < records_.size(); ++kept) {
    const FsmapEntry& e = records_[kept];
    size_t i = slot[kept];
    bool new_inode = e.owner == FsmapOwner::kData && !named[i];
    size_t fixed = record_end_[kept] + varint_size(entries + (new_inode ? 1 : 0)) + table_used;
    size_t room = fixed < page_.size() ? page_.size() - fixed : 0;
    size_t entry = 0;
    if (new_inode && room > 0) entry = encode_paths(e.ino, names.of(i), prev_path, table.data() + table_used, room);
    if (new_inode ? entry == 0 : fixed > page_.size()) {
      if (kept > 0) break;
      // The first record's names alone overflow the page.
      table_used = static_cast<size_t>(put_varint(table.data(), e.ino) - table.data());
      table[table_used++] = 0;  // not sent
      named[i] = true;
      ++entries;
      continue;
    }
    if (new_inode) {
      named[i] = true;
      table_used += entry;
      ++entries;
    }
  }
  records_.resize(kept);
  size_t at = kept == 0 ? 0 : record_end_[kept - 1];
  uint8_t* end = put_varint(page_.data() + at, entries);
  std::memcpy(end, table.data(), table_used);
  used_ = static_cast<size_t>(end - page_.data()) + table_used;
  return kept;
}

Status unpack_fsmap(std::span<const uint8_t> page, uint32_t count, std::vector<FsmapEntry>& records,
                    const OnPaths& on_paths) {
  if (count > page.size()) return malformed("record count");  // each record takes a byte at least
  Reader in(page);
  size_t first = records.size();
  if (records.capacity() < first + count) records.reserve(std::max<size_t>(first + count, 2 * records.capacity()));
  for (uint32_t i = 0; i < count; ++i) {
    FsmapEntry e;
    if (!decode_record(in, records.size() > first ? &records.back() : nullptr, e)) return malformed("records");
    records.push_back(e);
  }
  uint64_t entries;
  if (!in.varint(entries) || entries > page.size()) return malformed("path table");
  std::string prev_path;
  std::vector<std::string> paths;
  for (uint64_t i = 0; i < entries; ++i) {
    Ino ino;
    bool sent;
    size_t n;
    if (!decode_paths(in, ino, sent, paths, n, prev_path)) return malformed("paths");
    on_paths(ino, sent, std::span<const std::string>(paths).first(n));
    // Kept without a copy: paths[n - 1] is rewritten before it is read again.
    if (n > 0) prev_path.swap(paths[n - 1]);
  }
  if (!in.at_end()) return malformed("trailing bytes");
  return {};
}

}  // namespace poisonfs
