//! `--config FILE`: many VMs from one TOML file.
//!
//! ```toml
//! watch-dir = ["/run/vm"]          # optional: sockets appearing there are watched
//!
//! [defaults]                        # for every endpoint (command-line flags win)
//! on-panic = "coredump-restart"
//! on-stall = "coredump-destroy"
//! stall-stage = "action"
//! peer-user = "qemu"                # optional: who must serve unix: sockets
//!
//! [[endpoint]]
//! address = "unix:/run/vm/web1.qmp"
//! name = "web1"                     # optional: instead of QEMU's -name
//! on-panic = "destroy"              # optional: this VM's own policy
//! peer-user = "qemu"                # optional: a user name or a uid
//! peer-cgroup = "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope"  # optional
//! ```
//!
//! A policy of an endpoint comes from, first found: its `[[endpoint]]`
//! table, the command line (`--on-panic`, ...), `[defaults]`, `log`.
//!
//! `peer-user` and `peer-cgroup` say who must be at the other end of a
//! `unix:` socket ([`crate::peer`]): `peer-user` is the owner of the socket
//! file and the user of the process serving it (a name, looked up when the
//! file is read, or a uid; `[defaults]` gives it to every `unix:` endpoint
//! without one); `peer-cgroup` pins one VM to its cgroup (per endpoint only).
//! A `tcp:` endpoint is unauthenticated: neither key is accepted for one.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::ValueEnum;
use serde::{Deserialize, Deserializer};

use crate::endpoint::Endpoint;
use crate::error::ConfigError;
use crate::peer::{self, Expect};
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

/// `peer-user` as written: a name (or a uid in a string), or a uid.
#[derive(Clone, Debug, PartialEq, Eq)]
enum UserSpec {
    Name(String),
    Id(i64),
}

