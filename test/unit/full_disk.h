// A full disk under one open file, for tests of write errors: every
// descriptor this process holds on the file is pointed at /dev/full, so
// writes through it fail with ENOSPC (as root too, unlike a read-only
// directory). Opening the file again by its name gets the real file back.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace poisonfs::testing {

// Returns how many descriptors now write to /dev/full. REQUIRES: `path`
// is canonical (as /proc/self/fd shows it).
inline int fill_disk_under(const std::string& path) {
  const int full = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  if (full < 0) return 0;
  int redirected = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(entry.path(), ec) != path || ec) continue;
    if (::dup3(full, std::stoi(entry.path().filename().string()), O_CLOEXEC) >= 0) ++redirected;
  }
  ::close(full);
  return redirected;
}

}  // namespace poisonfs::testing
