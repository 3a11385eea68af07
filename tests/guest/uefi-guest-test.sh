#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real Linux on arm64 -M virt (TCG, 2 vCPUs, 1 GiB) booted the way libvirt and
# cloud images boot it: through UEFI firmware (Debian's qemu-efi-aarch64, AAVMF
# code read-only in pflash 0, a copy of its variable store in pflash 1), which
# hands Linux ACPI tables and no device tree. The kernel is the arm64 test kernel
# of scripts/guest-kernels.sh (EFI stub, ACPI), given to the firmware with -kernel.
#
#   uefi-stall  -device vcpu-stall-detector,timeout-sec=3 + pvpanic-mmio; the guest
#               stalls CPU 1 (LKDTM HARDLOCKUP). Checks: EFI + ACPI and no DT; the
#               DSDT devices PRP0001/QEMU0001; Linux's unmodified vcpu_stall_detector
#               bound through PRP0001 + _DSD compatible, pvpanic-mmio through
#               QEMU0001; both banks armed; the budget the driver programs (its own
#               defaults, 10 Hz x 8 s: of_property_read_u32 sees no _DSD property,
#               so timeout-sec=3 does not reach it); VCPU_STALL for cpu-index 1 only,
#               then the action and WATCHDOG (pause).
#   uefi-panic  sysrq c -> GUEST_PANICKED {action: pause} through pvpanic-mmio.
#   uefi-acpi-off  -M virt,acpi=off with the same firmware: the firmware passes
#               QEMU's device tree; the driver binds through the DT node and uses
#               its clock-frequency/timeout-sec.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr). A test
# that cannot run (no firmware, no kernel) fails; a scenario that stops early
# (the guest does not boot, QEMU or QMP fails) reports the rest of its checks
# as failed (vigilvm.planned), they do not disappear.
#
# Environment: QEMU_AARCH64 (default: the vigil build), UEFI_BOOT_TIMEOUT
# (seconds to the guest's ready marker, default 240).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/common.sh"
QEMU_A64=${QEMU_AARCH64:-$VIGIL_BUILD/qemu-system-aarch64}
BOOT_TIMEOUT=${UEFI_BOOT_TIMEOUT:-240}
. "$here/lib.sh"

for f in /usr/share/AAVMF/AAVMF_CODE.fd /usr/share/AAVMF/AAVMF_VARS.fd; do
    [ -f "$f" ] || { log "missing $f (Debian package qemu-efi-aarch64; scripts/deps.sh)"; fail "setup: AAVMF firmware installed"; exit 1; }
done
qemu_runs "setup: QEMU binary runs" "$QEMU_A64"
guest_kernels arm64 "setup: scripts/guest-kernels.sh prepares the arm64 guest"
. "$tmp/guests.env"

VIGIL_GUEST_DIR=$here python3 - "$QEMU_A64" "$tmp" "$ARM64_KERNEL" "$ARM64_INITRD" "$BOOT_TIMEOUT" <<'EOF_PY'
import json, os, re, sys, time
sys.path.insert(0, os.environ["VIGIL_GUEST_DIR"])
import vigilvm as v
from vigilvm import result, log

qemu, tmp, kernel, initrd, boot_timeout = sys.argv[1:6]
boot_timeout = int(boot_timeout)
SD = "/machine/peripheral/stall"

def base_args(name, append, machine="virt"):
    return ["-M", machine, "-cpu", "cortex-a57", "-smp", "2", "-m", "1024"] + \
        v.firmware_args(tmp, name) + \
        ["-kernel", kernel, "-initrd", initrd, "-append", "console=ttyAMA0 " + append]

def boot_name(what):
    return "%s: the guest boots through AAVMF to /init" % what

def boot(vm, what, plan):
    ready = vm.wait_serial(r"^vigil-guest: ready", boot_timeout)
    linux = vm.wait_serial(r"Booting Linux on physical CPU", 1)
    detail = "no ready marker within %d s" % boot_timeout
    if ready:
        detail = "ready %.1f s after QEMU started (Linux's first line at %.1f s: firmware + EFI stub)" % (
            ready[0] - vm.t_start, (linux[0] - vm.t_start) if linux else float("nan"))
    result(boot_name(what), ready is not None, detail)
    if not ready:
        plan.why = "the guest did not boot"
    return ready

def has(vm, regex):
    return bool(vm.lines(regex))

def firmware_name(what, acpi):
    return "%s: Linux runs on UEFI with %s" % (what, "ACPI tables and no device tree" if acpi
                                               else "the device tree and no ACPI")

def firmware_checks(vm, what, acpi):
    fw = [l for _, l in vm.lines(r"^vigil-guest: firmware ")]
    want = ["vigil-guest: firmware efi", "vigil-guest: firmware acpi"] if acpi else \
        ["vigil-guest: firmware efi", "vigil-guest: firmware dt"]
    result(firmware_name(what, acpi), fw == want, "; ".join(fw) or "no firmware lines")

