#!/usr/bin/env bash
# End-to-end checks of the vigil command against a real QEMU (no guest kernel:
# the VM runs SeaBIOS, and the test "panics" it by writing the pvpanic port
# from the host with the HMP command `o /b 0x505 1`), and against fake QMP
# servers (python3 standard library) for what QEMU never sends.
#
# Prints "PASS<TAB>name" or "FAIL<TAB>name" per check on stdout, details on
# stderr, a closing "N passed, M failed" line; exits 0 iff every check passed.
#
# Environment: QEMU (qemu-system-x86_64 to use; default: the vigil build in
# $VIGIL_BUILD or ${VIGIL_CACHE:-~/.cache/vigil}/build), VIGIL_BIN (a built
# vigil; default: cargo build -p vigil), KEEP=1 keeps the work directory.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
build=${VIGIL_BUILD:-${VIGIL_CACHE:-$HOME/.cache/vigil}/build}
QEMU=${QEMU:-$build/qemu-system-x86_64}

pids=()
work=$(mktemp -d "${TMPDIR:-/tmp}/vigil-e2e.XXXXXX")

cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. "$root/tests/lib.sh"   # pass, fail, check, wait_for, finish, qmp, count, has...
log() { echo "e2e: $*" >&2; }

# ---------------------------------------------------------------- fake QMP server (python3)
cat >"$work/fakeqmp.py" <<'EOF'
"""fakeqmp.py SOCKET: a QMP server that misbehaves. Connection 1: a garbage
greeting, then close. Connection 2: a good greeting, then garbage of all
kinds, then a valid GUEST_PANICKED; answers commands, RESET after system_reset."""
import json, os, socket, sys, time
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""}, "capabilities": ["oob"]}}
def ev(name, data=None):
    m = {"event": name, "timestamp": {"seconds": int(time.time()), "microseconds": 0}}
    if data is not None:
        m["data"] = data
    return (json.dumps(m) + "\n").encode()

c, _ = srv.accept()
c.sendall(b"Welcome to QEMU! {this is not QMP\n")
time.sleep(0.2)
c.close()

