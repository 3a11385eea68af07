#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The one QMP client of vigil's tests, scripts and benchmarks: a thin layer
over QEMU's own `qemu.qmp` package (python/qemu/qmp of the patched QEMU tree,
its QMPClient), so no test speaks QMP by hand.

Python:
    import vigilqmp
    q = vigilqmp.QMP(path)       # connects (retrying while QEMU starts), negotiates
    q.cmd("qom-get", path=..., property=...)   # the return value; QMPError on error
    q.reply("query-status")      # the whole reply: {"return": ...} or {"error": ...}
    q.pull(0.05)                 # events that arrived (dicts), waiting up to 0.05 s
    q.closed                     # QEMU hung up
    q.close()

Command line (for shell scripts):
    vigilqmp.py SOCKET COMMAND [ARGS-JSON]   print the return value (JSON)
    vigilqmp.py SOCKET --events FILE         append each event to FILE, one JSON
                                             line each, until QEMU hangs up
    vigilqmp.py SOCKET --greeting [SECONDS]  print the greeting (no negotiation;
                                             fails after SECONDS, default 20)

`qemu.qmp` is taken from sys.path when it is there (PYTHONPATH, or the
package installed from PyPI), else from the patched QEMU tree:
$VIGIL_QEMU_PYTHON, $VIGIL_SRC/python, the tree named by
${VIGIL_CACHE:-~/.cache/vigil}/src-path, or $VIGIL_CACHE/qemu-*/python.
"""

import asyncio
import atexit
import glob
import json
import logging
import os
import sys
import time
import weakref


def _qemu_python_dirs():
    cache = os.environ.get("VIGIL_CACHE") or os.path.expanduser("~/.cache/vigil")
    dirs = [os.environ.get("VIGIL_QEMU_PYTHON", "")]
    if os.environ.get("VIGIL_SRC"):
        dirs.append(os.path.join(os.environ["VIGIL_SRC"], "python"))
    try:
        with open(os.path.join(cache, "src-path")) as f:
            dirs.append(os.path.join(f.read().strip(), "python"))
    except OSError:
        pass
    dirs += sorted(glob.glob(os.path.join(cache, "qemu-*", "python")), reverse=True)
    return [d for d in dirs if d and os.path.isdir(os.path.join(d, "qemu", "qmp"))]


try:
    from qemu.qmp import ExecuteError, QMPClient, QMPError as _QemuQMPError, Runstate
except ImportError:
    _found = _qemu_python_dirs()
    if not _found:
        raise ImportError("vigilqmp: QEMU's python/qemu/qmp not found "
                          "(set VIGIL_SRC to the patched QEMU tree)") from None
    sys.path.insert(0, _found[0])
    from qemu.qmp import ExecuteError, QMPClient, QMPError as _QemuQMPError, Runstate

# qemu.qmp logs a peer that hangs up as an error; a test sees it in `closed`.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


_open = weakref.WeakSet()       # sessions a script did not close: closed at exit


@atexit.register
def _close_all():
    for q in list(_open):
        if not q._loop.is_running():      # (one that another thread is using is left alone)
            q.close()


class QMPError(RuntimeError):
    """A QMP command failed (error reply, no reply, connection gone)."""


class QMP:
    """A synchronous QMP session on qemu.qmp's QMPClient, with its own event
    loop (like qemu.qmp.legacy, plus timeouts for the greeting)."""

    def __init__(self, path, timeout=30, alive=None, cmd_timeout=10, negotiate=True):
        """Connects to the QMP socket PATH, retrying for up to TIMEOUT
        seconds while alive() (default: always) says QEMU still runs, reads
        the greeting and (unless negotiate=False) negotiates capabilities.
        Raises QMPError when it cannot."""
        self.path = path
        self.cmd_timeout = cmd_timeout
        self._loop = asyncio.new_event_loop()
        self._client = None
        deadline = time.time() + timeout
        while True:
            client = QMPClient(os.path.basename(path))
            client.negotiate = negotiate
            try:
                self._run(client.connect(path), max(1.0, min(10.0, deadline - time.time())))
                break
            except (_QemuQMPError, OSError, asyncio.TimeoutError) as e:
                try:
                    self._run(client.disconnect(), 5)
                except Exception:
                    pass
                if time.time() > deadline or (alive is not None and not alive()):
                    self._loop.close()
                    raise QMPError("cannot connect to QMP at %s: %s" % (path, str(e) or e.__class__.__name__)) from None
                time.sleep(0.05)
        self._client = client
        self.greeting = dict(client.greeting._asdict()) if client.greeting else None
        _open.add(self)

    def _run(self, coro, timeout):
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @property
    def closed(self):
        return self._client is None or self._client.runstate != Runstate.RUNNING

    def reply(self, name, **arguments):
        """The whole reply to NAME: {"return": ...} or {"error": ...}."""
        if self._client is None:
            raise QMPError(name + ": not connected")
        try:
            msg = self._client.make_execute_msg(name, arguments or None)
            return {"return": self._run(self._client.execute_msg(msg), self.cmd_timeout)}
        except ExecuteError as e:
            return {"error": dict(e.received["error"])}
        except _QemuQMPError as e:
            raise QMPError("%s: %s: %s" % (name, e.__class__.__name__, e)) from None
        except (OSError, EOFError, asyncio.TimeoutError) as e:
            raise QMPError("%s: %s %s" % (name, e.__class__.__name__, e)) from None

    def cmd(self, name, **arguments):
        """The return value of NAME; QMPError on an error reply."""
        r = self.reply(name, **arguments)
        if "error" in r:
            raise QMPError("%s: %s" % (name, r["error"]))
        return r.get("return")

    def pull(self, timeout=0.0):
        """Every event received so far (dicts, oldest first); when there is
        none, waits up to TIMEOUT seconds for one. [] on timeout or hang-up."""
        if self._client is None:
            return []
        queue = self._client.events
        self._run(asyncio.sleep(0), None)     # lets the reader take what has come
        if queue.empty() and timeout > 0 and not self.closed:
            try:
                return [dict(self._run(queue.get(), timeout))]
            except asyncio.TimeoutError:
                return []
        return [dict(e) for e in queue.clear()]

    def close(self):
        if self._client is not None:
            try:
                self._run(self._client.disconnect(), 5)
            except Exception:   # EOFError when QEMU hung up first, etc.
                pass
            self._client = None
        _open.discard(self)
        if not self._loop.is_closed():
            self._loop.close()


def event_time(msg):
    """The host time (time.time()) at which QEMU sent the event MSG."""
    ts = msg.get("timestamp") or {}
    if "seconds" in ts:
        return ts["seconds"] + ts.get("microseconds", 0) / 1e6
    return time.time()


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    if argv[1] == "--greeting":
        try:
            q = QMP(argv[0], timeout=float(argv[2]) if len(argv) > 2 else 20, negotiate=False)
        except QMPError as e:
            sys.exit(str(e))
        print(json.dumps(q.greeting))
        q.close()
        return 0
    q = QMP(argv[0], timeout=20, cmd_timeout=20)
    if argv[1] == "--events":
        with open(argv[2], "a") as out:
            while not q.closed:
                for e in q.pull(0.2):
                    out.write(json.dumps(e) + "\n")
                    out.flush()
            for e in q.pull():
                out.write(json.dumps(e) + "\n")
        return 0
    args = json.loads(argv[2]) if len(argv) > 2 else {}
    r = q.reply(argv[1], **args)
    q.close()
    if "error" in r:
        sys.exit("error: " + json.dumps(r["error"]))
    print(json.dumps(r["return"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
