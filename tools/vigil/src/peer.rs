//! Who is at the other end of a QMP socket, and whether vigil talks to it.
//!
//! vigil runs privileged beside many VMs; every QEMU, and everything QEMU's
//! user can do, is hostile. A VM's identity therefore comes from vigil's own
//! configuration (the socket path it was told to watch, and what the
//! configuration pins about the process serving it), never from the peer:
//! `query-name` is the peer's claim and is reported, not believed.
//!
//! [`Endpoint::connect`](crate::endpoint::Endpoint::connect) gathers a
//! [`PeerInfo`] for every `unix:` connection and [`check`] decides:
//!
//! * **No symbolic link.** The final component of the path is opened with
//!   `O_PATH | O_NOFOLLOW` and must be a socket; vigil connects to that very
//!   inode (through `/proc/self/fd/N`), then `lstat`s the path again and
//!   requires the same device and inode. A link renamed over the watched path
//!   ([`Refusal::Symlink`]) is refused, whatever it points at.
//!
//! * **The server's bound path** (`getpeername`) must be the configured path
//!   ([`Refusal::BoundPath`]). A listening socket keeps, for its whole life,
//!   the `sun_path` it was bound to: renaming or hard-linking the socket file
//!   (or a directory above it) moves the name, not the address. So a QEMU
//!   that renames db1's socket over web1's path, or a link to a root-only
//!   socket somewhere else, is caught even when every uid is the same: the
//!   other end says "I am `/run/vm/db1.qmp`". This is what defeats the
//!   rename and symlink attacks when all QEMUs run as one user in one
//!   directory (uids alone cannot tell two VMs apart). Paths are compared
//!   after lexical normalisation only ([`same_path`]: `//` and `/./` do not
//!   matter; symbolic links in the directories are *not* resolved, as that
//!   would let a swapped directory pass), so configure the path exactly as
//!   QEMU was given it (`/run/...`, not `/var/run/...`).
//!   A bound path that is relative (QEMU started with `-qmp unix:x.qmp`)
//!   names no location: it is accepted only when the configured path is the
//!   same relative path (vigil run by hand next to that QEMU); an absolute
//!   configured path never accepts a relative or empty one. (A relative
//!   configured path against an absolute bound one is first made absolute
//!   with vigil's working directory, by `Endpoint::connect`.)
//!
//! * **Users.** The socket file's owner (`lstat`, before connecting) and the
//!   server's `SO_PEERCRED` uid must both be the expected uid when one is
//!   configured (`peer-user`: [`Refusal::SocketOwner`], [`Refusal::PeerUid`]).
//!   With none configured they must equal each other: a socket file created
//!   by one user but served by another is refused. Root is accepted like any
//!   other uid in that default: a QEMU user can neither create a root-owned
//!   socket nor run a root process, and the bound-path rule already refuses
//!   a root-owned socket linked in from elsewhere, so a root peer is not
//!   something the threat can produce; a host that runs QEMU itself as root
//!   gets nothing from uids at all (the cgroup pin is its only identification).
//!   Set `peer-user` to make the uid strict.
//!
//! * **The cgroup pin** (`peer-cgroup`): the server's cgroup v2 path, read
//!   from `/proc/PID/cgroup` of the `SO_PEERCRED` pid, must match
//!   ([`Refusal::PeerCgroup`]). It defeats what the bound path cannot: a
//!   compromised QEMU that unlinks web1's socket and binds a new one at the
//!   very same path (same uid, same path; but its cgroup, e.g. its libvirt
//!   machine scope or systemd unit, is its own). An unreadable or ambiguous
//!   cgroup never matches a pin. The pid is taken together with a pidfd
//!   (`SO_PEERPIDFD`, or `pidfd_open` on kernels before 6.5) and the process
//!   must still be alive after its cgroup was read, so a recycled pid cannot
//!   lend another process's cgroup (with the `pidfd_open` fallback a listener
//!   that exited before vigil connected is still a window). `SO_PEERCRED`
//!   names the process that called `listen()`: if a manager creates the
//!   listening socket and hands it to QEMU, the manager is the peer and its
//!   cgroup is what the pin sees. The path is as seen in vigil's cgroup
//!   namespace.
//!
//! Pattern syntax of a pin ([`cgroup_matches`]): an absolute cgroup path,
//! compared component by component; `*` within a component matches any run
//! of characters other than `/` (libvirt's scopes carry a per-start id:
//! `/machine.slice/machine-qemu\x2d*\x2dweb1.scope`); the pin matches that
//! cgroup and every cgroup below it (QEMU may sit in a child such as
//! `.../libvirt/emulator`), and nothing beside it (`/a/vm-web1.service` does
//! not match `/a/vm-web1.service-x`). A `*` can match a `-` of a VM name:
//! pin with names that are not suffixes of one another, or spell the id.
//!
//! A `tcp:` endpoint is unauthenticated ([`Peer::Tcp`]): nothing here can be
//! checked and it cannot receive descriptors.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// What vigil learnt about the server of a `unix:` connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// `SO_PEERCRED`: the process that called `listen()` (0 if it is not
    /// visible in vigil's pid namespace).
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup v2 path of `pid` (the `0::/...` line of
    /// `/proc/PID/cgroup`); `None` if unreadable, ambiguous, or the process
    /// was gone by the time it was read.
    pub cgroup: Option<String>,
    /// `getpeername`: the `sun_path` the server bound; `None` for an
    /// unnamed or abstract socket.
    pub bound_path: Option<PathBuf>,
    /// The socket file's owner (`lstat` before connecting).
    pub socket_owner: Option<u32>,
    /// The socket file's (device, inode).
    pub socket_ino: Option<(u64, u64)>,
}

