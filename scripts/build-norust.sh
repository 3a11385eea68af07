#!/usr/bin/env bash
# Configure (once) and build qemu-system-aarch64 without Rust, from the same
# patched tree as scripts/build.sh, in $VIGIL_CACHE/build-norust: proves that
# our patches keep QEMU building with --disable-rust (C pvpanic devices, no
# stall detector). A no-op when nothing changed. Its own build directory, so
# it needs no lock on $VIGIL_BUILD.
set -euo pipefail
. "$(dirname "$0")/common.sh"

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
VIGIL_BUILD_NORUST=${VIGIL_BUILD_NORUST:-$VIGIL_CACHE/build-norust}
# As scripts/build.sh, but --disable-rust and aarch64 only
vigil_configure_args disable aarch64-softmmu
vigil_configure "$VIGIL_SRC" "$VIGIL_BUILD_NORUST" ||
    die "configure failed (log: $VIGIL_BUILD_NORUST/vigil-configure.log)"

t0=$(now)
log "ninja (no Rust): qemu-system-aarch64"
ninja -C "$VIGIL_BUILD_NORUST" qemu-system-aarch64 "$@"
log "no-Rust build took $(elapsed "$t0")"

# virt's default NIC (virtio-net-pci) needs its option ROM: Debian's, as in
# scripts/build.sh, in the data directory a build-tree QEMU searches.
datadir=$("$VIGIL_BUILD_NORUST/qemu-system-aarch64" -L help | grep '/share/qemu$' | head -n1)
[ -d "$datadir" ] || die "cannot find the no-Rust build tree's data directory (qemu-system-aarch64 -L help)"
[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || die "missing firmware /usr/lib/ipxe/qemu/efi-virtio.rom (run scripts/deps.sh)"
ln -sfn /usr/lib/ipxe/qemu/efi-virtio.rom "$datadir/efi-virtio.rom"
