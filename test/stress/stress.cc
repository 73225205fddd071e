// poisonfs_stress: concurrent random operations on a mounted poisonfs while
// poison is injected into file blocks and recovered (issue 6 item 4).
//
//   poisonfs_stress run    --mnt DIR --poisonctl PATH --state FILE [--seconds N] [--workers N] [--seed N]
//   poisonfs_stress verify --mnt DIR --state FILE
//
// run: W worker processes each own a directory of files and do random
// operations on them (create, write, overwrite, truncate, rename over each
// other, unlink, copy_file_range between their files (which the daemon turns
// into reflinks when aligned), mmap writes with msync, page-by-page read
// checks). One injector process picks a worker's file, finds a block's device
// offset with `poisonctl bmap --json`, injects known or latent poison with
// `poisonctl inject`, marks every file of that worker that maps the poisoned
// bytes (clones share them), and later recovers each of them with a pwrite
// of the true bytes. At the end every pending poison is recovered and the
// model (every file's true content) is saved to the state file.
// verify (after unmount, fsck and remount): every file of the model must hold
// exactly its content, and no other file may exist in the workers'
// directories.
//
// The model lives in shared memory, one part per worker behind a
// process-shared mutex: the worker holds it for each operation, the injector
// while it injects or recovers, so the model always says what each file must
// hold and which of its ranges are poisoned. A poisoned file is only read,
// renamed or unlinked by its worker (a read of a poisoned page may fail with
// EIO, and only such a read); everything that writes waits for its recovery.
//
// Two core bugs found by this driver are fixed, each with a regression test
// in test/mount/poison_known_bugs_test.cc: latent poison in a freed block
// ate the next file's data, and a recovery write the kernel split into
// pieces failed (recoveries here come from the shared model half the time,
// which makes such splits). Files are unlinked and renamed over with their
// poison, latent or known, as users do: freed blocks with latent poison go
// back to the allocator, which clears new blocks before it hands them out.
// STRESS_DEBUG=1 prints a failed recovery's extents and the device's poison.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "poisonfs/ioctl.h"

namespace {

constexpr size_t kBlock = 4096;
constexpr size_t kUnit = 64;                 // poison granularity
constexpr size_t kMaxFile = 192 * 1024;      // a file never grows past this
constexpr int kFilesPerWorker = 6;
constexpr int kMaxWorkers = 8;
constexpr int kMaxPoison = 8;                // poisoned ranges a file may carry

struct Range {
  uint64_t off, len;
  uint32_t latent;  // injected latent: the daemon may not know of it yet
};

struct FileModel {
  uint32_t exists;
  uint32_t gen;  // part of the name: a rename gives a new one
  uint64_t size;
  uint32_t npoison;
  Range poison[kMaxPoison];  // file ranges, 64-byte units
  unsigned char data[kMaxFile];
};

struct Counters {
  uint64_t ops, reads, eio_reads, writes, truncates, renames, unlinks, creates, copies, mmaps;
  uint64_t errors;  // unexpected results: each one is printed
};

struct WorkerModel {
  pthread_mutex_t mu;
  uint32_t names;  // next gen
  FileModel files[kFilesPerWorker];
  Counters c;
};

struct Shared {
  std::atomic<int> stop;
  uint64_t injected, injected_latent, marked_files, recovered_files, inject_failures, recover_failures;
  int workers;
  WorkerModel w[kMaxWorkers];
};

Shared* g;
std::string g_mnt, g_ctl;

// ---- helpers --------------------------------------------------------------

std::string file_path(int w, int slot, uint32_t gen) {
  return g_mnt + "/w" + std::to_string(w) + "/f" + std::to_string(slot) + "." + std::to_string(gen);
}
std::string file_path(int w, int slot) { return file_path(w, slot, g->w[w].files[slot].gen); }

// An unexpected result: printed at once and counted against the run.
__attribute__((format(printf, 2, 3))) void report(WorkerModel& m, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("stress: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
  ++m.c.errors;
}

class Lock {
 public:
  explicit Lock(pthread_mutex_t* mu) : mu_(mu) {
    if (pthread_mutex_lock(mu_) == EOWNERDEAD) pthread_mutex_consistent(mu_);
  }
  ~Lock() { pthread_mutex_unlock(mu_); }

 private:
  pthread_mutex_t* mu_;
};

void fill_random(unsigned char* p, size_t n, std::mt19937_64& rng) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, std::min<size_t>(8, n - i));
  }
}