impl<'de> Deserialize<'de> for UserSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = UserSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a user name or a uid")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UserSpec, E> {
                Ok(UserSpec::Name(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<UserSpec, E> {
                Ok(UserSpec::Id(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<UserSpec, E> {
                Ok(UserSpec::Id(i64::try_from(v).unwrap_or(-1)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The uid `peer-user` names: a user name (looked up), else a decimal uid.
fn resolve_user(spec: &UserSpec) -> Result<u32, String> {
    let uid = |n: i64| match u32::try_from(n) {
        Ok(u) if u != u32::MAX => Ok(u),
        _ => Err(format!("peer-user {n}: not a valid uid")),
    };
    match spec {
        UserSpec::Id(n) => uid(*n),
        UserSpec::Name(s) if s.is_empty() => Err("peer-user: empty user name".to_string()),
        UserSpec::Name(s) => match lookup_user(s) {
            Ok(Some(u)) => Ok(u),
            Ok(None) if s.bytes().all(|b| b.is_ascii_digit()) => match s.parse::<i64>() {
                Ok(n) => uid(n),
                Err(_) => Err(format!("peer-user {s:?}: not a valid uid")),
            },
            Ok(None) => Err(format!("peer-user {s:?}: no such user")),
            Err(e) => Err(format!("peer-user {s:?}: cannot look it up: {e}")),
        },
    }
}

/// `getpwnam_r`: the uid of user `name`, `None` if there is no such user.
fn lookup_user(name: &str) -> std::io::Result<Option<u32>> {
    let Ok(c) = std::ffi::CString::new(name) else {
        return Ok(None);
    };
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: passwd is plain data; all zeroes is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf` is `size`
        // bytes long; getpwnam_r writes only into `pwd`, `buf` and `result`.
        let r =
            unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), size, &mut result) };
        if r == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        return Ok((!result.is_null()).then_some(pwd.pw_uid));
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
    peer_user: Option<UserSpec>,
    peer_cgroup: Option<String>,
}

/// `[defaults]`: the policies, and the peer user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DefaultsTable {
    on_panic: Option<Policy>,
    on_crashloaded: Option<Policy>,
    on_stall: Option<Policy>,
    on_watchdog: Option<Policy>,
    on_shutdown: Option<Policy>,
    stall_stage: Option<StallStage>,
    peer_user: Option<UserSpec>,
    /// Only to say where it belongs.
    peer_cgroup: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default)]
    defaults: DefaultsTable,
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
    /// `peer-user` resolved to a uid: the endpoint's own, else
    /// `[defaults]`'s (`unix:` endpoints only).
    pub peer_uid: Option<u32>,
    /// `peer-cgroup`: a checked pattern (see `peer.rs`).
    pub peer_cgroup: Option<String>,
}

impl EndpointConfig {
    /// What the server of this endpoint must be; `None` for `tcp:`, which is
    /// unauthenticated.
    pub fn expect(&self) -> Option<Expect> {
        match &self.endpoint {
            Endpoint::Unix(path) => Some(Expect {
                uid: self.peer_uid,
                cgroup: self.peer_cgroup.clone(),
                path: path.clone(),
            }),
            Endpoint::Tcp { .. } => None,
        }
    }
}

/// A parsed configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetConfig {
    pub defaults: PolicySet,
    pub endpoints: Vec<EndpointConfig>,
    pub watch_dirs: Vec<PathBuf>,
    /// `[defaults]` `peer-user` as a uid: for every `unix:` endpoint without
    /// its own, those of the command line and watched directories too.
    pub peer_uid: Option<u32>,
}

impl FleetConfig {
    /// What the server of `ep` must be: its `[[endpoint]]`'s expectation if
    /// it has one, else the default peer user; `None` for `tcp:`.
    pub fn expect(&self, ep: &Endpoint) -> Option<Expect> {
        if let Some(e) = self.endpoints.iter().find(|e| &e.endpoint == ep) {
            return e.expect();
        }
        match ep {
            Endpoint::Unix(path) => Some(Expect {
                uid: self.peer_uid,
                ..Expect::new(path.clone())
            }),
            Endpoint::Tcp { .. } => None,
        }
    }
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
    let d = f.defaults;
    let in_defaults = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!("[defaults] {message}"),
    };
    if d.peer_cgroup.is_some() {
        return Err(in_defaults(
            "peer-cgroup pins one VM: set it in that VM's [[endpoint]]".into(),
        ));
    }
    let default_uid = d.peer_user.as_ref().map(resolve_user).transpose();
    let default_uid = default_uid.map_err(in_defaults)?;
    let mut endpoints = Vec::new();
    for t in f.endpoint {
        let bad = |message: String| ConfigError::Endpoint {
            path: path.to_path_buf(),
            endpoint: t.address.clone(),
            message,
        };
        let endpoint: Endpoint = t.address.parse().map_err(bad)?;
        if t.name.as_deref().is_some_and(str::is_empty) {
            return Err(bad("empty name".into()));
        }
        let unix = matches!(endpoint, Endpoint::Unix(_));
        if !unix && (t.peer_user.is_some() || t.peer_cgroup.is_some()) {
            return Err(bad(
                "peer-user and peer-cgroup need a unix: endpoint (a tcp: endpoint is unauthenticated)"
                    .into(),
            ));
        }
        let own_uid = t.peer_user.as_ref().map(resolve_user).transpose();
        let peer_uid = own_uid.map_err(bad)?.or(default_uid.filter(|_| unix));
        if let Some(c) = &t.peer_cgroup {
            peer::validate_cgroup_pattern(c).map_err(|m| bad(format!("peer-cgroup: {m}")))?;
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
            peer_uid,
            peer_cgroup: t.peer_cgroup,
        });
    }
    Ok(FleetConfig {
        defaults: PolicySet {
            on_panic: d.on_panic,
            on_crashloaded: d.on_crashloaded,
            on_stall: d.on_stall,
            on_watchdog: d.on_watchdog,
            on_shutdown: d.on_shutdown,
            stall_stage: d.stall_stage,
        },
        endpoints,
        watch_dirs: f.watch_dir,
        peer_uid: default_uid,
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

    #[test]
    fn peer_user_and_cgroup() {
        let c = parse(
            Path::new("t.toml"),
            r#"
[defaults]
peer-user = "root"

[[endpoint]]
address = "unix:/run/vm/web1.qmp"
peer-user = 107
peer-cgroup = "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope"

[[endpoint]]
address = "unix:/run/vm/db1.qmp"

[[endpoint]]
address = "unix:/run/vm/x.qmp"
peer-user = "4242"

[[endpoint]]
address = "tcp:127.0.0.1:4444"
"#,
        )
        .unwrap();
        assert_eq!(c.peer_uid, Some(0));
        let e = &c.endpoints;
        assert_eq!(e[0].peer_uid, Some(107));
        assert_eq!(
            e[0].peer_cgroup.as_deref(),
            Some("/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope")
        );
        assert_eq!(
            e[0].expect(),
            Some(Expect {
                uid: Some(107),
                cgroup: e[0].peer_cgroup.clone(),
                path: "/run/vm/web1.qmp".into()
            })
        );
        // [defaults] for a unix: endpoint without its own
        assert_eq!(
            (e[1].peer_uid, e[1].peer_cgroup.as_deref()),
            (Some(0), None)
        );
        assert_eq!(e[2].peer_uid, Some(4242));
        // not for tcp:, which has no expectation
        assert_eq!(e[3].peer_uid, None);
        assert_eq!(e[3].expect(), None);
        // endpoints from elsewhere (command line, watched directories)
        let other: Endpoint = "unix:/run/vm/new.qmp".parse().unwrap();
        assert_eq!(
            c.expect(&other),
            Some(Expect {
                uid: Some(0),
                ..Expect::new("/run/vm/new.qmp")
            })
        );
        assert_eq!(c.expect(&e[0].endpoint), e[0].expect());
        assert_eq!(c.expect(&"tcp:h:1".parse().unwrap()), None);
        // nothing configured
        let c = parse(Path::new("t.toml"), "[[endpoint]]\naddress = \"unix:/a\"\n").unwrap();
        assert_eq!(c.peer_uid, None);
        assert_eq!(c.endpoints[0].expect(), Some(Expect::new("/a")));
    }

    #[test]
    fn rejects_bad_peer_settings() {
        let ep = "[[endpoint]]\naddress = \"unix:/run/vm/a.qmp\"\n";
        for (text, want) in [
            (
                format!("{ep}peer-user = \"no-such-user-vigil-test\"\n"),
                "endpoint unix:/run/vm/a.qmp: peer-user \"no-such-user-vigil-test\": no such user",
            ),
            (
                format!("{ep}peer-user = -1\n"),
                "a.qmp: peer-user -1: not a valid uid",
            ),
            (
                format!("{ep}peer-user = 4294967295\n"),
                "a.qmp: peer-user 4294967295: not a valid uid",
            ),
            (
                format!("{ep}peer-user = \"99999999999\"\n"),
                "a.qmp: peer-user 99999999999: not a valid uid",
            ),
            (
                format!("{ep}peer-user = \"\"\n"),
                "a.qmp: peer-user: empty user name",
            ),
            (format!("{ep}peer-user = true\n"), "a user name or a uid"),
            (
                format!("{ep}peer-cgroup = \"machine.slice\"\n"),
                "a.qmp: peer-cgroup: \"machine.slice\" is not an absolute cgroup path",
            ),
            (
                format!("{ep}peer-cgroup = \"/a//b\"\n"),
                "a.qmp: peer-cgroup:",
            ),
            (
                "[[endpoint]]\naddress = \"tcp:h:1\"\npeer-user = \"root\"\n".into(),
                "endpoint tcp:h:1: peer-user and peer-cgroup need a unix: endpoint",
            ),
            (
                "[[endpoint]]\naddress = \"tcp:h:1\"\npeer-cgroup = \"/a\"\n".into(),
                "tcp:h:1: peer-user and peer-cgroup need a unix: endpoint",
            ),
            (
                "[defaults]\npeer-user = \"no-such-user-vigil-test\"\n".into(),
                "t.toml: [defaults] peer-user \"no-such-user-vigil-test\": no such user",
            ),
            (
                "[defaults]\npeer-cgroup = \"/a\"\n".into(),
                "[defaults] peer-cgroup pins one VM",
            ),
            (format!("{ep}peer-users = \"root\"\n"), "unknown field"),
        ] {
            let e = parse(Path::new("t.toml"), &text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
