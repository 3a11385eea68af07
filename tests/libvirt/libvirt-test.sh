#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# End-to-end test with real libvirt (Debian bookworm's packages, libvirt 9.0): vigil's
# Rust pvpanic is a drop-in for QEMU's ISA pvpanic as far as libvirt is concerned.
#
#   1. Installs libvirt-daemon, libvirt-daemon-driver-qemu and libvirt-clients (plus
#      binutils for readelf) with apt-get when missing.
#   2. Runs its own libvirtd as root, without systemd, in a PRIVATE mount namespace
#      (unshare --mount --propagation private) where private directories are bind-mounted
#      over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
#      /var/cache/libvirt (for root the QEMU driver's paths, qemu.conf included, are
#      compiled in). If the libvirt-qemu user/group are missing (libvirt 9.0's QEMU
#      driver looks them up before it reads qemu.conf), a private copy of /etc/passwd
#      and /etc/group with them added is bind-mounted too. Nothing on the host's file
#      systems changes, except that a missing mount point among those directories is
#      created as an empty directory and removed again on exit. The daemon's sockets
#      live in a private directory ($tmp/sock) and virsh connects with
#      qemu+unix:///system?socket=...; any other libvirtd is left alone.
#      qemu.conf: user/group root, security_driver "none", cgroup_controllers [ ],
#      namespaces [ ], stdio_handler "file", auto_dump_path = a private directory.
#   3. Defines and starts a TCG domain (q35, 256 MiB, 1 vCPU) whose <emulator> is our
#      QEMU build, direct kernel boot of the x86_64 guest from scripts/guest-kernels.sh
#      (vigil.action=panic: sysrq c), serial console to a file,
#      <panic model='isa'><address type='isa' iobase='0x505'/></panic> and
#      <on_crash>coredump-destroy</on_crash>.
#   4. Checks: libvirt accepted the panic device and put
#      -device '{"driver":"pvpanic","ioport":1285}' on QEMU's command line; the guest's
#      pvpanic driver bound ("vigil-guest: ready") and it panicked; libvirt saw the
#      panic (lifecycle event "Crashed Panicked"); a memory-only ELF core of ~guest RAM
#      size appeared in auto_dump_path; the domain ended "shut off (crashed)".
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check on stdout, details on stderr;
# exits 0 when every check passed. Needs root. On exit the domain is destroyed and
# undefined, the daemon is stopped and the scratch directory removed.
#
# Environment:
#   QEMU_X86_64            QEMU binary (default ~/.cache/vigil/build/qemu-system-x86_64)
#   X86_KERNEL, X86_INITRD the guest (default: from scripts/guest-kernels.sh)
#   LIBVIRT_TEST_TIMEOUT   seconds for boot + panic + dump (default 150)
#   LIBVIRT_TEST_KEEP=1    keep the scratch directory (logs, dump) for inspection
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
QEMU=${QEMU_X86_64:-$HOME/.cache/vigil/build/qemu-system-x86_64}
TIMEOUT=${LIBVIRT_TEST_TIMEOUT:-150}
NAME=vigil-pvpanic-libvirt
GUEST_MIB=256

LV_TAG=libvirt-test
. "$here/lib.sh" functions   # log, pass, fail, result, fatal, since, lv_packages
T0=$LV_T0

[ "$(id -u)" = 0 ] || { log "must run as root (runs its own libvirtd)"; exit 1; }

# ---- 1. packages ----------------------------------------------------------------------
lv_packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients binutils util-linux ||
    fatal "packages installed" "apt-get install failed"
pass "packages installed"
log "libvirtd: $(libvirtd --version 2>&1), virsh $(virsh --version 2>&1)"

# ---- the guest ------------------------------------------------------------------------
[ -x "$QEMU" ] || fatal "QEMU build present" "$QEMU is not executable (build it first)"
if [ -z "${X86_KERNEL:-}" ] || [ -z "${X86_INITRD:-}" ]; then
    out=$(GUEST_KERNELS=x86_64 "$root/scripts/guest-kernels.sh") \
        || fatal "guest prepared" "scripts/guest-kernels.sh failed"
    X86_KERNEL=$(sed -n 's/^X86_KERNEL=//p' <<<"$out")
    X86_INITRD=$(sed -n 's/^X86_INITRD=//p' <<<"$out")
fi
[ -f "$X86_KERNEL" ] && [ -f "$X86_INITRD" ] || fatal "guest prepared" "no kernel/initrd ($X86_KERNEL, $X86_INITRD)"

# ---- scratch directory, cleanup, 2. private configuration and daemon ---------------------
. "$here/lib.sh"

# ---- 3. the domain -----------------------------------------------------------------------
cat >"$tmp/domain.xml" <<EOF
<domain type='qemu'>
  <name>$NAME</name>
  <memory unit='MiB'>$GUEST_MIB</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$X86_KERNEL</kernel>
    <initrd>$X86_INITRD</initrd>
    <cmdline>console=ttyS0 panic=0 vigil.action=panic</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>coredump-destroy</on_crash>
  <devices>
    <emulator>$QEMU</emulator>
    <serial type='file'>
      <source path='$tmp/serial.log'/>
      <target port='0'/>
    </serial>
    <panic model='isa'>
      <address type='isa' iobase='0x505'/>
    </panic>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF

