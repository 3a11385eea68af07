//! Paging hooks (`--notify CMD`): CMD runs for every event and action record.
//!
//! CMD is the operator's, run as `/bin/sh -c CMD` and never changed: the
//! record goes on the command's standard input (one JSON line) and its
//! summary in environment variables (`VIGIL_TYPE`, `VIGIL_VM`,
//! `VIGIL_ENDPOINT`, `VIGIL_EVENT`, `VIGIL_POLICY`, `VIGIL_ACTION`,
//! `VIGIL_STATUS`, each capped at 256 bytes): no guest- or peer-influenced
//! text is ever put into a command line.
//!
//! A hook never delays an action, and one VM cannot starve another's page:
//!
//! * records wait in per-VM queues, pages ([`Priority::Page`]: panics, a
//!   stall's action stage, watchdogs, every action record) apart from
//!   routine events; a free job slot takes a page before any routine
//!   record, and the VMs take turns (round robin) within each class;
//! * each VM holds at most [`VM_PAGES`] pages and [`VM_ROUTINE`] routine
//!   records (its oldest go first), and all queues together at most
//!   [`MAX_BYTES`]; one record's JSON line is at most [`MAX_RECORD`] bytes;
//! * what is dropped is counted per VM (`vigil_records_dropped_total{sink="notify"}`)
//!   and logged (at the 1st, 10th, 100th... drop of each VM).
//!
//! At most `jobs` commands run at once; each has a timeout, after which its
//! process group is killed. Its exit status and the first [`MAX_OUTPUT`]
//! bytes of its output are reported (a `notify` record); the rest of its
//! output is not read (the pipe is closed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::record::{cap_str, cap_value, escape, Body, Priority, Record};

/// Pages one VM may have waiting.
pub const VM_PAGES: usize = 64;
/// Routine records one VM may have waiting.
pub const VM_ROUTINE: usize = 16;
/// Bytes (JSON lines) waiting in all queues together.
pub const MAX_BYTES: usize = 16 << 20;
/// The largest JSON line given to a hook.
pub const MAX_RECORD: usize = 64 << 10;
/// Output of a hook kept for its report.
pub const MAX_OUTPUT: usize = 4096;

#[derive(Clone, Debug)]
pub struct HookConfig {
    pub command: String,
    pub timeout: Duration,
    pub jobs: usize,
}

struct Item {
    rec: Record,
    line: Vec<u8>,
}

#[derive(Default)]
struct VmQueue {
    pages: VecDeque<Item>,
    routine: VecDeque<Item>,
    dropped: u64,
    /// The VM's endpoint, for the drop notices.
    endpoint: String,
}

/// The waiting records of every VM.
#[derive(Default)]
pub struct Queues {
    vms: HashMap<String, VmQueue>,
    /// VMs with pages waiting, in turn order.
    page_turn: VecDeque<String>,
    /// VMs with routine records waiting, in turn order.
    routine_turn: VecDeque<String>,
    bytes: usize,
}

/// What [`Queues::push`] dropped: (VM, its endpoint, its drop count so
/// far) per record.
pub type Drops = Vec<(String, String, u64)>;

impl Queues {
    /// Queues `line` (the record's JSON) for `vm`, dropping what the caps
    /// say must go.
    fn push(&mut self, vm: &str, prio: Priority, item: Item) -> Drops {
        let mut drops = Drops::new();
        let size = item.line.len();
        let q = self.vms.entry(vm.to_string()).or_default();
        if let Some(c) = &item.rec.ctx {
            if q.endpoint != c.endpoint {
                q.endpoint.clone_from(&c.endpoint);
            }
        }
        let (list, cap, turn) = match prio {
            Priority::Page => (&mut q.pages, VM_PAGES, &mut self.page_turn),
            Priority::Routine => (&mut q.routine, VM_ROUTINE, &mut self.routine_turn),
        };
        if list.is_empty() {
            turn.push_back(vm.to_string());
        }
        list.push_back(item);
        self.bytes += size;
        if list.len() > cap {
            if let Some(old) = list.pop_front() {
                self.bytes -= old.line.len();
                q.dropped += 1;
                drops.push((vm.to_string(), q.endpoint.clone(), q.dropped));
            }
        }
        // Over the byte cap: routine records go first (the largest VM's),
        // then this VM's oldest pages.
        while self.bytes > MAX_BYTES {
            let victim = self
                .vms
                .iter()
                .filter(|(_, q)| !q.routine.is_empty())
                .max_by_key(|(_, q)| q.routine.len())
                .map(|(k, _)| k.clone());
            let (k, from_pages) = match victim {
                Some(k) => (k, false),
                None => (vm.to_string(), true),
            };
            let Some(q) = self.vms.get_mut(&k) else { break };
            let list = if from_pages {
                &mut q.pages
            } else {
                &mut q.routine
            };
            let Some(old) = list.pop_front() else { break };
            self.bytes -= old.line.len();
            q.dropped += 1;
            drops.push((k.clone(), q.endpoint.clone(), q.dropped));
        }
        drops
    }

