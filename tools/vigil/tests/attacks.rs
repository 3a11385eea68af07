//! The hostile-peer attacks measured on vigil before its hardening, each
//! run against the real binary and fake QMP peers (`common/mod.rs`). Every
//! test asserts what the old build did not do: `VIGIL_BIN=/path/to/vigil`
//! runs them against another build, and against a build of d0af5b4 (before
//! the metrics, peer and record hardening) all of them fail, each at the
//! attack's own assertion.
//!
//! The peers run as the test's own user: every attack here works (and is
//! defeated) without a second user. vigil runs under RLIMIT_AS 2 GiB with
//! MALLOC_ARENA_MAX=2, so that a memory regression fails instead of
//! exhausting the machine.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

// 1 ------------------------------------------------------------------------

/// A QEMU whose `query-dump-guest-memory-capability` lacks the configured
/// format used to make vigil exit 1 for the whole fleet. Now that VM gets
/// an error record and `vigil_dump_unavailable 1`, its dumps fail, and the
/// other VM's panic is still dumped and destroyed.
#[test]
fn a_qemu_without_the_dump_format_does_not_stop_the_fleet() {
    let dir = TempDir::new("format");
    let dumps = dir.join("dumps");
    let bad = Fake::qemu(
        dir.join("bad.qmp"),
        Vm {
            formats: vec!["kdump-zlib".into()],
            ..Vm::new("bad")
        },
    );
    let good = Fake::qemu(dir.join("good.qmp"), Vm::new("good"));
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [
            "--on-panic".into(),
            "coredump-destroy".into(),
            "--dump-dir".into(),
            s(&dumps),
            bad.endpoint(),
            good.endpoint(),
        ],
    );
    let err = v.wait_record("the bad VM's error", |x| {
        x["type"] == "error" && x["vm"] == "bad"
    });
    assert!(
        err["error"].as_str().unwrap().contains("elf"),
        "the error names the format: {err}"
    );
    v.wait_connected("good");
    v.wait_connected("bad");
    assert!(v.running(), "vigil exited because of one VM's QEMU");

    good.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("quit sent to the good VM", || good.got("quit"));
    let recs = v.records();
    let done = recs
        .iter()
        .find(|x| is_action(x, "good", "dump", "completed"))
        .unwrap_or_else(|| v.fail("no completed dump for good"));
    let file = done["file"].as_str().unwrap();
    assert_eq!(fs::read(file).unwrap(), DUMP_BYTES);
    // through a descriptor vigil created and passed (getfd), not a path
    let cmds = good.commands();
    let getfd = cmds
        .iter()
        .position(|(c, a)| c == "getfd" && a["fdname"] == "vigil-dump");
    let dump = cmds
        .iter()
        .position(|(c, a)| c == "dump-guest-memory" && a["protocol"] == "fd:vigil-dump");
    assert!(
        matches!((getfd, dump), (Some(g), Some(d)) if g < d),
        "{cmds:?}"
    );

    bad.event("GUEST_PANICKED", json!({"action": "pause"}));
    let failed = v.wait_record("the bad VM's dump failure", |x| {
        is_action(x, "bad", "dump", "failed")
    });
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("cannot write dump format"),
        "{failed}"
    );
    let m = v.scrape();
    assert_eq!(
        metric(&m, r#"vigil_dump_unavailable{vm="bad"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"vigil_dump_unavailable{vm="good"}"#),
        Some(0.0)
    );
    assert!(v.running(), "vigil exited");
    assert!(!bad.got("quit"), "a VM whose dump failed is left as it is");
    assert!(!bad.got("getfd"));
    v.stop();
}

// 2 ------------------------------------------------------------------------

/// Distinct ~1 MB events while `--notify` is slow: 50 records took the old
/// vigil to 837 MB RSS (its hook queue kept every record whole). Now 200 of
/// them, with a hook that takes 1 s and runs one at a time, leave its peak
/// RSS (VmHWM) under 100 MiB, under RLIMIT_AS 2 GiB, and the panic sent
/// after them is acted on. (The session queue alone may hold 32 MiB of
/// input, parsed: the bound leaves room for that.)
#[test]
fn large_distinct_events_with_a_slow_hook_keep_memory_bounded() {
    const EVENTS: usize = 200;
    const PAD: usize = 1_000_000;
    const BOUND_KIB: u64 = 100 << 10;
    let dir = TempDir::new("bigevents");
    let fake = Fake::qemu(dir.join("web1.qmp"), Vm::new("web1"));
    let v = Vigil::start(
        dir.path(),
        Opts::default(),
        [
            "--on-panic".into(),
            "destroy".into(),
            "--notify".into(),
            "sleep 1".into(),
            "--notify-jobs".into(),
            "1".into(),
            fake.endpoint(),
        ],
    );
    v.wait_connected("web1");
    let base = v.peak_rss_kib();
    let t0 = Instant::now();
    let pad = "x".repeat(PAD);
    for i in 0..EVENTS {
        // (formatted, not serialized: an unoptimized serde_json is slow)
        let line = format!(
            "{{\"event\": \"FLOOD_{i:04}\", \"data\": {{\"i\": {i}, \"pad\": \"{pad}\"}}, \"timestamp\": {{\"seconds\": 1763712000, \"microseconds\": 0}}}}\n"
        );
        assert!(line.len() < 1 << 20, "an event within QMP's line limit");
        assert!(fake.raw(line.as_bytes()), "vigil closed the connection");
    }
    fake.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until_for("quit after the flood", Duration::from_secs(60), || {
        fake.got("quit")
    });
    let peak = v.peak_rss_kib();
    eprintln!(
        "attack 2: {EVENTS} distinct events of {PAD} bytes in {:.1} s: vigil VmHWM {} KiB ({:.1} MiB; {} KiB before the flood)",
        t0.elapsed().as_secs_f64(),
        peak,
        peak as f64 / 1024.0,
        base
    );
    assert!(
        peak < BOUND_KIB,
        "vigil's peak RSS {peak} KiB is over {BOUND_KIB} KiB"
    );
    let recs = v.records();
    let flood = count(&recs, |x| {
        x["type"] == "event" && x["event"].as_str().is_some_and(|e| e.starts_with("FLOOD_"))
    });
    assert_eq!(flood, EVENTS, "every event is recorded");
    let big = recs
        .iter()
        .find(|x| x["event"] == "FLOOD_0000")
        .unwrap()
        .to_string();
    assert!(big.len() < 64 << 10, "a record keeps no MB of peer data");
    assert!(v.running());
    v.stop();
}

