//! The one record type everything vigil reports flows through.
//!
//! A [`Record`] is built where something happens (a session, an action, the
//! fleet) and handed to the outputs (`log.rs`), which give the same record to
//! every consumer: the JSON-lines sinks ([`Record::to_json`]), the human
//! line ([`Record::human_line`], control characters escaped), the metrics
//! (`log::count`) and the `--notify` hook ([`Record::hook_env`],
//! [`Record::priority`]). Nothing reads a record back by string key.
//!
//! Peer-supplied text (event names, event data, QEMU's error messages) is
//! data here: it is bounded when the record is built ([`cap_value`],
//! [`cap_str`]) and escaped when it is written for humans ([`escape`]).

use std::time::SystemTime;

use serde_json::{json, Map, Value};

/// Which VM a record is about: the endpoint and the VM's name, both from
/// vigil's configuration or the socket's location, never from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ctx {
    pub endpoint: String,
    pub vm: String,
}

/// The most bytes of event data (serialized) a record keeps; larger data is
/// replaced by a marker with its size and a short excerpt.
pub const MAX_DATA: usize = 16 << 10;
/// The most bytes of one peer-supplied string a record keeps.
pub const MAX_TEXT: usize = 1024;
/// The most bytes of one `VIGIL_*` environment value given to a hook.
pub const MAX_ENV: usize = 256;

/// How soon the `--notify` hook must see a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Pages: a panic, a stall's action stage, a watchdog, and every action
    /// record. Delivered ahead of every routine record.
    Page,
    /// Everything else the hook is given (routine events).
    Routine,
}

/// What a connection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnStatus {
    Connected,
    Disconnected,
    ConnectFailed,
    /// The peer is not the VM the configuration names: nothing is acted on.
    /// The reason is one of `peer::Refusal::reason`'s.
    Refused(&'static str),
}

impl ConnStatus {
    pub fn name(self) -> &'static str {
        match self {
            ConnStatus::Connected => "connected",
            ConnStatus::Disconnected => "disconnected",
            ConnStatus::ConnectFailed => "connect-failed",
            ConnStatus::Refused(_) => "refused",
        }
    }
}

/// One QMP event, and what the policy decided.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    /// The event's name as QEMU sent it (bounded, escaped on output).
    pub name: String,
    /// Its `data` (bounded by [`cap_value`]).
    pub data: Value,
    pub qemu_time: Option<(i64, i64)>,
    /// How many identical routine events this one stands for.
    pub repeat: u64,
    /// Found by `query-status` after a reconnect, not received.
    pub catch_up: bool,
    pub policy: Option<&'static str>,
    pub reason: Option<String>,
    /// none, log, preserve, act, ignored-busy
    pub decision: &'static str,
}

impl EventRecord {
    /// A stall's stage, when this is a `VCPU_STALL`.
    pub fn stall_stage(&self) -> Option<&str> {
        (self.name == "VCPU_STALL")
            .then(|| self.data.get("stage").and_then(Value::as_str).unwrap_or(""))
    }
}

/// Malformed or unexpected QMP input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolKind {
    Malformed,
    Unexpected,
}

/// What a record is.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Startup,
    Connection(ConnStatus),
    Event(EventRecord),
    /// `action`: dump, destroy, restart; `status`: started, completed, failed,
    /// ok, queued, dequeued, timeout, refused...
    Action {
        action: &'static str,
        status: &'static str,
        /// The policy this action belongs to.
        policy: &'static str,
        /// The event that caused it.
        event: String,
    },
    Protocol {
        kind: ProtocolKind,
        detail: String,
        repeat: u64,
    },
    /// A peer that says it is another VM (its `-name`): reported, not believed.
    NameMismatch {
        claimed: String,
    },
    /// The result of one `--notify` run.
    Notify {
        status: &'static str,
    },
    /// Records not delivered to a sink (`notify`, `log`).
    Dropped {
        sink: &'static str,
        count: u64,
    },
    Warning(String),
    Error(String),
    Shutdown(&'static str),
    Reload(&'static str),
    WatchDir,
}

impl Body {
    /// The `type` field of the JSON record.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Startup => "startup",
            Body::Connection(_) => "connection",
            Body::Event(_) => "event",
            Body::Action { .. } => "action",
            Body::Protocol { .. } => "protocol",
            Body::NameMismatch { .. } => "identity",
            Body::Notify { .. } => "notify",
            Body::Dropped { .. } => "dropped",
            Body::Warning(_) => "warning",
            Body::Error(_) => "error",
            Body::Shutdown(_) => "shutdown",
            Body::Reload(_) => "reload",
            Body::WatchDir => "watch-dir",
        }
    }
}

