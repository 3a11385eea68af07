//! A small QMP client over tokio and serde_json.
//!
//! Why not the `qapi` crate: its tokio stream decodes each message into
//! `QmpMessage<Any>`, whose `Event` is a closed enum generated from the QEMU
//! schema bundled with the crate. An event that schema does not know, such as
//! vigil's `VCPU_STALL`, fails to decode, and the decode error ends the stream
//! (tested with qapi 0.15: the events after it are lost). A watcher must carry
//! any event as plain JSON and must survive garbage on the wire, so messages
//! here are `serde_json::Value`s and the reader never gives up on a bad line.
//!
//! The client sends each command with a numeric `id` and matches responses by
//! it; everything else the server sends goes, as a [`Notice`], to the
//! session's [`Queue`] (events, malformed lines and unexpected messages, all
//! of them, in order: nothing is dropped, see `queue.rs`), and events also to
//! the actions that wait for one ([`Client::subscribe`]).
//!
//! The replies vigil reads are decoded into the typed structures below
//! ([`Client::query`]); events stay plain JSON.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::endpoint::{ConnectError, Endpoint, ReadHalf, WriteHalf, Writer};
use crate::peer::{Expect, Peer, Refusal};
use crate::queue::Queue;

/// The session's view of a connection's notices.
pub type Events = Arc<Queue>;

/// How many events an action's subscription holds before it drops (an action
/// waits for one `RESET` or `DUMP_COMPLETED`; the session queue has them all).
const SUBSCRIPTION: usize = 256;

/// `query-name`
#[derive(Debug, Default, Deserialize)]
pub struct NameInfo {
    pub name: Option<String>,
}

/// `query-status`
#[derive(Debug, Deserialize)]
pub struct StatusInfo {
    pub status: String,
    #[serde(default)]
    pub running: bool,
}

/// `query-memory-size-summary`
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MemorySizeSummary {
    #[serde(default)]
    pub base_memory: u64,
    #[serde(default)]
    pub plugged_memory: u64,
}

impl MemorySizeSummary {
    /// Base plus plugged memory; `None` if the peer's numbers overflow.
    pub fn total(&self) -> Option<u64> {
        self.base_memory.checked_add(self.plugged_memory)
    }
}

/// `query-dump-guest-memory-capability`
#[derive(Debug, Deserialize)]
pub struct DumpCapability {
    pub formats: Vec<String>,
}

/// `query-dump`, and the `result` of `DUMP_COMPLETED`
#[derive(Debug, Deserialize)]
pub struct DumpQueryResult {
    pub status: String,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub total: u64,
}

/// The data of `DUMP_COMPLETED`
#[derive(Debug, Deserialize)]
pub struct DumpCompleted {
    pub result: DumpQueryResult,
    pub error: Option<String>,
}

/// Longest line accepted from the server; longer ones are dropped (and
/// reported), the connection goes on. No more than this is buffered for one
/// message. libvirt caps a monitor reply at 10 MiB; vigil's own replies are
/// small, so its cap is lower.
pub const MAX_LINE: usize = 1 << 20;
const _: () = assert!(MAX_LINE <= 10 << 20);

/// How much of the start of an overlong line is kept for its report.
pub const SKIPPED_HEAD: usize = 256;

pub use crate::message::{Notice, QmpEvent};

#[derive(Debug)]
pub enum QmpError {
    Io(io::Error),
    /// The server does not speak QMP (bad greeting, ...).
    Protocol(String),
    /// QEMU answered the command with an error.
    Command {
        class: String,
        desc: String,
    },
    Timeout(&'static str),
    Disconnected,
    /// The reply is not what the command returns.
    Decode {
        command: String,
        error: String,
    },
    /// vigil refused the peer (`peer.rs`): nothing was said to it.
    Refused(Refusal),
    /// The connection cannot carry a descriptor (why).
    NoFdPassing(&'static str),
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Io(e) => write!(f, "{e}"),
            QmpError::Protocol(s) => write!(f, "protocol error: {s}"),
            QmpError::Command { class, desc } => write!(f, "{desc} ({class})"),
            QmpError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            QmpError::Disconnected => write!(f, "connection closed"),
            QmpError::Decode { command, error } => {
                write!(f, "unexpected answer to {command}: {error}")
            }
            QmpError::Refused(r) => write!(f, "peer refused ({}): {r}", r.reason()),
            QmpError::NoFdPassing(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for QmpError {}

impl From<io::Error> for QmpError {
    fn from(e: io::Error) -> Self {
        QmpError::Io(e)
    }
}

impl From<ConnectError> for QmpError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Io(e) => QmpError::Io(e),
            ConnectError::Refused(r) => QmpError::Refused(r),
        }
    }
}

type Reply = Result<Value, QmpError>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Every notice, for the session; closed by the reader at EOF.
    queue: Events,
    /// Actions waiting for an event; dropped by the reader at EOF.
    subscribers: Mutex<Option<Vec<mpsc::Sender<QmpEvent>>>>,
}

