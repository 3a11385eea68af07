#!/usr/bin/env bash
# Run every vigil test and print one summary line: "N passed, M failed".
#
#   1. cargo test: the pure-Rust core and vigil (unit and property tests),
#      one test target at a time, counted from `--list` and each target's
#      exit status
#   2. QEMU-level checks of our devices from the command line (cli-tests.sh);
#      QEMU built --disable-rust (norust-tests.sh); the docs (docs-tests.sh);
#      QEMU's checkpatch.pl over patches/ and our C files (checkpatch-tests.sh)
#   3. meson test: our qtests, QEMU's own pvpanic/pvpanic-pci/device-introspect
#      (both targets) and boot-serial (aarch64) qtests, QEMU's Rust suite;
#      results from meson's testlog.json
#   4. real guests under TCG: a bare-metal aarch64 guest (stall detector) and
#      Linux (Debian's x86 kernel; an arm64 kernel built from Debian's source,
#      scripts/guest-kernels.sh) with the upstream drivers; real libvirt
#      (Debian's libvirtd) driving our QEMU through a guest panic
#
# A test that cannot run counts as failed: nothing is skipped silently. How
# many checks each test script prints is declared in tests/expected-checks:
# the checks a script does not print (it stopped early, a step failed) count
# as failed, and a script that prints more than declared fails too, until
# the file (and the total in README.md) is updated.
# Expects a finished build (scripts/build.sh); builds the test programs itself.
set -uo pipefail
. "$(dirname "$0")/common.sh"

