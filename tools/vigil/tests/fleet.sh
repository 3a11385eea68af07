#!/usr/bin/env bash
# vigil for fleets, against fake QMP peers (tests/fakepeer.py, python3's
# standard library) on unix sockets, and Debian's promtool:
#   1. no event lost: 200,000 VCPU_STALL then one GUEST_PANICKED; vigil
#      --on-panic destroy sends quit; its peak RSS stays bounded (printed)
#   2. --metrics: /metrics passes `promtool check metrics`; the counters add up
#   3. the example alerting rules pass `promtool check rules` and their unit test
#   4. --notify: the record on stdin, the summary in the environment, hostile
#      data never run, a timeout, the exit status logged, no action delayed
#   5. --config + SIGHUP: endpoints added, removed and changed, the unchanged
#      connection kept; a bad file keeps the running configuration
#   6. --watch-dir: sockets that appear are watched, those that go forgotten
#   7. the systemd unit passes `systemd-analyze verify`
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check on stdout, details on
# stderr, and a closing "N passed, M failed" line; exits 0 iff all passed.
# Environment: VIGIL_BIN (default: cargo build --release -p vigil), KEEP=1.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
pids=()
work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-fleet.XXXXXX")

cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. "$root/tests/lib.sh"   # pass, fail, check, wait_for, finish, count, has, alive, dead
log() { echo "fleet: $*" >&2; }

# metric PORT SERIES: the value of one series on /metrics (empty if absent)
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { print $2 }'; }
export -f count metric
peer() { # SOCKET NAME [--flood N]: a fake QMP peer in the background; sets PEER
    python3 "$here/fakepeer.py" "$@" 2>>"$work/peers.err" &
    PEER=$!
    pids+=("$PEER")
    wait_for 5 test -S "$1" || log "peer $1 did not start"
}
start_vigil() { # NAME ARGS...: sets VPID; logs NAME.jsonl, NAME.err
    local name=$1
    shift
    "$VIGIL" --log-json "$work/$name.jsonl" --reconnect-max 0.5 "$@" >"$work/$name.out" 2>"$work/$name.err" &
    VPID=$!
    pids+=("$VPID")
}

for tool in python3 curl promtool systemd-analyze; do
    command -v "$tool" >/dev/null || { fail "setup: $tool installed" "no $tool (scripts/deps.sh installs it)"; finish; }
done
if [ -n "${VIGIL_BIN:-}" ]; then
    VIGIL=$VIGIL_BIN
else
    (cd "$root" && cargo build -q --release -p vigil) >&2 || { fail "setup: cargo build"; finish; }
    VIGIL=$root/target/release/vigil
fi

# ---------------------------------------------------------------- 1. flood
log "1. 200,000 VCPU_STALL, then GUEST_PANICKED"
N=200000
peer "$work/floody.qmp" floody --flood "$N"
fpeer=$PEER
port=$(free_port)
start_vigil v1 --on-panic destroy --metrics "127.0.0.1:$port" -q "unix:$work/floody.qmp"
v1=$VPID
check "flood: vigil sends quit for the GUEST_PANICKED behind 200,000 VCPU_STALL" "@$work/v1.err" \
    wait_for 120 dead "$fpeer"
check "flood: quit was the answer (command log)" "@$work/floody.qmp.cmds" grep -qx quit "$work/floody.qmp.cmds"
check "flood: the panic's action is logged" "@$work/v1.jsonl" \
    has "$work/v1.jsonl" action=destroy status=ok event=GUEST_PANICKED
