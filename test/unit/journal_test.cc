// Tests of the redo journal (src/journal/): replay redoes committed
// transactions once and in order; a crash after any prefix of the stores a
// commit makes (and with any store torn at 8-byte granularity, the unit real
// persistent memory guarantees) leaves either the state before or the state
// after each transaction, never a mix; torn or hostile journal bytes are
// refused; the log wraps through checkpoints; oversized transactions fail.
#include <gtest/gtest.h>


#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "format/coding.h"
#include "format/crc32c.h"
#include "format/layout.h"
#include "journal/journal.h"
#include "unit/recording_media.h"

namespace poisonfs {
namespace {

using testing::RecordingMedia;

constexpr uint64_t kDevice = 1 << 20;

// A device with a formatted journal and a known pattern in the metadata area.
struct Rig {
  Superblock sb;
  RecordingMedia media{kDevice};

  Rig() {
    auto planned = plan_geometry(kDevice, 0);
    EXPECT_TRUE(planned);
    sb = *planned;
    media.set_recording(false);
    // Old garbage everywhere in the journal region, as a used device has.
    std::mt19937 rng(7);
    std::vector<std::byte> junk(sb.journal_blocks * kBlockSize);
    for (auto& b : junk) b = std::byte(rng());
    media.write(block_offset(sb.journal_start), junk.data(), junk.size());
    Journal::format(media, sb);
    // Recognizable old contents of the metadata area.
    for (uint64_t b = sb.inode_start; b < sb.data_end; ++b) {
      std::vector<std::byte> blk(kBlockSize, std::byte(b & 0xFF));
      media.write(block_offset(b), blk.data(), blk.size());
    }
    media.set_recording(true);
    media.clear_log();
  }

