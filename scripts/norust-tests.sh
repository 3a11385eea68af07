#!/usr/bin/env bash
# QEMU with our patches still builds and works without Rust: build
# qemu-system-aarch64 --disable-rust (scripts/build-norust.sh, a no-op when
# nothing changed), then check what a --disable-rust user gets: -M virt as
# before, QEMU's C pvpanic-mmio, no vcpu-stall-detector. Prints
# "PASS<TAB>name" or "FAIL<TAB>name" per check; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
. "$VIGIL_ROOT/tests/lib.sh"

B=${VIGIL_BUILD_NORUST:-$VIGIL_CACHE/build-norust}
A64=$B/qemu-system-aarch64
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT


check "no-Rust: configure --disable-rust and build qemu-system-aarch64" "" \
    "$VIGIL_ROOT/scripts/build-norust.sh"

# The configuration: C pvpanic devices, no Rust device, no stall detector
no_rust_config() {
    local mak=$B/aarch64-softmmu-config-devices.mak
    grep -qx 'CONFIG_PVPANIC_MMIO_C=y' "$mak" || { echo "no CONFIG_PVPANIC_MMIO_C=y in $mak"; return 1; }
    grep -qx 'CONFIG_PVPANIC_PCI_C=y' "$mak" || { echo "no CONFIG_PVPANIC_PCI_C=y in $mak"; return 1; }
    ! grep -E '^CONFIG_(VCPU_STALL_DETECTOR|PVPANIC_[A-Z]+_RUST)=y' "$mak" || return 1
    python3 -c 'import json, sys
o = {o["name"]: o["value"] for o in json.load(open(sys.argv[1]))}
sys.exit(o.get("rust") != "disabled")' "$B/meson-info/intro-buildoptions.json" || { echo "rust not disabled in $B"; return 1; }
}
check "no-Rust: Kconfig selects the C pvpanic devices and no stall detector" "" no_rust_config

virt_starts() {
    local out
    out=$(echo quit | timeout 30 "$A64" -M virt -display none -S -monitor stdio 2>&1) || { echo "QEMU failed: $out"; return 1; }
}
check "no-Rust: -M virt starts and quits" "" virt_starts

no_stall_detector() {
    local out
    out=$(timeout 30 "$A64" -M virt -display none -S -device vcpu-stall-detector 2>&1 </dev/null) &&
        { echo "QEMU started with -device vcpu-stall-detector"; return 1; }
    grep -q "'vcpu-stall-detector' is not a valid device model name" <<<"$out" || { echo "got: $out"; return 1; }
}
check "no-Rust: -device vcpu-stall-detector is refused (not a valid device model name)" "" no_stall_detector

