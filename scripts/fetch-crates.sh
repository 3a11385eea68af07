#!/bin/bash
# Populate a QEMU source tree (Debian "+ds" tarball) with what its Rust crate
# wraps need: subprojects/packagecache/<source_filename> (the exact .crate
# archives, obtained with cargo and checked against each wrap's source_hash)
# and subprojects/packagefiles/<patch_directory>/ (our meson.build files).
#
# Usage: fetch-crates.sh QEMU_SRC_DIR
# Downloads are cached in ${VIGIL_CACHE:-$HOME/.cache/vigil}/crates.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1/subprojects" ]; then
    echo "usage: $0 QEMU_SRC_DIR" >&2
    exit 2
fi
qemu_src=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
our_packagefiles=$here/subprojects/packagefiles
cache=${VIGIL_CACHE:-$HOME/.cache/vigil}/crates
cargo_home=${CARGO_HOME:-$HOME/.cargo}
command -v cargo >/dev/null || { echo "error: cargo not found" >&2; exit 1; }
mkdir -p "$cache" "$qemu_src/subprojects/packagecache" "$qemu_src/subprojects/packagefiles"

# wrap_get FILE KEY: value of "KEY = value" in a wrap file (comments ignored)
wrap_get() {
    sed -n -E "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*\$/\\1/p" "$1" | head -n1
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_crate NAME VERSION HASH OUT: put the .crate file for NAME=VERSION at OUT
fetch_crate() {
    local name=$1 version=$2 hash=$3 out=$4
    local proj=$cache/work/$name-$version log
    log=$proj/cargo.log
    rm -rf "$proj"
    mkdir -p "$proj/src"
    : > "$proj/src/lib.rs"
    cat > "$proj/Cargo.toml" <<TOML
[package]
name = "vigil-crate-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$name = "=$version"

[workspace]
TOML
    if ! (cd "$proj" && cargo generate-lockfile) >"$log" 2>&1; then
        # An exact pin on a yanked version does not resolve; resolve any
        # compatible version, then move the lock file to the pinned one.
        sed -i "s/^$name = \"=$version\"/$name = \"$version\"/" "$proj/Cargo.toml"
        if ! (cd "$proj" && cargo generate-lockfile &&
              cargo update -p "$name" --precise "$version") >>"$log" 2>&1; then
            echo "error: cargo could not resolve $name $version (see $log)" >&2
            return 1
        fi
    fi
    if ! (cd "$proj" && cargo fetch --locked) >>"$log" 2>&1; then
        echo "error: cargo fetch failed for $name $version (see $log)" >&2
        return 1
    fi
    local f
    for f in "$cargo_home"/registry/cache/*/"$name-$version.crate"; do
        [ -f "$f" ] || continue
        if [ "$(sha256 "$f")" = "$hash" ]; then
            cp -f "$f" "$out.tmp" && mv -f "$out.tmp" "$out"
            return 0
        fi
        echo "warning: a cached $name-$version.crate in cargo's registry cache has sha256 $(sha256 "$f"), not $hash" >&2
    done
    echo "error: no $name-$version.crate with sha256 $hash in $cargo_home/registry/cache" >&2
    return 1
}

shopt -s nullglob
wraps=("$qemu_src"/subprojects/*-rs.wrap)
[ ${#wraps[@]} -gt 0 ] || { echo "error: no *-rs.wrap in $qemu_src/subprojects" >&2; exit 1; }

for wrap in "${wraps[@]}"; do
    wrap_name=$(basename "$wrap" .wrap)
    directory=$(wrap_get "$wrap" directory)
    filename=$(wrap_get "$wrap" source_filename)
    hash=$(wrap_get "$wrap" source_hash)
    url=$(wrap_get "$wrap" source_url)
    patchdir=$(wrap_get "$wrap" patch_directory)
    patchdir=${patchdir:-$wrap_name}
    # source_url path ends in .../<crate>/<version>/download
    path=${url%/download}
    version=${path##*/}
    path=${path%/*}
    name=${path##*/}
    if [ -z "$directory" ] || [ -z "$filename" ] || [ -z "$hash" ] ||
       [ -z "$name" ] || [ -z "$version" ] || [ "$directory" != "$name-$version" ]; then
        echo "error: cannot parse $wrap" >&2
        exit 1
    fi

    cached=$cache/$name-$version.crate
    if [ ! -f "$cached" ] || [ "$(sha256 "$cached")" != "$hash" ]; then
        echo "fetching $name $version"
        fetch_crate "$name" "$version" "$hash" "$cached"
    fi

    dest=$qemu_src/subprojects/packagecache/$filename
    cp -f "$cached" "$dest"
    actual=$(sha256 "$dest")
    if [ "$actual" != "$hash" ]; then
        echo "error: sha256 mismatch for $dest" >&2
        echo "  expected $hash" >&2
        echo "  got      $actual" >&2
        exit 1
    fi

    if [ ! -f "$our_packagefiles/$patchdir/meson.build" ]; then
        echo "error: missing $our_packagefiles/$patchdir/meson.build" >&2
        exit 1
    fi
    rm -rf "$qemu_src/subprojects/packagefiles/$patchdir"
    cp -r "$our_packagefiles/$patchdir" "$qemu_src/subprojects/packagefiles/$patchdir"
    # meson applies packagefiles only when it first extracts a wrap
    if [ -d "$qemu_src/subprojects/$directory" ] &&
       ! cmp -s "$our_packagefiles/$patchdir/meson.build" "$qemu_src/subprojects/$directory/meson.build"; then
        echo "warning: $qemu_src/subprojects/$directory is stale; remove it to re-extract" >&2
    fi
    echo "ok: $wrap_name ($filename)"
done
