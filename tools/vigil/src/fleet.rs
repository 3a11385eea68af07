//! The set of endpoints watched, and what changes it: the command line, the
//! `--config` file (reloaded on SIGHUP) and `--watch-dir` directories (QMP
//! sockets that appear are watched, those that disappear are forgotten).
//!
//! A reload never drops a connection that did not change: an endpoint that
//! is still wanted keeps its watcher, and new settings (policies, name) are
//! passed to it in place.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, FleetConfig, PolicySet};
use crate::context::{Env, Target};
use crate::endpoint::Endpoint;
use crate::error::{ConfigError, WatchError};
use crate::policy::Policies;
use crate::record::{Body, Record};
use crate::session::Stops;
use crate::watcher;

/// Where endpoints come from, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub endpoints: Vec<Endpoint>,
    /// `--on-*` and `--stall-stage` given on the command line.
    pub policies: PolicySet,
    pub watch_dirs: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    /// Whether `--dump-dir` was given.
    pub have_dump_dir: bool,
}

/// The endpoints wanted, by their name (`unix:PATH`, `tcp:HOST:PORT`).
pub type Desired = BTreeMap<String, (Endpoint, Target)>;

/// The default policies: `[defaults]` of the file, then the command line.
pub fn base_policies(src: &Sources, file: Option<&FleetConfig>) -> Policies {
    let base = file.map_or(Policies::default(), |f| {
        f.defaults.over(Policies::default())
    });
    src.policies.over(base)
}

/// The watch directories: the command line's and the file's.
pub fn watch_dirs(src: &Sources, file: Option<&FleetConfig>) -> Vec<PathBuf> {
    let mut v = src.watch_dirs.clone();
    for d in file.map(|f| f.watch_dirs.as_slice()).unwrap_or(&[]) {
        if !v.contains(d) {
            v.push(d.clone());
        }
    }
    v
}

/// The QMP sockets in `dir` (sockets only, not descending).
pub fn scan(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ConfigError::WatchDir {
        dir: dir.to_path_buf(),
        source: e,
    })?;
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// Who must be at the other end of `ep`: the file's `peer-user` and
/// `peer-cgroup` for it, else only the default checks (`peer.rs`); `None`
/// for `tcp:`.
fn expect_for(file: Option<&FleetConfig>, ep: &Endpoint) -> Option<crate::peer::Expect> {
    match file {
        Some(f) => f.expect(ep),
        None => match ep {
            Endpoint::Unix(p) => Some(crate::peer::Expect::new(p.clone())),
            Endpoint::Tcp { .. } => None,
        },
    }
}

/// Puts together the endpoints wanted.
pub fn desired(
    src: &Sources,
    file: Option<&FleetConfig>,
    sockets: &[PathBuf],
) -> Result<Desired, ConfigError> {
    let base = base_policies(src, file);
    let mut d = Desired::new();
    for ep in &src.endpoints {
        let t = Target {
            name: None,
            policies: base,
            expect: expect_for(file, ep),
        };
        if d.insert(ep.to_string(), (ep.clone(), t)).is_some() {
            return Err(ConfigError::Duplicate(ep.to_string()));
        }
    }
    for e in file.map(|f| f.endpoints.as_slice()).unwrap_or(&[]) {
        let t = Target {
            name: e.name.clone(),
            policies: e.policies.over(base),
            expect: expect_for(file, &e.endpoint),
        };
        if d.insert(e.endpoint.to_string(), (e.endpoint.clone(), t))
            .is_some()
        {
            return Err(ConfigError::Duplicate(e.endpoint.to_string()));
        }
    }
    for s in sockets {
        let ep = Endpoint::Unix(s.clone());
        let expect = expect_for(file, &ep);
        d.entry(ep.to_string()).or_insert((
            ep,
            Target {
                name: None,
                policies: base,
                expect,
            },
        ));
    }
    if !src.have_dump_dir && d.values().any(|(_, t)| t.policies.any_dump()) {
        return Err(ConfigError::NeedsDumpDir);
    }
    if !src.have_dump_dir && base.any_dump() {
        return Err(ConfigError::NeedsDumpDir);
    }
    Ok(d)
}

