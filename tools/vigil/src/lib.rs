//! vigil: watch QEMU QMP sockets and act on guest-health events.
//!
//! The binary (`src/main.rs`) is the command line; the pieces live here so
//! that they can be tested on their own.

pub mod backoff;
pub mod cli;
pub mod dump;
pub mod endpoint;
pub mod log;
pub mod policy;
pub mod qmp;
pub mod watcher;

#[cfg(test)]
pub(crate) mod testutil;
