//! One watcher per QMP endpoint: connect (and reconnect with backoff), log
//! every event, and run the configured policy, at most one action at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::dump::{self, DumpPaths};
use crate::endpoint::Endpoint;
use crate::log::{Ctx, Logger};
use crate::policy::{decide, Decision, DumpFormat, Finish, Policies, Policy};
use crate::qmp::{Client, Notice, QmpError};

#[derive(Clone, Debug)]
pub struct Config {
    pub policies: Policies,
    /// Where dumps go (absolute; required when a policy dumps).
    pub dump_dir: Option<PathBuf>,
    pub dump_format: DumpFormat,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Connect, greeting and command timeout.
    pub timeout: Duration,
    /// How often `query-dump` is asked during a dump.
    pub poll_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policies: Policies::default(),
            dump_dir: None,
            dump_format: DumpFormat::Elf,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// How a session ended.
enum SessionEnd {
    Disconnected,
    Stopped,
}

/// Watches `ep` until `stop` becomes true. `Err` is a fatal error (the QEMU
/// cannot write the configured dump format).
pub async fn watch(
    ep: Endpoint,
    cfg: Arc<Config>,
    log: Arc<Logger>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    let mut ctx = Ctx {
        endpoint: ep.to_string(),
        vm: ep.fallback_name(),
    };
    let mut last_error: Option<String> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let attempt = tokio::select! {
            r = Client::connect(&ep, cfg.timeout) => r,
            _ = stop.changed() => return Ok(()),
        };
        match attempt {
            Ok((client, rx)) => {
                last_error = None;
                let started = Instant::now();
                match session(
                    client,
                    rx,
                    &mut ctx,
                    &cfg,
                    &log,
                    &mut stop,
                    ep.fallback_name(),
                )
                .await?
                {
                    SessionEnd::Stopped => return Ok(()),
                    SessionEnd::Disconnected => {
                        log.record(
                            Some(&ctx),
                            "connection",
                            json!({"status": "disconnected"}),
                            Some("QMP connection closed; reconnecting"),
                        );
                    }
                }
                // A connection that lived a while resets the backoff; one
                // that flaps keeps backing off.
                if started.elapsed() >= Duration::from_secs(1) {
                    backoff.reset();
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    log.record(
                        Some(&ctx),
                        "connection",
                        json!({"status": "connect-failed", "error": msg,
                               "retry-max-ms": cfg.reconnect_max.as_millis() as u64}),
                        Some(&format!(
                            "cannot connect to {}: {msg}; retrying (backoff up to {:.1} s)",
                            ctx.endpoint,
                            cfg.reconnect_max.as_secs_f64()
                        )),
                    );
                    last_error = Some(msg);
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}...", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Running {
    handle: JoinHandle<()>,
    what: String,
}

struct Session<'a> {
    client: Arc<Client>,
    ctx: Ctx,
    cfg: &'a Arc<Config>,
    log: &'a Arc<Logger>,
    running: Option<Running>,
}

async fn session(
    client: Client,
    mut rx: broadcast::Receiver<Notice>,
    ctx: &mut Ctx,
    cfg: &Arc<Config>,
    log: &Arc<Logger>,
    stop: &mut watch::Receiver<bool>,
    fallback_name: String,
) -> Result<SessionEnd, String> {
    let client = Arc::new(client);

    // The VM's name, for logs and dump file names (a QEMU started again on
    // the same socket may have another name, or none).
    ctx.vm = fallback_name;
    if let Ok(r) = client.execute("query-name", None).await {
        if let Some(n) = r
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            ctx.vm = n.to_string();
        }
    }
    let version = client.qemu_version().unwrap_or_else(|| "unknown".into());

    // A dump format this QEMU cannot write is a configuration error: say so now,
    // not when a guest crashes.
    if cfg.policies.any_dump() {
        match client
            .execute("query-dump-guest-memory-capability", None)
            .await
        {
            Ok(r) if r["formats"].is_array() => {
                let formats: Vec<&str> = r["formats"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let want = cfg.dump_format.qapi_name();
                if !formats.contains(&want) {
                    let msg = format!(
                        "QEMU {version} at {} cannot write dump format {want} (it supports: {})",
                        ctx.endpoint,
                        formats.join(", ")
                    );
                    log.record(
                        Some(ctx),
                        "error",
                        json!({"error": msg, "dump-format": want, "supported": formats}),
                        Some(&msg),
                    );
                    return Err(msg);
                }
            }
            Err(QmpError::Disconnected) => return Ok(SessionEnd::Disconnected),
            other => {
                let e = match other {
                    Err(e) => e.to_string(),
                    Ok(r) => format!("unexpected answer {}", compact(&r)),
                };
                log.record(
                    Some(ctx),
                    "warning",
                    json!({"warning": format!("query-dump-guest-memory-capability: {e}")}),
                    Some(&format!("cannot check the dump formats: {e}")),
                )
            }
        }
    }

    log.record(
        Some(ctx),
        "connection",
        json!({"status": "connected", "qemu-version": version}),
        Some(&format!("connected to {} (QEMU {version})", ctx.endpoint)),
    );

    let mut s = Session {
        client: client.clone(),
        ctx: ctx.clone(),
        cfg,
        log,
        running: None,
    };

    // Events missed while vigil was not connected: a VM found stopped by a
    // panic or a watchdog gets the policy it would have got.
    if let Ok(st) = client.execute("query-status", None).await {
        let missed = match st["status"].as_str() {
            Some("guest-panicked") => Some(("GUEST_PANICKED", json!({"action": "pause"}))),
            Some("watchdog") => Some(("WATCHDOG", json!({"action": "pause"}))),
            _ => None,
        };
        if let Some((name, data)) = missed {
            s.handle(name, &data, None, true);
        }
    }

    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Ok(Notice::Event(e)) => s.handle(&e.name, &e.data, e.timestamp, false),
                Ok(Notice::Malformed(m)) => log.record(
                    Some(&s.ctx), "protocol", json!({"status": "malformed", "detail": m}),
                    Some(&format!("malformed QMP input ignored: {m}"))),
                Ok(Notice::Unexpected(m)) => log.record(
                    Some(&s.ctx), "protocol", json!({"status": "unexpected", "detail": m}),
                    Some(&format!("unexpected QMP message ignored: {m}"))),
                Err(broadcast::error::RecvError::Lagged(n)) => log.record(
                    Some(&s.ctx), "protocol", json!({"status": "lagged", "lost": n}),
                    Some(&format!("{n} QMP messages lost (too many at once)"))),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = stop.changed() => {
                s.finish_running(true).await;
                return Ok(SessionEnd::Stopped);
            }
        }
    }
    s.finish_running(false).await;
    Ok(SessionEnd::Disconnected)
}

