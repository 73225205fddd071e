// mkfs.poisonfs: lays a new, empty poisonfs on an image file (created when
// missing, sized and allocated here) or on a block device. A thin front-end
// over Filesystem::format; every check that could refuse the request runs
// before the image is touched, so a refused mkfs never changes a file.
//
//   mkfs.poisonfs [-f] [-L LABEL] [-N INODES] [-J SIZE] [--no-checksums] IMAGE SIZE
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "media/image_lock.h"
#include "poisonfs/filesystem.h"
#include "poisonfs/media.h"

namespace poisonfs {
namespace {

constexpr const char* kTool = "mkfs.poisonfs";
constexpr uint64_t kMinSize = 1ull << 20;  // below this no layout holds its metadata
constexpr char kMagic[8] = {'P', 'O', 'I', 'S', 'O', 'N', 'F', 'S'};

struct Options {
  bool force = false;
  std::string label;
  uint64_t inode_count = 0;
  uint64_t journal_bytes = 0;  // 0: the default
  bool data_checksums = true;
  std::string image;
  std::optional<std::string> size_text;
};

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", kTool, message.c_str());
  std::exit(1);
}

// Usage errors print one error line and this synopsis; -h prints the help.
void usage(FILE* out) {
  std::fprintf(out, "usage: %s [-f] [-L LABEL] [-N INODES] [-J SIZE] [--no-checksums] IMAGE SIZE\n", kTool);
  if (out == stderr) return;
  std::fprintf(out,
               "  SIZE   bytes, or with a binary suffix K, M, G, T (e.g. 256M)\n"
               "         (optional for a block device: its size is used)\n"
               "  -f     overwrite an existing poisonfs filesystem\n"
               "  -L     volume label\n"
               "  -N     number of inodes (default: derived from the size)\n"
               "  -J     journal size, 256K .. 64M (default: 1/32 of the device, at least\n"
               "         256K)\n"
               "  --no-checksums\n"
               "         no crc32c per data block (no silent-corruption detection, no\n"
               "         healing of every sharer by one recovery write)\n");
}

Options parse_args(int argc, char** argv) {
  Options opt;
  static const option kLong[] = {{"force", no_argument, nullptr, 'f'},
                                 {"label", required_argument, nullptr, 'L'},
                                 {"inodes", required_argument, nullptr, 'N'},
                                 {"journal-size", required_argument, nullptr, 'J'},
                                 {"no-checksums", no_argument, nullptr, 'C'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {nullptr, 0, nullptr, 0}};
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "+:fL:N:J:h", kLong, nullptr)) != -1) {
    switch (c) {
      case 'f':
        opt.force = true;
        break;
      case 'L':
        opt.label = optarg;
        if (opt.label.size() > 63) die("label '" + opt.label + "' is longer than 63 bytes");
        break;
      case 'N': {
        char* end = nullptr;
        errno = 0;
        unsigned long long n = std::strtoull(optarg, &end, 10);
        if (errno != 0 || end == optarg || *end != '\0' || n == 0 || optarg[0] == '-') {
          die(std::string("invalid inode count '") + optarg + "'");
        }
        opt.inode_count = n;
        break;
      }
      case 'J': {
        // Checked here, before the image is created or changed.
        auto bytes = parse_size(optarg);
        if (!bytes) die(std::string("invalid journal size '") + optarg + "'");
        if (*bytes < kMinJournalBytes || *bytes > kMaxJournalBytes)
          die(std::string("journal size ") + optarg + " is outside 256K .. 64M");
        opt.journal_bytes = *bytes;
        break;
      }
      case 'C':
        opt.data_checksums = false;
        break;
      case 'h':
        usage(stdout);
        std::exit(0);
      case ':':
        std::fprintf(stderr, "%s: option '%s' needs an argument\n", kTool, argv[optind - 1]);
        usage(stderr);
        std::exit(1);
      default:
        if (optopt != 0) {
          std::fprintf(stderr, "%s: unknown option '-%c'\n", kTool, optopt);
        } else {
          std::fprintf(stderr, "%s: unknown option '%s'\n", kTool, argv[optind - 1]);
        }
        usage(stderr);
        std::exit(1);
    }
  }
  int rest = argc - optind;
  if (rest < 1 || rest > 2) {
    std::fprintf(stderr, "%s: expected IMAGE and SIZE\n", kTool);
    usage(stderr);
    std::exit(1);
  }
  opt.image = argv[optind];
  if (rest == 2) opt.size_text = argv[optind + 1];
  if (opt.image.empty()) die("IMAGE must not be empty");
  return opt;
}

// Parses SIZE and rejects values no layout can hold, before anything is
// opened, so that a bad SIZE never creates or changes a file.
uint64_t validated_size(const std::string& text) {
  auto size = parse_size(text);
  if (!size) {
    die("invalid size '" + text + "': expected a byte count or a number with K, M, G or T");
  }
  if (*size < kMinSize) {
    die("size " + text + " (" + std::to_string(*size) + " bytes) is too small: at least " +
        human_bytes(kMinSize) + " is needed to hold the metadata");
  }
  if (*size % kBlockSize != 0) {
    die("size " + text + " is not a multiple of the block size (" + std::to_string(kBlockSize) +
        " bytes)");
  }
  return *size;
}

bool has_magic(int fd) {
  char head[sizeof kMagic];
  ssize_t n = pread(fd, head, sizeof head, 0);
  return n == static_cast<ssize_t>(sizeof head) && std::memcmp(head, kMagic, sizeof kMagic) == 0;
}

