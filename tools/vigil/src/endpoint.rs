//! QMP endpoints: `unix:PATH` and `tcp:HOST:PORT`, and connecting to them:
//! a `unix:` peer is identified and checked before vigil says a word to it
//! (`peer.rs`); a `tcp:` one is unauthenticated.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::io::{self, Read};
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::peer::{self, Expect, Peer, PeerInfo, Refusal};

/// Where a QEMU QMP server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:/path/to/qmp.sock`
    Unix(PathBuf),
    /// `tcp:host:port` (an IPv6 host is written in brackets: `tcp:[::1]:4444`)
    Tcp { host: String, port: u16 },
}

pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: empty socket path (expected unix:PATH)"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected tcp:HOST:PORT"))?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                return Err(format!("{s:?}: empty host (expected tcp:HOST:PORT)"));
            }
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{s:?}: bad port {port:?} (expected tcp:HOST:PORT)"))?;
            if port == 0 {
                return Err(format!("{s:?}: port 0 (expected tcp:HOST:PORT)"));
            }
            Ok(Endpoint::Tcp {
                host: host.to_string(),
                port,
            })
        } else {
            Err(format!(
                "{s:?}: unknown endpoint (expected unix:PATH or tcp:HOST:PORT)"
            ))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl Endpoint {
    /// The name used for a VM whose QEMU has no `-name`: the socket's file
    /// name without its extension (`/run/vm/web1.qmp` gives `web1`), or
    /// `HOST-PORT` for TCP.
    pub fn fallback_name(&self) -> String {
        match self {
            Endpoint::Unix(p) => p
                .file_stem()
                .map(|s| {
                    let s = s.to_string_lossy();
                    // NAME.vigil.qmp: a socket of its own for vigil
                    s.strip_suffix(".vigil").unwrap_or(&s).to_string()
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "vm".to_string()),
            Endpoint::Tcp { host, port } => format!("{host}-{port}"),
        }
    }

    /// Opens a connection to the endpoint and, for `unix:`, checks who
    /// serves it ([`peer::check`] against `expect`, or against
    /// [`Expect::new`] of the endpoint's path when `None`; see `peer.rs`).
    /// A `tcp:` endpoint cannot be checked: given an `expect`, it is refused.
    pub async fn connect(&self, expect: Option<&Expect>) -> Result<Connection, ConnectError> {
        match self {
            Endpoint::Unix(p) => {
                let default;
                let expect = match expect {
                    Some(e) => e,
                    None => {
                        default = Expect::new(p.clone());
                        &default
                    }
                };
                connect_unix(p, expect).await
            }
            Endpoint::Tcp { host, port } => {
                if expect.is_some() {
                    return Err(ConnectError::Refused(Refusal::Other(
                        "a tcp: endpoint is unauthenticated: its peer cannot be checked".into(),
                    )));
                }
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let _ = s.set_nodelay(true);
                let addr = s.peer_addr().ok();
                let (r, w) = s.into_split();
                Ok(Connection {
                    read: Box::new(r),
                    write: Writer::Other(Box::new(w)),
                    peer: Peer::Tcp { addr },
                })
            }
        }
    }
}

/// An open connection: its halves, and who is at the other end.
pub struct Connection {
    pub read: ReadHalf,
    pub write: Writer,
    pub peer: Peer,
}

/// The writing half of a connection; a `unix:` one can carry descriptors.
pub enum Writer {
    Unix(tokio::net::unix::OwnedWriteHalf),
    Other(WriteHalf),
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Unix(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Other(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Unix(w) => Pin::new(w).poll_flush(cx),
            Writer::Other(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Unix(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Other(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Why [`Endpoint::connect`] gave no connection: it failed, or vigil
/// refused the peer.
#[derive(Debug)]
pub enum ConnectError {
    Io(io::Error),
    Refused(Refusal),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Refused(r) => write!(f, "peer refused ({}): {r}", r.reason()),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

impl From<Refusal> for ConnectError {
    fn from(r: Refusal) -> Self {
        ConnectError::Refused(r)
    }
}

/// The most of `/proc/PID/cgroup` read; a longer file gives no cgroup.
const CGROUP_FILE_MAX: usize = 16 << 10;

/// Connects and checks off the async thread: every step is a file system
/// or socket call a hostile QEMU user could make hang (a FUSE mount where
/// its socket was, a listener that never accepts with a full backlog); the
/// caller's timeout then gives up on it, and the watcher on the others.
async fn connect_unix(path: &Path, expect: &Expect) -> Result<Connection, ConnectError> {
    let (p, e) = (path.to_path_buf(), expect.clone());
    let (stream, info) = tokio::task::spawn_blocking(move || connect_unix_blocking(&p, &e))
        .await
        .map_err(|e| ConnectError::Io(io::Error::other(e.to_string())))??;
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (r, w) = stream.into_split();
    Ok(Connection {
        read: Box::new(r),
        write: Writer::Unix(w),
        peer: Peer::Unix(info),
    })
}

fn connect_unix_blocking(
    path: &Path,
    expect: &Expect,
) -> Result<(std::os::unix::net::UnixStream, PeerInfo), ConnectError> {
    // The file itself, not what a link points at: O_PATH | O_NOFOLLOW opens
    // a symbolic link as the link.
    let pinned = open_nofollow(path)?;
    let st = fstat(pinned.as_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => {}
        libc::S_IFLNK => return Err(Refusal::Symlink.into()),
        other => {
            return Err(Refusal::NotASocket {
                got: file_kind(other),
            }
            .into())
        }
    }
    let ino = (st.st_dev as u64, st.st_ino as u64);
    // Connect to that very inode, whatever the path names by now; without
    // /proc, by the path (the checks below still hold).
    let via = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
    let stream = match std::os::unix::net::UnixStream::connect(&via) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").is_dir() => {
            std::os::unix::net::UnixStream::connect(path)?
        }
        Err(e) => return Err(e.into()),
    };
    drop(pinned);
    let fd = stream.as_fd();
    let cred = peer_cred(fd)?;
    let pidfd = peer_pidfd(fd, cred.pid);
    let bound_path = peer_name(fd)?;
    let cgroup = read_cgroup(cred.pid, pidfd.as_ref().map(|p| p.as_fd()));
    // The path still names the socket vigil connected to.
    let now = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()));
    if now.as_ref().ok() != Some(&ino) {
        let now = match now {
            Ok((d, i)) => format!("device {d} inode {i}"),
            Err(e) => e.to_string(),
        };
        return Err(Refusal::Other(format!(
            "{path:?} changed while vigil connected (device {} inode {}, now {now})",
            ino.0, ino.1
        ))
        .into());
    }
    let info = PeerInfo {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        cgroup,
        bound_path,
        socket_owner: Some(st.st_uid),
        socket_ino: Some(ino),
    };
    // A relative configured path is relative to vigil's working directory
    // (a server that bound a relative path is compared with it as it is).
    let absolute;
    let expect =
        if expect.path.is_relative() && info.bound_path.as_deref().is_some_and(Path::is_absolute) {
            absolute = Expect {
                path: std::env::current_dir()?.join(&expect.path),
                ..expect.clone()
            };
            &absolute
        } else {
            expect
        };
    peer::check(expect, &info)?;
    Ok((stream, info))
}

fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "file of unknown type",
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn open_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; open
    // with O_PATH reads nothing else.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open for the call; fstat writes a whole `stat` to the
    // pointer it is given, which points to enough space.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; the kernel writes at most `len` bytes
    // to `cred`, which is that large, and both live across the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short SO_PEERCRED"));
    }
    Ok(cred)
}

/// `SO_PEERPIDFD` (Linux 6.5; the generic value, not the one of alpha,
/// mips, parisc, powerpc or sparc).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "s390x",
    target_arch = "loongarch64"
))]
const SO_PEERPIDFD: Option<libc::c_int> = Some(77);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)))]
const SO_PEERPIDFD: Option<libc::c_int> = None;

