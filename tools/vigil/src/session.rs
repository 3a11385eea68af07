//! One QMP connection: setup (dump format check, catch-up), then every
//! notice logged, counted and, for the events with a policy, acted on, at
//! most one action at a time per VM.
//!
//! The VM's name is the session's [`Ctx`], fixed by the watcher from the
//! configuration or the socket's location. What the peer says its name is
//! (`query-name`) is only compared with it: a different name is reported
//! (an `identity` record, `vigil_name_mismatch_total`), never believed.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actions::{Action, Limits, TimedOut};
use crate::context::{Env, Target};
use crate::policy::{decide, Decision, Policy};
use crate::qmp::{Client, DumpCapability, Events, NameInfo, Notice, QmpError, StatusInfo};
use crate::queue::Entry;
use crate::record::{
    cap_str, cap_value, escape, Body, ConnStatus, Ctx, EventRecord, ProtocolKind, Record, MAX_DATA,
    MAX_TEXT,
};

/// The longest event name kept (QEMU's are at most 30 characters).
const MAX_EVENT_NAME: usize = 64;

/// How a session ended.
pub enum SessionEnd {
    Disconnected,
    Stopped,
}

/// A short one-line rendering of event data for human lines.
pub fn compact(v: &Value) -> String {
    cap_str(&v.to_string(), 160)
}

struct Running {
    handle: JoinHandle<()>,
    what: String,
}

/// What stops a session: vigil stopping, or its endpoint being removed.
#[derive(Clone)]
pub struct Stops {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

struct Session<'a> {
    client: Arc<Client>,
    ctx: Ctx,
    env: &'a Env,
    target: &'a watch::Receiver<Target>,
    stops: &'a Stops,
    limits: Arc<Limits>,
    running: Option<Running>,
}

/// Checks what this QEMU can do for the VM's policies: a dump format it
/// cannot write, or a tcp: endpoint (no descriptors), makes this VM's
/// dumps fail with a clear error, and nothing else.
async fn limits(
    client: &Client,
    ctx: &Ctx,
    env: &Env,
    target: &Target,
    timed_out: &TimedOut,
) -> Result<Limits, QmpError> {
    let mut l = Limits {
        peer: client
            .peer()
            .info()
            .map_or((0, None), |i| (i.pid, i.socket_ino)),
        timed_out: timed_out.clone(),
        ..Limits::default()
    };
    if !target.policies.any_dump() {
        env.metrics.set_dump_unavailable(&ctx.vm, false);
        return Ok(l);
    }
    if client.peer_is_tcp() {
        l.dump_unavailable = Some(crate::error::DumpError::NoDescriptors.to_string());
    } else {
        match client
            .query::<DumpCapability>("query-dump-guest-memory-capability", None)
            .await
        {
            Ok(cap) => {
                let want = env.cfg.dump_format.qapi_name();
                if !cap.formats.iter().any(|f| f == want) {
                    let supported: Vec<String> = cap
                        .formats
                        .iter()
                        .take(16)
                        .map(|f| cap_str(&escape(f), 32))
                        .collect();
                    let e = crate::error::DumpError::UnsupportedFormat {
                        version: client.qemu_version().unwrap_or_else(|| "unknown".into()),
                        want: want.to_string(),
                        supported: supported.clone(),
                    };
                    l.dump_unavailable = Some(e.to_string());
                }
            }
            Err(QmpError::Disconnected) => return Err(QmpError::Disconnected),
            Err(e) => env.log.warn(
                Some(ctx),
                format!("cannot check the dump formats (query-dump-guest-memory-capability): {e}"),
            ),
        }
    }
    env.metrics
        .set_dump_unavailable(&ctx.vm, l.dump_unavailable.is_some());
    if let Some(why) = &l.dump_unavailable {
        env.log.emit(
            Record::new(Some(ctx), Body::Error(why.clone()))
                .with(json!({"dump-format": env.cfg.dump_format.qapi_name(), "scope": "this VM's dumps"}))
                .say(format!("this VM's dumps will fail: {why} (its other policies stay)")),
        );
    }
    Ok(l)
}

