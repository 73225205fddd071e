// The poisonfs daemon: `poisonfs [-f] [-d] [-o opt,...] IMAGE MOUNTPOINT`.
// Parses and validates the command line, opens the image with the core,
// mounts it through libfuse's low-level API and serves requests until the
// kernel ends the session (umount) or a signal ends the loop; then it
// unmounts the core, which writes back lazy state and checkpoints.
//
// Daemonizing: the process forks *before* it opens the image, and the parent
// waits until the child reports the mount (or its error) through a pipe.
// libfuse's own order (mount, then fuse_daemonize) would fork after the
// image is mapped: a forked child keeps only the calling thread, so any
// thread the core started would be lost, and the child starts with the
// mapping's page tables empty, so mount's pre-faulting would be wasted.
// Errors still reach the terminal: the child writes them to the stderr it
// inherited, before it detaches.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "invalidator.h"
#include "killpriv.h"
#include "media/image_lock.h"
#include "ops.h"
#include "poisonfs/filesystem.h"

#ifndef POISONFS_VERSION
#define POISONFS_VERSION "0.1.0"
#endif

namespace poisonfs::fuse {
namespace {

constexpr unsigned kUnset = UINT_MAX;
// The readahead window the daemon gives its mount (set_read_ahead): one
// READ of max_read bytes.
constexpr unsigned kDefaultReadAheadKb = kMaxIo / 1024;
// How long the single-threaded loop polls for the next request before it
// sleeps (request_wait.h): longer than a synchronous client takes to send
// its next request after a reply, short enough that an idle mount sleeps
// within a blink.
constexpr unsigned kDefaultSpinUs = 50;
constexpr unsigned kMaxSpinUs = 10000;

// The command line as fuse_opt_parse fills it (plain data: fuse_opt stores
// through offsets). Strings are malloc'ed by fuse_opt or by strdup.
struct CmdLine {
  char* image;
  char* mountpoint;
  char* read_reply;
  char* bad_argument;  // the first unknown option or extra argument
  int bad_is_option;
  int foreground;
  int debug;
  int singlethread;
  int multithread;
  int clone_fd;
  int show_help;
  int show_version;
  unsigned max_idle_threads;
  unsigned max_threads;
  unsigned max_read;
  unsigned read_ahead_kb;
  char* spin_us;
  int verify_checksums;
  int direct_io;
  int noacl;
};

enum Key { kKeyUnknown = 100 };

#define PFS_OPT(t, field, value) {t, offsetof(CmdLine, field), value}
#define PFS_KEEP(t) FUSE_OPT_KEY(t, FUSE_OPT_KEY_KEEP)
#define PFS_IGNORE(t) FUSE_OPT_KEY(t, FUSE_OPT_KEY_DISCARD)

const fuse_opt kOptions[] = {
    // Ours.
    PFS_OPT("-f", foreground, 1),
    PFS_OPT("-s", singlethread, 1),
    PFS_OPT("singlethread", singlethread, 1),
    PFS_OPT("multithread", multithread, 1),
    PFS_OPT("clone_fd", clone_fd, 1),
    PFS_OPT("max_idle_threads=%u", max_idle_threads, 0),
    PFS_OPT("max_threads=%u", max_threads, 0),
    PFS_OPT("max_read=%u", max_read, 0),
    PFS_OPT("read_ahead_kb=%u", read_ahead_kb, 0),
    PFS_OPT("spin_us=%s", spin_us, 0),
    PFS_OPT("read_reply=%s", read_reply, 0),
    PFS_OPT("verify_checksums", verify_checksums, 1),
    PFS_OPT("direct_io", direct_io, 1),
    PFS_OPT("acl", noacl, 0),
    PFS_OPT("noacl", noacl, 1),
    PFS_OPT("-h", show_help, 1),
    PFS_OPT("--help", show_help, 1),
    PFS_OPT("-V", show_version, 1),
    PFS_OPT("--version", show_version, 1),
    // Debug is ours (it implies -f) and libfuse's (it logs every request).
    PFS_OPT("-d", debug, 1),
    PFS_OPT("debug", debug, 1),
    PFS_KEEP("-d"),
    PFS_KEEP("debug"),
    // Standard FUSE and kernel mount options, passed to fuse_session_new.
    PFS_KEEP("allow_other"),
    PFS_KEEP("allow_root"),
    PFS_KEEP("auto_unmount"),
    PFS_KEEP("default_permissions"),
    PFS_KEEP("ro"),
    PFS_KEEP("nosuid"),
    PFS_KEEP("nodev"),
    PFS_KEEP("noexec"),
    PFS_KEEP("sync"),
    PFS_KEEP("async"),
    PFS_KEEP("dirsync"),
    PFS_KEEP("atime"),
    PFS_KEEP("noatime"),
    PFS_KEEP("diratime"),
    PFS_KEEP("nodiratime"),
    PFS_KEEP("relatime"),
    PFS_KEEP("norelatime"),
    PFS_KEEP("strictatime"),
    PFS_KEEP("nostrictatime"),
    PFS_KEEP("lazytime"),
    PFS_KEEP("nolazytime"),
    PFS_KEEP("context="),
    PFS_KEEP("fscontext="),
    PFS_KEEP("defcontext="),
    PFS_KEEP("rootcontext="),
    // Generic mount(8) options that mount.fuse3 may pass. The permissive
    // ones (rw, dev, suid, exec) are the defaults mount.fuse3 adds on its
    // own; FUSE keeps nosuid,nodev unless asked otherwise, and so do we.
    PFS_IGNORE("rw"),
    PFS_IGNORE("dev"),
    PFS_IGNORE("suid"),
    PFS_IGNORE("exec"),
    PFS_IGNORE("auto"),
    PFS_IGNORE("noauto"),
    PFS_IGNORE("user"),
    PFS_IGNORE("nouser"),
    PFS_IGNORE("users"),
    PFS_IGNORE("nofail"),
    PFS_IGNORE("_netdev"),
    PFS_IGNORE("defaults"),
    FUSE_OPT_END,
};

#undef PFS_OPT
#undef PFS_KEEP
#undef PFS_IGNORE

// Takes the two positionals and refuses everything no template knows.
int process_arg(void* data, const char* arg, int key, fuse_args* /*outargs*/) {
  auto* cmd = static_cast<CmdLine*>(data);
  if (key == FUSE_OPT_KEY_NONOPT) {
    if (!cmd->image) {
      cmd->image = strdup(arg);
      return 0;
    }
    if (!cmd->mountpoint) {
      cmd->mountpoint = strdup(arg);
      return 0;
    }
  } else if (key == FUSE_OPT_KEY_OPT) {
    // fstab "x-..." options are for userspace tools, never for the helper.
    if (std::strncmp(arg, "x-", 2) == 0 || std::strncmp(arg, "comment=", 8) == 0) return 0;
  }
  if (!cmd->bad_argument) {
    cmd->bad_argument = strdup(arg);
    cmd->bad_is_option = key != FUSE_OPT_KEY_NONOPT;
  }
  return 0;  // keep parsing; main reports the first bad argument
}

void print_usage(const char* prog) {
  std::printf(
      "usage: %s [-f] [-d] [-o opt,...] IMAGE MOUNTPOINT\n"
      "\n"
      "Mounts the poisonfs image IMAGE (made by mkfs.poisonfs) on MOUNTPOINT.\n"
      "Unmount with `fusermount3 -u MOUNTPOINT` or `umount IMAGE`.\n"
      "\n"
      "options:\n"
      "    -h, --help             print this help and exit\n"
      "    -V, --version          print the version and exit\n"
      "    -f                     stay in the foreground\n"
      "    -d, -o debug           log every request (implies -f)\n"
      "    -s, -o singlethread    serve requests on one thread (the default)\n"
      "    -o multithread         serve requests on libfuse's worker threads\n"
      "    -o clone_fd            one /dev/fuse descriptor per worker (implies multithread)\n"
      "    -o max_idle_threads=N  idle workers kept (implies multithread)\n"
      "    -o max_threads=N       workers at most (implies multithread)\n"
      "    -o max_read=N          largest read request in bytes (default 1 MiB)\n"
      "    -o read_ahead_kb=N     readahead window of the mount in KiB (default %u;\n"
      "                           0: the kernel's 128; needs root)\n"
      "    -o spin_us=N           after each request keep polling for the next one for\n"
      "                           N microseconds before sleeping (default %u, at most\n"
      "                           %u; 0: sleep at once; single-threaded loop only);\n"
      "                           polling pauses by itself while requests keep\n"
      "                           coming later than that\n"
      "    -o read_reply=MODE     how read replies leave: iov (default), data, splice\n"
      "    -o direct_io           no page cache for read(2) and write(2), as on fsdax:\n"
      "                           one copy from the image instead of two; a read of a\n"
      "                           range with poison fails whole (O_DIRECT: short read)\n"
      "    -o verify_checksums    check every read against the data's crc32c (EIO and a\n"
      "                           corruption event on a mismatch)\n"
      "    -o acl, -o noacl       POSIX ACLs in force (the default) or not: with\n"
      "                           noacl they are refused and stored ones ignored, and\n"
      "                           the kernel fetches none (faster access checks by\n"
      "                           users other than a file's owner)\n"
      "    -o allow_other         let other users in (root, or user_allow_other)\n"
      "    -o allow_root          let root in as well as the mounting user\n"
      "    -o auto_unmount        unmount when the daemon dies\n"
      "    -o ro, nosuid, nodev, noexec, sync, dirsync, noatime, ...\n"
      "                           kernel mount flags, passed through\n"
      "\n"
      "Always on: default_permissions, fsname=<IMAGE as an absolute path>,\n"
      "subtype=poisonfs. Ignored (mount(8) passes them): rw, dev, suid, exec,\n"
      "auto, noauto, user, nouser, users, nofail, _netdev, defaults.\n",
      prog, kDefaultReadAheadKb, kDefaultSpinUs, kMaxSpinUs);
}

// The device number ("0:42") of the poisonfs mount on mountpoint (the last
// one listed: the top of a stack), or "" when there is none.
std::string mount_device(const std::string& mountpoint) {
  std::string device;
  for (const PoisonfsMount& m : poisonfs_mounts())
    if (m.mountpoint == mountpoint) device = m.devno;
  return device;
}

// Raises the readahead window of the mount, before the session loop answers
// INIT. The kernel starts every FUSE mount at 128 KiB (VM_READAHEAD_PAGES)
// and, at INIT, keeps the smaller of that and the reply's max_readahead, so
// max_readahead alone cannot raise it; the bdi's sysfs knob (root only, like
// blockdev --setra) raises the first term. A sequential buffered reader then
// gets 1 MiB READs, up to four in flight, instead of 256 KiB READs, at most
// two (numbers in README.md, Benchmarks).
void set_read_ahead(const std::string& mountpoint, unsigned kb, bool asked) {
  const std::string device = mount_device(mountpoint);
  std::ofstream knob("/sys/class/bdi/" + device + "/read_ahead_kb");
  if (!device.empty() && knob && (knob << kb << "\n").flush()) return;
  // Not root (a user mount through fusermount3): the kernel's window stays.
  if (asked) std::fprintf(stderr, "poisonfs: cannot set read_ahead_kb of %s\n", mountpoint.c_str());
}

// The write end of the pipe to a waiting parent (-1 in the foreground).
int g_ready_fd = -1;

// The child a waiting parent started (daemonize_early), for forward_stop.
volatile sig_atomic_t g_child = 0;

void forward_stop(int /*sig*/) {
  if (g_child > 0) kill(static_cast<pid_t>(g_child), SIGTERM);
}

// Ctrl-C or SIGTERM to a parent waiting for its child's verdict ends the
// child's mount instead of leaving it to go on alone (the child is in a
// session of its own, out of the terminal's reach): the child, which has
// the stop signals blocked, finds SIGTERM pending in its wait for the image
// lock, or takes it in its loop and unmounts. Signals ignored when the
// program started (nohup, a background job) stay ignored; SIGHUP stays
// blocked, so a closed terminal does not stop a mount under way.
void forward_stop_signals_to(pid_t child) {
  g_child = child;
  sigset_t forwarded;
  sigemptyset(&forwarded);
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) != 0 || old.sa_handler == SIG_IGN) continue;
    struct sigaction act {};
    act.sa_handler = forward_stop;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, nullptr) == 0) sigaddset(&forwarded, sig);
  }
  pthread_sigmask(SIG_UNBLOCK, &forwarded, nullptr);
}

