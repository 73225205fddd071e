#!/usr/bin/env bash
# Scenario (a): three reflinked files, one poisoned block, recovered with a
# plain write of the true data.
#
#   original.bin   64 KiB of random data
#   copy.bin       `cp original.bin copy.bin` (copy_file_range: a reflink)
#   ranged.bin     16 KiB of its own, whose block at 8 KiB is replaced by
#                  block 5 of original.bin (`poisonctl reflink --range`)
#
# Known poison is injected into the shared block (its device offset comes
# from `poisonctl bmap --json`); fsmap shows the three owners, `poisonctl
# poison` shows each file's own range, reads fail with EIO in all three, the
# event log names them. ONE plain write of the block's true bytes (saved
# before the injection) through one sharer, `dd conv=notrunc oflag=direct`
# into copy.bin, heals all three: the bytes match the block's recorded
# crc32c, so poisonfs writes them in place and clears the poison for every
# sharer (the kernel's XFS would copy the block for the writer and leave
# the other two poisoned). The three files read back identical to the
# originals, still share the same physical block (bmap unchanged), no
# space was used, one "heal" event names all three, and the device's
# poison list is empty at the end. Writes `poisonctl map --svg` pictures
# before and after the recovery. Prints a report and PASS or FAIL.
#
# Run by scripts/demo.sh (sourced, with the filesystem mounted), or alone:
#   bash scripts/scenarios/a_shared_block_recovered.sh
# which makes its own image on /dev/shm and its own mount, and removes both
# on exit. POISONFS_BUILD_DIR names the build directory (default build/).

# The standalone part below the sourced branch's `return` is reachable.
# shellcheck disable=SC2317

