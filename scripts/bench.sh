#!/usr/bin/env bash
# The benchmark driver: poisonfs through a real FUSE mount, side by side with
# its baselines, in one run on one machine (figures from different runs or
# machines are never compared). Everything runs in RAM (/dev/shm).
#
#   bash scripts/bench.sh [--rounds N] [--quick] [--no-build] [--only LIST]
#
#   --rounds N   rounds per measurement; medians are reported (default 3)
#   --quick      1 round and smaller sizes (~3 minutes instead of ~15)
#   --no-build   use the binaries already in the build directory
#   --only LIST  comma-separated sections (default: all, in this order):
#                fio      ../shared/bench/compare.sh on the mount: fio against
#                         tmpfs, libfuse passthrough_ll and null (issue 2), then
#                         O_DIRECT reads with no page cache to drop vs null,
#                         then buffered reads vs the FUSE ceiling (read_ceiling.cc)
#                loop     the session loop's spin (-o spin_us, default 50) against
#                         a mount with spin_us=0, interleaved: requests one at a
#                         time (random 4 KiB, O_DIRECT, create/unlink, stat)
#                xfs      the same fio jobs on poisonfs and XFS side by side
#                meta     create/stat/unlink rates on poisonfs, passthrough_ll,
#                         tmpfs and XFS (issue 2)
#                reflink  cp of a 1-extent and of a fragmented file, fsmap of a
#                         block with 1,001 owners and of the whole device,
#                         poisonfs vs XFS (issue 3), then the mount section
#                mount    mount time with ~1,000,000 extents, poisonfs vs XFS
#                poison   media failure and recovery (issues 4 and 5): the
#                         core_bench cases (recovery write vs overwrite,
#                         fragmentation, crc32c cost, notify_failure, the read
#                         path's poison check vs a core_bench built without it
#                         in BUILD/nocheck), then recovery writes and crc32c
#                         through a mount
#
# XFS is `mkfs.xfs -m reflink=1,rmapbt=1` on a loop device over a sparse
# /dev/shm file. POISONFS_BUILD_DIR picks the build directory (default
# build-bench/, Release, built with scripts/build.sh without installing).
# Needs root (mounts, losetup), fio, xfsprogs, gcc/g++, libfuse3-dev.
# Every mount, loop device, daemon and file it makes is removed on exit, even
# on failure or Ctrl-C.
#
# Speed is only ever reported as a ratio to a baseline measured in the same
# run; the machine is shared and noisy, so look at the ratios, not at the
# absolute figures.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command_line="$(printf '%q ' "$0" "$@")"
command_line=${command_line% }

usage() { sed -n '6,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { printf 'bench: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

rounds=3
quick=0
build=1
only=fio,loop,xfs,meta,reflink,mount,poison
rounds_given=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number"
      rounds=$2
      rounds_given=1
      shift
      ;;
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --only)
      [[ $# -ge 2 ]] || die "--only takes a list: fio,loop,xfs,meta,reflink,mount,poison"
      only=$2
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      log "unknown argument '$1'"
      usage >&2
      exit 2
      ;;
  esac
  shift
done
for s in ${only//,/ }; do
  case $s in fio | loop | xfs | meta | reflink | mount | poison) ;; *) die "unknown section '$s' (fio, loop, xfs, meta, reflink, mount, poison)" ;; esac
done
want() { [[ ",$only," == *",$1,"* ]]; }
# The issue lists mount time among the reflink cases.
if want reflink && ! want mount; then only+=,mount; fi

if [[ $quick == 1 ]]; then
  [[ $rounds_given == 1 ]] || rounds=1
  FRAG_BLOCKS=8192 # the fragmented file: extents (4 KiB each)
  BIG_MB=256       # the 1-extent file
  FANOUT=1000      # clones of the shared block (+ the source = 1,001 owners)
  MOUNT_EXTENTS=100000
  QUERY_REPS=5
  XFS_FIO_RUNTIME=3 # random fio jobs of the xfs section (compare.sh's are fixed at 10 s)
  META_FILES=2000
  PFS_IMAGE=2G
  XFS_IMAGE=4G
else
  FRAG_BLOCKS=65536
  BIG_MB=1024
  FANOUT=1000
  MOUNT_EXTENTS=1000000
  QUERY_REPS=21
  XFS_FIO_RUNTIME=10
  META_FILES=10000
  PFS_IMAGE=4G
  XFS_IMAGE=12G
fi

[[ $(id -u) -eq 0 ]] || die "needs root (mount, losetup)"

# ---- build -------------------------------------------------------------------

BIN=${POISONFS_BUILD_DIR:-$root/build-bench}
if [[ $build == 1 ]]; then
  bash "$root/scripts/setup.sh"
  if ! POISONFS_NO_INSTALL=1 bash "$root/scripts/build.sh" "$BIN"; then
    # Keep going with what the benchmarks need (poisonctl is optional).
    log "full build failed; building the benchmark targets only"
    cmake --build "$BIN" -j"$(nproc)" --target poisonfs mkfs.poisonfs core_bench
    cmake --build "$BIN" -j"$(nproc)" --target poisonctl || log "poisonctl does not build; using bench_helper"
  fi
fi
for tool in fio gcc g++ pkg-config fusermount3 mkfs.xfs xfs_io losetup flock mountpoint; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs it)"
done
PFS=$BIN/poisonfs
MKFS=$BIN/mkfs.poisonfs
CTL=$BIN/poisonctl
CORE_BENCH=$BIN/test/core_bench
for f in "$PFS" "$MKFS"; do [[ -x $f ]] || die "$f is missing; build first"; done
if want mount || want poison; then [[ -x $CORE_BENCH ]] || die "$CORE_BENCH is missing; build first"; fi
if want poison; then [[ -x $CTL ]] || die "$CTL is missing; build first"; fi
COMPARE=$root/../shared/bench/compare.sh
EX=/usr/share/doc/libfuse3-dev/examples

# ---- state and cleanup ----------------------------------------------------------

W=$(mktemp -d /tmp/pfsbench.XXXXXX)
SHM=$(mktemp -d /dev/shm/pfsbench.XXXXXX)
FUSE_MOUNTS=() # poisonfs and passthrough_ll mountpoints
IMAGES=()      # poisonfs images (a daemon holds an flock on its image)
XMNT=
LOOP=

# Waits until no daemon holds the image's lock (it exits after unmount).
wait_unlocked() {
  local img=$1 tries=${2:-600}
  while ! flock -n -x "$img" true 2>/dev/null; do
    ((tries-- > 0)) || return 1
    sleep 0.05
  done
}

