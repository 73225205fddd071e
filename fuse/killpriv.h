// FUSE_HANDLE_KILLPRIV_V2 for libfuse 3.14, which cannot negotiate it.
//
// Why: unless the INIT reply carries FUSE_HANDLE_KILLPRIV_V2, the kernel
// keeps SB_NOSEC off for a FUSE mount, so no inode ever keeps S_NOSEC and
// every write(2) first asks GETXATTR "security.capability" (the
// file_remove_privs check): two round trips per small write instead of
// one. With the flag the kernel sets SB_NOSEC, asks once per inode (again
// only after it refreshes the inode's attributes), and leaves it to the
// filesystem to drop setuid/setgid and security.capability on write,
// truncate and chown, saying per request whether the caller lacks
// CAP_FSETID: FUSE_WRITE_KILL_SUIDGID in a WRITE's write_flags,
// FATTR_KILL_SUIDGID in a SETATTR's valid (fs/fuse/file.c, dir.c). libfuse
// 3.14 knows neither the INIT flag nor those request flags: do_write and
// do_setattr drop them before the handlers run.
//
// How: libfuse lets the daemon supply the functions that read requests
// from /dev/fuse and write replies to it (fuse_session_custom_io, installed
// after fuse_session_mount on the descriptor it opened). The read function
// notes the request just read in a thread_local: libfuse's loops (single-
// or multithreaded, with clone_fd or not) handle a request on the thread
// that read it, so a handler finds its own request there. The write
// function adds FUSE_HANDLE_KILLPRIV_V2 to the INIT reply, and only when
// the kernel offered it in the INIT request.
//
// The same shim carries FUSE_SETXATTR_ACL_KILL_SGID, which libfuse 3.14
// cannot receive either: the kernel sets it in a SETXATTR of
// system.posix_acl_access when the caller is neither in the file's group
// nor has CAP_FSETID (fs/fuse/acl.c, fuse_set_acl; posix_acl_update_mode
// drops the setgid bit then), but only in the extended fuse_setxattr_in,
// which it sends only to a daemon whose INIT reply says FUSE_SETXATTR_EXT
// (fs/fuse/xattr.c). libfuse 3.14 has no FUSE_CAP_SETXATTR_EXT and reads
// the 8-byte compat form (later versions know the flag but still drop
// setxattr_flags). So the write function adds FUSE_SETXATTR_EXT to an INIT
// reply that enables POSIX ACLs, when the kernel offered it, and the read
// function notes setxattr_flags of every SETXATTR and moves the name and
// value back over them: libfuse gets the compat form it knows.
//
// FUSE_OPEN_KILL_SUIDGID is not needed: without FUSE_CAP_ATOMIC_O_TRUNC
// the kernel strips O_TRUNC from OPEN and truncates with a SETATTR, which
// carries FATTR_KILL_SUIDGID. What the kernel does not flag (fallocate and
// copy_file_range go through file_modified, whose setattr the kernel drops
// under KILLPRIV_V2) the handlers do themselves (ops.cc).
//
// Replace this with FUSE_CAP_HANDLE_KILLPRIV_V2 once libfuse has it.
#pragma once

#include "ops.h"

namespace poisonfs::fuse {

// Makes se read and write /dev/fuse through the shim. REQUIRES: se is
// mounted, its userdata is the MountContext, and its loop has not started.
// Returns 0 or a negative errno.
int install_killpriv_shim(fuse_session* se);

// Whether the kernel asked the request this thread handles to drop the
// setuid/setgid bits (the caller lacks CAP_FSETID). False unless the kernel
// accepted FUSE_HANDLE_KILLPRIV_V2.
bool request_kills_suid_sgid();

// Whether the kernel asked the SETXATTR this thread handles (an access
// ACL) to drop the setgid bit. False unless the kernel accepted
// FUSE_SETXATTR_EXT.
bool request_kills_acl_sgid();

// Whether the request this thread handles writes back cached pages (a
// shared mmap): nothing is dropped for those, as in the VFS.
bool request_is_page_writeback();

}  // namespace poisonfs::fuse
