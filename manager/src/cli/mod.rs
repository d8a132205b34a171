//! The `shoal` command line: argument parsing, the control client and the output
//! formats. Each subcommand module turns arguments into one control request and the
//! reply into text a Swarm user reads at a glance.

pub mod client;
pub mod exec;
pub mod image;
pub mod manager;
pub mod node;
pub mod output;
pub mod service;
pub mod template;

use std::time::Duration;

/// Parses `500ms`, `2s`, `1m`, `1h` or a bare number of seconds, as Docker's flags do.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 2s, 1m"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    // `from_secs_f64` panics on values past `Duration`'s range: refuse them instead.
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("invalid duration {s:?}: too long"))
}

/// Shortest and longest heartbeat period `manager run` takes.
pub const HEARTBEAT_RANGE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(60));

/// Parses `--heartbeat-period`: a duration within [`HEARTBEAT_RANGE`], since a node is
/// declared down after three missed periods and the timers add periods together.
pub fn parse_heartbeat_period(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let (min, max) = HEARTBEAT_RANGE;
    if d < min || d > max {
        return Err(format!("heartbeat period {s:?} is out of range: use {}ms to {}s", min.as_millis(), max.as_secs()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_docker_flags() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn heartbeat_periods_out_of_range_are_refused_not_panicked_on() {
        assert_eq!(parse_heartbeat_period("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_heartbeat_period("60s").unwrap(), Duration::from_secs(60));
        for bad in ["1e300", "99999999999999999999h", "0", "1ms", "61s", "1h"] {
            let e = parse_heartbeat_period(bad).unwrap_err();
            assert!(e.contains("out of range") || e.contains("too long") || e.contains("invalid"), "{bad}: {e}");
        }
        assert!(parse_duration("1e300").is_err() || parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("99999999999999999999h").unwrap_err().contains("too long"));
    }

    /// Found by the `service_args` fuzz target: these panicked in `Duration::from_secs_f64`.
    #[test]
    fn overlong_durations_are_refused_not_a_panic() {
        for s in ["999999999999999999999999", "99999999999999999h", "18446744073709551616", &"9".repeat(400)] {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains("too long"), "{s}: {err}");
        }
    }
}
