#!/usr/bin/env bash
# Scenario (e): poison in free space.
#
# A file is written, then a free range of the device (found with `poisonctl
# fsmap --json`: the first `free` record big enough) is poisoned with known
# poison. `poisonctl status` shows the bytes as quarantined, fsmap marks the
# free record poisoned, every file reads back unchanged, and then 8 MiB of new
# files are written: `poisonctl bmap --json` shows that none of their extents
# lands on the quarantined range. Writes `poisonctl map --svg` pictures before
# and after the new writes into the work directory. Prints a report and PASS
# or FAIL.
#
# Run by scripts/demo.sh (sourced, mounted), or alone:
#   bash scripts/scenarios/e_free_space_poison.sh
# (own image on /dev/shm and own mount, removed on exit; SC_KEEP_WORK=1 keeps
# the work directory with the pictures). POISONFS_BUILD_DIR: build directory.
# shellcheck disable=SC2317

se_main() {
  local dir=$MNT/scenario-e
  local -a failures=()
  se_fail() {
    failures+=("$*")
    printf 'scenario e: FAILED CHECK: %s\n' "$*" >&2
  }

  step "scenario e: a file, and a free range to poison"
  mkdir -p "$dir" || { se_fail "mkdir"; return 1; }
  head -c $((256 << 10)) /dev/urandom >"$dir/kept.bin" || se_fail "write kept.bin"
  local sum
  sum=$(sha256sum <"$dir/kept.bin")
  # The free record right after the used part of the data area: where the
  # allocator would go next. 64 KiB into it, 64 KiB long.
  local rec
  rec=$(poisonctl fsmap --json "$MNT" |
    sed -n 's/.*"physical": \([0-9]*\), "length": \([0-9]*\), "owner": "free".*/\1 \2/p' |
    awk '$2 >= 1048576 {print; exit}')
  [[ -n $rec ]] || { se_fail "no free record of 1 MiB"; return 1; }
  local -i fstart flen qoff qlen=$((64 << 10))
  read -r fstart flen <<<"$rec"
  qoff=$((fstart + (64 << 10)))
  printf 'free record: device bytes %d..%d; poisoning %d..%d\n' "$fstart" $((fstart + flen - 1)) "$qoff" $((qoff + qlen - 1))

  step "scenario e: inject known poison into free space"
  show poisonctl inject "$MNT" "$qoff" "$qlen" || se_fail "inject"
  show poisonctl status "$MNT" || se_fail "status"
  local -i q
  q=$(poisonctl status --json "$MNT" | sed -n 's/.*"quarantined_bytes": \([0-9]*\).*/\1/p')
  ((q >= qlen)) || se_fail "status shows $q quarantined bytes, expected >= $qlen"
  show poisonctl fsmap "$MNT" "$qoff" "$qlen" || se_fail "fsmap"
  poisonctl fsmap "$MNT" "$qoff" "$qlen" | grep -q 'free .*poisoned' || se_fail "fsmap does not mark the free range poisoned"
  local map_before=$WORK/scenario-e-before.svg map_after=$WORK/scenario-e-after.svg
  show poisonctl map --svg "$map_before" "$MNT" || se_fail "map --svg (before)"

  step "scenario e: files are unaffected"
  if [[ $(sha256sum <"$dir/kept.bin") == "$sum" ]]; then
    printf 'kept.bin reads back unchanged\n'
  else
    se_fail "kept.bin changed"
  fi

  step "scenario e: 8 MiB of new files; none lands on the quarantined range"
  local i f
  local -i hits=0 extents=0
  for i in $(seq 1 8); do
    head -c $((1 << 20)) /dev/urandom >"$dir/new$i.bin" || se_fail "write new$i.bin"
  done
  sync
  local ph len
  for i in $(seq 1 8); do
    f=$dir/new$i.bin
    while read -r _ ph len; do
      extents+=1
      if ((ph < qoff + qlen && ph + len > qoff)); then
        hits+=1
        printf 'new%d.bin: extent at device %d+%d overlaps the quarantined range\n' "$i" "$ph" "$len"
      fi
    done < <(poisonctl bmap --json "$f" |
      sed -n 's/.*"file_offset": \([0-9]*\), "physical": \([0-9]*\), "length": \([0-9]*\).*/\1 \2 \3/p')
  done
  show poisonctl bmap "$dir/new1.bin" || se_fail "bmap"
  printf '%d extents of the new files checked, %d on the quarantined range\n' "$extents" "$hits"
  ((extents > 0)) || se_fail "no extents seen"
  ((hits == 0)) || se_fail "$hits extents landed on quarantined space"
  for i in $(seq 1 8); do
    dd if="$dir/new$i.bin" of=/dev/null bs=1M status=none || se_fail "read new$i.bin"
  done
  [[ $(sha256sum <"$dir/kept.bin") == "$sum" ]] || se_fail "kept.bin changed"
  show poisonctl map --svg "$map_after" "$MNT" || se_fail "map --svg (after)"
  q=$(poisonctl status --json "$MNT" | sed -n 's/.*"quarantined_bytes": \([0-9]*\).*/\1/p')

  step "scenario e: report"
  printf 'poison:      device bytes %d..%d (known, %d bytes) in a free record\n' "$qoff" $((qoff + qlen - 1)) "$qlen"
  printf 'status:      %d bytes quarantined\n' "$q"
  printf 'files:       kept.bin unchanged; 8 new 1 MiB files, %d extents, %d on the quarantined range\n' "$extents" "$hits"
  printf 'pictures:    %s\n             %s\n' "$map_before" "$map_after"
  rm -f "$dir"/new*.bin
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario e: 64 KiB of free space poisoned: quarantined, files unaffected, new writes avoid it: PASS"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  se_rc=0
  se_main || se_rc=$?
  unset -f se_main se_fail
  return "$se_rc"
fi
export SC_NAME=e SC_MAIN=se_main
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/standalone.sh"
