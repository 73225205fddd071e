// Sizes typed by users (parse_size: mkfs.poisonfs SIZE, poisonctl offsets and
// lengths) and sizes shown to them (human_bytes).
#include <gtest/gtest.h>

#include <cstdint>

#include "poisonfs/filesystem.h"

namespace poisonfs {
namespace {

TEST(ParseSize, TakesByteCountsAndBinarySuffixes) {
  EXPECT_EQ(parse_size("0").value(), 0u);
  EXPECT_EQ(parse_size("4096").value(), 4096u);
  EXPECT_EQ(parse_size("64K").value(), 64u << 10);
  EXPECT_EQ(parse_size("64k").value(), 64u << 10);
  EXPECT_EQ(parse_size("16M").value(), 16u << 20);
  EXPECT_EQ(parse_size("1G").value(), uint64_t{1} << 30);
  EXPECT_EQ(parse_size("2T").value(), uint64_t{2} << 40);
  EXPECT_EQ(parse_size("3MB").value(), 3u << 20);
  EXPECT_EQ(parse_size("3Mi").value(), 3u << 20);
  EXPECT_EQ(parse_size("18446744073709551615").value(), UINT64_MAX);
  EXPECT_EQ(parse_size("16777215T").value(), uint64_t{16777215} << 40);
}

TEST(ParseSize, RefusesWhatIsNotASize) {
  for (const char* bad : {"", "K", "-1", "+1", " 1", "1 ", "1X", "1KiB", "1.5G", "0x10", "16777216T",
                          "18446744073709551616", "99999999999999999999K"}) {
    auto got = parse_size(bad);
    ASSERT_FALSE(got.has_value()) << "'" << bad << "' gave " << *got;
    EXPECT_EQ(got.error().code, std::errc::invalid_argument) << bad;
    EXPECT_NE(got.error().to_string().find("invalid size"), std::string::npos) << got.error().to_string();
  }
}

TEST(HumanBytes, BytesUpToAKibibyteThenOneDecimal) {
  EXPECT_EQ(human_bytes(0), "0 B");
  EXPECT_EQ(human_bytes(1023), "1023 B");
  EXPECT_EQ(human_bytes(1024), "1.0 KiB");
  EXPECT_EQ(human_bytes(1536), "1.5 KiB");
  EXPECT_EQ(human_bytes(uint64_t{3} << 30), "3.0 GiB");
  EXPECT_EQ(human_bytes(uint64_t{5} << 40), "5.0 TiB");
  EXPECT_EQ(human_bytes(UINT64_MAX), "16384.0 PiB");  // PiB is the largest unit
}

}  // namespace
}  // namespace poisonfs
