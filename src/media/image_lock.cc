// See image_lock.h.
#include "media/image_lock.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <thread>
#include <utility>

namespace poisonfs {

std::string absolute_path(const std::string& path) {
  if (char* real = realpath(path.c_str(), nullptr)) {
    std::string out(real);
    std::free(real);
    return out;
  }
  if (path.starts_with('/')) return path;
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) return path;
  return std::string(cwd) + "/" + path;
}

std::string unescape_mountinfo(std::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      int v = 0;
      bool ok = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = field[i + k];
        ok = ok && c >= '0' && c <= '7';
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += field[i];
  }
  return out;
}

namespace {

// The whole of a small (procfs) file, or empty.
std::string read_small_file(const char* path) {
  std::string text;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buf[8192];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(fd);
  return text;
}

// The next space-separated field of `rest` (consumed).
std::string_view next_field(std::string_view& rest) {
  size_t end = rest.find(' ');
  std::string_view field = rest.substr(0, end);
  rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
  return field;
}

// Whether a mount's source is the image: the same file, since the lock
// belongs to the file, whatever name opened it; else (a source gone or out
// of reach) the same absolute path.
bool source_is_image(const std::string& source, const struct stat& image, const std::string& path) {
  struct stat st {};
  if (stat(source.c_str(), &st) == 0) return st.st_dev == image.st_dev && st.st_ino == image.st_ino;
  return source == absolute_path(path);
}

}  // namespace

// Parsed by hand, not with streams: every poisonctl call reads it, and
// stream set-up alone cost it a tenth of a millisecond.
std::vector<PoisonfsMount> poisonfs_mounts() {
  std::vector<PoisonfsMount> mounts;
  std::string text = read_small_file("/proc/self/mountinfo");
  std::string_view all(text);
  while (!all.empty()) {
    size_t eol = all.find('\n');
    std::string_view line = all.substr(0, eol);
    all = eol == std::string_view::npos ? std::string_view{} : all.substr(eol + 1);
    // id parent MAJ:MIN root mountpoint options [optional...] - fstype source superopts
    size_t sep = line.find(" - ");
    if (sep == std::string_view::npos) continue;
    std::string_view tail = line.substr(sep + 3);
    if (next_field(tail) != "fuse.poisonfs") continue;
    std::string_view head = line.substr(0, sep);
    PoisonfsMount m;
    next_field(head);  // id
    next_field(head);  // parent
    m.devno = next_field(head);
    next_field(head);  // root
    m.mountpoint = unescape_mountinfo(next_field(head));
    m.source = unescape_mountinfo(next_field(tail));
    mounts.push_back(std::move(m));
  }
  return mounts;
}

std::optional<PoisonfsMount> mount_of_image(const struct stat& image, const std::string& path) {
  for (PoisonfsMount& m : poisonfs_mounts()) {
    if (source_is_image(m.source, image, path)) return std::move(m);
  }
  return std::nullopt;
}

bool image_is_mounted(int fd, const std::string& path) {
  struct stat image {};
  return fstat(fd, &image) == 0 && mount_of_image(image, path).has_value();
}

int lock_image(int fd, const std::string& path, int op, const std::function<bool()>& stop_waiting,
               std::chrono::milliseconds patience) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + patience;
  for (;;) {
    if (flock(fd, op | LOCK_NB) == 0) return 0;
    const int err = errno;
    if (err != EWOULDBLOCK || Clock::now() >= deadline) return err;
    if (image_is_mounted(fd, path)) return err;
    if (stop_waiting && stop_waiting()) return EINTR;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace poisonfs
