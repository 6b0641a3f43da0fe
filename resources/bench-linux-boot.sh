#!/usr/bin/env bash
# The benchmark harness's `linux-boot` workload (a full boot of the guest kit's Debian kernel
# to its init marker and poweroff) for petrel and its peers side by side: directly where guest
# ring 0 is native, else inside the nested KVM of the Linux tests (QEMU TCG L1 with kvm_amd;
# resources/nested/), where every VMM boots the same L2 guest in the same L1. The report's host
# line says which; nested timings are TCG's, so read the petrel/peer ratios, not absolutes.
#
# Usage: resources/bench-linux-boot.sh [--out DIR] [petrel-bench options, e.g. --runs 5]
# Peers: QEMU (/usr/bin/qemu-system-x86_64) and, when present, ../shared/peers/bin's
# Firecracker and Cloud Hypervisor (override with --qemu/--firecracker/--cloud-hypervisor).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source resources/nested/common.sh
say() { echo "bench-linux-boot: $*" >&2; }

dest="results/linux-boot-$(date -u +%Y%m%dT%H%M%SZ)"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --out) dest="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
    esac
done
peers=()
case " ${args[*]:-} " in *" --qemu"*) ;; *) peers+=(--qemu /usr/bin/qemu-system-x86_64) ;; esac
for p in firecracker cloud-hypervisor; do
    case " ${args[*]:-} " in *" --$p"*) continue ;; esac
    [ -x "../shared/peers/bin/$p" ] && peers+=("--$p" "$(cd ../shared/peers/bin && pwd)/$p")
done
ensure_qemu
cargo build --release -q -p vmm -p petrel-bench -p petrel-tests --bins
resources/build-guest-kit.sh >/dev/null
guest="$(target/release/build-test-guest pvh)"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

if ring0_native target/release/petrel "$guest"; then
    say "guest ring 0 is native here: running on this host"
    exec target/release/petrel-bench --workloads linux-boot "${peers[@]}" "${args[@]}" --out "$dest"
fi

# Boots under TCG take tens of seconds: a longer per-run timeout unless one was given.
case " ${args[*]:-} " in *" --timeout"*) ;; *) args+=(--timeout 300) ;; esac
out="$(mktemp -d /tmp/petrel-bench-l1.XXXXXX)"
env_label="nested KVM: L2 guests under L1 $(cat "$(resources/nested/build-l1-kit.sh | tail -n 1)/kernel-version") with kvm_amd, in QEMU $(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p') TCG -cpu max on $(uname -r); timings are TCG's: compare ratios only"
cat >"$out/run.sh" <<SCRIPT
#!/bin/sh
cd "$(pwd)"
export HOME="$HOME" PATH="$PATH" PETREL_BENCH_ENVIRONMENT="$env_label"
target/release/petrel-bench --workloads linux-boot $(printf '%q ' "${peers[@]}" "${args[@]}") --out "$out/results" >"$out/bench.out" 2>&1
echo "bench status \$?"
SCRIPT
say "guest ring 0 is emulated here (PVM): running the workload in the nested KVM"
rc=0
l1_run "$out" 3600 || rc=$?
verdict="$(l1_verdict "$out")"
cat "$out/bench.out" 2>/dev/null || true
if [ "$verdict" != ok ] || [ ! -f "$out/results/results.json" ]; then
    say "the nested run failed ($verdict, qemu status $rc); logs in $out"
    exit 1
fi
cp -r "$out/results/." "$dest/"
rm -rf "$out"
say "results in $dest"
