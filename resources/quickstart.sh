#!/usr/bin/env bash
# petrel's main job for a new user: build petrel, build a guest, boot it and show its console.
#
# It builds the Debian guest kit (resources/build-guest-kit.sh) and boots the Debian cloud
# kernel with 2 vCPUs and a busybox initramfs to its shell marker and poweroff:
# - where the host runs guest ring-0 code natively (VT-x/AMD-V), directly on /dev/kvm;
# - where it does not (e.g. PVM, which emulates guest ring 0), one level down: QEMU (TCG,
#   `-cpu max`: AMD SVM with nested paging) boots a Debian kernel as L1, which loads kvm_amd
#   and runs the same petrel on its real /dev/kvm (resources/nested/; ~1 minute).
# If neither works it says why and boots petrel's freestanding test guest instead.
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

KIT=$(resources/build-guest-kit.sh | tail -n 1)
source resources/nested/common.sh
say "this host's KVM does not run guest ring 0 natively (PVM): booting Linux under petrel in a"
say "nested KVM instead (QEMU TCG L1 with kvm_amd; timings there are TCG's, not hardware's)"
if ensure_qemu; then
    out="$(mktemp -d /tmp/petrel-quickstart.XXXXXX)"
    cat >"$out/run.sh" <<SCRIPT
#!/bin/sh
cd "$(pwd)"
echo "L1: petrel $(target/release/petrel --version 2>/dev/null | head -n 1) on L1's /dev/kvm:"
$(pwd)/$PETREL --kernel "$KIT/vmlinux" --initramfs "$KIT/initramfs.cpio.gz" --cpus 2 \
    --memory 512M --cmdline "console=ttyS0 reboot=k panic=1 quiet \$PETREL_L2_EXTRA_CMDLINE" </dev/null
echo "L1: petrel exited with status \$?"
SCRIPT
    l1_run "$out" 600 &
    qpid=$!
    # Show L2's console (what petrel's serial prints inside L1) as it comes.
    tail -n +1 -F "$out/console.log" 2>/dev/null | sed -u -n '/^L1: petrel /,$p' &
    tpid=$!
    rc=0
    wait "$qpid" || rc=$?
    sleep 1
    kill "$tpid" 2>/dev/null || true
    verdict="$(l1_verdict "$out")"
    if [ "$verdict" = ok ] && grep -q "PETREL-INIT-OK" "$out/console.log"; then
        rm -rf "$out"
        say "Linux booted under petrel (nested) and powered off"
        exit 0
    fi
    say "the nested boot did not complete ($verdict, qemu status $rc); console in $out/console.log"
fi
say "booting petrel's test guest instead"
exec "$PETREL" --kernel "$GUEST" --cpus 2 --memory 128M --cmdline "action=poweroff hello-from-petrel"
