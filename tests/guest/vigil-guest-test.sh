#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# End to end with real guests and the vigil watcher (tools/vigil):
#   1. panic, coredump-restart: Debian's x86 kernel on q35 panics (sysrq c)
#      through our ISA pvpanic; vigil dumps guest memory (a valid ELF core of
#      guest-RAM size, never left half-written) and resets the VM, which
#      boots again.
#   2. stall, coredump-destroy: the bare-metal stall guest stops petting on
#      CPU 1; at the VCPU_STALL action stage vigil dumps and ends QEMU.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr);
# exits 0 when every check passed. Each part's setup is a check of its own;
# when it fails, that part's checks fail as not run, and the other part runs.
#
# Environment: QEMU_X86_64, QEMU_AARCH64 (default: the vigil build),
# VIGIL_BIN (default: built here with cargo).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/common.sh"
QEMU_X86=${QEMU_X86_64:-$VIGIL_BUILD/qemu-system-x86_64}
QEMU_A64=${QEMU_AARCH64:-$VIGIL_BUILD/qemu-system-aarch64}
. "$here/lib.sh"

if [ -z "${VIGIL_BIN:-}" ]; then
    (cd "$root" && cargo build -q --release -p vigil) >&2 || { fail "setup: vigil builds"; exit 1; }
    VIGIL_BIN=$root/target/release/vigil
fi

# is_elf_core FILE MIN MAX: an ELF core whose size is within [MIN, MAX] bytes
is_elf_core() {
    local size
    readelf -h "$1" >&2 && readelf -h "$1" | grep -q 'Type: *CORE' || return 1
    size=$(stat -c %s "$1")
    log "dump $1: $size bytes"
    [ "$size" -ge "$2" ] && [ "$size" -le "$3" ]
}

# ---- 1. x86 panic, coredump-restart -------------------------------------------
panic_checks=("panic: vigil dumps the panicked guest (coredump-restart)"
              "panic: the dump is an ELF core of guest-RAM size (256 MiB)"
              "panic: then the VM is reset and the guest boots again"
              "panic: the JSON-lines log records the event and each action")
prepare_guests x86_64
st=$?
result "setup: scripts/guest-kernels.sh (x86_64)" $st
if [ $st -ne 0 ]; then
    not_run "no x86 guest (scripts/guest-kernels.sh failed)" "${panic_checks[@]}"
else
    X86_KERNEL=$(sed -n 's/^X86_KERNEL=//p' "$tmp/guests.env")
    X86_INITRD=$(sed -n 's/^X86_INITRD=//p' "$tmp/guests.env")

    mkdir -p "$tmp/dumps1"
    "$QEMU_X86" -M q35 -m 256 -smp 1 -accel tcg -nodefaults -display none -name panicky \
        -kernel "$X86_KERNEL" -initrd "$X86_INITRD" -append "console=ttyS0 panic=0 vigil.action=panic" \
        -device '{"driver":"pvpanic","ioport":1285}' -action panic=pause \
        -serial "file:$tmp/x86.serial" -qmp "unix:$tmp/panicky.qmp,server=on,wait=off" 2>"$tmp/x86.err" &
    qemu_pids+=($!)
    "$VIGIL_BIN" --on-panic coredump-restart --dump-dir "$tmp/dumps1" --log-json "$tmp/vigil1.jsonl" \
        "unix:$tmp/panicky.qmp" 2>"$tmp/vigil1.err" &
    watch_pids+=($!)

    ready_twice() { [ "$(grep -c 'vigil-guest: ready' "$tmp/x86.serial" 2>/dev/null)" -ge 2 ]; }
    dump1() { ls "$tmp/dumps1"/panicky-* 2>/dev/null | grep -v partial | head -n1; }
    wait_for 180 ready_twice
    booted_again=$?
    kill -TERM "${qemu_pids[-1]}" 2>/dev/null
    log "---- x86 serial"; grep -a 'vigil-guest\|Kernel panic' "$tmp/x86.serial" >&2
    log "---- vigil"; cat "$tmp/vigil1.err" >&2
    f=$(dump1)
    result "${panic_checks[0]}" "$([ -n "$f" ]; echo $?)"
    result "${panic_checks[1]}" \
        "$([ -n "$f" ] && is_elf_core "$f" $((256 << 20)) $((300 << 20)); echo $?)"
    result "${panic_checks[2]}" "$booted_again"
    result "${panic_checks[3]}" \
        "$(grep -q GUEST_PANICKED "$tmp/vigil1.jsonl" && grep -q dump "$tmp/vigil1.jsonl" &&
           grep -qi 'reset\|restart' "$tmp/vigil1.jsonl"; echo $?)"
fi

# ---- 2. stall, coredump-destroy ---------------------------------------------------
stall_checks=("stall: vigil acts on VCPU_STALL (action stage) for CPU 1"
              "stall: the dump is an ELF core of guest-RAM size (128 MiB)"
              "stall: then QEMU is ended (coredump-destroy)"
              "stall: no half-written dump is left")
guest=$VIGIL_CACHE/stall-guest
make -s -C "$here/stall-guest" O="$guest" >&2
st=$?
result "setup: the stall guest builds" $st
if [ $st -ne 0 ]; then
    not_run "no stall guest (make -C tests/guest/stall-guest failed)" "${stall_checks[@]}"
else
    mkdir -p "$tmp/dumps2"
    "$QEMU_A64" -M virt -cpu cortex-a57 -smp 2 -m 128 -display none -nodefaults -name stally \
        -kernel "$guest/stall-guest.elf" \
        -fw_cfg name=opt/vigil/stall-timeout,string=1 -fw_cfg name=opt/vigil/stall-pets,string=2 \
        -device vcpu-stall-detector,id=stall -action watchdog=pause \
        -serial "file:$tmp/stall.serial" -qmp "unix:$tmp/stally.qmp,server=on,wait=off" 2>"$tmp/stall.err" &
    qpid=$!
    qemu_pids+=("$qpid")
    "$VIGIL_BIN" --on-stall coredump-destroy --dump-dir "$tmp/dumps2" --log-json "$tmp/vigil2.jsonl" \
        "unix:$tmp/stally.qmp" 2>"$tmp/vigil2.err" &
    watch_pids+=($!)
    qemu_gone() { ! kill -0 "$qpid" 2>/dev/null; }
    wait_for 120 qemu_gone
    gone=$?
    log "---- stall serial"; tail -n 5 "$tmp/stall.serial" >&2
    log "---- vigil"; cat "$tmp/vigil2.err" >&2
    f=$(ls "$tmp/dumps2"/stally-* 2>/dev/null | grep -v partial | head -n1)
    result "${stall_checks[0]}" \
        "$(grep -q VCPU_STALL "$tmp/vigil2.jsonl" && grep -q '"cpu-index": *1' "$tmp/vigil2.jsonl"; echo $?)"
    result "${stall_checks[1]}" \
        "$([ -n "$f" ] && is_elf_core "$f" $((128 << 20)) $((160 << 20)); echo $?)"
    result "${stall_checks[2]}" "$gone"
    result "${stall_checks[3]}" "$(! ls "$tmp/dumps2"/.*partial* >/dev/null 2>&1; echo $?)"
fi

[ "$failures" = 0 ]
