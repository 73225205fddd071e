#!/usr/bin/env bash
# Fuzzes image mount and fsck (test/fuzz/image_harness.h) with libFuzzer,
# ASan and UBSan for a bounded time, then prints the executions and findings.
#
#   bash scripts/fuzz.sh [SECONDS]     (default 300)
#
# Compiler: clang-16 from Debian 12. The core needs C++23 std::expected from
# libstdc++ 12, which clang-14 (Debian's default clang) cannot compile: it
# lacks P0848 (conditionally trivial special members). clang-16 has it; the
# top-level CMakeLists.txt explains the one macro it needs raised.
#
# Everything it writes stays in build-fuzz/ (gitignored): the build, the
# working corpus (build-fuzz/fuzz-corpus, seeded from test/fuzz/corpus/ and
# kept between runs), the log and any crash/leak/timeout reproducers
# (build-fuzz/fuzz-artifacts). A reproducer worth keeping goes to
# test/fuzz/regressions/, which the unit tests run (fuzz_corpus_test.cc).
# Replay one input:  build-fuzz/test/poisonfs_image_fuzzer FILE
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'fuzz: %s\n' "$*" >&2; }

seconds=${1:-300}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
  printf 'usage: %s [SECONDS]\n' "$0" >&2
  exit 2
fi

# The build's own dependencies, then the fuzzing compiler and its runtime
# (libFuzzer and the sanitizers live in libclang-rt-16-dev).
bash "$root/scripts/setup.sh"
if ! dpkg-query -W -f='${Status}\n' clang-16 libclang-rt-16-dev 2>/dev/null | grep -c 'ok installed' | grep -qx 2; then
  log "installing clang-16 libclang-rt-16-dev"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q || log "apt-get update failed; trying the current package lists"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends clang-16 libclang-rt-16-dev
fi

build=$root/build-fuzz
corpus=$build/fuzz-corpus
artifacts=$build/fuzz-artifacts
mkdir -p "$corpus" "$artifacts"
# -O1 -g: fast enough, and stack traces that point at lines. Debug keeps the
# core's assertions on.
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++-16 -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DPOISONFS_FUZZ=ON -DPOISONFS_BENCH=OFF >/dev/null
log "building poisonfs_image_fuzzer in $build"
cmake --build "$build" --target poisonfs_image_fuzzer -j"$(nproc)" >/dev/null

# The repository's seeds join the working corpus (kept between runs).
for seed in "$root"/test/fuzz/corpus/*; do
  [[ -e $corpus/${seed##*/} ]] || cp "$seed" "$corpus/"
done
before=$(find "$artifacts" -type f | wc -l)
log "fuzzing for $seconds s (corpus $corpus)"
# One process (the machine is shared). Inputs are edit lists of a 1 MiB seed
# image built in-process, so they stay small (-max_len).
# -timeout: an input slower than 10 s is a hang. Leaks are reported (ASan's
# LeakSanitizer); UBSan aborts at its first report (-fno-sanitize-recover).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-/usr/lib/llvm-16/bin/llvm-symbolizer}
set +e
"$build/test/poisonfs_image_fuzzer" "$corpus" \
  -max_total_time="$seconds" -timeout=10 -max_len=512 -rss_limit_mb=2048 \
  -print_final_stats=1 \
  -artifact_prefix="$artifacts/" 2>"$build/fuzz.log"
rc=$?
set -e

grep -E '^Done [0-9]+ runs|^stat::number_of_executed_units|^stat::peak_rss_mb' "$build/fuzz.log" || true
found=$(find "$artifacts" -type f | wc -l)
log "exit $rc; $((found - before)) new finding(s) in $artifacts; corpus $(ls "$corpus" | wc -l) inputs"
if [[ $rc -ne 0 ]]; then
  grep -E 'ERROR: |SUMMARY: |runtime error|Test unit written' "$build/fuzz.log" | head -20 >&2 || true
  log "full log: $build/fuzz.log"
fi
exit "$rc"