/// The other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A `unix:` socket that passed [`check`].
    Unix(PeerInfo),
    /// A `tcp:` endpoint: unauthenticated, cannot receive descriptors.
    Tcp { addr: Option<std::net::SocketAddr> },
    /// A stream handed over as it is (`Client::handshake`): nothing known.
    Unknown,
}

impl Peer {
    /// Whether the peer was checked ([`check`] passed on a `unix:` socket).
    pub fn authenticated(&self) -> bool {
        matches!(self, Peer::Unix(_))
    }

    pub fn info(&self) -> Option<&PeerInfo> {
        match self {
            Peer::Unix(i) => Some(i),
            _ => None,
        }
    }
}

/// What vigil requires of the server of a `unix:` socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// `peer-user`: the uid of the socket file and of the server. `None`:
    /// the two must be equal, whatever they are.
    pub uid: Option<u32>,
    /// `peer-cgroup`: a pattern (see the module documentation) the server's
    /// cgroup must match.
    pub cgroup: Option<String>,
    /// The configured socket path: the server must have bound it.
    pub path: PathBuf,
}

impl Expect {
    /// The default: the bound path must be `path`, the socket's owner and
    /// the server's uid must be equal, no cgroup pinned.
    pub fn new(path: impl Into<PathBuf>) -> Expect {
        Expect {
            uid: None,
            cgroup: None,
            path: path.into(),
        }
    }
}

/// Why vigil does not talk to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The socket path is a symbolic link.
    Symlink,
    /// The path is not a socket (`got`: what it is).
    NotASocket {
        got: &'static str,
    },
    SocketOwner {
        want: u32,
        got: u32,
    },
    PeerUid {
        want: u32,
        got: u32,
    },
    PeerCgroup {
        want: String,
        got: Option<String>,
    },
    BoundPath {
        want: PathBuf,
        got: Option<PathBuf>,
    },
    Other(String),
}

impl Refusal {
    /// A short stable name, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Symlink => "symlink",
            Refusal::NotASocket { .. } => "not-a-socket",
            Refusal::SocketOwner { .. } => "socket-owner",
            Refusal::PeerUid { .. } => "peer-uid",
            Refusal::PeerCgroup { .. } => "peer-cgroup",
            Refusal::BoundPath { .. } => "bound-path",
            Refusal::Other(_) => "other",
        }
    }
}

/// `Debug` of a string or path escapes quotes and control characters: what
/// came from the peer is shown quoted and escaped, never raw.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Symlink => write!(
                f,
                "the socket path is a symbolic link, expected the socket itself (vigil does not follow links)"
            ),
            Refusal::NotASocket { got } => write!(f, "expected a socket, found a {got}"),
            Refusal::SocketOwner { want, got } => {
                write!(f, "the socket file is owned by uid {got}, expected uid {want}")
            }
            Refusal::PeerUid { want, got } => write!(
                f,
                "the process serving the socket runs as uid {got}, expected uid {want}"
            ),
            Refusal::PeerCgroup { want, got: Some(got) } => write!(
                f,
                "the process serving the socket is in cgroup {got:?}, expected {want:?}"
            ),
            Refusal::PeerCgroup { want, got: None } => write!(
                f,
                "the cgroup of the process serving the socket is unknown, expected {want:?}"
            ),
            Refusal::BoundPath { want, got: Some(got) } => write!(
                f,
                "the server's socket is bound to {got:?}, expected {want:?} (a socket renamed or linked from elsewhere)"
            ),
            Refusal::BoundPath { want, got: None } => write!(
                f,
                "the server's socket has no path name, expected {want:?}"
            ),
            Refusal::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Refusal {}

