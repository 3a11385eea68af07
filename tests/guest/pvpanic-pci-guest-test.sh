#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Real Linux guests with the Rust pvpanic-pci (TCG only), the guests of
# scripts/guest-kernels.sh; in each, Linux's own pvpanic-pci driver binds
# the device (1b36:0011) and the guest panics (sysrq c):
#   pci-x86        q35, Debian's amd64 kernel, -device pvpanic-pci (its
#                  pvpanic-pci.ko, from the same Debian package, is added to
#                  the initramfs as one more cpio archive, scripts/mkcpio.py:
#                  the check "setup: ..." reports that step)
#   pci-arm64      virt, the arm64 test kernel booted directly (device tree,
#                  pci-host-ecam-generic)
#   pci-arm64-uefi virt through AAVMF (ACPI, MCFG), as libvirt boots it
# each -> GUEST_PANICKED {action: pause}, run state guest-panicked; then
#   pci-vigil      x86 q35 + pvpanic-pci under vigil --on-panic
#                  coredump-restart: an ELF core of guest-RAM size, a reset,
#                  and the guest boots (and binds pvpanic-pci) again.
#
# Prints "PASS<TAB>name" / "FAIL<TAB>name" per check (details on stderr); a
# check whose setup failed prints FAIL (not run), it does not disappear.
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
# files: the module and /lib/modules/order with it last). The archive is
# written by scripts/mkcpio.py (no cpio(1)).
x86_pci_initrd() {
    local dir=$VIGIL_CACHE/guests/x86_64-pvpanic-pci x86=$VIGIL_CACHE/guests/x86_64 pkg kver dl f
    read -r pkg kver < "$x86/kernel-package" || { log "no $x86/kernel-package"; return 1; }
    mkdir -p "$dir" || return 1
    if [ ! -s "$dir/$kver/pvpanic-pci.ko" ]; then
        dl=$(mktemp -d)
        (cd "$dl" && apt-get -o APT::Sandbox::User=root -q download "$pkg" >&2) ||
            { log "apt-get download $pkg failed"; rm -rf "$dl"; return 1; }
        dpkg-deb --fsys-tarfile "$dl/$pkg"_*.deb |
            tar -C "$dl" -x --wildcards '*/pvpanic/pvpanic-pci.ko*' ||
            { log "no pvpanic-pci.ko in $pkg"; rm -rf "$dl"; return 1; }
        f=$(find "$dl" -name 'pvpanic-pci.ko*' | head -n1)
        mkdir -p "$dir/$kver"
        if ! case $f in
            *.xz) xz -dc "$f" ;; *.zst) zstd -qdc "$f" ;; *.gz) gzip -dc "$f" ;; *) cat "$f" ;;
        esac > "$dir/$kver/pvpanic-pci.ko.tmp"; then
            log "cannot decompress $f (xz-utils, zstd: scripts/deps.sh)"
            rm -rf "$dl" "$dir/$kver/pvpanic-pci.ko.tmp"
            return 1
        fi
        mv "$dir/$kver/pvpanic-pci.ko.tmp" "$dir/$kver/pvpanic-pci.ko" || return 1
        rm -rf "$dl"
    fi
    { cat "$x86/modules/order" && echo pvpanic-pci.ko; } > "$tmp/x86extra.order" || return 1
    printf '%s\n' "dir /lib 755" "dir /lib/modules 755" \
        "file /lib/modules/order $tmp/x86extra.order 644" \
        "file /lib/modules/pvpanic-pci.ko $dir/$kver/pvpanic-pci.ko 644" > "$tmp/x86extra.spec" &&
        python3 "$root/scripts/mkcpio.py" "$tmp/x86extra.spec" "$tmp/x86extra.cpio.gz" &&
        cat "$X86_INITRD" "$tmp/x86extra.cpio.gz" > "$tmp/x86-pci-initrd.gz"
}
# The x86 checks (pci-x86, pci-vigil) need that initramfs: without it they
# fail as not run (X86_MISSING says why).
X86_PCI_INITRD=
X86_MISSING=
if want x86 || want vigil; then
    if x86_pci_initrd; then
        X86_PCI_INITRD=$tmp/x86-pci-initrd.gz
        pass "setup: Debian's pvpanic-pci.ko added to the x86 initramfs"
    else
        fail "setup: Debian's pvpanic-pci.ko added to the x86 initramfs"
        X86_MISSING="Debian's pvpanic-pci.ko could not be added to the x86 initramfs (setup)"
    fi
