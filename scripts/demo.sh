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

say "A real guest on 2 vCPUs pets its banks; then CPU 1 hangs with interrupts masked"
guest=$VIGIL_CACHE/stall-guest
make -s -C "$VIGIL_ROOT/tests/guest/stall-guest" O="$guest"
echo "  guest: tests/guest/stall-guest (bare metal, follows the Linux driver's protocol)"
echo "  budget 2 s per vCPU (10 Hz x 20 ticks), counted in vCPU run time; -action watchdog=pause"
"$A64" -M virt -cpu cortex-a57 -smp 2 -display none -nodefaults \
    -kernel "$guest/stall-guest.elf" \
    -fw_cfg name=opt/vigil/stall-timeout,string=2 -fw_cfg name=opt/vigil/stall-pets,string=4 \
    -device vcpu-stall-detector,id=stall -action watchdog=pause \
    -chardev stdio,id=ser,signal=off -serial chardev:ser \
    -qmp "unix:$tmp/qmp.sock,server=on,wait=off" < /dev/null 2>&1 | sed -u 's/^/  [guest] /' &
# Events until the action has paused the VM, then what an operator sees.
python3 "$VIGIL_ROOT/scripts/qmp-events.py" "$tmp/qmp.sock" --only VCPU_STALL,WATCHDOG,STOP \
    --until STOP --timeout 90 --stall-report /machine/peripheral/stall --quit
wait
say "Done: CPU 1 was reported (warning, then action), CPU 0 never; the VM was paused for inspection."

say "The whole loop: vigil dumps the stalled guest and brings it back"
echo "  vigil --on-stall coredump-restart --dump-dir DIR unix:QMP  (tools/vigil; docs/system/vigil.rst)"
(cd "$VIGIL_ROOT" && cargo build -q --release -p vigil)
mkdir -p "$tmp/dumps"
"$A64" -M virt -cpu cortex-a57 -smp 2 -m 128 -display none -nodefaults -name demo-vm \
    -kernel "$guest/stall-guest.elf" \
    -fw_cfg name=opt/vigil/stall-timeout,string=2 -fw_cfg name=opt/vigil/stall-pets,string=3 \
    -device vcpu-stall-detector,id=stall -action watchdog=pause \
    -chardev stdio,id=ser,signal=off -serial chardev:ser \
    -qmp "unix:$tmp/demo-vm.qmp,server=on,wait=off" < /dev/null 2>&1 |
    grep --line-buffered -E 'up, timeout|stop petting' | sed -u 's/^/  [guest] /' &
"$VIGIL_ROOT/target/release/vigil" --on-stall coredump-restart --dump-dir "$tmp/dumps" \
    "unix:$tmp/demo-vm.qmp" 2>&1 | sed -u 's/^/  [vigil] /' &
vigil_pipe=$!
# The guest stalls after 3 pets; warning after 2 s, action 2 s later, then
# the dump and the reset: the guest's second "up" line shows it is back.
for _ in $(seq 120); do
    [ "$(ls "$tmp/dumps" | grep -vc partial)" -ge 1 ] && sleep 3 && break
    sleep 0.5
done
ls -l "$tmp/dumps" | sed -n 's/^/  /p'
readelf -h "$tmp/dumps"/demo-vm-* 2>/dev/null | grep -E 'Type|Machine' | sed 's/^/  /'
pkill -f "name demo-vm" 2>/dev/null || true
kill "$vigil_pipe" 2>/dev/null || true
pkill -f "vigil --on-stall coredump-restart --dump-dir $tmp/dumps" 2>/dev/null || true
wait 2>/dev/null || true
say "Done: stalled, reported, dumped (an ELF core of the guest), reset, and back up."
