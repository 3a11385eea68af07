#!/usr/bin/env bash
# Prepare real Linux guests for the guest tests (tests/guest/pvpanic-guest-test.sh):
#
#   x86_64  Debian bookworm's amd64 kernel binary package (vmlinuz + the pvpanic
#           modules, no install) and a busybox-static initramfs.
#   arm64   a small kernel cross-built from Debian bookworm's `linux` source package
#           (upstream orig tarball only; Debian's arm64 kernels lack PVPANIC), with
#           PVPANIC_MMIO and LKDTM built in, VCPU_STALL_DETECTOR as a module, EFI (stub),
#           ACPI (and PCI: without it ACPICA cannot load virt's DSDT), KEXEC_FILE,
#           CRASH_DUMP and PROC_VMCORE, and a busybox-static (arm64) initramfs.
#           If patches/linux/*.patch exist, they are applied to a copy of
#           drivers/misc/vcpu_stall_detector.c, built as an out-of-tree module against
#           the same kernel build and shipped next to the upstream one.
#           A second initramfs (ARM64_KDUMP_INITRD) holds the kernel Image and the first
#           initramfs under /boot, for kexec and kdump.
#
# Everything lives under $VIGIL_CACHE/guests/ and is reused: the packages are only
# downloaded when missing and the arm64 kernel is only rebuilt when its configuration
# (the option list below) changes, and the patched stall driver only when the kernel or
# patches/linux/*.patch change. The initramfs images are regenerated every run (a
# second or so) so that changes to /init take effect.
#
# Downloads go through apt: the machine's own configuration for the amd64 packages
# (`apt-get download`), and a private apt configuration (nothing under /etc changes;
# same approach as scripts/fetch-qemu.sh) with a deb + deb-src entry for suite bookworm,
# architecture arm64, derived from the machine's Debian entry, for the kernel source and
# busybox-static:arm64. apt checks every file against the hashes of the signed indexes.
#
# The guests' /init reads `vigil.action=` from the kernel command line:
#   panic (default)  echo c > /proc/sysrq-trigger
#   stall (arm64)    wait 10 s, print "vigil-guest: stalling cpu1", then LKDTM HARDLOCKUP
#                    on CPU 1 (spins with interrupts off)
#   idle             sleep forever
#   kdump (arm64)    load the crash kernel (/boot, kexec_file_load), then sysrq c on CPU 1
#   vmcore (arm64)   (the crash kernel) read /proc/vmcore for vigil.dumpsecs= seconds
#                    (default 30), print "vigil-guest: dump done", then LKDTM HARDLOCKUP
#   kexec (arm64)    kexec reboot into /boot/Image with vigil.action=idle vigil.kexeced=1
#   stall0 (arm64)   like stall, on CPU 0
# and `vigil.stalldrv=upstream|patched|none` (default upstream): which vcpu_stall_detector
# module /init loads ("vigil-guest: stall driver NAME loaded").
# Serial markers: "vigil-guest: ready", "vigil-guest: action=<action>", plus evidence
# lines about the bound drivers ("vigil-guest: bound ...").
#
# stdout: the artifacts, as NAME=PATH lines (X86_KERNEL, X86_INITRD, ARM64_KERNEL,
# ARM64_INITRD, ARM64_KDUMP_INITRD) and ARM64_STALL_PATCHED=yes|no; progress and timings go to stderr.
set -euo pipefail
. "$(dirname "$0")/common.sh"

G=$VIGIL_CACHE/guests
DL=$G/downloads
APT_DIR=$G/apt
JOBS=${GUEST_KERNEL_JOBS:-2}
mkdir -p "$DL"

T_ALL=$(now)
step() { STEP_NAME=$1; STEP_T0=$(now); log "$1 ..."; }
done_step() { log "$STEP_NAME: done in $(elapsed "$STEP_T0")${1:+ ($1)}"; }

# ---- private apt configuration (bookworm, arm64 + sources) ------------------------

APT_OPTS=(-o Dir::Etc::SourceList=/dev/null
          -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d"
          -o Dir::State::Lists="$APT_DIR/lists"
          -o Dir::Cache="$APT_DIR/cache"
          -o APT::Sandbox::User=root
          -o APT::Architectures::=arm64)
