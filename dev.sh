#!/usr/bin/env bash
# vigil's one entry point.
#
#   ./dev.sh [build]   install dependencies, fetch and patch QEMU 10.2.2, build
#   ./dev.sh check     build, then run every test (last line: "N passed, M failed")
#   ./dev.sh demo      build, then run the demo
#   ./dev.sh series    the patch series as a maintainer takes it: git am onto
#                      QEMU, then every patch built with and without Rust
#                      (scripts/series-tests.sh, long: README.md; not in check)
#   ./dev.sh clean     remove the build directories and the patched QEMU tree
#                      (downloads and ccache stay in $VIGIL_CACHE)
#
# Everything large lives in $VIGIL_CACHE (default ~/.cache/vigil), outside git.
# QEMU_SRC=/path/to/qemu-10.2 (tree or tarball) builds your own QEMU instead.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/common.sh

build() {
    local t0
    t0=$(now); scripts/deps.sh;         log "step deps: $(elapsed "$t0")"
    t0=$(now); scripts/fetch-qemu.sh;   log "step fetch: $(elapsed "$t0")"
    t0=$(now); scripts/prepare-tree.sh; log "step prepare: $(elapsed "$t0")"
    t0=$(now); scripts/build.sh;        log "step build: $(elapsed "$t0")"
}

case "${1:-build}" in
    build) build ;;
    check) build; scripts/run-tests.sh ;;
    demo)  build; scripts/demo.sh ;;
    series)
        scripts/deps.sh; scripts/fetch-qemu.sh
        scripts/series-tests.sh | tee "$VIGIL_CACHE/series-tests.log" ;;
    clean)
        log "removing $VIGIL_BUILD, $VIGIL_CACHE/build-norust, $VIGIL_CACHE/docs-build, $VIGIL_CACHE/series and $VIGIL_SRC"
        rm -rf "$VIGIL_BUILD" "$VIGIL_CACHE/build-norust" "$VIGIL_CACHE/docs-build" "$VIGIL_CACHE/series" "$VIGIL_SRC" "$VIGIL_CACHE/src-path" ;;
    -h|--help|help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown target '$1' (build, check, demo, series, clean)" ;;
esac
