// Media failure: notify_failure reaches every owner of the damaged bytes
// through the reverse map, as xfs_dax_notify_failure does, and better where
// DESIGN.md says so: every sharing file is told (in memory or not), metadata
// is rewritten from the in-memory copy instead of shutting down, and
// poisoned free space is quarantined. Also the poison-checked read path and
// the event log.
#include <algorithm>
#include <cstring>

#include "fs/fs_impl.h"
#include "util/strfmt.h"

namespace poisonfs {
namespace {

constexpr size_t kMaxEvents = 4096;
// The history is also bounded by the owners it names (a failure of a block
// shared by 10,000 files names them all): about 100 bytes each.
constexpr size_t kMaxEventOwners = 256 * 1024;

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

std::string json_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += strfmt("\\u{:04x}", static_cast<unsigned>(c));
        else out += c;
    }
  }
  return out;
}

}  // namespace

const char* event_kind_name(EventKind kind) {
  switch (kind) {
    case EventKind::kFailure: return "failure";
    case EventKind::kRepair: return "repair";
    case EventKind::kQuarantine: return "quarantine";
    case EventKind::kShutdown: return "shutdown";
    case EventKind::kRecovery: return "recovery";
    case EventKind::kHeal: return "heal";
    case EventKind::kCorruption: return "corruption";
    case EventKind::kError: return "error";
    case EventKind::kIncomplete: return "incomplete";
  }
  return "unknown";
}

std::string event_to_json(const Event& e) {
  std::string s = strfmt(R"({{"seq":{},"time":{}.{:09},"kind":"{}","device_offset":{},"length":{},"action":"{}","owners":[)",
                         e.seq, e.time_ns / 1'000'000'000, e.time_ns % 1'000'000'000, event_kind_name(e.kind),
                         e.device_offset, e.length, json_escape(e.action));
  for (size_t i = 0; i < e.owners.size(); ++i) {
    const EventOwner& o = e.owners[i];
    s += strfmt(R"({}{{"what":"{}","inode":{},"path":"{}","file_offset":{},"length":{}}})", i ? "," : "", o.what,
                o.ino, json_escape(o.path), o.file_offset, o.length);
  }
  return s + "]}";
}

void FsImpl::record_event(Event e) {
  {
    std::lock_guard lock(events_mutex_);
    push_event_locked(std::move(e));
  }
  // Every change of the poison list comes with an event, so a failed save
  // of the record is reported here at the latest.
  report_poison_persist_error();
}

void FsImpl::record_event(EventKind kind, uint64_t offset, uint64_t length, std::string action,
                          std::vector<EventOwner> owners) {
  Event e;
  e.kind = kind;
  e.device_offset = offset;
  e.length = length;
  e.action = std::move(action);
  e.owners = std::move(owners);
  record_event(std::move(e));
}

// The device's error record (IMAGE.badblocks) could not be saved: the next
// mount would see an old list. Never silent: one event per failed save (the
// media printed it on stderr already); inject fails with it too.
void FsImpl::report_poison_persist_error() {
  const uint64_t failures = poison().persist_failures();
  uint64_t reported = persist_failures_reported_.load();
  if (failures == reported || !persist_failures_reported_.compare_exchange_strong(reported, failures)) return;
  Event e;
  e.kind = EventKind::kError;
  e.action = poison().last_persist_error();
  std::lock_guard lock(events_mutex_);
  push_event_locked(std::move(e));
}

void FsImpl::push_event_locked(Event e) {
  e.seq = next_event_seq_++;
  e.time_ns = now_ns();
  event_owners_ += e.owners.size();
  events_.push_back(std::move(e));
  while (events_.size() > kMaxEvents || (event_owners_ > kMaxEventOwners && events_.size() > 1)) {
    event_owners_ -= events_.front().owners.size();
    events_.pop_front();
  }
}

std::vector<Event> FsImpl::events(uint64_t after_seq, size_t max, uint64_t* dropped) {
  std::lock_guard lock(events_mutex_);
  if (dropped) *dropped = events_.empty() ? next_event_seq_ - 1 : events_.front().seq - 1;
  std::vector<Event> out;
  for (const Event& e : events_) {
    if (e.seq <= after_seq) continue;
    if (out.size() == max) break;
    out.push_back(e);
  }
  return out;
}

void FsImpl::shutdown(const std::string& reason) {
  if (shutdown_.exchange(true)) return;
  shutdown_reason_ = reason;
  Event e;
  e.kind = EventKind::kShutdown;
  e.action = "filesystem shut down: " + reason;
  record_event(std::move(e));
}