fi

# ---- pvpanic-pci guests panicking ------------------------------------------------
VIGIL_GUEST_DIR=$here python3 - "$QEMU_X86" "$QEMU_A64" "$tmp" "$X86_KERNEL" "$X86_PCI_INITRD" \
    "$ARM64_KERNEL" "$ARM64_INITRD" "${UEFI_BOOT_TIMEOUT:-240}" "$TESTS" "$X86_MISSING" <<'EOF_PY'
import os, re, sys, time
sys.path.insert(0, os.environ["VIGIL_GUEST_DIR"])
import vigilvm as v
from vigilvm import result, log

qx86, qa64, tmp, xk, xi, ak, ai, uefi_timeout, tests, x86_missing = sys.argv[1:11]
tests = tests.split()

# panic_run: the checks of one guest; each is reported, passed or failed, also
# when the guest cannot run (MISSING says why) or stops early (v.planned).
def panic_run(name, qemu, args, boot_timeout, driver_file=None, firmware=None, missing=None):
    c_boot = "%s: the guest boots to /init" % name
    c_fw = "%s: Linux runs on %s" % (name, " + ".join(firmware or []))
    c_ins = "%s: insmod %s" % (name, driver_file)
    c_bind = "%s: Linux's pvpanic-pci driver binds the device (1b36:0011)" % name
    c_panic = "%s: sysrq c -> GUEST_PANICKED {action: pause}" % name
    c_status = "%s: query-status reports guest-panicked" % name
    checks = [c_boot] + ([c_fw] if firmware else []) + ([c_ins] if driver_file else []) + \
        [c_bind, c_panic, c_status]
    with v.planned(checks, why=missing) as plan:
        if missing:
            return
        vm = v.VM(qemu, name, tmp, args + ["-device", "pvpanic-pci,id=pvp", "-action", "panic=pause"])
        try:
            ready = vm.wait_serial(r"^vigil-guest: ready", boot_timeout)
            result(c_boot, ready is not None,
                   "ready %.1f s after QEMU started" % (ready[0] - vm.t_start) if ready
                   else "no ready marker in %d s" % boot_timeout)
            if not ready:
                plan.why = "the guest did not boot"
                return vm.dump_serial()
            if firmware:
                fw = [l.split()[-1] for _, l in vm.lines(r"^vigil-guest: firmware ")]
                result(c_fw, fw == firmware, " ".join(fw))
            if driver_file:
                ins = [l for _, l in vm.lines(r"^vigil-guest: insmod ")]
                result(c_ins, "vigil-guest: insmod %s: ok" % driver_file in ins, "; ".join(ins))
            b = [l for _, l in vm.lines(r"^vigil-guest: bound pvpanic-pci ")]
            # capability: what the device advertises (7) that the driver knows
            # (Linux 6.1: panicked, crash loaded = 3; 6.10 and later add shutdown)
            result(c_bind, len(b) == 1 and re.search(r" capability=(3|7)( |$)", b[0]) is not None,
                   "; ".join(b) or "not bound; " + "; ".join(l for _, l in vm.lines(r"dmesg")))
            act = vm.wait_serial(r"^vigil-guest: action=panic", 10)
            ev = vm.wait_event(lambda e: e[1] == "GUEST_PANICKED", 60)
            result(c_panic, bool(ev) and ev[2].get("action") == "pause",
                   "%s, %.2f s after 'action=panic'" % (ev[2], ev[0] - act[0]) if ev and act
                   else "no GUEST_PANICKED within 60 s")
            st = None
            for _ in range(50):
                st = vm.status()
                if st == "guest-panicked":
                    break
                vm.sleep(0.1)
            result(c_status, st == "guest-panicked", str(st))
            if v.failures:
                vm.dump_serial()
        finally:
            vm.stop()

a64 = ["-M", "virt", "-cpu", "cortex-a57", "-smp", "2"]
if "x86" in tests:
    panic_run("pci-x86", qx86, ["-M", "q35", "-m", "512", "-smp", "1", "-kernel", xk,
              "-initrd", xi, "-append", "console=ttyS0 panic=0 vigil.action=panic"], 120,
              "pvpanic-pci.ko", missing=None if xi else (x86_missing or "no x86 initramfs"))