cleanup() {
  set +e
  trap - EXIT INT TERM
  local m img pid
  stop_busy_loops
  for m in "${FUSE_MOUNTS[@]}"; do
    mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"; }
  done
  for img in "${IMAGES[@]}"; do
    [[ -e $img ]] || continue
    if ! wait_unlocked "$img" 200; then
      # Our own daemon, found by the image it holds open; by pid only.
      for pid in $(fuser "$img" 2>/dev/null); do kill "$pid" 2>/dev/null; done
      wait_unlocked "$img" 100
    fi
  done
  if [[ -n $XMNT ]] && mountpoint -q "$XMNT"; then umount "$XMNT" 2>/dev/null || umount -l "$XMNT"; fi
  [[ -n $LOOP ]] && losetup -d "$LOOP" 2>/dev/null
  rm -rf "$W" "$SHM"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers -----------------------------------------------------------------------

# One busy loop per CPU (a loaded machine), stopped by stop_busy_loops or on exit.
BUSY_LOOPS=()
start_busy_loops() {
  local i
  for i in $(seq "$(nproc)"); do
    bash -c 'while :; do :; done' &
    BUSY_LOOPS+=($!)
  done
}
stop_busy_loops() {
  [[ ${#BUSY_LOOPS[@]} -gt 0 ]] || return 0
  kill "${BUSY_LOOPS[@]}" 2>/dev/null || true
  wait "${BUSY_LOOPS[@]}" 2>/dev/null || true
  BUSY_LOOPS=()
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else print a[int((NR + 1) / 2)] }'; }
# ratio A B: A/B with 2 decimals, "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.e+-]+$/ && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v s="$1" 'BEGIN { if (s ~ /^[0-9.e+-]+$/) printf "%.2f", s * 1000; else print "-" }'; }
# verdict VALUE OP LIMIT: "meets" or "MISSES" (OP is >= or <=).
verdict() {
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (v !~ /^[0-9.e+-]+$/) { print "n/a"; exit }
    ok = (op == ">=") ? (v + 0 >= l + 0) : (v + 0 <= l + 0); print ok ? "meets" : "MISSES" }'
}
SUMMARY=()
summary() { SUMMARY+=("$(printf '%-44s %16s %18s %7s %14s %7s' "$@")"); }
section() { printf '\n==== %s\n\n' "$*"; }

pfs_mount() { # IMAGE MNT [DAEMON OPTIONS...]
  mkdir -p "$2"
  IMAGES+=("$1")
  FUSE_MOUNTS+=("$2")
  "$PFS" "${@:3}" "$1" "$2"
}
pfs_umount() { # IMAGE MNT
  fusermount3 -u "$2"
  wait_unlocked "$1" || die "the poisonfs daemon of $1 did not exit"
}

# libfuse's passthrough_ll over a /dev/shm directory, built and mounted as
# compare.sh does, on $W/pt (once; later calls find it mounted).
mount_passthrough() {
  mountpoint -q "$W/pt" 2>/dev/null && return
  # shellcheck disable=SC2046 # pkg-config's flags are meant to be split
  gcc -O2 -o "$W/passthrough_ll" "$EX/passthrough_ll.c" $(pkg-config --cflags --libs fuse3)
  mkdir -p "$SHM/pt-src" "$W/pt"
  FUSE_MOUNTS+=("$W/pt")
  "$W/passthrough_ll" -o source="$SHM/pt-src" "$W/pt"
}

H=$W/bench_helper
g++ -std=c++23 -O2 -Wall -Wextra -I"$root/include" -o "$H" "$root/test/bench/bench_helper.cc"
# Wall seconds (median over REPS runs) of a command, process start included.
timeit() { "$H" time "$@" | awk '{ print $1 }'; }

# meta_rates DIR: bench_helper meta's rates (create, stat after the timeouts, stat cached,
# unlink, create+unlink pairs) of $META_FILES files in DIR, which it makes and removes.
meta_rates() {
  mkdir "$1"
  "$H" meta "$1" "$META_FILES"
  rmdir "$1"
}

have_ctl() { [[ -x $CTL ]] && { "$CTL" 2>&1 || true; } | grep -qw "$1"; }

printf 'poisonfs benchmarks, %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
printf 'command: %s\n' "$command_line"
printf 'machine: %s CPUs, %s, load average %s\n' "$(nproc)" "$(uname -r)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'build:   %s (%s), commit %s%s\n' "$BIN" \
  "$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BIN/CMakeCache.txt" 2>/dev/null)" \
  "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
printf 'rounds:  %s%s\n' "$rounds" "$([[ $quick == 1 ]] && echo ' (quick: smaller sizes)')"

# ---- the filesystems under test -------------------------------------------------------

IMG=$SHM/poisonfs.img
PMNT=$W/poisonfs
if want fio || want loop || want xfs || want meta || want reflink; then
  "$MKFS" "$IMG" "$PFS_IMAGE" >/dev/null
  pfs_mount "$IMG" "$PMNT"
fi
if want xfs || want meta || want reflink || want mount; then
  truncate -s "$XFS_IMAGE" "$SHM/xfs.img" # sparse: only what XFS writes takes RAM
  mkfs.xfs -q -m reflink=1,rmapbt=1 "$SHM/xfs.img"
  LOOP=$(losetup -f --show "$SHM/xfs.img")
  XMNT=$W/xfs
  mkdir -p "$XMNT"
  mount "$LOOP" "$XMNT"
fi

# ---- (a) fio: compare.sh ---------------------------------------------------------------

# compare_summary FILE SUFFIX: the summary rows of a compare.sh table.
compare_summary() {
  local file=$1 suffix=$2 line n name k pfs pt nullv xpt xnull
  # Columns from the right: x null, x pt, null, tmpfs, passthrough, under test.
  while read -r line; do
    set -- $line
    [[ $# -ge 7 && $1 != job ]] || continue
    n=$#
    name="${*:1:n-6}"
    k=$((n - 5)) && pfs=${!k}
    k=$((n - 4)) && pt=${!k}
    k=$((n - 2)) && nullv=${!k}
    k=$((n - 1)) && xpt=${!k}
    xnull=${!n}
    name="$name$suffix"
    case $name in
      read:* | read\ *)
        summary "fio $name" "$pfs" "pt $pt" "$xpt" ">= 2x pt" "$(verdict "$xpt" '>=' 2)"
        if [[ $xnull != - ]]; then
          summary "fio $name vs null" "$pfs" "null $nullv" "$xnull" ">= 0.7x null" "$(verdict "$xnull" '>=' 0.7)"
        fi
        ;;
      *) summary "fio $name" "$pfs" "pt $pt" "$xpt" ">= 1x pt" "$(verdict "$xpt" '>=' 1)" ;;
    esac
  done <"$file"
}

# The buffered-read ceiling: test/bench/read_ceiling.cc answers every READ
# from one cached buffer (no data source) with poisonfs's mount settings.
# Buffered sequential reads on poisonfs, on it and on passthrough_ll,
# interleaved; what poisonfs lacks to the ceiling is all a daemon could gain.
read_ceiling_section() {
  local r bs t dir a c p
  section "buffered sequential reads: poisonfs vs the FUSE ceiling (read_ceiling) and passthrough_ll, interleaved, $rounds rounds (MB/s)"
  # shellcheck disable=SC2046 # pkg-config's flags are meant to be split
  g++ -std=c++23 -O2 -Wall -Wextra -o "$W/read_ceiling" "$root/test/bench/read_ceiling.cc" $(pkg-config --cflags --libs fuse3)
  mkdir -p "$W/ceiling" "$PMNT/ceiling"
  FUSE_MOUNTS+=("$W/ceiling")
  "$W/read_ceiling" "$W/ceiling"
  # The same readahead window as poisonfs's mount (the daemon raises its own).
  cat "/sys/class/bdi/$(mountpoint -d "$PMNT")/read_ahead_kb" >"/sys/class/bdi/$(mountpoint -d "$W/ceiling")/read_ahead_kb"
  mount_passthrough
  for dir in "$PMNT/ceiling" "$W/pt"; do
    fio --name=w --directory="$dir" --filename=f --size=1G --rw=write --bs=1m --ioengine=psync \
      --output-format=terse >/dev/null
  done
  declare -A cres
  for r in $(seq "$rounds"); do
    for bs in 1m 128k; do
      for t in pfs ceiling pt; do
        case $t in pfs) dir=$PMNT/ceiling ;; ceiling) dir=$W/ceiling ;; pt) dir=$W/pt ;; esac
        cres["$t|$bs"]+="$(fio --name=c --directory="$dir" --filename=f --size=1G --rw=read --bs="$bs" \
          --ioengine=psync --output-format=terse --terse-version=3 2>/dev/null | awk -F';' '{ printf "%.0f", $7 / 1024 }') "
      done
    done
  done
  rm -f "$PMNT/ceiling/f" "$W/pt/f"
  printf '%-12s %10s %10s %10s %12s %12s %14s\n' job poisonfs ceiling pt "x ceiling" "x pt" "ceiling x pt"
  for bs in 1m 128k; do
    a=$(echo ${cres["pfs|$bs"]} | tr ' ' '\n' | median)
    c=$(echo ${cres["ceiling|$bs"]} | tr ' ' '\n' | median)
    p=$(echo ${cres["pt|$bs"]} | tr ' ' '\n' | median)
    printf '%-12s %10s %10s %10s %12s %12s %14s\n' "read $bs" "$a" "$c" "$p" "$(ratio "$a" "$c")" "$(ratio "$a" "$p")" "$(ratio "$c" "$p")"
    summary "fio read $bs buffered vs FUSE ceiling" "$a" "ceiling $c" "$(ratio "$a" "$c")" "(info)" ""
    summary "fio read $bs: FUSE ceiling vs pt" "$c" "pt $p" "$(ratio "$c" "$p")" "(info)" ""
  done
}

