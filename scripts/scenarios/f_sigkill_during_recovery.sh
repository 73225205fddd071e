#!/usr/bin/env bash
# Scenario (f): the daemon killed with SIGKILL in the middle of a recovery,
# remounted, consistent.
#
#   big.bin   32 MiB of random data (its true bytes saved outside the mount)
#
# 128 ranges of known poison (256 bytes, 4 units each) are injected across
# the file, one in every 64th block. The recovery is one big plain write of
# the true data over the whole file (dd bs=32M count=1 conv=notrunc
# oflag=direct: one write(2), which the kernel sends as 1 MiB FUSE writes,
# every one of them a recovery write). Once dd is inside write(2) (seen in
# /proc/PID/syscall), and after a delay, the daemon gets SIGKILL. The report
# shows, for each round, where the writer was (syscall, wchan) and the error
# its write(2) got (ENOTCONN/ECONNABORTED): the proof that the write was
# still in flight. Then: the dead mount is removed
# (fusermount3 -u, else umount -l), `fsck.poisonfs -n` must find the image
# clean, the image is remounted (journal replay, the poison list from
# IMAGE.badblocks), and every poisoned block must read either EIO (still
# poisoned) or exactly the true bytes, and every other block its own bytes
# (a copy of the whole file with unreadable blocks zero-filled differs from
# the true bytes in exactly the blocks that read EIO); the file's poison list
# must name exactly those blocks. The recovery is then finished (dd again)
# and the whole file must read back identical with no poison left. Three
# rounds with different delays (each retried with a shorter delay if the
# write finished before the kill), poison re-injected before each. Writes
# `poisonctl map --svg` pictures before the first kill and after the last
# recovery into the work directory. Prints a report and PASS or FAIL.
#
# Run by scripts/demo.sh (sourced, mounted), or alone:
#   bash scripts/scenarios/f_sigkill_during_recovery.sh
# (own 128 MiB image on /dev/shm and own mount, removed on exit, even after
# a kill; SC_KEEP_WORK=1 keeps the work directory with the pictures).
# POISONFS_BUILD_DIR: build directory.
# shellcheck disable=SC2317

