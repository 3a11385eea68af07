//! Paging hooks (`--notify CMD`): CMD runs for every event and action record.
//!
//! CMD is the operator's, run as `/bin/sh -c CMD` and never changed: the
//! record goes on the command's standard input (one JSON line) and its
//! summary in environment variables (`VIGIL_TYPE`, `VIGIL_VM`,
//! `VIGIL_ENDPOINT`, `VIGIL_EVENT`, `VIGIL_POLICY`, `VIGIL_ACTION`,
//! `VIGIL_STATUS`): no guest-influenced text is ever put into a command line.
//!
//! A hook never delays an action: records are handed over with `try_send`
//! to a bounded queue ([`QUEUE`]); at most `jobs` commands run at once; each
//! has a timeout, after which its process group is killed. Its exit status
//! is logged (a `notify` record). Records that find the queue full are
//! counted (`vigil_notify_total{result="dropped"}`) and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::log::Logger;
use crate::metrics::Metrics;

/// Records waiting for a hook slot; more are dropped (and counted).
pub const QUEUE: usize = 1024;

#[derive(Clone, Debug)]
pub struct HookConfig {
    pub command: String,
    pub timeout: Duration,
    pub jobs: usize,
}

/// The sending side, held by the logger.
pub struct Hook {
    tx: mpsc::Sender<Value>,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hook {
    /// Hands `rec` over; never waits. Returns the number dropped so far if
    /// this one was dropped.
    pub fn offer(&self, rec: &Value) -> Option<u64> {
        match self.tx.try_send(rec.clone()) {
            Ok(()) => None,
            Err(_) => {
                Metrics::result(&self.metrics.notify, "dropped");
                Some(self.dropped.fetch_add(1, Ordering::Relaxed) + 1)
            }
        }
    }
}

/// Starts the hook runner; returns the sender to install in the logger.
/// The runner holds the logger weakly (the logger holds the sender).
pub fn start(
    cfg: HookConfig,
    log: Weak<Logger>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Hook {
    let (tx, mut rx) = mpsc::channel::<Value>(QUEUE);
    let slots = Arc::new(Semaphore::new(cfg.jobs.max(1)));
    let m = metrics.clone();
    let t2 = tracker.clone();
    tracker.spawn(async move {
        loop {
            let rec = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => return },
                _ = cancel.cancelled() => return,
            };
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = cancel.cancelled() => return,
            };
            let (cfg, log, m) = (cfg.clone(), log.clone(), m.clone());
            t2.spawn(async move {
                let outcome = run_one(&cfg, &rec).await;
                drop(permit);
                Metrics::result(&m.notify, outcome.result);
                if let Some(log) = log.upgrade() {
                    report(&log, &rec, &outcome);
                }
            });
        }
    });
    Hook {
        tx,
        dropped: AtomicU64::new(0),
        metrics,
    }
}

/// What one run of the command gave.
#[derive(Debug)]
pub struct Outcome {
    /// ok, failed, timeout, error
    pub result: &'static str,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub seconds: f64,
}

fn field<'a>(rec: &'a Value, k: &str) -> &'a str {
    rec.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Runs the command once for `rec`.
pub async fn run_one(cfg: &HookConfig, rec: &Value) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&cfg.command)
        .env("VIGIL_TYPE", field(rec, "type"))
        .env("VIGIL_VM", field(rec, "vm"))
        .env("VIGIL_ENDPOINT", field(rec, "endpoint"))
        .env("VIGIL_EVENT", field(rec, "event"))
        .env("VIGIL_POLICY", field(rec, "policy"))
        .env("VIGIL_ACTION", field(rec, "action"))
        .env("VIGIL_STATUS", field(rec, "status"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                result: "error",
                code: None,
                signal: None,
                error: Some(format!("cannot run /bin/sh: {e}")),
                seconds: t0.elapsed().as_secs_f64(),
            }
        }
    };
    let pid = child.id();
    let mut line = rec.to_string().into_bytes();
    line.push(b'\n');
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // a command that does not read its input is fine (EPIPE ignored)
            let _ = stdin.write_all(&line).await;
        }
        child.wait().await
    };
    let r = tokio::time::timeout(cfg.timeout, run).await;
    let seconds = t0.elapsed().as_secs_f64();
    match r {
        Ok(Ok(st)) => Outcome {
            result: if st.success() { "ok" } else { "failed" },
            code: st.code(),
            signal: st.signal(),
            error: None,
            seconds,
        },
        Ok(Err(e)) => Outcome {
            result: "error",
            code: None,
            signal: None,
            error: Some(e.to_string()),
            seconds,
        },
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on the process group we created for the child.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            Outcome {
                result: "timeout",
                code: None,
                signal: Some(libc::SIGKILL),
                error: Some(format!("killed after {:.1} s", cfg.timeout.as_secs_f64())),
                seconds,
            }
        }
    }
}

fn report(log: &Logger, rec: &Value, o: &Outcome) {
    let about = match (
        field(rec, "type"),
        field(rec, "event"),
        field(rec, "action"),
    ) {
        ("event", e, _) => format!("event {e}"),
        (_, _, a) if !a.is_empty() => format!("action {a} {}", field(rec, "status")),
        (t, _, _) => t.to_string(),
    };
    let mut fields =
        json!({"status": o.result, "for": about, "seconds": (o.seconds * 1000.0).round() / 1000.0});
    if let Some(c) = o.code {
        fields["exit-code"] = json!(c);
    }
    if let Some(s) = o.signal {
        fields["signal"] = json!(s);
    }
    if let Some(e) = &o.error {
        fields["error"] = json!(e);
    }
    let ctx = crate::log::ctx_of(rec);
    let human = (o.result != "ok").then(|| {
        format!(
            "--notify for {about}: {}{}",
            o.result,
            match (o.code, &o.error) {
                (Some(c), _) => format!(" (exit status {c})"),
                (_, Some(e)) => format!(" ({e})"),
                _ => String::new(),
            }
        )
    });
    log.record(ctx.as_ref(), "notify", fields, human.as_deref());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cmd: &str, ms: u64) -> HookConfig {
        HookConfig {
            command: cmd.into(),
            timeout: Duration::from_millis(ms),
            jobs: 2,
        }
    }

    #[tokio::test]
    async fn record_on_stdin_and_summary_in_the_environment() {
        let d = crate::testutil::tempdir("hook");
        let out = d.join("out");
        let cmd = format!(
            "cat > {0}.json; printf '%s|%s|%s|%s' \"$VIGIL_TYPE\" \"$VIGIL_VM\" \"$VIGIL_EVENT\" \"$VIGIL_POLICY\" > {0}.env",
            out.display()
        );
        // guest-influenced text is data, never code
        let rec = json!({"type": "event", "vm": "web1", "event": "GUEST_PANICKED", "policy": "destroy",
                         "data": {"x": "$(touch /tmp/pwned); `id`"}});
        let o = run_one(&cfg(&cmd, 5000), &rec).await;
        assert_eq!((o.result, o.code), ("ok", Some(0)), "{o:?}");
        let got: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("out.json")).unwrap()).unwrap();
        assert_eq!(got, rec);
        assert_eq!(
            std::fs::read_to_string(d.join("out.env")).unwrap(),
            "event|web1|GUEST_PANICKED|destroy"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn exit_status_and_timeout() {
        let o = run_one(&cfg("exit 3", 5000), &json!({})).await;
        assert_eq!((o.result, o.code), ("failed", Some(3)));
        let t0 = Instant::now();
        let o = run_one(&cfg("sleep 30 & sleep 30", 200), &json!({})).await;
        assert_eq!(o.result, "timeout");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
