//! `vigil`: watch QEMU QMP sockets and act on guest-health events.

use std::collections::HashSet;
use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use vigil::cli::Cli;
use vigil::dump::stale_partials;
use vigil::log::Logger;
use vigil::watcher::{self, Config};

fn usage_error(kind: ErrorKind, msg: String) -> ! {
    Cli::command().error(kind, msg).exit()
}

/// Creates (mode 0700) and checks the dump directory; returns its absolute path,
/// which is what QEMU is given.
fn prepare_dump_dir(dir: &Path) -> Result<PathBuf, String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create dump directory {}: {e}", dir.display()))?;
    let dir =
        fs::canonicalize(dir).map_err(|e| format!("dump directory {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".vigil-probe-{}", std::process::id()));
    fs::write(&probe, b"")
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("dump directory {} is not writable: {e}", dir.display()))?;
    Ok(dir)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let policies = cli.policies();

    if policies.any_dump() && cli.dump_dir.is_none() {
        usage_error(
            ErrorKind::MissingRequiredArgument,
            "a coredump-* policy needs --dump-dir DIR".into(),
        );
    }
    if cli.reconnect_min > cli.reconnect_max {
        usage_error(
            ErrorKind::ValueValidation,
            "--reconnect-min is larger than --reconnect-max".into(),
        );
    }
    let mut seen = HashSet::new();
    for ep in &cli.endpoints {
        if !seen.insert(ep.to_string()) {
            usage_error(
                ErrorKind::ArgumentConflict,
                format!("endpoint {ep} given twice"),
            );
        }
    }

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
        match fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
        {
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
    let log = Arc::new(Logger::new(json_sinks, human, tty));

    let cfg = Arc::new(Config {
        policies,
        dump_dir,
        dump_format: cli.dump_format,
        reconnect_min: cli.reconnect_min,
        reconnect_max: cli.reconnect_max,
        timeout: cli.timeout,
        poll_interval: cli.progress_interval,
    });

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
    rt.block_on(run(cli, cfg, log))
}

async fn run(cli: Cli, cfg: Arc<Config>, log: Arc<Logger>) -> ExitCode {
    let p = &cfg.policies;
    log.record(
        None,
        "startup",
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "endpoints": cli.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "policies": {
                "panic": p.panic.name(), "crashloaded": p.crashloaded.name(), "stall": p.stall.name(),
                "watchdog": p.watchdog.name(), "shutdown": p.shutdown.name(),
                "stall-stage": format!("{:?}", p.stall_stage).to_lowercase(),
            },
            "dump-dir": cfg.dump_dir, "dump-format": cfg.dump_format.qapi_name(),
        }),
        Some(&format!(
            "watching {} endpoint(s): panic={} crashloaded={} stall={} watchdog={} shutdown={}",
            cli.endpoints.len(), p.panic, p.crashloaded, p.stall, p.watchdog, p.shutdown
        )),
    );
    if let Some(dir) = &cfg.dump_dir {
        for f in stale_partials(dir) {
            log.record(
                None,
                "warning",
                json!({"warning": "partial dump left by an earlier run", "file": f}),
                Some(&format!(
                    "partial dump left by an earlier run: {}",
                    f.display()
                )),
            );
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);

    // SIGINT/SIGTERM/SIGHUP: stop (after a running action); a second one: exit now.
    let (mut sigint, mut sigterm, mut sighup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!("vigil: error: cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    {
        let stop_tx = stop_tx.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let name = tokio::select! {
                    _ = sigint.recv() => "SIGINT",
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sighup.recv() => "SIGHUP",
                };
                n += 1;
                if n >= 2 {
                    log.record(
                        None,
                        "shutdown",
                        json!({"status": "forced", "signal": name}),
                        Some(&format!("{name} again: exiting now")),
                    );
                    std::process::exit(130);
                }
                log.record(
                    None,
                    "shutdown",
                    json!({"status": "stopping", "signal": name}),
                    Some(&format!("{name}: stopping")),
                );
                let _ = stop_tx.send(true);
            }
        });
    }

    let mut set = tokio::task::JoinSet::new();
    for ep in cli.endpoints {
        set.spawn(watcher::watch(
            ep,
            cfg.clone(),
            log.clone(),
            stop_rx.clone(),
        ));
    }
    let mut code = 0u8;
    while let Some(r) = set.join_next().await {
        let fatal = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(format!("watcher failed: {e}")),
        };
        if let Some(e) = fatal {
            if code == 0 {
                log.record(
                    None,
                    "shutdown",
                    json!({"status": "fatal", "error": e}),
                    Some(&format!("fatal: {e}; stopping")),
                );
            }
            code = 1;
            let _ = stop_tx.send(true);
        }
    }
    log.record(
        None,
        "shutdown",
        json!({"status": "exited", "code": code}),
        None,
    );
    ExitCode::from(code)
}
