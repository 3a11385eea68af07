//! Policies (named like libvirt's `<on_crash>`), dump formats, and which
//! event triggers which policy.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use serde_json::Value;

/// What to do when a guest-health event arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    // Only log the event.
    Log,
    // Leave the VM as it is (paused, if QEMU paused it), for an operator.
    Preserve,
    // `quit`: end QEMU.
    Destroy,
    // `system_reset`, then `cont`.
    Restart,
    // Dump guest memory, then destroy.
    CoredumpDestroy,
    // Dump guest memory, then restart.
    CoredumpRestart,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Log => "log",
            Policy::Preserve => "preserve",
            Policy::Destroy => "destroy",
            Policy::Restart => "restart",
            Policy::CoredumpDestroy => "coredump-destroy",
            Policy::CoredumpRestart => "coredump-restart",
        }
    }

    pub fn dumps(self) -> bool {
        matches!(self, Policy::CoredumpDestroy | Policy::CoredumpRestart)
    }

    /// The step after the dump (or the only step): what happens to the VM.
    pub fn then(self) -> Option<Finish> {
        match self {
            Policy::Destroy | Policy::CoredumpDestroy => Some(Finish::Destroy),
            Policy::Restart | Policy::CoredumpRestart => Some(Finish::Restart),
            Policy::Log | Policy::Preserve => None,
        }
    }
}

/// What a policy does to the VM in the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Destroy,
    Restart,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Policy as ValueEnum>::from_str(s, false).map_err(|_| {
            format!(
                "unknown policy {s:?} (one of: log, preserve, destroy, restart, coredump-destroy, coredump-restart)"
            )
        })
    }
}

/// `dump-guest-memory` formats (QAPI `DumpGuestMemoryFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    /// ELF core file (readable by gdb and crash); always supported.
    Elf,
    /// kdump-compressed (makedumpfile format), zlib.
    KdumpZlib,
    /// kdump-compressed, lzo (if QEMU was built with lzo).
    KdumpLzo,
    /// kdump-compressed, snappy (if QEMU was built with snappy).
    KdumpSnappy,
    /// Raw assembled kdump-compressed, zlib (QEMU 8.2 and later).
    KdumpRawZlib,
    /// Raw assembled kdump-compressed, lzo.
    KdumpRawLzo,
    /// Raw assembled kdump-compressed, snappy.
    KdumpRawSnappy,
    /// Windows crash dump (x86 Windows guests with the vmcoreinfo device).
    WinDmp,
}

impl DumpFormat {
    /// The name QEMU uses.
    pub fn qapi_name(self) -> &'static str {
        match self {
            DumpFormat::Elf => "elf",
            DumpFormat::KdumpZlib => "kdump-zlib",
            DumpFormat::KdumpLzo => "kdump-lzo",
            DumpFormat::KdumpSnappy => "kdump-snappy",
            DumpFormat::KdumpRawZlib => "kdump-raw-zlib",
            DumpFormat::KdumpRawLzo => "kdump-raw-lzo",
            DumpFormat::KdumpRawSnappy => "kdump-raw-snappy",
            DumpFormat::WinDmp => "win-dmp",
        }
    }

    /// File name extension of a dump in this format.
    pub fn extension(self) -> &'static str {
        match self {
            DumpFormat::Elf => "elf",
            DumpFormat::WinDmp => "dmp",
            _ => "kdump",
        }
    }
}

impl fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qapi_name())
    }
}

/// Which `VCPU_STALL` stage makes `--on-stall` act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StallStage {
    /// The first expiry (and the action stage, if nothing is running by then).
    Warning,
    /// Only the second expiry, when QEMU takes its watchdog action.
    Action,
}

/// The events that have a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Panic,
    CrashLoaded,
    Stall,
    Watchdog,
    Shutdown,
}

impl Trigger {
    pub fn option(self) -> &'static str {
        match self {
            Trigger::Panic => "--on-panic",
            Trigger::CrashLoaded => "--on-crashloaded",
            Trigger::Stall => "--on-stall",
            Trigger::Watchdog => "--on-watchdog",
            Trigger::Shutdown => "--on-shutdown",
        }
    }
}

