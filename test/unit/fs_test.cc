// Tests of the filesystem core through the public Filesystem API on an
// in-memory device: directory operations and their POSIX error codes,
// rename in all its forms, hard links, setgid inheritance, the lifetime of
// unlinked open files, readdir cookies, xattrs, symlinks, truncate, sparse
// files, fallocate modes, what writers drop (setuid, setgid, file
// capabilities), running out of space, and a long random run of
// data operations against a model of every file's bytes, with remounts
// (clean and crashed) along the way and a clean fsck at the end.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "format/layout.h"  // kMaxFileSize
#include "fs/acl.h"
#include "poisonfs/filesystem.h"
#include "unit/recording_media.h"
#include "unit/test_device.h"

namespace poisonfs {
namespace {

const Caller kUser{1000, 1000, 022};

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s)); }

std::string pattern(size_t len, unsigned seed) {
  std::string s(len, '\0');
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<char>('A' + (i * 7 + seed) % 53);
  return s;
}

// A TestDevice (test_device.h) of 64 MiB unless told otherwise.
class Device : public testing::TestDevice {
 public:
  explicit Device(uint64_t size = 64 << 20, MkfsOptions mkfs = {}) : TestDevice(size, mkfs) {}
};

std::string read_all(Filesystem& fs, Ino ino) {
  auto attr = fs.getattr(ino);
  EXPECT_TRUE(attr);
  std::string out(attr ? attr->size + 100 : 0, '\0');
  auto got = fs.read_copy(ino, 0, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(got);
  out.resize(got.value_or(0));
  return out;
}

std::string read_range(Filesystem& fs, Ino ino, uint64_t off, size_t len) {
  std::string out(len, '\0');
  auto got = fs.read_copy(ino, off, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(got);
  out.resize(got.value_or(0));
  return out;
}

Ino create(Filesystem& fs, Ino dir, std::string_view name, uint32_t mode = S_IFREG | 0644) {
  auto a = fs.mknod(dir, name, mode, 0, kUser);
  EXPECT_TRUE(a) << name << ": " << (a ? "" : a.error().to_string());
  return a ? a->ino : 0;
}

Ino make_dir(Filesystem& fs, Ino dir, std::string_view name) {
  auto a = fs.mkdir(dir, name, 0755, kUser);
  EXPECT_TRUE(a) << name << ": " << (a ? "" : a.error().to_string());
  return a ? a->ino : 0;
}

void write_str(Filesystem& fs, Ino ino, uint64_t off, std::string_view s) {
  auto n = fs.write(ino, off, bytes(s));
  ASSERT_TRUE(n) << n.error().to_string();
  ASSERT_EQ(*n, s.size());
}

template <class T>
std::errc err(const Result<T>& r) {
  EXPECT_FALSE(r) << "expected an error";
  return r ? std::errc{} : r.error().code;
}

std::map<std::string, Ino> list_dir(Filesystem& fs, Ino dir) {
  std::map<std::string, Ino> out;
  auto st = fs.readdir(dir, 0, [&](const DirEntry& e) {
    EXPECT_TRUE(out.emplace(std::string(e.name), e.ino).second) << "listed twice: " << e.name;
    return true;
  });
  EXPECT_TRUE(st);
  return out;
}

uint64_t free_blocks(Filesystem& fs) { return fs.statfs().blocks_free; }

// ---------------------------------------------------------------- namespace

TEST(FsNamespace, CreateLookupUnlink) {
  Device fs;
  Ino f = create(*fs, kRootIno, "file");
  auto a = fs->lookup(kRootIno, "file");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->ino, f);
  EXPECT_EQ(a->mode, S_IFREG | 0644u);
  EXPECT_EQ(a->nlink, 1u);
  EXPECT_EQ(a->uid, 1000u);
  EXPECT_EQ(a->gid, 1000u);
  EXPECT_EQ(a->size, 0u);
  EXPECT_EQ(err(fs->lookup(kRootIno, "nope")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->mknod(kRootIno, "file", S_IFREG | 0644, 0, kUser)), std::errc::file_exists);
  EXPECT_EQ(err(fs->mkdir(kRootIno, "file", 0755, kUser)), std::errc::file_exists);
  EXPECT_EQ(err(fs->mknod(f, "x", S_IFREG | 0644, 0, kUser)), std::errc::not_a_directory);
  EXPECT_EQ(err(fs->lookup(f, "x")), std::errc::not_a_directory);
  EXPECT_EQ(err(fs->mknod(9999, "x", S_IFREG | 0644, 0, kUser)), std::errc::no_such_file_or_directory);
  ASSERT_TRUE(fs->unlink(kRootIno, "file"));
  EXPECT_EQ(err(fs->lookup(kRootIno, "file")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->unlink(kRootIno, "file")), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsNamespace, DotAndDotDotResolve) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  Ino e = make_dir(*fs, d, "e");
  EXPECT_EQ(fs->lookup(e, "..")->ino, d);
  EXPECT_EQ(fs->lookup(e, ".")->ino, e);
  EXPECT_EQ(fs->lookup(kRootIno, "..")->ino, kRootIno);
  EXPECT_EQ(err(fs->mknod(d, ".", S_IFREG, 0, kUser)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->mkdir(d, "..", 0755, kUser)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->mknod(d, "", S_IFREG, 0, kUser)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->mknod(d, "a/b", S_IFREG, 0, kUser)), std::errc::invalid_argument);
}

TEST(FsNamespace, NamesOf255BytesWorkAnd256AreTooLong) {
  Device fs;
  const std::string n255(255, 'a'), n256(256, 'b');
  Ino d = make_dir(*fs, kRootIno, "d");
  Ino f = create(*fs, d, n255);
  EXPECT_EQ(fs->lookup(d, n255)->ino, f);
  EXPECT_EQ(list_dir(*fs, d).count(n255), 1u);
  EXPECT_EQ(err(fs->mknod(d, n256, S_IFREG | 0644, 0, kUser)), std::errc::filename_too_long);
  EXPECT_EQ(err(fs->mkdir(d, n256, 0755, kUser)), std::errc::filename_too_long);
  EXPECT_EQ(err(fs->symlink(d, n256, "t", kUser)), std::errc::filename_too_long);
  EXPECT_EQ(err(fs->lookup(d, n256)), std::errc::filename_too_long);
  EXPECT_EQ(err(fs->link(f, d, n256)), std::errc::filename_too_long);
  EXPECT_EQ(err(fs->rename(d, n255, d, n256, 0)), std::errc::filename_too_long);
  // Odd bytes are fine in names.
  const std::string odd = "\x01\x7f\xff sp\tace\xc3\xa9";
  Ino o = create(*fs, d, odd);
  fs.remount();
  EXPECT_EQ(fs->lookup(d, n255)->ino, f);
  EXPECT_EQ(fs->lookup(d, odd)->ino, o);
}

TEST(FsNamespace, RmdirAndUnlinkRefuseTheWrongKind) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  create(*fs, d, "f");
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 3u);
  EXPECT_EQ(err(fs->rmdir(kRootIno, "d")), std::errc::directory_not_empty);
  EXPECT_EQ(err(fs->rmdir(d, "f")), std::errc::not_a_directory);
  EXPECT_EQ(err(fs->unlink(kRootIno, "d")), std::errc::is_a_directory);
  EXPECT_EQ(err(fs->rmdir(kRootIno, "missing")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->rmdir(d, ".")), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->rmdir(d, "..")), std::errc::directory_not_empty);
  ASSERT_TRUE(fs->unlink(d, "f"));
  ASSERT_TRUE(fs->rmdir(kRootIno, "d"));
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 2u);
  EXPECT_EQ(err(fs->getattr(d)), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsNamespace, NewDirectoryHasTwoLinksAndItsParentOneMore) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  auto a = fs->getattr(d);
  EXPECT_EQ(a->nlink, 2u);
  EXPECT_EQ(a->mode, S_IFDIR | 0755u);
  make_dir(*fs, d, "x");
  make_dir(*fs, d, "y");
  EXPECT_EQ(fs->getattr(d)->nlink, 4u);
  fs.remount();
  EXPECT_EQ(fs->getattr(d)->nlink, 4u);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsNamespace, CreatingInARemovedDirectoryFails) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  ASSERT_TRUE(fs->open(d));
  ASSERT_TRUE(fs->rmdir(kRootIno, "d"));
  EXPECT_EQ(err(fs->mknod(d, "x", S_IFREG | 0644, 0, kUser)), std::errc::no_such_file_or_directory);
  ASSERT_TRUE(fs->release(d));
}

// ---------------------------------------------------------------- rename