def budget_enabled(trace):
    """(bank, ticks, hz) of each vcpu_stall_enable trace line."""
    out = []
    try:
        for line in open(trace, errors="replace"):
            m = re.match(r"vcpu_stall_enable cpu (\d+): enabled, (\d+) ticks at (\d+) Hz", line)
            if m:
                out.append(tuple(int(x) for x in m.groups()))
    except OSError:
        pass
    return out

STALL_CHECKS = dict(
    boot=boot_name("uefi-stall"),
    fw=firmware_name("uefi-stall", acpi=True),
    dsdt="uefi-stall: the DSDT describes both devices (ACPI PRP0001:00, QEMU0001:00)",
    stalldrv="uefi-stall: the unmodified vcpu_stall_detector module binds PRP0001:00 (_DSD compatible)",
    pvpanic="uefi-stall: pvpanic-mmio binds QEMU0001:00",
    armed="uefi-stall: Linux armed the banks of both CPUs",
    budget="uefi-stall: under ACPI the driver programs its defaults, 80 ticks at 10 Hz (8 s), "
           "not the device's timeout-sec=3",
    quiet="uefi-stall: no VCPU_STALL while both CPUs run",
    warn="uefi-stall: VCPU_STALL warning for cpu-index 1, budget 8000 ms",
    action="uefi-stall: then the action stage for cpu-index 1 and WATCHDOG {action: pause}",
    paused="uefi-stall: the VM is paused (query-status watchdog)",
    only1="uefi-stall: no VCPU_STALL names a CPU other than 1",
)

def stall_run():
    C = STALL_CHECKS
    with v.planned(C.values()) as plan:
        trace = os.path.join(tmp, "uefi-stall.trace")
        vm = v.VM(qemu, "uefi-stall", tmp, base_args("uefi-stall", "vigil.action=stall") + [
            "-device", "vcpu-stall-detector,id=stall,timeout-sec=3", "-device", "pvpanic-mmio",
            "-action", "watchdog=pause",
            "-trace", "vcpu_stall_load", "-trace", "vcpu_stall_enable", "-D", trace])
        try:
            ready = boot(vm, "uefi-stall", plan)
            if not ready:
                return vm.dump_serial()
            firmware_checks(vm, "uefi-stall", acpi=True)
            devs = sorted(l.split()[-1] for _, l in vm.lines(r"^vigil-guest: acpi device "))
            result(C["dsdt"], devs == ["PRP0001:00", "QEMU0001:00"], ", ".join(devs) or "none")
            drv = [l for _, l in vm.lines(r"^vigil-guest: stall driver ")]
            b = [l for _, l in vm.lines(r"^vigil-guest: bound vcpu_stall_detector ")]
            result(C["stalldrv"],
                   drv == ["vigil-guest: stall driver upstream loaded"] and
                   b == ["vigil-guest: bound vcpu_stall_detector PRP0001:00"],
                   "; ".join(drv + b) or "no driver lines")
            b = [l for _, l in vm.lines(r"^vigil-guest: bound pvpanic-mmio ")]
            result(C["pvpanic"], len(b) == 1 and re.search(r" QEMU0001:00( |$)", b[0]) is not None,
                   "; ".join(b) or "not bound")
            en = {}
            end = time.time() + 10
            while time.time() < end:
                en = {c: vm.qom(SD, "cpu%d-enabled" % c) for c in (0, 1)}
                if all(en.values()):
                    break
                vm.sleep(0.3)
            result(C["armed"], en == {0: True, 1: True}, "enabled %s" % en)
            budgets = budget_enabled(trace)
            result(C["budget"], len(budgets) >= 2 and all(t == 80 and hz == 10 for _, t, hz in budgets),
                   "vcpu_stall_enable (bank, ticks, Hz): %s" % budgets)
            stalling = vm.wait_serial(r"^vigil-guest: stalling cpu1", 30)
            early = [e for e in vm.events if e[1] in ("VCPU_STALL", "WATCHDOG")]
            result(C["quiet"], stalling is not None and not early,
                   "events before the stall: %s" % early if early else
                   ("" if stalling else "no 'stalling cpu1' line"))
            warn = vm.wait_event(lambda e: e[1] == "VCPU_STALL", 40) if stalling else None
            d = warn[2] if warn else {}
            result(C["warn"],
                   d.get("cpu-index") == 1 and d.get("stage") == "warning" and
                   d.get("budget-ms") == 8000 and d.get("qom-path") == SD,
                   "%s, %.1f s after 'stalling cpu1'" % (json.dumps(d), warn[0] - stalling[0])
                   if warn else "no VCPU_STALL within 40 s")
            act = vm.wait_event(lambda e: e[1] == "VCPU_STALL" and e[2].get("stage") == "action",
                                40) if warn else None
            wd = vm.wait_event(lambda e: e[1] == "WATCHDOG", 5) if act else None
            result(C["action"],
                   bool(act) and act[2].get("cpu-index") == 1 and bool(wd) and
                   wd[2].get("action") == "pause",
                   "action %s, WATCHDOG %s" % (act and json.dumps(act[2]), wd and json.dumps(wd[2])))
            st = vm.status() if wd else None
            result(C["paused"], st == "watchdog", str(st))
            bad = [e[2] for e in vm.events if e[1] == "VCPU_STALL" and e[2].get("cpu-index") != 1]
            result(C["only1"], not bad,
                   "; ".join(json.dumps(b) for b in bad) or "none; QOM stalls %s" %
                   [vm.qom(SD, "cpu%d-stalls" % c) for c in (0, 1)])
            if v.failures:
                vm.dump_serial()
        finally:
            vm.stop()