passed=0 failed=0
failures=()
result() { # NAME OK?
    if [ "$2" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$1"); fi
}
logdir=$VIGIL_BUILD/vigil-test-logs
mkdir -p "$logdir"

# 1. cargo test, one test target at a time (the workspace's targets, from
# `cargo metadata`). Each target's tests are listed (libtest's `--list`) and
# counted, then run: the target's exit status says whether they all passed.
# When a target fails, each of its tests runs again alone (`--exact`) and
# counts by its own exit status (and if every one passes alone, the target's
# failure still counts once). Nothing is read from cargo's screen output.
t0=$(now)
log "cargo test (pure-Rust core, vigil)"
cargo_log=$logdir/cargo.log
: >"$cargo_log"
if ! (cd "$VIGIL_ROOT" && cargo test --workspace --no-run) >>"$cargo_log" 2>&1; then
    tail -n 30 "$cargo_log"; echo "FAIL cargo test: the tests build"; result "cargo test: the tests build" 1
else
    # "PACKAGE<TAB>TARGET OPTION" per test target (doc tests: --doc)
    cargo_targets=$(cd "$VIGIL_ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    if p["id"] not in m["workspace_members"]:
        continue
    for t in p["targets"]:
        kinds = set(t["kind"])
        if "lib" in kinds or "rlib" in kinds:
            if t.get("test", True):
                print("%s\t--lib" % p["name"])
            if t.get("doctest", True):
                print("%s\t--doc" % p["name"])
        elif kinds & {"bin", "test"} and t.get("test", True):
            print("%s\t--%s %s" % (p["name"], "bin" if "bin" in kinds else "test", t["name"]))
')
    [ -n "$cargo_targets" ] || result "cargo test: the workspace's test targets (cargo metadata)" 1
    while IFS=$'\t' read -r pkg sel; do
        [ -n "$pkg" ] || continue
        # shellcheck disable=SC2086 # sel is an option and its argument
        if ! names=$(cd "$VIGIL_ROOT" && cargo test -q -p "$pkg" $sel -- --list --format terse 2>>"$cargo_log"); then
            echo "FAIL cargo test -p $pkg $sel: cannot list its tests"; result "cargo test -p $pkg $sel (list)" 1
            continue
        fi
        names=$(sed -n 's/: test$//p' <<<"$names")
        n=$(grep -c . <<<"$names")
        [ "$n" -gt 0 ] || continue   # no tests (vigil's main.rs, a crate without doc tests)
        # shellcheck disable=SC2086
        if (cd "$VIGIL_ROOT" && cargo test -p "$pkg" $sel) >>"$cargo_log" 2>&1; then
            echo "ok   cargo test -p $pkg $sel: $n tests"
            passed=$((passed + n))
        else
            echo "FAIL cargo test -p $pkg $sel (exit status $?): each of its $n tests alone"
            alone_failed=0
            while IFS= read -r name; do
                # shellcheck disable=SC2086
                if (cd "$VIGIL_ROOT" && cargo test -p "$pkg" $sel -- --exact "$name") >>"$cargo_log" 2>&1; then
                    result "$name" 0
                else
                    echo "FAIL   $name"; result "cargo test -p $pkg $sel: $name" 1; alone_failed=1
                fi
            done <<<"$names"
            [ $alone_failed = 1 ] || result "cargo test -p $pkg $sel (fails together, each test passes alone)" 1
        fi
    done <<<"$cargo_targets"
fi
log "cargo test took $(elapsed "$t0") (log: $cargo_log)"

# The number of checks each script prints, by LOGNAME: tests/expected-checks
# ("LOGNAME N" per line, # comments). A script missing from it fails.
expected_checks=$VIGIL_ROOT/tests/expected-checks
declare -A expected=() ran=()
if [ -f "$expected_checks" ]; then
    while read -r key n _; do
        case $key in ''|'#'*) continue ;; esac
        expected[$key]=$n
    done < "$expected_checks"
else
    echo "FAIL $expected_checks is missing: no script's count of checks can be verified"
    result "tests/expected-checks (missing)" 1
fi

# Scripts that print "PASS<TAB>name" / "FAIL<TAB>name" per check. Each
# check counts; so does each expected check (tests/expected-checks) that
# did not print: as failed, under one FAIL line naming the script.
run_checks() { # TITLE LOGNAME COMMAND...
    local title=$1 logname=$2 t0 status name n=0 want missing; shift 2
    t0=$(now)
    log "$title"
    while IFS=$'\t' read -r status name; do
        case $status in
            PASS) n=$((n + 1)); echo "ok   $name"; result "$name" 0 ;;
            FAIL) n=$((n + 1)); echo "FAIL $name"; result "$name" 1 ;;
            *)    echo "     $status${name:+ $name}" ;;   # the script's own summary
        esac
    done < <("$@" 2> "$logdir/$logname.log")
    ran[$logname]=1
    want=${expected[$logname]:-}
    if ! [[ $want =~ ^[0-9]+$ ]]; then
        echo "FAIL $logname: no number of checks for it in tests/expected-checks ($n printed)"
        result "$logname: its number of checks in tests/expected-checks" 1
    elif [ "$n" -lt "$want" ]; then
        missing=$((want - n))
        echo "FAIL $logname: $missing of its $want checks did not run (each counts as failed)"
        tail -n 20 "$logdir/$logname.log"
        failed=$((failed + missing))
        failures+=("$logname: $missing of its $want checks did not run")
    elif [ "$n" -gt "$want" ]; then
        echo "FAIL $logname: $n checks ran, tests/expected-checks says $want (update it, and README.md's total)"
        result "$logname: $n checks, tests/expected-checks says $want" 1
    fi
    log "$title took $(elapsed "$t0") (details: $logdir/$logname.log)"
}

# Test programs (qtests, bios-tables-test) first
t0=$(now)
log "building test programs"
ninja -C "$VIGIL_BUILD" tests/qtest/vcpu-stall-detector-test tests/qtest/pvpanic-test \
    tests/qtest/pvpanic-pci-test tests/qtest/device-introspect-test tests/qtest/boot-serial-test \
    tests/qtest/pvpanic-mmio-test tests/qtest/vigil-pvpanic-test tests/qtest/bios-tables-test \
    tests/qtest/pvpanic-pci-rust-test tests/qtest/vigil-virt-acpi-test \
    > "$logdir/ninja-tests.log" 2>&1 || { tail -n 30 "$logdir/ninja-tests.log"; result "build test programs" 1; }

# 2. command-line checks against the built QEMU
run_checks "command-line checks" cli "$VIGIL_ROOT/scripts/cli-tests.sh"

