//! What the attack tests share: fake QMP peers (a unix-socket server on a
//! std thread that greets like QEMU 10.2.2, answers commands by `id`,
//! receives `getfd` descriptors with `recvmsg`, and sends events when told),
//! the real `vigil` binary run under a memory limit, and polling waits whose
//! failure message carries the end of vigil's JSON log and stderr.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The greeting of the fake peers.
pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""}, "capabilities": []}}"#;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The address space vigil runs in (`RLIMIT_AS`): a regression that makes
/// it balloon fails the test (allocation failure) instead of exhausting
/// the machine.
pub const VIGIL_AS_LIMIT: u64 = 2 << 30;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- temp dirs

/// A fresh directory (mode 0700) under the system temp directory, removed
/// when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("vigil-att-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }

    /// A subdirectory with `mode`.
    pub fn subdir(&self, name: &str, mode: u32) -> PathBuf {
        let d = self.0.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- fake peer

/// Descriptors received with `getfd`, by name.
pub type Fds = Arc<Mutex<HashMap<String, File>>>;

/// A handler's answer: the response (`{"return": ...}` or `{"error": ...}`,
/// the fake adds the `id`) and messages sent after it; `{"delay-ms": N}`
/// waits N ms instead.
pub type Answer = (Value, Vec<Value>);

type Handler = dyn Fn(&str, &Value, &Fds) -> Answer + Send + Sync;

struct Inner {
    /// Every command received: (name, arguments).
    commands: Mutex<Vec<(String, Value)>>,
    /// The writing side of the current connection (every write holds it).
    conn: Mutex<Option<UnixStream>>,
    connections: AtomicUsize,
    stop: AtomicBool,
    fds: Fds,
}

/// A fake QMP server at `path`, serving one connection at a time.
pub struct Fake {
    pub path: PathBuf,
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// A handle to send to a fake's current connection, usable from any thread.
#[derive(Clone)]
pub struct Sender(Arc<Inner>);

impl Sender {
    /// Writes `b` as it is to the connected client; false if there is none
    /// or the write failed.
    pub fn raw(&self, b: &[u8]) -> bool {
        let mut c = lock(&self.0.conn);
        match c.as_mut() {
            Some(s) => s.write_all(b).is_ok(),
            None => false,
        }
    }

    /// Sends one event.
    pub fn event(&self, name: &str, data: Value) -> bool {
        self.raw(event_line(name, &data).as_bytes())
    }

    /// Ends the current connection (as a QEMU that went away); the server
    /// keeps accepting.
    pub fn close(&self) {
        if let Some(s) = lock(&self.0.conn).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn connected(&self) -> bool {
        lock(&self.0.conn).is_some()
    }
}

/// One QMP event line (with its newline).
pub fn event_line(name: &str, data: &Value) -> String {
    let m = json!({"event": name, "data": data,
                   "timestamp": {"seconds": 1_763_712_000, "microseconds": 0}});
    format!("{m}\n")
}

/// One `recvmsg` (blocking): the bytes, and any `SCM_RIGHTS` descriptors
/// pushed to `fds`.
fn recv_with_fds(fd: RawFd, fds: &mut Vec<OwnedFd>) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; 65536];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below is valid for
    // the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: as above; `data` and `control` outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                fds.push(OwnedFd::from_raw_fd(fd));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    data.truncate(n as usize);
    Ok(data)
}

impl Fake {
    /// Binds `path` and serves it with `handler` (`qmp_capabilities`,
    /// `getfd` and `closefd` are handled by the fake itself).
    pub fn start<F>(path: impl Into<PathBuf>, handler: F) -> Fake
    where
        F: Fn(&str, &Value, &Fds) -> Answer + Send + Sync + 'static,
    {
        let path = path.into();
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        listener.set_nonblocking(true).unwrap();
        let inner = Arc::new(Inner {
            commands: Mutex::default(),
            conn: Mutex::default(),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            fds: Fds::default(),
        });
        let handler: Arc<Handler> = Arc::new(handler);
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fake-qmp".into())
            .spawn(move || {
                while !i2.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => serve(s, &i2, &*handler),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .unwrap();
        Fake {
            path,
            inner,
            thread: Some(thread),
        }
    }

    /// A fake QEMU behaving as `vm` says.
    pub fn qemu(path: impl Into<PathBuf>, vm: Vm) -> Fake {
        Fake::start(path, vm.handler())
    }

    pub fn sender(&self) -> Sender {
        Sender(self.inner.clone())
    }

    pub fn event(&self, name: &str, data: Value) -> bool {
        self.sender().event(name, data)
    }

    pub fn raw(&self, b: &[u8]) -> bool {
        self.sender().raw(b)
    }

    /// Every command received so far: (name, arguments).
    pub fn commands(&self) -> Vec<(String, Value)> {
        lock(&self.inner.commands).clone()
    }

    pub fn command_names(&self) -> Vec<String> {
        self.commands().into_iter().map(|(c, _)| c).collect()
    }

    pub fn got(&self, command: &str) -> bool {
        lock(&self.inner.commands).iter().any(|(c, _)| c == command)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// The endpoint argument for vigil.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.sender().close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_line(inner: &Inner, v: &Value) -> bool {
    let mut c = lock(&inner.conn);
    match c.as_mut() {
        Some(s) => s.write_all(format!("{v}\n").as_bytes()).is_ok(),
        None => false,
    }
}

/// Serves one connection until it ends.
fn serve(s: UnixStream, inner: &Inner, handler: &Handler) {
    // a vigil that stops reading fails the test instead of blocking it
    if s.set_nonblocking(false).is_err() || s.set_write_timeout(Some(DEADLINE)).is_err() {
        return;
    }
    inner.connections.fetch_add(1, Ordering::Relaxed);
    let Ok(mut w) = s.try_clone() else { return };
    {
        let mut c = lock(&inner.conn);
        if w.write_all(format!("{GREETING}\n").as_bytes()).is_err() {
            return;
        }
        *c = Some(w);
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut passed: Vec<OwnedFd> = Vec::new();
    'conn: loop {
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let Ok(req) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let cmd = req["execute"].as_str().unwrap_or("").to_string();
            let args = req.get("arguments").cloned().unwrap_or(json!({}));
            lock(&inner.commands).push((cmd.clone(), args.clone()));
            let fdname = args["fdname"].as_str().unwrap_or("").to_string();
            let (mut resp, after) = match cmd.as_str() {
                "qmp_capabilities" => (json!({"return": {}}), vec![]),
                "getfd" => match passed.pop() {
                    Some(fd) => {
                        lock(&inner.fds).insert(fdname, File::from(fd));
                        (json!({"return": {}}), vec![])
                    }
                    None => (
                        json!({"error": {"class": "GenericError",
                                         "desc": "No file descriptor supplied via SCM_RIGHTS"}}),
                        vec![],
                    ),
                },
                "closefd" => {
                    lock(&inner.fds).remove(&fdname);
                    (json!({"return": {}}), vec![])
                }
                _ => handler(&cmd, &args, &inner.fds),
            };
            if let Some(id) = req.get("id") {
                resp["id"] = id.clone();
            }
            if !write_line(inner, &resp) {
                break 'conn;
            }
            for m in after {
                if let Some(ms) = m.get("delay-ms").and_then(Value::as_u64) {
                    std::thread::sleep(Duration::from_millis(ms));
                } else if !write_line(inner, &m) {
                    break 'conn;
                }
            }
        }
        if inner.stop.load(Ordering::Relaxed) {
            break;
        }
        match recv_with_fds(s.as_raw_fd(), &mut passed) {
            Ok(b) if b.is_empty() => break,
            Ok(b) => pending.extend_from_slice(&b),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    *lock(&inner.conn) = None;
}

/// What a dump does.
#[derive(Clone, Debug)]
pub enum DumpMode {
    /// Writes these bytes into the passed descriptor, then `DUMP_COMPLETED`.
    Complete(Vec<u8>),
    /// Never ends: `query-dump` says `active` forever.
    Stuck,
}

/// How a fake QEMU answers.
#[derive(Clone, Debug)]
pub struct Vm {
    /// `query-name` (`None`: no name).
    pub name: Option<String>,
    /// `query-status`
    pub status: String,
    /// `query-dump-guest-memory-capability`
    pub formats: Vec<String>,
    /// `query-memory-size-summary`
    pub memory: Value,
    pub dump: DumpMode,
    /// What this QEMU plants at a dump path it is given (`file:PATH`, the
    /// interface of the vigil before descriptors): a FIFO, or a symlink to
    /// this target, instead of the dump.
    pub plant: Option<Plant>,
}

/// What a hostile QEMU plants at a dump path.
#[derive(Clone, Debug)]
pub enum Plant {
    Fifo,
    Symlink(PathBuf),
}

/// What the fake QEMUs write into a dump file.
pub const DUMP_BYTES: &[u8] = b"\x7fELF fake guest memory from the test peer";

impl Vm {
    pub fn new(name: &str) -> Vm {
        Vm {
            name: Some(name.to_string()),
            status: "running".into(),
            formats: vec!["elf".into(), "kdump-zlib".into()],
            memory: json!({"base-memory": 1u64 << 20, "plugged-memory": 0}),
            dump: DumpMode::Complete(DUMP_BYTES.to_vec()),
            plant: None,
        }
    }

    pub fn handler(self) -> impl Fn(&str, &Value, &Fds) -> Answer + Send + Sync + 'static {
        move |cmd, args, fds| {
            let ok = |v: Value| (json!({"return": v}), vec![]);
            match cmd {
                "query-name" => match &self.name {
                    Some(n) => ok(json!({"name": n})),
                    None => ok(json!({})),
                },
                "query-status" => ok(json!({"status": self.status,
                                            "running": self.status == "running"})),
                "query-dump-guest-memory-capability" => ok(json!({"formats": self.formats})),
                "query-memory-size-summary" => ok(self.memory.clone()),
                "dump-guest-memory" => {
                    let proto = args["protocol"].as_str().unwrap_or("");
                    let done = |n: usize| {
                        json!({"event": "DUMP_COMPLETED",
                            "timestamp": {"seconds": 1_763_712_000, "microseconds": 0},
                            "data": {"result": {"status": "completed", "completed": n, "total": n}}})
                    };
                    if let Some(path) = proto.strip_prefix("file:") {
                        // a path to write (the old interface): written, or
                        // planted on by a hostile QEMU
                        let DumpMode::Complete(bytes) = &self.dump else {
                            return ok(json!({}));
                        };
                        let path = Path::new(path);
                        let _ = fs::remove_file(path);
                        match &self.plant {
                            Some(Plant::Fifo) => mkfifo(path, 0o666),
                            Some(Plant::Symlink(t)) => std::os::unix::fs::symlink(t, path).unwrap(),
                            None => fs::write(path, bytes).unwrap(),
                        }
                        return (json!({"return": {}}), vec![done(bytes.len())]);
                    }
                    let Some(fdname) = proto.strip_prefix("fd:") else {
                        return (
                            json!({"error": {"class": "GenericError",
                                             "desc": format!("unknown protocol {proto:?}")}}),
                            vec![],
                        );
                    };
                    match &self.dump {
                        DumpMode::Complete(bytes) => {
                            let Some(mut f) = lock(fds).remove(fdname) else {
                                return (
                                    json!({"error": {"class": "GenericError",
                                        "desc": format!("File descriptor named '{fdname}' has not been found")}}),
                                    vec![],
                                );
                            };
                            f.write_all(bytes).unwrap();
                            drop(f);
                            (json!({"return": {}}), vec![done(bytes.len())])
                        }
                        // keeps the descriptor, as a dump in progress does
                        DumpMode::Stuck => ok(json!({})),
                    }
                }
                "query-dump" => match &self.dump {
                    DumpMode::Complete(b) => ok(json!({"status": "completed",
                                                       "completed": b.len(), "total": b.len()})),
                    DumpMode::Stuck => ok(json!({"status": "active", "completed": 1, "total": 2})),
                },
                _ => ok(json!({})),
            }
        }
    }
}

// ---------------------------------------------------------------- vigil

/// The binary under test: `VIGIL_BIN` (to run these tests against another
/// build, e.g. the one before the hardening) or this package's.
pub fn vigil_bin() -> PathBuf {
    std::env::var_os("VIGIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vigil")))
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running vigil: records on stdout (`--json`) and stderr go to files.
pub struct Vigil {
    child: Mutex<Child>,
    pid: i32,
    pub out: PathBuf,
    pub err: PathBuf,
    pub metrics: Option<SocketAddr>,
    exited: Mutex<Option<ExitStatus>>,
}

/// Options of [`Vigil::start`].
pub struct Opts {
    pub metrics: bool,
    /// `--json` to stdout, collected in a file.
    pub json: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            metrics: false,
            json: true,
        }
    }
}

/// The command to run vigil with `args`, under the memory limit, with
/// MALLOC_ARENA_MAX=2.
pub fn vigil_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(vigil_bin());
    cmd.args(args).env("MALLOC_ARENA_MAX", "2");
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: VIGIL_AS_LIMIT as libc::rlim_t,
                rlim_max: VIGIL_AS_LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

impl Vigil {
    /// Starts vigil in `dir` (its outputs go there) with `args` and the
    /// fast test settings (reconnect 0.05..0.2 s, timeout 2 s).
    pub fn start<I, S>(dir: &Path, opts: Opts, args: I) -> Vigil
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = dir.join("vigil.jsonl");
        let err = dir.join("vigil.stderr");
        let mut all: Vec<std::ffi::OsString> = Vec::new();
        for a in [
            "--reconnect-min",
            "0.05",
            "--reconnect-max",
            "0.2",
            "--timeout",
            "2",
        ] {
            all.push(a.into());
        }
        if opts.json {
            all.push("--json".into());
        }
        let metrics = opts.metrics.then(|| {
            let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            all.push("--metrics".into());
            all.push(a.to_string().into());
            a
        });
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        let child = vigil_command(&all)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", vigil_bin().display()));
        let v = Vigil {
            pid: child.id() as i32,
            child: Mutex::new(child),
            out,
            err,
            metrics,
            exited: Mutex::new(None),
        };
        if v.metrics.is_some() {
            v.wait_until("the metrics server", || v.try_scrape().is_some());
        }
        v
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The JSON records written so far (a last partial line is skipped).
    pub fn records(&self) -> Vec<Value> {
        let text = fs::read(&self.out).unwrap_or_default();
        text.split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }

    pub fn stderr(&self) -> Vec<u8> {
        fs::read(&self.err).unwrap_or_default()
    }

    /// Fails the test, with the end of vigil's outputs.
    pub fn fail(&self, msg: &str) -> ! {
        let tail = |p: &Path| {
            let t = String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..]
                .iter()
                .map(|l| {
                    if l.len() > 400 {
                        let mut end = 400;
                        while !l.is_char_boundary(end) {
                            end -= 1;
                        }
                        format!("{}... ({} bytes)", &l[..end], l.len())
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let state = match self.exit_status() {
            Some(st) => format!("vigil exited: {st}"),
            None => format!("vigil running, VmHWM {} KiB", self.peak_rss_kib()),
        };
        panic!(
            "{msg}\n({state})\n--- last 40 lines of vigil's JSON log ---\n{}\n--- last 40 lines of vigil's stderr ---\n{}\n",
            tail(&self.out),
            tail(&self.err)
        );
    }

    /// Its exit status, once it exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut e = lock(&self.exited);
        if e.is_none() {
            if let Ok(Some(st)) = lock(&self.child).try_wait() {
                *e = Some(st);
            }
        }
        *e
    }

    /// Whether vigil is still running.
    pub fn running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Polls `f` until it holds, for at most `limit`; fails otherwise, and
    /// at once if vigil exits meanwhile.
    pub fn wait_until_for(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        loop {
            let exited = self.exit_status();
            if f() {
                return;
            }
            if let Some(st) = exited {
                self.fail(&format!(
                    "vigil exited ({st}) while the test waited for {what}"
                ));
            }
            if t0.elapsed() > limit {
                self.fail(&format!("timed out after {limit:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Vigil::wait_until_for`] with [`DEADLINE`].
    pub fn wait_until(&self, what: &str, f: impl FnMut() -> bool) {
        self.wait_until_for(what, DEADLINE, f)
    }

    /// Waits until the records satisfy `f`; returns them.
    pub fn wait_for(&self, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        self.wait_until(what, || {
            got = self.records();
            f(&got)
        });
        got
    }

    /// Waits for a record of `vm` matching `f`; returns it.
    pub fn wait_record(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let recs = self.wait_for(what, |r| r.iter().any(&f));
        recs.into_iter().find(|x| f(x)).unwrap()
    }

    /// Waits until `vm` is connected.
    pub fn wait_connected(&self, vm: &str) {
        self.wait_record(&format!("{vm} connected"), |x| {
            x["type"] == "connection" && x["status"] == "connected" && x["vm"] == vm
        });
    }

    /// VmHWM (peak resident set) of the running vigil, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// GET /metrics: (status code, body), or None if it could not be read.
    pub fn try_scrape(&self) -> Option<(u16, String)> {
        http_get(self.metrics?, "/metrics", Duration::from_secs(10))
    }

    /// GET /metrics, retried until it answers; fails if it never does.
    pub fn scrape(&self) -> String {
        let mut body = None;
        self.wait_until("a /metrics answer", || {
            body = self.try_scrape();
            body.is_some()
        });
        let (code, text) = body.unwrap();
        if code != 200 {
            self.fail(&format!("/metrics answered {code}: {text}"));
        }
        text
    }

    /// Sends `sig` to vigil.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits (up to `limit`) for vigil to exit by itself.
    pub fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.exit_status() {
                return Some(st);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (SIGKILL after 10 s); returns the exit status.
    pub fn stop(&self) -> ExitStatus {
        if self.running() {
            self.signal(libc::SIGTERM);
        }
        if let Some(st) = self.wait_exit(Duration::from_secs(10)) {
            return st;
        }
        self.kill()
    }

    /// SIGKILL and wait.
    pub fn kill(&self) -> ExitStatus {
        if let Some(st) = self.exit_status() {
            return st;
        }
        let mut c = lock(&self.child);
        let _ = c.kill();
        let st = c.wait().unwrap();
        *lock(&self.exited) = Some(st);
        st
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of /proc/PID/status.
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A plain HTTP/1.1 GET; (status code, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of the sample `series` (`name{labels}` exactly as written) in
/// a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

pub fn has(recs: &[Value], f: impl Fn(&Value) -> bool) -> bool {
    recs.iter().any(f)
}

pub fn count(recs: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    recs.iter().filter(|x| f(x)).count()
}

/// An action record of `vm`: `action` with `status`.
pub fn is_action(x: &Value, vm: &str, action: &str, status: &str) -> bool {
    x["type"] == "action" && x["vm"] == vm && x["action"] == action && x["status"] == status
}

// ---------------------------------------------------------------- misc

/// `20260501T120000Z`, as vigil stamps dump file names (UTC).
pub fn file_stamp(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// mkfifo(3).
pub fn mkfifo(p: &Path, mode: u32) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
}
