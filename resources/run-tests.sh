#!/usr/bin/env bash
# Runs petrel's tests: installs what they need, builds, and runs every test of the workspace.
# The Linux boot tests build the Debian guest kit once (cached in ~/.cache/petrel/guest-kit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
for tool in gcc:gcc ld:binutils cpio:cpio xz:xz-utils zstd:zstd flock:util-linux; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "run-tests: installing ${need[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --workspace --all-targets
resources/build-guest-kit.sh >/dev/null || echo "run-tests: guest kit unavailable; Linux boot tests will say why they skip" >&2
cargo test --workspace -- --test-threads=2
