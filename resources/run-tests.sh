#!/usr/bin/env bash
# Runs petrel's tests: installs what they need, builds, runs every test of the workspace, then
# the real-Linux scenarios (resources/run-linux-tests.sh: directly where guest ring 0 is
# native, else under a nested KVM in QEMU), and ends with one line for the whole run:
#   N passed, N failed, N skipped
# listing every skipped test with its reason first. Tests record skips through the test-skip
# crate (PETREL_SKIP_LOG); cargo's `ignored` count is added to the skips.
#
# Usage: resources/run-tests.sh [--host-only]   (--host-only: no Linux scenarios)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

host_only=no
[ "${1:-}" = --host-only ] && host_only=yes

need=()
for tool in gcc:gcc ld:binutils cpio:cpio xz:xz-utils zstd:zstd flock:util-linux \
    iasl:acpica-tools acpiexec:acpica-tools jq:jq debugfs:e2fsprogs ip:iproute2 \
    qemu-system-x86_64:qemu-system-x86 depmod:kmod promtool:prometheus \
    dnsmasq:dnsmasq-base nft:nftables busybox:busybox qemu-img:qemu-utils; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "run-tests: installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --workspace --all-targets
resources/build-guest-kit.sh >/dev/null || echo "run-tests: guest kit unavailable; Linux boot tests will say why they skip" >&2

work="$(mktemp -d /tmp/petrel-tests.XXXXXX)"
export PETREL_SKIP_LOG="$work/skips"
: >"$PETREL_SKIP_LOG"

# The Linux scenarios (tests named linux_*) run in their own phase below when it will run.
host_filter=()
[ "$host_only" = no ] && host_filter=(--skip linux_)
status=0
cargo test --workspace --no-fail-fast -- --test-threads=2 "${host_filter[@]}" 2>&1 |
    tee "$work/cargo.log" || status=$?

# Totals over every test binary's `test result:` line.
read -r c_passed c_failed c_ignored < <(sed -n \
    's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' \
    "$work/cargo.log" | awk '{p+=$1; f+=$2; i+=$3} END {print p+0, f+0, i+0}')
recorded=$(wc -l <"$PETREL_SKIP_LOG")
passed=$((c_passed - recorded))
failed=$c_failed
skipped=$((c_ignored + recorded))
# A failing binary that printed no `test result:` (a crash, a build failure) is a failure too.
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    failed=1
    echo "run-tests: cargo test exited with status $status without a failed test: counted as one failure" >&2
fi
echo "host: $passed passed, $failed failed, $skipped skipped"

if [ "$host_only" = no ]; then
    lstatus=0
    resources/run-linux-tests.sh --summary "$work/linux" || lstatus=$?
    if [ -s "$work/linux" ]; then
        read -r l_passed l_failed l_skipped l_env l_intermittent <"$work/linux"
        passed=$((passed + l_passed))
        failed=$((failed + l_failed))
        skipped=$((skipped + l_skipped))
        tail -n +2 "$work/linux" >>"$PETREL_SKIP_LOG"
        echo "run-tests: nested-KVM environment failures retried: $l_env; Linux scenarios that failed once and passed on their retry: ${l_intermittent:-0} (listed above)" >&2
    else
        failed=$((failed + 1))
        echo "run-tests: the Linux scenarios did not run (status $lstatus): counted as one failure" >&2
    fi
fi

echo
if [ "$skipped" -gt 0 ]; then
    echo "Skipped tests and why:"
    sort -u "$PETREL_SKIP_LOG" | sed 's/\t/: /; s/^/  /'
    [ "$c_ignored" -gt 0 ] && grep -h '^test .* ignored' "$work/cargo.log" | sed 's/^test /  /' | sort -u
fi
rm -rf "$work"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