Health FsImpl::health() {
  Health h;
  h.shutdown = shutdown_.load();
  h.reason = h.shutdown ? shutdown_reason_ : "";
  h.known_poison_bytes = poison().known_bytes();
  h.latent_poison_bytes = poison().latent_bytes();
  {
    std::shared_lock lock(mutex_);
    for (const BlockRange& r : quarantine_) h.quarantined_bytes += r.count * kBlockSize;
  }
  std::lock_guard lock(events_mutex_);
  h.events = next_event_seq_ - 1;
  return h;
}

void FsImpl::set_invalidate_hook(std::function<void(Ino, uint64_t, uint64_t)> hook) {
  std::unique_lock lock(mutex_);
  invalidate_ = std::move(hook);
}

void FsImpl::run_invalidations(const std::vector<Invalidation>& inval) {
  std::function<void(Ino, uint64_t, uint64_t)> hook;
  {
    std::shared_lock lock(mutex_);
    hook = invalidate_;
  }
  if (!hook) return;
  for (const Invalidation& i : inval) hook(i.ino, i.offset, i.length);
}

std::string FsImpl::first_path(Ino ino) {
  Inode* inode = ino && ino <= inodes_.size() ? inodes_[ino - 1].get() : nullptr;
  if (!inode || inode->links.empty()) return "";
  return path_of(inode->links.front());
}

// The content is durable before the poison is forgotten: a crash in between
// leaves the block poisoned (repaired again at mount), never zeroed and
// believed clean, as clearing first would.
void FsImpl::rewrite_poisoned_block(uint64_t block, const std::byte* content) {
  media_->write(block_offset(block), content, kBlockSize);
  media_->persist(block_offset(block), kBlockSize);
  poison().clear(block_offset(block), kBlockSize);
}

// Rewrites a record block from the in-memory records that live in it.
void FsImpl::repair_chain_block(Inode& inode, Chain& chain, uint64_t block) {
  std::vector<std::byte> buf(kBlockSize);
  auto pos = std::find(chain.blocks.begin(), chain.blocks.end(), block);
  uint64_t next = (pos != chain.blocks.end() && pos + 1 != chain.blocks.end()) ? *(pos + 1) : 0;
  encode_chain_header(ChainHeader{chain.kind, inode.rec.ino, next, block}, buf.data());
  auto slot_at = [&](SlotRef s, size_t size) { return buf.data() + kChainHeaderSize + size_t{s.index} * size; };
  if (chain.kind == ChainKind::kExtents) {
    for (const Extent& e : inode.extents)
      if (e.slot.block == block)
        encode_extent(ExtentRec{e.flags | kSlotValid, e.file_block, e.phys_block, e.nblocks},
                      slot_at(e.slot, kExtentSlotSize));
  } else if (chain.kind == ChainKind::kDirents) {
    for (const auto& [name, d] : inode.entries)
      if (d.slot.block == block) encode_dirent(DirentRec{d.ino, d.type, name}, slot_at(d.slot, kDirentSlotSize));
  } else {
    for (const auto& [name, x] : inode.xattrs)
      if (x.slot.block == block) encode_xattr(XattrRec{name, x.value}, slot_at(x.slot, kXattrSlotSize));
  }
  rewrite_poisoned_block(block, buf.data());
}

void FsImpl::repair_inode_block(uint64_t block) {
  std::vector<std::byte> buf(kBlockSize);
  uint64_t first = (block - sb_.inode_start) * kInodesPerBlock + 1;
  for (uint64_t i = 0; i < kInodesPerBlock; ++i)
    if (Inode* inode = inodes_[first + i - 1].get()) encode_inode(inode->rec, buf.data() + i * kInodeSize);
  rewrite_poisoned_block(block, buf.data());
}

// The journal only matters until the next checkpoint: take one (every
// committed change is then in place), clear the poison, restart the log.
void FsImpl::repair_journal() {
  journal_.checkpoint();
  media_->clear_poison(block_offset(sb_.journal_start), sb_.journal_blocks * kBlockSize);
  journal_.checkpoint();  // rewrites both header slots over the cleared bytes
}

void FsImpl::quarantine(BlockRange r) {
  for (const BlockRange& t : alloc_.withdraw(r)) quarantine_.push_back(t);
}

