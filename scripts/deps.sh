#!/usr/bin/env bash
# Install what building and testing vigil needs, from Debian's packages and PyPI,
# on Debian bookworm: enough for `./dev.sh check` on a machine that has nothing
# else (a bare `debootstrap --variant=minbase bookworm` chroot). Idempotent: a
# second run only checks. Needs root (or sudo) for apt.
set -euo pipefail
. "$(dirname "$0")/common.sh"

# Every external command that scripts/, tests/ (shell and Python),
# tools/vigil/tests/*.sh and benchmarks/ run, as COMMAND:PACKAGE, with who
# runs it. The packages are installed when missing, and at the end every
# command must be found: a command the scripts start to use goes here, or
# the check fails on a clean machine. Packages of Priority: required (and apt)
# are in every Debian, minbase included; procps, perl, xz-utils are NOT.
TOOLS=(
    # base system (bookworm minbase): listed to be checked, never installed
    bash:bash sed:sed grep:grep tar:tar gzip:gzip awk:mawk   # everything
    find:findutils xargs:findutils                    # docs-tests, guest-kernels, overlay
    cmp:diffutils diff:diffutils                      # prepare-tree, overlay, fetch-crates, guest-kernels
    # coreutils: all the small tools, among them timeout (cli, norust tests),
    # sha256sum (fetch-qemu, fetch-crates, docs-tests), od (pvpanic-pci test),
    # paste (libvirt tests), stat, nproc, seq, comm, mktemp, readlink
    timeout:coreutils sha256sum:coreutils od:coreutils paste:coreutils stat:coreutils
    nproc:coreutils seq:coreutils comm:coreutils mktemp:coreutils readlink:coreutils
    flock:util-linux unshare:util-linux               # libvirt tests; cli-tests (bios-tables-test)
    mount:mount                                       # libvirt tests, cli-tests (in unshare)
    getent:libc-bin                                   # libvirt tests
    dpkg-deb:dpkg dpkg-query:dpkg                     # guest-kernels, pvpanic-pci test; deps, libvirt tests
    apt-get:apt apt-cache:apt                         # fetch-qemu, guest-kernels (apt-get source
                                                      # --download-only: no dpkg-dev), pvpanic-pci test
    # not in minbase
    pkill:procps                                      # demo
    xz:xz-utils                                       # tar -xJf (prepare-tree, series, guest-kernels),
                                                      # .ko.xz (guest-kernels, pvpanic-pci test)
    zstd:zstd                                         # .ko.zst (guest-kernels, pvpanic-pci test)
    perl:perl                                         # checkpatch.pl (Term::ANSIColor: not in perl-base), kernel build
    python3:python3                                   # tests, vigilqmp, mkcpio, qmp-events, benchmarks
    git:git                                           # overlay, lint, checkpatch, series
    patch:patch                                       # prepare-tree, series, guest-kernels
    make:make                                         # stall-guest, kernel build
    cc:gcc                                            # QEMU (--cc="ccache cc"), the kernel's host tools
    ccache:ccache                                     # QEMU builds
    ninja:ninja-build                                 # build, build-norust, series, lint (ninja clippy), run-tests
    pkg-config:pkg-config                             # QEMU configure
    flex:flex bison:bison bc:bc                       # QEMU, kernel build
    aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu       # stall-guest, kexec-load, arm64 kernel
    bindgen:bindgen                                   # QEMU's Rust bindings
    dtc:device-tree-compiler                          # cli-tests, demo
    nm:binutils readelf:binutils                      # cli/norust tests; vigil, libvirt tests, demo
    iasl:acpica-tools                                 # bios-tables-test (disassembles on a mismatch)
    bzip2:bzip2                                       # QEMU's meson: without it the edk2 blobs are not
                                                      # unpacked and bios-tables-test is not built
    qemu-img:qemu-utils                               # the stall detector's -loadvm qtest
    sphinx-build:python3-sphinx                       # docs-tests
    curl:curl                                         # fleet, prometheus-guest
    prometheus:prometheus promtool:prometheus         # prometheus-guest; fleet
    systemd-analyze:systemd                           # fleet
    virsh:libvirt-clients libvirtd:libvirt-daemon     # libvirt tests
    # cargo, rustc, clippy-driver (ninja clippy), rustfmt: rustc-web, cargo-web,
    # rust-web-clippy, rustfmt-web, or a rustup toolchain: see below
)
# Libraries, firmware and data the tools above use (no command of their own):
# QEMU's build (glib, pixman, zlib, libfdt, libclang for bindgen, libc headers),
# the venv (python3-venv), run-time firmware for -M pc/q35 (seabios, ipxe-qemu,
# qemu-system-data) and Arm virt UEFI (qemu-efi-aarch64: AAVMF), the kernel
# build (libssl-dev, libelf-dev), libvirt's QEMU driver, Sphinx's theme (QEMU's
# docs), the keyring of the private apt configurations (guest-kernels,
# fetch-qemu) and TLS roots for cargo's downloads.
APT_DATA=(libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev libclang-dev libc6-dev
          python3-venv seabios ipxe-qemu qemu-system-data qemu-efi-aarch64
          libssl-dev libelf-dev libvirt-daemon-driver-qemu python3-sphinx-rtd-theme
          debian-archive-keyring ca-certificates)