impl Session<'_> {
    /// Logs one event and starts its policy's action if it has one.
    fn handle(&mut self, name: &str, data: &Value, ts: Option<(i64, i64)>, catch_up: bool) {
        let decision = decide(name, data, &self.cfg.policies);
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.handle.is_finished())
        {
            self.running = None;
        }
        let mut rec = json!({"event": name, "data": data});
        if let Some((s, us)) = ts {
            rec["qemu-timestamp"] = json!({"seconds": s, "microseconds": us});
        }
        let data_txt = if data.as_object().is_some_and(|o| o.is_empty()) {
            String::new()
        } else {
            format!(" {}", compact(data))
        };
        let head = if catch_up {
            rec["catch-up"] = json!(true);
            format!("VM found stopped by {name} (missed event){data_txt}")
        } else {
            format!("{name}{data_txt}")
        };
        let (outcome, human) = match &decision {
            Decision::Other => ("none", head),
            Decision::LogOnly { trigger, reason } => {
                if let Some(t) = trigger {
                    rec["policy"] = json!(self.cfg.policies.get(*t).name());
                }
                rec["reason"] = json!(reason);
                ("log", format!("{head}: logged only ({reason})"))
            }
            Decision::Act {
                policy: Policy::Preserve,
                ..
            } => {
                rec["policy"] = json!("preserve");
                ("preserve", format!("{head}: preserve (VM left as it is)"))
            }
            Decision::Act { trigger, policy } => {
                rec["policy"] = json!(policy.name());
                if let Some(r) = &self.running {
                    rec["reason"] = json!(format!("{} still running", r.what));
                    (
                        "ignored-busy",
                        format!("{head}: {policy} ignored, {} still running", r.what),
                    )
                } else {
                    ("act", format!("{head}: {policy} ({})", trigger.option()))
                }
            }
        };
        rec["decision"] = json!(outcome);
        self.log.record(Some(&self.ctx), "event", rec, Some(&human));

        if let (Decision::Act { policy, .. }, "act") = (decision, outcome) {
            let what = format!("{policy} for {name}");
            let handle = tokio::spawn(run_action(
                self.client.clone(),
                self.ctx.clone(),
                self.cfg.clone(),
                self.log.clone(),
                policy,
                name.to_string(),
            ));
            self.running = Some(Running { handle, what });
        }
    }

    async fn finish_running(&mut self, stopping: bool) {
        if let Some(r) = self.running.take() {
            if !r.handle.is_finished() && stopping {
                self.log.record(
                    Some(&self.ctx),
                    "shutdown",
                    json!({"status": "waiting", "action": r.what}),
                    Some(&format!(
                        "waiting for {} to finish (signal again to exit now)",
                        r.what
                    )),
                );
            }
            let _ = r.handle.await;
        }
    }
}

