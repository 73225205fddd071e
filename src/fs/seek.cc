// SEEK_DATA and SEEK_HOLE from the extent map: what `cp`, `tar -S` and
// `rsync -S` ask to skip holes (and `cp` to decide whether a file is sparse
// at all). Holes and unwritten extents read as zeros, so both are holes,
// as XFS and ext4 report them when no dirty page cache covers them (the
// daemon has the kernel write back pages dirtied through a mapping first;
// every other write reaches the image before it is answered).
#include "fs/fs_impl.h"

namespace poisonfs {
namespace {

bool is_data(const Extent* e) { return e != nullptr && !e->unwritten(); }

}  // namespace

Result<uint64_t> FsImpl::seek(Ino ino, uint64_t off, SeekFor what) {
  std::shared_lock lock(mutex_);
  auto got = get(ino);
  if (!got) return std::unexpected(got.error());
  Inode& inode = **got;
  if (!inode.is_reg()) return fail(std::errc::invalid_argument);
  const uint64_t size = inode.rec.size;
  if (off >= size) return fail(std::errc::no_such_device_or_address);
  const uint64_t fb = off / kBlockSize;
  Extent* e = inode.extents.at_or_after(fb);
  if (what == SeekFor::kData) {
    while (e != nullptr && !is_data(e)) e = inode.extents.next(*e);
    if (e == nullptr) return fail(std::errc::no_such_device_or_address);
    const uint64_t data = std::max(off, block_offset(e->file_block));
    if (data >= size) return fail(std::errc::no_such_device_or_address);
    return data;
  }
  // The first block at or after fb that no written extent maps.
  uint64_t hole = fb;
  while (is_data(e) && e->file_block <= hole) {
    hole = e->file_end();
    e = inode.extents.next(*e);
  }
  return std::min(std::max(off, block_offset(hole)), size);
}

}  // namespace poisonfs
