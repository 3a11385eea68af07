//! One watcher per QMP endpoint: connect, check who is at the other end,
//! and reconnect with backoff, for as long as the endpoint is watched.
//! What a connection does is in `session.rs`; the actions in `actions.rs`
//! and `dump.rs`.
//!
//! The VM's identity is fixed here, from the configuration (`name`) or the
//! socket's file name, before anything is read from the peer. A peer that
//! is not the VM the configuration names (a symlink or another VM's socket
//! at the path, the wrong user, the wrong cgroup: see `peer.rs`) is
//! refused: vigil closes the connection without a single command, reports
//! it (a `connection` record with status `refused`, a page, and
//! `vigil_peer_refused_total`), and tries again later.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::context::{Env, Target};
use crate::endpoint::Endpoint;
use crate::qmp::{Client, QmpError};
use crate::record::{Body, ConnStatus, Ctx, Record};
use crate::session::{session, SessionEnd, Stops};

pub use crate::context::Config;

/// The VM's name: the configured one, else the socket's.
pub fn vm_name(ep: &Endpoint, t: &Target) -> String {
    t.name.clone().unwrap_or_else(|| ep.fallback_name())
}

/// Watches `ep` until `stops.stop` (vigil stops) or `stops.abort` (the
/// endpoint is no longer watched).
pub async fn watch(ep: Endpoint, env: Env, target: watch::Receiver<Target>, stops: Stops) {
    let mut ctx = Ctx {
        endpoint: ep.to_string(),
        vm: vm_name(&ep, &target.borrow()),
    };
    watch_loop(&ep, &env, &target, &stops, &mut ctx).await;
    // a removed endpoint's series are forgotten by the fleet when it goes
    // (not here: this may end after a new watcher of the same socket began)
}

