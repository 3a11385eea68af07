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
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check on stdout, details on
# stderr; exits 0 when every check passed.
#
# Environment:
#   QEMU_AARCH64       QEMU binary (default ~/.cache/vigil/build/qemu-system-aarch64)
#   STALL_GUEST_BUILD  where the guest is built (default ~/.cache/vigil/stall-guest)
#   STALL_T, STALL_P   budget in seconds (default 2) and CPU 1's pets (default 6)
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
QEMU=${QEMU_AARCH64:-$HOME/.cache/vigil/build/qemu-system-aarch64}
GUEST_BUILD=${STALL_GUEST_BUILD:-$HOME/.cache/vigil/stall-guest}
T=${STALL_T:-2}
P=${STALL_P:-6}
ELF=$GUEST_BUILD/stall-guest.elf

tmp=$(mktemp -d)
qemu_pids=()
watch_pids=()
failures=0

cleanup() {
    local p
    for p in "${qemu_pids[@]}"; do
        kill -CONT "$p" 2>/dev/null   # a stopped QEMU would not act on TERM
        kill -TERM "$p" 2>/dev/null
    done
    for p in "${qemu_pids[@]}" "${watch_pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
pass() { printf 'PASS\t%s\n' "$1"; }
fail() { printf 'FAIL\t%s\n' "$1"; failures=$((failures + 1)); }
result() { # NAME STATUS
    if [ "$2" -eq 0 ]; then pass "$1"; else fail "$1"; fi
}

# ---- QMP and serial watcher ------------------------------------------------
# Connects to QEMU's QMP socket (standard library only), negotiates
# capabilities, and writes one timeline line per event and per serial line:
#   <unix time>\tserial\t<line>
#   <unix time>\tevent\t<NAME>\t<cpu-index>\t<stage or action>\t<budget-ms>\t<json>
# Each of those is followed by the CPU time (ns) the vCPU threads have used:
#   <unix time>\tcputime\t<CPU 0/TCG ns>\t<CPU 1/TCG ns>
# It exits when QEMU closes the socket.
cat >"$tmp/watch.py" <<'EOF'
import json, os, select, socket, sys, time

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

deadline = time.time() + 30
while True:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
        break
    except OSError:
        s.close()
        if time.time() > deadline:
            sys.exit("watch: cannot connect to " + sock_path)
        time.sleep(0.02)

buf = b""
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
    if "event" in msg:
        d = msg.get("data", {})
        emit("event", msg["event"], d.get("cpu-index", "-"),
             d.get("stage", d.get("action", "-")), d.get("budget-ms", "-"),
             json.dumps(msg))

def send(cmd):
    qmp_log.write("-> " + json.dumps(cmd) + "\n")
    s.sendall(json.dumps(cmd).encode() + b"\n")

sent_caps = False
while True:
    r, _, _ = select.select([s], [], [], 0.01)
    poll_serial()
    if not r:
        continue
    data = s.recv(65536)
    if not data:
        break
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if not line.strip():
            continue
        msg = json.loads(line)
        handle(msg)
        if "QMP" in msg and not sent_caps:
            send({"execute": "qmp_capabilities"})
            sent_caps = True
        elif "return" in msg and sent_caps == True:
            emit("qmp", "ready")
            sent_caps = "done"
poll_serial()
emit("qmp", "closed")
EOF

# start_vm NAME PETS: starts QEMU and its watcher; sets qpid and tl (timeline)
start_vm() {
    local name=$1 pets=$2
    tl=$tmp/$name.tl
    : >"$tl"
    "$QEMU" -M virt -cpu cortex-a57 -smp 2 -nodefaults -display none \
        -name "stall-guest-$name,debug-threads=on" \
        -kernel "$ELF" \
        -device vcpu-stall-detector,id=sd -action watchdog=none \
        -fw_cfg "name=opt/vigil/stall-timeout,string=$T" \
        -fw_cfg "name=opt/vigil/stall-pets,string=$pets" \
        -serial "file:$tmp/$name.serial" \
        -qmp "unix:$tmp/$name.qmp,server=on,wait=off" \
        </dev/null >"$tmp/$name.out" 2>"$tmp/$name.err" &
    qpid=$!
    qemu_pids+=("$qpid")
    python3 "$tmp/watch.py" "$tmp/$name.qmp" "$tmp/$name.serial" "$tl" "$qpid" 2>>"$tmp/$name.err" &
    watch_pids+=("$!")
    log "[$name] QEMU pid $qpid, T=$T s, CPU 1 pets=$pets"
}

# wait_for REGEX SECONDS: first timeline line matching REGEX (grep -E),
# waiting up to SECONDS for it
wait_for() {
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
wait_for $'\tserial\tcpu0: PSCI CPU_ON\\(1\\) = 0$' $boot_to >/dev/null &&
    wait_for $'\tserial\tcpu0: armed' $boot_to >/dev/null &&
    wait_for $'\tserial\tcpu1: armed' $boot_to >/dev/null
result "guest: both CPUs come up (PSCI) and arm their own bank" $?

stop_line=$(wait_for $'\tserial\tcpu1: stop petting' $((P * T / 2 + 15)))
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
    warn_line=$(wait_for $'\tevent\tVCPU_STALL\t' $((T + 1 + 8)))
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
action_line=$(wait_for $'\tevent\tVCPU_STALL\t1\taction\t' $((T + 1 + 8)))
wd_line=$(wait_for $'\tevent\tWATCHDOG\t' 2)
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
wait_for $'\tserial\tcpu0: pet 1 ' 15 >/dev/null && wait_for $'\tserial\tcpu1: pet 1 ' 15 >/dev/null
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

[ $failures -eq 0 ]
