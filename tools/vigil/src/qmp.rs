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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::endpoint::{Endpoint, ReadHalf, WriteHalf};
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
/// reported), the connection goes on.
pub const MAX_LINE: usize = 1 << 20;

/// A QMP event, kept generic: name, `data` (or `{}`), and QEMU's time stamp.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// `timestamp` as seconds and microseconds, if the server sent it.
    pub timestamp: Option<(i64, i64)>,
}

/// What the reader passes on to subscribers.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Event(QmpEvent),
    /// A line that is not JSON, or too long. The text says what was wrong.
    Malformed(String),
    /// Valid JSON that is not a QMP message we expect (a response to no
    /// command of ours, a second greeting, ...).
    Unexpected(String),
}

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
        }
    }
}

impl std::error::Error for QmpError {}

impl From<io::Error> for QmpError {
    fn from(e: io::Error) -> Self {
        QmpError::Io(e)
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
    writer: tokio::sync::Mutex<WriteHalf>,
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
/// a longer line is consumed and reported, never buffered whole. A last line
/// without newline before EOF counts as a line.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
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
            buf.extend_from_slice(chunk);
        } else {
            skipped += buf.len() + chunk.len();
            buf.clear();
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

/// Shortens input for a log message, with control characters escaped (a
/// log line never carries a NUL or a terminal escape from the wire).
pub fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 120 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
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
    pub async fn connect(ep: &Endpoint, timeout: Duration) -> Result<(Client, Events), QmpError> {
        let (r, w) = match tokio::time::timeout(timeout, ep.connect()).await {
            Ok(rw) => rw?,
            Err(_) => return Err(QmpError::Timeout("the connection")),
        };
        Client::handshake(r, w, timeout).await
    }

    /// The greeting and `qmp_capabilities` over an open connection.
    pub async fn handshake(
        r: ReadHalf,
        w: WriteHalf,
        timeout: Duration,
    ) -> Result<(Client, Events), QmpError> {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        let greeting = tokio::time::timeout(timeout, async {
            loop {
                match read_line(&mut reader, &mut buf, MAX_LINE).await? {
                    Line::Eof => return Err(QmpError::Disconnected),
                    Line::TooLong(n) => {
                        return Err(QmpError::Protocol(format!(
                            "{n}-byte line instead of a QMP greeting"
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
            shared,
            next_id: AtomicU64::new(1),
            reader: reader_task.abort_handle(),
            greeting,
            timeout,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok((client, queue))
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
            w.write_all(&line).await?;
            w.flush().await
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
                queue
                    .push(
                        Notice::Malformed(format!("{n}-byte line (over {MAX_LINE}) dropped")),
                        64,
                    )
                    .await;
            }
            Ok(Line::Line) => match parse_message(&buf) {
                Message::Blank => {}
                Message::Event(e) => {
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
}
