//! What a policy does to a VM: the dump first if the policy has one, then
//! destroy (`quit`) or restart (`system_reset`, `RESET`, `cont`).

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::dumper;
use crate::log::Ctx;
use crate::policy::{Finish, Policy};
use crate::qmp::{Client, QmpError, StatusInfo};
use crate::watcher::Env;

/// The action of one policy. A failed dump leaves the VM as it is, as
/// libvirt does, so that an operator can still inspect or dump it.
pub async fn run_action(
    client: Arc<Client>,
    ctx: Ctx,
    env: Env,
    policy: Policy,
    event: String,
    cancel: CancellationToken,
) {
    let m = &env.metrics;
    if policy.dumps() {
        match dumper::dump(&client, &ctx, &env, &cancel).await {
            Ok(_) => {
                m.action(&ctx.vm, policy.name(), "dump", "completed");
                crate::metrics::Metrics::result(&m.dumps, "completed");
            }
            Err(e) => {
                m.action(&ctx.vm, policy.name(), "dump", "failed");
                crate::metrics::Metrics::result(&m.dumps, "failed");
                env.log.record(
                    Some(&ctx),
                    "action",
                    json!({"action": "dump", "status": "failed", "error": e.to_string(), "event": event,
                           "policy": policy.name(), "vm-state": "preserved"}),
                    Some(&format!("dump failed: {e}; VM left as it is")),
                );
                return;
            }
        }
    }
    let ok = match policy.then() {
        Some(Finish::Destroy) => Some(("destroy", destroy(&client, &ctx, &env, &event).await)),
        Some(Finish::Restart) => Some(("restart", restart(&client, &ctx, &env, &event).await)),
        None => None,
    };
    if let Some((what, ok)) = ok {
        m.action(
            &ctx.vm,
            policy.name(),
            what,
            if ok { "ok" } else { "failed" },
        );
    }
}

async fn destroy(client: &Client, ctx: &Ctx, env: &Env, event: &str) -> bool {
    match client.execute("quit", None).await {
        Ok(_) | Err(QmpError::Disconnected) => {
            env.log.record(
                Some(ctx),
                "action",
                json!({"action": "destroy", "status": "ok", "event": event}),
                Some("destroyed (quit)"),
            );
            true
        }
        Err(e) => {
            env.log.record(
                Some(ctx),
                "action",
                json!({"action": "destroy", "status": "failed", "error": e.to_string(), "event": event}),
                Some(&format!("destroy (quit) failed: {e}")),
            );
            false
        }
    }
}

async fn restart(client: &Client, ctx: &Ctx, env: &Env, event: &str) -> bool {
    let fail = |step: &str, e: &QmpError| {
        env.log.record(
            Some(ctx),
            "action",
            json!({"action": "restart", "status": "failed", "step": step, "error": e.to_string(), "event": event}),
            Some(&format!("restart failed at {step}: {e}")),
        );
        false
    };
    let mut sub = client.subscribe();
    if let Err(e) = client.execute("system_reset", None).await {
        return fail("system_reset", &e);
    }
    // The reset is done when QEMU says RESET; then resume the (possibly paused) VM.
    let saw_reset = tokio::time::timeout(env.cfg.timeout, async {
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
        .map(|s| s.status)
        .unwrap_or_else(|_| "unknown".into());
    env.log.record(
        Some(ctx),
        "action",
        json!({"action": "restart", "status": "ok", "reset-event": saw_reset, "run-state": status, "event": event}),
        Some(&format!("restarted (system_reset + cont), VM {status}")),
    );
    true
}