sf_main() {
  local dir=$MNT/scenario-f
  local f=$dir/big.bin saved=$WORK/scenario-f
  local -a failures=() rounds=()
  local -i size=$((32 << 20)) stride=64 inside=1024 plen=256
  local -i blocks=$((size / 4096))
  local -a poisoned=() devoff=() # block numbers and their device offsets
  local -i split=0               # rounds whose kill left some ranges recovered, some not
  sf_fail() {
    failures+=("$*")
    printf 'scenario f: FAILED CHECK: %s\n' "$*" >&2
  }
  # Known poison under every poisoned block (again: a round clears some).
  sf_inject_all() {
    local d
    for d in "${devoff[@]}"; do
      poisonctl inject "$MNT" $((d + inside)) "$plen" >/dev/null || { sf_fail "inject at $d"; return 1; }
    done
  }
  sf_file_poison() { poisonctl poison --json "$f" | grep -c file_offset || true; }

  step "scenario f: a 32 MiB file and 128 poisoned ranges across it"
  mkdir -p "$dir" "$saved" || { sf_fail "mkdir"; return 1; }
  head -c "$size" /dev/urandom >"$saved/true.bin" || { sf_fail "random bytes"; return 1; }
  show dd if="$saved/true.bin" of="$f" bs=1M oflag=direct status=none || { sf_fail "write big.bin"; return 1; }
  local -a ext=()
  mapfile -t ext < <(poisonctl bmap --json "$f" |
    sed -n 's/.*"file_offset": \([0-9]*\), "physical": \([0-9]*\), "length": \([0-9]*\).*/\1 \2 \3/p')
  local -i i at
  local e fo ph len
  for ((i = stride / 2; i < blocks; i += stride)); do
    at=$((i * 4096))
    for e in "${ext[@]}"; do
      read -r fo ph len <<<"$e"
      if ((at >= fo && at < fo + len)); then
        poisoned+=("$i")
        devoff+=($((ph + at - fo)))
        break
      fi
    done
  done
  printf 'big.bin: %d extent(s); poisoning %d bytes in each of %d blocks (every %dth)\n' \
    "${#ext[@]}" "$plen" "${#poisoned[@]}" "$stride"
  ((${#poisoned[@]} == blocks / stride)) || { sf_fail "only ${#poisoned[@]} blocks mapped"; return 1; }
  local map_before=$WORK/scenario-f-before.svg map_after=$WORK/scenario-f-after.svg

  local delay
  local -i round=0
  for delay in 0.002 0.01 0.02; do
    round+=1
    step "scenario f: round $round: recovery write of the true data, SIGKILL after ${delay}s"
    sf_round "$round" "$delay" "$map_before" || sf_fail "round $round"
  done
  show poisonctl map --svg "$map_after" "$MNT" || sf_fail "map --svg (after)"
  # A kill that split the recovery (some ranges done, some not) shows best
  # that a crash in the middle leaves each range whole: one at least.
  ((split > 0)) || sf_fail "no round left some ranges recovered and others still poisoned"

  step "scenario f: report"
  printf 'file:      big.bin, 32 MiB; 128 poisoned ranges of %d bytes (every %dth block)\n' "$plen" "$stride"
  printf 'recovery:  one write(2) of the true 32 MiB (dd bs=32M count=1 conv=notrunc oflag=direct)\n'
  printf '%s\n' "${rounds[@]}"
  printf 'pictures:  %s\n           %s\n' "$map_before" "$map_after"
  rm -rf "$saved"
  rm -f "$f"
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario f: daemon SIGKILLed in the middle of a 32 MiB recovery write, 3 rounds: fsck clean, every range EIO or true data: PASS"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

# One round: poison, start the writer, kill the daemon inside its write(2)
# after $2 seconds (retried with half the delay if the write finished
# first), clean up, fsck, remount, check, finish the recovery.
sf_round() {
  local -i round=$1
  local delay=$2 picture=$3
  local err=$WORK/scenario-f-writer.err
  local -i attempt wpid wrc drc
  local sc wchan werr
  for ((attempt = 1; attempt <= 4; attempt++)); do
    sf_inject_all || return 1
    local -i n
    n=$(sf_file_poison)
    printf 'poisonctl poison big.bin: %d ranges\n' "$n"
    ((n == ${#poisoned[@]})) || sf_fail "round $round: $n poisoned ranges, expected ${#poisoned[@]}"
    if [[ ! -e $picture ]]; then
      show poisonctl map --svg "$picture" "$MNT" || sf_fail "map --svg (before)"
    fi
    printf '$ dd if=true.bin of=%s bs=32M count=1 iflag=fullblock conv=notrunc oflag=direct &\n' "$f"
    dd if="$saved/true.bin" of="$f" bs=32M count=1 iflag=fullblock conv=notrunc oflag=direct status=none 2>"$err" &
    wpid=$!
    # dd reads its 32 MiB first; wait until it is inside write(2) (x86-64
    # syscall 1; also ends when dd has exited). Between two 1 MiB FUSE
    # requests the kernel shows it "running" instead.
    sc=
    local -i k
    for ((k = 0; k < 5000; k++)); do
      { read -r sc _ <"/proc/$wpid/syscall"; } 2>/dev/null || break
      [[ $sc == 1 ]] && break
      sleep 0.001
    done
    sleep "$delay"
    # Where the writer is, with builtins only (no fork between look and kill).
    sc=none wchan='?'
    { read -r sc _ <"/proc/$wpid/syscall"; } 2>/dev/null || true
    { read -r wchan <"/proc/$wpid/wchan"; } 2>/dev/null || true
    kill -KILL "$DAEMON_PID"
    printf '$ kill -KILL %d   # the daemon; the writer (%d) was in syscall %s, wchan %s\n' "$DAEMON_PID" "$wpid" "$sc" "$wchan"
    drc=0
    wait "$DAEMON_PID" 2>/dev/null || drc=$?
    DAEMON_PID=
    wrc=0
    wait "$wpid" || wrc=$?
    werr=$(grep -v '^$' "$err" | head -n 1)
    werr=${werr//"$f"/big.bin}
    printf 'daemon exit status %d; writer exit status %d: %s\n' "$drc" "$wrc" "${werr:-no error}"
    sf_remove_dead_mount || return 1
    # dd makes one write(2) (a short one is retried): its failure with the
    # connection gone means the recovery write was still in flight.
    if ((wrc != 0)) && grep -qE 'not connected|connection abort' "$err"; then
      break
    fi
    printf 'the write was not in flight when the daemon died; again with half the delay\n'
    delay=$(awk -v d="$delay" 'BEGIN { printf "%.4f", d / 2 }')
    sf_remount_and_finish "$round" || return 1
  done
  if ((attempt > 4)); then
    sf_fail "round $round: could not kill the daemon while the recovery write was in flight"
    sf_remount_and_finish "$round"
    return 1
  fi

  local -i failed_before=${#failures[@]}
  printf '$ fsck.poisonfs -n %s\n' "$IMAGE"
  local fsck_out fsck_verdict=clean
  if fsck_out=$("$BIN/fsck.poisonfs" -n "$IMAGE" 2>&1); then
    printf '%s\n' "$fsck_out"
  else
    printf '%s\n' "$fsck_out"
    fsck_verdict="NOT clean"
    sf_fail "round $round: fsck.poisonfs -n does not find the image clean after the kill"
  fi
  mount_fs || { sf_fail "round $round: remount after the kill"; return 1; }

  # Every poisoned block: EIO or the true bytes; every other block: its own.
  local -a eio=()
  local -i b
  for b in "${poisoned[@]}"; do
    if ! dd if="$f" of=/dev/null bs=4096 skip="$b" count=1 status=none 2>"$err"; then
      grep -q 'Input/output error' "$err" || sf_fail "round $round: block $b: $(cat "$err")"
      eio+=("$b")
    fi
  done
  local copy=$WORK/scenario-f-copy.bin
  # (status=none would hide the read errors too)
  dd if="$f" of="$copy" bs=4096 conv=noerror,sync status=noxfer 2>"$err"
  local -i errors
  errors=$(grep -c 'Input/output error' "$err" || true)
  local differ
  differ=$(cmp -l "$copy" "$saved/true.bin" | awk '{ b = int(($1 - 1) / 4096); if (b != last) print b; last = b }' |
    tr '\n' ' ')
  rm -f "$copy"
  local want=${eio[*]:+${eio[*]} }
  [[ $differ == "$want" ]] ||
    sf_fail "round $round: blocks that differ from the true bytes ($differ) are not exactly the EIO blocks ($want)"
  ((errors == ${#eio[@]})) || sf_fail "round $round: a full read met $errors EIO blocks, single reads ${#eio[@]}"
  local -i left
  left=$(sf_file_poison)
  ((left == ${#eio[@]})) || sf_fail "round $round: the file lists $left poisoned ranges, ${#eio[@]} blocks read EIO"
  local -i recovered=$((${#poisoned[@]} - ${#eio[@]}))
  ((recovered > 0 && ${#eio[@]} > 0)) && split+=1
  printf 'after remount: %d poisoned blocks read the true bytes (recovered before the kill), %d still EIO; every other block intact\n' \
    "$recovered" "${#eio[@]}"
  local verdict="nothing else"
  ((${#failures[@]} == failed_before)) || verdict="FAILED CHECKS"
  rounds+=("round $round:   SIGKILL ${delay}s into write(2) (writer in syscall $sc, wchan $wchan; it got: ${werr#dd: }); fsck $fsck_verdict; remount: $recovered recovered, ${#eio[@]} still EIO, $verdict")
  sf_finish "$round"
}

# Removes the mount the dead daemon left (its requests now fail with ENOTCONN).
sf_remove_dead_mount() {
  printf '$ fusermount3 -u %s\n' "$MNT"
  fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT"
  if grep -qsF " $MNT " /proc/self/mounts; then
    sf_fail "the dead mount could not be removed"
    return 1
  fi
}

sf_remount_and_finish() {
  mount_fs || { sf_fail "round $1: remount"; return 1; }
  sf_finish "$1"
}

# Finishes the recovery: the whole file rewritten, identical, no poison left.
sf_finish() {
  show dd if="$saved/true.bin" of="$f" bs=1M conv=notrunc oflag=direct status=none || sf_fail "round $1: finishing the recovery"
  if cmp -s "$f" "$saved/true.bin"; then
    printf 'finished: big.bin identical to the true bytes\n'
  else
    sf_fail "round $1: big.bin differs after the recovery was finished"
  fi
  local -i left
  left=$(sf_file_poison)
  ((left == 0)) || sf_fail "round $1: $left poisoned ranges left after the recovery was finished"
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  sf_rc=0
  sf_main || sf_rc=$?
  unset -f sf_main sf_fail sf_inject_all sf_file_poison sf_round sf_remove_dead_mount sf_remount_and_finish sf_finish
  return "$sf_rc"
fi
export SC_NAME=f SC_MAIN=sf_main SC_SIZE=${SC_SIZE:-128M}
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/standalone.sh"
