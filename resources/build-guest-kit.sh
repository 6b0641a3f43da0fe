#!/usr/bin/env bash
# Builds petrel's Linux guest kit from Debian packages (nothing is committed):
#
#   bzImage            the Debian cloud kernel's vmlinuz, as shipped
#   vmlinux            the ELF kernel extracted from it (must carry the PVH note)
#   initramfs.cpio.gz  busybox + virtio modules + petrel-vsock + resources/init
#   rootfs.ext4        a small ext4 image (busybox, init, petrel-vsock and the
#                      marker file etc/petrel-rootfs) for the virtio-blk root of
#                      the full-boot virtio test (`petrel.test=virtio`, see init)
#   kernel-version     e.g. 6.1.0-48-cloud-amd64
#   manifest           package versions and sha256 of every output
#
# Output: ${PETREL_GUEST_KIT:-$HOME/.cache/petrel/guest-kit}. Idempotent: a
# stamp (hash of this script and of init) makes a second run instant; delete
# the directory, or set PETREL_GUEST_KIT_REBUILD=1, to rebuild. Progress goes to
# stderr; the kit directory is the last line on stdout. Errors are one line on
# stderr starting with "build-guest-kit: error:" and exit status 1.
#
# Needs: apt-get, dpkg-deb, readelf (binutils), gzip, cpio, the kernel's
# decompressor, gcc with static glibc (libc6-dev) for petrel-vsock and
# mkfs.ext4 (e2fsprogs); missing tools are installed with apt-get when run as root.

set -euo pipefail

KIT="${PETREL_GUEST_KIT:-$HOME/.cache/petrel/guest-kit}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INIT_SRC="$HERE/init"
KERNEL_META="linux-image-cloud-amd64"
BUSYBOX_PKG="busybox-static"
# Modules wanted in the initramfs (whatever of them the kernel ships as modules;
# built-in or absent ones are skipped). Dependencies are added automatically.
# button (the ACPI power button petrel's DSDT describes) and evdev (its key events as
# /dev/input/event*, which init's power-button watcher reads) are modules in the cloud kernel.
WANTED_MODULES="virtio virtio_ring virtio_mmio virtio_pci virtio_blk virtio_net
virtio_console virtio_rng virtio_balloon vsock vmw_vsock_virtio_transport
crc16 mbcache jbd2 ext4 button evdev"
# Size of rootfs.ext4 in MiB (the guest writes about 1 MiB to it).
ROOTFS_MIB=32
# Content of etc/petrel-rootfs in rootfs.ext4 (the guest checks it after mounting).
ROOTFS_MARKER="petrel guest-kit rootfs"

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

OUTPUTS="bzImage vmlinux initramfs.cpio.gz rootfs.ext4 kernel-version manifest"
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
need_tool gcc gcc
need_tool mkfs.ext4 e2fsprogs

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

# ---- petrel-vsock: a tiny static AF_VSOCK client/server for the guest --------
# (busybox has no vsock support). Built from the source below with gcc -static.

cat >"$WORK/petrel-vsock.c" <<'EOF'
/* petrel-vsock: AF_VSOCK line exchange for petrel's guest kit.
 *
 *   petrel-vsock connect CID PORT MESSAGE [SECONDS]
 *       connects to CID:PORT, sends MESSAGE and a newline, prints the reply line
 *   petrel-vsock listen PORT PREFIX [SECONDS]
 *       listens on PORT (any CID), prints "listening", accepts one connection,
 *       reads a line, sends PREFIX, the line and a newline back, prints the line
 *
 * Gives up after SECONDS (default 20), printing what it was doing. Exit status:
 * 0 done, 1 error, 2 usage, 3 timeout. Errors go to stderr as one line.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static const char *step = "starting";

static void on_alarm(int sig)
{
    static const char msg[] = "petrel-vsock: timeout while ";
    (void)sig;
    (void)!write(2, msg, sizeof(msg) - 1);
    (void)!write(2, step, strlen(step));
    (void)!write(2, "\n", 1);
    _exit(3);
}

static int fail(const char *what)
{
    fprintf(stderr, "petrel-vsock: %s: %s\n", what, strerror(errno));
    return 1;
}

static int parse_u32(const char *s, unsigned int *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > 0xffffffffUL)
        return -1;
    *out = (unsigned int)v;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads up to a newline (not stored) or EOF; -1 on error or an empty EOF. */
static int read_line(int fd, char *buf, size_t cap)
{
    size_t len = 0;

    while (len + 1 < cap) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            if (len == 0) {
                errno = ECONNRESET;
                return -1;
            }
            break;
        }
        if (c == '\n')
            break;
        buf[len++] = c;
    }
    buf[len] = '\0';
    return (int)len;
}

static int do_connect(unsigned int cid, unsigned int port, const char *msg)
{
    struct sockaddr_vm addr;
    char line[512];
    int s;

    step = "creating the socket";
    s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket(AF_VSOCK)");
    memset(&addr, 0, sizeof(addr));
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    step = "connecting";
    if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return fail("connect");
    step = "sending";
    snprintf(line, sizeof(line), "%s\n", msg);
    if (write_all(s, line, strlen(line)) < 0)
        return fail("write");
    step = "reading the reply";
    if (read_line(s, line, sizeof(line)) < 0)
        return fail("read");
    printf("%s\n", line);
    close(s);
    return 0;
}

