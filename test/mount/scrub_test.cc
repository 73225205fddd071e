// `poisonctl scrub` through a real mount (POISONFS_IOC_SCRUB) and offline on
// the unmounted image: latent poison injected into a file's data is found,
// becomes known (badblocks, the file's poison); the JSON report; an
// unprivileged caller gets EPERM.
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

#include "mount/mount_fixture.h"

namespace poisonfs::test {
namespace {

constexpr uint64_t kBlock = 4096;

// The number after "key": in a flat JSON text (first occurrence).
uint64_t json_num(const std::string& text, const std::string& key) {
  size_t at = text.find("\"" + key + "\":");
  if (at == std::string::npos) {
    ADD_FAILURE() << "no " << key << " in " << text;
    return UINT64_MAX;
  }
  return std::stoull(text.substr(at + key.size() + 3));
}

class ScrubTest : public MountTest {
 protected:
  RunResult ctl(const std::string& args, int timeout_s = 60) {
    return run(sh_quote(bin("poisonctl")) + " " + args, timeout_s);
  }
  std::string q(const std::string& s) { return sh_quote(s); }
  void write_file(const std::string& p, size_t n) {
    std::ofstream out(p, std::ios::binary);
    out << std::string(n, 'd');
    out.close();
    ASSERT_TRUE(out.good());
  }
  // Device offset of the file's byte 0 (the file is one extent).
  uint64_t physical(const std::string& file) {
    RunResult r = ctl("bmap --json " + q(file));
    EXPECT_EQ(r.exit_code, 0) << r.both();
    return r.exit_code == 0 ? json_num(r.out, "physical") : 0;
  }
};

TEST_F(ScrubTest, LatentPoisonInAFileBecomesKnown) {
  const std::string f = path("f");
  ASSERT_NO_FATAL_FAILURE(write_file(f, 8 * kBlock));
  const uint64_t p = physical(f) + 5 * kBlock + 64;
  RunResult inj = ctl("inject " + q(mnt()) + " " + std::to_string(p) + " 64 --latent");
  ASSERT_EQ(inj.exit_code, 0) << inj.both();
  ASSERT_EQ(ctl("badblocks --bytes " + q(mnt())).out, std::to_string(p) + " 64 latent\n");

  RunResult s = ctl("scrub --json " + q(mnt()));
  ASSERT_EQ(s.exit_code, 0) << s.both();
  EXPECT_GE(json_num(s.out, "latent_found"), 1u) << s.out;
  EXPECT_GE(json_num(s.out, "ranges_notified"), 1u) << s.out;
  EXPECT_GE(json_num(s.out, "bytes_scanned"), 8 * kBlock) << s.out;
  EXPECT_EQ(json_num(s.out, "known_poison_bytes"), 64u) << s.out;
  EXPECT_NE(s.out.find("\"silent_corruption_checked\": true"), std::string::npos) << s.out;
  EXPECT_EQ(json_num(s.out, "silent_corruption"), 0u) << s.out;
  EXPECT_GE(json_num(s.out, "blocks_verified"), 7u) << s.out;  // the poisoned block is skipped

  EXPECT_EQ(ctl("badblocks --bytes " + q(mnt())).out, std::to_string(p) + " 64\n");
  RunResult fp = ctl("poison --json " + q(f));
  ASSERT_EQ(fp.exit_code, 0) << fp.both();
  EXPECT_EQ(json_num(fp.out, "file_offset"), 5 * kBlock + 64) << fp.out;
  EXPECT_EQ(json_num(fp.out, "length"), 64u) << fp.out;

  // The human summary (not a terminal: no progress bar).
  RunResult h = ctl("scrub " + q(mnt()));
  ASSERT_EQ(h.exit_code, 0) << h.both();
  EXPECT_NE(h.out.find("silent corruption:"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("0 block(s) not matching their checksum"), std::string::npos) << h.out;
  EXPECT_EQ(h.err, "");
}

TEST_F(ScrubTest, UnprivilegedCallerGetsEperm) {
  RunResult r = run("setpriv --reuid=65534 --regid=65534 --clear-groups " + sh_quote(bin("poisonctl")) +
                    " scrub " + q(mnt()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("EPERM"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("only root and the user who mounted may scrub"), std::string::npos) << r.err;
}

TEST_F(ScrubTest, OfflineImageScrubClearsQuarantine) {
  const std::string f = path("f");
  ASSERT_NO_FATAL_FAILURE(write_file(f, 4 * kBlock));
  const uint64_t p = physical(f) + kBlock;
  // Known poison in the file, then the file is removed: its block is
  // quarantined free space, on the list kept beside the image.
  RunResult inj = ctl("inject " + q(mnt()) + " " + std::to_string(p) + " 64");
  ASSERT_EQ(inj.exit_code, 0) << inj.both();
  ASSERT_EQ(unlink(f.c_str()), 0);
  ASSERT_NO_FATAL_FAILURE(unmount());
  RunResult st = ctl("status --json " + q(image()));
  ASSERT_EQ(st.exit_code, 0) << st.both();
  EXPECT_EQ(json_num(st.out, "quarantined_bytes"), kBlock) << st.out;

  RunResult s = ctl("scrub --json " + q(image()));
  ASSERT_EQ(s.exit_code, 0) << s.both();
  EXPECT_NE(s.out.find("\"source\": \"image\""), std::string::npos) << s.out;
  EXPECT_EQ(json_num(s.out, "quarantine_cleared_bytes"), kBlock) << s.out;
  EXPECT_EQ(ctl("badblocks --bytes " + q(image())).out, "");
  st = ctl("status --json " + q(image()));
  EXPECT_EQ(json_num(st.out, "quarantined_bytes"), 0u) << st.out;
  RunResult fsck = run(sh_quote(bin("fsck.poisonfs")) + " -n " + q(image()));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.both();
  ASSERT_NO_FATAL_FAILURE(mount());
}


// The daemon serves requests on one thread; a scrub runs on its background
// worker instead, so the mount goes on answering while a device with 1 GiB
// of data is scrubbed: no statfs (which always reaches the daemon) waits for
// the scrub. On the session thread one statfs would wait for all of it.
class BigScrubTest : public ScrubTest {
 protected:
  std::string image_size() const override { return "1536M"; }
};

TEST_F(BigScrubTest, TheMountIsServedWhileAScrubRuns) {
  {
    std::ofstream out(path("big"), std::ios::binary);
    std::string mib(1 << 20, 'x');
    for (int i = 0; i < 1024; ++i) out << mib;
    out.close();
    ASSERT_TRUE(out.good());
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::freopen("/dev/null", "w", stdout);
    const std::string ctl_bin = bin("poisonctl");
    execl(ctl_bin.c_str(), "poisonctl", "scrub", mnt().c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  Clock::duration slowest{};
  int status = 0;
  while (waitpid(child, &status, WNOHANG) == 0) {
    struct statvfs sv {};
    const auto t0 = Clock::now();
    ASSERT_EQ(statvfs(mnt().c_str(), &sv), 0);
    slowest = std::max(slowest, Clock::now() - t0);
  }
  const auto scrub = Clock::now() - start;
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto ms = [](Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  if (scrub < std::chrono::milliseconds(40)) GTEST_SKIP() << "the scrub took only " << ms(scrub) << " ms";
  EXPECT_LT(slowest, scrub / 2) << "slowest statfs " << ms(slowest) << " ms, scrub " << ms(scrub) << " ms";
  RecordProperty("scrub_ms", static_cast<int>(ms(scrub)));
  RecordProperty("slowest_statfs_ms", static_cast<int>(ms(slowest)));
}

}  // namespace
}  // namespace poisonfs::test