/// One thing vigil reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub time: SystemTime,
    pub ctx: Option<Ctx>,
    pub body: Body,
    /// More fields for the JSON record (what the body does not type).
    pub extra: Map<String, Value>,
    /// The human line (without the `vigil: VM: ` prefix), if any.
    pub human: Option<String>,
    /// Whether the metrics count it (not for a removed endpoint, whose
    /// series are gone).
    pub counted: bool,
}

impl Record {
    pub fn new(ctx: Option<&Ctx>, body: Body) -> Record {
        Record {
            time: SystemTime::now(),
            ctx: ctx.cloned(),
            body,
            extra: Map::new(),
            human: None,
            counted: true,
        }
    }

    /// Not counted in the metrics.
    pub fn uncounted(mut self) -> Record {
        self.counted = false;
        self
    }

    /// Adds JSON fields from an object (anything else goes under `data`).
    pub fn with(mut self, fields: Value) -> Record {
        match fields {
            Value::Object(m) => {
                for (k, v) in m {
                    self.extra.insert(k, v);
                }
            }
            Value::Null => {}
            v => {
                self.extra.insert("data".into(), v);
            }
        }
        self
    }

    /// Sets the human line.
    pub fn say(mut self, text: impl Into<String>) -> Record {
        self.human = Some(text.into());
        self
    }

    pub fn vm(&self) -> Option<&str> {
        self.ctx.as_ref().map(|c| c.vm.as_str())
    }

    /// The JSON-lines record: `time`, `endpoint`, `vm`, `type`, the body's
    /// fields, then the extra ones (the typed fields win over same-named
    /// extra ones).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("time".into(), crate::timefmt::rfc3339(self.time).into());
        if let Some(c) = &self.ctx {
            m.insert("endpoint".into(), c.endpoint.clone().into());
            m.insert("vm".into(), c.vm.clone().into());
        }
        m.insert("type".into(), self.body.kind().into());
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        match &self.body {
            Body::Startup | Body::WatchDir => {}
            Body::Connection(s) => {
                put("status", s.name().into());
                if let ConnStatus::Refused(r) = s {
                    put("reason", (*r).into());
                }
            }
            Body::Event(e) => {
                put("event", e.name.clone().into());
                put("data", e.data.clone());
                if let Some((s, us)) = e.qemu_time {
                    put("qemu-timestamp", json!({"seconds": s, "microseconds": us}));
                }
                if e.repeat > 1 {
                    put("repeat", e.repeat.into());
                }
                if e.catch_up {
                    put("catch-up", true.into());
                }
                if let Some(p) = e.policy {
                    put("policy", p.into());
                }
                if let Some(r) = &e.reason {
                    put("reason", r.clone().into());
                }
                put("decision", e.decision.into());
            }
            Body::Action {
                action,
                status,
                policy,
                event,
            } => {
                put("action", (*action).into());
                put("status", (*status).into());
                put("policy", (*policy).into());
                put("event", event.clone().into());
            }
            Body::Protocol {
                kind,
                detail,
                repeat,
            } => {
                put(
                    "status",
                    match kind {
                        ProtocolKind::Malformed => "malformed",
                        ProtocolKind::Unexpected => "unexpected",
                    }
                    .into(),
                );
                put("detail", detail.clone().into());
                if *repeat > 1 {
                    put("repeat", (*repeat).into());
                }
            }
            Body::NameMismatch { claimed } => {
                put("status", "name-mismatch".into());
                put("claimed-name", claimed.clone().into());
            }
            Body::Notify { status } => put("status", (*status).into()),
            Body::Dropped { sink, count } => {
                put("sink", (*sink).into());
                put("dropped", (*count).into());
            }
            Body::Warning(w) => put("warning", w.clone().into()),
            Body::Error(e) => put("error", e.clone().into()),
            Body::Shutdown(s) | Body::Reload(s) => put("status", (*s).into()),
        }
        for (k, v) in &self.extra {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(m)
    }

