#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vigil_hostile_peers.py ROLE ...: the processes of benchmarks/vigil-hostile.sh.

Every QMP peer is a fake QEMU (10.2.2 look-alike) that binds its unix socket
directly at DIR/vmI.qmp (vigil checks the bound path and the owner). Roles,
each its own process so that the hostile ones' Python load does not become
the healthy peers' latency:

  healthy DIR N     the healthy VMs (all indices but --skip), one asyncio
                    process; measures: GUEST_PANICKED -> `quit` of SAMPLES
                    VMs (vm0, vm1, ...; one every --gap s, not waiting for the
                    previous one), panic -> --notify hook (the hook's log),
                    CPU of every process of the run (PIDS file) over the
                    window; prints KEY=VALUE lines.
  flood DIR I...    flooders: distinct events (name and data) of --bytes
                    bytes each, as fast as vigil reads them, one thread and
                    a blocking socket per VM.
  holders DIR I...  dump holders: GUEST_PANICKED right after vigil's setup;
                    take the getfd descriptor (recvmsg, SCM_RIGHTS), answer
                    dump-guest-memory with {} and query-dump with "active"
                    forever, never DUMP_COMPLETED. A dump vigil gave up on
                    (no query-dump for 3 s) is followed by a new panic, so
                    the slots stay taken for the whole run.
  slowloris PORT    --clients x --conns TCP connections to /metrics, each
                    sending a request head a byte every --trickle s, never
                    ending it; reconnecting when vigil closes one.
  scrape PORT DIR   GET /metrics every second; after the run one last scrape
                    whose counters are reported.
  logstats FILE     counts of vigil's JSON-lines log.
  report A B        the comparison table of two runs' KEY=VALUE files.

The window measured is from DIR/.measuring (created by `healthy` once all its
peers are set up) to DIR/.done; the other roles write DIR/.result-ROLE then.
"""
import argparse
import array
import asyncio
import json
import os
import select
import signal
import socket
import statistics
import sys
import threading
import time

GREETING = (json.dumps({"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""},
                                "capabilities": ["oob"]}}) + "\n").encode()
CLK = os.sysconf("SC_CLK_TCK")
GUEST_RAM = 256 << 20


def stamp():
    t = time.time()
    return {"seconds": int(t), "microseconds": int(t % 1 * 1e6)}


def ev(name, data):
    return (json.dumps({"event": name, "data": data, "timestamp": stamp()}) + "\n").encode()


def answer(i, req):
    """The reply of a well-behaved QEMU to one command, as bytes."""
    cmd = req.get("execute")
    ret = {}
    if cmd == "query-name":
        ret = {"name": "vm%d" % i}
    elif cmd == "query-status":
        ret = {"status": "running", "singlestep": False, "running": True}
    elif cmd == "query-dump-guest-memory-capability":
        ret = {"formats": ["elf", "kdump-zlib", "kdump-raw-zlib"]}
    elif cmd == "query-memory-size-summary":
        ret = {"base-memory": GUEST_RAM, "plugged-memory": 0}
    elif cmd == "query-dump":
        ret = {"status": "active", "completed": 1 << 20, "total": GUEST_RAM}
    resp = {"return": ret}
    if "id" in req:
        resp["id"] = req["id"]
    return (json.dumps(resp) + "\n").encode()


def sock_path(d, i):
    return os.path.join(d, "vm%d.qmp" % i)


def proc(pid):
    """(own CPU s, waited-for children's CPU s, user s, system s) of a
    process, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    u, s, cu, cs = (int(x) / CLK for x in st[11:15])
    return u + s, cu + cs, u, s


def machine_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def wait_for(path, stop=None):
    while not os.path.exists(path):
        if stop is not None and stop.is_set():
            return
        time.sleep(0.1)


def write_result(d, role, kv):
    tmp = os.path.join(d, ".result-%s.tmp" % role)
    with open(tmp, "w") as f:
        for k, v in kv.items():
            f.write("%s=%s\n" % (k, v))
    os.rename(tmp, os.path.join(d, ".result-%s" % role))


def parse_set(spec):
    out = set()
    for part in filter(None, spec.split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


# ---------------------------------------------------------------- healthy

async def healthy(a):
    skip = parse_set(a.skip)
    idx = [i for i in range(a.n) if i not in skip]
    ready = set()
    writers = {}
    quit_waiters = {}
    servers = {}
    quit_at = {}

    def serve(i):
        async def conn(reader, writer):
            writers[i] = writer
            writer.write(GREETING)
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    try:
                        req = json.loads(line)
                    except ValueError:
                        continue
                    cmd = req.get("execute")
                    writer.write(answer(i, req))
                    if cmd == "query-status":
                        ready.add(i)
                    elif cmd == "quit":
                        quit_at[i] = time.monotonic()
                        f = quit_waiters.pop(i, None)
                        if f and not f.done():
                            f.set_result(quit_at[i])
                        # as QEMU: SHUTDOWN, then the process (and socket) goes
                        writer.write(ev("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
                        await writer.drain()
                        break
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                if writers.get(i) is writer:
                    del writers[i]
                writer.close()
                if i in quit_at and i in servers:
                    servers.pop(i).close()
                    try:
                        os.unlink(sock_path(a.dir, i))
                    except OSError:
                        pass
        return conn

    for i in idx:
        servers[i] = await asyncio.start_unix_server(serve(i), path=sock_path(a.dir, i), backlog=16)
    open(os.path.join(a.dir, ".ready-healthy"), "w").close()

    # the pids of the run: NAME PID lines, then "end"
    pids = {}
    while True:
        try:
            lines = open(a.pids).read().split("\n")
            if "end" in lines:
                for line in lines:
                    if " " in line:
                        k, v = line.split()
                        pids[k] = int(v)
                break
        except OSError:
            pass
        await asyncio.sleep(0.05)
    pids["healthy"] = os.getpid()
    t0 = time.monotonic()
    while len(ready) < len(idx):
        if time.monotonic() - t0 > 300:
            print("error=only %d of %d healthy peers set up after 300 s" % (len(ready), len(idx)))
            return
        await asyncio.sleep(0.05)
    print("connect_all_s=%.2f" % (time.monotonic() - t0))

    # the window: warm-up (the attack settles in), then the samples
    open(os.path.join(a.dir, ".measuring"), "w").close()
    cpu0 = {k: proc(p) for k, p in pids.items()}
    m0 = machine_cpu()
    w0 = time.monotonic()
    await asyncio.sleep(a.warmup)

    victims = idx[:min(a.samples, len(idx) // 2)]
    loop = asyncio.get_running_loop()
    sent_mono, sent_wall, futs = {}, {}, {}
    for v in victims:
        w = writers.get(v)
        if w is None:
            continue
        futs[v] = loop.create_future()
        quit_waiters[v] = futs[v]
        sent_wall[v] = time.time()
        sent_mono[v] = time.monotonic()
        w.write(ev("GUEST_PANICKED", {"action": "pause"}))
        await asyncio.sleep(a.gap)
    await asyncio.wait(list(futs.values()), timeout=a.timeout)
    w1 = time.monotonic()
    m1 = machine_cpu()
    cpu1 = {k: proc(p) for k, p in pids.items()}
    open(os.path.join(a.dir, ".done"), "w").close()

    lat = []
    for v in victims:
        f = futs.get(v)
        lat.append((f.result() - sent_mono[v]) * 1000 if f is not None and f.done() else float("inf"))
    finite = [x for x in lat if x != float("inf")]
    secs = w1 - w0
    print("window_s=%.1f" % secs)
    print("samples=%d" % len(victims))
    print("lost=%d" % (len(lat) - len(finite)))
    if finite:
        print("latency_ms_median=%.2f" % statistics.median(lat))
        print("latency_ms_p99=%.2f" % pct(lat, 0.99))
        print("latency_ms_max=%.2f" % max(lat))
    for k in sorted(pids):
        if cpu0.get(k) and cpu1.get(k):
            print("cpu_%s=%.1f" % (k, 100 * (cpu1[k][0] - cpu0[k][0]) / secs))
            if k == "vigil":
                print("cpu_hooks=%.1f" % (100 * (cpu1[k][1] - cpu0[k][1]) / secs))
                print("vigil_user=%.1f" % (100 * (cpu1[k][2] - cpu0[k][2]) / secs))
                print("vigil_sys=%.1f" % (100 * (cpu1[k][3] - cpu0[k][3]) / secs))
    busy, total = m1[0] - m0[0], m1[1] - m0[1]
    print("cpu_machine=%.1f" % (100 * os.cpu_count() * busy / max(total, 1)))

    # page delivery: the hook's lines "VM EVENT TIME" of the sample VMs
    want = {"vm%d" % v: v for v in victims if v in sent_wall}
    got = {}
    deadline = time.monotonic() + a.hook_wait
    while True:
        try:
            with open(a.hook_log) as f:
                for line in f:
                    p = line.split()
                    if len(p) == 3 and p[1] == "GUEST_PANICKED" and p[0] in want and p[0] not in got:
                        got[p[0]] = (float(p[2]) - sent_wall[want[p[0]]]) * 1000
        except OSError:
            pass
        if len(got) == len(want) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    print("hook_delivered=%d" % len(got))
    if got:
        h = list(got.values())
        print("hook_ms_median=%.1f" % statistics.median(h))
        print("hook_ms_p99=%.1f" % pct(h, 0.99))
        print("hook_ms_max=%.1f" % max(h))
    for s in servers.values():
        s.close()


# ---------------------------------------------------------------- blocking peers

class Peer:
    """One blocking QMP connection: line reading with the descriptors that
    come with it (recvmsg), writes under a lock."""

    def __init__(self, c):
        self.c = c
        self.buf = b""
        self.lock = threading.Lock()
        self.fds = []

    def send(self, data):
        with self.lock:
            self.c.sendall(data)

    def lines(self, timeout=None):
        """The complete lines now available (waiting up to `timeout`);
        None when the connection is gone."""
        if timeout is not None and not select.select([self.c], [], [], timeout)[0]:
            return []
        try:
            data, anc, _, _ = self.c.recvmsg(1 << 16, socket.CMSG_SPACE(16 * array.array("i").itemsize))
        except OSError:
            return None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                self.fds.extend(fds)
        if not data:
            return None
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        return done


def listen(d, i):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path(d, i))     # bound at the watched path itself
    s.listen(4)
    return s


def serve_forever(lsock, handler, stop):
    while not stop.is_set():
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        try:
            handler(Peer(c))
        except OSError:
            pass
        finally:
            c.close()


def flood(a):
    stop = threading.Event()
    idx = [int(x) for x in a.indices]
    # distinct data: windows of a random blob at moving offsets
    base = os.urandom(a.bytes).hex().encode()
    sent = {i: [0, 0] for i in idx}        # events, bytes

    def handler(i):
        def h(p):
            p.send(GREETING)
            flooding = threading.Event()

            def spray():
                k = 0
                # the same length for every k < 10**9; the counter first, so
                # that even vigil's excerpt of the data differs
                head_len = len(b'{"event": "HOSTILE_%d_%d", "data": {"blob": "%d-%d-", "n": %d}, "timestamp": '
                               b'{"seconds": 1700000000, "microseconds": 123456}}\n' % (i, 10**9, i, 10**9, 10**9))
                size = a.bytes - head_len
                while not stop.is_set():
                    off = (i * 104729 + k * 7919) % (len(base) - size)
                    line = b''.join([b'{"event": "HOSTILE_%d_%d", "data": {"blob": "%d-%d-' % (i, k, i, k),
                                     base[off:off + size], b'", "n": %d}, "timestamp": ' % k,
                                     json.dumps(stamp()).encode(), b'}\n'])
                    try:
                        p.send(line)
                    except OSError:
                        return
                    sent[i][0] += 1
                    sent[i][1] += len(line)
                    k += 1

            while True:
                lines = p.lines()
                if lines is None:
                    return
                for line in lines:
                    try:
                        req = json.loads(line)
                    except ValueError:
                        continue
                    p.send(answer(i, req))
                    if req.get("execute") == "query-status" and not flooding.is_set():
                        flooding.set()
                        threading.Thread(target=spray, daemon=True).start()
        return h

    socks = {i: listen(a.dir, i) for i in idx}
    for i in idx:
        threading.Thread(target=serve_forever, args=(socks[i], handler(i), stop), daemon=True).start()
    open(os.path.join(a.dir, ".ready-flood"), "w").close()
    wait_for(os.path.join(a.dir, ".measuring"))
    e0, b0, t0 = sum(v[0] for v in sent.values()), sum(v[1] for v in sent.values()), time.monotonic()
    wait_for(os.path.join(a.dir, ".done"))
    e1, b1, t1 = sum(v[0] for v in sent.values()), sum(v[1] for v in sent.values()), time.monotonic()
    write_result(a.dir, "flood", {
        "flood_events_per_s": "%.0f" % ((e1 - e0) / (t1 - t0)),
        "flood_mb_per_s": "%.1f" % ((b1 - b0) / (t1 - t0) / 1e6),
        "flood_events_total": e1,
        "flood_event_bytes": a.bytes,
    })
    stop.set()


def holders(a):
    stop = threading.Event()
    idx = [int(x) for x in a.indices]
    st = {"getfd": 0, "fds": 0, "dumps": 0, "polls": 0, "panics": 0, "connections": 0}
    mu = threading.Lock()

    def count(k, n=1):
        with mu:
            st[k] += n

    def handler(i):
        def h(p):
            count("connections")
            p.send(GREETING)
            dumping = False
            last_poll = time.monotonic()
            held = []       # the dump descriptors taken, kept open as QEMU would
            try:
                while not stop.is_set():
                    lines = p.lines(0.5)
                    if lines is None:
                        return
                    if p.fds:
                        count("fds", len(p.fds))
                        held.extend(p.fds)
                        p.fds = []
                    for line in lines:
                        try:
                            req = json.loads(line)
                        except ValueError:
                            continue
                        cmd = req.get("execute")
                        if cmd == "getfd":
                            count("getfd")
                            while len(held) > 1:     # keep only the newest
                                os.close(held.pop(0))
                        elif cmd == "dump-guest-memory":
                            count("dumps")
                            dumping, last_poll = True, time.monotonic()
                        elif cmd == "query-dump":
                            count("polls")
                            last_poll = time.monotonic()
                        p.send(answer(i, req))
                        if cmd == "query-status":
                            count("panics")
                            p.send(ev("GUEST_PANICKED", {"action": "pause"}))
                    if dumping and time.monotonic() - last_poll > 3:
                        # vigil gave up on the dump (--dump-timeout): panic again
                        dumping = False
                        count("panics")
                        p.send(ev("GUEST_PANICKED", {"action": "pause"}))
            finally:
                for fd in held:
                    os.close(fd)
        return h

    socks = {i: listen(a.dir, i) for i in idx}
    for i in idx:
        threading.Thread(target=serve_forever, args=(socks[i], handler(i), stop), daemon=True).start()
    open(os.path.join(a.dir, ".ready-holders"), "w").close()
    wait_for(os.path.join(a.dir, ".measuring"))
    with mu:
        s0 = dict(st)
    wait_for(os.path.join(a.dir, ".done"))
    with mu:
        s1 = dict(st)
    write_result(a.dir, "holders", {
        "holders_connections": s1["connections"],
        "holders_panics": s1["panics"],
        "holders_dumps_started": s1["dumps"],
        "holders_dumps_started_window": s1["dumps"] - s0["dumps"],
        "holders_fds_received": s1["fds"],
        "holders_getfd": s1["getfd"],
        "holders_query_dump": s1["polls"],
    })
    stop.set()


# ---------------------------------------------------------------- /metrics clients

async def slowloris(a):
    done = os.path.join(a.dir, ".done")
    st = {"opened": 0, "refused": 0, "closed_by_vigil": 0, "bytes_trickled": 0, "open": 0,
          "open_max": 0, "answered": 0}
    lifetimes = []
    measuring = os.path.join(a.dir, ".measuring")
    open_samples = []

    async def one():
        await asyncio.sleep(a.trickle * os.urandom(1)[0] / 256)
        while not os.path.exists(done):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", a.port)
            except OSError:
                st["refused"] += 1
                await asyncio.sleep(0.5)
                continue
            st["opened"] += 1
            st["open"] += 1
            st["open_max"] = max(st["open_max"], st["open"])
            t0 = time.monotonic()
            try:
                w.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                while not os.path.exists(done):
                    try:
                        d = await asyncio.wait_for(r.read(4096), a.trickle)
                    except asyncio.TimeoutError:
                        w.write(b"a")
                        await w.drain()
                        st["bytes_trickled"] += 1
                        continue
                    if not d:
                        break
                    st["answered"] += 1     # vigil answered (e.g. 408) instead of waiting
            except (ConnectionError, OSError):
                pass
            st["open"] -= 1
            if not os.path.exists(done):
                st["closed_by_vigil"] += 1
                lifetimes.append(time.monotonic() - t0)
            w.close()

    async def sampler():
        while not os.path.exists(done):
            if os.path.exists(measuring):
                open_samples.append(st["open"])
            await asyncio.sleep(0.5)

    tasks = [asyncio.ensure_future(one()) for _ in range(a.clients * a.conns)]
    tasks.append(asyncio.ensure_future(sampler()))
    open(os.path.join(a.dir, ".ready-slowloris"), "w").close()
    await asyncio.gather(*tasks, return_exceptions=True)
    write_result(a.dir, "slowloris", {
        "slow_conns": a.clients * a.conns,
        "slow_opened": st["opened"],
        "slow_closed_by_vigil": st["closed_by_vigil"],
        "slow_answered": st["answered"],
        "slow_refused": st["refused"],
        "slow_open_median": "%.0f" % (statistics.median(open_samples) if open_samples else 0),
        "slow_open_max": st["open_max"],
        "slow_lifetime_s_median": "%.1f" % (statistics.median(lifetimes) if lifetimes else 0),
    })


def get_metrics(port, timeout):
    """(ok, seconds, body) of one GET /metrics."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            chunks = []
            while True:
                d = s.recv(1 << 16)
                if not d:
                    break
                chunks.append(d)
                if time.monotonic() - t0 > timeout:
                    raise socket.timeout()
        resp = b"".join(chunks)
        head, _, body = resp.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.1 200") and b"vigil_endpoints" in body
        return ok, time.monotonic() - t0, body
    except OSError:
        return False, time.monotonic() - t0, b""


def scrape(a):
    measuring = os.path.join(a.dir, ".measuring")
    done = os.path.join(a.dir, ".done")
    ok_t, failed = [], 0
    while not os.path.exists(done):
        t = time.monotonic()
        ok, secs, _ = get_metrics(a.port, 10)
        if os.path.exists(measuring) and not os.path.exists(done):
            if ok:
                ok_t.append(secs * 1000)
            else:
                failed += 1
        time.sleep(max(0, 1 - (time.monotonic() - t)))
    res = {"scrape_ok": len(ok_t), "scrape_failed": failed}
    if ok_t:
        res["scrape_ms_median"] = "%.1f" % statistics.median(ok_t)
        res["scrape_ms_max"] = "%.1f" % max(ok_t)
    # the counters, once the window is over
    for _ in range(10):
        ok, _, body = get_metrics(a.port, 10)
        if ok:
            break
        time.sleep(0.5)
    sums = dict.fromkeys(["vigil_dump_timeouts_total", "vigil_records_dropped_total_notify",
                          "vigil_records_dropped_total_log", "vigil_notify_total_ok", "vigil_notify_total_failed",
                          "vigil_notify_total_timeout", "vigil_notify_total_error", "vigil_notify_total_dropped",
                          "vigil_protocol_errors_total", "vigil_peer_refused_total", "vigil_events_total_other",
                          "vigil_dump_waits_total"], 0) if body else {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        key = None
        if name in ("vigil_records_dropped_total", "vigil_notify_total"):
            for lab in ("sink", "result"):
                for part in labels.rstrip("}").split(","):
                    if part.startswith(lab + "="):
                        key = "%s_%s" % (name, part.split("=", 1)[1].strip('"'))
        elif name == "vigil_events_total" and 'event="other"' in labels:
            key = "vigil_events_total_other"
        elif name in ("vigil_events_coalesced_total", "vigil_dump_timeouts_total", "vigil_protocol_errors_total",
                      "vigil_dump_waits_total", "vigil_peer_refused_total", "vigil_endpoints",
                      "vigil_dumps_running", "vigil_dumps_waiting", "vigil_name_mismatch_total"):
            key = name
        elif name == "vigil_dumps_total":
            key = name
        if key:
            try:
                sums[key] = sums.get(key, 0) + float(value)
            except ValueError:
                pass
    res["metrics_final_bytes"] = len(body)
    for k, v in sums.items():
        res["m_" + k] = "%d" % v
    write_result(a.dir, "scrape", res)


# ---------------------------------------------------------------- analysis

def logstats(a):
    n = size = 0
    c = {}

    def inc(k):
        c[k] = c.get(k, 0) + 1
    with open(a.file, "rb") as f:
        for line in f:
            n += 1
            size += len(line)
            try:
                r = json.loads(line)
            except ValueError:
                inc("log_unparsable")
                continue
            t = r.get("type")
            if t == "action":
                inc("log_action_%s_%s" % (r.get("action"), r.get("status")))
                if r.get("status") == "failed" and "timeout" in str(r.get("error", "")).lower():
                    inc("log_dump_failed_timeout")
            elif t == "event":
                flood = str(r.get("event", "")).startswith("HOSTILE_")
                inc("log_event_" + ("flood" if flood else r.get("decision", "?")))
            elif t in ("notify", "protocol", "connection"):
                inc("log_%s_%s" % (t, r.get("status")))
            else:
                inc("log_" + str(t))
    print("log_lines=%d" % n)
    print("log_mb=%.1f" % (size / 1e6))
    for k in sorted(c):
        print("%s=%d" % (k.replace("-", "_"), c[k]))


def report(a):
    runs = []
    for path in (a.baseline, a.hostile):
        kv = {}
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                kv[k] = v
        runs.append(kv)
    b, h = runs
    w = 26

    def row(label, fmt, *keys, note=""):
        cells = []
        for r in runs:
            try:
                cells.append(fmt.format(*[r[k] for k in keys]))
            except KeyError:
                cells.append("-")
        print("  %-44s %-*s %-*s%s" % (label, w, cells[0], w, cells[1], ("  " + note) if note else ""))

    def num(r, k):
        try:
            return float(r[k])
        except (KeyError, ValueError):
            return 0.0

    print("  %-44s %-*s %-*s" % ("", w, "baseline (no hostile)", w, "hostile"))
    row("endpoints (healthy + hostile)", "{} + {}", "endpoints_healthy", "endpoints_hostile")
    row("all healthy set up after (s)", "{}", "connect_all_s")
    row("window measured (s)", "{}", "window_s")
    print("  GUEST_PANICKED -> quit, healthy VMs:")
    row("  samples (lost)", "{} ({})", "samples", "lost")
    row("  median / p99 / max (ms)", "{} / {} / {}", "latency_ms_median", "latency_ms_p99", "latency_ms_max")
    print("  page delivery (--notify hook, the samples' GUEST_PANICKED records):")
    row("  delivered", "{} of {}", "hook_delivered", "samples")
    row("  panic -> hook median / p99 / max (ms)", "{} / {} / {}", "hook_ms_median", "hook_ms_p99", "hook_ms_max")
    print("  /metrics, one scrape a second during the window:")
    row("  ok / failed", "{} / {}", "scrape_ok", "scrape_failed")
    row("  median / max (ms)", "{} / {}", "scrape_ms_median", "scrape_ms_max")
    print("  vigil:")
    for r in runs:
        if "vigil_hwm_kb" in r:
            r["vigil_hwm_mib"] = "%.1f" % (int(r["vigil_hwm_kb"]) / 1024)
            r["vigil_rss_mib"] = "%.1f" % (int(r["vigil_rss_kb"]) / 1024)
    row("  peak RSS (VmHWM) / RSS at the end (MiB)", "{} / {}", "vigil_hwm_mib", "vigil_rss_mib")
    row("  threads; still running at the end", "{}; {}", "vigil_threads", "vigil_alive")
    print("  CPU during the window (%% of one CPU; the machine has %s):" % b.get("cpus", "?"))
    row("  vigil (user + system)", "{} ({} + {})", "cpu_vigil", "vigil_user", "vigil_sys")
    row("  --notify hooks (vigil's children)", "{}", "cpu_hooks")
    row("  healthy peers (1 asyncio process)", "{}", "cpu_healthy")
    row("  flooders", "{}", "cpu_flood")
    row("  dump holders", "{}", "cpu_holders")
    row("  slowloris", "{}", "cpu_slowloris")
    row("  scraper", "{}", "cpu_scraper")
    for r in runs:
        ours = sum(num(r, k) for k in list(r) if k.startswith("cpu_") and k != "cpu_machine")
        r["cpu_others"] = "%.1f" % max(0.0, num(r, "cpu_machine") - ours)
    row("  whole machine / not this benchmark", "{} / {}", "cpu_machine", "cpu_others")
    row("  load average at the start", "{}", "load")
    print("  the attack:")
    row("  flood: events/s, MB/s offered and taken", "{} /s, {} MB/s", "flood_events_per_s", "flood_mb_per_s")
    row("  flood: events sent / vigil counted (all run)", "{} / {}", "flood_events_total", "m_vigil_events_total_other")
    row("  dumps started (in window) / timed out", "{} ({}) / {}", "holders_dumps_started",
        "holders_dumps_started_window", "m_vigil_dump_timeouts_total")
    row("  getfd descriptors received / query-dump", "{} / {}", "holders_fds_received", "holders_query_dump")
    row("  dump waits (slots full)", "{}", "m_vigil_dump_waits_total")
    row("  slowloris: open (median / max)", "{} / {}", "slow_open_median", "slow_open_max")
    row("  slowloris: opened / closed by vigil", "{} / {}", "slow_opened", "slow_closed_by_vigil")
    row("  slowloris: lifetime median (s)", "{}", "slow_lifetime_s_median")
    print("  vigil's counters at the end (/metrics):")
    row("  hook runs ok / failed / timeout / dropped", "{} / {} / {} / {}", "m_vigil_notify_total_ok",
        "m_vigil_notify_total_failed", "m_vigil_notify_total_timeout", "m_vigil_notify_total_dropped")
    row("  records dropped: notify / log", "{} / {}", "m_vigil_records_dropped_total_notify",
        "m_vigil_records_dropped_total_log")
    row("  protocol errors", "{}", "m_vigil_protocol_errors_total")
    row("  peers refused", "{}", "m_vigil_peer_refused_total")
    row("  JSON log: lines, MB", "{}, {}", "log_lines", "log_mb")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("healthy")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.add_argument("--skip", default="")
    p.add_argument("--pids", required=True)
    p.add_argument("--hook-log", required=True)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--gap", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=5)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--hook-wait", type=float, default=15)
    p = sub.add_parser("flood")
    p.add_argument("dir")
    p.add_argument("indices", nargs="+")
    p.add_argument("--bytes", type=int, default=1_000_000)
    p = sub.add_parser("holders")
    p.add_argument("dir")
    p.add_argument("indices", nargs="+")
    p = sub.add_parser("slowloris")
    p.add_argument("port", type=int)
    p.add_argument("dir")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--trickle", type=float, default=2)
    p = sub.add_parser("scrape")
    p.add_argument("port", type=int)
    p.add_argument("dir")
    p = sub.add_parser("logstats")
    p.add_argument("file")
    p = sub.add_parser("report")
    p.add_argument("baseline")
    p.add_argument("hostile")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if a.role == "healthy":
        asyncio.run(healthy(a))
    elif a.role == "slowloris":
        asyncio.run(slowloris(a))
    else:
        {"flood": flood, "holders": holders, "scrape": scrape, "logstats": logstats, "report": report}[a.role](a)


if __name__ == "__main__":
    sys.exit(main())
