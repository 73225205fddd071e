// The image fuzzing harness: a fuzz input is a short list of edits applied to
// a seed image that is built once per process by the core itself (mkfs, then
// files, directories, xattrs, reflinked and copy-on-written extents, a
// fragmented file with a two-block extent chain, a preallocated file, an
// orphan, transactions left in the journal, known and latent poison). The
// edited image is checked (fsck), mounted and walked; every outcome must be
// a clean error, never a crash, a hang or a leak.
//
// Built into the libFuzzer target (test/fuzz/image_fuzzer.cc, clang only)
// and into the unit tests (test/unit/fuzz_corpus_test.cc runs the corpus and
// every regression input with g++), so both see the same seed image.
//
// Input format (bytes; every integer little-endian; a command cut short by
// the end of the input is ignored):
//
//   byte 0: flags
//     bit 0  reseal: recompute the crc32c of every record in each block an
//            edit touched, so edits get past the checksums into the parsers
//     bit 1  repair: also run fsck with repair, fsck the result, mount it
//     bit 2  modify: after the read-only walk, create/write/clone/punch/
//            truncate/rename/unlink/xattr operations before the unmount
//     bit 3  scrub the mounted filesystem
//     bit 4  remount after the unmount and walk again
//   then commands, each starting with an op byte:
//     op % 4 == 0  patch:  target(1) offset(2) len(1) bytes[len]
//     op % 4 == 1  poison: unit(4) length(2); inject (op & 4: latent) poison
//                          at 64-byte unit `unit` (mod the device) for
//                          length+1 bytes
//     op % 4 == 2  value:  target(1) offset(2) which(1); store the 8-byte
//                          value interesting_values()[which % n] (geometry
//                          numbers, 0, ~0, ...)
//     op % 4 == 3  copy:   target(1) src_kind(1) src_target(1); copy a whole
//                          block over the target block
//   A target block is (kind, target): kind = (op >> 2) % kKinds (see
//   BlockKind), the block is the seed's target % count-th block of that
//   kind; a patch/value lands at offset % 4096 in it, clipped to its end.
//   For kAny the block number is target + 256 * (offset >> 12).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace poisonfs::fuzz {

enum class BlockKind : uint8_t {
  kSuperblock = 0,  // the primary, block 0
  kSuperCopy,       // the copy, the last block
  kJournalHeader,   // first journal block: the two header slots
  kJournalLog,      // journal blocks holding transactions
  kInodes,          // inode table blocks with at least one inode
  kExtentChain,
  kDirentChain,
  kXattrChain,
  kData,            // file data
  kAny,             // any block of the device
  kCount,
};
inline constexpr int kKinds = static_cast<int>(BlockKind::kCount);

// Runs one input (see above). Returns normally for every input; a bug shows
// as a crash, a sanitizer report, an endless loop or a leak.
void run_image_input(const uint8_t* data, size_t size);

// The seed image's bytes (for tests: it must be the same in every build).
const std::vector<uint8_t>& seed_image_bytes();

}  // namespace poisonfs::fuzz
