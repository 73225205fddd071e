#!/usr/bin/env bash
# Scenario (d): latent poison found by a read, then by scrub.
#
#   first.bin    64 KiB of random data
#   second.bin   64 KiB of other random data
#
# Both are written with O_DIRECT (so the kernel caches none of their pages:
# a read must reach the daemon). Latent poison (`poisonctl inject --latent`,
# like `ndctl inject-error --no-notify`) goes under block 3 of each file:
# nothing is reported, `poisonctl badblocks --bytes` lists both ranges as
# latent and neither file shows poison. A read of block 3 of first.bin
# consumes its poison: EIO, the range turns known, the event log names
# first.bin; second.bin's range is still latent. `poisonctl scrub` then
# walks the device and finds second.bin's (its summary counts one latent
# range found), which turns known and is named in the event log. Both files
# are recovered by a plain pwrite of the saved true block (dd conv=notrunc):
# both read back identical to the originals and the poison list is empty.
# Writes `poisonctl map --svg` pictures before and after the recovery into
# the work directory. Prints a report and PASS or FAIL.
#
# Run by scripts/demo.sh (sourced, mounted), or alone:
#   bash scripts/scenarios/d_latent_read_then_scrub.sh
# (own image on /dev/shm and own mount, removed on exit; SC_KEEP_WORK=1 keeps
# the work directory with the pictures). POISONFS_BUILD_DIR: build directory.
# shellcheck disable=SC2317

