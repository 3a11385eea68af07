//! vigil: watch QEMU QMP sockets and act on guest-health events.
//!
//! The binary (`src/main.rs`) is the command line; the pieces live here so
//! that they can be tested on their own:
//!
//! * `watcher`: one endpoint, connected and reconnected (`backoff`);
//!   `session`: one connection, its notices (`queue`) and decisions (`policy`);
//!   `actions` and `dumper`: what a policy does (`dump`: the files);
//! * `fleet`: the set of endpoints (command line, `config`, watched
//!   directories), reloaded on SIGHUP;
//! * `qmp`: the QMP client; `log`, `metrics`, `hooks`: what vigil reports.

pub mod actions;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod dump;
pub mod dumper;
pub mod endpoint;
pub mod error;
pub mod fleet;
pub mod hooks;
pub mod log;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod qmp;
pub mod queue;
pub mod session;
pub mod watcher;

#[cfg(test)]
pub(crate) mod testutil;
