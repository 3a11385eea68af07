#!/usr/bin/env bash
# The patch series as a maintainer takes it: `git am` onto QEMU 10.2.2 and
# every patch building on its own (bisectable), with and without Rust.
#
#   - a git tree of Debian's QEMU 10.2.2 (the tarball vigil builds, plus
#     Debian's skip-unpack-edk2-blobs.patch, which that tarball needs) in
#     $VIGIL_CACHE/series/src, made once;
#   - `git am` of patches/ (not the cover letter): each patch applies, has
#     a Signed-off-by: of its author, and the QAPI doc says Since: 11.0;
#   - for each patch in turn: check it out, copy vigil's files in
#     (scripts/overlay.sh: they are in the tree at every step, as in a
#     user's tree), and build everything meson builds by default for
#     aarch64 and x86_64, with --enable-rust and with --disable-rust, in
#     two build directories that go from one patch to the next, so a step
#     rebuilds only what its patch changed (ccache for the rest).
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check and the time of each
# build; details go to stderr. The first run took 76 min on 2 cores (a new
# build directory per configuration: ~14 min each at patch 1; the patches
# that change Kconfig or add the Rust crates rebuild for 8-10 min each, the
# others in seconds); not part of ./dev.sh check (./dev.sh series).
set -uo pipefail
. "$(dirname "$0")/common.sh"
. "$VIGIL_ROOT/tests/lib.sh"    # pass, fail

S=$VIGIL_CACHE/series
src=$S/src
targets=aarch64-softmmu,x86_64-softmmu
mkdir -p "$S"

base_tree() {
    local deb_patch=$VIGIL_CACHE/debian/patches/skip-unpack-edk2-blobs.patch
    [ -f "$src/.git/vigil-base" ] && return 0
    rm -rf "$src" && mkdir -p "$src" || return 1
    log "series: unpacking $QEMU_ORIG into a git tree ($src)"
    tar -C "$src" --strip-components=1 -xf "$VIGIL_CACHE/downloads/$QEMU_ORIG" || return 1
    if [ ! -f "$deb_patch" ]; then
        tar -C "$VIGIL_CACHE" -xJf "$VIGIL_CACHE/downloads/$QEMU_DEBIAN" \
            debian/patches/skip-unpack-edk2-blobs.patch || return 1
    fi
    (cd "$src" && patch -s -p1 < "$deb_patch" && git init -q && git add -A &&
        git -c user.name=vigil -c user.email=vigil@localhost commit -q \
            -m "QEMU $QEMU_VERSION ($QEMU_ORIG, Debian's skip-unpack-edk2-blobs.patch)" &&
        git tag -f base >/dev/null) || return 1
    # Rust crate archives (Debian strips them): untracked, kept across checkouts
    "$VIGIL_ROOT/scripts/fetch-crates.sh" "$src" >&2 || return 1
    touch "$src/.git/vigil-base"
}

apply_series() {
    local p author sob
    git -C "$src" am --abort >/dev/null 2>&1
    git -C "$src" checkout -q -f -B series base || return 1
    for p in "$VIGIL_ROOT"/patches/*.patch; do
        grep -q '^diff --git ' "$p" || continue
        git -C "$src" -c user.name=vigil -c user.email=vigil@localhost am -q "$p" ||
            { echo "git am $p failed"; git -C "$src" am --abort; return 1; }
        author=$(git -C "$src" log -1 --format='%an <%ae>')
        sob=$(git -C "$src" log -1 --format='%(trailers:key=Signed-off-by,valueonly)' | sed '/^$/d')
        grep -qxF "$author" <<<"$sob" ||
            { echo "$(basename "$p"): author $author has no Signed-off-by: (has: $sob)"; return 1; }
        echo "$(basename "$p"): applies; author $author, Signed-off-by: $sob"
    done
    git -C "$src" show series:qapi/run-state.json | grep -A40 "^# @VCPU_STALL:" | grep -q '^# Since: 11.0$' ||
        { echo "qapi/run-state.json: VCPU_STALL is not Since: 11.0"; return 1; }
}

build_step() { # RUST(enable|disable) COMMIT-SUBJECT
    local dir=$S/build-$1 t0
    vigil_configure_args "$1" "$targets"
    t0=$(now)
    vigil_configure "$src" "$dir" || return 1
    ninja -C "$dir" > "$dir/vigil-ninja.log" 2>&1 || { grep -E -A8 'FAILED|error' "$dir/vigil-ninja.log" | head -n 60; return 1; }
    echo "--$1-rust: $2: built in $(elapsed "$t0")"
}

if base_tree >&2 && apply_series >&2; then
    pass "series: git am of patches/ onto QEMU $QEMU_VERSION, Signed-off-by: on each, Since: 11.0"
else
    fail "series: git am of patches/ onto QEMU $QEMU_VERSION, Signed-off-by: on each, Since: 11.0"
    exit 0
fi
mapfile -t commits < <(git -C "$src" rev-list --reverse base..series)
for i in "${!commits[@]}"; do
    c=${commits[$i]}
    subject=$(git -C "$src" log -1 --format=%s "$c")
    n=$(printf '%04d' $((i + 1)))
    git -C "$src" checkout -q -f "$c" && "$VIGIL_ROOT/scripts/overlay.sh" "$src" "$S/overlay-manifest" ||
        { fail "series: patch $n checks out with vigil's files"; continue; }
    for rust in enable disable; do
        t0=$(now)
        if build_step "$rust" "$n $subject" >&2; then
            pass "series: patch $n builds --$rust-rust ($subject)"
        else
            fail "series: patch $n builds --$rust-rust ($subject)"
        fi
        log "patch $n --$rust-rust: $(elapsed "$t0")"
    done
done
git -C "$src" checkout -q series
