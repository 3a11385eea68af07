//! Dumps: the files, the disk-space check, and `dump-guest-memory` followed
//! to its end.
//!
//! vigil creates the dump file itself, `DIR/.NAME.partial`, with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` in a directory only it writes, and hands
//! QEMU the open descriptor (`getfd` over the QMP socket, then
//! `dump-guest-memory` with `fd:`): QEMU's user needs no access to the
//! dump directory, and nothing QEMU's user can plant there (a FIFO, a
//! symlink to `/etc/shadow`) is ever opened. Only after `DUMP_COMPLETED`
//! reports success is the file synced (through vigil's own descriptor) and
//! linked to `DIR/NAME`, so a file under a final name is always complete;
//! a failed, timed-out or abandoned dump's partial file is removed.
//!
//! Every file system call runs off the async thread with a timeout (a hung
//! NFS dump directory stalls that dump, not the watcher). A dump has a
//! timeout ([`crate::context::Config::dump_timeout_for`]); its slot
//! (`--max-dumps`) is freed on completion, failure, timeout, disconnect and
//! when its endpoint is removed.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::context::Env;
use crate::error::DumpError;
use crate::qmp::{Client, DumpCompleted, DumpQueryResult, MemorySizeSummary, QmpError, QmpEvent};
use crate::record::{Body, Ctx, Record};

use crate::policy::DumpFormat;
use crate::timefmt::file_stamp;

/// Margin on top of guest RAM required free before a dump: 5% plus 64 MiB
/// (ELF headers, notes, and other writers of the file system).
pub fn required_space(guest_ram: u64) -> u64 {
    guest_ram
        .saturating_add(guest_ram / 20)
        .saturating_add(64 << 20)
}

/// Bytes available to an unprivileged writer in the file system of `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated string and st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Keeps `[A-Za-z0-9._+-]`, replaces anything else with `_`, and never
/// starts with a dot (no hidden files, no `..`).
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "_");
    }
    if s.is_empty() {
        s.push_str("vm");
    }
    s
}

/// `<vm-name>-<timestamp>.<ext>`.
pub fn dump_file_name(vm: &str, secs: i64, format: DumpFormat) -> String {
    format!(
        "{}-{}.{}",
        sanitize_name(vm),
        file_stamp(secs),
        format.extension()
    )
}

/// The hidden work file QEMU writes a dump `name` to.
pub fn partial_name(name: &str) -> String {
    format!(".{name}.partial")
}

/// Where one dump goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpPaths {
    pub partial: PathBuf,
    pub final_path: PathBuf,
}

/// Chooses free names in `dir`: `<vm>-<stamp>.<ext>`, then `<vm>-<stamp>-1.<ext>`, ...
/// The names stay reserved in this process until the [`Reserved`] guard is
/// dropped, so two VMs of the same name crashing in the same second do not
/// get the same file (QEMU creates the file only later).
pub fn choose_paths(dir: &Path, vm: &str, secs: i64, format: DumpFormat) -> (DumpPaths, Reserved) {
    let base = format!("{}-{}", sanitize_name(vm), file_stamp(secs));
    let ext = format.extension();
    let mut taken = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            format!("{base}.{ext}")
        } else {
            format!("{base}-{n}.{ext}")
        };
        let p = DumpPaths {
            partial: dir.join(partial_name(&name)),
            final_path: dir.join(&name),
        };
        if !exists(&p.final_path) && !exists(&p.partial) && !taken.contains(&p.final_path) {
            taken.insert(p.final_path.clone());
            let guard = Reserved(p.final_path.clone());
            return (p, guard);
        }
        n += 1;
    }
}

static IN_FLIGHT: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A dump name reserved by [`choose_paths`]; released when dropped.
#[derive(Debug)]
pub struct Reserved(PathBuf);