    /// The human line, `vigil: VM: text`, with every control character
    /// escaped (a peer cannot forge lines or send terminal sequences).
    pub fn human_line(&self) -> Option<String> {
        let text = self.human.as_ref()?;
        let who = self
            .ctx
            .as_ref()
            .map(|c| format!("{}: ", escape(&c.vm)))
            .unwrap_or_default();
        Some(format!("vigil: {who}{}", escape(text)))
    }

    /// Whether the `--notify` hook gets this record, and how soon.
    pub fn priority(&self) -> Option<Priority> {
        match &self.body {
            Body::Action { .. } | Body::NameMismatch { .. } => Some(Priority::Page),
            Body::Connection(ConnStatus::Refused(_)) => Some(Priority::Page),
            Body::Event(e) => {
                let page = matches!(
                    e.name.as_str(),
                    "GUEST_PANICKED" | "GUEST_CRASHLOADED" | "WATCHDOG"
                ) || e.stall_stage() == Some("action")
                    || e.decision == "act";
                Some(if page {
                    Priority::Page
                } else {
                    Priority::Routine
                })
            }
            _ => None,
        }
    }

    /// The hook's environment: `VIGIL_TYPE`, `VIGIL_VM`, `VIGIL_ENDPOINT`,
    /// `VIGIL_EVENT`, `VIGIL_POLICY`, `VIGIL_ACTION`, `VIGIL_STATUS`, each
    /// at most [`MAX_ENV`] bytes, control characters escaped.
    pub fn hook_env(&self) -> Vec<(&'static str, String)> {
        let (mut event, mut policy, mut action, mut status) = ("", "", "", "");
        match &self.body {
            Body::Event(e) => {
                event = &e.name;
                policy = e.policy.unwrap_or("");
            }
            Body::Action {
                action: a,
                status: s,
                policy: p,
                event: e,
            } => {
                action = a;
                status = s;
                policy = p;
                event = e;
            }
            Body::Connection(s) => status = s.name(),
            Body::NameMismatch { .. } => status = "name-mismatch",
            _ => {}
        }
        let cap = |s: &str| cap_str(&escape(s), MAX_ENV);
        vec![
            ("VIGIL_TYPE", self.body.kind().to_string()),
            ("VIGIL_VM", cap(self.vm().unwrap_or(""))),
            (
                "VIGIL_ENDPOINT",
                cap(self.ctx.as_ref().map_or("", |c| c.endpoint.as_str())),
            ),
            ("VIGIL_EVENT", cap(event)),
            ("VIGIL_POLICY", cap(policy)),
            ("VIGIL_ACTION", cap(action)),
            ("VIGIL_STATUS", cap(status)),
        ]
    }

    /// A short description for the hook's own report (`event X`, `action
    /// dump failed`).
    pub fn about(&self) -> String {
        match &self.body {
            Body::Event(e) => format!("event {}", cap_str(&escape(&e.name), 64)),
            Body::Action { action, status, .. } => format!("action {action} {status}"),
            b => b.kind().to_string(),
        }
    }
}

