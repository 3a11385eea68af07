#!/usr/bin/env bash
# Command-line checks of vigil's devices against the built QEMU: what a user
# or a management stack sees (help text, configuration errors, the guest's
# device tree). Prints "PASS<TAB>name" or "FAIL<TAB>name" per check; details
# go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
. "$VIGIL_ROOT/tests/lib.sh"   # pass/fail/check (the PASS/FAIL protocol), qmp

A64=$VIGIL_BUILD/qemu-system-aarch64
X86=$VIGIL_BUILD/qemu-system-x86_64
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# qemu_fails_with PATTERN ARGS...: QEMU refuses to start and says PATTERN
qemu_fails_with() {
    local pat=$1 out; shift
    out=$(timeout 30 "$@" -display none -S 2>&1 </dev/null) && { echo "QEMU started: $*"; return 1; }
    grep -qE -- "$pat" <<<"$out" || { echo "expected /$pat/, got: $out"; return 1; }
}

# qemu_starts_warning PATTERN ARGS...: QEMU starts (and quits on request), warning PATTERN
qemu_starts_warning() {
    local pat=$1 out; shift
    out=$(echo quit | timeout 30 "$@" -display none -S -monitor stdio 2>&1) || { echo "QEMU failed: $out"; return 1; }
    grep -qE -- "$pat" <<<"$out" || { echo "expected /$pat/, got: $out"; return 1; }
}

# dts ARGS...: the guest's device tree for an aarch64 virt command line
dts() {
    timeout 30 "$A64" -machine "virt,dumpdtb=$tmp/virt.dtb" "$@" -display none >&2 &&
        dtc -q -I dtb -O dts "$tmp/virt.dtb"
}

# The node of the stall detector in a dts on stdin
stall_node() { sed -n '/vcpu-stall-detector@/,/};/p'; }

help_lists_properties() {
    local out p
    out=$("$A64" -device vcpu-stall-detector,help 2>&1)
    for p in clock-frequency timeout-sec clock ppi immediate-action; do
        grep -q "^  $p=" <<<"$out" || { echo "missing $p in: $out"; return 1; }
    done
}
check "stall-detector: -device help lists its properties" "" help_lists_properties

check "stall-detector: listed by qom-list-types on aarch64" "" \
    bash -c "echo '{\"execute\":\"qmp_capabilities\"}{\"execute\":\"qom-list-types\"}{\"execute\":\"quit\"}' |
             timeout 30 '$A64' -M virt -display none -qmp stdio | grep -q '\"name\": \"vcpu-stall-detector\"'"

for bad in clock-frequency=0 clock-frequency=100 timeout-sec=0 timeout-sec=600; do
    check "stall-detector: rejects $bad naming the property" "" \
        qemu_fails_with "property '${bad%%=*}'" "$A64" -M virt -device "vcpu-stall-detector,$bad"
done
check "stall-detector: rejects clock=wall naming the property" "" \
    qemu_fails_with "property 'clock'" "$A64" -M virt -device vcpu-stall-detector,clock=wall
check "stall-detector: rejects ppi=16 naming the property" "" \
    qemu_fails_with "property 'ppi'" "$A64" -M virt -device vcpu-stall-detector,ppi=16
check "stall-detector: rejects a PPI the virt board uses (timer PPI 14)" "" \
    qemu_fails_with "property 'ppi' \(14\) is already used" "$A64" -M virt -device vcpu-stall-detector,ppi=14
# -action watchdog=inject-nmi does nothing on virt (no NMI interface there)
check "stall-detector: refuses -action watchdog=inject-nmi on virt (no NMI there)" "" \
    qemu_fails_with "inject-nmi.*no NMI" "$A64" -M virt -action watchdog=inject-nmi -device vcpu-stall-detector
# Record/replay: a countdown over host CPU time would make replay diverge
rr_file=$tmp/replay.bin
check "stall-detector: clock=vcpu-runtime refused under record/replay, naming the property" "" \
    qemu_fails_with "property 'clock'.*record/replay" "$A64" -M virt -icount shift=5,rr=record,rrfile="$rr_file" \
        -device vcpu-stall-detector,clock=vcpu-runtime
check "stall-detector: under record/replay the default clock falls back to virtual (with a warning)" "" \
    qemu_starts_warning "record/replay.*'virtual'" "$A64" -M virt -icount shift=5,rr=record,rrfile="$rr_file" \
        -device vcpu-stall-detector
check "stall-detector: a second instance is refused" "" \
    qemu_fails_with "only one vcpu-stall-detector" "$A64" -M virt -device vcpu-stall-detector -device vcpu-stall-detector