impl Drop for Reserved {
    fn drop(&mut self) {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Creates the partial file of `paths`: a new regular file (never an
/// existing one, never through a symlink), mode 0600.
pub fn create_partial(paths: &DumpPaths) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&paths.partial)
}

/// Makes a completed dump visible under its final name: syncs the partial
/// file (through `file`, vigil's own descriptor), links it to the final name (never replacing an existing file; if
/// that name was taken meanwhile, `-N` is added), removes the partial name
/// and syncs the directory. Returns the final path.
pub fn finalize(paths: &DumpPaths, file: &fs::File) -> io::Result<PathBuf> {
    file.sync_all()?;
    let mut target = paths.final_path.clone();
    for n in 1u32.. {
        match fs::hard_link(&paths.partial, &target) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                target = numbered(&paths.final_path, n);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => {
                // File systems without hard links: rename, after checking the name is free.
                if exists(&target) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "dump name taken",
                    ));
                }
                fs::rename(&paths.partial, &target)?;
                sync_dir(&target);
                return Ok(target);
            }
        }
    }
    fs::remove_file(&paths.partial)?;
    sync_dir(&target);
    Ok(target)
}

fn numbered(p: &Path, n: u32) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(e) => format!("{stem}-{n}.{}", e.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    p.with_file_name(name)
}

fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Removes a failed dump's partial file (no error if QEMU never created it).
pub fn discard(paths: &DumpPaths) -> io::Result<()> {
    match fs::remove_file(&paths.partial) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Partial files left in `dir` (by a vigil that was killed during a dump).
pub fn stale_partials(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".partial"))
        })
        .collect();
    v.sort();
    v
}

/// The name under which the dump file's descriptor is passed to QEMU.
pub const FDNAME: &str = "vigil-dump";

/// Runs `f` off the async thread, for at most `timeout`.
pub async fn blocking<T: Send + 'static>(
    what: &'static str,
    timeout: Duration,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(io::Error::other(format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} took more than {} s", timeout.as_secs()),
        )),
    }
}

/// Chooses the dump's names and creates its partial file, off the async
/// thread, for at most `timeout`. A creation that finishes after the caller
/// gave up removes its own file.
async fn create_file(
    dir: PathBuf,
    vm: String,
    fmt: DumpFormat,
    timeout: Duration,
) -> io::Result<(DumpPaths, Reserved, fs::File)> {
    #[derive(Default)]
    struct Creating {
        abandoned: bool,
        created: Option<DumpPaths>,
    }
    let state = std::sync::Arc::new(std::sync::Mutex::new(Creating::default()));
    let st = state.clone();
    let job = tokio::task::spawn_blocking(move || {
        let (paths, reserved) = choose_paths(&dir, &vm, now_secs(), fmt);
        let file = create_partial(&paths)?;
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        if s.abandoned {
            let _ = discard(&paths);
            return Err(io::Error::new(io::ErrorKind::TimedOut, "abandoned"));
        }
        s.created = Some(paths.clone());
        Ok((paths, reserved, file))
    });
    match tokio::time::timeout(timeout, job).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(io::Error::other(e.to_string())),
        Err(_) => {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.abandoned = true;
            if let Some(p) = s.created.take() {
                tokio::task::spawn_blocking(move || discard(&p));
            }
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "creating the dump file took more than {} s",
                    timeout.as_secs()
                ),
            ))
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One dump of one VM: who asks, and what stops it early.
pub struct Job<'a> {
    pub client: &'a Client,
    pub ctx: &'a Ctx,
    pub env: &'a Env,
    pub policy: &'static str,
    /// The event the dump is for.
    pub event: &'a str,
    /// Cancelled when the endpoint is removed: a queued or running dump is
    /// abandoned (a stopping vigil lets a running dump finish instead).
    pub abort: &'a CancellationToken,
    /// Cancelled when vigil stops: a dump still waiting for a slot is not started.
    pub stop: &'a CancellationToken,
    /// Set once QEMU holds a descriptor of the dump file.
    pub passed: std::sync::atomic::AtomicBool,
}

