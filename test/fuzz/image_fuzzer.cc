// libFuzzer entry point of the image harness (image_harness.h). Built only
// with -DPOISONFS_FUZZ=ON and clang; run it with scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>

#include "image_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  poisonfs::fuzz::run_image_input(data, size);
  return 0;
}