/// A negotiated QMP connection. Dropping it closes the connection.
pub struct Client {
    writer: tokio::sync::Mutex<Writer>,
    peer: Peer,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: AbortHandle,
    greeting: Value,
    timeout: Duration,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (without its newline) in the buffer.
    Line,
    /// A line longer than the limit was skipped.
    TooLong(usize),
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, keeping at most `max` bytes:
/// a longer line is consumed and reported, never buffered whole (`buf` then
/// holds its first [`SKIPPED_HEAD`] bytes, for the report). `buf` never
/// grows past `max`. A last line without newline before EOF counts as a line.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    // the length of an overlong line so far; 0 while within the limit
    let mut skipped = 0usize;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if skipped > 0 {
                Line::TooLong(skipped)
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Line
            });
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1),
            None => (avail, avail.len()),
        };
        if skipped == 0 && buf.len() + chunk.len() <= max {
            reserve_within(buf, chunk.len(), max);
            buf.extend_from_slice(chunk);
        } else {
            if skipped == 0 {
                // over the limit: keep the head only
                skipped = buf.len();
                let keep = SKIPPED_HEAD.min(max);
                if buf.len() < keep {
                    let more = (keep - buf.len()).min(chunk.len());
                    reserve_within(buf, more, max);
                    buf.extend_from_slice(&chunk[..more]);
                }
                buf.truncate(keep);
            }
            skipped = skipped.saturating_add(chunk.len());
        }
        let newline = done > chunk.len();
        r.consume(done);
        if newline {
            return Ok(if skipped > 0 {
                Line::TooLong(skipped)
            } else {
                Line::Line
            });
        }
    }
}

/// Makes room for `more` bytes (`buf.len() + more <= max`), doubling the
/// capacity but never past `max` (`Vec`'s own growth could double it to
/// almost twice the limit).
fn reserve_within(buf: &mut Vec<u8>, more: usize, max: usize) {
    let need = buf.len() + more;
    if need > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).min(max).max(need);
        buf.reserve_exact(target - buf.len());
    }
}

/// Shortens input for a log message, with control characters escaped (a
/// log line never carries a NUL or a terminal escape from the wire). Only
/// the first few hundred bytes are looked at, whatever the input's size.
pub fn excerpt(bytes: &[u8]) -> String {
    const CHARS: usize = 120;
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    // a char is at most 4 bytes: this is more than CHARS of them
    let cut = bytes.len().min((CHARS + 1) * 4);
    let s = String::from_utf8_lossy(&bytes[..cut]);
    let more = cut < bytes.len();
    let s = if more { s.trim_start() } else { s.trim() };
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == CHARS {
            out.push_str("...");
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if more {
        out.push_str("...");
    }
    out
}

/// What one line from the server is.
#[derive(Debug, PartialEq)]
pub enum Message {
    Greeting(Value),
    Event(QmpEvent),
    Response {
        id: Option<Value>,
        reply: Result<Value, (String, String)>,
    },
    Blank,
    Malformed(String),
    Unexpected(String),
}

/// Classifies one line (no I/O; the unit of the malformed-input handling).
pub fn parse_message(line: &[u8]) -> Message {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Message::Blank;
    }
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Message::Malformed(format!("invalid JSON ({e}): {}", excerpt(line))),
    };
    let Some(obj) = v.as_object() else {
        return Message::Unexpected(format!("not a JSON object: {}", excerpt(line)));
    };
    if let Some(name) = obj.get("event") {
        let Some(name) = name.as_str() else {
            return Message::Unexpected(format!("event name is not a string: {}", excerpt(line)));
        };
        let timestamp = obj.get("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_i64()?,
                t.get("microseconds")?.as_i64()?,
            ))
        });
        return Message::Event(QmpEvent {
            name: name.to_string(),
            data: obj.get("data").cloned().unwrap_or_else(|| json!({})),
            timestamp,
        });
    }
    let id = obj.get("id").cloned();
    if let Some(r) = obj.get("return") {
        return Message::Response {
            id,
            reply: Ok(r.clone()),
        };
    }
    if let Some(e) = obj.get("error") {
        let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (class, mut desc) = (field("class"), field("desc"));
        if desc.is_empty() {
            desc = excerpt(e.to_string().as_bytes());
        }
        return Message::Response {
            id,
            reply: Err((class, desc)),
        };
    }
    if obj.contains_key("QMP") {
        return Message::Greeting(v);
    }
    Message::Unexpected(format!("unknown message: {}", excerpt(line)))
}