TEST(FsRename, MovesWithinAndAcrossDirectories) {
  Device fs;
  Ino a = make_dir(*fs, kRootIno, "a");
  Ino b = make_dir(*fs, kRootIno, "b");
  Ino f = create(*fs, a, "f");
  write_str(*fs, f, 0, "content");
  ASSERT_TRUE(fs->rename(a, "f", a, "g", 0));
  EXPECT_EQ(err(fs->lookup(a, "f")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(fs->lookup(a, "g")->ino, f);
  ASSERT_TRUE(fs->rename(a, "g", b, "h", 0));
  EXPECT_EQ(fs->lookup(b, "h")->ino, f);
  EXPECT_TRUE(list_dir(*fs, a).size() == 2);  // . and ..
  EXPECT_EQ(read_all(*fs, f), "content");
  EXPECT_EQ(err(fs->rename(a, "missing", b, "x", 0)), std::errc::no_such_file_or_directory);
  fs.remount();
  EXPECT_EQ(fs->lookup(b, "h")->ino, f);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, DirectoryMoveUpdatesDotDotAndParentLinks) {
  Device fs;
  Ino a = make_dir(*fs, kRootIno, "a");
  Ino b = make_dir(*fs, kRootIno, "b");
  Ino d = make_dir(*fs, a, "d");
  EXPECT_EQ(fs->getattr(a)->nlink, 3u);
  ASSERT_TRUE(fs->rename(a, "d", b, "d", 0));
  EXPECT_EQ(fs->getattr(a)->nlink, 2u);
  EXPECT_EQ(fs->getattr(b)->nlink, 3u);
  EXPECT_EQ(fs->lookup(d, "..")->ino, b);
  fs.remount();
  EXPECT_EQ(fs->lookup(d, "..")->ino, b);
  EXPECT_EQ(fs->getattr(b)->nlink, 3u);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, ReplacesAFileAndFreesIt) {
  Device fs;
  Ino src = create(*fs, kRootIno, "src");
  write_str(*fs, src, 0, "new");
  const uint64_t free0 = free_blocks(*fs);
  const uint64_t files0 = fs->statfs().files_free;
  Ino dst = create(*fs, kRootIno, "dst");
  write_str(*fs, dst, 0, std::string(100000, 'o'));
  ASSERT_TRUE(fs->rename(kRootIno, "src", kRootIno, "dst", 0));
  EXPECT_EQ(fs->lookup(kRootIno, "dst")->ino, src);
  EXPECT_EQ(err(fs->lookup(kRootIno, "src")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->getattr(dst)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(free_blocks(*fs), free0);
  EXPECT_EQ(fs->statfs().files_free, files0);
  EXPECT_EQ(read_all(*fs, src), "new");
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, ReplacementRulesForDirectories) {
  Device fs;
  Ino d1 = make_dir(*fs, kRootIno, "d1");
  Ino d2 = make_dir(*fs, kRootIno, "d2");
  Ino full = make_dir(*fs, kRootIno, "full");
  create(*fs, full, "x");
  create(*fs, kRootIno, "file");
  EXPECT_EQ(err(fs->rename(kRootIno, "d1", kRootIno, "full", 0)), std::errc::directory_not_empty);
  EXPECT_EQ(err(fs->rename(kRootIno, "d1", kRootIno, "file", 0)), std::errc::not_a_directory);
  EXPECT_EQ(err(fs->rename(kRootIno, "file", kRootIno, "d1", 0)), std::errc::is_a_directory);
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 5u);
  ASSERT_TRUE(fs->rename(kRootIno, "d1", kRootIno, "d2", 0));  // over an empty directory
  EXPECT_EQ(fs->lookup(kRootIno, "d2")->ino, d1);
  EXPECT_EQ(err(fs->getattr(d2)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 4u);
  fs.remount();
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 4u);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, NoReplaceRefusesAnExistingTarget) {
  Device fs;
  Ino a = create(*fs, kRootIno, "a");
  Ino b = create(*fs, kRootIno, "b");
  EXPECT_EQ(err(fs->rename(kRootIno, "a", kRootIno, "b", kRenameNoReplace)), std::errc::file_exists);
  EXPECT_EQ(fs->lookup(kRootIno, "a")->ino, a);
  EXPECT_EQ(fs->lookup(kRootIno, "b")->ino, b);
  ASSERT_TRUE(fs->rename(kRootIno, "a", kRootIno, "c", kRenameNoReplace));
  EXPECT_EQ(fs->lookup(kRootIno, "c")->ino, a);
  EXPECT_EQ(err(fs->rename(kRootIno, "c", kRootIno, "b", kRenameNoReplace | kRenameExchange)),
            std::errc::invalid_argument);
  EXPECT_EQ(err(fs->rename(kRootIno, "c", kRootIno, "b", 1u << 5)), std::errc::invalid_argument);
}

TEST(FsRename, ExchangeSwapsAFileAndADirectoryAcrossDirectories) {
  Device fs;
  Ino p = make_dir(*fs, kRootIno, "p");
  Ino q = make_dir(*fs, kRootIno, "q");
  Ino f = create(*fs, p, "f");
  Ino d = make_dir(*fs, q, "d");
  create(*fs, d, "inside");
  EXPECT_EQ(fs->getattr(p)->nlink, 2u);
  EXPECT_EQ(fs->getattr(q)->nlink, 3u);
  ASSERT_TRUE(fs->rename(p, "f", q, "d", kRenameExchange));
  EXPECT_EQ(fs->lookup(p, "f")->ino, d);
  EXPECT_EQ(fs->lookup(q, "d")->ino, f);
  EXPECT_EQ(fs->getattr(p)->nlink, 3u);  // p now holds the directory
  EXPECT_EQ(fs->getattr(q)->nlink, 2u);
  EXPECT_EQ(fs->lookup(d, "..")->ino, p);
  EXPECT_TRUE(fs->lookup(d, "inside"));
  EXPECT_EQ(err(fs->rename(p, "f", q, "missing", kRenameExchange)), std::errc::no_such_file_or_directory);
  fs.remount();
  EXPECT_EQ(fs->lookup(p, "f")->ino, d);
  EXPECT_EQ(fs->lookup(q, "d")->ino, f);
  EXPECT_EQ(fs->getattr(p)->nlink, 3u);
  EXPECT_EQ(fs->getattr(q)->nlink, 2u);
  EXPECT_EQ(fs->lookup(d, "..")->ino, p);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, ExchangeWithinOneDirectory) {
  Device fs;
  Ino a = create(*fs, kRootIno, "a");
  Ino b = make_dir(*fs, kRootIno, "b");
  ASSERT_TRUE(fs->rename(kRootIno, "a", kRootIno, "b", kRenameExchange));
  EXPECT_EQ(fs->lookup(kRootIno, "a")->ino, b);
  EXPECT_EQ(fs->lookup(kRootIno, "b")->ino, a);
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 3u);
  EXPECT_EQ(list_dir(*fs, kRootIno).size(), 4u);
  fs.remount();
  EXPECT_EQ(fs->lookup(kRootIno, "a")->ino, b);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, DirectoryCannotMoveUnderItself) {
  Device fs;
  Ino a = make_dir(*fs, kRootIno, "a");
  Ino b = make_dir(*fs, a, "b");
  Ino c = make_dir(*fs, b, "c");
  EXPECT_EQ(err(fs->rename(kRootIno, "a", a, "x", 0)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->rename(kRootIno, "a", c, "x", 0)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->rename(a, "b", c, "x", 0)), std::errc::invalid_argument);
  // Exchanging a directory with one of its descendants, either way round.
  EXPECT_EQ(err(fs->rename(kRootIno, "a", b, "c", kRenameExchange)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->rename(b, "c", kRootIno, "a", kRenameExchange)), std::errc::invalid_argument);
  EXPECT_EQ(fs->lookup(b, "c")->ino, c);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsRename, RenameOntoAnotherNameOfTheSameFileDoesNothing) {
  Device fs;
  Ino f = create(*fs, kRootIno, "a");
  ASSERT_TRUE(fs->link(f, kRootIno, "b"));
  ASSERT_TRUE(fs->rename(kRootIno, "a", kRootIno, "b", 0));
  EXPECT_EQ(fs->lookup(kRootIno, "a")->ino, f);
  EXPECT_EQ(fs->lookup(kRootIno, "b")->ino, f);
  EXPECT_EQ(fs->getattr(f)->nlink, 2u);
}

// ---------------------------------------------------------------- links

TEST(FsLinks, HardLinksShareDataAndCountNames) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  Ino f = create(*fs, kRootIno, "a");
  write_str(*fs, f, 0, "shared bytes");
  auto before = fs->getattr(f);
  auto l = fs->link(f, d, "b");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->ino, f);
  EXPECT_EQ(l->nlink, 2u);
  EXPECT_EQ(fs->getattr(d)->nlink, 2u);  // a file link adds no directory link
  EXPECT_EQ(err(fs->link(f, d, "b")), std::errc::file_exists);
  EXPECT_EQ(err(fs->link(d, kRootIno, "dirlink")), std::errc::operation_not_permitted);
  ASSERT_TRUE(fs->unlink(kRootIno, "a"));
  EXPECT_EQ(fs->getattr(f)->nlink, 1u);
  EXPECT_EQ(read_all(*fs, f), "shared bytes");
  fs.remount();
  EXPECT_EQ(fs->lookup(d, "b")->nlink, 1u);
  EXPECT_EQ(read_all(*fs, f), "shared bytes");
  (void)before;
  EXPECT_TRUE(fs.check().clean());
}

// nlink, ctime and size must be fresh right after link, unlink, rename and
// truncate (the FUSE adapter relies on it to choose attribute timeouts).
TEST(FsLinks, CtimeMovesOnLinkUnlinkRenameAndTruncate) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  auto age = [&] {  // sets ctime far into the past
    SetAttr set;
    set.valid = SetAttr::kCtime;
    set.ctime = {1, 0};
    ASSERT_TRUE(fs->setattr(f, set, kUser));
    ASSERT_EQ(fs->getattr(f)->ctime.sec, 1);
  };
  age();
  ASSERT_TRUE(fs->link(f, kRootIno, "g"));
  EXPECT_GT(fs->getattr(f)->ctime.sec, 1);
  age();
  ASSERT_TRUE(fs->unlink(kRootIno, "g"));
  EXPECT_GT(fs->getattr(f)->ctime.sec, 1);
  EXPECT_EQ(fs->getattr(f)->nlink, 1u);
  age();
  ASSERT_TRUE(fs->rename(kRootIno, "f", kRootIno, "h", 0));
  EXPECT_GT(fs->getattr(f)->ctime.sec, 1);
  age();
  SetAttr trunc;
  trunc.valid = SetAttr::kSize;
  trunc.size = 12345;
  ASSERT_TRUE(fs->setattr(f, trunc, kUser));
  auto a = fs->getattr(f);
  EXPECT_GT(a->ctime.sec, 1);
  EXPECT_GT(a->mtime.sec, 1);
  EXPECT_EQ(a->size, 12345u);
}

TEST(FsLinks, SymlinksStoreTheirTarget) {
  Device fs;
  auto l = fs->symlink(kRootIno, "l", "some/where/else", kUser);
  ASSERT_TRUE(l);
  EXPECT_TRUE(S_ISLNK(l->mode));
  EXPECT_EQ(l->size, 15u);
  EXPECT_EQ(*fs->readlink(l->ino), "some/where/else");
  const std::string longest(4095, 't');
  auto big = fs->symlink(kRootIno, "big", longest, kUser);
  ASSERT_TRUE(big);
  EXPECT_EQ(*fs->readlink(big->ino), longest);
  EXPECT_EQ(err(fs->symlink(kRootIno, "huge", std::string(4096, 't'), kUser)), std::errc::filename_too_long);
  EXPECT_EQ(err(fs->symlink(kRootIno, "empty", "", kUser)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->symlink(kRootIno, "l", "x", kUser)), std::errc::file_exists);
  Ino f = create(*fs, kRootIno, "f");
  EXPECT_EQ(err(fs->readlink(f)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->write(l->ino, 0, bytes("x"))), std::errc::invalid_argument);
  fs.remount();
  EXPECT_EQ(*fs->readlink(l->ino), "some/where/else");
  EXPECT_EQ(*fs->readlink(big->ino), longest);
  ASSERT_TRUE(fs->unlink(kRootIno, "big"));
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsLinks, SetgidDirectoryPassesItsGroupOn) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "shared");
  SetAttr set;
  set.valid = SetAttr::kMode | SetAttr::kGid;
  set.mode = 02775;
  set.gid = 500;
  ASSERT_TRUE(fs->setattr(d, set, Caller{}));
  auto f = fs->mknod(d, "f", S_IFREG | 0644, 0, kUser);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->gid, 500u);
  EXPECT_EQ(f->uid, 1000u);
  auto sub = fs->mkdir(d, "sub", 0755, kUser);
  ASSERT_TRUE(sub);
  EXPECT_EQ(sub->gid, 500u);
  EXPECT_TRUE(sub->mode & S_ISGID);
  auto deeper = fs->mknod(sub->ino, "g", S_IFREG | 0644, 0, kUser);
  EXPECT_EQ(deeper->gid, 500u);
  // Without setgid the caller's group is used.
  Ino plain = make_dir(*fs, kRootIno, "plain");
  EXPECT_EQ(fs->mknod(plain, "h", S_IFREG | 0644, 0, kUser)->gid, 1000u);
  fs.remount();
  EXPECT_EQ(fs->getattr(f->ino)->gid, 500u);
}

// ---------------------------------------------------------------- times

// Compared and printed as a pair by gtest.
std::pair<int64_t, int64_t> sec_nsec(const Timespec& t) { return {t.sec, t.nsec}; }

