// fsck: loads the image in check mode (every bad record is reported and
// skipped instead of failing), cross-checks the derived state (space owned
// once, names lead to live inodes, link counts), and with repair clears the
// bad records and fixes the counts in one journaled transaction.
#include <cstring>
#include "util/strfmt.h"

#include "fs/fs_impl.h"

namespace poisonfs {
namespace {

// Lends a caller-owned Media to a FsImpl, which wants to own one.
class BorrowedMedia final : public Media {
 public:
  explicit BorrowedMedia(Media& m) : m_(m) {}
  uint64_t size() const override { return m_.size(); }
  const std::byte* base() const override { return m_.base(); }
  bool read_only() const override { return m_.read_only(); }
  bool byte_granular() const override { return m_.byte_granular(); }
  void write(uint64_t off, const void* src, size_t len) override { m_.write(off, src, len); }
  void zero(uint64_t off, size_t len) override { m_.zero(off, len); }
  void flush(uint64_t off, size_t len) override { m_.flush(off, len); }
  void drain() override { m_.drain(); }

 private:
  Media& m_;
};

}  // namespace

uint64_t FsImpl::count_extents() const {
  uint64_t n = 0;
  for (auto& inode : inodes_)
    if (inode) n += inode->extents.size();
  return n;
}

Status FsImpl::repair_checked() {
  std::unique_lock lock(mutex_);
  Transaction tx;
  for (auto [off, len] : check_->bad_records) std::memset(tx.reserve(off, len), 0, len);
  for (auto& inode : inodes_)
    if (inode && inode->times_dirty) stage_inode(tx, *inode);
  if (auto st = commit(tx); !st) return st;
  journal_.checkpoint();
  return {};
}

Result<CheckReport> check_filesystem(Media& media, bool repair) {
  CheckState state;
  state.repair = repair && !media.read_only();
  CheckReport report;
  auto fs = mount_impl(std::make_unique<BorrowedMedia>(media), &state);
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
  FsInfo info = (*fs)->info();
  report.inodes = info.inodes_used;
  report.extents = info.extent_records;
  report.used_blocks = info.data_blocks - info.free_blocks - info.pending_free;
  report.problems = std::move(state.problems);
  report.repairs = std::move(state.repairs);
  if (state.fatal && report.repairs.size() >= report.problems.size())
    report.repairs.pop_back();  // a fatal problem is never counted as fixed
  return report;
}

}  // namespace poisonfs