impl Client {
    /// Connects to `ep`, reads the greeting and negotiates capabilities.
    /// Returns the client and a subscription that sees every notice from the
    /// first one on.
    ///
    /// A `unix:` peer is checked first with the default expectation
    /// ([`Expect::new`] of the socket path: see `peer.rs`); a refused one
    /// gives [`QmpError::Refused`] and is never spoken to.
    pub async fn connect(ep: &Endpoint, timeout: Duration) -> Result<(Client, Events), QmpError> {
        Client::connect_expecting(ep, None, timeout).await
    }

    /// [`Client::connect`] with what the configuration requires of the peer
    /// (`peer-user`, `peer-cgroup`); an `expect` for a `tcp:` endpoint is
    /// refused, as nothing about its peer can be checked.
    pub async fn connect_expecting(
        ep: &Endpoint,
        expect: Option<&Expect>,
        timeout: Duration,
    ) -> Result<(Client, Events), QmpError> {
        let c = match tokio::time::timeout(timeout, ep.connect(expect)).await {
            Ok(c) => c?,
            Err(_) => return Err(QmpError::Timeout("the connection")),
        };
        Client::start(c.read, c.write, c.peer, timeout).await
    }

    /// The greeting and `qmp_capabilities` over an open connection (its
    /// peer unknown, [`Peer::Unknown`]; it cannot carry descriptors).
    pub async fn handshake(
        r: ReadHalf,
        w: WriteHalf,
        timeout: Duration,
    ) -> Result<(Client, Events), QmpError> {
        Client::start(r, Writer::Other(w), Peer::Unknown, timeout).await
    }