// 3 ------------------------------------------------------------------------

/// vigil's verdict on what is at the watched path now: it spoke to the
/// victim, or refused (or, before refusals were records, failed) to.
fn verdict(victim: &Fake, reason: &str, r: &[Value]) -> bool {
    !victim.commands().is_empty()
        || has(r, |x| {
            x["type"] == "connection"
                && (x["reason"] == reason
                    || (x["status"] == "connect-failed"
                        && x["error"].as_str().is_some_and(|e| e.contains(reason))))
        })
}

fn refused(x: &Value, reason: &str) -> bool {
    x["type"] == "connection" && x["status"] == "refused" && x["reason"] == reason
}

/// Root vigil steered to another VM's socket: a symlink to a socket in a
/// root-only 0700 directory, renamed over the watched socket, made the old
/// vigil reconnect to that VM, find it guest-panicked and send it `quit`.
/// Now the victim never gets a single command: the connection is refused
/// (`symlink`, then `bound-path` for the victim's socket itself renamed
/// over the path) and counted.
#[test]
fn a_socket_swapped_for_another_vms_is_refused_without_a_word() {
    let dir = TempDir::new("steer");
    let private = dir.subdir("private", 0o700);
    let watched = dir.join("web1.qmp");
    let web1 = Fake::qemu(&watched, Vm::new("web1"));
    let victim = Fake::qemu(
        private.join("db1.qmp"),
        Vm {
            status: "guest-panicked".into(),
            ..Vm::new("db1")
        },
    );
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        ["--on-panic".into(), "destroy".into(), web1.endpoint()],
    );
    v.wait_connected("web1");

    // (a) a symbolic link to the victim's socket renamed over web1.qmp,
    // and web1's QEMU goes away
    let link = dir.join("link.tmp");
    std::os::unix::fs::symlink(&victim.path, &link).unwrap();
    fs::rename(&link, &watched).unwrap();
    web1.sender().close();
    v.wait_for("vigil's verdict on a symlink", |r| {
        verdict(&victim, "symlink", r)
    });
    assert!(
        victim.commands().is_empty(),
        "the victim got commands through the symlink: {:?}",
        victim.command_names()
    );
    let recs = v.records();
    let r = recs
        .iter()
        .find(|x| refused(x, "symlink"))
        .unwrap_or_else(|| v.fail("no connection record with status refused, reason symlink"));
    assert_eq!(r["vm"], "web1");

    // (b) the victim's socket itself renamed over web1.qmp
    fs::rename(&victim.path, &watched).unwrap();
    v.wait_for("vigil's verdict on another VM's socket", |r| {
        verdict(&victim, "bound-path", r)
    });
    // several more attempts
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        victim.commands().is_empty(),
        "the victim got commands: {:?}",
        victim.command_names()
    );
    assert!(
        victim.connections() > 0,
        "vigil reached the victim's socket"
    );
    let recs = v.records();
    let r = recs
        .iter()
        .find(|x| refused(x, "bound-path"))
        .unwrap_or_else(|| v.fail("no connection record with status refused, reason bound-path"));
    assert_eq!(r["vm"], "web1");
    let recs = v.records();
    assert!(!has(&recs, |x| x["type"] == "action"), "no action at all");
    assert!(!has(&recs, |x| x["vm"] == "db1"));
    let m = v.scrape();
    let sym = metric(
        &m,
        r#"vigil_peer_refused_total{vm="web1",reason="symlink"}"#,
    );
    let bound = metric(
        &m,
        r#"vigil_peer_refused_total{vm="web1",reason="bound-path"}"#,
    );
    assert!(sym.unwrap_or(0.0) >= 1.0, "{m}");
    assert!(bound.unwrap_or(0.0) >= 1.0, "{m}");
    eprintln!(
        "attack 3: refusals counted: symlink {sym:?}, bound-path {bound:?}; the victim accepted {} connection(s), got 0 commands",
        victim.connections()
    );
    v.stop();
}

