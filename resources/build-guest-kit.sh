#!/usr/bin/env bash
# Builds petrel's Linux guest kit from Debian packages (nothing is committed):
#
#   bzImage            the Debian cloud kernel's vmlinuz, as shipped
#   vmlinux            the ELF kernel extracted from it (must carry the PVH note)
#   initramfs.cpio.gz  busybox + virtio modules + resources/init
#   kernel-version     e.g. 6.1.0-48-cloud-amd64
#   manifest           package versions and sha256 of every output
#
# Output: ${PETREL_GUEST_KIT:-$HOME/.cache/petrel/guest-kit}. Idempotent: a
# stamp (hash of this script and of init) makes a second run instant; delete
# the directory, or set PETREL_GUEST_KIT_REBUILD=1, to rebuild. Progress goes to
# stderr; the kit directory is the last line on stdout. Errors are one line on
# stderr starting with "build-guest-kit: error:" and exit status 1.
#
# Needs: apt-get, dpkg-deb, readelf (binutils), gzip, cpio and the kernel's
# decompressor; missing tools are installed with apt-get when run as root.

set -euo pipefail

KIT="${PETREL_GUEST_KIT:-$HOME/.cache/petrel/guest-kit}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INIT_SRC="$HERE/init"
KERNEL_META="linux-image-cloud-amd64"
BUSYBOX_PKG="busybox-static"
# Modules wanted in the initramfs (whatever of them the kernel ships as modules;
# built-in or absent ones are skipped). Dependencies are added automatically.
WANTED_MODULES="virtio virtio_ring virtio_mmio virtio_pci virtio_blk virtio_net
virtio_console vmw_vsock_virtio_transport"

log() { echo "build-guest-kit: $*" >&2; }
die() {
    echo "build-guest-kit: error: $*" >&2
    exit 1
}

[ -f "$INIT_SRC" ] || die "missing $INIT_SRC (run the script from the petrel tree)"

mkdir -p "$KIT" 2>/dev/null || die "cannot create kit directory $KIT"
KIT="$(cd "$KIT" && pwd)"

# One builder at a time per kit directory.
command -v flock >/dev/null || die "flock not found (install util-linux)"
exec 9>"$KIT/.lock"
flock 9 || die "cannot lock $KIT/.lock"

OUTPUTS="bzImage vmlinux initramfs.cpio.gz kernel-version manifest"
STAMP_WANT="$(cat "$0" "$INIT_SRC" | sha256sum | cut -d' ' -f1)"

kit_complete() {
    [ "$(cat "$KIT/.stamp" 2>/dev/null)" = "$STAMP_WANT" ] || return 1
    for f in $OUTPUTS; do [ -s "$KIT/$f" ] || return 1; done
}

if [ "${PETREL_GUEST_KIT_REBUILD:-0}" != 1 ] && kit_complete; then
    echo "$KIT"
    exit 0
fi

APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    [ "$(id -u)" = 0 ] || return 1
    log "apt-get update"
    apt-get update -qq >/dev/null 2>&1 || return 1
    APT_UPDATED=1
}

# need_tool TOOL PACKAGE: installs PACKAGE with apt-get when TOOL is missing.
need_tool() {
    command -v "$1" >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "$1 not found and not root: install the Debian package $2"
    log "installing $2 (for $1)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1; then
        apt_update_once || die "$1 not found and apt-get update failed (install $2)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
            die "$1 not found and apt-get install $2 failed"
    fi
    command -v "$1" >/dev/null || die "$1 still not found after installing $2"
}

command -v apt-get >/dev/null || die "apt-get not found (a Debian system is required)"
command -v apt-cache >/dev/null || die "apt-cache not found (a Debian system is required)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (a Debian system is required)"
need_tool readelf binutils
need_tool gzip gzip
need_tool od coreutils

# known_pkg PKG: true when apt knows a candidate version of PKG.
known_pkg() {
    local policy
    policy="$(apt-cache policy "$1" 2>/dev/null)" || return 1
    grep -q 'Candidate: [^(]' <<<"$policy"
}

ensure_known() {
    known_pkg "$1" && return 0
    apt_update_once || die "package $1 not known to apt and apt-get update failed (are you root?)"
    known_pkg "$1" || die "package $1 not found in the apt sources"
}

ensure_known "$KERNEL_META"
ensure_known "$BUSYBOX_PKG"

# Resolve the metapackage to the real linux-image-<version>-cloud-amd64.
KERNEL_PKG="$(apt-cache depends "$KERNEL_META" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | sed -n 1p)"
[ -n "$KERNEL_PKG" ] || die "cannot resolve $KERNEL_META to a linux-image-<version>-cloud-amd64 package"
ensure_known "$KERNEL_PKG"
KVER="${KERNEL_PKG#linux-image-}"
log "kernel package $KERNEL_PKG"