node_default() {
    # TCG's default virt GIC is v2: the flags carry the mask of both CPUs.
    local n
    n=$(dts -smp 2 -device vcpu-stall-detector | stall_node)
    echo "$n"
    grep -q 'compatible = "qemu,vcpu-stall-detector";' <<<"$n" &&
        grep -q 'reg = <0x00 0x1000>;' <<<"$n" &&
        grep -q 'clock-frequency = <0x0a>;' <<<"$n" &&
        grep -q 'timeout-sec = <0x08>;' <<<"$n" &&
        grep -q 'interrupts = <0x01 0x0f 0x301>;' <<<"$n"
}
check "stall-detector: device tree node (defaults: PPI 15, edge, 2-CPU mask)" "" node_default

node_gicv3() {
    local n
    n=$(dts -M gic-version=3 -smp 4 -device vcpu-stall-detector | stall_node)
    echo "$n"
    grep -q 'interrupts = <0x01 0x0f 0x01>;' <<<"$n"
}
check "stall-detector: device tree node on GICv3 (no CPU mask)" "" node_gicv3

node_gicv2_props() {
    local n
    n=$(dts -M gic-version=2 -smp 3 -device vcpu-stall-detector,clock-frequency=2,timeout-sec=30,ppi=8 | stall_node)
    echo "$n"
    grep -q 'clock-frequency = <0x02>;' <<<"$n" &&
        grep -q 'timeout-sec = <0x1e>;' <<<"$n" &&
        grep -q 'interrupts = <0x01 0x08 0x701>;' <<<"$n"
}
check "stall-detector: device tree node (GICv2 CPU mask, custom properties)" "" node_gicv2_props

node_no_ppi() {
    local n
    n=$(dts -device vcpu-stall-detector,ppi=-1 | stall_node)
    echo "$n"
    [ -n "$n" ] && ! grep -q interrupts <<<"$n"
}
check "stall-detector: no interrupts property with ppi=-1" "" node_no_ppi

no_device_no_node() {
    ! dts | grep -q vcpu-stall-detector
}
check "stall-detector: no node without the device" "" no_device_no_node

banks_via_monitor() {
    # What a guest's first look at the registers shows (4 CPUs: 4 banks).
    local out
    out=$(printf 'xp /16wx 0xc000000\nquit\n' |
          timeout 30 "$A64" -M virt -smp 4 -device vcpu-stall-detector -display none -monitor stdio -S 2>&1)
    echo "$out"
    [ "$(grep -cE '^0{8}0c0000[0-3]0: 0x00000000 0x00000000 0x00000000 0x00000000' <<<"$out")" = 4 ]
}
check "stall-detector: four banks read as zero after reset (HMP xp)" "" banks_via_monitor

check "stall-detector: not offered on x86_64 (arm virt only)" "" \
    qemu_fails_with "'vcpu-stall-detector' is not a valid device model name" "$X86" -M q35 -device vcpu-stall-detector

poweroff_action() {
    # A guest that stops petting (bare-metal test guest, CPU 1 after 1 pet),
    # immediate-action=on and -action watchdog=poweroff: QEMU must send
    # VCPU_STALL and WATCHDOG, then exit by itself with status 0.
    local guest=$VIGIL_CACHE/stall-guest rc
    make -s -C "$VIGIL_ROOT/tests/guest/stall-guest" O="$guest" || return 1
    timeout 60 "$A64" -M virt -cpu cortex-a57 -smp 2 -display none -nodefaults \
        -kernel "$guest/stall-guest.elf" -fw_cfg name=opt/vigil/stall-timeout,string=1 \
        -fw_cfg name=opt/vigil/stall-pets,string=1 \
        -device vcpu-stall-detector,id=stall,immediate-action=on -action watchdog=poweroff \
        -qmp "unix:$tmp/poweroff.sock,server=on,wait=off" &
    local qpid=$!
    python3 "$VIGIL_ROOT/scripts/qmp-events.py" "$tmp/poweroff.sock" --only VCPU_STALL,WATCHDOG \
        --timeout 60 > "$tmp/poweroff.events"
    wait $qpid; rc=$?
    cat "$tmp/poweroff.events"
    [ $rc = 0 ] && grep -q '"stage": "action"' "$tmp/poweroff.events" &&
        grep -q 'WATCHDOG {"action": "poweroff"}' "$tmp/poweroff.events"
}
check "stall-detector: -action watchdog=poweroff ends QEMU (exit 0) after the events" "" poweroff_action