# O_DIRECT reads with nothing to drop: compare.sh's O_DIRECT row follows its
# buffered rows, so fio's invalidate=1 first drops the 1 GiB of page cache
# they left on poisonfs and passthrough_ll (never on null), inside the job's
# time. Here the files are written with O_DIRECT (no page cache) and the
# three targets read in turn, $rounds rounds: the read itself against null.
direct_read_section() {
  local r t dir a p n
  section "O_DIRECT 1 MiB reads with no page cache to drop: poisonfs vs passthrough_ll and null, interleaved, $rounds rounds (MB/s)"
  mount_passthrough
  # shellcheck disable=SC2046 # pkg-config's flags are meant to be split
  gcc -O2 -o "$W/null" "$EX/null.c" $(pkg-config --cflags --libs fuse3)
  touch "$W/null-mnt"
  FUSE_MOUNTS+=("$W/null-mnt")
  "$W/null" "$W/null-mnt"
  mkdir -p "$PMNT/direct"
  for dir in "$PMNT/direct" "$W/pt"; do
    fio --name=w --directory="$dir" --filename=d --size=1G --rw=write --bs=1m --direct=1 \
      --ioengine=psync --output-format=terse >/dev/null
  done
  declare -A dres
  for r in $(seq "$rounds"); do
    for t in pfs pt null; do
      case $t in
        pfs) set -- --directory="$PMNT/direct" --filename=d ;;
        pt) set -- --directory="$W/pt" --filename=d ;;
        null) set -- --filename="$W/null-mnt" ;;
      esac
      dres[$t]+="$(fio --name=d "$@" --size=1G --rw=read --bs=1m --direct=1 --ioengine=psync \
        --output-format=terse --terse-version=3 2>/dev/null | awk -F';' '{ printf "%.0f", $7 / 1024 }') "
    done
  done
  fusermount3 -u "$W/null-mnt"
  rm -rf "$PMNT/direct" "$W/pt/d"
  a=$(echo ${dres[pfs]} | tr ' ' '\n' | median)
  p=$(echo ${dres[pt]} | tr ' ' '\n' | median)
  n=$(echo ${dres[null]} | tr ' ' '\n' | median)
  printf '%-22s %10s %10s %10s %8s %8s\n' job poisonfs pt null "x pt" "x null"
  printf '%-22s %10s %10s %10s %8s %8s\n' "read 1m O_DIRECT" "$a" "$p" "$n" "$(ratio "$a" "$p")" "$(ratio "$a" "$n")"
  summary "fio read 1m O_DIRECT, nothing cached" "$a" "pt $p" "$(ratio "$a" "$p")" ">= 2x pt" "$(verdict "$(ratio "$a" "$p")" '>=' 2)"
  summary "fio read 1m O_DIRECT, nothing cached, null" "$a" "null $n" "$(ratio "$a" "$n")" ">= 0.7x null" "$(verdict "$(ratio "$a" "$n")" '>=' 0.7)"
}

if want fio; then
  section "fio through the mount vs tmpfs, passthrough_ll and null (../shared/bench/compare.sh, $rounds rounds)"
  if [[ -f $COMPARE ]]; then
    mkdir -p "$PMNT/compare"
    bash "$COMPARE" "$PMNT/compare" "$rounds" | tee "$W/compare.out"
    rm -rf "$PMNT/compare"
    # The same on a mount without the page cache for read/write (-o direct_io).
    printf '\nthe same with `poisonfs -o direct_io`:\n'
    DIMG=$SHM/direct.img
    DMNT=$W/direct
    "$MKFS" "$DIMG" "$PFS_IMAGE" >/dev/null
    pfs_mount "$DIMG" "$DMNT" -o direct_io
    mkdir -p "$DMNT/compare"
    bash "$COMPARE" "$DMNT/compare" "$rounds" | sed 's/^/  /' | tee "$W/compare-direct.out"
    pfs_umount "$DIMG" "$DMNT"
    rm -f "$DIMG" "$DIMG.badblocks"
    compare_summary "$W/compare.out" ""
    compare_summary "$W/compare-direct.out" " (direct_io)"
  else
    printf 'skipped: %s is absent\n' "$COMPARE"
  fi
  direct_read_section
  read_ceiling_section
fi

# ---- (c) fio: the same jobs on poisonfs and XFS ---------------------------------------------

# fio_job DIR RW BS DIRECT: MB/s (sequential) or kIOPS (random), as compare.sh measures.
fio_job() {
  local dir=$1 rw=$2 bs=$3 direct=$4 extra=() out field
  case $rw in rand*) extra+=(--time_based --runtime="$XFS_FIO_RUNTIME") ;; esac
  out=$(fio --name=c --directory="$dir" --filename=cmp.fio --size=1G "${extra[@]}" --rw="$rw" --bs="$bs" \
    --direct="$direct" --ioengine=psync --numjobs=1 --output-format=terse --terse-version=3 2>/dev/null)
  case $rw in
    read) field=7 ;;
    randread) field=8 ;;
    write) field=48 ;;
    randwrite) field=49 ;;
  esac
  echo "$out" | awk -F';' -v f=$field -v r="$rw" '{ v = $f; if (r ~ /^rand/) printf "%.1f\n", v / 1000; else printf "%.0f\n", v / 1024 }'
}

if want xfs; then
  section "the same fio jobs on poisonfs and XFS (loop device on /dev/shm), interleaved, $rounds rounds, random jobs ${XFS_FIO_RUNTIME} s"
  JOBS="write:1m:0 read:1m:0 read:1m:1 read:128k:0 randread:4k:0 randwrite:4k:0"
  declare -A fres
  mkdir -p "$PMNT/fio" "$XMNT/fio"
  for r in $(seq "$rounds"); do
    for j in $JOBS; do
      IFS=: read -r rw bs d <<<"$j"
      for t in pfs xfs; do
        dir=$PMNT/fio
        [[ $t == xfs ]] && dir=$XMNT/fio
        fres["$t|$j"]+="$(fio_job "$dir" "$rw" "$bs" "$d") "
      done
    done
    rm -f "$PMNT/fio/cmp.fio" "$XMNT/fio/cmp.fio"
  done
  rm -rf "$PMNT/fio" "$XMNT/fio"
  printf '%-24s %12s %12s %8s\n' job poisonfs xfs "x xfs"
  for j in $JOBS; do
    a=$(echo ${fres["pfs|$j"]} | tr ' ' '\n' | median)
    b=$(echo ${fres["xfs|$j"]} | tr ' ' '\n' | median)
    u=MB/s
    case $j in rand*) u=kIOPS ;; esac
    dn=
    [[ ${j##*:} == 1 ]] && dn=" O_DIRECT"
    IFS=: read -r rw bs d <<<"$j"
    printf '%-24s %12s %12s %8s\n' "$rw $bs $u$dn" "$a" "$b" "$(ratio "$a" "$b")"
    summary "fio $rw $bs $u$dn vs XFS" "$a" "xfs $b" "$(ratio "$a" "$b")" "(info)" ""
  done
fi

# ---- (c2) the session loop's spin -------------------------------------------------------------

# The default mount (spin_us=50, fuse/request_wait.h) and one with -o spin_us=0, same build,
# interleaved: jobs that send one request at a time, where waking the daemon is the cost. Each
# round runs them on a quiet machine and again with one busy loop per CPU (the loop stops
# spinning while the CPUs are contended).
if want loop; then
  section "session loop: default spin (spin_us=50) vs -o spin_us=0, interleaved, $rounds rounds, random jobs ${XFS_FIO_RUNTIME} s, quiet and with $(nproc) busy loops"
  NIMG=$SHM/nospin.img
  NMNT=$W/nospin
  "$MKFS" "$NIMG" "$PFS_IMAGE" >/dev/null
  pfs_mount "$NIMG" "$NMNT" -o spin_us=0
  mkdir -p "$PMNT/loop" "$NMNT/loop"
  for dir in "$PMNT/loop" "$NMNT/loop"; do fio_job "$dir" write 1m 0 >/dev/null; done
  LOOP_JOBS="randread:4k:0 randwrite:4k:0 randread:4k:1"
  declare -A lres
  for r in $(seq "$rounds"); do
    for load in quiet busy; do
      [[ $load == busy ]] && start_busy_loops
      for t in spin nospin; do
        dir=$PMNT/loop
        [[ $t == nospin ]] && dir=$NMNT/loop
        for j in $LOOP_JOBS; do
          IFS=: read -r rw bs d <<<"$j"
          lres["$load|$t|$j"]+="$(fio_job "$dir" "$rw" "$bs" "$d") "
        done
        read -r c sc sw u cu < <(meta_rates "$dir/m$r-$load")
        [[ -n ${cu:-} ]] || die "bench_helper meta failed on $t"
        lres["$load|$t|create+unlink"]+="$cu "
        lres["$load|$t|stat_cold"]+="$sc "
      done
      [[ $load == busy ]] && stop_busy_loops
    done
  done
  printf '%-30s %12s %12s %8s   %12s %12s %8s\n' job "spin_us=50" "spin_us=0" "ratio" "busy: spin" "no spin" "ratio"
  for j in $LOOP_JOBS create+unlink stat_cold; do
    case $j in
      create+unlink) label="create+unlink (pairs/s)" ;;
      stat_cold) label="stat after timeouts (/s)" ;;
      *)
        IFS=: read -r rw bs d <<<"$j"
        label="$rw $bs kIOPS"
        [[ $d == 1 ]] && label+=" O_DIRECT"
        ;;
    esac
    row_of=()
    for load in quiet busy; do
      a=$(echo ${lres["$load|spin|$j"]} | tr ' ' '\n' | median)
      b=$(echo ${lres["$load|nospin|$j"]} | tr ' ' '\n' | median)
      row_of+=("$a" "$b" "$(ratio "$a" "$b")")
      summary "$label, $load: spin vs spin_us=0" "$a" "no spin $b" "$(ratio "$a" "$b")" "(info)" ""
    done
    printf '%-30s %12s %12s %8s   %12s %12s %8s\n' "$label" "${row_of[@]}"
  done
  pfs_umount "$NIMG" "$NMNT"
  rm -f "$NIMG" "$NIMG.badblocks"
  rm -rf "$PMNT/loop"
