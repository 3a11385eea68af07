#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# vigil watching N endpoints of which some are hostile: what the attackers
# cost the healthy VMs. Prints numbers, no pass/fail. Two runs, the same
# vigil command line and configuration in both:
#
#   baseline  N healthy fake QEMUs (benchmarks/vigil_hostile_peers.py);
#   hostile   the same, but the last endpoints are hostile peers:
#             * BENCH_FLOODERS (4) send distinct events (distinct names and
#               data: nothing can be folded) of BENCH_EVENT_BYTES (1,000,000;
#               under vigil's 1 MiB line limit, so each is read and parsed
#               whole) as fast as vigil reads them, each VM from a thread of
#               a process of their own;
#             * BENCH_HOLDERS (3) panic right after vigil's setup, with
#               on-panic = "coredump-destroy" in their [[endpoint]] tables:
#               they take the getfd descriptor, answer dump-guest-memory and
#               then say "active" to every query-dump, never DUMP_COMPLETED,
#               and panic again once vigil gives up (--dump-timeout), so the
#               two --max-dumps slots stay taken;
#             * BENCH_SLOWLORIS (3) clients on /metrics, BENCH_SLOW_CONNS
#               (200) TCP connections each, every one trickling a byte of a
#               request head every 2 s and never ending it, reconnecting
#               when vigil closes it; their VMs' endpoints are well-behaved.
#
# In each run, once the healthy peers are set up, a window of
# BENCH_WARMUP_S (5) s and then BENCH_SAMPLES (100) GUEST_PANICKED, one to
# each of vm0, vm1, ... every BENCH_GAP (0.1) s (not waiting for the last
# one's answer); vigil's policy for them is destroy. Measured:
#
#   * panic -> action: from the peer writing GUEST_PANICKED to it reading
#     vigil's `quit` (median, p99, max; lost: no quit within 10 s);
#   * page delivery: vigil runs a --notify hook (a shell script appending
#     "VM EVENT TIME" for event records of GUEST_PANICKED) for every record;
#     how many of the samples' panics reached it, and when (wall clocks);
#   * /metrics: a scrape every second during the window (ok, failed, time);
#   * vigil's peak RSS (VmHWM) at the end, its CPU and its hooks' CPU, each
#     peer process's CPU, and the whole machine's, over the window: the
#     peers run on the same host, and the host may be busy with other work
#     (the "not this benchmark" line).
#
# Environment: VIGIL_BIN (default: cargo build --release -p vigil), BENCH_N
# (1000, endpoints in all), BENCH_SAMPLES, BENCH_GAP, BENCH_WARMUP_S,
# BENCH_FLOODERS, BENCH_EVENT_BYTES, BENCH_HOLDERS, BENCH_DUMP_TIMEOUT (10),
# BENCH_SLOWLORIS, BENCH_SLOW_CONNS; BENCH_KEEP=1 keeps the work directory
# (logs, the hook's log, each process's KEY=VALUE results).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
peers_py=$here/vigil_hostile_peers.py
N=${BENCH_N:-1000}
SAMPLES=${BENCH_SAMPLES:-100}
GAP=${BENCH_GAP:-0.1}
WARMUP=${BENCH_WARMUP_S:-5}
FLOODERS=${BENCH_FLOODERS:-4}
EVENT_BYTES=${BENCH_EVENT_BYTES:-1000000}
HOLDERS=${BENCH_HOLDERS:-3}
DUMP_TIMEOUT=${BENCH_DUMP_TIMEOUT:-10}
SLOW=${BENCH_SLOWLORIS:-3}
SLOW_CONNS=${BENCH_SLOW_CONNS:-200}
if [ -z "${VIGIL_BIN:-}" ]; then
    (cd "$root" && cargo build -q --release -p vigil)
    VIGIL_BIN=$root/target/release/vigil
fi
[ "$N" -ge $((2 * SAMPLES + FLOODERS + HOLDERS + SLOW)) ] || { echo "BENCH_N too small for BENCH_SAMPLES" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((2 * N + 2 * SLOW * SLOW_CONNS + 200)) ] || ulimit -n $((4 * N + 2 * SLOW * SLOW_CONNS + 1000))

work=$(mktemp -d)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
trap 'stop_all; if [ -n "${BENCH_KEEP:-}" ]; then echo "kept: $work" >&2; else rm -rf "$work"; fi' EXIT

# the hostile endpoints are the last ones: flooders, then dump holders
flood_first=$((N - FLOODERS - HOLDERS))
hold_first=$((N - HOLDERS))