async fn watch_loop(
    ep: &Endpoint,
    env: &Env,
    target: &watch::Receiver<Target>,
    stops: &Stops,
    ctx: &mut Ctx,
) {
    let cfg = &env.cfg;
    let log = &env.log;
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    let mut last_error: Option<String> = None;
    let mut connections = 0u64;
    let timed_out = crate::actions::TimedOut::default();
    loop {
        if stops.stop.is_cancelled() || stops.abort.is_cancelled() {
            return;
        }
        // a reload may have renamed the VM: its old series go
        let name = vm_name(ep, &target.borrow());
        if name != ctx.vm {
            env.metrics.forget_vm(&ctx.vm);
            ctx.vm = name;
        }
        let expect = target.borrow().expect.clone();
        let attempt = tokio::select! {
            r = Client::connect_expecting(ep, expect.as_ref(), cfg.timeout) => r,
            _ = stops.stop.cancelled() => return,
            _ = stops.abort.cancelled() => return,
        };
        match attempt {
            Ok((client, rx)) => {
                last_error = None;
                connections += 1;
                if connections > 1 {
                    env.metrics.reconnected(&ctx.endpoint);
                }
                let started = Instant::now();
                match session(client, rx, ctx, env, target, stops, &timed_out).await {
                    SessionEnd::Stopped => return,
                    SessionEnd::Disconnected => {
                        log.emit(
                            Record::new(Some(ctx), Body::Connection(ConnStatus::Disconnected))
                                .say("QMP connection closed; reconnecting"),
                        );
                    }
                }
                // A connection that lived a while resets the backoff; one
                // that flaps keeps backing off.
                if started.elapsed() >= Duration::from_secs(1) {
                    backoff.reset();
                }
            }
            Err(QmpError::Refused(r)) => {
                let msg = r.to_string();
                // every refusal is counted; the same one is logged once
                if last_error.as_deref() != Some(msg.as_str()) {
                    log.emit(
                        Record::new(Some(ctx), Body::Connection(ConnStatus::Refused(r.reason())))
                            .with(json!({"error": msg}))
                            .say(format!(
                                "refused the peer at {}: {msg}; nothing is acted on for this VM until it is the VM the configuration names",
                                ctx.endpoint
                            )),
                    );
                    last_error = Some(msg);
                } else {
                    env.metrics.peer_refused(&ctx.vm, r.reason());
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    log.emit(
                        Record::new(Some(ctx), Body::Connection(ConnStatus::ConnectFailed))
                            .with(json!({"error": msg,
                                   "retry-max-ms": cfg.reconnect_max.as_millis() as u64}))
                            .say(format!(
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
            _ = stops.stop.cancelled() => return,
            _ = stops.abort.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Logger;
    use crate::metrics::Metrics;
    use crate::policy::Policy;
    use crate::policy::{DumpFormat, Policies};
    use crate::testutil::{FakeQmp, SharedBuf};
    use serde_json::Value;
    use std::io::Write as _;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    struct Conf {
        cfg: Config,
        target: Target,
        max_dumps: usize,
    }

    fn config(dir: &std::path::Path, panic: Policy) -> Conf {
        Conf {
            cfg: Config {
                dump_dir: Some(dir.to_path_buf()),
                poll_interval: Duration::from_millis(20),
                reconnect_min: Duration::from_millis(10),
                reconnect_max: Duration::from_millis(50),
                timeout: Duration::from_secs(2),
                ..Config::default()
            },
            target: Target {
                name: Some("web1".into()),
                policies: Policies {
                    panic,
                    stall: Policy::CoredumpDestroy,
                    ..Policies::default()
                },
                expect: None,
            },
            max_dumps: 0,
        }
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
        FakeQmp::start_with_fds(move |cmd, args, fds| {
            let ok = |v: Value| (json!({"return": v}), vec![]);
            match cmd {
                "query-name" => ok(json!({"name": name})),
                "query-memory-size-summary" => ok(json!({"base-memory": ram, "plugged-memory": 0})),
                "query-dump-guest-memory-capability" => ok(json!({"formats": ["elf", "kdump-zlib"]})),
                "query-status" => ok(json!({"status": *state.lock().unwrap(), "running": true})),
                "dump-guest-memory" => {
                    // as QEMU does: the dump goes to the descriptor passed with getfd
                    let name = args["protocol"].as_str().unwrap().strip_prefix("fd:").unwrap().to_string();
                    let Some(mut f) = fds.lock().unwrap().remove(&name) else {
                        return (json!({"error": {"class": "GenericError", "desc": "File descriptor named 'x' not found"}}), vec![]);
                    };
                    f.write_all(b"\x7fELF partial").unwrap();
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
        stop: CancellationToken,
        abort: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        json: SharedBuf,
        human: SharedBuf,
        env: Env,
        target: watch::Sender<Target>,
    }

    fn start(ep: Endpoint, c: Conf) -> Harness {
        let json = SharedBuf::default();
        let human = SharedBuf::default();
        let log = Arc::new(Logger::new(
            vec![Box::new(json.clone())],
            Some(Box::new(human.clone())),
            false,
            Arc::new(Metrics::new()),
        ));
        let env = Env::new(c.cfg, log, c.max_dumps);
        start_with(ep, c.target, env, json, human)
    }

    fn start_with(ep: Endpoint, t: Target, env: Env, json: SharedBuf, human: SharedBuf) -> Harness {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let (target, rx) = watch::channel(t);
        let stops = Stops {
            stop: stop.clone(),
            abort: abort.clone(),
        };
        let task = tokio::spawn(watch(ep, env.clone(), rx, stops));
        Harness {
            stop,
            abort,
            task,
            json,
            human,
            env,
            target,
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
        async fn stop(self) -> Result<(), ()> {
            self.stop.cancel();
            self.task.await.unwrap();
            self.env.log.flush(Duration::from_secs(5));
            Ok(())
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
        // vigil's own file, passed as a descriptor just before
        assert_eq!(dump_args["protocol"], "fd:vigil-dump");
        assert_eq!(cmds[pos("dump-guest-memory") - 1], "getfd");
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
    async fn unsupported_format_fails_only_this_vms_dumps() {
        let fake = fake_qemu("web1", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let mut c = config(&dir, Policy::CoredumpDestroy);
        c.cfg.dump_format = DumpFormat::KdumpLzo;
        let h = start(fake.endpoint(), c);
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        let recs = h.json.records();
        let e = recs
            .iter()
            .find(|x| x["type"] == "error")
            .expect("an error record");
        let msg = e["error"].as_str().unwrap();
        assert!(
            msg.contains("kdump-lzo") && msg.contains("elf, kdump-zlib"),
            "{msg}"
        );
        assert!(h
            .env
            .metrics
            .text()
            .contains(r#"vigil_dump_unavailable{vm="web1"} 1"#));
        // the watcher goes on; a panic's dump fails, the VM is left as it is
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("dump failed", |r| {
            has(r, |x| x["action"] == "dump" && x["status"] == "failed")
        })
        .await;
        assert!(!h.task.is_finished());
        assert!(!fake
            .command_names()
            .iter()
            .any(|c| c == "quit" || c == "dump-guest-memory"));
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_claimed_name_is_reported_not_believed() {
        let fake = fake_qemu("db1", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let mut c = config(&dir, Policy::Log);
        c.target.name = None; // the socket's name: qmp
        let h = start(fake.endpoint(), c);
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("panic", |r| has(r, |x| x["event"] == "GUEST_PANICKED"))
            .await;
        let recs = h.json.records();
        let id = recs.iter().find(|x| x["type"] == "identity").unwrap();
        assert_eq!(
            (id["vm"].as_str(), id["claimed-name"].as_str()),
            (Some("qmp"), Some("db1"))
        );
        assert!(recs.iter().all(|x| x["vm"] != "db1"));
        let t = h.env.metrics.text();
        assert!(!t.contains(r#"vm="db1""#), "{t}");
        assert!(
            t.contains(r#"vigil_name_mismatch_total{vm="qmp"} 1"#),
            "{t}"
        );
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A QEMU whose dump never ends (`query-dump` says active forever).
    async fn stuck_dumper(name: &'static str) -> FakeQmp {
        FakeQmp::start(move |cmd, _| {
            let ok = |v: Value| (json!({"return": v}), vec![]);
            match cmd {
                "query-name" => ok(json!({"name": name})),
                "query-memory-size-summary" => {
                    ok(json!({"base-memory": 1u64 << 20, "plugged-memory": 0}))
                }
                "query-dump-guest-memory-capability" => ok(json!({"formats": ["elf"]})),
                "query-status" => ok(json!({"status": "running", "running": true})),
                "query-dump" => ok(json!({"status": "active", "completed": 1, "total": 2})),
                _ => ok(json!({})),
            }
        })
        .await
    }

    /// Two VMs and one dump slot: "stuck" panics and its dump never ends,
    /// then "good" panics (and waits for the slot).
    async fn stuck_then_good(
        timeout: Option<Duration>,
    ) -> (FakeQmp, FakeQmp, PathBuf, Harness, Harness) {
        let stuck = stuck_dumper("stuck").await;
        let good = fake_qemu("good", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let mut c = config(&dir, Policy::CoredumpDestroy);
        c.max_dumps = 1;
        c.cfg.dump_timeout = timeout;
        c.target.name = Some("stuck".into());
        let hs = start(stuck.endpoint(), c);
        let mut t = config(&dir, Policy::CoredumpDestroy).target;
        t.name = Some("good".into());
        let hg = start_with(
            good.endpoint(),
            t,
            hs.env.clone(),
            hs.json.clone(),
            hs.human.clone(),
        );
        hs.until("both connected", |r| {
            count(r, |x| x["status"] == "connected") == 2
        })
        .await;
        stuck.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        hs.until("stuck dumps", |r| {
            has(r, |x| x["status"] == "started" && x["vm"] == "stuck")
        })
        .await;
        good.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        (stuck, good, dir, hs, hg)
    }

    #[tokio::test]
    async fn a_dump_that_never_ends_times_out_and_frees_its_slot() {
        let (stuck, _good, dir, hs, hg) = stuck_then_good(Some(Duration::from_millis(500))).await;
        hs.until("good destroyed", |r| {
            has(r, |x| x["action"] == "destroy" && x["vm"] == "good")
        })
        .await;
        let recs = hs.json.records();
        assert!(has(&recs, |x| x["vm"] == "stuck" && x["status"] == "timeout"));
        assert!(
            !stuck.command_names().iter().any(|c| c == "quit"),
            "the stuck VM is left as it is"
        );
        assert!(crate::dump::stale_partials(&dir).is_empty());
        assert!(hs
            .env
            .metrics
            .text()
            .contains(r#"vigil_dump_timeouts_total{vm="stuck"} 1"#));
        // the same QEMU panics again: no new descriptor for it (it may still
        // be writing the abandoned dump), the VM is left as it is
        let getfds = || {
            stuck
                .command_names()
                .iter()
                .filter(|c| *c == "getfd")
                .count()
        };
        assert_eq!(getfds(), 1);
        stuck.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        hs.until("refused", |r| {
            has(r, |x| {
                x["vm"] == "stuck"
                    && x["status"] == "failed"
                    && x["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("may still be writing"))
            })
        })
        .await;
        assert_eq!(getfds(), 1);
        hg.stop().await.unwrap();
        hs.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn removing_an_endpoint_frees_its_dump_slot() {
        let (_stuck, _good, dir, hs, hg) = stuck_then_good(None).await;
        hs.until("good queued", |r| {
            has(r, |x| x["status"] == "queued" && x["vm"] == "good")
        })
        .await;
        // the stuck VM's endpoint goes (a reload, its socket removed)
        hs.abort.cancel();
        hg.until("good destroyed", |r| {
            has(r, |x| x["action"] == "destroy" && x["vm"] == "good")
        })
        .await;
        assert!(crate::dump::stale_partials(&dir).is_empty());
        let (json, env) = (hs.json.clone(), hs.env.clone());
        hs.task.await.unwrap();
        env.log.flush(Duration::from_secs(5));
        assert!(
            json.text().lines().any(|l| l.contains("abandoned")),
            "{}",
            json.text()
        );
        // (its series go with the fleet's removal: fleet.rs)
        hg.stop().await.unwrap();
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
        let mut c = config(&dir, Policy::Log);
        c.target.name = None;
        let h = start(ep, c);
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
        let mut c = config(&dir, Policy::Destroy);
        c.target.name = None;
        let h = start(fake.endpoint(), c);
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

    #[tokio::test]
    async fn no_event_lost_behind_a_flood() {
        let fake = fake_qemu("web1", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::Destroy));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        let n = 20_000;
        let mut blob = Vec::new();
        for i in 0..n {
            let m = json!({"event": "VCPU_STALL", "timestamp": {"seconds": 1, "microseconds": 0},
                           "data": {"qom-path": "/machine/peripheral/stall", "cpu-index": i % 4,
                                    "budget-ms": 8000, "stage": "warning"}});
            blob.extend_from_slice(format!("{m}\n").as_bytes());
        }
        fake.send_raw(&blob);
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("destroy", |r| has(r, |x| x["action"] == "destroy"))
            .await;
        let recs = h.json.records();
        let stalls: u64 = recs
            .iter()
            .filter(|x| x["event"] == "VCPU_STALL")
            .map(|x| x["repeat"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(stalls, n, "every stall is accounted for");
        assert_eq!(
            fake.command_names().iter().filter(|c| *c == "quit").count(),
            1
        );
        let t = h.env.metrics.text();
        assert!(
            t.contains(&format!(
                r#"vigil_events_total{{vm="web1",event="VCPU_STALL"}} {n}"#
            )),
            "{t}"
        );
        assert!(t.contains(r#"vigil_events_total{vm="web1",event="GUEST_PANICKED"} 1"#));
        assert!(
            t.contains(
                r#"vigil_actions_total{vm="web1",policy="destroy",action="destroy",result="ok"} 1"#
            ),
            "{t}"
        );
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn new_settings_apply_without_reconnecting() {
        let fake = fake_qemu("web1", 256 << 20, None, 10).await;
        let dir = crate::testutil::tempdir("dumps");
        let h = start(fake.endpoint(), config(&dir, Policy::Log));
        h.until("connected", |r| has(r, |x| x["status"] == "connected"))
            .await;
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("logged", |r| has(r, |x| x["decision"] == "log"))
            .await;
        let mut t = h.target.borrow().clone();
        t.policies.panic = Policy::Destroy;
        h.target.send_replace(t);
        fake.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        h.until("destroy", |r| has(r, |x| x["action"] == "destroy"))
            .await;
        assert_eq!(count(&h.json.records(), |x| x["status"] == "connected"), 1);
        assert!(h
            .env
            .metrics
            .text()
            .contains(r#"vigil_endpoint_connected{endpoint="unix:"#));
        h.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn max_dumps_queues_in_order() {
        let (a, b) = (
            fake_qemu("vm-a", 256 << 20, None, 300).await,
            fake_qemu("vm-b", 256 << 20, None, 10).await,
        );
        let dir = crate::testutil::tempdir("dumps");
        let mut c = config(&dir, Policy::CoredumpDestroy);
        c.max_dumps = 1;
        c.target.name = Some("vm-a".into());
        let ha = start(a.endpoint(), c);
        let env = ha.env.clone();
        let mut tb = config(&dir, Policy::CoredumpDestroy).target;
        tb.name = Some("vm-b".into());
        let hb = start_with(b.endpoint(), tb, env, ha.json.clone(), ha.human.clone());
        ha.until("both connected", |r| {
            count(r, |x| x["status"] == "connected") == 2
        })
        .await;
        a.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        ha.until("a dumps", |r| {
            has(r, |x| x["status"] == "started" && x["vm"] == "vm-a")
        })
        .await;
        b.send_event("GUEST_PANICKED", json!({"action": "pause"}));
        ha.until("both destroyed", |r| {
            count(r, |x| x["action"] == "destroy") == 2
        })
        .await;
        let recs = ha.json.records();
        let pos = |f: &dyn Fn(&Value) -> bool| recs.iter().position(f).unwrap();
        let queued = pos(&|x| x["status"] == "queued" && x["vm"] == "vm-b");
        let a_done = pos(&|x| x["status"] == "completed" && x["vm"] == "vm-a");
        let b_start = pos(&|x| x["status"] == "started" && x["vm"] == "vm-b");
        assert!(queued < a_done && a_done < b_start, "{}", ha.json.text());
        assert!(recs[queued]["reason"]
            .as_str()
            .unwrap()
            .contains("--max-dumps 1"));
        let t = ha.env.metrics.text();
        assert!(t.contains("vigil_dump_waits_total 1"), "{t}");
        assert!(
            t.contains(r#"vigil_dumps_total{result="completed"} 2"#),
            "{t}"
        );
        hb.stop().await.unwrap();
        ha.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