  uint64_t meta(uint64_t block, uint64_t byte = 0) const { return block_offset(sb.inode_start + block) + byte; }
  uint64_t journal_lo() const { return block_offset(sb.journal_start); }
  uint64_t journal_hi() const { return block_offset(sb.journal_start + sb.journal_blocks); }
};

// One record of a transaction, remembered so that states can be compared.
struct Rec {
  uint64_t off;
  std::vector<std::byte> bytes;
};

std::vector<std::byte> fill(size_t len, uint8_t seed) {
  std::vector<std::byte> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
  return v;
}

Transaction make_tx(const std::vector<Rec>& recs) {
  Transaction tx;
  for (const Rec& r : recs) tx.write(r.off, r.bytes.data(), r.bytes.size());
  return tx;
}

// The bytes of every watched range, in one string: a comparable "state".
struct Watch {
  std::vector<std::pair<uint64_t, size_t>> ranges;
  void add(const std::vector<Rec>& recs) {
    for (const Rec& r : recs) ranges.emplace_back(r.off, r.bytes.size());
  }
  std::string state(const std::byte* base) const {
    std::string s;
    for (auto [off, len] : ranges) s.append(reinterpret_cast<const char*>(base + off), len);
    return s;
  }
};

// Replays img on a fresh Journal; returns the resulting image (or fails the test).
std::vector<std::byte> replay(const Superblock& sb, std::vector<std::byte> img, uint64_t* applied = nullptr) {
  RecordingMedia m(std::move(img));
  Journal j(m, sb);
  auto n = j.replay();
  EXPECT_TRUE(n) << n.error().to_string();
  if (applied) *applied = n.value_or(0);
  return m.image();
}

// The watched state after replaying img (consumed, not copied).
std::string replayed_state(const Superblock& sb, std::vector<std::byte>&& img, const Watch& w) {
  RecordingMedia m(std::move(img));
  m.set_recording(false);
  Journal j(m, sb);
  auto n = j.replay();
  EXPECT_TRUE(n) << n.error().to_string();
  return w.state(m.base());
}

TEST(Transaction, LaterWriteOfTheSameRecordReplacesTheEarlier) {
  Transaction tx;
  auto a = fill(256, 1), b = fill(256, 2);
  tx.write(1 << 20, a.data(), a.size());
  size_t size = tx.encoded_size();
  tx.write(1 << 20, b.data(), b.size());
  EXPECT_EQ(tx.record_count(), 1u);
  EXPECT_EQ(tx.encoded_size(), size);
  tx.write((1 << 20) + 256, b.data(), 3);
  EXPECT_EQ(tx.record_count(), 2u);
  EXPECT_EQ(tx.encoded_size() % 8, 0u);
}

// Thousands of records (the index grows many times, and once ahead with
// expect): each offset keeps its latest bytes, a same-length write replaces
// in place, a new length adds a record, and the encoded size adds up.
TEST(Transaction, ManyRecordsKeepTheLatestBytesPerOffset) {
  for (bool expect_first : {false, true}) {
    Transaction tx;
    if (expect_first) tx.expect(5000, 5000 * 32);
    std::map<uint64_t, uint8_t> latest;
    size_t records = 0, bytes = 0;
    for (uint64_t i = 0; i < 5000; ++i) {
      uint64_t off = (1 << 20) + (i * 7919 % 5000) * 32;  // 32-byte slots, out of order
      auto v = fill(32, static_cast<uint8_t>(i));
      if (!latest.contains(off)) {
        ++records;
        bytes += 16 + 32;  // record header + bytes
      }
      tx.write(off, v.data(), v.size());
      latest[off] = static_cast<uint8_t>(i);
      if (i % 3 == 0) {  // again, other bytes, same length: replaced
        auto w = fill(32, static_cast<uint8_t>(i + 100));
        tx.write(off, w.data(), w.size());
        latest[off] = static_cast<uint8_t>(i + 100);
      }
    }
    EXPECT_EQ(tx.record_count(), records);
    EXPECT_EQ(tx.encoded_size(), 32 + bytes);
    for (auto [off, seed] : latest)
      EXPECT_EQ(std::memcmp(tx.reserve(off, 32), fill(32, seed).data(), 32), 0) << off;
    EXPECT_EQ(tx.record_count(), records);  // those reserves found the records
    tx.reserve(1 << 20, 8);                 // another length: a record of its own
    EXPECT_EQ(tx.record_count(), records + 1);
  }
}

// Two drains per commit: the first orders the caller's data before the
// transaction (flushed lines persist in any order), the second is the
// commit point.
TEST(Journal, CommitAppliesInPlaceAndOneDrainIsTheCommitPoint) {
  Rig rig;
  std::vector<Rec> recs = {{rig.meta(0), fill(256, 1)}, {rig.meta(3, 64), fill(32, 2)}};
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  rig.media.clear_log();
  ASSERT_TRUE(j.commit(make_tx(recs)));
  for (const Rec& r : recs) EXPECT_EQ(std::memcmp(rig.media.at(r.off), r.bytes.data(), r.bytes.size()), 0);
  EXPECT_EQ(rig.media.drains(), 2u);
  ASSERT_FALSE(rig.media.log().empty());
  EXPECT_EQ(rig.media.log().front().kind, testing::RecordingMedia::Op::kDrain);  // before any store
  // The journal blob is the first store and lies in the journal region.
  auto stores = rig.media.stores();
  ASSERT_EQ(stores.size(), 3u);
  EXPECT_GE(stores[0]->off, rig.journal_lo());
  EXPECT_LE(stores[0]->off + stores[0]->len, rig.journal_hi());
  EXPECT_EQ(j.commits(), 1u);
}

TEST(Journal, EmptyTransactionStoresNothing) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  rig.media.clear_log();
  ASSERT_TRUE(j.commit(Transaction{}));
  EXPECT_TRUE(rig.media.log().empty());
}

TEST(Journal, ReplayOnAFreshJournalRedoesEachTransactionOnceInOrder) {
  Rig rig;
  auto initial = rig.media.image();
  std::vector<Rec> tx1 = {{rig.meta(0), fill(256, 1)}, {rig.meta(1), fill(64, 9)}};
  std::vector<Rec> tx2 = {{rig.meta(0), fill(256, 2)}};  // overwrites tx1's first record
  {
    Journal j(rig.media, rig.sb);
    ASSERT_TRUE(j.replay());
    ASSERT_TRUE(j.commit(make_tx(tx1)));
    ASSERT_TRUE(j.commit(make_tx(tx2)));
  }
  Watch w;
  w.add(tx1);
  const std::string after = w.state(rig.media.base());
  // Crash where only the journal blobs reached the media, no in-place write.
  std::vector<std::byte> img = initial;
  for (const auto* op : rig.media.stores())
    if (op->off >= rig.journal_lo() && op->off < rig.journal_hi()) RecordingMedia::apply_store(img, *op, op->len);
  ASSERT_NE(w.state(img.data()), after);
  uint64_t applied = 0;
  auto replayed = replay(rig.sb, img, &applied);
  EXPECT_EQ(applied, 2u);
  EXPECT_EQ(w.state(replayed.data()), after);
  // Replaying the full image (in-place writes done) gives the same state.
  auto again = replay(rig.sb, rig.media.image(), &applied);
  EXPECT_EQ(applied, 2u);
  EXPECT_EQ(w.state(again.data()), after);
  // After a replay the log is checkpointed: a second replay applies nothing
  // and stores nothing.
  RecordingMedia m(replayed);
  Journal j2(m, rig.sb);
  auto n = j2.replay();
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 0u);
  for (const auto& op : m.log()) EXPECT_FALSE(op.is_store());
  EXPECT_EQ(w.state(m.base()), after);
}

