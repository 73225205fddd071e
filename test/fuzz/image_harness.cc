// The image fuzzing harness (see image_harness.h for the input format).
#include "image_harness.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_set>

#include "format/coding.h"
#include "format/crc32c.h"
#include "format/layout.h"
#include "poisonfs/filesystem.h"

namespace poisonfs::fuzz {
namespace {

// The smallest device mkfs accepts, so each input copies and scans as few
// bytes as possible (ASan makes every copy fault its pages in): 256 blocks,
// a 64-block journal, 64 inodes, 186 data blocks, of which the seed uses
// about 165.
constexpr uint64_t kDeviceBytes = 1 << 20;
// Journal layout constants (src/journal/journal.cc; not exported).
constexpr uint32_t kTxMagic = 0x58544A50;
constexpr size_t kJournalHeaderSize = 24;
constexpr uint64_t kJournalHeaderStride = 64;
constexpr size_t kTxHeaderSize = 32;
constexpr size_t kRecHeaderSize = 16;

// Every walk is bounded, so a hostile image cannot make the harness itself
// loop or grow without end; a hang is then always the core's.
constexpr size_t kMaxInodesVisited = 256;
constexpr size_t kMaxEntriesPerDir = 512;
constexpr size_t kMaxReadBytes = 64 << 10;
constexpr size_t kMaxFsmapEntries = 4096;

std::span<const std::byte> as_bytes(std::string_view s) { return std::as_bytes(std::span(s)); }

// POISONFS_FUZZ_VERBOSE=1: what the seed holds and what each stage of an
// input did, on stderr (to write inputs and reproducers against).
bool verbose() {
  static const bool on = std::getenv("POISONFS_FUZZ_VERBOSE") != nullptr;
  return on;
}

struct Seed {
  std::vector<uint8_t> bytes;
  std::vector<PoisonRange> poison;
  Superblock sb;
  std::array<std::vector<uint64_t>, kKinds> blocks;  // block numbers of each kind, ascending
  std::vector<BlockKind> kind_of;                    // per block
  std::vector<uint64_t> values;                      // interesting 8-byte values
};

// --- sealing: mirrors of the encoders in src/format/layout.cc and
// src/journal/journal.cc, so an edit can be made to check.

void seal_front(std::byte* rec, size_t size) { put_le<uint32_t>(rec, crc32c(rec + 4, size - 4)); }

void seal_superblock(std::byte* block) {
  put_le<uint32_t>(block + kSuperblockSize - 4, crc32c(block, kSuperblockSize - 4));
}

// Every record in one chain block: the header, then each non-empty slot of
// the kind the header names (or the seed's kind when the header names none).
void seal_chain_block(std::byte* block, BlockKind seed_kind) {
  seal_front(block, kChainHeaderSize);
  uint32_t raw = get_le<uint32_t>(block + 4);
  ChainKind kind = seed_kind == BlockKind::kDirentChain  ? ChainKind::kDirents
                   : seed_kind == BlockKind::kXattrChain ? ChainKind::kXattrs
                                                         : ChainKind::kExtents;
  for (ChainKind k : {ChainKind::kExtents, ChainKind::kDirents, ChainKind::kXattrs})
    if (raw == static_cast<uint32_t>(k)) kind = k;
  const uint32_t size = slot_size_of(kind);
  for (uint32_t i = 0; i < slots_per_block(kind); ++i) {
    std::byte* slot = block + kChainHeaderSize + size_t{i} * size;
    if (!all_zero(slot, size)) seal_front(slot, size);
  }
}

void seal_inode_block(std::byte* block) {
  for (size_t i = 0; i < kInodesPerBlock; ++i) {
    std::byte* slot = block + i * kInodeSize;
    if (!all_zero(slot, kInodeSize)) seal_front(slot, kInodeSize);
  }
}

// The transactions appended after the last checkpoint start at the second
// journal block; reseals each one that still has its magic and a length
// that fits, and follows them as replay does.
void seal_journal_log(std::byte* image, const Superblock& sb) {
  std::byte* journal = image + block_offset(sb.journal_start);
  const uint64_t end = sb.journal_blocks * kBlockSize;
  for (uint64_t head = kBlockSize; end - head >= kTxHeaderSize;) {
    std::byte* tx = journal + head;
    uint64_t len = get_le<uint64_t>(tx + 24);
    if (get_le<uint32_t>(tx + 4) != kTxMagic || len < kTxHeaderSize || len > end - head) break;
    seal_front(tx, len);
    head += (len + 7) & ~uint64_t{7};
  }
}

void seal_block(std::vector<uint8_t>& image, const Seed& seed, uint64_t block) {
  std::byte* p = reinterpret_cast<std::byte*>(image.data()) + block_offset(block);
  switch (seed.kind_of[block]) {
    case BlockKind::kSuperblock:
    case BlockKind::kSuperCopy:
      seal_superblock(p);
      break;
    case BlockKind::kJournalHeader:
      seal_front(p, kJournalHeaderSize);
      seal_front(p + kJournalHeaderStride, kJournalHeaderSize);
      break;
    case BlockKind::kJournalLog:
      seal_journal_log(reinterpret_cast<std::byte*>(image.data()), seed.sb);
      break;
    case BlockKind::kInodes:
      seal_inode_block(p);
      break;
    case BlockKind::kExtentChain:
    case BlockKind::kDirentChain:
    case BlockKind::kXattrChain:
      seal_chain_block(p, seed.kind_of[block]);
      break;
    default:
      break;
  }
}

// --- the seed image

// Times and the uuid are the only inputs of mkfs and the operations that
// change from run to run: fixed here so that the seed (and so every input's
// meaning) is the same in every process and every build.
void normalize_inode(std::byte* slot) {
  auto rec = decode_inode(slot);
  if (!rec || !*rec) return;
  InodeRec r = **rec;
  r.atime_ns = r.mtime_ns = r.ctime_ns = r.btime_ns = 1'700'000'000'000'000'000;
  encode_inode(r, slot);
}

void normalize(std::vector<uint8_t>& image, const Superblock& geometry) {
  std::byte* base = reinterpret_cast<std::byte*>(image.data());
  Superblock sb = geometry;
  sb.uuid.fill(0x5a);
  sb.created_ns = 1'700'000'000'000'000'000;
  encode_superblock(sb, base);
  encode_superblock(sb, base + block_offset(sb.copy_block()));
  for (uint64_t off = block_offset(sb.inode_start); off < block_offset(sb.data_start); off += kInodeSize)
    normalize_inode(base + off);
  // Inode images inside the logged transactions.
  std::byte* journal = base + block_offset(sb.journal_start);
  const uint64_t end = sb.journal_blocks * kBlockSize;
  for (uint64_t head = kBlockSize; end - head >= kTxHeaderSize;) {
    std::byte* tx = journal + head;
    uint64_t len = get_le<uint64_t>(tx + 24);
    if (get_le<uint32_t>(tx + 4) != kTxMagic || len < kTxHeaderSize || len > end - head) break;
    uint32_t nrecs = get_le<uint32_t>(tx + 16);
    for (size_t pos = kTxHeaderSize, i = 0; i < nrecs; ++i) {
      uint64_t off = get_le<uint64_t>(tx + pos);
      uint32_t rlen = get_le<uint32_t>(tx + pos + 8);
      if (off >= block_offset(sb.inode_start) && off < block_offset(sb.data_start) && rlen == kInodeSize)
        normalize_inode(tx + pos + kRecHeaderSize);
      pos += kRecHeaderSize + ((rlen + 7) & ~size_t{7});
    }
    seal_front(tx, len);
    head += (len + 7) & ~uint64_t{7};
  }
}

// Errors abort the seed's construction: the seed must be complete for the
// corpus to mean anything.
template <class T>
T must(Result<T> result) {
  if (!result) {
    std::fprintf(stderr, "fuzz seed: %s\n", result.error().to_string().c_str());
    std::abort();
  }
  return *std::move(result);
}

// Populates a filesystem with one of each structure.
void populate(Filesystem& fs) {
  const Caller user{1000, 1000, 022};
  Ino a = must(fs.mknod(kRootIno, "a", S_IFREG | 0644, 0, user)).ino;
  must(fs.write(a, 0, as_bytes(std::string(3 * kBlockSize + 100, 'a'))));
  must(fs.setxattr(a, "user.x", "1", 0));
  must(fs.setxattr(a, "user.y", std::string(300, 'y'), 0));
  Ino dir = must(fs.mkdir(kRootIno, "dir", 0755, user)).ino;
  Ino b = must(fs.mknod(dir, "b", S_IFREG | 0600, 0, user)).ino;
  must(fs.write(b, 0, as_bytes(std::string(5000, 'b'))));
  must(fs.write(b, 40000, as_bytes(std::string(3000, 'B'))));  // a hole in between
  Ino sub = must(fs.mkdir(dir, "sub", 0700, user)).ino;
  Ino c = must(fs.mknod(sub, "c", S_IFREG | 0644, 0, user)).ino;
  must(fs.clone_range(a, 0, c, 0, 0));  // every block shared
  Ino d = must(fs.mknod(sub, "d", S_IFREG | 0644, 0, user)).ino;
  must(fs.clone_range(a, 0, d, 0, 2 * kBlockSize));
  must(fs.write(d, 100, as_bytes("copy-on-write")));  // one block unshared
  must(fs.link(a, dir, "hard"));
  must(fs.symlink(kRootIno, "link", "dir/b", user));
  Ino pre = must(fs.mknod(kRootIno, "pre", S_IFREG | 0644, 0, user)).ino;
  must(fs.fallocate(pre, 0, 0, 4 * kBlockSize));  // unwritten extent
  // More extents than one record block holds: a two-block extent chain.
  Ino frag = must(fs.mknod(kRootIno, "frag", S_IFREG | 0644, 0, user)).ino;
  for (uint64_t i = 0; i < slots_per_block(ChainKind::kExtents) + 4; ++i)
    must(fs.write(frag, 2 * i * kBlockSize, as_bytes("f")));
  // More names than one dirent block holds.
  for (int i = 0; i < 16; ++i) must(fs.mknod(dir, "n" + std::to_string(100 + i), S_IFREG | 0644, 0, user));
  must(fs.mknod(kRootIno, "fifo", S_IFIFO | 0644, 0, user));
}

// Changes after the last checkpoint: these stay as transactions in the
// journal (replayed at every mount), plus an orphan and poison.
void populate_journal(Filesystem& fs) {
  const Caller user{1000, 1000, 022};
  Ino dir = must(fs.lookup(kRootIno, "dir")).ino;
  Ino a = must(fs.lookup(kRootIno, "a")).ino;
  Ino b = must(fs.lookup(dir, "b")).ino;
  must(fs.write(b, 100, as_bytes("logged")));
  must(fs.rename(dir, "n100", kRootIno, "renamed", 0));
  must(fs.setxattr(b, "user.j", "logged", 0));
  must(fs.unlink(dir, "n101"));
  Ino orphan = must(fs.mknod(kRootIno, "orphan", S_IFREG | 0644, 0, user)).ino;
  must(fs.write(orphan, 0, as_bytes(std::string(5000, 'o'))));
  must(fs.open(orphan));
  must(fs.unlink(kRootIno, "orphan"));  // open and unlinked: reclaimed at mount
  // Known poison in a block a shares with dir/sub/c, latent poison in b,
  // known poison in free space (quarantined).
  auto map_a = must(fs.bmap(a));
  must(fs.inject_poison(map_a.at(0).physical + kBlockSize, 64, false));
  auto map_b = must(fs.bmap(b));
  must(fs.inject_poison(map_b.at(0).physical, 128, true));
  uint64_t free_at = 0;
  must(fs.fsmap(0, kDeviceBytes, [&](const FsmapEntry& e) {
    if (e.owner != FsmapOwner::kFree) return true;
    free_at = e.physical;
    return false;
  }));
  if (free_at) must(fs.inject_poison(free_at, 64, false));
}

void classify(Seed& seed, Filesystem& fs) {
  const Superblock& sb = seed.sb;
  seed.kind_of.assign(sb.total_blocks, BlockKind::kAny);
  seed.kind_of[0] = BlockKind::kSuperblock;
  seed.kind_of[sb.copy_block()] = BlockKind::kSuperCopy;
  seed.kind_of[sb.journal_start] = BlockKind::kJournalHeader;
  // Every journal block after the header: the log that replay walks.
  for (uint64_t b = sb.journal_start + 1; b < sb.inode_start; ++b) seed.kind_of[b] = BlockKind::kJournalLog;
  for (uint64_t b = sb.inode_start; b < sb.data_start; ++b) seed.kind_of[b] = BlockKind::kInodes;
  (void)fs.fsmap(0, kDeviceBytes, [&](const FsmapEntry& e) {
    BlockKind kind = e.owner == FsmapOwner::kExtents     ? BlockKind::kExtentChain
                     : e.owner == FsmapOwner::kDirectory ? BlockKind::kDirentChain
                     : e.owner == FsmapOwner::kXattrs    ? BlockKind::kXattrChain
                     : e.owner == FsmapOwner::kData      ? BlockKind::kData
                                                         : BlockKind::kAny;
    if (kind != BlockKind::kAny)
      for (uint64_t b = e.physical / kBlockSize; b < (e.physical + e.length + kBlockSize - 1) / kBlockSize; ++b)
        seed.kind_of[b] = kind;
    return true;
  });
  for (uint64_t b = 0; b < sb.total_blocks; ++b) {
    BlockKind kind = seed.kind_of[b];
    // Only the journal and inode blocks that hold something are worth aiming at.
    bool empty = all_zero(reinterpret_cast<const std::byte*>(seed.bytes.data()) + block_offset(b), kBlockSize);
    if ((kind == BlockKind::kJournalLog || kind == BlockKind::kInodes) && empty) continue;
    if (kind != BlockKind::kAny) seed.blocks[static_cast<int>(kind)].push_back(b);
  }
  for (uint64_t b = 0; b < sb.total_blocks; ++b) seed.blocks[static_cast<int>(BlockKind::kAny)].push_back(b);
  // Numbers a hostile image would use against bounds checks.
  seed.values = {0, 1, 2, UINT64_MAX, UINT64_MAX - 1, 1ull << 63, 1ull << 52, (1ull << 52) / kBlockSize,
                 sb.total_blocks, sb.total_blocks - 1, sb.total_blocks + 1, sb.journal_start, sb.journal_blocks,
                 sb.inode_start, sb.inode_blocks, sb.inode_count, sb.inode_count + 1, sb.data_start,
                 sb.data_start - 1, sb.data_end, sb.data_end - 1, sb.data_end + 1, kBlockSize,
                 kBlockSize * sb.journal_blocks, kDeviceBytes, kDeviceBytes + 1};
}

Seed build_seed() {
  Seed seed;
  auto device = make_memory_media(kDeviceBytes);
  if (!Filesystem::format(*device, {})) std::abort();
  seed.sb = *decode_superblock(device->at(0), device->size());
  {
    auto fs = Filesystem::mount(borrow_media(*device), {});
    if (!fs) std::abort();
    populate(**fs);
    if (!(*fs)->unmount()) std::abort();
  }
  auto fs = Filesystem::mount(borrow_media(*device), {});
  if (!fs) std::abort();
  populate_journal(**fs);
  // The image as a crash leaves it now: no unmount, the log not checkpointed.
  const auto* base = reinterpret_cast<const uint8_t*>(device->base());
  seed.bytes.assign(base, base + device->size());
  seed.poison = device->poison().all();
  normalize(seed.bytes, seed.sb);
  classify(seed, **fs);
  if (verbose()) {
    static const char* const kNames[kKinds] = {"superblock", "super-copy", "journal-header", "journal-log",
                                               "inodes", "extent-chain", "dirent-chain", "xattr-chain",
                                               "data", "any"};
    for (int k = 0; k < kKinds; ++k) {
      std::fprintf(stderr, "seed %-14s %3zu blocks:", kNames[k], seed.blocks[k].size());
      for (size_t i = 0; i < seed.blocks[k].size() && i < 8; ++i) std::fprintf(stderr, " %" PRIu64, seed.blocks[k][i]);
      std::fprintf(stderr, "\n");
    }
    for (const PoisonRange& r : seed.poison)
      std::fprintf(stderr, "seed poison %" PRIu64 "+%" PRIu64 "%s\n", r.offset, r.length, r.latent ? " latent" : "");
  }
  return seed;
}

const Seed& seed() {
  static const Seed s = build_seed();
  return s;
}

// --- applying an input

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool has(size_t n) const { return size_t(end_ - p_) >= n; }
  uint8_t u8() { return *p_++; }
  uint16_t u16() { uint16_t v = uint16_t(p_[0] | p_[1] << 8); p_ += 2; return v; }
  uint32_t u32() { uint32_t v = get_le<uint32_t>(reinterpret_cast<const std::byte*>(p_)); p_ += 4; return v; }
  const uint8_t* take(size_t n) { const uint8_t* q = p_; p_ += n; return q; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

uint64_t target_block(const Seed& s, int kind, uint8_t target, uint16_t offset) {
  const auto& list = s.blocks[kind];
  if (kind == static_cast<int>(BlockKind::kAny)) return (target + 256u * (offset >> 12)) % s.sb.total_blocks;
  if (list.empty()) return s.sb.total_blocks - 1;
  return list[target % list.size()];
}

struct Edited {
  std::vector<uint8_t> bytes;
  std::vector<PoisonRange> poison;  // injected: the bytes hold the pattern
  uint8_t flags = 0;
};

Edited apply(const uint8_t* data, size_t size) {
  const Seed& s = seed();
  Edited out{s.bytes, s.poison, 0};
  if (size == 0) return out;
  Reader in(data, size);
  out.flags = in.u8();
  std::vector<uint64_t> touched;
  auto template_media = make_memory_media(kDeviceBytes);  // only for the poison list's rounding
  while (in.has(1)) {
    uint8_t op = in.u8();
    int kind = (op >> 2) % kKinds;
    switch (op % 4) {
      case 0: {  // patch
        if (!in.has(4)) return out;
        uint8_t target = in.u8();
        uint16_t offset = in.u16();
        uint8_t len = in.u8();
        if (!in.has(len)) return out;
        const uint8_t* bytes = in.take(len);
        uint64_t block = target_block(s, kind, target, offset);
        size_t at = offset % kBlockSize, n = std::min<size_t>(len, kBlockSize - at);
        std::memcpy(out.bytes.data() + block_offset(block) + at, bytes, n);
        touched.push_back(block);
        break;
      }
      case 1: {  // poison
        if (!in.has(6)) return out;
        uint64_t off = uint64_t{in.u32()} * kPoisonUnit % kDeviceBytes;
        uint64_t len = std::min<uint64_t>(in.u16() + 1u, kDeviceBytes - off);
        PoisonRange r = template_media->poison().add(off, len, op & 4);
        for (uint64_t i = r.offset; i < r.end() && i < kDeviceBytes; ++i)
          out.bytes[i] = static_cast<uint8_t>(kPoisonPattern[i % sizeof kPoisonPattern]);
        break;
      }
      case 2: {  // interesting value
        if (!in.has(4)) return out;
        uint8_t target = in.u8();
        uint16_t offset = in.u16();
        uint64_t value = s.values[in.u8() % s.values.size()];
        uint64_t block = target_block(s, kind, target, offset);
        size_t at = std::min<size_t>(offset % kBlockSize, kBlockSize - 8);
        put_le<uint64_t>(reinterpret_cast<std::byte*>(out.bytes.data()) + block_offset(block) + at, value);
        touched.push_back(block);
        break;
      }
      case 3: {  // block copy
        if (!in.has(3)) return out;
        uint8_t target = in.u8();
        int src_kind = in.u8() % kKinds;
        uint8_t src_target = in.u8();
        uint64_t dst = target_block(s, kind, target, 0), src = target_block(s, src_kind, src_target, 0);
        std::memcpy(out.bytes.data() + block_offset(dst), s.bytes.data() + block_offset(src), kBlockSize);
        touched.push_back(dst);
        break;
      }
    }
  }
  if (out.flags & 1) {
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t block : touched) seal_block(out.bytes, s, block);
  }
  // The seed's poison stays; new ranges merge into it.
  for (const PoisonRange& r : template_media->poison().all()) out.poison.push_back(r);
  return out;
}

std::unique_ptr<Media> media_of(const Edited& e) {
  auto m = make_memory_media(e.bytes.size());
  m->write(0, e.bytes.data(), e.bytes.size());
  for (const PoisonRange& r : e.poison) m->poison().add(r.offset, r.length, r.latent);
  return m;
}

std::unique_ptr<Media> copy_of(Media& from) {
  auto m = make_memory_media(from.size());
  m->write(0, from.base(), from.size());
  for (const PoisonRange& r : from.poison().all()) m->poison().add(r.offset, r.length, r.latent);
  return m;
}

// --- what a mounted filesystem is put through

void visit(Filesystem& fs, const Attr& attr, std::vector<Ino>& dirs, std::vector<Ino>& files) {
  (void)fs.getattr(attr.ino);
  if (auto names = fs.listxattr(attr.ino))
    for (const std::string& name : *names) (void)fs.getxattr(attr.ino, name);
  (void)fs.paths(attr.ino);
  (void)fs.bmap(attr.ino);
  (void)fs.file_poison(attr.ino);
  if (S_ISDIR(attr.mode)) dirs.push_back(attr.ino);
  if (S_ISLNK(attr.mode)) (void)fs.readlink(attr.ino);
  if (!S_ISREG(attr.mode)) return;
  files.push_back(attr.ino);
  if (!fs.open(attr.ino)) return;
  std::vector<std::byte> buf(std::min<uint64_t>(attr.size, kMaxReadBytes));
  (void)fs.read_copy(attr.ino, 0, buf);
  if (attr.size > kMaxReadBytes) (void)fs.read_copy(attr.ino, attr.size - kMaxReadBytes, buf);
  auto sink = [](std::span<const ReadSegment> segs) {
    volatile uint8_t sum = 0;  // touch every byte: ASan checks the mapping
    for (const ReadSegment& s : segs)
      if (s.data)
        for (size_t i = 0; i < s.length; i += 512) sum = sum + uint8_t(s.data[i]);
  };
  (void)fs.read_direct(attr.ino, 0, kMaxReadBytes, sink);
  (void)fs.read(attr.ino, attr.size / 2, kBlockSize, sink);
  (void)fs.release(attr.ino);
}

// Walks the tree from the root (bounded), then the device-wide queries.
// Returns the regular files and directories found.
std::pair<std::vector<Ino>, std::vector<Ino>> walk(Filesystem& fs) {
  (void)fs.statfs();
  (void)fs.info();
  (void)fs.health();
  std::vector<Ino> dirs, files, todo;
  std::unordered_set<Ino> seen{kRootIno};
  if (auto root = fs.getattr(kRootIno)) visit(fs, *root, todo, files);
  while (!todo.empty() && seen.size() < kMaxInodesVisited) {
    Ino dir = todo.back();
    todo.pop_back();
    dirs.push_back(dir);
    std::vector<std::pair<std::string, uint64_t>> entries;
    (void)fs.readdir(dir, 0, [&](const DirEntry& e) {
      entries.emplace_back(std::string(e.name), e.next_cookie);
      return entries.size() < kMaxEntriesPerDir;
    });
    // Resuming from a cookie, as a reply buffer that filled up does.
    if (entries.size() > 3) (void)fs.readdir(dir, entries[2].second, [](const DirEntry&) { return false; });
    for (const auto& [name, cookie] : entries) {
      auto attr = fs.lookup(dir, name);
      if (!attr || name == "." || name == ".." || !seen.insert(attr->ino).second) continue;
      visit(fs, *attr, todo, files);
    }
  }
  size_t n = 0;
  (void)fs.fsmap(0, UINT64_MAX, [&](const FsmapEntry&) { return ++n < kMaxFsmapEntries; });
  uint64_t dropped = 0;
  (void)fs.events(0, 64, &dropped);
  (void)fs.badblocks();
  return {dirs, files};
}

void modify(Filesystem& fs, const std::vector<Ino>& dirs, const std::vector<Ino>& files) {
  const Caller root{0, 0, 022};
  std::string data(3 * kBlockSize + 123, 'z');
  Ino created = 0;
  if (auto a = fs.mknod(kRootIno, "fz.new", S_IFREG | 0644, 0, root)) created = a->ino;
  if (created) {
    (void)fs.write(created, 0, as_bytes(data));
    (void)fs.write(created, 10 * kBlockSize, as_bytes(data));
  }
  for (size_t i = 0; i < files.size() && i < 3; ++i) {
    Ino f = files[i];
    if (created) {
      (void)fs.clone_range(f, 0, created, 16 * kBlockSize, 0);
      (void)fs.copy_range(f, 100, created, 50, 3 * kBlockSize);
    }
    (void)fs.write(f, 10, as_bytes(data));  // copy-on-write where shared
    (void)fs.fallocate(f, kFallocPunchHole | kFallocKeepSize, kBlockSize, kBlockSize);
    (void)fs.fallocate(f, kFallocZeroRange, 2 * kBlockSize, 5000);
    (void)fs.fallocate(f, 0, 30 * kBlockSize, 2 * kBlockSize);
    SetAttr set;
    set.valid = SetAttr::kSize;
    if (auto attr = fs.getattr(f)) set.size = attr->size / 2;
    (void)fs.setattr(f, set, root);
    (void)fs.setxattr(f, "user.fz", "value", 0);
    (void)fs.removexattr(f, "user.x");
    (void)fs.link(f, kRootIno, "fz.link" + std::to_string(i));
    (void)fs.fsync(f, false);
  }
  Ino new_dir = 0;
  if (auto d = fs.mkdir(kRootIno, "fz.dir", 0755, root)) {
    new_dir = d->ino;
    (void)fs.rename(kRootIno, "fz.new", new_dir, "moved", 0);
    (void)fs.symlink(new_dir, "fz.sym", "../a", root);
  }
  for (size_t i = 0; i < dirs.size() && i < 4; ++i) {
    std::vector<std::string> names;
    (void)fs.readdir(dirs[i], 0, [&](const DirEntry& e) {
      if (e.name != "." && e.name != "..") names.emplace_back(e.name);
      return names.size() < 4;
    });
    // Moving a directory into another walks up the target's parents (a
    // directory must not move below itself): in and out of each directory,
    // an entry of it into /fz.dir, an exchange; then names go away.
    if (new_dir) {
      if (fs.rename(kRootIno, "fz.dir", dirs[i], "fz.moved", 0))
        (void)fs.rename(dirs[i], "fz.moved", kRootIno, "fz.dir", 0);
      if (names.size() > 0) (void)fs.rename(dirs[i], names[0], new_dir, names[0], 0);
      if (names.size() > 1) (void)fs.rename(kRootIno, "fz.dir", dirs[i], names[1], kRenameExchange);
    }
    for (size_t j = 2; j < names.size(); ++j)
      if (!fs.unlink(dirs[i], names[j])) (void)fs.rmdir(dirs[i], names[j]);
  }
  (void)fs.notify_failure(block_offset(seed().sb.data_start), 4 * kBlockSize, 0);
}

// Mounts, walks (and modifies, scrubs), unmounts; with `remount`, mounts the
// result once more and walks it. Errors anywhere just end the run.
void report_check(const char* what, const Result<CheckReport>& r) {
  if (!verbose()) return;
  if (!r) {
    std::fprintf(stderr, "%s: error: %s\n", what, r.error().to_string().c_str());
    return;
  }
  std::fprintf(stderr, "%s: %zu problems, %zu repairs\n", what, r->problems.size(), r->repairs.size());
  for (const std::string& p : r->problems) std::fprintf(stderr, "  problem: %s\n", p.c_str());
}

void exercise(std::unique_ptr<Media> media, uint8_t flags, bool remount) {
  Media* device = media.get();
  auto fs = Filesystem::mount(std::move(media), {});
  if (verbose()) std::fprintf(stderr, "mount: %s\n", fs ? "ok" : fs.error().to_string().c_str());
  if (!fs) return;
  auto [dirs, files] = walk(**fs);
  if (flags & 4) {
    modify(**fs, dirs, files);
    walk(**fs);
  }
  if (flags & 8) (void)(*fs)->scrub([](uint64_t, uint64_t) {});
  bool unmounted = (*fs)->unmount().has_value();
  if (!remount || !unmounted) return;
  auto next = copy_of(*device);
  fs->reset();
  exercise(std::move(next), flags & ~uint8_t{4 | 8}, false);
}

}  // namespace

const std::vector<uint8_t>& seed_image_bytes() { return seed().bytes; }

void run_image_input(const uint8_t* data, size_t size) {
  Edited e = apply(data, size);
  {  // fsck, read-only
    auto m = media_of(e);
    report_check("fsck", check_filesystem(*m, false));
  }
  if (e.flags & 2) {  // fsck with repair; the repaired image is checked and mounted
    auto m = media_of(e);
    auto repaired = check_filesystem(*m, true);
    report_check("fsck repair", repaired);
    if (repaired) {
      report_check("fsck after repair", check_filesystem(*copy_of(*m), false));
      exercise(copy_of(*m), e.flags, false);
    }
  }
  exercise(media_of(e), e.flags, e.flags & 16);
}

}  // namespace poisonfs::fuzz