// 4 ------------------------------------------------------------------------

/// A socket whose QEMU answers `query-name` with db1 got "VM db1
/// GUEST_PANICKED" paged and counted under vm="db1". Now it stays web1
/// everywhere: records, the hook's VIGIL_VM and its stdin, the metrics; the
/// claim is an `identity` record.
#[test]
fn a_peer_claiming_another_name_is_not_believed() {
    let dir = TempDir::new("claim");
    let web1 = Fake::qemu(dir.join("web1.qmp"), Vm::new("db1"));
    let env = dir.join("hook.env");
    let stdin = dir.join("hook.jsonl");
    let hook = format!(
        "printf '%s %s %s\\n' \"$VIGIL_TYPE\" \"$VIGIL_VM\" \"$VIGIL_EVENT\" >> {}; cat >> {}",
        s(&env),
        s(&stdin)
    );
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [
            "--notify".into(),
            hook,
            "--notify-jobs".into(),
            "1".into(),
            web1.endpoint(),
        ],
    );
    v.wait_record("the connection", |x| x["status"] == "connected");
    web1.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("the hook for the panic", || {
        fs::read_to_string(&env)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("event ") && l.ends_with(" GUEST_PANICKED"))
    });
    let lines = fs::read_to_string(&env).unwrap();
    for l in lines.lines() {
        let vm = l.split(' ').nth(1).unwrap_or("");
        assert_eq!(vm, "web1", "the hook saw VIGIL_VM {vm:?}: {lines}");
    }
    let id = v.wait_record("the identity record", |x| x["type"] == "identity");
    assert_eq!(id["vm"], "web1");
    assert_eq!(id["claimed-name"], "db1");
    v.wait_until("the identity record at the hook", || {
        fs::read_to_string(&env)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("identity web1"))
    });
    let given = fs::read_to_string(&stdin).unwrap();
    for l in given.lines() {
        let r: Value = serde_json::from_str(l).unwrap();
        assert_eq!(r["vm"], "web1", "{l}");
    }
    let recs = v.records();
    assert!(!has(&recs, |x| x["vm"] == "db1"));
    let ev = recs
        .iter()
        .find(|x| x["event"] == "GUEST_PANICKED")
        .unwrap();
    assert_eq!(ev["vm"], "web1");
    let m = v.scrape();
    assert!(!m.contains(r#"vm="db1""#), "{m}");
    assert_eq!(
        metric(
            &m,
            r#"vigil_events_total{vm="web1",event="GUEST_PANICKED"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"vigil_name_mismatch_total{vm="web1"}"#),
        Some(1.0),
        "{m}"
    );
    v.stop();
}

// 5 ------------------------------------------------------------------------

/// What QEMU's user plants in the dump directory: the old vigil blocked
/// forever on a FIFO at the `.partial` path, and opened, fsynced and
/// published a symlink to /etc/shadow as a completed dump. Now, with a FIFO
/// or a symlink (to a file standing for /etc/shadow) at every partial name
/// vigil could choose for the next seconds, each dump goes to a file of
/// vigil's own, the `quit` follows, and the target is untouched. (The
/// peers would also plant at a dump path they were given, as the old
/// interface did: vigil gives them none.)
#[test]
fn planted_fifos_and_symlinks_in_the_dump_dir_are_never_followed() {
    const SHADOW: &[u8] = b"root:$6$secret:19000:0:99999:7:::\n";
    let dir = TempDir::new("plant");
    let dumps = dir.subdir("dumps", 0o700);
    let etc = dir.subdir("etc", 0o700);
    let shadow = etc.join("shadow");
    fs::write(&shadow, SHADOW).unwrap();
    let shadow_before = fs::metadata(&shadow).unwrap();
    let fifo_vm = Fake::qemu(
        dir.join("victim.qmp"),
        Vm {
            plant: Some(Plant::Fifo),
            ..Vm::new("victim")
        },
    );
    let link_vm = Fake::qemu(
        dir.join("victim2.qmp"),
        Vm {
            plant: Some(Plant::Symlink(shadow.clone())),
            ..Vm::new("victim2")
        },
    );
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [
            "--on-panic".into(),
            "coredump-destroy".into(),
            "--dump-dir".into(),
            s(&dumps),
            fifo_vm.endpoint(),
            link_vm.endpoint(),
        ],
    );
    v.wait_connected("victim");
    v.wait_connected("victim2");

    // every partial name of the next seconds: .VM-STAMP[-N].elf.partial
    let now = now_secs();
    let (mut fifos, mut links) = (0, 0);
    for vm in ["victim", "victim2"] {
        for secs in now - 1..=now + 8 {
            for n in 0..4 {
                let suffix = if n == 0 {
                    String::new()
                } else {
                    format!("-{n}")
                };
                let p = dumps.join(format!(".{vm}-{}{suffix}.elf.partial", file_stamp(secs)));
                if (n + secs) % 2 == 0 {
                    mkfifo(&p, 0o666);
                    fifos += 1;
                } else {
                    std::os::unix::fs::symlink(&shadow, &p).unwrap();
                    links += 1;
                }
            }
        }
    }
    fifo_vm.event("GUEST_PANICKED", json!({"action": "pause"}));
    link_vm.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("quit after each dump", || {
        fifo_vm.got("quit") && link_vm.got("quit")
    });
    let recs = v.records();
    let mut files = Vec::new();
    for vm in ["victim", "victim2"] {
        let done = recs
            .iter()
            .find(|x| is_action(x, vm, "dump", "completed"))
            .unwrap_or_else(|| v.fail(&format!("no completed dump for {vm}")));
        let file = Path::new(done["file"].as_str().unwrap()).to_path_buf();
        let md = fs::symlink_metadata(&file).unwrap();
        assert!(md.file_type().is_file(), "{file:?} is not a regular file");
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(
            fs::read(&file).unwrap(),
            DUMP_BYTES,
            "the dump is what QEMU wrote"
        );
        // the names .VM-STAMP{,-1,-2,-3}.elf.partial were all planted on
        assert!(
            file.to_str().unwrap().ends_with("-4.elf"),
            "{file:?}: a planted name was not skipped"
        );
        files.push(file);
    }
    assert_eq!(fs::read(&shadow).unwrap(), SHADOW);
    let shadow_after = fs::metadata(&shadow).unwrap();
    assert_eq!(
        (
            shadow_after.mtime(),
            shadow_after.mtime_nsec(),
            shadow_after.nlink()
        ),
        (
            shadow_before.mtime(),
            shadow_before.mtime_nsec(),
            shadow_before.nlink()
        ),
        "the symlink target was touched"
    );
    // no final (visible) name is anything but a regular file, and no partial
    // file of vigil's is left
    for e in fs::read_dir(&dumps).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let t = e.file_type().unwrap();
        if !name.starts_with('.') {
            assert!(t.is_file(), "{name} is not a regular file: {t:?}");
        } else {
            assert!(
                t.is_fifo() || t.is_symlink(),
                "{name}: vigil left a partial file"
            );
        }
    }
    let m = v.scrape();
    assert_eq!(metric(&m, "vigil_dumps_running"), Some(0.0), "{m}");
    eprintln!("attack 5: {fifos} FIFOs and {links} symlinks planted; the dumps went to {files:?}");
    v.stop();
}

