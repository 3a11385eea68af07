#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vigil_fleet_peers.py DIR N PIDFILE [options]: N fake QMP peers (QEMU 10.2.2
look-alikes) on unix sockets DIR/vmI.qmp, in one asyncio process, and the
measurements of benchmarks/vigil-fleet.sh:

  1. waits until vigil (its pid in PIDFILE once started) has connected to all
     N peers and finished each session's setup (query-status answered);
  2. idle: vigil's RSS and CPU time over --idle-seconds;
  3. flood: --rate VCPU_STALL warnings per second spread over the peers that
     are not victims, for as long as the samples take; meanwhile, every
     --gap seconds, a GUEST_PANICKED to the next victim (vm0, vm1, ...);
     the latency of a sample is the time from writing the event to reading
     vigil's `quit` for it (vigil runs with --on-panic destroy).
Prints the results as KEY=VALUE lines on stdout.
"""
import argparse
import asyncio
import json
import os
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("n", type=int)
ap.add_argument("pidfile")
ap.add_argument("--idle-seconds", type=float, default=10)
ap.add_argument("--rate", type=int, default=10000)
ap.add_argument("--samples", type=int, default=100)
ap.add_argument("--gap", type=float, default=0.05)
a = ap.parse_args()

GREETING = (json.dumps({"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""},
                                "capabilities": ["oob"]}}) + "\n").encode()
CLK = os.sysconf("SC_CLK_TCK")
ready = set()          # peers whose session setup is done
writers = {}           # i -> transport writer of the live connection
quit_waiters = {}      # i -> future set when quit arrives


def ev(name, data):
    t = time.time()
    return (json.dumps({"event": name, "data": data,
                        "timestamp": {"seconds": int(t), "microseconds": int(t % 1 * 1e6)}}) + "\n").encode()


async def serve(i):
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
                ret = {}
                if cmd == "query-name":
                    ret = {"name": "vm%d" % i}
                elif cmd == "query-status":
                    ret = {"status": "running", "running": True}
                resp = {"return": ret}
                if "id" in req:
                    resp["id"] = req["id"]
                writer.write((json.dumps(resp) + "\n").encode())
                if cmd == "query-status":
                    ready.add(i)
                if cmd == "quit":
                    f = quit_waiters.pop(i, None)
                    if f and not f.done():
                        f.set_result(time.monotonic())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if writers.get(i) is writer:
                del writers[i]
            writer.close()
    return await asyncio.start_unix_server(conn, path=os.path.join(a.dir, "vm%d.qmp" % i), backlog=16)


def proc(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read().rsplit(")", 1)[1].split()
    cpu = (int(st[11]) + int(st[12])) / CLK
    rss = hwm = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return cpu, rss, hwm


async def main():
    servers = [await serve(i) for i in range(a.n)]
    open(os.path.join(a.dir, ".ready"), "w").close()
    while not os.path.exists(a.pidfile) or not open(a.pidfile).read().strip():
        await asyncio.sleep(0.05)
    pid = int(open(a.pidfile).read())
    t0 = time.monotonic()
    while len(ready) < a.n:
        if time.monotonic() - t0 > 120:
            print("error=only %d of %d connected after 120 s" % (len(ready), a.n))
            return
        await asyncio.sleep(0.05)
    print("connect_all_s=%.2f" % (time.monotonic() - t0))
    await asyncio.sleep(2)   # settle

    # idle
    c0, _, _ = proc(pid)
    w0 = time.monotonic()
    await asyncio.sleep(a.idle_seconds)
    c1, rss, hwm = proc(pid)
    w1 = time.monotonic()
    print("idle_rss_kb=%d" % rss)
    print("idle_cpu_percent=%.3f" % (100 * (c1 - c0) / (w1 - w0)))

    # flood + samples
    victims = list(range(min(a.samples, a.n // 2)))
    flooders = [i for i in range(len(victims), a.n)]
    stop = asyncio.Event()
    sent = 0

    async def flood():
        nonlocal sent
        tick = 0.01
        per_tick = max(1, int(a.rate * tick))
        k = 0
        start = time.monotonic()
        while not stop.is_set():
            for _ in range(per_tick):
                i = flooders[k % len(flooders)]
                k += 1
                w = writers.get(i)
                if w:
                    w.write(ev("VCPU_STALL", {"qom-path": "/machine/peripheral/stall", "cpu-index": k % 4,
                                              "budget-ms": 8000, "stage": "warning"}))
                    sent += 1
            # keep the average rate whatever the loop's own delay
            target = start + (sent / a.rate)
            await asyncio.sleep(max(0, target - time.monotonic()))

    c0, _, _ = proc(pid)
    w0 = time.monotonic()
    ft = asyncio.ensure_future(flood())
    await asyncio.sleep(1)
    lat = []
    for v in victims:
        w = writers.get(v)
        if not w:
            continue
        f = asyncio.get_running_loop().create_future()
        quit_waiters[v] = f
        t = time.monotonic()
        w.write(ev("GUEST_PANICKED", {"action": "pause"}))
        try:
            got = await asyncio.wait_for(f, 10)
            lat.append((got - t) * 1000)
        except asyncio.TimeoutError:
            lat.append(float("inf"))
        await asyncio.sleep(a.gap)
    stop.set()
    await ft
    w1 = time.monotonic()
    c1, rss, hwm = proc(pid)
    lat.sort()
    finite = [x for x in lat if x != float("inf")]
    print("flood_rate_ev_per_s=%.0f" % (sent / (w1 - w0)))
    print("flood_cpu_percent=%.1f" % (100 * (c1 - c0) / (w1 - w0)))
    print("flood_rss_kb=%d" % rss)
    print("peak_rss_kb=%d" % hwm)
    print("samples=%d lost=%d" % (len(lat), len(lat) - len(finite)))
    if finite:
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        print("latency_ms_median=%.2f" % statistics.median(lat))
        print("latency_ms_p99=%.2f" % p99)
        print("latency_ms_max=%.2f" % lat[-1])
    for s in servers:
        s.close()


asyncio.run(main())
