#!/usr/bin/env bash
# Scenario (g): hole-punch recovery vs in-place recovery, fragmentation side
# by side.
#
# Two files of 4 MiB with the same bytes, written separately (no sharing):
# inplace.bin and punched.bin. In each, every 16th block (64 blocks) gets
# 256 bytes of known poison. inplace.bin is recovered with a plain pwrite
# (dd conv=notrunc oflag=direct) of each block's true bytes: the file owns its
# blocks, so the poison is cleared in place and the mapping does not change.
# punched.bin is recovered the other common way: `fallocate --punch-hole`
# of the block, then the same pwrite: a new block is allocated each time and
# the poisoned one becomes quarantined free space. The report puts side by
# side each file's extent count (`poisonctl bmap --json`) and the device's
# free-space fragments (`free` records in `poisonctl fsmap --json`) after each
# phase. Both read back identical to the true bytes at the end. Writes
# `poisonctl map --svg` pictures before and after the recoveries into the work
# directory. Prints a report and PASS or FAIL.
#
# Run by scripts/demo.sh (sourced, mounted), or alone:
#   bash scripts/scenarios/g_punch_vs_inplace.sh
# (own image on /dev/shm and own mount, removed on exit; SC_KEEP_WORK=1 keeps
# the work directory with the pictures). POISONFS_BUILD_DIR: build directory.
# shellcheck disable=SC2317