single_threaded_tcg() {
    # -accel tcg,thread=single: both vCPUs share one host thread, so each
    # bank counts that thread's CPU time. A healthy guest (both CPUs pet,
    # budget 2 s) must get no event in 8 s; a stall must still be reported,
    # for CPU 1 only.
    local guest=$VIGIL_CACHE/stall-guest pets
    make -s -C "$VIGIL_ROOT/tests/guest/stall-guest" O="$guest" || return 1
    for pets in 0 3; do
        timeout 60 "$A64" -M virt -cpu cortex-a57 -smp 2 -accel tcg,thread=single \
            -display none -nodefaults -kernel "$guest/stall-guest.elf" \
            -fw_cfg name=opt/vigil/stall-timeout,string=2 -fw_cfg "name=opt/vigil/stall-pets,string=$pets" \
            -device vcpu-stall-detector -action watchdog=none \
            -qmp "unix:$tmp/rr$pets.sock,server=on,wait=off" &
        python3 "$VIGIL_ROOT/scripts/qmp-events.py" "$tmp/rr$pets.sock" --only VCPU_STALL \
            --until VCPU_STALL --timeout "$([ $pets = 0 ] && echo 8 || echo 30)" --quit > "$tmp/rr$pets.events"
        wait
        echo "pets=$pets:"; cat "$tmp/rr$pets.events"
    done
    ! grep -q 'QMP event' "$tmp/rr0.events" &&
        grep -q '"cpu-index": 1, .*"stage": "warning"' "$tmp/rr3.events"
}
check "stall-detector: single-threaded TCG: no false alarm, a stall still caught" "" single_threaded_tcg

# --- pvpanic ---------------------------------------------------------------

c_pvpanic_not_built() {
    # QEMU 10.2 compiles every system_ss source once into libsystem.a and
    # links into each emulator only the objects its Kconfig selects: the C
    # devices' objects must not be in the binaries, the Rust ones must.
    local x86mak=$VIGIL_BUILD/x86_64-softmmu-config-devices.mak
    local a64mak=$VIGIL_BUILD/aarch64-softmmu-config-devices.mak x86syms a64syms
    grep -q '^CONFIG_PVPANIC_ISA_RUST=y' "$x86mak" && ! grep -q '^CONFIG_PVPANIC_ISA_C=y' "$x86mak" &&
        grep -q '^CONFIG_PVPANIC_MMIO_RUST=y' "$a64mak" && ! grep -q '^CONFIG_PVPANIC_MMIO_C=y' "$a64mak" &&
        grep -q '^CONFIG_PVPANIC_PCI_RUST=y' "$x86mak" && grep -q '^CONFIG_PVPANIC_PCI_RUST=y' "$a64mak" &&
        ! grep -qE '^CONFIG_PVPANIC_(PCI_C|COMMON)=y' "$x86mak" "$a64mak" || return 1
    x86syms=$(nm -C "$X86") a64syms=$(nm -C "$A64")
    # C: pvpanic-isa.c, pvpanic-mmio.c, pvpanic-pci.c, pvpanic.c; our old AML copy
    ! grep -qE ' (pvpanic_isa_realizefn|pvpanic_isa_initfn|build_pvpanic_isa_aml|pvpanic_mmio_initfn|pvpanic_pci_realizefn|pvpanic_pci_class_init|vmstate_pvpanic_pci|pvpanic_setup_io|pvpanic_isa_rust_build_aml)$' \
        <<<"$x86syms$a64syms" &&
        grep -q ' pvpanic_isa::PvPanicIsa::realize$' <<<"$x86syms" &&
        grep -q ' pvpanic_mmio::PvPanicMmio::realize$' <<<"$a64syms" &&
        grep -q ' pvpanic_pci::PvPanicPci::realize$' <<<"$x86syms" &&
        grep -q ' pvpanic_pci::PvPanicPci::realize$' <<<"$a64syms" &&
        grep -q ' pvpanic_isa_build_aml$' <<<"$x86syms"
}
check "pvpanic: the emulators link the Rust devices, not C pvpanic-isa.c/pvpanic-mmio.c/pvpanic-pci.c" "" c_pvpanic_not_built

