#!/usr/bin/env bash
# Installs every tool the test suite uses (Debian/Ubuntu, as root or with sudo), then the npm
# packages. Safe to run again: apt and npm skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  build-essential python3          # native addon (node-gyp) and zstd-napi build from source
  qemu-utils                       # qemu-io, qemu-img
  libnbd-bin python3-libnbd        # nbdinfo, nbdcopy, nbdsh
  fio nbdkit                       # fio's nbd engine; nbdkit memory as the benchmark baseline
  qemu-system-x86                  # the guest that swaps onto an export
  busybox-static cpio kmod         # the guest's initramfs
  chromium                         # the dashboard's browser test
  systemd nbd-client               # systemd-analyze verify of the units; deploy/diffswap-swap.sh
  util-linux e2fsprogs             # losetup/mkfs for the full-disk tests, prlimit, setpriv
  openssl                          # certificates for the TLS tests
  gdb                              # gcore: real ELF core files for diffswap analyze
  librsvg2-bin fonts-dejavu-core   # rsvg-convert: diffswap analyze --chart OUT.png
  zstd lz4 xz-utils gzip           # compressed images that diffswap analyze refuses
  ca-certificates
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The guest (Debian kernel + busybox initramfs) is built once here, so the e2e test does not
# depend on apt at run time. The build script skips work when its sources are unchanged.
bash test/e2e/guest/build.sh

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
