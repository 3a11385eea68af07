#!/usr/bin/env bash
# QEMU's scripts/checkpatch.pl (from the patched tree) over every patch in
# patches/ and over our C sources: a check passes with no ERROR (warnings,
# e.g. "does MAINTAINERS need updating?", go to the log). Prints
# "PASS<TAB>name" or "FAIL<TAB>name" per check; details go to stderr.
set -uo pipefail
. "$(dirname "$0")/common.sh"
. "$VIGIL_ROOT/tests/lib.sh"    # check, pass, fail

VIGIL_SRC=$(cat "$VIGIL_CACHE/src-path" 2>/dev/null || echo "$VIGIL_SRC")
CHECKPATCH=$VIGIL_SRC/scripts/checkpatch.pl

no_errors() { # ARGS...: checkpatch.pl ARGS: a "total: 0 errors" line per file, no other total
    local out
    [ -f "$CHECKPATCH" ] || { echo "no $CHECKPATCH (run ./dev.sh build)"; return 1; }
    out=$(perl "$CHECKPATCH" --no-tree "$@" 2>&1)
    grep -E '^(ERROR|WARNING)|^total:' <<<"$out"
    grep -q '^total: 0 errors' <<<"$out" && ! grep -E '^total: [1-9][0-9]* errors' <<<"$out" >/dev/null
}

cd "$VIGIL_ROOT" || exit 1
for p in patches/*.patch; do
    grep -q '^diff --git ' "$p" || continue    # the cover letter
    check "checkpatch: $(basename "$p")" "" no_errors "$p"
done
mapfile -t sources < <(git ls-files -- 'hw/*.c' 'include/*.h' 'tests/qtest/*.c' 'tests/qtest/*.h')
check "checkpatch: our C sources (${#sources[@]} files: hw/, include/, tests/qtest/)" "" \
    no_errors -f "${sources[@]}"
