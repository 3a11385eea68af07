#!/usr/bin/env bash
# Copy vigil's files into a QEMU tree: our files at their QEMU paths
# (rust/, include/, hw/, tests/qtest/, docs/), our root build files under
# vigil/. Copies are made only where a file's content changed, so that a
# re-run leaves a build a no-op; files listed in MANIFEST by the previous
# run that we no longer have are removed.
#
# Usage: overlay.sh QEMU_TREE MANIFEST
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# = 2 ] && [ -d "$1" ] || die "usage: $0 QEMU_TREE MANIFEST"
VIGIL_SRC=$1
manifest=$2

# Overlay: our files at their QEMU paths; our root build files under vigil/.
install_if_changed() { # SRC DEST
    if [ -L "$1" ]; then    # e.g. build.rs -> ../../../util/build.rs, as QEMU's crates
        [ "$(readlink "$2" 2>/dev/null)" = "$(readlink "$1")" ] && return 0
        mkdir -p "$(dirname "$2")"
        ln -sfn "$(readlink "$1")" "$2"
    elif ! cmp -s "$1" "$2"; then
        mkdir -p "$(dirname "$2")"
        cp "$1" "$2"
    fi
}
new_manifest=$(mktemp)
cd "$VIGIL_ROOT"
while IFS= read -r f; do
    install_if_changed "$f" "$VIGIL_SRC/$f"
    echo "$f" >> "$new_manifest"
done < <(git ls-files --cached --others --exclude-standard -- rust include hw tests/qtest docs 2>/dev/null ||
         find rust include hw tests/qtest docs -type f)
for f in meson.build Kconfig trace-events; do
    install_if_changed "$f" "$VIGIL_SRC/vigil/$f"
    echo "vigil/$f" >> "$new_manifest"
done
# Files we no longer have leave the tree too.
if [ -f "$manifest" ]; then
    sort "$manifest" | comm -23 - <(sort "$new_manifest") | while IFS= read -r f; do
        rm -f "$VIGIL_SRC/$f"
    done
fi
mv "$new_manifest" "$manifest"
