# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared by the Linux guest tests (uefi-guest-test.sh, kdump-test.sh,
stall-ppi-test.sh, pvpanic-guest-test.sh, pvpanic-pci-guest-test.sh): starts
QEMU (TCG, serial to a file, QMP socket) or attaches to one, follows its QMP
events (through tests/vigilqmp.py, the one QMP client, on QEMU's qemu.qmp) and
serial console, and prints the PASS/FAIL protocol of scripts/run-tests.sh
("PASS<TAB>name" on stdout, details on stderr)."""

import json, os, re, shutil, subprocess, sys, time, traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vigilqmp  # noqa: E402  (tests/vigilqmp.py)

T0 = time.time()
failures = 0
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"


def log(*a):
    print("[%7.2f]" % (time.time() - T0), *a, file=sys.stderr, flush=True)


reported = []      # the names of the checks result() printed, in order


def result(name, ok, detail=""):
    global failures
    if detail:
        log(("ok: " if ok else "NOT OK: ") + name + ": " + detail)
    print("%s\t%s" % ("PASS" if ok else "FAIL", name), flush=True)
    reported.append(name)
    if not ok:
        failures += 1
    return ok


def not_run(names, why):
    """FAIL for each of NAMES: checks that cannot run (a step they need failed)."""
    for name in names:
        result(name, False, "not run: " + why)


class planned:
    """with planned(NAMES[, why]) as p: the block reports the checks NAMES.
    Those it has not reported when it ends, by an early return (set p.why
    to say which step failed) or an exception (logged, not raised further),
    are reported failed then: a check that cannot run is a failed check,
    never a missing one (scripts/run-tests.sh counts them, tests/expected-checks)."""

    def __init__(self, names, why=None):
        self.names, self.why = list(names), why

    def __enter__(self):
        self.start = len(reported)
        return self

    def __exit__(self, typ, exc, tb):
        if exc is not None and not isinstance(exc, Exception):
            return False       # KeyboardInterrupt, SystemExit: as they are
        done = reported[self.start:]
        for name in done:
            if name not in self.names:
                log("WARNING: check %r is not in its planned() list" % name)
        why = self.why or "an earlier step failed (see above)"
        if exc is not None:
            why = "%s: %r" % (self.why or "an error", exc)
            log("error:\n" + "".join(traceback.format_exception(typ, exc, tb)).rstrip())
        not_run([n for n in self.names if n not in done], why)
        return True


def firmware_args(tmp, name):
    """-drive options for AAVMF (code read-only, a private copy of the vars)."""
    vars_copy = os.path.join(tmp, name + ".vars.fd")
    shutil.copyfile(AAVMF_VARS, vars_copy)
    return ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + AAVMF_CODE,
            "-drive", "if=pflash,format=raw,unit=1,file=" + vars_copy]


SERIAL_LOG = r"vigil-guest:|pvpanic|stall|kexec|crash|Kernel panic|Booting Linux"


class Monitor:
    """The QMP socket and serial log of a running QEMU. Events are
    (time, name, data): the host time they were received, or with
    qemu_time=True the time QEMU sent them (their QMP timestamp)."""

    def __init__(self, name, sock_path, serial_path, alive=None, qemu_time=False,
                 serial_log=SERIAL_LOG, err_path=None):
        self.name = name
        self.sock_path, self.serial_path, self.err_path = sock_path, serial_path, err_path
        self.qemu_time = qemu_time
        self.serial_log = re.compile(serial_log, re.I)
        self.events = []          # (host time, name, data)
        self.serial = []          # (host time, line)
        self.serial_pos, self.serial_part = 0, b""
        try:
            self.qmp = vigilqmp.QMP(sock_path, timeout=30, alive=alive)
        except vigilqmp.QMPError as e:
            err = ""
            if err_path:
                try:
                    err = open(err_path).read()
                except OSError:
                    pass
            raise RuntimeError("%s %s" % (e, err)) from None
        self.greeting = self.qmp.greeting

    @property
    def closed(self):
        return self.qmp.closed

    def handle(self, msg):
        t = vigilqmp.event_time(msg) if self.qemu_time else time.time()
        self.events.append((t, msg["event"], msg.get("data", {})))
        log("[%s] event" % self.name, msg["event"], json.dumps(msg.get("data", {})))

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
            if self.serial_log.search(text):
                log("[%s] serial |" % self.name, text)

    def read_msgs(self, until, timeout):
        """Pumps QMP and serial until until() or timeout; returns until()."""
        end = time.time() + timeout
        while not until():
            left = end - time.time()
            if left <= 0 or self.closed:
                for msg in self.qmp.pull():
                    self.handle(msg)
                self.poll_serial()
                return until()
            msgs = self.qmp.pull(min(left, 0.05))
            self.poll_serial()
            for msg in msgs:
                self.handle(msg)
        return True

    def sleep(self, seconds):
        self.read_msgs(lambda: False, seconds)

    def cmd(self, name, **arguments):
        """The return value of NAME (RuntimeError on an error reply or no
        reply within 10 s); the events that came before the reply are in
        self.events when it returns."""
        try:
            return self.qmp.cmd(name, **arguments)
        finally:
            for msg in self.qmp.pull():
                self.handle(msg)

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
            err = open(self.err_path).read().strip() if self.err_path else ""
        except OSError:
            err = ""
        if err:
            log("---- [%s] QEMU stderr ----\n%s" % (self.name, err))

    def close(self):
        self.qmp.close()


class VM(Monitor):
    """Starts QEMU (TCG, no defaults, serial to NAME.serial, QMP socket
    NAME.qmp in TMP) with ARGS, and follows it."""

    def __init__(self, qemu, name, tmp, args, no_reboot=True):
        serial_path = os.path.join(tmp, name + ".serial")
        sock_path = os.path.join(tmp, name + ".qmp")
        err_path = os.path.join(tmp, name + ".err")
        cmd = [qemu, "-accel", "tcg", "-nodefaults", "-display", "none",
               "-name", name + ",debug-threads=on",
               "-serial", "file:" + serial_path,
               "-qmp", "unix:%s,server=on,wait=off" % sock_path] + \
              (["-no-reboot"] if no_reboot else []) + args
        log("[%s] %s" % (name, " ".join(cmd)))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(err_path, "w"))
        self.t_start = time.time()
        Monitor.__init__(self, name, sock_path, serial_path, err_path=err_path,
                         alive=lambda: self.proc.poll() is None)

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
        self.close()
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
