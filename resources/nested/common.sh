# Shell functions shared by quickstart.sh and run-linux-tests.sh (sourced, not run).
#
#   ring0_native PETREL GUEST   true when guest ring 0 runs natively on this host's /dev/kvm
#                               (the PVH test guest's `action=calibrate` loop under 200 ms)
#   l1_run OUT TIMEOUT          boots the L1 kit under QEMU TCG (-cpu max: AMD SVM + NPT) with
#                               the host's / read-only over 9p and OUT read-write; L1 runs
#                               OUT/run.sh (see l1-init). The console goes to OUT/console.log.
#                               Status: QEMU's, or 124 when TIMEOUT seconds passed.
#                               PETREL_L1_TCG_THREAD=single|multi (default multi) picks
#                               QEMU's TCG threading; PETREL_L1_MEMORY its memory (4G);
#                               PETREL_L1_KVM_AMD=npt=0,... kvm_amd's parameters in L1.
#   l1_verdict OUT              after l1_run: "ok", or "env: <why>" when L1 itself failed
#                               (never came up, no /dev/kvm, lockup, panic, no end marker).

ring0_native() {
    local petrel="$1" guest="$2" begin="" end line
    while IFS= read -r line; do
        case "$line" in
        "CALIBRATE: begin"*) begin=$(date +%s%N) ;;
        "CALIBRATE: end"*)
            end=$(date +%s%N)
            [ -n "$begin" ] && [ $(((end - begin) / 1000000)) -lt 200 ] && return 0
            return 1
            ;;
        esac
    done < <(timeout 10 "$petrel" --kernel "$guest" --memory 64M --no-reboot \
        --cmdline action=calibrate 2>/dev/null || true)
    return 1
}

ensure_qemu() {
    command -v qemu-system-x86_64 >/dev/null && return 0
    [ "$(id -u)" = 0 ] || {
        echo "qemu-system-x86_64 not found: install the Debian package qemu-system-x86" >&2
        return 1
    }
    echo "installing qemu-system-x86 (Debian)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null 2>&1; }
}

l1_run() {
    local out="$1" limit="$2" kit
    kit="$(resources/nested/build-l1-kit.sh | tail -n 1)" || return 1
    rm -f "$out/console.log"
    timeout --kill-after=10 "$limit" qemu-system-x86_64 \
        -machine q35 -accel "tcg,thread=${PETREL_L1_TCG_THREAD:-multi}" -cpu max -smp 2 \
        -m "${PETREL_L1_MEMORY:-4G}" \
        -nographic -no-reboot -net none -vga none \
        -kernel "$kit/vmlinuz" -initrd "$kit/initramfs.cpio.gz" \
        -append "console=ttyS0 loglevel=4 panic=-1 petrel.out=$out${PETREL_L1_KVM_AMD:+ petrel.kvm_amd=$PETREL_L1_KVM_AMD}" \
        -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
        -fsdev "local,id=out,path=$out,security_model=none,multidevs=remap" \
        -device virtio-9p-pci,fsdev=out,mount_tag=out \
        </dev/null >"$out/console.log" 2>&1
}

# What L1's kernel prints when L1 itself is broken: a stall, a lockup, a crash.
L1_BROKEN='soft lockup|rcu_sched self-detected stall|rcu: INFO: rcu_.* detected stalls|Kernel panic|BUG: '

l1_verdict() {
    local log="$1/console.log" why
    if ! grep -aq 'L1: up' "$log" 2>/dev/null; then
        echo "env: L1 never reached its init"
    elif why="$(grep -a -m1 'L1: error:' "$log")"; then
        echo "env: ${why#L1: error: }"
    elif why="$(grep -a -m1 -E "$L1_BROKEN" "$log")"; then
        echo "env: L1 kernel: $why"
    elif ! grep -aq 'L1: done' "$log"; then
        echo "env: L1 stopped before its script ended (QEMU killed or died)"
    else
        echo ok
    fi
}
