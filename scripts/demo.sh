#!/usr/bin/env bash
# README command 1: installs what is needed, builds, and runs the main job on
# the embedded default, an image on /dev/shm (RAM, like pmem):
#   mkfs.poisonfs -> mount -> write, copy, list files -> poisonctl stat ->
#   unmount -> fsck.poisonfs -> remount and verify -> report.
# The image and the mountpoint are removed on exit, even on failure, and no
# mount or daemon is left behind.
#
#   bash scripts/demo.sh [--no-build] [SCENARIO...]
#
# Scenarios: every scripts/scenarios/*.sh (or the ones named on the command
# line) is sourced after the basic job, with the filesystem mounted, in a
# shell that has the helpers below (step, mount_fs, unmount_fs, run_fsck,
# poisonctl, note) and the variables IMAGE, MNT, BIN. A scenario reports with
# `note "..."`, fails by returning non-zero, and sets FSCK_EXPECT when it
# leaves damage on purpose that the final fsck reports. They are (issue 5):
# a shared block recovered, b shared block with other data, c metadata
# poison, d latent poison found by a read then by scrub, e free-space poison,
# f daemon SIGKILLed during a recovery, g punch+pwrite vs in-place recovery.
# POISONFS_BUILD_DIR overrides the build directory (default build/).
# The helpers take optional arguments that only scenarios pass:
# shellcheck disable=SC2119,SC2120
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

build=1
scenarios=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) build=0 ;;
    -h | --help)
      sed -n "2,20p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      printf 'demo: unknown option %s\n' "$1" >&2
      exit 2
      ;;
    *) scenarios+=("$1") ;;
  esac
  shift
done

BIN=${POISONFS_BUILD_DIR:-$root/build}
if [[ $build == 1 ]]; then
  bash "$root/scripts/setup.sh"
  bash "$root/scripts/build.sh" "$BIN"
fi
for tool in poisonfs mkfs.poisonfs fsck.poisonfs poisonctl; do
  [[ -x $BIN/$tool ]] || { printf 'demo: %s/%s is missing; build first\n' "$BIN" "$tool" >&2; exit 1; }
done

# ---- state and cleanup --------------------------------------------------------

IMAGE=$(mktemp /dev/shm/poisonfs-demo.XXXXXX)
MNT=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-demo-mnt.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-demo-work.XXXXXX")
DAEMON_PID=
NOTES=()
FSCK_EXPECT=0 # the final fsck's exit code; a scenario that leaves damage sets it
STARTED=$SECONDS

# Whether MNT is mounted, also when its daemon died (scenario f kills it):
# mountpoint(1) then fails to stat it (ENOTCONN) but the mount table has it.
mounted() {
  mountpoint -q "$MNT" 2>/dev/null || grep -qsF " $MNT " /proc/self/mounts
}