TEST(Journal, CommitsAfterAReplayContinueTheSequence) {
  Rig rig;
  std::vector<Rec> tx1 = {{rig.meta(0), fill(256, 1)}};
  std::vector<Rec> tx2 = {{rig.meta(2), fill(128, 5)}};
  {
    Journal j(rig.media, rig.sb);
    ASSERT_TRUE(j.replay());
    ASSERT_TRUE(j.commit(make_tx(tx1)));
  }
  auto initial = rig.media.image();
  RecordingMedia m(initial);
  Journal j(m, rig.sb);
  auto n = j.replay();
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 1u);
  ASSERT_TRUE(j.commit(make_tx(tx2)));
  uint64_t applied = 0;
  auto out = replay(rig.sb, m.image(), &applied);
  EXPECT_EQ(applied, 1u);  // tx2 only: tx1 was checkpointed by the first replay
  Watch w;
  w.add(tx1);
  w.add(tx2);
  EXPECT_EQ(w.state(out.data()), w.state(m.base()));
}

// Runs `commits` on a copy of the rig's device and checks every crash image:
// the first k stores applied, and (when torn) the next store applied only up
// to a multiple of 8 bytes. Each must replay to one of the states S0..Sn
// (before any / after each transaction), and the index must not go down as
// k grows.
void check_every_crash_point(Rig& rig, Journal& j, const std::vector<std::vector<Rec>>& commits, bool torn) {
  Watch w;
  for (const auto& recs : commits) w.add(recs);
  auto initial = rig.media.image();
  std::vector<std::string> states = {w.state(initial.data())};
  rig.media.clear_log();
  for (const auto& recs : commits) {
    ASSERT_TRUE(j.commit(make_tx(recs)));
    states.push_back(w.state(rig.media.base()));
  }
  auto stores = rig.media.stores();
  auto state_index = [&](std::vector<std::byte> img) -> int {
    std::string s = replayed_state(rig.sb, std::move(img), w);
    for (size_t i = states.size(); i-- > 0;)
      if (states[i] == s) return static_cast<int>(i);
    return -1;
  };
  int last = 0;
  for (size_t k = 0; k <= stores.size(); ++k) {
    auto img = rig.media.crash_image(initial, k);
    int idx = state_index(img);
    ASSERT_GE(idx, 0) << "crash after " << k << " stores replays to a mixed state";
    EXPECT_GE(idx, last) << "crash after " << k << " stores went back in time";
    last = idx;
    if (!torn || k == stores.size()) continue;
    const auto& op = *stores[k];
    // Every 8-byte step of small stores, about eight cuts of large ones.
    const size_t stride = std::max<size_t>(8, op.len / 8 / 8 * 8);
    for (size_t prefix = 8; prefix < op.len; prefix += stride) {
      auto t = img;
      RecordingMedia::apply_store(t, op, prefix);
      int ti = state_index(std::move(t));
      ASSERT_GE(ti, 0) << "store " << k << " torn after " << prefix << " of " << op.len
                       << " bytes (at " << op.off << ") replays to a mixed state";
      EXPECT_GE(ti, idx);
    }
  }
  EXPECT_EQ(last, static_cast<int>(commits.size()));
}

