//! What a QMP server sends that a session sees: events, kept generic, and
//! notices of input that was not one. Below both the client (`qmp.rs`) and
//! the session's queue (`queue.rs`), so neither imports the other.

use serde_json::Value;

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
