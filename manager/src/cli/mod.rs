//! The `shoal` command line: argument parsing, the control client and the output
//! formats. Each subcommand module turns arguments into one control request and the
//! reply into text a Swarm user reads at a glance.

pub mod board;
pub mod client;
pub mod docker_env;
pub mod exec;
pub mod image;
pub mod logs;
pub mod manager;
pub mod network;
pub mod node;
pub mod object;
pub mod output;
pub mod service;
pub mod stack;
pub mod template;
pub mod upgrade;
pub mod volume;

use std::time::Duration;

use shoal_proto::services::parse_duration_ms;
use shoal_proto::SpecError;

/// Shortest and longest heartbeat period `manager run` takes.
pub const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(60));

/// Parses `--heartbeat-period`: a duration within [`HEARTBEAT_RANGE`], since a node is
/// declared down a period and a margin after its last heartbeat and timers add periods. Units
/// as every other duration flag (`500ms`, `2s`, `1m30s`); a bare number is seconds, as
/// this flag always took it.
pub fn parse_heartbeat_period(s: &str) -> Result<Duration, String> {
    let trimmed = s.trim();
    let bare = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let ms = if bare { parse_duration_ms(&format!("{trimmed}s")) } else { parse_duration_ms(trimmed) };
    // Name what the operator typed, not the `s` added to a bare number.
    let ms = ms.map_err(|_| SpecError::Duration(trimmed.to_owned()).to_string())?;
    let d = Duration::from_millis(ms);
    let (min, max) = HEARTBEAT_RANGE;
    if d < min || d > max {
        return Err(format!("heartbeat period {s:?} is out of range: use {}ms to {}s", min.as_millis(), max.as_secs()));
    }
    Ok(d)
}

/// Parses `--overlay-key-rotation` (`12h`, `90s`, …): at least 4 s, at most a year.
pub fn parse_key_rotation(s: &str) -> Result<Duration, String> {
    let ms = parse_duration_ms(s.trim()).map_err(|_| SpecError::Duration(s.trim().to_owned()).to_string())?;
    if !(4_000..=365 * 24 * 3_600_000).contains(&ms) {
        return Err(format!("overlay key rotation {s:?} is out of range: use 4s to 8760h"));
    }
    Ok(Duration::from_millis(ms))
}

/// Parses `--cert-expiry` (`2160h`, `90s`, …) within
/// [`shoal_proto::CERT_EXPIRY_RANGE_MS`]: 3 s (for tests) to 5 years.
pub fn parse_cert_expiry(s: &str) -> Result<Duration, String> {
    let ms = parse_duration_ms(s.trim()).map_err(|_| SpecError::Duration(s.trim().to_owned()).to_string())?;
    let (lo, hi) = shoal_proto::CERT_EXPIRY_RANGE_MS;
    if !(lo..=hi).contains(&ms) {
        return Err(format!("certificate expiry {s:?} is out of range: use 3s to 43800h (5 years)"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_expiries_parse_and_stay_in_range() {
        assert_eq!(parse_cert_expiry("2160h").unwrap(), Duration::from_secs(90 * 24 * 3600));
        assert_eq!(parse_cert_expiry("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_cert_expiry("1s").unwrap_err().contains("out of range"));
        assert!(parse_cert_expiry("50000h").unwrap_err().contains("out of range"));
        assert!(parse_cert_expiry("forever").unwrap_err().starts_with("invalid duration"));
    }

    #[test]
    fn key_rotation_periods_parse_and_stay_in_range() {
        assert_eq!(parse_key_rotation("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_key_rotation("6s").unwrap(), Duration::from_secs(6));
        assert!(parse_key_rotation("1s").unwrap_err().contains("out of range"));
        assert!(parse_key_rotation("soon").is_err());
    }

    #[test]
    fn heartbeat_periods_parse_like_the_other_duration_flags() {
        assert_eq!(parse_heartbeat_period("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_heartbeat_period("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_heartbeat_period("3").unwrap(), Duration::from_secs(3), "a bare number is seconds");
        assert_eq!(parse_heartbeat_period("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_heartbeat_period("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["fast", "5y", "", "1.2.3"] {
            let e = parse_heartbeat_period(bad).unwrap_err();
            assert!(e.starts_with(&format!("invalid duration {:?}", bad.trim())), "{bad}: {e}");
        }
    }

    #[test]
    fn heartbeat_periods_out_of_range_are_refused_not_panicked_on() {
        assert_eq!(parse_heartbeat_period("60s").unwrap(), Duration::from_secs(60));
        for bad in ["1e300", "99999999999999999999h", "0", "1ms", "61s", "1h"] {
            let e = parse_heartbeat_period(bad).unwrap_err();
            assert!(e.contains("out of range") || e.contains("invalid duration"), "{bad}: {e}");
        }
    }

    /// Found by the `service_args` fuzz target: these panicked in `Duration::from_secs_f64`.
    #[test]
    fn overlong_durations_are_refused_not_a_panic() {
        for s in ["999999999999999999999999", "99999999999999999h", "18446744073709551616", &"9".repeat(400)] {
            let err = parse_heartbeat_period(s).unwrap_err();
            assert!(err.starts_with("invalid duration"), "{s}: {err}");
        }
    }
}
