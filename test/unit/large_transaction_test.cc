// Operations whose metadata grows with a file's extent count (clone,
// truncate, punch hole, zero range) on a filesystem made with the smallest
// journal (mkfs -J 256K): they commit in pieces that fit the journal, each
// piece a consistent state, so they succeed and fsck stays clean. A
// transaction that still does not fit (one huge write through the core API;
// the daemon's writes are at most 1 MiB) shuts the filesystem down instead
// of serving memory the media never got.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "poisonfs/filesystem.h"
#include "unit/recording_media.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

constexpr uint64_t B = kBlockSize;
constexpr uint64_t kSmallestJournal = 256 << 10;
// More one-block extents than a 256 KiB journal holds records for.
constexpr uint64_t kExtents = 6000;
const Caller kUser{1000, 1000, 022};

MkfsOptions small_journal() {
  MkfsOptions o;
  o.journal_bytes = kSmallestJournal;
  return o;
}

std::string block_text(uint64_t i) {
  std::string s(B, '\0');
  for (uint64_t k = 0; k < B; ++k) s[k] = static_cast<char>('a' + (i * 7 + k) % 26);
  return s;
}

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

std::string read_all(Filesystem& fs, Ino ino, uint64_t len) {
  std::string out(len, '\0');
  auto n = fs.read_copy(ino, 0, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(n) << n.error().to_string();
  out.resize(n.value_or(0));
  return out;
}

// Compares without printing megabytes: the first differing offset.
::testing::AssertionResult same_bytes(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "sizes " << got.size() << " and " << want.size()
                                       << ", first difference at byte " << i;
}

Ino create(Filesystem& fs, std::string_view name) {
  auto a = fs.mknod(kRootIno, name, S_IFREG | 0644, 0, kUser);
  EXPECT_TRUE(a) << name;
  return a ? a->ino : 0;
}

// A file of 2 * kExtents blocks with every odd block punched out:
// kExtents one-block extents, whatever the allocator's layout. Returns the
// file and its bytes.
std::pair<Ino, std::string> fragmented_file(Filesystem& fs, std::string_view name) {
  Ino ino = create(fs, name);
  std::string all;
  for (uint64_t i = 0; i < 2 * kExtents; ++i) all += block_text(i);
  EXPECT_TRUE(fs.write(ino, 0, bytes(all)));
  for (uint64_t i = 1; i < 2 * kExtents; i += 2)
    EXPECT_TRUE(fs.fallocate(ino, kFallocPunchHole | kFallocKeepSize, i * B, B));
  std::string expected(2 * kExtents * B, '\0');
  for (uint64_t i = 0; i < 2 * kExtents; i += 2) expected.replace(i * B, B, block_text(i));
  EXPECT_TRUE(same_bytes(read_all(fs, ino, expected.size()), expected));
  return {ino, expected};
}

class LargeTransactions : public ::testing::Test {
 protected:
  LargeTransactions() : dev_(128 << 20, small_journal()) {}

  Ino create(std::string_view name) { return poisonfs::create(*dev_, name); }
  Ino fragmented_file(std::string_view name) {
    auto [ino, expected] = poisonfs::fragmented_file(*dev_, name);
    expected_ = std::move(expected);
    return ino;
  }

  void expect_clean_after_remount() {
    dev_.remount();
    CheckReport report = dev_.check();
    EXPECT_TRUE(report.clean()) << (report.problems.empty() ? "" : report.problems.front());
  }

  testing::TestDevice dev_;
  std::string expected_;  // the fragmented file's bytes
};

TEST_F(LargeTransactions, TheJournalIsTheSmallestMkfsAccepts) {
  EXPECT_EQ(dev_->info().journal_blocks * B, kSmallestJournal);
  auto media = make_memory_media(128 << 20);
  MkfsOptions too_small;
  too_small.journal_bytes = kSmallestJournal - B;
  EXPECT_FALSE(Filesystem::format(*media, too_small));
  MkfsOptions too_big;
  too_big.journal_bytes = (64ull << 20) + B;
  EXPECT_FALSE(Filesystem::format(*media, too_big));
}

TEST_F(LargeTransactions, CloneOfAFileWithMoreExtentsThanOneCommitHolds) {
  Ino src = fragmented_file("src");
  Ino dst = create("dst");
  ASSERT_TRUE(dev_->clone_range(src, 0, dst, 0, expected_.size()));
  EXPECT_FALSE(dev_->health().shutdown);
  EXPECT_TRUE(same_bytes(read_all(*dev_, dst, expected_.size() + 1), expected_));
  expect_clean_after_remount();
  EXPECT_TRUE(same_bytes(read_all(*dev_, dst, expected_.size() + 1), expected_));
  EXPECT_TRUE(same_bytes(read_all(*dev_, src, expected_.size() + 1), expected_));
}

TEST_F(LargeTransactions, CopyRangeOfAFileWithMoreExtentsThanOneCommitHolds) {
  Ino src = fragmented_file("src");
  Ino dst = create("dst");
  auto copied = dev_->copy_range(src, 0, dst, 0, expected_.size());
  ASSERT_TRUE(copied) << copied.error().to_string();
  EXPECT_EQ(*copied, expected_.size());
  expect_clean_after_remount();
  EXPECT_TRUE(same_bytes(read_all(*dev_, dst, expected_.size() + 1), expected_));
}

TEST_F(LargeTransactions, TruncateOfAFragmentedFileFreesEveryExtent) {
  Ino f = fragmented_file("f");
  uint64_t free_before = dev_->statfs().blocks_free;
  SetAttr set;
  set.valid = SetAttr::kSize;
  set.size = B;
  ASSERT_TRUE(dev_->setattr(f, set, kUser));
  EXPECT_FALSE(dev_->health().shutdown);
  EXPECT_TRUE(same_bytes(read_all(*dev_, f, 2 * B), block_text(0)));
  expect_clean_after_remount();
  EXPECT_TRUE(same_bytes(read_all(*dev_, f, 2 * B), block_text(0)));
  EXPECT_GE(dev_->statfs().blocks_free, free_before + kExtents - 1);
}

TEST_F(LargeTransactions, PunchHoleOverManyExtents) {
  Ino f = fragmented_file("f");
  const uint64_t size = expected_.size();
  ASSERT_TRUE(dev_->fallocate(f, kFallocPunchHole | kFallocKeepSize, B, size - 2 * B));
  EXPECT_FALSE(dev_->health().shutdown);
  std::string want(size, '\0');
  want.replace(0, B, block_text(0));
  want.replace(size - B, B, expected_.substr(size - B));
  EXPECT_TRUE(same_bytes(read_all(*dev_, f, size + 1), want));
  expect_clean_after_remount();
  EXPECT_TRUE(same_bytes(read_all(*dev_, f, size + 1), want));
}

TEST_F(LargeTransactions, ZeroRangeOverManyHoles) {
  Ino f = fragmented_file("f");
  const uint64_t size = expected_.size();
  ASSERT_TRUE(dev_->fallocate(f, kFallocZeroRange, B, size - B));
  EXPECT_FALSE(dev_->health().shutdown);
  std::string want(size, '\0');
  want.replace(0, B, block_text(0));
  EXPECT_TRUE(same_bytes(read_all(*dev_, f, size + 1), want));
  expect_clean_after_remount();
  EXPECT_TRUE(same_bytes(read_all(*dev_, f, size + 1), want));
  // Every hole is preallocated now: the file maps all its blocks.
  auto map = dev_->bmap(f);
  ASSERT_TRUE(map);
  uint64_t mapped = 0;
  for (const BmapEntry& e : *map) mapped += e.length;
  EXPECT_EQ(mapped, size);
}

TEST_F(LargeTransactions, AWriteTooBigToCommitShutsDownAndTheMediaKeepsTheLastCommit) {
  Ino f = fragmented_file("f");
  auto map_before = dev_->bmap(f);
  ASSERT_TRUE(map_before);
  // Fills every hole with its own new extent: more records than one commit
  // holds (the blocks written in place are data, not metadata: they may
  // hold either bytes after a crash, as on any filesystem).
  std::string fill(expected_.size(), 'z');
  auto written = dev_->write(f, 0, bytes(fill));
  ASSERT_FALSE(written);
  EXPECT_EQ(written.error().code, std::errc::file_too_large);
  EXPECT_TRUE(dev_->health().shutdown);
  EXPECT_FALSE(dev_->getattr(f));  // nothing served from memory the media lacks
  dev_.remount(/*clean=*/false);
  EXPECT_FALSE(dev_->health().shutdown);
  EXPECT_TRUE(dev_.check().clean());
  auto map_after = dev_->bmap(f);
  ASSERT_TRUE(map_after);
  ASSERT_EQ(map_after->size(), map_before->size());
  for (size_t i = 0; i < map_after->size(); ++i) {
    EXPECT_EQ((*map_after)[i].file_offset, (*map_before)[i].file_offset);
    EXPECT_EQ((*map_after)[i].physical, (*map_before)[i].physical);
  }
  auto attr = dev_->getattr(f);
  ASSERT_TRUE(attr);
  EXPECT_EQ(attr->size, expected_.size());
}


// A crash at any commit point of a truncate in pieces: the truncate has
// happened (mount finishes unmapping what lies past EOF: a later extension
// must read zeros there) or has not, and fsck is clean either way.
TEST(LargeTransactionsCrash, ATruncateInPiecesHappensOrNotAtEveryCommitPoint) {
  auto owned = std::make_unique<testing::RecordingMedia>(128 << 20);
  testing::RecordingMedia& media = *owned;
  media.set_recording(false);
  ASSERT_TRUE(Filesystem::format(media, small_journal()));
  auto fs = Filesystem::mount(std::move(owned), {});
  ASSERT_TRUE(fs);
  auto [ino, expected] = fragmented_file(**fs, "f");
  const std::vector<std::byte> initial = media.image();
  media.set_recording(true);
  SetAttr set;
  set.valid = SetAttr::kSize;
  set.size = B;
  ASSERT_TRUE((*fs)->setattr(ino, set, kUser));
  media.set_recording(false);

  std::vector<size_t> crash_points;  // stores kept: at every drain, and all of them
  size_t stores = 0;
  for (const auto& op : media.log()) {
    if (op.kind == testing::RecordingMedia::Op::kDrain) crash_points.push_back(stores);
    stores += op.is_store();
  }
  crash_points.push_back(stores);
  ASSERT_GE(media.drains(), 3u);  // the truncate did commit in pieces
  size_t happened = 0;
  for (size_t k : crash_points) {
    SCOPED_TRACE("crash after " + std::to_string(k) + " of " + std::to_string(stores) + " stores");
    auto after = Filesystem::mount(testing::media_from(media.crash_image(initial, k)), {});
    ASSERT_TRUE(after) << after.error().to_string();
    Filesystem& fs2 = **after;
    auto attr = fs2.getattr(ino);
    ASSERT_TRUE(attr);
    if (attr->size == expected.size()) {
      EXPECT_TRUE(same_bytes(read_all(fs2, ino, expected.size() + 1), expected));
    } else {
      ASSERT_EQ(attr->size, B);
      ++happened;
      auto map = fs2.bmap(ino);
      ASSERT_TRUE(map);
      ASSERT_EQ(map->size(), 1u);  // nothing mapped past EOF any more
      SetAttr grow;
      grow.valid = SetAttr::kSize;
      grow.size = expected.size();
      ASSERT_TRUE(fs2.setattr(ino, grow, kUser));
      std::string want(expected.size(), '\0');
      want.replace(0, B, block_text(0));
      EXPECT_TRUE(same_bytes(read_all(fs2, ino, expected.size() + 1), want));
    }
    ASSERT_TRUE(fs2.unmount());
  }
  EXPECT_GE(happened, 2u);  // crashes between pieces were met
}

}  // namespace
}  // namespace poisonfs
