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
