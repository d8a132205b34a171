//! The agent's pure decision logic: no sockets, no files, no clock.

pub mod backoff;
pub mod upgrade;
