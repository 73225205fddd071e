// The reverse map (see rmap.h).
//
// Memory: a segment is 56 bytes (tree hook, start, length, owner count and
// one owner inline); a shared segment keeps its owners in a heap array of
// power-of-two capacity, 16 bytes per owner.
#include "rmap/rmap.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>

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

// A record's range and owner, as build() sweeps them.
struct Span {
  uint64_t start, end;
  PackedOwner owner;  // as at start
};

// Sorts by start. Mount's records come in long ascending runs (a file's
// extents in file order are mostly in physical order too, and so are its
// chain blocks): runs are found and merged pairwise, O(n log runs) with
// sequential memory access, several times faster than std::sort on a
// million records. Many short runs (a badly fragmented device) go to
// std::sort.
void sort_by_start(std::vector<Span>& spans) {
  constexpr size_t kMaxRuns = 1024;
  auto by_start = [](const Span& a, const Span& b) { return a.start < b.start; };
  std::vector<size_t> bounds{0};  // where each run begins, then the end
  for (size_t i = 1; i < spans.size() && bounds.size() <= kMaxRuns; ++i)
    if (spans[i].start < spans[i - 1].start) bounds.push_back(i);
  if (bounds.size() > kMaxRuns) {
    std::sort(spans.begin(), spans.end(), by_start);
    return;
  }
  bounds.push_back(spans.size());
  std::vector<Span> other;
  while (bounds.size() > 2) {  // more than one run
    other.resize(spans.size());
    std::vector<size_t> merged{0};
    for (size_t r = 0; r + 1 < bounds.size(); r += 2) {
      const size_t lo = bounds[r], mid = bounds[r + 1], hi = r + 2 < bounds.size() ? bounds[r + 2] : mid;
      std::merge(spans.begin() + lo, spans.begin() + mid, spans.begin() + mid, spans.begin() + hi,
                 other.begin() + lo, by_start);
      merged.push_back(hi);
    }
    spans.swap(other);
    bounds.swap(merged);
  }
}

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

  // Sets the owners of an empty segment. REQUIRES: n == 0, list sorted.
  void assign(const PackedOwner* list, uint32_t count) {
    if (count > 1) many = new PackedOwner[capacity(count)];
    n = count;
    std::memcpy(owners(), list, sizeof(PackedOwner) * count);
  }

  // True if `next` starts where this ends and each of its owners continues
  // one of ours, so that the two can be one segment.
  bool continued_by(uint64_t next_start, uint64_t next_count, const PackedOwner* next_owners,
                    uint32_t next_n) const {
    if (end() != next_start || n != next_n || uint64_t{count} + next_count > kMaxSegment) return false;
    const PackedOwner* list = owners();
    for (uint32_t i = 0; i < n; ++i)
      if (list[i].advanced(count) != next_owners[i]) return false;
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
  // Where the last edit was (end(): nowhere). An edit next to it, as each
  // of a clone's blocks taken in physical order is, finds its place from
  // there instead of searching the tree. Only the editing functions use it
  // (the filesystem holds its lock exclusively for them), never queries.
  Set::iterator finger = set.end();

  // Appends [start, start+count) with `owners` (sorted) after every
  // segment, or extends `last` when it continues it; returns the last
  // segment and adds the owners of a new one to *records.
  Segment* append(Segment* last, uint64_t start, uint64_t count, const PackedOwner* owners, uint32_t n,
                  uint64_t* records) {
    if (last && last->continued_by(start, count, owners, n)) {
      last->count += static_cast<uint32_t>(count);
      return last;
    }
    auto* s = new Segment;
    s->start = start;
    s->count = static_cast<uint32_t>(count);
    s->assign(owners, n);
    set.push_back(*s);  // sorted input: no search, amortized constant rebalancing
    *records += n;
    return s;
  }

  // The segment containing b, else the first after it, else end().
  Set::iterator at_or_after(uint64_t b) {
    auto it = set.upper_bound(b, ByStart{});
    if (it != set.begin()) {
      auto prev = std::prev(it);
      if (b < prev->end()) return prev;
    }
    return it;
  }

  // at_or_after for an edit: tries the finger and its neighbours first,
  // then moves the finger to the answer.
  Set::iterator locate(uint64_t b) {
    auto near = near_finger(b);
    Set::iterator it = near ? *near : at_or_after(b);
    if (it != set.end()) finger = it;
    return it;
  }

  // at_or_after(b) if the finger or a neighbour of it decides it.
  std::optional<Set::iterator> near_finger(uint64_t b) {
    if (finger == set.end()) return std::nullopt;
    if (b < finger->start) {
      if (finger == set.begin()) return finger;
      auto prev = std::prev(finger);
      if (b < prev->start) return std::nullopt;
      return b < prev->end() ? prev : finger;
    }
    if (b < finger->end()) return finger;
    if (is_last(finger)) return set.end();  // appending, as a growing file does
    auto next = std::next(finger);
    if (next == set.end() || b < next->end()) return next;
    return std::nullopt;
  }

  // Whether it is the last segment, asked of the tree's header, which keeps
  // the rightmost node: std::next of the last node would climb to the root.
  bool is_last(Set::iterator it) {
    return Set::node_traits::get_right(set.end().pointed_node()) == it.pointed_node();
  }

  void erase(Set::iterator it) {
    if (it == finger) finger = set.end();
    set.erase(it);
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
  impl_->finger = impl_->set.end();
  records_ = 0;
}

size_t Rmap::segments() const { return impl_->set.size(); }

Rmap::Segment* Rmap::split(uint64_t at) {
  auto it = impl_->locate(at);
  if (it == impl_->set.end()) return nullptr;
  if (it->start >= at) return it->start == at ? &*it : nullptr;
  Segment* left = &*it;
  auto* right = new Segment;
  right->start = at;
  right->count = static_cast<uint32_t>(left->end() - at);
  left->copy_owners_to(*right, at - left->start);
  left->count = static_cast<uint32_t>(at - left->start);
  records_ += right->n;
  impl_->finger = impl_->set.insert_before(std::next(it), *right);
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
  if (!s->continued_by(next->start, next->count, next->owners(), next->n)) return;
  s->count += next->count;
  records_ -= next->n;
  impl_->erase(next_it);
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
  auto it = impl_->locate(start);
  Segment* first = nullptr;
  while (cur < end) {
    Segment* s;
    if (it != impl_->set.end() && it->start == cur) {
      s = &*it++;
    } else {  // a gap up to the next segment
      uint64_t gap_end = it == impl_->set.end() ? end : std::min(end, it->start);
      s = new Segment;
      s->start = cur;
      s->count = static_cast<uint32_t>(gap_end - cur);
      impl_->set.insert_before(it, *s);
    }
    s->insert(packed.advanced(cur - start));
    ++records_;
    if (!first) first = s;
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
  impl_->finger = impl_->set.iterator_to(*s);
}

// A sweep over the records sorted by start: between two consecutive record
// edges the owners are fixed, so each such piece is one segment (or the
// continuation of the previous one, as try_merge would find), appended at
// the end of the tree. O(n log runs) for the sort and O(output) for the
// sweep, against n tree searches, splits and merges for n calls to add().
void Rmap::build(std::vector<RmapRecord> records) {
  clear();
  std::vector<Span> spans;
  spans.reserve(records.size());
  for (const RmapRecord& r : records)
    if (r.count > 0) spans.push_back({r.start, r.start + r.count, PackedOwner::pack(r.owner)});
  records = {};  // done with it: its memory goes back before the segments are made
  sort_by_start(spans);
  std::vector<Span> active;  // the spans covering the sweep position
  std::vector<PackedOwner> owners;
  Segment* last = nullptr;
  uint64_t at = 0;
  for (size_t i = 0; i < spans.size() || !active.empty();) {
    if (active.empty()) {
      const Span& first = spans[i];
      if ((i + 1 == spans.size() || spans[i + 1].start >= first.end) && first.end - first.start <= kMaxSegment) {
        // The usual case, blocks owned by one record alone: no sweep state.
        last = impl_->append(last, first.start, first.end - first.start, &first.owner, 1, &records_);
        ++i;
        continue;
      }
      at = first.start;
    }
    for (; i < spans.size() && spans[i].start == at; ++i) active.push_back(spans[i]);
    uint64_t next = i < spans.size() ? spans[i].start : UINT64_MAX;
    for (const Span& s : active) next = std::min(next, s.end);
    next = std::min(next, at + kMaxSegment);  // segment lengths are 32-bit
    owners.clear();
    for (const Span& s : active) owners.push_back(s.owner.advanced(at - s.start));
    std::sort(owners.begin(), owners.end());
    last = impl_->append(last, at, next - at, owners.data(), static_cast<uint32_t>(owners.size()), &records_);
    at = next;
    std::erase_if(active, [&](const Span& s) { return s.end == at; });
  }
}

void Rmap::remove(uint64_t start, uint64_t count, const Owner& owner, std::vector<BlockRange>* unowned) {
  if (count == 0) return;
  const uint64_t end = start + count;
  const PackedOwner packed = PackedOwner::pack(owner);
  split(start);
  split(end);
  auto it = impl_->locate(start);
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
      impl_->erase(impl_->set.iterator_to(*s));
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
  if (prev_kept) {
    try_merge(prev_kept);
    impl_->finger = impl_->set.iterator_to(*prev_kept);
  }
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
