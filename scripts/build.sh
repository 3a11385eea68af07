#!/usr/bin/env bash
# Configure (once) and build qemu-system-aarch64 and qemu-system-x86_64 with
# --enable-rust and vigil's devices, out of tree in $VIGIL_BUILD.
set -euo pipefail
. "$(dirname "$0")/common.sh"

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
vigil_configure_args enable "$VIGIL_TARGETS"
vigil_configure "$VIGIL_SRC" "$VIGIL_BUILD" ||
    die "configure failed (log: $VIGIL_BUILD/vigil-configure.log)"

t0=$(now)
log "ninja: qemu-system-aarch64 qemu-system-x86_64"
ninja -C "$VIGIL_BUILD" qemu-system-aarch64 qemu-system-x86_64 "$@"
log "build took $(elapsed "$t0")"

# Run-time firmware from Debian's packages (Debian's +ds tarball has none),
# linked into the data directory a build-tree QEMU searches (qemu-bundle/...).
datadir=$("$VIGIL_BUILD/qemu-system-x86_64" -L help | grep '/share/qemu$' | head -n1)
[ -d "$datadir" ] || die "cannot find the build tree's data directory (qemu-system-x86_64 -L help)"
link_fw() { # DIR FILE...
    local d=$1 f; shift
    for f in "$@"; do
        [ -e "$d/$f" ] || die "missing firmware $d/$f (run scripts/deps.sh)"
        ln -sfn "$d/$f" "$datadir/$f"
    done
}
link_fw /usr/share/seabios bios-256k.bin vgabios-stdvga.bin vgabios-virtio.bin vgabios-ramfb.bin vgabios-bochs-display.bin
link_fw /usr/lib/ipxe/qemu efi-virtio.rom efi-e1000.rom efi-e1000e.rom
link_fw /usr/share/qemu linuxboot_dma.bin kvmvapic.bin multiboot_dma.bin pvh.bin
log "binaries: $VIGIL_BUILD/qemu-system-aarch64, $VIGIL_BUILD/qemu-system-x86_64"
