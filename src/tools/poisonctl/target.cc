// poisonctl: what a MOUNTPOINT|IMAGE argument is (a path on a mounted
// poisonfs, an image mounted now, or an unmounted image), and an unmounted
// image opened offline.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "media/image_lock.h"  // poisonfs_mounts, mount_of_image
#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

// ---- finding out what the target is --------------------------------------

namespace {

// statmount(2) (Linux 6.8; the fs subtype since 6.13), declared here: the
// C library's headers may predate it. The layout is the kernel's ABI.
constexpr long kSysStatmount = 457;
constexpr uint32_t kStatxMntIdUnique = 0x4000;
constexpr uint64_t kStatmountFsType = 0x20;
constexpr uint64_t kStatmountFsSubtype = 0x100;
struct MntIdReq {
  uint32_t size;
  uint32_t spare;
  uint64_t mnt_id;
  uint64_t param;
};
struct StatmountReply {
  uint32_t size, mnt_opts;
  uint64_t mask;
  uint32_t sb_dev_major, sb_dev_minor;
  uint64_t sb_magic;
  uint32_t sb_flags, fs_type;
  uint64_t mnt_id, mnt_parent_id;
  uint32_t mnt_id_old, mnt_parent_id_old;
  uint64_t mnt_attr, mnt_propagation, mnt_peer_group, mnt_master, propagate_from;
  uint32_t mnt_root, mnt_point;
  uint64_t mnt_ns_id;
  uint32_t fs_subtype, sb_source;
  uint32_t opt_num, opt_array, opt_sec_num, opt_sec_array;
  uint64_t spare2[46];
  char str[512];  // the strings asked for; EOVERFLOW if they do not fit
};

// Whether `path` is on a fuse.poisonfs mount, asked of the kernel in two
// system calls (statx for the mount's id, statmount for its type), or
// nothing where the kernel cannot say. Neither call reaches the daemon.
std::optional<bool> on_poisonfs_mount_by_statmount(const std::string& path) {
  struct statx sx {};
  // No attribute wanted: FUSE answers without a round trip. A refusal
  // (a seccomp filter) leaves the question to the fallback.
  if (statx(AT_FDCWD, path.c_str(), AT_STATX_DONT_SYNC, kStatxMntIdUnique, &sx) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return std::nullopt;
  }
  if (!(sx.stx_mask & kStatxMntIdUnique)) return std::nullopt;
  MntIdReq req{sizeof req, 0, sx.stx_mnt_id, kStatmountFsType | kStatmountFsSubtype};
  auto reply = std::make_unique<StatmountReply>();
  if (syscall(kSysStatmount, &req, reply.get(), sizeof *reply, 0) != 0) return std::nullopt;
  auto text = [&](uint32_t at) {
    return at < sizeof reply->str ? std::string_view(reply->str + at) : std::string_view{};
  };
  if (!(reply->mask & kStatmountFsType)) return std::nullopt;
  if (text(reply->fs_type) != "fuse") return false;
  // A mount without a subtype has none in the mask; so has a kernel
  // older than 6.13: then only mountinfo can tell.
  if (!(reply->mask & kStatmountFsSubtype)) return std::nullopt;
  return text(reply->fs_subtype) == "poisonfs";
}

// True when `path` lives on a mounted poisonfs: the mount that holds its
}  // namespace

// device number is of type fuse.poisonfs. (No statfs first: on a FUSE
// mount it is a round trip to the daemon on every poisonctl call.)
bool on_poisonfs_mount(const std::string& path) {
  if (auto known = on_poisonfs_mount_by_statmount(path)) return *known;
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  char want[32];
  std::snprintf(want, sizeof want, "%u:%u", major(st.st_dev), minor(st.st_dev));
  for (const auto& m : poisonfs_mounts()) {
    if (m.devno == want) return true;
  }
  return false;
}

// The mountpoint where the image `path` is mounted now, or empty. A mounted
// image is locked, so its live state is asked from the daemon instead. The
// mount is matched as the image lock matches it (mount_of_image: the same
// file, by whatever path), so that poisonctl and the lock agree.
std::string mountpoint_of_image(const std::string& path) {
  struct stat img {};
  if (stat(path.c_str(), &img) != 0 || S_ISDIR(img.st_mode)) return {};
  std::optional<PoisonfsMount> mount = mount_of_image(img, path);
  return mount ? mount->mountpoint : std::string{};
}

// Opens an unmounted image through the core on a private mapping: queries
// never write it.
Result<std::unique_ptr<Filesystem>> open_image(const std::string& path, MapMode mode) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return fail(std::errc{errno}, path + ": " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    return fail(std::errc::not_supported, path + " is a directory but not on a poisonfs mount");
  }
  auto fs = Filesystem::mount_image(path, OpenOptions{mode});
  if (!fs) {
    // The core's message names the image already when it comes from a check.
    std::string message = fs.error().to_string();
    if (!message.starts_with(path + ":")) message = path + ": " + message;
    return fail(fs.error().code, message);
  }
  return std::move(*fs);
}

// A descriptor of any file of a mount, for its ioctls: never a controlling
// terminal, never blocking on a FIFO.
int open_for_control(const std::string& path) {
  return open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
}

// Decides between the mount and the image for a MOUNTPOINT|IMAGE argument:
// a path on a mounted poisonfs is asked through the mount; an image that is
// mounted now is asked through its mount (it is locked, and the daemon has
// the live state); anything else is opened offline.
Target resolve_target(const std::string& arg) {
  Target where{arg, {}};
  if (on_poisonfs_mount(arg)) {
    where.mountpoint = arg;
  } else {
    where.mountpoint = mountpoint_of_image(arg);
  }
  return where;
}

}  // namespace poisonfs::ctl