# 2b. QEMU with our patches and --disable-rust (its own build directory,
# $VIGIL_CACHE/build-norust, built here: a no-op when nothing changed); docs
run_checks "QEMU without Rust: build, -M virt, C pvpanic-mmio, no stall detector" norust \
    "$VIGIL_ROOT/scripts/norust-tests.sh"
run_checks "docs: Sphinx -W over our pages, QEMU's toctrees" docs "$VIGIL_ROOT/scripts/docs-tests.sh"
run_checks "checkpatch: patches/ and our C sources" checkpatch "$VIGIL_ROOT/scripts/checkpatch-tests.sh"
run_checks "lints: clippy and rustfmt, QEMU's settings, over our crates" lint "$VIGIL_ROOT/scripts/lint-tests.sh"

# 3. meson tests
MESON=$VIGIL_VENV/bin/meson
tests=()
for t in qtest-aarch64/vcpu-stall-detector-test qtest-aarch64/pvpanic-mmio-test qtest-x86_64/vigil-pvpanic-test \
         qtest-aarch64/vigil-virt-acpi-test \
         qtest-x86_64/pvpanic-test qtest-x86_64/pvpanic-pci-test qtest-x86_64/pvpanic-pci-rust-test \
         qtest-x86_64/device-introspect-test qtest-aarch64/device-introspect-test \
         qtest-aarch64/boot-serial-test; do
    tests+=("$t")
done
# "NAME" per line, from meson's introspection (JSON)
available=$("$MESON" introspect --tests "$VIGIL_BUILD" 2>/dev/null |
            python3 -c 'import json, sys; print("\n".join(t["name"] for t in json.load(sys.stdin)))')
run=()
for t in "${tests[@]}"; do
    if grep -qx "$t" <<<"$available"; then run+=("$t"); else echo "FAIL $t (not in this build)"; result "$t (missing)" 1; fi
done
mapfile -t rust_tests < <(grep -E '^rust-' <<<"$available")
[ ${#rust_tests[@]} -gt 0 ] || { echo "FAIL QEMU rust suite (not in this build)"; result "rust suite (missing)" 1; }
log "meson test: ${#run[@]} qtests + QEMU's Rust suite"
# Results: meson's $VIGIL_BUILD/meson-logs/testlog.json, one JSON object per
# test ("name": "SUITES - PROJECT:NAME", "result": OK, FAIL, SKIP, TIMEOUT...).
testlog=$VIGIL_BUILD/meson-logs/testlog.json
rm -f "$testlog"
"$MESON" test -C "$VIGIL_BUILD" --print-errorlogs "${run[@]}" "${rust_tests[@]}" \
    > "$logdir/meson.log" 2>&1
meson_rc=$?
if [ ! -s "$testlog" ]; then
    tail -n 40 "$logdir/meson.log"; echo "FAIL meson test (no $testlog)"; result "meson test (did not run)" 1
else
    declare -A meson_seen=()
    meson_bad=0
    while IFS=$'\t' read -r st name secs; do
        meson_seen[$name]=1
        case $st in
            OK|EXPECTEDFAIL) echo "ok   $name ($secs s)"; result "$name" 0 ;;
            *) echo "FAIL $name ($st, $secs s)"; result "$name ($st)" 1; meson_bad=$((meson_bad + 1)) ;;
        esac
    done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    if line.strip():
        t = json.loads(line)
        name = t["name"].rsplit(" - ", 1)[-1].split(":", 1)[-1]   # "SUITES - PROJECT:NAME"
        print("%s\t%s\t%.1f" % (t["result"], name, t.get("duration", 0)))
' "$testlog")
    for t in "${run[@]}" "${rust_tests[@]}"; do
        [ -n "${meson_seen[$t]:-}" ] || { echo "FAIL $t (no result in testlog.json)"; result "$t (no result)" 1; }
    done
    [ "$meson_rc" = 0 ] || [ "$meson_bad" -gt 0 ] ||
        { echo "FAIL meson test exited $meson_rc"; result "meson test (exit status $meson_rc)" 1; }
fi
log "meson tests took $(elapsed "$t0") (log: $logdir/meson.log)"