pub async fn session(
    client: Client,
    rx: Events,
    ctx: &Ctx,
    env: &Env,
    target: &watch::Receiver<Target>,
    stops: &Stops,
    timed_out: &TimedOut,
) -> SessionEnd {
    let client = Arc::new(client);
    let log = &env.log;

    // The peer's -name: compared, never believed.
    if let Ok(NameInfo { name: Some(n) }) = client.query("query-name", None).await {
        if !n.is_empty() && n != ctx.vm {
            let claimed = cap_str(&n, MAX_TEXT);
            log.emit(
                Record::new(Some(ctx), Body::NameMismatch { claimed: claimed.clone() }).say(format!(
                    "the QEMU at {} calls itself {claimed:?}: not believed, this VM is {:?} (from {})",
                    ctx.endpoint,
                    ctx.vm,
                    if target.borrow().name.is_some() { "the configuration" } else { "the socket's name" }
                )),
            );
        }
    }
    let version = client.qemu_version().unwrap_or_else(|| "unknown".into());
    let t = target.borrow().clone();
    let limits = match limits(&client, ctx, env, &t, timed_out).await {
        Ok(l) => Arc::new(l),
        Err(_) => return SessionEnd::Disconnected,
    };

    if client.peer_is_tcp() && (t.policies.any_action()) {
        log.warn(
            Some(ctx),
            "tcp: endpoints are unauthenticated (any local user can listen on the port while QEMU is down): \
             this VM's policies act on whoever answers; use a unix: socket"
                .into(),
        );
    }
    log.emit(
        Record::new(Some(ctx), Body::Connection(ConnStatus::Connected))
            .with(json!({"qemu-version": version, "peer": client.peer_json()}))
            .say(format!("connected to {} (QEMU {version})", ctx.endpoint)),
    );
    env.metrics.set_connected(&ctx.endpoint, &ctx.vm, true);
    env.metrics.init_vm(&ctx.vm);

    let mut s = Session {
        client: client.clone(),
        ctx: ctx.clone(),
        env,
        target,
        stops,
        limits,
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
            s.handle(name, data, None, true, 1);
        }
    }

    // Who the peer must be may change on a reload (a peer-user or
    // peer-cgroup added): then the peer is checked again, by reconnecting.
    let mut targets = target.clone();
    let expected = targets.borrow_and_update().expect.clone();
    let end = loop {
        tokio::select! {
            // the queue first: what QEMU sent before a stop is still handled
            biased;
            n = rx.recv() => match n {
                Some(Entry { notice, repeat }) => s.notice(notice, repeat),
                None => break SessionEnd::Disconnected,
            },
            _ = stops.stop.cancelled() => break SessionEnd::Stopped,
            _ = stops.abort.cancelled() => break SessionEnd::Stopped,
            Ok(()) = targets.changed() => {
                if targets.borrow_and_update().expect != expected {
                    log.warn(Some(ctx), "who the peer must be changed (a reload): checking it again (reconnecting)".into());
                    break SessionEnd::Disconnected;
                }
            }
        }
    };
    s.finish_running(matches!(end, SessionEnd::Stopped)).await;
    // a removed endpoint's series went with it (fleet.rs); a new watcher of
    // the same endpoint may own them by now
    if !stops.abort.is_cancelled() {
        env.metrics.set_connected(&ctx.endpoint, &ctx.vm, false);
    }
    end
}