struct Member {
    endpoint: Endpoint,
    tx: watch::Sender<Target>,
    /// Cancelled when the endpoint is removed: its session, queued and
    /// running dumps are abandoned and its metrics go.
    abort: CancellationToken,
}

/// The running watchers.
pub struct Fleet {
    env: Env,
    members: HashMap<String, Member>,
    root: CancellationToken,
    watchers: TaskTracker,
    fatal: mpsc::UnboundedSender<WatchError>,
}

/// What [`Fleet::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Fleet {
    pub fn new(env: Env, root: CancellationToken) -> (Fleet, mpsc::UnboundedReceiver<WatchError>) {
        let (fatal, rx) = mpsc::unbounded_channel();
        (
            Fleet {
                env,
                members: HashMap::new(),
                root,
                watchers: TaskTracker::new(),
                fatal,
            },
            rx,
        )
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Starts, updates and stops watchers so that `want` is watched.
    pub fn apply(&mut self, want: &Desired) -> Changes {
        let mut ch = Changes::default();
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(m) = self.members.remove(&k) {
                m.abort.cancel();
                // its series go now, before a new watcher of the same
                // socket (a QEMU restarted) can have made its own
                let t = m.tx.borrow();
                let vm = watcher::vm_name(&m.endpoint, &t);
                self.env.metrics.forget_endpoint(&k, &vm);
                self.env.metrics.forget_vm(&vm);
            }
            ch.removed.push(k);
        }
        for (k, (ep, t)) in want {
            match self.members.get(k) {
                Some(m) => {
                    if *m.tx.borrow() != *t {
                        m.tx.send_replace(t.clone());
                        ch.changed.push(k.clone());
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(t.clone());
                    let abort = CancellationToken::new();
                    let stops = Stops {
                        stop: self.root.clone(),
                        abort: abort.clone(),
                    };
                    let (env, ep2, fatal) = (self.env.clone(), ep.clone(), self.fatal.clone());
                    self.watchers.spawn(async move {
                        // a watcher that panics is a bug: said, and only that
                        // VM stops being watched
                        if let Err(e) = tokio::spawn(watcher::watch(ep2, env, rx, stops)).await {
                            let _ = fatal.send(WatchError::Task(e.to_string()));
                        }
                    });
                    self.members.insert(
                        k.clone(),
                        Member {
                            endpoint: ep.clone(),
                            tx,
                            abort,
                        },
                    );
                    ch.added.push(k.clone());
                }
            }
        }
        self.env.metrics.endpoints.set(self.members.len() as i64);
        ch
    }

    /// Stops every watcher (each after its running action) and waits.
    pub async fn stop(&mut self) {
        self.root.cancel();
        self.watchers.close();
        self.watchers.wait().await;
        self.env.tracker.close();
        self.env.tracker.wait().await;
    }
}

