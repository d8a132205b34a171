//! The manager's decision logic, free of I/O: it takes `now` and events in and returns
//! decisions as values. The server in `crate::server` applies them. Nothing here reads a
//! clock, touches a socket or a file, so tests drive it with a virtual clock.

pub mod dispatcher;
pub mod exec;
pub mod membership;
pub mod nodes;
pub mod orchestrator;
pub mod placement;
pub mod scheduler;
pub mod services;
pub mod updater;

/// Milliseconds on a monotonic clock chosen by the caller (the shell uses time since the
/// process started; tests use whatever they like).
pub type Millis = u64;
