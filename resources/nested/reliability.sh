#!/usr/bin/env bash
# Is an intermittent L2 failure petrel's or the nested KVM's? Boots the guest kit's Linux
# (PVH vmlinux + the kit's initramfs, whose /init prints PETREL-INIT-OK and powers off) ROUNDS
# times on each VMM — petrel and, when present, QEMU, Firecracker and Cloud Hypervisor —
# interleaved in one L1 (resources/nested/), the same guest, vCPUs, memory and command line
# for all, and classifies every boot by what the guest printed:
#   ok      one `Linux version` banner, PETREL-INIT-OK, the VMM exited by itself
#   reset   the VMM exited (or the guest booted again) without reaching PETREL-INIT-OK:
#           a triple fault / unexpected reset (petrel names it; the others exit or reboot)
#   hang    no PETREL-INIT-OK within the per-boot timeout
#   error   the VMM could not start
# and prints one line per boot and a table per VMM. Failures keep their console and stderr.
# The same failure rate on the peers points at the environment (QEMU's TCG SVM, L1's KVM);
# failures on petrel alone point at petrel.
#
# Usage: resources/nested/reliability.sh [--rounds N] [--cpus N] [--memory MIB]
#                                        [--timeout SECS] [--out DIR] [--only VMM,VMM]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$(pwd)"
source resources/nested/common.sh
say() { echo "reliability: $*" >&2; }

rounds=10 cpus=2 memory=512 per_boot=150 only="" dest=""
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --memory) memory="$2"; shift 2 ;;
    --timeout) per_boot="$2"; shift 2 ;;
    --out) dest="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) say "usage: $0 [--rounds N] [--cpus N] [--memory MIB] [--timeout SECS] [--out DIR] [--only VMM,...]"; exit 2 ;;
    esac
done
ensure_qemu
cargo build --release -q -p vmm
kit="$(resources/build-guest-kit.sh | tail -n 1)"
out="${dest:-$(mktemp -d /tmp/petrel-reliability.XXXXXX)}"
mkdir -p "$out/boots"
out="$(cd "$out" && pwd)"

peers="$(cd "$ROOT/.." && pwd)/shared/peers/bin"
vmms="petrel"
[ -x /usr/bin/qemu-system-x86_64 ] && vmms="$vmms qemu"
[ -x "$peers/firecracker" ] && vmms="$vmms firecracker"
[ -x "$peers/cloud-hypervisor" ] && vmms="$vmms cloud-hypervisor"
if [ -n "$only" ]; then vmms="$(echo "$only" | tr ',' ' ')"; fi
say "VMMs: $vmms; $rounds rounds, $cpus vCPUs, $memory MiB; results in $out"

cat >"$out/run.sh" <<SCRIPT
#!/bin/sh
export HOME="$HOME" PATH="$PATH"
cd "$ROOT"
cmdline="console=ttyS0 reboot=k panic=-1 \$PETREL_L2_EXTRA_CMDLINE"
# boot VMM ROUND: one boot, its line appended to results.
boot() {
    dir="$out/boots/\$1-\$2"; mkdir -p "\$dir"; rm -f /tmp/rel-api.sock
    case "\$1" in
    petrel) set -- "\$1" "\$2" target/release/petrel --kernel "$kit/vmlinux" --initramfs "$kit/initramfs.cpio.gz" \
        --cpus $cpus --memory ${memory}M --cmdline "\$cmdline" --serial stdout --no-reboot ;;
    qemu) set -- "\$1" "\$2" qemu-system-x86_64 -M microvm,acpi=on -enable-kvm -cpu host -smp $cpus -m ${memory}M \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel "$kit/vmlinux" \
        -initrd "$kit/initramfs.cpio.gz" -append "\$cmdline" ;;
    firecracker)
        printf '{"boot-source":{"kernel_image_path":"%s","initrd_path":"%s","boot_args":"%s petrel.shutdown=reboot"},"drives":[],"machine-config":{"vcpu_count":%s,"mem_size_mib":%s}}' \
            "$kit/vmlinux" "$kit/initramfs.cpio.gz" "\$cmdline" $cpus $memory >"\$dir/fc.json"
        : >"\$dir/fc.log"
        set -- "\$1" "\$2" "$peers/firecracker" --no-api --config-file "\$dir/fc.json" --log-path "\$dir/fc.log" --level Warning ;;
    cloud-hypervisor) set -- "\$1" "\$2" "$peers/cloud-hypervisor" --kernel "$kit/vmlinux" \
        --initramfs "$kit/initramfs.cpio.gz" --cmdline "\$cmdline" --cpus boot=$cpus \
        --memory size=${memory}M --serial tty --console off ;;
    esac
    vmm="\$1" round="\$2"; shift 2
    t0=\$(date +%s)
    timeout -k 5 $per_boot "\$@" </dev/null >"\$dir/console.log" 2>"\$dir/stderr.log"
    rc=\$?
    secs=\$((\$(date +%s) - t0))
    banners=\$(grep -ac 'Linux version ' "\$dir/console.log" || true)
    oks=\$(grep -ac 'PETREL-INIT-OK' "\$dir/console.log" || true)
    if [ "\$rc" = 124 ] || [ "\$rc" = 137 ]; then
        if [ "\$oks" -ge 1 ] && [ "\$banners" -le 1 ]; then v=hang-at-exit; else v=hang; fi
    elif [ "\$banners" = 0 ] && [ "\$rc" != 0 ]; then v=error
    elif [ "\$banners" -gt 1 ] || [ "\$oks" = 0 ]; then v=reset
    else v=ok; fi
    last=\$(grep -a . "\$dir/console.log" | tail -n 1 | tr -d '\r' | cut -c1-100)
    why=\$(grep -a -m1 -i 'triple fault\|error' "\$dir/stderr.log" | cut -c1-120)
    [ "\$v" = ok ] && rm -rf "\$dir"
    echo "\$vmm \$round \$v \$secs rc=\$rc | \$last | \$why" >>"$out/results"
    echo "RESULT \$vmm \$round \$v \${secs}s"
}
r=1
while [ \$r -le $rounds ]; do
    for v in $vmms; do boot "\$v" "\$r"; done
    r=\$((r + 1))
done
SCRIPT
: >"$out/results"
l1_run "$out" $((240 + rounds * $(echo $vmms | wc -w) * (per_boot + 10))) || true
verdict="$(l1_verdict "$out")"
say "L1: $verdict"
cat "$out/results"
echo
printf '%-18s %5s %5s %5s %5s %5s %s\n' VMM boots ok reset hang other "median ok secs"
for v in $vmms; do
    lines="$(grep "^$v " "$out/results" || true)"
    n=$(printf '%s' "$lines" | grep -c . || true)
    c() { printf '%s\n' "$lines" | awk -v k="$1" '$3 == k' | grep -c . || true; }
    okn=$(c ok) reset=$(c reset) hang=$(c hang)
    median=$(printf '%s\n' "$lines" | awk '$3 == "ok" {print $4}' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}')
    printf '%-18s %5s %5s %5s %5s %5s %s\n' "$v" "$n" "$okn" "$reset" "$hang" $((n - okn - reset - hang)) "$median"
done
say "failed boots keep their console and stderr under $out/boots"