/// Escapes control characters (C0, DEL, C1) as `\u{..}`, and the
/// backslash, so the result is one printable line.
pub fn escape(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to at most `max` bytes (at a character boundary), with `...`
/// when cut.
pub fn cap_str(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `v` if its JSON text is at most `max` bytes, else a marker:
/// `{"vigil-truncated": BYTES, "excerpt": "..."}`.
pub fn cap_value(v: Value, max: usize) -> Value {
    let text = v.to_string();
    if text.len() <= max {
        return v;
    }
    json!({"vigil-truncated": text.len(), "excerpt": cap_str(&text, 160)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ctx() -> Ctx {
        Ctx {
            endpoint: "unix:/run/web1.qmp".into(),
            vm: "web1".into(),
        }
    }

    fn event(name: &str, data: Value, decision: &'static str) -> Record {
        Record::new(
            Some(&ctx()),
            Body::Event(EventRecord {
                name: name.into(),
                data,
                qemu_time: None,
                repeat: 1,
                catch_up: false,
                policy: None,
                reason: None,
                decision,
            }),
        )
    }

    #[test]
    fn json_has_the_common_fields_and_typed_ones_win() {
        let mut r = event("GUEST_PANICKED", json!({"action": "pause"}), "act")
            .with(json!({"vm": "not me", "event": "forged", "note": 1}));
        r.time = UNIX_EPOCH + Duration::from_millis(1_763_712_000_500);
        let j = r.to_json();
        assert_eq!(j["time"], "2025-11-21T08:00:00.500Z");
        assert_eq!(j["type"], "event");
        assert_eq!(j["vm"], "web1");
        assert_eq!(j["event"], "GUEST_PANICKED");
        assert_eq!(j["decision"], "act");
        assert_eq!(j["note"], 1);
        let j = Record::new(None, Body::Startup).with(json!([1])).to_json();
        assert_eq!(j["data"], json!([1]));
        assert!(j.get("vm").is_none());
    }

    #[test]
    fn human_lines_are_escaped() {
        let r = event("X\n\x1b[2Jvigil: db1: dump written", json!({}), "none")
            .say("X\n\x1b[2Jvigil: db1: dump written");
        let l = r.human_line().unwrap();
        assert_eq!(l, "vigil: web1: X\\n\\u{1b}[2Jvigil: db1: dump written");
        assert!(!l.chars().any(char::is_control));
        assert_eq!(escape("a\\b\u{85}"), "a\\\\b\\u{85}");
    }

    #[test]
    fn priorities() {
        let p = |r: Record| r.priority();
        assert_eq!(
            p(event("GUEST_PANICKED", json!({}), "log")),
            Some(Priority::Page)
        );
        assert_eq!(
            p(event("VCPU_STALL", json!({"stage": "action"}), "log")),
            Some(Priority::Page)
        );
        assert_eq!(
            p(event("VCPU_STALL", json!({"stage": "warning"}), "log")),
            Some(Priority::Routine)
        );
        assert_eq!(
            p(event("RTC_CHANGE", json!({}), "none")),
            Some(Priority::Routine)
        );
        assert_eq!(
            p(Record::new(
                Some(&ctx()),
                Body::Action {
                    action: "dump",
                    status: "started",
                    policy: "coredump-destroy",
                    event: "GUEST_PANICKED".into(),
                }
            )),
            Some(Priority::Page)
        );
        assert_eq!(p(Record::new(None, Body::Warning("w".into()))), None);
    }

    #[test]
    fn hook_env_is_capped_and_escaped() {
        let long = "A".repeat(500_000);
        let mut r = event(&long, json!({}), "none");
        r.ctx.as_mut().unwrap().vm = format!("x\n{long}");
        for (k, v) in r.hook_env() {
            assert!(v.len() <= MAX_ENV, "{k}: {}", v.len());
            assert!(!v.chars().any(char::is_control), "{k}");
        }
    }

    #[test]
    fn caps() {
        assert_eq!(cap_str("héllo", 4), "h...");
        assert_eq!(cap_str("abc", 3), "abc");
        let big = json!({"x": "y".repeat(100_000)});
        let c = cap_value(big, MAX_DATA);
        assert_eq!(c["vigil-truncated"], 100_008);
        assert!(c.to_string().len() < 300);
        assert_eq!(cap_value(json!({"a": 1}), MAX_DATA), json!({"a": 1}));
    }
}
