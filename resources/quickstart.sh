#!/usr/bin/env bash
# petrel's main job for a new user: build petrel, build a guest, boot it and show its console.
#
# Where the host runs guest ring-0 code natively (VT-x/AMD-V), this builds the Debian guest kit
# (resources/build-guest-kit.sh) and boots the Debian cloud kernel with a busybox initramfs to
# its shell marker and poweroff. Where it does not (e.g. PVM, which emulates guest ring 0), a
# Linux boot would take minutes, so it says so and boots petrel's test guest instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "quickstart: $*" >&2; }

if [ ! -e /dev/kvm ]; then
    say "error: /dev/kvm does not exist: petrel needs KVM (load kvm_intel or kvm_amd)"
    exit 1
fi
command -v gcc >/dev/null || { say "installing gcc"; apt-get update -qq && apt-get install -y -qq gcc >/dev/null; }

say "building petrel (release)"
cargo build --release -q -p vmm -p petrel-tests --bins
PETREL=target/release/petrel
GUEST=$(target/release/build-test-guest pvh)

say "checking whether guest ring 0 runs natively (calibration guest)"
# The guest prints CALIBRATE: begin, runs 1,000,000 ring-0 loop iterations, prints
# CALIBRATE: end. Natively that takes about a millisecond; emulated, seconds.
native=no
begin=""
while IFS= read -r line; do
    case "$line" in
    "CALIBRATE: begin"*) begin=$(date +%s%N) ;;
    "CALIBRATE: end"*)
        end=$(date +%s%N)
        ms=$(((end - begin) / 1000000))
        say "1M ring-0 iterations took ${ms} ms"
        [ "$ms" -lt 200 ] && native=yes
        ;;
    esac
done < <(timeout 10 "$PETREL" --kernel "$GUEST" --memory 64M --cmdline action=calibrate 2>/dev/null || true)

if [ "$native" = yes ]; then
    KIT=$(resources/build-guest-kit.sh | tail -n 1)
    say "booting the Debian cloud kernel ($(cat "$KIT/kernel-version")) with 2 vCPUs"
    exec "$PETREL" --kernel "$KIT/vmlinux" --initramfs "$KIT/initramfs.cpio.gz" \
        --cpus 2 --memory 512M --cmdline "console=ttyS0 reboot=k panic=1 quiet"
fi

say "this host's KVM does not run guest ring 0 natively (PVM or nested emulation):"
say "a full Linux boot would take minutes here, so booting petrel's test guest instead."
exec "$PETREL" --kernel "$GUEST" --cpus 2 --memory 128M --cmdline "action=poweroff hello-from-petrel"