/// Watches directories for sockets that come and go (inotify, through the
/// `notify` crate); each change is a message on the returned channel.
fn watch_directories(
    dirs: &[PathBuf],
) -> Result<(Vec<notify::RecommendedWatcher>, mpsc::UnboundedReceiver<()>), ConfigError> {
    use notify::Watcher;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut ws = Vec::new();
    for d in dirs {
        let tx = tx.clone();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            use notify::event::{EventKind, ModifyKind};
            // only what can add or remove a socket: our own scan opens the
            // directory, and an access event must not make it scan again
            let relevant = match res {
                Ok(ev) => matches!(
                    ev.kind,
                    EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(ModifyKind::Name(_))
                        | EventKind::Modify(ModifyKind::Any)
                        | EventKind::Any
                        | EventKind::Other
                ),
                Err(_) => true, // (an overflow, ...): look again
            };
            if relevant {
                let _ = tx.send(());
            }
        })
        .map_err(|e| ConfigError::WatchDir {
            dir: d.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        w.watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|e| ConfigError::WatchDir {
                dir: d.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        ws.push(w);
    }
    Ok((ws, rx))
}

/// Everything `run` needs.
pub struct Plan {
    pub sources: Sources,
    pub file: Option<FleetConfig>,
    pub env: Env,
    pub hooks: TaskTracker,
    pub hook_timeout: Duration,
    pub root: CancellationToken,
}

fn scan_all(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut v = Vec::new();
    for d in dirs {
        v.extend(scan(d)?);
    }
    Ok(v)
}

/// The longest a configuration read or a directory scan may take (they run
/// off the async thread; a hung file system must not stop the watchers).
const FS_TIMEOUT: Duration = Duration::from_secs(10);

/// The most sockets the watched directories may bring: QEMU's user can
/// create sockets there, and each is a watcher and a descriptor.
pub const MAX_DIR_SOCKETS: usize = 4096;

async fn scan_off_thread(
    dirs: Vec<PathBuf>,
    log: &crate::log::Logger,
) -> Result<Vec<PathBuf>, ConfigError> {
    let first = dirs.first().cloned().unwrap_or_default();
    match tokio::time::timeout(
        FS_TIMEOUT,
        tokio::task::spawn_blocking(move || scan_all(&dirs)),
    )
    .await
    {
        Ok(Ok(Ok(mut v))) => {
            if v.len() > MAX_DIR_SOCKETS {
                log.warn(
                    None,
                    format!(
                        "the watched directories hold {} sockets: only the first {MAX_DIR_SOCKETS} (by name) are watched",
                        v.len()
                    ),
                );
                v.truncate(MAX_DIR_SOCKETS);
            }
            Ok(v)
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(ConfigError::WatchDir {
            dir: first,
            source: std::io::Error::other(e.to_string()),
        }),
        Err(_) => Err(ConfigError::WatchDir {
            dir: first,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "scan took more than 10 s"),
        }),
    }
}

/// Runs until a signal; returns the exit status.
pub async fn run(plan: Plan) -> u8 {
    let Plan {
        sources,
        mut file,
        env,
        hooks,
        hook_timeout,
        root,
    } = plan;
    let log = env.log.clone();
    let metrics = env.metrics.clone();
    let (mut sigint, mut sigterm, mut sighup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!("vigil: error: cannot install signal handlers");
            return 1;
        }
    };
    let (mut fleet, mut fatal_rx) = Fleet::new(env.clone(), root.clone());

    let mut dirs = watch_dirs(&sources, file.as_ref());
    let (mut _dir_watchers, mut dir_rx) = match watch_directories(&dirs) {
        Ok(x) => x,
        Err(e) => {
            log.error(None, e.to_string());
            return 1;
        }
    };
    let initial = match scan_off_thread(dirs.clone(), &log).await {
        Ok(s) => desired(&sources, file.as_ref(), &s),
        Err(e) => Err(e),
    };
    match initial {
        Ok(d) => {
            fleet.apply(&d);
        }
        Err(e) => {
            log.error(None, e.to_string());
            return 1;
        }
    }

    let mut rescan = tokio::time::interval(Duration::from_secs(30));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let stop = |name: &str, n: &mut u32| {
        *n += 1;
        if *n >= 2 {
            log.emit(
                Record::new(None, Body::Shutdown("forced"))
                    .with(json!({"signal": name}))
                    .say(format!("{name} again: exiting now")),
            );
            log.flush(Duration::from_secs(1));
            std::process::exit(130);
        }
        log.emit(
            Record::new(None, Body::Shutdown("stopping"))
                .with(json!({"signal": name}))
                .say(format!("{name}: stopping")),
        );
    };
    let mut signals = 0u32;
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            _ = sigint.recv() => { stop("SIGINT", &mut signals); stopping = true; }
            _ = sigterm.recv() => { stop("SIGTERM", &mut signals); stopping = true; }
            _ = sighup.recv(), if !stopping => {
                match reload(&sources, &dirs, &log).await {
                    Ok((new_file, d, new_dirs)) => {
                        file = new_file;
                        if let Some(nd) = new_dirs {
                            match watch_directories(&nd) {
                                Ok((w, r)) => { _dir_watchers = w; dir_rx = r; dirs = nd; }
                                Err(e) => log.warn(None, e.to_string()),
                            }
                        }
                        let ch = fleet.apply(&d);
                        crate::metrics::Metrics::result(&metrics.reloads, "ok");
                        log.emit(Record::new(None, Body::Reload("ok"))
                            .with(json!({"added": ch.added, "removed": ch.removed, "changed": ch.changed, "endpoints": fleet.len()}))
                            .say(format!("SIGHUP: configuration reloaded: {} endpoint(s), {} added, {} removed, {} changed",
                                fleet.len(), ch.added.len(), ch.removed.len(), ch.changed.len())));
                    }
                    Err(e) => {
                        crate::metrics::Metrics::result(&metrics.reloads, "failed");
                        log.emit(Record::new(None, Body::Reload("failed"))
                            .with(json!({"error": e.to_string()}))
                            .say(format!("SIGHUP: configuration not reloaded, the running one stays: {e}")));
                    }
                }
            }
            Some(()) = dir_rx.recv(), if !stopping => {
                // let a burst of changes settle, then look once
                tokio::time::sleep(Duration::from_millis(50)).await;
                while dir_rx.try_recv().is_ok() {}
                rescan_dirs(&sources, file.as_ref(), &dirs, &mut fleet, &log).await;
            }
            _ = rescan.tick(), if !stopping && !dirs.is_empty() => {
                rescan_dirs(&sources, file.as_ref(), &dirs, &mut fleet, &log).await;
            }
            Some(e) = fatal_rx.recv() => {
                log.error(None, format!("{e} (a bug: please report it); the other VMs are still watched"));
            }
            _ = done_rx.recv() => break,
        }
        if stopping && !root.is_cancelled() {
            root.cancel();
            // wait for the watchers (and their running actions) on the side,
            // so that a second signal is still heard
            let watchers = fleet.watchers.clone();
            let actions = fleet.env.tracker.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                watchers.close();
                watchers.wait().await;
                actions.close();
                actions.wait().await;
                let _ = done.send(()).await;
            });
        }
    }
    fleet.stop().await;
    hooks.close();
    let _ = tokio::time::timeout(hook_timeout + Duration::from_secs(1), hooks.wait()).await;
    log.emit(Record::new(None, Body::Shutdown("exited")).with(json!({"code": 0})));
    log.flush(Duration::from_secs(2));
    0
}

