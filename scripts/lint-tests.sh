#!/usr/bin/env bash
# QEMU's Rust lints and formatting over our crates, as a QEMU maintainer
# would run them on the patched tree:
#   - the build's own clippy target (`ninja clippy`: every Rust crate meson
#     builds, with the lints of QEMU's rust/Cargo.toml [workspace.lints]),
#     passing when no diagnostic points into one of our files (QEMU's own
#     crates get diagnostics from newer toolchains; those are not ours);
#   - rustfmt with QEMU's rust/rustfmt.toml (its options need a nightly
#     rustfmt; without one, stable rustfmt checks what it can);
#   - cargo reading QEMU's Cargo workspace, which lists our crates and whose
#     [workspace.lints] they inherit ([lints] workspace = true).
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
check() { # NAME COMMAND...: passes when COMMAND succeeds
    local name=$1; shift
    if "$@" >&2; then printf 'PASS\t%s\n' "$name"; else printf 'FAIL\t%s\n' "$name"; fi
}
cd "$VIGIL_ROOT" || exit 1
mapfile -t ours < <(git ls-files -- 'rust/*.rs')
# Where our sources appear in diagnostics: their tree path, or meson's
# copy of a crate's structured sources in the build directory.
ours_re='(^|/)rust/(vigil-core|hw/misc|hw/pci)/'

clippy_ours() {
    local out t0 n
    t0=$(now)
    out=$(ninja -C "$VIGIL_BUILD" -k 0 clippy 2>&1)
    # ">>> <clippy-driver command>" heads each crate that printed anything
    n=$(grep -E '^ *--> ' <<<"$out" | grep -cE "$ours_re")
    echo "clippy: $(grep -c '^ *--> ' <<<"$out") diagnostics in all, $n in our files ($(elapsed "$t0"))"
    grep -E -B3 -A12 "^ *--> .*$ours_re" <<<"$out"
    grep -q 'meson --internal clippy' <<<"$out" || { echo "clippy did not run:"; tail -n 20 <<<"$out"; return 1; }
    [ "$n" = 0 ]
}

rustfmt_ours() {
    local toolchain=() t0
    t0=$(now)
    if rustfmt +nightly --version >/dev/null 2>&1; then
        toolchain=(+nightly)
    else
        echo "no nightly rustfmt: QEMU's unstable rustfmt options are not checked"
    fi
    [ -f "$VIGIL_SRC/rust/rustfmt.toml" ] || { echo "no $VIGIL_SRC/rust/rustfmt.toml"; return 1; }
    rustfmt "${toolchain[@]}" --check --edition 2021 \
        --config-path "$VIGIL_SRC/rust/rustfmt.toml" "${ours[@]}" 2>&1 | grep -v '^Warning: can.t set'
    local rc=${PIPESTATUS[0]}
    echo "rustfmt ${toolchain[*]}: ${#ours[@]} files ($(elapsed "$t0"))"
    return "$rc"
}

check "clippy (ninja clippy, QEMU's lints): nothing in our crates" clippy_ours
check "rustfmt (QEMU's rustfmt.toml): our ${#ours[@]} Rust files" rustfmt_ours
