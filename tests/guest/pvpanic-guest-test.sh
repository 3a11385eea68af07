#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real-Linux-guest tests of vigil's pvpanic, pvpanic-mmio and vcpu-stall-detector
# devices (TCG only), with the guests prepared by scripts/guest-kernels.sh:
#   x86      q35, Debian's amd64 kernel, -device pvpanic (ioport 0x505, ACPI
#            QEMU0001, bound by Debian's pvpanic-mmio module), -action panic=pause:
#            sysrq c -> GUEST_PANICKED, run state guest-panicked.
#   arm64    virt (cortex-a57, 2 CPUs), our small kernel, -device pvpanic-mmio (DT):
#            sysrq c -> GUEST_PANICKED, run state guest-panicked.
#   stall    virt, 2 CPUs, -device vcpu-stall-detector,timeout-sec=$STALL_TIMEOUT
#            -device pvpanic-mmio -action watchdog=pause: Linux's vcpu_stall_detector
#            driver arms both CPUs (QOM cpuN-enabled), then LKDTM HARDLOCKUP on CPU 1:
#            VCPU_STALL warning for cpu-index 1 (never 0), then the action stage and
#            WATCHDOG {action: pause}.
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check on stdout, details on stderr;
# exits 0 when every check passed.
#
# Environment:
#   QEMU_X86_64, QEMU_AARCH64   QEMU binaries (default ~/.cache/vigil/build/qemu-system-*)
#   STALL_TIMEOUT               the stall detector's timeout-sec (default 2)
#   GUEST_TESTS                 which of "x86 arm64 stall" to run (default all)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
QEMU_X86=${QEMU_X86_64:-$HOME/.cache/vigil/build/qemu-system-x86_64}
QEMU_A64=${QEMU_AARCH64:-$HOME/.cache/vigil/build/qemu-system-aarch64}
STALL_TIMEOUT=${STALL_TIMEOUT:-2}
TESTS=${GUEST_TESTS:-x86 arm64 stall}

. "$here/lib.sh"

# ---- QMP + serial driver -----------------------------------------------------------
# check.py SCENARIO QMP_SOCKET SERIAL_FILE [ARGS]: follows QEMU's QMP socket and
# serial log (vigilvm.Monitor, on the shared QMP client tests/vigilqmp.py), and
# runs the scenario's checks, printing PASS/FAIL lines on stdout and a timeline
# on stderr.
cat >"$tmp/check.py" <<'EOF'
import json, os, re, sys, time

sys.path.insert(0, os.environ["VIGIL_GUEST_DIR"])
import vigilvm
from vigilvm import log, result

scenario, sock_path, serial_path = sys.argv[1:4]
args = sys.argv[4:]
T0 = vigilvm.T0

def VM():
    # event times: QEMU's QMP timestamps (the latencies below are measured with them)
    return vigilvm.Monitor(scenario, sock_path, serial_path, qemu_time=True,
                           serial_log=r"^vigil-guest:|pvpanic|stall")

def boot(vm, arch, timeout):
    ready = vm.wait_serial(r"^vigil-guest: ready", timeout)
    result("%s: the guest boots to /init (ready marker on the serial console)" % arch,
           ready is not None, "after %.1f s" % (ready[0] - T0) if ready else "no marker in %d s" % timeout)
    return ready

def panic_scenario(arch, boot_timeout):
    vm = VM()
    ok = True
    ready = boot(vm, arch, boot_timeout)
    if arch == "x86":
        ins = [l for _, l in vm.serial if l.startswith("vigil-guest: insmod")]
        result("x86: insmod pvpanic.ko and pvpanic-mmio.ko (dependency first)",
               ins == ["vigil-guest: insmod pvpanic.ko: ok", "vigil-guest: insmod pvpanic-mmio.ko: ok"],
               "; ".join(ins) or "no insmod lines")
        pat = r"^vigil-guest: bound pvpanic-mmio QEMU0001:\d+"
        what = "the ACPI device QEMU0001"
    else:
        pat = r"^vigil-guest: bound pvpanic-mmio [0-9a-f]+\.pvpanic"
        what = "the DT node (qemu,pvpanic-mmio)"
    bound = [l for _, l in vm.serial if re.search(pat, l)]
    result("%s: Linux's pvpanic-mmio driver is bound to %s" % (arch, what), bool(bound),
           "; ".join(bound) or "no bound line; dmesg: " +
           "; ".join(l for _, l in vm.serial if "dmesg" in l))
    act = vm.wait_serial(r"^vigil-guest: action=panic", 5)
    ev = vm.wait_event(lambda e: e[1] == "GUEST_PANICKED", 30)
    detail = "no GUEST_PANICKED within 30 s of the panic"
    if ev:
        lat = ev[0] - act[0] if act else float("nan")
        detail = "data %s, %.2f s after the 'action=panic' line (the guest sleeps 1 s first)" % (
            json.dumps(ev[2]), lat)
    result("%s: sysrq c -> GUEST_PANICKED {action: pause}" % arch,
           bool(ev) and ev[2].get("action") == "pause", detail)
    st = None
    for _ in range(50):
        st = vm.status()
        if st == "guest-panicked":
            break
        vm.read_msgs(lambda: False, 0.1)
    result("%s: query-status reports guest-panicked" % arch, st == "guest-panicked", "status " + str(st))
    others = [e[1] for e in vm.events if e[1] in ("GUEST_CRASHLOADED", "GUEST_PVSHUTDOWN")]
    result("%s: no GUEST_CRASHLOADED/GUEST_PVSHUTDOWN event" % arch, not others, ",".join(others) or "none")
    vm.read_msgs(lambda: False, 0.3)
    if vigilvm.failures:
        vm.dump_serial(60)