// Times are int64 nanoseconds on media: before the epoch, nsec stays in
// [0, 1e9) (the sec is floored), and a time outside 1677-09-21 .. 2262-04-11
// comes back as the nearest end of that range, never wrapped.
TEST(FsTimes, BeforeTheEpochRoundTripAndOutOfRangeClamps) {
  Device fs;
  const Timespec kMax{9'223'372'036, 854'775'807}, kMin{-9'223'372'037, 145'224'192};
  struct Case {
    Timespec set, want;
  };
  const std::vector<Case> cases = {
      {{-1, 999'999'995}, {-1, 999'999'995}},  // -5 ns
      {{-2, 500'000'000}, {-2, 500'000'000}},  // -1.5 s
      {{-1, 500'000'000}, {-1, 500'000'000}},  // 1969-12-31 23:59:59.5
      {{0, -5}, {-1, 999'999'995}},            // an unnormalized -5 ns
      {{int64_t{1} << 34, 0}, kMax},           // 2514
      {{10'413'792'000, 0}, kMax},             // 2300-01-01
      {{-11'676'096'000, 0}, kMin},            // 1600-01-01
      {kMax, kMax},
      {kMin, kMin},
      {{std::numeric_limits<int64_t>::max(), 999'999'999}, kMax},
      {{std::numeric_limits<int64_t>::min(), 0}, kMin},
  };
  std::vector<Ino> files;
  for (size_t i = 0; i < cases.size(); ++i) {
    Ino f = create(*fs, kRootIno, "f" + std::to_string(i));
    SetAttr set;
    set.valid = SetAttr::kAtime | SetAttr::kMtime | SetAttr::kCtime;
    set.atime = set.mtime = set.ctime = cases[i].set;
    auto a = fs->setattr(f, set, kUser);
    ASSERT_TRUE(a);
    EXPECT_EQ(sec_nsec(a->mtime), sec_nsec(cases[i].want)) << "case " << i;
    files.push_back(f);
  }
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < cases.size(); ++i) {
      auto a = fs->getattr(files[i]);
      ASSERT_TRUE(a);
      EXPECT_EQ(sec_nsec(a->atime), sec_nsec(cases[i].want)) << "case " << i << " pass " << pass;
      EXPECT_EQ(sec_nsec(a->mtime), sec_nsec(cases[i].want)) << "case " << i << " pass " << pass;
      EXPECT_EQ(sec_nsec(a->ctime), sec_nsec(cases[i].want)) << "case " << i << " pass " << pass;
    }
    fs.remount();
  }
  EXPECT_TRUE(fs.check().clean());
}

// ---------------------------------------------------------------- open files

TEST(FsOpenFiles, UnlinkedOpenFileStaysUsableUntilRelease) {
  Device fs;
  const uint64_t free0 = free_blocks(*fs);
  const uint64_t files0 = fs->statfs().files_free;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, pattern(50000, 1));
  ASSERT_TRUE(fs->open(f));
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  EXPECT_EQ(err(fs->lookup(kRootIno, "f")), std::errc::no_such_file_or_directory);
  auto a = fs->getattr(f);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->nlink, 0u);
  EXPECT_EQ(read_all(*fs, f), pattern(50000, 1));
  write_str(*fs, f, 50000, "tail");  // still writable
  EXPECT_EQ(read_range(*fs, f, 50000, 10), "tail");
  EXPECT_LT(free_blocks(*fs), free0);
  // The root directory keeps its one chain block; everything else returns.
  ASSERT_TRUE(fs->release(f));
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(free_blocks(*fs), free0 - 1);
  EXPECT_EQ(fs->statfs().files_free, files0);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsOpenFiles, OrphanIsReclaimedAtTheNextMount) {
  Device fs;
  create(*fs, kRootIno, "keep");  // the root's chain block exists from here on
  const uint64_t free0 = free_blocks(*fs);
  const uint64_t files0 = fs->statfs().files_free;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, pattern(200000, 2));
  ASSERT_TRUE(fs->open(f));
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  fs.remount(/*clean=*/false);  // the daemon died with the file open
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(free_blocks(*fs), free0);
  EXPECT_EQ(fs->statfs().files_free, files0);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsOpenFiles, OrphanSurvivesACleanUnmountUntilMount) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, "x");
  ASSERT_TRUE(fs->open(f));
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  fs.remount(/*clean=*/true);
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(fs.check().clean());
}

// ---------------------------------------------------------------- kernel references

// An entry handed to the FUSE kernel (EntryRef::kKernel) keeps its inode
// until the kernel forgets it, as a name or an open file does: a removed
// directory that is a working directory, an O_PATH descriptor.

// Free blocks and inodes, to compare once what was made is gone. Made
// after a first entry of the root, whose directory block stays.
struct Usage {
  uint64_t blocks = 0, files = 0;
  bool operator==(const Usage&) const = default;
  friend std::ostream& operator<<(std::ostream& os, const Usage& u) {
    return os << u.blocks << " free blocks, " << u.files << " free inodes";
  }
};

Usage usage_after_root_block(Filesystem& fs) {
  create(fs, kRootIno, "keep");
  return {free_blocks(fs), fs.statfs().files_free};
}

Usage usage(Filesystem& fs) { return {free_blocks(fs), fs.statfs().files_free}; }

TEST(FsKernelRefs, CountedEntriesKeepAnUnlinkedFileUntilTheLastForget) {
  Device fs;
  const Usage before = usage_after_root_block(*fs);
  auto made = fs->mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser, EntryRef::kKernel);
  ASSERT_TRUE(made);
  const Ino f = made->ino;
  write_str(*fs, f, 0, pattern(30000, 3));
  ASSERT_TRUE(fs->lookup(kRootIno, "f", EntryRef::kKernel));
  // The tools' look-ups are not the kernel's: they hold nothing.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(fs->lookup(kRootIno, "f"));
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  auto a = fs->getattr(f);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->nlink, 0u);
  EXPECT_EQ(read_all(*fs, f), pattern(30000, 3));
  ASSERT_TRUE(fs->open(f));  // open("/proc/self/fd/N") of an O_PATH descriptor
  ASSERT_TRUE(fs->release(f));
  ASSERT_TRUE(fs->forget(f, 1));
  EXPECT_TRUE(fs->getattr(f)) << "one reference is left";
  // A new file never gets the number of one the kernel still knows.
  Ino g = create(*fs, kRootIno, "g");
  EXPECT_NE(g, f);
  ASSERT_TRUE(fs->unlink(kRootIno, "g"));
  EXPECT_TRUE(fs.check().clean());
  ASSERT_TRUE(fs->forget(f, 1));
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(usage(*fs), before);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsKernelRefs, EveryKindOfEntryIsCounted) {
  Device fs;
  const uint64_t files0 = fs->statfs().files_free;
  Ino f = fs->mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser, EntryRef::kKernel)->ino;
  Ino d = fs->mkdir(kRootIno, "d", 0755, kUser, EntryRef::kKernel)->ino;
  Ino s = fs->symlink(kRootIno, "s", "target", kUser, EntryRef::kKernel)->ino;
  ASSERT_TRUE(fs->link(f, kRootIno, "f2", EntryRef::kKernel));
  Ino e = fs->mkdir(d, "e", 0755, kUser)->ino;
  EXPECT_EQ(fs->lookup(e, "..", EntryRef::kKernel)->ino, d);
  EXPECT_EQ(fs->lookup(e, ".", EntryRef::kKernel)->ino, e);
  // A failed call counts nothing.
  EXPECT_EQ(err(fs->lookup(kRootIno, "nope", EntryRef::kKernel)),
            std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser, EntryRef::kKernel)),
            std::errc::file_exists);
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  ASSERT_TRUE(fs->unlink(kRootIno, "f2"));
  ASSERT_TRUE(fs->unlink(kRootIno, "s"));
  ASSERT_TRUE(fs->rmdir(d, "e"));
  ASSERT_TRUE(fs->rmdir(kRootIno, "d"));
  for (Ino ino : {f, d, s, e}) EXPECT_TRUE(fs->getattr(ino)) << ino;
  EXPECT_EQ(fs->statfs().files_free, files0 - 4);
  // f had two entries handed out (mknod, link), d two (mkdir, ".."), e one.
  ASSERT_TRUE(fs->forget(std::vector<Forget>{{f, 1}, {d, 1}, {s, 1}, {e, 1}}));
  EXPECT_FALSE(fs->getattr(s));
  EXPECT_FALSE(fs->getattr(e));
  EXPECT_TRUE(fs->getattr(f));
  EXPECT_TRUE(fs->getattr(d));
  ASSERT_TRUE(fs->forget(std::vector<Forget>{{f, 1}, {d, 1}}));
  EXPECT_FALSE(fs->getattr(f));
  EXPECT_FALSE(fs->getattr(d));
  EXPECT_EQ(fs->statfs().files_free, files0);
  EXPECT_TRUE(fs.check().clean());
}

// The inode goes with the last of its name, its open file and the kernel's
// reference, whichever that is.
TEST(FsKernelRefs, FreedByTheLastOfUnlinkReleaseAndForgetInEveryOrder) {
  for (bool dir : {false, true}) {
    std::array<int, 3> order{0, 1, 2};  // unlink/rmdir, release, forget
    do {
      SCOPED_TRACE((dir ? "directory, order " : "file, order ") + std::to_string(order[0]) +
                   std::to_string(order[1]) + std::to_string(order[2]));
      Device fs;
      const Usage before = usage_after_root_block(*fs);
      auto made = dir ? fs->mkdir(kRootIno, "x", 0755, kUser, EntryRef::kKernel)
                      : fs->mknod(kRootIno, "x", S_IFREG | 0644, 0, kUser, EntryRef::kKernel);
      ASSERT_TRUE(made);
      const Ino x = made->ino;
      if (dir) {
        create(*fs, x, "child");  // gives x a directory block
        ASSERT_TRUE(fs->unlink(x, "child"));
      } else {
        write_str(*fs, x, 0, pattern(20000, 4));
      }
      ASSERT_TRUE(fs->open(x));
      for (int step = 0; step < 3; ++step) {
        switch (order[step]) {
          case 0:
            ASSERT_TRUE(dir ? fs->rmdir(kRootIno, "x") : fs->unlink(kRootIno, "x"));
            break;
          case 1:
            ASSERT_TRUE(fs->release(x));
            break;
          case 2:
            ASSERT_TRUE(fs->forget(x, 1));
            break;
        }
        EXPECT_EQ(fs->getattr(x).has_value(), step < 2) << "after step " << step;
      }
      EXPECT_EQ(usage(*fs), before);
      EXPECT_TRUE(fs.check().clean());
    } while (std::next_permutation(order.begin(), order.end()));
  }
}

