#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real Linux guests with the Rust pvpanic-pci (TCG only), the guests of
# scripts/guest-kernels.sh; in each, Linux's own pvpanic-pci driver binds
# the device (1b36:0011) and the guest panics (sysrq c):
#   pci-x86        q35, Debian's amd64 kernel, -device pvpanic-pci (its
#                  pvpanic-pci.ko, from the same Debian package, is added to
#                  the initramfs as one more cpio archive)
#   pci-arm64      virt, the arm64 test kernel booted directly (device tree,
#                  pci-host-ecam-generic)
#   pci-arm64-uefi virt through AAVMF (ACPI, MCFG), as libvirt boots it
# each -> GUEST_PANICKED {action: pause}, run state guest-panicked; then
#   pci-vigil      x86 q35 + pvpanic-pci under vigil --on-panic
#                  coredump-restart: an ELF core of guest-RAM size, a reset,
#                  and the guest boots (and binds pvpanic-pci) again.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr).
# Environment: QEMU_X86_64, QEMU_AARCH64 (default: the vigil build),
# VIGIL_BIN (default: built here with cargo), PCI_GUEST_TESTS (which of
# "x86 arm64 uefi vigil", default all), UEFI_BOOT_TIMEOUT (default 240).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/common.sh"
QEMU_X86=${QEMU_X86_64:-$VIGIL_BUILD/qemu-system-x86_64}
QEMU_A64=${QEMU_AARCH64:-$VIGIL_BUILD/qemu-system-aarch64}
TESTS=${PCI_GUEST_TESTS:-x86 arm64 uefi vigil}
. "$here/lib.sh"
want() { case " $TESTS " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- guests --------------------------------------------------------------------
kernels=
{ want x86 || want vigil; } && kernels=x86_64
{ want arm64 || want uefi; } && kernels="$kernels arm64"
guest_kernels "$kernels" "setup: scripts/guest-kernels.sh prepares the guests"
X86_KERNEL= X86_INITRD= ARM64_KERNEL= ARM64_INITRD=
while IFS='=' read -r k v; do
    case $k in X86_KERNEL|X86_INITRD|ARM64_KERNEL|ARM64_INITRD) printf -v "$k" '%s' "$v" ;; esac
done <"$tmp/guests.env"

# x86: Debian's pvpanic-pci.ko, from the kernel package guest-kernels.sh
# used, appended to its initramfs (a later cpio archive adds and replaces
# files: the module and /lib/modules/order with it last).
x86_pci_initrd() {
    local dir=$VIGIL_CACHE/guests/x86_64-pvpanic-pci x86=$VIGIL_CACHE/guests/x86_64 pkg kver dl f
    read -r pkg kver < "$x86/kernel-package" || return 1
    mkdir -p "$dir"
    if [ ! -s "$dir/$kver/pvpanic-pci.ko" ]; then
        dl=$(mktemp -d)
        (cd "$dl" && apt-get -o APT::Sandbox::User=root -q download "$pkg" >&2) || { rm -rf "$dl"; return 1; }
        dpkg-deb --fsys-tarfile "$dl/$pkg"_*.deb |
            tar -C "$dl" -x --wildcards '*/pvpanic/pvpanic-pci.ko*' || { rm -rf "$dl"; return 1; }
        f=$(find "$dl" -name 'pvpanic-pci.ko*' | head -n1)
        mkdir -p "$dir/$kver"
        case $f in
            *.xz) xz -dc "$f" ;; *.zst) zstd -qdc "$f" ;; *) cat "$f" ;;
        esac > "$dir/$kver/pvpanic-pci.ko.tmp" && mv "$dir/$kver/pvpanic-pci.ko.tmp" "$dir/$kver/pvpanic-pci.ko"
        rm -rf "$dl"
    fi
    rm -rf "$tmp/x86extra" && mkdir -p "$tmp/x86extra/lib/modules" || return 1
    { cat "$x86/modules/order"; echo pvpanic-pci.ko; } > "$tmp/x86extra/lib/modules/order"
    cp "$dir/$kver/pvpanic-pci.ko" "$tmp/x86extra/lib/modules/"
    (cd "$tmp/x86extra" && find lib | cpio -o -H newc -R 0:0 --quiet | gzip -9) > "$tmp/x86extra.cpio.gz" &&
        cat "$X86_INITRD" "$tmp/x86extra.cpio.gz" > "$tmp/x86-pci-initrd.gz"
}
X86_PCI_INITRD=
if want x86 || want vigil; then
    if x86_pci_initrd; then
        X86_PCI_INITRD=$tmp/x86-pci-initrd.gz
    else
        fail "setup: Debian's pvpanic-pci.ko added to the x86 initramfs"
    fi
