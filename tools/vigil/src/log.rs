//! The outputs: every [`Record`] goes to the metrics, the JSON-lines sinks,
//! the human line on stderr and, for events and actions, the `--notify`
//! hook.
//!
//! Nothing here blocks the async runtime: each sink has its own writer
//! thread fed through a bounded queue ([`SINK_QUEUE`] lines, [`SINK_BYTES`]). A sink that
//! blocks (a `--log-json` pipe nobody reads, a hung file system) fills its
//! queue; further lines for it are dropped and counted
//! (`vigil_records_dropped_total{sink="log"}`), and the writer says how many
//! were dropped once it can write again. Actions, the hook and `/metrics`
//! go on meanwhile.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::hooks::Hook;
use crate::metrics::Metrics;
use crate::record::{Body, ProtocolKind, Record};

pub use crate::record::Ctx;

/// Lines waiting for one sink; more are dropped (and counted).
pub const SINK_QUEUE: usize = 4096;
/// Bytes waiting for one sink; more are dropped (and counted).
pub const SINK_BYTES: usize = 8 << 20;

enum Msg {
    Line(Vec<u8>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// One output stream, written by its own thread.
struct Sink {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Bytes queued and not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink {
    /// `json`: the writer reports drops as a JSON record, else as a line.
    fn start(mut out: Box<dyn Write + Send>, json: bool) -> Sink {
        let (tx, rx) = sync_channel::<Msg>(SINK_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let d2 = dropped.clone();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let q2 = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("vigil-log".into())
            .spawn(move || {
                while let Ok(m) = rx.recv() {
                    match m {
                        Msg::Line(l) => {
                            let n = d2.swap(0, Ordering::Relaxed);
                            if n > 0 {
                                let rec = Record::new(
                                    None,
                                    Body::Dropped {
                                        sink: "log",
                                        count: n,
                                    },
                                )
                                .say(format!("log output blocked: {n} record(s) dropped"));
                                let note = if json {
                                    format!("{}\n", rec.to_json())
                                } else {
                                    format!("{}\n", rec.human_line().unwrap_or_default())
                                };
                                let _ = out.write_all(note.as_bytes());
                            }
                            let _ = out.write_all(&l);
                            let _ = out.flush();
                            q2.fetch_sub(l.len(), Ordering::Relaxed);
                        }
                        Msg::Flush(done) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                    }
                }
            });
        if spawned.is_err() {
            // no thread: the queue fills and every line counts as dropped
            eprintln!("vigil: cannot start a log writer thread");
        }
        Sink {
            tx,
            dropped,
            queued,
        }
    }

    /// Queues `line`; false if it was dropped.
    fn send(&self, line: Vec<u8>) -> bool {
        let n = line.len();
        if self.queued.load(Ordering::Relaxed).saturating_add(n) > SINK_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(n, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

pub struct Logger {
    json: Vec<Sink>,
    human: Option<Sink>,
    tty: bool,
    progress: Mutex<Progress>,
    metrics: Arc<Metrics>,
    /// `--notify`: event and action records are offered to it.
    hook: OnceLock<Hook>,
}

#[derive(Default)]
struct Progress {
    bar_on_screen: bool,
    last_decile: HashMap<String, u64>,
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1u64 << 20) as f64)
}

/// Updates the metrics a record stands for: events, stalls, protocol
/// errors, actions, identity problems, drops.
pub fn count(m: &Metrics, rec: &Record) {
    let vm = rec.vm().unwrap_or("");
    match &rec.body {
        Body::Event(e) => {
            m.event(vm, &e.name, e.repeat);
            if let Some(stage) = e.stall_stage() {
                let cpu = match e.data.get("cpu-index") {
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => "unknown".into(),
                };
                let stage = if matches!(stage, "warning" | "action") {
                    stage
                } else {
                    "unknown"
                };
                m.stall(vm, &cpu, stage, e.repeat);
            }
        }
        Body::Protocol { kind, repeat, .. } => m.protocol_error(
            vm,
            match kind {
                ProtocolKind::Malformed => "malformed",
                ProtocolKind::Unexpected => "unexpected",
            },
            *repeat,
        ),
        Body::Action {
            action,
            status,
            policy,
            ..
        } => {
            if matches!(
                *status,
                "completed" | "failed" | "ok" | "timeout" | "refused"
            ) {
                m.action(vm, policy, action, status);
                if *action == "dump" {
                    Metrics::result(&m.dumps, status);
                }
            }
            if *action == "dump" && *status == "timeout" {
                m.dump_timeout(vm);
            }
        }
        Body::NameMismatch { .. } => m.name_mismatch(vm),
        Body::Connection(crate::record::ConnStatus::Refused(reason)) => m.peer_refused(vm, reason),
        _ => {}
    }
}

impl Logger {
    /// `json`: sinks for JSON lines; `human`: the summary stream (stderr),
    /// `tty`: whether it is a terminal (progress bar instead of log lines).
    pub fn new(
        json: Vec<Box<dyn Write + Send>>,
        human: Option<Box<dyn Write + Send>>,
        tty: bool,
        metrics: Arc<Metrics>,
    ) -> Logger {
        Logger {
            json: json.into_iter().map(|w| Sink::start(w, true)).collect(),
            human: human.map(|w| Sink::start(w, false)),
            tty,
            progress: Mutex::new(Progress::default()),
            metrics,
            hook: OnceLock::new(),
        }
    }

    /// Installs the `--notify` hook (once).
    pub fn set_hook(&self, hook: Hook) {
        let _ = self.hook.set(hook);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reports one record: metrics, JSON sinks, human line, hook. Never
    /// blocks: a full sink or hook queue drops (and counts) it.
    pub fn emit(&self, rec: Record) {
        if rec.counted {
            count(&self.metrics, &rec);
        }
        let vm = rec.vm().map(str::to_string);
        if !self.json.is_empty() {
            let mut line = rec.to_json().to_string().into_bytes();
            line.push(b'\n');
            for s in &self.json {
                if !s.send(line.clone()) {
                    self.metrics.dropped(vm.as_deref(), "log", 1);
                }
            }
        }
        if let (Some(h), Some(text)) = (&self.human, rec.human_line()) {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            let mut line = Vec::new();
            if std::mem::take(&mut p.bar_on_screen) {
                line.extend_from_slice(b"\r\x1b[K");
            }
            line.extend_from_slice(text.as_bytes());
            line.push(b'\n');
            if !h.send(line) {
                self.metrics.dropped(vm.as_deref(), "log", 1);
            }
        }
        if let Some(prio) = rec.priority() {
            if let Some(hook) = self.hook.get() {
                hook.offer(rec, prio);
            }
        }
    }

    /// Waits (up to `timeout`) until every sink wrote what it was given.
    pub fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        for s in self.json.iter().chain(self.human.iter()) {
            let (tx, rx) = std::sync::mpsc::channel();
            if s.tx.try_send(Msg::Flush(tx)).is_ok() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let _ = rx.recv_timeout(left);
            }
        }
    }

    /// Dump progress: a bar redrawn in place on a terminal, otherwise one
    /// line per 10% step. `total` 0 (QEMU did not say) shows bytes only.
    pub fn progress(&self, ctx: &Ctx, done: u64, total: u64) {
        let Some(h) = &self.human else { return };
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let vm = crate::record::escape(&ctx.vm);
        if total == 0 {
            if p.last_decile.insert(ctx.endpoint.clone(), 0).is_none() {
                h.send(
                    format!("vigil: {vm}: dump running ({} MiB written)\n", mib(done)).into_bytes(),
                );
            }
            return;
        }
        let pct = (done.min(total).saturating_mul(100))
            .checked_div(total)
            .unwrap_or(0);
        if self.tty {
            let width = 30usize;
            let filled = (pct as usize * width) / 100;
            let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
            let text = format!(
                "\r\x1b[Kvigil: {vm}: dump [{bar}] {pct:3}% {}/{} MiB",
                mib(done),
                mib(total)
            );
            p.bar_on_screen = true;
            h.send(text.into_bytes());
        } else {
            let decile = pct / 10;
            let last = p.last_decile.get(&ctx.endpoint).copied();
            if last.is_some_and(|l| l >= decile) {
                return;
            }
            p.last_decile.insert(ctx.endpoint.clone(), decile);
            h.send(
                format!(
                    "vigil: {vm}: dump {pct}% ({}/{} MiB)\n",
                    mib(done),
                    mib(total)
                )
                .into_bytes(),
            );
        }
    }

    /// Forgets the progress state of `ctx` (a dump ended).
    pub fn progress_done(&self, ctx: &Ctx) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.last_decile.remove(&ctx.endpoint);
        if std::mem::take(&mut p.bar_on_screen) {
            if let Some(h) = &self.human {
                h.send(b"\r\x1b[K".to_vec());
            }
        }
    }

    /// A `warning` record.
    pub fn warn(&self, ctx: Option<&Ctx>, msg: String) {
        self.emit(Record::new(ctx, Body::Warning(msg.clone())).say(msg));
    }

    /// An `error` record.
    pub fn error(&self, ctx: Option<&Ctx>, msg: String) {
        self.emit(Record::new(ctx, Body::Error(msg.clone())).say(msg));
    }
}

/// Records the `--notify` runner reports (its outcomes), passed on to the
/// logger by a task of the caller's.
pub async fn forward(log: Arc<Logger>, mut rx: tokio::sync::mpsc::Receiver<Record>) {
    while let Some(r) = rx.recv().await {
        log.emit(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::SharedBuf;
    use serde_json::json;

    fn ctx() -> Ctx {
        Ctx {
            endpoint: "unix:/run/web1.qmp".into(),
            vm: "web1".into(),
        }
    }

    fn logger(json: &SharedBuf, human: &SharedBuf, tty: bool) -> Logger {
        Logger::new(
            vec![Box::new(json.clone())],
            Some(Box::new(human.clone())),
            tty,
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn json_lines_and_human_lines() {
        let (json_out, human) = (SharedBuf::default(), SharedBuf::default());
        let log = logger(&json_out, &human, false);
        log.emit(
            Record::new(Some(&ctx()), Body::Warning("w".into()))
                .with(json!({"data": {"action": "pause"}}))
                .say("GUEST_PANICKED (action pause): coredump-restart"),
        );
        log.emit(
            Record::new(
                Some(&ctx()),
                Body::Action {
                    action: "dump",
                    status: "started",
                    policy: "coredump-restart",
                    event: "GUEST_PANICKED".into(),
                },
            )
            .with(json!({"note": "a \"quoted\"\nline"})),
        );
        log.flush(Duration::from_secs(5));
        let recs = json_out.records();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["data"]["action"], "pause");
        assert_eq!(recs[1]["note"], "a \"quoted\"\nline");
        assert_eq!(json_out.text().lines().count(), 2, "one record per line");
        assert_eq!(
            human.text(),
            "vigil: web1: GUEST_PANICKED (action pause): coredump-restart\n"
        );
    }

    #[test]
    fn progress_lines_without_a_terminal() {
        let human = SharedBuf::default();
        let log = logger(&SharedBuf::default(), &human, false);
        for done in [0u64, 5, 12, 18, 55, 100] {
            log.progress(&ctx(), done << 20, 100 << 20);
        }
        log.progress_done(&ctx());
        log.progress(&ctx(), 7 << 20, 0);
        log.progress(&ctx(), 9 << 20, 0);
        log.flush(Duration::from_secs(5));
        assert_eq!(
            human.text(),
            "vigil: web1: dump 0% (0/100 MiB)\nvigil: web1: dump 12% (12/100 MiB)\n\
             vigil: web1: dump 55% (55/100 MiB)\nvigil: web1: dump 100% (100/100 MiB)\n\
             vigil: web1: dump running (7 MiB written)\n"
        );
    }

    #[test]
    fn progress_bar_on_a_terminal() {
        let human = SharedBuf::default();
        let log = logger(&SharedBuf::default(), &human, true);
        log.progress(&ctx(), 50 << 20, 100 << 20);
        log.emit(Record::new(Some(&ctx()), Body::Warning("x".into())).say("done"));
        log.flush(Duration::from_secs(5));
        let t = human.text();
        assert!(
            t.starts_with(
                "\r\x1b[Kvigil: web1: dump [###############...............]  50% 50/100 MiB"
            ),
            "{t:?}"
        );
        assert!(t.ends_with("\r\x1b[Kvigil: web1: done\n"), "{t:?}");
    }

    /// A sink that never returns from write (a pipe nobody reads).
    struct Stuck(Arc<std::sync::Barrier>);
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.0.wait();
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_drops_and_counts_instead_of_blocking() {
        let b = Arc::new(std::sync::Barrier::new(2));
        let m = Arc::new(Metrics::new());
        let log = Logger::new(vec![Box::new(Stuck(b.clone()))], None, false, m.clone());
        log.warn(Some(&ctx()), "first".into());
        b.wait(); // the writer is stuck in write()
        let t0 = std::time::Instant::now();
        for i in 0..(SINK_QUEUE + 500) {
            log.warn(Some(&ctx()), format!("w{i}"));
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "emit blocked");
        let t = m.text();
        assert!(
            t.contains(r#"vigil_records_dropped_total{vm="web1",sink="log"} 500"#),
            "{t}"
        );
    }
}
