//! One QMP connection: setup (name, dump format check, catch-up), then every
//! notice logged, counted and, for the events with a policy, acted on, at
//! most one action at a time per VM.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actions::run_action;
use crate::error::WatchError;
use crate::log::Ctx;
use crate::policy::{decide, Decision, Policy};
use crate::qmp::{Client, DumpCapability, Events, NameInfo, Notice, QmpError, StatusInfo};
use crate::queue::Entry;
use crate::watcher::{Env, Target};

/// How a session ended.
pub enum SessionEnd {
    Disconnected,
    Stopped,
}

pub fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}...", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

struct Running {
    handle: JoinHandle<()>,
    what: String,
}

struct Session<'a> {
    client: Arc<Client>,
    ctx: Ctx,
    env: &'a Env,
    target: &'a watch::Receiver<Target>,
    cancel: &'a CancellationToken,
    running: Option<Running>,
}

pub async fn session(
    client: Client,
    rx: Events,
    ctx: &mut Ctx,
    env: &Env,
    target: &watch::Receiver<Target>,
    cancel: &CancellationToken,
    fallback_name: String,
) -> Result<SessionEnd, WatchError> {
    let client = Arc::new(client);
    let log = &env.log;

    // The VM's name, for logs, metrics and dump file names: the configured
    // one, else QEMU's -name (a QEMU started again on the same socket may
    // have another name, or none), else the socket's.
    let configured = target.borrow().name.clone();
    ctx.vm = fallback_name;
    if let Some(n) = configured {
        ctx.vm = n;
    } else if let Ok(NameInfo { name: Some(n) }) = client.query("query-name", None).await {
        if !n.is_empty() {
            ctx.vm = n;
        }
    }
    let version = client.qemu_version().unwrap_or_else(|| "unknown".into());

    // A dump format this QEMU cannot write is a configuration error: say so now,
    // not when a guest crashes.
    if target.borrow().policies.any_dump() {
        match client
            .query::<DumpCapability>("query-dump-guest-memory-capability", None)
            .await
        {
            Ok(cap) => {
                let want = env.cfg.dump_format.qapi_name();
                if !cap.formats.iter().any(|f| f == want) {
                    let e = WatchError::UnsupportedFormat {
                        version: version.clone(),
                        endpoint: ctx.endpoint.clone(),
                        want: want.to_string(),
                        supported: cap.formats.clone(),
                    };
                    log.record(
                        Some(ctx),
                        "error",
                        json!({"error": e.to_string(), "dump-format": want, "supported": cap.formats}),
                        Some(&e.to_string()),
                    );
                    return Err(e);
                }
            }
            Err(QmpError::Disconnected) => return Ok(SessionEnd::Disconnected),
            Err(e) => log.record(
                Some(ctx),
                "warning",
                json!({"warning": format!("query-dump-guest-memory-capability: {e}")}),
                Some(&format!("cannot check the dump formats: {e}")),
            ),
        }
    }

    log.record(
        Some(ctx),
        "connection",
        json!({"status": "connected", "qemu-version": version}),
        Some(&format!("connected to {} (QEMU {version})", ctx.endpoint)),
    );
    env.metrics.set_connected(&ctx.endpoint, &ctx.vm, true);
    env.metrics.init_vm(&ctx.vm);

    let mut s = Session {
        client: client.clone(),
        ctx: ctx.clone(),
        env,
        target,
        cancel,
        running: None,
    };

    // Events missed while vigil was not connected: a VM found stopped by a
    // panic or a watchdog gets the policy it would have got.
    if let Ok(st) = client.query::<StatusInfo>("query-status", None).await {
        let missed = match st.status.as_str() {
            "guest-panicked" => Some(("GUEST_PANICKED", json!({"action": "pause"}))),
            "watchdog" => Some(("WATCHDOG", json!({"action": "pause"}))),
            _ => None,
        };
        if let Some((name, data)) = missed {
            s.handle(name, &data, None, true, 1);
        }
    }

    let end = loop {
        tokio::select! {
            // the queue first: what QEMU sent before a stop is still handled
            biased;
            n = rx.recv() => match n {
                Some(Entry { notice, repeat }) => s.notice(notice, repeat),
                None => break SessionEnd::Disconnected,
            },
            _ = cancel.cancelled() => break SessionEnd::Stopped,
        }
    };
    s.finish_running(matches!(end, SessionEnd::Stopped)).await;
    env.metrics.set_connected(&ctx.endpoint, &ctx.vm, false);
    Ok(end)
}

