# SPDX-License-Identifier: GPL-2.0-or-later
#
# Shared by the libvirt tests (sourced): Debian's libvirtd, run by hand as root
# without systemd in a PRIVATE mount namespace (see libvirt-test.sh's header for
# what is bind-mounted and the qemu.conf it gets).
#
# `. lib.sh functions` (first, with LV_TAG set): tests/lib.sh (the PASS/FAIL
# protocol of scripts/run-tests.sh: pass, fail, result NAME STATUS [DETAIL],
# fatal NAME DETAIL; since T0, wait_for...), log (stderr, "[LV_TAG seconds]"),
# lv_packages.
# `. lib.sh` (after NAME is set): takes the lock that serialises
# the libvirt tests, makes $tmp (with $tmp/dump = auto_dump_path), installs the
# cleanup trap (destroys and undefines domain $NAME if $defined is set, stops
# $event_pid and the daemon), starts the daemon and checks "libvirtd started".
# Then: vsh (virsh on $URI), show_logs, $tmp/root/log/qemu/$NAME.log.
#
# lv_packages PKG...: installs the missing packages with apt-get.

# (sourced twice: the clock is set only the first time; tests/lib.sh keeps its counters)
: "${LV_T0:=$(date +%s.%N)}"
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"   # pass, fail, result, fatal, since, wait_for...
log() { printf '[%s %6.1f] %s\n' "$LV_TAG" "$(awk -v a="$LV_T0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$*" >&2; }

lv_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    log "installing ${missing[*]} ..."
    inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
    inst || { apt-get update -q >&2 && inst; }
}

[ "${1:-}" = functions ] && return 0

# ---- scratch directory, cleanup ---------------------------------------------------------
# One run at a time: runs share the (host) mount points created below.
exec 9>/tmp/vigil-libvirt-test.lock
flock -w 300 9 || fatal "libvirtd started" "another libvirt-test.sh holds /tmp/vigil-libvirt-test.lock"
tmp=$(mktemp -d /tmp/vigil-libvirt.XXXXXX)
chmod 755 "$tmp"
URI="qemu+unix:///system?socket=$tmp/sock/libvirt-sock"
daemon_pid=
event_pid=
created_dirs=()
defined=

vsh() { virsh -q -c "$URI" "$@"; }

cleanup() {
    set +e
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        if [ -n "$defined" ]; then
            [ "$(vsh domstate "$NAME" 2>/dev/null)" = "shut off" ] || vsh destroy "$NAME" >/dev/null 2>&1
            # a UEFI domain (per-domain NVRAM) needs --nvram
            { vsh undefine "$NAME" >/dev/null 2>&1 || vsh undefine --nvram "$NAME" >/dev/null 2>&1; } &&
                log "domain $NAME undefined"
        fi
    fi
    if [ -n "$event_pid" ]; then kill "$event_pid" 2>/dev/null; wait "$event_pid" 2>/dev/null; fi
    # A QEMU that outlived the daemon (libvirt daemonizes it): its pid file is private.
    local qpid
    qpid=$(cat "$tmp/root/run/qemu/$NAME.pid" 2>/dev/null)
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null && grep -q qemu "/proc/$qpid/cmdline" 2>/dev/null; then
        kill -TERM "$qpid"; sleep 1; kill -KILL "$qpid" 2>/dev/null
    fi
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
        log "libvirtd (pid $daemon_pid) stopped"
    fi
    # Mount points this script had to create on the host (empty ones only).
    local d
    for d in "${created_dirs[@]}"; do rmdir "$d" 2>/dev/null; done
    if [ "${LIBVIRT_TEST_KEEP:-0}" = 1 ]; then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() { # on failure: what the daemon, QEMU and the guest said
    local f
    for f in "$tmp/libvirtd.log" "$tmp/root/log/qemu/$NAME.log" "$tmp"/serial*.log "$tmp"/events*.log; do
        [ -s "$f" ] || continue
        log "---- tail of $f"
        tail -n 25 "$f" | sed 's/^/    /' >&2
    done
}

# ---- 2. private configuration and daemon ------------------------------------------------
mkdir -p "$tmp"/{sock,dump,root/etc,root/run,root/lib,root/log,root/cache}
chmod 700 "$tmp/sock"

cat >"$tmp/libvirtd.conf" <<EOF
unix_sock_dir = "$tmp/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$tmp/libvirtd.log"
EOF
cat >"$tmp/root/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
auto_dump_path = "$tmp/dump"
EOF

# mount point (host path) -> private source
binds=("/etc/libvirt:$tmp/root/etc" "/run/libvirt:$tmp/root/run" "/var/lib/libvirt:$tmp/root/lib"
       "/var/log/libvirt:$tmp/root/log" "/var/cache/libvirt:$tmp/root/cache")
for b in "${binds[@]}"; do
    d=${b%%:*}
    if [ ! -d "$d" ]; then
        mkdir "$d" || fatal "libvirtd started" "cannot create mount point $d"
        created_dirs+=("$d")
    fi
done
[ ${#created_dirs[@]} -gt 0 ] && log "created empty mount points (removed on exit): ${created_dirs[*]}"

# libvirt 9.0's QEMU driver resolves libvirt-qemu:libvirt-qemu before reading qemu.conf.
if ! getent passwd libvirt-qemu >/dev/null || ! getent group libvirt-qemu >/dev/null; then
    cp /etc/passwd "$tmp/passwd"; cp /etc/group "$tmp/group"
    id=64055
    while getent passwd "$id" >/dev/null || getent group "$id" >/dev/null; do id=$((id + 1)); done
    getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:$id:" >>"$tmp/group"
    gid=$(awk -F: '$1 == "libvirt-qemu" { print $3 }' "$tmp/group")
    getent passwd libvirt-qemu >/dev/null \
        || echo "libvirt-qemu:x:$id:$gid:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin" >>"$tmp/passwd"
    binds+=("/etc/passwd:$tmp/passwd" "/etc/group:$tmp/group")
    log "libvirt-qemu user/group missing: private /etc/passwd and /etc/group in the daemon's namespace"
fi

# Runs inside the new mount namespace, then becomes libvirtd (same pid as unshare).
cat >"$tmp/ns-start.sh" <<'EOF'
set -eu
host_ns=$1; tmp=$2; shift 2
[ "$(readlink /proc/self/ns/mnt)" != "$host_ns" ] || { echo "not in a private mount namespace" >&2; exit 1; }
for b in "$@"; do
    mount --bind "${b#*:}" "${b%%:*}"
done
exec libvirtd --config "$tmp/libvirtd.conf" --pid-file "$tmp/libvirtd.pid"
EOF

log "starting libvirtd in a private mount namespace ..."
unshare --mount --propagation private -- \
    bash "$tmp/ns-start.sh" "$(readlink /proc/self/ns/mnt)" "$tmp" "${binds[@]}" \
    >"$tmp/libvirtd.out" 2>&1 &
daemon_pid=$!
t=$(date +%s)
until vsh list --all >/dev/null 2>&1; do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        wait "$daemon_pid"; rc=$?
        daemon_pid=
        log "libvirtd exited ($rc): $(cat "$tmp/libvirtd.out")"; show_logs
        fatal "libvirtd started" "the daemon exited"
    fi
    [ $(($(date +%s) - t)) -lt 30 ] || { show_logs; fatal "libvirtd started" "no answer on $URI within 30 s"; }
    sleep 0.2
done
pass "libvirtd started"
log "libvirtd pid $daemon_pid answers on $URI"