    async fn start(
        r: ReadHalf,
        w: Writer,
        peer: Peer,
        timeout: Duration,
    ) -> Result<(Client, Events), QmpError> {
        // 64 KiB reads: a peer's large messages cost few system calls
        let mut reader = BufReader::with_capacity(64 << 10, r);
        let mut buf = Vec::new();
        let greeting = tokio::time::timeout(timeout, async {
            loop {
                match read_line(&mut reader, &mut buf, MAX_LINE).await? {
                    Line::Eof => return Err(QmpError::Disconnected),
                    Line::TooLong(n) => {
                        return Err(QmpError::Protocol(format!(
                            "{n}-byte line instead of a QMP greeting: {}",
                            excerpt(&buf)
                        )))
                    }
                    Line::Line => match parse_message(&buf) {
                        Message::Blank => continue,
                        Message::Greeting(g) if g["QMP"].is_object() => return Ok(g),
                        _ => {
                            return Err(QmpError::Protocol(format!(
                                "expected a QMP greeting, got: {}",
                                excerpt(&buf)
                            )))
                        }
                    },
                }
            }
        })
        .await
        .map_err(|_| QmpError::Timeout("the QMP greeting (is another client connected?)"))??;

        let queue: Events = Arc::new(Queue::new());
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            queue: queue.clone(),
            subscribers: Mutex::new(Some(Vec::new())),
        });
        let reader_task = tokio::spawn(read_loop(reader, shared.clone()));
        let client = Client {
            writer: tokio::sync::Mutex::new(w),
            peer,
            shared,
            next_id: AtomicU64::new(1),
            reader: reader_task.abort_handle(),
            greeting,
            timeout,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok((client, queue))
    }

    /// Who is at the other end: a checked `unix:` peer, or an
    /// unauthenticated `tcp:` one.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether this is a `tcp:` connection (unauthenticated, no descriptors).
    pub fn peer_is_tcp(&self) -> bool {
        matches!(self.peer, Peer::Tcp { .. })
    }

    /// The peer, for the `connected` record: pid, uid, gid and cgroup of a
    /// checked `unix:` peer.
    pub fn peer_json(&self) -> Value {
        match &self.peer {
            Peer::Unix(i) => json!({"pid": i.pid, "uid": i.uid, "gid": i.gid,
                                    "cgroup": i.cgroup.as_deref().map(|c| crate::record::cap_str(c, 256))}),
            Peer::Tcp { addr } => {
                json!({"tcp": addr.map(|a| a.to_string()), "authenticated": false})
            }
            Peer::Unknown => Value::Null,
        }
    }

    /// The server's greeting (`{"QMP": {"version": ..., "capabilities": [...]}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// `major.minor.micro` from the greeting.
    pub fn qemu_version(&self) -> Option<String> {
        let q = &self.greeting["QMP"]["version"]["qemu"];
        Some(format!(
            "{}.{}.{}",
            q["major"].as_u64()?,
            q["minor"].as_u64()?,
            q["micro"].as_u64()?
        ))
    }

    /// A new subscription to events (from now on), for an action that waits
    /// for one; `recv` gives `None` once the connection closed.
    pub fn subscribe(&self) -> mpsc::Receiver<QmpEvent> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION);
        if let Some(subs) = &mut *self.shared.subscribers.lock().unwrap() {
            subs.retain(|s| !s.is_closed());
            subs.push(tx);
        }
        rx
    }

    /// Runs `command` and decodes its reply.
    pub async fn query<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self.execute(command, arguments).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Decode {
            command: command.to_string(),
            error: e.to_string(),
        })
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.pending.lock().unwrap().closed
    }

    /// Runs `command` with the default timeout.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Reply {
        self.execute_timeout(command, arguments, self.timeout).await
    }

    /// Runs `command` and waits up to `timeout` for its response.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Reply {
        self.request(command, arguments, None, timeout).await
    }

    /// `getfd`: hands QEMU a descriptor, named `fdname`, with the command
    /// (`SCM_RIGHTS` on the same write), e.g. a dump file vigil created
    /// itself, for `dump-guest-memory` with `protocol: "fd:NAME"`. vigil's
    /// descriptor stays open: QEMU gets a copy. Only over a `unix:` socket.
    pub async fn pass_fd(&self, fdname: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        if !matches!(*self.writer.lock().await, Writer::Unix(_)) {
            return Err(QmpError::NoFdPassing(match self.peer {
                Peer::Tcp { .. } => "a tcp: endpoint cannot receive descriptors",
                _ => "this connection cannot carry descriptors (not a unix: endpoint)",
            }));
        }
        let args = json!({ "fdname": fdname });
        self.request("getfd", Some(args), Some(fd), self.timeout)
            .await
            .map(|_| ())
    }

    /// `closefd`: QEMU closes the descriptor it was given as `fdname`.
    pub async fn close_fd(&self, fdname: &str) -> Result<(), QmpError> {
        self.execute("closefd", Some(json!({ "fdname": fdname })))
            .await
            .map(|_| ())
    }

    async fn request(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.pending.lock().unwrap();
            if p.closed {
                return Err(QmpError::Disconnected);
            }
            p.waiting.insert(id, tx);
        }
        let sent = async {
            let mut w = self.writer.lock().await;
            match (fd, &mut *w) {
                (None, w) => w.write_all(&line).await?,
                (Some(fd), Writer::Unix(u)) => {
                    let first = send_with_fd(u.as_ref(), &line, fd).await?;
                    u.write_all(&line[first..]).await?;
                }
                (Some(_), Writer::Other(_)) => {
                    return Err(QmpError::NoFdPassing(
                        "this connection cannot carry descriptors",
                    ))
                }
            }
            w.flush().await?;
            Ok(())
        };
        let result = tokio::time::timeout(timeout, async {
            sent.await?;
            rx.await.unwrap_or(Err(QmpError::Disconnected))
        })
        .await;
        self.shared.pending.lock().unwrap().waiting.remove(&id);
        match result {
            Ok(r) => r,
            Err(_) => Err(QmpError::Timeout("the command's response")),
        }
    }
}

