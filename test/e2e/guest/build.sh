#!/usr/bin/env bash
# Builds the tiny guest the e2e test boots: the Debian kernel, unpacked from its package (no
# initramfs hooks run), and an initramfs made of busybox-static, the virtio modules, /init and
# the memfill workload. Output: $OUT/vmlinuz and $OUT/initrd.img (gzip cpio, newc).
#
# Usage: test/e2e/guest/build.sh [OUT_DIR]   (default: test/e2e/guest/build, gitignored)
# Needs: apt-get (download only, no root), dpkg-deb, busybox-static, cpio, gzip, gcc with a
# static libc. Rebuilds only when a source here changed; DIFFSWAP_GUEST_REBUILD=1 forces it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build}
# Modules the guest needs for a virtio-blk disk on the PCI bus, in the order insmod must see
# them once their dependencies (read from each module's .modinfo) are put first.
wanted_modules=(virtio_pci virtio_blk)

die() {
  echo "guest build: $*" >&2
  exit 1
}

for tool in apt-get apt-cache dpkg-deb cpio gzip gcc; do
  command -v "$tool" >/dev/null || die "missing tool '$tool' (see test/install-deps.sh)"
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "missing busybox (Debian package busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; install busybox-static"
fi

mkdir -p "$out"
stamp="$out/.sources.sha256"
sources_hash=$(cat "$here/build.sh" "$here/init" "$here/memfill.c" | sha256sum | cut -d' ' -f1)
if [ "${DIFFSWAP_GUEST_REBUILD:-0}" != 1 ] && [ -f "$out/vmlinuz" ] &&
  [ -f "$out/initrd.img" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sources_hash" ]; then
  echo "guest build: up to date in $out"
  exit 0
fi

# 1. The kernel package the distribution's meta package points at (Debian: linux-image-amd64
# -> linux-image-6.1.0-57-amd64). DIFFSWAP_GUEST_KERNEL_META picks another meta package.
kernel_meta=${DIFFSWAP_GUEST_KERNEL_META:-linux-image-amd64}
kernel_pkg=$(apt-cache depends "$kernel_meta" 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || die "apt-cache knows no $kernel_meta (run apt-get update)"
deb_dir="$out/deb"
mkdir -p "$deb_dir"
if ! ls "$deb_dir/${kernel_pkg}"_*.deb >/dev/null 2>&1; then
  (cd "$deb_dir" && apt-get download "$kernel_pkg" 2>&1 | grep -v '^W: Download is performed') ||
    die "apt-get download $kernel_pkg failed"
fi
deb=$(ls "$deb_dir/${kernel_pkg}"_*.deb | head -n 1)
kernel_root="$out/kernel"
if [ ! -d "$kernel_root/boot" ]; then
  rm -rf "$kernel_root.tmp"
  dpkg-deb -x "$deb" "$kernel_root.tmp"
  mv "$kernel_root.tmp" "$kernel_root"
fi
vmlinuz=$(ls "$kernel_root"/boot/vmlinuz-* | head -n 1)
kernel_release=${vmlinuz##*/vmlinuz-}
modules_root="$kernel_root/lib/modules/$kernel_release"

# 2. The modules and their dependencies. The package ships no modules.dep (depmod makes it
# on install), so read each module's `depends=` field from its .modinfo section.
module_path() {
  local found
  found=$(find "$modules_root/kernel" -name "$1.ko" -o -name "${1//_/-}.ko" | head -n 1)
  [ -n "$found" ] || die "module $1 not found under $modules_root"
  echo "$found"
}
module_depends() {
  tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}
is_builtin() {
  grep -qE "/(${1}|${1//_/-})\.ko\$" "$modules_root/modules.builtin" 2>/dev/null
}
ordered=()
visit() {
  local name=$1 dep
  is_builtin "$name" && return 0 # compiled into this kernel: nothing to load
  for done_name in "${ordered[@]:-}"; do [ "$done_name" = "$name" ] && return 0; done
  for dep in $(module_depends "$(module_path "$name")"); do visit "$dep"; done
  ordered+=("$name")
}
for name in "${wanted_modules[@]}"; do visit "$name"; done

# 3. The initramfs tree.
tree="$out/initramfs"
rm -rf "$tree"
mkdir -p "$tree"/{bin,dev,proc,sys,etc,lib/modules}
cp "$busybox" "$tree/bin/busybox"
install -m 0755 "$here/init" "$tree/init"
gcc -static -O2 -Wall -Wextra -Werror -o "$tree/bin/memfill" "$here/memfill.c"
: >"$tree/etc/modules.order"
for name in "${ordered[@]}"; do
  cp "$(module_path "$name")" "$tree/lib/modules/$name.ko"
  echo "$name" >>"$tree/etc/modules.order"
done

# 4. Archive. newc is the format the kernel unpacks; owners are forced to root.
(cd "$tree" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 >"$out/initrd.img.tmp"
# Renamed into place, so a qemu starting meanwhile reads the old files or the new, never half.
cp "$vmlinuz" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$sources_hash" >"$stamp"
echo "guest build: kernel $kernel_release, modules: ${ordered[*]}, into $out"
