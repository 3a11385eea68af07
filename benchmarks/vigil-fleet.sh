#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# vigil watching a fleet: N fake QMP peers (benchmarks/vigil_fleet_peers.py,
# one asyncio process, unix sockets) picked up with --watch-dir. Prints
# numbers, no pass/fail:
#
#   1. idle: vigil's RSS and CPU with N endpoints connected, and per endpoint
#      (minus a vigil watching an empty directory);
#   2. event-to-action latency: a GUEST_PANICKED to one VM while the others
#      get a flood of VCPU_STALL warnings (RATE events/s in all); the time
#      from the peer writing the event to it reading vigil's `quit`
#      (--on-panic destroy), median and 99th percentile over SAMPLES VMs.
#
# The peers run on the same host (2 cores here): their own CPU use is part of
# what the numbers show. vigil logs every record to a JSON-lines file, as a
# service would.
#
# Environment: VIGIL_BIN (default: cargo build --release -p vigil),
# BENCH_N (1000), BENCH_RATE (10000), BENCH_SAMPLES (100), BENCH_IDLE_S (10).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
N=${BENCH_N:-1000}
RATE=${BENCH_RATE:-10000}
SAMPLES=${BENCH_SAMPLES:-100}
IDLE=${BENCH_IDLE_S:-10}
if [ -z "${VIGIL_BIN:-}" ]; then
    (cd "$root" && cargo build -q --release -p vigil)
    VIGIL_BIN=$root/target/release/vigil
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((2 * N + 100)) ] || ulimit -n $((4 * N + 1000))

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

rss_of() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

# baseline: vigil with nothing to watch
mkdir "$work/empty"
"$VIGIL_BIN" -q --watch-dir "$work/empty" --log-json "$work/base.jsonl" &
base=$!
pids+=("$base")
sleep 2
base_rss=$(rss_of "$base")
kill "$base"

mkdir "$work/vms"
python3 "$here/vigil_fleet_peers.py" "$work/vms" "$N" "$work/vigil.pid" --idle-seconds "$IDLE" \
    --rate "$RATE" --samples "$SAMPLES" >"$work/result" 2>"$work/peers.err" &
peers=$!
pids+=("$peers")
for _ in $(seq 600); do [ -e "$work/vms/.ready" ] && break; sleep 0.1; done
"$VIGIL_BIN" -q --watch-dir "$work/vms" --on-panic destroy --log-json "$work/vigil.jsonl" \
    --reconnect-max 1 &
vpid=$!
pids+=("$vpid")
echo "$vpid" >"$work/vigil.pid"
wait "$peers" || { cat "$work/peers.err" >&2; exit 1; }
cat "$work/peers.err" >&2
. <(grep -E '^[a-z_0-9]+=' "$work/result" | sed 's/ lost=/\nlost=/')

echo "vigil fleet benchmark: $N endpoints (unix sockets, --watch-dir), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  all $N connected and set up in ${connect_all_s} s"
echo "  idle: RSS $((idle_rss_kb / 1024)) MiB (${idle_rss_kb} kB; a vigil with no endpoint: ${base_rss} kB)"
echo "        per endpoint: $(((idle_rss_kb - base_rss) / N)) kB RSS, $(awk -v c="$idle_cpu_percent" -v n="$N" 'BEGIN { printf "%.5f", c / n }') % CPU (vigil in all: ${idle_cpu_percent} % of one CPU over ${IDLE} s)"
echo "  flood: ${flood_rate_ev_per_s} VCPU_STALL/s over $((N - SAMPLES)) VMs; vigil CPU ${flood_cpu_percent} %, RSS ${flood_rss_kb} kB, peak ${peak_rss_kb} kB"
echo "  GUEST_PANICKED -> quit during the flood, $samples samples ($lost lost):"
echo "        median ${latency_ms_median:-?} ms, p99 ${latency_ms_p99:-?} ms, max ${latency_ms_max:-?} ms"
stalls=$(python3 -c '
import json, sys
n = 0
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("event") == "VCPU_STALL":
        n += r.get("repeat", 1)
print(n)' "$work/vigil.jsonl")
echo "  VCPU_STALL events vigil accounted for: $stalls (coalesced records: $(grep -c '"repeat"' "$work/vigil.jsonl" || true))"
