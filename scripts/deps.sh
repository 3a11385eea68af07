#!/usr/bin/env bash
# Install what building and testing vigil needs, from Debian's packages and PyPI.
# Idempotent: a second run only checks. Needs root (or sudo) for apt.
set -euo pipefail
. "$(dirname "$0")/common.sh"

# Build: QEMU with Rust. Run time: firmware for -M pc/q35 from Debian's packages.
# Tests: a cross compiler and kernel build tools for the aarch64 test guests,
# and Debian's libvirt for the end-to-end test (run by hand, without systemd);
# UEFI firmware for Arm virt (AAVMF) and iasl for the ACPI checks; Prometheus
# (prometheus, promtool), curl and systemd-analyze for vigil's fleet checks;
# qemu-img (qemu-utils) for the stall detector's -loadvm qtest.
# Sphinx and its Read the Docs theme (QEMU's docs theme) for the docs check.
APT_BUILD=(ninja-build pkg-config libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev
           libclang-dev bindgen device-tree-compiler ccache python3-venv flex bison
           seabios ipxe-qemu qemu-system-data git xz-utils ca-certificates
           gcc-aarch64-linux-gnu make bc libssl-dev libelf-dev
           libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients binutils util-linux
           qemu-efi-aarch64 acpica-tools patch
           prometheus curl systemd qemu-utils
           python3-sphinx python3-sphinx-rtd-theme)
APT_EXTRA=("$@")

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_BUILD[@]}" "${APT_EXTRA[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# QEMU 10.2 needs rustc >= 1.83; Debian bookworm's rustc-web/cargo-web are recent enough.
if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
    missing+=(rustc-web cargo-web)
fi
if [ ${#missing[@]} -gt 0 ]; then
    t0=$(now)
    log "apt: installing ${missing[*]}"
    sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "apt install took $(elapsed "$t0")"
fi
rustc_v=$(rustc --version | awk '{print $2}')
[ "$(printf '%s\n1.83.0\n' "$rustc_v" | sort -V | head -n1)" = 1.83.0 ] ||
    die "rustc $rustc_v is too old for QEMU 10.2 (needs >= 1.83)"

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
log "dependencies ok (rustc $rustc_v, meson $("$VIGIL_VENV/bin/meson" --version))"
