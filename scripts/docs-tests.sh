#!/usr/bin/env bash
# Our documentation builds without a warning, and QEMU's manual links it.
#
#   - Sphinx -W (warnings are errors) over our pages only (docs/), with
#     QEMU's own docs/conf.py (its extensions, theme and settings) from the
#     patched tree: a small conf.py sets qemu_docdir and runs QEMU's, and a
#     root document lists our pages;
#   - in the patched tree, each page is listed by the toctree QEMU's manual
#     reaches it from (patches/0008);
#   - QEMU's whole HTML manual from the patched tree, as its docs/meson.build
#     runs Sphinx with --enable-docs (-W -Dkerneldoc_werror=1), fresh (-E),
#     in $VIGIL_CACHE/docs-build (~2 min on 2 cores). Skipped, and passed,
#     when its inputs are those of the last clean build.
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check.
set -uo pipefail
. "$(dirname "$0")/common.sh"
. "$VIGIL_ROOT/tests/lib.sh"    # check, pass, fail

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT


# Our pages and the toctree (in QEMU's docs/) that lists each
pages=(system/devices/pvpanic system/devices/vcpu-stall-detector specs/vcpu-stall-detector
       system/management system/vigil)
declare -A toctree=(
    [system/devices/pvpanic]=system/device-emulation.rst
    [system/devices/vcpu-stall-detector]=system/device-emulation.rst
    [specs/vcpu-stall-detector]=specs/index.rst
    [system/management]=system/index.rst
    [system/vigil]=system/index.rst
)

sphinx_strict() {
    command -v sphinx-build >/dev/null || { echo "no sphinx-build (scripts/deps.sh installs python3-sphinx)"; return 1; }
    [ -f "$VIGIL_SRC/docs/conf.py" ] || { echo "no $VIGIL_SRC/docs/conf.py (run ./dev.sh build)"; return 1; }
    local src=$tmp/src p
    mkdir -p "$src"
    {
        echo "vigil's pages"
        echo "============="
        echo
        echo ".. toctree::"
        echo
        for p in "${pages[@]}"; do echo "   $p"; done
    } > "$src/index.rst"
    for p in "${pages[@]}"; do
        mkdir -p "$src/$(dirname "$p")"
        cp "$VIGIL_ROOT/docs/$p.rst" "$src/$p.rst" || return 1
    done
    cat > "$src/conf.py" <<PY
# QEMU's docs/conf.py, run for a source tree of vigil's pages only
import os
qemu_docdir = "$VIGIL_SRC/docs"
with open(os.path.join(qemu_docdir, "conf.py")) as f:
    exec(compile(f.read(), os.path.join(qemu_docdir, "conf.py"), "exec"))
root_doc = master_doc = "index"
PY
    sphinx-build -W --keep-going -n -q -b html -d "$tmp/doctrees" "$src" "$tmp/html" 2>&1
}
check "docs: Sphinx -W -n builds our pages with QEMU's conf.py (no warning)" "" sphinx_strict

in_toctree() { # PAGE INDEX: INDEX (under QEMU's docs/) has PAGE in a toctree
    local page=$1 index=$VIGIL_SRC/docs/$2 dir entry
    dir=$(dirname "$2"); [ "$dir" = . ] && dir=; entry=${page#"$dir"/}
    awk -v e="$entry" '/^\.\. toctree::/ { t = 1; next }
        t && /^[^ \t]/ { t = 0 }
        t { sub(/^[ \t]+/, ""); sub(/\.rst$/, ""); if ($0 == e) found = 1 }
        END { exit !found }' "$index" || { echo "$page is in no toctree of $index"; return 1; }
}
for p in "${pages[@]}"; do
    check "docs: QEMU's docs/${toctree[$p]} lists $p in its toctree" "" in_toctree "$p" "${toctree[$p]}"
done

# QEMU's manual, whole. Its inputs: docs/, the QAPI schema, the .hx files,
# the headers kernel-doc reads; hashed so that an unchanged tree costs nothing.
DOCS_BUILD=$VIGIL_CACHE/docs-build
docs_inputs_hash() {
    (cd "$VIGIL_SRC" && find docs qapi include -type f -print0 | sort -z |
        xargs -0 sha256sum; sha256sum ./*.hx; sphinx-build --version) | sha256sum | cut -d' ' -f1
}
qemu_manual() {
    command -v sphinx-build >/dev/null || { echo "no sphinx-build (scripts/deps.sh installs python3-sphinx)"; return 1; }
    local h t0
    h=$(docs_inputs_hash)
    if [ "$(cat "$DOCS_BUILD/.clean-hash" 2>/dev/null)" = "$h" ]; then
        echo "QEMU's manual: inputs unchanged since the last clean build ($DOCS_BUILD)"
        return 0
    fi
    rm -f "$DOCS_BUILD/.clean-hash"
    mkdir -p "$DOCS_BUILD"
    t0=$(now)
    (cd "$DOCS_BUILD" && env CONFDIR=/usr/local/etc/qemu sphinx-build -q -W -Dkerneldoc_werror=1 -E -j 2 \
        -Dversion="$QEMU_VERSION" -Drelease= -b html -d doctrees "$VIGIL_SRC/docs" html) 2>&1 || return 1
    echo "QEMU's manual built in $(elapsed "$t0")"
    [ -f "$DOCS_BUILD/html/system/devices/vcpu-stall-detector.html" ] || { echo "no page for the stall detector"; return 1; }
    echo "$h" > "$DOCS_BUILD/.clean-hash"
}
check "docs: QEMU's whole manual (patched tree) builds with Sphinx -W, as --enable-docs" "" qemu_manual
