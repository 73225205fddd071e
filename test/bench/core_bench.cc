// In-process benchmarks of the poisonfs core on make_memory_media: what the
// core costs without FUSE, the kernel or msync in the way. The FUSE-level
// figures, side by side with tmpfs, passthrough_ll and XFS, come from
// scripts/bench.sh; these say how much of them is the core's own.
//
//   build-bench/core_bench [--benchmark_min_time=0.2] [--benchmark_filter=REGEX]
//
// (Google Benchmark 1.7 takes --benchmark_min_time in plain seconds.)
//
// Cases (issue 2 to 5 targets in brackets):
//   SeqWrite/SeqRead      sequential throughput of the core, 1 MiB and 4 KiB ops;
//                         csums:0/1 an image without/with data checksums (write),
//                         verify:0/1 reads without/with crc32c verification
//                         [issue 5: the cost of crc32c, as a ratio]
//   CreateUnlink, Stat    namespace operation rates
//   Crc32c                crc32c of a 64-byte record, a 4 KiB block, 1 MiB
//   Fsmap1001Owners       owners of one block shared by 1,001 files   [<= 1 ms end to end]
//   CloneRange65536       clone of a file in 65,536 extents             [<= 0.1 s]
//   FsmapFull             whole-device listing, ~132k records          [<= 100 ms]
//   Mount1M               mount (load) of an image with 1M extents     [<= 1 s]
//   RmapDram/*            DRAM per rmap record, mallinfo2()            [<= 64 B]
//   RecoveryWrite         recovery write of 256 poisoned blocks vs a plain
//                         overwrite, private and shared by 3 files  [>= 0.8x]
//   RecoveryFragmentation extents and free fragments after recovering 1,000
//                         scattered poisoned blocks, in place vs punch+pwrite
//   NotifyFailure         notify_failure of a block with 1, 100, 10,000
//                         sharers                         [<= 10 ms at 10,000]
//   ReadPoisonCheck       sequential 1 MiB and random 4 KiB reads, empty poison
//                         list vs 10,000 ranges elsewhere; built with
//                         -DPOISONFS_BENCH_NO_POISON_CHECK it is the baseline
//                         without the check (scripts/bench.sh --only poison)
//                                                            [<= 2% slower]
//
// Compare cases of one run only, with the baselines interleaved:
//   --benchmark_repetitions=N --benchmark_enable_random_interleaving=true
//
// Also a helper for scripts/bench.sh, run instead of the benchmarks:
//   core_bench make-image IMAGE EXTENTS
// fills an mkfs'ed, unmounted IMAGE (through the core, on the real mapping)
// with EXTENTS one-block extents: two files written a block at a time in
// turn, so no two neighbours of a file are physically contiguous.
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "format/crc32c.h"
#include "fs/fsmap_pack.h"
#include "poisonfs/filesystem.h"
#include "poisonfs/ioctl.h"
#include "poisonfs/media.h"
#include "rmap/rmap.h"
#include "util/strfmt.h"

namespace poisonfs {
namespace {

constexpr uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "core_bench: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
T must(Result<T> r, const char* what) {
  if (!r) die(strfmt("{}: {}", what, r.error().to_string()));
  return std::move(*r);
}

void must(const Status& s, const char* what) {
  if (!s) die(strfmt("{}: {}", what, s.error().to_string()));
}

// A formatted memory device with the filesystem mounted on it.
struct MemFs {
  std::unique_ptr<Media> media;
  std::unique_ptr<Filesystem> fs;
  OpenOptions options;

