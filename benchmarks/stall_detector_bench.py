#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Benchmarks of vcpu-stall-detector with the bare-metal stall-guest.

Run through benchmarks/stall-detector.sh, which builds the guest and passes
the QEMU binary, the guest ELF and the settings (environment variables, see
there). Standard library only. Prints numbers with their meaning; no
pass/fail verdicts.

  1. healthy: a healthy 2-vCPU guest (both CPUs pet every T/2 forever) for a
     fixed time, with the device and without it (guest mode nodev: the same
     busy-wait loops, no device access): host CPU time, main-loop context
     switches, device timer expiries.
  2. pet: N writes to LOAD_CNT (a pet) vs N writes to CURRENT_CNT (read-only,
     ignored by the device: the same MMIO path without the re-arm) vs N
     writes to a PL011 register (another device: the MMIO exit alone), timed
     in the guest (CNTVCT) and by the host (thread CPU time), for
     clock=vcpu-runtime and clock=virtual.
  3. latency: K stalls of CPU 1 (interrupts masked) per clock; time from the
     guest's "stop petting" line to the VCPU_STALL warning event.
"""
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import vigilqmp  # noqa: E402  (tests/vigilqmp.py, on QEMU's qemu.qmp)

QEMU = os.environ["BENCH_QEMU"]
ELF = os.environ["BENCH_ELF"]
HEALTHY_S = float(os.environ.get("BENCH_HEALTHY_S", "20"))
HEALTHY_T = int(os.environ.get("BENCH_HEALTHY_T", "2"))
HEALTHY_REPS = int(os.environ.get("BENCH_HEALTHY_REPS", "2"))
PET_N = int(os.environ.get("BENCH_PET_N", "200000"))
PET_ROUNDS = int(os.environ.get("BENCH_PET_ROUNDS", "5"))
LAT_K = int(os.environ.get("BENCH_LAT_K", "5"))
LAT_T = int(os.environ.get("BENCH_LAT_T", "2"))
LAT_P = int(os.environ.get("BENCH_LAT_P", "1"))
ONLY = os.environ.get("BENCH_ONLY", "healthy,pet,latency").split(",")

CLK_TCK = os.sysconf("SC_CLK_TCK")
TMP = tempfile.mkdtemp(prefix="stall-bench.")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def out(*args):
    print(*args, flush=True)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ---- /proc sampling ---------------------------------------------------------

def read(path):
    with open(path) as f:
        return f.read()


def proc_cpu_s(pid):
    """utime + stime of the whole process, in seconds (clock-tick resolution)."""
    # The command name may contain spaces: split after its closing ')'.
    fields = read("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads(pid):
    """{tid: comm} of the process."""
    res = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            res[int(tid)] = read("/proc/%d/task/%s/comm" % (pid, tid)).strip()
        except OSError:
            pass
    return res


def thread_ns(pid, tid):
    """CPU time of one thread in ns (schedstat: ns resolution)."""
    return int(read("/proc/%d/task/%d/schedstat" % (pid, tid)).split()[0])


def thread_ctxsw(pid, tid):
    """(voluntary, involuntary) context switches of one thread."""
    vol = invol = 0
    for line in read("/proc/%d/task/%d/status" % (pid, tid)).splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            invol = int(line.split()[1])
    return vol, invol


class Sample:
    """Host-side counters of one QEMU process at one moment."""

    def __init__(self, pid):
        self.t = time.monotonic()
        self.proc_s = proc_cpu_s(pid)
        self.thread_ns = {}
        self.total_ns = 0
        for tid, comm in threads(pid).items():
            try:
                ns = thread_ns(pid, tid)
            except OSError:
                continue
            self.total_ns += ns
            name = "main" if tid == pid else comm
            self.thread_ns[name] = self.thread_ns.get(name, 0) + ns
        self.main_ctxsw = thread_ctxsw(pid, pid)
        self.ctxsw = {}
        for tid, comm in threads(pid).items():
            if comm.startswith("CPU "):
                try:
                    self.ctxsw[comm] = thread_ctxsw(pid, tid)
                except OSError:
                    pass


# ---- one QEMU ---------------------------------------------------------------

class Vm:
    """A QEMU with the guest; serial on a pipe, QMP on a socket.

    Serial lines and QMP events are timestamped (wall clock) by reader
    threads the moment they arrive; lines matching `sample_re` also get a
    Sample of the process taken right then.
    """

    seq = 0

    def __init__(self, fw_cfg, device=None, trace=(), qmp=False, sample_re=None, smp=2):
        Vm.seq += 1
        self.name = "vm%d" % Vm.seq
        self.sample_re = re.compile(sample_re) if sample_re else None
        self.err_path = os.path.join(TMP, self.name + ".err")
        self.lines = []               # (wall time, line, Sample or None)
        self.cond = threading.Condition()
        self.events = queue.Queue()   # (wall time of arrival, QEMU timestamp, msg)
        args = [QEMU, "-M", "virt", "-cpu", "cortex-a57", "-smp", str(smp),
                "-nodefaults", "-display", "none",
                "-name", "stall-bench,debug-threads=on",
                "-kernel", ELF, "-serial", "stdio", "-action", "watchdog=none"]
        if device is not None:
            args += ["-device", "vcpu-stall-detector,id=sd" + device]
        for k, v in fw_cfg.items():
            args += ["-fw_cfg", "name=opt/vigil/%s,string=%s" % (k, v)]
        for t in trace:
            args += ["-trace", "enable=" + t]
        self.qmp_path = None
        self.qmp_thread = None
        if qmp:
            self.qmp_path = os.path.join(TMP, self.name + ".qmp")
            args += ["-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.err)
        self.pid = self.proc.pid
        threading.Thread(target=self._serial, daemon=True).start()
        if qmp:
            self._qmp_connect()
            self.qmp_thread = threading.Thread(target=self._qmp_reader, daemon=True)
            self.qmp_thread.start()

    def _serial(self):
        for raw in self.proc.stdout:
            now = time.time()
            line = raw.decode(errors="replace").rstrip("\r\n")
            s = None
            if self.sample_re and self.sample_re.search(line):
                try:
                    s = Sample(self.pid)
                except OSError:
                    pass
            with self.cond:
                self.lines.append((now, line, s))
                self.cond.notify_all()

    def _qmp_connect(self):
        self.qmp = vigilqmp.QMP(self.qmp_path, timeout=30, alive=lambda: self.proc.poll() is None)

    def _qmp_reader(self):
        # The only user of self.qmp from here on (and of its event loop).
        while not self.qmp.closed:
            for msg in self.qmp.pull(0.05):
                self.events.put((time.time(), vigilqmp.event_time(msg), msg))
        self.qmp.close()

    def wait_line(self, regex, timeout, start=0):
        """(index, time, line, sample) of the first serial line from index
        START on that matches regex, waiting up to TIMEOUT s for it."""
        r = re.compile(regex)
        end = time.time() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    if r.search(self.lines[i][1]):
                        return (i,) + self.lines[i]
                    i += 1
                left = end - time.time()
                if left <= 0:
                    raise TimeoutError("no serial line /%s/ within %g s" % (regex, timeout))
                self.cond.wait(left)

    def serial_since(self, start):
        with self.cond:
            return [l for _, l, _ in self.lines[start:]]

    def wait_event(self, name, timeout, **data):
        end = time.time() + timeout
        while True:
            try:
                item = self.events.get(timeout=max(0.0, end - time.time()))
            except queue.Empty:
                raise TimeoutError("no %s event within %g s" % (name, timeout))
            msg = item[2]
            if msg["event"] == name and all(msg["data"].get(k) == v for k, v in data.items()):
                return item

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.qmp_thread is not None:
            self.qmp_thread.join(10)     # it sees QEMU hang up and closes the session
        self.err.close()

    def stderr_text(self):
        return read(self.err_path)


# ---- 1. healthy guest: cost of the device -----------------------------------

def bench_healthy():
    out("== 1. Healthy guest, with and without the device ==")
    out("2 vCPUs pet every %g s (T=%d s) and busy-wait in between, forever; measured"
        " for %g s from the first pet of both CPUs; %d repetition(s), interleaved."
        % (HEALTHY_T / 2, HEALTHY_T, HEALTHY_S, HEALTHY_REPS))
    out("load average before: %s (%d host CPUs)" % (loadavg(), os.cpu_count()))
    results = {"with": [], "without": []}
    for rep in range(HEALTHY_REPS):
        for variant in ("with", "without"):
            fw = {"stall-timeout": HEALTHY_T, "stall-pets": 0,
                  "stall-mode": "stall" if variant == "with" else "nodev"}
            vm = Vm(fw, device="" if variant == "with" else None,
                    trace=("vcpu_stall_wait", "vcpu_stall_expired"))
            try:
                vm.wait_line(r"^cpu0: pet 1 ", 30)
                vm.wait_line(r"^cpu1: pet 1 ", 30)
                a = Sample(vm.pid)
                n0 = len(vm.lines)
                time.sleep(HEALTHY_S)
                b = Sample(vm.pid)
                pets = sum(1 for l in vm.serial_since(n0) if re.match(r"cpu[01]: pet ", l))
            finally:
                vm.stop()
            trace = vm.stderr_text()
            expiries = len(re.findall(r"vcpu_stall_(?:wait|expired)\b", trace))
            wall = b.t - a.t
            r = {
                "wall": wall,
                "cpu": b.proc_s - a.proc_s,
                "vol": b.main_ctxsw[0] - a.main_ctxsw[0],
                "invol": b.main_ctxsw[1] - a.main_ctxsw[1],
                "main_ms": (b.thread_ns.get("main", 0) - a.thread_ns.get("main", 0)) / 1e6,
                "vcpu_s": sum(b.thread_ns.get(n, 0) - a.thread_ns.get(n, 0)
                              for n in ("CPU 0/TCG", "CPU 1/TCG")) / 1e9,
                "expiries": expiries,
                "pets": pets,
                "load": loadavg(),
            }
            results[variant].append(r)
            out("  run %d %-7s device: wall %.2f s, QEMU CPU %.2f s (%.0f%% of one host CPU),"
                " vCPU threads %.2f s, main loop: %.1f ms CPU,"
                " %d voluntary + %d involuntary context switches; pets %d; timer expiries"
                " (trace) %d; load %s"
                % (rep + 1, variant, wall, r["cpu"], 100 * r["cpu"] / wall,
                   r["vcpu_s"], r["main_ms"], r["vol"], r["invol"], pets, expiries, r["load"]))

    def avg(variant, key):
        return statistics.mean(r[key] for r in results[variant])

    def ratio(key):
        w, wo = avg("with", key), avg("without", key)
        return "%.3f" % (w / wo) if wo else ("n/a (0 without)" if w else "n/a (0/0)")

    pair = ["%.3f" % (w["cpu"] / wo["cpu"]) for w, wo in zip(results["with"], results["without"])]
    out("  summary (mean over runs; ratio = with / without):")
    out("    QEMU CPU time ratio of each with/without pair: %s (comparable when the"
        " CPU share QEMU got was about the same in both runs of a pair)" % ", ".join(pair))
    out("    QEMU process CPU time (utime+stime):        with %.2f s, without %.2f s, ratio %s"
        % (avg("with", "cpu"), avg("without", "cpu"), ratio("cpu")))
    out("    main-loop thread voluntary ctx switches:    with %.0f, without %.0f, ratio %s"
        % (avg("with", "vol"), avg("without", "vol"), ratio("vol")))
    out("    main-loop thread involuntary ctx switches:  with %.0f, without %.0f, ratio %s"
        % (avg("with", "invol"), avg("without", "invol"), ratio("invol")))
    out("    main-loop thread CPU time:                  with %.1f ms, without %.1f ms, ratio %s"
        % (avg("with", "main_ms"), avg("without", "main_ms"), ratio("main_ms")))
    out("    device timer expiries (vcpu_stall_wait + vcpu_stall_expired trace lines):"
        " with %d (expected 0 for a healthy guest)"
        % sum(r["expiries"] for r in results["with"]))
    out("  The CPU time is dominated by the guest's busy-wait loops (2 vCPUs at up to"
        " 100% each); on a loaded host it mostly shows each run's share of the CPUs."
        " Main-loop wakeups are the device's host-side footprint.")
    out("load average after: %s" % loadavg())
    out("")


# ---- 2. cost of one pet -----------------------------------------------------

def bench_pet():
    out("== 2. Cost of one pet (LOAD_CNT write) vs a no-op write on the same path ==")
    out("CPU 0 alone (CPU 1 stays off), %d writes per phase, %d rounds of"
        " ref/noop/pet; medians over rounds." % (PET_N, PET_ROUNDS))
    out("  ref  = PL011 ILPR write (another device: the cost of an MMIO exit alone)")
    out("  noop = CURRENT_CNT write (read-only: decoded, the clock read, ignored; no guest-error"
        " log since -d guest_errors is off)")
    out("  pet  = LOAD_CNT write (re-arms the countdown and moves the host timer)")
    out("  guest ns: CNTVCT in the guest; host ns: CPU time of all QEMU threads / N;"
        " vCPU ns: the vCPU 0 thread only; main wakeups / vCPU sleeps: voluntary context switches"
        " of the main-loop / vCPU 0 thread per 1000 writes")
    out("load average before: %s" % loadavg())
    phases = ("ref", "noop", "pet")
    summary = {}
    for clock in ("vcpu-runtime", "virtual"):
        fw = {"stall-timeout": 30, "stall-mode": "bench", "bench-iters": PET_N,
              "bench-rounds": PET_ROUNDS}
        vm = Vm(fw, device=",clock=" + clock, sample_re=r"^bench: round \d+ \w+ (begin|end)")
        res = {p: {"guest": [], "host": [], "vcpu": [], "wake": [], "vsleep": []} for p in phases}
        try:
            i, _, line, _ = vm.wait_line(r"^bench: cntfrq ", 30)
            cntfrq = int(line.split()[2])
            for _ in range(PET_ROUNDS * len(phases)):
                i, _, bl, a = vm.wait_line(r"^bench: round \d+ \w+ begin", 120, i + 1)
                i, _, el, b = vm.wait_line(r"^bench: round \d+ \w+ end ticks", 120, i + 1)
                phase = el.split()[3]
                ticks = int(el.split()[-1])
                r = res[phase]
                r["guest"].append(ticks * 1e9 / cntfrq / PET_N)
                if a and b:
                    r["host"].append((b.total_ns - a.total_ns) / PET_N)
                    r["vcpu"].append((b.thread_ns.get("CPU 0/TCG", 0)
                                      - a.thread_ns.get("CPU 0/TCG", 0)) / PET_N)
                    r["wake"].append((b.main_ctxsw[0] - a.main_ctxsw[0]) * 1000 / PET_N)
                    r["vsleep"].append((b.ctxsw["CPU 0/TCG"][0] - a.ctxsw["CPU 0/TCG"][0])
                                       * 1000 / PET_N)
            vm.wait_line(r"^bench: done", 30, i + 1)
        finally:
            vm.stop()
        out("  clock=%s:" % clock)
        out("    %-5s %9s %9s %9s %13s %12s" % ("phase", "guest ns", "host ns", "vCPU ns",
                                             "main wakeups", "vCPU sleeps"))
        for p in phases:
            r = res[p]
            out("    %-5s %9.0f %9.0f %9.0f %13.1f %12.1f   (guest ns per round: %s)"
                % (p, median(r["guest"]), median(r["host"]), median(r["vcpu"]),
                   median(r["wake"]), median(r["vsleep"]),
                   " ".join("%.0f" % x for x in r["guest"])))
        g = {p: median(res[p]["guest"]) for p in phases}
        h = {p: median(res[p]["host"]) for p in phases}
        summary[clock] = (g, h)
        out("    => one pet costs %.0f ns more than the no-op write in the guest (%.0f ns host CPU);"
            " the no-op costs %.0f ns more than the PL011 write (%.0f ns host CPU)"
            % (g["pet"] - g["noop"], h["pet"] - h["noop"], g["noop"] - g["ref"],
               h["noop"] - h["ref"]))
    out("load average after: %s" % loadavg())
    out("")


# ---- 3. detection latency ---------------------------------------------------

def bench_latency():
    out("== 3. Detection latency: 'cpu1: stop petting' on serial -> VCPU_STALL warning ==")
    out("%d runs per clock (interleaved), T=%d s, CPU 1 stops after %d pet(s) with"
        " interrupts masked. Latency uses QEMU's event timestamp; vCPU 1 CPU = what the"
        " vCPU 1 thread ran meanwhile (the vcpu-runtime budget)." % (LAT_K, LAT_T, LAT_P))
    out("load average before: %s" % loadavg())
    clocks = ("vcpu-runtime", "virtual")
    lat = {c: [] for c in clocks}
    cpu = {c: [] for c in clocks}
    for k in range(LAT_K):
        for clock in clocks:
            fw = {"stall-timeout": LAT_T, "stall-pets": LAT_P, "stall-mode": "stall"}
            vm = Vm(fw, device=",clock=" + clock, qmp=True, sample_re=r"^cpu1: stop petting")
            try:
                _, t_stop, _, s_stop = vm.wait_line(r"^cpu1: stop petting", LAT_P * LAT_T + 30)
                _, t_ev, _ = vm.wait_event("VCPU_STALL", 10 * LAT_T + 30, stage="warning")
                s_ev = Sample(vm.pid)
            except TimeoutError as e:
                out("  run %d clock=%s: %s" % (k + 1, clock, e))
                vm.stop()
                continue
            vm.stop()
            lat[clock].append(t_ev - t_stop)
            c = None
            if s_stop:
                c = (s_ev.thread_ns.get("CPU 1/TCG", 0) - s_stop.thread_ns.get("CPU 1/TCG", 0)) / 1e9
                cpu[clock].append(c)
            out("  run %d clock=%-12s latency %.3f s, vCPU 1 CPU %s, load %s"
                % (k + 1, clock, t_ev - t_stop, "%.3f s" % c if c is not None else "?",
                   loadavg()))
    for clock in clocks:
        xs = lat[clock]
        if xs:
            out("  clock=%-12s latency min %.3f / median %.3f / max %.3f s (budget %d s);"
                " vCPU 1 CPU time meanwhile: median %.3f s"
                % (clock, min(xs), median(xs), max(xs), LAT_T, median(cpu[clock])))
    out("  The countdown restarts at CPU 1's last pet, just before it prints 'stop petting',"
        " so the ideal latency is a little under T. With vcpu-runtime the budget is vCPU 1's"
        " CPU time: the wall-clock latency is T divided by the share of a host CPU the vCPU"
        " thread gets. vCPU 1 CPU is sampled when the event is read, a little after it was"
        " sent (an upper bound).")
    out("load average after: %s" % loadavg())
    out("")


def main():
    out("vcpu-stall-detector benchmarks: %s" % time.strftime("%Y-%m-%d %H:%M:%S"))
    out("QEMU %s; guest %s; host: %d CPUs, load %s"
        % (QEMU, ELF, os.cpu_count(), loadavg()))
    out("")
    t0 = time.time()
    if "healthy" in ONLY:
        bench_healthy()
    if "pet" in ONLY:
        bench_pet()
    if "latency" in ONLY:
        bench_latency()
    out("total %.0f s" % (time.time() - t0))


if __name__ == "__main__":
    try:
        main()
    finally:
        subprocess.run(["rm", "-rf", TMP])