fi

# ---- (b) metadata rates --------------------------------------------------------------------

if want meta; then
  section "metadata: $META_FILES files per round, $rounds rounds (ops/s, median)"
  mount_passthrough
  mkdir -p "$SHM/tmpfs-meta" "$PMNT/meta" "$XMNT/meta"
  declare -A mres
  TARGETS="pfs pt tmpfs xfs"
  for r in $(seq "$rounds"); do
    for t in $TARGETS; do
      case $t in
        pfs) dir=$PMNT/meta ;;
        pt) dir=$W/pt ;;
        tmpfs) dir=$SHM/tmpfs-meta ;;
        xfs) dir=$XMNT/meta ;;
      esac
      read -r c sc sw u cu < <(meta_rates "$dir/r$r")
      [[ -n ${cu:-} ]] || die "bench_helper meta failed on $t"
      mres["$t|create"]+="$c "
      mres["$t|stat_cold"]+="$sc "
      mres["$t|stat_warm"]+="$sw "
      mres["$t|unlink"]+="$u "
      mres["$t|create+unlink"]+="$cu "
    done
  done
  fusermount3 -u "$W/pt"
  printf '%-30s %10s %10s %10s %10s %7s %7s %7s\n' "ops/s" poisonfs passthru tmpfs xfs "x pt" "x tmpfs" "x xfs"
  for m in create unlink create+unlink stat_cold stat_warm; do
    declare -A v=()
    for t in $TARGETS; do v[$t]=$(echo ${mres["$t|$m"]} | tr ' ' '\n' | median); done
    label=$m
    case $m in
      create+unlink) label="create+unlink (pairs)" ;;
      stat_cold) label="stat, after the 1 s timeouts" ;;
      stat_warm) label="stat, cached" ;;
    esac
    printf '%-30s %10s %10s %10s %10s %7s %7s %7s\n' "$label" "${v[pfs]}" "${v[pt]}" "${v[tmpfs]}" "${v[xfs]}" \
      "$(ratio "${v[pfs]}" "${v[pt]}")" "$(ratio "${v[pfs]}" "${v[tmpfs]}")" "$(ratio "${v[pfs]}" "${v[xfs]}")"
    case $m in
      create+unlink | stat_cold)
        x=$(ratio "${v[pfs]}" "${v[pt]}")
        summary "$label /s" "${v[pfs]}" "pt ${v[pt]}" "$x" ">= 1x pt" "$(verdict "$x" '>=' 1)"
        ;;
    esac
  done
  printf '\n(stat after the timeouts: FUSE entries and attributes (1 s in poisonfs and passthrough_ll)\n'
  printf ' have expired, so each stat is a LOOKUP round trip; cached: the same file again at once,\n'
  printf ' answered from the kernel caches.)\n'
fi

# ---- (d) reflink and the reverse map ----------------------------------------------------------

# Extent count of a file: bench_helper (POISONFS_IOC_BMAP / FIEMAP), plus the tool's own view.
extent_report() { # FILE fs
  local n tool=""
  read -r n _ _ < <("$H" extents "$1")
  if [[ $2 == xfs ]]; then
    tool="; xfs_io fiemap: $(xfs_io -c 'fiemap' "$1" | tail -n +2 | grep -vc hole || true)"
  elif have_ctl bmap; then
    tool="; poisonctl bmap --json: $({ "$CTL" bmap --json "$1" || true; } | { grep -o '"file_offset"' || true; } | wc -l)"
  fi
  printf '%s%s' "$n" "$tool"
}

# fsmap_cmd fs START LEN: the command that lists owners (pfs: poisonctl, else bench_helper).
fsmap_cmd() {
  if [[ $1 == pfs ]]; then
    if have_ctl fsmap; then
      if [[ -n ${2:-} ]]; then echo "$CTL fsmap --json $PMNT $2 $3"; else echo "$CTL fsmap --json $PMNT"; fi
    else
      echo "$H fsmap $PMNT ${2:-0} ${3:-18446744073709551615}"
    fi
  else
    # xfs_io's fsmap takes 512-byte units, END inclusive.
    if [[ -n ${2:-} ]]; then echo "xfs_io -c 'fsmap -d $(($2 / 512)) $((($2 + $3) / 512 - 1))' $XMNT"; else echo "xfs_io -c 'fsmap -d' $XMNT"; fi
  fi
}
# Records listed by a fsmap command.
fsmap_count() { # fs CMD
  if [[ $1 == pfs ]]; then
    { eval "$2" 2>/dev/null || true; } | { grep -o '"physical"' || true; } | wc -l
  else
    eval "$2" | grep -cE '^[[:space:]]*[0-9]+:' || true
  fi
}
fsmap_time() { # CMD (runs it $REPS times)
  eval "set -- $1"
  "$H" time "$REPS" "$@" | awk '{ print $1 }'
}

