#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real-guest test of vcpu-stall-detector on aarch64 -M virt (TCG), with the
# bare-metal guest in stall-guest/:
#   1. stall: CPU 1 stops petting after P pets; a VCPU_STALL "warning" for
#      cpu-index 1 (never 0) must come within the budget T + 1 s, then the
#      "action" stage and a WATCHDOG event after one more budget.
#   2. SIGSTOP: both CPUs pet forever; QEMU is stopped with SIGSTOP for 3
#      budgets and continued: no VCPU_STALL event may come at all.
#   3. ppi: the guest's CPU 1 enables the detector's PPI (15, INTID 31) in
#      its banked GIC registers and stalls with interrupts unmasked: after the
#      VCPU_STALL warning, its IRQ handler must print the interrupt and
#      disable its bank, and no "action" stage or WATCHDOG event may follow
#      within 2 more budgets (of vCPU 1's CPU time, as far as possible).
#   4. ppi=-1: the same guest with a device without interrupt: no interrupt
#      reaches the guest, and the action and WATCHDOG come.
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check on stdout, details on
# stderr; exits 0 when every check passed.
#
# Environment:
#   QEMU_AARCH64       QEMU binary (default ~/.cache/vigil/build/qemu-system-aarch64)
#   STALL_GUEST_BUILD  where the guest is built (default ~/.cache/vigil/stall-guest)
#   STALL_T, STALL_P   budget in seconds (default 2) and CPU 1's pets (default 6)
#   STALL_PPI_P        CPU 1's pets in the ppi runs (default 2)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
QEMU=${QEMU_AARCH64:-$HOME/.cache/vigil/build/qemu-system-aarch64}
GUEST_BUILD=${STALL_GUEST_BUILD:-$HOME/.cache/vigil/stall-guest}
T=${STALL_T:-2}
P=${STALL_P:-6}
PPI_P=${STALL_PPI_P:-2}
ELF=$GUEST_BUILD/stall-guest.elf

. "$here/lib.sh"

# ---- QMP and serial watcher ------------------------------------------------
# Connects to QEMU's QMP socket (tests/vigilqmp.py, the shared QMP client on
# QEMU's qemu.qmp) and writes one timeline line per event and per serial line:
#   <unix time>\tserial\t<line>
#   <unix time>\tevent\t<NAME>\t<cpu-index>\t<stage or action>\t<budget-ms>\t<json>
# Each of those is followed by the CPU time (ns) the vCPU threads have used:
#   <unix time>\tcputime\t<CPU 0/TCG ns>\t<CPU 1/TCG ns>
# The QMP events also go to <timeline>.qmp. It exits when QEMU closes the socket.
cat >"$tmp/watch.py" <<'EOF'
import json, os, sys, time

sys.path.insert(0, os.environ["VIGIL_TESTS_DIR"])
import vigilqmp

sock_path, serial_path, out_path, qemu_pid = sys.argv[1:5]
out = open(out_path, "a", buffering=1)
qmp_log = open(out_path + ".qmp", "a", buffering=1)

vcpu_tids = {}

def vcpu_ns(name):
    # Thread names need -name debug-threads=on.
    task = "/proc/%s/task" % qemu_pid
    try:
        if name not in vcpu_tids:
            for tid in os.listdir(task):
                with open("%s/%s/comm" % (task, tid)) as f:
                    if f.read().strip() == name:
                        vcpu_tids[name] = tid
        with open("%s/%s/schedstat" % (task, vcpu_tids[name])) as f:
            return int(f.read().split()[0])
    except (OSError, KeyError, ValueError):
        return "-"

def emit(*fields):
    now = time.time()
    out.write("%.3f\t%s\n" % (now, "\t".join(str(f) for f in fields)))
    if fields[0] in ("serial", "event"):
        out.write("%.3f\tcputime\t%s\t%s\n" % (now, vcpu_ns("CPU 0/TCG"), vcpu_ns("CPU 1/TCG")))