stalls=$(python3 -c '
import json, sys
n = 0
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("event") == "VCPU_STALL":
        n += r.get("repeat", 1)
print(n)' "$work/v1.jsonl")
check "flood: every VCPU_STALL is accounted for in the log ($stalls of $N)" "" test "$stalls" = "$N"
m=$(metric "$port" 'vigil_events_total{vm="floody",event="VCPU_STALL"}')
check "flood: vigil_events_total counts all $N stalls ($m)" "" test "${m:-0}" = "$N"
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$v1/status" 2>/dev/null)
log "vigil peak RSS (VmHWM) during the flood: ${hwm:-?} kB"
echo "     flood: vigil peak RSS ${hwm:-?} kB for $N events"
check "flood: vigil's peak RSS stays under 48 MiB (${hwm:-?} kB)" "" test "${hwm:-999999}" -lt $((48 * 1024))
check "flood: vigil still running" "@$work/v1.err" alive "$v1"

# ---------------------------------------------------------------- 2. metrics
log "2. /metrics"
curl -s "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"
check "metrics: promtool check metrics" "@$work/metrics.txt" \
    bash -c 'promtool check metrics <"$1" >&2' _ "$work/metrics.txt"
for series in 'vigil_events_total{vm="floody",event="GUEST_PANICKED"} 1' \
              'vigil_actions_total{vm="floody",policy="destroy",action="destroy",result="ok"} 1' \
              'vigil_stalls_total{vm="floody",cpu="1",stage="warning"} 50000' \
              'vigil_endpoint_connected{endpoint="unix:'"$work"'/floody.qmp",vm="floody"} 0' \
              'vigil_endpoints 1' 'vigil_dumps_total{result="failed"} 0'; do
    check "metrics: $series" "@$work/metrics.txt" grep -qxF "$series" "$work/metrics.txt"
done
check "metrics: coalesced events are counted" "@$work/metrics.txt" \
    grep -q '^vigil_events_coalesced_total{vm="floody",event="VCPU_STALL"} [1-9]' "$work/metrics.txt"
check "metrics: OpenMetrics for a scraper that asks" "" bash -c \
    'curl -s -H "Accept: application/openmetrics-text;version=1.0.0" "http://127.0.0.1:$1/metrics" | tail -n1 | grep -qx "# EOF"' _ "$port"
check "metrics: 404 elsewhere" "" bash -c \
    '[ "$(curl -s -o /dev/null -w "%{http_code}" "http://127.0.0.1:$1/other")" = 404 ]' _ "$port"
kill "$v1" 2>/dev/null
check "metrics: a port in use is a fatal error (exit 1)" "" bash -c \
    'python3 -c "import socket,subprocess,sys; s=socket.socket(); s.bind((\"127.0.0.1\",0)); s.listen(); sys.exit(subprocess.call([sys.argv[1],\"-q\",\"--metrics\",\"127.0.0.1:%d\" % s.getsockname()[1],\"unix:/nonexistent\"]) != 1)" "$1"' _ "$VIGIL"

# ---------------------------------------------------------------- 3. alerting rules
log "3. alerting rules"
check "rules: promtool check rules vigil-alerts.yml" "" \
    bash -c 'promtool check rules "$1/prometheus/vigil-alerts.yml" >&2' _ "$here/.."
check "rules: promtool test rules (GuestPanicked fires for a new VM's first panic)" "" \
    bash -c 'cd "$1/prometheus" && promtool test rules vigil-alerts.test.yml >&2' _ "$here/.."

# ---------------------------------------------------------------- 4. --notify
log "4. --notify"
cat >"$work/hook.sh" <<EOF
#!/bin/sh
# records stdin and the environment; the panic's hook is slow (over the timeout)
n=\$(date +%s%N)
cat >"$work/hook.\$n.json"
env | grep '^VIGIL_' | sort >"$work/hook.\$n.env"
if [ "\$VIGIL_TYPE" = event ] && [ "\$VIGIL_EVENT" = GUEST_PANICKED ]; then sleep 30; fi
[ "\$VIGIL_ACTION" = destroy ] && exit 3
exit 0
EOF
chmod +x "$work/hook.sh"
peer "$work/n.qmp" 'hooked;$(touch '"$work"'/pwned)'
npeer=$PEER
start_vigil v4 --on-panic destroy --notify "$work/hook.sh" --notify-timeout 2 "unix:$work/n.qmp"
v4=$VPID
wait_for 10 has "$work/v4.jsonl" status=connected
t0=$(date +%s%N)
touch "$work/n.qmp.panic"
check "notify: the action is not delayed by a slow hook (quit sent)" "@$work/v4.err" wait_for 5 dead "$npeer"
t1=$(date +%s%N)
log "panic to quit with a 30 s hook running: $(((t1 - t0) / 1000000)) ms"
check "notify: the hook's timeout is logged (killed after 2 s)" "@$work/v4.jsonl" \
    wait_for 10 has "$work/v4.jsonl" type=notify status=timeout "for=event GUEST_PANICKED"
check "notify: a failing hook's exit status is logged" "@$work/v4.jsonl" \
    wait_for 10 has "$work/v4.jsonl" type=notify status=failed exit-code=3
envf=$(grep -lx 'VIGIL_TYPE=event' $(grep -lx 'VIGIL_EVENT=GUEST_PANICKED' "$work"/hook.*.env) 2>/dev/null | head -n1)
check "notify: VM (from the socket, not the peer's -name), event and policy in the environment" "$(cat "$envf" 2>/dev/null)" \
    bash -c 'grep -qxF "VIGIL_VM=n" "$1" && grep -qx VIGIL_POLICY=destroy "$1" && grep -qx VIGIL_TYPE=event "$1"' _ "$envf" "$work"
check "notify: the JSON record on stdin" "" bash -c \
    'python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(not (r[\"event\"]==\"GUEST_PANICKED\" and r[\"decision\"]==\"act\"))" "${1%.env}.json"' _ "$envf"
check "notify: guest-influenced text is never run" "" test ! -e "$work/pwned"
kill "$v4" 2>/dev/null

# ---------------------------------------------------------------- 5. --config + SIGHUP
log "5. --config and SIGHUP"
peer "$work/a.qmp" qemu-a; pa=$PEER
peer "$work/b.qmp" qemu-b; pb=$PEER
peer "$work/c.qmp" qemu-c; pc=$PEER
cat >"$work/vigil.toml" <<EOF
[defaults]
on-panic = "log"
[[endpoint]]
address = "unix:$work/a.qmp"
name = "web-a"
[[endpoint]]
address = "unix:$work/b.qmp"
EOF
port=$(free_port)
start_vigil v5 --config "$work/vigil.toml" --metrics "127.0.0.1:$port" --on-stall destroy
v5=$VPID
check "config: both endpoints connected" "@$work/v5.err" \
    wait_for 10 bash -c '[ "$(metric "$1" vigil_endpoints)" = 2 ] && [ "$(count "$2" status=connected)" = 2 ]' _ "$port" "$work/v5.jsonl"
check "config: the file's name is the VM's name" "@$work/v5.jsonl" has "$work/v5.jsonl" status=connected vm=web-a
cat >"$work/vigil.toml" <<EOF
[defaults]
on-panic = "log"
[[endpoint]]
address = "unix:$work/a.qmp"
name = "web-a"
on-panic = "destroy"
[[endpoint]]
address = "unix:$work/c.qmp"
EOF
kill -HUP "$v5"
check "config: SIGHUP reloads (1 added, 1 removed, 1 changed)" "@$work/v5.jsonl" \
    wait_for 10 has "$work/v5.jsonl" type=reload status=ok 'added=["unix:'"$work"'/c.qmp"]' \
    'removed=["unix:'"$work"'/b.qmp"]' 'changed=["unix:'"$work"'/a.qmp"]'
check "config: the new endpoint connects (named after its socket, not its -name)" "@$work/v5.jsonl" \
    wait_for 10 has "$work/v5.jsonl" status=connected vm=c
check "config: the unchanged connection is kept (one connection to a)" "$(cat "$work/a.qmp.conns")" \
    test "$(wc -l <"$work/a.qmp.conns")" = 1
touch "$work/a.qmp.panic"
check "config: the changed policy applies (a destroyed)" "@$work/v5.jsonl" wait_for 10 dead "$pa"
check "config: the removed endpoint is let go (b free for another client)" "" \
    qmp "$work/b.qmp" --greeting 3
echo 'this is [ not toml' >"$work/vigil.toml"
kill -HUP "$v5"
check "config: a bad file is refused and the running configuration stays" "@$work/v5.jsonl" \
    wait_for 10 has "$work/v5.jsonl" type=reload status=failed
check "config: vigil still watches c after the bad reload" "" alive "$v5"
check "config: reloads are counted" "" bash -c \
    '[ "$(metric "$1" "vigil_config_reloads_total{result=\"failed\"}")" = 1 ]' _ "$port"
kill "$v5" "$pb" "$pc" 2>/dev/null
check "config: a bad file at start is a usage error (exit 2)" "" \
    bash -c '"$1" --config "$2" 2>/dev/null; [ $? = 2 ]' _ "$VIGIL" "$work/vigil.toml"

# ---------------------------------------------------------------- 6. --watch-dir
log "6. --watch-dir"
mkdir -p "$work/vms"
peer "$work/vms/early.qmp" early
port=$(free_port)
start_vigil v6 --watch-dir "$work/vms" --metrics "127.0.0.1:$port"
v6=$VPID
check "watch-dir: a socket already there is watched" "@$work/v6.err" \
    wait_for 10 has "$work/v6.jsonl" status=connected vm=early
peer "$work/vms/late.qmp" late
late=$PEER
check "watch-dir: a socket that appears is watched" "@$work/v6.err" \
    wait_for 10 has "$work/v6.jsonl" status=connected vm=late
echo not a socket >"$work/vms/notes.txt"
kill "$late"; wait "$late" 2>/dev/null; rm -f "$work/vms/late.qmp"
check "watch-dir: a socket that goes is forgotten" "@$work/v6.jsonl" \
    wait_for 10 has "$work/v6.jsonl" type=watch-dir 'removed=["unix:'"$work"'/vms/late.qmp"]'
check "watch-dir: one endpoint left, not the text file" "" bash -c \
    '[ "$(metric "$1" vigil_endpoints)" = 1 ]' _ "$port"
check "watch-dir: a forgotten endpoint's series go" "" bash -c \
    '! curl -s "http://127.0.0.1:$1/metrics" | grep -q "late.qmp"' _ "$port"
kill "$v6" 2>/dev/null
check "watch-dir: a missing directory is a fatal error (exit 1)" "" \
    bash -c '"$1" -q --watch-dir /nonexistent/vigil 2>/dev/null; [ $? = 1 ]' _ "$VIGIL"

# ---------------------------------------------------------------- 7. systemd unit
log "7. systemd unit"
sed "s|/usr/local/bin/vigil|$VIGIL|" "$here/../vigil.service" >"$work/vigil.service"
check "systemd: systemd-analyze verify vigil.service" "" \
    bash -c 'out=$(systemd-analyze verify "$1" 2>&1); echo "$out" >&2; ! grep -q "vigil.service" <<<"$out"' _ "$work/vigil.service"
check "systemd: the unit reloads with SIGHUP and is hardened" "" bash -c \
    'grep -q "^ExecReload=/bin/kill -HUP \$MAINPID" "$1" && grep -q "^ProtectSystem=strict" "$1" && grep -q "^NoNewPrivileges=yes" "$1"' _ "$here/../vigil.service"

finish
