#!/usr/bin/env bash
# Make the QEMU tree vigil builds: unpack (once), apply patches/ (only what
# changed), place the Rust crate subprojects, and copy our files in.
#
# The tree is $VIGIL_SRC (default $VIGIL_CACHE/qemu-10.2.2), unpacked from
# Debian's verified tarball. With QEMU_SRC=/path/to/qemu (a QEMU 10.2 tree)
# that tree is used in place; with QEMU_SRC=/path/to/qemu-*.tar.* it is
# unpacked instead of Debian's.
#
# Copies are made only where a file's content changed, so that re-running
# this leaves the build a no-op and a Rust change rebuilds in seconds.
set -euo pipefail
. "$(dirname "$0")/common.sh"

state_dir() { echo "$VIGIL_SRC/.vigil"; }
mkdir -p "$VIGIL_CACHE"

# Debian's +ds tarballs have no edk2 blobs: Debian's own one-line patch stops
# pc-bios/meson.build from unpacking them. Applied to any tree that lacks them.
skip_missing_edk2_blobs() {
    local deb_patch=$VIGIL_CACHE/debian/patches/skip-unpack-edk2-blobs.patch
    compgen -G "$VIGIL_SRC/pc-bios/edk2-*.fd.bz2" >/dev/null && return 0
    grep -q '^if unpack_edk2_blobs$' "$VIGIL_SRC/pc-bios/meson.build" || return 0
    log "no edk2 blobs in the tree: skipping their unpacking (Debian's skip-unpack-edk2-blobs.patch)"
    if [ ! -f "$deb_patch" ] && [ -f "$VIGIL_CACHE/downloads/$QEMU_DEBIAN" ]; then
        tar -C "$VIGIL_CACHE" -xJf "$VIGIL_CACHE/downloads/$QEMU_DEBIAN" debian/patches/skip-unpack-edk2-blobs.patch
    fi
    if [ -f "$deb_patch" ]; then
        (cd "$VIGIL_SRC" && patch -s -p1 < "$deb_patch")
    else
        sed -i 's/^if unpack_edk2_blobs$/if unpack_edk2_blobs and false/' "$VIGIL_SRC/pc-bios/meson.build"
    fi
}

unpack() { # unpack TARBALL into $VIGIL_SRC
    local tmp
    tmp=$(mktemp -d "$VIGIL_CACHE/unpack.XXXXXX")
    log "unpacking $(basename "$1")"
    tar -C "$tmp" -xf "$1"
    rm -rf "$VIGIL_SRC"
    mv "$tmp"/* "$VIGIL_SRC"
    rmdir "$tmp"
}

if [ -n "${QEMU_SRC:-}" ] && [ -d "$QEMU_SRC" ]; then
    VIGIL_SRC=$(cd "$QEMU_SRC" && pwd)
    [ -f "$VIGIL_SRC/VERSION" ] || die "QEMU_SRC=$QEMU_SRC does not look like a QEMU tree"
    log "using your QEMU tree in place: $VIGIL_SRC ($(cat "$VIGIL_SRC/VERSION"))"
elif [ ! -f "$(state_dir)/unpacked" ]; then
    if [ -n "${QEMU_SRC:-}" ]; then
        [ -f "$QEMU_SRC" ] || die "QEMU_SRC=$QEMU_SRC is neither a directory nor a file"
        unpack "$QEMU_SRC"
    else
        unpack "$VIGIL_CACHE/downloads/$QEMU_ORIG"
    fi
    mkdir -p "$(state_dir)"
    touch "$(state_dir)/unpacked"
fi
skip_missing_edk2_blobs
echo "$VIGIL_SRC" > "$VIGIL_CACHE/src-path"
st=$(state_dir)
mkdir -p "$st/applied"

# Our patch series. Patches are applied in order; when the series changes,
# only the applied patches from the first one that differs are reverted (in
# reverse order) and the rest applied again, so that an unchanged early patch
# (e.g. the meson hook) does not touch its files and trigger a rebuild.
new=()
for p in "$VIGIL_ROOT"/patches/*.patch; do
    grep -q '^diff --git ' "$p" && new+=("$p")    # not the cover letter
done
old=()
for p in "$st"/applied/*.patch; do [ -f "$p" ] && old+=("$p"); done
# Compare what a patch changes, not its mail headers (subject numbering).
body() { sed -n '/^diff --git /,/^-- $/p' "$1"; }
keep=0
while [ $keep -lt ${#old[@]} ] && [ $keep -lt ${#new[@]} ] &&
      cmp -s <(body "${old[$keep]}") <(body "${new[$keep]}"); do
    cp "${new[$keep]}" "$st/applied/" && [ "$(basename "${old[$keep]}")" = "$(basename "${new[$keep]}")" ] ||
        rm -f "${old[$keep]}"
    keep=$((keep + 1))
done
for ((i = ${#old[@]} - 1; i >= keep; i--)); do
    log "reverting $(basename "${old[$i]}")"
    (cd "$VIGIL_SRC" && patch -s -R -p1 < "${old[$i]}")
    rm -f "${old[$i]}"
done
for ((i = keep; i < ${#new[@]}; i++)); do
    log "applying $(basename "${new[$i]}")"
    (cd "$VIGIL_SRC" && patch -s -p1 --no-backup-if-mismatch < "${new[$i]}")
    cp "${new[$i]}" "$st/applied/"
done

# Rust crate subprojects (Debian strips subprojects/packagefiles and packagecache).
"$VIGIL_ROOT/scripts/fetch-crates.sh" "$VIGIL_SRC"

# Overlay: our files at their QEMU paths (scripts/overlay.sh).
"$VIGIL_ROOT/scripts/overlay.sh" "$VIGIL_SRC" "$st/overlay-manifest"
log "QEMU tree ready: $VIGIL_SRC"
