//! The per-session event queue: every notice the QMP reader gets goes here,
//! in order, and the session takes them out. Nothing is ever dropped.
//!
//! Memory stays bounded under a flood in two ways:
//!
//! * Coalescing. Once [`SOFT_ITEMS`] notices wait, a notice that is *routine*
//!   (see [`coalescible`]: a `VCPU_STALL` warning, `RTC_CHANGE`, a malformed
//!   line, ...) and identical to one still waiting is folded into it, whose
//!   `repeat` count grows. A notice that may trigger a policy (`GUEST_PANICKED`,
//!   `SHUTDOWN`, a `VCPU_STALL` action stage, `WATCHDOG`, ...) is never folded.
//! * Backpressure. Past [`HARD_ITEMS`] notices or [`HARD_BYTES`] of input,
//!   the reader waits for room before reading on: QEMU then buffers its own
//!   output, and the events still arrive, later.
//!
//! The session loop takes notices without ever waiting for QEMU, so a queue
//! that fills only delays, never deadlocks, the reader.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::Notify;

use crate::message::Notice;

/// Past this many waiting notices, routine ones are coalesced.
pub const SOFT_ITEMS: usize = 256;
/// Past this many, the reader waits.
pub const HARD_ITEMS: usize = 65_536;
/// Past this many bytes of (wire) input waiting, the reader waits.
pub const HARD_BYTES: usize = 4 << 20;

/// Events that never coalesce: those a policy may act on, and those an
/// action waits for.
const IMPORTANT: &[&str] = &[
    "GUEST_PANICKED",
    "GUEST_CRASHLOADED",
    "GUEST_PVSHUTDOWN",
    "SHUTDOWN",
    "WATCHDOG",
    "DUMP_COMPLETED",
    "RESET",
    "STOP",
    "RESUME",
];

/// The coalescing key of a routine notice, `None` for one that must be
/// delivered on its own.
pub fn coalescible(n: &Notice) -> Option<String> {
    match n {
        Notice::Event(e) => {
            if IMPORTANT.contains(&e.name.as_str()) {
                return None;
            }
            if e.name == "VCPU_STALL"
                && e.data.get("stage").and_then(Value::as_str) != Some("warning")
            {
                return None;
            }
            Some(format!("e\0{}\0{}", e.name, e.data))
        }
        // the text differs from line to line; keep the first, count the rest
        Notice::Malformed(_) => Some("m".into()),
        Notice::Unexpected(_) => Some("u".into()),
    }
}

/// One notice taken from the queue, with how many identical ones it stands for.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub notice: Notice,
    /// 1, or more when identical routine notices were folded into this one.
    pub repeat: u64,
}

struct Item {
    seq: u64,
    entry: Entry,
    key: Option<String>,
    size: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    head_seq: u64,
    next_seq: u64,
    /// key -> seq of the newest waiting item with that key
    index: HashMap<String, u64>,
    bytes: usize,
    closed: bool,
}

/// A single-producer (the reader), single-consumer (the session) queue.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    readable: Notify,
    room: Notify,
}

/// What [`Queue::try_push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    Coalesced,
    /// Full: the notice is handed back; wait with [`Queue::push`].
    Full,
}