  explicit MemFs(uint64_t size, const MkfsOptions& mkfs = {}, const OpenOptions& open = {})
      : media(make_memory_media(size)), options(open) {
    must(Filesystem::format(*media, mkfs), "format");
    mount();
  }
  ~MemFs() { fs.reset(); }  // before the media it borrows
  void mount() { fs = must(Filesystem::mount(borrow_media(*media), options), "mount"); }
  Filesystem* operator->() { return fs.get(); }
};

const Caller kRoot{};

Ino create(Filesystem& fs, Ino parent, const std::string& name) {
  return must(fs.mknod(parent, name, S_IFREG | 0644, 0, kRoot), "mknod").ino;
}

// Writes [0, bytes) of ino sequentially in `op`-byte writes.
void fill(Filesystem& fs, Ino ino, uint64_t bytes, size_t op) {
  std::vector<std::byte> buf(op, std::byte{0x5a});
  for (uint64_t off = 0; off < bytes; off += op) must(fs.write(ino, off, buf), "write");
}

uint64_t extent_count(Filesystem& fs, Ino ino) { return must(fs.bmap(ino), "bmap").size(); }

// Bytes that differ from block to block (so do their checksums).
std::vector<std::byte> pattern(uint64_t bytes) {
  std::vector<std::byte> out(bytes);
  uint64_t x = 0x9e3779b97f4a7c15;
  for (std::byte& b : out) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<std::byte>(x);
  }
  return out;
}

// The device byte offset of each of the first `blocks` blocks of ino.
std::vector<uint64_t> block_physicals(Filesystem& fs, Ino ino, uint64_t blocks) {
  std::vector<uint64_t> out;
  for (const BmapEntry& e : must(fs.bmap(ino), "bmap"))
    for (uint64_t o = 0; o < e.length && out.size() < blocks; o += kBlockSize) out.push_back(e.physical + o);
  if (out.size() != blocks) die("file shorter than expected");
  return out;
}

// Records of one owner kind in the whole device's fsmap.
uint64_t fsmap_records(Filesystem& fs, FsmapOwner owner) {
  uint64_t n = 0;
  must(fs.fsmap(0, UINT64_MAX, [&](const FsmapEntry& e) {
    n += e.owner == owner;
    return true;
  }), "fsmap");
  return n;
}

uint64_t malloc_in_use() {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

// Two sources of `blocks` blocks each (one extent apiece) and a file "frag"
// of `blocks` blocks whose block i is a clone of block i/2 of source i%2:
// no two neighbours of frag are physically contiguous, so it has `blocks`
// extents, and the first halves of the sources are cut into one rmap
// segment per block with two owners each.
struct Fragmented {
  Ino a = 0, b = 0, frag = 0;
};

Fragmented build_fragmented(Filesystem& fs, uint64_t blocks) {
  Fragmented f;
  f.a = create(fs, kRootIno, "src-a");
  f.b = create(fs, kRootIno, "src-b");
  fill(fs, f.a, blocks * kBlockSize, MiB);
  fill(fs, f.b, blocks * kBlockSize, MiB);
  f.frag = create(fs, kRootIno, "frag");
  for (uint64_t i = 0; i < blocks; ++i)
    must(fs.clone_range(i % 2 ? f.b : f.a, i / 2 * kBlockSize, f.frag, i * kBlockSize, kBlockSize),
         "clone_range");
  return f;
}

// `extents` one-block extents over two files written in turn (see the file
// comment). Returns the number of extent records the filesystem holds.
uint64_t build_interleaved(Filesystem& fs, uint64_t extents, bool progress) {
  Ino files[2] = {create(fs, kRootIno, "interleaved-a"), create(fs, kRootIno, "interleaved-b")};
  std::vector<std::byte> block(kBlockSize, std::byte{0x33});
  for (uint64_t i = 0; i < extents; ++i) {
    must(fs.write(files[i % 2], i / 2 * kBlockSize, block), "write");
    if (progress && (i + 1) % 200000 == 0) std::fprintf(stderr, "core_bench: %lu extents\n", i + 1);
  }
  return fs.info().extent_records;
}

// ---------------------------------------------------------------- data

constexpr uint64_t kPassBytes = 256 * MiB;  // one file's worth of sequential I/O

// range(1): 1 for an image with data checksums (the default), 0 without.
void BM_SeqWrite(benchmark::State& state) {
  const size_t op = static_cast<size_t>(state.range(0));
  MkfsOptions mkfs;
  mkfs.data_checksums = state.range(1) != 0;
  MemFs m(1 * GiB, mkfs);
  std::vector<std::byte> buf(op, std::byte{0x5a});
  Ino ino = create(*m.fs, kRootIno, "seq");
  uint64_t pos = 0;
  for (auto _ : state) {
    if (pos == kPassBytes) {  // a new file: keep measuring allocating writes
      state.PauseTiming();
      must(m->unlink(kRootIno, "seq"), "unlink");
      ino = create(*m.fs, kRootIno, "seq");
      pos = 0;
      state.ResumeTiming();
    }
    if (!m->write(ino, pos, buf)) die("write");
    pos += op;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * op));
}
BENCHMARK(BM_SeqWrite)->ArgNames({"op", "csums"})->ArgsProduct({{1 * MiB, 4 * KiB}, {1, 0}});

// range(1): 1 to verify every block's crc32c on read, 0 not to.
void BM_SeqRead(benchmark::State& state) {
  const size_t op = static_cast<size_t>(state.range(0));
  OpenOptions open;
  open.verify_checksums = state.range(1) != 0;
  MemFs m(1 * GiB, {}, open);
  Ino ino = create(*m.fs, kRootIno, "seq");
  fill(*m.fs, ino, kPassBytes, MiB);
  std::vector<std::byte> out(op);
  // The sink copies, as the kernel does with the daemon's reply iovec.
  std::function<void(std::span<const ReadSegment>)> sink = [&](std::span<const ReadSegment> segs) {
    size_t at = 0;
    for (const ReadSegment& s : segs) {
      if (s.data) std::memcpy(out.data() + at, s.data, s.length);
      else std::memset(out.data() + at, 0, s.length);
      at += s.length;
    }
  };
  uint64_t pos = 0;
  for (auto _ : state) {
    if (pos == kPassBytes) pos = 0;
    if (!m->read(ino, pos, op, sink)) die("read");
    pos += op;
  }
  benchmark::DoNotOptimize(out.data());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * op));
}
BENCHMARK(BM_SeqRead)->ArgNames({"op", "verify"})->ArgsProduct({{1 * MiB, 4 * KiB}, {0, 1}});

