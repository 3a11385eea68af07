//! The `vigil` binary's command line: help, usage errors, fatal errors.

use std::process::Command;

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

#[test]
fn help_lists_policies_events_and_exit_status() {
    let out = vigil().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "coredump-restart",
        "coredump-destroy",
        "preserve",
        "GUEST_PANICKED",
        "GUEST_CRASHLOADED",
        "VCPU_STALL",
        "WATCHDOG",
        "SHUTDOWN",
        "--dump-dir",
        "--dump-format",
        "kdump-raw-zlib",
        "--log-json",
        "--json",
        "--stall-stage",
        "unix:PATH",
        "tcp:HOST:PORT",
        "Exit status",
        "--metrics",
        "--notify",
        "--config",
        "--watch-dir",
        "--max-dumps",
        "SIGHUP",
    ] {
        assert!(text.contains(word), "--help lacks {word}");
    }
    assert!(vigil().arg("--version").output().unwrap().status.success());
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["/tmp/no-prefix.sock"],
        &["--on-panic", "reboot", "unix:/tmp/x"],
        &["--on-panic", "coredump-restart", "unix:/tmp/x"], // no --dump-dir
        &[
            "--reconnect-min",
            "3",
            "--reconnect-max",
            "1",
            "unix:/tmp/x",
        ],
        &["unix:/tmp/x", "unix:/tmp/x"],
        &["--config", "/nonexistent/vigil.toml"],
    ] {
        let out = vigil().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn unusable_dump_dir_exits_1() {
    let out = vigil()
        .args([
            "--on-panic",
            "coredump-destroy",
            "--dump-dir",
            "/proc/vigil-cannot-be-here",
            "unix:/tmp/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dump directory"));
}