impl Job<'_> {
    fn action(&self, status: &'static str, fields: serde_json::Value, human: String) {
        self.env.log.emit(
            Record::new(
                Some(self.ctx),
                Body::Action {
                    action: "dump",
                    status,
                    policy: self.policy,
                    event: self.event.to_string(),
                },
            )
            .with(fields)
            .say(human),
        );
    }

    /// Waits for a dump slot.
    async fn slot(&self) -> Result<crate::slots::Slot, DumpError> {
        let slots = &self.env.dumps;
        if let Some(s) = slots.try_acquire() {
            return Ok(s);
        }
        let line = slots.wait_in_line();
        let reason = format!(
            "{} dump(s) already running (--max-dumps {})",
            slots.max(),
            slots.max()
        );
        self.action(
            "queued",
            json!({"reason": reason, "position": line.position}),
            format!("dump queued: {reason}; {} waiting", line.position),
        );
        let t0 = Instant::now();
        let mut closed = tokio::time::interval(Duration::from_millis(500));
        let slot = loop {
            tokio::select! {
                s = slots.acquire() => break s.ok_or(DumpError::Cancelled)?,
                _ = self.abort.cancelled() => return Err(DumpError::Aborted),
                _ = self.stop.cancelled() => return Err(DumpError::Cancelled),
                _ = closed.tick() => if self.client.is_closed() { return Err(DumpError::Disconnected) },
            }
        };
        drop(line);
        let waited = t0.elapsed().as_secs_f64();
        self.action(
            "dequeued",
            json!({"waited-seconds": (waited * 1000.0).round() / 1000.0}),
            format!("dump slot free after {waited:.1} s"),
        );
        Ok(slot)
    }

    /// Dumps guest memory to the dump directory, atomically, once a slot
    /// is free. Returns the final path.
    pub async fn run(&self) -> Result<PathBuf, DumpError> {
        let env = self.env;
        let cfg = &env.cfg;
        let dir = cfg.dump_dir.clone().ok_or(DumpError::NoDumpDir)?;
        let fmt = cfg.dump_format;
        if self.client.peer_is_tcp() {
            return Err(DumpError::NoDescriptors);
        }
        let _slot = self.slot().await?;

        // The space is checked when the dump starts, after any wait.
        let mem: MemorySizeSummary = self
            .client
            .query("query-memory-size-summary", None)
            .await
            .map_err(DumpError::MemorySize)?;
        let ram = mem
            .base_memory
            .checked_add(mem.plugged_memory)
            .filter(|r| *r > 0)
            .ok_or(DumpError::NoMemorySize)?;
        let need = required_space(ram);
        let d2 = dir.clone();
        let free = blocking("statvfs", cfg.fs_timeout, move || free_space(&d2))
            .await
            .map_err(|e| DumpError::Statvfs {
                dir: dir.clone(),
                source: e,
            })?;
        if free < need {
            return Err(DumpError::NoSpace {
                dir,
                free,
                need,
                ram,
            });
        }

        let (paths, _reserved, file) = create_file(dir, self.ctx.vm.clone(), fmt, cfg.fs_timeout)
            .await
            .map_err(DumpError::Create)?;
        let result = self.dump_to(&file, &paths, ram, free).await;
        let result = match result {
            Ok(secs) => {
                let p2 = paths.clone();
                // no timeout: syncing a large dump takes as long as it takes
                // (the slot stays held meanwhile)
                let r = match tokio::task::spawn_blocking(move || {
                    let bytes = file.metadata()?.len();
                    finalize(&p2, &file).map(|f| (f, bytes))
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => Err(io::Error::other(e.to_string())),
                }
                .map_err(DumpError::Finalize);
                let r = r.map(|(f, bytes)| {
                    env.metrics.dump_bytes.inc_by(bytes);
                    env.metrics.dump_duration.observe(secs);
                    self.action(
                        "completed",
                        json!({"file": f, "bytes": bytes,
                               "seconds": (secs * 1000.0).round() / 1000.0, "format": fmt.qapi_name()}),
                        format!("dump written: {} ({} MiB in {secs:.1} s)", f.display(), bytes >> 20),
                    );
                    f
                });
                r
            }
            Err(e) => {
                drop(file);
                Err(e)
            }
        };
        match result {
            Ok(f) => Ok(f),
            Err(e) => {
                let p2 = paths.clone();
                if let Err(d) = blocking("removing the partial dump", cfg.fs_timeout, move || {
                    discard(&p2)
                })
                .await
                {
                    return Err(DumpError::Discard {
                        error: Box::new(e),
                        partial: paths.partial.clone(),
                        discard: d,
                    });
                }
                Err(e)
            }
        }
    }

    /// Passes `file` to QEMU and follows the dump to its end, its timeout,
    /// or the endpoint's removal.
    async fn dump_to(
        &self,
        file: &fs::File,
        paths: &DumpPaths,
        ram: u64,
        free: u64,
    ) -> Result<f64, DumpError> {
        let (client, env) = (self.client, self.env);
        let fmt = env.cfg.dump_format;
        client
            .pass_fd(FDNAME, file.as_fd())
            .await
            .map_err(DumpError::PassFd)?;
        self.passed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut sub = client.subscribe();
        let args = json!({
            "paging": false,
            "protocol": format!("fd:{FDNAME}"),
            "detach": true,
            "format": fmt.qapi_name(),
        });
        let limit = env.cfg.dump_timeout_for(ram);
        self.action(
            "started",
            json!({"file": paths.final_path, "partial": paths.partial,
                   "format": fmt.qapi_name(), "guest-ram": ram, "free": free,
                   "timeout-seconds": limit.as_secs()}),
            format!(
                "dumping {} MiB of guest memory to {} ({fmt})",
                ram >> 20,
                paths.final_path.display()
            ),
        );
        let t0 = Instant::now();
        if let Err(e) = client.execute("dump-guest-memory", Some(args)).await {
            // QEMU keeps a passed descriptor until a command takes it
            let _ = client.close_fd(FDNAME).await;
            return Err(DumpError::Start(e));
        }
        let result = tokio::select! {
            r = wait_dump(client, self.ctx, env, &mut sub) => r,
            _ = tokio::time::sleep(limit) => Err(DumpError::Timeout(limit)),
            _ = self.abort.cancelled() => Err(DumpError::Aborted),
        };
        env.log.progress_done(self.ctx);
        result?;
        Ok(t0.elapsed().as_secs_f64())
    }
}

