#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Print one QEMU's QMP events, one line each (on tests/vigilqmp.py, the
shared QMP client, itself on QEMU's qemu.qmp).

A stand-in, for the demo, for the `vigil` watcher of the management issue.

  qmp-events.py SOCKET [--only EVENT,...] [--until EVENT] [--timeout S]
                [--stall-report QOM_PATH] [--quit]

--until stops after that event (--timeout: at most S seconds without a
message); --stall-report then prints the per-vCPU state of a
vcpu-stall-detector (its cpuN-* QOM properties) and the VM's run state;
--quit ends QEMU.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import vigilqmp  # noqa: E402


def connect(path):
    try:
        return vigilqmp.QMP(path, timeout=10)
    except vigilqmp.QMPError:
        sys.exit("no QMP socket at " + path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("--only", default="")
    ap.add_argument("--until")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--stall-report")
    ap.add_argument("--quit", action="store_true")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    qmp = connect(a.socket)
    start = time.monotonic()
    done = False
    quiet_since = time.monotonic()
    while not done:
        msgs = qmp.pull(0.1)
        if not msgs and qmp.closed:
            return
        if msgs:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= a.timeout:
            print("  (no %s within %.0f s)" % (a.until, a.timeout), flush=True)
            # A fresh session for what follows.
            qmp.close()
            qmp = connect(a.socket)
            break
        for msg in msgs:
            name = msg.get("event")
            if name and (not only or name in only):
                print("  [%5.1f s] QMP event %s %s" % (
                    time.monotonic() - start, name,
                    json.dumps(msg.get("data", {}), sort_keys=True)), flush=True)
            if name and name == a.until:
                done = True
                break
    if a.stall_report:
        cpu = 0
        while True:
            st = {p: qmp.reply("qom-get", path=a.stall_report, property="cpu%d-%s" % (cpu, p))
                  for p in ("enabled", "remaining-ticks", "stalls")}
            if "error" in st["enabled"]:   # no such vCPU
                break
            print("  cpu%d: %s" % (cpu, json.dumps({p: r.get("return", r.get("error"))
                                                     for p, r in st.items()})), flush=True)
            cpu += 1
        print("  run state: %s" % qmp.cmd("query-status")["status"], flush=True)
    if a.quit:
        try:
            qmp.cmd("quit")
        except vigilqmp.QMPError:
            pass
    qmp.close()


if __name__ == "__main__":
    main()
