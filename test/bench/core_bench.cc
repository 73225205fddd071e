// In-process benchmarks of the poisonfs core on make_memory_media: what the
// core costs without FUSE, the kernel or msync in the way. The FUSE-level
// figures, side by side with tmpfs, passthrough_ll and XFS, come from
// scripts/bench.sh; these say how much of them is the core's own.
//
//   build-bench/core_bench [--benchmark_min_time=0.2] [--benchmark_filter=REGEX]
//
// (Google Benchmark 1.7 takes --benchmark_min_time in plain seconds.)
//
// Cases (issue 2 and issue 3 targets in brackets):
//   SeqWrite/SeqRead      sequential throughput of the core, 1 MiB and 4 KiB ops
//   CreateUnlink, Stat    namespace operation rates
//   Fsmap1001Owners       owners of one block shared by 1,001 files   [<= 1 ms end to end]
//   CloneRange65536       clone of a file in 65,536 extents             [<= 0.1 s]
//   FsmapFull             whole-device listing, ~132k records          [<= 100 ms]
//   Mount1M               mount (load) of an image with 1M extents     [<= 1 s]
//   RmapDram/*            DRAM per rmap record, mallinfo2()            [<= 64 B]
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

#include "poisonfs/filesystem.h"
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

  explicit MemFs(uint64_t size) : media(make_memory_media(size)) {
    must(Filesystem::format(*media, MkfsOptions{}), "format");
    mount();
  }
  ~MemFs() { fs.reset(); }  // before the media it borrows
  void mount() { fs = must(Filesystem::mount(borrow_media(*media), {}), "mount"); }
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

void BM_SeqWrite(benchmark::State& state) {
  const size_t op = static_cast<size_t>(state.range(0));
  MemFs m(1 * GiB);
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
BENCHMARK(BM_SeqWrite)->Arg(1 * MiB)->Arg(4 * KiB);

void BM_SeqRead(benchmark::State& state) {
  const size_t op = static_cast<size_t>(state.range(0));
  MemFs m(1 * GiB);
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
BENCHMARK(BM_SeqRead)->Arg(1 * MiB)->Arg(4 * KiB);

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

// ---------------------------------------------------------------- reflink and rmap

// One block shared by 1,001 files: "src" and 1,000 clones of it.
struct Shared1001 {
  MemFs m{256 * MiB};
  uint64_t physical = 0;
  Shared1001() {
    Ino src = create(*m.fs, kRootIno, "src");
    fill(*m.fs, src, kBlockSize, kBlockSize);
    Ino dir = must(m->mkdir(kRootIno, "clones", 0755, kRoot), "mkdir").ino;
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