# pvpanic-mmio, QEMU's C device, on virt's platform bus (first dynamic device
# at its base, 0x0c000000): features read back, a panic write raises
# GUEST_PANICKED and pauses the guest (-action panic=pause).
pvpanic_mmio_panics() {
    python3 - "$A64" "$tmp/qmp.sock" <<'PY'
import subprocess, sys, time
import vigilqmp
qemu, sock = sys.argv[1], sys.argv[2]
p = subprocess.Popen([qemu, '-M', 'virt', '-accel', 'qtest', '-display', 'none',
                      '-device', 'pvpanic-mmio', '-action', 'panic=pause',
                      '-qtest', 'stdio', '-qmp', f'unix:{sock},server=on,wait=off'],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
def qt(cmd):
    p.stdin.write(cmd + '\n'); p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            sys.exit(f'QEMU exited on {cmd!r}')
        if line.startswith('OK') or line.startswith('FAIL') or line.startswith('ERR'):
            return line.strip()
try:
    feat = qt('readb 0xc000000')
    print('pvpanic-mmio features:', feat, file=sys.stderr)
    if not feat.startswith('OK') or int(feat.split()[1], 16) & 1 == 0:
        sys.exit(f'no pvpanic features at 0x0c000000: {feat}')
    mon = vigilqmp.QMP(sock, alive=lambda: p.poll() is None)
    events = []
    def status():
        for e in mon.pull():
            print('event:', e['event'], e.get('data'), file=sys.stderr)
            events.append(e['event'])
        return mon.cmd('query-status')['status']
    print(qt('writeb 0xc000000 0x1'), file=sys.stderr)
    for _ in range(50):
        st = status()
        if st == 'guest-panicked' and 'GUEST_PANICKED' in events:
            break
        time.sleep(0.1)
    print('status:', st, file=sys.stderr)
    sys.exit(0 if st == 'guest-panicked' and 'GUEST_PANICKED' in events else 1)
finally:
    p.kill()
PY
}
check "no-Rust: -device pvpanic-mmio (C) on virt: a panic write gives GUEST_PANICKED" "" pvpanic_mmio_panics

# It is QEMU's C device that is linked (its functions, in the symbol table)
c_pvpanic_linked() {
    local syms
    syms=$(nm "$A64") || return 1
    grep -qw pvpanic_mmio_initfn <<<"$syms" && grep -qw pvpanic_write <<<"$syms" ||
        { echo "no pvpanic_mmio_initfn/pvpanic_write (hw/misc/pvpanic-mmio.c, pvpanic.c) in $A64"; return 1; }
    # the device's C helpers (hw/misc/vcpu-stall-detector-host.c) come only with it
    ! grep -qw vcpu_stall_detector_current_cpu <<<"$syms" || { echo "stall detector helpers in $A64"; return 1; }
}
check "no-Rust: QEMU's C pvpanic-mmio.c and pvpanic.c are linked, no stall detector" "" c_pvpanic_linked

# Migration from C to Rust: the whole virt machine with the C pvpanic-pci of
# this build migrates to the Rust-built QEMU (our pvpanic-pci), and the
# destination has the device with the source's configuration.
c_to_rust_migration() {
    local rust=$VIGIL_BUILD/qemu-system-aarch64 d
    d=$(mktemp -d)
    "$rust" -M virt -accel tcg -display none -nodefaults -S -device pvpanic-pci,id=pp,events=3 \
        -incoming "unix:$d/mig.sock" -qmp "unix:$d/dst.qmp,server=on,wait=off" 2>"$d/dst.err" &
    local dpid=$!
    "$A64" -M virt -accel tcg -display none -nodefaults -S -device pvpanic-pci,id=pp,events=3 \
        -qmp "unix:$d/src.qmp,server=on,wait=off" 2>"$d/src.err" &
    local spid=$! rc=0
    python3 - "$d" <<'PY' || rc=1
import sys, time
import vigilqmp
d = sys.argv[1]
dst = vigilqmp.QMP(d + "/dst.qmp").reply
src = vigilqmp.QMP(d + "/src.qmp").reply
# the source really has C's device: the Rust build's pvpanic-pci is not in it
src("migrate", uri="unix:%s/mig.sock" % d)
for _ in range(300):
    st = src("query-migrate")["return"]
    if st.get("status") in ("completed", "failed"):
        break
    time.sleep(0.1)
print("migration:", st.get("status"), st.get("error-desc", ""))
ev = dst("qom-get", path="/machine/peripheral/pp", property="events")
print("destination events:", ev)
dst("cont")
status = dst("query-status")["return"]["status"]
print("destination status after cont:", status)
ok = st.get("status") == "completed" and ev.get("return") == 3 and status == "running"
sys.exit(0 if ok else 1)
PY
    kill "$spid" "$dpid" 2>/dev/null; wait "$spid" "$dpid" 2>/dev/null
    cat "$d/src.err" "$d/dst.err"; rm -rf "$d"
    return $rc
}
check "C to Rust: virt with the C pvpanic-pci (this build) migrates to the Rust-built QEMU" "" c_to_rust_migration
