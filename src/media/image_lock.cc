// See image_lock.h.
#include "media/image_lock.h"

#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <thread>

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

// Whether a mount's source is the image: the same file, since the lock
// belongs to the file, whatever name opened it; else (a source gone or out
// of reach) the same absolute path.
bool source_is_image(const std::string& source, const struct stat& image, const std::string& path) {
  struct stat st {};
  if (stat(source.c_str(), &st) == 0) return st.st_dev == image.st_dev && st.st_ino == image.st_ino;
  return source == absolute_path(path);
}

}  // namespace

bool image_is_mounted(int fd, const std::string& path) {
  struct stat image {};
  if (fstat(fd, &image) != 0) return false;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    // After " - ": fstype source super-options.
    std::string_view rest = std::string_view(line).substr(sep + 3);
    size_t a = rest.find(' ');
    if (a == std::string_view::npos) continue;
    std::string_view fstype = rest.substr(0, a);
    std::string_view tail = rest.substr(a + 1);
    std::string_view source = tail.substr(0, tail.find(' '));
    if (fstype == "fuse.poisonfs" && source_is_image(unescape_mountinfo(source), image, path))
      return true;
  }
  return false;
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