TEST(FsKernelRefs, RemovedDirectoryStillReferencedAnswersButTakesNoEntries) {
  Device fs;
  Ino v = fs->mkdir(kRootIno, "victim", 0755, kUser, EntryRef::kKernel)->ino;
  Ino other = make_dir(*fs, kRootIno, "other");
  Ino f = create(*fs, kRootIno, "f");
  ASSERT_TRUE(fs->rmdir(kRootIno, "victim"));
  auto a = fs->getattr(v);
  ASSERT_TRUE(a);
  EXPECT_TRUE(S_ISDIR(a->mode));
  EXPECT_EQ(a->nlink, 0u);
  auto listing = list_dir(*fs, v);
  EXPECT_EQ(listing.size(), 2u);
  EXPECT_TRUE(listing.contains(".") && listing.contains(".."));
  EXPECT_EQ(err(fs->mknod(v, "x", S_IFREG | 0644, 0, kUser)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->mkdir(v, "x", 0755, kUser)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->symlink(v, "x", "t", kUser)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->link(f, v, "x")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->rename(kRootIno, "f", v, "x", 0)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->rename(kRootIno, "other", v, "x", 0)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->lookup(v, "..")),
            std::errc::no_such_file_or_directory);  // its parent may be gone
  EXPECT_EQ(fs->lookup(v, ".")->ino, v);
  EXPECT_EQ(fs->getattr(kRootIno)->nlink, 3u);  // the root and "other"
  // The number stays taken: the next directory gets another.
  Ino next = make_dir(*fs, kRootIno, "new0");
  EXPECT_NE(next, v);
  EXPECT_NE(next, other);
  EXPECT_TRUE(fs.check().clean());
  ASSERT_TRUE(fs->forget(v, 1));
  EXPECT_EQ(err(fs->getattr(v)), std::errc::no_such_file_or_directory);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsKernelRefs, ForgetOfWhatIsNotHeldIsHarmless) {
  Device fs;
  const uint64_t files0 = fs->statfs().files_free;
  Ino f = create(*fs, kRootIno, "f");
  EXPECT_TRUE(fs->forget(0, 1));
  EXPECT_TRUE(fs->forget(1ull << 40, 1));
  EXPECT_TRUE(fs->forget(f + 1, 3));  // a free slot
  EXPECT_TRUE(fs->forget(kRootIno, UINT64_MAX));
  EXPECT_TRUE(fs->forget(f, UINT64_MAX));  // never counted: stays at zero
  EXPECT_TRUE(fs->getattr(f));
  EXPECT_TRUE(fs->getattr(kRootIno));
  ASSERT_TRUE(fs->lookup(kRootIno, "f", EntryRef::kKernel));
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  EXPECT_TRUE(fs->getattr(f)) << "the kernel holds it";
  // More forgotten than held ends at zero, never wraps around.
  ASSERT_TRUE(fs->forget(std::vector<Forget>{{f, 5}, {f, 1}}));
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(fs->statfs().files_free, files0);
  EXPECT_TRUE(fs->forget(f, 1));  // already gone
  EXPECT_TRUE(fs.check().clean());
}

// The daemon died while the kernel still held a removed directory and an
// unlinked file: fsck finds nothing wrong, and the next mount reclaims both.
TEST(FsKernelRefs, ReferencedOrphansAreReclaimedAfterACrash) {
  Device fs;
  const Usage before = usage_after_root_block(*fs);
  Ino d = fs->mkdir(kRootIno, "d", 0755, kUser, EntryRef::kKernel)->ino;
  for (int i = 0; i < 20; ++i) create(*fs, d, "n" + std::to_string(i));  // two directory blocks
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(fs->unlink(d, "n" + std::to_string(i)));
  Ino f = fs->mknod(kRootIno, "f", S_IFREG | 0644, 0, kUser, EntryRef::kKernel)->ino;
  write_str(*fs, f, 0, pattern(100000, 5));
  ASSERT_TRUE(fs->rmdir(kRootIno, "d"));
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  EXPECT_LT(free_blocks(*fs), before.blocks);
  EXPECT_TRUE(fs.check().clean());
  fs.remount(/*clean=*/false);
  EXPECT_EQ(err(fs->getattr(d)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->getattr(f)), std::errc::no_such_file_or_directory);
  EXPECT_EQ(usage(*fs), before);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsKernelRefs, FsckRepairReclaimsReferencedOrphansSilently) {
  Device fs;
  ASSERT_TRUE(fs->mkdir(kRootIno, "d", 0755, kUser, EntryRef::kKernel));
  ASSERT_TRUE(fs->rmdir(kRootIno, "d"));
  ASSERT_TRUE(fs->unmount());
  auto copy = fs.copy();
  auto checked = check_filesystem(*copy, false);
  ASSERT_TRUE(checked);
  EXPECT_TRUE(checked->clean()) << ::testing::PrintToString(checked->problems);
  EXPECT_EQ(checked->directories, 2u) << "the removed directory is still there";
  auto report = check_filesystem(*copy, true);
  ASSERT_TRUE(report);
  EXPECT_TRUE(report->clean()) << ::testing::PrintToString(report->problems);
  EXPECT_TRUE(report->repairs.empty()) << ::testing::PrintToString(report->repairs);
  auto again = check_filesystem(*copy, false);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->clean());
  EXPECT_EQ(again->directories, 1u);  // the root alone
}

// ---------------------------------------------------------------- readdir

TEST(FsReaddir, ListsEveryOneOfAThousandEntriesOnce) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "big");
  std::map<std::string, Ino> want;
  for (int i = 0; i < 1000; ++i) {
    std::string name = "entry-" + std::to_string(i);
    want[name] = i % 10 == 0 ? make_dir(*fs, d, name) : create(*fs, d, name);
  }
  auto got = list_dir(*fs, d);
  EXPECT_EQ(got.at("."), d);
  EXPECT_EQ(got.at(".."), kRootIno);
  got.erase(".");
  got.erase("..");
  EXPECT_EQ(got, want);
  EXPECT_EQ(fs->getattr(d)->nlink, 2u + 100);
  // In small pieces, resuming from each cookie, the same list.
  std::map<std::string, Ino> pieced;
  uint64_t cookie = 0;
  for (bool more = true; more;) {
    int n = 0;
    more = false;
    ASSERT_TRUE(fs->readdir(d, cookie, [&](const DirEntry& e) {
      if (n++ == 7) {
        more = true;
        return false;
      }
      EXPECT_TRUE(pieced.emplace(std::string(e.name), e.ino).second) << e.name;
      cookie = e.next_cookie;
      return true;
    }));
  }
  pieced.erase(".");
  pieced.erase("..");
  EXPECT_EQ(pieced, want);
  fs.remount();
  got = list_dir(*fs, d);
  EXPECT_EQ(got.size(), 1002u);
}

TEST(FsReaddir, CookiesStayValidWhileOtherEntriesAreDeleted) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  std::set<std::string> names;
  for (int i = 0; i < 300; ++i) {
    names.insert("n" + std::to_string(i));
    create(*fs, d, "n" + std::to_string(i));
  }
  std::set<std::string> seen;
  uint64_t cookie = 0;
  int n = 0;
  ASSERT_TRUE(fs->readdir(d, 0, [&](const DirEntry& e) {
    if (++n > 120) return false;
    seen.insert(std::string(e.name));
    cookie = e.next_cookie;
    return true;
  }));
  // Delete every third name that is not the last one returned, seen or not.
  std::set<std::string> deleted;
  int i = 0;
  for (const std::string& name : names) {
    if (i++ % 3 == 0) {
      ASSERT_TRUE(fs->unlink(d, name));
      deleted.insert(name);
    }
  }
  std::set<std::string> rest;
  ASSERT_TRUE(fs->readdir(d, cookie, [&](const DirEntry& e) {
    EXPECT_TRUE(rest.insert(std::string(e.name)).second) << "listed twice: " << e.name;
    EXPECT_FALSE(seen.contains(std::string(e.name))) << "listed again after the cookie: " << e.name;
    EXPECT_FALSE(deleted.contains(std::string(e.name))) << "deleted but listed: " << e.name;
    return true;
  }));
  // Every name that still exists was listed exactly once, before or after.
  for (const std::string& name : names) {
    if (deleted.contains(name)) continue;
    EXPECT_EQ(seen.count(name) + rest.count(name), 1u) << name;
  }
}

// ---------------------------------------------------------------- xattrs

TEST(FsXattr, SetGetListRemoveWithFlags) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  EXPECT_EQ(err(fs->getxattr(f, "user.a")), std::errc::no_message_available);
  ASSERT_TRUE(fs->setxattr(f, "user.a", "1", 0));
  EXPECT_EQ(*fs->getxattr(f, "user.a"), "1");
  EXPECT_EQ(err(fs->setxattr(f, "user.a", "2", kXattrCreate)), std::errc::file_exists);
  EXPECT_EQ(err(fs->setxattr(f, "user.b", "2", kXattrReplace)), std::errc::no_message_available);
  ASSERT_TRUE(fs->setxattr(f, "user.a", "replaced", kXattrReplace));
  ASSERT_TRUE(fs->setxattr(f, "user.b", std::string("bin\0ary", 7), kXattrCreate));
  ASSERT_TRUE(fs->setxattr(f, "trusted.t", "", 0));
  EXPECT_EQ(*fs->getxattr(f, "user.a"), "replaced");
  EXPECT_EQ(*fs->getxattr(f, "trusted.t"), "");
  auto names = fs->listxattr(f);
  ASSERT_TRUE(names);
  EXPECT_EQ(std::set<std::string>(names->begin(), names->end()),
            (std::set<std::string>{"user.a", "user.b", "trusted.t"}));
  ASSERT_TRUE(fs->removexattr(f, "user.a"));
  EXPECT_EQ(err(fs->removexattr(f, "user.a")), std::errc::no_message_available);
  EXPECT_EQ(err(fs->getxattr(f, "user.a")), std::errc::no_message_available);
  // Directories carry xattrs too.
  ASSERT_TRUE(fs->setxattr(kRootIno, "user.dir", "yes", 0));
  fs.remount();
  EXPECT_EQ(*fs->getxattr(f, "user.b"), std::string("bin\0ary", 7));
  EXPECT_EQ(*fs->getxattr(kRootIno, "user.dir"), "yes");
  EXPECT_EQ(fs->listxattr(f)->size(), 2u);
  EXPECT_EQ(err(fs->getxattr(f, "user.a")), std::errc::no_message_available);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsXattr, NamespacesAndSizesAreBounded) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  // POSIX ACLs are the only system. names (acl_test.cc).
  EXPECT_EQ(err(fs->getxattr(f, "system.posix_acl_access")), std::errc::no_message_available);
  EXPECT_EQ(err(fs->setxattr(f, "system.other", "x", 0)), std::errc::operation_not_supported);
  EXPECT_EQ(err(fs->setxattr(f, "nonamespace", "x", 0)), std::errc::operation_not_supported);
  // The largest value fits; one byte more does not.
  auto big = fs->setxattr(f, "user.big", std::string(3760, 'v'), 0);
  ASSERT_TRUE(big) << big.error().to_string();
  EXPECT_EQ(fs->getxattr(f, "user.big")->size(), 3760u);
  EXPECT_FALSE(fs->setxattr(f, "user.bigger", std::string(3761, 'v'), 0));
  EXPECT_FALSE(fs->setxattr(f, "user.huge", std::string(70000, 'v'), 0));
  EXPECT_EQ(err(fs->setxattr(f, "user." + std::string(251, 'n'), "x", 0)), std::errc::result_out_of_range);
  ASSERT_TRUE(fs->setxattr(f, "user." + std::string(250, 'n'), "x", 0));  // 255 bytes
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsXattr, RemovedFileFreesItsXattrBlocks) {
  Device fs;
  create(*fs, kRootIno, "keep");
  const uint64_t free0 = free_blocks(*fs);
  Ino f = create(*fs, kRootIno, "f");
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(fs->setxattr(f, "user.k" + std::to_string(i), "v", 0));
  EXPECT_EQ(free_blocks(*fs), free0 - 10);
  ASSERT_TRUE(fs->unlink(kRootIno, "f"));
  EXPECT_EQ(free_blocks(*fs), free0);
}