impl Session<'_> {
    fn notice(&mut self, n: Notice, repeat: u64) {
        let times = if repeat > 1 {
            format!(" (x{repeat})")
        } else {
            String::new()
        };
        let (kind, m, what) = match n {
            Notice::Event(e) => {
                return self.handle(&e.name, e.data, e.timestamp, false, repeat);
            }
            Notice::Malformed(m) => (ProtocolKind::Malformed, m, "malformed QMP input ignored"),
            Notice::Unexpected(m) => (
                ProtocolKind::Unexpected,
                m,
                "unexpected QMP message ignored",
            ),
        };
        let detail = cap_str(&m, MAX_TEXT);
        self.env.log.emit(
            Record::new(
                Some(&self.ctx),
                Body::Protocol {
                    kind,
                    detail: detail.clone(),
                    repeat,
                },
            )
            .say(format!("{what}: {detail}{times}")),
        );
    }

    /// Logs one event (standing for `repeat` identical ones) and starts its
    /// policy's action if it has one.
    fn handle(
        &mut self,
        name: &str,
        data: Value,
        ts: Option<(i64, i64)>,
        catch_up: bool,
        repeat: u64,
    ) {
        let policies = self.target.borrow().policies;
        let name = cap_str(name, MAX_EVENT_NAME);
        let data = cap_value(data, MAX_DATA);
        let decision = decide(&name, &data, &policies);
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.handle.is_finished())
        {
            self.running = None;
        }
        let data_txt = if data.as_object().is_some_and(|o| o.is_empty()) {
            String::new()
        } else {
            format!(" {}", compact(&data))
        };
        let times = if repeat > 1 {
            format!(" (x{repeat})")
        } else {
            String::new()
        };
        let head = if catch_up {
            format!("VM found stopped by {name} (missed event){data_txt}")
        } else {
            format!("{name}{data_txt}{times}")
        };
        let mut ev = EventRecord {
            name: name.clone(),
            data,
            qemu_time: ts,
            repeat,
            catch_up,
            policy: None,
            reason: None,
            decision: "none",
        };
        let human = match &decision {
            Decision::Other => head,
            Decision::LogOnly { trigger, reason } => {
                ev.policy = trigger.map(|t| policies.get(t).name());
                ev.reason = Some(reason.clone());
                ev.decision = "log";
                format!("{head}: logged only ({reason})")
            }
            Decision::Act {
                policy: Policy::Preserve,
                ..
            } => {
                ev.policy = Some("preserve");
                ev.decision = "preserve";
                format!("{head}: preserve (VM left as it is)")
            }
            Decision::Act { trigger, policy } => {
                ev.policy = Some(policy.name());
                if let Some(r) = &self.running {
                    ev.reason = Some(format!("{} still running", r.what));
                    ev.decision = "ignored-busy";
                    format!("{head}: {policy} ignored, {} still running", r.what)
                } else {
                    ev.decision = "act";
                    format!("{head}: {policy} ({})", trigger.option())
                }
            }
        };
        let act = ev.decision == "act";
        self.env
            .log
            .emit(Record::new(Some(&self.ctx), Body::Event(ev)).say(human));

        if let (Decision::Act { policy, .. }, true) = (decision, act) {
            let what = format!("{policy} for {name}");
            let handle = self.env.tracker.spawn(
                Action {
                    client: self.client.clone(),
                    ctx: self.ctx.clone(),
                    env: self.env.clone(),
                    policy,
                    event: name,
                    limits: self.limits.clone(),
                    stop: self.stops.stop.clone(),
                    abort: self.stops.abort.clone(),
                }
                .run(),
            );
            self.running = Some(Running { handle, what });
        }
    }

    async fn finish_running(&mut self, stopping: bool) {
        if let Some(r) = self.running.take() {
            if !r.handle.is_finished() && stopping && !self.stops.abort.is_cancelled() {
                self.env.log.emit(
                    Record::new(Some(&self.ctx), Body::Shutdown("waiting"))
                        .with(json!({"action": r.what}))
                        .say(format!(
                            "waiting for {} to finish (signal again to exit now)",
                            r.what
                        )),
                );
            }
            let _ = r.handle.await;
        }
    }
}
