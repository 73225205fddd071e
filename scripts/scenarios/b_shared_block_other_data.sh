#!/usr/bin/env bash
# Scenario (b): three reflinked files, one poisoned shared block, recovered
# through ONE sharer with OTHER data.
#
#   one.bin     64 KiB of random data
#   two.bin     `poisonctl reflink one.bin two.bin` (every block shared)
#   three.bin   `poisonctl reflink one.bin three.bin`
#
# Known poison is injected into block 5, shared by all three. Reads fail
# with EIO in all three. Then a recovery write of 4 KiB of NEW bytes
# (not the block's old contents) goes into two.bin only: two.bin gets its own
# copy of the block (copy-on-write) and reads back the new bytes; one.bin and
# three.bin still share the poisoned block and still fail with EIO there (the
# other data must not heal them). Writes `poisonctl map --svg` pictures before
# and after the recovery into the work directory. Prints a report and PASS or
# FAIL.
#
# Run by scripts/demo.sh (sourced, mounted), or alone:
#   bash scripts/scenarios/b_shared_block_other_data.sh
# (own image on /dev/shm and own mount, removed on exit; SC_KEEP_WORK=1 keeps
# the work directory with the pictures). POISONFS_BUILD_DIR: build directory.
# shellcheck disable=SC2317

sb_main() {
  local dir=$MNT/scenario-b
  local a=$dir/one.bin b=$dir/two.bin c=$dir/three.bin
  local saved=$WORK/scenario-b
  local -a failures=()
  local -i off=$((5 * 4096)) inside=512 plen=1024
  sb_fail() {
    failures+=("$*")
    printf 'scenario b: FAILED CHECK: %s\n' "$*" >&2
  }

  step "scenario b: three files share every block"
  mkdir -p "$dir" "$saved" || { sb_fail "mkdir"; return 1; }
  head -c $((64 << 10)) /dev/urandom >"$a" || sb_fail "write $a"
  show poisonctl reflink "$a" "$b" || sb_fail "reflink $b"
  show poisonctl reflink "$a" "$c" || sb_fail "reflink $c"
  cp "$a" "$saved/orig.bin" || sb_fail "save"
  local pa pb pc
  pa=$(sc_physical "$a" "$off")
  pb=$(sc_physical "$b" "$off")
  pc=$(sc_physical "$c" "$off")
  [[ -n $pa && $pa == "$pb" && $pa == "$pc" ]] || { sb_fail "block 5 is not shared: '$pa' '$pb' '$pc'"; return 1; }
  local -i block=$pa
  printf 'the shared block: device bytes %d..%d\n' "$block" $((block + 4095))

  step "scenario b: inject known poison into the shared block"
  show poisonctl inject "$MNT" $((block + inside)) "$plen" || sb_fail "inject"
  show poisonctl fsmap "$MNT" "$block" 4096 || sb_fail "fsmap"
  local map_before=$WORK/scenario-b-before.svg map_after=$WORK/scenario-b-after.svg
  show poisonctl map --svg "$map_before" "$MNT" || sb_fail "map --svg (before)"
  local f
  for f in "$a" "$b" "$c"; do
    sb_read_fails "$f" 5 || sb_fail "a read of block 5 of $f did not fail with EIO"
  done

  step "scenario b: recovery write of OTHER data through two.bin only"
  head -c 4096 /dev/urandom >"$saved/new.bin"
  cmp -s "$saved/new.bin" <(dd if="$saved/orig.bin" bs=4096 skip=5 count=1 status=none) &&
    sb_fail "the new bytes equal the old ones"
  show dd if="$saved/new.bin" of="$b" bs=4096 seek=5 count=1 conv=notrunc oflag=direct status=none ||
    sb_fail "recovery write into $b"
  local -i nb
  nb=$(sc_physical "$b" "$off")
  printf 'two.bin block 5 now at device offset %d (was %d)\n' "$nb" "$block"
  ((nb != block)) || sb_fail "two.bin did not get its own copy"
  show poisonctl map --svg "$map_after" "$MNT" || sb_fail "map --svg (after)"

  step "scenario b: only the writer is healed"
  local -a verdict=()
  if dd if="$b" bs=4096 skip=5 count=1 status=none | cmp -s - "$saved/new.bin"; then
    printf 'two.bin:   block 5 reads back the NEW bytes\n'
    verdict+=("two.bin healed (new data)")
  else
    sb_fail "two.bin does not read back the new bytes"
  fi
  # The rest of two.bin is still the original data.
  cmp -s -n $((5 * 4096)) "$b" "$saved/orig.bin" || sb_fail "two.bin blocks 0-4 differ"
  cmp -s -i $((6 * 4096)) "$b" "$saved/orig.bin" || sb_fail "two.bin blocks 6.. differ"
  for f in "$a" "$c"; do
    if sb_read_fails "$f" 5; then
      printf '%s: block 5 still EIO\n' "${f##*/}"
      verdict+=("${f##*/} still EIO")
    else
      sb_fail "${f##*/} no longer fails with EIO after another file's recovery with other data"
    fi
    show poisonctl poison "$f" || sb_fail "poison $f"
  done
  local pl
  pl=$(poisonctl poison --json "$b")
  [[ $pl == '[]' || $pl == $'[\n]' ]] || sb_fail "two.bin still has poison: $pl"
  show poisonctl badblocks --bytes "$MNT" || sb_fail "badblocks"
  poisonctl events "$MNT" | tail -n 4

  step "scenario b: report"
  printf 'files:     one.bin, two.bin, three.bin (reflinks; block 5 shared by all three at device %d)\n' "$block"
  printf 'poison:    device bytes %d..%d (known)\n' $((block + inside)) $((block + inside + plen - 1))
  printf 'recovery:  4 KiB of other data written into two.bin block 5 (dd conv=notrunc oflag=direct)\n'
  printf 'result:    %s\n' "$(IFS=';'; printf '%s' "${verdict[*]}" | sed 's/;/; /g')"
  printf 'pictures:  %s\n           %s\n' "$map_before" "$map_after"
  rm -rf "$saved"
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario b: shared block poisoned, recovered through one sharer with other data: only the writer healed: PASS"
    # The other two stay poisoned on purpose: remove them so the demo's
    # later scenarios and final fsck see a clean device.
    rm -f "$a" "$c"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

sb_read_fails() {
  local err=$WORK/scenario-b.err out=$WORK/scenario-b.out i
  for ((i = 0; i < 50; i++)); do
    if ! dd if="$1" of="$out" bs=4096 skip="$2" count=1 status=none 2>"$err"; then
      grep -q 'Input/output error' "$err"
      return
    fi
    sleep 0.05
  done
  return 1
}

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  sb_rc=0
  sb_main || sb_rc=$?
  unset -f sb_main sb_read_fails sb_fail
  return "$sb_rc"
fi
export SC_NAME=b SC_MAIN=sb_main
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/standalone.sh"
