// The reverse map (see rmap.h).
//
// Memory: a segment is 56 bytes (tree hook, start, length, owner count and
// one owner inline); a shared segment keeps its owners in a heap array of
// power-of-two capacity, 16 bytes per owner.
#include "rmap/rmap.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace poisonfs {

namespace bi = boost::intrusive;

namespace {

// An owner packed in 16 bytes: kind in the top byte of the inode number.
struct PackedOwner {
  uint64_t ino_kind;
  uint64_t offset;

  static PackedOwner pack(const Owner& o) {
    return {o.ino | (uint64_t{static_cast<uint8_t>(o.kind)} << 56), o.offset};
  }
  Owner unpack() const {
    return Owner{ino_kind & ((uint64_t{1} << 56) - 1), offset, static_cast<OwnerKind>(ino_kind >> 56)};
  }
  bool is_data() const { return (ino_kind >> 56) == 0; }
  // The owner as seen `delta` blocks further on.
  PackedOwner advanced(uint64_t delta) const { return {ino_kind, is_data() ? offset + delta : offset}; }
  auto operator<=>(const PackedOwner&) const = default;
};

constexpr uint64_t kMaxSegment = uint64_t{1} << 31;

}  // namespace

struct Rmap::Segment : bi::set_base_hook<bi::optimize_size<true>> {
  uint64_t start = 0;
  uint32_t count = 0;
  uint32_t n = 0;  // owners
  union {
    PackedOwner one;
    PackedOwner* many;
  };

  Segment() : one{} {}
  ~Segment() {
    if (n > 1) delete[] many;
  }
  uint64_t end() const { return start + count; }
  PackedOwner* owners() { return n <= 1 ? &one : many; }
  const PackedOwner* owners() const { return n <= 1 ? &one : many; }
  static uint32_t capacity(uint32_t n) { return n <= 1 ? 1 : std::bit_ceil(n); }

  // Inserts o keeping the list sorted (duplicates allowed).
  void insert(PackedOwner o) {
    if (n == 0) {
      one = o;
      n = 1;
      return;
    }
    if (capacity(n + 1) != capacity(n)) {
      auto* grown = new PackedOwner[capacity(n + 1)];
      std::memcpy(grown, owners(), sizeof(PackedOwner) * n);
      if (n > 1) delete[] many;
      many = grown;
    }
    PackedOwner* list = many;
    uint32_t pos = static_cast<uint32_t>(std::upper_bound(list, list + n, o) - list);
    std::memmove(list + pos + 1, list + pos, sizeof(PackedOwner) * (n - pos));
    list[pos] = o;
    ++n;
  }

  // Removes one o; false if absent.
  bool erase(PackedOwner o) {
    PackedOwner* list = owners();
    PackedOwner* it = std::lower_bound(list, list + n, o);
    if (it == list + n || *it != o) return false;
    std::memmove(it, it + 1, sizeof(PackedOwner) * (list + n - it - 1));
    --n;
    if (n == 1) {
      PackedOwner last = list[0];
      delete[] many;
      one = last;
    } else if (n > 1 && capacity(n) != capacity(n + 1)) {
      auto* shrunk = new PackedOwner[capacity(n)];
      std::memcpy(shrunk, list, sizeof(PackedOwner) * n);
      delete[] many;
      many = shrunk;
    }
    return true;
  }

  // A copy of this segment's owners as seen `delta` blocks in.
  void copy_owners_to(Segment& dst, uint64_t delta) const {
    const PackedOwner* list = owners();
    for (uint32_t i = 0; i < n; ++i) dst.insert(list[i].advanced(delta));
  }
};

namespace {
struct ByStart {
  bool operator()(const auto& a, const auto& b) const { return key(a) < key(b); }
  static uint64_t key(uint64_t v) { return v; }
  template <class S>
  static uint64_t key(const S& s) { return s.start; }
};
}  // namespace

struct Rmap::Impl {
  using Set = bi::set<Segment, bi::compare<ByStart>>;
  Set set;

  // The segment containing b, else the first after it, else end().
  Set::iterator at_or_after(uint64_t b) {
    auto it = set.upper_bound(b, ByStart{});
    if (it != set.begin()) {
      auto prev = std::prev(it);
      if (b < prev->end()) return prev;
    }
    return it;
  }
};


Rmap::Rmap() : impl_(new Impl) {
  static_assert(sizeof(Segment) <= 56, "keep a segment within 56 bytes (64 with malloc overhead)");
}
Rmap::~Rmap() {
  clear();
  delete impl_;
}

void Rmap::clear() {
  impl_->set.clear_and_dispose([](Segment* s) { delete s; });
  records_ = 0;
}

size_t Rmap::segments() const { return impl_->set.size(); }

Rmap::Segment* Rmap::split(uint64_t at) {
  auto it = impl_->at_or_after(at);
  if (it == impl_->set.end()) return nullptr;
  if (it->start >= at) return it->start == at ? &*it : nullptr;
  Segment* left = &*it;
  auto* right = new Segment;
  right->start = at;
  right->count = static_cast<uint32_t>(left->end() - at);
  left->copy_owners_to(*right, at - left->start);
  left->count = static_cast<uint32_t>(at - left->start);
  records_ += right->n;
  impl_->set.insert_equal(impl_->set.iterator_to(*left), *right);
  return right;
}

