#!/usr/bin/env bash
# Builds the L1 kit for petrel's nested-KVM Linux tests, from Debian packages (nothing is
# committed): the kernel a QEMU (TCG, `-cpu max`: AMD SVM with nested paging) boots as L1,
# and an initramfs that loads kvm_amd, mounts the host's `/` read-only over virtio-9p under a
# writable overlay, and runs the test script the host hands it (see l1-init).
#
#   vmlinuz            Debian's generic kernel (linux-image-amd64: it has 9p, overlay, kvm)
#   initramfs.cpio.gz  busybox + the modules below (with their dependencies) + l1-init
#   kernel-version     e.g. 6.1.0-57-amd64
#   manifest           package versions and sha256 of every output
#
# Output: ${PETREL_L1_KIT:-$HOME/.cache/petrel/l1-kit}. A stamp (hash of this script and of
# l1-init) makes a second run instant. The kit directory is the last line on stdout; errors
# are one line on stderr starting with "build-l1-kit: error:" and exit status 1.
set -euo pipefail

KIT="${PETREL_L1_KIT:-$HOME/.cache/petrel/l1-kit}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INIT_SRC="$HERE/l1-init"
KERNEL_META="linux-image-amd64"
# What L1 needs: the 9p root, an overlay over it, KVM on AMD SVM, taps/bridges/veths for the
# tests' networks, vhost for later, ext4 and loop for images.
WANTED="virtio_pci 9pnet_virtio 9p overlay kvm_amd tun tap bridge veth vhost_net vhost_vsock
ext4 loop af_packet"

log() { echo "build-l1-kit: $*" >&2; }
die() {
    echo "build-l1-kit: error: $*" >&2
    exit 1
}

[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"
mkdir -p "$KIT" || die "cannot create $KIT"
KIT="$(cd "$KIT" && pwd)"
exec 9>"$KIT/.lock"
flock 9 || die "cannot lock $KIT/.lock"

STAMP_WANT="$(cat "$0" "$INIT_SRC" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$KIT/.stamp" 2>/dev/null)" = "$STAMP_WANT" ] && [ -s "$KIT/vmlinuz" ] &&
    [ -s "$KIT/initramfs.cpio.gz" ]; then
    echo "$KIT"
    exit 0
fi

need() { # need TOOL PACKAGE
    command -v "$1" >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "$1 not found: install the Debian package $2"
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1; } ||
        die "apt-get install $2 failed"
}
need dpkg-deb dpkg
need depmod kmod
need cpio cpio
need gzip gzip

pkg_of_meta() {
    apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | sed -n 1p
}
KPKG="$(pkg_of_meta "$KERNEL_META")"
if [ -z "$KPKG" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    KPKG="$(pkg_of_meta "$KERNEL_META")"
fi
[ -n "$KPKG" ] || die "cannot resolve $KERNEL_META to a linux-image package (apt sources?)"
KVER="${KPKG#linux-image-}"
log "L1 kernel package $KPKG"

WORK="$(mktemp -d "$KIT/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -qq "$KPKG" busybox-static >/dev/null 2>&1) ||
    die "apt-get download $KPKG busybox-static failed"
KDEB="$(ls "$WORK"/"$KPKG"_*.deb | sed -n 1p)"
BDEB="$(ls "$WORK"/busybox-static_*.deb | sed -n 1p)"
dpkg-deb -x "$KDEB" "$WORK/k" || die "dpkg-deb -x $KDEB failed"
dpkg-deb -x "$BDEB" "$WORK/bb" || die "dpkg-deb -x $BDEB failed"
[ -f "$WORK/k/boot/vmlinuz-$KVER" ] || die "no boot/vmlinuz-$KVER in $KPKG"
depmod -b "$WORK/k" "$KVER" || die "depmod failed"

ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,host,out,newroot,up,lib/modules}
cp "$WORK/bb/bin/busybox" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
install -m 0755 "$INIT_SRC" "$ROOT/init"
: >"$ROOT/lib/modules/load-order"
declare -A SEEN=()
for m in $WANTED; do
    deps="$(modprobe -d "$WORK/k" -S "$KVER" --show-depends "$m" 2>/dev/null)" ||
        die "module $m not found in $KPKG"
    while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        name="$(basename "$path")"
        name="${name%.ko}"
        [ -n "${SEEN[$name]:-}" ] && continue
        SEEN[$name]=1
        cp "$path" "$ROOT/lib/modules/$name.ko"
        echo "$name" >>"$ROOT/lib/modules/load-order"
    done <<<"$deps"
done
log "modules: $(tr '\n' ' ' <"$ROOT/lib/modules/load-order")"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc 2>/dev/null) |
    gzip -6 -n >"$WORK/initramfs.cpio.gz" || die "cpio failed"

cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
echo "$KVER" >"$WORK/kernel-version"
{
    echo "kernel-package $KPKG $(dpkg-deb -f "$KDEB" Version)"
    echo "busybox-package busybox-static $(dpkg-deb -f "$BDEB" Version)"
    echo "modules $(tr '\n' ' ' <"$ROOT/lib/modules/load-order")"
    (cd "$WORK" && sha256sum vmlinuz initramfs.cpio.gz)
} >"$WORK/manifest"
rm -f "$KIT/.stamp"
for f in vmlinuz initramfs.cpio.gz kernel-version manifest; do mv -f "$WORK/$f" "$KIT/$f"; done
echo "$STAMP_WANT" >"$KIT/.stamp"
log "kit ready: $KPKG"
echo "$KIT"
