//! Typed errors.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::qmp::QmpError;

/// An error that stops vigil (exit status 1). Nothing a peer sends or
/// lacks is one: what goes wrong with one VM stays with that VM.
#[derive(Debug, Error)]
pub enum WatchError {
    #[error("watcher failed: {0}")]
    Task(String),
}

/// Why a dump did not happen or did not complete. The VM is left as it is.
#[derive(Debug, Error)]
pub enum DumpError {
    #[error("no --dump-dir")]
    NoDumpDir,
    #[error("QEMU {version} cannot write dump format {want} (it supports: {})", .supported.join(", "))]
    UnsupportedFormat {
        version: String,
        want: String,
        supported: Vec<String>,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("a tcp: endpoint cannot receive a descriptor: dumps need a unix: endpoint")]
    NoDescriptors,
    #[error("cannot create the dump file: {0}")]
    Create(io::Error),
    #[error("cannot pass the dump file to QEMU (getfd): {0}")]
    PassFd(QmpError),
    #[error("the dump did not end within {} s (--dump-timeout); abandoned", .0.as_secs())]
    Timeout(std::time::Duration),
    #[error("the dump made no progress for {} s (query-dump); abandoned", .0.as_secs())]
    Stalled(std::time::Duration),
    #[error("the endpoint is no longer watched: the dump was abandoned")]
    Aborted,
    #[error("query-memory-size-summary: {0}")]
    MemorySize(QmpError),
    #[error("query-memory-size-summary gave no memory size")]
    NoMemorySize,
    #[error("statvfs {}: {source}", .dir.display())]
    Statvfs { dir: PathBuf, source: io::Error },
    #[error("not enough space in {}: {} MiB free, {} MiB needed (guest RAM {} MiB + margin)",
            .dir.display(), .free >> 20, .need >> 20, .ram >> 20)]
    NoSpace {
        dir: PathBuf,
        free: u64,
        need: u64,
        ram: u64,
    },
    #[error("dump-guest-memory: {0}")]
    Start(QmpError),
    #[error("QEMU: {0}")]
    Qemu(String),
    #[error("DUMP_COMPLETED with status {0}")]
    Status(String),
    #[error("query-dump: status failed")]
    QueryFailed,
    #[error("no dump in progress (query-dump: {0})")]
    NotRunning(String),
    #[error("QMP connection closed during the dump")]
    Disconnected,
    #[error("cannot sync and link the completed dump: {0}")]
    Finalize(io::Error),
    #[error("{error}; and removing {}: {discard}", .partial.display())]
    Discard {
        error: Box<DumpError>,
        partial: PathBuf,
        discard: io::Error,
    },
    #[error("vigil is stopping: the queued dump was not started")]
    Cancelled,
}

/// A bad configuration: a usage error at start (exit status 2), logged and
/// ignored on a reload (the running configuration stays).
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: endpoint {endpoint}: {message}", .path.display())]
    Endpoint {
        path: PathBuf,
        endpoint: String,
        message: String,
    },
    #[error("endpoint {0} given twice")]
    Duplicate(String),
    #[error("a coredump-* policy needs --dump-dir DIR")]
    NeedsDumpDir,
    #[error("watch directory {}: {source}", .dir.display())]
    WatchDir { dir: PathBuf, source: io::Error },
}