# 4. real guests under TCG
QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 STALL_GUEST_BUILD=$VIGIL_CACHE/stall-guest \
    run_checks "real guest: bare-metal aarch64 on 2 vCPUs (stall detector)" stall-guest \
    "$VIGIL_ROOT/tests/guest/stall-guest-test.sh"

QEMU_X86_64=$VIGIL_BUILD/qemu-system-x86_64 QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    run_checks "real guests: Linux on x86 q35 and arm64 virt (pvpanic, stall detector)" linux-guests \
    "$VIGIL_ROOT/tests/guest/pvpanic-guest-test.sh"
QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    run_checks "real guest: the stall PPI with Linux (patched driver: NMI, panic, GUEST_PANICKED)" stall-ppi \
    "$VIGIL_ROOT/tests/guest/stall-ppi-test.sh"
QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    run_checks "real guest: arm64 Linux through UEFI (AAVMF) and ACPI (stall detector, pvpanic-mmio)" uefi-guest \
    "$VIGIL_ROOT/tests/guest/uefi-guest-test.sh"
QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    run_checks "real guest: arm64 kdump and kexec with the stall detector armed" kdump \
    "$VIGIL_ROOT/tests/guest/kdump-test.sh"

cargo build -q --release -p vigil --manifest-path "$VIGIL_ROOT/Cargo.toml" 2>"$logdir/vigil-build.log" ||
    result "vigil builds" 1
QEMU=$VIGIL_BUILD/qemu-system-x86_64 VIGIL_BIN=$VIGIL_ROOT/target/release/vigil \
    run_checks "vigil against QEMU (dumps, reconnects, bad input)" vigil-e2e \
    "$VIGIL_ROOT/tools/vigil/tests/e2e.sh"
QEMU_X86_64=$VIGIL_BUILD/qemu-system-x86_64 QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    VIGIL_BIN=$VIGIL_ROOT/target/release/vigil \
    run_checks "vigil with real guests (panic: coredump-restart, stall: coredump-destroy)" vigil-guests \
    "$VIGIL_ROOT/tests/guest/vigil-guest-test.sh"
QEMU_X86_64=$VIGIL_BUILD/qemu-system-x86_64 QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    VIGIL_BIN=$VIGIL_ROOT/target/release/vigil \
    run_checks "pvpanic-pci with real guests (x86 q35, arm64 virt direct and UEFI; vigil coredump-restart)" pvpanic-pci-guests \
    "$VIGIL_ROOT/tests/guest/pvpanic-pci-guest-test.sh"
VIGIL_BIN=$VIGIL_ROOT/target/release/vigil \
    run_checks "vigil for fleets (flood, metrics, hooks, config, watch-dir)" vigil-fleet \
    "$VIGIL_ROOT/tools/vigil/tests/fleet.sh"
QEMU_X86_64=$VIGIL_BUILD/qemu-system-x86_64 VIGIL_BIN=$VIGIL_ROOT/target/release/vigil \
    run_checks "vigil with a real Prometheus while a real guest panics" vigil-prometheus \
    "$VIGIL_ROOT/tools/vigil/tests/prometheus-guest.sh"
QEMU_X86_64=$VIGIL_BUILD/qemu-system-x86_64 \
    run_checks "real libvirt: <panic model='isa'/> with on_crash coredump-destroy" libvirt \
    "$VIGIL_ROOT/tests/libvirt/libvirt-test.sh"
QEMU_AARCH64=$VIGIL_BUILD/qemu-system-aarch64 \
    run_checks "real libvirt on aarch64: UEFI, both devices, watchdog dump, on_crash coredump" libvirt-aarch64 \
    "$VIGIL_ROOT/tests/libvirt/libvirt-aarch64-test.sh"

# A script in tests/expected-checks that was not run (renamed, removed)
for key in "${!expected[@]}"; do
    [ -n "${ran[$key]:-}" ] ||
        { echo "FAIL tests/expected-checks: $key was not run"; result "tests/expected-checks: $key not run" 1; }
done

if [ ${#failures[@]} -gt 0 ]; then
    log "failed:"; printf '  %s\n' "${failures[@]}" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
