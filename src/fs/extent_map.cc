// The per-inode extent map (see extent_map.h).
#include "fs/extent_map.h"

#include <algorithm>

#include "format/layout.h"

namespace poisonfs {

bool Extent::unwritten() const { return flags & kExtentUnwritten; }

ExtentEdit::~ExtentEdit() {
  for (Extent* e : graveyard) delete e;
}

ExtentMap::~ExtentMap() {
  set_.clear_and_dispose([](Extent* e) { delete e; });
}

Extent* ExtentMap::containing(uint64_t fb) {
  auto it = set_.upper_bound(fb, ExtentByFileBlock{});
  if (it == set_.begin()) return nullptr;
  --it;
  return fb < it->file_end() ? &*it : nullptr;
}

Extent* ExtentMap::at_or_after(uint64_t fb) {
  if (Extent* e = containing(fb)) return e;
  auto it = set_.upper_bound(fb, ExtentByFileBlock{});
  return it == set_.end() ? nullptr : &*it;
}

Extent* ExtentMap::next(Extent& e) {
  auto it = std::next(Set::s_iterator_to(e));
  return it == set_.end() ? nullptr : &*it;
}

Extent* ExtentMap::before(uint64_t fb) {
  auto it = set_.lower_bound(fb, ExtentByFileBlock{});
  if (it == set_.begin()) return nullptr;
  return &*--it;
}

bool ExtentMap::load(Extent* e) {
  // kSlotValid marks a used record slot, not a kind of extent: kept, it
  // would stop a loaded extent from merging with a new one of its kind.
  e->flags &= ~kSlotValid;
  last_insert_ = nullptr;
  // Records are usually stored in file order (appended as the file grew):
  // one past the last extent goes at the end with no search. (The tree's
  // rbegin() would search: Boost.Intrusive walks down to its maximum.)
  if (set_.empty() || (load_tail_ && load_tail_->file_end() <= e->file_block)) {
    set_.push_back(*e);
    load_tail_ = e;
  } else {
    Extent* prev = before(e->file_end());
    if (prev && prev->file_end() > e->file_block) return false;
    set_.insert(*e);  // before load_tail_, which stays the last
  }
  mapped_ += e->nblocks;
  return true;
}

void ExtentMap::split_at(uint64_t fb, ExtentEdit& edit) {
  load_tail_ = last_insert_ = nullptr;
  Extent* e = containing(fb);
  if (!e || e->file_block == fb) return;
  auto* right = new Extent;
  right->file_block = fb;
  right->phys_block = e->phys_block + (fb - e->file_block);
  right->nblocks = e->file_end() - fb;
  right->flags = e->flags;
  e->nblocks = fb - e->file_block;
  set_.insert(*right);
  edit.dirty.push_back(e);
  edit.dirty.push_back(right);
}

void ExtentMap::erase(Extent* e, ExtentEdit& edit) {
  load_tail_ = last_insert_ = nullptr;
  set_.erase(set_.iterator_to(*e));
  mapped_ -= e->nblocks;
  if (e->slot.valid()) edit.freed_slots.push_back(e->slot);
  e->erased = true;
  edit.dropped.push_back({{e->phys_block, e->nblocks}, e->file_block});
  edit.graveyard.push_back(e);
}

void ExtentMap::punch(uint64_t fb, uint64_t n, ExtentEdit& edit) {
  if (n == 0) return;
  uint64_t end = fb + n;
  split_at(fb, edit);
  split_at(end, edit);
  auto it = set_.lower_bound(fb, ExtentByFileBlock{});
  while (it != set_.end() && it->file_block < end) {
    Extent* e = &*it++;
    erase(e, edit);
  }
}

void ExtentMap::clear(ExtentEdit& edit) {
  while (!set_.empty()) erase(&*set_.begin(), edit);
}

void ExtentMap::insert(uint64_t fb, uint64_t n, uint64_t phys, uint32_t flags, ExtentEdit& edit) {
  load_tail_ = nullptr;
  mapped_ += n;
  edit.added.push_back({{phys, n}, fb});
  auto [prev, next_it] = hole_at(fb);
  Extent* cur = nullptr;
  if (prev && prev->file_end() == fb && prev->phys_end() == phys && prev->flags == flags) {
    prev->nblocks += n;
    cur = prev;
  } else {
    cur = new Extent;
    cur->file_block = fb;
    cur->phys_block = phys;
    cur->nblocks = n;
    cur->flags = flags;
    // push_back at the end: Boost.Intrusive's insert_before(end()) would
    // walk down to the last extent first.
    if (next_it == set_.end()) set_.push_back(*cur);
    else set_.insert_before(next_it, *cur);
  }
  const bool at_end = next_it == set_.end();
  edit.dirty.push_back(cur);
  if (next_it != set_.end()) {
    Extent* next = &*next_it;
    if (next->file_block == cur->file_end() && next->phys_block == cur->phys_end() &&
        next->flags == cur->flags) {
      cur->nblocks += next->nblocks;
      set_.erase(next_it);
      if (next->slot.valid()) edit.freed_slots.push_back(next->slot);
      next->erased = true;
      edit.graveyard.push_back(next);  // its blocks now belong to cur: nothing dropped
    }
  }
  last_insert_ = cur;
  last_insert_is_last_ = at_end;
}

// The range is a hole, so the new extent goes right before the first one
// after fb. A clone inserts its pieces in file order (65,536 and more in a
// row): each then lies right after the last insert, found with no search.
std::pair<Extent*, ExtentMap::Set::iterator> ExtentMap::hole_at(uint64_t fb) {
  if (last_insert_ && last_insert_->file_block < fb) {
    if (last_insert_is_last_) return {last_insert_, set_.end()};
    auto next = std::next(set_.iterator_to(*last_insert_));
    if (next == set_.end() || next->file_block >= fb) return {last_insert_, next};
  }
  auto next = set_.lower_bound(fb, ExtentByFileBlock{});
  return {next == set_.begin() ? nullptr : &*std::prev(next), next};
}

}  // namespace poisonfs