APT_READY=
private_apt() { # set up and update the private configuration once per run
    [ -n "$APT_READY" ] && return 0
    local uri
    uri=$(mirror_uri | head -n1)
    [ -n "$uri" ] || die "no Debian apt entry found on this machine"
    mkdir -p "$APT_DIR/sources.list.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    cat > "$APT_DIR/sources.list.d/vigil-guests.sources" <<SRC
Types: deb deb-src
URIs: $uri
Suites: bookworm
Components: main
Architectures: arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    local t0; t0=$(now)
    apt-get "${APT_OPTS[@]}" -qq update >&2 || die "apt-get update (private bookworm configuration) failed"
    log "private apt lists (bookworm, arm64 + deb-src, $uri) updated in $(elapsed "$t0")"
    APT_READY=1
}

# ---- initramfs (cpio newc, gzip), written without root or cpio(1) ------------------
# mkcpio SPEC OUT: SPEC lines are
#   dir PATH MODE | file PATH SRC MODE | slink PATH TARGET | nod PATH MODE c|b MAJ MIN
mkcpio() {
    python3 - "$1" "$2" <<'PY'
import gzip, os, sys
spec, out = sys.argv[1:3]
ino = [721]
def entry(f, name, mode, data=b"", rmaj=0, rmin=0, nlink=1):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino[0], mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name_b), 0))
    f.write(hdr.encode() + name_b)
    f.write(b"\0" * (-(110 + len(name_b)) % 4))
    f.write(data)
    f.write(b"\0" * (-len(data) % 4))
with open(out + ".tmp", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    for line in open(spec):
        w = line.split()
        if not w or w[0].startswith("#"):
            continue
        path = w[1].lstrip("/")
        if w[0] == "dir":
            entry(f, path, 0o040000 | int(w[2], 8), nlink=2)
        elif w[0] == "file":
            entry(f, path, 0o100000 | int(w[3], 8), open(w[2], "rb").read())
        elif w[0] == "slink":
            entry(f, path, 0o120777, w[2].encode())
        elif w[0] == "nod":
            kind = 0o020000 if w[3] == "c" else 0o060000
            entry(f, path, kind | int(w[2], 8), rmaj=int(w[4]), rmin=int(w[5]))
        else:
            sys.exit("mkcpio: bad line: " + line)
    entry(f, "TRAILER!!!", 0, nlink=1)
os.replace(out + ".tmp", out)
PY
}

# The guest's /init (busybox sh). $1 = arch (x86_64 | arm64).
write_init() {
    cat <<'INIT'
#!/bin/sh
# vigil guest /init (generated by scripts/guest-kernels.sh)
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
exec </dev/console >/dev/console 2>&1
say() { echo "vigil-guest: $*"; }
action=panic stalldrv=upstream dumpsecs=30
for w in $(cat /proc/cmdline); do
    case $w in
    vigil.action=*) action=${w#vigil.action=} ;;
    vigil.stalldrv=*) stalldrv=${w#vigil.stalldrv=} ;;
    vigil.dumpsecs=*) dumpsecs=${w#vigil.dumpsecs=} ;;
    esac
done
if [ -f /lib/modules/order ]; then
    for m in $(cat /lib/modules/order); do
        if insmod "/lib/modules/$m"; then say "insmod $m: ok"; else say "insmod $m: FAILED"; fi
    done
fi
if [ -d /lib/modules/stall ]; then
    if [ "$stalldrv" = none ]; then
        say "stall driver none"
    elif [ -f "/lib/modules/stall/$stalldrv/vcpu_stall_detector.ko" ] &&
        insmod "/lib/modules/stall/$stalldrv/vcpu_stall_detector.ko"; then
        say "stall driver $stalldrv loaded"
    else
        say "stall driver $stalldrv FAILED"
    fi
fi
[ -d /sys/firmware/efi ] && say "firmware efi"
[ -d /sys/firmware/acpi/tables ] && say "firmware acpi"
[ -e /proc/device-tree/compatible ] && say "firmware dt"
for d in /sys/bus/acpi/devices/QEMU0001:* /sys/bus/acpi/devices/PRP0001:*; do
    [ -e "$d" ] && say "acpi device ${d##*/}"
done
for d in pvpanic-mmio pvpanic-pci vcpu_stall_detector; do
    [ -d "/sys/bus/platform/drivers/$d" ] || [ -d "/sys/bus/pci/drivers/$d" ] || continue
    for dev in /sys/bus/platform/drivers/$d/* /sys/bus/pci/drivers/$d/*; do
        [ -L "$dev" ] && [ "${dev##*/}" != module ] || continue
        extra=
        [ -r "$dev/events" ] && extra="$extra events=$(cat "$dev/events")"
        [ -r "$dev/capability" ] && extra="$extra capability=$(cat "$dev/capability")"
        say "bound $d ${dev##*/}$extra"
    done
