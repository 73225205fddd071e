// read_ceiling: the fastest buffered read any FUSE daemon can give on this
// kernel, as a baseline for scripts/bench.sh. It serves one file, "f", of
// 1 GiB, and answers every READ from one static buffer that stays in the
// cache: no data source at all. Everything else the kernel sees is as for a
// default poisonfs mount: one thread, 1 MiB max_read and max_readahead,
// keep_cache (bench.sh sets the same readahead window on both bdis).
//
// libfuse's null example is the O_DIRECT ceiling of compare.sh, but it keeps
// libfuse's defaults (128 KiB reads), so it says nothing about buffered
// reads: there the reader's own work (page-cache folios, the copy to the
// user) is the same for every daemon and bounds what a faster daemon gains.
//
//   read_ceiling [-f] MOUNTPOINT     (unmount with fusermount3 -u)
//
// Not a benchmark itself (the CMake glob builds only *_bench.cc): bench.sh
// compiles it into its temporary directory, as compare.sh does with libfuse's
// examples.
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr fuse_ino_t kFileIno = 2;
constexpr off_t kFileSize = off_t{1} << 30;
constexpr size_t kMaxRead = size_t{1} << 20;
constexpr double kForever = 1e6;  // seconds: attributes never change

alignas(4096) char zeros[kMaxRead];

struct stat attributes(fuse_ino_t ino) {
  struct stat st {};
  st.st_ino = ino;
  if (ino == FUSE_ROOT_ID) {
    st.st_mode = S_IFDIR | 0755;
    st.st_nlink = 2;
  } else {
    st.st_mode = S_IFREG | 0644;
    st.st_nlink = 1;
    st.st_size = kFileSize;
  }
  return st;
}

void ceiling_init(void* /*userdata*/, fuse_conn_info* conn) {
  conn->max_read = kMaxRead;
  conn->max_readahead = kMaxRead;
}

void ceiling_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (parent != FUSE_ROOT_ID || std::strcmp(name, "f") != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param entry{};
  entry.ino = kFileIno;
  entry.attr = attributes(kFileIno);
  entry.attr_timeout = entry.entry_timeout = kForever;
  fuse_reply_entry(req, &entry);
}

void ceiling_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  if (ino != FUSE_ROOT_ID && ino != kFileIno) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st = attributes(ino);
  fuse_reply_attr(req, &st, kForever);
}

void ceiling_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != kFileIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void ceiling_read(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* /*fi*/) {
  size_t n = off >= kFileSize ? 0 : std::min<size_t>({size, sizeof zeros, static_cast<size_t>(kFileSize - off)});
  fuse_reply_buf(req, zeros, n);
}

}  // namespace

int main(int argc, char** argv) {
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  fuse_cmdline_opts opts{};
  if (fuse_parse_cmdline(&args, &opts) != 0 || opts.mountpoint == nullptr) {
    std::fprintf(stderr, "usage: %s [-f] MOUNTPOINT\n", argv[0]);
    return 2;
  }
  // fuse_session_new insists that init()'s max_read equals the option's.
  if (fuse_opt_add_arg(&args, "-omax_read=1048576") != 0) return 1;
  fuse_lowlevel_ops ops{};
  ops.init = ceiling_init;
  ops.lookup = ceiling_lookup;
  ops.getattr = ceiling_getattr;
  ops.open = ceiling_open;
  ops.read = ceiling_read;
  int rc = 1;
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, nullptr);
  if (se != nullptr) {
    if (fuse_set_signal_handlers(se) == 0) {
      if (fuse_session_mount(se, opts.mountpoint) == 0) {
        fuse_daemonize(opts.foreground);
        rc = fuse_session_loop(se) == 0 ? 0 : 1;
        fuse_session_unmount(se);
      }
      fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
  }
  free(opts.mountpoint);
  fuse_opt_free_args(&args);
  return rc;
}
