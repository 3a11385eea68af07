#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# kdump and kexec with the stall detector armed by Linux's driver, on arm64
# -M virt (TCG, 2 vCPUs, 1 GiB), the arm64 test kernel of scripts/guest-kernels.sh
# (KEXEC_FILE, CRASH_DUMP, PROC_VMCORE) and its kdump initramfs (/boot/Image,
# /boot/initrd.gz, /bin/kexec-load: kexec_file_load(2) in a few lines).
# The watchdog action is QEMU's default, reset.
#
#   kdump  crashkernel=256M; /init loads the crash kernel (KEXEC_FILE_ON_CRASH,
#          nr_cpus=1), then panics on CPU 1 (sysrq c under taskset). Checks: both
#          banks armed first; GUEST_CRASHLOADED (crash_kexec_post_notifiers); the
#          crash kernel (its CPU 0 is vCPU 1) boots, loads the driver, reads
#          /proc/vmcore for KDUMP_DUMPSECS (default 30) s, at least 3 budgets (8 s,
#          the driver's default) of vCPU 1's CPU time; no VCPU_STALL action, WATCHDOG,
#          RESET or SHUTDOWN during all that, no VCPU_STALL at all once the crash
#          kernel's driver armed bank 0; then a hard lockup inside the crash kernel
#          is still detected: VCPU_STALL warning and action for cpu-index 1 (the
#          vCPU that armed the bank), then the reset.
#   kexec  a plain kexec reboot (kexec_file_load + reboot(LINUX_REBOOT_CMD_KEXEC)):
#          the new kernel brings both CPUs back and re-arms both banks; no action
#          or reset, and no VCPU_STALL for 2 budgets once its driver is loaded.
#
# The kdump checks need the device semantics of docs/specs/vcpu-stall-detector.rst
# (a bank counts the run time of the vCPU that armed or reloaded it; a vCPU that
# starts petting another bank retires its older one): without them the first
# kernel's bank 1 keeps counting vCPU 1 in the crash kernel and resets it mid-dump.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr); a
# scenario that stops early reports the rest of its checks as failed
# (vigilvm.planned), they do not disappear.
# Environment: QEMU_AARCH64, KDUMP_TESTS (default "kdump kexec"), KDUMP_DUMPSECS,
# KDUMP_BOOT (default "dt uefi": each scenario booted directly with QEMU's device
# tree, then through AAVMF with ACPI; check names are prefixed "[dt]"/"[uefi]").
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/common.sh"
QEMU_A64=${QEMU_AARCH64:-$VIGIL_BUILD/qemu-system-aarch64}
. "$here/lib.sh"

qemu_runs "setup: QEMU binary runs" "$QEMU_A64"
BOOTS=${KDUMP_BOOT:-dt uefi}
if [[ " $BOOTS " == *" uefi "* ]] && [ ! -f /usr/share/AAVMF/AAVMF_CODE.fd ]; then
    fail "setup: AAVMF firmware installed"; exit 1
fi
guest_kernels arm64 "setup: scripts/guest-kernels.sh prepares the arm64 guest"
. "$tmp/guests.env"
[ -s "${ARM64_KDUMP_INITRD:-}" ] || { fail "setup: the kdump initramfs exists"; exit 1; }

cat >"$tmp/kdump.py" <<'EOF_PY'
import json, os, re, sys, time
sys.path.insert(0, os.environ["VIGIL_GUEST_DIR"])
import vigilvm as v
from vigilvm import result, log

qemu, tmp, kernel, initrd = sys.argv[1:5]
dumpsecs = int(os.environ.get("KDUMP_DUMPSECS", "30"))
uefi = os.environ.get("KDUMP_BOOT", "dt") == "uefi"
SD = "/machine/peripheral/stall"
BUDGET = 8.0        # the Linux driver's default: 10 Hz x 8 s
BOOT = 240 if uefi else 120