WORK="$(mktemp -d "$KIT/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && apt-get download -qq "$KERNEL_PKG" "$BUSYBOX_PKG" >/dev/null 2>&1) ||
    die "apt-get download $KERNEL_PKG $BUSYBOX_PKG failed (network or apt sources)"
KDEB="$(ls "$WORK"/"$KERNEL_PKG"_*.deb 2>/dev/null | sed -n 1p)"
BDEB="$(ls "$WORK"/"$BUSYBOX_PKG"_*.deb 2>/dev/null | sed -n 1p)"
[ -f "$KDEB" ] || die "downloaded $KERNEL_PKG .deb not found"
[ -f "$BDEB" ] || die "downloaded $BUSYBOX_PKG .deb not found"
KPKG_VERSION="$(dpkg-deb -f "$KDEB" Version)"
BPKG_VERSION="$(dpkg-deb -f "$BDEB" Version)"

dpkg-deb -x "$KDEB" "$WORK/kernel" || die "dpkg-deb -x $KDEB failed"
dpkg-deb -x "$BDEB" "$WORK/busybox" || die "dpkg-deb -x $BDEB failed"

VMLINUZ="$WORK/kernel/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "no boot/vmlinuz-$KVER in $KERNEL_PKG"
MODDIR="$WORK/kernel/lib/modules/$KVER"
[ -d "$MODDIR" ] || MODDIR="$WORK/kernel/usr/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no lib/modules/$KVER in $KERNEL_PKG"
BUSYBOX="$WORK/busybox/bin/busybox"
[ -x "$BUSYBOX" ] || die "no bin/busybox in $BUSYBOX_PKG"

cp "$VMLINUZ" "$WORK/bzImage"

# ---- vmlinux: decompress the bzImage payload -------------------------------

u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
hex_at() { od -An -tx1 -j "$2" -N"$3" "$1" | tr -d ' \n'; }

# compression_of HEXBYTES: kernel compression name for the payload's magic.
compression_of() {
    case "$1" in
    1f8b*) echo gzip ;;
    fd377a585a00*) echo xz ;;
    28b52ffd*) echo zstd ;;
    02214c18*) echo lz4 ;;
    425a68*) echo bzip2 ;;
    5d000000*) echo lzma ;;
    894c5a*) echo lzo ;;
    *) echo unknown ;;
    esac
}

# decompress NAME: stdin → stdout with the matching Debian tool.
decompress() {
    case "$1" in
    gzip) gzip -dc ;;
    xz) xz -dc --single-stream ;;
    lzma) xz -dc --format=lzma ;;
    zstd) zstd -dcq ;;
    lz4) lz4 -dc ;;
    bzip2) bzip2 -dc ;;
    lzo) lzop -dc ;;
    esac
}

tool_for() {
    case "$1" in
    gzip) echo "gzip gzip" ;;
    xz | lzma) echo "xz xz-utils" ;;
    zstd) echo "zstd zstd" ;;
    lz4) echo "lz4 lz4" ;;
    bzip2) echo "bzip2 bzip2" ;;
    lzo) echo "lzop lzop" ;;
    esac
}

BZ="$WORK/bzImage"
[ "$(hex_at "$BZ" $((0x202)) 4)" = "48647253" ] || die "$VMLINUZ is not a bzImage (no HdrS header)"
setup_sects="$(u8 "$BZ" $((0x1f1)))"
[ "$setup_sects" -eq 0 ] && setup_sects=4
payload_offset="$(u32 "$BZ" $((0x248)))"
payload_length="$(u32 "$BZ" $((0x24c)))"
start=$(((setup_sects + 1) * 512 + payload_offset))
COMP="$(compression_of "$(hex_at "$BZ" "$start" 6)")"
if [ "$COMP" = unknown ]; then
    # Header fields unusable: search for the first known magic instead.
    log "payload not found through the setup header, searching by magic"
    for magic in '\x02\x21\x4c\x18' '\xfd\x37\x7a\x58\x5a\x00' '\x28\xb5\x2f\xfd' \
        '\x1f\x8b\x08' '\x42\x5a\x68' '\x5d\x00\x00\x00' '\x89\x4c\x5a'; do
        off="$(LC_ALL=C grep -obUaP "$magic" "$BZ" | sed -n 1p | cut -d: -f1)"
        [ -n "$off" ] || continue
        start="$off"
        payload_length=$(($(stat -c %s "$BZ") - off))
        COMP="$(compression_of "$(hex_at "$BZ" "$start" 6)")"
        break
    done
    [ "$COMP" != unknown ] || die "no known compressed payload found in $VMLINUZ"
