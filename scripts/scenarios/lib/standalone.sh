#!/usr/bin/env bash
# The standalone harness of the scenarios b to g (scenario a keeps its
# own copy): sourced by a scenario run as `bash scripts/scenarios/X.sh`, with
# SC_NAME (the scenario's letter) and SC_MAIN (its main function) set. Makes
# an image on /dev/shm (SC_SIZE, default 64M), mounts it, runs SC_MAIN with
# the same helpers and variables the demo gives (step, show, note, poisonctl,
# mount_fs, unmount_fs, IMAGE, MNT, BIN, WORK), then unmounts and runs fsck.
# Everything is removed on exit, even on failure; with SC_KEEP_WORK=1 the
# work directory (with the map pictures) is kept and its path printed.
# Not a scenario itself: it lives in lib/ so that the demo does not source it.
# Helpers are called by the scenario; mount_fs takes the options only scenarios pass.
# shellcheck disable=SC2317,SC2119,SC2120
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
BIN=${POISONFS_BUILD_DIR:-$root/build}
for tool in poisonfs mkfs.poisonfs fsck.poisonfs poisonctl; do
  [[ -x $BIN/$tool ]] || { printf 'scenario %s: %s/%s is missing; build first (scripts/build.sh)\n' "$SC_NAME" "$BIN" "$tool" >&2; exit 1; }
done
IMAGE=$(mktemp "/dev/shm/poisonfs-scenario-$SC_NAME.XXXXXX")
MNT=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-scenario-$SC_NAME-mnt.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-scenario-$SC_NAME-work.XXXXXX")
DAEMON_PID=

step() { printf '\n== %s\n' "$*"; }
note() { :; }
show() {
  printf '$ %s\n' "$*"
  "$@"
}
poisonctl() { "$BIN/poisonctl" "$@"; }

mount_fs() {
  "$BIN/poisonfs" -f "$@" "$IMAGE" "$MNT" >>"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    mountpoint -q "$MNT" && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || { printf 'scenario %s: poisonfs exited\n' "$SC_NAME" >&2; return 1; }
    sleep 0.1
  done
  printf 'scenario %s: the mount did not come up\n' "$SC_NAME" >&2
  return 1
}

unmount_fs() {
  # A mount whose daemon died (scenario f) is no mountpoint to mountpoint(1)
  # (stat fails with ENOTCONN) but is still in the mount table.
  if mountpoint -q "$MNT" 2>/dev/null || grep -qsF " $MNT " /proc/self/mounts; then
    fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT"
  fi
  if [[ -n $DAEMON_PID ]]; then
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$DAEMON_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
  fi
}

sc_cleanup() {
  local rc=$?
  set +e
  unmount_fs
  if [[ $rc -ne 0 && -s $WORK/daemon.log ]]; then
    printf 'scenario %s: daemon log:\n' "$SC_NAME" >&2
    tail -n 20 "$WORK/daemon.log" >&2
  fi
  rm -f "$IMAGE" "$IMAGE.badblocks" "$IMAGE.badblocks.tmp"
  rmdir "$MNT" 2>/dev/null
  if [[ ${SC_KEEP_WORK:-0} == 1 ]]; then
    printf 'scenario %s: work directory kept: %s\n' "$SC_NAME" "$WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap sc_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "scenario $SC_NAME: mkfs.poisonfs and mount on /dev/shm"
"$BIN/mkfs.poisonfs" "$IMAGE" "${SC_SIZE:-64M}" >/dev/null
mount_fs
printf 'image %s mounted on %s\n' "$IMAGE" "$MNT"

rc=0
"$SC_MAIN" || rc=$?

step "scenario $SC_NAME: unmount and fsck"
unmount_fs
if ! "$BIN/fsck.poisonfs" -n "$IMAGE"; then
  printf 'FAIL (fsck.poisonfs found problems)\n'
  rc=1
fi
exit "$rc"