    /// Takes the next record: a page if any VM has one, in turn; else a
    /// routine record, in turn.
    fn pop(&mut self) -> Option<Item> {
        for prio in [Priority::Page, Priority::Routine] {
            let turn = match prio {
                Priority::Page => &mut self.page_turn,
                Priority::Routine => &mut self.routine_turn,
            };
            while let Some(vm) = turn.pop_front() {
                let Some(q) = self.vms.get_mut(&vm) else {
                    continue;
                };
                let list = match prio {
                    Priority::Page => &mut q.pages,
                    Priority::Routine => &mut q.routine,
                };
                let Some(item) = list.pop_front() else {
                    continue;
                };
                if !list.is_empty() {
                    turn.push_back(vm.clone());
                }
                self.bytes -= item.line.len();
                self.tidy(&vm);
                return Some(item);
            }
        }
        None
    }

    /// Forgets `vm` if it has nothing waiting and never lost a record (or,
    /// past 4,096 VMs known, whatever its drop count: the count is in the
    /// metrics; only the 1st, 10th, 100th... notice restarts).
    fn tidy(&mut self, vm: &str) {
        let crowded = self.vms.len() > 4096;
        if self.vms.get(vm).is_some_and(|q| {
            q.pages.is_empty() && q.routine.is_empty() && (q.dropped == 0 || crowded)
        }) {
            self.vms.remove(vm);
        }
    }

    pub fn len(&self) -> usize {
        self.vms
            .values()
            .map(|q| q.pages.len() + q.routine.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The sending side, held by the logger.
pub struct Hook {
    queues: Arc<Mutex<Queues>>,
    ready: Arc<Notify>,
    metrics: Arc<Metrics>,
    reports: mpsc::Sender<Record>,
}

/// The JSON line a hook gets for `rec`, at most [`MAX_RECORD`] bytes.
pub fn hook_line(rec: &Record) -> Vec<u8> {
    let mut v = rec.to_json();
    let mut line = v.to_string();
    if line.len() > MAX_RECORD {
        if let Some(m) = v.as_object_mut() {
            for (_, x) in m.iter_mut() {
                let taken = std::mem::take(x);
                *x = cap_value(taken, 1024);
            }
        }
        line = v.to_string();
    }
    let mut b = line.into_bytes();
    b.push(b'\n');
    b
}

/// 1, 10, 100, ...
fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n % 10 == 0 {
        n /= 10;
    }
    n == 1
}

impl Hook {
    /// Queues `rec` for the hook; never waits.
    pub fn offer(&self, rec: Record, prio: Priority) {
        let vm = rec.vm().unwrap_or("").to_string();
        let line = hook_line(&rec);
        let drops = self.queues.lock().unwrap_or_else(|e| e.into_inner()).push(
            &vm,
            prio,
            Item { rec, line },
        );
        self.ready.notify_one();
        for (vm, endpoint, n) in drops {
            self.metrics.dropped(Some(&vm), "notify", 1);
            // the 1st, 10th, 100th... drop of each VM is logged
            if is_power_of_ten(n) {
                let ctx = crate::record::Ctx {
                    endpoint,
                    vm: vm.clone(),
                };
                let r = Record::new(
                    Some(&ctx),
                    Body::Dropped {
                        sink: "notify",
                        count: n,
                    },
                )
                .say(format!(
                    "--notify cannot keep up: {n} record(s) of this VM dropped so far"
                ));
                let _ = self.reports.try_send(r);
            }
        }
    }
}

/// Starts the hook runner. Returns the sender to install in the logger and
/// the runner's reports (one `notify` record per run, drop notices), which
/// the caller passes on to the logger.
pub fn start(
    cfg: HookConfig,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> (Hook, mpsc::Receiver<Record>) {
    let (reports, rx) = mpsc::channel::<Record>(1024);
    let queues = Arc::new(Mutex::new(Queues::default()));
    let ready = Arc::new(Notify::new());
    let slots = Arc::new(Semaphore::new(cfg.jobs.max(1)));
    let (q, r, m, rep) = (
        queues.clone(),
        ready.clone(),
        metrics.clone(),
        reports.clone(),
    );
    let t2 = tracker.clone();
    tracker.spawn(async move {
        loop {
            // a free slot first, then the most urgent record at that moment
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = cancel.cancelled() => return,
            };
            let item = loop {
                let next = q.lock().unwrap_or_else(|e| e.into_inner()).pop();
                if let Some(i) = next {
                    break i;
                }
                tokio::select! {
                    _ = r.notified() => {}
                    _ = cancel.cancelled() => return,
                }
            };
            let (cfg, m, rep) = (cfg.clone(), m.clone(), rep.clone());
            t2.spawn(async move {
                let outcome = run_one(&cfg, &item.rec, &item.line).await;
                drop(permit);
                Metrics::result(&m.notify, outcome.result);
                let _ = rep.try_send(report(&item.rec, &outcome));
            });
        }
    });
    (
        Hook {
            queues,
            ready,
            metrics,
            reports,
        },
        rx,
    )
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
    /// The first [`MAX_OUTPUT`] bytes of its stdout and stderr.
    pub output: Vec<u8>,
}

/// Runs the command once for `rec` (`line`: its JSON line).
pub async fn run_one(cfg: &HookConfig, rec: &Record, line: &[u8]) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(&cfg.command);
    for (k, v) in rec.hook_env() {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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
                output: Vec::new(),
            }
        }
    };
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let mut output = Vec::new();
    let stdin = child.stdin.take();
    let run = async {
        // the record goes in while the output comes out (a hook that writes
        // before it reads cannot deadlock against vigil)
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // a command that does not read its input is fine (EPIPE ignored)
                let _ = stdin.write_all(line).await;
            }
        };
        let drain = async {
            // at most MAX_OUTPUT bytes of output, then the pipes are closed
            let (mut b1, mut b2) = ([0u8; 1024], [0u8; 1024]);
            while output.len() < MAX_OUTPUT && (out.is_some() || err.is_some()) {
                let got: &[u8] = tokio::select! {
                    r = async { out.as_mut().unwrap().read(&mut b1).await }, if out.is_some() => {
                        match r { Ok(0) | Err(_) => { out = None; &[] } Ok(n) => &b1[..n] }
                    }
                    r = async { err.as_mut().unwrap().read(&mut b2).await }, if err.is_some() => {
                        match r { Ok(0) | Err(_) => { err = None; &[] } Ok(n) => &b2[..n] }
                    }
                };
                let room = MAX_OUTPUT - output.len();
                output.extend_from_slice(&got[..got.len().min(room)]);
            }
            drop(out.take());
            drop(err.take());
        };
        tokio::join!(feed, drain);
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
            output,
        },
        Ok(Err(e)) => Outcome {
            result: "error",
            code: None,
            signal: None,
            error: Some(e.to_string()),
            seconds,
            output,
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
                output,
            }
        }
    }
}