try:
    qmp = vigilqmp.QMP(sock_path, timeout=30, alive=lambda: os.path.exists("/proc/" + qemu_pid))
except vigilqmp.QMPError as e:
    sys.exit("watch: %s" % e)
qmp_log.write("<- " + json.dumps(qmp.greeting) + "\n-> qmp_capabilities\n")
emit("qmp", "ready")

serial_pos, serial_part = 0, b""

def poll_serial():
    global serial_pos, serial_part
    try:
        with open(serial_path, "rb") as f:
            f.seek(serial_pos)
            data = f.read()
    except OSError:
        return
    serial_pos += len(data)
    serial_part += data
    *lines, serial_part = serial_part.split(b"\n")
    for line in lines:
        emit("serial", line.decode(errors="replace").rstrip("\r"))

def handle(msg):
    qmp_log.write("<- " + json.dumps(msg) + "\n")
    d = msg.get("data", {})
    emit("event", msg["event"], d.get("cpu-index", "-"),
         d.get("stage", d.get("action", "-")), d.get("budget-ms", "-"),
         json.dumps(msg))

while not qmp.closed:
    msgs = qmp.pull(0.01)
    poll_serial()
    for msg in msgs:
        handle(msg)
for msg in qmp.pull():
    handle(msg)
qmp.close()
poll_serial()
emit("qmp", "closed")
EOF

# start_vm NAME PETS [MODE [DEVICE_OPTIONS]]: starts QEMU and its watcher;
# sets qpid and tl (timeline). MODE is the guest's opt/vigil/stall-mode
# (default stall); DEVICE_OPTIONS are appended to -device (",ppi=-1").
start_vm() {
    local name=$1 pets=$2 mode=${3:-stall} devopts=${4:-}
    tl=$tmp/$name.tl
    : >"$tl"
    "$QEMU" -M virt -cpu cortex-a57 -smp 2 -nodefaults -display none \
        -name "stall-guest-$name,debug-threads=on" \
        -kernel "$ELF" \
        -device "vcpu-stall-detector,id=sd$devopts" -action watchdog=none \
        -fw_cfg "name=opt/vigil/stall-timeout,string=$T" \
        -fw_cfg "name=opt/vigil/stall-pets,string=$pets" \
        -fw_cfg "name=opt/vigil/stall-mode,string=$mode" \
        -serial "file:$tmp/$name.serial" \
        -qmp "unix:$tmp/$name.qmp,server=on,wait=off" \
        </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" &
    qpid=$!
    qemu_pids+=("$qpid")
    VIGIL_TESTS_DIR=$here/.. python3 "$tmp/watch.py" "$tmp/$name.qmp" "$tmp/$name.serial" "$tl" "$qpid" 2>>"$tmp/$name.err" &
    watch_pids+=("$!")
    log "[$name] QEMU pid $qpid, T=$T s, CPU 1 pets=$pets, guest mode $mode${devopts:+, device$devopts}"
}

# wait_line REGEX SECONDS: first timeline line matching REGEX (grep -E),
# waiting up to SECONDS for it
wait_line() {
    local re=$1 end line
    end=$(($(date +%s) + ${2%.*} + 1))
    while :; do
        line=$(grep -m1 -E -- "$re" "$tl") && { printf '%s\n' "$line"; return 0; }
        [ "$(date +%s)" -ge "$end" ] && return 1
        kill -0 "$qpid" 2>/dev/null || { grep -m1 -E -- "$re" "$tl"; return; }
        sleep 0.02
    done
}

# stop_vm: terminates the current QEMU, waits for the watcher to drain
stop_vm() {
    kill -CONT "$qpid" 2>/dev/null
    kill -TERM "$qpid" 2>/dev/null
    wait "$qpid" 2>/dev/null
    wait "${watch_pids[-1]}" 2>/dev/null
    qemu_pids=() watch_pids=()    # reaped: cleanup must not signal reused pids
}

