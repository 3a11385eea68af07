//! What every watcher shares: the process's settings ([`Config`]), what is
//! watched at one endpoint ([`Target`]) and the shared services ([`Env`]:
//! the outputs, the metrics, the dump slots, the running actions).
//!
//! This module sits below the watcher, the session, the actions and the
//! dumps, so that none of them imports another to reach them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::log::Logger;
use crate::metrics::Metrics;
use crate::policy::{DumpFormat, Policies};
use crate::slots::DumpSlots;

/// Settings of the whole process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where dumps go (absolute, created and owned by vigil; required when
    /// a policy dumps).
    pub dump_dir: Option<PathBuf>,
    pub dump_format: DumpFormat,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Connect, greeting and command timeout.
    pub timeout: Duration,
    /// How often `query-dump` is asked during a dump.
    pub poll_interval: Duration,
    /// The longest a dump may take; `None`: from the guest's RAM
    /// ([`Config::dump_timeout_for`]).
    pub dump_timeout: Option<Duration>,
    /// The longest a file system call (statvfs, create, fsync, link) may take.
    pub fs_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dump_dir: None,
            dump_format: DumpFormat::Elf,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            dump_timeout: None,
            fs_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The dump timeout for a guest of `ram` bytes: the configured one, or
    /// 120 s plus 1 s per 32 MiB (a dump slower than 32 MiB/s is stuck), at
    /// most 4 hours (`ram` is what QEMU says: it must not buy a slot for a
    /// day). A dump that stops progressing is abandoned sooner (`dump.rs`).
    pub fn dump_timeout_for(&self, ram: u64) -> Duration {
        self.dump_timeout
            .unwrap_or_else(|| Duration::from_secs(120u64.saturating_add(ram >> 25).min(4 * 3600)))
    }
}

/// What is watched at one endpoint; may change while it is watched (a
/// configuration reload), without reconnecting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// The VM's name (from `--config`); else the socket's file name. Never
    /// what the peer says it is.
    pub name: Option<String>,
    pub policies: Policies,
    /// Who must be at the other end of a `unix:` socket (`None` for `tcp:`).
    pub expect: Option<crate::peer::Expect>,
}

/// What every watcher shares.
#[derive(Clone)]
pub struct Env {
    pub cfg: Arc<Config>,
    pub log: Arc<Logger>,
    pub metrics: Arc<Metrics>,
    pub dumps: Arc<DumpSlots>,
    /// The running actions (stopping waits for them).
    pub tracker: TaskTracker,
}

impl Env {
    pub fn new(cfg: Config, log: Arc<Logger>, max_dumps: usize) -> Env {
        let metrics = log.metrics().clone();
        Env {
            cfg: Arc::new(cfg),
            log,
            dumps: Arc::new(DumpSlots::new(max_dumps, metrics.clone())),
            metrics,
            tracker: TaskTracker::new(),
        }
    }
}