done
dmesg | grep -i -e pvpanic -e stall_detector -e vcpu_stall | sed 's/^/vigil-guest: dmesg: /'
say "cpus online $(cat /sys/devices/system/cpu/online)"
say ready
say "action=$action"
case $action in
panic)
    sleep 1
    echo c > /proc/sysrq-trigger
    ;;
stall|stall0)
    sleep 10
    c=1; [ $action = stall0 ] && c=0
    say "stalling cpu$c"
    taskset -c $c sh -c 'echo HARDLOCKUP > /sys/kernel/debug/provoke-crash/DIRECT'
    say "HARDLOCKUP returned (unexpected)"
    ;;
kdump)
    if kexec-load -p /boot/Image /boot/initrd.gz \
        "console=ttyAMA0 nr_cpus=1 reset_devices vigil.action=vmcore vigil.stalldrv=$stalldrv vigil.dumpsecs=$dumpsecs"; then
        say "crash kernel loaded"
        sleep 2
        say "panic on cpu1"
        taskset -c 1 sh -c 'echo c > /proc/sysrq-trigger'
    fi
    say "kdump: no panic (unexpected)"
    ;;
vmcore)
    if [ -r /proc/vmcore ]; then
        size=$(($(stat -c %s /proc/vmcore) / 1048576))
        say "crash kernel up, vmcore $size MiB"
        # 16 MiB at a time, round and round, until dumpsecs have passed
        end=$(($(cut -d. -f1 /proc/uptime) + dumpsecs)) n=0 off=0 mib=0
        while [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do
            n=$((n + 1))
            dd if=/proc/vmcore of=/dev/null bs=1M count=16 skip=$off 2>/dev/null ||
                say "reading vmcore FAILED"
            off=$((off + 16)) mib=$((mib + 16))
            [ $off -lt $size ] || off=0
            say "vmcore chunk $n ($mib MiB) at $(cut -d' ' -f1 /proc/uptime)"
        done
        say "dump done ($mib MiB read in $dumpsecs s)"
        sleep 1
        say "stalling cpu0"
        echo HARDLOCKUP > /sys/kernel/debug/provoke-crash/DIRECT
    else
        say "no /proc/vmcore"
    fi
    ;;
kexec)
    sleep 2
    say "kexec reboot"
    kexec-load -e /boot/Image /boot/initrd.gz \
        "console=ttyAMA0 vigil.action=idle vigil.kexeced=1 vigil.stalldrv=$stalldrv"
    say "kexec reboot FAILED"
    ;;
esac
while :; do sleep 3600; done
INIT
}

# build_initrd ARCH BUSYBOX_BINARY OUT [MODULE_DIR_WITH_ORDER [EXTRA_SPEC_FILE]]
build_initrd() {
    local arch=$1 bb=$2 out=$3 mods=${4:-} extra=${5:-} work spec m
    work=$(mktemp -d)
    write_init "$arch" > "$work/init"
    spec=$work/spec
    {
        echo "dir /bin 755"; echo "dir /dev 755"; echo "dir /proc 755"; echo "dir /sys 755"
        echo "dir /tmp 1777"; echo "dir /lib 755"; echo "dir /lib/modules 755"
        echo "nod /dev/console 600 c 5 1"; echo "nod /dev/null 666 c 1 3"
        echo "file /bin/busybox $bb 755"
        echo "slink /bin/sh busybox"
        echo "file /init $work/init 755"
        if [ -n "$mods" ]; then
            echo "file /lib/modules/order $mods/order 644"
            for m in $(cat "$mods/order"); do echo "file /lib/modules/$m $mods/$m 644"; done
        fi
        [ -z "$extra" ] || cat "$extra"
    } > "$spec"
    mkcpio "$spec" "$out"
    rm -rf "$work"
}