APT_BUILD=("${APT_DATA[@]}")
for t in "${TOOLS[@]}"; do APT_BUILD+=("${t#*:}"); done
APT_EXTRA=("$@")

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in $(printf '%s\n' "${APT_BUILD[@]}" "${APT_EXTRA[@]}" | sort -u); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# Rust: QEMU 10.2 needs rustc >= 1.83; scripts/lint-tests.sh needs clippy
# (`ninja clippy`: meson runs the clippy-driver it finds in PATH) and rustfmt
# (`rustfmt +nightly` if there is one, else the plain one). Without a working
# toolchain: Debian bookworm's rustc-web, cargo-web, rust-web-clippy and
# rustfmt-web (one version, installed together so that clippy-driver matches
# rustc). A rustup toolchain (the -web packages conflict with rustup) gets
# its missing clippy and rustfmt components instead.
RUST_DEB=(rustc-web cargo-web rust-web-clippy rustfmt-web)
rustc_new_enough() {
    local v
    v=$(rustc --version 2>/dev/null | awk '{print $2}') && [ -n "$v" ] &&
        [ "$(printf '%s\n1.83.0\n' "$v" | sort -V | head -n1)" = 1.83.0 ]
}
rust_lints_ok() {
    { clippy-driver --version && cargo clippy --version && rustfmt --version; } >/dev/null 2>&1
}
rust_deb=()
if command -v rustup >/dev/null; then
    if ! rustc_new_enough || ! cargo --version >/dev/null 2>&1; then
        die "the rustup toolchain has no rustc >= 1.83 with cargo (try: rustup default stable; rustup update)"
    fi
    if ! rust_lints_ok; then
        log "rustup: adding the clippy and rustfmt components"
        rustup component add clippy rustfmt
    fi
elif ! { cargo --version && rustc_new_enough && rust_lints_ok; } >/dev/null 2>&1; then
    rust_deb=("${RUST_DEB[@]}")     # (re)installed together: one version
fi

if [ $((${#missing[@]} + ${#rust_deb[@]})) -gt 0 ]; then
    t0=$(now)
    log "apt: installing ${missing[*]} ${rust_deb[*]}"
    sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" "${rust_deb[@]}" >/dev/null
    log "apt install took $(elapsed "$t0")"
fi
hash -r
rustc_new_enough || die "rustc $(rustc --version 2>/dev/null | awk '{print $2}') is too old for QEMU 10.2 (needs >= 1.83)"
rust_lints_ok || die "no working clippy-driver, cargo clippy and rustfmt (scripts/lint-tests.sh needs them)"

# Every command of the table (and Rust's) runs from PATH (with the sbin
# directories, where libvirtd is, also for a non-root user).
absent=()
for t in "${TOOLS[@]}" cargo: rustc: clippy-driver: rustfmt:; do
    PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin command -v "${t%%:*}" >/dev/null || absent+=("${t%%:*}")
done
[ ${#absent[@]} -eq 0 ] || die "commands the scripts need are missing: ${absent[*]} (scripts/deps.sh's TOOLS)"

# meson >= 1.9 (QEMU's --enable-rust needs it; Debian's is older) and pycotap
# (QEMU's configure wants it; Debian's +ds tarball drops python/wheels): a venv.
if ! "$VIGIL_VENV/bin/python3" - 2>/dev/null <<'PY'
import sys
import mesonbuild.coredata as c
import pycotap  # noqa: F401
sys.exit(tuple(map(int, c.version.split(".")[:2])) < (1, 9))
PY
then
    t0=$(now)
    log "pip: meson>=1.9 and pycotap into $VIGIL_VENV"
    python3 -m venv "$VIGIL_VENV"
    "$VIGIL_VENV/bin/pip" install -q 'meson>=1.9,<2' 'pycotap>=1.1'
    log "venv ready in $(elapsed "$t0")"
fi
log "dependencies ok (rustc $(rustc --version | awk '{print $2}'), meson $("$VIGIL_VENV/bin/meson" --version))"
