//! shoal's manager and command line. The pure decision logic is in [`core`]; [`server`]
//! is the QUIC shell that applies it; [`cli`] is the `shoal` command.

pub mod ca;
pub mod cli;
pub mod core;
pub mod images;
pub mod init;
pub mod paths;
pub mod server;
pub mod store;
pub mod verify;
