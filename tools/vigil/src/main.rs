//! `vigil`: watch QEMU QMP sockets and act on guest-health events.

use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use vigil::cli::Cli;
use vigil::context::{Config, Env};
use vigil::dump::stale_partials;
use vigil::error::ConfigError;
use vigil::fleet::{self, Plan, Sources};
use vigil::hooks::{self, HookConfig};
use vigil::log::Logger;
use vigil::metrics::{self, Metrics};
use vigil::record::{Body, Record};

fn usage_error(kind: ErrorKind, msg: String) -> ! {
    Cli::command().error(kind, msg).exit()
}

/// Creates (mode 0700) and checks the dump directory; returns its absolute
/// path. vigil creates the dump files there itself and hands QEMU their
/// descriptors, so the directory must be vigil's alone: owned by vigil's
/// user and writable by nobody else (QEMU's user needs no access).
fn prepare_dump_dir(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create dump directory {}: {e}", dir.display()))?;
    let dir =
        fs::canonicalize(dir).map_err(|e| format!("dump directory {}: {e}", dir.display()))?;
    let md = fs::metadata(&dir).map_err(|e| format!("dump directory {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(format!(
            "dump directory {} belongs to uid {}, not to vigil's user (uid {me}): vigil creates the dump files itself; chown it to vigil's user",
            dir.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(format!(
            "dump directory {} is writable by group or others (mode {:04o}): only vigil may write there (QEMU gets each dump file as a descriptor); chmod 0750 or 0700",
            dir.display(),
            md.mode() & 0o7777
        ));
    }
    let probe = dir.join(format!(".vigil-probe-{}", std::process::id()));
    fs::write(&probe, b"")
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("dump directory {} is not writable: {e}", dir.display()))?;
    Ok(dir)
}

