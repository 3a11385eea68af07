# SPDX-License-Identifier: GPL-2.0-or-later
# The shell helpers of every vigil test script (sourced, bash): the PASS/FAIL
# line protocol that scripts/run-tests.sh's run_checks reads ("PASS<TAB>name"
# or "FAIL<TAB>name" on stdout, details on stderr), waiting, timing, and the
# environment of the shared QMP client tests/vigilqmp.py. Sourced more than
# once, it keeps its counters.
#
#   pass NAME                     PASS line
#   fail NAME [DETAIL...]         FAIL line; DETAIL logged
#   result NAME STATUS [DETAIL]   PASS if STATUS is 0, else FAIL; DETAIL logged
#                                 ("ok: NAME: DETAIL" or "NOT OK: NAME: DETAIL")
#   check NAME DETAIL COMMAND...  PASS if COMMAND succeeds (its stdout goes to
#                                 stderr); on failure DETAIL is logged, or with
#                                 "@FILE" the end of FILE
#   fatal NAME DETAIL             FAIL, DETAIL logged, exit 1
#   not_run WHY NAME...           FAIL for each NAME: checks that cannot run
#                                 because a step they need failed (WHY logged)
#   finish                        prints "N passed, M failed" and exits 0 iff
#                                 nothing failed
#   wait_for SECONDS COMMAND...   true as soon as COMMAND succeeds (polled
#                                 every 0.1 s), false after SECONDS
#   now, since T0                 a timestamp; "12.3 s" since T0
#   log TEXT...                   a line on stderr (a script may redefine it)
#   qmp SOCKET COMMAND [ARGS-JSON]  one QMP command (tests/vigilqmp.py): prints
#                                 the return value as JSON, fails on an error
#   qmp SOCKET --events FILE      appends QEMU's events to FILE until it hangs up
#   qmp SOCKET --greeting [S]     prints the greeting (no negotiation), within S s
#   count FILE KEY=VALUE...       JSON lines of FILE whose fields match
#   has FILE KEY=VALUE...         at least one; has_n N FILE KEY=VALUE...: N
#   alive PID, dead PID           kill -0
#   free_port                     a free TCP port on 127.0.0.1
#
# Counters: $passed, $failures.

: "${passed:=0}" "${failures:=0}"
export VIGIL_TESTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# tests/vigilqmp.py (and through it QEMU's python/qemu) for every python3
case ":${PYTHONPATH:-}:" in
    *":$VIGIL_TESTS:"*) ;;
    *) export PYTHONPATH=$VIGIL_TESTS${PYTHONPATH:+:$PYTHONPATH} ;;
esac

log() { printf '%s\n' "$*" >&2; }
pass() { printf 'PASS\t%s\n' "$1"; passed=$((passed + 1)); }
fail() {
    printf 'FAIL\t%s\n' "$1"; failures=$((failures + 1))
    shift; [ $# -gt 0 ] && log "$*"
    return 0
}
result() { # NAME STATUS [DETAIL]
    if [ "$2" -eq 0 ]; then pass "$1"; else fail "$1"; fi
    [ -n "${3:-}" ] && log "$([ "$2" -eq 0 ] && echo ok || echo NOT OK): $1: $3"
    return 0
}
check() { # NAME DETAIL COMMAND...
    local name=$1 detail=$2
    shift 2
    if "$@" >&2; then
        pass "$name"
    else
        fail "$name"
        case $detail in
            @*) log "${detail#@}:"; tail -n 40 "${detail#@}" 2>&1 | tr -d '\000' >&2 ;;
            ?*) log "$detail" ;;
        esac
    fi
    return 0
}
fatal() { # NAME DETAIL: a check that makes the rest pointless
    fail "$1"; log "NOT OK: $1: $2"; exit 1
}
# A check that cannot run is a failed check, never a missing one: a script
# whose step fails reports the checks that needed it with not_run (or exits,
# and scripts/run-tests.sh counts what did not run against tests/expected-checks).
not_run() { # WHY NAME...
    local why=$1 name; shift
    for name in "$@"; do fail "$name"; log "NOT OK: $name: not run: $why"; done
    return 0
}
finish() { echo "$passed passed, $failures failed"; [ "$failures" = 0 ]; exit; }

wait_for() { # SECONDS COMMAND...
    local end=$(( ${EPOCHREALTIME/./} + ${1%.*} * 1000000 ))
    shift
    until "$@"; do
        [ "${EPOCHREALTIME/./}" -ge "$end" ] && return 1
        sleep 0.1
    done
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

qmp() { python3 "$VIGIL_TESTS/vigilqmp.py" "$@"; }
count() { python3 "$VIGIL_TESTS/jsonl-count.py" "$@"; }
has() { [ "$(count "$@")" -ge 1 ]; }
has_n() { local n=$1; shift; [ "$(count "$@")" -ge "$n" ]; }
alive() { kill -0 "$1" 2>/dev/null; }
dead() { ! kill -0 "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
