//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::PolicySet;
use crate::endpoint::Endpoint;
use crate::policy::{DumpFormat, Policies, Policy, StallStage};

const AFTER_HELP: &str = "\
Policies (named like libvirt's <on_crash>):
  log               only log the event (the default for every event)
  preserve          leave the VM as it is (paused, if QEMU paused it)
  destroy           quit QEMU
  restart           system_reset, then cont (also resumes a paused VM)
  coredump-destroy  dump guest memory to --dump-dir, then destroy
  coredump-restart  dump guest memory to --dump-dir, then restart
A failed or refused dump leaves the VM as it is, as libvirt does.

Events:
  GUEST_PANICKED     --on-panic       (pvpanic; run QEMU with -action panic=pause
                                       or -no-shutdown so that the VM is kept)
  GUEST_CRASHLOADED  --on-crashloaded (the guest booted its crash kernel)
  VCPU_STALL         --on-stall       (vcpu-stall-detector; stage chosen by --stall-stage)
  WATCHDOG           --on-watchdog    (any watchdog; -action watchdog=pause keeps the VM)
  SHUTDOWN           --on-shutdown    (guest-initiated only; with -no-shutdown)
Every event, and every action, is logged.

vigil creates each dump file itself, DIR/.<vm>-<UTCstamp>.<ext>.partial, and
passes QEMU its descriptor (getfd); once QEMU reports success it is synced and
linked to DIR/<vm>-<UTCstamp>.<ext>. DIR belongs to vigil alone (QEMU's user
needs no access). <vm> is the endpoint's name in --config, else the socket's
file name: never what QEMU says (a different -name is reported, not believed).
Dumps need a unix: endpoint (a tcp: one cannot receive a descriptor).

Fleets:
  --config FILE      endpoints, per-VM names and policies, defaults (TOML);
                     SIGHUP reloads it (connections that did not change stay)
  --watch-dir DIR    watch every QMP socket that appears in DIR
  --metrics ADDR:PORT  Prometheus metrics on http://ADDR:PORT/metrics
  --notify CMD       run CMD (/bin/sh -c) for every event and action record:
                     the JSON record on stdin, VIGIL_VM, VIGIL_EVENT,
                     VIGIL_POLICY, VIGIL_TYPE, VIGIL_ACTION, VIGIL_STATUS,
                     VIGIL_ENDPOINT in the environment
  --max-dumps N      at most N dumps at once on the host; the others wait in order
A policy comes from the endpoint's [[endpoint]] table, else the command line,
else the file's [defaults], else log.

Examples:
  vigil --on-panic coredump-restart --dump-dir /var/lib/vigil/dumps unix:/run/vm/web1.qmp
  vigil --on-panic coredump-restart --on-stall coredump-destroy --on-watchdog log \\
        --dump-dir /srv/dumps --dump-format kdump-zlib --log-json /var/log/vigil.jsonl \\
        unix:/run/vm/a.qmp unix:/run/vm/b.qmp tcp:127.0.0.1:4444
  vigil --config /etc/vigil/vigil.toml --watch-dir /run/vm --dump-dir /var/lib/vigil/dumps \\
        --metrics 127.0.0.1:9717 --notify /usr/local/bin/page-oncall --max-dumps 2

Signals: SIGINT and SIGTERM stop vigil after the running actions; SIGHUP
reloads --config and rescans --watch-dir.

Exit status: 0 when stopped by SIGINT or SIGTERM (after the running
action, if any), 1 on an error at start (the dump directory, --metrics),
2 on a usage error, 130 on a second signal. Nothing a QEMU sends or lacks
stops vigil: a VM whose QEMU cannot write the dump format gets an error
for its own dumps only.

See docs/system/vigil.rst for the whole manual.";