async fn rescan_dirs(
    sources: &Sources,
    file: Option<&FleetConfig>,
    dirs: &[PathBuf],
    fleet: &mut Fleet,
    log: &crate::log::Logger,
) {
    let found = scan_off_thread(dirs.to_vec(), log).await;
    match found.and_then(|s| desired(sources, file, &s)) {
        Ok(d) => {
            let ch = fleet.apply(&d);
            if !ch.added.is_empty() || !ch.removed.is_empty() {
                log.emit(
                    Record::new(None, Body::WatchDir)
                        .with(json!({"added": ch.added, "removed": ch.removed, "endpoints": fleet.len()}))
                        .say(format!(
                            "watch directory: {} socket(s) appeared, {} went ({} endpoint(s) watched)",
                            ch.added.len(),
                            ch.removed.len(),
                            fleet.len()
                        )),
                );
            }
        }
        Err(e) => log.warn(None, e.to_string()),
    }
}

/// Reads the file again (off the async thread). Returns it, what is wanted
/// now and, if they changed, the new watch directories.
async fn reload(
    sources: &Sources,
    dirs: &[PathBuf],
    log: &crate::log::Logger,
) -> Result<(Option<FleetConfig>, Desired, Option<Vec<PathBuf>>), ConfigError> {
    let new = match sources.config.clone() {
        Some(p) => {
            let p2 = p.clone();
            match tokio::time::timeout(
                FS_TIMEOUT,
                tokio::task::spawn_blocking(move || config::load(&p2)),
            )
            .await
            {
                Ok(Ok(r)) => Some(r?),
                Ok(Err(e)) => {
                    return Err(ConfigError::Read {
                        path: p,
                        source: std::io::Error::other(e.to_string()),
                    })
                }
                Err(_) => {
                    return Err(ConfigError::Read {
                        path: p,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "reading took more than 10 s",
                        ),
                    })
                }
            }
        }
        None => None,
    };
    let new_dirs = watch_dirs(sources, new.as_ref());
    let sockets = scan_off_thread(new_dirs.clone(), log).await?;
    let d = desired(sources, new.as_ref(), &sockets)?;
    let changed = (new_dirs.as_slice() != dirs).then_some(new_dirs);
    Ok((new, d, changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn src(eps: &[&str]) -> Sources {
        Sources {
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
            have_dump_dir: true,
            ..Sources::default()
        }
    }

    #[test]
    fn precedence_and_duplicates() {
        let file = config::parse(
            Path::new("f"),
            "[defaults]\non-panic = \"restart\"\non-stall = \"destroy\"\n\
             [[endpoint]]\naddress = \"unix:/b\"\non-panic = \"coredump-destroy\"\n",
        )
        .unwrap();
        let mut s = src(&["unix:/a"]);
        s.policies.on_stall = Some(Policy::Preserve);
        let d = desired(
            &s,
            Some(&file),
            &[PathBuf::from("/dir/c.qmp"), PathBuf::from("/b")],
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        let a = &d["unix:/a"].1.policies;
        assert_eq!((a.panic, a.stall), (Policy::Restart, Policy::Preserve));
        let b = &d["unix:/b"].1.policies;
        assert_eq!(
            (b.panic, b.stall),
            (Policy::CoredumpDestroy, Policy::Preserve)
        );
        assert_eq!(d["unix:/dir/c.qmp"].1.policies.panic, Policy::Restart);
        assert!(matches!(
            desired(&src(&["unix:/b"]), Some(&file), &[]),
            Err(ConfigError::Duplicate(_))
        ));
        let mut nodir = src(&[]);
        nodir.have_dump_dir = false;
        assert!(matches!(
            desired(&nodir, Some(&file), &[]),
            Err(ConfigError::NeedsDumpDir)
        ));
    }

    #[tokio::test]
    async fn a_removed_endpoints_series_go_at_once() {
        let d = crate::testutil::tempdir("forget");
        let log = std::sync::Arc::new(crate::log::Logger::new(
            vec![],
            None,
            false,
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        ));
        let env = Env::new(crate::context::Config::default(), log, 0);
        let (mut fleet, _fatal) = Fleet::new(env.clone(), CancellationToken::new());
        let s = Sources {
            have_dump_dir: true,
            ..Sources::default()
        };
        let sock = d.join("web9.qmp");
        fleet.apply(&desired(&s, None, std::slice::from_ref(&sock)).unwrap());
        let ep = format!("unix:{}", sock.display());
        env.metrics.set_connected(&ep, "web9", true);
        env.metrics.init_vm("web9");
        assert!(env.metrics.text().contains("web9"));
        let ch = fleet.apply(&desired(&s, None, &[]).unwrap());
        assert_eq!(ch.removed, [ep]);
        assert!(
            !env.metrics.text().contains("web9"),
            "{}",
            env.metrics.text()
        );
        fleet.stop().await;
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn scans_sockets_only() {
        let d = crate::testutil::tempdir("scan");
        let _l = std::os::unix::net::UnixListener::bind(d.join("a.qmp")).unwrap();
        std::fs::write(d.join("b.txt"), b"").unwrap();
        assert_eq!(scan(&d).unwrap(), vec![d.join("a.qmp")]);
        assert!(scan(&d.join("missing")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