if want reflink; then
  section "reflink and the reverse map: poisonfs vs XFS (times in ms, median of $rounds rounds unless noted)"
  PR=$PMNT/reflink
  XR=$XMNT/reflink
  mkdir -p "$PR" "$XR"
  if have_ctl fsmap; then
    printf 'poisonfs queries run `poisonctl fsmap --json` (paths included), end to end\n'
  else
    printf 'poisonctl has no fsmap yet: poisonfs queries run `bench_helper fsmap` (the same ioctls,\n'
    printf 'JSON with paths), end to end\n'
  fi
  printf 'XFS queries run `xfs_io -c fsmap -d`, end to end (inode numbers, no paths)\n\n'
  printf '%-52s %12s %12s %10s\n' case "poisonfs ms" "xfs ms" "pfs/xfs"
  row() { printf '%-52s %12s %12s %10s\n' "$1" "$(ms "$2")" "$(ms "$3")" "$(ratio "$2" "$3")"; }

  # 1. cp of a 1-extent file.
  for t in pfs xfs; do
    d=$PR
    [[ $t == xfs ]] && d=$XR
    # Preallocated first: earlier sections leave free space in pieces, and
    # a file written 1 MiB at a time could straddle two of them.
    fallocate -l "${BIG_MB}M" "$d/big"
    dd if=/dev/zero of="$d/big" bs=1M count="$BIG_MB" conv=notrunc,fsync status=none
  done
  big_ext="poisonfs $(extent_report "$PR/big" pfs) / xfs $(extent_report "$XR/big" xfs)"
  declare -A rt=()
  for r in $(seq "$rounds"); do
    for t in pfs xfs; do
      d=$PR
      [[ $t == xfs ]] && d=$XR
      rt[$t]+="$(timeit 1 cp "$d/big" "$d/big.copy") "
      read -r _ _ shared < <("$H" extents "$d/big.copy")
      [[ $shared -gt 0 ]] || log "warning: $t: the copy of big shares nothing"
      rm -f "$d/big.copy"
    done
  done
  a=$(echo ${rt[pfs]} | tr ' ' '\n' | median)
  b=$(echo ${rt[xfs]} | tr ' ' '\n' | median)
  row "cp of a 1-extent $BIG_MB MiB file" "$a" "$b"
  summary "cp $BIG_MB MiB 1-extent file (ms)" "$(ms "$a")" "xfs $(ms "$b")" "$(ratio "$a" "$b")" "(pfs/xfs time)" ""
  rm -f "$PR/big" "$XR/big"

  # 2. A file of FRAG_BLOCKS one-block extents: block i cloned from block i/2
  #    of source i%2, so no two neighbours are contiguous.
  declare -A frag_build=() fan_build=() # setup seconds, per filesystem
  src_mb=$((FRAG_BLOCKS * 4 / 1024))
  [[ $src_mb -ge 1 ]] || src_mb=1
  for t in pfs xfs; do
    d=$PR
    [[ $t == xfs ]] && d=$XR
    for s in a b; do dd if=/dev/zero of="$d/src-$s" bs=1M count="$src_mb" conv=fsync status=none; done
    t0=$EPOCHREALTIME
    "$H" frag "$d/frag" "$d/src-a" "$d/src-b" "$FRAG_BLOCKS" 2>/dev/null
    frag_build[$t]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
  done
  frag_ext="poisonfs $(extent_report "$PR/frag" pfs) / xfs $(extent_report "$XR/frag" xfs)"

  # The whole device now (state 1: sources + fragmented file).
  declare -A fc=() ft=()
  REPS=$(((QUERY_REPS + 1) / 4 * 2 + 1)) # fewer: these take 100s of ms
  for t in pfs xfs; do
    c=$(fsmap_cmd $t)
    fc[$t.1]=$(fsmap_count $t "$c")
    ft[$t.1]=$(fsmap_time "$c")
  done

  # cp of the fragmented file. The first copy stays (state 2).
  unset rt
  declare -A rt=()
  for r in $(seq "$rounds"); do
    for t in pfs xfs; do
      d=$PR
      [[ $t == xfs ]] && d=$XR
      dst=$d/frag.copy
      [[ $r -gt 1 ]] && dst=$d/frag.tmp
      rt[$t]+="$(timeit 1 cp "$d/frag" "$dst") "
      [[ $r -gt 1 ]] && rm -f "$dst"
    done
  done
  copy_ext="poisonfs $(extent_report "$PR/frag.copy" pfs) / xfs $(extent_report "$XR/frag.copy" xfs)"
  a=$(echo ${rt[pfs]} | tr ' ' '\n' | median)
  b=$(echo ${rt[xfs]} | tr ' ' '\n' | median)
  row "cp of a $((FRAG_BLOCKS * 4 / 1024)) MiB file in $FRAG_BLOCKS extents" "$a" "$b"
  summary "cp of a $FRAG_BLOCKS-extent file (ms)" "$(ms "$a")" "xfs $(ms "$b")" "$(ratio "$a" "$b")" "<= 100 ms" \
    "$(verdict "$(ms "$a")" '<=' 100)"
  row "  (building it: $FRAG_BLOCKS clone ioctls, once)" "${frag_build[pfs]}" "${frag_build[xfs]}"

  for t in pfs xfs; do
    c=$(fsmap_cmd $t)
    fc[$t.2]=$(fsmap_count $t "$c")
    ft[$t.2]=$(fsmap_time "$c")
  done

  # 3. One block shared by FANOUT+1 files.
  for t in pfs xfs; do
    d=$PR
    [[ $t == xfs ]] && d=$XR
    mkdir -p "$d/fan"
    dd if=/dev/urandom of="$d/fan/src" bs=4k count=1 conv=fsync status=none
    t0=$EPOCHREALTIME
    "$H" fanout "$d/fan/src" "$d/fan" "$FANOUT"
    fan_build[$t]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')
  done
  REPS=$QUERY_REPS
  declare -A oc=() ot=()
  for t in pfs xfs; do
    d=$PR
    [[ $t == xfs ]] && d=$XR
    read -r _ phys _ < <("$H" extents "$d/fan/src")
    c=$(fsmap_cmd $t "$phys" 4096)
    oc[$t]=$(fsmap_count $t "$c")
    ot[$t]=$(fsmap_time "$c")
    if [[ $t == pfs ]]; then pfs_fan_phys=$phys; fi
  done
  row "fsmap of 1 block shared by $((FANOUT + 1)) files (median of $REPS)" "${ot[pfs]}" "${ot[xfs]}"
  printf '%-52s %12s %12s\n' "  records listed" "${oc[pfs]}" "${oc[xfs]}"
  summary "fsmap of a block with $((FANOUT + 1)) owners (ms)" "$(ms "${ot[pfs]}")" "xfs $(ms "${ot[xfs]}")" \
    "$(ratio "${ot[pfs]}" "${ot[xfs]}")" "<= 1 ms" "$(verdict "$(ms "${ot[pfs]}")" '<=' 1)"
  # Where the time goes: the same query without paths, and a process that does nothing.
  nopaths=$(timeit "$REPS" "$H" fsmap "$PMNT" "$pfs_fan_phys" 4096 nopaths)
  true_s=$(timeit "$REPS" /bin/true)
  # poisonctl is static: its floor is a static program's start and exit
  # (glibc's CPU probing alone is ~0.15 ms on a VM, where CPUID traps).
  static_s=
  if printf 'int main(void) { return 0; }\n' | gcc -O2 -static -x c -o "$W/noop-static" - 2>/dev/null; then
    static_s=$(timeit "$REPS" "$W/noop-static")
  fi
  row "  poisonfs: fsmap ioctls only, no paths (bench_helper)" "$nopaths" ""
  row "  a process that does nothing (/bin/true)" "$true_s" ""
  row "  a static process that does nothing" "$static_s" ""

  for s in 1 2; do
    label="fsmap of the whole device, state $s (median of $(((QUERY_REPS + 1) / 4 * 2 + 1)))"
    row "$label" "${ft[pfs.$s]}" "${ft[xfs.$s]}"
    printf '%-52s %12s %12s\n' "  records listed" "${fc[pfs.$s]}" "${fc[xfs.$s]}"
    per_pfs=$(awk -v t="${ft[pfs.$s]}" -v n="${fc[pfs.$s]}" 'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / n }')
    per_xfs=$(awk -v t="${ft[xfs.$s]}" -v n="${fc[xfs.$s]}" 'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / n }')
    printf '%-52s %12s %12s %10s\n' "  us per record" "$per_pfs" "$per_xfs" "$(ratio "$per_pfs" "$per_xfs")"
    # The target is for ~132k records: state 1 on poisonfs (2 x FRAG_BLOCKS + metadata).
    if [[ $s == 1 ]]; then
      tgt="<= 100 ms" vd=$(verdict "$(ms "${ft[pfs.$s]}")" '<=' 100)
    else
      tgt="(info)" vd=
    fi
    summary "fsmap whole device, state $s (ms; records)" "$(ms "${ft[pfs.$s]}"); ${fc[pfs.$s]}" \
      "xfs $(ms "${ft[xfs.$s]}"); ${fc[xfs.$s]}" "$(ratio "${ft[pfs.$s]}" "${ft[xfs.$s]}")" "$tgt" "$vd"
  done
  printf '\nextents of the %s MiB file:        %s\n' "$BIG_MB" "$big_ext"
  printf 'extents of the fragmented file:  %s\n' "$frag_ext"
  printf 'extents of its copy:             %s\n' "$copy_ext"
  printf 'state 1: two %s MiB sources + the fragmented file; state 2: + its copy (cp)\n' "$src_mb"
  printf 'setup, once: %s clones of one block: poisonfs %s s, xfs %s s\n' "$FANOUT" \
    "$(printf '%.2f' "${fan_build[pfs]}")" "$(printf '%.2f' "${fan_build[xfs]}")"