TEST(JournalCrash, EveryStorePrefixOfOneTransactionIsAllOrNothing) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  std::vector<Rec> tx = {{rig.meta(0), fill(256, 1)}, {rig.meta(0, 256), fill(256, 2)},
                         {rig.meta(5, 64), fill(32, 3)}, {rig.meta(9), fill(kBlockSize, 4)},
                         {rig.meta(20, 64), fill(280, 5)}};
  check_every_crash_point(rig, j, {tx}, false);
}

TEST(JournalCrash, EveryStorePrefixOfSeveralTransactionsIsASequencePrefix) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  std::vector<std::vector<Rec>> txs;
  for (uint8_t t = 0; t < 5; ++t)
    txs.push_back({{rig.meta(t % 2), fill(256, t)}, {rig.meta(4 + t, 32), fill(32, 50 + t)},
                   {rig.meta(10), fill(64, 100 + t)}});
  check_every_crash_point(rig, j, txs, false);
}

TEST(JournalCrash, TornStoresAreAllOrNothing) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  std::vector<std::vector<Rec>> txs;
  for (uint8_t t = 0; t < 3; ++t)
    txs.push_back({{rig.meta(0), fill(256, t)}, {rig.meta(7, 64), fill(kBlockSize - 64, 30 + t)}});
  check_every_crash_point(rig, j, txs, true);
}

// Checkpoints (the region is full) inside the sequence: the header rewrite
// and the reuse of the region must be crash safe too, torn stores included.
TEST(JournalCrash, CrashesAroundAWrapAreAllOrNothing) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  std::vector<std::vector<Rec>> txs;
  // Each transaction is about 3/8 of the region: the third one wraps.
  const size_t rec_len = j.max_tx_bytes() / 8 / kBlockSize * kBlockSize;
  for (uint8_t t = 0; t < 5; ++t) {
    std::vector<Rec> recs;
    for (size_t i = 0; i < 3; ++i)
      recs.push_back({rig.meta(i * rec_len / kBlockSize), fill(rec_len, static_cast<uint8_t>(t * 31 + i))});
    txs.push_back(recs);
  }
  check_every_crash_point(rig, j, txs, true);
}

TEST(JournalCrash, TornBlobWithOldGarbageBehindItIsRejected) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  auto initial = rig.media.image();
  std::vector<Rec> tx = {{rig.meta(0), fill(1000, 1)}, {rig.meta(2), fill(3000, 2)}};
  Watch w;
  w.add(tx);
  const std::string before = w.state(initial.data());
  ASSERT_TRUE(j.commit(make_tx(tx)));
  auto stores = rig.media.stores();
  const auto& blob = *stores[0];
  ASSERT_GE(blob.off, rig.journal_lo());
  // Every cut in the headers, then every 40 bytes, then every cut at the end.
  std::vector<size_t> prefixes;
  for (size_t p = 0; p < blob.len; p += (p < 64 || p + 16 > blob.len) ? 1 : 40) prefixes.push_back(p);
  for (size_t prefix : prefixes) {
    auto img = initial;  // the region behind the prefix holds old random bytes
    RecordingMedia::apply_store(img, blob, prefix);
    uint64_t applied = 99;
    auto out = replay(rig.sb, std::move(img), &applied);
    ASSERT_EQ(applied, 0u) << "prefix " << prefix;
    ASSERT_EQ(w.state(out.data()), before) << "prefix " << prefix;
  }
}