Status FsImpl::_notify_failure(uint64_t offset, uint64_t length, int flags, std::vector<Invalidation>& inval) {
  const uint64_t dev_end = block_offset(sb_.total_blocks);
  if (length == 0 || offset >= dev_end || length > dev_end - offset)
    return fail(std::errc::invalid_argument, "failure range lies outside the device");
  const uint64_t end = offset + length;
  Event failure;
  failure.kind = EventKind::kFailure;
  failure.device_offset = offset;
  failure.length = length;
  failure.action = (flags & kMfActionRequired) ? "poison consumed by a read" : "poison reported";
  std::vector<Event> follow_ups;
  auto clip = [&](uint64_t from, uint64_t to) { return std::pair{std::max(from, offset), std::min(to, end)}; };
  auto metadata_event = [&](const char* what, Ino ino, const std::string& action) {
    failure.owners.push_back(EventOwner{what, ino, ino ? first_path(ino) : "", 0, 0});
    Event repair;
    repair.kind = EventKind::kRepair;
    repair.device_offset = offset;
    repair.length = length;
    repair.action = action;
    repair.owners.push_back(EventOwner{what, ino, ino ? first_path(ino) : "", 0, 0});
    follow_ups.push_back(std::move(repair));
  };

  if (shutdown_) {
    // Nothing is repaired once shut down: the in-memory copies are not
    // trusted, and the image is left as it is for fsck.
    failure.action += "; filesystem is shut down, left for fsck";
    record_event(std::move(failure));
    return {};
  }
  const uint64_t first_block = offset / kBlockSize, last_block = (end - 1) / kBlockSize;
  // Fixed regions.
  if (first_block == 0 || last_block >= sb_.copy_block()) {
    for (uint64_t b : {uint64_t{0}, sb_.copy_block()}) {
      if (b < first_block || b > last_block) continue;
      std::vector<std::byte> buf(kBlockSize);  // the rest of the block is unused: zeros
      encode_superblock(sb_, buf.data());
      rewrite_poisoned_block(b, buf.data());
      metadata_event("superblock", 0, b == 0 ? "primary superblock rewritten from memory" : "superblock copy rewritten from memory");
    }
  }
  if (first_block < sb_.inode_start && last_block >= sb_.journal_start) {
    repair_journal();
    metadata_event("journal", 0, "journal checkpointed and restarted");
  }
  for (uint64_t b = std::max(first_block, sb_.inode_start); b <= last_block && b < sb_.csum_start; ++b) {
    repair_inode_block(b);
    metadata_event("inodes", 0, strfmt("inode table block {} rewritten from memory", b));
  }
  for (uint64_t b = std::max(first_block, sb_.csum_start); b <= last_block && b < sb_.data_start; ++b) {
    repair_checksum_block(b);
    metadata_event("checksums", 0,
                   b == sb_.csum_start ? std::string("checksum intent bitmap rewritten from memory")
                                       : strfmt("checksum table block {} recomputed from the data", b));
  }
  // The data area: every owner through the reverse map, free space between.
  uint64_t lo = std::max(first_block, sb_.data_start), hi = std::min(last_block + 1, sb_.data_end);
  if (lo < hi) {
    struct ChainHit {
      Ino ino;
      OwnerKind kind;
      uint64_t block;
    };
    std::vector<ChainHit> chain_hits;
    uint64_t cursor = lo;
    auto free_gap = [&](uint64_t from, uint64_t to) {
      if (from >= to) return;
      quarantine({from, to - from});
      auto [s, e] = clip(block_offset(from), block_offset(to));
      failure.owners.push_back(EventOwner{"free", 0, "", 0, 0});
      Event q;
      q.kind = EventKind::kQuarantine;
      q.device_offset = s;
      q.length = e - s;
      q.action = "poisoned free space quarantined until cleared";
      follow_ups.push_back(std::move(q));
    };
    rmap_.query(lo, hi - lo, [&](const RmapHit& hit) {
      free_gap(cursor, hit.phys);
      cursor = std::max(cursor, hit.phys + hit.count);
      if (hit.owner.kind != OwnerKind::kData) {
        for (uint64_t b = hit.phys; b < hit.phys + hit.count; ++b) chain_hits.push_back({hit.owner.ino, hit.owner.kind, b});
        return true;
      }
      auto [s, e] = clip(block_offset(hit.phys), block_offset(hit.phys + hit.count));
      uint64_t file_off = block_offset(hit.owner.offset) + (s - block_offset(hit.phys));
      failure.owners.push_back(EventOwner{"data", hit.owner.ino, first_path(hit.owner.ino), file_off, e - s});
      // The kernel drops whole pages: invalidate the pages around the range.
      uint64_t page_lo = file_off / kBlockSize * kBlockSize;
      inval.push_back({hit.owner.ino, page_lo, div_up(file_off + (e - s), kBlockSize) * kBlockSize - page_lo});
      return true;
    });
    free_gap(cursor, hi);
    for (const ChainHit& c : chain_hits) {
      Inode& inode = *inodes_[c.ino - 1];
      Chain& chain = c.kind == OwnerKind::kXattrs ? inode.xattr_chain : inode.chain;
      repair_chain_block(inode, chain, c.block);
      const char* what = c.kind == OwnerKind::kExtents ? "extents" : c.kind == OwnerKind::kDirents ? "directory" : "xattr";
      metadata_event(what, c.ino, strfmt("{} block {} of inode {} rewritten from memory", what, c.block, c.ino));
    }
  }
  record_event(std::move(failure));
  for (Event& e : follow_ups) record_event(std::move(e));
  return {};
}

