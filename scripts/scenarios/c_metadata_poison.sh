#!/usr/bin/env bash
# Scenario (c): metadata poison repaired online.
#
# A directory with 40 small files is made. Its directory block and the first
# block of the inode table (which holds the inodes of the first files made,
# the root's and this directory's among them) are found in `poisonctl fsmap
# --json` (owner "directory" with the directory's inode number; owner
# "inodes") and poisoned with known poison. The daemon rewrites both from
# memory at once: the event log shows a `repair` for each, the poison list
# is empty, every file still lists and reads back, and (standalone) fsck after
# unmount is clean. Writes `poisonctl map --svg` pictures before and after the
# injection into the work directory. Prints a report and PASS or FAIL.
#
# Run by scripts/demo.sh (sourced, mounted), or alone:
#   bash scripts/scenarios/c_metadata_poison.sh
# (own image on /dev/shm and own mount, removed on exit; SC_KEEP_WORK=1 keeps
# the work directory with the pictures). POISONFS_BUILD_DIR: build directory.
# shellcheck disable=SC2317

sc_main_c() {
  local dir=$MNT/scenario-c
  local -a failures=()
  sc_fail_c() {
    failures+=("$*")
    printf 'scenario c: FAILED CHECK: %s\n' "$*" >&2
  }

  step "scenario c: a directory of 40 files"
  mkdir -p "$dir" || { sc_fail_c "mkdir"; return 1; }
  local i
  for i in $(seq 1 40); do
    printf 'file %d of scenario c\n' "$i" >"$dir/f$i.txt" || sc_fail_c "write f$i.txt"
  done
  local sums
  sums=$(cd "$dir" && sha256sum f*.txt)
  local -i dino
  dino=$(stat -c %i "$dir")
  local json
  json=$(poisonctl fsmap --json "$MNT") || { sc_fail_c "fsmap --json"; return 1; }
  local -i dblock=-1 iblock=-1
  dblock=$(sed -n "s/.*\"physical\": \([0-9]*\), \"length\": [0-9]*, \"owner\": \"directory\", \"inode\": ${dino}[,}].*/\1/p" <<<"$json" | head -n 1)
  iblock=$(sed -n 's/.*"physical": \([0-9]*\), "length": [0-9]*, "owner": "inodes".*/\1/p' <<<"$json" | head -n 1)
  ((dblock > 0)) || { sc_fail_c "no directory record for inode $dino"; return 1; }
  ((iblock > 0)) || { sc_fail_c "no inodes record"; return 1; }
  printf 'directory block of /scenario-c (inode %d): device %d; inode table block: device %d\n' "$dino" "$dblock" "$iblock"
  show poisonctl fsmap "$MNT" "$dblock" 4096 || sc_fail_c "fsmap"
  local map_before=$WORK/scenario-c-before.svg map_after=$WORK/scenario-c-after.svg
  show poisonctl map --svg "$map_before" "$MNT" || sc_fail_c "map --svg (before)"
  local -i ev0
  ev0=$(poisonctl events "$MNT" | grep -c ' repair ' || true)

  step "scenario c: inject known poison into the directory block and the inode table"
  show poisonctl inject "$MNT" $((dblock + 512)) 256 || sc_fail_c "inject (directory)"
  show poisonctl inject "$MNT" $((iblock + 256)) 256 || sc_fail_c "inject (inodes)"
  show poisonctl map --svg "$map_after" "$MNT" || sc_fail_c "map --svg (after)"

  step "scenario c: the daemon repaired both from memory"
  local events
  events=$(poisonctl events "$MNT") || sc_fail_c "events"
  grep -E ' (repair|failure) ' <<<"$events" | tail -n 4
  local -i ev1
  ev1=$(grep -c ' repair ' <<<"$events" || true)
  ((ev1 - ev0 >= 2)) || sc_fail_c "expected 2 repair events, saw $((ev1 - ev0))"
  grep -q ' repair .*directory\|directory.*repair' <<<"$events" || grep -A2 ' repair ' <<<"$events" | grep -q directory ||
    sc_fail_c "no repair of the directory in the events"
  grep -A2 ' repair ' <<<"$events" | grep -q 'inode table\|inodes' || sc_fail_c "no repair of the inode table in the events"
  # Earlier scenarios of the demo may leave poison elsewhere (quarantined
  # free space): only the two ranges injected here must be gone.
  local list off len left=0
  list=$(poisonctl badblocks --bytes "$MNT") || sc_fail_c "badblocks"
  while read -r off len _; do
    [[ -n $off ]] || continue
    if ((off < dblock + 4096 && off + len > dblock)) || ((off < iblock + 4096 && off + len > iblock)); then
      left=1
      sc_fail_c "poison left in a repaired block: $off+$len"
    fi
  done <<<"$list"
  ((left == 0)) && printf 'poison list: nothing left in the directory block or the inode table block\n'
  show poisonctl status "$MNT" || sc_fail_c "status"

  step "scenario c: everything still lists and reads back"
  local -i n
  n=$(find "$dir" -type f | wc -l)
  if ((n == 40)); then printf '%d files listed\n' "$n"; else sc_fail_c "listed $n files, expected 40"; fi
  if [[ $(cd "$dir" && sha256sum f*.txt) == "$sums" ]]; then
    printf 'all 40 read back identical\n'
  else
    sc_fail_c "contents changed"
  fi
  stat "$MNT" >/dev/null || sc_fail_c "stat of the root"
  printf 'after the repair\n' >"$dir/new.txt" || sc_fail_c "create after repair"

  step "scenario c: report"
  printf 'poison:    device %d+256 (directory block of /scenario-c), %d+256 (inode table)\n' $((dblock + 512)) $((iblock + 256))
  printf 'repair:    %d repair events; no poison left in either block; 40 files listed and identical\n' $((ev1 - ev0))
  printf 'pictures:  %s\n           %s\n' "$map_before" "$map_after"
  if ((${#failures[@]} == 0)); then
    printf 'PASS\n'
    note "scenario c: directory block and inode table poisoned, repaired online from memory: PASS"
    return 0
  fi
  printf 'FAIL (%d checks failed)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  return 1
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  sc_rc_c=0
  sc_main_c || sc_rc_c=$?
  unset -f sc_main_c sc_fail_c
  return "$sc_rc_c"
fi
export SC_NAME=c SC_MAIN=sc_main_c
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib/standalone.sh"