// ---------------------------------------------------------------- privileges

uint32_t mode_of(Filesystem& fs, Ino ino) { return fs.getattr(ino)->mode & 07777; }

void set_mode(Filesystem& fs, Ino ino, uint32_t mode) {
  SetAttr set;
  set.valid = SetAttr::kMode;
  set.mode = mode;
  ASSERT_TRUE(fs.setattr(ino, set, Caller{}));
}

// What a writer takes before it writes (KillPriv): setuid, setgid with
// group-execute, and security.capability; other xattrs stay.
TEST(FsPrivileges, DropPrivilegesFollowsTheVfsRules) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  const std::string cap(20, '\1');
  set_mode(*fs, f, 06755);
  ASSERT_TRUE(fs->setxattr(f, "security.capability", cap, 0));
  ASSERT_TRUE(fs->setxattr(f, "user.keep", "1", 0));
  // A privileged writer (CAP_FSETID) keeps the bits, not the capability.
  EXPECT_EQ(fs->drop_privileges(f, KillPriv::kCaps), true);
  EXPECT_EQ(mode_of(*fs, f), 06755u);
  EXPECT_EQ(err(fs->getxattr(f, "security.capability")), std::errc::no_message_available);
  EXPECT_EQ(fs->drop_privileges(f, KillPriv::kCaps), false);  // nothing left to lose
  EXPECT_EQ(fs->drop_privileges(f, KillPriv::kCapsAndSuid), true);
  EXPECT_EQ(mode_of(*fs, f), 0755u);
  EXPECT_EQ(fs->drop_privileges(f, KillPriv::kCapsAndSuid), false);
  // Setgid without group-execute marks mandatory locking: it stays.
  set_mode(*fs, f, 02745);
  EXPECT_EQ(fs->drop_privileges(f, KillPriv::kCapsAndSuid), false);
  EXPECT_EQ(mode_of(*fs, f), 02745u);
  EXPECT_EQ(*fs->getxattr(f, "user.keep"), "1");
  fs.remount();
  EXPECT_EQ(mode_of(*fs, f), 02745u);
  EXPECT_EQ(err(fs->getxattr(f, "security.capability")), std::errc::no_message_available);
  EXPECT_TRUE(fs.check().clean());
}

// Truncate and chown drop what notify_change would: the capability always,
// the bits when kKillSuidSgid says so; a directory's chown drops nothing.
TEST(FsPrivileges, TruncateAndChownDropWhatTheKernelSays) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  Ino d = make_dir(*fs, kRootIno, "d");
  const std::string cap(20, '\1');
  auto apply = [&](Ino ino, uint32_t valid) {
    SetAttr set;
    set.valid = valid;
    set.size = 1;
    set.uid = 7;
    set.gid = 7;
    auto a = fs->setattr(ino, set, Caller{});
    EXPECT_TRUE(a);
    return a ? a->mode & 07777 : 0;
  };
  set_mode(*fs, f, 06755);
  ASSERT_TRUE(fs->setxattr(f, "security.capability", cap, 0));
  EXPECT_EQ(apply(f, SetAttr::kSize), 06755u);  // truncate by root: bits stay
  EXPECT_EQ(err(fs->getxattr(f, "security.capability")), std::errc::no_message_available);
  EXPECT_EQ(apply(f, SetAttr::kSize | SetAttr::kKillSuidSgid), 0755u);
  set_mode(*fs, f, 06755);
  ASSERT_TRUE(fs->setxattr(f, "security.capability", cap, 0));
  EXPECT_EQ(apply(f, SetAttr::kUid | SetAttr::kGid | SetAttr::kKillSuidSgid), 0755u);
  EXPECT_EQ(err(fs->getxattr(f, "security.capability")), std::errc::no_message_available);
  // Times alone drop nothing.
  set_mode(*fs, f, 06755);
  EXPECT_EQ(apply(f, SetAttr::kMtimeNow | SetAttr::kKillSuidSgid), 06755u);
  set_mode(*fs, d, 02775);
  ASSERT_TRUE(fs->setxattr(d, "security.capability", cap, 0));
  EXPECT_EQ(apply(d, SetAttr::kUid | SetAttr::kKillSuidSgid), 02775u);
  EXPECT_EQ(*fs->getxattr(d, "security.capability"), cap);
  EXPECT_TRUE(fs.check().clean());
}

// ---------------------------------------------------------------- data

TEST(FsData, TruncateDownThenUpReadsZerosPastTheOldEnd) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  const std::string data = pattern(3 * kBlockSize + 1000, 3);
  write_str(*fs, f, 0, data);
  SetAttr shrink;
  shrink.valid = SetAttr::kSize;
  shrink.size = kBlockSize + 100;  // inside the second block
  ASSERT_TRUE(fs->setattr(f, shrink, kUser));
  EXPECT_EQ(fs->getattr(f)->size, kBlockSize + 100u);
  // st_blocks counts data blocks and the extent chain block.
  constexpr uint64_t kSectorsPerBlock = kBlockSize / 512;
  EXPECT_EQ(fs->getattr(f)->blocks, (2u + 1) * kSectorsPerBlock);
  EXPECT_EQ(read_all(*fs, f), data.substr(0, kBlockSize + 100));
  SetAttr grow;
  grow.valid = SetAttr::kSize;
  grow.size = 5 * kBlockSize;
  ASSERT_TRUE(fs->setattr(f, grow, kUser));
  std::string want = data.substr(0, kBlockSize + 100) + std::string(5 * kBlockSize - kBlockSize - 100, '\0');
  EXPECT_EQ(read_all(*fs, f), want);
  // Shrink then grow by a write far away: the same.
  shrink.size = 10;
  ASSERT_TRUE(fs->setattr(f, shrink, kUser));
  write_str(*fs, f, 3 * kBlockSize, "end");
  want = data.substr(0, 10) + std::string(3 * kBlockSize - 10, '\0') + "end";
  EXPECT_EQ(read_all(*fs, f), want);
  fs.remount();
  EXPECT_EQ(read_all(*fs, f), want);
  shrink.size = 0;
  ASSERT_TRUE(fs->setattr(f, shrink, kUser));
  EXPECT_EQ(fs->getattr(f)->blocks, 0u);  // no data, and the empty record block is released
  EXPECT_EQ(read_all(*fs, f), "");
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsData, TruncateOfADirectoryOrSymlinkIsRefused) {
  Device fs;
  Ino d = make_dir(*fs, kRootIno, "d");
  auto l = fs->symlink(kRootIno, "l", "t", kUser);
  SetAttr set;
  set.valid = SetAttr::kSize;
  set.size = 0;
  EXPECT_EQ(err(fs->setattr(d, set, kUser)), std::errc::is_a_directory);
  EXPECT_EQ(err(fs->setattr(l->ino, set, kUser)), std::errc::invalid_argument);
  Ino f = create(*fs, kRootIno, "f");
  set.size = kMaxFileSize + 1;
  EXPECT_EQ(err(fs->setattr(f, set, kUser)), std::errc::file_too_large);
  EXPECT_EQ(err(fs->write(d, 0, bytes("x"))), std::errc::is_a_directory);
}

TEST(FsData, SparseFilesReadZerosInHolesAndAllocateOnlyWhatIsWritten) {
  Device fs;
  Ino f = create(*fs, kRootIno, "sparse");
  const uint64_t far = uint64_t{1} << 40;  // 1 TiB on a 64 MiB device
  write_str(*fs, f, 5000, "middle");
  write_str(*fs, f, far, "end");
  auto a = fs->getattr(f);
  EXPECT_EQ(a->size, far + 3);
  EXPECT_LE(a->blocks, 8u * 4);  // two data blocks and an extent chain block
  EXPECT_EQ(read_range(*fs, f, 0, 5000), std::string(5000, '\0'));
  EXPECT_EQ(read_range(*fs, f, 5000, 6), "middle");
  EXPECT_EQ(read_range(*fs, f, far - 10, 100), std::string(10, '\0') + "end");
  EXPECT_EQ(read_range(*fs, f, uint64_t{1} << 39, 8192), std::string(8192, '\0'));
  EXPECT_EQ(read_range(*fs, f, far + 3, 10), "");
  // Writes at the largest offset supported; one byte past it fails.
  write_str(*fs, f, kMaxFileSize - 1, "z");
  EXPECT_EQ(fs->getattr(f)->size, kMaxFileSize);
  EXPECT_EQ(err(fs->write(f, kMaxFileSize, bytes("z"))), std::errc::file_too_large);
  fs.remount();
  EXPECT_EQ(read_range(*fs, f, far - 10, 13), std::string(10, '\0') + "end");
  EXPECT_TRUE(fs.check().clean());
}

// A write that crosses the maximum file size writes up to it and returns
// the short count (generic_write_check_limits); only a write that starts at
// or past it fails with EFBIG. So does a copy_file_range.
TEST(FsData, WriteAcrossTheMaximumSizeIsShortened) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  const uint64_t free0 = free_blocks(*fs);
  const std::string data = pattern(8192, 3);
  auto n = fs->write(f, kMaxFileSize - 4096, bytes(data));
  ASSERT_TRUE(n) << n.error().to_string();
  EXPECT_EQ(*n, 4096u);
  EXPECT_EQ(fs->getattr(f)->size, kMaxFileSize);
  EXPECT_EQ(free_blocks(*fs), free0 - 2);  // one data block and the extent chain block
  // Unaligned: up to the limit exactly.
  n = fs->write(f, kMaxFileSize - 3, bytes("abcdefgh"));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(err(fs->write(f, kMaxFileSize, bytes("z"))), std::errc::file_too_large);
  EXPECT_EQ(err(fs->write(f, UINT64_MAX - 1, bytes("z"))), std::errc::file_too_large);
  Ino src = create(*fs, kRootIno, "src");
  write_str(*fs, src, 0, data);
  Ino dst = create(*fs, kRootIno, "dst");
  auto copied = fs->copy_range(src, 0, dst, kMaxFileSize - 4096, data.size());
  ASSERT_TRUE(copied) << copied.error().to_string();
  EXPECT_EQ(*copied, 4096u);
  EXPECT_EQ(fs->getattr(dst)->size, kMaxFileSize);
  EXPECT_EQ(err(fs->copy_range(src, 0, dst, kMaxFileSize, 1)), std::errc::file_too_large);
  const std::string want = data.substr(0, 4093) + "abc";
  for (bool clean : {false, true}) {  // a replay of the journal, then a clean mount
    fs.remount(clean);
    EXPECT_EQ(fs->getattr(f)->size, kMaxFileSize);
    EXPECT_EQ(read_range(*fs, f, kMaxFileSize - 4096, 8192), want);
    EXPECT_EQ(read_range(*fs, dst, kMaxFileSize - 4096, 8192), data.substr(0, 4096));
    EXPECT_TRUE(fs.check().clean());
  }
}

TEST(FsData, ZeroByteFilesAndWritesAndReadsPastTheEnd) {
  Device fs;
  Ino f = create(*fs, kRootIno, "empty");
  EXPECT_EQ(read_all(*fs, f), "");
  auto n = fs->write(f, 100, bytes(""));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(fs->getattr(f)->size, 0u);
  EXPECT_EQ(read_range(*fs, f, 1000, 10), "");
  fs.remount();
  EXPECT_EQ(fs->getattr(f)->size, 0u);
}

