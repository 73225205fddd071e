#!/usr/bin/env bash
# Helpers shared by the scenarios d and f (sourced by the scenario itself,
# both when the demo sources it and when it runs alone; needs the
# `poisonctl` function and WORK). Not a scenario: it lives in lib/ so that
# the demo does not source it. Functions are prefixed sc_.

# The device offset of byte OFFSET of FILE (from `poisonctl bmap --json`).
sc_physical() {
  local fo ph len
  while read -r fo ph len; do
    if (($2 >= fo && $2 < fo + len)); then
      printf '%d\n' $((ph + $2 - fo))
      return 0
    fi
  done < <(poisonctl bmap --json "$1" |
    sed -n 's/.*"file_offset": \([0-9]*\), "physical": \([0-9]*\), "length": \([0-9]*\).*/\1 \2 \3/p')
  return 1
}

# Reads 4 KiB block BLOCK of FILE once (through the page cache); prints dd's
# error. Succeeds only when the read fails with EIO. Poisoned bytes must
# never come back: a read that returns the pattern fails loudly.
sc_read_eio() {
  local err=$WORK/sc-read.err out=$WORK/sc-read.out
  if dd if="$1" of="$out" bs=4096 skip="$2" count=1 status=none 2>"$err"; then
    if grep -qaF '#POISON#' "$out"; then
      printf 'poisoned bytes leaked from %s\n' "$1" >&2
    fi
    return 1
  fi
  cat "$err"
  grep -q 'Input/output error' "$err"
}

# Whether the human event log names PATH (relative to the mount) as a data owner.
sc_events_name() {
  grep -qF " $1 file " <<<"$2"
}