impl Queue {
    pub fn new() -> Queue {
        Queue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `n` (`size`: its length on the wire) unless the queue is full.
    pub fn try_push(&self, n: Notice, size: usize) -> Result<Pushed, Notice> {
        let mut s = self.lock();
        let key = coalescible(&n);
        if let Some(k) = &key {
            if s.items.len() >= SOFT_ITEMS {
                if let Some(&seq) = s.index.get(k) {
                    if seq >= s.head_seq {
                        let i = (seq - s.head_seq) as usize;
                        s.items[i].entry.repeat += 1;
                        return Ok(Pushed::Coalesced);
                    }
                }
            }
        }
        if s.items.len() >= HARD_ITEMS || s.bytes >= HARD_BYTES {
            return Err(n);
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        if let Some(k) = &key {
            s.index.insert(k.clone(), seq);
        }
        s.bytes += size;
        s.items.push_back(Item {
            seq,
            entry: Entry {
                notice: n,
                repeat: 1,
            },
            key,
            size,
        });
        drop(s);
        self.readable.notify_one();
        Ok(Pushed::Queued)
    }

    /// Queues `n`, waiting for room if the queue is full (backpressure).
    pub async fn push(&self, mut n: Notice, size: usize) -> Pushed {
        loop {
            match self.try_push(n, size) {
                Ok(p) => return p,
                Err(back) => {
                    n = back;
                    self.room.notified().await;
                }
            }
        }
    }

    /// Takes the oldest notice, if any.
    pub fn try_pop(&self) -> Option<Entry> {
        let mut s = self.lock();
        let item = s.items.pop_front()?;
        s.head_seq = item.seq + 1;
        s.bytes -= item.size;
        if let Some(k) = &item.key {
            if s.index.get(k) == Some(&item.seq) {
                s.index.remove(k);
            }
        }
        drop(s);
        self.room.notify_one();
        Some(item.entry)
    }

    /// The next notice; `None` once the connection closed and all were taken.
    pub async fn recv(&self) -> Option<Entry> {
        loop {
            if let Some(e) = self.try_pop() {
                return Some(e);
            }
            if self.lock().closed {
                return None;
            }
            self.readable.notified().await;
        }
    }

    /// No more notices will come (the connection closed).
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QmpEvent;
    use serde_json::json;

    fn ev(name: &str, data: Value) -> Notice {
        Notice::Event(QmpEvent {
            name: name.into(),
            data,
            timestamp: None,
        })
    }

    fn warning(cpu: u64) -> Notice {
        ev("VCPU_STALL", json!({"cpu-index": cpu, "stage": "warning"}))
    }

    #[test]
    fn important_events_never_coalesce() {
        assert!(coalescible(&ev("GUEST_PANICKED", json!({"action": "pause"}))).is_none());
        assert!(coalescible(&ev("VCPU_STALL", json!({"stage": "action"}))).is_none());
        assert!(coalescible(&ev("VCPU_STALL", json!({}))).is_none());
        assert!(coalescible(&ev("SHUTDOWN", json!({"guest": true}))).is_none());
        assert!(coalescible(&warning(1)).is_some());
        assert_ne!(coalescible(&warning(1)), coalescible(&warning(2)));
    }

    #[test]
    fn a_flood_is_folded_and_nothing_is_lost() {
        let q = Queue::new();
        for i in 0..200_000u64 {
            assert_ne!(q.try_push(warning(i % 4), 100).unwrap(), Pushed::Full);
        }
        q.try_push(ev("GUEST_PANICKED", json!({"action": "pause"})), 100)
            .unwrap();
        assert!(q.len() <= SOFT_ITEMS + 1, "{}", q.len());
        q.close();
        let (mut stalls, mut panics, mut order_ok) = (0, 0, true);
        while let Some(e) = q.try_pop() {
            match &e.notice {
                Notice::Event(x) if x.name == "VCPU_STALL" => {
                    stalls += e.repeat;
                    order_ok &= panics == 0;
                }
                Notice::Event(x) if x.name == "GUEST_PANICKED" => panics += e.repeat,
                n => panic!("{n:?}"),
            }
        }
        assert_eq!((stalls, panics), (200_000, 1));
        assert!(order_ok, "the panic came after the stalls");
    }

    #[test]
    fn important_events_wait_for_room() {
        let q = Queue::new();
        for _ in 0..HARD_ITEMS {
            q.try_push(ev("VCPU_STALL", json!({"stage": "action"})), 10)
                .unwrap();
        }
        assert!(q.try_push(ev("GUEST_PANICKED", json!({})), 10).is_err());
        q.try_pop().unwrap();
        assert_eq!(
            q.try_push(ev("GUEST_PANICKED", json!({})), 10).unwrap(),
            Pushed::Queued
        );
        assert_eq!(q.len(), HARD_ITEMS);
    }

    #[tokio::test]
    async fn recv_wakes_and_ends_on_close() {
        let q = std::sync::Arc::new(Queue::new());
        let q2 = q.clone();
        let t = tokio::spawn(async move {
            let mut n = 0;
            while let Some(e) = q2.recv().await {
                n += e.repeat;
            }
            n
        });
        for _ in 0..1000 {
            q.push(warning(0), 1).await;
            tokio::task::yield_now().await;
        }
        q.close();
        assert_eq!(t.await.unwrap(), 1000);
    }
}
