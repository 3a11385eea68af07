//! Dumps: the host-wide limit (`--max-dumps`), the disk-space check, and
//! `dump-guest-memory` followed to its end, written atomically (`dump.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::dump;
use crate::error::DumpError;
use crate::log::Ctx;
use crate::metrics::Metrics;
use crate::qmp::{Client, DumpCompleted, DumpQueryResult, MemorySizeSummary, QmpError, QmpEvent};
use crate::watcher::Env;

/// At most N dumps at once on the host; the others wait in the order they
/// asked (tokio's semaphore is fair).
pub struct DumpSlots {
    sem: Arc<Semaphore>,
    /// 0: no limit
    max: usize,
    waiting: AtomicUsize,
}

/// A dump slot; freed when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.dumps_running.dec();
    }
}

impl DumpSlots {
    /// `max` dumps at once; 0 for no limit.
    pub fn new(max: usize) -> DumpSlots {
        DumpSlots {
            sem: Arc::new(Semaphore::new(if max == 0 {
                Semaphore::MAX_PERMITS
            } else {
                max
            })),
            max,
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Waits for a slot (logging and counting the wait), or gives up at `cancel`.
    pub async fn acquire(
        &self,
        env: &Env,
        ctx: &Ctx,
        cancel: &CancellationToken,
    ) -> Result<Slot, DumpError> {
        let metrics = env.metrics.clone();
        let permit = match self.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let position = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                metrics.dumps_waiting.inc();
                metrics.dump_waits.inc();
                let reason = format!(
                    "{} dump(s) already running (--max-dumps {})",
                    self.max, self.max
                );
                env.log.record(
                    Some(ctx),
                    "action",
                    json!({"action": "dump", "status": "queued", "reason": reason, "position": position}),
                    Some(&format!("dump queued: {reason}; {position} waiting")),
                );
                let t0 = Instant::now();
                let r = tokio::select! {
                    p = self.sem.clone().acquire_owned() => p.ok(),
                    _ = cancel.cancelled() => None,
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                metrics.dumps_waiting.dec();
                let Some(p) = r else {
                    return Err(DumpError::Cancelled);
                };
                let waited = t0.elapsed().as_secs_f64();
                env.log.record(
                    Some(ctx),
                    "action",
                    json!({"action": "dump", "status": "dequeued", "waited-seconds": (waited * 1000.0).round() / 1000.0}),
                    Some(&format!("dump slot free after {waited:.1} s")),
                );
                p
            }
        };
        metrics.dumps_running.inc();
        Ok(Slot {
            _permit: permit,
            metrics,
        })
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Dumps guest memory to the dump directory, atomically, once a slot is
/// free. Returns the final path.
pub async fn dump(
    client: &Client,
    ctx: &Ctx,
    env: &Env,
    cancel: &CancellationToken,
) -> Result<PathBuf, DumpError> {
    let cfg = &env.cfg;
    let dir = cfg.dump_dir.as_ref().ok_or(DumpError::NoDumpDir)?;
    let fmt = cfg.dump_format;
    let _slot = env.dumps.acquire(env, ctx, cancel).await?;

    // The space is checked when the dump starts, after any wait.
    let mem: MemorySizeSummary = client
        .query("query-memory-size-summary", None)
        .await
        .map_err(DumpError::MemorySize)?;
    let ram = mem.base_memory + mem.plugged_memory;
    if ram == 0 {
        return Err(DumpError::NoMemorySize);
    }
    let need = dump::required_space(ram);
    let free = dump::free_space(dir).map_err(|e| DumpError::Statvfs {
        dir: dir.clone(),
        source: e,
    })?;
    if free < need {
        return Err(DumpError::NoSpace {
            dir: dir.clone(),
            free,
            need,
            ram,
        });
    }

    let (paths, _reserved) = dump::choose_paths(dir, &ctx.vm, now_secs(), fmt);
    let mut sub = client.subscribe();
    let args = json!({
        "paging": false,
        "protocol": format!("file:{}", paths.partial.display()),
        "detach": true,
        "format": fmt.qapi_name(),
    });
    env.log.record(
        Some(ctx),
        "action",
        json!({"action": "dump", "status": "started", "file": paths.final_path, "partial": paths.partial,
               "format": fmt.qapi_name(), "guest-ram": ram, "free": free}),
        Some(&format!("dumping {} MiB of guest memory to {} ({})", ram >> 20, paths.final_path.display(), fmt)),
    );
    let t0 = Instant::now();
    if let Err(e) = client.execute("dump-guest-memory", Some(args)).await {
        let _ = dump::discard(&paths);
        return Err(DumpError::Start(e));
    }
    let result = wait_dump(client, ctx, env, &mut sub).await;
    env.log.progress_done(ctx);
    let finish = async {
        result?;
        let p = paths.clone();
        match tokio::task::spawn_blocking(move || dump::finalize(&p)).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(DumpError::Finalize(e)),
            Err(e) => Err(DumpError::Finalize(std::io::Error::other(e.to_string()))),
        }
    };
    match finish.await {
        Ok(f) => {
            let bytes = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            let secs = t0.elapsed().as_secs_f64();
            env.metrics.dump_bytes.inc_by(bytes);
            env.metrics.dump_duration.observe(secs);
            env.log.record(
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
            if let Err(d) = dump::discard(&paths) {
                return Err(DumpError::Discard {
                    error: Box::new(e),
                    partial: paths.partial.clone(),
                    discard: d,
                });
            }
            Err(e)
        }
    }
}

fn compact(v: &DumpQueryResult) -> String {
    format!("status {}, {}/{} bytes", v.status, v.completed, v.total)
}

/// Waits for the dump's end: `DUMP_COMPLETED`, or `query-dump` saying it
/// ended (if the event was missed). Shows progress meanwhile.
async fn wait_dump(
    client: &Client,
    ctx: &Ctx,
    env: &Env,
    sub: &mut mpsc::Receiver<QmpEvent>,
) -> Result<(), DumpError> {
    let log = &env.log;
    let mut tick = tokio::time::interval(env.cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = 0;
    loop {
        tokio::select! {
            n = sub.recv() => match n {
                Some(e) if e.name == "DUMP_COMPLETED" => {
                    let d: DumpCompleted = serde_json::from_value(e.data.clone())
                        .map_err(|err| DumpError::Qemu(format!("malformed DUMP_COMPLETED ({err}): {}", e.data)))?;
                    if let Some(err) = d.error {
                        return Err(DumpError::Qemu(err));
                    }
                    return match d.result.status.as_str() {
                        "completed" => {
                            log.progress(ctx, d.result.total, d.result.total);
                            Ok(())
                        }
                        s => Err(DumpError::Status(s.to_string())),
                    };
                }
                Some(_) => {}
                None => return Err(DumpError::Disconnected),
            },
            _ = tick.tick() => match client.query::<DumpQueryResult>("query-dump", None).await {
                Ok(q) => {
                    match q.status.as_str() {
                        "active" => { idle = 0; log.progress(ctx, q.completed, q.total) }
                        "completed" => { log.progress(ctx, q.total, q.total); return Ok(()) }
                        "failed" => return Err(DumpError::QueryFailed),
                        _ => {
                            idle += 1;
                            if idle >= 3 {
                                return Err(DumpError::NotRunning(compact(&q)));
                            }
                        }
                    }
                }
                Err(QmpError::Disconnected) => return Err(DumpError::Disconnected),
                Err(_) => {}
            },
        }
    }
}