Status FsImpl::notify_failure(uint64_t offset, uint64_t length, int flags) {
  std::vector<Invalidation> inval;
  Status st;
  {
    std::unique_lock lock(mutex_);
    st = _notify_failure(offset, length, flags, inval);
  }
  run_invalidations(inval);
  return st;
}

Result<PoisonRange> FsImpl::inject_poison(uint64_t offset, uint64_t length, bool latent) {
  if (shutdown_) return fail(std::errc::io_error, "filesystem is shut down");
  const uint64_t dev_end = block_offset(sb_.total_blocks);
  if (length == 0) return fail(std::errc::invalid_argument, "poison length must not be zero");
  if (offset >= dev_end || length > dev_end - offset)
    return fail(std::errc::invalid_argument,
                strfmt("range {}+{} lies outside the device ({} bytes)", offset, length, dev_end));
  const uint64_t save_failures = poison().persist_failures();
  Result<PoisonRange> r;
  {
    // Exclusive: nobody may read the range while its data is destroyed.
    std::unique_lock lock(mutex_);
    r = media_->inject_poison(offset, length, latent);
  }
  if (!r) return r;
  if (!latent)
    if (auto st = notify_failure(r->offset, r->length, 0); !st) return std::unexpected(st.error());
  // The poison is in place (the data is gone) but the record of it did not
  // reach IMAGE.badblocks: the caller must know.
  report_poison_persist_error();
  if (poison().persist_failures() != save_failures)
    return fail(std::errc::io_error, "poison injected, but " + poison().last_persist_error());
  return r;
}

std::vector<PoisonRange> FsImpl::badblocks() { return poison().all(); }

Result<std::vector<FilePoison>> FsImpl::file_poison(Ino ino) {
  std::shared_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  return _file_poison(**got);
}

std::string file_poison_json(const std::vector<FilePoison>& ranges) {
  std::string s = "[";
  for (size_t i = 0; i < ranges.size(); ++i)
    s += strfmt(R"({}{{"file_offset":{},"length":{}}})", i ? "," : "", ranges[i].file_offset, ranges[i].length);
  return s + "]";
}

// Computed from the device's poison list and the file's extents, so every
// sharer sees the poison under its blocks, in memory or not.
std::vector<FilePoison> FsImpl::_file_poison(Inode& inode) {
  std::vector<FilePoison> out;
  if (poison().empty()) return out;
  for (const Extent& e : inode.extents) {
    for (const PoisonRange& p : poison().overlapping(block_offset(e.phys_block), e.nblocks * kBlockSize)) {
      if (p.latent) continue;
      uint64_t file_off = block_offset(e.file_block) + (p.offset - block_offset(e.phys_block));
      if (!out.empty() && out.back().file_offset + out.back().length == file_off) out.back().length += p.length;
      else out.push_back({file_off, p.length});
    }
  }
  return out;
}

std::optional<std::pair<PoisonRange, size_t>> FsImpl::first_poisoned(std::span<const ReadSegment> segs) {
  size_t pos = 0;
  for (const ReadSegment& s : segs) {
    if (s.data) {
      uint64_t dev = static_cast<uint64_t>(s.data - media_->base());
      if (auto p = poison().first(dev, s.length)) return std::pair{*p, pos + (p->offset - dev)};
    }
    pos += s.length;
  }
  return std::nullopt;
}

// The hot path pays one atomic load when the device has no poison.
Result<size_t> FsImpl::_read(Ino ino, uint64_t off, size_t len,
                             const std::function<void(std::span<const ReadSegment>)>& sink, bool short_at_poison) {
  std::optional<PoisonRange> consumed;  // latent poison this read found
  Result<size_t> result;
  {
    std::shared_lock lock(mutex_);
    auto inode = get(ino);
    if (!inode) return std::unexpected(inode.error());
    if ((*inode)->is_dir()) return fail(std::errc::is_a_directory);
    result = _read_inode(**inode, off, len, sink, short_at_poison, consumed);
  }
  notify_read_latent(consumed);
  return result;
}

