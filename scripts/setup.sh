#!/usr/bin/env bash
# Installs everything poisonfs needs to build, test and run on a fresh Debian 12
# machine. Idempotent: when every package is already installed it only checks
# /dev/fuse and returns in well under a second.
#
#   bash scripts/setup.sh
#
# Runs apt-get as root directly, or through sudo when not root.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake pkg-config g++
  # libraries: FUSE (low-level API), PMDK libpmem2, Boost.Intrusive, tests, benchmarks, {fmt} (g++ 12 has no <format>)
  libfuse3-dev fuse3 libpmem2-dev libboost-dev googletest libgtest-dev libbenchmark-dev libfmt-dev
  # what the tests, the demo and the benchmark drivers run
  fio xfsprogs strace util-linux procps psmisc kmod file tar diffutils coreutils findutils
  attr acl
  # `poisonctl map --svg` pictures rendered to PNG for a look (rsvg-convert)
  librsvg2-bin
)

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "need root (or sudo) to run: $*"
    return 1
  fi
}

# Prints the packages of PACKAGES that are not fully installed.
missing_packages() {
  local installed
  installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null |
    awk '$2 == "install" && $3 == "ok" && $4 == "installed" { sub(/:.*/, "", $1); print $1 }' || true)
  local p
  for p in "${PACKAGES[@]}"; do
    grep -qxF "$p" <<<"$installed" || printf '%s\n' "$p"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get update -q; then
    log "apt-get update failed; trying to install from the current package lists"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  mapfile -t missing < <(missing_packages)
  if [[ ${#missing[@]} -ne 0 ]]; then
    log "still missing after apt-get install: ${missing[*]}"
    return 1
  fi
}

# The mount tests and the demo need the FUSE device. In a container it is
# usually passed in; on a VM the module may need loading.
ensure_dev_fuse() {
  if [[ -c /dev/fuse ]]; then
    return 0
  fi
  as_root modprobe fuse 2>/dev/null || true
  if [[ ! -c /dev/fuse ]]; then
    # The module is built in but udev did not make the node (10:229 is fixed).
    as_root mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || true
  fi
  if [[ ! -c /dev/fuse ]]; then
    log "warning: /dev/fuse is missing; mounting poisonfs will not work on this machine"
  fi
}

install_packages
ensure_dev_fuse
# Nothing to do for /etc/fuse.conf: the tests and the demo run as root, and
# allow_other needs user_allow_other only for unprivileged users.
log "ok"
