# SPDX-License-Identifier: GPL-2.0-or-later
# Shared by the guest tests (sourced): the helpers of every test (tests/lib.sh:
# the PASS/FAIL line protocol that scripts/run-tests.sh reads, wait_for, since,
# qmp...), a scratch directory, and the QEMU and helper processes a test starts
# (stopped ones are continued, then all are ended when the test exits).

. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

tmp=$(mktemp -d)

# qemu_runs CHECK-NAME BINARY...: each QEMU binary runs (--version); else
# FAIL CHECK-NAME and exit 1.
qemu_runs() {
    local name=$1 q; shift
    for q in "$@"; do
        "$q" --version >/dev/null 2>&1 || { log "QEMU not usable: $q"; fail "$name"; exit 1; }
    done
}

# prepare_guests KERNELS: scripts/guest-kernels.sh for KERNELS ("x86_64",
# "arm64" or both) writes the guests' variables to $tmp/guests.env (its log:
# $tmp/guests.log); on failure, the end of the log and status 1.
prepare_guests() {
    GUEST_KERNELS=$1 "$VIGIL_TESTS/../scripts/guest-kernels.sh" >"$tmp/guests.env" 2>"$tmp/guests.log" &&
        return 0
    tail -n 30 "$tmp/guests.log" >&2
    return 1
}

# guest_kernels KERNELS CHECK-NAME: prepare_guests KERNELS, or FAIL CHECK-NAME
# and exit 1 (for a test whose every check needs the guests: the checks that
# did not run are counted failed by scripts/run-tests.sh, tests/expected-checks).
guest_kernels() {
    prepare_guests "$1" && return 0
    fail "$2"
    exit 1
}
qemu_pids=()
watch_pids=()

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