if "arm64" in tests:
    panic_run("pci-arm64", qa64, a64 + ["-m", "256", "-kernel", ak, "-initrd", ai,
              "-append", "console=ttyAMA0 vigil.action=panic"], 90, firmware=["dt"])
if "uefi" in tests:
    aavmf = os.path.exists(v.AAVMF_CODE) and os.path.exists(v.AAVMF_VARS)
    panic_run("pci-arm64-uefi", qa64,
              a64 + ["-m", "1024"] + v.firmware_args(tmp, "pci-arm64-uefi") +
              ["-kernel", ak, "-initrd", ai, "-append", "console=ttyAMA0 vigil.action=panic"]
              if aavmf else None,
              int(uefi_timeout), firmware=["efi", "acpi"],
              missing=None if aavmf else "no AAVMF firmware (%s: Debian package qemu-efi-aarch64, "
                                         "scripts/deps.sh)" % v.AAVMF_CODE)
sys.exit(1 if v.failures else 0)
EOF_PY
[ $? -eq 0 ] || failures=$((failures + 1))

# ---- vigil coredump-restart with pvpanic-pci -------------------------------------
vigil_checks=("pci-vigil: vigil dumps the guest that panicked through pvpanic-pci (coredump-restart)"
              "pci-vigil: the dump is an ELF core of guest-RAM size (256 MiB)"
              "pci-vigil: the VM is reset, boots again and Linux binds pvpanic-pci again")
if want vigil && [ -z "$X86_PCI_INITRD" ]; then
    not_run "$X86_MISSING" "${vigil_checks[@]}"
elif want vigil; then
    if [ -z "${VIGIL_BIN:-}" ]; then
        (cd "$root" && cargo build -q --release -p vigil) >&2 || { fail "setup: vigil builds"; exit 1; }
        VIGIL_BIN=$root/target/release/vigil
    fi
    mkdir -p "$tmp/dumps"
    "$QEMU_X86" -M q35 -m 256 -smp 1 -accel tcg -nodefaults -display none -name pcipanic \
        -kernel "$X86_KERNEL" -initrd "$X86_PCI_INITRD" -append "console=ttyS0 panic=0 vigil.action=panic" \
        -device pvpanic-pci -action panic=pause \
        -serial "file:$tmp/vigil.serial" -qmp "unix:$tmp/pcipanic.qmp,server=on,wait=off" 2>"$tmp/vigil-qemu.err" &
    qemu_pids+=($!)
    "$VIGIL_BIN" --on-panic coredump-restart --dump-dir "$tmp/dumps" --log-json "$tmp/vigil.jsonl" \
        "unix:$tmp/pcipanic.qmp" 2>"$tmp/vigil.err" &
    watch_pids+=($!)
    serial_count() { grep -c "$1" "$tmp/vigil.serial" 2>/dev/null || true; }
    bound_twice() { [ "$(serial_count '^vigil-guest: bound pvpanic-pci ')" -ge 2 ] 2>/dev/null &&
                    [ "$(serial_count '^vigil-guest: ready')" -ge 2 ] 2>/dev/null; }
    wait_for 240 bound_twice
    again=$?
    kill -TERM "${qemu_pids[-1]}" 2>/dev/null
    log "---- pci-vigil serial"; grep -a 'vigil-guest: \(bound\|ready\|action\)\|Kernel panic' "$tmp/vigil.serial" >&2
    log "---- vigil"; cat "$tmp/vigil.err" >&2
    f=$(ls "$tmp/dumps"/pcipanic-* 2>/dev/null | grep -v partial | head -n1)
    size=$([ -n "$f" ] && stat -c %s "$f" || echo 0)
    result "${vigil_checks[0]}" "$([ -n "$f" ] && grep -q GUEST_PANICKED "$tmp/vigil.jsonl"; echo $?)"
    result "${vigil_checks[1]}" \
        "$([ -n "$f" ] && [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
           [ "$size" -ge $((256 << 20)) ] && [ "$size" -le $((300 << 20)) ]; echo $?)" "$size bytes"
    result "${vigil_checks[2]}" "$again"
fi
[ $failures -eq 0 ]