// Opens (or creates) the target, refuses an in-use or existing filesystem
// and gives a regular file its length and its pages. Returns the final size.
// On return the file is closed, so that open_pmem_media can take its lock.
uint64_t prepare_target(const Options& opt, bool* created) {
  struct stat st {};
  bool exists = stat(opt.image.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) die(opt.image + ": " + std::strerror(errno));
  if (exists && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    die(opt.image + ": not a regular file or a block device");
  }
  bool block_device = exists && S_ISBLK(st.st_mode);
  uint64_t size = 0;
  if (opt.size_text) {
    size = validated_size(*opt.size_text);
  } else if (!block_device) {
    die("SIZE is required for an image file (e.g. " + opt.image + " 256M)");
  }

  int flags = O_RDWR | O_CLOEXEC | (exists ? 0 : O_CREAT | O_EXCL);
  // 0600: the image holds every file's bytes; permissions inside the
  // filesystem mean nothing to a reader of the image itself.
  int fd = open(opt.image.c_str(), flags, 0600);
  if (fd < 0) die(opt.image + ": cannot open: " + std::strerror(errno));
  *created = !exists;
  auto fail = [&](const std::string& message) {
    close(fd);
    if (*created) unlink(opt.image.c_str());
    die(message);
  };
  // A mounted image holds an exclusive flock (media/image_lock.h).
  if (lock_image(fd, opt.image, LOCK_EX) != 0) {
    fail(opt.image + " is in use (mounted?); unmount it first");
  }
  if (exists && !opt.force && has_magic(fd)) {
    fail(opt.image + " already holds a poisonfs filesystem; use -f to overwrite");
  }
  if (block_device) {
    uint64_t dev_bytes = 0;
    if (ioctl(fd, BLKGETSIZE64, &dev_bytes) != 0) {
      fail(opt.image + ": cannot read the device size: " + std::strerror(errno));
    }
    if (opt.size_text && size > dev_bytes) {
      fail(opt.image + ": size " + *opt.size_text + " is larger than the device (" +
           std::to_string(dev_bytes) + " bytes)");
    }
    if (dev_bytes < kMinSize) fail(opt.image + ": device too small");
    size = dev_bytes;
  } else {
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      fail(opt.image + ": cannot set the length to " + std::to_string(size) + ": " +
           std::strerror(errno));
    }
    // Allocating now spares the first write through the mapping a fault that
    // also has to find a page (see DESIGN.md, "Page faults").
    int rc = posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL && rc != ENOSYS) {
      fail(opt.image + ": cannot allocate " + human_bytes(size) + ": " + std::strerror(rc));
    }
  }
  close(fd);
  return size;
}

void print_summary(const std::string& image, const FsInfo& info) {
  std::printf("%s: poisonfs version %u, %s (%" PRIu64 " bytes)\n", image.c_str(), info.version,
              human_bytes(info.device_bytes).c_str(), info.device_bytes);
  std::printf("  blocks:      %" PRIu64 " of %" PRIu64 " bytes\n", info.total_blocks,
              info.block_size);
  std::printf("  journal:     %" PRIu64 " blocks (%s) at block %" PRIu64 "\n", info.journal_blocks,
              human_bytes(info.journal_blocks * info.block_size).c_str(), info.journal_start);
  std::printf("  inodes:      %" PRIu64 " in %" PRIu64 " blocks at block %" PRIu64 "\n",
              info.inode_count, info.inode_blocks, info.inode_start);
  if (info.data_checksums)
    std::printf("  checksums:   %" PRIu64 " blocks at block %" PRIu64 " (crc32c per data block)\n", info.csum_blocks,
                info.csum_start);
  else
    std::printf("  checksums:   none\n");
  std::printf("  data:        %" PRIu64 " blocks (%s) at block %" PRIu64 ", %" PRIu64 " free\n",
              info.data_blocks, human_bytes(info.data_blocks * info.block_size).c_str(),
              info.data_start, info.free_blocks);
  std::printf("  uuid:        %s\n", info.uuid.c_str());
}

int run(int argc, char** argv) {
  Options opt = parse_args(argc, argv);
  bool created = false;
  prepare_target(opt, &created);
  auto undo_create = [&] {
    if (created) unlink(opt.image.c_str());
  };

  auto media = open_pmem_media(opt.image, MapMode::kShared);
  if (!media) {
    undo_create();
    die(opt.image + ": " + media.error().to_string());
  }
  MkfsOptions mkfs;
  mkfs.inode_count = opt.inode_count;
  mkfs.label = opt.label;
  mkfs.data_checksums = opt.data_checksums;
  mkfs.journal_bytes = opt.journal_bytes;
  // Like mke2fs: the root directory belongs to whoever makes the filesystem.
  mkfs.root_uid = getuid();
  mkfs.root_gid = getgid();
  if (auto st = Filesystem::format(**media, mkfs); !st) {
    undo_create();
    die(opt.image + ": cannot format: " + st.error().to_string());
  }
  media->reset();  // unmaps and drops the lock before the check mount below

  // Mounting the result proves it and gives the figures to print.
  auto fs = Filesystem::mount_image(opt.image, OpenOptions{MapMode::kPrivate});
  if (!fs) die(opt.image + ": the new filesystem does not mount: " + fs.error().to_string());
  print_summary(opt.image, (*fs)->info());
  return 0;
}

}  // namespace
}  // namespace poisonfs

int main(int argc, char** argv) {
  try {
    return poisonfs::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", poisonfs::kTool, e.what());
    return 1;
  }
}