# add_module MODDIR NAME OUT: copies module NAME (uncompressed) and, first, its
# dependencies into OUT, appending their file names to OUT/order in load order.
add_module() {
    local moddir=$1 name=$2 out=$3 f base deps d
    f=$(find "$moddir/kernel" \( -name "$name.ko*" -o -name "${name//-/_}.ko*" -o -name "${name//_/-}.ko*" \) | head -n1)
    [ -n "$f" ] || die "module $name not found under $moddir"
    base=$(basename "$f"); base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
    grep -qxF "$base" "$out/order" 2>/dev/null && return 0
    case $f in
        *.xz) xz -dc "$f" ;; *.zst) zstd -qdc "$f" ;; *.gz) gzip -dc "$f" ;; *) cat "$f" ;;
    esac > "$out/$base.tmp"
    deps=$(tr '\0' '\n' < "$out/$base.tmp" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do add_module "$moddir" "$d" "$out"; done
    mv "$out/$base.tmp" "$out/$base"
    echo "$base" >> "$out/order"
}

# ---- x86_64 -------------------------------------------------------------------------
X86=$G/x86_64
prepare_x86() {
    mkdir -p "$X86"
    if [ ! -s "$X86/vmlinuz" ] || [ ! -s "$X86/modules/order" ]; then
        step "x86_64: Debian kernel binary package"
        local tmp deb pkg cfg moddir kver
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get -o APT::Sandbox::User=root -q download linux-image-amd64 >&2) || die "apt-get download linux-image-amd64 failed"
        pkg=$(dpkg-deb -f "$tmp"/linux-image-amd64_*.deb Depends | tr ',|' '\n\n' | sed 's/(.*//; s/ //g' |
              grep -m1 '^linux-image-6\.1.*-amd64$') || die "no linux-image-6.1.*-amd64 dependency"
        (cd "$tmp" && apt-get -o APT::Sandbox::User=root -q download "$pkg" >&2) || die "apt-get download $pkg failed"
        deb=$(ls "$tmp/$pkg"_*.deb)
        log "x86_64: $(basename "$deb")"
        rm -rf "$X86/pkg"
        dpkg-deb -x "$deb" "$X86/pkg"
        cfg=$(ls "$X86"/pkg/boot/config-*)
        kver=${cfg##*/config-}
        log "x86_64: kernel $kver: $(grep -E '^CONFIG_PVPANIC' "$cfg" | tr '\n' ' ')"
        grep -q '^CONFIG_PVPANIC_MMIO=[ym]' "$cfg" || die "$pkg: no CONFIG_PVPANIC_MMIO"
        cp "$X86/pkg/boot/vmlinuz-$kver" "$X86/vmlinuz.tmp"
        # Modules (and their dependencies, from modules.dep) that bind the ISA/ACPI
        # pvpanic device QEMU0001; decompressed, for busybox insmod.
        moddir=$X86/pkg/lib/modules/$kver
        rm -rf "$X86/modules"; mkdir -p "$X86/modules"
        : > "$X86/modules/order"
        if grep -q '^CONFIG_PVPANIC_MMIO=m' "$cfg"; then
            # The package has no modules.dep (depmod runs at install time): the
            # dependencies come from each module's .modinfo "depends=" string.
            add_module "$moddir" pvpanic-mmio "$X86/modules"
        fi
        log "x86_64: modules to load: $(tr '\n' ' ' < "$X86/modules/order")"
        echo "$pkg $kver" > "$X86/kernel-package"
        mv "$X86/vmlinuz.tmp" "$X86/vmlinuz"
        rm -rf "$X86/pkg/lib/modules/$kver/kernel" "$tmp"   # keep config, System.map, modules.*
        done_step "$pkg"
    else
        log "x86_64: kernel cached ($(cat "$X86/kernel-package" 2>/dev/null))"
    fi
    if [ ! -x "$X86/busybox" ]; then
        step "x86_64: busybox-static"
        local tmp; tmp=$(mktemp -d)
        (cd "$tmp" && apt-get -o APT::Sandbox::User=root -q download busybox-static >&2) || die "apt-get download busybox-static failed"
        dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
        cp "$tmp/x/bin/busybox" "$X86/busybox"
        rm -rf "$tmp"
        done_step
    fi
    step "x86_64: initramfs"
    build_initrd x86_64 "$X86/busybox" "$X86/initrd.gz" "$X86/modules"
    done_step "$(stat -c %s "$X86/initrd.gz") bytes"
}