// Builds a sealed transaction by hand from a committed one: same framing
// (header {crc, magic, seq, nrecs, pad, len}, then {off, len, pad, bytes}),
// with the first record's offset replaced.
std::vector<std::byte> retarget(const RecordingMedia::Op& blob, uint64_t new_off, uint32_t new_len = 0) {
  std::vector<std::byte> b = blob.bytes;
  put_le<uint64_t>(b.data() + 32, new_off);
  if (new_len) put_le<uint32_t>(b.data() + 40, new_len);
  put_le<uint32_t>(b.data(), crc32c(b.data() + 4, b.size() - 4));
  return b;
}

TEST(JournalCrash, HostileSealedTransactionIsRefusedAndNothingApplied) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  auto initial = rig.media.image();
  // Two records: the second is harmless, the first will be retargeted.
  std::vector<Rec> tx = {{rig.meta(0), fill(256, 1)}, {rig.meta(3), fill(256, 2)}};
  ASSERT_TRUE(j.commit(make_tx(tx)));
  const auto& blob = *rig.media.stores()[0];
  const uint64_t dev_end = block_offset(rig.sb.total_blocks);
  std::vector<std::pair<uint64_t, uint32_t>> targets = {
      {0, 0},                                             // the superblock
      {rig.journal_lo(), 0},                              // the journal header
      {rig.journal_lo() + kBlockSize, 0},                 // the log itself
      {block_offset(rig.sb.data_end), 0},                 // the superblock copy
      {dev_end, 0},                                       // past the device
      {dev_end - 128, 0},                                 // straddles the end
      {~uint64_t{0} - 100, 0},                            // wraps around
      {block_offset(rig.sb.inode_start) - 8, 0},          // starts just before the area
  };
  for (auto [off, len] : targets) {
    auto hostile = retarget(blob, off, len);
    auto img = initial;
    std::memcpy(img.data() + blob.off, hostile.data(), hostile.size());
    RecordingMedia m(img);
    Journal j2(m, rig.sb);
    auto n = j2.replay();
    EXPECT_FALSE(n) << "record at " << off << " was accepted";
    for (const auto& op : m.log()) EXPECT_FALSE(op.is_store()) << "replay stored at " << op.off;
  }
  // A record whose length runs past the end of the transaction.
  auto hostile = retarget(blob, rig.meta(0), 1 << 20);
  auto img = initial;
  std::memcpy(img.data() + blob.off, hostile.data(), hostile.size());
  RecordingMedia m(img);
  Journal j3(m, rig.sb);
  EXPECT_FALSE(j3.replay());
  for (const auto& op : m.log()) EXPECT_FALSE(op.is_store());
}

TEST(Journal, OneCorruptHeaderSlotIsSurvivedBothAreAnError) {
  Rig rig;
  {
    Journal j(rig.media, rig.sb);
    ASSERT_TRUE(j.replay());
    ASSERT_TRUE(j.commit(make_tx({{rig.meta(0), fill(64, 3)}})));
  }
  // Find the header slots: the stores a checkpoint makes at the region start.
  for (uint64_t slot_off : {uint64_t{0}, uint64_t{64}}) {
    auto img = rig.media.image();
    img[rig.journal_lo() + slot_off + 9] ^= std::byte{1};
    uint64_t applied = 0;
    replay(rig.sb, img, &applied);
    EXPECT_EQ(applied, 1u) << "slot at " << slot_off;
  }
  auto img = rig.media.image();
  img[rig.journal_lo() + 9] ^= std::byte{1};
  img[rig.journal_lo() + 64 + 9] ^= std::byte{1};
  RecordingMedia m(img);
  Journal j(m, rig.sb);
  EXPECT_FALSE(j.replay());
  std::vector<std::byte> zeros(kDevice);
  RecordingMedia z(zeros);
  Journal jz(z, rig.sb);
  EXPECT_FALSE(jz.replay());
}