// Forks; the parent waits for the child's verdict and exits with it. The
// child returns and later calls report_ready() or exits with an error.
void daemonize_early() {
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("poisonfs: pipe");
    std::exit(1);
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("poisonfs: fork");
    std::exit(1);
  }
  if (pid > 0) {
    close(fds[1]);
    forward_stop_signals_to(pid);
    char ok = 0;
    ssize_t n;
    do {
      n = read(fds[0], &ok, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1 && ok == 1) _exit(0);
    // The child failed (and said why on stderr) or died: pass on its code.
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : 1);
  }
  close(fds[0]);
  g_ready_fd = fds[1];
  setsid();
}

// Tells the waiting parent that the filesystem is mounted, and detaches.
void report_ready() {
  if (chdir("/") != 0) {
    // Nothing depends on the working directory; keep going.
  }
  if (g_ready_fd < 0) return;
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO) close(null);
  }
  char ok = 1;
  if (write(g_ready_fd, &ok, 1) != 1) {
    // The parent is gone; the mount stands regardless.
  }
  close(g_ready_fd);
  g_ready_fd = -1;
}

// One thread serves requests unless asked otherwise. With one request in
// flight at a time (a synchronous reader or writer) it answers 2-4x more
// 4 KiB requests than libfuse's multithreaded loop (README.md, Benchmarks):
// there the kernel hands each request to the worker that has waited longest,
// so consecutive requests alternate between threads and CPUs. It is safe
// because no handler waits for another request: whatever must wait for the
// kernel to drop cached pages (which a READ queued behind it may hold) runs
// on the invalidation thread (invalidator.h).
bool multithreaded(const CmdLine& cmd) {
  if (cmd.singlethread) return false;
  return cmd.multithread || cmd.clone_fd || cmd.max_idle_threads != kUnset ||
         cmd.max_threads != kUnset;
}

