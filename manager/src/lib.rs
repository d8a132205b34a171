//! shoal's manager and command line: the store, the CA, the QUIC shell ([`server`]) and
//! the `shoal` command ([`cli`]). It owns every side effect; what to do is decided by
//! the pure [`shoal_core`] crate (re-exported as [`core`]), never here.

pub mod ca;
pub mod cli;
pub mod images;
pub mod init;
pub mod paths;
pub mod server;
pub mod store;
pub mod verify;

pub use shoal_core as core;

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut out).expect("the OS random source failed");
    out
}

/// Milliseconds since the Unix epoch, for timestamps shown to people.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