TEST(Journal, ManyCommitsWrapTheRegionAndReplayStaysRight) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  int checkpoints = 0;
  j.set_checkpoint_hook([&] { ++checkpoints; });
  std::mt19937 rng(42);
  Watch w;
  std::vector<Rec> all;
  for (uint64_t b = 0; b < 12; ++b) all.push_back({rig.meta(b), fill(kBlockSize, 0)});
  w.add(all);
  auto initial = rig.media.image();
  rig.media.clear_log();
  for (int t = 0; t < 400; ++t) {
    std::vector<Rec> recs;
    size_t n = 1 + rng() % 8;
    for (size_t i = 0; i < n; ++i) {
      uint64_t b = rng() % 12;
      size_t len = 8 * (1 + rng() % 200);
      recs.push_back({rig.meta(b, 8 * (rng() % ((kBlockSize - len) / 8 + 1))), fill(len, static_cast<uint8_t>(rng()))});
    }
    ASSERT_TRUE(j.commit(make_tx(recs)));
    if (t % 37 == 0) {
      // Crash now: everything up to the last checkpoint is durable, after it
      // only the journal blobs reached the media, no in-place write.
      auto stores = rig.media.stores();
      size_t last_header = 0;
      for (size_t i = 0; i < stores.size(); ++i)
        if (stores[i]->off >= rig.journal_lo() && stores[i]->off < rig.journal_lo() + kBlockSize) last_header = i + 1;
      auto img = initial;
      for (size_t i = 0; i < stores.size(); ++i) {
        bool in_journal = stores[i]->off >= rig.journal_lo() && stores[i]->off < rig.journal_hi();
        if (i < last_header || in_journal) RecordingMedia::apply_store(img, *stores[i], stores[i]->len);
      }
      auto out = replay(rig.sb, img);
      ASSERT_EQ(w.state(out.data()), w.state(rig.media.base())) << "after commit " << t;
    }
  }
  EXPECT_GE(checkpoints, 3);
  EXPECT_EQ(j.commits(), 400u);
  auto out = replay(rig.sb, rig.media.image());
  EXPECT_EQ(w.state(out.data()), w.state(rig.media.base()));
}

TEST(Journal, TransactionLargerThanTheJournalFailsWithFileTooLarge) {
  Rig rig;
  Journal j(rig.media, rig.sb);
  ASSERT_TRUE(j.replay());
  Transaction tx;
  std::vector<std::byte> blk(kBlockSize, std::byte{1});
  for (uint64_t b = 0; tx.encoded_size() <= j.max_tx_bytes(); ++b) tx.write(rig.meta(b), blk.data(), blk.size());
  rig.media.clear_log();
  auto st = j.commit(tx);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, std::errc::file_too_large);
  for (const auto& op : rig.media.log()) EXPECT_FALSE(op.is_store());
  // A transaction of exactly max_tx_bytes still fits.
  Transaction fits;
  size_t room = j.max_tx_bytes() - 32 - 16;
  std::vector<std::byte> big(room, std::byte{2});
  fits.write(rig.meta(0), big.data(), big.size());
  ASSERT_EQ(fits.encoded_size(), j.max_tx_bytes());
  EXPECT_TRUE(j.commit(fits));
}

}  // namespace
}  // namespace poisonfs