// ---------------------------------------------------------------- names

// One create and one unlink per iteration, in a directory already holding
// range(0) files.
void BM_CreateUnlink(benchmark::State& state) {
  MemFs m(256 * MiB);
  Ino dir = must(m->mkdir(kRootIno, "d", 0755, kRoot), "mkdir").ino;
  for (int64_t i = 0; i < state.range(0); ++i) create(*m.fs, dir, strfmt("existing-{}", i));
  for (auto _ : state) {
    if (!m->mknod(dir, "bench-file", S_IFREG | 0644, 0, kRoot)) die("mknod");
    if (!m->unlink(dir, "bench-file")) die("unlink");
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_CreateUnlink)->Arg(0)->Arg(10000);

// lookup + getattr of one of 10,000 files (what a stat costs the core).
void BM_Stat(benchmark::State& state) {
  MemFs m(256 * MiB);
  constexpr int kFiles = 10000;
  std::vector<std::string> names;
  for (int i = 0; i < kFiles; ++i) names.push_back(strfmt("f{}", i));
  for (const auto& n : names) create(*m.fs, kRootIno, n);
  size_t i = 0;
  for (auto _ : state) {
    auto a = m->lookup(kRootIno, names[i]);
    if (!a || !m->getattr(a->ino)) die("lookup");
    if (++i == names.size()) i = 0;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_Stat);

// crc32c over len bytes: every record, and every data block of an image
// with checksums (written and, with verify_checksums, read).
void BM_Crc32c(benchmark::State& state) {
  std::vector<unsigned char> buf(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<unsigned char>(i * 131 + 7);
  uint32_t crc = 0;
  for (auto _ : state) {
    crc = crc32c(buf.data(), buf.size(), crc);
    benchmark::DoNotOptimize(crc);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32c)->Arg(64)->Arg(4096)->Arg(1 << 20);

// ---------------------------------------------------------------- reflink and rmap

// One block shared by 1,001 files: "src" and 1,000 clones of it, laid
// out as scripts/bench.sh does (/reflink/fan/c0 ...: paths too long for
// std::string's inline buffer, as most real paths are).
struct Shared1001 {
  MemFs m{256 * MiB};
  uint64_t physical = 0;
  Shared1001() {
    Ino top = must(m->mkdir(kRootIno, "reflink", 0755, kRoot), "mkdir").ino;
    Ino dir = must(m->mkdir(top, "fan", 0755, kRoot), "mkdir").ino;
    Ino src = create(*m.fs, dir, "src");
    fill(*m.fs, src, kBlockSize, kBlockSize);
    for (int i = 0; i < 1000; ++i)
      must(m->clone_range(src, 0, create(*m.fs, dir, strfmt("c{}", i)), 0, 0), "clone_range");
    physical = must(m->bmap(src), "bmap").at(0).physical;
  }
  static Shared1001& get() {
    static Shared1001 fixture;
    return fixture;
  }
};

// Filesystem::fsmap of one block with 1,001 owners (what the daemon does
// for POISONFS_IOC_FSMAP, minus the round trip).
void BM_Fsmap1001Owners(benchmark::State& state) {
  Shared1001& f = Shared1001::get();
  uint64_t owners = 0;
  for (auto _ : state) {
    owners = 0;
    must(f.m->fsmap(f.physical, kBlockSize, [&](const FsmapEntry& e) {
      owners += e.owner == FsmapOwner::kData;
      return true;
    }), "fsmap");
  }
  state.counters["owners"] = static_cast<double>(owners);
}
BENCHMARK(BM_Fsmap1001Owners)->Unit(benchmark::kMicrosecond);

// The same, plus the path of every owner (what `poisonctl fsmap` prints).
void BM_Fsmap1001OwnersWithPaths(benchmark::State& state) {
  Shared1001& f = Shared1001::get();
  uint64_t paths = 0;
  for (auto _ : state) {
    std::vector<Ino> inos;
    must(f.m->fsmap(f.physical, kBlockSize, [&](const FsmapEntry& e) {
      if (e.owner == FsmapOwner::kData) inos.push_back(e.ino);
      return true;
    }), "fsmap");
    paths = 0;
    for (Ino ino : inos) paths += must(f.m->paths(ino), "paths").size();
  }
  state.counters["paths"] = static_cast<double>(paths);
}
BENCHMARK(BM_Fsmap1001OwnersWithPaths)->Unit(benchmark::kMicrosecond);

// Evicts the CPU caches: what a daemon finds between two poisonctl runs
// (each a new process) is mostly cold.
void evict_caches() {
  static std::vector<uint8_t> junk(64 << 20);
  for (size_t i = 0; i < junk.size(); i += 64) junk[i] = static_cast<uint8_t>(junk[i] + 1);
  benchmark::ClobberMemory();
}

// The page POISONFS_IOC_FSMAP_PACKED replies with: records and paths of
// the 1,001 owners packed (what the daemon does, minus the round trip);
// cold:1 evicts the caches before each (not timed).
void BM_Fsmap1001OwnersPacked(benchmark::State& state) {
  Shared1001& f = Shared1001::get();
  const bool cold = state.range(0) != 0;
  std::vector<uint8_t> page(POISONFS_FSMAP_PACKED_BYTES);
  size_t kept = 0, used = 0;
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      evict_caches();
      state.ResumeTiming();
    }
    FsmapPacker packer(page);
    must(f.m->fsmap(f.physical, kBlockSize, [&](const FsmapEntry& e) { return packer.add(e); }), "fsmap");
    kept = packer.finish([&](std::span<const Ino> inos, PathList& names) { f.m->paths(inos, names); });
    used = packer.used();
  }
  state.counters["records"] = static_cast<double>(kept);
  state.counters["bytes"] = static_cast<double>(used);
}
BENCHMARK(BM_Fsmap1001OwnersPacked)->ArgName("cold")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// The raw reverse map: one segment with 1,001 owners, queried.
void BM_RmapQuery1001Owners(benchmark::State& state) {
  Rmap rmap;
  for (uint64_t ino = 1; ino <= 1001; ++ino) rmap.add(1000, 1, Owner{ino, 7, OwnerKind::kData});
  uint64_t hits = 0;
  for (auto _ : state) {
    hits = 0;
    rmap.query(1000, 1, [&](const RmapHit&) {
      ++hits;
      return true;
    });
  }
  state.counters["owners"] = static_cast<double>(hits);
}
BENCHMARK(BM_RmapQuery1001Owners)->Unit(benchmark::kMicrosecond);

// Sources and a 65,536-extent file (see build_fragmented): the state of the
// reflink cases of scripts/bench.sh.
constexpr uint64_t kFragBlocks = 65536;

struct FragFixture {
  MemFs m{1536 * MiB};
  Fragmented f;
  FragFixture() { f = build_fragmented(*m.fs, kFragBlocks); }
  static FragFixture& get() {
    static FragFixture fixture;
    return fixture;
  }
};

// clone_range of the whole 65,536-extent file into a new, empty file.
void BM_CloneRange65536(benchmark::State& state) {
  FragFixture& x = FragFixture::get();
  const uint64_t extents = extent_count(*x.m.fs, x.f.frag);
  for (auto _ : state) {
    state.PauseTiming();
    Ino dst = create(*x.m.fs, kRootIno, "clone");
    state.ResumeTiming();
    must(x.m->clone_range(x.f.frag, 0, dst, 0, 0), "clone_range");
    state.PauseTiming();
    must(x.m->unlink(kRootIno, "clone"), "unlink");
    state.ResumeTiming();
  }
  state.counters["extents"] = static_cast<double>(extents);
  state.counters["extents/s"] =
      benchmark::Counter(static_cast<double>(extents * state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CloneRange65536)->Unit(benchmark::kMillisecond);

// Filesystem::fsmap of the whole device in the same state: ~132k records.
void BM_FsmapFull(benchmark::State& state) {
  FragFixture& x = FragFixture::get();
  uint64_t records = 0;
  for (auto _ : state) {
    records = 0;
    must(x.m->fsmap(0, UINT64_MAX, [&](const FsmapEntry&) {
      ++records;
      return true;
    }), "fsmap");
  }
  state.counters["records"] = static_cast<double>(records);
}
BENCHMARK(BM_FsmapFull)->Unit(benchmark::kMillisecond);

// The same with the paths of every data owner, resolved once per inode (as
// a tool that prints them would).
void BM_FsmapFullWithPaths(benchmark::State& state) {
  FragFixture& x = FragFixture::get();
  uint64_t records = 0;
  for (auto _ : state) {
    records = 0;
    std::unordered_map<Ino, std::vector<std::string>> paths;
    must(x.m->fsmap(0, UINT64_MAX, [&](const FsmapEntry& e) {
      ++records;
      if (e.owner == FsmapOwner::kData && !paths.contains(e.ino)) paths[e.ino] = must(x.m->paths(e.ino), "paths");
      return true;
    }), "fsmap");
  }
  state.counters["records"] = static_cast<double>(records);
}
BENCHMARK(BM_FsmapFullWithPaths)->Unit(benchmark::kMillisecond);

// ---------------------------------------------------------------- mount

// An unmounted device holding ~1,000,000 one-block extents.
constexpr uint64_t kMountExtents = 1'000'000;

struct MountFixture {
  std::unique_ptr<Media> media;
  uint64_t extents = 0;
  MountFixture() {
    // 1M data blocks + record chains + journal + inode table.
    media = make_memory_media(4352 * MiB);
    must(Filesystem::format(*media, MkfsOptions{}), "format");
    auto fs = must(Filesystem::mount(borrow_media(*media), {}), "mount");
    extents = build_interleaved(*fs, kMountExtents, false);
    must(fs->unmount(), "unmount");
  }
  static MountFixture& get() {
    static MountFixture fixture;
    return fixture;
  }
};

void BM_Mount1M(benchmark::State& state) {
  MountFixture& x = MountFixture::get();
  double dram = 0;
  for (auto _ : state) {
    uint64_t before = malloc_in_use();
    auto fs = must(Filesystem::mount(borrow_media(*x.media), {}), "mount");
    state.PauseTiming();
    dram = static_cast<double>(malloc_in_use() - before);
    fs.reset();
    state.ResumeTiming();
  }
  state.counters["extents"] = static_cast<double>(x.extents);
  state.counters["DRAM_B/extent"] = dram / static_cast<double>(x.extents);  // every index, not just the rmap
}
BENCHMARK(BM_Mount1M)->Unit(benchmark::kMillisecond)->Iterations(5);

// ---------------------------------------------------------------- DRAM per rmap record

// Builds a reverse map of one shape and reports malloc'ed bytes (mallinfo2,
// chunk overhead included) per record ((segment, owner) pair).
//   0: 1,000,000 private one-block segments (a fragmented, unshared device)
//   1: 500,000 segments with 2 owners each (every block reflinked once)
//   2: 333,334 segments with 3 owners each
//   3: the fragmented reflink state: a source cut into 65,536 one-block
//      segments, each shared with one other file
//   4: 1,000 segments with 1,001 owners each
void BM_RmapDram(benchmark::State& state) {
  const int shape = static_cast<int>(state.range(0));
  double per_record = 0, records = 0;
  for (auto _ : state) {
    uint64_t before = malloc_in_use();
    auto rmap = std::make_unique<Rmap>();
    switch (shape) {
      case 0:  // non-adjacent, so nothing merges
        for (uint64_t i = 0; i < 1'000'000; ++i) rmap->add(2 * i, 1, Owner{i + 1, 0, OwnerKind::kData});
        break;
      case 1:
      case 2: {
        uint64_t owners = shape == 1 ? 2 : 3, segs = 1'000'000 / owners + (shape == 2);
        for (uint64_t i = 0; i < segs; ++i)
          for (uint64_t o = 0; o < owners; ++o) rmap->add(2 * i, 1, Owner{o + 1, 2 * i, OwnerKind::kData});
        break;
      }
      case 3:  // source ino 1 block i; clone ino 2 at file block 2i
        for (uint64_t i = 0; i < 65536; ++i) {
          rmap->add(i, 1, Owner{1, i, OwnerKind::kData});
          rmap->add(i, 1, Owner{2, 2 * i, OwnerKind::kData});
        }
        break;
      case 4:
        for (uint64_t i = 0; i < 1000; ++i)
          for (uint64_t o = 0; o < 1001; ++o) rmap->add(2 * i, 1, Owner{o + 1, 0, OwnerKind::kData});
        break;
    }
    records = static_cast<double>(rmap->records());
    per_record = static_cast<double>(malloc_in_use() - before) / records;
    state.PauseTiming();
    rmap.reset();
    state.ResumeTiming();
  }
  state.counters["records"] = records;
  state.counters["B/record"] = per_record;
}
BENCHMARK(BM_RmapDram)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->Iterations(3);

// ---------------------------------------------------------------- media failure and recovery

// Recovery write vs a plain overwrite of the same range (issue 5, target
// >= 0.8x). A file of kRecoveryBlocks blocks is rewritten with its true bytes
// in `op`-byte writes (range(1)); in the poisoned modes each block gets 256
// bytes of known poison first, untimed (inject_poison, then notify_failure).
//   mode 0: private file, no poison: a plain in-place overwrite (baseline)
//   mode 1: private file, every block poisoned: recovery in place
//   mode 2: blocks shared by 3 files, no poison: a plain overwrite, which is
//           copy-on-write (the sharing is re-made, untimed, every iteration)
//   mode 3: blocks shared by 3 files, every block poisoned, true bytes: the
//           write matches the recorded crc32c and heals all 3 in place
// Counters: the file's extents and the known poison left afterwards, so a
// run shows that the recovery stayed in place and cleared everything.
constexpr uint64_t kRecoveryBlocks = 256;

void BM_RecoveryWrite(benchmark::State& state) {
  const int64_t mode = state.range(0);
  const size_t op = static_cast<size_t>(state.range(1));
  const bool shared = mode >= 2, poisoned = mode % 2 == 1;
  MemFs m(1 * GiB);
  const uint64_t bytes = kRecoveryBlocks * kBlockSize;
  const std::vector<std::byte> truth = pattern(bytes);
  Ino a = create(*m.fs, kRootIno, "a"), b = 0;
  must(m->write(a, 0, truth), "write");
  if (shared) {
    b = create(*m.fs, kRootIno, "b");
    must(m->clone_range(a, 0, b, 0, 0), "clone_range");
    must(m->clone_range(a, 0, create(*m.fs, kRootIno, "c"), 0, 0), "clone_range");
  }
  const std::vector<uint64_t> phys = block_physicals(*m.fs, a, kRecoveryBlocks);
  const std::span<const std::byte> data(truth);
  for (auto _ : state) {
    state.PauseTiming();
    if (mode == 2) must(m->clone_range(b, 0, a, 0, 0), "clone_range");  // shared again
    if (poisoned)
      for (uint64_t p : phys) must(m->inject_poison(p + 1024, 256, false), "inject_poison");
    state.ResumeTiming();
    for (uint64_t off = 0; off < bytes; off += op)
      if (!m->write(a, off, data.subspan(off, op))) die("write");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["extents"] = static_cast<double>(extent_count(*m.fs, a));
  state.counters["poison_left_B"] = static_cast<double>(m->health().known_poison_bytes);
}
BENCHMARK(BM_RecoveryWrite)->ArgNames({"mode", "op"})->ArgsProduct({{0, 1, 2, 3}, {4 * KiB, 1 * MiB}});

// Fragmentation after recovering kScatterBlocks scattered poisoned blocks
// (issue 5): a figure, not a timing. A 64,000-block file (written 1 MiB at a
// time, so a few extents) gets 256 bytes of known poison in every 64th block;
// each is then recovered with a pwrite of its true 4 KiB,
//   mode 0: in place (the write clears the poison, same blocks)
//   mode 1: the old way: fallocate(PUNCH_HOLE | KEEP_SIZE) of the block first
// Counters, after the recovery: the file's extents, the device's free-space
// fragments (kFree records of fsmap) and quarantined KiB (the punched
// poisoned blocks, withdrawn from the allocator until a scrub clears them);
// *_before: the same before the poison.
constexpr uint64_t kScatterBlocks = 1000, kScatterStride = 64;

void BM_RecoveryFragmentation(benchmark::State& state) {
  const bool punch = state.range(0) == 1;
  double extents_before = 0, free_before = 0, extents = 0, free = 0, quarantined = 0;
  for (auto _ : state) {
    state.PauseTiming();
    MemFs m(1 * GiB);
    const uint64_t bytes = kScatterBlocks * kScatterStride * kBlockSize;
    const std::vector<std::byte> truth = pattern(bytes);
    Ino f = create(*m.fs, kRootIno, "f");
    for (uint64_t off = 0; off < bytes; off += MiB)
      must(m->write(f, off, std::span(truth).subspan(off, std::min<uint64_t>(MiB, bytes - off))), "write");
    extents_before = static_cast<double>(extent_count(*m.fs, f));
    free_before = static_cast<double>(fsmap_records(*m.fs, FsmapOwner::kFree));
    const std::vector<uint64_t> phys = block_physicals(*m.fs, f, kScatterBlocks * kScatterStride);
    std::vector<uint64_t> victims;  // file blocks
    for (uint64_t i = 0; i < kScatterBlocks; ++i) victims.push_back(i * kScatterStride + kScatterStride / 2);
    for (uint64_t fb : victims) must(m->inject_poison(phys[fb] + 1024, 256, false), "inject_poison");
    state.ResumeTiming();
    for (uint64_t fb : victims) {
      const uint64_t off = fb * kBlockSize;
      if (punch) must(m->fallocate(f, kFallocPunchHole | kFallocKeepSize, off, kBlockSize), "punch");
      must(m->write(f, off, std::span(truth).subspan(off, kBlockSize)), "write");
    }
    state.PauseTiming();
    if (!m->file_poison(f)->empty()) die("poison left in the file");
    extents = static_cast<double>(extent_count(*m.fs, f));
    free = static_cast<double>(fsmap_records(*m.fs, FsmapOwner::kFree));
    quarantined = static_cast<double>(m->health().quarantined_bytes) / KiB;
    state.ResumeTiming();
  }
  state.counters["extents_before"] = extents_before;
  state.counters["extents"] = extents;
  state.counters["free_frags_before"] = free_before;
  state.counters["free_frags"] = free;
  state.counters["quarantined_KiB"] = quarantined;
}
BENCHMARK(BM_RecoveryFragmentation)->ArgName("punch")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->Iterations(1);

// One block shared by `sharers` files: "src" and sharers-1 clones of it.
struct SharedBlock {
  MemFs m{512 * MiB};
  uint64_t physical = 0;
  explicit SharedBlock(int64_t sharers) {
    Ino src = create(*m.fs, kRootIno, "src");
    fill(*m.fs, src, kBlockSize, kBlockSize);
    Ino dir = must(m->mkdir(kRootIno, "clones", 0755, kRoot), "mkdir").ino;
    for (int64_t i = 1; i < sharers; ++i)
      must(m->clone_range(src, 0, create(*m.fs, dir, strfmt("c{}", i)), 0, 0), "clone_range");
    physical = must(m->bmap(src), "bmap").at(0).physical;
  }
  static SharedBlock& get(int64_t sharers) {
    static std::unordered_map<int64_t, std::unique_ptr<SharedBlock>> fixtures;
    auto& f = fixtures[sharers];
    if (!f) f = std::make_unique<SharedBlock>(sharers);
    return *f;
  }
};

// Filesystem::notify_failure of 256 bytes of that block (issue 4, target
// <= 10 ms at 10,000 sharers): every sharer gets its failure record and an
// invalidation (here a hook that counts; the daemon's queues it for its
// invalidator thread), and one event names them all (with their paths).
// DRAM_KiB/call: what each call adds to the event history while it is not
// yet full (4,096 events, bounded by count).
void BM_NotifyFailure(benchmark::State& state) {
  SharedBlock& x = SharedBlock::get(state.range(0));
  uint64_t invalidations = 0;
  x.m->set_invalidate_hook([&](Ino, uint64_t, uint64_t) { ++invalidations; });
  const uint64_t before = malloc_in_use();
  for (auto _ : state) must(x.m->notify_failure(x.physical + 1024, 256, 0), "notify_failure");
  // What each call leaves in the bounded event history (4,096 events).
  const double kept = static_cast<double>(malloc_in_use()) - static_cast<double>(before);
  x.m->set_invalidate_hook({});
  const double calls = static_cast<double>(state.iterations());
  state.counters["invalidations/call"] = static_cast<double>(invalidations) / calls;
  state.counters["DRAM_KiB/call"] = kept / KiB / calls;
}
BENCHMARK(BM_NotifyFailure)->ArgName("sharers")->Arg(1)->Arg(100)->Arg(10000)->Unit(benchmark::kMicrosecond);

// The read path's cost of the poison check (issue 4, target <= 2% slower
// than without it). Reads of a 256 MiB file: range(0) 0 sequential 1 MiB,
// 1 random 4 KiB (block-aligned, a fixed pseudo-random sequence); range(1)
// 0 with an empty poison list, 1 with 10,000 known 64-byte ranges in another
// file (one per block, so none merge). The baseline without the check is the
// same case from a core_bench built with -DPOISONFS_BENCH_NO_POISON_CHECK.
constexpr uint64_t kElsewhereRanges = 10000;

// The files of the read cases: "data" (256 MiB, read) and, with poison,
// "poisoned" with one 64-byte known range in each of its 10,000 blocks.
struct ReadCase {
  MemFs m{512 * MiB};
  Ino ino = 0;
  explicit ReadCase(bool poison) {
    ino = create(*m.fs, kRootIno, "data");
    fill(*m.fs, ino, kPassBytes, MiB);
    if (!poison) return;
    Ino other = create(*m.fs, kRootIno, "poisoned");
    fill(*m.fs, other, kElsewhereRanges * kBlockSize, MiB);
    for (uint64_t p : block_physicals(*m.fs, other, kElsewhereRanges))
      must(m->inject_poison(p + 2048, 64, false), "inject_poison");
    if (m->badblocks().size() != kElsewhereRanges) die("poison ranges merged");
  }
};

// The offsets of the reads, sequential 1 MiB or random 4 KiB blocks.
struct ReadOffsets {
  bool random;
  size_t op;
  uint64_t pos = 0, x = 88172645463325252ull;
  explicit ReadOffsets(bool r) : random(r), op(r ? 4 * KiB : 1 * MiB) {}
  uint64_t next() {
    if (random) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      return x % (kPassBytes / op) * op;
    }
    if (pos == kPassBytes) pos = 0;
    uint64_t at = pos;
    pos += op;
    return at;
  }
};

void BM_ReadPoisonCheck(benchmark::State& state) {
  ReadCase c(state.range(1) == 1);
  ReadOffsets at(state.range(0) == 1);
  std::vector<std::byte> out(at.op);
  std::function<void(std::span<const ReadSegment>)> sink = [&](std::span<const ReadSegment> segs) {
    size_t done = 0;
    for (const ReadSegment& s : segs) {
      if (s.data) std::memcpy(out.data() + done, s.data, s.length);
      else std::memset(out.data() + done, 0, s.length);
      done += s.length;
    }
  };
  for (auto _ : state)
    if (!c.m->read(c.ino, at.next(), at.op, sink)) die("read");
  benchmark::DoNotOptimize(out.data());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * at.op));
  state.counters["poison_ranges"] = static_cast<double>(c.m->badblocks().size());
}
BENCHMARK(BM_ReadPoisonCheck)->ArgNames({"random", "poison"})->ArgsProduct({{0, 1}, {0, 1}});

// The check alone, as the read path makes it (the list's empty flag, then
// the first poisoned byte of each extent piece read), over the same reads'
// device ranges: what a read costs more with the check than without, free
// of the code-layout and memory-placement noise that separates two builds
// (or two runs) of the whole read by several percent here.
void BM_ReadPoisonCheckAlone(benchmark::State& state) {
  ReadCase c(state.range(1) == 1);
  ReadOffsets at(state.range(0) == 1);
  const PoisonList& poison = c.m.media->poison();
  const std::vector<uint64_t> block = block_physicals(*c.m.fs, c.ino, kPassBytes / kBlockSize);
  const bool check = state.range(2) == 1;  // 0: the loop alone, the baseline
  uint64_t found = 0;
  for (auto _ : state) {
    uint64_t off = at.next();
    // The file was written 1 MiB at a time in one run: one piece per read.
    uint64_t dev = block[off / kBlockSize];
    benchmark::DoNotOptimize(dev);
    if (check && !poison.empty() && poison.first(dev, at.op)) ++found;
  }
  if (found) die("the data file has no poison");
  benchmark::DoNotOptimize(found);
  state.counters["poison_ranges"] = static_cast<double>(c.m->badblocks().size());
}
BENCHMARK(BM_ReadPoisonCheckAlone)
    ->ArgNames({"random", "poison", "check"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}});

// ---------------------------------------------------------------- helper mode

int make_image(const char* path, const char* count) {
  char* end = nullptr;
  uint64_t extents = std::strtoull(count, &end, 10);
  if (!end || *end || extents == 0) die(strfmt("bad extent count '{}'", count));
  auto t0 = std::chrono::steady_clock::now();
  auto fs = must(Filesystem::mount_image(path, {}), "mount");
  uint64_t records = build_interleaved(*fs, extents, true);
  must(fs->unmount(), "unmount");
  fs.reset();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%lu\n", records);
  std::fprintf(stderr, "core_bench: %s: %lu extent records, built in %.1f s\n", path, records, s);
  return 0;
}

}  // namespace
}  // namespace poisonfs

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "make-image") == 0) {
    if (argc != 4) {
      std::fprintf(stderr, "usage: %s make-image IMAGE EXTENTS\n", argv[0]);
      return 2;
    }
    return poisonfs::make_image(argv[2], argv[3]);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
