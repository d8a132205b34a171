//! What every shoal process asks of its host outside the transport: the wall clock, the
//! operating system's random source, and where data lives by default. One copy, so the
//! agent, the manager and the CLI agree.
//!
//! Pure code must not call these: it takes the time and randomness as parameters.

/// Default data directory, as `--data-dir` and `SHOAL_DATA_DIR` override it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut out).expect("the OS random source failed");
    out
}

/// Milliseconds since the Unix epoch, for timestamps shown to people (0 for a clock set
/// before 1970, rather than a panic).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ_and_the_clock_is_past_2020() {
        assert_ne!(random::<16>(), random::<16>());
        assert!(wall_ms() > 1_577_836_800_000);
    }
}