/// Whether vigil may talk to the peer `info` describes. Rules, in order:
/// bound path, socket owner, peer uid, cgroup (see the module documentation).
pub fn check(expect: &Expect, info: &PeerInfo) -> Result<(), Refusal> {
    match &info.bound_path {
        Some(got) if same_path(&expect.path, got) => {}
        got => {
            return Err(Refusal::BoundPath {
                want: expect.path.clone(),
                got: got.clone(),
            })
        }
    }
    let Some(owner) = info.socket_owner else {
        return Err(Refusal::Other(
            "the socket file's owner is unknown".to_string(),
        ));
    };
    match expect.uid {
        Some(want) => {
            if owner != want {
                return Err(Refusal::SocketOwner { want, got: owner });
            }
            if info.uid != want {
                return Err(Refusal::PeerUid {
                    want,
                    got: info.uid,
                });
            }
        }
        // Nothing configured: whoever owns the socket file must be serving it.
        None => {
            if info.uid != owner {
                return Err(Refusal::PeerUid {
                    want: owner,
                    got: info.uid,
                });
            }
        }
    }
    if let Some(want) = &expect.cgroup {
        if !info
            .cgroup
            .as_deref()
            .is_some_and(|c| cgroup_matches(want, c))
        {
            return Err(Refusal::PeerCgroup {
                want: want.clone(),
                got: info.cgroup.clone(),
            });
        }
    }
    Ok(())
}

/// Whether the server's bound path `got` is the configured path `want`:
/// equal after lexical normalisation (`a//b`, `a/./b` and `a/b/` are `a/b`;
/// `..` and symbolic links are kept as they are). A relative `got` is only
/// equal to the same relative `want`; an empty one to nothing.
pub fn same_path(want: &Path, got: &Path) -> bool {
    if got.as_os_str().is_empty() || want.as_os_str().is_empty() {
        return false;
    }
    if want.is_absolute() != got.is_absolute() {
        return false;
    }
    fn norm(p: &Path) -> Vec<Component<'_>> {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    }
    norm(want) == norm(got)
}

/// The cgroup v2 path in the text of `/proc/PID/cgroup`: the one line
/// `0::PATH`. `None` if there is none, more than one (a cgroup name with a
/// newline could forge a line), or it is not an absolute UTF-8 path.
pub fn parse_cgroup(contents: &[u8]) -> Option<String> {
    let mut found = None;
    for line in contents.split(|&b| b == b'\n') {
        if let Some(path) = line.strip_prefix(b"0::") {
            if found.is_some() {
                return None;
            }
            found = Some(path);
        }
    }
    let path = std::str::from_utf8(found?).ok()?;
    path.starts_with('/').then(|| path.to_string())
}

/// Checks a `peer-cgroup` pattern: an absolute path, no empty, `.` or `..`
/// component (a trailing `/` is allowed), no control character, at most
/// 4096 bytes.
pub fn validate_cgroup_pattern(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute cgroup path (/...)"));
    }
    if p.len() > 4096 {
        return Err("longer than 4096 bytes".to_string());
    }
    if p.chars().any(char::is_control) {
        return Err(format!("{p:?} contains a control character"));
    }
    let body = p.strip_suffix('/').unwrap_or(p);
    for c in body.split('/').skip(1) {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("{p:?}: empty, . or .. component"));
        }
    }
    Ok(())
}

