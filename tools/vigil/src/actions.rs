//! What a policy does to a VM: the dump first if the policy has one, then
//! destroy (`quit`) or restart (`system_reset`, `RESET`, `cont`).

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::context::Env;
use crate::dump::Job;
use crate::error::DumpError;
use crate::policy::{Finish, Policy};
use crate::qmp::{Client, QmpError, StatusInfo};
use crate::record::{Body, Ctx, Record};

/// The QEMU process (its pid) whose dump timed out, kept by the watcher
/// across connections: QEMU has no command to stop a dump, so it may still
/// be writing into the abandoned file (vigil removed its name); that
/// process gets no new dump, so that a hostile one cannot collect a
/// descriptor and fill the disk unseen at every panic. A new QEMU process
/// (a restart) gets dumps again.
pub type TimedOut = Arc<std::sync::Mutex<Option<PeerKey>>>;

/// A QEMU process: its pid and its socket's (device, inode) (a pid alone is
/// 0 for a peer in another pid namespace, and may be reused).
pub type PeerKey = (i32, Option<(u64, u64)>);

/// Why an action may not run as asked, found when the session started.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Why this VM cannot be dumped (its QEMU cannot write the configured
    /// format, a tcp: endpoint): its dumps fail with this, nothing else does.
    pub dump_unavailable: Option<String>,
    /// The peer (pid 0 if unknown).
    pub peer: PeerKey,
    pub timed_out: TimedOut,
}

impl Limits {
    /// Why a dump may not start now, if it may not.
    fn no_dump(&self) -> Option<String> {
        if let Some(why) = &self.dump_unavailable {
            return Some(why.clone());
        }
        let t = *self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        (t.is_some() && t == Some(self.peer)).then(|| {
            format!(
                "an earlier dump of this QEMU (pid {}) failed after it got the file's descriptor, and it may still be writing it: no new dump until QEMU restarts",
                self.peer.0
            )
        })
    }
}

/// What one action needs.
pub struct Action {
    pub client: Arc<Client>,
    pub ctx: Ctx,
    pub env: Env,
    pub policy: Policy,
    pub event: String,
    pub limits: Arc<Limits>,
    /// vigil stops: a queued dump is not started, a running one finishes.
    pub stop: CancellationToken,
    /// The endpoint was removed: everything is abandoned.
    pub abort: CancellationToken,
}

impl Action {
    fn emit(
        &self,
        action: &'static str,
        status: &'static str,
        fields: serde_json::Value,
        human: String,
    ) {
        let mut r = Record::new(
            Some(&self.ctx),
            Body::Action {
                action,
                status,
                policy: self.policy.name(),
                event: self.event.clone(),
            },
        )
        .with(fields)
        .say(human);
        if self.abort.is_cancelled() {
            // the endpoint was removed: its series are gone, and stay gone
            r = r.uncounted();
        }
        self.env.log.emit(r);
    }

    /// The action of one policy. A failed dump leaves the VM as it is, as
    /// libvirt does, so that an operator can still inspect or dump it.
    pub async fn run(self) {
        if self.policy.dumps() {
            let job = Job {
                client: &self.client,
                ctx: &self.ctx,
                env: &self.env,
                policy: self.policy.name(),
                event: &self.event,
                abort: &self.abort,
                stop: &self.stop,
                passed: false.into(),
            };
            let r = match self.limits.no_dump() {
                Some(why) => Err(DumpError::Unavailable(why)),
                None => job.run().await,
            };
            if let Err(e) = r {
                // QEMU got a descriptor and may keep it (a dup) and write on
                // after vigil removed the file: that QEMU gets no new one
                if job.passed.load(std::sync::atomic::Ordering::Relaxed) {
                    *self
                        .limits
                        .timed_out
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(self.limits.peer);
                }
                let status = if matches!(e, DumpError::Timeout(_) | DumpError::Stalled(_)) {
                    "timeout"
                } else {
                    "failed"
                };
                self.emit(
                    "dump",
                    status,
                    json!({"error": e.to_string(), "vm-state": "preserved"}),
                    format!("dump {status}: {e}; VM left as it is"),
                );
                return;
            }
        }
        if self.abort.is_cancelled() {
            return;
        }
        match self.policy.then() {
            Some(Finish::Destroy) => self.destroy().await,
            Some(Finish::Restart) => self.restart().await,
            None => {}
        }
    }

    async fn destroy(&self) {
        match self.client.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => {
                self.emit("destroy", "ok", json!({}), "destroyed (quit)".into())
            }
            Err(e) => self.emit(
                "destroy",
                "failed",
                json!({"error": e.to_string()}),
                format!("destroy (quit) failed: {e}"),
            ),
        }
    }

    async fn restart(&self) {
        let fail = |step: &str, e: &QmpError| {
            self.emit(
                "restart",
                "failed",
                json!({"step": step, "error": e.to_string()}),
                format!("restart failed at {step}: {e}"),
            );
        };
        let client = &self.client;
        let mut sub = client.subscribe();
        if let Err(e) = client.execute("system_reset", None).await {
            return fail("system_reset", &e);
        }
        // The reset is done when QEMU says RESET; then resume the (possibly paused) VM.
        let saw_reset = tokio::time::timeout(self.env.cfg.timeout, async {
            while let Some(e) = sub.recv().await {
                if e.name == "RESET" {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        drop(sub);
        if let Err(e) = client.execute("cont", None).await {
            return fail("cont", &e);
        }
        let status = client
            .query::<StatusInfo>("query-status", None)
            .await
            .map(|s| crate::record::cap_str(&s.status, 64))
            .unwrap_or_else(|_| "unknown".into());
        self.emit(
            "restart",
            "ok",
            json!({"reset-event": saw_reset, "run-state": status}),
            format!("restarted (system_reset + cont), VM {status}"),
        );
    }
}