/// vigil refuses a dump directory others can write to (they could plant
/// there): exit status 1, the directory named.
#[test]
fn a_group_or_world_writable_dump_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("dumpmode");
    for mode in [0o777, 0o770, 0o1777] {
        let d = dir.join(format!("dumps-{mode:o}"));
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        let v = Vigil::start(
            dir.path(),
            Opts {
                json: false,
                ..Opts::default()
            },
            [
                "--on-panic".to_string(),
                "coredump-destroy".into(),
                "--dump-dir".into(),
                s(&d),
                "unix:/nonexistent/vigil-test.qmp".into(),
            ],
        );
        let st = v.wait_exit(Duration::from_secs(10));
        let err = String::from_utf8_lossy(&v.stderr()).into_owned();
        let st = st.unwrap_or_else(|| {
            v.fail(&format!(
                "vigil runs with a dump directory of mode {mode:o}"
            ))
        });
        assert_eq!(st.code(), Some(1), "mode {mode:o}: {err}");
        assert!(err.contains(d.to_str().unwrap()), "mode {mode:o}: {err}");
        assert!(err.contains("writable"), "mode {mode:o}: {err}");
    }
}

// 6 ------------------------------------------------------------------------

/// One slow dump blocked every VM's dump: `query-dump` answering `active`
/// forever held a `--max-dumps` slot forever. Now two stuck dumps time out
/// (`--dump-timeout 1`) and the third VM's waiting dump proceeds.
#[test]
fn stuck_dumps_time_out_and_free_their_slots() {
    let dir = TempDir::new("stuck");
    let dumps = dir.join("dumps");
    let stuck = |n: &str| {
        Fake::qemu(
            dir.join(format!("{n}.qmp")),
            Vm {
                dump: DumpMode::Stuck,
                ..Vm::new(n)
            },
        )
    };
    let (a, b) = (stuck("stuck-a"), stuck("stuck-b"));
    let c = Fake::qemu(dir.join("good.qmp"), Vm::new("good"));
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [
            "--on-panic".into(),
            "coredump-destroy".into(),
            "--dump-dir".into(),
            s(&dumps),
            "--max-dumps".into(),
            "2".into(),
            "--dump-timeout".into(),
            "1".into(),
            a.endpoint(),
            b.endpoint(),
            c.endpoint(),
        ],
    );
    for vm in ["stuck-a", "stuck-b", "good"] {
        v.wait_connected(vm);
    }
    a.event("GUEST_PANICKED", json!({"action": "pause"}));
    b.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_for("both stuck dumps started", |r| {
        has(r, |x| is_action(x, "stuck-a", "dump", "started"))
            && has(r, |x| is_action(x, "stuck-b", "dump", "started"))
    });
    let t0 = Instant::now();
    c.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("quit to the third VM", || c.got("quit"));
    let waited = t0.elapsed();
    let recs = v.records();
    for vm in ["stuck-a", "stuck-b"] {
        assert!(has(&recs, |x| is_action(x, vm, "dump", "timeout")), "{vm}");
    }
    let pos = |f: &dyn Fn(&Value) -> bool| recs.iter().position(f);
    let queued = pos(&|x| is_action(x, "good", "dump", "queued"));
    let a_out = pos(&|x| is_action(x, "stuck-a", "dump", "timeout")).unwrap();
    let started = pos(&|x| is_action(x, "good", "dump", "started")).unwrap();
    assert!(queued.is_some(), "the third dump waited for a slot");
    assert!(a_out < started);
    assert!(has(&recs, |x| is_action(x, "good", "dump", "completed")));
    assert!(
        !a.got("quit") && !b.got("quit"),
        "stuck VMs are left as they are"
    );
    let m = v.scrape();
    for vm in ["stuck-a", "stuck-b"] {
        assert_eq!(
            metric(&m, &format!(r#"vigil_dump_timeouts_total{{vm="{vm}"}}"#)),
            Some(1.0),
            "{m}"
        );
    }
    assert_eq!(metric(&m, "vigil_dumps_running"), Some(0.0), "{m}");
    let partials: Vec<_> = fs::read_dir(&dumps)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "partial files left: {partials:?}");
    eprintln!(
        "attack 6: the third VM's dump waited {:.1} s behind two stuck ones",
        waited.as_secs_f64()
    );
    v.stop();
}

