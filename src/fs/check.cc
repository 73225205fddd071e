// fsck: loads the image in check mode (every bad record is reported and
// skipped instead of failing), cross-checks the derived state (space owned
// once, names lead to live inodes, link counts), and with repair clears the
// bad records and fixes the counts in one journaled transaction.
#include <cstring>

#include "fs/fs_impl.h"
#include "util/strfmt.h"

namespace poisonfs {
namespace {


}  // namespace

uint64_t FsImpl::count_directories() const {
  uint64_t n = 0;
  for (auto& inode : inodes_)
    if (inode && inode->is_dir()) ++n;
  return n;
}

uint64_t FsImpl::count_extents() const {
  uint64_t n = 0;
  for (auto& inode : inodes_)
    if (inode) n += inode->extents.size();
  return n;
}

Status FsImpl::repair_checked() {
  std::unique_lock lock(mutex_);
  // Poison under lost records first: cleared units read as zeros, and the
  // transaction below rewrites the records over them.
  for (auto [off, len] : check_->poison_to_clear) media_->clear_poison(off, len);
  Transaction tx;
  for (auto [off, len] : check_->bad_records) std::memset(tx.reserve(off, len), 0, len);
  for (const auto& [off, header] : check_->header_rewrites) encode_chain_header(header, tx.reserve(off, kChainHeaderSize));
  for (auto& inode : inodes_)
    if (inode && inode->times_dirty) stage_inode(tx, *inode);
  if (auto st = commit(tx); !st) return st;
  journal_.checkpoint();
  return {};
}

// Cross-checks the derived state against the records it was built from:
// every extent and record block has its owner in the reverse map, the
// reverse map holds nothing else, and free space is exactly the rest of the
// data area (rmap = extent records = refcounts = free space).
std::vector<std::string> FsImpl::verify_derived_state() {
  std::shared_lock lock(mutex_);
  std::vector<std::string> problems;
  uint64_t owned_blocks = 0;  // (block, owner) pairs the records claim
  for (auto& inode : inodes_) {
    if (!inode) continue;
    const Ino ino = inode->rec.ino;
    auto expect = [&](uint64_t phys, uint64_t count, Owner want) {
      owned_blocks += count;
      uint64_t covered = 0;
      rmap_.query(phys, count, [&](const RmapHit& hit) {
        Owner o = want;
        if (o.kind == OwnerKind::kData) o.offset += hit.phys - phys;
        if (hit.owner == o) covered += hit.count;
        return true;
      });
      if (covered != count)
        problems.push_back(strfmt("inode {}: blocks {}..{} are missing from the reverse map", ino, phys,
                                  phys + count - 1));
    };
    for (const Extent& e : inode->extents) expect(e.phys_block, e.nblocks, Owner{ino, e.file_block, OwnerKind::kData});
    for (const Chain* chain : {&inode->chain, &inode->xattr_chain})
      for (uint64_t b : chain->blocks) expect(b, 1, Owner{ino, 0, owner_kind_of(chain->kind)});
  }
  uint64_t rmap_pairs = 0, rmap_blocks = 0;
  rmap_.for_each_segment([&](uint64_t start, uint64_t count, uint32_t owners) {
    rmap_pairs += count * owners;
    rmap_blocks += count;
    if (alloc_.any_free(start, count))
      problems.push_back(strfmt("blocks {}..{} are owned but partly free", start, start + count - 1));
  });
  if (rmap_pairs != owned_blocks)
    problems.push_back(strfmt("the reverse map holds {} block owners, the records {}", rmap_pairs, owned_blocks));
  uint64_t area = sb_.data_end - sb_.data_start;
  if (rmap_blocks + alloc_.free_blocks() + alloc_.pending_blocks() != area)
    problems.push_back(strfmt("used {} + free {} + pending {} blocks != data area {}", rmap_blocks,
                              alloc_.free_blocks(), alloc_.pending_blocks(), area));
  return problems;
}

Result<CheckReport> check_filesystem(Media& media, bool repair) {
  CheckState state;
  state.repair = repair && !media.read_only();
  CheckReport report;
  auto fs = mount_impl(borrow_media(media), &state);
  if (!fs) {
    // Nothing usable (no superblock, corrupt journal, no root): operational
    // error when the image is not poisonfs at all, else a problem left.
    if (state.problems.empty()) return std::unexpected(fs.error());
    report.problems = std::move(state.problems);
    report.problems.push_back(fs.error().to_string());
    return report;
  }
  if (state.repair && !state.repairs.empty())
    if (auto st = (*fs)->repair_checked(); !st) return std::unexpected(st.error());
  for (auto& p : (*fs)->verify_derived_state()) state.problems.push_back(std::move(p));
  for (auto& p : (*fs)->verify_data_checksums()) state.problems.push_back(std::move(p));
  FsInfo info = (*fs)->info();
  report.inodes = info.inodes_used;
  report.extents = info.extent_records;
  report.directories = (*fs)->count_directories();
  report.used_blocks = info.data_blocks - info.free_blocks - info.pending_free;
  report.problems = std::move(state.problems);
  report.repairs = std::move(state.repairs);
  if (state.fatal && report.repairs.size() >= report.problems.size())
    report.repairs.pop_back();  // a fatal problem is never counted as fixed
  return report;
}

}  // namespace poisonfs
