#!/usr/bin/env bash
# Concurrent stress through a real mount, with poison (issue 6 item 4):
#   mkfs on /dev/shm -> mount -> test/stress/poisonfs_stress (worker processes
#   doing random create/write/overwrite/truncate/rename/unlink, copy_file_range
#   reflinks and mmap writes, while an injector process injects known and
#   latent poison into file blocks and recovers it with pwrite of the true
#   bytes) -> scrub -> no poison left -> unmount -> fsck.poisonfs clean ->
#   remount -> every tracked file matches its model (0 bytes lost) ->
#   fio verify=crc32c over the mount -> unmount -> fsck clean again.
# The image, the mountpoint, the daemon and the driver are removed on exit,
# even on failure. Exits non-zero when anything is lost or unclean.
#
#   bash scripts/stress.sh [--seconds N] [--workers N] [--seed N] [--no-build] [--build-dir DIR]
#
#   --seconds N     how long the random operations run (default 60)
#   --workers N     worker processes (default 4, at most 8)
#   --seed N        the driver's seed (printed by every run; replays its choices)
#   --no-build      use the binaries already built in the build directory
#   --build-dir DIR where the binaries are (default build/, or POISONFS_BUILD_DIR)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'stress: %s\n' "$*" >&2; }
usage() { sed -n '14,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }

seconds=60
workers=4
seed=
build=1
BIN=${POISONFS_BUILD_DIR:-$root/build}
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds | --workers | --seed | --build-dir)
      [[ $# -ge 2 ]] || { usage; exit 2; }
      case $1 in
        --seconds) seconds=$2 ;;
        --workers) workers=$2 ;;
        --seed) seed=$2 ;;
        --build-dir) BIN=$2 ;;
      esac
      shift
      ;;
    --no-build) build=0 ;;
    -h | --help) usage; exit 0 ;;
    *) log "unknown argument '$1'"; usage; exit 2 ;;
  esac
  shift
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { log "--seconds needs a positive number"; exit 2; }
[[ -z $seed || $seed =~ ^[0-9]+$ ]] || { log "--seed needs a number"; exit 2; }
[[ $(id -u) -eq 0 ]] || { log "must run as root (it mounts)"; exit 1; }

if [[ $build == 1 ]]; then
  bash "$root/scripts/setup.sh"
  bash "$root/scripts/build.sh" "$BIN"
fi
DRIVER=$BIN/test/poisonfs_stress
for tool in poisonfs mkfs.poisonfs fsck.poisonfs poisonctl test/poisonfs_stress; do
  [[ -x $BIN/$tool ]] || { log "$BIN/$tool is missing; build first"; exit 1; }
done
command -v fio >/dev/null || { log "fio is missing (scripts/setup.sh installs it)"; exit 1; }

# ---- state and cleanup --------------------------------------------------------------

IMAGE=$(mktemp /dev/shm/poisonfs-stress.XXXXXX)
MNT=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-stress-mnt.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-stress-work.XXXXXX")
DAEMON_PID=
DRIVER_PID=

unmount_fs() {
  if mountpoint -q "$MNT"; then
    for _ in $(seq 50); do
      fusermount3 -u "$MNT" 2>/dev/null && break
      sleep 0.1
    done
    mountpoint -q "$MNT" && fusermount3 -u -z "$MNT"
  fi
  if [[ -n $DAEMON_PID ]]; then
    local rc=0
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=
    [[ $rc -eq 0 ]] || { log "the daemon exited with $rc"; return 1; }
  fi
}

