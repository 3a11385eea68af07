#!/usr/bin/env bash
# Fetch Debian's source package qemu 1:10.2.2+ds-1 into $VIGIL_CACHE/downloads and verify it.
#
# apt does the download, through a private apt configuration (nothing under /etc is
# changed) whose single deb-src entry reuses the Debian mirror this machine is already
# configured with. CI only (CI=true): if apt cannot find the version, the same files are
# taken from ../shared/qemu-src/ beside the checkout. Either way the sha256 sums are checked.
# With QEMU_SRC set (your own tree or tarball) nothing is fetched.
set -euo pipefail
. "$(dirname "$0")/common.sh"

dl=$VIGIL_CACHE/downloads
mkdir -p "$dl"

verify() { # verify DIR: both tarballs present with the expected sums
    [ -f "$1/$QEMU_ORIG" ] && [ -f "$1/$QEMU_DEBIAN" ] || return 1
    (cd "$1" && printf '%s  %s\n%s  %s\n' "$QEMU_ORIG_SHA256" "$QEMU_ORIG" \
        "$QEMU_DEBIAN_SHA256" "$QEMU_DEBIAN" | sha256sum --quiet -c -)
}

if [ -n "${QEMU_SRC:-}" ]; then
    log "QEMU_SRC=$QEMU_SRC: using your QEMU, nothing to fetch"
    exit 0
fi
if verify "$dl" 2>/dev/null; then
    log "QEMU $QEMU_DEB_VERSION source already downloaded and verified ($dl)"
    exit 0
fi

fetch_with_apt() {
    local uri apt_dir opts
    uri=$(mirror_uri | head -n1)
    [ -n "$uri" ] || { log "no Debian apt entry found on this machine"; return 1; }
    apt_dir=$VIGIL_CACHE/apt
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    # Debian's unstable suite carries qemu 1:10.2.2+ds-1; a deb-src entry for it only.
    cat > "$apt_dir/sources.list.d/vigil-qemu-src.sources" <<SRC
Types: deb-src
URIs: $uri
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    opts=(-o Dir::Etc::SourceList=/dev/null
          -o Dir::Etc::SourceParts="$apt_dir/sources.list.d"
          -o Dir::State::Lists="$apt_dir/lists"
          -o Dir::Cache="$apt_dir/cache"
          -o APT::Sandbox::User=root)
    log "apt: updating the private deb-src list ($uri, suite sid)"
    apt-get "${opts[@]}" -qq update || return 1
    log "apt: source --download-only qemu=$QEMU_DEB_VERSION"
    (cd "$dl" && apt-get "${opts[@]}" -q source --download-only "qemu=$QEMU_DEB_VERSION") || return 1
}

t0=$(now)
if fetch_with_apt && verify "$dl"; then
    log "fetched and verified QEMU source with apt in $(elapsed "$t0")"
    exit 0
fi
shared=$VIGIL_ROOT/../shared/qemu-src
if [ "${CI:-}" = true ] && [ -d "$shared" ]; then
    log "CI: apt could not provide qemu $QEMU_DEB_VERSION, using $shared"
    cp "$shared/$QEMU_ORIG" "$shared/$QEMU_DEBIAN" "$dl/"
    verify "$dl" || die "checksum mismatch for the files from $shared"
    exit 0
fi
die "could not fetch qemu $QEMU_DEB_VERSION with apt (or checksum mismatch); set QEMU_SRC to a QEMU 10.2 tree or tarball"