TEST(FsData, SequentialAppendsStayOneExtent) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  std::string want;
  for (unsigned i = 0; i < 50; ++i) {
    write_str(*fs, f, want.size(), pattern(kBlockSize, i));
    want += pattern(kBlockSize, i);
  }
  EXPECT_EQ(fs->info().extent_records, 1u);
  EXPECT_EQ(read_all(*fs, f), want);
}

TEST(FsData, AppendsAfterARemountExtendTheSameExtent) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, pattern(kBlockSize, 1));
  fs.remount();
  write_str(*fs, f, kBlockSize, pattern(kBlockSize, 2));
  fs.remount();
  write_str(*fs, f, 2 * kBlockSize, pattern(kBlockSize, 3));
  EXPECT_EQ(fs->info().extent_records, 1u);
  EXPECT_EQ(read_all(*fs, f), pattern(kBlockSize, 1) + pattern(kBlockSize, 2) + pattern(kBlockSize, 3));
}

TEST(FsData, OverwritesInPlaceKeepTheirBlocks) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, pattern(40000, 1));
  const uint64_t free0 = free_blocks(*fs);
  write_str(*fs, f, 1234, pattern(20000, 9));
  EXPECT_EQ(free_blocks(*fs), free0);
  std::string want = pattern(40000, 1);
  want.replace(1234, 20000, pattern(20000, 9));
  EXPECT_EQ(read_all(*fs, f), want);
}

// ---------------------------------------------------------------- fallocate

TEST(FsFallocate, DefaultModeAllocatesAndExtends) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, "abc");
  const uint64_t free0 = free_blocks(*fs);
  ASSERT_TRUE(fs->fallocate(f, 0, 0, 10 * kBlockSize + 5));
  auto a = fs->getattr(f);
  EXPECT_EQ(a->size, 10 * kBlockSize + 5u);
  EXPECT_EQ(a->blocks, (11u + 1) * kBlockSize / 512);  // data and the extent chain block
  EXPECT_EQ(free_blocks(*fs), free0 - 10);  // the first block was there
  EXPECT_EQ(read_all(*fs, f), "abc" + std::string(10 * kBlockSize + 2, '\0'));
  // Writing into preallocated space uses it: no more blocks.
  write_str(*fs, f, 5 * kBlockSize + 7, "mid");
  EXPECT_EQ(free_blocks(*fs), free0 - 10);
  EXPECT_EQ(read_range(*fs, f, 5 * kBlockSize, 12), std::string(7, '\0') + "mid" + std::string(2, '\0'));
  // A range that is already allocated changes nothing.
  ASSERT_TRUE(fs->fallocate(f, 0, 0, kBlockSize));
  EXPECT_EQ(free_blocks(*fs), free0 - 10);
  fs.remount();
  EXPECT_EQ(read_range(*fs, f, 5 * kBlockSize + 7, 3), "mid");
  EXPECT_EQ(read_range(*fs, f, 9 * kBlockSize, 100), std::string(100, '\0'));
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsFallocate, KeepSizeBeyondTheEndDoesNotChangeTheSize) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, "hello");
  const uint64_t free0 = free_blocks(*fs);
  ASSERT_TRUE(fs->fallocate(f, kFallocKeepSize, 2 * kBlockSize, 4 * kBlockSize));
  EXPECT_EQ(fs->getattr(f)->size, 5u);
  EXPECT_EQ(free_blocks(*fs), free0 - 4);
  EXPECT_EQ(read_all(*fs, f), "hello");
  // Growing into the preallocated space reads zeros there.
  SetAttr grow;
  grow.valid = SetAttr::kSize;
  grow.size = 6 * kBlockSize;
  ASSERT_TRUE(fs->setattr(f, grow, kUser));
  EXPECT_EQ(read_all(*fs, f), "hello" + std::string(6 * kBlockSize - 5, '\0'));
  EXPECT_EQ(free_blocks(*fs), free0 - 4);
  fs.remount();
  EXPECT_EQ(read_all(*fs, f), "hello" + std::string(6 * kBlockSize - 5, '\0'));
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsFallocate, PunchHoleZeroesPartialEdgesAndFreesWholeBlocks) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  const std::string data = pattern(8 * kBlockSize, 5);
  write_str(*fs, f, 0, data);
  const uint64_t free0 = free_blocks(*fs);
  // [1000, 5 blocks + 300): partial first and last block, 4 whole blocks.
  const uint64_t off = 1000, end = 5 * kBlockSize + 300;
  ASSERT_TRUE(fs->fallocate(f, kFallocPunchHole | kFallocKeepSize, off, end - off));
  std::string want = data;
  std::fill(want.begin() + off, want.begin() + end, '\0');
  EXPECT_EQ(read_all(*fs, f), want);
  EXPECT_EQ(fs->getattr(f)->size, data.size());
  EXPECT_EQ(free_blocks(*fs), free0 + 4);
  // A punch inside one block only zeroes.
  ASSERT_TRUE(fs->fallocate(f, kFallocPunchHole | kFallocKeepSize, 6 * kBlockSize + 10, 20));
  std::fill(want.begin() + 6 * kBlockSize + 10, want.begin() + 6 * kBlockSize + 30, '\0');
  EXPECT_EQ(read_all(*fs, f), want);
  EXPECT_EQ(free_blocks(*fs), free0 + 4);
  // Punch needs KEEP_SIZE; a punch past the end changes nothing.
  EXPECT_EQ(err(fs->fallocate(f, kFallocPunchHole, 0, 10)), std::errc::operation_not_supported);
  ASSERT_TRUE(fs->fallocate(f, kFallocPunchHole | kFallocKeepSize, 100 * kBlockSize, kBlockSize));
  EXPECT_EQ(fs->getattr(f)->size, data.size());
  fs.remount();
  EXPECT_EQ(read_all(*fs, f), want);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsFallocate, ZeroRangeZeroesAndAllocates) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  const std::string data = pattern(4 * kBlockSize, 6);
  write_str(*fs, f, 0, data);
  ASSERT_TRUE(fs->fallocate(f, kFallocZeroRange, 100, 2 * kBlockSize));
  std::string want = data;
  std::fill(want.begin() + 100, want.begin() + 100 + 2 * kBlockSize, '\0');
  EXPECT_EQ(read_all(*fs, f), want);
  // Past the end: the size grows (without KEEP_SIZE) and reads zeros.
  const uint64_t free0 = free_blocks(*fs);
  ASSERT_TRUE(fs->fallocate(f, kFallocZeroRange, 3 * kBlockSize + 10, 3 * kBlockSize));
  std::fill(want.begin() + 3 * kBlockSize + 10, want.end(), '\0');
  want.resize(6 * kBlockSize + 10, '\0');
  EXPECT_EQ(read_all(*fs, f), want);
  EXPECT_EQ(free_blocks(*fs), free0 - 3);
  ASSERT_TRUE(fs->fallocate(f, kFallocZeroRange | kFallocKeepSize, 10 * kBlockSize, kBlockSize));
  EXPECT_EQ(fs->getattr(f)->size, want.size());
  fs.remount();
  EXPECT_EQ(read_all(*fs, f), want);
  EXPECT_TRUE(fs.check().clean());
}

// Every mode that succeeds changes mtime and ctime, even a preallocation
// that allocates nothing (XFS calls file_modified for every mode).
TEST(FsFallocate, EveryModeUpdatesMtimeAndCtime) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  write_str(*fs, f, 0, pattern(4 * kBlockSize, 7));
  struct Case {
    const char* what;
    int mode;
    uint64_t off, len;
  };
  const std::vector<Case> cases = {
      {"extending", 0, 100000, 8192},
      {"keep size, allocated already", kFallocKeepSize, 0, 8192},
      {"keep size, past the end", kFallocKeepSize, 200000, 8192},
      {"zero range", kFallocZeroRange, 10, 100},
      {"punch hole", kFallocPunchHole | kFallocKeepSize, kBlockSize, kBlockSize},
  };
  for (const Case& c : cases) {
    SetAttr age;
    age.valid = SetAttr::kMtime | SetAttr::kCtime;
    age.mtime = age.ctime = {1, 0};
    ASSERT_TRUE(fs->setattr(f, age, kUser));
    ASSERT_TRUE(fs->fallocate(f, c.mode, c.off, c.len)) << c.what;
    auto a = fs->getattr(f);
    EXPECT_GT(a->mtime.sec, 1) << c.what;
    EXPECT_GT(a->ctime.sec, 1) << c.what;
    EXPECT_EQ(sec_nsec(a->mtime), sec_nsec(a->ctime)) << c.what;
  }
  fs.remount();
  EXPECT_GT(fs->getattr(f)->mtime.sec, 1);
  EXPECT_TRUE(fs.check().clean());
}

TEST(FsFallocate, BadArgumentsAreRefused) {
  Device fs;
  Ino f = create(*fs, kRootIno, "f");
  Ino d = make_dir(*fs, kRootIno, "d");
  EXPECT_EQ(err(fs->fallocate(f, 0, 0, 0)), std::errc::invalid_argument);
  EXPECT_EQ(err(fs->fallocate(f, 0x40, 0, 10)), std::errc::operation_not_supported);
  EXPECT_EQ(err(fs->fallocate(f, kFallocPunchHole | kFallocKeepSize | kFallocZeroRange, 0, 10)),
            std::errc::operation_not_supported);
  EXPECT_EQ(err(fs->fallocate(d, 0, 0, 10)), std::errc::is_a_directory);
  EXPECT_EQ(err(fs->fallocate(f, 0, kMaxFileSize, 1)), std::errc::file_too_large);
}

// ---------------------------------------------------------------- ENOSPC

TEST(FsSpace, FillingTheDeviceFailsCleanlyAndDeletingGivesSpaceBack) {
  Device fs(8 << 20);
  std::vector<Ino> files;
  for (int i = 0; i < 6; ++i) files.push_back(create(*fs, kRootIno, "f" + std::to_string(i)));
  const uint64_t free0 = free_blocks(*fs);
  std::vector<std::string> contents(files.size());
  bool full = false;
  for (int round = 0; !full && round < 1000; ++round) {
    for (size_t i = 0; i < files.size() && !full; ++i) {
      std::string chunk = pattern(24 * 1024 + round * 7 % 4096, static_cast<unsigned>(round * 10 + i));
      auto n = fs->write(files[i], contents[i].size(), bytes(chunk));
      if (!n) {
        EXPECT_EQ(n.error().code, std::errc::no_space_on_device);
        full = true;
        break;
      }
      contents[i] += chunk.substr(0, *n);
      if (*n < chunk.size()) full = true;  // a short write: the device is full
    }
  }
  ASSERT_TRUE(full);
  EXPECT_LT(free_blocks(*fs), 8u);
  // A full filesystem still reads, stats, lists and refuses more data.
  for (size_t i = 0; i < files.size(); ++i) ASSERT_EQ(read_all(*fs, files[i]), contents[i]) << i;
  EXPECT_EQ(list_dir(*fs, kRootIno).size(), files.size() + 2);
  std::string more(64 * 1024, 'm');
  auto again = fs->write(files[0], contents[0].size(), bytes(more));
  if (again) contents[0] += more.substr(0, *again);
  fs.remount();
  for (size_t i = 0; i < files.size(); ++i) ASSERT_EQ(read_all(*fs, files[i]), contents[i]) << i;
  auto report = fs.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
  // Deleting gives every block back.
  for (size_t i = 0; i < files.size(); ++i) ASSERT_TRUE(fs->unlink(kRootIno, "f" + std::to_string(i)));
  EXPECT_EQ(free_blocks(*fs), free0 + 0);
  // And the space is usable again at once.
  Ino g = create(*fs, kRootIno, "g");
  write_str(*fs, g, 0, pattern(1 << 20, 4));
  EXPECT_EQ(read_all(*fs, g), pattern(1 << 20, 4));
  fs.remount(false);
  EXPECT_EQ(read_all(*fs, g), pattern(1 << 20, 4));
  EXPECT_TRUE(fs.check().clean());
}