if ! vsh define "$tmp/domain.xml" >"$tmp/define.out" 2>&1; then
    log "$(cat "$tmp/define.out")"; show_logs
    fatal "domain defined with <panic model='isa'>" "virsh define failed"
fi
defined=1
xml=$(vsh dumpxml "$NAME")
panic_xml=$(sed -n "/<panic /,/<\/panic>/p" <<<"$xml")
grep -q "model='isa'" <<<"$panic_xml" && grep -q "iobase='0x505'" <<<"$panic_xml"
result "domain defined with <panic model='isa'>" $? "$(tr -s ' \n' ' ' <<<"$panic_xml")"

# Lifecycle events, for the panic as libvirt saw it.
virsh -c "$URI" event --all --loop --timestamp >"$tmp/events.log" 2>&1 &
event_pid=$!
sleep 0.5

t_start=$(date +%s.%N)
if ! vsh start "$NAME" >"$tmp/start.out" 2>&1; then
    log "$(cat "$tmp/start.out")"; show_logs
    fatal "domain started" "virsh start failed"
fi
result "domain started" 0 "$(cat "$tmp/start.out")"

# ---- 4. checks ---------------------------------------------------------------------------
domlog=$tmp/root/log/qemu/$NAME.log
# The command line is logged one option per line (continued with backslashes).
cmdline=$(cat "$domlog" 2>/dev/null)
dev=$(grep -ao -- "-device '{\"driver\":\"pvpanic\"[^']*'" <<<"$cmdline")
[ -n "$dev" ] && grep -q '"ioport":1285' <<<"$dev"
result "QEMU command line has pvpanic at ioport 1285" $? "${dev:-no pvpanic -device in $domlog}"
grep -q -- '^-no-shutdown' <<<"$cmdline"
result "QEMU command line has -no-shutdown" $?

deadline=$(($(date +%s) + TIMEOUT))
ready= panicked= crashed_seen= state=
while [ "$(date +%s)" -lt "$deadline" ]; do
    [ -z "$ready" ] && grep -aq 'vigil-guest: ready' "$tmp/serial.log" 2>/dev/null \
        && ready=1 && log "guest ready (pvpanic bound) after $(since "$t_start")"
    [ -z "$panicked" ] && grep -aq 'Kernel panic - not syncing' "$tmp/serial.log" 2>/dev/null \
        && panicked=1 && log "guest panicked after $(since "$t_start")"
    state=$(vsh domstate --reason "$NAME" 2>/dev/null)
    case $state in
        "crashed (panicked)") [ -z "$crashed_seen" ] && log "domstate: $state (dump in progress)"; crashed_seen=1 ;;
        "shut off"*) break ;;
    esac
    sleep 0.2
done
t_end=$(date +%s.%N)
log "domain state after $(awk -v a="$t_start" -v b="$t_end" 'BEGIN{printf "%.1f s", b-a}'): $state"
grep -a 'vigil-guest' "$tmp/serial.log" 2>/dev/null | sed 's/^/    serial: /' >&2

[ -n "$ready" ]
result "guest pvpanic driver bound (vigil-guest: ready)" $?
[ -n "$panicked" ]
result "guest panicked (sysrq c)" $? "$(grep -a -m1 'Kernel panic - not syncing' "$tmp/serial.log" 2>/dev/null | tr -d '\r')"
sleep 0.5   # let the event stream catch up
grep -q "lifecycle.*: Crashed Panicked" "$tmp/events.log"
result "libvirt saw GUEST_PANICKED (event Crashed Panicked)" $? \
    "$(grep -a "lifecycle" "$tmp/events.log" | tr -s ' ' | paste -sd '|' -)"

# libvirt names it <id>-<name cut to 20 characters>-<timestamp> (the "short name").
dumps=("$tmp"/dump/*-"${NAME:0:20}"-*)
dump=${dumps[0]}
if [ -f "$dump" ]; then
    result "core dump written to auto_dump_path" 0 "$(basename "$dump") (${#dumps[@]} file(s))"
    hdr=$(readelf -h "$dump" 2>&1)
    rc=$?
    [ $rc -eq 0 ] && grep -q 'Type:[[:space:]]*CORE' <<<"$hdr"
    result "dump is an ELF core (readelf -h)" $? "$(grep -E 'Class|Type|Machine' <<<"$hdr" | tr -s ' ' | paste -sd ';' -)"
    size=$(stat -c %s "$dump")
    [ "$size" -ge $((GUEST_MIB * 1024 * 1024)) ] && [ "$size" -le $((GUEST_MIB * 1024 * 1024 + 32 * 1024 * 1024)) ]
    result "dump size ~ guest RAM ($GUEST_MIB MiB)" $? "$size bytes"
    log "dump program headers: $(readelf -lW "$dump" 2>/dev/null | grep -cE '^ +LOAD') LOAD, $(readelf -lW "$dump" 2>/dev/null | grep -cE '^ +NOTE') NOTE"
else
    result "core dump written to auto_dump_path" 1 "nothing in $tmp/dump: $(ls -la "$tmp/dump" | tr '\n' ' ')"
    fail "dump is an ELF core (readelf -h)"
    fail "dump size ~ guest RAM ($GUEST_MIB MiB)"
fi

[ "$state" = "shut off (crashed)" ]
result "domain ended shut off (crashed)" $? "domstate --reason: ${state:-?}"

[ "$failures" -eq 0 ] || show_logs
log "done in $(since "$T0"): $failures failure(s)"
[ "$failures" -eq 0 ]
