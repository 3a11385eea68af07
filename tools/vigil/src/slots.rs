//! The host-wide dump limit (`--max-dumps`): at most N dumps at once; the
//! others wait in the order they asked (tokio's semaphore is fair). A VM
//! runs at most one action at a time, so it holds at most one slot, and a
//! slot is freed when its dump ends, fails, times out, loses its
//! connection, or its endpoint is removed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

pub struct DumpSlots {
    sem: Arc<Semaphore>,
    /// 0: no limit
    max: usize,
    waiting: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// A dump slot; freed when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.dumps_running.dec();
    }
}

/// A place in the line for a slot.
pub struct Waiting<'a> {
    slots: &'a DumpSlots,
    /// 1-based position when it started waiting
    pub position: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        self.slots.metrics.dumps_waiting.dec();
    }
}

impl DumpSlots {
    /// `max` dumps at once; 0 for no limit.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> DumpSlots {
        DumpSlots {
            sem: Arc::new(Semaphore::new(if max == 0 {
                Semaphore::MAX_PERMITS
            } else {
                max
            })),
            max,
            waiting: AtomicUsize::new(0),
            metrics,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn granted(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.metrics.dumps_running.inc();
        Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        }
    }

    /// A slot now, if one is free.
    pub fn try_acquire(&self) -> Option<Slot> {
        let p = self.sem.clone().try_acquire_owned().ok()?;
        Some(self.granted(p))
    }

    /// Joins the line (counted in the metrics until the guard is dropped).
    pub fn wait_in_line(&self) -> Waiting<'_> {
        let position = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.dumps_waiting.inc();
        self.metrics.dump_waits.inc();
        Waiting {
            slots: self,
            position,
        }
    }

    /// Waits for a slot (drop the future to give up).
    pub async fn acquire(&self) -> Option<Slot> {
        let p = self.sem.clone().acquire_owned().await.ok()?;
        Some(self.granted(p))
    }
}
