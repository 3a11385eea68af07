//! vigil: watch QEMU QMP sockets and act on guest-health events.
//!
//! The binary (`src/main.rs`) is the command line; the pieces live here so
//! that they can be tested on their own. Records flow one way:
//!
//! * `qmp` (the client; `queue` holds what a connection received) and
//!   `endpoint`/`peer` (connecting, and checking who is at the other end);
//! * `watcher` (one endpoint, reconnected with `backoff`) -> `session` (one
//!   connection: each notice a `record`, decided by `policy`) -> `actions`
//!   and `dump` (what a policy does; `slots`: `--max-dumps`);
//! * `log` (the outputs: every `record` to the JSON and human sinks, the
//!   `metrics` and the `hooks`);
//! * `fleet`: the set of endpoints (command line, `config`, watched
//!   directories), reloaded on SIGHUP; `context`: what they all share.

pub mod actions;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod context;
pub mod dump;
pub mod endpoint;
pub mod error;
pub mod fleet;
pub mod hooks;
pub mod log;
pub mod message;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod qmp;
pub mod queue;
pub mod record;
pub mod session;
pub mod slots;
pub mod timefmt;
pub mod watcher;

#[cfg(test)]
pub(crate) mod testutil;
