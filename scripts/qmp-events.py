#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Print one QEMU's QMP events, one line each (standard library only).

A stand-in, for the demo, for the `vigil` watcher of the management issue.

  qmp-events.py SOCKET [--only EVENT,...] [--until EVENT] [--timeout S]
                [--stall-report QOM_PATH] [--quit]

--until stops after that event; --stall-report then prints the per-vCPU
state of a vcpu-stall-detector (its cpuN-* QOM properties) and the VM's
run state; --quit ends QEMU.
"""
import argparse
import json
import socket
import sys
import time


class Qmp:
    def __init__(self, path):
        for _ in range(100):
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("no QMP socket at " + path)
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.events = []
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            msg = self.read()
            if msg is None or "return" in msg or "error" in msg:
                return msg and msg.get("return", msg.get("error"))
            self.events.append(msg)

    def read(self):
        line = self.f.readline()
        return json.loads(line) if line else None


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
    qmp = Qmp(a.socket)
    start = time.monotonic()
    qmp.sock.settimeout(a.timeout)
    try:
        while True:
            msg = qmp.events.pop(0) if qmp.events else qmp.read()
            if msg is None:
                return
            name = msg.get("event")
            if name and (not only or name in only):
                print("  [%5.1f s] QMP event %s %s" % (
                    time.monotonic() - start, name,
                    json.dumps(msg.get("data", {}), sort_keys=True)), flush=True)
            if name and name == a.until:
                break
    except socket.timeout:
        print("  (no %s within %.0f s)" % (a.until, a.timeout), flush=True)
        # A stream that timed out cannot be read again: a new connection
        # (QEMU takes the next client once this one is gone).
        qmp.sock.close()
        qmp = Qmp(a.socket)
    qmp.sock.settimeout(None)
    if a.stall_report:
        cpu = 0
        while True:
            st = {p: qmp.cmd("qom-get", path=a.stall_report,
                             property="cpu%d-%s" % (cpu, p))
                  for p in ("enabled", "remaining-ticks", "stalls")}
            if isinstance(st["enabled"], dict):   # an error: no such vCPU
                break
            print("  cpu%d: %s" % (cpu, json.dumps(st)), flush=True)
            cpu += 1
        print("  run state: %s" % qmp.cmd("query-status")["status"], flush=True)
    if a.quit:
        qmp.cmd("quit")


if __name__ == "__main__":
    main()