// The signals that end the session loop (libfuse's handlers).
constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : kStopSignals) sigaddset(&set, sig);
  return set;
}

// Whether a stop signal came while they are blocked (before the loop): it
// stays pending, and the wait for the image lock gives up on it.
bool stop_signal_pending() {
  sigset_t pending;
  if (sigpending(&pending) != 0) return false;
  for (int sig : kStopSignals) {
    if (sigismember(&pending, sig) == 1) return true;
  }
  return false;
}

// How the loop waits for requests (-o spin_us), or nullopt after printing
// why the option is wrong.
std::optional<RequestWait> request_wait_of(const CmdLine& cmd, const char* prog) {
  unsigned spin_us = kDefaultSpinUs;
  if (cmd.spin_us) {
    char* end = nullptr;
    errno = 0;
    unsigned long value = std::strtoul(cmd.spin_us, &end, 10);
    if (!std::isdigit(static_cast<unsigned char>(cmd.spin_us[0])) || *end != '\0' || errno != 0 ||
        value > kMaxSpinUs) {
      std::fprintf(stderr, "%s: spin_us must be a number of microseconds from 0 to %u, not '%s'\n",
                   prog, kMaxSpinUs, cmd.spin_us);
      return std::nullopt;
    }
    spin_us = static_cast<unsigned>(value);
  }
  if (multithreaded(cmd)) {
    if (cmd.spin_us && spin_us != 0) {
      std::fprintf(stderr, "%s: spin_us is for the single-threaded loop; drop it or the "
                   "multithreaded options\n", prog);
      return std::nullopt;
    }
    spin_us = 0;
  }
  return make_request_wait(int64_t{spin_us} * 1000, stop_signals());
}

