// The FUSE_HANDLE_KILLPRIV_V2 and FUSE_SETXATTR_EXT shim: see killpriv.h
// for why and how.
#include "killpriv.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

namespace poisonfs::fuse {
namespace {

// FUSE_DIRECT_IO_ALLOW_MMAP (kernel 6.6, protocol 7.39): files opened with
// FOPEN_DIRECT_IO may still be mapped shared. Newer than the headers here.
constexpr uint64_t kDirectIoAllowMmap = uint64_t{1} << 36;

// The request the calling thread read last, i.e. the one it handles.
struct CurrentRequest {
  uint32_t opcode = 0;
  uint64_t unique = 0;
  // WRITE: write_flags; SETATTR: valid; SETXATTR: setxattr_flags; INIT: the
  // kernel's flags
  uint32_t flags = 0;
  uint32_t flags2 = 0;  // INIT: the kernel's flags2 (with FUSE_INIT_EXT)
};

thread_local CurrentRequest t_request;

// Copies the field of type T at offset `at` of a request argument of `size`
// bytes; leaves *out alone when the argument is too short (an old kernel).
template <class T>
void field_at(const std::byte* arg, size_t size, size_t at, T* out) {
  if (size >= at + sizeof(T)) std::memcpy(out, arg + at, sizeof(T));
}

// A SETXATTR in the extended form (FUSE_SETXATTR_EXT) becomes the compat
// form libfuse 3.14 parses: setxattr_flags noted, then the name and value
// moved back over them. Returns the request's new length.
ssize_t take_setxattr_flags(std::byte* buf, ssize_t n) {
  constexpr size_t kHeader = sizeof(fuse_in_header);
  constexpr size_t kExtra = sizeof(fuse_setxattr_in) - FUSE_COMPAT_SETXATTR_IN_SIZE;
  if (n < static_cast<ssize_t>(kHeader + sizeof(fuse_setxattr_in))) return n;
  std::byte* arg = buf + kHeader;
  std::memcpy(&t_request.flags, arg + offsetof(fuse_setxattr_in, setxattr_flags),
              sizeof t_request.flags);
  const size_t rest = static_cast<size_t>(n) - kHeader - sizeof(fuse_setxattr_in);
  std::memmove(arg + FUSE_COMPAT_SETXATTR_IN_SIZE, arg + sizeof(fuse_setxattr_in), rest);
  fuse_in_header h;
  std::memcpy(&h, buf, sizeof h);
  h.len -= kExtra;
  std::memcpy(buf, &h, sizeof h);
  return n - static_cast<ssize_t>(kExtra);
}

// Notes the request just read (see CurrentRequest) and returns its length,
// which shrinks when a SETXATTR is rewritten for libfuse.
ssize_t note_request(void* buf, ssize_t n, const MountContext& mc) {
  t_request = {};
  if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) return n;
  fuse_in_header h;
  std::memcpy(&h, buf, sizeof h);
  t_request.opcode = h.opcode;
  t_request.unique = h.unique;
  const std::byte* arg = static_cast<const std::byte*>(buf) + sizeof h;
  const size_t size = static_cast<size_t>(n) - sizeof h;
  switch (h.opcode) {
    case FUSE_INIT:
      field_at(arg, size, offsetof(fuse_init_in, flags), &t_request.flags);
      if (t_request.flags & FUSE_INIT_EXT) field_at(arg, size, offsetof(fuse_init_in, flags2), &t_request.flags2);
      break;
    case FUSE_WRITE:
      field_at(arg, size, offsetof(fuse_write_in, write_flags), &t_request.flags);
      break;
    case FUSE_SETATTR:
      field_at(arg, size, offsetof(fuse_setattr_in, valid), &t_request.flags);
      break;
    case FUSE_SETXATTR:
      if (mc.setxattr_ext.load(std::memory_order_acquire))
        return take_setxattr_flags(static_cast<std::byte*>(buf), n);
      break;
    default:
      break;
  }
  return n;
}

ssize_t shim_read(int fd, void* buf, size_t len, void* userdata) {
  auto* mc = static_cast<MountContext*>(userdata);
  ssize_t n = read_request(fd, buf, len, mc->request_wait);
  return note_request(buf, n, *mc);
}

// Sends the INIT reply in iov with what libfuse 3.14 cannot ask for added,
// each only when the kernel offered it: FUSE_HANDLE_KILLPRIV_V2,
// FUSE_SETXATTR_EXT when the reply enables POSIX ACLs, and
// FUSE_DIRECT_IO_ALLOW_MMAP when the mount serves files with direct I/O.
ssize_t write_init_reply(int fd, const iovec* iov, int count, MountContext* mc) {
  fuse_out_header out;
  fuse_init_out init{};
  const bool killpriv = (t_request.flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
  const bool setxattr_ext_offered = (t_request.flags & FUSE_SETXATTR_EXT) != 0;
  const bool allow_mmap = mc->direct_io && (t_request.flags2 & (kDirectIoAllowMmap >> 32)) != 0;
  const bool patch = (killpriv || setxattr_ext_offered || allow_mmap) && count == 2 &&
                     iov[0].iov_len == sizeof out &&
                     iov[1].iov_len >= offsetof(fuse_init_out, flags) + 4 &&
                     iov[1].iov_len <= sizeof init;
  if (!patch) return writev(fd, iov, count);
  std::memcpy(&out, iov[0].iov_base, sizeof out);
  if (out.unique != t_request.unique || out.error != 0) return writev(fd, iov, count);
  std::memcpy(&init, iov[1].iov_base, iov[1].iov_len);
  if (killpriv) init.flags |= FUSE_HANDLE_KILLPRIV_V2;
  // The kernel sends the extended SETXATTR from the moment it takes this
  // reply, maybe to another thread before writev returns: the read side
  // must know first.
  const bool setxattr_ext = setxattr_ext_offered && (init.flags & FUSE_POSIX_ACL);
  if (setxattr_ext) {
    init.flags |= FUSE_SETXATTR_EXT;
    mc->setxattr_ext.store(true, std::memory_order_release);
  }
  // flags2 counts only in a reply that says FUSE_INIT_EXT and is long enough.
  const bool mmap_ok = allow_mmap && (init.flags & FUSE_INIT_EXT) &&
                       iov[1].iov_len >= offsetof(fuse_init_out, flags2) + sizeof init.flags2;
  if (mmap_ok) init.flags2 |= static_cast<uint32_t>(kDirectIoAllowMmap >> 32);
  const iovec patched[2] = {iov[0], iovec{&init, iov[1].iov_len}};
  ssize_t n = writev(fd, patched, 2);
  if (n < 0) mc->setxattr_ext.store(false, std::memory_order_release);
  // The kernel took the reply as sent: killing privileges is ours now, and
  // files opened with direct I/O may be mapped.
  if (n >= 0) {
    if (killpriv) mc->killpriv_v2.store(true, std::memory_order_relaxed);
    if (mmap_ok) mc->direct_io_mmap.store(true, std::memory_order_relaxed);
  }
  return n;
}

ssize_t shim_writev(int fd, iovec* iov, int count, void* userdata) {
  if (t_request.opcode == FUSE_INIT)
    return write_init_reply(fd, iov, count, static_cast<MountContext*>(userdata));
  return writev(fd, iov, count);
}

// Replies spliced from a pipe (-o read_reply=splice) go out unchanged.
ssize_t shim_splice_send(int fdin, off_t* offin, int fdout, off_t* offout, size_t len,
                         unsigned flags, void* /*userdata*/) {
  return splice(fdin, offin, fdout, offout, len, flags);
}

}  // namespace

int install_killpriv_shim(fuse_session* se) {
  // No splice_receive: requests must come through shim_read to be seen.
  // The daemon never asks for FUSE_CAP_SPLICE_READ anyway. libfuse keeps the
  // descriptor it already has (closed once, by fuse_session_destroy) and
  // hands the callbacks the session's userdata, our MountContext.
  const fuse_custom_io io = {
      .writev = shim_writev,
      .read = shim_read,
      .splice_receive = nullptr,
      .splice_send = shim_splice_send,
  };
  return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

bool request_kills_suid_sgid() {
  switch (t_request.opcode) {
    case FUSE_WRITE:
      return (t_request.flags & FUSE_WRITE_KILL_SUIDGID) != 0;
    case FUSE_SETATTR:
      return (t_request.flags & FATTR_KILL_SUIDGID) != 0;
    default:
      return false;
  }
}

bool request_kills_acl_sgid() {
  return t_request.opcode == FUSE_SETXATTR && (t_request.flags & FUSE_SETXATTR_ACL_KILL_SGID) != 0;
}

bool request_is_page_writeback() {
  return t_request.opcode == FUSE_WRITE && (t_request.flags & FUSE_WRITE_CACHE) != 0;
}

}  // namespace poisonfs::fuse