sd_main() {
  local dir=$MNT/scenario-d
  local saved=$WORK/scenario-d
  local -a failures=()
  local -i blk=3 inside=512 plen=256
  sd_fail() {
    failures+=("$*")
    printf 'scenario d: FAILED CHECK: %s\n' "$*" >&2
  }
  # The known/latent state of the poison at device offset $1, from the list.
  sd_state() {
    local off len kind
    while read -r off len kind; do
      [[ -n $off ]] || continue
      if (($1 >= off && $1 < off + len)); then
        printf '%s\n' "${kind:-known}"
        return 0
      fi
    done < <(poisonctl badblocks --bytes "$MNT")
    printf 'none\n'
  }

  step "scenario d: two files, written with O_DIRECT (no cached pages)"
  mkdir -p "$dir" "$saved" || { sd_fail "mkdir"; return 1; }
  local name
  for name in first second; do
    head -c $((64 << 10)) /dev/urandom >"$saved/$name.bin" || sd_fail "random bytes"
    show dd if="$saved/$name.bin" of="$dir/$name.bin" bs=64K oflag=direct status=none || sd_fail "write $name.bin"
    dd if="$saved/$name.bin" of="$saved/$name.block" bs=4096 skip="$blk" count=1 status=none || sd_fail "save block"
  done
  local -i p1 p2
  p1=$(sc_physical "$dir/first.bin" $((blk * 4096))) || { sd_fail "bmap first.bin"; return 1; }
  p2=$(sc_physical "$dir/second.bin" $((blk * 4096))) || { sd_fail "bmap second.bin"; return 1; }
  printf 'block %d of first.bin: device %d; of second.bin: device %d\n' "$blk" "$p1" "$p2"

  step "scenario d: inject LATENT poison under block $blk of each file"
  show poisonctl inject "$MNT" $((p1 + inside)) "$plen" --latent || sd_fail "inject (first)"
  show poisonctl inject "$MNT" $((p2 + inside)) "$plen" --latent || sd_fail "inject (second)"
  show poisonctl badblocks --bytes "$MNT" || sd_fail "badblocks"
  [[ $(sd_state $((p1 + inside))) == latent ]] || sd_fail "first.bin's poison is not listed latent"
  [[ $(sd_state $((p2 + inside))) == latent ]] || sd_fail "second.bin's poison is not listed latent"
  for name in first second; do
    [[ $(poisonctl poison --json "$dir/$name.bin" | grep -c file_offset || true) == 0 ]] ||
      sd_fail "$name.bin shows known poison before anything consumed it"
  done
  printf 'nothing reported yet: neither file shows poison (poisonctl poison)\n'
  local map_before=$WORK/scenario-d-before.svg map_after=$WORK/scenario-d-after.svg
  show poisonctl map --svg "$map_before" "$MNT" || sd_fail "map --svg (before)"

  step "scenario d: a read of first.bin consumes its latent poison"
  printf '$ dd if=%s of=/dev/null bs=4096 skip=%d count=1\n' "$dir/first.bin" "$blk"
  sc_read_eio "$dir/first.bin" "$blk" || sd_fail "the read of first.bin did not fail with EIO"
  local s1 s2
  s1=$(sd_state $((p1 + inside)))
  s2=$(sd_state $((p2 + inside)))
  show poisonctl badblocks --bytes "$MNT" || sd_fail "badblocks"
  printf 'first.bin: %s, second.bin: %s\n' "$s1" "$s2"
  [[ $s1 == known ]] || sd_fail "first.bin's poison is $s1 after the read, expected known"
  [[ $s2 == latent ]] || sd_fail "second.bin's poison is $s2 after first.bin's read, expected latent"
  show poisonctl poison "$dir/first.bin" || sd_fail "poison first.bin"
  local events
  events=$(poisonctl events "$MNT") || sd_fail "events"
  printf '%s\n' "$events"
  sc_events_name /scenario-d/first.bin "$events" || sd_fail "the events do not name first.bin"
  ! sc_events_name /scenario-d/second.bin "$events" || sd_fail "the events name second.bin before the scrub"

  step "scenario d: scrub finds second.bin's latent poison"
  local summary
  summary=$(poisonctl scrub "$MNT") || sd_fail "scrub"
  printf '$ poisonctl scrub %s\n%s\n' "$MNT" "$summary"
  local -i found
  found=$(sed -n 's/^latent poison found: *\([0-9]*\) range.*/\1/p' <<<"$summary")
  ((found == 1)) || sd_fail "scrub found $found latent ranges, expected 1"
  s2=$(sd_state $((p2 + inside)))
  [[ $s2 == known ]] || sd_fail "second.bin's poison is $s2 after the scrub, expected known"
  show poisonctl badblocks --bytes "$MNT" || sd_fail "badblocks"
  show poisonctl poison "$dir/second.bin" || sd_fail "poison second.bin"
  events=$(poisonctl events "$MNT") || sd_fail "events"
  grep -B1 -F ' /scenario-d/second.bin file ' <<<"$events" || true
  sc_events_name /scenario-d/second.bin "$events" || sd_fail "the events do not name second.bin after the scrub"
  printf '$ dd if=%s of=/dev/null bs=4096 skip=%d count=1\n' "$dir/second.bin" "$blk"
  sc_read_eio "$dir/second.bin" "$blk" || sd_fail "a read of second.bin did not fail with EIO after the scrub"

  step "scenario d: recover both with a plain pwrite of the true block (dd conv=notrunc)"
  for name in first second; do
    show dd if="$saved/$name.block" of="$dir/$name.bin" bs=4096 seek="$blk" count=1 conv=notrunc oflag=direct \
      status=none || sd_fail "recovery write into $name.bin"
  done
  show poisonctl map --svg "$map_after" "$MNT" || sd_fail "map --svg (after)"
  for name in first second; do
    if cmp "$dir/$name.bin" "$saved/$name.bin"; then
      printf '%s.bin: identical to the original\n' "$name"
    else
      sd_fail "$name.bin differs from the original"
    fi
  done
  local list
  list=$(poisonctl badblocks --bytes "$MNT") || sd_fail "badblocks"
  printf '$ poisonctl badblocks --bytes %s\n%s' "$MNT" "${list:+$list$'\n'}"
  [[ $(sd_state $((p1 + inside))) == none ]] || sd_fail "first.bin's poison is still listed"
  [[ $(sd_state $((p2 + inside))) == none ]] || sd_fail "second.bin's poison is still listed"
  # Alone, nothing else was ever poisoned; in the demo, earlier scenarios
  # may leave poison of their own (the scrub above clears what was free space).
  [[ -z $list || -z ${SC_NAME:-} ]] || sd_fail "the poison list is not empty: $list"
  poisonctl events "$MNT" | tail -n 2

  step "scenario d: report"
  printf 'files:     first.bin, second.bin (64 KiB each, unshared)\n'
  printf 'poison:    latent, %d bytes in block %d of each (device %d and %d)\n' "$plen" "$blk" $((p1 + inside)) $((p2 + inside))
  printf 'read:      block %d of first.bin: EIO; its range turned %s, second.bin'"'"'s stayed latent\n' "$blk" "$s1"
  printf 'scrub:     %d latent range found (second.bin), turned %s, named in the event log\n' "$found" "$s2"
  printf 'recovery:  dd conv=notrunc of the saved block into each; both identical, poison list %s\n' \
    "$([[ -z $list ]] && printf empty || printf 'without these two ranges')"
  printf 'pictures:  %s\n           %s\n' "$map_before" "$map_after"
  rm -rf "$saved"
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario d: latent poison in 2 files: one found by a read, one by scrub, both recovered by pwrite: PASS"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  sd_rc=0
  sd_main || sd_rc=$?
  unset -f sd_main sd_fail sd_state
  return "$sd_rc"
fi
export SC_NAME=d SC_MAIN=sd_main
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/standalone.sh"