# run MODE (baseline|hostile): leaves KEY=VALUE lines in $work/MODE.kv
run() {
    local mode=$1
    local d=$work/$mode
    local vms=$d/vms
    mkdir -p "$vms"
    mkdir -m 0700 "$d/dumps"
    {
        echo "# the dump holders' endpoints (well-behaved in the baseline)"
        for i in $(seq "$hold_first" $((N - 1))); do
            printf '[[endpoint]]\naddress = "unix:%s/vm%d.qmp"\non-panic = "coredump-destroy"\n\n' "$vms" "$i"
        done
    } >"$d/vigil.toml"
    cat >"$d/hook" <<EOF
#!/bin/sh
# the benchmark's pager: panics only, the rest is read by nobody
case "\$VIGIL_TYPE/\$VIGIL_EVENT" in
event/GUEST_PANICKED) echo "\$VIGIL_VM \$VIGIL_EVENT \$(date +%s.%N)" >>"$d/hook.log" ;;
esac
EOF
    chmod +x "$d/hook"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # the hostile roles of this run (the processes that serve no endpoint start after vigil)
    local skip="" roles="" r
    if [ "$mode" = hostile ]; then
        if [ "$FLOODERS" -gt 0 ]; then roles="$roles flood"; fi
        if [ "$HOLDERS" -gt 0 ]; then roles="$roles holders"; fi
        if [ "$SLOW" -gt 0 ]; then roles="$roles slowloris"; fi
        if [ $((FLOODERS + HOLDERS)) -gt 0 ]; then skip="$flood_first-$((N - 1))"; fi
    fi
    has() { case " $roles " in *" $1 "*) return 0 ;; esac; return 1; }

    python3 "$peers_py" healthy "$vms" "$N" --skip "$skip" --pids "$d/pids" --hook-log "$d/hook.log" \
        --samples "$SAMPLES" --gap "$GAP" --warmup "$WARMUP" >"$d/healthy.kv" 2>"$d/healthy.err" &
    local hp=$!
    pids+=("$hp")
    echo "healthy $hp" >"$d/pids.tmp"
    if has flood; then
        python3 "$peers_py" flood "$vms" $(seq "$flood_first" $((hold_first - 1))) --bytes "$EVENT_BYTES" \
            2>"$d/flood.err" &
        pids+=($!)
        echo "flood $!" >>"$d/pids.tmp"
    fi
    if has holders; then
        python3 "$peers_py" holders "$vms" $(seq "$hold_first" $((N - 1))) 2>"$d/holders.err" &
        pids+=($!)
        echo "holders $!" >>"$d/pids.tmp"
    fi
    for r in healthy $roles; do
        [ "$r" = slowloris ] && continue
        for _ in $(seq 1200); do [ -e "$vms/.ready-$r" ] && break; sleep 0.1; done
        [ -e "$vms/.ready-$r" ] || { echo "$mode: the $r peers did not start" >&2; cat "$d"/*.err >&2; exit 1; }
    done

    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    "$VIGIL_BIN" -q --watch-dir "$vms" --config "$d/vigil.toml" --on-panic destroy \
        --max-dumps 2 --dump-timeout "$DUMP_TIMEOUT" --dump-dir "$d/dumps" \
        --notify "$d/hook" --notify-jobs 4 --metrics "127.0.0.1:$port" \
        --log-json "$d/vigil.jsonl" 2>"$d/vigil.err" &
    local vp=$!
    pids+=("$vp")
    echo "vigil $vp" >>"$d/pids.tmp"
    if has slowloris; then
        python3 "$peers_py" slowloris "$port" "$vms" --clients "$SLOW" --conns "$SLOW_CONNS" 2>"$d/slowloris.err" &
        pids+=($!)
        echo "slowloris $!" >>"$d/pids.tmp"
    fi
    python3 "$peers_py" scrape "$port" "$vms" 2>"$d/scrape.err" &
    pids+=($!)
    echo "scraper $!" >>"$d/pids.tmp"
    echo end >>"$d/pids.tmp"
    mv "$d/pids.tmp" "$d/pids"

    wait "$hp" || { echo "$mode: the healthy peers failed" >&2; cat "$d/healthy.err" >&2; exit 1; }
    local status alive=yes
    status=$(cat "/proc/$vp/status" 2>/dev/null) || alive="NO (exited)"
    # the others write their results once the window is over
    for r in scrape $roles; do
        for _ in $(seq 300); do [ -e "$vms/.result-$r" ] && break; sleep 0.1; done
    done
    kill -TERM "$vp" 2>/dev/null || true     # a second TERM: do not wait for the held dumps
    sleep 0.5
    kill -TERM "$vp" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$vp" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$vp" 2>/dev/null || true
    stop_all
    cat "$d"/*.err >&2 || true
    {
        cat "$d/healthy.kv"
        cat "$vms"/.result-* 2>/dev/null || true
        python3 "$peers_py" logstats "$d/vigil.jsonl"
        awk '/^VmHWM/ { print "vigil_hwm_kb=" $2 } /^VmRSS/ { print "vigil_rss_kb=" $2 }
             /^Threads/ { print "vigil_threads=" $2 }' <<<"$status"
        echo "vigil_alive=$alive"
        echo "load=$load"
        echo "cpus=$(nproc)"
        if [ "$mode" = hostile ]; then
            echo "endpoints_healthy=$((N - FLOODERS - HOLDERS))"
            echo "endpoints_hostile=$((FLOODERS + HOLDERS)) (+ $SLOW x $SLOW_CONNS slowloris)"
        else
            echo "endpoints_healthy=$N"
            echo "endpoints_hostile=0"
        fi
    } >"$work/$mode.kv"
}

echo "vigil hostile-peers benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): $N endpoints (unix sockets, --watch-dir)," \
    "$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  vigil $("$VIGIL_BIN" --version 2>/dev/null | head -1) --on-panic destroy --max-dumps 2" \
    "--dump-timeout $DUMP_TIMEOUT --notify HOOK --notify-jobs 4 --metrics --log-json; $SAMPLES panics," \
    "one every $GAP s, after a ${WARMUP} s warm-up"
echo "  hostile: $FLOODERS flooders (distinct $EVENT_BYTES-byte events), $HOLDERS dump holders" \
    "(coredump-destroy, never complete), $SLOW slowloris clients x $SLOW_CONNS connections on /metrics"
run baseline
run hostile
python3 "$peers_py" report "$work/baseline.kv" "$work/hostile.kv"
