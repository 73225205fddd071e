// The scheduler state of a process or thread, from the third field of its
// /proc stat file (after the name in parentheses, which may hold spaces):
// 'R' running, 'S' sleeping, 'Z' zombie, ...; '\0' when it is gone.
#pragma once

#include <fstream>
#include <iterator>
#include <string>

namespace poisonfs::test {

inline char proc_state(const std::string& stat_path) {
  std::ifstream in(stat_path);
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t name_end = stat.rfind(')');
  if (name_end == std::string::npos || name_end + 2 >= stat.size()) return '\0';
  return stat[name_end + 2];
}

}  // namespace poisonfs::test