dump_vm() { # NAME: everything about a run, to stderr
    log "---- [$1] serial ----"; cat "$tmp/$1.serial" >&2 2>/dev/null
    log "---- [$1] QMP traffic ----"; cat "$tmp/$1.tl.qmp" >&2 2>/dev/null
    log "---- [$1] QEMU stderr ----"; cat "$tmp/$1.err" >&2 2>/dev/null
}

# cpu_ns_after REGEX COLUMN: vCPU CPU time (ns) sampled with the first
# timeline line matching REGEX; COLUMN 3 is CPU 0, 4 is CPU 1
cpu_ns_after() {
    awk -F'\t' -v re="$1" -v col="$2" \
        'found && $2 == "cputime" { print $col; exit } !found && $0 ~ re { found = 1 }' "$tl"
}

# vcpu_ns_now CPU: CPU time (ns) QEMU's vCPU thread CPU has used so far, or -
vcpu_ns_now() {
    local t
    for t in /proc/"$qpid"/task/*; do
        if [ "$(cat "$t/comm" 2>/dev/null)" = "CPU $1/TCG" ]; then
            cut -d' ' -f1 "$t/schedstat" 2>/dev/null && return
        fi
    done
    echo -
}

# line_no REGEX: number of the first timeline line matching REGEX, or 0
line_no() { grep -n -m1 -E -- "$1" "$tl" | cut -d: -f1 | grep . || echo 0; }

events() { awk -F'\t' '$2 == "event"' "$tl"; }
stall_events() { awk -F'\t' '$2 == "event" && $3 == "VCPU_STALL"' "$tl"; }

# ---- build -----------------------------------------------------------------
if ! "$QEMU" --version >/dev/null 2>&1; then
    log "QEMU not usable: $QEMU"
    fail "setup: QEMU binary runs"
    exit 1
fi
if ! make -s -C "$here/stall-guest" O="$GUEST_BUILD" >&2; then
    fail "setup: guest builds"
    exit 1
fi
pass "setup: guest builds"

# ---- 1. a stall of CPU 1 ---------------------------------------------------
start_vm stall "$P"
boot_to=15
wait_line $'\tserial\tcpu0: PSCI CPU_ON\\(1\\) = 0$' $boot_to >/dev/null &&
    wait_line $'\tserial\tcpu0: armed' $boot_to >/dev/null &&
    wait_line $'\tserial\tcpu1: armed' $boot_to >/dev/null
result "guest: both CPUs come up (PSCI) and arm their own bank" $?

stop_line=$(wait_line $'\tserial\tcpu1: stop petting' $((P * T / 2 + 15)))
st=$?
if [ $st -eq 0 ]; then
    grep -qE $'\tserial\tcpu1: pet '"$P"' ' "$tl"
    st=$?
fi
result "guest: CPU 1 pets $P times, then prints that it stops petting" $st

warn_ok=1
if [ -n "$stop_line" ]; then
    t_stop=${stop_line%%$'\t'*}
    # Wait well past the spec (budget + 1 s) so that a late event is measured.
    warn_line=$(wait_line $'\tevent\tVCPU_STALL\t' $((T + 1 + 8)))
    if [ -n "$warn_line" ]; then
        IFS=$'\t' read -r t_warn _ _ cpu stage budget _ <<<"$warn_line"
        latency=$(awk -v a="$t_warn" -v b="$t_stop" 'BEGIN { printf "%.3f", a - b }')
        log "[stall] first VCPU_STALL: cpu-index $cpu, stage $stage, budget-ms $budget," \
            "$latency s after 'cpu1: stop petting' (spec: <= $((T + 1)) s, budget $T s)"
        if [ "$cpu" = 1 ] && [ "$stage" = warning ] && [ "$budget" = $((T * 1000)) ] &&
            awk -v l="$latency" -v max="$((T + 1))" 'BEGIN { exit !(l >= 0 && l <= max) }'; then
            warn_ok=0
        fi
    else
        log "[stall] no VCPU_STALL event within $((T + 9)) s of 'cpu1: stop petting'"
    fi
fi
result "stall: VCPU_STALL warning for cpu-index 1 within budget+1 s ($((T + 1)) s)" $warn_ok

# The budget is vCPU 1's CPU time: on a busy host the wall-clock latency
# grows by the share of a host CPU the vCPU thread got. This check is
# independent of host load.
cpu_ok=1
if [ -n "${t_warn:-}" ]; then
    c_stop=$(cpu_ns_after $'\tserial\tcpu1: stop petting' 4)
    c_warn=$(cpu_ns_after $'\tevent\tVCPU_STALL\t' 4)
    if [ "$c_stop" != - ] && [ "$c_warn" != - ] && [ -n "$c_stop" ] && [ -n "$c_warn" ]; then
        used=$(awk -v a="$c_warn" -v b="$c_stop" 'BEGIN { printf "%.3f", (a - b) / 1e9 }')
        log "[stall] vCPU 1 thread CPU time from 'stop petting' to the warning: $used s" \
            "(host CPU share $(awk -v u="$used" -v l="$latency" 'BEGIN { printf "%.0f%%", 100 * u / l }'))"
        awk -v u="$used" -v t="$T" 'BEGIN { exit !(u >= t - 0.05 && u <= t + 1) }' && cpu_ok=0
        [ $cpu_ok -eq 0 ] && [ $warn_ok -ne 0 ] &&
            log "[stall] => the device was on time in vCPU time; the host is too busy" \
                "($(cut -d' ' -f1-3 /proc/loadavg) load, $(nproc) CPUs) for the wall-clock spec"
    else
        log "[stall] no CPU time of the vCPU 1 thread (stop: '$c_stop', warning: '$c_warn')"
    fi
fi
result "stall: the warning comes after $T s (+1 s) of vCPU 1's CPU time" $cpu_ok

# One more budget without a pet: the action, then the WATCHDOG event.
action_line=$(wait_line $'\tevent\tVCPU_STALL\t1\taction\t' $((T + 1 + 8)))
wd_line=$(wait_line $'\tevent\tWATCHDOG\t' 2)
act_ok=1
if [ -n "$action_line" ] && [ -n "$wd_line" ] && [ -n "${t_warn:-}" ]; then
    t_act=${action_line%%$'\t'*}
    log "[stall] VCPU_STALL action $(awk -v a="$t_act" -v b="$t_warn" 'BEGIN { printf "%.3f", a - b }') s" \
        "after the warning; WATCHDOG: $(cut -f7 <<<"$wd_line")"
    # The WATCHDOG event follows the action event; its action is "none".
    awk -F'\t' '$3 == "WATCHDOG" { exit !($5 == "none") }' <<<"$wd_line" &&
        [ "$(grep -n -m1 $'\tWATCHDOG\t' "$tl" | cut -d: -f1)" -gt \
          "$(grep -n -m1 $'\tVCPU_STALL\t1\taction\t' "$tl" | cut -d: -f1)" ] &&
        act_ok=0
else
    log "[stall] action event: '${action_line:-none}', WATCHDOG event: '${wd_line:-none}'"
fi
result "stall: one budget later VCPU_STALL action for cpu-index 1, then WATCHDOG" $act_ok

# CPU 0 kept petting after CPU 1 stopped, and was never reported.
n0=$(awk -F'\t' -v t="${t_stop:-9e99}" '$2 == "serial" && $1 > t && $3 ~ /^cpu0: pet /' "$tl" | wc -l)
bad=$(stall_events | awk -F'\t' '$4 != 1')
log "[stall] CPU 0 pets after CPU 1 stopped: $n0; events naming another CPU: ${bad:-none}"
[ "$n0" -ge 2 ] && [ -z "$bad" ]
result "stall: CPU 0 keeps petting and no VCPU_STALL ever names cpu-index 0" $?

grep -q 'EXCEPTION' "$tmp/stall.serial" && log "[stall] the guest took an exception"
stop_vm
log "[stall] events:"; events | cut -f1,3- >&2
[ $failures -eq 0 ] || dump_vm stall

# ---- 2. SIGSTOP of the whole VM must not look like a stall -----------------
failures_before=$failures
start_vm sigstop 0
wait_line $'\tserial\tcpu0: pet 1 ' 15 >/dev/null && wait_line $'\tserial\tcpu1: pet 1 ' 15 >/dev/null
result "sigstop: both CPUs armed and petting" $?

log "[sigstop] SIGSTOP for $((3 * T)) s (3 budgets)"
kill -STOP "$qpid"
t_cont_from=$(date +%s.%N)
sleep $((3 * T))
kill -CONT "$qpid"
t_cont=$(date +%s.%N)
log "[sigstop] SIGCONT after $(awk -v a="$t_cont" -v b="$t_cont_from" 'BEGIN { printf "%.3f", a - b }') s; running $T s more"
sleep "$T"
sleep 0.5
n_after=$(awk -F'\t' -v t="$t_cont" '$2 == "serial" && $1 > t && $3 ~ /^cpu[01]: pet /' "$tl" | cut -f3 | cut -c1-4 | sort -u | wc -l)
log "[sigstop] CPUs that petted after SIGCONT: $n_after of 2"
[ "$n_after" -eq 2 ] && kill -0 "$qpid" 2>/dev/null
result "sigstop: the guest resumes and both CPUs pet again" $?

ev=$(events)
log "[sigstop] events: ${ev:-none}"
[ -z "$(stall_events)" ] && ! grep -q $'\tevent\tWATCHDOG\t' "$tl"
result "sigstop: no VCPU_STALL (or WATCHDOG) event after SIGSTOP of $((3 * T)) s" $?
stop_vm
[ $failures -eq $failures_before ] || dump_vm sigstop

# ---- 3. ppi mode: the guest takes the interrupt and handles the stall -----
failures_before=$failures
start_vm ppi "$PPI_P" ppi
irq_re=$'\tserial\tcpu1: stall interrupt intid 31$'
wait_line $'\tserial\tcpu1: GIC: intid 31 \\(PPI 15\\) enabled' 15 >/dev/null
result "ppi: CPU 1 enables intid 31 (PPI 15) in its banked GIC registers" $?
stop_line=$(wait_line $'\tserial\tcpu1: stop petting \\(interrupts unmasked\\)$' $((PPI_P * T / 2 + 15)))
st=$?
[ $st -eq 0 ] && { grep -qE $'\tserial\tcpu1: pet '"$PPI_P"' ' "$tl"; st=$?; }
result "ppi: CPU 1 pets $PPI_P times, then stops petting with interrupts unmasked" $st

warn_line=$(wait_line $'\tevent\tVCPU_STALL\t' $((T + 1 + 8)))
t_warn=
if [ -n "$warn_line" ]; then
    IFS=$'\t' read -r t_warn _ _ cpu stage budget _ <<<"$warn_line"
    log "[ppi] first VCPU_STALL: cpu-index $cpu, stage $stage, budget-ms $budget," \
        "$(awk -v a="$t_warn" -v b="${stop_line%%$'\t'*}" 'BEGIN { printf "%.3f", a - b }') s after 'stop petting'"
    [ "$cpu" = 1 ] && [ "$stage" = warning ]
    st=$?
else
    log "[ppi] no VCPU_STALL event within $((T + 9)) s of 'stop petting'"
    st=1
fi
result "ppi: VCPU_STALL warning for cpu-index 1" $st

irq_line=$(wait_line "$irq_re" 5)
st=1
if [ -n "$irq_line" ] && [ -n "$stop_line" ]; then
    log "[ppi] interrupt line on serial $(awk -v a="${irq_line%%$'\t'*}" -v b="${t_warn:-0}" \
        'BEGIN { printf "%.3f", a - b }') s after the warning event"
    # After CPU 1 stopped petting (never while it petted), exactly once, and
    # the handler returned.
    [ "$(line_no "$irq_re")" -gt "$(line_no $'\tserial\tcpu1: stop petting')" ] &&
        [ "$(grep -cE -- "$irq_re" "$tl")" -eq 1 ] &&
        ! grep -qE $'\tserial\t.*(unexpected interrupt|EXCEPTION)' "$tl" &&
        wait_line $'\tserial\tcpu1: back from the stall interrupt' 3 >/dev/null
    st=$?
else
    log "[ppi] no 'cpu1: stall interrupt intid 31' line on the serial console"
fi
result "ppi: CPU 1's IRQ handler gets intid 31 once, after it stopped petting, and returns" $st

# The guest disabled its bank in the handler: no action may follow. With
# clock=vcpu-runtime a budget is vCPU 1's CPU time (CPU 1 keeps spinning), so
# wait for 2 budgets of it, and at least 2 budgets of wall-clock time, up to
# 2T + 10 s on a busy host.
st=1
if [ -n "$t_warn" ]; then
    c_warn=$(cpu_ns_after $'\tevent\tVCPU_STALL\t' 4)
    end=$(($(date +%s) + 2 * T + 10))
    while :; do
        c_now=$(vcpu_ns_now 1)
        used=$(awk -v a="$c_now" -v b="$c_warn" \
            'BEGIN { if (a == "-" || b == "-" || b == "") print -1; else printf "%.3f", (a - b) / 1e9 }')
        waited=$(awk -v a="$(date +%s.%N)" -v b="$t_warn" 'BEGIN { printf "%.3f", a - b }')
        awk -v u="$used" -v w="$waited" -v t="$T" 'BEGIN { exit !(u >= 2 * t && w >= 2 * t) }' && break
        [ "$(date +%s)" -ge "$end" ] && break
        grep -qE $'\tevent\t(WATCHDOG|VCPU_STALL\t[0-9]+\taction)\t' "$tl" && break
        sleep 0.1
    done
    log "[ppi] watched $waited s after the warning; vCPU 1 used $used s of CPU time meanwhile" \
        "(2 budgets: $((2 * T)) s; load $(cut -d' ' -f1-3 /proc/loadavg))"
    log "[ppi] events: $(events | cut -f3-6 | tr '\t\n' ' ;')"
    ! grep -qE $'\tevent\t(WATCHDOG|VCPU_STALL\t[0-9]+\taction)\t' "$tl" &&
        [ "$(stall_events | wc -l)" -eq 1 ]
    st=$?
fi
result "ppi: no VCPU_STALL action or WATCHDOG within 2 more budgets (the guest handled it)" $st
stop_vm
[ $failures -eq $failures_before ] || dump_vm ppi

# ---- 4. ppi mode with ppi=-1: nothing reaches the guest, the action comes --
failures_before=$failures
start_vm ppi-none "$PPI_P" ppi ",ppi=-1"
stop_line=$(wait_line $'\tserial\tcpu1: stop petting \\(interrupts unmasked\\)$' $((PPI_P * T / 2 + 15)))
result "ppi=-1: CPU 1 stops petting with interrupts unmasked" $?
warn_line=$(wait_line $'\tevent\tVCPU_STALL\t1\twarning\t' $((T + 1 + 8)))
action_line=$(wait_line $'\tevent\tVCPU_STALL\t1\taction\t' $((T + 1 + 8)))
wd_line=$(wait_line $'\tevent\tWATCHDOG\t' 2)
sleep 0.3    # let the watcher read what the guest printed meanwhile
log "[ppi=-1] warning: ${warn_line:+yes}, action: ${action_line:+yes}, WATCHDOG: ${wd_line:+yes}"
[ -n "$warn_line" ] && [ -n "$action_line" ] && [ -n "$wd_line" ]
result "ppi=-1: VCPU_STALL warning, then action for cpu-index 1, then WATCHDOG" $?
! grep -qE $'\tserial\t.*interrupt intid' "$tl" && [ -n "$stop_line" ]
result "ppi=-1: no interrupt reaches the guest" $?
stop_vm
[ $failures -eq $failures_before ] || dump_vm ppi-none

[ $failures -eq 0 ]