/// The `notify` record of one run.
pub fn report(rec: &Record, o: &Outcome) -> Record {
    let about = rec.about();
    let mut fields = json!({"for": about, "seconds": (o.seconds * 1000.0).round() / 1000.0});
    if let Some(c) = o.code {
        fields["exit-code"] = json!(c);
    }
    if let Some(s) = o.signal {
        fields["signal"] = json!(s);
    }
    if let Some(e) = &o.error {
        fields["error"] = json!(e);
    }
    if !o.output.is_empty() {
        fields["output"] = Value::String(cap_str(
            &escape(&String::from_utf8_lossy(&o.output)),
            MAX_OUTPUT,
        ));
    }
    let mut r = Record::new(rec.ctx.as_ref(), Body::Notify { status: o.result }).with(fields);
    if o.result != "ok" {
        r = r.say(format!(
            "--notify for {about}: {}{}",
            o.result,
            match (o.code, &o.error) {
                (Some(c), _) => format!(" (exit status {c})"),
                (_, Some(e)) => format!(" ({e})"),
                _ => String::new(),
            }
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Ctx, EventRecord};

    fn cfg(cmd: &str, ms: u64) -> HookConfig {
        HookConfig {
            command: cmd.into(),
            timeout: Duration::from_millis(ms),
            jobs: 2,
        }
    }

    fn event(vm: &str, name: &str, data: Value) -> Record {
        Record::new(
            Some(&Ctx {
                endpoint: format!("unix:/run/{vm}.qmp"),
                vm: vm.into(),
            }),
            Body::Event(EventRecord {
                name: name.into(),
                data,
                qemu_time: None,
                repeat: 1,
                catch_up: false,
                policy: Some("destroy"),
                reason: None,
                decision: "act",
            }),
        )
    }

    fn item(r: Record) -> Item {
        let line = hook_line(&r);
        Item { rec: r, line }
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
        let rec = event(
            "web1",
            "GUEST_PANICKED",
            json!({"x": "$(touch /tmp/pwned); `id`"}),
        );
        let line = hook_line(&rec);
        let o = run_one(&cfg(&cmd, 5000), &rec, &line).await;
        assert_eq!((o.result, o.code), ("ok", Some(0)), "{o:?}");
        let got: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("out.json")).unwrap()).unwrap();
        assert_eq!(got, rec.to_json());
        assert_eq!(
            std::fs::read_to_string(d.join("out.env")).unwrap(),
            "event|web1|GUEST_PANICKED|destroy"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn exit_status_timeout_and_capped_output() {
        let r = event("a", "X", json!({}));
        let o = run_one(&cfg("echo hi; echo err >&2; exit 3", 5000), &r, b"{}\n").await;
        assert_eq!((o.result, o.code), ("failed", Some(3)));
        assert!(String::from_utf8_lossy(&o.output).contains("hi"));
        let t0 = Instant::now();
        let o = run_one(&cfg("sleep 30 & sleep 30", 200), &r, b"{}\n").await;
        assert_eq!(o.result, "timeout");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // a hook that floods its output: 4 KiB kept, the rest never read
        let o = run_one(&cfg("yes vigil-output-flood", 3000), &r, b"{}\n").await;
        assert_eq!(o.output.len(), MAX_OUTPUT);
        assert_ne!(o.result, "timeout", "{o:?}"); // it died of SIGPIPE
        let rep = report(&r, &o).to_json();
        assert!(rep["output"].as_str().unwrap().len() <= MAX_OUTPUT);
    }

    #[test]
    fn pages_first_and_vms_take_turns() {
        let mut q = Queues::default();
        for i in 0..10 {
            q.push(
                "noisy",
                Priority::Routine,
                item(event("noisy", "RTC_CHANGE", json!({"i": i}))),
            );
        }
        q.push(
            "db1",
            Priority::Page,
            item(event("db1", "GUEST_PANICKED", json!({}))),
        );
        q.push(
            "web1",
            Priority::Routine,
            item(event("web1", "RTC_CHANGE", json!({}))),
        );
        q.push(
            "noisy",
            Priority::Page,
            item(event("noisy", "WATCHDOG", json!({}))),
        );
        let order: Vec<(String, String)> = std::iter::from_fn(|| q.pop())
            .map(|i| {
                let j = i.rec.to_json();
                (
                    j["vm"].as_str().unwrap().into(),
                    j["event"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(order[0], ("db1".into(), "GUEST_PANICKED".into()));
        assert_eq!(order[1], ("noisy".into(), "WATCHDOG".into()));
        assert_eq!(order[2].0, "noisy");
        assert_eq!(order[3], ("web1".into(), "RTC_CHANGE".into()), "{order:?}");
        assert_eq!(order.len(), 13);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn per_vm_caps_drop_that_vms_oldest() {
        let mut q = Queues::default();
        let mut dropped = 0;
        for i in 0..(VM_ROUTINE + 5) {
            dropped += q
                .push(
                    "noisy",
                    Priority::Routine,
                    item(event("noisy", "RTC_CHANGE", json!({"i": i}))),
                )
                .len();
        }
        assert_eq!(dropped, 5);
        q.push(
            "db1",
            Priority::Page,
            item(event("db1", "GUEST_PANICKED", json!({}))),
        );
        assert_eq!(q.len(), VM_ROUTINE + 1);
        let first = q.pop().unwrap();
        assert_eq!(first.rec.vm(), Some("db1"));
        // the noisy VM's oldest went: its first waiting record is i = 5
        assert_eq!(q.pop().unwrap().rec.to_json()["data"]["i"], 5);
    }

    #[test]
    fn bytes_stay_bounded_under_distinct_large_records() {
        let mut q = Queues::default();
        // 300 records of 60 KiB: over MAX_BYTES (16 MiB)
        let big = "x".repeat(60 << 10);
        for vm in 0..300 {
            let r = event(&format!("vm{vm}"), "RTC_CHANGE", json!({"pad": big}));
            q.push(&format!("vm{vm}"), Priority::Routine, item(r));
        }
        // a record's line is capped, the queues' bytes too
        assert!(q.bytes() <= MAX_BYTES, "{}", q.bytes());
        q.push(
            "db1",
            Priority::Page,
            item(event("db1", "GUEST_PANICKED", json!({}))),
        );
        assert_eq!(q.pop().unwrap().rec.vm(), Some("db1"));
    }

    #[test]
    fn drops_are_logged_at_powers_of_ten() {
        let logged: Vec<u64> = (1..=2000).filter(|n| is_power_of_ten(*n)).collect();
        assert_eq!(logged, [1, 10, 100, 1000]);
    }

    #[test]
    fn hook_lines_are_capped() {
        let r = event("a", "X", json!({"pad": "y".repeat(10 << 20)}));
        let l = hook_line(&r);
        assert!(l.len() <= MAX_RECORD, "{}", l.len());
        let v: Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["vm"], "a");
        assert!(v["data"]["vigil-truncated"].as_u64().unwrap() > 10 << 20);
    }
}
