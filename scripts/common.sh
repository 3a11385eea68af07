# Shared settings for vigil's build scripts. Sourced, not run.
# Everything large lives outside the git tree, under $VIGIL_CACHE.

VIGIL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VIGIL_CACHE=${VIGIL_CACHE:-$HOME/.cache/vigil}
QEMU_VERSION=10.2.2
QEMU_DEB_VERSION=1:10.2.2+ds-1
QEMU_ORIG=qemu_10.2.2+ds.orig.tar.xz
QEMU_ORIG_SHA256=be05230fe47a6937cd29f28f562932c8125f9c93c2a82c625198f7a4aa601dfb
QEMU_DEBIAN=qemu_10.2.2+ds-1.debian.tar.xz
QEMU_DEBIAN_SHA256=ddf75aceab4f8f77374f3cb34fc97b41514895aeb293ce8b2ddd5e072bb0f5c0
# The patched QEMU tree with our overlay, and the build directory.
VIGIL_SRC=${VIGIL_SRC:-$VIGIL_CACHE/qemu-$QEMU_VERSION}
VIGIL_BUILD=${VIGIL_BUILD:-$VIGIL_CACHE/build}
VIGIL_VENV=$VIGIL_CACHE/venv
VIGIL_TARGETS=aarch64-softmmu,x86_64-softmmu

# configure arguments of vigil's QEMU builds (scripts/build.sh, build-norust.sh,
# series-tests.sh): vigil_configure_args enable|disable TARGETS sets CONFIGURE_ARGS.
vigil_configure_args() {
    CONFIGURE_ARGS=(
        --python="$VIGIL_VENV/bin/python3"
        "--$1-rust"
        --target-list="$2"
        --without-default-features
        --enable-fdt=system
        --enable-kvm --enable-tcg
        --disable-docs
        --disable-install-blobs
        --cc="ccache cc"
    )
}

# vigil_configure SRC DIR: configure QEMU tree SRC in build directory DIR with
# CONFIGURE_ARGS, unless DIR was configured so already (its .vigil-configure
# stamp). The output goes to DIR/vigil-configure.log; on failure its end is
# shown and the status is 1.
vigil_configure() {
    local src=$1 dir=$2 want t0
    want="$src ${CONFIGURE_ARGS[*]}"
    mkdir -p "$dir"
    [ -f "$dir/build.ninja" ] && [ "$(cat "$dir/.vigil-configure" 2>/dev/null)" = "$want" ] && return 0
    t0=$(now)
    log "configure (in $dir)"
    (cd "$dir" && "$src/configure" "${CONFIGURE_ARGS[@]}") > "$dir/vigil-configure.log" 2>&1 ||
        { tail -n 30 "$dir/vigil-configure.log" >&2; return 1; }
    echo "$want" > "$dir/.vigil-configure"
    log "configure took $(elapsed "$t0")"
}

log() { printf '\033[1m[vigil]\033[0m %s\n' "$*" >&2; }
die() { printf '[vigil] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# The mirror URI of the machine's own Debian entry (deb822 or one-line
# format): private apt configurations (deb-src, other architectures) reuse it.
mirror_uri() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN{RS=""; FS="\n"}
             /Types:[^\n]*deb/ && !/debian-security/ && /Suites:/ {
               for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); print a[2]; exit }
             }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' "$f"
    done
}