fi

# The main poisonfs image is not needed any more: free its RAM before the mount section.
if mountpoint -q "$PMNT" 2>/dev/null; then
  pfs_umount "$IMG" "$PMNT"
  rm -f "$IMG"
fi

# ---- mount time with ~1,000,000 extents ---------------------------------------------------------

if want mount; then
  section "mount time with $MOUNT_EXTENTS one-block extents, $rounds rounds (ms)"
  # The image: data blocks + extent record blocks + journal (64 MiB) + inode table (1/64).
  size_mb=$(((MOUNT_EXTENTS * 4136 / 1048576 + 64) * 64 / 63 + 96))
  MIMG=$SHM/mount.img
  MMNT=$W/mount
  mkdir -p "$MMNT"
  "$MKFS" "$MIMG" "${size_mb}M" >/dev/null
  IMAGES+=("$MIMG")
  FUSE_MOUNTS+=("$MMNT")
  t0=$EPOCHREALTIME
  records=$("$CORE_BENCH" make-image "$MIMG" "$MOUNT_EXTENTS" 2>/dev/null)
  pfs_prep=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  # poisonfs: from starting the daemon until it returns (the mount is up then).
  mount_pfs() {
    local out=()
    for r in $(seq "$rounds"); do
      out+=("$(timeit 1 "$PFS" "$MIMG" "$MMNT")")
      pfs_umount "$MIMG" "$MMNT"
    done
    printf '%s\n' "${out[@]}" | median
  }
  pfs_full=$(mount_pfs)
  # The same image size, empty: what a mount costs before any extent.
  "$MKFS" -f "$MIMG" "${size_mb}M" >/dev/null
  pfs_empty=$(mount_pfs)
  rm -f "$MIMG"

  mount_xfs() {
    local out=()
    for r in $(seq "$rounds"); do
      umount "$XMNT"
      out+=("$(timeit 1 mount "$LOOP" "$XMNT")")
    done
    printf '%s\n' "${out[@]}" | median
  }
  xfs_empty=$(mount_xfs)
  mkdir -p "$XMNT/mount"
  t0=$EPOCHREALTIME
  "$H" interleave "$XMNT/mount/a" "$XMNT/mount/b" "$MOUNT_EXTENTS" 2>/dev/null
  xfs_prep=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  read -r xa _ _ < <("$H" extents "$XMNT/mount/a")
  read -r xb _ _ < <("$H" extents "$XMNT/mount/b")
  xfs_full=$(mount_xfs)

  printf '%-52s %12s %12s %10s\n' case "poisonfs ms" "xfs ms" "pfs/xfs"
  printf '%-52s %12s %12s %10s\n' "mount with $MOUNT_EXTENTS extents" "$(ms "$pfs_full")" "$(ms "$xfs_full")" \
    "$(ratio "$pfs_full" "$xfs_full")"
  printf '%-52s %12s %12s %10s\n' "mount, same size, no extents" "$(ms "$pfs_empty")" "$(ms "$xfs_empty")" \
    "$(ratio "$pfs_empty" "$xfs_empty")"
  printf '\nextent records: poisonfs %s (image %s MiB, written offline through the core in %s s);\n' \
    "$records" "$size_mb" "$pfs_prep"
  printf 'xfs %s (two files, one-block unwritten preallocations in turn, %s s)\n' "$((xa + xb))" "$xfs_prep"
  summary "mount with $MOUNT_EXTENTS extents (ms)" "$(ms "$pfs_full")" "xfs $(ms "$xfs_full")" \
    "$(ratio "$pfs_full" "$xfs_full")" "<= 1000 ms" "$(verdict "$(ms "$pfs_full")" '<=' 1000)"
  summary "  mount, same size, no extents (ms)" "$(ms "$pfs_empty")" "xfs $(ms "$xfs_empty")" \
    "$(ratio "$pfs_empty" "$xfs_empty")" "(info)" ""
fi

# ---- (e) media failure and recovery (issues 4 and 5) ----------------------------------------