cleanup() {
  local rc=$?
  set +e
  if [[ -n $DAEMON_PID ]] || mounted; then
    unmount_fs quiet
  fi
  if [[ $rc -ne 0 && -s $WORK/daemon.log ]]; then
    printf '\ndemo: daemon log:\n' >&2
    tail -n 20 "$WORK/daemon.log" >&2
  fi
  rm -f "$IMAGE" "$IMAGE.badblocks" "$IMAGE.badblocks.tmp" # the simulated DIMM's error record
  rmdir "$MNT" 2>/dev/null
  rm -rf "$WORK"
  if [[ $rc -ne 0 ]]; then
    printf '\ndemo: FAILED (exit %d); image and mountpoint removed\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers for the job and for scenarios -------------------------------------

step() { printf '\n== %s\n' "$*"; }
note() { NOTES+=("$*"); }
show() {
  printf '$ %s\n' "$*"
  "$@"
}
poisonctl() { "$BIN/poisonctl" "$@"; }

# Starts the daemon in the foreground (-f) as our own child, so that its pid
# is known exactly, and waits until the mount is up.
mount_fs() {
  printf '$ poisonfs %s %s\n' "$IMAGE" "$MNT"
  "$BIN/poisonfs" -f "$@" "$IMAGE" "$MNT" >>"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    if mountpoint -q "$MNT"; then
      return 0
    fi
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      wait "$DAEMON_PID" || true
      DAEMON_PID=
      printf 'demo: poisonfs exited before the mount came up:\n' >&2
      cat "$WORK/daemon.log" >&2
      return 1
    fi
    sleep 0.1
  done
  printf 'demo: the mount did not come up within 10 s\n' >&2
  return 1
}

# Waits up to 10 s for our daemon to exit.
daemon_gone() {
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$DAEMON_PID" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# Unmounts and waits for the daemon to exit (it flushes first); escalates to
# SIGTERM and then SIGKILL of our own daemon only if it hangs.
unmount_fs() {
  [[ ${1:-} == quiet ]] || printf '$ fusermount3 -u %s\n' "$MNT"
  if mounted; then
    fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT"
  fi
  [[ -n $DAEMON_PID ]] || return 0
  if ! daemon_gone; then
    printf 'demo: daemon %d still running after unmount; sending SIGTERM\n' "$DAEMON_PID" >&2
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    if ! daemon_gone; then
      printf 'demo: daemon %d ignores SIGTERM; sending SIGKILL\n' "$DAEMON_PID" >&2
      kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$DAEMON_PID" 2>/dev/null || rc=$?
  DAEMON_PID=
  if [[ $rc -ne 0 ]]; then
    printf 'demo: poisonfs exited with status %d\n' "$rc" >&2
    return 1
  fi
}

# Runs fsck.poisonfs and records its verdict; returns its exit code.
run_fsck() {
  local rc=0
  show "$BIN/fsck.poisonfs" "$@" "$IMAGE" || rc=$?
  return "$rc"
}

# ---- the basic job ---------------------------------------------------------------

basic_job() {
  step "mkfs.poisonfs on /dev/shm (the embedded default: RAM, like pmem)"
  show "$BIN/mkfs.poisonfs" "$IMAGE" 256M

  step "mount"
  mount_fs
  findmnt -n -o SOURCE,TARGET,FSTYPE "$MNT" || true

  step "write, copy and list files"
  head -c $((4 << 20)) /dev/urandom >"$WORK/random.bin"
  show cp "$WORK/random.bin" "$MNT/random.bin"
  show mkdir -p "$MNT/tree/a/b/c" "$MNT/tree/empty"
  local i
  for i in $(seq 1 50); do
    printf 'file %d of the demo tree\n' "$i" >"$MNT/tree/a/file$i.txt"
  done
  seq 1 200000 >"$MNT/tree/a/b/numbers.txt"
  : >"$MNT/tree/a/b/c/zero-length"
  show ln -s ../random.bin "$MNT/tree/link-to-random"
  show cp "$MNT/random.bin" "$MNT/tree/copy.bin"
  show cp -r "$root/include" "$MNT/tree/include-copy"
  show truncate -s 1G "$MNT/sparse.img"
  printf 'hello, poisonfs\n' >"$MNT/hello.txt"
  show mv "$MNT/hello.txt" "$MNT/tree/hello.txt"
  cmp "$MNT/random.bin" "$MNT/tree/copy.bin"
  cmp "$WORK/random.bin" "$MNT/tree/link-to-random"
  diff -r "$root/include" "$MNT/tree/include-copy"
  show ls -l "$MNT" "$MNT/tree"
  show df -h "$MNT"
  show poisonctl stat "$MNT"

  (cd "$MNT" && find . -type f ! -name sparse.img -print0 | sort -z | xargs -0 sha256sum) \
    >"$WORK/sums"
  FILES=$(find "$MNT" -mindepth 1 | wc -l)
  BYTES=$(du -sb --apparent-size --exclude=sparse.img "$MNT" | cut -f1)

  step "unmount and check"
  unmount_fs
  run_fsck

  step "remount and verify every file"
  mount_fs
  (cd "$MNT" && sha256sum --quiet -c "$WORK/sums")
  [[ $(readlink "$MNT/tree/link-to-random") == ../random.bin ]]
  [[ $(stat -c %s "$MNT/sparse.img") == 1073741824 ]]
  printf '%d files verified after remount\n' "$(wc -l <"$WORK/sums")"
  note "basic: $FILES files and directories, $((BYTES / 1024)) KiB written, copied, verified after remount"
}

# ---- scenarios ---------------------------------------------------------------------

run_scenarios() {
  local files=() s
  if [[ ${#scenarios[@]} -gt 0 ]]; then
    for s in "${scenarios[@]}"; do
      [[ -f $s ]] || s=$root/scripts/scenarios/${s%.sh}.sh
      files+=("$s")
    done
  else
    shopt -s nullglob
    files=("$root"/scripts/scenarios/*.sh)
    shopt -u nullglob
  fi
  for s in "${files[@]}"; do
    step "scenario $(basename "$s" .sh)"
    mountpoint -q "$MNT" || mount_fs
    # shellcheck source=/dev/null
    source "$s"
  done
}

basic_job
run_scenarios

step "final unmount and check"
unmount_fs
fsck_rc=0
fsck_out=$("$BIN/fsck.poisonfs" "$IMAGE") || fsck_rc=$?
printf '%s\n' "$fsck_out"
if [[ $fsck_rc -ne $FSCK_EXPECT ]]; then
  printf 'demo: fsck.poisonfs exited %d, expected %d\n' "$fsck_rc" "$FSCK_EXPECT" >&2
  exit 1
fi

step "report"
printf 'image:       %s (256 MiB on /dev/shm)\n' "$IMAGE"
printf 'mountpoint:  %s\n' "$MNT"
for n in "${NOTES[@]}"; do
  printf 'done:        %s\n' "$n"
done
printf 'fsck:        %s\n' "${fsck_out##*$'\n'}"
printf 'elapsed:     %d s\n' "$((SECONDS - STARTED))"
printf 'demo: OK (the image and the mountpoint are removed now)\n'