fn compact(v: &DumpQueryResult) -> String {
    format!("status {}, {}/{} bytes", v.status, v.completed, v.total)
}

/// Waits for the dump's end: `DUMP_COMPLETED`, or `query-dump` saying it
/// ended (if the event was missed). Shows progress meanwhile.
async fn wait_dump(
    client: &Client,
    ctx: &Ctx,
    env: &Env,
    sub: &mut mpsc::Receiver<QmpEvent>,
) -> Result<(), DumpError> {
    let log = &env.log;
    let mut tick = tokio::time::interval(env.cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = 0;
    // a dump whose byte count stops moving is stuck (or a peer pretends):
    // abandoned after this long without progress
    let patience = (env.cfg.poll_interval * 20).max(Duration::from_secs(60));
    let (mut last, mut moved) = (0u64, Instant::now());
    loop {
        tokio::select! {
            n = sub.recv() => match n {
                Some(e) if e.name == "DUMP_COMPLETED" => {
                    let d: DumpCompleted = serde_json::from_value(e.data.clone())
                        .map_err(|err| DumpError::Qemu(format!("malformed DUMP_COMPLETED ({err})")))?;
                    if let Some(err) = d.error {
                        return Err(DumpError::Qemu(crate::record::cap_str(&err, crate::record::MAX_TEXT)));
                    }
                    return match d.result.status.as_str() {
                        "completed" => {
                            log.progress(ctx, d.result.total, d.result.total);
                            Ok(())
                        }
                        s => Err(DumpError::Status(crate::record::cap_str(s, 64))),
                    };
                }
                Some(_) => {}
                None => return Err(DumpError::Disconnected),
            },
            _ = tick.tick() => match client.query::<DumpQueryResult>("query-dump", None).await {
                Ok(q) => {
                    match q.status.as_str() {
                        "active" => {
                            idle = 0;
                            if q.completed > last {
                                (last, moved) = (q.completed, Instant::now());
                            } else if moved.elapsed() >= patience {
                                return Err(DumpError::Stalled(patience));
                            }
                            log.progress(ctx, q.completed, q.total)
                        }
                        "completed" => { log.progress(ctx, q.total, q.total); return Ok(()) }
                        "failed" => return Err(DumpError::QueryFailed),
                        _ => {
                            idle += 1;
                            if idle >= 3 {
                                return Err(DumpError::NotRunning(crate::record::cap_str(&compact(&q), 200)));
                            }
                        }
                    }
                }
                Err(QmpError::Disconnected) => return Err(DumpError::Disconnected),
                Err(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tempdir;

    #[test]
    fn names() {
        assert_eq!(
            dump_file_name("web1", 0, DumpFormat::Elf),
            "web1-19700101T000000Z.elf"
        );
        assert_eq!(
            dump_file_name("a/b c", 0, DumpFormat::KdumpZlib),
            "a_b_c-19700101T000000Z.kdump"
        );
        assert_eq!(
            dump_file_name("..", 0, DumpFormat::WinDmp),
            "_.-19700101T000000Z.dmp"
        );
        assert_eq!(sanitize_name(""), "vm");
        assert_eq!(
            sanitize_name("guest=web1,debug-threads=on"),
            "guest_web1_debug-threads_on"
        );
        assert_eq!(partial_name("x.elf"), ".x.elf.partial");
    }

    #[test]
    fn space_margin() {
        assert_eq!(required_space(0), 64 << 20);
        assert_eq!(
            required_space(256 << 20),
            (256 << 20) + (256 << 20) / 20 + (64 << 20)
        );
        assert_eq!(required_space(u64::MAX), u64::MAX);
        assert!(free_space(&std::env::temp_dir()).unwrap() > 0);
        assert!(free_space(Path::new("/nonexistent/vigil")).is_err());
    }

    #[test]
    fn choose_avoids_existing_and_reserved_files() {
        let d = tempdir("choose");
        let (p, r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p.final_path, d.join("vm-19700101T000000Z.elf"));
        assert_eq!(p.partial, d.join(".vm-19700101T000000Z.elf.partial"));
        // reserved, though no file exists yet
        let (p1, r1) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p1.final_path, d.join("vm-19700101T000000Z-1.elf"));
        drop((r, r1));
        fs::write(&p.final_path, b"old").unwrap();
        let (p1, _r1) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p1.final_path, d.join("vm-19700101T000000Z-1.elf"));
        fs::write(&p1.partial, b"busy").unwrap();
        let (p2, _r2) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        assert_eq!(p2.final_path, d.join("vm-19700101T000000Z-2.elf"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn finalize_is_atomic_and_never_overwrites() {
        let d = tempdir("finalize");
        let (p, _r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        let file = create_partial(&p).unwrap();
        fs::write(&p.partial, b"dump").unwrap();
        assert!(
            !p.final_path.exists(),
            "final name must not exist before finalize"
        );
        let f = finalize(&p, &file).unwrap();
        assert_eq!(f, p.final_path);
        assert_eq!(fs::read(&f).unwrap(), b"dump");
        assert!(!p.partial.exists());
        assert!(stale_partials(&d).is_empty());

        // the final name was taken while the dump ran: the old file stays
        let q = DumpPaths {
            partial: d.join(".again.partial"),
            final_path: f.clone(),
        };
        let file = create_partial(&q).unwrap();
        fs::write(&q.partial, b"new").unwrap();
        let g = finalize(&q, &file).unwrap();
        assert_eq!(g, d.join("vm-19700101T000000Z-1.elf"));
        assert_eq!(fs::read(&f).unwrap(), b"dump");
        assert_eq!(fs::read(&g).unwrap(), b"new");

        // a missing partial file is an error and creates nothing
        let r = DumpPaths {
            partial: d.join(".gone.partial"),
            final_path: d.join("gone.elf"),
        };
        assert!(finalize(&r, &file).is_err());
        assert!(!r.final_path.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn create_partial_never_follows_or_reuses() {
        let d = tempdir("create");
        let (p, _r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        // a symlink planted at the partial name is not followed
        std::os::unix::fs::symlink("/etc/passwd", &p.partial).unwrap();
        assert!(create_partial(&p).is_err());
        fs::remove_file(&p.partial).unwrap();
        // nor a FIFO (open would block) or an existing file
        let c = std::ffi::CString::new(p.partial.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        assert_eq!(
            create_partial(&p).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        fs::remove_file(&p.partial).unwrap();
        let f = create_partial(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn discard_removes_partial_only() {
        let d = tempdir("discard");
        let (p, _r) = choose_paths(&d, "vm", 0, DumpFormat::Elf);
        discard(&p).unwrap(); // nothing there: fine
        fs::write(&p.partial, b"half").unwrap();
        assert_eq!(stale_partials(&d), vec![p.partial.clone()]);
        discard(&p).unwrap();
        assert!(!p.partial.exists() && !p.final_path.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