/// A pidfd of the peer: `SO_PEERPIDFD` (the process that called `listen()`,
/// however its pid was reused since), else `pidfd_open(pid)`.
fn peer_pidfd(fd: BorrowedFd<'_>, pid: i32) -> Option<OwnedFd> {
    if let Some(opt) = SO_PEERPIDFD {
        let mut pidfd: libc::c_int = -1;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is an open socket; the kernel writes at most `len`
        // bytes to `pidfd`, which is that large.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut pidfd as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 && pidfd >= 0 {
            // SAFETY: the kernel just installed this descriptor for us.
            return Some(unsafe { OwnedFd::from_raw_fd(pidfd) });
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOPROTOOPT) {
            // The kernel knows the option and has no live process for it.
            return None;
        }
    }
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return None;
    }
    // SAFETY: the kernel just installed this descriptor for us.
    Some(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Whether the process of `pidfd` has not exited.
fn alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks; `pidfd` is open
    // and the siginfo pointer is null, which the call allows.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    // EPERM: it exists, vigil may not signal it.
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The cgroup of `pid`, if it can be trusted: read (bounded) while the
/// process of `pidfd` is alive, so the pid was not reused meanwhile.
fn read_cgroup(pid: i32, pidfd: Option<BorrowedFd<'_>>) -> Option<String> {
    // Without a pidfd there is no telling whether the pid still names the
    // server (it may have exited and the pid been reused): no cgroup, so a
    // pin never matches.
    let pidfd = pidfd?;
    if pid <= 0 {
        return None;
    }
    let f = std::fs::File::open(format!("/proc/{pid}/cgroup")).ok()?;
    let mut text = Vec::new();
    f.take(CGROUP_FILE_MAX as u64 + 1)
        .read_to_end(&mut text)
        .ok()?;
    if text.len() > CGROUP_FILE_MAX {
        return None;
    }
    if !alive(pidfd) {
        return None;
    }
    peer::parse_cgroup(&text)
}

/// `getpeername`: the path the server bound, `None` for an unnamed or
/// abstract socket.
fn peer_name(fd: BorrowedFd<'_>) -> io::Result<Option<PathBuf>> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; the kernel writes at most `len` bytes
    // to `addr`, which is that large, and sets `len` to the address length.
    let r = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let offset = mem::offset_of!(libc::sockaddr_un, sun_path);
    let n = (len as usize)
        .saturating_sub(offset)
        .min(addr.sun_path.len());
    let raw: Vec<u8> = addr.sun_path[..n].iter().map(|&c| c as u8).collect();
    if raw.first().is_none_or(|&b| b == 0) {
        return Ok(None);
    }
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Ok(Some(PathBuf::from(OsStr::from_bytes(&raw[..end]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_and_tcp() {
        assert_eq!(
            "unix:/run/vm/a.qmp".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/vm/a.qmp".into())
        );
        assert_eq!(
            "tcp:localhost:4444".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "localhost".into(),
                port: 4444
            }
        );
        assert_eq!(
            "tcp:[::1]:4444".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 4444
            }
        );
    }

    #[test]
    fn rejects_bad_endpoints() {
        for bad in [
            "",
            "unix:",
            "/tmp/x.sock",
            "tcp:host",
            "tcp::44",
            "tcp:h:0",
            "tcp:h:99999",
            "tcp:h:x",
            "serial:/dev/x",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/a/b.sock", "tcp:127.0.0.1:4444", "tcp:[::1]:5"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn fallback_names() {
        assert_eq!(
            "unix:/run/vm/web1.qmp"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "web1"
        );
        assert_eq!(
            "unix:/run/vm/web1.vigil.sock"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "web1"
        );
        assert_eq!(
            "unix:/run/vm/qmp"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "qmp"
        );
        assert_eq!(
            "tcp:10.0.0.1:4444"
                .parse::<Endpoint>()
                .unwrap()
                .fallback_name(),
            "10.0.0.1-4444"
        );
    }

    fn own_uid() -> u32 {
        // SAFETY: geteuid cannot fail and touches no memory.
        unsafe { libc::geteuid() }
    }

    fn refusal(r: Result<Connection, ConnectError>) -> Refusal {
        match r {
            Err(ConnectError::Refused(r)) => r,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(c) => panic!("accepted: {:?}", c.peer),
        }
    }

    #[tokio::test]
    async fn checks_who_is_at_the_other_end() {
        let dir = crate::testutil::tempdir("endpoint");
        let a = dir.join("a.sock");
        let _la = std::os::unix::net::UnixListener::bind(&a).unwrap();

        // (c) a plain socket: our own process, uid and cgroup
        let c = Endpoint::Unix(a.clone()).connect(None).await.unwrap();
        let info = c.peer.info().expect("unix peer").clone();
        assert!(c.peer.authenticated());
        assert!(matches!(c.write, Writer::Unix(_)));
        assert_eq!(info.pid, std::process::id() as i32);
        assert_eq!(info.uid, own_uid());
        assert_eq!(info.socket_owner, Some(own_uid()));
        assert_eq!(info.bound_path.as_deref(), Some(a.as_path()));
        let own = peer::parse_cgroup(&std::fs::read("/proc/self/cgroup").unwrap());
        assert_eq!(info.cgroup, own);
        let m = std::fs::symlink_metadata(&a).unwrap();
        assert_eq!(info.socket_ino, Some((m.dev(), m.ino())));

        // (a) a symbolic link to a live socket
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let r = refusal(Endpoint::Unix(link).connect(None).await);
        assert_eq!(r, Refusal::Symlink);

        // (b) another socket renamed over the watched path keeps its address
        let b = dir.join("b.sock");
        let other = dir.join("other.sock");
        let _lo = std::os::unix::net::UnixListener::bind(&other).unwrap();
        std::fs::rename(&other, &b).unwrap();
        let r = refusal(Endpoint::Unix(b.clone()).connect(None).await);
        assert_eq!(
            r,
            Refusal::BoundPath {
                want: b.clone(),
                got: Some(other.clone())
            }
        );
        // also when the pinned expectation is otherwise right
        let e = Expect {
            uid: Some(own_uid()),
            cgroup: own.clone(),
            path: b.clone(),
        };
        assert_eq!(
            refusal(Endpoint::Unix(b).connect(Some(&e)).await).reason(),
            "bound-path"
        );

        // not a socket
        let f = dir.join("file");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(
            refusal(Endpoint::Unix(f).connect(None).await),
            Refusal::NotASocket {
                got: "regular file"
            }
        );
        assert_eq!(
            refusal(Endpoint::Unix(dir.clone()).connect(None).await),
            Refusal::NotASocket { got: "directory" }
        );

        // pinned uid and cgroup
        let ep = Endpoint::Unix(a.clone());
        let ok = Expect {
            uid: Some(own_uid()),
            cgroup: own.clone(),
            path: a.clone(),
        };
        ep.connect(Some(&ok)).await.unwrap();
        let wrong_uid = Expect {
            uid: Some(own_uid().wrapping_add(4242)),
            ..ok.clone()
        };
        assert_eq!(
            refusal(ep.connect(Some(&wrong_uid)).await).reason(),
            "socket-owner"
        );
        let wrong_cg = Expect {
            cgroup: Some("/vigil-test-no-such-cgroup".into()),
            ..ok.clone()
        };
        let r = refusal(ep.connect(Some(&wrong_cg)).await);
        assert_eq!(
            r,
            Refusal::PeerCgroup {
                want: "/vigil-test-no-such-cgroup".into(),
                got: own.clone()
            }
        );
        // an expectation for tcp: refused, not ignored
        let tcp = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 9,
        };
        assert_eq!(refusal(tcp.connect(Some(&ok)).await).reason(), "other");

        // a missing socket is a plain failure, not a refusal
        match Endpoint::Unix(dir.join("none.sock")).connect(None).await {
            Err(ConnectError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("connected to nothing"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn tcp_is_unauthenticated() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let c = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
        .connect(None)
        .await
        .unwrap();
        assert!(!c.peer.authenticated());
        assert!(matches!(c.peer, Peer::Tcp { addr: Some(_) }));
        assert!(matches!(c.write, Writer::Other(_)));
    }
}