bool full_pwrite(int fd, const void* buf, size_t n, uint64_t off) {
  auto* p = static_cast<const unsigned char*>(buf);
  while (n > 0) {
    ssize_t r = pwrite(fd, p, n, static_cast<off_t>(off));
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

bool poisoned(const FileModel& f, uint64_t off, uint64_t len) {
  for (uint32_t i = 0; i < f.npoison; ++i)
    if (overlaps(off, len, f.poison[i].off, f.poison[i].len)) return true;
  return false;
}

// Resizes the model (new bytes are zeros).
void model_resize(FileModel& f, uint64_t size) {
  if (size > f.size) std::memset(f.data + f.size, 0, size - f.size);
  f.size = size;
}

// ---- the worker -------------------------------------------------------------

struct Worker {
  int id;
  WorkerModel& m;
  std::mt19937_64 rng;

  uint64_t pick(uint64_t n) { return n == 0 ? 0 : rng() % n; }
  // A random offset, block-aligned half of the time (reflinks need that).
  uint64_t offset(uint64_t limit) {
    uint64_t o = pick(limit + 1);
    return rng() & 1 ? o / kBlock * kBlock : o;
  }
  int slot_where(bool want_exists, bool clean) {
    int start = static_cast<int>(pick(kFilesPerWorker));
    for (int i = 0; i < kFilesPerWorker; ++i) {
      int s = (start + i) % kFilesPerWorker;
      const FileModel& f = m.files[s];
      if (static_cast<bool>(f.exists) == want_exists && (!clean || f.npoison == 0)) return s;
    }
    return -1;
  }

  void create() {
    int s = slot_where(false, false);
    if (s < 0) return;
    FileModel& f = m.files[s];
    f.gen = ++m.names;
    std::string p = file_path(id, s);
    int fd = open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return report(m, "create %s: %s", p.c_str(), std::strerror(errno));
    uint64_t size = pick(kMaxFile / 2);
    fill_random(f.data, size, rng);
    f.exists = 1;
    f.size = 0;
    f.npoison = 0;
    if (!full_pwrite(fd, f.data, size, 0)) report(m, "initial write %s: %s", p.c_str(), std::strerror(errno));
    else f.size = size;
    close(fd);
    ++m.c.creates;
  }

  void write_op() {
    int s = slot_where(true, true);
    if (s < 0) return;
    FileModel& f = m.files[s];
    uint64_t off = offset(std::min<uint64_t>(f.size + 2 * kBlock, kMaxFile - 1));
    uint64_t len = 1 + pick(std::min<uint64_t>(kMaxFile - off, rng() & 1 ? kBlock : 32 * kBlock));
    if (rng() & 1) len = std::max<uint64_t>(len / kBlock * kBlock, std::min<uint64_t>(kBlock, kMaxFile - off));
    std::vector<unsigned char> buf(len);
    fill_random(buf.data(), len, rng);
    std::string p = file_path(id, s);
    int fd = open(p.c_str(), O_RDWR | O_CLOEXEC | (rng() % 4 == 0 ? O_DIRECT : 0));
    if (fd < 0) return report(m, "open %s: %s", p.c_str(), std::strerror(errno));
    // O_DIRECT wants aligned buffers: use a plain write when it is refused.
    bool ok = full_pwrite(fd, buf.data(), len, off);
    if (!ok && errno == EINVAL) {
      close(fd);
      fd = open(p.c_str(), O_RDWR | O_CLOEXEC);
      ok = fd >= 0 && full_pwrite(fd, buf.data(), len, off);
    }
    if (!ok) {
      report(m, "write %s [%" PRIu64 ", +%" PRIu64 "): %s", p.c_str(), off, len, std::strerror(errno));
    } else {
      if (off + len > f.size) model_resize(f, off + len);
      std::memcpy(f.data + off, buf.data(), len);
    }
    if (rng() % 8 == 0 && fsync(fd) != 0) report(m, "fsync %s: %s", p.c_str(), std::strerror(errno));
    if (fd >= 0) close(fd);
    ++m.c.writes;
  }

  void truncate_op() {
    int s = slot_where(true, true);
    if (s < 0) return;
    FileModel& f = m.files[s];
    uint64_t size = rng() & 1 ? pick(f.size + 1) : offset(kMaxFile);
    std::string p = file_path(id, s);
    if (truncate(p.c_str(), static_cast<off_t>(size)) != 0)
      return report(m, "truncate %s to %" PRIu64 ": %s", p.c_str(), size, std::strerror(errno));
    model_resize(f, size);
    ++m.c.truncates;
  }

  // Renames a file onto a free slot or over another file (which it replaces).
  void rename_op() {
    int from = slot_where(true, false);
    if (from < 0) return;
    int to = static_cast<int>(pick(kFilesPerWorker));
    if (to == from) return;
    uint32_t gen = ++m.names;
    std::string a = file_path(id, from), b = m.files[to].exists ? file_path(id, to) : file_path(id, to, gen);
    if (rename(a.c_str(), b.c_str()) != 0) return report(m, "rename %s %s: %s", a.c_str(), b.c_str(), std::strerror(errno));
    FileModel& t = m.files[to];
    FileModel& f = m.files[from];
    uint32_t keep = t.exists ? t.gen : gen;
    std::memcpy(t.data, f.data, f.size);
    t.size = f.size;
    t.npoison = f.npoison;
    std::memcpy(t.poison, f.poison, sizeof t.poison);
    t.exists = 1;
    t.gen = keep;
    f.exists = 0;
    f.npoison = 0;
    ++m.c.renames;
  }

  void unlink_op() {
    int s = slot_where(true, false);
    if (s < 0) return;
    std::string p = file_path(id, s);
    if (unlink(p.c_str()) != 0) return report(m, "unlink %s: %s", p.c_str(), std::strerror(errno));
    m.files[s].exists = 0;
    m.files[s].npoison = 0;
    ++m.c.unlinks;
  }

  // copy_file_range between two clean files: aligned ranges become shared
  // extents in the daemon, unaligned heads and tails are copied.
  void copy_op() {
    int a = slot_where(true, true), b = slot_where(true, true);
    if (a < 0 || b < 0 || a == b) return;
    FileModel& src = m.files[a];
    FileModel& dst = m.files[b];
    if (src.size == 0) return;
    uint64_t in = offset(src.size - 1), out = offset(std::min<uint64_t>(dst.size + kBlock, kMaxFile - 1));
    uint64_t len = 1 + pick(std::min({src.size - in, kMaxFile - out, uint64_t{64} * kBlock}));
    if (rng() & 1) len = std::max<uint64_t>(len / kBlock * kBlock, 1);
    std::string ps = file_path(id, a), pd = file_path(id, b);
    int fs = open(ps.c_str(), O_RDONLY | O_CLOEXEC), fd = open(pd.c_str(), O_WRONLY | O_CLOEXEC);
    if (fs < 0 || fd < 0) {
      report(m, "open for copy %s %s: %s", ps.c_str(), pd.c_str(), std::strerror(errno));
    } else {
      loff_t i = static_cast<loff_t>(in), o = static_cast<loff_t>(out);
      uint64_t done = 0;
      while (done < len) {
        ssize_t n = copy_file_range(fs, &i, fd, &o, len - done, 0);
        if (n < 0) {
          report(m, "copy_file_range %s -> %s: %s", ps.c_str(), pd.c_str(), std::strerror(errno));
          break;
        }
        if (n == 0) break;
        done += static_cast<uint64_t>(n);
      }
      if (out + done > dst.size) model_resize(dst, out + done);
      std::memmove(dst.data + out, src.data + in, done);
      if (done != len) report(m, "copy_file_range %s -> %s copied %" PRIu64 " of %" PRIu64, ps.c_str(), pd.c_str(), done, len);
    }
    if (fs >= 0) close(fs);
    if (fd >= 0) close(fd);
    ++m.c.copies;
  }

  void mmap_op() {
    int s = slot_where(true, true);
    if (s < 0) return;
    FileModel& f = m.files[s];
    if (f.size == 0) return;
    std::string p = file_path(id, s);
    int fd = open(p.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return report(m, "open %s: %s", p.c_str(), std::strerror(errno));
    void* map = mmap(nullptr, f.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      close(fd);
      return report(m, "mmap %s: %s", p.c_str(), std::strerror(errno));
    }
    uint64_t off = pick(f.size), len = 1 + pick(std::min<uint64_t>(f.size - off, 8 * kBlock));
    std::vector<unsigned char> buf(len);
    fill_random(buf.data(), len, rng);
    std::memcpy(static_cast<unsigned char*>(map) + off, buf.data(), len);
    if (msync(map, f.size, MS_SYNC) != 0) report(m, "msync %s: %s", p.c_str(), std::strerror(errno));
    // What the mapping shows is the file's content.
    if (std::memcmp(static_cast<unsigned char*>(map) + off, buf.data(), len) != 0) report(m, "mmap %s lost its own store", p.c_str());
    munmap(map, f.size);
    close(fd);
    std::memcpy(f.data + off, buf.data(), len);
    ++m.c.mmaps;
  }

  // Reads a file page by page: each page must match, or fail with EIO only
  // where the model has poison.
  void read_op() {
    int s = slot_where(true, false);
    if (s < 0) return;
    const FileModel& f = m.files[s];
    std::string p = file_path(id, s);
    int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return report(m, "open %s: %s", p.c_str(), std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != f.size)
      report(m, "%s: size %lld, model %" PRIu64, p.c_str(), static_cast<long long>(st.st_size), f.size);
    unsigned char buf[kBlock];
    for (uint64_t off = 0; off < f.size; off += kBlock) {
      uint64_t want = std::min<uint64_t>(kBlock, f.size - off);
      ssize_t n = pread(fd, buf, kBlock, static_cast<off_t>(off));
      if (n < 0 && errno == EIO && poisoned(f, off, want)) {
        ++m.c.eio_reads;
        continue;
      }
      if (n != static_cast<ssize_t>(want) || std::memcmp(buf, f.data + off, want) != 0) {
        report(m, "read %s at %" PRIu64 ": %s", p.c_str(), off,
               n < 0 ? std::strerror(errno) : n != static_cast<ssize_t>(want) ? "short" : "wrong bytes");
        break;
      }
    }
    char extra;
    if (pread(fd, &extra, 1, static_cast<off_t>(f.size)) != 0) report(m, "%s: data past the model's end", p.c_str());
    close(fd);
    ++m.c.reads;
  }

  void step() {
    Lock lock(&m.mu);
    switch (pick(20)) {
      case 0: case 1: create(); break;
      case 2: case 3: case 4: case 5: write_op(); break;
      case 6: case 7: truncate_op(); break;
      case 8: rename_op(); break;
      case 9: unlink_op(); break;
      case 10: case 11: case 12: copy_op(); break;
      case 13: case 14: mmap_op(); break;
      default: read_op(); break;
    }
    ++m.c.ops;
  }
};

// ---- the injector -------------------------------------------------------------

std::string run_capture(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *status = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *status = pclose(p);
  return out;
}

// The number after "key": in a flat JSON object text.
bool json_u64(std::string_view obj, std::string_view key, uint64_t* out) {
  std::string k = "\"" + std::string(key) + "\":";
  size_t at = obj.find(k);
  if (at == std::string_view::npos) return false;
  at += k.size();
  while (at < obj.size() && obj[at] == ' ') ++at;
  char* end = nullptr;
  std::string tail(obj.substr(at, 24));
  *out = std::strtoull(tail.c_str(), &end, 10);
  return end != tail.c_str();
}

struct Extent {
  uint64_t file_offset, physical, length;
  bool unwritten;
};

// `poisonctl bmap --json FILE`, parsed.
bool tool_bmap(const std::string& file, std::vector<Extent>* out) {
  int status;
  std::string json = run_capture(g_ctl + " bmap --json '" + file + "'", &status);
  if (status != 0) return false;
  for (size_t at = 0; (at = json.find('{', at)) != std::string::npos;) {
    size_t end = json.find('}', at);
    if (end == std::string::npos) return false;
    std::string_view obj(json.data() + at, end - at);
    Extent e{};
    if (!json_u64(obj, "file_offset", &e.file_offset) || !json_u64(obj, "physical", &e.physical) ||
        !json_u64(obj, "length", &e.length))
      return false;
    e.unwritten = obj.find("\"unwritten\": true") != std::string_view::npos ||
                  obj.find("\"unwritten\":true") != std::string_view::npos;
    out->push_back(e);
    at = end;
  }
  return true;
}

// The file ranges of path that map device bytes [phys, +len) (BMAP ioctl).
std::vector<Range> mapped_at(const std::string& path, uint64_t phys, uint64_t len) {
  std::vector<Range> out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  auto page = std::make_unique<poisonfs_bmap>();
  std::memset(page.get(), 0, sizeof *page);
  do {
    if (ioctl(fd, POISONFS_IOC_BMAP, page.get()) != 0) break;
    for (uint32_t i = 0; i < page->count; ++i) {
      const poisonfs_bmap_rec& r = page->recs[i];
      uint64_t a = std::max(phys, r.physical), b = std::min(phys + len, r.physical + r.length);
      if (a < b) out.push_back(Range{r.file_offset + (a - r.physical), b - a, 0});
    }
  } while (!(page->flags & POISONFS_OF_LAST) && page->count > 0);
  close(fd);
  return out;
}

std::string ranges_text(const FileModel& f) {
  std::string out;
  for (uint32_t i = 0; i < f.npoison; ++i)
    out += "[" + std::to_string(f.poison[i].off) + ", +" + std::to_string(f.poison[i].len) + (f.poison[i].latent ? " latent] " : "] ");
  return out;
}

// The daemon's known poisoned ranges of an open file (FILE_POISON), as text.
std::string file_poison_text(int fd) {
  auto page = std::make_unique<poisonfs_ranges>();
  std::memset(page.get(), 0, sizeof *page);
  if (ioctl(fd, POISONFS_IOC_FILE_POISON, page.get()) != 0) return std::string("error ") + std::strerror(errno);
  std::string out;
  for (uint32_t i = 0; i < page->count; ++i)
    out += "[" + std::to_string(page->recs[i].offset) + ", +" + std::to_string(page->recs[i].length) + "] ";
  return out;
}

struct Injector {
  std::mt19937_64 rng;

  // Poisons 64-byte units of one written block of a random file of worker w.
  void inject(int w) {
    WorkerModel& m = g->w[w];
    Lock lock(&m.mu);
    std::vector<int> candidates;
    for (int s = 0; s < kFilesPerWorker; ++s)
      if (m.files[s].exists && m.files[s].size >= kUnit && m.files[s].npoison < kMaxPoison / 2) candidates.push_back(s);
    if (candidates.empty()) return;
    int s = candidates[rng() % candidates.size()];
    const std::string p = file_path(w, s);
    std::vector<Extent> extents;
    if (!tool_bmap(p, &extents)) return report(m, "poisonctl bmap %s failed", p.c_str());
    // Whole units inside the file: poison past EOF is for nobody to read.
    uint64_t end = m.files[s].size / kUnit * kUnit;
    std::vector<Extent> usable;
    for (const Extent& e : extents)
      if (!e.unwritten && e.file_offset < end) usable.push_back(e);
    if (usable.empty()) return;
    const Extent& e = usable[rng() % usable.size()];
    uint64_t e_end = std::min(e.file_offset + e.length, end);
    uint64_t off = e.file_offset + (rng() % ((e_end - e.file_offset) / kUnit)) * kUnit;
    uint64_t block_end = std::min(off / kBlock * kBlock + kBlock, e_end);
    uint64_t len = kUnit * (1 + rng() % ((block_end - off) / kUnit));
    uint64_t phys = e.physical + (off - e.file_offset);
    // Every file of this worker that maps those bytes is hit (clones share).
    // A clone shorter than the source can map the bytes past its own EOF;
    // a unit there is skipped: no write of that clone covers it (it would
    // have to write past EOF), and recovering it through a sharer that is
    // not the writer's own file is not what this driver models.
    std::vector<std::vector<Range>> hits(kFilesPerWorker);
    for (int t = 0; t < kFilesPerWorker; ++t) {
      if (!m.files[t].exists) continue;
      hits[t] = mapped_at(file_path(w, t), phys, len);
      for (const Range& r : hits[t])
        if (r.off + r.len > m.files[t].size / kUnit * kUnit) return;
    }
    bool latent = rng() % 3 == 0;
    int status;
    std::string out = run_capture(g_ctl + " inject '" + g_mnt + "' " + std::to_string(phys) + " " +
                                      std::to_string(len) + (latent ? " --latent" : "") + " 2>&1",
                                  &status);
    if (status != 0) {
      ++g->inject_failures;
      return report(m, "poisonctl inject %" PRIu64 " %" PRIu64 " failed: %s", phys, len, out.c_str());
    }
    ++(latent ? g->injected_latent : g->injected);
    for (int t = 0; t < kFilesPerWorker; ++t) {
      FileModel& f = m.files[t];
      if (!f.exists) continue;
      for (const Range& r : hits[t]) {
        if (f.npoison == kMaxPoison) {
          report(m, "too many poisoned ranges in %s", file_path(w, t).c_str());
          break;
        }
        f.poison[f.npoison] = r;
        f.poison[f.npoison++].latent = latent;
        ++g->marked_files;
      }
    }
  }

  // Rewrites the true bytes over every poisoned range of worker w's files.
  void recover(int w) {
    WorkerModel& m = g->w[w];
    Lock lock(&m.mu);
    for (int s = 0; s < kFilesPerWorker; ++s) {
      FileModel& f = m.files[s];
      if (!f.exists || f.npoison == 0) continue;
      const std::string p = file_path(w, s);
      int fd = open(p.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) {
        report(m, "open %s for recovery: %s", p.c_str(), std::strerror(errno));
        continue;
      }
      bool ok = true;
      std::string known = file_poison_text(fd);
      auto buf = std::unique_ptr<unsigned char, decltype(&std::free)>(
          static_cast<unsigned char*>(std::aligned_alloc(kBlock, kMaxFile)), &std::free);
      for (uint32_t i = 0; i < f.npoison; ++i) {
        // The whole block around the range (clipped at EOF): it covers every
        // poisoned unit it touches.
        uint64_t a = f.poison[i].off / kBlock * kBlock;
        uint64_t b = std::min<uint64_t>((f.poison[i].off + f.poison[i].len + kBlock - 1) / kBlock * kBlock, f.size);
        // Half the time straight from the shared model, whose pages this
        // process may not have mapped yet: the kernel then sends the write
        // in pieces (a short atomic copy at a source page boundary), which
        // the daemon must join (RecoveryWriteSplitByTheKernelRecovers); else
        // from a private, page-aligned copy, which arrives whole.
        const unsigned char* src = f.data + a;
        if (rng() & 1) {
          std::memcpy(buf.get(), f.data + a, b - a);
          src = buf.get();
        }
        if (!full_pwrite(fd, src, b - a, a)) {
          ok = false;
          report(m, "recovery write %s [%" PRIu64 ", %" PRIu64 "): %s (size %" PRIu64 "; model poison %s; daemon's %s)",
                 p.c_str(), a, b, std::strerror(errno), f.size, ranges_text(f).c_str(), known.c_str());
          if (getenv("STRESS_DEBUG")) {  // the file's extents and the device's poison
            int st;
            std::fprintf(stderr, "%s%s", run_capture(g_ctl + " bmap '" + p + "'", &st).c_str(),
                         run_capture(g_ctl + " badblocks --bytes '" + g_mnt + "'", &st).c_str());
          }
        }
      }
      // The daemon must agree that nothing is left.
      auto left = std::make_unique<poisonfs_ranges>();
      std::memset(left.get(), 0, sizeof *left);
      if (ioctl(fd, POISONFS_IOC_FILE_POISON, left.get()) != 0 || left->count != 0) {
        ok = false;
        report(m, "%s still has %u poisoned ranges after recovery", p.c_str(), left->count);
      }
      if (close(fd) != 0) {  // a recovery left incomplete is reported here
        ok = false;
        report(m, "close %s after recovery: %s", p.c_str(), std::strerror(errno));
      }
      if (ok) {
        f.npoison = 0;
        ++g->recovered_files;
      } else {
        ++g->recover_failures;
      }
    }
  }

  void loop() {
    while (!g->stop.load()) {
      int w = static_cast<int>(rng() % g->workers);
      if (rng() % 2 == 0) {
        inject(w);
      } else {
        recover(static_cast<int>(rng() % g->workers));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
    }
    for (int w = 0; w < g->workers; ++w) recover(w);
  }
};

// ---- state file ------------------------------------------------------------------

bool save_state(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  bool ok = std::fwrite(g, sizeof *g, 1, f) == 1;
  return std::fclose(f) == 0 && ok;
}

bool load_state(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  bool ok = std::fread(g, sizeof *g, 1, f) == 1;
  std::fclose(f);
  return ok;
}

Shared* map_shared() {
  void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("stress: mmap");
    std::exit(1);
  }
  return new (p) Shared();
}

int usage() {
  std::fprintf(stderr,
               "usage: poisonfs_stress run --mnt DIR --poisonctl PATH --state FILE [--seconds N] [--workers N] [--seed N]\n"
               "       poisonfs_stress verify --mnt DIR --state FILE\n");
  return 2;
}

int do_run(int seconds, int workers, uint64_t seed, const std::string& state) {
  g = map_shared();
  g->workers = workers;
  for (int w = 0; w < workers; ++w) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&g->w[w].mu, &a);
    pthread_mutexattr_destroy(&a);
    std::string dir = g_mnt + "/w" + std::to_string(w);
    if (mkdir(dir.c_str(), 0755) != 0) {
      std::fprintf(stderr, "stress: mkdir %s: %s\n", dir.c_str(), std::strerror(errno));
      return 1;
    }
  }
  std::fflush(nullptr);
  std::vector<pid_t> kids;
  for (int w = 0; w <= workers; ++w) {
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the driver
      if (w == workers) {
        Injector inj{std::mt19937_64(seed * 7919 + 1)};
        inj.loop();
      } else {
        Worker wk{w, g->w[w], std::mt19937_64(seed * 1000003 + static_cast<uint64_t>(w))};
        while (!g->stop.load()) wk.step();
      }
      _exit(0);
    }
    if (pid < 0) {
      std::perror("stress: fork");
      g->stop = 1;
      break;
    }
    kids.push_back(pid);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  bool died = false;
  while (std::chrono::steady_clock::now() < deadline && !died) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    for (pid_t k : kids) {
      int st;
      if (waitpid(k, &st, WNOHANG) == k) {
        std::fprintf(stderr, "stress: process %d ended early (status %d)\n", k, st);
        died = true;
      }
    }
  }
  g->stop = 1;
  for (pid_t k : kids) {
    int st = 0;
    while (waitpid(k, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) died = true;
  }
  Counters t{};
  uint64_t files = 0, bytes = 0, poisoned_left = 0;
  for (int w = 0; w < workers; ++w) {
    const Counters& c = g->w[w].c;
    t.ops += c.ops, t.reads += c.reads, t.eio_reads += c.eio_reads, t.writes += c.writes;
    t.truncates += c.truncates, t.renames += c.renames, t.unlinks += c.unlinks, t.creates += c.creates;
    t.copies += c.copies, t.mmaps += c.mmaps, t.errors += c.errors;
    for (const FileModel& f : g->w[w].files) {
      files += f.exists;
      bytes += f.exists ? f.size : 0;
      poisoned_left += f.exists ? f.npoison : 0;
    }
  }
  std::printf("stress: %d s, %d workers: %" PRIu64 " operations (%" PRIu64 " creates, %" PRIu64 " writes, %" PRIu64
              " truncates, %" PRIu64 " renames, %" PRIu64 " unlinks, %" PRIu64 " copy_file_range, %" PRIu64
              " mmap writes, %" PRIu64 " file reads, %" PRIu64 " pages read as EIO where poisoned)\n",
              seconds, workers, t.ops, t.creates, t.writes, t.truncates, t.renames, t.unlinks, t.copies, t.mmaps,
              t.reads, t.eio_reads);
  std::printf("stress: poison events: %" PRIu64 " injections (%" PRIu64 " known, %" PRIu64 " latent), %" PRIu64
              " file ranges hit, %" PRIu64 " file recoveries, %" PRIu64 " failed injections, %" PRIu64
              " failed recoveries\n",
              g->injected + g->injected_latent, g->injected, g->injected_latent, g->marked_files, g->recovered_files,
              g->inject_failures, g->recover_failures);
  std::printf("stress: model: %" PRIu64 " files, %" PRIu64 " bytes, %" PRIu64 " poisoned ranges left; %" PRIu64
              " unexpected results\n",
              files, bytes, poisoned_left, t.errors);
  if (!save_state(state)) {
    std::fprintf(stderr, "stress: cannot save %s\n", state.c_str());
    return 1;
  }
  return died || t.errors > 0 || poisoned_left > 0 ? 1 : 0;
}

int do_verify(const std::string& state) {
  g = map_shared();
  if (!load_state(state)) {
    std::fprintf(stderr, "stress: cannot load %s\n", state.c_str());
    return 1;
  }
  uint64_t files = 0, bytes = 0, lost = 0, bad_files = 0;
  for (int w = 0; w < g->workers; ++w) {
    std::vector<std::string> expected;
    for (int s = 0; s < kFilesPerWorker; ++s) {
      const FileModel& f = g->w[w].files[s];
      if (!f.exists) continue;
      ++files;
      bytes += f.size;
      std::string p = file_path(w, s);
      expected.push_back("f" + std::to_string(s) + "." + std::to_string(f.gen));
      std::vector<unsigned char> got(kMaxFile + 1);
      int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
      ssize_t n = -1;
      if (fd >= 0) {
        size_t have = 0;
        ssize_t r;
        while ((r = pread(fd, got.data() + have, got.size() - have, static_cast<off_t>(have))) > 0)
          have += static_cast<size_t>(r);
        n = r < 0 ? -1 : static_cast<ssize_t>(have);
        close(fd);
      }
      uint64_t wrong = 0;
      if (n < 0) {
        wrong = f.size;
        std::fprintf(stderr, "stress: verify %s: %s\n", p.c_str(), std::strerror(errno));
      } else {
        for (uint64_t i = 0; i < f.size; ++i) wrong += i >= static_cast<uint64_t>(n) || got[i] != f.data[i];
        if (static_cast<uint64_t>(n) != f.size)
          std::fprintf(stderr, "stress: verify %s: %zd bytes, model %" PRIu64 "\n", p.c_str(), n, f.size);
      }
      if (wrong > 0 || static_cast<uint64_t>(n) != f.size) {
        ++bad_files;
        std::fprintf(stderr, "stress: verify %s: %" PRIu64 " bytes differ\n", p.c_str(), wrong);
      }
      lost += wrong;
    }
    // No file the model does not know.
    std::string cmd = "ls -A '" + g_mnt + "/w" + std::to_string(w) + "'";
    int status;
    std::string listing = run_capture(cmd, &status);
    size_t names = 0;
    for (size_t at = 0, nl; (nl = listing.find('\n', at)) != std::string::npos; at = nl + 1) {
      std::string name = listing.substr(at, nl - at);
      ++names;
      if (std::find(expected.begin(), expected.end(), name) == expected.end()) {
        ++bad_files;
        std::fprintf(stderr, "stress: verify: unexpected file w%d/%s\n", w, name.c_str());
      }
    }
    if (names != expected.size()) ++bad_files;
  }
  std::printf("stress: verified %" PRIu64 " files, %" PRIu64 " bytes after remount: data lost %" PRIu64
              " bytes, %" PRIu64 " bad files\n",
              files, bytes, lost, bad_files);
  return lost == 0 && bad_files == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string mode = argv[1], state;
  int seconds = 60, workers = 4;
  uint64_t seed = static_cast<uint64_t>(time(nullptr));
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return usage();
    std::string v = argv[++i];
    if (a == "--mnt") g_mnt = v;
    else if (a == "--poisonctl") g_ctl = v;
    else if (a == "--state") state = v;
    else if (a == "--seconds") seconds = std::atoi(v.c_str());
    else if (a == "--workers") workers = std::atoi(v.c_str());
    else if (a == "--seed") seed = std::strtoull(v.c_str(), nullptr, 10);
    else return usage();
  }
  if (g_mnt.empty() || state.empty() || workers < 1 || workers > kMaxWorkers || seconds < 1) return usage();
  if (mode == "run") {
    if (g_ctl.empty()) return usage();
    std::printf("stress: seed %" PRIu64 "\n", seed);
    std::fflush(stdout);
    return do_run(seconds, workers, seed, state);
  }
  if (mode == "verify") return do_verify(state);
  return usage();
}