/// The policy of each event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies {
    pub panic: Policy,
    pub crashloaded: Policy,
    pub stall: Policy,
    pub watchdog: Policy,
    pub shutdown: Policy,
    pub stall_stage: StallStage,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            panic: Policy::Log,
            crashloaded: Policy::Log,
            stall: Policy::Log,
            watchdog: Policy::Log,
            shutdown: Policy::Log,
            stall_stage: StallStage::Action,
        }
    }
}

impl Policies {
    pub fn get(&self, t: Trigger) -> Policy {
        match t {
            Trigger::Panic => self.panic,
            Trigger::CrashLoaded => self.crashloaded,
            Trigger::Stall => self.stall,
            Trigger::Watchdog => self.watchdog,
            Trigger::Shutdown => self.shutdown,
        }
    }

    /// Every event's policy.
    fn all(&self) -> [Policy; 5] {
        [
            self.panic,
            self.crashloaded,
            self.stall,
            self.watchdog,
            self.shutdown,
        ]
    }

    /// Whether any policy changes the VM (anything but `log`).
    pub fn any_action(&self) -> bool {
        self.all().iter().any(|p| *p != Policy::Log)
    }

    pub fn any_dump(&self) -> bool {
        self.all().iter().any(|p| p.dumps())
    }
}

/// What to do with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An event with a policy that does something (`preserve` included).
    Act { trigger: Trigger, policy: Policy },
    /// An event with a policy, but only logged (policy `log`, or the event
    /// does not qualify: a stall warning, a host-initiated shutdown, ...).
    LogOnly {
        trigger: Option<Trigger>,
        reason: String,
    },
    /// Any other event: logged.
    Other,
}

