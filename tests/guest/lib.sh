# SPDX-License-Identifier: GPL-2.0-or-later
# Shared by the guest tests (sourced): a scratch directory, the QEMU and
# helper processes a test starts (stopped ones are continued, then all are
# ended when the test exits), and the PASS/FAIL line protocol that
# scripts/run-tests.sh reads ("PASS<TAB>name" on stdout, details on stderr).

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