// Fills a filesystem's data area completely with one file's data.
void fill_with(Filesystem& fs, Ino ino) {
  uint64_t size = fs.getattr(ino)->size;
  for (size_t chunk : {size_t{64} << 10, size_t{kBlockSize}}) {
    std::string data(chunk, 'F');
    for (;;) {
      auto n = fs.write(ino, size, bytes(data));
      if (!n) break;
      size += *n;
    }
  }
  ASSERT_EQ(fs.statfs().blocks_free, 0u);
}

void truncate_by(Filesystem& fs, Ino ino, uint64_t blocks) {
  SetAttr set;
  set.valid = SetAttr::kSize;
  set.size = fs.getattr(ino)->size - blocks * kBlockSize;
  ASSERT_TRUE(fs.setattr(ino, set, kUser));
}

// A symlink that fails for want of space after its directory got a new
// record block must not leave that block linked in memory only: names put
// there later would be lost at the next mount.
TEST(FsSpace, SymlinkFailingForSpaceLosesNoLaterName) {
  Device fs(1 << 20);
  for (int i = 0; i < 13; ++i) create(*fs, kRootIno, "e" + std::to_string(i));
  Ino big = create(*fs, kRootIno, "big");  // the root's first block is full now
  fill_with(*fs, big);
  truncate_by(*fs, big, 1);
  ASSERT_EQ(free_blocks(*fs), 1u);
  auto s = fs->symlink(kRootIno, "s", "target", kUser);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, std::errc::no_space_on_device);
  truncate_by(*fs, big, 20);
  Ino x = create(*fs, kRootIno, "x");
  fs.remount();
  auto a = fs->lookup(kRootIno, "x");
  ASSERT_TRUE(a) << "a name created after the failed symlink was lost";
  EXPECT_EQ(a->ino, x);
  auto report = fs.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