fi

# ---- pvpanic-pci guests panicking ------------------------------------------------
VIGIL_GUEST_DIR=$here python3 - "$QEMU_X86" "$QEMU_A64" "$tmp" "$X86_KERNEL" "$X86_PCI_INITRD" \
    "$ARM64_KERNEL" "$ARM64_INITRD" "${UEFI_BOOT_TIMEOUT:-240}" "$TESTS" <<'EOF_PY'
import os, re, sys, time
sys.path.insert(0, os.environ["VIGIL_GUEST_DIR"])
import vigilvm as v
from vigilvm import result, log

qx86, qa64, tmp, xk, xi, ak, ai, uefi_timeout, tests = sys.argv[1:10]
tests = tests.split()

def panic_run(name, qemu, args, boot_timeout, driver_file=None, firmware=None):
    vm = v.VM(qemu, name, tmp, args + ["-device", "pvpanic-pci,id=pvp", "-action", "panic=pause"])
    try:
        ready = vm.wait_serial(r"^vigil-guest: ready", boot_timeout)
        result("%s: the guest boots to /init" % name, ready is not None,
               "ready %.1f s after QEMU started" % (ready[0] - vm.t_start) if ready
               else "no ready marker in %d s" % boot_timeout)
        if not ready:
            return vm.dump_serial()
        if firmware:
            fw = [l.split()[-1] for _, l in vm.lines(r"^vigil-guest: firmware ")]
            result("%s: Linux runs on %s" % (name, " + ".join(firmware)), fw == firmware, " ".join(fw))
        if driver_file:
            ins = [l for _, l in vm.lines(r"^vigil-guest: insmod ")]
            result("%s: insmod %s" % (name, driver_file),
                   "vigil-guest: insmod %s: ok" % driver_file in ins, "; ".join(ins))
        b = [l for _, l in vm.lines(r"^vigil-guest: bound pvpanic-pci ")]
        # capability: what the device advertises (7) that the driver knows
        # (Linux 6.1: panicked, crash loaded = 3; 6.10 and later add shutdown)
        result("%s: Linux's pvpanic-pci driver binds the device (1b36:0011)" % name,
               len(b) == 1 and re.search(r" capability=(3|7)( |$)", b[0]) is not None,
               "; ".join(b) or "not bound; " + "; ".join(l for _, l in vm.lines(r"dmesg")))
        act = vm.wait_serial(r"^vigil-guest: action=panic", 10)
        ev = vm.wait_event(lambda e: e[1] == "GUEST_PANICKED", 60)
        result("%s: sysrq c -> GUEST_PANICKED {action: pause}" % name,
               bool(ev) and ev[2].get("action") == "pause",
               "%s, %.2f s after 'action=panic'" % (ev[2], ev[0] - act[0]) if ev and act
               else "no GUEST_PANICKED within 60 s")
        st = None
        for _ in range(50):
            st = vm.status()
            if st == "guest-panicked":
                break
            vm.sleep(0.1)
        result("%s: query-status reports guest-panicked" % name, st == "guest-panicked", str(st))
        if v.failures:
            vm.dump_serial()
    finally:
        vm.stop()