Result<size_t> FsImpl::_read_inode(Inode& inode, uint64_t off, size_t len,
                                   const std::function<void(std::span<const ReadSegment>)>& sink,
                                   bool short_at_poison, std::optional<PoisonRange>& consumed) {
  std::vector<ReadSegment> segs;
  auto result = _read_segments(inode, off, len, segs);
  if (!result) return result;
#ifndef POISONFS_BENCH_NO_POISON_CHECK  // defined only by bench.sh's baseline build of core_bench (issue 4)
  auto poisoned = poison().empty() ? std::nullopt : first_poisoned(segs);
#else
  std::optional<std::pair<PoisonRange, size_t>> poisoned;
#endif
  if (!poisoned) {
    if (verify_checksums_)
      if (auto st = verify_segments(segs); !st) return std::unexpected(st.error());
    sink(segs);
    return result;
  }
  if (poisoned->first.latent) consumed = poisoned->first;
  if (!short_at_poison || poisoned->second == 0) return fail(std::errc::io_error);
  // Every clean byte up to the poison.
  size_t keep = poisoned->second;
  std::vector<ReadSegment> clean;
  for (const ReadSegment& s : segs) {
    if (keep == 0) break;
    clean.push_back({s.data, std::min(s.length, keep)});
    keep -= clean.back().length;
  }
  if (verify_checksums_)
    if (auto st = verify_segments(clean); !st) return std::unexpected(st.error());
  sink(clean);
  return poisoned->second;
}

void FsImpl::notify_read_latent(const std::optional<PoisonRange>& consumed) {
  if (!consumed) return;
  // Like MF_ACTION_REQUIRED: the read found the DIMM's record.
  for (const PoisonRange& r : poison().make_known(consumed->offset, consumed->length))
    (void)notify_failure(r.offset, r.length, kMfActionRequired);
}

void FsImpl::consume_latent(uint64_t dev_off, uint64_t len) {
  if (poison().empty()) return;
  // make_known reports each range once, even to racing callers.
  std::vector<PoisonRange> found = poison().make_known(dev_off, len);
  if (found.empty()) return;
  std::lock_guard lock(consumed_mutex_);
  consumed_latent_.insert(consumed_latent_.end(), found.begin(), found.end());
  has_consumed_latent_.store(true, std::memory_order_release);
}

// Every write runs this on its way out: one atomic load when nothing was found.
void FsImpl::notify_consumed_latent() {
  if (!has_consumed_latent_.load(std::memory_order_acquire)) return;
  std::vector<PoisonRange> found;
  {
    std::lock_guard lock(consumed_mutex_);
    found.swap(consumed_latent_);
    has_consumed_latent_.store(false, std::memory_order_release);
  }
  // Like MF_ACTION_REQUIRED: an access found the DIMM's record.
  for (const PoisonRange& r : found) (void)notify_failure(r.offset, r.length, kMfActionRequired);
}

Result<size_t> FsImpl::read(Ino ino, uint64_t off, size_t len,
                            const std::function<void(std::span<const ReadSegment>)>& sink) {
  return _read(ino, off, len, sink, false);
}

Result<size_t> FsImpl::read_direct(Ino ino, uint64_t off, size_t len,
                                   const std::function<void(std::span<const ReadSegment>)>& sink) {
  return _read(ino, off, len, sink, true);
}

// At mount, before the first request: every known range of the device's
// poison list goes through notify_failure (latent ones stay unknown).
Status FsImpl::replay_poison_list() {
  std::vector<Invalidation> unused;  // nothing is cached yet
  // Latent poison in the checksum table is found here (mount reads entries
  // on demand, never the whole table): known now, recomputed from the data
  // below. The other metadata was read by load(), which found its poison.
  if (sb_.csum_start < sb_.data_start)
    (void)poison().make_known(block_offset(sb_.csum_start), block_offset(sb_.data_start - sb_.csum_start));
  for (const PoisonRange& r : poison().all()) {
    if (r.latent) continue;
    uint64_t dev_end = block_offset(sb_.total_blocks);
    if (r.offset >= dev_end) continue;
    if (auto st = _notify_failure(r.offset, std::min(r.length, dev_end - r.offset), 0, unused); !st) return st;
  }
  return {};
}

}  // namespace poisonfs