# Everything runs in sa_main; names are prefixed (sa_) because the demo
# sources this file into its own shell.
sa_main() {
  local dir=$MNT/scenario-a
  local a=$dir/original.bin b=$dir/copy.bin c=$dir/ranged.bin
  local saved=$WORK/scenario-a
  local -a failures=()
  local -i a_block=$((5 * 4096)) c_block=$((2 * 4096)) inside=1024 plen=1024
  sa_fail() {
    failures+=("$*")
    printf 'scenario a: FAILED CHECK: %s\n' "$*" >&2
  }

  step "scenario a: three files share one block"
  mkdir -p "$dir" "$saved" || { sa_fail "mkdir"; return 1; }
  head -c $((64 << 10)) /dev/urandom >"$a" || sa_fail "write $a"
  head -c $((16 << 10)) /dev/urandom >"$c" || sa_fail "write $c"
  show cp "$a" "$b" || sa_fail "cp"
  show poisonctl reflink "$a" "$c" --range "$a_block" "$c_block" 4096 || sa_fail "reflink --range"

  local pa pb pc
  pa=$(sc_physical "$a" "$a_block")
  pb=$(sc_physical "$b" "$a_block")
  pc=$(sc_physical "$c" "$c_block")
  if [[ -z $pa ]]; then
    sa_fail "no physical offset for $a"
    return 1
  fi
  if [[ $pb != "$pa" ]]; then
    # cp copied bytes (no copy_file_range here): reflink the whole file.
    printf 'cp did not share the blocks; using poisonctl reflink\n'
    show poisonctl reflink "$a" "$b" || sa_fail "reflink $a $b"
    pb=$(sc_physical "$b" "$a_block")
  fi
  [[ $pb == "$pa" && $pc == "$pa" ]] || sa_fail "the block is not shared: $pa $pb $pc"
  local -i block=$pa
  printf 'the shared block: device bytes %d..%d\n' "$block" $((block + 4095))

  # The true bytes, kept outside the filesystem before anything is lost.
  if ! { cp "$a" "$saved/original.bin" && cp "$b" "$saved/copy.bin" && cp "$c" "$saved/ranged.bin"; }; then
    sa_fail "saving the originals"
  fi
  dd if="$a" of="$saved/block.bin" bs=4096 skip=5 count=1 status=none || sa_fail "saving the block"

  step "scenario a: inject known poison into the shared block"
  show poisonctl inject "$MNT" $((block + inside)) "$plen" || sa_fail "inject"
  show poisonctl badblocks "$MNT" || sa_fail "badblocks"
  show poisonctl badblocks --bytes "$MNT" || sa_fail "badblocks --bytes"

  step "scenario a: fsmap of the poisoned block: three owners"
  local map
  map=$(poisonctl fsmap "$MNT" "$block" 4096) || sa_fail "fsmap"
  printf '%s\n' "$map"
  local -i owners
  owners=$(grep -cE '^ *[0-9]+: .* data ' <<<"$map" || true)
  ((owners == 3)) || sa_fail "fsmap shows $owners data owners, expected 3"
  owners=$(grep -cE '^ *[0-9]+: .* data .*poisoned' <<<"$map" || true)
  ((owners == 3)) || sa_fail "fsmap marks $owners owners poisoned, expected 3"

  step "scenario a: each file sees the poison at its own offset"
  local f want got
  for f in "$a" "$b" "$c"; do
    show poisonctl poison "$f" || sa_fail "poison $f"
  done
  for f in "$a" "$b" "$c"; do
    local -i at=$((a_block + inside))
    [[ $f == "$c" ]] && at=$((c_block + inside))
    want=$(printf '[\n{"file_offset": %d, "length": %d}\n]' "$at" "$plen")
    got=$(poisonctl poison --json "$f")
    [[ $got == "$want" ]] || sa_fail "poison --json $f: $got"
  done

  step "scenario a: reads of the poisoned block fail in all three files"
  sa_read_fails "$a" 5 || sa_fail "a read of $a did not fail with EIO"
  sa_read_fails "$b" 5 || sa_fail "a read of $b did not fail with EIO"
  sa_read_fails "$c" 2 || sa_fail "a read of $c did not fail with EIO"
  printf '$ cmp -n 8192 %s %s\n' "$c" "$saved/ranged.bin"
  if cmp -n 8192 "$c" "$saved/ranged.bin"; then
    printf 'the clean blocks before it read back right\n'
  else
    sa_fail "clean blocks of $c"
  fi

  step "scenario a: the event log"
  local events
  events=$(poisonctl events "$MNT") || sa_fail "events"
  printf '%s\n' "$events"
  for f in "$a" "$b" "$c"; do
    grep -qF " ${f#"$MNT"} file " <<<"$events" || sa_fail "the events do not name ${f#"$MNT"}"
  done

  step "scenario a: ONE write of the true bytes, through copy.bin, heals all three"
  local map_before=$WORK/scenario-a-before.svg map_after=$WORK/scenario-a-after.svg
  show poisonctl map --svg "$map_before" "$MNT" || sa_fail "map --svg (before)"
  local bmap_before free_before free_after
  bmap_before=$(for f in "$a" "$b" "$c"; do poisonctl bmap --json "$f" | sa_blocks; done)
  free_before=$(poisonctl stat --json "$MNT" | sed -n 's/.*"free_blocks": \([0-9]*\).*/\1/p')
  show dd if="$saved/block.bin" of="$b" bs=4096 seek=5 count=1 conv=notrunc oflag=direct status=none ||
    sa_fail "recovery write into $b"
  local -i after_a after_b after_c
  after_a=$(sc_physical "$a" "$a_block")
  after_b=$(sc_physical "$b" "$a_block")
  after_c=$(sc_physical "$c" "$c_block")
  printf 'the block lives at device offsets: original.bin %d, copy.bin %d, ranged.bin %d\n' \
    "$after_a" "$after_b" "$after_c"
  ((after_a == block && after_b == block && after_c == block)) || sa_fail "the block moved: no longer shared in place"
  [[ $(for f in "$a" "$b" "$c"; do poisonctl bmap --json "$f" | sa_blocks; done) == "$bmap_before" ]] ||
    sa_fail "bmap changed"
  free_after=$(poisonctl stat --json "$MNT" | sed -n 's/.*"free_blocks": \([0-9]*\).*/\1/p')
  printf 'free blocks before %s, after %s\n' "$free_before" "$free_after"
  [[ $free_after == "$free_before" ]] || sa_fail "the recovery used space"
  local heal
  heal=$(poisonctl events --json "$MNT" | grep '"kind":"heal"' || true)
  printf '$ poisonctl events --json %s | grep heal\n%s\n' "$MNT" "$heal"
  for f in "$a" "$b" "$c"; do
    grep -qF "\"path\":\"${f#"$MNT"}\"" <<<"$heal" || sa_fail "no heal event names ${f#"$MNT"}"
  done
  show poisonctl map --svg "$map_after" "$MNT" || sa_fail "map --svg (after)"

  step "scenario a: everything reads back identical; the poison list is empty"
  for f in original copy ranged; do
    if cmp "$dir/$f.bin" "$saved/$f.bin"; then
      printf '%s.bin: identical to the original\n' "$f"
    else
      sa_fail "$f.bin differs from the original"
    fi
  done
  local list
  list=$(poisonctl badblocks "$MNT") || sa_fail "badblocks"
  printf '$ poisonctl badblocks %s\n%s' "$MNT" "${list:+$list$'\n'}"
  [[ -z $list ]] || sa_fail "the poison list is not empty: $list"
  show poisonctl status "$MNT" || sa_fail "status"
  poisonctl events "$MNT" | tail -n 6

  step "scenario a: report"
  printf 'files:     original.bin, copy.bin (cp: reflink), ranged.bin (block 5 of original.bin at 8 KiB: reflink --range)\n'
  printf 'block:     device bytes %d..%d, shared by all three\n' "$block" $((block + 4095))
  printf 'poison:    device bytes %d..%d (known, %d bytes)\n' $((block + inside)) $((block + inside + plen - 1)) "$plen"
  printf 'seen as:   original.bin and copy.bin at %d+%d, ranged.bin at %d+%d; reads EIO in all three\n' \
    $((a_block + inside)) "$plen" $((c_block + inside)) "$plen"
  printf 'recovery:  one dd of the saved 4 KiB into copy.bin: it matched the block'\''s crc32c, so the block\n'
  printf '           was rewritten in place and all three sharers were healed at once; sharing kept, no space used\n'
  printf 'pictures:  %s (before), %s (after)\n' "$map_before" "$map_after"
  if ((${#failures[@]} == 0)); then
    printf 'result:    all three identical to the originals, poison list empty\n'
  fi
  rm -rf "$saved"
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario a: shared block poisoned in 3 files, EIO in all 3, all healed by one dd of the true bytes: PASS"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

# bmap --json on stdin, one "file_offset physical shared" line per block:
# comparable before and after (records split at poison).
sa_blocks() {
  local fo ph len sh i
  sed -n 's/.*"file_offset": \([0-9]*\), "physical": \([0-9]*\), "length": \([0-9]*\), "shared": \([a-z]*\).*/\1 \2 \3 \4/p' |
    while read -r fo ph len sh; do
      for ((i = 0; i < len; i += 4096)); do printf '%d %d %s\n' $((fo + i)) $((ph + i)) "$sh"; done
    done
}

# Reads block BLOCK of FILE with dd until it fails with EIO (the kernel's
# cached pages are dropped just after the poison is reported); a read that
# succeeds meanwhile must not return poisoned bytes.
sa_read_fails() {
  local err=$WORK/scenario-a.err out=$WORK/scenario-a.out i
  printf '$ dd if=%s of=/dev/null bs=4096 skip=%d count=1\n' "$1" "$2"
  for ((i = 0; i < 50; i++)); do
    if ! dd if="$1" of="$out" bs=4096 skip="$2" count=1 status=none 2>"$err"; then
      cat "$err"
      grep -q 'Input/output error' "$err"
      return
    fi
    if grep -qaF '#POISON#' "$out"; then
      printf 'poisoned bytes leaked from %s\n' "$1" >&2
      return 1
    fi
    sleep 0.05
  done
  return 1
}

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  # Sourced by the demo: its helpers, IMAGE, MNT, BIN and WORK are set, and
  # the filesystem is mounted. A failed check fails the demo.
  sa_rc=0
  sa_main || sa_rc=$?
  unset -f sa_main sa_blocks sa_read_fails sa_fail
  return "$sa_rc"
fi

# ---- standalone: our own image on /dev/shm and our own mount ------------------

set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${POISONFS_BUILD_DIR:-$root/build}
for tool in poisonfs mkfs.poisonfs fsck.poisonfs poisonctl; do
  [[ -x $BIN/$tool ]] || { printf 'scenario a: %s/%s is missing; build first (scripts/build.sh)\n' "$BIN" "$tool" >&2; exit 1; }
done
IMAGE=$(mktemp /dev/shm/poisonfs-scenario-a.XXXXXX)
MNT=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-scenario-a-mnt.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/poisonfs-scenario-a-work.XXXXXX")
DAEMON_PID=

step() { printf '\n== %s\n' "$*"; }
note() { :; }
show() {
  printf '$ %s\n' "$*"
  "$@"
}
poisonctl() { "$BIN/poisonctl" "$@"; }

unmount_fs() {
  if mountpoint -q "$MNT"; then
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

cleanup() {
  local rc=$?
  set +e
  unmount_fs
  if [[ $rc -ne 0 && -s $WORK/daemon.log ]]; then
    printf 'scenario a: daemon log:\n' >&2
    tail -n 20 "$WORK/daemon.log" >&2
  fi
  rm -f "$IMAGE" "$IMAGE.badblocks" "$IMAGE.badblocks.tmp"
  rmdir "$MNT" 2>/dev/null
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "scenario a: mkfs.poisonfs and mount on /dev/shm"
"$BIN/mkfs.poisonfs" "$IMAGE" 64M >/dev/null
"$BIN/poisonfs" -f "$IMAGE" "$MNT" >>"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for ((i = 0; i < 100; i++)); do
  mountpoint -q "$MNT" && break
  kill -0 "$DAEMON_PID" 2>/dev/null || { printf 'scenario a: poisonfs exited\n' >&2; exit 1; }
  sleep 0.1
done
mountpoint -q "$MNT" || { printf 'scenario a: the mount did not come up\n' >&2; exit 1; }
printf 'image %s mounted on %s\n' "$IMAGE" "$MNT"

rc=0
sa_main || rc=$?

step "scenario a: unmount and fsck"
unmount_fs
if ! "$BIN/fsck.poisonfs" -n "$IMAGE"; then
  printf 'FAIL (fsck.poisonfs found problems)\n'
  rc=1
fi
exit "$rc"