/// The action of one policy: the dump first if the policy has one, then the
/// finish (destroy or restart). A failed dump leaves the VM as it is, as
/// libvirt does, so that an operator can still inspect or dump it.
async fn run_action(
    client: Arc<Client>,
    ctx: Ctx,
    cfg: Arc<Config>,
    log: Arc<Logger>,
    policy: Policy,
    event: String,
) {
    if policy.dumps() {
        match dump(&client, &ctx, &cfg, &log).await {
            Ok(_) => {}
            Err(e) => {
                log.record(
                    Some(&ctx),
                    "action",
                    json!({"action": "dump", "status": "failed", "error": e, "event": event,
                           "policy": policy.name(), "vm-state": "preserved"}),
                    Some(&format!("dump failed: {e}; VM left as it is")),
                );
                return;
            }
        }
    }
    match policy.then() {
        Some(Finish::Destroy) => destroy(&client, &ctx, &log, &event).await,
        Some(Finish::Restart) => restart(&client, &ctx, &cfg, &log, &event).await,
        None => {}
    }
}

async fn destroy(client: &Client, ctx: &Ctx, log: &Logger, event: &str) {
    match client.execute("quit", None).await {
        Ok(_) | Err(QmpError::Disconnected) => log.record(
            Some(ctx),
            "action",
            json!({"action": "destroy", "status": "ok", "event": event}),
            Some("destroyed (quit)"),
        ),
        Err(e) => log.record(
            Some(ctx),
            "action",
            json!({"action": "destroy", "status": "failed", "error": e.to_string(), "event": event}),
            Some(&format!("destroy (quit) failed: {e}")),
        ),
    }
}

