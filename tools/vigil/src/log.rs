//! Output: JSON-lines records (one per event and action) and one-line human
//! summaries on stderr, with a dump progress bar when stderr is a terminal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::dump::rfc3339;

/// Which VM a record is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ctx {
    pub endpoint: String,
    pub vm: String,
}

pub struct Logger {
    inner: Mutex<Inner>,
    /// `--notify`: event and action records are offered to it.
    hook: std::sync::OnceLock<crate::hooks::Hook>,
}

/// The VM a record is about, from its `endpoint` and `vm` fields.
pub fn ctx_of(rec: &Value) -> Option<Ctx> {
    Some(Ctx {
        endpoint: rec.get("endpoint")?.as_str()?.to_string(),
        vm: rec.get("vm")?.as_str()?.to_string(),
    })
}

struct Inner {
    json: Vec<Box<dyn Write + Send>>,
    human: Option<Box<dyn Write + Send>>,
    tty: bool,
    bar_on_screen: bool,
    last_decile: HashMap<String, u64>,
}

/// Builds a JSON-lines record: `time`, `endpoint`, `vm`, `type`, then the
/// fields of `fields` (an object; anything else is put under `data`).
pub fn make_record(time: SystemTime, ctx: Option<&Ctx>, kind: &str, fields: Value) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), rfc3339(time).into());
    if let Some(c) = ctx {
        m.insert("endpoint".into(), c.endpoint.clone().into());
        m.insert("vm".into(), c.vm.clone().into());
    }
    m.insert("type".into(), kind.into());
    match fields {
        Value::Object(f) => {
            for (k, v) in f {
                m.entry(k).or_insert(v);
            }
        }
        Value::Null => {}
        other => {
            m.insert("data".into(), other);
        }
    }
    Value::Object(m)
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1u64 << 20) as f64)
}

impl Logger {
    /// `json`: sinks for JSON lines; `human`: the summary stream (stderr),
    /// `tty`: whether it is a terminal (progress bar instead of log lines).
    pub fn new(
        json: Vec<Box<dyn Write + Send>>,
        human: Option<Box<dyn Write + Send>>,
        tty: bool,
    ) -> Logger {
        Logger {
            inner: Mutex::new(Inner {
                json,
                human,
                tty,
                bar_on_screen: false,
                last_decile: HashMap::new(),
            }),
            hook: std::sync::OnceLock::new(),
        }
    }

    /// Installs the `--notify` hook (once).
    pub fn set_hook(&self, hook: crate::hooks::Hook) {
        let _ = self.hook.set(hook);
    }

    /// Writes one record to every JSON sink and, if given, a human line.
    /// Output errors (a closed stdout, a full disk) are ignored: logging
    /// never stops the watcher.
    pub fn record(&self, ctx: Option<&Ctx>, kind: &str, fields: Value, human: Option<&str>) {
        let rec = make_record(SystemTime::now(), ctx, kind, fields);
        self.write(&rec, ctx, human);
        if kind == "event" || kind == "action" {
            if let Some(dropped) = self.hook.get().and_then(|h| h.offer(&rec)) {
                if dropped == 1 || dropped % 1000 == 0 {
                    self.record(
                        None,
                        "warning",
                        serde_json::json!({"warning": "--notify cannot keep up: records dropped", "dropped": dropped}),
                        Some(&format!("--notify cannot keep up: {dropped} record(s) not passed on so far")),
                    );
                }
            }
        }
    }