impl Session<'_> {
    fn notice(&mut self, n: Notice, repeat: u64) {
        let log = &self.env.log;
        let times = if repeat > 1 {
            format!(" (x{repeat})")
        } else {
            String::new()
        };
        let fields = |status: &str, detail: String| {
            let mut f = json!({"status": status, "detail": detail});
            if repeat > 1 {
                f["repeat"] = json!(repeat);
            }
            self.env
                .metrics
                .protocol_error(&self.ctx.vm, status, repeat);
            f
        };
        match n {
            Notice::Event(e) => self.handle(&e.name, &e.data, e.timestamp, false, repeat),
            Notice::Malformed(m) => {
                let f = fields("malformed", m.clone());
                log.record(
                    Some(&self.ctx),
                    "protocol",
                    f,
                    Some(&format!("malformed QMP input ignored: {m}{times}")),
                )
            }
            Notice::Unexpected(m) => {
                let f = fields("unexpected", m.clone());
                log.record(
                    Some(&self.ctx),
                    "protocol",
                    f,
                    Some(&format!("unexpected QMP message ignored: {m}{times}")),
                )
            }
        }
    }

    /// Logs one event (standing for `repeat` identical ones) and starts its
    /// policy's action if it has one.
    fn handle(
        &mut self,
        name: &str,
        data: &Value,
        ts: Option<(i64, i64)>,
        catch_up: bool,
        repeat: u64,
    ) {
        let policies = self.target.borrow().policies;
        let m = &self.env.metrics;
        m.event(&self.ctx.vm, name, repeat);
        if name == "VCPU_STALL" {
            let cpu = match data.get("cpu-index") {
                Some(Value::Number(n)) => n.to_string(),
                _ => "unknown".into(),
            };
            // a label only takes known values (no cardinality from garbage)
            let stage = data
                .get("stage")
                .and_then(Value::as_str)
                .filter(|s| matches!(*s, "warning" | "action"))
                .unwrap_or("unknown");
            m.stall(&self.ctx.vm, &cpu, stage, repeat);
        }
        let decision = decide(name, data, &policies);
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
        if repeat > 1 {
            rec["repeat"] = json!(repeat);
        }
        let data_txt = if data.as_object().is_some_and(|o| o.is_empty()) {
            String::new()
        } else {
            format!(" {}", compact(data))
        };
        let times = if repeat > 1 {
            format!(" (x{repeat})")
        } else {
            String::new()
        };
        let head = if catch_up {
            rec["catch-up"] = json!(true);
            format!("VM found stopped by {name} (missed event){data_txt}")
        } else {
            format!("{name}{data_txt}{times}")
        };
        let (outcome, human) = match &decision {
            Decision::Other => ("none", head),
            Decision::LogOnly { trigger, reason } => {
                if let Some(t) = trigger {
                    rec["policy"] = json!(policies.get(*t).name());
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
        self.env
            .log
            .record(Some(&self.ctx), "event", rec, Some(&human));

        if let (Decision::Act { policy, .. }, "act") = (decision, outcome) {
            let what = format!("{policy} for {name}");
            let handle = self.env.tracker.spawn(run_action(
                self.client.clone(),
                self.ctx.clone(),
                self.env.clone(),
                policy,
                name.to_string(),
                self.cancel.clone(),
            ));
            self.running = Some(Running { handle, what });
        }
    }

    async fn finish_running(&mut self, stopping: bool) {
        if let Some(r) = self.running.take() {
            if !r.handle.is_finished() && stopping {
                self.env.log.record(
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