/// Decides what to do with the event `name` carrying `data`.
pub fn decide(name: &str, data: &Value, p: &Policies) -> Decision {
    let trigger = match name {
        "GUEST_PANICKED" => Trigger::Panic,
        "GUEST_CRASHLOADED" => Trigger::CrashLoaded,
        "WATCHDOG" => Trigger::Watchdog,
        "VCPU_STALL" => {
            match data.get("stage").and_then(Value::as_str) {
                Some("action") => {}
                Some("warning") if p.stall_stage == StallStage::Warning => {}
                Some("warning") => {
                    return Decision::LogOnly {
                        trigger: Some(Trigger::Stall),
                        reason: "warning stage (--on-stall acts on the action stage)".into(),
                    }
                }
                other => {
                    return Decision::LogOnly {
                        trigger: Some(Trigger::Stall),
                        reason: format!(
                            "unknown stage {}",
                            other.map_or("(missing)".into(), |s| format!("{s:?}"))
                        ),
                    }
                }
            }
            Trigger::Stall
        }
        "SHUTDOWN" => {
            if data.get("guest").and_then(Value::as_bool) != Some(true) {
                return Decision::LogOnly {
                    trigger: Some(Trigger::Shutdown),
                    reason: "not initiated by the guest".into(),
                };
            }
            Trigger::Shutdown
        }
        _ => return Decision::Other,
    };
    match p.get(trigger) {
        Policy::Log => Decision::LogOnly {
            trigger: Some(trigger),
            reason: format!("policy log ({})", trigger.option()),
        },
        policy => Decision::Act { trigger, policy },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_names_round_trip() {
        for p in [
            Policy::Log,
            Policy::Preserve,
            Policy::Destroy,
            Policy::Restart,
            Policy::CoredumpDestroy,
            Policy::CoredumpRestart,
        ] {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        assert_eq!(
            "coredump-restart".parse::<Policy>().unwrap(),
            Policy::CoredumpRestart
        );
        assert!("coredump_restart".parse::<Policy>().is_err());
        assert!("rename-restart".parse::<Policy>().is_err());
        assert!("".parse::<Policy>().is_err());
    }

    #[test]
    fn policy_steps() {
        assert!(Policy::CoredumpDestroy.dumps() && Policy::CoredumpRestart.dumps());
        assert!(!Policy::Destroy.dumps() && !Policy::Log.dumps());
        assert_eq!(Policy::CoredumpRestart.then(), Some(Finish::Restart));
        assert_eq!(Policy::Destroy.then(), Some(Finish::Destroy));
        assert_eq!(Policy::Preserve.then(), None);
    }

    #[test]
    fn dump_formats() {
        for (s, f, ext) in [
            ("elf", DumpFormat::Elf, "elf"),
            ("kdump-zlib", DumpFormat::KdumpZlib, "kdump"),
            ("kdump-raw-snappy", DumpFormat::KdumpRawSnappy, "kdump"),
            ("win-dmp", DumpFormat::WinDmp, "dmp"),
        ] {
            assert_eq!(<DumpFormat as ValueEnum>::from_str(s, false).unwrap(), f);
            assert_eq!(f.qapi_name(), s);
            assert_eq!(f.extension(), ext);
        }
    }

    #[test]
    fn defaults_only_log() {
        let p = Policies::default();
        for (ev, data) in [
            ("GUEST_PANICKED", json!({"action": "pause"})),
            ("WATCHDOG", json!({"action": "reset"})),
            ("VCPU_STALL", json!({"stage": "action"})),
            (
                "SHUTDOWN",
                json!({"guest": true, "reason": "guest-shutdown"}),
            ),
        ] {
            assert!(
                matches!(decide(ev, &data, &p), Decision::LogOnly { .. }),
                "{ev}"
            );
        }
        assert!(!p.any_dump());
        assert_eq!(decide("RESET", &json!({}), &p), Decision::Other);
    }

    #[test]
    fn events_map_to_their_policy() {
        let p = Policies {
            panic: Policy::CoredumpRestart,
            crashloaded: Policy::Preserve,
            stall: Policy::CoredumpDestroy,
            watchdog: Policy::Restart,
            shutdown: Policy::Destroy,
            stall_stage: StallStage::Action,
        };
        let act = |ev: &str, data: Value| decide(ev, &data, &p);
        assert_eq!(
            act("GUEST_PANICKED", json!({"action": "pause"})),
            Decision::Act {
                trigger: Trigger::Panic,
                policy: Policy::CoredumpRestart
            }
        );
        assert_eq!(
            act("GUEST_CRASHLOADED", json!({"action": "run"})),
            Decision::Act {
                trigger: Trigger::CrashLoaded,
                policy: Policy::Preserve
            }
        );
        assert_eq!(
            act("WATCHDOG", json!({"action": "pause"})),
            Decision::Act {
                trigger: Trigger::Watchdog,
                policy: Policy::Restart
            }
        );
        assert_eq!(
            act(
                "SHUTDOWN",
                json!({"guest": true, "reason": "guest-shutdown"})
            ),
            Decision::Act {
                trigger: Trigger::Shutdown,
                policy: Policy::Destroy
            }
        );
        // our own quit, or an operator's, is not acted on
        assert!(matches!(
            act(
                "SHUTDOWN",
                json!({"guest": false, "reason": "host-qmp-quit"})
            ),
            Decision::LogOnly { .. }
        ));
        assert!(matches!(
            act("SHUTDOWN", json!(null)),
            Decision::LogOnly { .. }
        ));
    }

    #[test]
    fn stall_stages() {
        let mut p = Policies {
            stall: Policy::CoredumpDestroy,
            ..Policies::default()
        };
        let stall = |stage: Value, p: &Policies| {
            decide(
                "VCPU_STALL",
                &json!({"qom-path": "/machine/peripheral/stall", "cpu-index": 1,
                                          "budget-ms": 8000, "stage": stage}),
                p,
            )
        };
        assert!(matches!(
            stall(json!("warning"), &p),
            Decision::LogOnly { .. }
        ));
        assert_eq!(
            stall(json!("action"), &p),
            Decision::Act {
                trigger: Trigger::Stall,
                policy: Policy::CoredumpDestroy
            }
        );
        assert!(matches!(
            stall(json!("later"), &p),
            Decision::LogOnly { .. }
        ));
        assert!(matches!(stall(json!(7), &p), Decision::LogOnly { .. }));
        assert!(matches!(
            decide("VCPU_STALL", &json!("junk"), &p),
            Decision::LogOnly { .. }
        ));
        p.stall_stage = StallStage::Warning;
        assert_eq!(
            stall(json!("warning"), &p),
            Decision::Act {
                trigger: Trigger::Stall,
                policy: Policy::CoredumpDestroy
            }
        );
        assert_eq!(
            stall(json!("action"), &p),
            Decision::Act {
                trigger: Trigger::Stall,
                policy: Policy::CoredumpDestroy
            }
        );
    }
}
