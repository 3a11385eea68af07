#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# A real Prometheus server (Debian's `prometheus`, started here on a loopback
# port with a 1 s scrape interval and vigil's alerting rules) scrapes vigil
# while a real guest panics: Debian's x86 kernel on q35 panics (sysrq c)
# through our ISA pvpanic; vigil (--on-panic coredump-destroy) dumps it and
# ends QEMU; the test reads the panic counter, the dump counter and the
# GuestPanicked alert through Prometheus's HTTP API.
#
# QEMU starts paused (-S) and is resumed once Prometheus has scraped the VM's
# panic counter at 0, so that increase() and the alert see the panic.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr).
# Environment: QEMU_X86_64 (default: the vigil build), VIGIL_BIN (default:
# built here with cargo), PROMETHEUS (default: prometheus in PATH).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
. "$root/scripts/common.sh"
QEMU_X86=${QEMU_X86_64:-$VIGIL_BUILD/qemu-system-x86_64}
PROMETHEUS=${PROMETHEUS:-prometheus}
. "$root/tests/guest/lib.sh"


command -v "$PROMETHEUS" >/dev/null || { fail "setup: prometheus installed (scripts/deps.sh)"; exit 1; }
[ -x "$QEMU_X86" ] || { fail "setup: QEMU at $QEMU_X86"; exit 1; }
if [ -z "${VIGIL_BIN:-}" ]; then
    (cd "$root" && cargo build -q --release -p vigil) >&2 || { fail "setup: vigil builds"; exit 1; }
    VIGIL_BIN=$root/target/release/vigil
fi
GUEST_KERNELS=x86_64 "$root/scripts/guest-kernels.sh" >"$tmp/guests.env" 2>"$tmp/guests.log" ||
    { tail -n 20 "$tmp/guests.log" >&2; fail "setup: scripts/guest-kernels.sh (x86_64)"; exit 1; }
X86_KERNEL=$(sed -n 's/^X86_KERNEL=//p' "$tmp/guests.env")
X86_INITRD=$(sed -n 's/^X86_INITRD=//p' "$tmp/guests.env")

# promq QUERY: the value of the first series of an instant query ("" if none)
promq() {
    python3 - "$pport" "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:%s/api/v1/query?%s" % (sys.argv[1], urllib.parse.urlencode({"query": sys.argv[2]}))
try:
    r = json.load(urllib.request.urlopen(url, timeout=5))
except Exception as e:
    sys.exit("query failed: %s" % e)
res = r.get("data", {}).get("result", [])
print(res[0]["value"][1] if res else "")
EOF
}
promq_is() { [ "$(promq "$1" 2>/dev/null)" = "$2" ]; }
promq_some() { [ -n "$(promq "$1" 2>/dev/null)" ]; }
alert_firing() { # NAME
    python3 - "$pport" "$1" <<'EOF'
import json, sys, urllib.request
r = json.load(urllib.request.urlopen("http://127.0.0.1:%s/api/v1/alerts" % sys.argv[1], timeout=5))
sys.exit(not any(a["labels"].get("alertname") == sys.argv[2] and a["state"] == "firing"
                 and a["labels"].get("vm") == "panicky" for a in r["data"]["alerts"]))
EOF
}
vport=$(free_port)
pport=$(free_port)
mkdir -p "$tmp/dumps" "$tmp/prom-data"
cp "$here/../prometheus/vigil-alerts.yml" "$tmp/vigil-alerts.yml"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $tmp/vigil-alerts.yml
scrape_configs:
  - job_name: vigil
    static_configs:
      - targets: ["127.0.0.1:$vport"]
EOF
"$PROMETHEUS" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom-data" \
    --web.listen-address="127.0.0.1:$pport" >"$tmp/prometheus.log" 2>&1 &
watch_pids+=($!)
prom_ready() { curl -sf "http://127.0.0.1:$pport/-/ready" >/dev/null; }
wait_for 60 prom_ready
result "prometheus: the server starts on 127.0.0.1:$pport" $?

"$QEMU_X86" -M q35 -m 256 -smp 1 -accel tcg -nodefaults -display none -name panicky -S \
    -kernel "$X86_KERNEL" -initrd "$X86_INITRD" -append "console=ttyS0 panic=0 vigil.action=panic" \
    -device '{"driver":"pvpanic","ioport":1285}' -action panic=pause \
    -serial "file:$tmp/x86.serial" -qmp "unix:$tmp/panicky.qmp,server=on,wait=off" \
    -qmp "unix:$tmp/x86.test.qmp,server=on,wait=off" 2>"$tmp/x86.err" &
qpid=$!
qemu_pids+=("$qpid")
"$VIGIL_BIN" --on-panic coredump-destroy --dump-dir "$tmp/dumps" --metrics "127.0.0.1:$vport" \
    --log-json "$tmp/vigil.jsonl" "unix:$tmp/panicky.qmp" 2>"$tmp/vigil.err" &
watch_pids+=($!)

q_panics='vigil_events_total{job="vigil",vm="panicky",event="GUEST_PANICKED"}'
wait_for 60 promq_is "$q_panics" 0
result "prometheus: scrapes vigil (panic counter of the paused VM at 0)" $?
wait_for 10 promq_is 'up{job="vigil"}' 1
result "prometheus: the vigil target is up" $?
wait_for 10 promq_is 'vigil_endpoint_connected{job="vigil",vm="panicky"}' 1
result "prometheus: vigil_endpoint_connected is 1" $?

qmp "$tmp/x86.test.qmp" cont >/dev/null || log "cont failed"
wait_for 180 promq_is "$q_panics" 1
result "prometheus: the guest's panic is counted (vigil_events_total via the HTTP API)" $?
wait_for 60 alert_firing GuestPanicked
result "prometheus: the GuestPanicked alert fires (vigil-alerts.yml)" $?
wait_for 120 promq_is 'vigil_dumps_total{job="vigil",result="completed"}' 1
result "prometheus: the dump is counted (vigil_dumps_total)" $?
wait_for 30 promq_some 'vigil_dump_bytes_total{job="vigil"} > 268435456'
result "prometheus: the dump's bytes are counted (over 256 MiB)" $?
wait_for 30 promq_is 'vigil_actions_total{job="vigil",vm="panicky",policy="coredump-destroy",action="destroy",result="ok"}' 1
result "prometheus: the destroy action is counted" $?
qemu_gone() { ! kill -0 "$qpid" 2>/dev/null; }
wait_for 30 qemu_gone
result "guest: QEMU was ended by vigil (coredump-destroy)" $?

log "---- serial"; grep -a 'vigil-guest\|Kernel panic' "$tmp/x86.serial" >&2
log "---- vigil"; cat "$tmp/vigil.err" >&2
[ "$failures" = 0 ] || { log "---- prometheus"; tail -n 20 "$tmp/prometheus.log" >&2; }
[ "$failures" = 0 ]