// A create that inherits ACLs needs xattr blocks: failing for want of them
// must leave neither the file nor a block behind.
TEST(FsSpace, CreateThatInheritsAclsFailingForSpaceLeavesNothing) {
  Device fs(1 << 20);
  Ino d = make_dir(*fs, kRootIno, "d");
  const Acl nobody_rwx = {{AclTag::kUserObj, 7},
                          {AclTag::kUser, 7, 65534},
                          {AclTag::kGroupObj, 5},
                          {AclTag::kMask, 7},
                          {AclTag::kOther, 0}};
  ASSERT_TRUE(fs->setxattr(d, kAclDefaultXattr, encode_acl(nobody_rwx), 0));
  create(*fs, d, "first");  // d's directory block exists now
  Ino big = create(*fs, kRootIno, "big");
  fill_with(*fs, big);
  truncate_by(*fs, big, 1);
  ASSERT_EQ(free_blocks(*fs), 1u);
  // A directory needs two (access and default ACL); a file with no space one.
  EXPECT_EQ(err(fs->mkdir(d, "sub", 0777, kUser)), std::errc::no_space_on_device);
  EXPECT_EQ(free_blocks(*fs), 1u);
  ASSERT_TRUE(fs->mknod(d, "fits", S_IFREG | 0644, 0, kUser));
  EXPECT_EQ(free_blocks(*fs), 0u);
  EXPECT_EQ(err(fs->mknod(d, "nospace", S_IFREG | 0644, 0, kUser)), std::errc::no_space_on_device);
  EXPECT_EQ(err(fs->lookup(d, "sub")), std::errc::no_such_file_or_directory);
  EXPECT_EQ(err(fs->lookup(d, "nospace")), std::errc::no_such_file_or_directory);
  fs.remount();
  EXPECT_TRUE(fs->getxattr(fs->lookup(d, "fits")->ino, kAclAccessXattr));
  auto report = fs.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

// The same for a write that fails for want of space after linking a new
// extent record block: later extents put there must survive a remount.
TEST(FsSpace, WriteFailingForSpaceLosesNoLaterExtent) {
  Device fs(1 << 20);
  Ino big = create(*fs, kRootIno, "big");
  Ino f = create(*fs, kRootIno, "f");
  fill_with(*fs, big);
  truncate_by(*fs, big, 1);
  ASSERT_EQ(free_blocks(*fs), 1u);
  auto n = fs->write(f, 0, bytes("data"));  // takes the block for records, none left for data
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code, std::errc::no_space_on_device);
  truncate_by(*fs, big, 20);
  write_str(*fs, f, 0, "data");
  fs.remount();
  EXPECT_EQ(read_all(*fs, f), "data");
  auto report = fs.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

TEST(FsSpace, RunningOutOfInodesIsENOSPC) {
  MkfsOptions opts;
  opts.inode_count = 32;
  Device fs(4 << 20, opts);
  int made = 0;
  for (int i = 0; i < 40; ++i) {
    auto a = fs->mknod(kRootIno, "f" + std::to_string(i), S_IFREG | 0644, 0, kUser);
    if (!a) {
      EXPECT_EQ(a.error().code, std::errc::no_space_on_device);
      break;
    }
    ++made;
  }
  EXPECT_EQ(made, 31);  // the root uses one
  EXPECT_EQ(fs->statfs().files_free, 0u);
  ASSERT_TRUE(fs->unlink(kRootIno, "f3"));
  EXPECT_TRUE(fs->mknod(kRootIno, "again", S_IFREG | 0644, 0, kUser));
  fs.remount();
  EXPECT_TRUE(fs.check().clean());
}

// ---------------------------------------------------------------- crashes

// Everything the API shows of a tree (names, kinds, links, sizes, contents,
// symlink targets, xattrs), as one comparable map: path -> description.
void describe(Filesystem& fs, Ino dir, const std::string& path, std::map<std::string, std::string>& out) {
  std::vector<std::pair<std::string, Ino>> entries;
  EXPECT_TRUE(fs.readdir(dir, 0, [&](const DirEntry& e) {
    if (e.name != "." && e.name != "..") entries.emplace_back(std::string(e.name), e.ino);
    return true;
  }));
  for (auto& [name, ino] : entries) {
    auto a = fs.getattr(ino);
    if (!a) {
      out[path + name] = "dangling";
      continue;
    }
    std::string d = "mode " + std::to_string(a->mode) + " nlink " + std::to_string(a->nlink) + " size " +
                    std::to_string(a->size) + " ino " + std::to_string(ino);
    if (S_ISREG(a->mode)) d += " data " + read_all(fs, ino);
    if (S_ISLNK(a->mode)) d += " target " + fs.readlink(ino).value_or("?");
    if (auto names = fs.listxattr(ino))
      for (const std::string& x : *names) d += " xattr " + x + "=" + fs.getxattr(ino, x).value_or("?");
    out[path + name] = d;
    if (S_ISDIR(a->mode)) describe(fs, ino, path + name + "/", out);
  }
}

std::map<std::string, std::string> describe(Filesystem& fs) {
  std::map<std::string, std::string> out;
  out["/"] = "nlink " + std::to_string(fs.getattr(kRootIno)->nlink);
  if (auto names = fs.listxattr(kRootIno))
    for (const std::string& x : *names) out["/"] += " xattr " + x + "=" + fs.getxattr(kRootIno, x).value_or("?");
  describe(fs, kRootIno, "/", out);
  return out;
}

// Runs setup, then op on a recording device; then mounts the image a crash
// after every prefix of op's stores leaves (and, with torn, each next store
// cut at several 8-byte boundaries) and expects the tree before or after
// op, never a mix, and a clean fsck.
void expect_atomic(const std::function<void(Filesystem&)>& setup, const std::function<void(Filesystem&)>& op,
                   bool torn = true) {
  auto rec = std::make_unique<testing::RecordingMedia>(2 << 20);
  testing::RecordingMedia* raw = rec.get();
  rec->set_recording(false);
  ASSERT_TRUE(Filesystem::format(*rec, {}));
  auto fs = Filesystem::mount(std::move(rec), {});
  ASSERT_TRUE(fs) << fs.error().to_string();
  setup(**fs);
  if (::testing::Test::HasFatalFailure()) return;
  const auto initial = raw->image();
  const auto before = describe(**fs);
  raw->set_recording(true);
  op(**fs);
  if (::testing::Test::HasFatalFailure()) return;
  raw->set_recording(false);
  const auto after = describe(**fs);
  ASSERT_NE(before, after);
  const auto stores = raw->stores();
  bool reached_after = false;
  // Returns false (after reporting) when the image is not before or after.
  auto verify = [&](const std::vector<std::byte>& img, const std::string& where, bool ordered) {
    auto crashed = Filesystem::mount(testing::media_from(img), {});
    if (!crashed) {
      ADD_FAILURE() << where << ": mount fails: " << crashed.error().to_string();
      return false;
    }
    auto state = describe(**crashed);
    if (ordered && state == after) {
      reached_after = true;
    } else if (ordered) {
      EXPECT_FALSE(reached_after) << where << " went back to the old state";
    }
    if (state != before && state != after) {
      ADD_FAILURE() << where << " leaves a mixed state:\n" << ::testing::PrintToString(state) << "\nbefore:\n"
                    << ::testing::PrintToString(before) << "\nafter:\n" << ::testing::PrintToString(after);
      return false;
    }
    crashed->reset();
    auto copy = testing::media_from(img);
    auto report = check_filesystem(*copy, false);
    if (!report || !report->clean()) {
      ADD_FAILURE() << where << ": fsck: "
                    << (report ? ::testing::PrintToString(report->problems) : report.error().to_string());
      return false;
    }
    return true;
  };
  for (size_t k = 0; k <= stores.size(); ++k) {
    auto img = raw->crash_image(initial, k);
    std::string where = "crash after " + std::to_string(k) + " of " + std::to_string(stores.size()) + " stores";
    if (!verify(img, where, true)) return;
    if (!torn || k == stores.size()) continue;
    const auto& op_k = *stores[k];
    const size_t stride = std::max<size_t>(8, op_k.len / 6 / 8 * 8);
    for (size_t cut = 8; cut < op_k.len; cut += stride) {
      auto t = img;
      testing::RecordingMedia::apply_store(t, op_k, cut);
      if (!verify(t, where + " and " + std::to_string(cut) + " of " + std::to_string(op_k.len) +
                         " bytes of the next (at " + std::to_string(op_k.off) + ")", false))
        return;
    }
  }
  EXPECT_TRUE(reached_after);
}

void populate(Filesystem& fs) {
  Ino d = make_dir(fs, kRootIno, "d");
  Ino e = make_dir(fs, kRootIno, "e");
  make_dir(fs, e, "sub");
  for (int i = 0; i < 13; ++i) create(fs, d, "n" + std::to_string(i));  // 14th slot left in d's block
  Ino f = create(fs, kRootIno, "f");
  write_str(fs, f, 0, pattern(5 * kBlockSize + 123, 1));
  Ino g = create(fs, e, "g");
  write_str(fs, g, 0, pattern(3000, 2));
  ASSERT_TRUE(fs.setxattr(g, "user.x", "1", 0));
}

TEST(FsCrash, CreateIsAtomic) {
  expect_atomic(populate, [](Filesystem& fs) { create(fs, kRootIno, "new"); });
}

TEST(FsCrash, CreateThatGrowsTheDirectoryIsAtomic) {
  expect_atomic(
      [](Filesystem& fs) {
        populate(fs);
        create(fs, fs.lookup(kRootIno, "d")->ino, "n13");  // d's first block is full now
      },
      [](Filesystem& fs) { create(fs, fs.lookup(kRootIno, "d")->ino, "n14"); });
}

// owner rwx, nobody rwx, group r-x, mask rwx, other none.
const Acl kNobodyRwx = {{AclTag::kUserObj, 7},
                        {AclTag::kUser, 7, 65534},
                        {AclTag::kGroupObj, 5},
                        {AclTag::kMask, 7},
                        {AclTag::kOther, 0}};

void populate_with_default_acl(Filesystem& fs) {
  populate(fs);
  ASSERT_TRUE(
      fs.setxattr(fs.lookup(kRootIno, "d")->ino, kAclDefaultXattr, encode_acl(kNobodyRwx), 0));
}

// The new file, its mode and its ACLs are one transaction: every crash
// leaves the file with its inherited ACLs or no file at all.
TEST(FsCrash, CreateAndMkdirThatInheritAclsAreAtomic) {
  expect_atomic(populate_with_default_acl, [](Filesystem& fs) {
    Ino f = create(fs, fs.lookup(kRootIno, "d")->ino, "inherits", S_IFREG | 0666);
    ASSERT_TRUE(fs.getxattr(f, kAclAccessXattr));
  });
  expect_atomic(populate_with_default_acl, [](Filesystem& fs) {
    Ino sub = make_dir(fs, fs.lookup(kRootIno, "d")->ino, "inherits");
    ASSERT_TRUE(fs.getxattr(sub, kAclDefaultXattr));
  });
}

TEST(FsCrash, SettingAnAccessAclAndChmodAreAtomic) {
  // The mode and the ACL change together.
  expect_atomic(populate, [](Filesystem& fs) {
    ASSERT_TRUE(
        fs.setxattr(fs.lookup(kRootIno, "f")->ino, kAclAccessXattr, encode_acl(kNobodyRwx), 0));
  });
  expect_atomic(
      [](Filesystem& fs) {
        populate(fs);
        ASSERT_TRUE(
            fs.setxattr(fs.lookup(kRootIno, "f")->ino, kAclAccessXattr, encode_acl(kNobodyRwx), 0));
      },
      [](Filesystem& fs) {
        SetAttr chmod;
        chmod.valid = SetAttr::kMode;
        chmod.mode = 0604;
        ASSERT_TRUE(fs.setattr(fs.lookup(kRootIno, "f")->ino, chmod, kUser));
      });
}

TEST(FsCrash, MkdirAndRmdirAreAtomic) {
  expect_atomic(populate, [](Filesystem& fs) { make_dir(fs, kRootIno, "newdir"); });
  expect_atomic(populate, [](Filesystem& fs) { ASSERT_TRUE(fs.rmdir(fs.lookup(kRootIno, "e")->ino, "sub")); });
}

TEST(FsCrash, UnlinkOfAFileWithDataIsAtomic) {
  expect_atomic(populate, [](Filesystem& fs) { ASSERT_TRUE(fs.unlink(kRootIno, "f")); });
}

TEST(FsCrash, RenameReplacingAcrossDirectoriesIsAtomic) {
  expect_atomic(populate, [](Filesystem& fs) {
    ASSERT_TRUE(fs.rename(kRootIno, "f", fs.lookup(kRootIno, "e")->ino, "g", 0));
  });
}

TEST(FsCrash, RenameExchangeIsAtomic) {
  expect_atomic(populate, [](Filesystem& fs) {
    ASSERT_TRUE(fs.rename(kRootIno, "d", fs.lookup(kRootIno, "e")->ino, "g", kRenameExchange));
  });
}

TEST(FsCrash, LinkAndSymlinkAreAtomic) {
  expect_atomic(populate, [](Filesystem& fs) {
    ASSERT_TRUE(fs.link(fs.lookup(kRootIno, "f")->ino, fs.lookup(kRootIno, "d")->ino, "hard"));
  });
  expect_atomic(populate, [](Filesystem& fs) { ASSERT_TRUE(fs.symlink(kRootIno, "sym", "d/n1", kUser)); });
}

TEST(FsCrash, AppendingWriteIsAtomic) {
  expect_atomic(populate, [](Filesystem& fs) {
    Ino f = fs.lookup(kRootIno, "f")->ino;
    write_str(fs, f, fs.getattr(f)->size, pattern(3 * kBlockSize, 9));
  });
  // The first write of an empty file links its first extent chain block.
  expect_atomic(populate, [](Filesystem& fs) {
    Ino n = fs.lookup(fs.lookup(kRootIno, "d")->ino, "n3")->ino;
    write_str(fs, n, 0, pattern(100, 4));
  });
}

TEST(FsCrash, TruncateAndPunchAreAtomic) {
  expect_atomic(populate, [](Filesystem& fs) {
    SetAttr set;
    set.valid = SetAttr::kSize;
    set.size = kBlockSize + 10;
    ASSERT_TRUE(fs.setattr(fs.lookup(kRootIno, "f")->ino, set, kUser));
  });
  expect_atomic(populate, [](Filesystem& fs) {
    ASSERT_TRUE(fs.fallocate(fs.lookup(kRootIno, "f")->ino, kFallocPunchHole | kFallocKeepSize, kBlockSize,
                             2 * kBlockSize));
  });
}

TEST(FsCrash, XattrChangesAreAtomic) {
  expect_atomic(populate, [](Filesystem& fs) { ASSERT_TRUE(fs.setxattr(kRootIno, "user.new", "v", 0)); });
  expect_atomic(populate, [](Filesystem& fs) {
    ASSERT_TRUE(fs.removexattr(fs.lookup(fs.lookup(kRootIno, "e")->ino, "g")->ino, "user.x"));
  });
}

// ---------------------------------------------------------------- model

// Random data operations on a few files against a model of their bytes,
// with a clean remount or a crash-remount every ~200 steps and fsck at the end.
TEST(FsModel, RandomDataOperationsMatchAModel) {
  Device fs;
  std::mt19937_64 rng(77);
  const int kFiles = 5;
  Ino dir = make_dir(*fs, kRootIno, "model");
  std::vector<std::optional<std::string>> model(kFiles);
  std::vector<Ino> inos(kFiles, 0);
  auto name = [](int i) { return "file" + std::to_string(i); };
  auto rand_off = [&](uint64_t size) -> uint64_t {
    switch (rng() % 4) {
      case 0: return rng() % (size + 1);                          // inside
      case 1: return size;                                         // at the end
      case 2: return size + rng() % (3 * kBlockSize);              // just past it
      default: return rng() % (600 * 1024);                        // anywhere
    }
  };
  auto rand_len = [&]() -> uint64_t {
    switch (rng() % 4) {
      case 0: return 1 + rng() % 100;
      case 1: return kBlockSize * (1 + rng() % 4);
      case 2: return 1 + rng() % (3 * kBlockSize);
      default: return 1 + rng() % (80 * 1024);
    }
  };
  auto compare = [&](int i, int step) {
    if (!model[i]) {
      EXPECT_EQ(err(fs->lookup(dir, name(i))), std::errc::no_such_file_or_directory);
      return;
    }
    auto a = fs->lookup(dir, name(i));
    ASSERT_TRUE(a) << "step " << step;
    ASSERT_EQ(a->ino, inos[i]);
    ASSERT_EQ(a->size, model[i]->size()) << "file " << i << " step " << step;
    std::string got = read_all(*fs, inos[i]);
    if (got != *model[i]) {
      size_t at = 0;
      while (at < got.size() && got[at] == (*model[i])[at]) ++at;
      FAIL() << "file " << i << " differs at byte " << at << " (of " << got.size() << ") after step " << step;
    }
  };

  for (int step = 0; step < 3000; ++step) {
    int i = static_cast<int>(rng() % kFiles);
    if (!model[i]) {
      inos[i] = create(*fs, dir, name(i));
      model[i] = std::string();
      continue;
    }
    std::string& m = *model[i];
    Ino ino = inos[i];
    int op = static_cast<int>(rng() % 20);
    if (op < 8) {  // write / overwrite
      uint64_t off = rand_off(m.size()), len = rand_len();
      std::string data = pattern(len, static_cast<unsigned>(step));
      write_str(*fs, ino, off, data);
      if (m.size() < off + len) m.resize(off + len, '\0');
      m.replace(off, len, data);
    } else if (op < 11) {  // truncate
      uint64_t size = rng() % 2 ? rng() % (m.size() + 1) : rand_off(m.size());
      SetAttr set;
      set.valid = SetAttr::kSize;
      set.size = size;
      ASSERT_TRUE(fs->setattr(ino, set, kUser));
      m.resize(size, '\0');
    } else if (op < 14) {  // punch
      uint64_t off = rand_off(m.size()), len = rand_len();
      ASSERT_TRUE(fs->fallocate(ino, kFallocPunchHole | kFallocKeepSize, off, len));
      if (off < m.size()) std::fill(m.begin() + off, m.begin() + std::min<uint64_t>(m.size(), off + len), '\0');
    } else if (op < 17) {  // fallocate, default / keep size / zero range
      uint64_t off = rand_off(m.size()), len = rand_len();
      int mode = std::array{0, kFallocKeepSize, kFallocZeroRange, kFallocZeroRange | kFallocKeepSize}[rng() % 4];
      auto st = fs->fallocate(ino, mode, off, len);
      ASSERT_TRUE(st) << st.error().to_string();
      if (mode & kFallocZeroRange && off < m.size())
        std::fill(m.begin() + off, m.begin() + std::min<uint64_t>(m.size(), off + len), '\0');
      if (!(mode & kFallocKeepSize) && m.size() < off + len) m.resize(off + len, '\0');
    } else if (op < 19) {  // unlink (recreated later)
      ASSERT_TRUE(fs->unlink(dir, name(i)));
      model[i].reset();
    } else {  // rename over another model file
      int j = static_cast<int>(rng() % kFiles);
      if (j == i) continue;
      ASSERT_TRUE(fs->rename(dir, name(i), dir, name(j), 0));
      model[j] = std::move(model[i]);
      inos[j] = inos[i];
      model[i].reset();
    }
    compare(i, step);
    if (::testing::Test::HasFatalFailure()) return;
    if (step % 200 == 199) {
      fs.remount(/*clean=*/step % 400 == 199);
      for (int k = 0; k < kFiles; ++k) compare(k, step);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  for (int k = 0; k < kFiles; ++k) compare(k, -1);
  auto report = fs.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
  fs.remount(false);
  report = fs.check();
  EXPECT_TRUE(report.clean()) << ::testing::PrintToString(report.problems);
}

}  // namespace
}  // namespace poisonfs
