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
  Extent* prev = before(e->file_end());
  if (prev && prev->file_end() > e->file_block) return false;
  // kSlotValid marks a used record slot, not a kind of extent: kept, it
  // would stop a loaded extent from merging with a new one of its kind.
  e->flags &= ~kSlotValid;
  set_.insert(*e);
  mapped_ += e->nblocks;
  return true;
}

void ExtentMap::split_at(uint64_t fb, ExtentEdit& edit) {
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
  mapped_ += n;
  edit.added.push_back({{phys, n}, fb});
  Extent* prev = before(fb);
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
    set_.insert(*cur);
  }
  edit.dirty.push_back(cur);
  auto next_it = std::next(set_.iterator_to(*cur));
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
}

}  // namespace poisonfs