/// Removing a stuck endpoint from `--config` and SIGHUP did not free its
/// slot. Now it does: the VM waiting behind it is dumped and destroyed.
#[test]
fn removing_a_stuck_endpoint_on_sighup_frees_its_slot() {
    let dir = TempDir::new("reload");
    let dumps = dir.join("dumps");
    let stuck = Fake::qemu(
        dir.join("stuck.qmp"),
        Vm {
            dump: DumpMode::Stuck,
            ..Vm::new("stuck")
        },
    );
    let good = Fake::qemu(dir.join("good.qmp"), Vm::new("good"));
    let conf = dir.join("vigil.toml");
    let table = |f: &Fake, name: &str| {
        format!(
            "[[endpoint]]\naddress = \"{}\"\nname = \"{name}\"\n",
            f.endpoint()
        )
    };
    let head = "[defaults]\non-panic = \"coredump-destroy\"\n";
    fs::write(
        &conf,
        format!("{head}{}{}", table(&stuck, "stuck"), table(&good, "good")),
    )
    .unwrap();
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [
            "--config".into(),
            s(&conf),
            "--dump-dir".into(),
            s(&dumps),
            "--max-dumps".into(),
            "1".into(),
        ],
    );
    v.wait_connected("stuck");
    v.wait_connected("good");
    stuck.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_record("the stuck dump started", |x| {
        is_action(x, "stuck", "dump", "started")
    });
    good.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_record("the good dump queued", |x| {
        is_action(x, "good", "dump", "queued")
    });
    let tmp = dir.join("vigil.toml.new");
    fs::write(&tmp, format!("{head}{}", table(&good, "good"))).unwrap();
    fs::rename(&tmp, &conf).unwrap();
    let t0 = Instant::now();
    v.signal(libc::SIGHUP);
    let r = v.wait_record("the reload", |x| x["type"] == "reload");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["removed"], json!([stuck.endpoint()]));
    v.wait_until("quit to the waiting VM", || good.got("quit"));
    let recs = v.records();
    assert!(has(&recs, |x| is_action(x, "good", "dump", "completed")));
    assert!(!stuck.got("quit"));
    let m = v.scrape();
    assert!(!m.contains(r#"vm="stuck""#), "its series go: {m}");
    assert_eq!(metric(&m, "vigil_dumps_running"), Some(0.0), "{m}");
    eprintln!(
        "attack 6: the waiting dump ran {:.1} s after SIGHUP removed the stuck endpoint",
        t0.elapsed().as_secs_f64()
    );
    v.stop();
}

// 7 ------------------------------------------------------------------------

/// `--log-json` into a pipe nobody reads stopped /metrics and left a real
/// panic without its `quit`. Now records for that sink are dropped and
/// counted; the `quit` goes out and /metrics answers.
#[test]
fn a_log_pipe_nobody_reads_blocks_neither_actions_nor_metrics() {
    let dir = TempDir::new("fifo");
    let fifo = dir.join("log.fifo");
    mkfifo(&fifo, 0o600);
    // opened for reading (never read), so that vigil's open does not block
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let fake = Fake::qemu(dir.join("web1.qmp"), Vm::new("web1"));
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [
            "--on-panic".into(),
            "destroy".into(),
            "--log-json".into(),
            s(&fifo),
            fake.endpoint(),
        ],
    );
    v.wait_connected("web1");
    // far more records than the pipe (64 KiB) and the sink's queue hold
    let mut blob = Vec::new();
    for i in 0..10_000 {
        blob.extend_from_slice(event_line("RTC_CHANGE", &json!({"offset": i})).as_bytes());
    }
    assert!(fake.raw(&blob));
    // handled after the flood (a connection's events are handled in order)
    let t0 = Instant::now();
    fake.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("quit with the log pipe full", || fake.got("quit"));
    let quit_after = t0.elapsed();
    let t1 = Instant::now();
    let m = v.scrape();
    let scrape = t1.elapsed();
    let dropped = metric(&m, r#"vigil_records_dropped_total{vm="web1",sink="log"}"#);
    assert!(dropped.unwrap_or(0.0) > 0.0, "{m}");
    eprintln!(
        "attack 7: quit {:.2} s after the panic, /metrics in {:.2} s, {dropped:?} records dropped for the blocked log",
        quit_after.as_secs_f64(),
        scrape.as_secs_f64()
    );
    v.stop();
    drop(reader);
}

// 8 ------------------------------------------------------------------------

/// A noisy VM flooding RTC_CHANGE (~4,000 events/s) with a hook that takes
/// 0.1 s: db1's GUEST_PANICKED never reached the hook. Now it does within
/// a few seconds, and the noisy VM's own records are the ones dropped.
#[test]
fn a_noisy_vm_does_not_silence_another_vms_page() {
    let dir = TempDir::new("noisy");
    let noisy = Fake::qemu(dir.join("noisy.qmp"), Vm::new("noisy"));
    let db1 = Fake::qemu(dir.join("db1.qmp"), Vm::new("db1"));
    let got = dir.join("hook.txt");
    let hook = format!(
        "sleep 0.1; printf '%s %s\\n' \"$VIGIL_VM\" \"$VIGIL_EVENT\" >> {}",
        s(&got)
    );
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        ["--notify".into(), hook, noisy.endpoint(), db1.endpoint()],
    );
    v.wait_connected("noisy");
    v.wait_connected("db1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, stop2) = (noisy.sender(), stop.clone());
    let flood = std::thread::spawn(move || {
        let mut i = 0u64;
        let t0 = Instant::now();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // 40 events every 10 ms: 4,000 a second
            let mut b = Vec::new();
            for _ in 0..40 {
                b.extend_from_slice(event_line("RTC_CHANGE", &json!({"offset": i})).as_bytes());
                i += 1;
            }
            if !tx.raw(&b) {
                break;
            }
            let next = Duration::from_millis(10 * (i / 40));
            if let Some(d) = next.checked_sub(t0.elapsed()) {
                std::thread::sleep(d);
            }
        }
        (i, t0.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    db1.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until_for("db1's page at the hook", Duration::from_secs(10), || {
        fs::read_to_string(&got)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "db1 GUEST_PANICKED")
    });
    let latency = t0.elapsed();
    let mut dropped = None;
    v.wait_until("the noisy VM's drops counted", || {
        dropped = v.try_scrape().and_then(|(_, m)| {
            metric(
                &m,
                r#"vigil_records_dropped_total{vm="noisy",sink="notify"}"#,
            )
        });
        dropped.unwrap_or(0.0) > 0.0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, secs) = flood.join().unwrap();
    eprintln!(
        "attack 8: {sent} RTC_CHANGE in {:.1} s ({:.0}/s); db1's panic reached the hook after {:.2} s; {dropped:?} noisy records dropped for the hook",
        secs.as_secs_f64(),
        sent as f64 / secs.as_secs_f64(),
        latency.as_secs_f64()
    );
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    v.stop();
}

// 9 ------------------------------------------------------------------------

/// 20,000 distinct event names and 20,000 VCPU_STALL cpu-index values made
/// an 11 MB /metrics. Now it stays under 64 KiB.
#[test]
fn metrics_stay_small_under_distinct_names_and_cpus() {
    const N: usize = 20_000;
    let dir = TempDir::new("labels");
    let fake = Fake::qemu(dir.join("web1.qmp"), Vm::new("web1"));
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        ["--quiet".to_string(), fake.endpoint()],
    );
    v.wait_connected("web1");
    let mut blob = Vec::new();
    for i in 0..N {
        blob.extend_from_slice(event_line(&format!("EV_{i}"), &json!({})).as_bytes());
        blob.extend_from_slice(
            event_line(
                "VCPU_STALL",
                &json!({"qom-path": "/machine/peripheral/stall", "cpu-index": i,
                        "budget-ms": 8000, "stage": "warning"}),
            )
            .as_bytes(),
        );
    }
    let t0 = Instant::now();
    assert!(fake.raw(&blob));
    fake.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until_for("the events counted", Duration::from_secs(40), || {
        v.try_scrape().is_some_and(|(_, m)| {
            metric(
                &m,
                r#"vigil_events_total{vm="web1",event="GUEST_PANICKED"}"#,
            ) == Some(1.0)
        })
    });
    let m = v.scrape();
    eprintln!(
        "attack 9: /metrics after {N} distinct event names and {N} cpu-index values: {} bytes ({:.1} s to process)",
        m.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(m.len() < 64 << 10, "/metrics is {} bytes", m.len());
    assert_eq!(
        metric(&m, r#"vigil_events_total{vm="web1",event="other"}"#),
        Some(N as f64),
        "every unknown name counted as other"
    );
    assert_eq!(
        metric(&m, r#"vigil_events_total{vm="web1",event="VCPU_STALL"}"#),
        Some(N as f64)
    );
    let stall_series = m
        .lines()
        .filter(|l| l.starts_with("vigil_stalls_total{"))
        .count();
    assert!(stall_series <= 257, "{stall_series} stall series");
    v.stop();
}

/// A VM's series stayed after its socket went. Now, with --watch-dir,
/// removing the socket removes them within seconds.
#[test]
fn a_vms_series_go_with_its_socket() {
    let dir = TempDir::new("watchdir");
    let run = dir.subdir("run", 0o700);
    let fake = Fake::qemu(run.join("vmx.qmp"), Vm::new("vmx"));
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        ["--watch-dir".to_string(), s(&run)],
    );
    v.wait_connected("vmx");
    fake.event("RTC_CHANGE", json!({"offset": 1}));
    v.wait_until("vmx's series", || {
        v.try_scrape().is_some_and(|(_, m)| {
            metric(&m, r#"vigil_events_total{vm="vmx",event="RTC_CHANGE"}"#) == Some(1.0)
        })
    });
    fs::remove_file(&fake.path).unwrap();
    let t0 = Instant::now();
    v.wait_until_for("vmx's series gone", Duration::from_secs(10), || {
        v.try_scrape()
            .is_some_and(|(c, m)| c == 200 && !m.contains(r#"vm="vmx""#))
    });
    eprintln!(
        "attack 9: vmx's series went {:.2} s after its socket",
        t0.elapsed().as_secs_f64()
    );
    assert!(!v.scrape().contains("vmx.qmp"), "the endpoint's series too");
    v.stop();
}

/// 20 idle connections blinded /metrics. Now a scrape succeeds with 200
/// idle connections open.
#[test]
fn idle_connections_do_not_blind_metrics() {
    let dir = TempDir::new("idle");
    let fake = Fake::qemu(dir.join("web1.qmp"), Vm::new("web1"));
    let v = Vigil::start(
        dir.path(),
        Opts {
            metrics: true,
            ..Opts::default()
        },
        [fake.endpoint()],
    );
    v.wait_connected("web1");
    let addr = v.metrics.unwrap();
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let r = http_get(addr, "/metrics", Duration::from_secs(4));
    let took = t0.elapsed();
    let (code, body) = r.unwrap_or_else(|| v.fail("no /metrics answer with 200 idle connections"));
    assert_eq!(code, 200);
    assert!(body.contains("vigil_endpoint_connected{"), "{body}");
    eprintln!(
        "attack 9: /metrics answered in {:.3} s with {} idle connections open",
        took.as_secs_f64(),
        idle.len()
    );
    drop(idle);
    v.stop();
}

// 10 -----------------------------------------------------------------------

/// Whether `b` has a control character other than the line ends: C0, DEL,
/// or (in UTF-8) C1.
fn control_chars(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .lines()
        .filter(|l| l.chars().any(char::is_control))
        .map(|l| format!("{l:?}"))
        .collect()
}

/// Peer text (event names, data, garbage) with newlines, terminal escapes
/// and a forged "vigil: db1: dump written" reaches stderr escaped.
#[test]
fn peer_text_reaches_stderr_escaped() {
    let dir = TempDir::new("escape");
    let fake = Fake::qemu(dir.join("web1.qmp"), Vm::new("web1"));
    let v = Vigil::start(dir.path(), Opts::default(), [fake.endpoint()]);
    v.wait_connected("web1");
    let forged = "X\n\x1b[2Jvigil: db1: dump written";
    fake.event(forged, json!({}));
    fake.event(
        "\u{9b}2J\rvigil: db1: dump written",
        json!({"m": "\u{1b}]0;pwned\u{7}\n"}),
    );
    fake.raw(b"\x1b[31m\rvigil: db1: dump written\x07 not json\n");
    fake.raw(b"{\"x\": \"\x1b[2J\"}\n");
    fake.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("the sentinel on stderr", || {
        String::from_utf8_lossy(&v.stderr()).contains("GUEST_PANICKED")
    });
    v.stop();
    let err = v.stderr();
    let text = String::from_utf8_lossy(&err);
    assert!(
        text.contains("dump written"),
        "the peer's text is shown: {text}"
    );
    let bad = control_chars(&err);
    assert!(bad.is_empty(), "raw control characters on stderr: {bad:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("vigil: db1")),
        "a forged line: {text}"
    );
    // the JSON record keeps the name as sent
    assert!(has(&v.records(), |x| x["event"] == forged));
}

/// The old vigil took a VM's name from its QEMU: a 500 KB -name reached the
/// hook's environment whole. Now the name is the socket's (a QEMU's claim
/// is only reported), and even a long socket file name with control
/// characters gives a VIGIL_VM of at most 256 bytes, escaped.
#[test]
fn vm_names_in_the_hook_environment_are_bounded() {
    let dir = TempDir::new("longname");
    let huge: String = "\x1b[2J\nvigil: db1: dump written ".repeat(17_000);
    assert!(huge.len() > 500_000);
    let big = Fake::qemu(dir.join("big.qmp"), Vm::new(&huge));
    let mut stem = String::from("db1");
    while stem.len() < 236 {
        stem.push_str("\n\x1b[2J");
    }
    let long = dir.join(format!("{stem}.qmp"));
    assert!(long.file_name().unwrap().len() <= 255);
    // a socket can only be bound at a path of at most 107 bytes: this one is
    // bound short and renamed to the long name (vigil refuses it, and the
    // refusal is paged with the VM's name)
    let renamed = Fake::qemu(dir.join("s.qmp"), Vm::new("db1"));
    fs::rename(&renamed.path, &long).unwrap();
    let env = dir.join("hook.env");
    let hook = format!("printf '%s\\n' \"$VIGIL_VM\" >> {}", s(&env));
    let v = Vigil::start(
        dir.path(),
        Opts::default(),
        [
            "--notify".to_string(),
            hook,
            big.endpoint(),
            format!("unix:{}", s(&long)),
        ],
    );
    v.wait_record("the connection", |x| x["status"] == "connected");
    big.event("GUEST_PANICKED", json!({"action": "pause"}));
    v.wait_until("the hook for both VMs", || {
        let t = fs::read(&env).unwrap_or_default();
        let lines: Vec<&[u8]> = t.split(|&b| b == b'\n').collect();
        lines.iter().any(|l| l.starts_with(b"db1\\n")) && lines.len() > 2
    });
    v.stop();
    let got = fs::read(&env).unwrap();
    let lines: Vec<&[u8]> = got
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for l in &lines {
        assert!(l.len() <= 256, "VIGIL_VM of {} bytes", l.len());
        assert!(
            control_chars(l).is_empty(),
            "{:?}",
            String::from_utf8_lossy(l)
        );
        assert!(
            *l == b"big" || l.starts_with(b"db1\\n\\u{1b}[2J"),
            "VIGIL_VM {:?}",
            String::from_utf8_lossy(l)
        );
    }
    assert!(lines.iter().any(|l| *l == b"big"), "the panic's hook ran");
    let recs = v.records();
    let id = recs
        .iter()
        .find(|x| x["type"] == "identity")
        .unwrap_or_else(|| v.fail("no identity record"));
    assert_eq!(id["vm"], "big");
    assert!(id["claimed-name"].as_str().unwrap().len() <= 1024);
    assert!(has(&recs, |x| x["status"] == "refused"
        && x["vm"] == stem.as_str()));
    eprintln!(
        "attack 10: a {}-byte -name and a {}-byte socket name gave VIGIL_VM of at most {} bytes",
        huge.len(),
        stem.len(),
        lines.iter().map(|l| l.len()).max().unwrap_or(0)
    );
    assert!(renamed.commands().is_empty());
    assert!(control_chars(&v.stderr()).is_empty());
}

/// A `--notify` hook that floods its output (`yes`): the old vigil read it
/// all. Now a report keeps at most 4096 bytes of it, the hook is cut off
/// (not left running to its timeout), and vigil's memory and log stay small.
#[test]
fn a_hook_flooding_its_output_is_cut_off() {
    let dir = TempDir::new("yes");
    let fake = Fake::qemu(dir.join("web1.qmp"), Vm::new("web1"));
    let v = Vigil::start(
        dir.path(),
        Opts::default(),
        [
            "--notify".to_string(),
            "yes vigil-output-flood".to_string(),
            fake.endpoint(),
        ],
    );
    v.wait_connected("web1");
    for _ in 0..3 {
        fake.event("GUEST_PANICKED", json!({"action": "pause"}));
    }
    let recs = v.wait_for("three hook reports", |r| {
        count(r, |x| x["type"] == "notify") >= 3
    });
    let peak = v.peak_rss_kib();
    let log = fs::metadata(&v.out).unwrap().len();
    for r in recs.iter().filter(|x| x["type"] == "notify") {
        let out = r["output"].as_str().unwrap_or("");
        assert!(out.len() <= 4096, "output of {} bytes", out.len());
        assert!(out.starts_with("vigil-output-flood"), "{r}");
        let secs = r["seconds"].as_f64().unwrap();
        assert!(secs < 5.0, "the hook ran {secs} s: {r}");
    }
    eprintln!("attack 10: 3 flooding hooks: vigil VmHWM {peak} KiB, JSON log {log} bytes");
    assert!(peak < 64 << 10, "VmHWM {peak} KiB");
    assert!(log < 64 << 10, "log of {log} bytes");
    v.stop();
}

/// `query-memory-size-summary` whose base-memory + plugged-memory overflow
/// u64 passed the old space check. Now the dump fails cleanly before
/// anything is created or passed.
#[test]
fn a_memory_size_that_overflows_fails_the_dump_cleanly() {
    let dir = TempDir::new("overflow");
    let dumps = dir.join("dumps");
    let fake = Fake::qemu(
        dir.join("web1.qmp"),
        Vm {
            memory: json!({"base-memory": u64::MAX, "plugged-memory": 1u64 << 30}),
            ..Vm::new("web1")
        },
    );
    let v = Vigil::start(
        dir.path(),
        Opts::default(),
        [
            "--on-panic".into(),
            "coredump-destroy".into(),
            "--dump-dir".into(),
            s(&dumps),
            fake.endpoint(),
        ],
    );
    v.wait_connected("web1");
    fake.event("GUEST_PANICKED", json!({"action": "pause"}));
    let r = v.wait_record("the failed dump", |x| {
        is_action(x, "web1", "dump", "failed")
    });
    assert!(
        r["error"].as_str().unwrap().contains("gave no memory size"),
        "{r}"
    );
    for c in ["getfd", "dump-guest-memory", "quit"] {
        assert!(!fake.got(c), "{c} sent: {:?}", fake.command_names());
    }
    assert_eq!(fs::read_dir(&dumps).unwrap().count(), 0, "no file created");
    v.stop();
}
