#!/usr/bin/env python3
"""fakepeer.py SOCKET NAME [--flood N]: a QMP server (python3 standard library)
for vigil's fleet tests.

Serves one client at a time, forever (until killed or `quit`):
  - greets like QEMU 10.2.2 and answers qmp_capabilities, query-name (NAME),
    query-status (running), and anything else with {};
  - appends each command name to SOCKET.cmds and each connection to SOCKET.conns;
  - with --flood N: once the client asked query-status, sends N VCPU_STALL
    warnings (cpu-index 0..3) then one GUEST_PANICKED, as fast as it can;
  - whenever the file SOCKET.panic appears, removes it and sends GUEST_PANICKED;
  - on `quit`: answers, closes and exits (like QEMU).
"""
import json
import os
import select
import socket
import sys
import time

path, name = sys.argv[1], sys.argv[2]
flood = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--flood" else 0
GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""},
                    "capabilities": ["oob"]}}


def ev(name, data):
    t = time.time()
    return (json.dumps({"event": name, "data": data,
                        "timestamp": {"seconds": int(t), "microseconds": int(t % 1 * 1e6)}}) + "\n").encode()


def note(suffix, text):
    with open(path + suffix, "a") as f:
        f.write(text + "\n")


try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX)
# bound at its own path: vigil checks that the server bound the path it
# watches (a socket renamed there from elsewhere is refused)
srv.bind(path)
srv.listen(1)
flooded = False
while True:
    c, _ = srv.accept()
    note(".conns", "connected")
    c.sendall((json.dumps(GREETING) + "\n").encode())
    buf = b""
    alive = True
    while alive:
        r, _, _ = select.select([c], [], [], 0.05)
        if os.path.exists(path + ".panic"):
            os.unlink(path + ".panic")
            c.sendall(ev("GUEST_PANICKED", {"action": "pause"}))
        if not r:
            continue
        chunk = c.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                continue
            cmd = req.get("execute")
            note(".cmds", str(cmd))
            ret = {}
            if cmd == "query-name":
                ret = {"name": name}
            elif cmd == "query-status":
                ret = {"status": "running", "running": True}
            resp = {"return": ret}
            if "id" in req:
                resp["id"] = req["id"]
            c.sendall((json.dumps(resp) + "\n").encode())
            if cmd == "quit":
                c.close()
                srv.close()
                os.unlink(path)
                sys.exit(0)
            if cmd == "query-status" and flood and not flooded:
                flooded = True
                blob = b"".join(ev("VCPU_STALL", {"qom-path": "/machine/peripheral/stall", "cpu-index": i % 4,
                                                  "budget-ms": 8000, "stage": "warning"})
                                for i in range(flood))
                c.sendall(blob + ev("GUEST_PANICKED", {"action": "pause"}))
                note(".cmds", "FLOOD-SENT")
    c.close()
