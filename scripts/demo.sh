#!/usr/bin/env bash
# The demo: what a guest sees of the vcpu-stall-detector on -M virt, and a
# stall being caught (when the bare-metal stall guest is available).
set -euo pipefail
. "$(dirname "$0")/common.sh"

A64=$VIGIL_BUILD/qemu-system-aarch64
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "QEMU: $("$A64" --version | head -n1)"
say "qemu-system-aarch64 -M virt -smp 4 -device vcpu-stall-detector,id=stall"
"$A64" -device vcpu-stall-detector,help

say "The guest's device tree node (dumped with -machine dumpdtb=, decompiled with dtc)"
"$A64" -M virt,dumpdtb="$tmp/virt.dtb" -smp 4 -device vcpu-stall-detector,id=stall -display none
dtc -q -I dtb -O dts "$tmp/virt.dtb" | sed -n '/platform-bus@/,/^\t};/p' | sed -n '/vcpu-stall-detector@/,/};/p'

say "Its register banks, one per vCPU (HMP 'xp' reads them as a guest would)"
printf 'xp /16wx 0xc000000\nquit\n' |
    "$A64" -M virt -smp 4 -device vcpu-stall-detector,id=stall -display none -monitor stdio -S 2>&1 |
    grep -E '^0{8}0c' | sed 's/^/  /'
echo "  (STATUS, LOAD_CNT, CURRENT_CNT, CLOCK_FREQ_HZ of CPUs 0..3, all 0 after reset)"

if [ -x "$VIGIL_ROOT/tests/guest/stall-guest-test.sh" ]; then
    say "A real guest on 2 vCPUs pets its banks, then CPU 1 hangs with interrupts masked"
    QEMU_AARCH64=$A64 "$VIGIL_ROOT/tests/guest/stall-guest-test.sh"
fi
