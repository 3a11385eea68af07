#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The stall detector's per-CPU interrupt, end to end with Linux: the arm64 test
# kernel of scripts/guest-kernels.sh with the driver patched by
# patches/linux/0001-* (the per-CPU interrupt enabled on each CPU, as a
# pseudo-NMI: irqchip.gicv3_pseudo_nmi=1 on GICv3), -M virt (TCG, 2 vCPUs),
# -device vcpu-stall-detector,timeout-sec=3 and -device pvpanic-mmio, QEMU's
# default watchdog action (reset).
#
# LKDTM HARDLOCKUP on CPU 1 (it spins with interrupts masked) -> VCPU_STALL
# warning for CPU 1 -> the PPI reaches CPU 1 as an NMI -> the driver's handler
# panics ("vCPU stall detector" on the console) -> pvpanic-mmio ->
# GUEST_PANICKED, before the action stage (one more budget) would reset.
#
# Also, unpatched: the upstream driver requests no interrupt at all in Linux 6.1
# (and newer ones never enable theirs), so the same hang ends in the host's
# action: VCPU_STALL action + WATCHDOG reset, no panic message.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr).
# Environment: QEMU_AARCH64.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/common.sh"
QEMU_A64=${QEMU_AARCH64:-$VIGIL_BUILD/qemu-system-aarch64}
. "$here/lib.sh"

qemu_runs "setup: QEMU binary runs" "$QEMU_A64"
guest_kernels arm64 "setup: scripts/guest-kernels.sh prepares the arm64 guest"
. "$tmp/guests.env"
[ "${ARM64_STALL_PATCHED:-no}" = yes ] || { fail "setup: the patched stall driver was built"; exit 1; }

VIGIL_GUEST_DIR=$here python3 - "$QEMU_A64" "$tmp" "$ARM64_KERNEL" "$ARM64_INITRD" <<'EOF_PY'
import os, sys
sys.path.insert(0, os.environ["VIGIL_GUEST_DIR"])
import vigilvm as v
from vigilvm import result, log

qemu, tmp, kernel, initrd = sys.argv[1:5]
TIMEOUT = 3
PATH = "/machine/peripheral/stall"


def boot(name, driver):
    return v.VM(qemu, name, tmp, [
        "-M", "virt,gic-version=3", "-cpu", "cortex-a57", "-smp", "2", "-m", "256",
        "-kernel", kernel, "-initrd", initrd,
        "-append", "console=ttyAMA0 irqchip.gicv3_pseudo_nmi=1 vigil.action=stall "
                   "vigil.stalldrv=" + driver,
        "-device", "vcpu-stall-detector,id=stall,timeout-sec=%d" % TIMEOUT,
        # panic=none: the guest goes on to print its panic on the console
        "-device", "pvpanic-mmio", "-action", "panic=none"])


def stalls(vm, stage=None):
    return [e for e in vm.events if e[1] == "VCPU_STALL" and (stage is None or e[2]["stage"] == stage)]


# -- patched driver: the guest panics itself -----------------------------------------
vm = boot("ppi", "patched")
try:
    loaded = vm.wait_serial(r"^vigil-guest: stall driver patched loaded", 90)
    result("ppi: the patched stall driver loads", loaded is not None)
    irq = vm.wait_serial(r"vcpu_stall_detector.*per-CPU stall interrupt \d+ \(NMI\)", 5)
    result("ppi: it requests the PPI as a pseudo-NMI", irq is not None,
           irq[1] if irq else "no 'per-CPU stall interrupt N (NMI)' line")
    stalling = vm.wait_serial(r"^vigil-guest: stalling cpu1", 60)
    warn = vm.wait_event(lambda e: e[1] == "VCPU_STALL", TIMEOUT + 30) if stalling else None
    result("ppi: VCPU_STALL warning for cpu-index 1 after the hard lockup",
           warn is not None and warn[2]["cpu-index"] == 1 and warn[2]["stage"] == "warning",
           str(warn[2]) if warn else "no VCPU_STALL")
    panicked = vm.wait_event(lambda e: e[1] == "GUEST_PANICKED", TIMEOUT + 30) if warn else None
    msg = vm.wait_serial(r"Kernel panic - not syncing: vCPU stall detector", 20) if panicked else None
    msg = [msg] if msg else []
    result("ppi: the driver's handler panics the guest (console: 'vCPU stall detector')", bool(msg),
           msg[0][1] if msg else "no panic message")
    result("ppi: pvpanic-mmio reports GUEST_PANICKED", panicked is not None)
    acted = stalls(vm, "action") + [e for e in vm.events if e[1] in ("WATCHDOG", "RESET")]
    result("ppi: GUEST_PANICKED came before the host's action (no VCPU_STALL action, WATCHDOG, RESET)",
           panicked is not None and not [e for e in acted if e[0] <= panicked[0]],
           "latency stall->panic %.2f s; events: %s" % (
               (panicked[0] - stalling[0]) if panicked and stalling else -1,
               [(e[1], e[2]) for e in acted]))
    if not panicked:
        vm.dump_serial()
finally:
    vm.stop()

# -- upstream driver: no interrupt, the host's action --------------------------------
vm = boot("noppi", "upstream")
try:
    loaded = vm.wait_serial(r"^vigil-guest: stall driver upstream loaded", 90)
    stalling = vm.wait_serial(r"^vigil-guest: stalling cpu1", 60) if loaded else None
    action = vm.wait_event(lambda e: e[1] == "VCPU_STALL" and e[2]["stage"] == "action",
                           2 * TIMEOUT + 30) if stalling else None
    wd = vm.wait_event(lambda e: e[1] == "WATCHDOG", 10) if action else None
    result("ppi: unpatched driver: the same hang ends in the host's action (reset), no guest panic",
           action is not None and action[2]["cpu-index"] == 1 and wd is not None
           and wd[2]["action"] == "reset"
           and not [e for e in vm.events if e[1] == "GUEST_PANICKED"]
           and not vm.lines(r"vCPU stall detector"),
           "action %s, watchdog %s" % (action and action[2], wd and wd[2]))
    if not action:
        vm.dump_serial()
finally:
    vm.stop()
sys.exit(1 if v.failures else 0)
EOF_PY