async fn restart(client: &Client, ctx: &Ctx, cfg: &Config, log: &Logger, event: &str) {
    let fail = |step: &str, e: &QmpError| {
        log.record(
            Some(ctx),
            "action",
            json!({"action": "restart", "status": "failed", "step": step, "error": e.to_string(), "event": event}),
            Some(&format!("restart failed at {step}: {e}")),
        );
    };
    let mut sub = client.subscribe();
    if let Err(e) = client.execute("system_reset", None).await {
        return fail("system_reset", &e);
    }
    // The reset is done when QEMU says RESET; then resume the (possibly paused) VM.
    let saw_reset = tokio::time::timeout(cfg.timeout, async {
        loop {
            match sub.recv().await {
                Ok(Notice::Event(e)) if e.name == "RESET" => return true,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if let Err(e) = client.execute("cont", None).await {
        return fail("cont", &e);
    }
    let status = client
        .execute("query-status", None)
        .await
        .ok()
        .and_then(|s| s["status"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    log.record(
        Some(ctx),
        "action",
        json!({"action": "restart", "status": "ok", "reset-event": saw_reset, "run-state": status, "event": event}),
        Some(&format!("restarted (system_reset + cont), VM {status}")),
    );
}

/// Dumps guest memory to the dump directory, atomically. Returns the final path.
async fn dump(client: &Client, ctx: &Ctx, cfg: &Config, log: &Logger) -> Result<PathBuf, String> {
    let dir = cfg.dump_dir.as_ref().ok_or("no --dump-dir")?;
    let fmt = cfg.dump_format;

    let mem = client
        .execute("query-memory-size-summary", None)
        .await
        .map_err(|e| format!("query-memory-size-summary: {e}"))?;
    let ram =
        mem["base-memory"].as_u64().unwrap_or(0) + mem["plugged-memory"].as_u64().unwrap_or(0);
    if ram == 0 {
        return Err(format!(
            "query-memory-size-summary gave no memory size: {}",
            compact(&mem)
        ));
    }
    let need = dump::required_space(ram);
    let free = dump::free_space(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    if free < need {
        return Err(format!(
            "not enough space in {}: {} MiB free, {} MiB needed (guest RAM {} MiB + margin)",
            dir.display(),
            free >> 20,
            need >> 20,
            ram >> 20
        ));
    }

    let (paths, _reserved) = dump::choose_paths(dir, &ctx.vm, now_secs(), fmt);
    let mut sub = client.subscribe();
    let args = json!({
        "paging": false,
        "protocol": format!("file:{}", paths.partial.display()),
        "detach": true,
        "format": fmt.qapi_name(),
    });
    log.record(
        Some(ctx),
        "action",
        json!({"action": "dump", "status": "started", "file": paths.final_path, "partial": paths.partial,
               "format": fmt.qapi_name(), "guest-ram": ram, "free": free}),
        Some(&format!("dumping {} MiB of guest memory to {} ({})", ram >> 20, paths.final_path.display(), fmt)),
    );
    let t0 = Instant::now();
    if let Err(e) = client.execute("dump-guest-memory", Some(args)).await {
        let _ = dump::discard(&paths);
        return Err(format!("dump-guest-memory: {e}"));
    }
    let result = wait_dump(client, ctx, cfg, log, &mut sub).await;
    log.progress_done(ctx);
    let finish = async {
        result?;
        let p = paths.clone();
        match tokio::task::spawn_blocking(move || dump::finalize(&p)).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(format!("cannot rename the completed dump: {e}")),
            Err(e) => Err(format!("cannot rename the completed dump: {e}")),
        }
    };
    match finish.await {
        Ok(f) => {
            let bytes = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            let secs = t0.elapsed().as_secs_f64();
            log.record(
                Some(ctx),
                "action",
                json!({"action": "dump", "status": "completed", "file": f, "bytes": bytes,
                       "seconds": (secs * 1000.0).round() / 1000.0, "format": fmt.qapi_name()}),
                Some(&format!(
                    "dump written: {} ({} MiB in {secs:.1} s)",
                    f.display(),
                    bytes >> 20
                )),
            );
            Ok(f)
        }
        Err(e) => {
            if let Err(d) = discard_partial(&paths) {
                return Err(format!(
                    "{e}; and removing {}: {d}",
                    paths.partial.display()
                ));
            }
            Err(e)
        }
    }
}

fn discard_partial(paths: &DumpPaths) -> std::io::Result<()> {
    dump::discard(paths)
}

/// Waits for the dump's end: `DUMP_COMPLETED`, or `query-dump` saying it
/// ended (if the event was lost). Shows progress meanwhile.
async fn wait_dump(
    client: &Client,
    ctx: &Ctx,
    cfg: &Config,
    log: &Logger,
    sub: &mut broadcast::Receiver<Notice>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = 0;
    loop {
        tokio::select! {
            n = sub.recv() => match n {
                Ok(Notice::Event(e)) if e.name == "DUMP_COMPLETED" => {
                    if let Some(err) = e.data.get("error").and_then(Value::as_str) {
                        return Err(format!("QEMU: {err}"));
                    }
                    let r = &e.data["result"];
                    return match r["status"].as_str() {
                        Some("completed") => {
                            let total = r["total"].as_u64().unwrap_or(0);
                            log.progress(ctx, total, total);
                            Ok(())
                        }
                        s => Err(format!("DUMP_COMPLETED with status {}", s.unwrap_or("(none)"))),
                    };
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err("QMP connection closed during the dump".into()),
            },
            _ = tick.tick() => match client.execute("query-dump", None).await {
                Ok(q) => {
                    let (done, total) = (q["completed"].as_u64().unwrap_or(0), q["total"].as_u64().unwrap_or(0));
                    match q["status"].as_str() {
                        Some("active") => { idle = 0; log.progress(ctx, done, total) }
                        Some("completed") => { log.progress(ctx, total, total); return Ok(()) }
                        Some("failed") => return Err("query-dump: status failed".into()),
                        _ => {
                            idle += 1;
                            if idle >= 3 {
                                return Err(format!("no dump in progress (query-dump: {})", compact(&q)));
                            }
                        }
                    }
                }
                Err(QmpError::Disconnected) => return Err("QMP connection closed during the dump".into()),
                Err(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeQmp, SharedBuf};
    use std::sync::Mutex;

    fn config(dir: &std::path::Path, panic: Policy) -> Arc<Config> {
        Arc::new(Config {
            policies: Policies {
                panic,
                stall: Policy::CoredumpDestroy,
                ..Policies::default()
            },
            dump_dir: Some(dir.to_path_buf()),
            poll_interval: Duration::from_millis(20),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
            ..Config::default()
        })
    }

    /// A fake QEMU with `ram` bytes whose dumps write `dump_bytes` (or fail
    /// with `dump_error`) after `delay_ms`.
    async fn fake_qemu(
        name: &'static str,
        ram: u64,
        dump_error: Option<&'static str>,
        delay_ms: u64,
    ) -> FakeQmp {
        let state = Arc::new(Mutex::new("running"));
        FakeQmp::start(move |cmd, args| {
            let ok = |v: Value| (json!({"return": v}), vec![]);
            match cmd {
                "query-name" => ok(json!({"name": name})),
                "query-memory-size-summary" => ok(json!({"base-memory": ram, "plugged-memory": 0})),
                "query-dump-guest-memory-capability" => ok(json!({"formats": ["elf", "kdump-zlib"]})),
                "query-status" => ok(json!({"status": *state.lock().unwrap(), "running": true})),
                "dump-guest-memory" => {
                    let path = args["protocol"].as_str().unwrap().strip_prefix("file:").unwrap().to_string();
                    std::fs::write(&path, b"\x7fELF partial").unwrap();
                    let done = match dump_error {
                        None => json!({"event": "DUMP_COMPLETED", "timestamp": {"seconds": 1, "microseconds": 0},
                                       "data": {"result": {"status": "completed", "completed": 12, "total": 12}}}),
                        Some(e) => json!({"event": "DUMP_COMPLETED", "timestamp": {"seconds": 1, "microseconds": 0},
                                          "data": {"result": {"status": "failed", "completed": 3, "total": 12}, "error": e}}),
                    };
                    (json!({"return": {}}), vec![json!({"delay-ms": delay_ms}), done])
                }
                "query-dump" => ok(json!({"status": "active", "completed": 6, "total": 12})),
                "system_reset" => (json!({"return": {}}), vec![
                    json!({"event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"},
                           "timestamp": {"seconds": 1, "microseconds": 0}})]),
                "cont" => { *state.lock().unwrap() = "running"; ok(json!({})) }
                _ => ok(json!({})),
            }
        })
        .await
    }

    struct Harness {
        stop: watch::Sender<bool>,
        task: JoinHandle<Result<(), String>>,
        json: SharedBuf,
        human: SharedBuf,
    }

    fn start(ep: Endpoint, cfg: Arc<Config>) -> Harness {
        let json = SharedBuf::default();
        let human = SharedBuf::default();
        let log = Arc::new(Logger::new(
            vec![Box::new(json.clone())],
            Some(Box::new(human.clone())),
            false,
        ));
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(watch(ep, cfg, log, rx));
        Harness {
            stop,
            task,
            json,
            human,
        }
    }

    impl Harness {
        async fn until(&self, what: &str, f: impl Fn(&[Value]) -> bool) {
            for _ in 0..500 {
                if f(&self.json.records()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!(
                "timed out waiting for {what}; log:\n{}\nstderr:\n{}",
                self.json.text(),
                self.human.text()
            );
        }
        async fn stop(self) -> Result<(), String> {
            self.stop.send(true).unwrap();
            self.task.await.unwrap()
        }
    }

    fn has(recs: &[Value], f: impl Fn(&Value) -> bool) -> bool {
        recs.iter().any(f)
    }

    fn count(recs: &[Value], f: impl Fn(&Value) -> bool) -> usize {
        recs.iter().filter(|r| f(r)).count()
    }

    #[tokio::test]
    async fn panic_coredump_restart() {
        let fake = fake_qemu("web1", 256 << 20, None, 50).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::CoredumpRestart));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("restart", |r| has(r, |x| x["action"] == "restart"))
            .await;
        let recs = h.json.records();
        let done = recs
            .iter()
            .find(|x| x["action"] == "dump" && x["status"] == "completed")
            .expect("dump completed");
        let file = PathBuf::from(done["file"].as_str().unwrap());
        assert!(
            file.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("web1-"),
            "{file:?}"
        );
        assert!(file.to_str().unwrap().ends_with(".elf"));
        assert_eq!(std::fs::read(&file).unwrap(), b"\x7fELF partial");
        assert!(crate::dump::stale_partials(&dir).is_empty());
        let ev = recs
            .iter()
            .find(|x| x["event"] == "GUEST_PANICKED")
            .unwrap();
        assert_eq!(
            (
                ev["decision"].as_str(),
                ev["policy"].as_str(),
                ev["vm"].as_str()
            ),
            (Some("act"), Some("coredump-restart"), Some("web1"))
        );
        let restart = recs.iter().find(|x| x["action"] == "restart").unwrap();
        assert_eq!(restart["status"], "ok");
        assert_eq!(restart["reset-event"], true);
        let cmds = fake.command_names();
        let pos = |c: &str| {
            cmds.iter()
                .position(|x| x == c)
                .unwrap_or_else(|| panic!("no {c} in {cmds:?}"))
        };
        assert!(
            pos("dump-guest-memory") < pos("system_reset") && pos("system_reset") < pos("cont")
        );
        let dump_args = &fake.commands.lock().unwrap()[pos("dump-guest-memory")]
            .1
            .clone();
        assert_eq!(dump_args["paging"], false);
        assert_eq!(dump_args["detach"], true);
        assert_eq!(dump_args["format"], "elf");
        assert!(dump_args["protocol"]
            .as_str()
            .unwrap()
            .ends_with(".partial"));
        assert!(
            h.human
                .text()
                .contains("GUEST_PANICKED {\"action\":\"pause\"}: coredump-restart"),
            "{}",
            h.human.text()
        );
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn second_crash_during_a_dump_is_ignored() {
        let fake = fake_qemu("web1", 256 << 20, None, 300).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::CoredumpDestroy));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        fake.send_event(
            "VCPU_STALL",
            json!({"qom-path": "/machine/peripheral/stall", "cpu-index": 1,
                                             "budget-ms": 8000, "stage": "action"}),
        );
        h.until("destroy", |r| has(r, |x| x["action"] == "destroy"))
            .await;
        let recs = h.json.records();
        assert_eq!(count(&recs, |x| x["decision"] == "act"), 1);
        assert_eq!(count(&recs, |x| x["decision"] == "ignored-busy"), 2);
        assert_eq!(
            fake.command_names()
                .iter()
                .filter(|c| *c == "dump-guest-memory")
                .count(),
            1
        );
        assert_eq!(
            fake.command_names().iter().filter(|c| *c == "quit").count(),
            1
        );
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn stopping_waits_for_the_running_dump() {
        let fake = fake_qemu("web1", 256 << 20, None, 400).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::CoredumpRestart));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("dump started", |r| {
            has(r, |x| x["action"] == "dump" && x["status"] == "started")
        })
        .await;
        let json = h.json.clone();
        h.stop().await.unwrap();
        let recs = json.records();
        assert!(has(&recs, |x| x["type"] == "shutdown"
            && x["status"] == "waiting"));
        assert!(has(&recs, |x| x["action"] == "dump"
            && x["status"] == "completed"));
        assert!(has(&recs, |x| x["action"] == "restart" && x["status"] == "ok"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(crate::dump::stale_partials(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn failed_dump_removes_partial_and_preserves_vm() {
        let fake = fake_qemu(
            "web1",
            256 << 20,
            Some("dump: failed to save memory: No space left on device"),
            10,
        )
        .await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::CoredumpRestart));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("dump failure", |r| {
            has(r, |x| x["action"] == "dump" && x["status"] == "failed")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "partial file left behind"
        );
        assert!(!fake
            .command_names()
            .iter()
            .any(|c| c == "system_reset" || c == "quit"));
        assert!(h.human.text().contains("No space left on device"));
        // the next crash is handled again
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("second dump", |r| {
            count(r, |x| x["action"] == "dump" && x["status"] == "failed") == 2
        })
        .await;
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_dump_without_space() {
        let fake = fake_qemu("huge", 1 << 62, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::CoredumpDestroy));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("refusal", |r| {
            has(r, |x| {
                x["status"] == "failed"
                    && x["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("not enough space"))
            })
        })
        .await;
        assert!(!fake
            .command_names()
            .iter()
            .any(|c| c == "dump-guest-memory" || c == "quit"));
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unsupported_format_is_fatal() {
        let fake = fake_qemu("web1", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let mut cfg = (*config(&dir, Policy::CoredumpDestroy)).clone();
        cfg.dump_format = DumpFormat::KdumpLzo;
        let h = start(fake.endpoint(), Arc::new(cfg));
        let r = tokio::time::timeout(Duration::from_secs(5), h.task)
            .await
            .unwrap()
            .unwrap();
        let e = r.unwrap_err();
        assert!(
            e.contains("kdump-lzo") && e.contains("elf, kdump-zlib"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn garbage_stall_warning_and_reconnect() {
        let fake = fake_qemu("web1", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::Log));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_raw(
            b"%%% not json\n{\"event\": \"VCPU_STALL\", \"data\": [}\n\"just a string\"\n",
        );
        fake.send_event(
            "VCPU_STALL",
            json!({"qom-path": "/machine/peripheral/stall", "cpu-index": 1,
                                             "budget-ms": 8000, "stage": "warning"}),
        );
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("panic logged", |r| {
            has(r, |x| x["event"] == "GUEST_PANICKED")
        })
        .await;
        let recs = h.json.records();
        assert_eq!(
            count(&recs, |x| x["type"] == "protocol"
                && x["status"] == "malformed"),
            2
        );
        assert_eq!(
            count(&recs, |x| x["type"] == "protocol"
                && x["status"] == "unexpected"),
            1
        );
        let warn = recs.iter().find(|x| x["event"] == "VCPU_STALL").unwrap();
        assert_eq!(warn["decision"], "log");
        assert_eq!(warn["data"]["cpu-index"], 1);
        // QEMU goes away and comes back (same socket): vigil reconnects
        fake.close();
        h.until("reconnected", |r| {
            count(r, |x| x["status"] == "connected") == 2
        })
        .await;
        assert!(has(&h.json.records(), |x| x["status"] == "disconnected"));
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn waits_for_a_socket_that_does_not_exist_yet() {
        let dir = crate::testutil::tempdir("late");
        let ep = Endpoint::Unix(dir.join("nothing-yet.sock"));
        let h = start(ep, config(&dir, Policy::Log));
        h.until("connect failure", |r| {
            has(r, |x| x["status"] == "connect-failed")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // logged once, not once per attempt
        assert_eq!(
            count(&h.json.records(), |x| x["status"] == "connect-failed"),
            1
        );
        assert_eq!(h.json.records()[0]["vm"], "nothing-yet");
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn catches_up_with_a_panic_missed_while_disconnected() {
        let state = Arc::new(Mutex::new("guest-panicked"));
        let st = state.clone();
        let fake = FakeQmp::start(move |cmd, _| match cmd {
            "query-status" => (
                json!({"return": {"status": *st.lock().unwrap(), "running": false}}),
                vec![],
            ),
            "query-dump-guest-memory-capability" => {
                (json!({"return": {"formats": ["elf"]}}), vec![])
            }
            _ => (json!({"return": {}}), vec![]),
        })
        .await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::Destroy));
        h.until("destroy", |r| has(r, |x| x["action"] == "destroy"))
            .await;
        let recs = h.json.records();
        let ev = recs
            .iter()
            .find(|x| x["event"] == "GUEST_PANICKED")
            .unwrap();
        assert_eq!(ev["catch-up"], true);
        // no query-name answer: the socket's name is used
        assert_eq!(ev["vm"], "qmp");
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