pvpanic_pci_vmstate() {
    # C's vmstate_pvpanic_pci (hw/misc/pvpanic-pci.c): "pvpanic-pci",
    # version 1, minimum 1, one field VMSTATE_PCI_DEVICE(dev, ...), no
    # subsection. The field must equal, size and nested description, that
    # of a C device built the same way (ne2k_pci: VMSTATE_PCI_DEVICE(dev,
    # PCINE2KState)): same sizeof(PCIDevice), same vmstate_pci_device.
    local arch bin
    for arch in x86_64 aarch64; do
        bin=$VIGIL_BUILD/qemu-system-$arch
        "$bin" -M none -dump-vmstate "$tmp/vmstate-$arch.json" || return 1
        python3 - "$tmp/vmstate-$arch.json" <<'PY' || return 1
import json, sys
d = json.load(open(sys.argv[1]))
r, c = d["pvpanic-pci"], d["ne2k_pci"]["Description"]["Fields"][0]
desc = r["Description"]
assert (r["Name"], r["version_id"], r["minimum_version_id"]) == ("pvpanic-pci", 1, 1), r
assert (desc["name"], desc["version_id"], desc["minimum_version_id"]) == ("pvpanic-pci", 1, 1), desc
assert "Subsections" not in desc, desc
assert [f["field"] for f in desc["Fields"]] == ["dev"], desc["Fields"]
assert desc["Fields"][0] == c, (desc["Fields"][0], c)
print(sys.argv[1], "pvpanic-pci: as C; dev:", c["size"], "bytes,", c["Description"]["name"],
      "version", c["Description"]["version_id"])
PY
    done
}
check "pvpanic-pci: -dump-vmstate is C's vmstate_pvpanic_pci field for field (both targets)" "" pvpanic_pci_vmstate

pvpanic_pci_help() {
    local out
    out=$("$X86" -device pvpanic-pci,help 2>&1)
    echo "$out"
    grep -q '^  events=<uint8> .*(default: 7)' <<<"$out" &&
        "$X86" -device help 2>&1 | grep -q '^name "pvpanic-pci", bus PCI$'
}
check "pvpanic-pci: -device help lists it on the PCI bus, events default 7 (as C)" "" pvpanic_pci_help

check "pvpanic: listed by qom-list-types on x86_64 (libvirt probes the type name)" "" \
    bash -c "echo '{\"execute\":\"qmp_capabilities\"}{\"execute\":\"qom-list-types\"}{\"execute\":\"quit\"}' |
             timeout 30 '$X86' -M q35 -display none -qmp stdio | grep -q '\"name\": \"pvpanic\"'"

pvpanic_help() {
    local out
    out=$("$X86" -device pvpanic,help 2>&1)
    echo "$out"
    grep -q '^  ioport=<uint16> .*(default: 1285)' <<<"$out" &&
        grep -q '^  events=<uint8> .*(default: 7)' <<<"$out"
}
check "pvpanic: -device pvpanic,help shows ioport and events with C's defaults" "" pvpanic_help

# The C devices accept any events value (and advertise it): so do ours.
check "pvpanic: -global pvpanic.events=15 starts as with C QEMU, warning about bit 0x8" "" \
    qemu_starts_warning "warning: pvpanic: property 'events' has bits 0x8" "$X86" -M q35 -global pvpanic.events=15 -device pvpanic
check "pvpanic-mmio: events=255 starts, warning about bits 0xf8" "" \
    qemu_starts_warning "warning: pvpanic-mmio: property 'events' has bits 0xf8" "$A64" -M virt -device pvpanic-mmio,events=255

pvpanic_mmio_node() {
    local n
    n=$(dts -device pvpanic-mmio | sed -n '/pvpanic@/,/};/p')
    echo "$n"
    grep -q 'compatible = "qemu,pvpanic-mmio";' <<<"$n" && grep -q 'reg = <0x00 0x02>;' <<<"$n"
}
check "pvpanic-mmio: device tree node on virt (qemu,pvpanic-mmio, 2-byte reg)" "" pvpanic_mmio_node

two_platform_devices() {
    local d
    d=$(dts -smp 2 -device vcpu-stall-detector -device pvpanic-mmio)
    grep -q 'vcpu-stall-detector@0 {' <<<"$d" && grep -q 'pvpanic@1000 {' <<<"$d"
}
check "pvpanic-mmio: shares virt's platform bus with the stall detector" "" two_platform_devices

bios_tables_pvpanic() {
    # QEMU's expected tables are made under TCG; where /dev/kvm works the
    # test prefers KVM, whose SMM support changes FACP (SMI_CMD), not the
    # DSDT under test. Hide /dev/kvm from this run, as on a host without it.
    local run=(env QTEST_QEMU_BINARY=./qemu-system-x86_64 timeout 300
               ./tests/qtest/bios-tables-test -p /x86_64/acpi/q35/pvpanic-isa)
    if [ -e /dev/kvm ] && [ "$(id -u)" = 0 ]; then
        run=(unshare -m sh -c 'mount --bind /dev/null /dev/kvm && exec "$@"' sh "${run[@]}")
    fi
    (cd "$VIGIL_BUILD" && "${run[@]}") 2>&1 | tee "$tmp/bt.log" &&
        grep -q '^ok 1 /x86_64/acpi/q35/pvpanic-isa' "$tmp/bt.log"
}
check "pvpanic: QEMU's bios-tables-test pvpanic-isa case (AML byte-identical to C's)" "" bios_tables_pvpanic