/// A fleet watcher holds a socket per VM: raise the soft limit on open files
/// to the hard one.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    if cli.reconnect_min > cli.reconnect_max {
        usage_error(
            ErrorKind::ValueValidation,
            "--reconnect-min is larger than --reconnect-max".into(),
        );
    }
    let file = match cli.config.as_deref().map(vigil::config::load).transpose() {
        Ok(f) => f,
        Err(e) => usage_error(ErrorKind::ValueValidation, e.to_string()),
    };
    let sources = Sources {
        endpoints: cli.endpoints.clone(),
        policies: cli.policy_set(),
        watch_dirs: cli.watch_dir.clone(),
        config: cli.config.clone(),
        have_dump_dir: cli.dump_dir.is_some(),
    };
    // The endpoints of the command line and the file, without the watched
    // directories (looked at once running): usage errors first.
    match fleet::desired(&sources, file.as_ref(), &[]) {
        Ok(_) => {}
        Err(e @ ConfigError::NeedsDumpDir) => {
            usage_error(ErrorKind::MissingRequiredArgument, e.to_string())
        }
        Err(e @ ConfigError::Duplicate(_)) => {
            usage_error(ErrorKind::ArgumentConflict, e.to_string())
        }
        Err(e) => usage_error(ErrorKind::ValueValidation, e.to_string()),
    }
    raise_nofile();

    let dump_dir = match cli.dump_dir.as_deref().map(prepare_dump_dir).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vigil: error: {e}");
            return ExitCode::from(1);
        }
    };

    let mut json_sinks: Vec<Box<dyn Write + Send>> = Vec::new();
    if cli.json {
        json_sinks.push(Box::new(std::io::stdout()));
    }
    if let Some(path) = &cli.log_json {
        // O_NONBLOCK for the open only: a FIFO nobody reads is an error
        // (ENXIO), not a vigil that hangs before it starts
        match fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .and_then(|f| {
                use std::os::fd::AsRawFd;
                // SAFETY: fcntl on a descriptor we own.
                let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
                // SAFETY: as above.
                if flags < 0
                    || unsafe {
                        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK)
                    } < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f)
            }) {
            Ok(f) => json_sinks.push(Box::new(f)),
            Err(e) => {
                eprintln!("vigil: error: cannot open {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    let stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    let human: Option<Box<dyn Write + Send>> = if cli.quiet {
        None
    } else {
        Some(Box::new(stderr))
    };
    let log = Arc::new(Logger::new(
        json_sinks,
        human,
        tty,
        Arc::new(Metrics::new()),
    ));

    let cfg = Config {
        dump_dir,
        dump_format: cli.dump_format,
        reconnect_min: cli.reconnect_min,
        reconnect_max: cli.reconnect_max,
        timeout: cli.timeout,
        poll_interval: cli.progress_interval,
        dump_timeout: cli.dump_timeout,
        ..Config::default()
    };

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(run(cli, sources, file, cfg, log.clone()));
    log.flush(std::time::Duration::from_secs(2));
    ExitCode::from(code)
}

async fn run(
    cli: Cli,
    sources: Sources,
    file: Option<vigil::config::FleetConfig>,
    cfg: Config,
    log: Arc<Logger>,
) -> u8 {
    let metrics = log.metrics().clone();
    let root = CancellationToken::new();
    let hooks_tracker = TaskTracker::new();

    let listener = match cli.metrics {
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                log.emit(
                    Record::new(None, Body::Error(format!("--metrics {addr}: {e}")))
                        .say(format!("cannot serve metrics on {addr}: {e}")),
                );
                return 1;
            }
        },
        None => None,
    };
    if let Some(cmd) = &cli.notify {
        let (hook, reports) = hooks::start(
            HookConfig {
                command: cmd.clone(),
                timeout: cli.notify_timeout,
                jobs: cli.notify_jobs as usize,
            },
            metrics.clone(),
            hooks_tracker.clone(),
            root.clone(),
        );
        log.set_hook(hook);
        tokio::spawn(vigil::log::forward(log.clone(), reports));
    }

    let base = fleet::base_policies(&sources, file.as_ref());
    let p = &base;
    let mut endpoints: Vec<String> = sources.endpoints.iter().map(|e| e.to_string()).collect();
    endpoints.extend(
        file.iter()
            .flat_map(|f| f.endpoints.iter().map(|e| e.endpoint.to_string())),
    );
    let dirs = fleet::watch_dirs(&sources, file.as_ref());
    log.emit(Record::new(None, Body::Startup).with(
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "endpoints": endpoints,
            "watch-dirs": dirs,
            "config": cli.config,
            "policies": {
                "panic": p.panic.name(), "crashloaded": p.crashloaded.name(), "stall": p.stall.name(),
                "watchdog": p.watchdog.name(), "shutdown": p.shutdown.name(),
                "stall-stage": format!("{:?}", p.stall_stage).to_lowercase(),
            },
            "dump-dir": cfg.dump_dir, "dump-format": cfg.dump_format.qapi_name(),
            "max-dumps": cli.max_dumps,
            "metrics": listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
            "notify": cli.notify.is_some(),
            "dump-timeout": cfg.dump_timeout.map(|d| d.as_secs()),
        })).say(format!(
            "watching {} endpoint(s){}: panic={} crashloaded={} stall={} watchdog={} shutdown={}",
            endpoints.len(),
            if dirs.is_empty() { String::new() } else { format!(" and {} director(ies)", dirs.len()) },
            p.panic, p.crashloaded, p.stall, p.watchdog, p.shutdown
        )),
    );
    if let Some(dir) = &cfg.dump_dir {
        for f in stale_partials(dir) {
            log.emit(
                Record::new(
                    None,
                    Body::Warning("partial dump left by an earlier run".into()),
                )
                .with(json!({"file": f}))
                .say(format!(
                    "partial dump left by an earlier run: {}",
                    f.display()
                )),
            );
        }
    }
    if let Some(l) = listener {
        tokio::spawn(metrics::serve(l, metrics.clone(), root.clone()));
    }

    let env = Env::new(cfg, log, cli.max_dumps);
    fleet::run(Plan {
        sources,
        file,
        env,
        hooks: hooks_tracker,
        hook_timeout: cli.notify_timeout,
        root,
    })
    .await
}