# core_csv OUT ARGS...: core_bench's CSV report (--benchmark_format=csv) into OUT.
core_csv() {
  local dest=$1
  shift
  "$@" --benchmark_format=csv >"$dest" 2>/dev/null || die "$1 failed"
}
# csv_get FILE ROW COLUMN: one field of a core_bench CSV report, by row name and header name.
csv_get() {
  awk -F, -v row="$2" -v col="$3" '
    /^name,/ { for (i = 1; i <= NF; i++) { k = $i; gsub(/"/, "", k); h[k] = i }; next }
    { n = $1; gsub(/"/, "", n); if (n == row && (col in h)) { print $h[col]; exit } }' "$1"
}
# csv_ns FILE ROW: CPU nanoseconds per iteration of a row.
csv_ns() {
  local t u
  t=$(csv_get "$1" "$2" cpu_time)
  u=$(csv_get "$1" "$2" time_unit | tr -d '"')
  awk -v t="$t" -v u="$u" 'BEGIN { if (t == "") { print "-"; exit }
    m = (u == "ns") ? 1 : (u == "us") ? 1e3 : (u == "ms") ? 1e6 : 1e9; printf "%.1f\n", t * m }'
}
us() { awk -v n="$1" 'BEGIN { if (n ~ /^[0-9.e+-]+$/) printf "%.2f", n / 1000; else print "-" }'; }

if want poison; then
  section "media failure and recovery (issues 4 and 5): core_bench in-process, then through the mount"
  reps=$((rounds * 2 + 1)) # repetitions of each core case, randomly interleaved in one process
  [[ $quick == 1 ]] && reps=3
  CB=(--benchmark_repetitions="$reps" --benchmark_enable_random_interleaving=true
    --benchmark_report_aggregates_only=true --benchmark_min_time=0.2)
  printf 'core_bench: %s repetitions per case, randomly interleaved, medians of CPU time per iteration\n' "$reps"
  printf '(ratios are throughput ratios, case/baseline: > 1 is faster than the baseline)\n\n'

  # 1. Recovery write vs a plain overwrite of the same 256 blocks (issue 5: >= 0.8x).
  core_csv "$W/recovery.csv" "$CORE_BENCH" --benchmark_filter='^BM_RecoveryWrite/' "${CB[@]}"
  printf '%-58s %10s %10s %7s\n' "recovery write, 256 blocks (1 MiB)" "case us" "base us" ratio
  for op in 4096 1048576; do
    r() { csv_ns "$W/recovery.csv" "BM_RecoveryWrite/mode:$1/op:${op}_median"; }
    p0=$(r 0) p1=$(r 1) p2=$(r 2) p3=$(r 3)
    o=$((op / 1024))K
    printf '%-58s %10s %10s %7s\n' "$o writes: private, recovery / plain overwrite" "$(us "$p1")" "$(us "$p0")" "$(ratio "$p0" "$p1")" \
      "$o writes: shared x3, heal in place / private plain overwrite" "$(us "$p3")" "$(us "$p0")" "$(ratio "$p0" "$p3")" \
      "$o writes: shared x3, heal in place / shared plain (COW)" "$(us "$p3")" "$(us "$p2")" "$(ratio "$p2" "$p3")"
    x=$(ratio "$p0" "$p1")
    summary "recovery $o writes, private (x plain)" "$(us "$p1") us" "plain $(us "$p0") us" "$x" ">= 0.8x" "$(verdict "$x" '>=' 0.8)"
    x=$(ratio "$p0" "$p3")
    summary "heal $o writes, shared x3 (x plain private)" "$(us "$p3") us" "plain $(us "$p0") us" "$x" ">= 0.8x" "$(verdict "$x" '>=' 0.8)"
  done
  printf '(every recovered block had 256 bytes of known poison, injected untimed before each iteration)\n\n'

  # 2. Fragmentation after recovering 1,000 scattered poisoned blocks.
  core_csv "$W/frag.csv" "$CORE_BENCH" --benchmark_filter='^BM_RecoveryFragmentation/'
  printf '%-44s %14s %16s\n' "1,000 scattered poisoned blocks recovered" "in place" "punch + pwrite"
  for c in extents_before extents free_frags_before free_frags quarantined_KiB; do
    a=$(csv_get "$W/frag.csv" "BM_RecoveryFragmentation/punch:0/iterations:1" "$c")
    b=$(csv_get "$W/frag.csv" "BM_RecoveryFragmentation/punch:1/iterations:1" "$c")
    printf '%-44s %14.0f %16.0f\n' "  $c" "$a" "$b"
    [[ $c == extents ]] && summary "extents after 1,000 recoveries" "$(printf '%.0f' "$a")" "punch $(printf '%.0f' "$b")" "$(ratio "$a" "$b")" "(info)" ""
    [[ $c == free_frags ]] && summary "free fragments after 1,000 recoveries" "$(printf '%.0f' "$a")" "punch $(printf '%.0f' "$b")" "$(ratio "$a" "$b")" "(info)" ""
  done
  printf '\n'

  # 3. crc32c on the write and read paths (issue 5: measure).
  core_csv "$W/csum.csv" "$CORE_BENCH" --benchmark_filter='^BM_Seq(Write|Read)/' "${CB[@]}"
  printf '%-58s %10s %10s %7s\n' "crc32c, core, sequential" "case us" "base us" ratio
  for op in 1048576 4096; do
    o=$((op / 1024))K
    a=$(csv_ns "$W/csum.csv" "BM_SeqWrite/op:$op/csums:1_median")
    b=$(csv_ns "$W/csum.csv" "BM_SeqWrite/op:$op/csums:0_median")
    printf '%-58s %10s %10s %7s\n' "$o writes: checksums / no checksums (mkfs)" "$(us "$a")" "$(us "$b")" "$(ratio "$b" "$a")"
    summary "core $o writes, checksums (x none)" "$(us "$a") us" "none $(us "$b") us" "$(ratio "$b" "$a")" "(measure)" ""
    a=$(csv_ns "$W/csum.csv" "BM_SeqRead/op:$op/verify:1_median")
    b=$(csv_ns "$W/csum.csv" "BM_SeqRead/op:$op/verify:0_median")
    printf '%-58s %10s %10s %7s\n' "$o reads: verify_checksums / not" "$(us "$a")" "$(us "$b")" "$(ratio "$b" "$a")"
    summary "core $o reads, verify (x not)" "$(us "$a") us" "not $(us "$b") us" "$(ratio "$b" "$a")" "(measure)" ""
  done
  printf '\n'

  # 4. notify_failure latency (issue 4: <= 10 ms at 10,000 sharers).
  core_csv "$W/notify.csv" "$CORE_BENCH" --benchmark_filter='^BM_NotifyFailure/' "${CB[@]}"
  printf '%-58s %10s %10s\n' "notify_failure of a block shared by N files" "us" "x 1 file"
  one=$(csv_ns "$W/notify.csv" "BM_NotifyFailure/sharers:1_median")
  for n in 1 100 10000; do
    t=$(csv_ns "$W/notify.csv" "BM_NotifyFailure/sharers:${n}_median")
    printf '%-58s %10s %10s\n' "  $n sharers" "$(us "$t")" "$(ratio "$t" "$one")"
  done
  summary "notify_failure, 10,000 sharers (ms)" "$(ms "$(awk -v t="$t" 'BEGIN { print t / 1e9 }')")" \
    "1 file $(us "$one") us" "$(ratio "$t" "$one")" "<= 10 ms" "$(verdict "$(awk -v t="$t" 'BEGIN { print t / 1e6 }')" '<=' 10)"
  printf '\n'

  # 5. The read path's poison check (issue 4: <= 2% slower than without it).
  #    a) The whole read against core_bench built with
  #       -DPOISONFS_BENCH_NO_POISON_CHECK (src/fs/poison.cc), in its own build
  #       directory; the two programs run in turn, REPS rounds, alternating
  #       which goes first, and each case is compared with the same case (the
  #       same files) of the other build. Two builds place code and memory
  #       differently, which alone moves these figures by several percent.
  #    b) The check alone, as the read path makes it, over the same reads'
  #       device ranges, against the same loop without it, in one process:
  #       its cost per read, divided by the read's time from a), is the
  #       throughput the check costs.
  NOCHECK=$BIN/nocheck
  if [[ $build == 1 || ! -x $NOCHECK/test/core_bench ]]; then
    log "building core_bench without the read path's poison check in $NOCHECK"
    cmake -S "$root" -B "$NOCHECK" -DCMAKE_BUILD_TYPE=Release -DPOISONFS_SANITIZE=OFF \
      -DCMAKE_CXX_FLAGS=-DPOISONFS_BENCH_NO_POISON_CHECK >/dev/null
    cmake --build "$NOCHECK" -j"$(nproc)" --target core_bench >/dev/null
  fi
  declare -A rp=()
  RP=(--benchmark_filter='^BM_ReadPoisonCheck/' --benchmark_min_time=0.3)
  for r in $(seq "$reps"); do
    order="check nocheck"
    ((r % 2 == 0)) && order="nocheck check"
    for b in $order; do
      prog=$CORE_BENCH
      [[ $b == nocheck ]] && prog=$NOCHECK/test/core_bench
      core_csv "$W/rp.csv" "$prog" "${RP[@]}"
      for c in 0:0 0:1 1:0 1:1; do
        rp[$b.$c]+="$(csv_ns "$W/rp.csv" "BM_ReadPoisonCheck/random:${c%:*}/poison:${c#*:}") "
      done
    done
  done
  core_csv "$W/alone.csv" "$CORE_BENCH" --benchmark_filter='^BM_ReadPoisonCheckAlone/' --benchmark_min_time=0.3 \
    --benchmark_repetitions="$reps" --benchmark_enable_random_interleaving=true
  printf '%-58s %10s %10s %7s\n' "reads, core ($reps rounds, median)" "case us" "base us" ratio
  for k in 0 1; do
    name="sequential 1M"
    [[ $k == 1 ]] && name="random 4K"
    for p in 0 1; do
      what="empty poison list"
      [[ $p == 1 ]] && what="10,000 ranges elsewhere"
      n=$(echo ${rp[nocheck.$k:$p]} | tr ' ' '\n' | median)
      e=$(echo ${rp[check.$k:$p]} | tr ' ' '\n' | median)
      printf '%-58s %10s %10s %7s\n' "$name: $what / no check (whole read)" "$(us "$e")" "$(us "$n")" "$(ratio "$n" "$e")"
      # The check alone: ns per read with it and without it.
      with=$(csv_ns "$W/alone.csv" "BM_ReadPoisonCheckAlone/random:$k/poison:$p/check:1_median")
      without=$(csv_ns "$W/alone.csv" "BM_ReadPoisonCheckAlone/random:$k/poison:$p/check:0_median")
      cost=$(awk -v a="$with" -v b="$without" 'BEGIN { c = a - b; if (c < 0) c = 0; printf "%.1f", c }')
      x=$(awk -v e="$e" -v c="$cost" 'BEGIN { if (e + 0 > 0) printf "%.4f", e / (e + c); else print "-" }')
      printf '%-58s %10s %10s %7s\n' "$name: $what, the check alone (ns/read)" "$cost ns" "$(us "$e") us" "$x"
      summary "read $name, $what (x no check)" "check ${cost} ns" "read $(us "$e") us" "$x" ">= 0.98x" \
        "$(verdict "$x" '>=' 0.98)"
    done
  done
  printf '\n'

  # 6. Through the mount: recovery writes (dd oflag=direct of the true bytes
  #    over 256 poisoned blocks) vs plain overwrites of the same range, and
  #    crc32c with fio. Every poison and clear also appends to IMAGE.badblocks
  #    here, which the in-process cases do not pay.
  RIMG=$SHM/recovery.img
  RMNT=$W/recovery
  "$MKFS" "$RIMG" 256M >/dev/null
  pfs_mount "$RIMG" "$RMNT"
  head -c 1M /dev/urandom >"$W/true.bin"
  for f in priv shared; do dd if="$W/true.bin" of="$RMNT/$f" bs=1M conv=fsync status=none; done
  for f in b c; do "$CTL" reflink "$RMNT/shared" "$RMNT/shared.$f"; done
  # poison_file FILE: 256 bytes of known poison in each of its 256 blocks (one extent).
  poison_file() {
    local n phys _s i
    read -r n phys _s < <("$H" extents "$1")
    [[ $n == 1 ]] || die "$1 has $n extents, expected 1"
    for ((i = 0; i < 256; i++)); do "$CTL" inject "$RMNT" $((phys + i * 4096 + 1024)) 256 >/dev/null; done
  }
  # Single dd runs of a few ms vary by 3x here: three times the rounds.
  mrounds=$((rounds * 3))
  declare -A mt=()
  for r in $(seq "$mrounds"); do
    for bs in 4K 1M; do
      dd_over() { "$H" time 1 dd if="$W/true.bin" of="$RMNT/$1" bs=$bs conv=notrunc oflag=direct status=none | awk '{ print $1 }'; }
      mt[plain.$bs]+="$(dd_over priv) "
      poison_file "$RMNT/priv"
      mt[recover.$bs]+="$(dd_over priv) "
      "$CTL" reflink "$RMNT/shared.b" "$RMNT/shared" # shared by 3 again (the COW below unshares it)
      mt[cow.$bs]+="$(dd_over shared) "
      "$CTL" reflink "$RMNT/shared.b" "$RMNT/shared"
      poison_file "$RMNT/shared"
      mt[heal.$bs]+="$(dd_over shared) "
    done
  done
  for f in priv shared shared.b shared.c; do
    cmp -s "$RMNT/$f" "$W/true.bin" || die "$f does not hold the true bytes after recovery"
    [[ $("$CTL" poison --json "$RMNT/$f" | grep -c file_offset || true) == 0 ]] || die "$f still has poison"
  done
  read -r _ _ sh < <("$H" extents "$RMNT/shared")
  [[ $sh -gt 0 ]] || die "the healed file no longer shares its blocks"
  pfs_umount "$RIMG" "$RMNT"
  rm -f "$RIMG" "$RIMG.badblocks"
  printf '%-58s %10s %10s %7s\n' "through the mount: dd of 1 MiB, oflag=direct ($mrounds rounds)" "case ms" "base ms" ratio
  for bs in 4K 1M; do
    m() { echo ${mt[$1.$bs]} | tr ' ' '\n' | median; }
    printf '%-58s %10s %10s %7s\n' "bs=$bs: private, recovery / plain overwrite" "$(ms "$(m recover)")" "$(ms "$(m plain)")" "$(ratio "$(m plain)" "$(m recover)")" \
      "bs=$bs: shared x3, heal in place / private plain overwrite" "$(ms "$(m heal)")" "$(ms "$(m plain)")" "$(ratio "$(m plain)" "$(m heal)")" \
      "bs=$bs: shared x3, heal in place / shared plain (COW)" "$(ms "$(m heal)")" "$(ms "$(m cow)")" "$(ratio "$(m cow)" "$(m heal)")"
    x=$(ratio "$(m plain)" "$(m recover)")
    summary "mount: recovery dd bs=$bs (x plain)" "$(ms "$(m recover)") ms" "plain $(ms "$(m plain)") ms" "$x" ">= 0.8x" "$(verdict "$x" '>=' 0.8)"
    x=$(ratio "$(m plain)" "$(m heal)")
    summary "mount: heal x3 dd bs=$bs (x plain)" "$(ms "$(m heal)") ms" "plain $(ms "$(m plain)") ms" "$x" ">= 0.8x" "$(verdict "$x" '>=' 0.8)"
  done
  printf '(times include starting dd; every block had 256 bytes of known poison, injected untimed)\n\n'

  # crc32c through the mount: writes on an image with and without checksums,
  # O_DIRECT reads (every one reaches the daemon) with and without -o verify_checksums.
  declare -A cimg=([csum]="" [nocsum]=--no-checksums [verify]="")
  for t in csum nocsum verify; do
    # shellcheck disable=SC2086 # an empty option is no argument
    "$MKFS" ${cimg[$t]} "$SHM/$t.img" 1G >/dev/null
    mkdir -p "$W/$t"
    IMAGES+=("$SHM/$t.img")
    FUSE_MOUNTS+=("$W/$t")
    if [[ $t == verify ]]; then "$PFS" -o verify_checksums "$SHM/$t.img" "$W/$t"; else "$PFS" "$SHM/$t.img" "$W/$t"; fi
  done
  fio_seq() { # DIR RW BS DIRECT SIZE FILE: MB/s
    fio --name=c --directory="$1" --filename="$6" --size="$5" --rw="$2" --bs="$3" --direct="$4" \
      --ioengine=psync --numjobs=1 --output-format=terse --terse-version=3 2>/dev/null |
      awk -F';' -v r="$2" '{ v = (r == "read") ? $7 : $48; printf "%.0f\n", v / 1024 }'
  }
  # The file the reads read, written once on each.
  for t in csum verify; do dd if=/dev/urandom of="$W/$t/rd.fio" bs=1M count=256 conv=fsync status=none; done
  declare -A cres=()
  for r in $(seq "$rounds"); do
    for j in write:1M:256M write:4K:64M; do
      IFS=: read -r rw bs size <<<"$j"
      for t in csum nocsum; do
        rm -f "$W/$t/seq.fio"
        cres[$t.$j]+="$(fio_seq "$W/$t" "$rw" "$bs" 0 "$size" seq.fio) "
      done
    done
    for j in read:1M:256M read:4K:64M; do
      IFS=: read -r rw bs size <<<"$j"
      for t in csum verify; do cres[$t.$j]+="$(fio_seq "$W/$t" "$rw" "$bs" 1 "$size" rd.fio) "; done
    done
  done
  printf '%-58s %10s %10s %7s\n' "through the mount: fio, MB/s ($rounds rounds, median)" case base ratio
  for j in write:1M:256M write:4K:64M read:1M:256M read:4K:64M; do
    IFS=: read -r rw bs size <<<"$j"
    base=nocsum label="$rw $bs ($size): checksums / none (mkfs --no-checksums)"
    if [[ $rw == read ]]; then base=csum label="$rw $bs O_DIRECT: -o verify_checksums / not"; fi
    t=csum
    [[ $rw == read ]] && t=verify
    a=$(echo ${cres[$t.$j]} | tr ' ' '\n' | median)
    b=$(echo ${cres[$base.$j]} | tr ' ' '\n' | median)
    printf '%-58s %10s %10s %7s\n' "$label" "$a" "$b" "$(ratio "$a" "$b")"
    summary "mount: $rw $bs, crc32c on (x off)" "$a MB/s" "off $b MB/s" "$(ratio "$a" "$b")" "(measure)" ""
  done
  for t in csum nocsum verify; do
    pfs_umount "$SHM/$t.img" "$W/$t"
    rm -f "$SHM/$t.img" "$SHM/$t.img.badblocks"
  done
fi

# ---- summary --------------------------------------------------------------------------------

section "summary"
printf '%-44s %16s %18s %7s %14s %7s\n' case poisonfs baseline ratio target verdict
printf '%s\n' "${SUMMARY[@]}"
printf '\nDRAM per reverse-map record: build-bench/test/core_bench --benchmark_filter=RmapDram\n'
printf 'load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'command: %s\n' "$command_line"