cleanup() {
  local rc=$?
  set +e
  if [[ -n $DRIVER_PID ]]; then
    kill "$DRIVER_PID" 2>/dev/null # its processes die with it (PDEATHSIG)
    wait "$DRIVER_PID" 2>/dev/null
  fi
  if mountpoint -q "$MNT"; then
    for _ in $(seq 50); do
      fusermount3 -u "$MNT" 2>/dev/null && break
      sleep 0.1
    done
    mountpoint -q "$MNT" && fusermount3 -u -z "$MNT"
  fi
  if [[ -n $DAEMON_PID ]]; then
    # It exits once unmounted (writing the image's poison list last): wait
    # for that, or kill it after 20 s.
    (sleep 20 && kill -KILL "$DAEMON_PID" 2>/dev/null) &
    local watchdog=$!
    wait "$DAEMON_PID" 2>/dev/null
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
  fi
  if [[ $rc -ne 0 && -s $WORK/daemon.log ]]; then
    log "daemon log (last lines):"
    tail -n 20 "$WORK/daemon.log" >&2
  fi
  rm -f "$IMAGE" "$IMAGE.badblocks" "$IMAGE.badblocks.tmp"
  rmdir "$MNT" 2>/dev/null
  rm -rf "$WORK"
  [[ $rc -eq 0 ]] || log "FAILED (exit $rc); image, mount and processes removed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_fs() {
  "$BIN/poisonfs" -f "$IMAGE" "$MNT" >>"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 200); do
    mountpoint -q "$MNT" && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.05
  done
  log "the daemon did not mount"
  return 1
}

fsck_clean() {
  local out rc=0
  out=$("$BIN/fsck.poisonfs" -n "$IMAGE" 2>&1) || rc=$?
  if [[ $rc -ne 0 ]]; then
    printf '%s\n' "$out" >&2
    log "fsck.poisonfs -n $1: exit $rc (not clean)"
    return 1
  fi
  log "fsck.poisonfs -n $1: clean"
}

# Fails unless the mount holds no poison: none known or latent, nothing
# quarantined, an empty device poison list.
no_poison_left() {
  local status bad
  status=$("$BIN/poisonctl" status --json "$MNT")
  bad=$("$BIN/poisonctl" badblocks "$MNT")
  if ! grep -q '"known_poison_bytes": 0\b' <<<"$status" || ! grep -q '"latent_poison_bytes": 0\b' <<<"$status" ||
    ! grep -q '"quarantined_bytes": 0\b' <<<"$status" || [[ -n $bad ]]; then
    log "poison left $1: $status"
    [[ -z $bad ]] || log "badblocks: $bad"
    return 1
  fi
  log "no poison left $1"
}

# ---- the run -------------------------------------------------------------------------

"$BIN/mkfs.poisonfs" -f "$IMAGE" 512M >/dev/null
mount_fs

seed_args=()
[[ -z $seed ]] || seed_args=(--seed "$seed")
log "running $workers workers and an injector for $seconds s"
"$DRIVER" run --mnt "$MNT" --poisonctl "$BIN/poisonctl" --state "$WORK/model" --seconds "$seconds" \
  --workers "$workers" "${seed_args[@]}" &
DRIVER_PID=$!
driver_rc=0
wait "$DRIVER_PID" || driver_rc=$?
DRIVER_PID=
[[ $driver_rc -eq 0 ]] || { log "the driver reported failures (exit $driver_rc)"; exit 1; }

# Freed poisoned blocks sit in quarantine until a scrub clears them.
"$BIN/poisonctl" scrub "$MNT" >/dev/null
no_poison_left "after the run"
unmount_fs
fsck_clean "after the run"
mount_fs
"$DRIVER" verify --mnt "$MNT" --state "$WORK/model"
no_poison_left "after remount"

# ---- second check: fio writes and verifies crc32c through the mount ----------------

mkdir "$MNT/fio"
log "fio verify=crc32c"
fio --name=crc --directory="$MNT/fio" --ioengine=psync --rw=randwrite --bsrange=4k-64k --size=64M --numjobs=2 \
  --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting >"$WORK/fio.out" 2>&1 ||
  { cat "$WORK/fio.out" >&2; log "fio verify failed"; exit 1; }
fio --name=crc-mmap --directory="$MNT/fio" --ioengine=mmap --rw=randwrite --bs=4k --size=16M \
  --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 >>"$WORK/fio.out" 2>&1 ||
  { cat "$WORK/fio.out" >&2; log "fio mmap verify failed"; exit 1; }
grep -E '^\s*(WRITE|READ):' "$WORK/fio.out" | sed 's/^ */stress: fio: /' >&2 || true
log "fio: verify=crc32c passed (psync 2x64 MiB, mmap 16 MiB)"
unmount_fs
fsck_clean "after fio"
log "PASSED"