/// Sends (part of) `data` with `fd` attached; returns how many bytes went.
async fn send_with_fd(
    sock: &tokio::net::UnixStream,
    data: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    loop {
        sock.writable().await?;
        match sock.try_io(Interest::WRITABLE, || {
            sendmsg_fd(sock.as_raw_fd(), data, fd.as_raw_fd())
        }) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One `sendmsg` of `data` with `fd` in an `SCM_RIGHTS` message.
fn sendmsg_fd(sock: RawFd, data: &[u8], fd: RawFd) -> io::Result<usize> {
    // room for one cmsghdr and one int, aligned for cmsghdr
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) } as usize;
    assert!(space <= mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points to `control`, which holds `space` bytes, enough
    // for one header and an int: CMSG_FIRSTHDR gives a non-null, aligned
    // header inside it and CMSG_DATA its data, both written within bounds.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null());
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg`, the iovec, `data` and `control` are valid for the call;
    // sendmsg only reads them. MSG_NOSIGNAL: EPIPE, not SIGPIPE.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

async fn read_loop(mut reader: BufReader<ReadHalf>, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    let queue = shared.queue.clone();
    loop {
        let size = buf.len();
        match read_line(&mut reader, &mut buf, MAX_LINE).await {
            Err(e) => {
                queue
                    .push(Notice::Unexpected(format!("read error: {e}")), 64)
                    .await;
                break;
            }
            Ok(Line::Eof) => break,
            Ok(Line::TooLong(n)) => {
                let m = format!("{n}-byte line (over {MAX_LINE}) dropped: {}", excerpt(&buf));
                queue.push(Notice::Malformed(m), 64 + buf.len()).await;
            }
            Ok(Line::Line) => match parse_message(&buf) {
                Message::Blank => {}
                Message::Event(mut e) => {
                    // An event's data is kept up to MAX_DATA bytes (of its
                    // line): a peer sending large distinct events cannot make
                    // the queue hold their parsed form (~16 times their size).
                    if buf.len() > crate::record::MAX_DATA {
                        e.data = crate::record::cap_value(e.data, crate::record::MAX_DATA);
                    }
                    if let Some(subs) = &mut *shared.subscribers.lock().unwrap() {
                        subs.retain(|s| !s.is_closed());
                        for s in subs.iter() {
                            let _ = s.try_send(e.clone());
                        }
                    }
                    queue.push(Notice::Event(e), size.max(buf.len())).await;
                }
                Message::Malformed(s) => {
                    queue.push(Notice::Malformed(s), buf.len()).await;
                }
                Message::Unexpected(s) => {
                    queue.push(Notice::Unexpected(s), buf.len()).await;
                }
                Message::Greeting(_) => {
                    let n = Notice::Unexpected(format!("second greeting: {}", excerpt(&buf)));
                    queue.push(n, buf.len()).await;
                }
                Message::Response { id, reply } => {
                    let waiter = id
                        .as_ref()
                        .and_then(Value::as_u64)
                        .and_then(|id| shared.pending.lock().unwrap().waiting.remove(&id));
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(
                                reply.map_err(|(class, desc)| QmpError::Command { class, desc }),
                            );
                        }
                        None => {
                            let n = Notice::Unexpected(format!(
                                "response to no pending command: {}",
                                excerpt(&buf)
                            ));
                            queue.push(n, buf.len()).await;
                        }
                    }
                }
            },
        }
    }
    // Closed: fail what is waiting, and close the subscriptions.
    let waiting = {
        let mut p = shared.pending.lock().unwrap();
        p.closed = true;
        std::mem::take(&mut p.waiting)
    };
    for (_, tx) in waiting {
        let _ = tx.send(Err(QmpError::Disconnected));
    }
    shared.subscribers.lock().unwrap().take();
    queue.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeQmp, GREETING};

    #[test]
    fn classifies_messages() {
        assert_eq!(parse_message(b"  \r"), Message::Blank);
        assert!(matches!(
            parse_message(b"{\"QMP\": {}}"),
            Message::Greeting(_)
        ));
        assert!(matches!(
            parse_message(b"{\"return\": {}, \"id\": 3}"),
            Message::Response {
                id: Some(Value::Number(_)),
                reply: Ok(_)
            }
        ));
        match parse_message(br#"{"error": {"class": "GenericError", "desc": "nope"}}"#) {
            Message::Response {
                id: None,
                reply: Err((c, d)),
            } => assert_eq!((c.as_str(), d.as_str()), ("GenericError", "nope")),
            m => panic!("{m:?}"),
        }
        match parse_message(br#"{"event": "VCPU_STALL", "data": {"stage": "action", "cpu-index": 1}, "timestamp": {"seconds": 5, "microseconds": 6}}"#) {
            Message::Event(e) => {
                assert_eq!(e.name, "VCPU_STALL");
                assert_eq!(e.data["cpu-index"], 1);
                assert_eq!(e.timestamp, Some((5, 6)));
            }
            m => panic!("{m:?}"),
        }
        match parse_message(br#"{"event": "STOP"}"#) {
            Message::Event(e) => assert_eq!((e.data, e.timestamp), (json!({}), None)),
            m => panic!("{m:?}"),
        }
        for bad in [
            &b"{\"event\": "[..],
            b"garbage",
            b"\xff\xfe{}",
            b"{\"a\":1}}",
        ] {
            assert!(
                matches!(parse_message(bad), Message::Malformed(_)),
                "{bad:?}"
            );
        }
        for odd in [&b"[1,2]"[..], b"42", b"{\"event\": 7}", b"{\"hello\": 1}"] {
            assert!(
                matches!(parse_message(odd), Message::Unexpected(_)),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"  a\x00b\x1b[2J\n"), "a\\u{0}b\\u{1b}[2J");
        assert_eq!(excerpt(b"\xff"), "\u{fffd}");
        let long = excerpt(&[b'y'; 500]);
        assert_eq!(long.len(), 123);
        assert!(long.ends_with("..."));
    }

    #[tokio::test]
    async fn read_line_bounds_lines() {
        let data = b"short\nxxxxxxxxxxxxxxxxxxxxxxxxx\nok\nlast";
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Line);
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::TooLong(25)
        );
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Line);
        assert_eq!(buf, b"ok");
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Line);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Eof);
    }

    #[tokio::test]
    async fn commands_events_and_garbage() {
        let fake = FakeQmp::start(|cmd, _args| match cmd {
            "query-name" => (json!({"return": {"name": "web1"}}), vec![]),
            "boom" => (json!({"error": {"class": "CommandNotFound", "desc": "The command boom has not been found"}}), vec![]),
            _ => (json!({"return": {}}), vec![]),
        })
        .await;
        let (c, rx) = Client::connect(&fake.endpoint(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.qemu_version().as_deref(), Some("10.2.2"));
        assert_eq!(c.execute("query-name", None).await.unwrap()["name"], "web1");
        match c.execute("boom", None).await {
            Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
            r => panic!("{r:?}"),
        }
        // garbage of all kinds, then an event our schema adds
        fake.send_raw(
            b"this is not json\n{\"event\": \n[1]\n\n{\"return\": {}, \"id\": 999}\n\xff\xff\n",
        );
        fake.send_raw(&[b'x'; MAX_LINE + 10]);
        fake.send_raw(b"\n{\"event\": \"VCPU_STALL\", \"data\": {\"qom-path\": \"/machine/peripheral/stall\", \"cpu-index\": 1, \"budget-ms\": 8000, \"stage\": \"action\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n");
        let mut malformed = 0;
        let mut unexpected = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap()
                .notice
            {
                Notice::Malformed(_) => malformed += 1,
                Notice::Unexpected(_) => unexpected += 1,
                Notice::Event(e) => {
                    assert_eq!(e.name, "VCPU_STALL");
                    assert_eq!(e.data["stage"], "action");
                    break;
                }
            }
        }
        assert_eq!((malformed, unexpected), (4, 2));
        // and the connection still works
        assert_eq!(c.execute("query-name", None).await.unwrap()["name"], "web1");
        assert!(!c.is_closed());
        fake.close();
        assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            c.execute("query-name", None).await,
            Err(QmpError::Disconnected)
        ));
        assert!(c.is_closed());
    }

    #[tokio::test]
    async fn bad_greetings() {
        for greeting in [&b"garbage\n"[..], b"{\"return\": {}}\n", b""] {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            let (r, w) = a.into_split();
            let (_br, mut bw) = b.into_split();
            bw.write_all(greeting).await.unwrap();
            if greeting.is_empty() {
                drop(bw);
            }
            let res = Client::handshake(Box::new(r), Box::new(w), Duration::from_millis(300)).await;
            assert!(res.is_err(), "{greeting:?}");
        }
        let _ = GREETING;
    }

    #[tokio::test]
    async fn command_timeout_and_refused_capabilities() {
        // a server that greets, then never answers
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (r, w) = a.into_split();
        let (_br, mut bw) = b.into_split();
        bw.write_all(GREETING.as_bytes()).await.unwrap();
        bw.write_all(b"\n").await.unwrap();
        match Client::handshake(Box::new(r), Box::new(w), Duration::from_millis(200)).await {
            Err(QmpError::Timeout(_)) => {}
            r => panic!("{:?}", r.map(|_| ())),
        }
    }

    #[test]
    fn memory_total_is_checked() {
        let m = MemorySizeSummary {
            base_memory: 1 << 30,
            plugged_memory: 1 << 29,
        };
        assert_eq!(m.total(), Some(3 << 29));
        let m = MemorySizeSummary {
            base_memory: u64::MAX,
            plugged_memory: 1,
        };
        assert_eq!(m.total(), None);
    }

    #[tokio::test]
    async fn read_line_never_holds_more_than_the_cap() {
        let max = 1000;
        // a line exactly at the cap, read in small pieces: the buffer never
        // grows past the cap (Vec's doubling would take it to 1024 and more)
        let mut data = vec![b'a'; max];
        data.push(b'\n');
        // then an overlong one: only its head is kept
        data.extend_from_slice(b"HEAD\x1b[2J");
        data.extend(std::iter::repeat_n(b'z', 50_000));
        data.extend_from_slice(b"\nok\n");
        let mut r = BufReader::with_capacity(7, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, max).await.unwrap(), Line::Line);
        assert_eq!(buf.len(), max);
        assert!(buf.capacity() <= max, "{}", buf.capacity());
        assert_eq!(
            read_line(&mut r, &mut buf, max).await.unwrap(),
            Line::TooLong(50_008)
        );
        assert!(buf.capacity() <= max, "{}", buf.capacity());
        assert_eq!(buf.len(), SKIPPED_HEAD);
        assert!(buf.starts_with(b"HEAD\x1b[2Jzz"));
        assert_eq!(
            excerpt(&buf),
            format!("HEAD\\u{{1b}}[2J{}...", "z".repeat(112))
        );
        assert_eq!(read_line(&mut r, &mut buf, max).await.unwrap(), Line::Line);
        assert_eq!(buf, b"ok");
        // a cap below the head size keeps at most the cap
        let mut r = BufReader::with_capacity(3, &b"0123456789abc\n"[..]);
        assert_eq!(
            read_line(&mut r, &mut buf, 4).await.unwrap(),
            Line::TooLong(13)
        );
        assert_eq!(buf, b"0123");
    }

    #[test]
    fn excerpt_looks_at_a_bounded_prefix() {
        // 4 MiB of invalid UTF-8 would be 12 MiB of U+FFFD: only the start
        // is converted
        let junk = vec![0xffu8; 4 << 20];
        let e = excerpt(&junk);
        assert_eq!(e.chars().count(), 123);
        assert!(e.ends_with("..."));
        // leading whitespace of any length is skipped
        let mut spaced = vec![b' '; 100_000];
        spaced.extend_from_slice(b"x\n");
        assert_eq!(excerpt(&spaced), "x");
        // cut with whitespace at the cut: still marked as cut
        let mut ws = vec![b'a'; 10];
        ws.extend(std::iter::repeat_n(b' ', 1000));
        ws.push(b'b');
        assert_eq!(
            excerpt(&ws),
            format!("{}{}...", "a".repeat(10), " ".repeat(110))
        );
        // whitespace up to a cut is not trimmed away: the "..." says more came
        let mut ws = vec![b'a'; 3];
        ws.extend(std::iter::repeat_n(b' ', 481));
        ws.push(b'b');
        assert!(excerpt(&ws).ends_with(" ..."));
    }

    /// A QMP server on a real socket that takes descriptors: answers
    /// `getfd` with `{}` only if the descriptor that came with it is the
    /// file `want` (same device and inode).
    fn fd_server(path: &std::path::Path, want: (u64, u64)) -> std::thread::JoinHandle<Vec<String>> {
        use std::io::Write;
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::fs::MetadataExt;
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            writeln!(s, "{GREETING}").unwrap();
            let mut seen = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut fds: Vec<OwnedFd> = Vec::new();
            loop {
                let mut data = [0u8; 4096];
                let mut control = [0u64; 8];
                let mut iov = libc::iovec {
                    iov_base: data.as_mut_ptr().cast(),
                    iov_len: data.len(),
                };
                // SAFETY: test code; msghdr is plain data, every pointer
                // set below is valid for the recvmsg call.
                let mut msg: libc::msghdr = unsafe { mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = mem::size_of_val(&control) as _;
                // SAFETY: as above.
                let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
                if n <= 0 {
                    return seen;
                }
                // SAFETY: walking the control messages recvmsg filled in.
                unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
                        {
                            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                            fds.push(OwnedFd::from_raw_fd(fd));
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                }
                pending.extend_from_slice(&data[..n as usize]);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let req: Value = serde_json::from_slice(&line).unwrap();
                    let cmd = req["execute"].as_str().unwrap().to_string();
                    let reply = match cmd.as_str() {
                        "getfd" => match fds.pop() {
                            Some(fd) => {
                                let f = std::fs::File::from(fd);
                                let m = f.metadata().unwrap();
                                if (m.dev(), m.ino()) == want {
                                    json!({"return": {}})
                                } else {
                                    json!({"error": {"class": "GenericError", "desc": "wrong file"}})
                                }
                            }
                            None => {
                                json!({"error": {"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}})
                            }
                        },
                        _ => json!({"return": {}}),
                    };
                    seen.push(format!("{cmd} {}", req["arguments"]));
                    let mut reply = reply;
                    reply["id"] = req["id"].clone();
                    writeln!(s, "{reply}").unwrap();
                }
            }
        })
    }

    #[tokio::test]
    async fn passes_descriptors() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let dir = crate::testutil::tempdir("passfd");
        let file = std::fs::File::create(dir.join("dump.partial")).unwrap();
        let m = file.metadata().unwrap();
        let sock = dir.join("qmp.sock");
        let server = fd_server(&sock, (m.dev(), m.ino()));
        let (c, _events) = Client::connect(&Endpoint::Unix(sock.clone()), Duration::from_secs(5))
            .await
            .unwrap();
        let info = c.peer().info().expect("a checked unix peer");
        assert_eq!(info.bound_path.as_deref(), Some(sock.as_path()));
        assert_eq!(info.pid, std::process::id() as i32);
        c.pass_fd("vigil-dump", file.as_fd()).await.unwrap();
        // vigil's descriptor stays usable
        assert_eq!(file.metadata().unwrap().ino(), m.ino());
        // another file is told apart
        let other = std::fs::File::create(dir.join("other")).unwrap();
        match c.pass_fd("x", other.as_fd()).await {
            Err(QmpError::Command { desc, .. }) => assert_eq!(desc, "wrong file"),
            r => panic!("{r:?}"),
        }
        c.close_fd("vigil-dump").await.unwrap();
        drop(c);
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            [
                "qmp_capabilities null",
                r#"getfd {"fdname":"vigil-dump"}"#,
                r#"getfd {"fdname":"x"}"#,
                r#"closefd {"fdname":"vigil-dump"}"#,
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn no_descriptors_without_a_unix_socket() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (r, w) = a.into_split();
        let (_br, mut bw) = b.into_split();
        bw.write_all(GREETING.as_bytes()).await.unwrap();
        bw.write_all(b"\n{\"return\": {}, \"id\": 1}\n")
            .await
            .unwrap();
        let (c, _) = Client::handshake(Box::new(r), Box::new(w), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.peer(), &Peer::Unknown);
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        match c.pass_fd("x", f.as_fd()).await {
            Err(e @ QmpError::NoFdPassing(_)) => {
                assert!(e.to_string().contains("cannot carry descriptors"), "{e}")
            }
            r => panic!("{r:?}"),
        }
        // over tcp:
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(format!("{GREETING}\n").as_bytes())
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let req: Value = serde_json::from_str(&line).unwrap();
                let reply = json!({"return": {}, "id": req["id"]});
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        });
        let ep = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        let (c, _) = Client::connect(&ep, Duration::from_secs(5)).await.unwrap();
        assert!(!c.peer().authenticated());
        match c.pass_fd("x", f.as_fd()).await {
            Err(e @ QmpError::NoFdPassing(_)) => {
                assert_eq!(e.to_string(), "a tcp: endpoint cannot receive descriptors")
            }
            r => panic!("{r:?}"),
        }
        // the connection is still fine
        c.execute("query-status", None).await.unwrap();
    }

    #[tokio::test]
    async fn refused_peers_are_not_spoken_to() {
        let fake = FakeQmp::start(|_, _| (json!({"return": {}}), vec![])).await;
        let link = fake.dir.join("link.qmp");
        std::os::unix::fs::symlink(&fake.path, &link).unwrap();
        match Client::connect(&Endpoint::Unix(link), Duration::from_secs(5)).await {
            Err(QmpError::Refused(r)) => assert_eq!(r, Refusal::Symlink),
            r => panic!("{:?}", r.map(|_| ())),
        }
        let e = Expect {
            cgroup: Some("/vigil-test-not-this-one".into()),
            ..Expect::new(fake.path.clone())
        };
        match Client::connect_expecting(&fake.endpoint(), Some(&e), Duration::from_secs(5)).await {
            Err(e @ QmpError::Refused(_)) => {
                assert!(
                    e.to_string().starts_with("peer refused (peer-cgroup)"),
                    "{e}"
                )
            }
            r => panic!("{:?}", r.map(|_| ())),
        }
        assert!(fake.command_names().is_empty());
        // and the right one passes
        let (c, _) = Client::connect_expecting(
            &fake.endpoint(),
            Some(&Expect::new(fake.path.clone())),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(c.peer().authenticated());
    }
}
