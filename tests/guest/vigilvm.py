# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared by the arm64 Linux guest tests (uefi-guest-test.sh, kdump-test.sh):
starts QEMU (TCG, serial to a file, QMP socket), follows its QMP events and
serial console, and prints the PASS/FAIL protocol of scripts/run-tests.sh
("PASS<TAB>name" on stdout, details on stderr). Standard library only."""

import json, os, re, select, shutil, socket, subprocess, sys, time

T0 = time.time()
failures = 0
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"


def log(*a):
    print("[%7.2f]" % (time.time() - T0), *a, file=sys.stderr, flush=True)


def result(name, ok, detail=""):
    global failures
    if detail:
        log(("ok: " if ok else "NOT OK: ") + name + ": " + detail)
    print("%s\t%s" % ("PASS" if ok else "FAIL", name), flush=True)
    if not ok:
        failures += 1
    return ok


def firmware_args(tmp, name):
    """-drive options for AAVMF (code read-only, a private copy of the vars)."""
    vars_copy = os.path.join(tmp, name + ".vars.fd")
    shutil.copyfile(AAVMF_VARS, vars_copy)
    return ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + AAVMF_CODE,
            "-drive", "if=pflash,format=raw,unit=1,file=" + vars_copy]


class VM:
    def __init__(self, qemu, name, tmp, args, no_reboot=True):
        self.name = name
        self.serial_path = os.path.join(tmp, name + ".serial")
        self.sock_path = os.path.join(tmp, name + ".qmp")
        self.err_path = os.path.join(tmp, name + ".err")
        cmd = [qemu, "-accel", "tcg", "-nodefaults", "-display", "none",
               "-name", name + ",debug-threads=on",
               "-serial", "file:" + self.serial_path,
               "-qmp", "unix:%s,server=on,wait=off" % self.sock_path] + \
              (["-no-reboot"] if no_reboot else []) + args
        log("[%s] %s" % (name, " ".join(cmd)))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.err_path, "w"))
        self.t_start = time.time()
        self.buf = b""
        self.events = []          # (host time, name, data)
        self.serial = []          # (host time, line)
        self.replies = {}
        self.closed = False
        self.serial_pos, self.serial_part = 0, b""
        self.next_id = 0
        deadline = time.time() + 30
        while True:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.s.connect(self.sock_path)
                break
            except OSError:
                self.s.close()
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("cannot connect to QMP: " + open(self.err_path).read())
                time.sleep(0.05)
        self.read_msgs(lambda: hasattr(self, "greeting"), 10)
        self.cmd("qmp_capabilities")

    def handle(self, msg):
        if "QMP" in msg:
            self.greeting = msg
        elif "event" in msg:
            self.events.append((time.time(), msg["event"], msg.get("data", {})))
            log("[%s] event" % self.name, msg["event"], json.dumps(msg.get("data", {})))
        elif "id" in msg:
            self.replies[msg["id"]] = msg

    def poll_serial(self):
        try:
            with open(self.serial_path, "rb") as f:
                f.seek(self.serial_pos)
                data = f.read()
        except OSError:
            return
        self.serial_pos += len(data)
        self.serial_part += data
        *lines, self.serial_part = self.serial_part.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").rstrip("\r")
            self.serial.append((time.time(), text))
            if re.search(r"vigil-guest:|pvpanic|stall|kexec|crash|Kernel panic|Booting Linux", text,
                         re.I):
                log("[%s] serial |" % self.name, text)

    def read_msgs(self, until, timeout):
        """Pumps QMP and serial until until() or timeout; returns until()."""
        end = time.time() + timeout
        while not until():
            left = end - time.time()
            if left <= 0 or self.closed:
                self.poll_serial()
                return until()
            r, _, _ = select.select([self.s], [], [], min(left, 0.05))
            self.poll_serial()
            if r:
                data = self.s.recv(65536)
                if not data:
                    self.closed = True
                    continue
                self.buf += data
                *lines, self.buf = self.buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.handle(json.loads(line))
        return True

    def sleep(self, seconds):
        self.read_msgs(lambda: False, seconds)

    def cmd(self, name, **arguments):
        self.next_id += 1
        i = self.next_id
        msg = {"execute": name, "id": i}
        if arguments:
            msg["arguments"] = arguments
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        if not self.read_msgs(lambda: i in self.replies, 10):
            raise RuntimeError("no reply to " + name)
        reply = self.replies.pop(i)
        if "error" in reply:
            raise RuntimeError("%s: %s" % (name, reply["error"]))
        return reply["return"]

    def qom(self, path, prop):
        return self.cmd("qom-get", path=path, property=prop)

    def lines(self, regex, since=0.0):
        r = re.compile(regex)
        return [(t, l) for t, l in self.serial if t >= since and r.search(l)]

    def wait_serial(self, regex, timeout, since=0.0):
        r = re.compile(regex)
        hit = lambda: next(((t, l) for t, l in self.serial if t >= since and r.search(l)), None)
        self.read_msgs(lambda: hit() is not None, timeout)
        return hit()

    def wait_event(self, pred, timeout):
        hit = lambda: next((e for e in self.events if pred(e)), None)
        self.read_msgs(lambda: hit() is not None, timeout)
        return hit()

    def status(self):
        return self.cmd("query-status")["status"]

    def dump_serial(self, n=80):
        log("---- [%s] serial (last %d lines) ----" % (self.name, n))
        for _, l in self.serial[-n:]:
            print("    " + l, file=sys.stderr)
        try:
            err = open(self.err_path).read().strip()
        except OSError:
            err = ""
        if err:
            log("---- [%s] QEMU stderr ----\n%s" % (self.name, err))

    def vcpu_ns(self, cpu):
        """CPU time (ns) QEMU's thread "CPU <cpu>/TCG" has used, or None."""
        task = "/proc/%d/task" % self.proc.pid
        try:
            for tid in os.listdir(task):
                with open("%s/%s/comm" % (task, tid)) as f:
                    if f.read().strip() == "CPU %d/TCG" % cpu:
                        with open("%s/%s/schedstat" % (task, tid)) as g:
                            return int(g.read().split()[0])
        except (OSError, ValueError):
            pass
        return None

    def stop(self):
        try:
            self.s.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pets(trace_path):
    """Bank reloads (trace vcpu_stall_load) per CPU so far."""
    n = {}
    try:
        for line in open(trace_path, errors="replace"):
            m = re.match(r"vcpu_stall_load cpu (\d+):", line)
            if m:
                n[int(m.group(1))] = n.get(int(m.group(1)), 0) + 1
    except OSError:
        pass
    return n
