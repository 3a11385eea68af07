#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real libvirt on Arm (Debian bookworm's libvirt 9.0, the same private daemon as
# libvirt-test.sh, tests/libvirt/lib.sh): an aarch64 TCG domain on -M virt with our
# QEMU, booted through UEFI firmware chosen by libvirt's own firmware selection
# (<os firmware='efi'>, the descriptors of Debian's qemu-efi-aarch64, secure boot
# off), the arm64 test kernel of scripts/guest-kernels.sh, and both devices added
# with <qemu:commandline> (libvirt has no element for them).
#
#   1. stall: the guest hard-locks CPU 1 (LKDTM); libvirt passes on VCPU_STALL
#      (virsh qemu-monitor-event) for cpu-index 1 and reports the watchdog event
#      (virsh event --event watchdog); <watchdog model='i6300esb' action='dump'/>
#      (needed anyway: libvirt 9.0's daemon segfaults on a WATCHDOG event of a
#      domain without watchdog device) makes it dump the guest into auto_dump_path.
#   2. panic: sysrq c -> GUEST_PANICKED through pvpanic-mmio (ACPI QEMU0001);
#      <on_crash>coredump-destroy</on_crash> writes an ELF core of the guest into
#      auto_dump_path and the domain ends "shut off (crashed)".
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr). Needs root.
# Environment: QEMU_AARCH64 (default: the vigil build), LIBVIRT_TEST_TIMEOUT (seconds
# per scenario, default 300), LIBVIRT_TEST_KEEP=1 keeps the scratch directory.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
QEMU=${QEMU_AARCH64:-$HOME/.cache/vigil/build/qemu-system-aarch64}
TIMEOUT=${LIBVIRT_TEST_TIMEOUT:-300}
NAME=vigil-aarch64-libvirt
GUEST_MIB=1024

LV_TAG=libvirt-aarch64
. "$here/lib.sh" functions   # log, pass, fail, result, fatal, since, lv_packages
T0=$LV_T0

[ "$(id -u)" = 0 ] || fatal "aarch64: runs as root" "must run as root (runs its own libvirtd)"
lv_packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients binutils util-linux qemu-efi-aarch64 ||
    fatal "aarch64: packages installed" "apt-get install failed"