fi
log "kernel payload: $COMP at offset $start, $payload_length bytes"
read -r tool pkg <<<"$(tool_for "$COMP")"
need_tool "$tool" "$pkg"
# The payload ends with the 4-byte little-endian uncompressed size (not part of
# the compressed stream).
tail -c +$((start + 1)) "$BZ" | head -c $((payload_length - 4)) | decompress "$COMP" \
    >"$WORK/vmlinux" 2>/dev/null || true
[ "$(hex_at "$WORK/vmlinux" 0 4)" = "7f454c46" ] ||
    die "decompressing the $COMP payload of $VMLINUZ did not give an ELF file"
NOTES="$(readelf -W -n "$WORK/vmlinux" 2>/dev/null)" || die "readelf -n failed on the extracted vmlinux"
grep -Eq '^ *Xen .*\(0x0*12\)|XEN_ELFNOTE_PHYS32_ENTRY' <<<"$NOTES" ||
    die "vmlinux has no PVH entry note (Xen note 0x12): this kernel cannot boot as PVH"

# ---- initramfs --------------------------------------------------------------

ROOT="$WORK/initramfs"
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,run,etc/petrel.d,lib/modules,usr/bin,usr/sbin}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
install -m 0755 "$INIT_SRC" "$ROOT/init"
# The kernel opens /dev/console before /init runs (init also re-opens it).
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null ||
    log "cannot mknod dev/console (not root?); init re-opens it from devtmpfs"

# Module files by name (module names use '_', file names may use '-').
find "$MODDIR/kernel" -name '*.ko*' >"$WORK/all-modules"

module_file() {
    local name="$1" alt
    alt="$(echo "$name" | tr _ -)"
    grep -E "/($name|$alt)\.ko(\.(xz|zst|gz))?$" "$WORK/all-modules" | sed -n 1p
}

# plain_module SRC DST: copies a module, decompressing .ko.xz/.zst/.gz.
plain_module() {
    case "$1" in
    *.ko.xz) need_tool xz xz-utils && xz -dc "$1" >"$2" ;;
    *.ko.zst) need_tool zstd zstd && zstd -dcq "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
    esac
}

: >"$ROOT/lib/modules/load-order"
declare -A VISITED=()
# add_module NAME: adds NAME after its dependencies (post-order walk).
add_module() {
    local name="$1" file deps dep
    [ -n "${VISITED[$name]:-}" ] && return 0
    VISITED[$name]=1
    file="$(module_file "$name")"
    if [ -z "$file" ]; then
        if grep -Eq "/$name\.ko$" "$MODDIR/modules.builtin" 2>/dev/null; then
            log "module $name is built in"
        else
            log "module $name not in this kernel, skipped"
        fi
        return 0
    fi
    plain_module "$file" "$ROOT/lib/modules/$name.ko" || die "cannot copy module $file"
    deps="$(readelf -p .modinfo "$ROOT/lib/modules/$name.ko" 2>/dev/null |
        sed -n 's/^ *\[ *[0-9a-f]*\] *depends=//p' | tr ',' ' ')"
    for dep in $deps; do add_module "$dep"; done
    echo "$name" >>"$ROOT/lib/modules/load-order"
}
for m in $WANTED_MODULES; do add_module "$m"; done
log "modules: $(tr '\n' ' ' <"$ROOT/lib/modules/load-order")"

if command -v cpio >/dev/null || { [ "$(id -u)" = 0 ] && need_tool cpio cpio; }; then
    CPIO=(cpio)
else
    log "cpio not installed, using busybox cpio"
    CPIO=("$BUSYBOX" cpio)
fi
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "${CPIO[@]}" -o -H newc 2>/dev/null) |
    gzip -9 -n >"$WORK/initramfs.cpio.gz" || die "cannot create the initramfs cpio archive"
[ -s "$WORK/initramfs.cpio.gz" ] || die "the initramfs archive is empty"

# ---- publish -----------------------------------------------------------------

echo "$KVER" >"$WORK/kernel-version"
{
    echo "kernel-package $KERNEL_PKG $KPKG_VERSION"
    echo "busybox-package $BUSYBOX_PKG $BPKG_VERSION"
    echo "kernel-version $KVER"
    echo "kernel-compression $COMP"
    echo "modules $(tr '\n' ' ' <"$ROOT/lib/modules/load-order" | sed 's/ $//')"
    (cd "$WORK" && sha256sum bzImage vmlinux initramfs.cpio.gz kernel-version)
} >"$WORK/manifest"

rm -f "$KIT/.stamp"
for f in $OUTPUTS; do mv -f "$WORK/$f" "$KIT/$f"; done
echo "$STAMP_WANT" >"$KIT/.stamp"
log "kit ready: $(cut -d' ' -f1-3 <"$KIT/manifest" | head -n2 | tr '\n' ' ')"
echo "$KIT"