// Merges s with its right neighbour when they are adjacent and every owner
// of the neighbour continues an owner of s.
void Rmap::try_merge(Segment* s) {
  if (!s) return;
  auto it = impl_->set.iterator_to(*s);
  auto next_it = std::next(it);
  if (next_it == impl_->set.end()) return;
  Segment* next = &*next_it;
  if (s->end() != next->start || s->n != next->n || uint64_t{s->count} + next->count > kMaxSegment) return;
  const PackedOwner *a = s->owners(), *b = next->owners();
  for (uint32_t i = 0; i < s->n; ++i)
    if (a[i].advanced(s->count) != b[i]) return;
  s->count += next->count;
  records_ -= next->n;
  impl_->set.erase(next_it);
  delete next;
}

void Rmap::add(uint64_t start, uint64_t count, const Owner& owner) {
  if (count > kMaxSegment) {  // segment lengths are 32-bit
    add(start, kMaxSegment, owner);
    Owner rest = owner;
    if (owner.kind == OwnerKind::kData) rest.offset += kMaxSegment;
    return add(start + kMaxSegment, count - kMaxSegment, rest);
  }
  if (count == 0) return;
  const uint64_t end = start + count;
  const PackedOwner packed = PackedOwner::pack(owner);
  split(start);
  split(end);
  uint64_t cur = start;
  auto it = impl_->at_or_after(start);
  Segment* first = nullptr;
  Segment* last = nullptr;
  while (cur < end) {
    Segment* s;
    if (it != impl_->set.end() && it->start == cur) {
      s = &*it++;
    } else {  // a gap up to the next segment
      uint64_t gap_end = it == impl_->set.end() ? end : std::min(end, it->start);
      s = new Segment;
      s->start = cur;
      s->count = static_cast<uint32_t>(gap_end - cur);
      impl_->set.insert_equal(it, *s);
    }
    s->insert(packed.advanced(cur - start));
    ++records_;
    if (!first) first = s;
    last = s;
    cur = s->end();
  }
  // Merge inside the range and across both of its edges.
  auto first_it = impl_->set.iterator_to(*first);
  Segment* s = first_it == impl_->set.begin() ? first : &*std::prev(first_it);
  for (;;) {
    size_t before = impl_->set.size();
    try_merge(s);
    if (impl_->set.size() != before) continue;  // try the new right neighbour too
    auto next = std::next(impl_->set.iterator_to(*s));
    if (next == impl_->set.end() || next->start >= end) break;
    s = &*next;
  }
  (void)last;
}

void Rmap::remove(uint64_t start, uint64_t count, const Owner& owner, std::vector<BlockRange>* unowned) {
  if (count == 0) return;
  const uint64_t end = start + count;
  const PackedOwner packed = PackedOwner::pack(owner);
  split(start);
  split(end);
  auto it = impl_->at_or_after(start);
  Segment* prev_kept = it == impl_->set.begin() ? nullptr : &*std::prev(it);
  while (it != impl_->set.end() && it->start < end) {
    Segment* s = &*it++;
    if (!s->erase(packed.advanced(s->start - start))) {
      prev_kept = s;
      continue;
    }
    --records_;
    if (s->n == 0) {
      if (unowned) {
        if (!unowned->empty() && unowned->back().end() == s->start) unowned->back().count += s->count;
        else unowned->push_back({s->start, s->count});
      }
      impl_->set.erase(impl_->set.iterator_to(*s));
      delete s;
      continue;
    }
    // Owners changed: it may now continue its left neighbour.
    if (prev_kept) {
      uint64_t before = impl_->set.size();
      try_merge(prev_kept);
      if (impl_->set.size() != before) continue;  // s merged into prev_kept
    }
    prev_kept = s;
  }
  if (prev_kept) try_merge(prev_kept);
}

void Rmap::query(uint64_t start, uint64_t count, const std::function<bool(const RmapHit&)>& fn) const {
  const uint64_t end = count > UINT64_MAX - start ? UINT64_MAX : start + count;
  for (auto it = impl_->at_or_after(start); it != impl_->set.end() && it->start < end; ++it) {
    uint64_t lo = std::max(start, it->start), hi = std::min(end, it->end());
    const PackedOwner* list = it->owners();
    for (uint32_t i = 0; i < it->n; ++i) {
      RmapHit hit{lo, hi - lo, list[i].advanced(lo - it->start).unpack(), it->n};
      if (!fn(hit)) return;
    }
  }
}

uint32_t Rmap::refcount(uint64_t block) const {
  auto it = impl_->at_or_after(block);
  if (it == impl_->set.end() || it->start > block) return 0;
  return it->n;
}

void Rmap::for_each_segment(const std::function<void(uint64_t, uint64_t, uint32_t)>& fn) const {
  for (const Segment& s : impl_->set) fn(s.start, s.count, s.n);
}

}  // namespace poisonfs
