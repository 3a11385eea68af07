#!/usr/bin/env bash
# QEMU's Rust lints and formatting over our crates, as a QEMU maintainer
# would run them on the patched tree:
#   - the build's own clippy target (`ninja clippy`: every Rust crate meson
#     builds, with the lints of QEMU's rust/Cargo.toml [workspace.lints]),
#     passing when no diagnostic points into one of our files (QEMU's own
#     crates get diagnostics from newer toolchains; those are not ours);
#   - rustfmt with QEMU's rust/rustfmt.toml (its options need a nightly
#     rustfmt; without one, stable rustfmt checks what it can);
#   - every unsafe block and impl has a // SAFETY: comment (safety-check.py);
#   - cargo reading QEMU's Cargo workspace, which lists our crates and whose
#     [workspace.lints] they inherit ([lints] workspace = true).
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
. "$VIGIL_ROOT/tests/lib.sh"    # check, pass, fail

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
cd "$VIGIL_ROOT" || exit 1
# (not the build.rs links to QEMU's rust/util/build.rs, which QEMU's crates share)
mapfile -t ours < <(git ls-files -s -- 'rust/*.rs' | awk '$1 != "120000" { print $4 }')
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
    grep -v '^>>> ' <<<"$out" | grep -E -B3 -A12 "^ *--> .*$ours_re"
    grep -q 'meson --internal clippy' <<<"$out" || { echo "clippy did not run:"; tail -n 20 <<<"$out"; return 1; }
    [ "$n" = 0 ]
}

rustfmt_ours() {
    local toolchain=() t0
    t0=$(now)
    # a rustup toolchain; Debian's rustfmt takes "+nightly" for a file name
    # (and answers --version whatever comes before it)
    if rustfmt +nightly --version 2>/dev/null | grep -q nightly; then
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

unsafe_ours() {
    python3 "$VIGIL_ROOT/scripts/safety-check.py" "${ours[@]}"
}

# Our crates are members of QEMU's Cargo workspace (patches/0003) and take
# its [workspace.lints]: cargo's view of the patched tree's rust/Cargo.toml.
workspace_ours() {
    local meta
    meta=$(cd "$VIGIL_SRC/rust" && cargo metadata --no-deps --format-version 1 --offline) || return 1
    python3 - "$VIGIL_SRC/rust" "$VIGIL_ROOT" "$meta" <<'PY'
import json, pathlib, subprocess, sys, tomllib
rust, root = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
members = {pathlib.Path(p['manifest_path']).resolve() for p in json.loads(sys.argv[3])['packages']}
ours = subprocess.run(['git', '-C', root, 'ls-files', 'rust/*Cargo.toml'],
                      capture_output=True, text=True, check=True).stdout.split()
bad = 0
for f in ours:
    m = (rust.parent / f).resolve()
    lints = tomllib.load(open(m, 'rb')).get('lints', {}).get('workspace') is True
    member = m in members
    print(f'{f}: {"a member" if member else "NOT a member"} of QEMU\'s workspace, '
          f'{"inherits" if lints else "does NOT inherit"} its [workspace.lints]')
    bad += not (member and lints)
sys.exit(1 if bad or not ours else 0)
PY
}

check "clippy (ninja clippy, QEMU's lints): nothing in our crates" "" clippy_ours
check "rustfmt (QEMU's rustfmt.toml): our ${#ours[@]} Rust files" "" rustfmt_ours
check "unsafe: every unsafe block and impl of ours has a // SAFETY: comment" "" unsafe_ours
check "crates: members of QEMU's Cargo workspace, [lints] workspace = true" "" workspace_ours
