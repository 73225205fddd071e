#!/usr/bin/env bash
# Configures and builds poisonfs with CMake, then (as root) installs the four
# binaries and makes `mount -t fuse.poisonfs IMAGE MNT` and fstab lines work.
#
#   bash scripts/build.sh [--debug|--sanitize|--tsan] [BUILD_DIR]
#
#   (default)    Release into build/
#   --debug      Debug into build-debug/
#   --sanitize   Debug with ASan+UBSan (-DPOISONFS_SANITIZE=ON) into build-asan/
#   --tsan       Debug with ThreadSanitizer (-DPOISONFS_TSAN=ON) into build-tsan/
#
# Set POISONFS_NO_INSTALL=1 to build without installing (sanitizer builds
# are never installed: the installed binaries stay the Release ones).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'build: %s\n' "$*" >&2; }
usage() { printf 'usage: %s [--debug|--sanitize|--tsan] [BUILD_DIR]\n' "$0" >&2; }

mode=release
build_dir=
while [[ $# -gt 0 ]]; do
  case $1 in
    --debug) mode=debug ;;
    --sanitize) mode=sanitize ;;
    --tsan) mode=tsan ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*)
      log "unknown option '$1'"
      usage
      exit 2
      ;;
    *)
      if [[ -n $build_dir ]]; then
        log "only one BUILD_DIR may be given"
        usage
        exit 2
      fi
      build_dir=$1
      ;;
  esac
  shift
done

cmake_args=()
case $mode in
  release)
    : "${build_dir:=$root/build}"
    cmake_args+=(-DCMAKE_BUILD_TYPE=Release -DPOISONFS_SANITIZE=OFF -DPOISONFS_TSAN=OFF)
    ;;
  debug)
    : "${build_dir:=$root/build-debug}"
    cmake_args+=(-DCMAKE_BUILD_TYPE=Debug -DPOISONFS_SANITIZE=OFF -DPOISONFS_TSAN=OFF)
    ;;
  sanitize)
    : "${build_dir:=$root/build-asan}"
    cmake_args+=(-DCMAKE_BUILD_TYPE=Debug -DPOISONFS_SANITIZE=ON -DPOISONFS_TSAN=OFF)
    ;;
  tsan)
    : "${build_dir:=$root/build-tsan}"
    cmake_args+=(-DCMAKE_BUILD_TYPE=Debug -DPOISONFS_SANITIZE=OFF -DPOISONFS_TSAN=ON)
    ;;
esac

log "configuring $mode build in $build_dir"
cmake -S "$root" -B "$build_dir" "${cmake_args[@]}" >/dev/null
log "building with $(nproc) jobs"
cmake --build "$build_dir" -j"$(nproc)"

if [[ $mode == sanitize || $mode == tsan ]]; then
  log "$mode build: binaries left in $build_dir (sanitizer builds are not installed)"
  exit 0
fi
if [[ ${POISONFS_NO_INSTALL:-0} == 1 ]]; then
  log "POISONFS_NO_INSTALL=1: binaries left in $build_dir (not installed)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "not root: binaries left in $build_dir (not installed)"
  exit 0
fi

# The binaries go to /usr/local/sbin (CMake's RUNTIME DESTINATION sbin).
cmake --install "$build_dir" --prefix /usr/local >/dev/null
log "installed poisonfs mkfs.poisonfs fsck.poisonfs poisonctl into /usr/local/sbin"

# How `mount -t fuse.poisonfs IMAGE MNT` (and an fstab line of type
# fuse.poisonfs) reaches the daemon, as traced on Debian 12 with
# `strace -f -e trace=execve mount -t fuse.poisonfs IMAGE MNT`:
#   1. mount(8) looks for /sbin/mount.fuse.poisonfs, finds none and runs
#      /sbin/mount.fuse (-> mount.fuse3) IMAGE MNT -o rw -t fuse.poisonfs,
#      with an environment sanitized by util-linux: PATH (and HOME, SHELL)
#      removed.
#   2. mount.fuse3 runs /bin/sh -c "'poisonfs' 'IMAGE' 'MNT' '-o' 'rw,dev,suid'".
#   3. With no PATH, /bin/sh searches its built-in default. dash's (Debian's
#      /bin/sh) is /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin,
#      so /usr/local/sbin/poisonfs is found; bash's default has it too. So on
#      Debian 12 nothing more is strictly needed. A shell whose built-in
#      default leaves out /usr/local (minimal or embedded ones) would not find
#      it, so a symlink in /usr/sbin (== /sbin on merged-/usr Debian) makes the
#      lookup independent of which shell /bin/sh is and of the caller's PATH.
# No /sbin/mount.fuse.poisonfs helper is needed: mount.fuse3 already passes
# fuse.SUBTYPE through to the daemon named SUBTYPE.
for tool in poisonfs mkfs.poisonfs fsck.poisonfs; do
  target=/usr/local/sbin/$tool
  link=/usr/sbin/$tool
  if [[ -e $link && ! -L $link ]]; then
    log "warning: $link exists and is not a symlink; left alone"
    continue
  fi
  ln -sfn "$target" "$link"
done
# fsck(8) runs fsck.TYPE from /sbin too, so the fsck.poisonfs link above
# also makes `fsck -t poisonfs IMAGE` work.
log "linked /usr/sbin/{poisonfs,mkfs.poisonfs,fsck.poisonfs} -> /usr/local/sbin"
