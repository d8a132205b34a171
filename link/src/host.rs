//! What every shoal process asks of its host outside the transport: the wall clock, the
//! operating system's random source, and where data lives by default. One copy, so the
//! agent, the manager and the CLI agree.
//!
//! Pure code must not call these: it takes the time and randomness as parameters.

/// Default data directory, as `--data-dir` and `SHOAL_DATA_DIR` override it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";

/// Where an agent with `data_dir` keeps the container runtime's state (libcontainer's):
/// a directory on the tmpfs `/run`, so that a reboot clears it with the containers it
/// describes, named by a hash of the data directory, so that several agents on one host
/// (the tests) never share one. The agent and the test harness's teardown both ask here.
pub fn runtime_state_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    let digest = ring::digest::digest(&ring::digest::SHA256, data_dir.to_string_lossy().as_bytes());
    std::path::PathBuf::from("/run/shoal").join(shoal_proto::hex(&digest.as_ref()[..6]))
}

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

/// **Test only**: seconds (may be negative) `SHOAL_TEST_CLOCK_OFFSET` moves the clock
/// [`board_ms`] reads, to play a board without a real-time clock (Linux time namespaces
/// do not move the wall clock). Never set it on a real board.
pub const TEST_CLOCK_OFFSET_ENV: &str = "SHOAL_TEST_CLOCK_OFFSET";

/// The board's own wall clock, ms since the Unix epoch: [`wall_ms`] moved by
/// [`TEST_CLOCK_OFFSET_ENV`] when a test set it. What a board believes, which may be
/// years wrong: certificate checks and renewal never rely on it alone.
pub fn board_ms() -> u64 {
    static OFFSET_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET_MS.get_or_init(|| {
        std::env::var(TEST_CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map_or(0, |s| s.saturating_mul(1000))
    });
    wall_ms().saturating_add_signed(offset)
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
