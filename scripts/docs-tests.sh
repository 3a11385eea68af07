#!/usr/bin/env bash
# Our documentation builds without a warning, and QEMU's manual links it.
#
#   - Sphinx -W (warnings are errors) over our pages only (docs/), with
#     QEMU's own docs/conf.py (its extensions, theme and settings) from the
#     patched tree: a small conf.py sets qemu_docdir and runs QEMU's, and a
#     root document lists our pages;
#   - in the patched tree, each page is listed by the toctree QEMU's manual
#     reaches it from (patches/0007).
#
# Not a full --enable-docs build of QEMU's manual (its QAPI reference takes
# most of the time). Prints "PASS<TAB>name" or "FAIL<TAB>name" per check.
set -uo pipefail
. "$(dirname "$0")/common.sh"

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # NAME COMMAND...: passes when COMMAND succeeds
    local name=$1; shift
    if "$@" >&2; then printf 'PASS\t%s\n' "$name"; else printf 'FAIL\t%s\n' "$name"; fi
}

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
check "docs: Sphinx -W -n builds our pages with QEMU's conf.py (no warning)" sphinx_strict

in_toctree() { # PAGE INDEX: INDEX (under QEMU's docs/) has PAGE in a toctree
    local page=$1 index=$VIGIL_SRC/docs/$2 dir entry
    dir=$(dirname "$2"); [ "$dir" = . ] && dir=; entry=${page#"$dir"/}
    awk -v e="$entry" '/^\.\. toctree::/ { t = 1; next }
        t && /^[^ \t]/ { t = 0 }
        t { sub(/^[ \t]+/, ""); sub(/\.rst$/, ""); if ($0 == e) found = 1 }
        END { exit !found }' "$index" || { echo "$page is in no toctree of $index"; return 1; }
}
for p in "${pages[@]}"; do
    check "docs: QEMU's docs/${toctree[$p]} lists $p in its toctree" in_toctree "$p" "${toctree[$p]}"
done
