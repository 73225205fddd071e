// The image lock. A mount holds an exclusive flock on its image for as long
// as its daemon runs, a tool a shared one (a read-only view) or an
// exclusive one (mkfs, repair). umount(8) returns once the kernel has let go
// of the mount, while its daemon may still be writing back its last state
// with the lock held; so `umount IMAGE; fsck.poisonfs IMAGE` (or mkfs, or a
// remount) waits for a daemon whose mount is gone, instead of failing.
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace poisonfs {

// How long an opener waits for the daemon of an unmounted image to exit.
inline constexpr std::chrono::milliseconds kUnmountedDaemonPatience{5000};

// An absolute form of path: the real path when it exists, else cwd + path,
// so that an error still names what the user typed.
std::string absolute_path(const std::string& path);

// Decodes the octal escapes (\040 for a space) of a /proc/self/mountinfo field.
std::string unescape_mountinfo(std::string_view field);

// A poisonfs mount as /proc/self/mountinfo lists it.
struct PoisonfsMount {
  std::string devno;  // "MAJ:MIN" of the mount
  std::string mountpoint;
  std::string source;  // its fsname: the image's absolute path when it was mounted
};

// Every fuse.poisonfs mount this process sees, in mountinfo order.
std::vector<PoisonfsMount> poisonfs_mounts();

// The poisonfs mount of the image `image` (its stat; `path` names it): one
// whose source is the same file, whatever path leads to it (a hard link, a
// bind mount, a symlinked directory), or the same absolute path when the
// source cannot be looked at. Nothing when none is listed.
std::optional<PoisonfsMount> mount_of_image(const struct stat& image, const std::string& path);

// True when a poisonfs mount of the image open as fd (by path) is listed
// (mount_of_image).
bool image_is_mounted(int fd, const std::string& path);

// flock(fd, op | LOCK_NB) on the image at path; while another holds it and
// the image is not mounted (a daemon finishing its unmount), tries again
// for up to `patience`, asking `stop_waiting` (if given) before each pause.
// Returns 0 or the errno (EWOULDBLOCK: still held; EINTR: stop_waiting).
int lock_image(int fd, const std::string& path, int op,
               const std::function<bool()>& stop_waiting = {},
               std::chrono::milliseconds patience = kUnmountedDaemonPatience);

}  // namespace poisonfs
