#!/usr/bin/env bash
# Run every vigil test and print one summary line: "N passed, M failed".
#
#   1. cargo test: the pure-Rust core (unit and property tests)
#   2. QEMU-level checks of our devices from the command line (cli-tests.sh);
#      QEMU built --disable-rust (norust-tests.sh); the docs (docs-tests.sh);
#      QEMU's checkpatch.pl over patches/ and our C files (checkpatch-tests.sh)
#   3. meson test: our qtests, QEMU's own pvpanic/pvpanic-pci/device-introspect
#      (both targets) and boot-serial (aarch64) qtests, QEMU's Rust suite
#   4. real guests under TCG: a bare-metal aarch64 guest (stall detector) and
#      Linux (Debian's x86 kernel; an arm64 kernel built from Debian's source,
#      scripts/guest-kernels.sh) with the upstream drivers; real libvirt
#      (Debian's libvirtd) driving our QEMU through a guest panic
#
# A test that cannot run counts as failed: nothing is skipped silently.
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

# 1. cargo test
t0=$(now)
log "cargo test (pure-Rust core)"
(cd "$VIGIL_ROOT" && cargo test --workspace 2>&1) | tee "$logdir/cargo.log" | grep -E '^test |test result' | grep -v '^test result: ok. 0 passed' || true
while read -r p f; do
    passed=$((passed + p)); failed=$((failed + f))
done < <(sed -n -E 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$logdir/cargo.log")
grep -q '^test result:' "$logdir/cargo.log" || result "cargo test (did not run)" 1
grep -q '^test result: FAILED' "$logdir/cargo.log" && failures+=("cargo test")
log "cargo test took $(elapsed "$t0")"

# Scripts that print "PASS<TAB>name" / "FAIL<TAB>name" per check.
run_checks() { # TITLE LOGNAME COMMAND...
    local title=$1 logname=$2 t0 status name n=0; shift 2
    t0=$(now)
    log "$title"
    while IFS=$'\t' read -r status name; do
        case $status in
            PASS) n=$((n + 1)); echo "ok   $name"; result "$name" 0 ;;
            FAIL) n=$((n + 1)); echo "FAIL $name"; result "$name" 1 ;;
            *)    echo "     $status${name:+ $name}" ;;   # the script's own summary
        esac
    done < <("$@" 2> "$logdir/$logname.log")
    if [ $n = 0 ]; then
        echo "FAIL $title: no check ran"; tail -n 20 "$logdir/$logname.log"
        result "$title (no check ran)" 1
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
# "suite+suite - qemu:name" lines -> names
available=$("$MESON" test -C "$VIGIL_BUILD" --list 2>/dev/null | sed -n 's/^.* - qemu://p')
run=()
for t in "${tests[@]}"; do
    if grep -qx "$t" <<<"$available"; then run+=("$t"); else echo "FAIL $t (not in this build)"; result "$t (missing)" 1; fi
done
rust_tests=$(grep -E '^rust-' <<<"$available" | tr '\n' ' ')
[ -n "$rust_tests" ] || { echo "FAIL QEMU rust suite (not in this build)"; result "rust suite (missing)" 1; }
log "meson test: ${#run[@]} qtests + QEMU's Rust suite"
# shellcheck disable=SC2086 # rust_tests is a list of names
"$MESON" test -C "$VIGIL_BUILD" --print-errorlogs "${run[@]}" $rust_tests \
    > "$logdir/meson.log" 2>&1
sed -e '/^Summary of Failures/,$d' "$logdir/meson.log" | grep -E '^ *[0-9]+/[0-9]+ ' | sed 's/^ *//'
while read -r st name; do
    case $st in
        OK|EXPECTEDFAIL) result "$name" 0 ;;
        *) result "$name ($st)" 1 ;;
    esac
done < <(sed -e '/^Summary of Failures/,$d' "$logdir/meson.log" |
         sed -n -E 's/^ *[0-9]+\/[0-9]+ +(.* )?([^ ]+) +(OK|FAIL|SKIP|TIMEOUT|ERROR|EXPECTEDFAIL|UNEXPECTEDPASS) +.*/\3 \2/p')
grep -q 'Ok:' "$logdir/meson.log" || { tail -n 40 "$logdir/meson.log"; result "meson test (did not run)" 1; }
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

if [ ${#failures[@]} -gt 0 ]; then
    log "failed:"; printf '  %s\n' "${failures[@]}" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