def pets(trace_path):
    """Pets (vcpu_stall_load trace events) per CPU so far."""
    n = {0: 0, 1: 0}
    try:
        for line in open(trace_path, errors="replace"):
            m = re.match(r"vcpu_stall_load cpu (\d+):", line)
            if m:
                n[int(m.group(1))] = n.get(int(m.group(1)), 0) + 1
    except OSError:
        pass
    return n

def stall_scenario(timeout_sec, trace_path):
    vm = VM()
    path = "/machine/peripheral/stall"
    ready = boot(vm, "stall", 60)
    bound = [l for _, l in vm.serial if l.startswith("vigil-guest: bound vcpu_stall_detector ")]
    result("stall: Linux's vcpu_stall_detector driver is bound (DT qemu,vcpu-stall-detector)",
           bool(bound), "; ".join(bound) or "no bound line")
    # The driver arms each CPU when it comes online and pets every timeout/2.
    en = {}
    end = time.time() + 8
    while time.time() < end:
        en = {c: vm.cmd("qom-get", path=path, property="cpu%d-enabled" % c) for c in (0, 1)}
        if all(en.values()):
            break
        vm.read_msgs(lambda: False, 0.2)
    ticks = [vm.cmd("qom-get", path=path, property="cpu%d-remaining-ticks" % c) for c in (0, 1)]
    result("stall: the guest driver armed both CPUs (QOM cpu0-enabled, cpu1-enabled)",
           en == {0: True, 1: True}, "enabled %s, remaining ticks %s" % (en, ticks))
    stalling = vm.wait_serial(r"^vigil-guest: stalling cpu1", 20)
    p_stall = pets(trace_path)
    # The driver pets every timeout-sec / 2 (and once when it arms): ask for 60 %.
    want = max(2, int(0.6 * (stalling[0] - ready[0]) / (timeout_sec / 2))) if stalling and ready else 2
    result("stall: the guest driver pets both CPUs every timeout/2 while they run",
           p_stall[0] >= want and p_stall[1] >= want,
           "reloads (trace vcpu_stall_load) per CPU before the stall: %s, want >= %d each" % (p_stall, want))
    early = [e for e in vm.events if e[1] in ("VCPU_STALL", "WATCHDOG")]
    result("stall: no VCPU_STALL before the guest stalls CPU 1", stalling is not None and not early,
           "events before: %s" % early if early else ("" if stalling else "no 'stalling cpu1' line"))
    budget = 10 * timeout_sec     # DT clock-frequency (10 Hz) x timeout-sec, in ticks
    warn = vm.wait_event(lambda e: e[1] == "VCPU_STALL", timeout_sec + 20) if stalling else None
    detail = "no VCPU_STALL within %d s" % (timeout_sec + 20)
    if warn:
        lat = warn[0] - stalling[0]
        detail = "%s, %.2f s after the 'stalling cpu1' line (budget %d s = 10 Hz x timeout-sec %d)" % (
            json.dumps(warn[2]), lat, timeout_sec, timeout_sec)
    d = warn[2] if warn else {}
    result("stall: VCPU_STALL warning for cpu-index 1 after the stall",
           d.get("cpu-index") == 1 and d.get("stage") == "warning" and
           d.get("budget-ms") == timeout_sec * 1000 and d.get("qom-path") == path, detail)
    act = vm.wait_event(lambda e: e[1] == "VCPU_STALL" and e[2].get("stage") == "action",
                        timeout_sec + 20) if warn else None
    wd = vm.wait_event(lambda e: e[1] == "WATCHDOG", 5) if act else None
    detail = "action: %s, WATCHDOG: %s" % (act and json.dumps(act[2]), wd and json.dumps(wd[2]))
    if act and warn:
        detail += "; action %.2f s after the warning" % (act[0] - warn[0])
    result("stall: then the action stage for cpu-index 1 and WATCHDOG {action: pause}",
           bool(act) and act[2].get("cpu-index") == 1 and bool(wd) and
           wd[2].get("action") == "pause" and vm.events.index(wd) > vm.events.index(act), detail)
    st = vm.status() if wd else None
    result("stall: the VM is paused by the watchdog action (query-status)",
           st == "watchdog", "status %s" % st)
    vm.read_msgs(lambda: False, 1)
    p_end = pets(trace_path)
    after = {c: p_end[c] - p_stall[c] for c in (0, 1)}
    result("stall: after the stall CPU 0 keeps petting and CPU 1 does not",
           after[0] >= 2 and after[1] <= 1,
           "reloads per CPU from the 'stalling cpu1' line to the pause: %s" % after)
    bad = [e for e in vm.events if e[1] == "VCPU_STALL" and e[2].get("cpu-index") != 1]
    result("stall: no VCPU_STALL ever names a CPU other than 1", not bad,
           "; ".join(json.dumps(e[2]) for e in bad) or "none; QOM stalls per CPU: %s" %
           [vm.cmd("qom-get", path=path, property="cpu%d-stalls" % c) for c in (0, 1)])
    if vigilvm.failures:
        vm.dump_serial(60)