int run_loop(fuse_session* se, const CmdLine& cmd) {
  if (!multithreaded(cmd)) return fuse_session_loop(se);
  fuse_loop_config* config = fuse_loop_cfg_create();
  if (!config) return -ENOMEM;
  fuse_loop_cfg_set_clone_fd(config, cmd.clone_fd ? 1 : 0);
  if (cmd.max_idle_threads != kUnset) fuse_loop_cfg_set_idle_threads(config, cmd.max_idle_threads);
  if (cmd.max_threads != kUnset) fuse_loop_cfg_set_max_threads(config, cmd.max_threads);
  int res = fuse_session_loop_mt(se, config);
  fuse_loop_cfg_destroy(config);
  return res;
}

// Frees what fuse_opt and strdup allocated.
struct CmdLineOwner {
  CmdLine* cmd;
  fuse_args* args;
  ~CmdLineOwner() {
    std::free(cmd->image);
    std::free(cmd->mountpoint);
    std::free(cmd->read_reply);
    std::free(cmd->spin_us);
    std::free(cmd->bad_argument);
    fuse_opt_free_args(args);
  }
};

int daemon_main(int argc, char** argv) {
  const char* prog = "poisonfs";
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  CmdLine cmd{};
  cmd.max_idle_threads = kUnset;
  cmd.max_threads = kUnset;
  cmd.max_read = kMaxIo;
  cmd.read_ahead_kb = kUnset;
  CmdLineOwner owner{&cmd, &args};

  if (fuse_opt_parse(&args, &cmd, kOptions, process_arg) != 0) {
    std::fprintf(stderr, "%s: invalid command line (see %s --help)\n", prog, prog);
    return 1;
  }
  if (cmd.show_help) {
    print_usage(argv[0]);
    return 0;
  }
  if (cmd.show_version) {
    std::printf("poisonfs version %s\n", POISONFS_VERSION);
    std::fflush(stdout);
    fuse_lowlevel_version();
    return 0;
  }
  if (cmd.bad_argument) {
    if (cmd.bad_is_option) {
      std::fprintf(stderr, "%s: unknown option '%s'\n", prog, cmd.bad_argument);
    } else {
      std::fprintf(stderr, "%s: unexpected argument '%s' (usage: %s IMAGE MOUNTPOINT)\n", prog,
                   cmd.bad_argument, prog);
    }
    return 1;
  }
  if (!cmd.image || !cmd.mountpoint) {
    std::fprintf(stderr, "%s: missing %s (usage: %s [-f] [-d] [-o opt,...] IMAGE MOUNTPOINT)\n",
                 prog, cmd.image ? "MOUNTPOINT" : "IMAGE and MOUNTPOINT", prog);
    return 1;
  }
  MountContext context;
  context.owner_uid = getuid();
  context.max_read = cmd.max_read;
  context.direct_io = cmd.direct_io != 0;
  context.posix_acls = cmd.noacl == 0;
  if (cmd.read_reply) {
    std::string_view how = cmd.read_reply;
    if (how == "iov") {
      context.read_reply = ReadReply::kIov;
    } else if (how == "data") {
      context.read_reply = ReadReply::kData;
    } else if (how == "splice") {
      context.read_reply = ReadReply::kSplice;
    } else {
      std::fprintf(stderr, "%s: read_reply must be iov, data or splice, not '%s'\n", prog,
                   cmd.read_reply);
      return 1;
    }
  }
  if (cmd.max_read == 0 || cmd.max_read > kMaxIo) {
    std::fprintf(stderr, "%s: max_read must be between 1 and %u\n", prog, kMaxIo);
    return 1;
  }
  std::optional<RequestWait> wait = request_wait_of(cmd, prog);
  if (!wait) return 1;
  context.request_wait = std::move(*wait);
  if (cmd.debug) cmd.foreground = 1;
  if (cmd.read_ahead_kb == kUnset) {
    context.max_readahead = kDefaultReadAheadKb * 1024;
  } else if (cmd.read_ahead_kb != 0) {
    context.max_readahead = std::min<uint64_t>(cmd.read_ahead_kb, UINT_MAX / 1024) * 1024;
  }

  const std::string image = absolute_path(cmd.image);
  std::string mountpoint = cmd.mountpoint;
  // mount.fuse3 -o drop_privileges hands over an open /dev/fuse as /dev/fd/N.
  if (!mountpoint.starts_with("/dev/fd/")) {
    struct stat st;
    if (stat(cmd.mountpoint, &st) != 0) {
      std::fprintf(stderr, "%s: mountpoint '%s': %s\n", prog, cmd.mountpoint,
                   std::strerror(errno));
      return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
      std::fprintf(stderr, "%s: mountpoint '%s' is not a directory\n", prog, cmd.mountpoint);
      return 1;
    }
    mountpoint = absolute_path(cmd.mountpoint);
  }

  // Mount options every poisonfs mount has.
  char* fixed = nullptr;
  std::string fsname = "fsname=" + image;
  if (fuse_opt_add_opt(&fixed, "default_permissions") != 0 ||
      fuse_opt_add_opt_escaped(&fixed, fsname.c_str()) != 0 ||
      fuse_opt_add_opt(&fixed, "subtype=poisonfs") != 0 ||
      fuse_opt_add_opt(&fixed, ("max_read=" + std::to_string(cmd.max_read)).c_str()) != 0 ||
      fuse_opt_add_arg(&args, "-o") != 0 || fuse_opt_add_arg(&args, fixed) != 0) {
    std::free(fixed);
    std::fprintf(stderr, "%s: out of memory\n", prog);
    return 1;
  }
  std::free(fixed);

  // Only the loop's thread takes the signals that end the loop: threads the
  // core and the daemon start inherit this mask. A spinning loop takes them
  // only while it sleeps (request_wait.h); otherwise it unblocks them just
  // before the loop. One that comes before stays pending: mount_image looks
  // for it while it waits for the image lock (stop_signal_pending).
  const sigset_t stop = stop_signals();
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  if (!cmd.foreground) daemonize_early();

  OpenOptions open_options;
  open_options.verify_checksums = cmd.verify_checksums != 0;
  open_options.posix_acls = cmd.noacl == 0;
  open_options.stop_waiting = stop_signal_pending;
  // Waits for the daemon of a mount of the image that was just unmounted
  // (media/image_lock.h), so `umount IMAGE; poisonfs IMAGE ...` works.
  auto mounted = Filesystem::mount_image(image, open_options);
  if (!mounted) {
    // The core's message names the image (and says "in use" when it is).
    std::fprintf(stderr, "%s: %s\n", prog, mounted.error().to_string().c_str());
    return 1;
  }
  std::unique_ptr<Filesystem> fs = std::move(*mounted);
  context.fs = fs.get();

  const fuse_lowlevel_ops ops = make_poisonfs_ops();
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &context);
  if (!se) {
    std::fprintf(stderr, "%s: cannot start a FUSE session\n", prog);
    (void)fs->unmount();
    return 1;
  }
  context.session = se;
  if (fuse_set_signal_handlers(se) != 0) {
    std::fprintf(stderr, "%s: cannot install signal handlers\n", prog);
    fuse_session_destroy(se);
    (void)fs->unmount();
    return 1;
  }
  context.mountpoint = mountpoint;
  if (fuse_session_mount(se, mountpoint.c_str()) != 0) {
    std::fprintf(stderr, "%s: cannot mount on '%s'\n", prog, mountpoint.c_str());
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    (void)fs->unmount();
    return 1;
  }
  if (cmd.read_ahead_kb != 0) {
    set_read_ahead(mountpoint, context.max_readahead / 1024, cmd.read_ahead_kb != kUnset);
  }
  // Before the loop reads the INIT request (see killpriv.h).
  int err = install_killpriv_shim(se);
  if (err == 0) err = prepare_request_fd(fuse_session_fd(se), context.request_wait);
  if (err != 0) {
    std::fprintf(stderr, "%s: cannot set up /dev/fuse: %s\n", prog, std::strerror(-err));
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    (void)fs->unmount();
    return 1;
  }
  report_ready();

  int res;
  {
    CacheInvalidator invalidator(se);
    context.invalidator = &invalidator;
    fs->set_invalidate_hook([&invalidator](Ino ino, uint64_t off, uint64_t len) { invalidator.push(ino, off, len); });
    {
      // Destroyed first: a scrub still running finishes (and queues its
      // reply on the invalidator) before the invalidator stops.
      SerialWorker background;
      context.background = &background;
      if (!context.request_wait.spins()) pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);
      res = run_loop(se, cmd);
      // A second signal must not kill the daemon while it writes back.
      pthread_sigmask(SIG_BLOCK, &stop, nullptr);
      context.background = nullptr;
    }
    fs->set_invalidate_hook(nullptr);
    context.invalidator = nullptr;
  }

  fuse_remove_signal_handlers(se);
  fuse_session_unmount(se);
  int code = 0;
  if (Status st = fs->unmount(); !st) {
    std::fprintf(stderr, "%s: unmount of %s: %s\n", prog, image.c_str(),
                 st.error().to_string().c_str());
    code = 1;
  }
  fuse_session_destroy(se);
  if (res < 0 && res != -ENODEV) {
    std::fprintf(stderr, "%s: session loop: %s\n", prog, std::strerror(-res));
  }
  return code;
}

}  // namespace
}  // namespace poisonfs::fuse

int main(int argc, char** argv) {
  try {
    return poisonfs::fuse::daemon_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "poisonfs: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "poisonfs: unexpected error\n");
  }
  return 1;
}