a64 = ["-M", "virt", "-cpu", "cortex-a57", "-smp", "2"]
if "x86" in tests:
    if xi:
        panic_run("pci-x86", qx86, ["-M", "q35", "-m", "512", "-smp", "1", "-kernel", xk,
                  "-initrd", xi, "-append", "console=ttyS0 panic=0 vigil.action=panic"], 120,
                  "pvpanic-pci.ko")
if "arm64" in tests:
    panic_run("pci-arm64", qa64, a64 + ["-m", "256", "-kernel", ak, "-initrd", ai,
              "-append", "console=ttyAMA0 vigil.action=panic"], 90, firmware=["dt"])
if "uefi" in tests:
    if not (os.path.exists(v.AAVMF_CODE) and os.path.exists(v.AAVMF_VARS)):
        result("pci-arm64-uefi: AAVMF firmware installed (qemu-efi-aarch64)", False, v.AAVMF_CODE)
    else:
        panic_run("pci-arm64-uefi", qa64, a64 + ["-m", "1024"] + v.firmware_args(tmp, "pci-arm64-uefi") +
                  ["-kernel", ak, "-initrd", ai, "-append", "console=ttyAMA0 vigil.action=panic"],
                  int(uefi_timeout), firmware=["efi", "acpi"])
sys.exit(1 if v.failures else 0)
EOF_PY
[ $? -eq 0 ] || failures=$((failures + 1))

# ---- vigil coredump-restart with pvpanic-pci -------------------------------------
if want vigil && [ -n "$X86_PCI_INITRD" ]; then
    if [ -z "${VIGIL_BIN:-}" ]; then
        (cd "$root" && cargo build -q --release -p vigil) >&2 || { fail "setup: vigil builds"; exit 1; }
        VIGIL_BIN=$root/target/release/vigil
    fi
    mkdir -p "$tmp/dumps"
    "$QEMU_X86" -M q35 -m 256 -smp 1 -accel tcg -nodefaults -display none -name pcipanic \
        -kernel "$X86_KERNEL" -initrd "$X86_PCI_INITRD" -append "console=ttyS0 panic=0 vigil.action=panic" \
        -device pvpanic-pci -action panic=pause \
        -serial "file:$tmp/vigil.serial" -qmp "unix:$tmp/vigil.qmp,server=on,wait=off" 2>"$tmp/vigil-qemu.err" &
    qemu_pids+=($!)
    "$VIGIL_BIN" --on-panic coredump-restart --dump-dir "$tmp/dumps" --log-json "$tmp/vigil.jsonl" \
        "unix:$tmp/vigil.qmp" 2>"$tmp/vigil.err" &
    watch_pids+=($!)
    count() { grep -c "$1" "$tmp/vigil.serial" 2>/dev/null || true; }
    bound_twice() { [ "$(count '^vigil-guest: bound pvpanic-pci ')" -ge 2 ] 2>/dev/null &&
                    [ "$(count '^vigil-guest: ready')" -ge 2 ] 2>/dev/null; }
    wait_for 240 bound_twice
    again=$?
    kill -TERM "${qemu_pids[-1]}" 2>/dev/null
    log "---- pci-vigil serial"; grep -a 'vigil-guest: \(bound\|ready\|action\)\|Kernel panic' "$tmp/vigil.serial" >&2
    log "---- vigil"; cat "$tmp/vigil.err" >&2
    f=$(ls "$tmp/dumps"/pcipanic-* 2>/dev/null | grep -v partial | head -n1)
    size=$([ -n "$f" ] && stat -c %s "$f" || echo 0)
    result "pci-vigil: vigil dumps the guest that panicked through pvpanic-pci (coredump-restart)" \
        "$([ -n "$f" ] && grep -q GUEST_PANICKED "$tmp/vigil.jsonl"; echo $?)"
    result "pci-vigil: the dump is an ELF core of guest-RAM size (256 MiB; $size bytes)" \
        "$([ -n "$f" ] && [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
           [ "$size" -ge $((256 << 20)) ] && [ "$size" -le $((300 << 20)) ]; echo $?)"
    result "pci-vigil: the VM is reset, boots again and Linux binds pvpanic-pci again" "$again"
fi
[ $failures -eq 0 ]
