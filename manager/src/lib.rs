//! shoal's manager and command line: the store, the CA, the QUIC shell ([`server`]) and
//! the `shoal` command ([`cli`]). It owns every side effect; what to do is decided by
//! the pure [`shoal_core`] crate (re-exported as [`core`]), never here.

pub mod board;
pub mod ca;
pub mod cli;
pub mod docker;
pub mod images;
pub mod init;
pub mod memory;
pub mod paths;
pub mod secrets;
pub mod server;
pub mod store;
pub mod verify;

pub use shoal_core as core;