c, _ = srv.accept()
c.sendall((json.dumps(GREETING) + "\n").encode())
f = c.makefile("rb")
garbage_sent = False
for line in f:
    try:
        req = json.loads(line)
    except ValueError:
        continue
    cmd, rid = req.get("execute"), req.get("id")
    ret = {}
    after = b""
    if cmd == "query-name":
        ret = {"name": "fakevm"}
    elif cmd == "query-status":
        ret = {"status": "running", "running": True}
    elif cmd == "system_reset":
        after = ev("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    resp = {"return": ret}
    if rid is not None:
        resp["id"] = rid
    c.sendall((json.dumps(resp) + "\n").encode() + after)
    if cmd == "query-status" and not garbage_sent:
        garbage_sent = True
        c.sendall(b"this is not JSON\n")
        c.sendall(b"\x00\xff\xfe binary \x80\n")
        c.sendall(b'{"event": "GUEST_PANICKED", "data": {\n')  # truncated
        c.sendall(b"[1, 2, 3]\n")
        c.sendall(b'{"return": {}, "id": 123456}\n')
        c.sendall(b'{"surprise": true}\n')
        c.sendall(b"x" * (2 << 20) + b"\n")  # 2 MiB line
        c.sendall(ev("VCPU_STALL", {"cpu-index": "not a number"}))
        c.sendall(ev("SOME_FUTURE_EVENT", {"x": [1, {"y": None}]}))
        time.sleep(0.5)
        c.sendall(ev("GUEST_PANICKED", {"action": "pause"}))
time.sleep(0.5)
EOF

# ---------------------------------------------------------------- setup
if [ ! -x "$QEMU" ]; then
    fail "setup: qemu" "no QEMU at $QEMU (build it with ./dev.sh, or set QEMU=)"
    finish
fi
if [ -n "${VIGIL_BIN:-}" ]; then
    VIGIL=$VIGIL_BIN
else
    log "cargo build -p vigil"
    if ! (cd "$root" && cargo build -q -p vigil) >"$work/cargo.log" 2>&1; then
        cat "$work/cargo.log" >&2
        fail "setup: cargo build" "cargo build -p vigil failed"
        finish
    fi
    VIGIL=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/vigil
fi
check "vigil --help" "vigil --help failed" bash -c '"$1" --help | grep -q coredump-restart' _ "$VIGIL"

# start_qemu NAME: a q35 VM with pvpanic that pauses on panic, with three QMP
# sockets (a QMP socket serves one client at a time): NAME.vigil.sock for
# vigil, NAME.test.sock for commands of the test, NAME.events.sock for a
# witness of the events. Sets QPID.
start_qemu() {
    local name=$1
    "$QEMU" -M q35 -accel tcg -nodefaults -display none -m 256 \
        -device pvpanic -action panic=pause -name "$name" \
        -qmp "unix:$work/$name.vigil.sock,server=on,wait=off" \
        -qmp "unix:$work/$name.test.sock,server=on,wait=off" \
        -qmp "unix:$work/$name.events.sock,server=on,wait=off" \
        >>"$work/$name.qemu.log" 2>&1 &
    QPID=$!
    pids+=("$QPID")
    wait_for 15 test -S "$work/$name.test.sock" || log "QEMU $name did not create its sockets"
}

# start_vigil NAME ARGS...: vigil logging to NAME.jsonl and NAME.err. Sets VPID.
start_vigil() {
    local name=$1
    shift
    "$VIGIL" --log-json "$work/$name.jsonl" --progress-interval 0.2 "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    VPID=$!
    pids+=("$VPID")
}

panic_vm() { qmp "$work/$1.test.sock" human-monitor-command '{"command-line": "o /b 0x505 1"}' >/dev/null; }

# check_dump PREFIX DIR: one ELF dump of about guest RAM, no partial file left.
check_dump() {
    local prefix=$1 dir=$2 files size
    files=("$dir"/*.elf)
    if [ ${#files[@]} -eq 1 ] && [ -f "${files[0]}" ]; then
        pass "$prefix: dump file"
    else
        fail "$prefix: dump file" "expected one .elf in $dir, found: $(ls -A "$dir" 2>&1 | tr '\n' ' ')"
        return
    fi
    check "$prefix: dump is ELF (readelf -h)" "readelf -h ${files[0]} failed" \
        bash -c 'readelf -h "$1" >/dev/null 2>&1' _ "${files[0]}"
    size=$(stat -c %s "${files[0]}")
    check "$prefix: dump size ~ guest RAM" "size $size not in [256 MiB, 300 MiB]" \
        test "$size" -ge $((256 << 20)) -a "$size" -le $((300 << 20))
    check "$prefix: no partial file" "left: $(ls -A "$dir" | grep partial)" \
        bash -c '! ls -A "$1" | grep -q "\.partial$"' _ "$dir"
    check "$prefix: dump named after the VM" "${files[0]}" \
        bash -c '[[ $(basename "$1") =~ ^$2-[0-9]{8}T[0-9]{6}Z\.elf$ ]]' _ "${files[0]}" "$3"
}

# ---------------------------------------------------------------- 1. coredump-restart
log "1. --on-panic coredump-restart"
start_qemu vm1
qmp "$work/vm1.events.sock" --events "$work/vm1.events" &
pids+=($!)
start_vigil v1 --on-panic coredump-restart --dump-dir "$work/d1" "unix:$work/vm1.vigil.sock"
check "restart: vigil connects" "@$work/v1.err" \
    wait_for 10 has "$work/v1.jsonl" status=connected vm=vm1
panic_vm vm1
check "restart: panic seen and acted on" "@$work/v1.err" \
    wait_for 10 has "$work/v1.jsonl" event=GUEST_PANICKED decision=act policy=coredump-restart
check "restart: restart done" "@$work/v1.err" \
    wait_for 40 has "$work/v1.jsonl" action=restart status=ok
check_dump restart "$work/d1" vm1
check "restart: VM running again" "query-status did not log running" \
    bash -c 'python3 "$1" "$2" query-status | grep -q "\"running\": true"' _ "$VIGIL_TESTS/vigilqmp.py" "$work/vm1.test.sock"
check "restart: RESET event (system_reset)" "@$work/vm1.events" \
    wait_for 5 grep -q '"event": "RESET".*host-qmp-system-reset' "$work/vm1.events"
check "restart: dump completed logged" "@$work/v1.jsonl" \
    has "$work/v1.jsonl" action=dump status=completed
kill "$QPID" "$VPID" 2>/dev/null

# ---------------------------------------------------------------- 2. coredump-destroy
log "2. --on-panic coredump-destroy"
start_qemu vm2
start_vigil v2 --on-panic coredump-destroy --dump-dir "$work/d2" "unix:$work/vm2.vigil.sock"
check "destroy: vigil connects" "@$work/v2.err" \
    wait_for 10 has "$work/v2.jsonl" status=connected vm=vm2
panic_vm vm2
check "destroy: QEMU exits" "@$work/v2.err" wait_for 40 dead "$QPID"
check_dump destroy "$work/d2" vm2
check "destroy: destroy logged" "@$work/v2.jsonl" has "$work/v2.jsonl" action=destroy status=ok
check "destroy: no restart" "" test "$(count "$work/v2.jsonl" action=restart)" = 0
check "destroy: vigil keeps running" "@$work/v2.err" alive "$VPID"
kill "$VPID" 2>/dev/null

# ---------------------------------------------------------------- 3. reconnect
log "3. vigil before QEMU, QEMU killed and started again"
start_vigil v3 --on-panic coredump-restart --reconnect-max 1 --dump-dir "$work/d3" "unix:$work/vm3.vigil.sock"
check "reconnect: waits for a missing socket" "@$work/v3.err" \
    wait_for 5 has "$work/v3.jsonl" status=connect-failed
sleep 1
check "reconnect: still running without QEMU" "" alive "$VPID"
start_qemu vm3
check "reconnect: connects when QEMU appears" "@$work/v3.err" \
    wait_for 10 has "$work/v3.jsonl" status=connected vm=vm3
{ kill -KILL "$QPID" && wait "$QPID"; } 2>/dev/null
check "reconnect: notices QEMU died" "@$work/v3.err" \
    wait_for 10 has "$work/v3.jsonl" status=disconnected
sleep 0.5
start_qemu vm3
check "reconnect: reconnects to the new QEMU" "@$work/v3.err" \
    wait_for 15 has_n 2 "$work/v3.jsonl" status=connected vm=vm3
panic_vm vm3
check "reconnect: handles a panic after reconnecting" "@$work/v3.err" \
    wait_for 40 has "$work/v3.jsonl" action=restart status=ok
check_dump reconnect "$work/d3" vm3
check "reconnect: VM running again" "query-status did not log running" \
    bash -c 'python3 "$1" "$2" query-status | grep -q "\"running\": true"' _ "$VIGIL_TESTS/vigilqmp.py" "$work/vm3.test.sock"
kill "$QPID" "$VPID" 2>/dev/null

# ---------------------------------------------------------------- 4. malformed input
log "4. a QMP server that sends garbage"
python3 "$work/fakeqmp.py" "$work/fake.sock" 2>"$work/fake.err" &
pids+=($!)
wait_for 5 test -S "$work/fake.sock"
start_vigil v4 --on-panic restart --reconnect-max 0.5 "unix:$work/fake.sock"
check "malformed: bad greeting refused, then reconnect" "@$work/v4.err" \
    wait_for 10 has "$work/v4.jsonl" status=connected vm=fake
check "identity: the peer's -name fakevm is reported, not believed (vm from the socket: fake)" "@$work/v4.jsonl" \
    has "$work/v4.jsonl" type=identity vm=fake claimed-name=fakevm
check "malformed: bad greeting logged" "@$work/v4.jsonl" \
    bash -c 'grep "connect-failed" "$1" | grep -q "QMP greeting"' _ "$work/v4.jsonl"
check "malformed: valid event after garbage handled" "@$work/v4.err" \
    wait_for 10 has "$work/v4.jsonl" action=restart status=ok
check "malformed: invalid lines logged" "@$work/v4.jsonl" \
    has_n 4 "$work/v4.jsonl" type=protocol status=malformed
check "malformed: unexpected messages logged" "@$work/v4.jsonl" \
    has_n 3 "$work/v4.jsonl" type=protocol status=unexpected
check "malformed: unknown event logged" "" has "$work/v4.jsonl" event=SOME_FUTURE_EVENT decision=none
check "malformed: bad VCPU_STALL only logged" "" has "$work/v4.jsonl" event=VCPU_STALL decision=log
check "malformed: vigil keeps running" "@$work/v4.err" alive "$VPID"
check "malformed: stderr has one line per event" "@$work/v4.err" \
    grep -q '^vigil: fake: GUEST_PANICKED {"action":"pause"}: restart (--on-panic)$' "$work/v4.err"
kill "$VPID" 2>/dev/null

# ---------------------------------------------------------------- 5. unsupported format
log "5. a dump format this QEMU cannot write"
start_qemu vm5
formats=$(qmp "$work/vm5.test.sock" query-dump-guest-memory-capability)
missing=
for f in kdump-lzo kdump-snappy kdump-raw-lzo kdump-raw-snappy; do
    case $formats in *"\"$f\""*) ;; *) missing=$f; break ;; esac
done
c_err="format: a format this QEMU cannot write is an error for this VM's dumps, vigil runs on"
c_fail="format: that VM's panic: its dump fails, the VM is left as it is (no quit)"
c_alive="format: vigil keeps running"
if [ -z "$missing" ]; then
    log "this QEMU writes every kdump format ($formats): nothing to refuse"
    for c in "$c_err" "$c_fail" "$c_alive"; do pass "$c (nothing unsupported)"; done
else
    start_vigil v5 --on-panic coredump-destroy --dump-dir "$work/d5" --dump-format "$missing" \
        "unix:$work/vm5.vigil.sock"
    check "$c_err" "@$work/v5.err" \
        wait_for 10 grep -q "cannot write dump format $missing" "$work/v5.jsonl"
    panic_vm vm5
    check "$c_fail" "@$work/v5.err" \
        wait_for 15 has "$work/v5.jsonl" action=dump status=failed vm-state=preserved
    check "$c_alive" "@$work/v5.err" bash -c 'sleep 0.5; kill -0 "$1" && kill -0 "$2"' _ "$VPID" "$QPID"
    kill "$VPID" 2>/dev/null
fi
kill "$QPID" 2>/dev/null
check "format: usage error without --dump-dir" "" \
    bash -c '"$1" --on-panic coredump-destroy unix:/nonexistent 2>/dev/null; [ $? = 2 ]' _ "$VIGIL"

finish