/// Watch QEMU QMP sockets and act on guest-health events.
#[derive(Parser, Debug)]
#[command(
    name = "vigil",
    version,
    about = "Watch QEMU QMP sockets and act on guest-health events (dump, restart, destroy)",
    long_about = "Watch one or more QEMU QMP sockets, for hosts without libvirt, and act on \
guest-health events: GUEST_PANICKED, GUEST_CRASHLOADED, VCPU_STALL, WATCHDOG and SHUTDOWN. \
Each event has a policy; a policy can dump guest memory (dump-guest-memory, atomically, \
after a disk-space check) and then destroy or restart the VM. vigil reconnects to a QEMU \
that restarts, waits for a socket that does not exist yet, and logs every event and action \
as JSON lines and as one human line on stderr.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// QMP endpoints to watch: unix:PATH or tcp:HOST:PORT (QEMU: -qmp unix:PATH,server=on,wait=off)
    #[arg(value_name = "ENDPOINT", required_unless_present_any = ["config", "watch_dir"], value_parser = parse_endpoint)]
    pub endpoints: Vec<Endpoint>,

    /// Policy for GUEST_PANICKED [default: log]
    #[arg(long, value_name = "POLICY")]
    pub on_panic: Option<Policy>,

    /// Policy for GUEST_CRASHLOADED [default: log]
    #[arg(long, value_name = "POLICY")]
    pub on_crashloaded: Option<Policy>,

    /// Policy for VCPU_STALL (at the stage --stall-stage says) [default: log]
    #[arg(long, value_name = "POLICY")]
    pub on_stall: Option<Policy>,

    /// Policy for WATCHDOG [default: log]
    #[arg(long, value_name = "POLICY")]
    pub on_watchdog: Option<Policy>,

    /// Policy for a guest-initiated SHUTDOWN (host-initiated ones are only logged) [default: log]
    #[arg(long, value_name = "POLICY")]
    pub on_shutdown: Option<Policy>,

    /// The VCPU_STALL stage that triggers --on-stall: action (the second expiry, when QEMU takes its watchdog action) or warning (the first) [default: action]
    #[arg(long, value_name = "STAGE")]
    pub stall_stage: Option<StallStage>,

    /// TOML file of endpoints (per-VM names and policies) and defaults; reloaded on SIGHUP
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Watch the QMP sockets that appear in DIR (and forget those that go); may be repeated
    #[arg(long, value_name = "DIR")]
    pub watch_dir: Vec<PathBuf>,

    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (for example 127.0.0.1:9717)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Run CMD (with /bin/sh -c) for every event and action record: the JSON record on stdin, VIGIL_VM, VIGIL_EVENT, VIGIL_POLICY (and VIGIL_TYPE, VIGIL_ACTION, VIGIL_STATUS, VIGIL_ENDPOINT) in the environment
    #[arg(long, value_name = "CMD")]
    pub notify: Option<String>,

    /// Kill a --notify command still running after SECS seconds
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub notify_timeout: Duration,

    /// At most N --notify commands at once (records beyond a queue of 1024 are dropped and counted)
    #[arg(long, value_name = "N", default_value = "4", value_parser = clap::value_parser!(u16).range(1..))]
    pub notify_jobs: u16,

    /// At most N dumps at once on this host; the others wait in order (0: no limit)
    #[arg(long, value_name = "N", default_value = "2")]
    pub max_dumps: usize,

    /// Directory for dumps (created, mode 0700, if missing); required by the coredump-* policies
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,

    /// Dump format; it is checked against query-dump-guest-memory-capability on connect
    #[arg(long, value_name = "FORMAT", default_value = "elf")]
    pub dump_format: DumpFormat,

    /// Write JSON-lines records to stdout
    #[arg(long)]
    pub json: bool,

    /// Append JSON-lines records to FILE
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,

    /// No human-readable lines on stderr
    #[arg(short, long)]
    pub quiet: bool,

    /// First reconnect delay, in seconds; it doubles after each failed attempt
    #[arg(long, value_name = "SECS", default_value = "0.1", value_parser = parse_secs)]
    pub reconnect_min: Duration,

    /// Longest reconnect delay, in seconds
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub reconnect_max: Duration,

    /// Timeout for connecting, the QMP greeting and each command, in seconds
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,

    /// The longest a dump may take, in seconds; a dump still running then is abandoned (its file removed, its slot freed, the VM left as it is) [default: 120 + 1 per 32 MiB of guest RAM]
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub dump_timeout: Option<Duration>,

    /// How often to ask query-dump for progress during a dump, in seconds
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_secs)]
    pub progress_interval: Duration,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse()
}