sg_main() {
  local dir=$MNT/scenario-g
  local a=$dir/inplace.bin b=$dir/punched.bin
  local saved=$WORK/scenario-g
  local -a failures=()
  local -i n=64 stride=16 blocks=1024
  sg_fail() {
    failures+=("$*")
    printf 'scenario g: FAILED CHECK: %s\n' "$*" >&2
  }
  sg_extents() { poisonctl bmap --json "$1" | grep -c '"physical"' || true; }
  sg_free() { poisonctl fsmap --json "$MNT" | grep -c '"owner": "free"' || true; }

  step "scenario g: two unshared 4 MiB files with the same bytes"
  mkdir -p "$dir" "$saved" || { sg_fail "mkdir"; return 1; }
  head -c $((blocks * 4096)) /dev/urandom >"$saved/true.bin" || sg_fail "random bytes"
  dd if="$saved/true.bin" of="$a" bs=1M status=none || sg_fail "write $a"
  dd if="$saved/true.bin" of="$b" bs=1M status=none || sg_fail "write $b"
  sync
  local -i ext_a0 ext_b0 free0
  ext_a0=$(sg_extents "$a")
  ext_b0=$(sg_extents "$b")
  free0=$(sg_free)
  local bmap_a0
  bmap_a0=$(poisonctl bmap --json "$a")
  printf 'inplace.bin: %d extents, punched.bin: %d extents; free fragments: %d\n' "$ext_a0" "$ext_b0" "$free0"

  step "scenario g: $n scattered poisoned blocks in each file (every ${stride}th block)"
  local f i fo ph len
  local -i injected=0
  for f in "$a" "$b"; do
    # block -> device offset, from the file's extents
    local -a ext=()
    mapfile -t ext < <(poisonctl bmap --json "$f" |
      sed -n 's/.*"file_offset": \([0-9]*\), "physical": \([0-9]*\), "length": \([0-9]*\).*/\1 \2 \3/p')
    for ((i = stride / 2; i < blocks; i += stride)); do
      local -i at=$((i * 4096)) dev=-1
      local e
      for e in "${ext[@]}"; do
        read -r fo ph len <<<"$e"
        if ((at >= fo && at < fo + len)); then dev=$((ph + at - fo)); break; fi
      done
      ((dev >= 0)) || { sg_fail "block $i of $f not mapped"; continue; }
      poisonctl inject "$MNT" $((dev + 1024)) 256 >/dev/null || sg_fail "inject at $dev"
      injected+=1
    done
  done
  printf '%d poisoned ranges injected\n' "$injected"
  local -i pa pb
  pa=$(poisonctl poison --json "$a" | grep -c file_offset || true)
  pb=$(poisonctl poison --json "$b" | grep -c file_offset || true)
  printf 'poisonctl poison: inplace.bin %d ranges, punched.bin %d ranges\n' "$pa" "$pb"
  ((pa == n && pb == n)) || sg_fail "expected $n poisoned ranges per file, saw $pa and $pb"
  local map_before=$WORK/scenario-g-before.svg map_after=$WORK/scenario-g-after.svg
  show poisonctl map --svg "$map_before" "$MNT" || sg_fail "map --svg (before)"

  step "scenario g: recover inplace.bin in place (pwrite of each block)"
  for ((i = stride / 2; i < blocks; i += stride)); do
    dd if="$saved/true.bin" of="$a" bs=4096 skip="$i" seek="$i" count=1 conv=notrunc oflag=direct status=none ||
      sg_fail "pwrite block $i of inplace.bin"
  done
  local -i ext_a1 free1
  ext_a1=$(sg_extents "$a")
  free1=$(sg_free)
  if [[ $(poisonctl bmap --json "$a") == "$bmap_a0" ]]; then
    printf 'inplace.bin: bmap identical to before the poison\n'
  else
    sg_fail "inplace.bin's bmap changed"
  fi

  step "scenario g: recover punched.bin by fallocate --punch-hole + pwrite"
  for ((i = stride / 2; i < blocks; i += stride)); do
    fallocate --punch-hole --keep-size -o $((i * 4096)) -l 4096 "$b" || sg_fail "punch block $i of punched.bin"
    dd if="$saved/true.bin" of="$b" bs=4096 skip="$i" seek="$i" count=1 conv=notrunc oflag=direct status=none ||
      sg_fail "pwrite block $i of punched.bin"
  done
  local -i ext_b2 free2 q
  ext_b2=$(sg_extents "$b")
  free2=$(sg_free)
  q=$(poisonctl status --json "$MNT" | sed -n 's/.*"quarantined_bytes": \([0-9]*\).*/\1/p')
  show poisonctl map --svg "$map_after" "$MNT" || sg_fail "map --svg (after)"

  step "scenario g: both read back the true bytes; no file poison left"
  for f in "$a" "$b"; do
    if cmp -s "$f" "$saved/true.bin"; then
      printf '%s: identical to the true bytes\n' "${f##*/}"
    else
      sg_fail "${f##*/} differs"
    fi
    [[ $(poisonctl poison --json "$f" | grep -c file_offset || true) == 0 ]] || sg_fail "${f##*/} still has poison"
  done

  step "scenario g: report"
  printf '%-28s %14s %14s\n' "" "in place" "punch + pwrite"
  printf '%-28s %14d %14d\n' "poisoned blocks recovered" "$n" "$n"
  printf '%-28s %14d %14d\n' "extents before" "$ext_a0" "$ext_b0"
  printf '%-28s %14d %14d\n' "extents after" "$ext_a1" "$ext_b2"
  printf '%-28s %14d %14d\n' "free fragments after*" $((free1)) $((free2))
  printf '* device-wide free records in fsmap: %d before any recovery; in-place phase changed it by %+d, punch phase by %+d\n' \
    "$free0" $((free1 - free0)) $((free2 - free1))
  printf 'quarantined after the punch phase: %d bytes (the punched poisoned blocks, withdrawn from the allocator)\n' "$q"
  printf 'pictures:  %s\n           %s\n' "$map_before" "$map_after"
  ((ext_a1 == ext_a0)) || sg_fail "in-place recovery changed the extent count ($ext_a0 -> $ext_a1)"
  ((ext_b2 > ext_b0)) || sg_fail "punch recovery did not fragment punched.bin ($ext_b0 -> $ext_b2)"
  rm -rf "$saved"
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario g: $n poisoned blocks: in place keeps $ext_a1 extent(s), punch+pwrite leaves $ext_b2: PASS"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  sg_rc=0
  sg_main || sg_rc=$?
  unset -f sg_main sg_fail sg_extents sg_free
  return "$sg_rc"
fi
export SC_NAME=g SC_MAIN=sg_main
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/standalone.sh"