# ---- arm64 --------------------------------------------------------------------------
A64=$G/arm64
# The kernel configuration on top of `make ARCH=arm64 allnoconfig` (scripts/config
# syntax: -e SYM, --set-val SYM VAL). Every line is checked after olddefconfig.
ARM64_CONFIG='
-e PRINTK
-e PRINTK_TIME
-e BUG
-e MULTIUSER
-e FUTEX
-e TTY
-e SERIAL_AMBA_PL011
-e SERIAL_AMBA_PL011_CONSOLE
-e OF
-e ARM_GIC
-e ARM_GIC_V3
-e ARM64_PSEUDO_NMI
-e ARM_ARCH_TIMER
-e ARM_PSCI_FW
-e SMP
--set-val NR_CPUS 4
-e HIGH_RES_TIMERS
-e BLK_DEV_INITRD
-e RD_GZIP
-e BINFMT_ELF
-e BINFMT_SCRIPT
-e PROC_FS
-e SYSFS
-e DEVTMPFS
-e MAGIC_SYSRQ
-e DEBUG_KERNEL
-e DEBUG_FS
-e DEBUG_FS_ALLOW_ALL
-e RUNTIME_TESTING_MENU
-e LKDTM
-e PVPANIC
-e PVPANIC_MMIO
-e MODULES
-m VCPU_STALL_DETECTOR
-e EFI
-e EFI_STUB
-e ACPI
-e PCI
-e PCI_HOST_GENERIC
-e PVPANIC_PCI
-e HOTPLUG_CPU
-e KEXEC_FILE
-e CRASH_DUMP
-e PROC_VMCORE
--set-val PANIC_TIMEOUT 0
'