def start(name, append):
    args = ["-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "1024"]
    if uefi:
        args += v.firmware_args(tmp, name)
    args += ["-kernel", kernel, "-initrd", initrd,
             "-append", "console=ttyAMA0 " + append,
             "-device", "vcpu-stall-detector,id=stall", "-device", "pvpanic-mmio",
             "-trace", "vcpu_stall_*", "-D", os.path.join(tmp, name + ".trace")]
    return v.VM(qemu, name, tmp, args, no_reboot=False)

def armed(vm, cpus=(0, 1), timeout=10):
    en = {}
    end = time.time() + timeout
    while time.time() < end:
        en = {c: vm.qom(SD, "cpu%d-enabled" % c) for c in cpus}
        if all(en.values()):
            break
        vm.sleep(0.3)
    return en

def bad_events(vm, since=0.0, until=None):
    return [(round(t - vm.t_start, 1), n, d) for t, n, d in vm.events
            if t >= since and (until is None or t <= until) and
            n in ("VCPU_STALL", "WATCHDOG", "RESET", "SHUTDOWN", "GUEST_PANICKED")]

KDUMP_CHECKS = dict(
    boot="kdump: the first kernel boots (crashkernel=256M)",
    armed="kdump: the first kernel's driver armed both banks",
    loaded="kdump: the crash kernel is loaded (kexec_file_load, KEXEC_FILE_ON_CRASH)",
    crashloaded="kdump: panic on CPU 1 -> GUEST_CRASHLOADED (pvpanic-mmio, crash kernel loaded)",
    up="kdump: the crash kernel boots and finds /proc/vmcore",
    drv="kdump: the crash kernel's driver is loaded and arms bank 0",
    reads="kdump: the crash kernel reads /proc/vmcore for >= 3 budgets (3 x 8 s of vCPU 1's CPU time)",
    noaction="kdump: no VCPU_STALL action, WATCHDOG, RESET or SHUTDOWN from the panic to the end of the dump",
    nostall="kdump: no VCPU_STALL at all once the crash kernel's driver armed bank 0",
    lockup="kdump: a hard lockup in the crash kernel is detected: VCPU_STALL warning for cpu-index 1",
    reset="kdump: then the action (default: reset) resets the VM",
)

def kdump_run():
    C = KDUMP_CHECKS
    with v.planned(C.values()) as plan:
        vm = start("kdump", "crashkernel=256M crash_kexec_post_notifiers vigil.action=kdump "
                   "vigil.dumpsecs=%d" % dumpsecs)
        try:
            ready = vm.wait_serial(r"^vigil-guest: ready", BOOT)
            result(C["boot"], ready is not None,
                   "%.1f s" % (ready[0] - vm.t_start) if ready else "no ready marker")
            if not ready:
                plan.why = "the first kernel did not boot"
                return vm.dump_serial()
            res = vm.lines(r"crashkernel reserved|Reserving .*crashkernel")
            en = armed(vm)
            result(C["armed"], en == {0: True, 1: True},
                   "enabled %s; %s" % (en, res[0][1] if res else "no crashkernel line"))
            loaded = vm.wait_serial(r"^vigil-guest: crash kernel loaded", 30)
            result(C["loaded"], loaded is not None, "" if loaded else "; ".join(
                       l for _, l in vm.lines(r"kexec-load|kdump:")) or "no marker")
            if not loaded:
                plan.why = "the crash kernel was not loaded"
                return vm.dump_serial()
            panic = vm.wait_serial(r"^vigil-guest: panic on cpu1", 10)
            oops = vm.wait_serial(r"Kernel panic|sysrq: Trigger a crash", 20)
            cl = vm.wait_event(lambda e: e[1] == "GUEST_CRASHLOADED", 20)
            t_panic = oops[0] if oops else (panic[0] if panic else time.time())
            cpu1 = vm.lines(r"CPU: 1 PID:")
            result(C["crashloaded"], bool(cl) and bool(cpu1),
                   "%s; %s" % (cl and json.dumps(cl[2]), cpu1[0][1] if cpu1 else "no 'CPU: 1' oops line"))
            c_panic = vm.vcpu_ns(1)
            up = vm.wait_serial(r"^vigil-guest: crash kernel up", BOOT, since=t_panic)
            result(C["up"], up is not None,
                   "%s, %.1f s after the panic" % (up[1], up[0] - t_panic) if up else
                   "no marker; events %s" % bad_events(vm))
            if not up:
                plan.why = "the crash kernel did not come up"
                return vm.dump_serial()
            drv = vm.lines(r"^vigil-guest: stall driver ", since=t_panic)
            en = vm.qom(SD, "cpu0-enabled")
            result(C["drv"], [l for _, l in drv] == ["vigil-guest: stall driver upstream loaded"] and en,
                   "%s; cpu0-enabled %s" % ("; ".join(l for _, l in drv), en))
            done = vm.wait_serial(r"^vigil-guest: dump done", dumpsecs + 60, since=t_panic)
            c_done = vm.vcpu_ns(1)
            passes = vm.lines(r"^vigil-guest: vmcore chunk ", since=t_panic)
            used = (c_done - c_panic) / 1e9 if c_done is not None and c_panic is not None else 0.0
            result(C["reads"], done is not None and used >= 3 * BUDGET,
                   "%s; %d chunks of 16 MiB; vCPU 1 CPU time from the panic to 'dump done': %.1f s; wall %.1f s"
                   % (done[1] if done else "no 'dump done'", len(passes), used,
                      (done[0] if done else time.time()) - t_panic))
            bad = [e for e in bad_events(vm, since=t_panic, until=done[0] if done else None)
                   if not (e[1] == "VCPU_STALL" and e[2].get("stage") == "warning")]
            result(C["noaction"], done is not None and not bad, "events: %s" % (bad or "none"))
            t_drv = drv[0][0] if drv else t_panic
            warn = [e for e in bad_events(vm, since=t_drv, until=done[0] if done else None)]
            early = [e for e in bad_events(vm, since=t_panic, until=t_drv)]
            result(C["nostall"], done is not None and not warn,
                   "events: %s (before its driver loaded: %s)" % (warn or "none", early or "none"))
            if not done:
                plan.why = "the crash kernel did not finish its dump"
                return vm.dump_serial()
            st = vm.wait_serial(r"^vigil-guest: stalling cpu0", 10, since=t_panic)
            warn = vm.wait_event(lambda e: e[1] == "VCPU_STALL" and e[0] >= st[0], BUDGET + 30) if st else None
            result(C["lockup"],
                   bool(warn) and warn[2].get("cpu-index") == 1 and warn[2].get("stage") == "warning",
                   "%s, %.1f s after 'stalling cpu0'" % (json.dumps(warn[2]), warn[0] - st[0]) if warn
                   else "no VCPU_STALL")
            act = vm.wait_event(lambda e: e[1] == "VCPU_STALL" and e[2].get("stage") == "action",
                                BUDGET + 30) if warn else None
            rst = vm.wait_event(lambda e: e[1] == "RESET" and e[0] >= act[0], 10) if act else None
            wd = [e[2] for e in vm.events if e[1] == "WATCHDOG"]
            result(C["reset"], bool(act) and bool(rst) and wd[:1] == [{"action": "reset"}],
                   "action %s, WATCHDOG %s, RESET %s" % (act and json.dumps(act[2]), wd,
                                                         rst and json.dumps(rst[2])))
            if v.failures:
                vm.dump_serial(120)
        finally:
            vm.stop()

KEXEC_CHECKS = dict(
    boot="kexec: the first kernel boots and arms both banks",
    reboot="kexec: the kexec'd kernel boots with both CPUs online",
    rearm="kexec: its driver re-arms both banks",
    noaction="kexec: no VCPU_STALL action, WATCHDOG or RESET across the kexec reboot",
    nostall="kexec: no VCPU_STALL for 2 budgets once the new kernel's driver armed",
)

def kexec_run():
    C = KEXEC_CHECKS
    with v.planned(C.values()) as plan:
        vm = start("kexec", "vigil.action=kexec")
        try:
            f0 = v.failures
            ready = vm.wait_serial(r"^vigil-guest: ready", BOOT)
            en = armed(vm) if ready else {}
            result(C["boot"], en == {0: True, 1: True}, "enabled %s" % en)
            if not ready:
                plan.why = "the first kernel did not boot"
                return vm.dump_serial()
            kx = vm.wait_serial(r"^vigil-guest: kexec reboot", 20)
            new = vm.wait_serial(r"^vigil-guest: ready", BOOT, since=kx[0]) if kx else None
            cmd = vm.lines(r"Kernel command line: .*vigil\.kexeced=1", since=kx[0]) if kx else []
            cpus = vm.lines(r"^vigil-guest: cpus online", since=kx[0]) if kx else []
            result(C["reboot"],
                   bool(new) and bool(cmd) and [l for _, l in cpus] == ["vigil-guest: cpus online 0-1"],
                   "%s; %.1f s after 'kexec reboot'" % ("; ".join(l for _, l in cpus),
                                                        new[0] - kx[0]) if new else
                   ("no second boot" if kx else "no 'kexec reboot' line"))
            if not new:
                plan.why = "the kexec'd kernel did not boot"
                return vm.dump_serial()
            en = armed(vm)
            result(C["rearm"], en == {0: True, 1: True}, "enabled %s" % en)
            drv = vm.lines(r"^vigil-guest: stall driver ", since=kx[0])
            t_drv = drv[0][0] if drv else new[0]
            vm.sleep(2 * BUDGET + 2)
            bad = [e for e in bad_events(vm, since=kx[0])
                   if not (e[1] == "VCPU_STALL" and e[2].get("stage") == "warning")]
            result(C["noaction"], not bad, "events: %s" % (bad or "none"))
            warn = bad_events(vm, since=t_drv)
            result(C["nostall"], not warn,
                   "events: %s (between the kexec and its driver: %s)" % (
                       warn or "none", bad_events(vm, since=kx[0], until=t_drv) or "none"))
            if v.failures > f0:
                vm.dump_serial()
        finally:
            vm.stop()

for r in os.environ.get("KDUMP_TESTS", "kdump kexec").split():
    t = time.time()
    try:
        {"kdump": kdump_run, "kexec": kexec_run}[r]()
    except Exception as e:
        result("%s: QEMU/QMP session" % r, False, repr(e))
    log("%s done in %.1f s" % (r, time.time() - t))
sys.exit(1 if v.failures else 0)
EOF_PY
st=0
for boot in $BOOTS; do
    KDUMP_BOOT=$boot VIGIL_GUEST_DIR=$here python3 "$tmp/kdump.py" "$QEMU_A64" "$tmp" "$ARM64_KERNEL" \
        "$ARM64_KDUMP_INITRD" | sed -u "s/^\(PASS\|FAIL\)\t/\1\t[$boot] /"
    [ "${PIPESTATUS[0]}" -eq 0 ] || st=1
done
[ $st -eq 0 ] || failures=$((failures + 1))
exit $st
