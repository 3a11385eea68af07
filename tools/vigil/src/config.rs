//! `--config FILE`: many VMs from one TOML file.
//!
//! ```toml
//! watch-dir = ["/run/vm"]          # optional: sockets appearing there are watched
//!
//! [defaults]                        # for every endpoint (command-line flags win)
//! on-panic = "coredump-restart"
//! on-stall = "coredump-destroy"
//! stall-stage = "action"
//!
//! [[endpoint]]
//! address = "unix:/run/vm/web1.qmp"
//! name = "web1"                     # optional: instead of QEMU's -name
//! on-panic = "destroy"              # optional: this VM's own policy
//! ```
//!
//! A policy of an endpoint comes from, first found: its `[[endpoint]]`
//! table, the command line (`--on-panic`, ...), `[defaults]`, `log`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::ValueEnum;
use serde::{Deserialize, Deserializer};

use crate::endpoint::Endpoint;
use crate::error::ConfigError;
use crate::policy::{Policies, Policy, StallStage};

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        <Policy as FromStr>::from_str(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for StallStage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        <StallStage as ValueEnum>::from_str(&s, false).map_err(|_| {
            serde::de::Error::custom(format!("unknown stall stage {s:?} (warning or action)"))
        })
    }
}

/// Policies some of which are set: a layer over others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicySet {
    pub on_panic: Option<Policy>,
    pub on_crashloaded: Option<Policy>,
    pub on_stall: Option<Policy>,
    pub on_watchdog: Option<Policy>,
    pub on_shutdown: Option<Policy>,
    pub stall_stage: Option<StallStage>,
}

impl PolicySet {
    /// `base` with the policies set here put over it.
    pub fn over(&self, base: Policies) -> Policies {
        Policies {
            panic: self.on_panic.unwrap_or(base.panic),
            crashloaded: self.on_crashloaded.unwrap_or(base.crashloaded),
            stall: self.on_stall.unwrap_or(base.stall),
            watchdog: self.on_watchdog.unwrap_or(base.watchdog),
            shutdown: self.on_shutdown.unwrap_or(base.shutdown),
            stall_stage: self.stall_stage.unwrap_or(base.stall_stage),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EndpointTable {
    address: String,
    name: Option<String>,
    on_panic: Option<Policy>,
    on_crashloaded: Option<Policy>,
    on_stall: Option<Policy>,
    on_watchdog: Option<Policy>,
    on_shutdown: Option<Policy>,
    stall_stage: Option<StallStage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default)]
    defaults: PolicySet,
    #[serde(default)]
    endpoint: Vec<EndpointTable>,
    #[serde(default)]
    watch_dir: Vec<PathBuf>,
}

/// One `[[endpoint]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    pub endpoint: Endpoint,
    pub name: Option<String>,
    pub policies: PolicySet,
}

/// A parsed configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetConfig {
    pub defaults: PolicySet,
    pub endpoints: Vec<EndpointConfig>,
    pub watch_dirs: Vec<PathBuf>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<FleetConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(path, &text)
}

/// Parses the text of a configuration file (`path` for messages).
pub fn parse(path: &Path, text: &str) -> Result<FleetConfig, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut endpoints = Vec::new();
    for t in f.endpoint {
        let endpoint: Endpoint = t.address.parse().map_err(|m| ConfigError::Endpoint {
            path: path.to_path_buf(),
            endpoint: t.address.clone(),
            message: m,
        })?;
        if t.name.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Endpoint {
                path: path.to_path_buf(),
                endpoint: t.address,
                message: "empty name".into(),
            });
        }
        endpoints.push(EndpointConfig {
            endpoint,
            name: t.name,
            policies: PolicySet {
                on_panic: t.on_panic,
                on_crashloaded: t.on_crashloaded,
                on_stall: t.on_stall,
                on_watchdog: t.on_watchdog,
                on_shutdown: t.on_shutdown,
                stall_stage: t.stall_stage,
            },
        });
    }
    Ok(FleetConfig {
        defaults: f.defaults,
        endpoints,
        watch_dirs: f.watch_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_endpoints_and_watch_dirs() {
        let c = parse(
            Path::new("t.toml"),
            r#"
watch-dir = ["/run/vm"]
[defaults]
on-panic = "coredump-restart"
stall-stage = "warning"

[[endpoint]]
address = "unix:/run/vm/web1.qmp"
name = "web1"
on-panic = "destroy"

[[endpoint]]
address = "tcp:127.0.0.1:4444"
"#,
        )
        .unwrap();
        assert_eq!(c.watch_dirs, vec![PathBuf::from("/run/vm")]);
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].name.as_deref(), Some("web1"));
        let base = c.defaults.over(Policies::default());
        assert_eq!(base.panic, Policy::CoredumpRestart);
        assert_eq!(base.stall_stage, StallStage::Warning);
        let p = c.endpoints[0].policies.over(base);
        assert_eq!(
            (p.panic, p.stall, p.stall_stage),
            (Policy::Destroy, Policy::Log, StallStage::Warning)
        );
        assert_eq!(
            c.endpoints[1].policies.over(base).panic,
            Policy::CoredumpRestart
        );
    }

    #[test]
    fn rejects_bad_files() {
        for (text, want) in [
            (
                "[[endpoint]]\naddress = \"/no/prefix\"\n",
                "unknown endpoint",
            ),
            (
                "[[endpoint]]\naddress = \"unix:/a\"\non-panic = \"reboot\"\n",
                "unknown policy",
            ),
            (
                "[[endpoint]]\naddress = \"unix:/a\"\nonpanic = \"destroy\"\n",
                "unknown field",
            ),
            (
                "[defaults]\nstall-stage = \"never\"\n",
                "unknown stall stage",
            ),
            ("[[endpoint]]\nname = \"x\"\n", "address"),
            (
                "[[endpoint]]\naddress = \"unix:/a\"\nname = \"\"\n",
                "empty name",
            ),
            ("this is not toml", "t.toml"),
        ] {
            let e = parse(Path::new("t.toml"), text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