prepare_arm64() {
    mkdir -p "$A64"
    local hash
    local kpatches=() kp
    for kp in "$VIGIL_ROOT"/patches/linux/kernel/*.patch; do [ -f "$kp" ] && kpatches+=("$kp"); done
    hash=$( { echo "$ARM64_CONFIG"; echo "cross=aarch64-linux-gnu-"; echo "targets=Image modules"
              [ ${#kpatches[@]} -eq 0 ] || cat "${kpatches[@]}"; } | sha256sum | cut -c1-16)
    if [ -s "$A64/Image" ] && [ "$(cat "$A64/Image.confighash" 2>/dev/null)" = "$hash" ]; then
        log "arm64: kernel cached ($(cat "$A64/kernel-version" 2>/dev/null), config $hash)"
    else
        step "arm64: build tools"
        local need=() t
        for t in aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu make:make flex:flex bison:bison bc:bc; do
            command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
        done
        [ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
        [ -f /usr/include/libelf.h ] || need+=(libelf-dev)
        if [ ${#need[@]} -gt 0 ]; then
            log "arm64: apt-get install ${need[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 || die "could not install ${need[*]}"
        fi
        done_step

        step "arm64: Debian linux source package (bookworm)"
        private_apt
        local ver up orig src
        ver=$(apt-cache "${APT_OPTS[@]}" showsrc linux | awk '/^Package: / { p = ($2 == "linux") } p && /^Version:/ { print $2 }' | sort -V | tail -n1)
        [ -n "$ver" ] || die "no linux source package in bookworm"
        up=${ver%-*}
        # apt skips files already there whose hashes match the signed Sources index.
        (cd "$DL" && apt-get "${APT_OPTS[@]}" -q source --download-only "linux=$ver" >&2) ||
            die "apt-get source --download-only linux=$ver failed"
        orig=$DL/linux_$up.orig.tar.xz
        [ -f "$orig" ] || die "missing $orig"
        done_step "linux $ver"

        src=$A64/linux-$up
        if [ ! -f "$src/Makefile" ]; then
            step "arm64: unpack the upstream tarball"
            rm -rf "$src" "$src.tmp"; mkdir -p "$src.tmp"
            tar -xJf "$orig" -C "$src.tmp" --strip-components=1
            mv "$src.tmp" "$src"
            done_step
        fi
        # Kernel-side patches (patches/linux/kernel/, e.g. exports the patched
        # stall driver module needs), applied in place; a changed set is
        # reverted first, so only the files they touch are rebuilt.
        local st=$src/.vigil-kernel-patches p
        mkdir -p "$st"
        if ! diff -q <(cat "$st"/*.patch 2>/dev/null) <(cat "${kpatches[@]}" /dev/null) >/dev/null; then
            for p in $(ls -r "$st"/*.patch 2>/dev/null); do
                patch -s -R -p1 -d "$src" < "$p" >&2 || die "cannot revert $(basename "$p")"
                rm -f "$p"
            done
            for p in "${kpatches[@]}"; do
                log "arm64: kernel patch $(basename "$p")"
                patch -s -p1 -d "$src" < "$p" >&2 || die "$(basename "$p") does not apply to the kernel"
                cp "$p" "$st/"
            done
        fi

        step "arm64: configure (allnoconfig + $(echo "$ARM64_CONFIG" | grep -c .) options)"
        local obj=$A64/build-$up kmake line sym val got bad=0
        mkdir -p "$obj"
        kmake=(make -C "$src" O="$obj" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- -s)
        "${kmake[@]}" allnoconfig >&2
        local cfgargs
        read -r -a cfgargs <<<"$(tr '\n' ' ' <<<"$ARM64_CONFIG")"
        "$src/scripts/config" --file "$obj/.config" "${cfgargs[@]}"
        "${kmake[@]}" olddefconfig >&2
        while read -r line; do
            [ -n "$line" ] || continue
            set -- $line
            case $1 in -e) sym=$2 val=y ;; -m) sym=$2 val=m ;; *) sym=$2 val=$3 ;; esac
            got=$(grep -E "^CONFIG_$sym=" "$obj/.config" | cut -d= -f2-)
            [ "$got" = "$val" ] || { log "arm64: CONFIG_$sym is '${got:-unset}', wanted $val"; bad=1; }
        done <<<"$ARM64_CONFIG"
        [ $bad -eq 0 ] || die "arm64 kernel configuration incomplete"
        done_step

        step "arm64: build Image and modules (-j$JOBS)"
        "${kmake[@]}" -j"$JOBS" Image modules >&2 || die "arm64 kernel build failed"
        mkdir -p "$A64/stall/upstream"
        cp "$obj/drivers/misc/vcpu_stall_detector.ko" "$A64/stall/upstream/"
        echo "$obj" > "$A64/kernel-obj"; echo "$src" > "$A64/kernel-src"
        cp "$obj/arch/arm64/boot/Image" "$A64/Image.tmp"
        cp "$obj/.config" "$A64/config"
        echo "linux $ver ($up)" > "$A64/kernel-version"
        mv "$A64/Image.tmp" "$A64/Image"
        echo "$hash" > "$A64/Image.confighash"
        done_step "$(stat -c %s "$A64/Image") bytes"
        echo "$STEP_NAME: $(elapsed "$STEP_T0")" > "$A64/build-time"
    fi
    if [ ! -x "$A64/busybox" ]; then
        step "arm64: busybox-static:arm64"
        private_apt
        local tmp; tmp=$(mktemp -d)
        (cd "$tmp" && apt-get "${APT_OPTS[@]}" -q download busybox-static:arm64 >&2) ||
            die "apt-get download busybox-static:arm64 failed"
        dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
        cp "$tmp/x/bin/busybox" "$A64/busybox"
        rm -rf "$tmp"
        done_step
    fi
    build_stall_patched
    step "arm64: kexec-load"
    aarch64-linux-gnu-gcc -static -nostdlib -ffreestanding -fno-stack-protector -O2 -Wall \
        -o "$A64/kexec-load" "$VIGIL_ROOT/tests/guest/kexec-load/kexec-load.c" >&2 || die "kexec-load build failed"
    done_step
    step "arm64: initramfs"
    local extra=$A64/initrd.extra d
    {
        echo "file /bin/kexec-load $A64/kexec-load 755"
        echo "dir /lib/modules/stall 755"
        for d in upstream patched; do
            [ -f "$A64/stall/$d/vcpu_stall_detector.ko" ] || continue
            echo "dir /lib/modules/stall/$d 755"
            echo "file /lib/modules/stall/$d/vcpu_stall_detector.ko $A64/stall/$d/vcpu_stall_detector.ko 644"
        done
    } > "$extra"
    build_initrd arm64 "$A64/busybox" "$A64/initrd.gz" "" "$extra"
    done_step "$(stat -c %s "$A64/initrd.gz") bytes"
    step "arm64: kdump initramfs (+ /boot/Image, /boot/initrd.gz)"
    { cat "$extra"; echo "dir /boot 755"; echo "file /boot/Image $A64/Image 644"
      echo "file /boot/initrd.gz $A64/initrd.gz 644"; } > "$extra.kdump"
    build_initrd arm64 "$A64/busybox" "$A64/initrd-kdump.gz" "" "$extra.kdump"
    done_step "$(stat -c %s "$A64/initrd-kdump.gz") bytes"
}

# The patched stall driver: patches/linux/*.patch applied to a copy of the kernel's
# drivers/misc/vcpu_stall_detector.c, built out of tree (M=) against the kernel build
# above. Rebuilt when the kernel or the patches change; removed when there are none.
build_stall_patched() {
    local patches=() p hash work obj src
    for p in "$VIGIL_ROOT"/patches/linux/*.patch; do [ -f "$p" ] && patches+=("$p"); done
    if [ ${#patches[@]} -eq 0 ]; then
        rm -rf "$A64/stall/patched"
        log "arm64: no patches/linux/*.patch: only the upstream stall driver"
        return 0
    fi
    hash=$( { cat "$A64/Image.confighash"; cat "${patches[@]}"; } | sha256sum | cut -c1-16)
    if [ -f "$A64/stall/patched/vcpu_stall_detector.ko" ] &&
        [ "$(cat "$A64/stall/patched/hash" 2>/dev/null)" = "$hash" ]; then
        log "arm64: patched stall driver cached ($hash)"
        return 0
    fi
    step "arm64: patched stall driver (${#patches[@]} patch(es), out of tree)"
    obj=$(cat "$A64/kernel-obj") src=$(cat "$A64/kernel-src")
    work=$A64/stall-patched-src
    rm -rf "$work" "$A64/stall/patched"; mkdir -p "$work/drivers/misc" "$A64/stall/patched"
    cp "$src/drivers/misc/vcpu_stall_detector.c" "$work/drivers/misc/"
    # A patch that does not apply or build leaves no patched driver (the guest's
    # /init then prints "stall driver patched FAILED"); the rest stays usable.
    for p in "${patches[@]}"; do
        if ! patch -s -p1 -d "$work" < "$p" >&2; then
            log "arm64: WARNING: $(basename "$p") does not apply to drivers/misc/vcpu_stall_detector.c: no patched stall driver"
            rm -rf "$A64/stall/patched"; return 0
        fi
    done
    echo 'obj-m := vcpu_stall_detector.o' > "$work/drivers/misc/Kbuild"
    if ! make -C "$src" O="$obj" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- -s \
        M="$work/drivers/misc" modules >&2; then
        log "arm64: WARNING: the patched stall driver does not build (see above): no patched stall driver"
        rm -rf "$A64/stall/patched"; return 0
    fi
    cp "$work/drivers/misc/vcpu_stall_detector.ko" "$A64/stall/patched/"
    echo "$hash" > "$A64/stall/patched/hash"
    done_step "$hash"
}

targets=${GUEST_KERNELS:-x86_64 arm64}
for a in $targets; do
    case $a in
        x86_64) prepare_x86 ;;
        arm64) prepare_arm64 ;;
        *) die "unknown guest architecture $a" ;;
    esac
done
log "guests ready in $(elapsed "$T_ALL") (under $G)"
for a in $targets; do
    case $a in
        x86_64) echo "X86_KERNEL=$X86/vmlinuz"; echo "X86_INITRD=$X86/initrd.gz" ;;
        arm64) echo "ARM64_KERNEL=$A64/Image"; echo "ARM64_INITRD=$A64/initrd.gz"
               echo "ARM64_KDUMP_INITRD=$A64/initrd-kdump.gz"
               if [ -f "$A64/stall/patched/vcpu_stall_detector.ko" ]; then
                   echo ARM64_STALL_PATCHED=yes; else echo ARM64_STALL_PATCHED=no; fi ;;
    esac
done