    fn write(&self, rec: &Value, ctx: Option<&Ctx>, human: Option<&str>) {
        let mut line = rec.to_string();
        line.push('\n');
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for sink in g.json.iter_mut() {
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
        if let Some(text) = human {
            let who = ctx.map(|c| format!("{}: ", c.vm)).unwrap_or_default();
            let clear = std::mem::take(&mut g.bar_on_screen);
            if let Some(h) = g.human.as_mut() {
                if clear {
                    let _ = h.write_all(b"\r\x1b[K");
                }
                let _ = writeln!(h, "vigil: {who}{text}");
                let _ = h.flush();
            }
        }
    }

    /// Dump progress: a bar redrawn in place on a terminal, otherwise one
    /// line per 10% step.
    pub fn progress(&self, ctx: &Ctx, done: u64, total: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pct = (done.min(total).saturating_mul(100))
            .checked_div(total)
            .unwrap_or(0);
        if g.tty {
            let width = 30usize;
            let filled = (pct as usize * width) / 100;
            let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
            let text = format!(
                "\r\x1b[Kvigil: {}: dump [{bar}] {pct:3}% {}/{} MiB",
                ctx.vm,
                mib(done),
                mib(total)
            );
            g.bar_on_screen = true;
            if let Some(h) = g.human.as_mut() {
                let _ = h.write_all(text.as_bytes());
                let _ = h.flush();
            }
        } else {
            let decile = pct / 10;
            let key = ctx.endpoint.clone();
            let last = g.last_decile.get(&key).copied();
            if last.is_some_and(|l| l >= decile) {
                return;
            }
            g.last_decile.insert(key, decile);
            if let Some(h) = g.human.as_mut() {
                let _ = writeln!(
                    h,
                    "vigil: {}: dump {pct}% ({}/{} MiB)",
                    ctx.vm,
                    mib(done),
                    mib(total)
                );
                let _ = h.flush();
            }
        }
    }

    /// Forgets the progress state of `ctx` (a dump ended).
    pub fn progress_done(&self, ctx: &Ctx) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.last_decile.remove(&ctx.endpoint);
        if std::mem::take(&mut g.bar_on_screen) {
            if let Some(h) = g.human.as_mut() {
                let _ = h.write_all(b"\r\x1b[K");
                let _ = h.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::SharedBuf;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn ctx() -> Ctx {
        Ctx {
            endpoint: "unix:/run/web1.qmp".into(),
            vm: "web1".into(),
        }
    }

    #[test]
    fn records_have_the_common_fields() {
        let t = UNIX_EPOCH + Duration::from_millis(1_763_712_000_500);
        let r = make_record(
            t,
            Some(&ctx()),
            "event",
            json!({"event": "GUEST_PANICKED", "vm": "not me"}),
        );
        assert_eq!(r["time"], "2025-11-21T08:00:00.500Z");
        assert_eq!(r["type"], "event");
        assert_eq!(r["vm"], "web1", "common fields win over same-named fields");
        assert_eq!(r["endpoint"], "unix:/run/web1.qmp");
        assert_eq!(r["event"], "GUEST_PANICKED");
        let r = make_record(t, None, "startup", json!([1]));
        assert_eq!(r["data"], json!([1]));
        assert!(r.get("vm").is_none());
    }

    #[test]
    fn json_lines_and_human_lines() {
        let json_out = SharedBuf::default();
        let human = SharedBuf::default();
        let log = Logger::new(
            vec![Box::new(json_out.clone())],
            Some(Box::new(human.clone())),
            false,
        );
        log.record(
            Some(&ctx()),
            "event",
            json!({"event": "GUEST_PANICKED", "data": {"action": "pause"}}),
            Some("GUEST_PANICKED (action pause): coredump-restart"),
        );
        log.record(
            Some(&ctx()),
            "action",
            json!({"action": "dump", "status": "started", "note": "a \"quoted\"\nline"}),
            None,
        );
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
        let log = Logger::new(vec![], Some(Box::new(human.clone())), false);
        for done in [0u64, 5, 12, 18, 55, 100] {
            log.progress(&ctx(), done << 20, 100 << 20);
        }
        log.progress_done(&ctx());
        assert_eq!(
            human.text(),
            "vigil: web1: dump 0% (0/100 MiB)\nvigil: web1: dump 12% (12/100 MiB)\n\
             vigil: web1: dump 55% (55/100 MiB)\nvigil: web1: dump 100% (100/100 MiB)\n"
        );
    }

    #[test]
    fn progress_bar_on_a_terminal() {
        let human = SharedBuf::default();
        let log = Logger::new(vec![], Some(Box::new(human.clone())), true);
        log.progress(&ctx(), 50 << 20, 100 << 20);
        log.record(Some(&ctx()), "x", json!({}), Some("done"));
        let t = human.text();
        assert!(
            t.starts_with(
                "\r\x1b[Kvigil: web1: dump [###############...............]  50% 50/100 MiB"
            ),
            "{t:?}"
        );
        assert!(t.ends_with("\r\x1b[Kvigil: web1: done\n"), "{t:?}");
    }
}
