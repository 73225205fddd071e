#!/usr/bin/env bash
# README command 2: installs what is needed, builds, and runs the whole test
# suite (unit tests and mount tests through a real FUSE mount) with ctest.
# Exits non-zero when any test fails; .ci/run calls it.
#
#   bash scripts/test.sh [--sanitize|--tsan]
#
#   --sanitize   the same on the ASan+UBSan Debug build (build-asan/)
#   --tsan       the concurrent core tests on the ThreadSanitizer build (build-tsan/)
#
# Extra arguments after -- go to ctest (e.g. -- -R Mkfs).
# POISONFS_BUILD_DIR overrides the build directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'test: %s\n' "$*" >&2; }

build_args=()
build_dir=${POISONFS_BUILD_DIR:-$root/build}
ctest_extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --sanitize)
      build_args=(--sanitize)
      build_dir=${POISONFS_BUILD_DIR:-$root/build-asan}
      ;;
    --tsan)
      build_args=(--tsan)
      build_dir=${POISONFS_BUILD_DIR:-$root/build-tsan}
      # The tests that run threads against one core; the rest has nothing for TSan.
      ctest_extra=(-R 'Concurrency|Concurrent')
      ;;
    --)
      shift
      ctest_extra+=("$@")
      break
      ;;
    *)
      log "unknown argument '$1'"
      printf 'usage: %s [--sanitize|--tsan] [-- CTEST_ARGS...]\n' "$0" >&2
      exit 2
      ;;
  esac
  shift
done

bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh" "${build_args[@]}" "$build_dir"

if [[ ${build_args[*]-} == --sanitize ]]; then
  # Leaks count as failures; UBSan stops at its first report (the build also
  # passes -fno-sanitize-recover).
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
elif [[ ${build_args[*]-} == --tsan ]]; then
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
fi

# -j1: the mount tests are RUN_SERIAL anyway, and the unit tests are quick.
# A per-test timeout keeps a hung mount from eating CI's time budget. ctest's
# own summary ("N% tests passed, M tests failed out of T") is the last output.
exec ctest --test-dir "$build_dir" --output-on-failure -j1 --no-tests=error --timeout 600 \
  "${ctest_extra[@]}"