/// Whether the cgroup `cgroup` is the one `pattern` names or below it (see
/// the module documentation).
pub fn cgroup_matches(pattern: &str, cgroup: &str) -> bool {
    if !pattern.starts_with('/') || !cgroup.starts_with('/') {
        return false;
    }
    let comps = |s: &str| -> Vec<String> {
        s.split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (pat, cg) = (comps(pattern), comps(cgroup));
    pat.len() <= cg.len() && pat.iter().zip(&cg).all(|(p, c)| glob(p, c))
}

/// `*` matches any run of characters (within one component), the rest is
/// literal.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(uid: u32, owner: u32, bound: &str, cgroup: Option<&str>) -> PeerInfo {
        PeerInfo {
            pid: 1234,
            uid,
            gid: uid,
            cgroup: cgroup.map(str::to_string),
            bound_path: Some(bound.into()),
            socket_owner: Some(owner),
            socket_ino: Some((1, 2)),
        }
    }

    const WEB1: &str = "/run/vm/web1.qmp";
    const SCOPE: &str = "/machine.slice/machine-qemu\\x2d3\\x2dweb1.scope/libvirt/emulator";

    #[test]
    fn default_expectation() {
        let e = Expect::new(WEB1);
        assert_eq!(check(&e, &info(107, 107, WEB1, None)), Ok(()));
        // root is a uid like any other when nothing is configured
        assert_eq!(check(&e, &info(0, 0, WEB1, None)), Ok(()));
        // a socket file made by one user, served by another
        let r = check(&e, &info(107, 0, WEB1, None)).unwrap_err();
        assert_eq!(r, Refusal::PeerUid { want: 0, got: 107 });
        assert_eq!(r.reason(), "peer-uid");
        // the owner must be known
        let mut i = info(107, 107, WEB1, None);
        i.socket_owner = None;
        assert_eq!(check(&e, &i).unwrap_err().reason(), "other");
    }

    #[test]
    fn bound_path_must_be_the_configured_one() {
        let e = Expect::new(WEB1);
        // db1's socket renamed over web1's path still says it is db1's
        let r = check(&e, &info(107, 107, "/run/vm/db1.qmp", None)).unwrap_err();
        assert_eq!(
            r,
            Refusal::BoundPath {
                want: WEB1.into(),
                got: Some("/run/vm/db1.qmp".into())
            }
        );
        assert_eq!(r.reason(), "bound-path");
        assert!(r.to_string().contains("\"/run/vm/db1.qmp\""), "{r}");
        for ok in [
            "/run/vm//web1.qmp",
            "/run/vm/./web1.qmp",
            "/run//vm/web1.qmp/",
        ] {
            assert_eq!(check(&e, &info(1, 1, ok, None)), Ok(()), "{ok}");
        }
        for bad in [
            "web1.qmp",
            "vm/web1.qmp",
            "",
            "/run/vm/../vm/web1.qmp",
            "/var/run/vm/web1.qmp",
            "/run/vm/web1.qmp.old",
        ] {
            assert_eq!(
                check(&e, &info(1, 1, bad, None)).unwrap_err().reason(),
                "bound-path",
                "{bad:?}"
            );
        }
        let mut i = info(1, 1, WEB1, None);
        i.bound_path = None;
        let r = check(&e, &i).unwrap_err();
        assert_eq!(r.reason(), "bound-path");
        assert!(r.to_string().contains("no path name"), "{r}");
        // relative only against the same relative path
        let rel = Expect::new("x.qmp");
        assert_eq!(check(&rel, &info(1, 1, "x.qmp", None)), Ok(()));
        assert_eq!(check(&rel, &info(1, 1, "./x.qmp", None)), Ok(()));
        assert!(check(&rel, &info(1, 1, "/tmp/x.qmp", None)).is_err());
        assert!(check(&rel, &info(1, 1, "y/x.qmp", None)).is_err());
    }

    #[test]
    fn configured_uid() {
        let e = Expect {
            uid: Some(107),
            ..Expect::new(WEB1)
        };
        assert_eq!(check(&e, &info(107, 107, WEB1, None)), Ok(()));
        assert_eq!(
            check(&e, &info(107, 1000, WEB1, None)),
            Err(Refusal::SocketOwner {
                want: 107,
                got: 1000
            })
        );
        assert_eq!(
            check(&e, &info(1000, 107, WEB1, None)),
            Err(Refusal::PeerUid {
                want: 107,
                got: 1000
            })
        );
        // root is refused when another user is configured...
        assert_eq!(
            check(&e, &info(0, 0, WEB1, None)).unwrap_err().reason(),
            "socket-owner"
        );
        // ...and accepted when root is
        let root = Expect {
            uid: Some(0),
            ..Expect::new(WEB1)
        };
        assert_eq!(check(&root, &info(0, 0, WEB1, None)), Ok(()));
        assert_eq!(
            check(&root, &info(107, 107, WEB1, None))
                .unwrap_err()
                .reason(),
            "socket-owner"
        );
    }

    #[test]
    fn cgroup_pin() {
        let e = Expect {
            cgroup: Some("/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope".into()),
            ..Expect::new(WEB1)
        };
        assert_eq!(check(&e, &info(107, 107, WEB1, Some(SCOPE))), Ok(()));
        // another VM's QEMU that bound a socket at web1's path
        let db1 = "/machine.slice/machine-qemu\\x2d4\\x2ddb1.scope/libvirt/emulator";
        let r = check(&e, &info(107, 107, WEB1, Some(db1))).unwrap_err();
        assert_eq!(r.reason(), "peer-cgroup");
        assert!(r.to_string().contains("db1"), "{r}");
        // unknown never matches
        let r = check(&e, &info(107, 107, WEB1, None)).unwrap_err();
        assert_eq!(
            r,
            Refusal::PeerCgroup {
                want: "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope".into(),
                got: None
            }
        );
        assert!(r.to_string().contains("unknown"), "{r}");
        // the path checks come first
        assert_eq!(
            check(&e, &info(107, 107, "/run/vm/db1.qmp", Some(SCOPE)))
                .unwrap_err()
                .reason(),
            "bound-path"
        );
    }

    #[test]
    fn cgroup_patterns() {
        let unit = "/system.slice/vm-web1.service";
        assert!(cgroup_matches(unit, unit));
        assert!(cgroup_matches(unit, "/system.slice/vm-web1.service/qemu"));
        assert!(cgroup_matches("/system.slice/vm-web1.service/", unit));
        assert!(!cgroup_matches(unit, "/system.slice/vm-web1.service-x"));
        assert!(!cgroup_matches(unit, "/system.slice"));
        assert!(!cgroup_matches(unit, "/system.slice/vm-web10.service"));
        assert!(!cgroup_matches(unit, "system.slice/vm-web1.service"));
        assert!(cgroup_matches("/", "/anything/at/all"));
        assert!(cgroup_matches("/system.slice/vm-*.service", unit));
        assert!(cgroup_matches("/*/vm-web1.service", unit));
        assert!(!cgroup_matches("/*", "/"));
        assert!(!cgroup_matches(
            "/system.slice/vm-*.service",
            "/system.slice/x/vm-a.service"
        ));
        let pin = "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope";
        assert!(cgroup_matches(pin, SCOPE));
        assert!(!cgroup_matches(
            pin,
            "/machine.slice/machine-qemu\\x2d3\\x2dweb10.scope"
        ));
        assert!(!cgroup_matches(
            pin,
            "/machine.slice/machine-qemu\\x2d3\\x2ddb1.scope"
        ));
        // `*` does not cross a `/`
        assert!(!cgroup_matches("/a*b", "/a/b"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(glob("**", ""));
        assert!(!glob("a*", "ba"));

        for ok in [
            unit,
            "/",
            "/a/",
            "/machine.slice/machine-qemu\\x2d*\\x2dweb1.scope",
        ] {
            assert_eq!(validate_cgroup_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "system.slice",
            "/a//b",
            "/a/../b",
            "/a/./b",
            "/a\nb",
            "//",
        ] {
            assert!(validate_cgroup_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(validate_cgroup_pattern(&format!("/{}", "x".repeat(5000))).is_err());
    }

    #[test]
    fn parses_proc_cgroup() {
        assert_eq!(parse_cgroup(b"0::/\n").as_deref(), Some("/"));
        assert_eq!(
            parse_cgroup(b"12:pids:/x\n1:name=systemd:/y\n0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        // a cgroup name with a newline that forges a second line
        assert_eq!(
            parse_cgroup(b"0::/user.slice/x\n0::/machine.slice/web1\n"),
            None
        );
        for bad in [&b""[..], b"1:cpu:/a\n", b"0::relative\n", b"0::/\xff\n"] {
            assert_eq!(parse_cgroup(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refusals_name_what_was_expected_and_what_came() {
        let all = [
            (Refusal::Symlink, "symlink"),
            (
                Refusal::NotASocket {
                    got: "regular file",
                },
                "not-a-socket",
            ),
            (Refusal::SocketOwner { want: 1, got: 2 }, "socket-owner"),
            (Refusal::PeerUid { want: 1, got: 2 }, "peer-uid"),
            (
                Refusal::PeerCgroup {
                    want: "/a".into(),
                    got: Some("/b\u{1b}[2J\n".into()),
                },
                "peer-cgroup",
            ),
            (
                Refusal::BoundPath {
                    want: "/a".into(),
                    got: Some("/b\n\u{7}".into()),
                },
                "bound-path",
            ),
            (Refusal::Other("x".into()), "other"),
        ];
        for (r, reason) in all {
            assert_eq!(r.reason(), reason);
            let s = r.to_string();
            assert!(!s.chars().any(char::is_control), "{s:?}");
        }
        let s = Refusal::SocketOwner { want: 107, got: 0 }.to_string();
        assert!(s.contains("uid 0") && s.contains("expected uid 107"), "{s}");
        let s = Refusal::NotASocket { got: "directory" }.to_string();
        assert!(s.contains("directory"), "{s}");
    }

    #[test]
    fn peer_kinds() {
        let p = Peer::Unix(info(1, 1, WEB1, None));
        assert!(p.authenticated());
        assert!(p.info().is_some());
        assert!(!Peer::Tcp { addr: None }.authenticated());
        assert!(Peer::Unknown.info().is_none());
    }
}
