// poisonctl: what fsmap and map share: the owners of the device with the
// paths of its data owners, through a mount or from the core (fsmap.cc),
// and the table of those paths.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fs/fsmap_pack.h"
#include "poisonfs/filesystem.h"
#include "tools/poisonctl/poisonctl.h"

namespace poisonfs::ctl {

inline bool is_data(const FsmapEntry& e) { return e.owner == FsmapOwner::kData; }
inline bool has_inode(const FsmapEntry& e) { return fsmap_owner_has_inode(e.owner); }

// The paths of the data owners of a listing, kept once per inode in the
// form the listing prints: the JSON fragment every record of that inode
// repeats, or its first path and how many it has (tables, the map).
class PathTable {
 public:
  enum class Form { kJson, kFirstPath };
  explicit PathTable(Form form) : form_(form) {}
  void clear() { *this = PathTable(form_); }

  // Sets the paths of ino, in any order; the first set of an inode counts.
  // Sorted: the core lists hard links in an order a remount may change.
  // Room for `inodes` more adds of short names, grown geometrically (a
  // listing of many pages reserves once per page).
  void reserve(size_t inodes) {
    grow(slots_, slots_.size() + inodes);
    if (form_ == Form::kJson)
      grow(json_, json_.size() + inodes * 40);
    else
      grow(first_names_, first_names_.size() + inodes * 24);
  }
  template <class Paths>
  void add(Ino ino, const Paths& given) {
    std::span<const std::string_view> paths;
    std::string_view one;
    if (given.size() == 1) {
      one = *given.begin();
      paths = {&one, 1};
    } else {
      paths_.assign(given.begin(), given.end());
      std::sort(paths_.begin(), paths_.end());
      paths = paths_;
    }
    Slot slot{ino, 0, 0, paths.size()};
    if (form_ == Form::kJson) {
      slot.at = json_.size();
      append_json_paths(paths);
      slot.len = json_.size() - slot.at;
    } else if (!paths.empty()) {
      slot.at = first_names_.size();
      slot.len = paths.front().size();
      first_names_ += paths.front();
    }
    if (!slots_.empty() && slots_.back().ino >= ino) sorted_ = false;
    slots_.push_back(slot);
  }
  // The data inodes of `entries` that no add() named (both sides sorted:
  // one merge, no search per inode).
  std::vector<Ino> missing(const std::vector<FsmapEntry>& entries) {
    sort();
    std::vector<Ino> out;
    auto slot = slots_.begin();
    for (Ino ino : distinct_data_inodes(entries)) {
      while (slot != slots_.end() && slot->ino < ino) ++slot;
      if (slot == slots_.end() || slot->ino != ino) out.push_back(ino);
    }
    return out;
  }
  // Ready for lookups. An inode no add() named (gone since the listing)
  // prints as having no path.
  void finish() { sort(); }

  // Form::kJson only.
  std::string_view json(Ino ino) const {
    const Slot* s = find(ino);
    if (!s) return ", \"path\": null";
    return std::string_view(json_).substr(s->at, s->len);
  }
  // The first path and how many there are (Form::kFirstPath only).
  std::pair<std::string_view, size_t> first_path(Ino ino) const {
    const Slot* s = find(ino);
    if (!s || s->count == 0) return {{}, 0};
    return {std::string_view(first_names_).substr(s->at, s->len), s->count};
  }

 private:
  struct Slot {
    Ino ino;
    size_t at;  // its JSON fragment in json_, or its first path in first_names_
    size_t len;
    size_t count;  // paths
  };
  // ", "path": "/a"" and, for more than one, ", "paths": ["/a", "/b"]".
  void append_json_paths(std::span<const std::string_view> paths) {
    if (paths.empty()) {
      json_ += ", \"path\": null";
      return;
    }
    json_ += ", \"path\": ";
    append_json_string(json_, paths.front());
    if (paths.size() == 1) return;
    json_ += ", \"paths\": [";
    for (size_t k = 0; k < paths.size(); ++k) {
      if (k) json_ += ", ";
      append_json_string(json_, paths[k]);
    }
    json_ += ']';
  }
  template <class Container>
  static void grow(Container& c, size_t need) {
    if (c.capacity() < need) c.reserve(std::max(need, 2 * c.capacity()));
  }
  // Slots come in inode order from a listing of sharers: then nothing moves.
  void sort() {
    if (sorted_) return;
    std::stable_sort(slots_.begin(), slots_.end(),
                     [](const Slot& a, const Slot& b) { return a.ino < b.ino; });
    slots_.erase(std::unique(slots_.begin(), slots_.end(),
                             [](const Slot& a, const Slot& b) { return a.ino == b.ino; }),
                 slots_.end());
    sorted_ = true;
    last_ = 0;
  }
  const Slot* find(Ino ino) const {
    // Consecutive records usually name the same inode, or the next one
    // (the sharers of a block come in inode order).
    if (last_ < slots_.size() && slots_[last_].ino == ino) return &slots_[last_];
    if (last_ + 1 < slots_.size() && slots_[last_ + 1].ino == ino) return &slots_[++last_];
    auto it = std::lower_bound(slots_.begin(), slots_.end(), ino,
                               [](const Slot& s, Ino i) { return s.ino < i; });
    if (it == slots_.end() || it->ino != ino) return nullptr;
    last_ = static_cast<size_t>(it - slots_.begin());
    return &*it;
  }
  Form form_;
  std::vector<Slot> slots_;
  bool sorted_ = true;  // strictly increasing inodes
  std::string first_names_;
  std::string json_;
  std::vector<std::string_view> paths_;  // scratch of add()
  mutable size_t last_ = 0;
};

// fsmap with paths through the mount (fsmap.cc).
Status named_fsmap_from_mount(int fd, const std::string& where, uint64_t start, uint64_t length,
                              std::vector<FsmapEntry>& entries, PathTable& table);
// The same from the core, for entries it listed.
void paths_from_core(Filesystem& fs, const std::vector<FsmapEntry>& entries, PathTable& table);

}  // namespace poisonfs::ctl