PANIC_CHECKS = dict(
    boot=boot_name("uefi-panic"),
    panic="uefi-panic: sysrq c -> GUEST_PANICKED {action: pause} through pvpanic-mmio (ACPI)",
    status="uefi-panic: query-status reports guest-panicked",
)

def panic_run():
    C = PANIC_CHECKS
    with v.planned(C.values()) as plan:
        vm = v.VM(qemu, "uefi-panic", tmp, base_args("uefi-panic", "vigil.action=panic") + [
            "-device", "pvpanic-mmio", "-action", "panic=pause"])
        try:
            f0 = v.failures
            ready = boot(vm, "uefi-panic", plan)
            if not ready:
                return vm.dump_serial()
            act = vm.wait_serial(r"^vigil-guest: action=panic", 5)
            ev = vm.wait_event(lambda e: e[1] == "GUEST_PANICKED", 60)
            result(C["panic"], bool(ev) and ev[2].get("action") == "pause",
                   "%s, %.1f s after 'action=panic'" % (json.dumps(ev[2]), ev[0] - act[0])
                   if ev and act else "no GUEST_PANICKED within 60 s")
            st = vm.status()
            result(C["status"], st == "guest-panicked", st)
            if v.failures > f0:
                vm.dump_serial()
        finally:
            vm.stop()

ACPI_OFF_CHECKS = dict(
    boot=boot_name("uefi-acpi-off"),
    fw=firmware_name("uefi-acpi-off", acpi=False),
    bind="uefi-acpi-off: both drivers bind the device tree nodes",
    budget="uefi-acpi-off: through the DT the driver uses timeout-sec=3 (30 ticks at 10 Hz)",
)

def acpi_off_run():
    C = ACPI_OFF_CHECKS
    with v.planned(C.values()) as plan:
        trace = os.path.join(tmp, "uefi-acpi-off.trace")
        vm = v.VM(qemu, "uefi-acpi-off", tmp,
                  base_args("uefi-acpi-off", "vigil.action=idle", machine="virt,acpi=off") + [
                      "-device", "vcpu-stall-detector,id=stall,timeout-sec=3", "-device", "pvpanic-mmio",
                      "-trace", "vcpu_stall_enable", "-D", trace])
        try:
            f0 = v.failures
            ready = boot(vm, "uefi-acpi-off", plan)
            if not ready:
                return vm.dump_serial()
            firmware_checks(vm, "uefi-acpi-off", acpi=False)
            b = [l for _, l in vm.lines(r"^vigil-guest: bound (vcpu_stall_detector|pvpanic-mmio) ")]
            result(C["bind"],
                   len(b) == 2 and all(re.search(r" [0-9a-f]+\.(vcpu-stall-detector|pvpanic)", l) for l in b),
                   "; ".join(b) or "none bound")
            vm.sleep(2)
            budgets = budget_enabled(trace)
            result(C["budget"], len(budgets) >= 2 and all(t == 30 and hz == 10 for _, t, hz in budgets),
                   "vcpu_stall_enable (bank, ticks, Hz): %s" % budgets)
            if v.failures > f0:
                vm.dump_serial()
        finally:
            vm.stop()

runs = os.environ.get("UEFI_TESTS", "stall panic acpi-off").split()
for r in runs:
    t = time.time()
    try:
        {"stall": stall_run, "panic": panic_run, "acpi-off": acpi_off_run}[r]()
    except Exception as e:
        result("uefi-%s: QEMU/QMP session" % r, False, repr(e))
    log("uefi-%s done in %.1f s" % (r, time.time() - t))
sys.exit(1 if v.failures else 0)
EOF_PY
st=$?
[ $st -eq 0 ] || failures=$((failures + 1))
exit $st
