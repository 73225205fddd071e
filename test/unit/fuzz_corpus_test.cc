// Runs every input of the fuzz corpus (test/fuzz/corpus/) and every
// reproducer of a past finding (test/fuzz/regressions/) once through the
// image harness (test/fuzz/image_harness.h): mutated images must fsck and
// mount to clean errors. Under the ASan+UBSan build this is the fuzzer's
// check without libFuzzer; scripts/fuzz.sh does the fuzzing itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/image_harness.h"

namespace poisonfs {
namespace {

std::vector<std::filesystem::path> inputs(const std::string& subdir) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(POISONFS_FUZZ_DIR) + "/" + subdir))
    if (entry.is_regular_file() && entry.path().filename().string()[0] != '.') files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

void run_all(const std::string& subdir) {
  auto files = inputs(subdir);
  for (const auto& path : files) {
    SCOPED_TRACE(path.string());
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    fuzz::run_image_input(bytes.data(), bytes.size());
  }
}

TEST(FuzzCorpus, SeedImageIsBuilt) {
  EXPECT_EQ(fuzz::seed_image_bytes().size(), 1u << 20);
}

TEST(FuzzCorpus, EveryCorpusInputEndsCleanly) {
  ASSERT_FALSE(inputs("corpus").empty());
  run_all("corpus");
}

TEST(FuzzCorpus, EveryRegressionInputEndsCleanly) { run_all("regressions"); }

}  // namespace
}  // namespace poisonfs