ls /usr/share/qemu/firmware/*aarch64*.json >/dev/null 2>&1 ||
    fatal "aarch64: packages installed" "no aarch64 firmware descriptor in /usr/share/qemu/firmware"
pass "aarch64: packages installed (libvirt, qemu-efi-aarch64)"

[ -x "$QEMU" ] || fatal "aarch64: QEMU build present" "$QEMU is not executable (build it first)"
out=$(GUEST_KERNELS=arm64 "$root/scripts/guest-kernels.sh" 2>/dev/null) ||
    fatal "aarch64: guest prepared" "scripts/guest-kernels.sh failed"
ARM64_KERNEL=$(sed -n 's/^ARM64_KERNEL=//p' <<<"$out")
ARM64_INITRD=$(sed -n 's/^ARM64_INITRD=//p' <<<"$out")
[ -f "$ARM64_KERNEL" ] && [ -f "$ARM64_INITRD" ] || fatal "aarch64: guest prepared" "no kernel/initrd"

. "$here/lib.sh"   # lock, $tmp, cleanup trap, private libvirtd: "libvirtd started"

# domain_xml ACTION: the domain, guest /init action ACTION
domain_xml() {
    cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$NAME</name>
  <memory unit='MiB'>$GUEST_MIB</memory>
  <vcpu>2</vcpu>
  <os firmware='efi'>
    <type arch='aarch64' machine='virt'>hvm</type>
    <firmware>
      <feature enabled='no' name='secure-boot'/>
    </firmware>
    <kernel>$ARM64_KERNEL</kernel>
    <initrd>$ARM64_INITRD</initrd>
    <cmdline>console=ttyAMA0 vigil.action=$1</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model>cortex-a57</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>coredump-destroy</on_crash>
  <devices>
    <emulator>$QEMU</emulator>
    <serial type='file'>
      <source path='$tmp/serial-$1.log'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <!-- libvirt 9.0's QEMU driver crashes on a WATCHDOG event of a domain
         without a watchdog device; this one also sets QEMU's watchdog action -->
    <watchdog model='i6300esb' action='dump'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-device'/>
    <qemu:arg value='vcpu-stall-detector,id=stall'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='pvpanic-mmio'/>
  </qemu:commandline>
</domain>
XML
}

# start ACTION: defines and starts the domain, with event listeners
ev_pids=()
start() {
    local a=$1
    domain_xml "$a" >"$tmp/domain-$a.xml"
    if [ -n "$defined" ]; then
        vsh undefine --nvram "$NAME" >/dev/null 2>&1 || { log "cannot undefine $NAME"; return 1; }
        defined=
    fi
    vsh define "$tmp/domain-$a.xml" >"$tmp/define.out" 2>&1 || { log "$(cat "$tmp/define.out")"; show_logs; return 1; }
    defined=1
    virsh -c "$URI" event --domain "$NAME" --all --loop --timestamp >"$tmp/events-$a.log" 2>&1 &
    ev_pids+=($!)
    t_start=$(date +%s.%N)
    vsh start "$NAME" >"$tmp/start.out" 2>&1 || { log "$(cat "$tmp/start.out")"; show_logs; return 1; }
    # QMP events libvirt does not know are passed through
    virsh -c "$URI" qemu-monitor-event --domain "$NAME" --event VCPU_STALL --loop --timestamp \
        >"$tmp/qmp-$a.log" 2>&1 &
    ev_pids+=($!)
    return 0
}
stop_listeners() { local p; for p in "${ev_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; ev_pids=(); }
trap 'stop_listeners; cleanup' EXIT


domlog=$tmp/root/log/qemu/$NAME.log

# ---- 1. stall ----------------------------------------------------------------------------
if start stall; then
    result "aarch64: domain with UEFI (firmware='efi') and both devices started" 0
    cmdline=$(cat "$domlog" 2>/dev/null)
    fw=$(grep -ao -- 'AAVMF[^ ,]*' <<<"$cmdline" | sort -u | tr '\n' ' ')
    grep -q 'AAVMF_CODE.fd' <<<"$cmdline" && grep -q 'vcpu-stall-detector,id=stall' <<<"$cmdline" &&
        grep -q 'pvpanic-mmio' <<<"$cmdline"
    result "aarch64: libvirt chose AAVMF (pflash) and passed both -device options" $? "firmware: ${fw:-none}"
    wait_for "$TIMEOUT" grep -aEq -- 'vigil-guest: ready' "$tmp/serial-stall.log"
    result "aarch64: the guest boots through UEFI to /init" $? "after $(since "$t_start")"
    grep -aq 'vigil-guest: firmware acpi' "$tmp/serial-stall.log" &&
        grep -aq 'vigil-guest: bound vcpu_stall_detector PRP0001:00' "$tmp/serial-stall.log" &&
        grep -aq 'vigil-guest: bound pvpanic-mmio QEMU0001:00' "$tmp/serial-stall.log"
    result "aarch64: under ACPI both drivers bind (PRP0001:00, QEMU0001:00)" $? \
        "$(grep -a -e 'vigil-guest: bound' -e 'firmware' "$tmp/serial-stall.log" | tr -d '\r' | paste -sd '|' -)"
    wait_for 90 grep -aEq -- "event 'watchdog'" "$tmp/events-stall.log"
    result "aarch64: a hard lockup on CPU 1 reaches libvirt as a watchdog event" $? \
        "$(grep -a "watchdog" "$tmp/events-stall.log" | head -n 3 | paste -sd '|' -)"
    # <watchdog action='dump'/>: QEMU pauses (-action watchdog=pause), libvirt dumps, resumes
    end=$(($(date +%s) + 90)) wdump=
    while [ "$(date +%s)" -lt "$end" ]; do
        wdump=$(ls "$tmp"/dump/ 2>/dev/null | head -n1)
        [ -n "$wdump" ] && readelf -h "$tmp/dump/$wdump" 2>/dev/null | grep -q 'Type:[[:space:]]*CORE' && break
        wdump=; sleep 1
    done
    [ -n "$wdump" ]
    result "aarch64: <watchdog action='dump'/>: libvirt dumps the stalled guest (ELF core in auto_dump_path)" $? \
        "${wdump:-no dump}; QEMU: $(grep -ao -- '-action watchdog=[a-z]*\|-watchdog-action [a-z]*' "$domlog" | head -n1)"
    sleep 1
    n1=$(grep -ac '"cpu-index":1' "$tmp/qmp-stall.log")
    nx=$(grep -a 'VCPU_STALL' "$tmp/qmp-stall.log" | grep -vc '"cpu-index":1')
    [ "$n1" -ge 1 ] && [ "$nx" -eq 0 ]
    result "aarch64: VCPU_STALL (virsh qemu-monitor-event) names cpu-index 1 only" $? \
        "$(head -n 2 "$tmp/qmp-stall.log" | paste -sd '|' -)"
    vsh destroy "$NAME" >/dev/null 2>&1
    stop_listeners
else
    fail "aarch64: domain with UEFI (firmware='efi') and both devices started"
fi

# ---- 2. panic ----------------------------------------------------------------------------
rm -f "$tmp"/dump/*
if start panic; then
    end=$(($(date +%s) + TIMEOUT)) state=
    while [ "$(date +%s)" -lt "$end" ]; do
        state=$(vsh domstate --reason "$NAME" 2>/dev/null)
        case $state in "shut off"*) break ;; esac
        sleep 0.3
    done
    log "panic: domain state after $(since "$t_start"): $state"
    grep -aq 'Kernel panic - not syncing' "$tmp/serial-panic.log"
    result "aarch64: the guest panics (sysrq c)" $?
    grep -q "lifecycle.*: Crashed Panicked" "$tmp/events-panic.log"
    result "aarch64: libvirt saw GUEST_PANICKED from pvpanic-mmio (event Crashed Panicked)" $? \
        "$(grep -a lifecycle "$tmp/events-panic.log" | tr -s ' ' | paste -sd '|' -)"
    dumps=("$tmp"/dump/*-"${NAME:0:20}"-*)
    if [ -f "${dumps[0]}" ]; then
        hdr=$(readelf -h "${dumps[0]}" 2>&1)
        size=$(stat -c %s "${dumps[0]}")
        grep -q 'Type:[[:space:]]*CORE' <<<"$hdr" && grep -q 'AArch64' <<<"$hdr" &&
            [ "$size" -ge $((GUEST_MIB * 1024 * 1024)) ]
        result "aarch64: on_crash coredump-destroy wrote an AArch64 ELF core to auto_dump_path" $? \
            "$(basename "${dumps[0]}"), $size bytes"
    else
        result "aarch64: on_crash coredump-destroy wrote an AArch64 ELF core to auto_dump_path" 1 "no dump"
    fi
    [ "$state" = "shut off (crashed)" ]
    result "aarch64: the domain ended shut off (crashed)" $? "$state"
    stop_listeners
else
    fail "aarch64: panic domain started"
fi

[ "$failures" -eq 0 ] || show_logs
log "done in $(since "$T0"): $failures failure(s)"
[ "$failures" -eq 0 ]