/// Seconds as a decimal number (`0.1`, `5`), from 1 ms to 1 day.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&v) {
        return Err(format!("{s} s is out of range (0.001 to 86400)"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Cli {
    /// The policies given on the command line (the others unset).
    pub fn policy_set(&self) -> PolicySet {
        PolicySet {
            on_panic: self.on_panic,
            on_crashloaded: self.on_crashloaded,
            on_stall: self.on_stall,
            on_watchdog: self.on_watchdog,
            on_shutdown: self.on_shutdown,
            stall_stage: self.stall_stage,
        }
    }

    /// The command line's policies over the defaults (`log`).
    pub fn policies(&self) -> Policies {
        self.policy_set().over(Policies::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_full_command_line() {
        let c = Cli::try_parse_from([
            "vigil",
            "--on-panic",
            "coredump-restart",
            "--on-stall",
            "coredump-destroy",
            "--on-watchdog",
            "log",
            "--stall-stage",
            "warning",
            "--dump-dir",
            "/d",
            "--dump-format",
            "kdump-raw-zlib",
            "--json",
            "--reconnect-max",
            "2.5",
            "unix:/run/a.qmp",
            "tcp:127.0.0.1:4444",
        ])
        .unwrap();
        let p = c.policies();
        assert_eq!(p.panic, Policy::CoredumpRestart);
        assert_eq!(p.stall, Policy::CoredumpDestroy);
        assert_eq!(p.watchdog, Policy::Log);
        assert_eq!(p.shutdown, Policy::Log);
        assert_eq!(p.stall_stage, StallStage::Warning);
        assert_eq!(c.dump_format, DumpFormat::KdumpRawZlib);
        assert_eq!(c.reconnect_max, Duration::from_millis(2500));
        assert_eq!(c.reconnect_min, Duration::from_millis(100));
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.max_dumps, 2);
    }

    #[test]
    fn fleet_options() {
        let c = Cli::try_parse_from([
            "vigil",
            "--config",
            "/etc/vigil.toml",
            "--watch-dir",
            "/run/vm",
            "--metrics",
            "127.0.0.1:9717",
            "--notify",
            "logger -t vigil",
            "--max-dumps",
            "1",
        ])
        .unwrap();
        assert!(c.endpoints.is_empty());
        assert_eq!(c.metrics, Some("127.0.0.1:9717".parse().unwrap()));
        assert_eq!(c.notify.as_deref(), Some("logger -t vigil"));
        assert_eq!((c.max_dumps, c.notify_jobs), (1, 4));
        assert!(Cli::try_parse_from(["vigil", "--metrics", "9717", "unix:/a"]).is_err());
        assert!(Cli::try_parse_from(["vigil", "--notify-jobs", "0", "unix:/a"]).is_err());
    }

    #[test]
    fn defaults_are_log() {
        let c = Cli::try_parse_from(["vigil", "unix:/a"]).unwrap();
        assert_eq!(c.policies(), Policies::default());
        assert_eq!(c.dump_format, DumpFormat::Elf);
    }

    #[test]
    fn rejects_bad_input() {
        for args in [
            &["vigil"][..],
            &["vigil", "/no/prefix.sock"],
            &["vigil", "--on-panic", "reboot", "unix:/a"],
            &["vigil", "--on-panic", "coredump_restart", "unix:/a"],
            &["vigil", "--dump-format", "kdump-gzip", "unix:/a"],
            &["vigil", "--stall-stage", "never", "unix:/a"],
            &["vigil", "--reconnect-max", "-1", "unix:/a"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("0.1").unwrap(), Duration::from_millis(100));
        assert!(parse_secs("0").is_err() && parse_secs("x").is_err() && parse_secs("1e9").is_err());
    }
}