try:
    if scenario in ("x86", "arm64"):
        panic_scenario(scenario, int(args[0]))
    elif scenario == "stall":
        stall_scenario(int(args[0]), args[1])
except Exception as e:  # a broken QMP connection etc.
    result("%s: QMP session" % scenario, False, repr(e))
sys.exit(1 if vigilvm.failures else 0)
EOF

# run NAME QEMU ARGS... -- CHECK_ARGS...: starts QEMU (TCG, serial to a file, QMP
# socket), runs check.py against it, stops QEMU.
run() {
    local name=$1 qemu=$2 t0 qpid qargs=() st
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do qargs+=("$1"); shift; done
    shift
    t0=$(now)
    "$qemu" -accel tcg -nodefaults -display none -no-reboot \
        -name "$name,debug-threads=on" \
        -serial "file:$tmp/$name.serial" \
        -qmp "unix:$tmp/$name.qmp,server=on,wait=off" \
        "${qargs[@]}" </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" &
    qpid=$!
    qemu_pids+=("$qpid")
    log "[$name] QEMU pid $qpid: ${qargs[*]}"
    VIGIL_GUEST_DIR=$here python3 "$tmp/check.py" "$name" "$tmp/$name.qmp" "$tmp/$name.serial" "$@" >"$tmp/$name.results"
    st=$?
    cat "$tmp/$name.results"
    failures=$((failures + $(grep -c '^FAIL' "$tmp/$name.results")))
    [ $st -ne 0 ] && ! grep -q '^FAIL' "$tmp/$name.results" && fail "$name: checker exited $st"
    kill -TERM "$qpid" 2>/dev/null
    wait "$qpid" 2>/dev/null
    qemu_pids=()
    grep -v "terminating on signal 15" "$tmp/$name.err" | sed "s/^/[$name] QEMU stderr: /" >&2
    log "[$name] done in $(since "$t0")"
}

# ---- guests ------------------------------------------------------------------------
t_all=$(now)
log "preparing the guests (scripts/guest-kernels.sh; the first run builds an arm64 kernel, ~10 min)"
kernels=
case " $TESTS " in *" x86 "*) kernels="x86_64" ;; esac
case " $TESTS " in *" arm64 "*|*" stall "*) kernels="$kernels arm64" ;; esac
guest_kernels "$kernels" "setup: scripts/guest-kernels.sh prepares the guests"
grep -a '\[vigil\]' "$tmp/guests.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
X86_KERNEL= X86_INITRD= ARM64_KERNEL= ARM64_INITRD=
while IFS='=' read -r k v; do
    case $k in X86_KERNEL|X86_INITRD|ARM64_KERNEL|ARM64_INITRD) printf -v "$k" '%s' "$v" ;; esac
done <"$tmp/guests.env"
qemu_runs "setup: QEMU binaries run" "$QEMU_X86" "$QEMU_A64"

for t in $TESTS; do
    case $t in
    x86)
        run x86 "$QEMU_X86" -M q35 -m 512 -smp 1 \
            -kernel "$X86_KERNEL" -initrd "$X86_INITRD" \
            -append "console=ttyS0 panic=0 vigil.action=panic" \
            -device '{"driver":"pvpanic","ioport":1285}' -action panic=pause \
            -- 120
        ;;
    arm64)
        run arm64 "$QEMU_A64" -M virt -cpu cortex-a57 -smp 2 -m 256 \
            -kernel "$ARM64_KERNEL" -initrd "$ARM64_INITRD" \
            -append "console=ttyAMA0 vigil.action=panic" \
            -device pvpanic-mmio -action panic=pause \
            -- 60
        ;;
    stall)
        run stall "$QEMU_A64" -M virt -cpu cortex-a57 -smp 2 -m 256 \
            -kernel "$ARM64_KERNEL" -initrd "$ARM64_INITRD" \
            -append "console=ttyAMA0 vigil.action=stall" \
            -device "vcpu-stall-detector,id=stall,timeout-sec=$STALL_TIMEOUT" \
            -device pvpanic-mmio -action watchdog=pause \
            -trace vcpu_stall_load -D "$tmp/stall.trace" \
            -- "$STALL_TIMEOUT" "$tmp/stall.trace"
        ;;
    *) log "unknown test $t" ;;
    esac
done
log "all guest tests done in $(since "$t_all"); $failures failure(s)"
[ $failures -eq 0 ]