static int do_listen(unsigned int port, const char *prefix)
{
    struct sockaddr_vm addr;
    char line[512], reply[1024];
    int s, c;

    step = "creating the socket";
    s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket(AF_VSOCK)");
    memset(&addr, 0, sizeof(addr));
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = port;
    step = "binding";
    if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return fail("bind");
    if (listen(s, 1) < 0)
        return fail("listen");
    printf("listening\n");
    fflush(stdout);
    step = "waiting for a connection";
    do
        c = accept(s, NULL, NULL);
    while (c < 0 && errno == EINTR);
    if (c < 0)
        return fail("accept");
    step = "reading a line";
    if (read_line(c, line, sizeof(line)) < 0)
        return fail("read");
    printf("%s\n", line);
    fflush(stdout);
    step = "replying";
    snprintf(reply, sizeof(reply), "%s%s\n", prefix, line);
    if (write_all(c, reply, strlen(reply)) < 0)
        return fail("write");
    close(c);
    close(s);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned int cid, port, secs = 20;

    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error message, not a silent death */
    if (argc >= 5 && argc <= 6 && strcmp(argv[1], "connect") == 0 &&
        parse_u32(argv[2], &cid) == 0 && parse_u32(argv[3], &port) == 0 &&
        (argc == 5 || parse_u32(argv[5], &secs) == 0)) {
        alarm(secs);
        return do_connect(cid, port, argv[4]);
    }
    if (argc >= 4 && argc <= 5 && strcmp(argv[1], "listen") == 0 &&
        parse_u32(argv[2], &port) == 0 && (argc == 4 || parse_u32(argv[4], &secs) == 0)) {
        alarm(secs);
        return do_listen(port, argv[3]);
    }
    fprintf(stderr, "usage: petrel-vsock connect CID PORT MESSAGE [SECONDS]\n"
                    "       petrel-vsock listen PORT PREFIX [SECONDS]\n");
    return 2;
}
EOF
VSOCK_BIN="$WORK/petrel-vsock"
build_vsock() {
    gcc -static -Os -s -Wall -Wextra -o "$VSOCK_BIN" "$WORK/petrel-vsock.c" 2>"$WORK/gcc.log"
}
if ! build_vsock; then
    # Usually a missing libc.a or linux/vm_sockets.h.
    [ "$(id -u)" = 0 ] || die "gcc -static petrel-vsock.c failed (install libc6-dev): $(head -n1 "$WORK/gcc.log")"
    log "installing libc6-dev (static glibc for petrel-vsock)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc6-dev linux-libc-dev >/dev/null 2>&1 ||
        { apt_update_once && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libc6-dev linux-libc-dev >/dev/null 2>&1; } ||
        die "gcc -static petrel-vsock.c failed and apt-get install libc6-dev failed"
    build_vsock || die "gcc -static petrel-vsock.c failed: $(head -n1 "$WORK/gcc.log")"
fi
vsock_rc=0
"$VSOCK_BIN" 2>/dev/null || vsock_rc=$?
[ "$vsock_rc" = 2 ] || die "the static petrel-vsock binary does not run on this host (status $vsock_rc)"

# ---- initramfs --------------------------------------------------------------

ROOT="$WORK/initramfs"
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,run,etc/petrel.d,lib/modules,usr/bin,usr/sbin}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
install -m 0755 "$INIT_SRC" "$ROOT/init"
install -m 0755 "$VSOCK_BIN" "$ROOT/bin/petrel-vsock"
# The kernel opens /dev/console before /init runs (init also re-opens it).
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null ||
    log "cannot mknod dev/console (not root?); init re-opens it from devtmpfs"

# Module files by name (module names use '_', file names may use '-').
find "$MODDIR/kernel" -name '*.ko*' >"$WORK/all-modules"

module_file() {
    local name="$1" alt
    alt="$(echo "$name" | tr _ -)"
    # No match is not an error (built-in or absent module): empty output.
    { grep -E "/($name|$alt)\.ko(\.(xz|zst|gz))?$" "$WORK/all-modules" || true; } | sed -n 1p
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

# ---- rootfs.ext4 -------------------------------------------------------------

RFS="$WORK/rootfs"
mkdir -p "$RFS"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,usr/bin,usr/sbin}
cp "$BUSYBOX" "$RFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$RFS/bin/$applet"
done
install -m 0755 "$INIT_SRC" "$RFS/init"
ln -sf ../init "$RFS/sbin/init"
install -m 0755 "$VSOCK_BIN" "$RFS/bin/petrel-vsock"
echo "$ROOTFS_MARKER" >"$RFS/etc/petrel-rootfs"
truncate -s "${ROOTFS_MIB}M" "$WORK/rootfs.ext4" || die "cannot create $WORK/rootfs.ext4"
mkfs.ext4 -q -F -L petrel-root -E root_owner=0:0 -d "$RFS" "$WORK/rootfs.ext4" \
    >"$WORK/mkfs.log" 2>&1 || die "mkfs.ext4 -d failed: $(head -n1 "$WORK/mkfs.log")"

# ---- publish -----------------------------------------------------------------

echo "$KVER" >"$WORK/kernel-version"
{
    echo "kernel-package $KERNEL_PKG $KPKG_VERSION"
    echo "busybox-package $BUSYBOX_PKG $BPKG_VERSION"
    echo "kernel-version $KVER"
    echo "kernel-compression $COMP"
    echo "modules $(tr '\n' ' ' <"$ROOT/lib/modules/load-order" | sed 's/ $//')"
    echo "rootfs-ext4 ${ROOTFS_MIB}M label=petrel-root marker=/etc/petrel-rootfs"
    (cd "$WORK" && sha256sum bzImage vmlinux initramfs.cpio.gz rootfs.ext4 kernel-version)
} >"$WORK/manifest"

rm -f "$KIT/.stamp"
for f in $OUTPUTS; do mv -f "$WORK/$f" "$KIT/$f"; done
echo "$STAMP_WANT" >"$KIT/.stamp"
log "kit ready: $(cut -d' ' -f1-3 <"$KIT/manifest" | head -n2 | tr '\n' ' ')"
echo "$KIT"
