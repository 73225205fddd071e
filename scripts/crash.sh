#!/usr/bin/env bash
# Nightly-style crash-state enumeration (issue 6): builds the unit tests in
# Release and runs the large set of test/unit/crash_states_test.cc: every
# drain of the mixed workload, up to 64 dropped stores and 64 prefixes and
# 32 random subsets per crash point, for several workload seeds, in both
# persistence models (pmem ordering, flush-ordered write-back). Prints how
# many crash states were checked; exits non-zero when any is not clean.
#
#   bash scripts/crash.sh [--seeds N] [--no-build]
#
#   --seeds N    workload seeds 1..N (default 8)
#   --no-build   use the test binary already in the build directory
#
# POISONFS_BUILD_DIR picks the build directory (default build-crash/).
# ctest runs the small default set of the same tests.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'crash: %s\n' "$*" >&2; }
usage() { sed -n '9,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }

seeds=8
build=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --seeds)
      if [[ $# -lt 2 || ! $2 =~ ^[1-9][0-9]*$ ]]; then
        log "--seeds takes a positive number"
        exit 2
      fi
      seeds=$2
      shift
      ;;
    --no-build) build=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      log "unknown argument '$1'"
      usage
      exit 2
      ;;
  esac
  shift
done

build_dir=${POISONFS_BUILD_DIR:-$root/build-crash}
if [[ $build == 1 ]]; then
  bash "$root/scripts/setup.sh"
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DPOISONFS_SANITIZE=OFF >/dev/null
  cmake --build "$build_dir" -j"$(nproc)" --target poisonfs_unit_tests
fi
binary=$build_dir/test/poisonfs_unit_tests
if [[ ! -x $binary ]]; then
  log "$binary is missing (run without --no-build)"
  exit 1
fi

log "large set, $seeds workload seed(s)"
start=$SECONDS
POISONFS_CRASH_STATES=large POISONFS_CRASH_SEEDS=$seeds \
  "$binary" --gtest_filter='CrashStates.*:CrashChecker.*' --gtest_brief=1
log "done in $((SECONDS - start)) s"
