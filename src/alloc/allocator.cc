// The extent allocator (see allocator.h).
#include "alloc/allocator.h"

#include <algorithm>

namespace poisonfs {

namespace bi = boost::intrusive;

struct Allocator::Node {
  bi::set_member_hook<> by_start_hook;
  bi::set_member_hook<> by_size_hook;
  uint64_t start;
  uint64_t count;
};

namespace {
struct StartKey {
  uint64_t operator()(const auto& n) const { return n.start; }
};
}  // namespace

struct Allocator::Impl {
  struct ByStart {
    bool operator()(const Node& a, const Node& b) const { return a.start < b.start; }
  };
  struct BySize {
    bool operator()(const Node& a, const Node& b) const {
      return a.count != b.count ? a.count < b.count : a.start < b.start;
    }
  };
  using StartSet = bi::set<Node, bi::member_hook<Node, bi::set_member_hook<>, &Node::by_start_hook>,
                           bi::compare<ByStart>>;
  using SizeSet = bi::set<Node, bi::member_hook<Node, bi::set_member_hook<>, &Node::by_size_hook>,
                          bi::compare<BySize>>;
  StartSet by_start;
  SizeSet by_size;

  // The free extent containing block b, or end().
  StartSet::iterator containing(uint64_t b) {
    Node key;
    key.start = b;
    auto it = by_start.upper_bound(key);
    if (it == by_start.begin()) return by_start.end();
    --it;
    return b < it->start + it->count ? it : by_start.end();
  }
};

Allocator::~Allocator() {
  clear();
  delete impl_;
}

void Allocator::clear() {
  if (!impl_) return;
  impl_->by_size.clear();
  impl_->by_start.clear_and_dispose([](Node* n) { delete n; });
  free_blocks_ = 0;
}

std::vector<BlockRange> Allocator::rebuild(uint64_t lo, uint64_t hi, std::vector<BlockRange> used) {
  if (!impl_) impl_ = new Impl;
  clear();
  pending_.clear();
  pending_blocks_ = 0;
  lo_ = lo;
  hi_ = hi;
  std::vector<BlockRange> bad;
  std::sort(used.begin(), used.end(),
            [](const BlockRange& a, const BlockRange& b) { return a.start < b.start; });
  uint64_t cursor = lo;  // everything below is accounted for
  for (const BlockRange& r : used) {
    if (r.count == 0) continue;
    if (r.start < lo || r.end() > hi || r.end() < r.start) {
      bad.push_back(r);
      continue;
    }
    if (r.start < cursor) bad.push_back(r);  // overlaps an earlier owner
    if (r.start > cursor) insert_free(cursor, r.start - cursor);
    cursor = std::max(cursor, r.end());
  }
  if (cursor < hi) insert_free(cursor, hi - cursor);
  return bad;
}

void Allocator::insert_free(uint64_t start, uint64_t count) {
  auto* n = new Node{{}, {}, start, count};
  impl_->by_start.insert(*n);
  impl_->by_size.insert(*n);
  free_blocks_ += count;
}

// Removes [start, start+count) from free extent n, keeping what is left.
void Allocator::take(Node* n, uint64_t start, uint64_t count) {
  uint64_t n_end = n->start + n->count;
  impl_->by_size.erase(impl_->by_size.iterator_to(*n));
  impl_->by_start.erase(impl_->by_start.iterator_to(*n));
  free_blocks_ -= n->count;
  uint64_t head = start - n->start, tail_start = start + count;
  if (head > 0) {
    n->count = head;
    impl_->by_start.insert(*n);
    impl_->by_size.insert(*n);
    free_blocks_ += head;
  } else {
    delete n;
  }
  if (tail_start < n_end) insert_free(tail_start, n_end - tail_start);
}

BlockRange Allocator::allocate(uint64_t want, uint64_t hint) {
  if (!impl_ || want == 0 || impl_->by_start.empty()) return {};
  if (hint >= lo_ && hint < hi_) {
    auto it = impl_->containing(hint);
    if (it != impl_->by_start.end()) {
      uint64_t count = std::min(want, it->start + it->count - hint);
      take(&*it, hint, count);
      return {hint, count};
    }
  }
  Node key;
  key.count = want;
  key.start = 0;
  auto it = impl_->by_size.lower_bound(key);
  if (it == impl_->by_size.end()) --it;  // nothing big enough: the largest
  Node* n = &*it;
  BlockRange r{n->start, std::min(want, n->count)};
  take(n, r.start, r.count);
  return r;
}

void Allocator::release(BlockRange r) {
  if (r.count == 0) return;
  // Merge with free neighbours so the free space does not fragment.
  auto& set = impl_->by_start;
  Node key;
  key.start = r.start;
  auto next = set.lower_bound(key);
  if (next != set.end() && next->start == r.end()) {
    r.count += next->count;
    Node* n = &*next;
    free_blocks_ -= n->count;
    impl_->by_size.erase(impl_->by_size.iterator_to(*n));
    set.erase(next);
    delete n;
    next = set.lower_bound(key);
  }
  if (next != set.begin()) {
    auto prev = std::prev(next);
    if (prev->start + prev->count == r.start) {
      Node* n = &*prev;
      impl_->by_size.erase(impl_->by_size.iterator_to(*n));
      n->count += r.count;
      impl_->by_size.insert(*n);
      free_blocks_ += r.count;
      return;
    }
  }
  insert_free(r.start, r.count);
}

void Allocator::defer_free(BlockRange r) {
  if (r.count == 0) return;
  pending_.push_back(r);
  pending_blocks_ += r.count;
}

void Allocator::release_pending() {
  std::vector<BlockRange> ranges;
  ranges.swap(pending_);
  pending_blocks_ = 0;
  for (const BlockRange& r : ranges) release(r);
}

std::vector<BlockRange> Allocator::withdraw(BlockRange r) {
  std::vector<BlockRange> taken;
  for (uint64_t b = r.start; impl_ && b < r.end();) {
    auto it = impl_->containing(b);
    if (it == impl_->by_start.end()) {
      ++b;
      continue;
    }
    uint64_t count = std::min(r.end(), it->start + it->count) - b;
    take(&*it, b, count);
    taken.push_back({b, count});
    b += count;
  }
  // Pending ranges: cut r out of them.
  std::vector<BlockRange> kept;
  for (const BlockRange& p : pending_) {
    uint64_t lo = std::max(p.start, r.start), hi = std::min(p.end(), r.end());
    if (lo >= hi) {
      kept.push_back(p);
      continue;
    }
    if (p.start < lo) kept.push_back({p.start, lo - p.start});
    if (hi < p.end()) kept.push_back({hi, p.end() - hi});
    taken.push_back({lo, hi - lo});
    pending_blocks_ -= hi - lo;
  }
  pending_.swap(kept);
  return taken;
}

size_t Allocator::free_extents() const { return impl_ ? impl_->by_start.size() : 0; }

bool Allocator::any_free(uint64_t start, uint64_t count) const {
  if (!impl_ || count == 0) return false;
  if (is_free(start)) return true;
  Node key;
  key.start = start;
  auto it = impl_->by_start.upper_bound(key);
  return it != impl_->by_start.end() && it->start < start + count;
}

bool Allocator::is_free(uint64_t block) const {
  return impl_ && impl_->containing(block) != impl_->by_start.end();
}

}  // namespace poisonfs
