//! Health checks: what a service (or its image) says to run in each container to tell
//! whether it works, the health a task reports, and the rules built on it. Pure.
//!
//! A check's settings follow Docker's `HealthConfig`: a test (`CMD args…`, `CMD-SHELL
//! command`, `NONE`), an interval, a timeout, a start period and a number of retries,
//! each `0`/empty meaning "as the image says, else Docker's default". A task with a
//! check is `Starting` until its first success, then `Healthy`; `retries` consecutive
//! failures after the start period make it `Unhealthy`, and the agent then stops it.
//! Only tasks that are not known to be unwell serve traffic and count as up
//! ([`serves`]).

use serde::{Deserialize, Serialize};

use crate::services::Arg;
use crate::{BoundedVec, TaskState, TaskStatus};

/// Most words of a check's test.
pub const MAX_TEST_ARGS: usize = 64;
/// Docker's defaults: a check every 30 s, 30 s to answer, 3 failures in a row.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// See [`DEFAULT_INTERVAL_MS`].
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// See [`DEFAULT_INTERVAL_MS`].
pub const DEFAULT_RETRIES: u32 = 3;

/// A health check as a service or an image gives it; zero and empty fields are not set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `[]` (not set), `["NONE"]`, `["CMD", arg…]` or `["CMD-SHELL", command]`.
    pub test: BoundedVec<Arg, MAX_TEST_ARGS>,
    /// Time between checks, ms.
    pub interval_ms: u64,
    /// Time a check may take before it counts as failed, ms.
    pub timeout_ms: u64,
    /// Time after the start during which failures do not count, ms.
    pub start_period_ms: u64,
    /// Failures in a row that make the task unhealthy.
    pub retries: u32,
}

/// A check ready to run, every field decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The command line to run in the container.
    pub argv: Vec<String>,
    /// Time between checks, ms.
    pub interval_ms: u64,
    /// Time a check may take, ms.
    pub timeout_ms: u64,
    /// Grace after the start, ms.
    pub start_period_ms: u64,
    /// Failures in a row that make the task unhealthy.
    pub retries: u32,
}

/// What a bad test looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// Not one of the three forms.
    #[error("invalid health check test {0:?}: use [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]")]
    Test(String),
}

impl HealthConfig {
    /// Checks the form of the test.
    pub fn validate(&self) -> Result<(), HealthError> {
        let words: Vec<&str> = self.test.iter().map(|a| &**a).collect();
        match words.as_slice() {
            [] | ["NONE"] => Ok(()),
            ["CMD", _, ..] => Ok(()),
            ["CMD-SHELL", cmd] if !cmd.trim().is_empty() => Ok(()),
            _ => Err(HealthError::Test(words.join(" "))),
        }
    }

    /// Whether it turns checks off (`--no-healthcheck`, or an image's `NONE`).
    pub fn is_none(&self) -> bool {
        self.test.len() == 1 && self.test.iter().next().is_some_and(|a| &**a == "NONE")
    }
}

/// The check a container runs: the service's settings over the image's, field by field,
/// over Docker's defaults; `None` when neither gives a test or one says `NONE`.
pub fn resolve(service: Option<&HealthConfig>, image: Option<&HealthConfig>) -> Option<Check> {
    let set =
        |f: fn(&HealthConfig) -> u64| service.map(f).filter(|v| *v > 0).or_else(|| image.map(f).filter(|v| *v > 0));
    let test = service.filter(|s| !s.test.is_empty()).or(image.filter(|i| !i.test.is_empty()))?;
    let words: Vec<String> = test.test.iter().map(|a| a.to_string()).collect();
    let argv = match words.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, [cmd])) if kind == "CMD-SHELL" => vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd.clone()],
        _ => return None,
    };
    Some(Check {
        argv,
        interval_ms: set(|c| c.interval_ms).unwrap_or(DEFAULT_INTERVAL_MS),
        timeout_ms: set(|c| c.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS),
        start_period_ms: set(|c| c.start_period_ms).unwrap_or(0),
        retries: set(|c| u64::from(c.retries)).map_or(DEFAULT_RETRIES, |r| r.min(u64::from(u32::MAX)) as u32),
    })
}

/// A running task's health, as its node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    /// Checked, not yet passed.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "health: starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// Whether a task with this status may receive traffic (VIP, mesh, DNS) and counts as
/// up for an update: running, and healthy when it has a check.
pub fn serves(status: &TaskStatus) -> bool {
    status.state == TaskState::Running && status.health.is_none_or(|h| h == Health::Healthy)
}

/// The health of one container, one check result at a time (no clock: `now_ms` comes
/// in). Failures inside the start period do not count until a check has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    started_ms: u64,
    start_period_ms: u64,
    retries: u32,
    failures: u32,
    health: Health,
}

impl Tracker {
    /// A container started at `started_ms` with `check`.
    pub fn new(started_ms: u64, check: &Check) -> Self {
        Self {
            started_ms,
            start_period_ms: check.start_period_ms,
            retries: check.retries.max(1),
            failures: 0,
            health: Health::Starting,
        }
    }

    /// The health now.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Takes the result of a check that ended at `now_ms`; returns the new health when it
    /// changed. Unhealthy is final: the container is stopped.
    pub fn record(&mut self, now_ms: u64, passed: bool) -> Option<Health> {
        let before = self.health;
        if self.health == Health::Unhealthy {
            return None;
        }
        if passed {
            self.failures = 0;
            self.health = Health::Healthy;
        } else if self.health == Health::Starting && now_ms < self.started_ms.saturating_add(self.start_period_ms) {
            // Still starting up: Docker does not count these.
        } else {
            self.failures += 1;
            if self.failures >= self.retries {
                self.health = Health::Unhealthy;
            }
        }
        (self.health != before).then_some(self.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(test: &[&str], interval_ms: u64, retries: u32) -> HealthConfig {
        HealthConfig {
            test: test.iter().map(|w| Arg::try_from(*w).unwrap()).collect::<Vec<_>>().try_into().unwrap(),
            interval_ms,
            retries,
            ..Default::default()
        }
    }

    #[test]
    fn the_service_overrides_the_image_field_by_field() {
        let image = config(&["CMD-SHELL", "wget -q -O- localhost:8000"], 5_000, 2);
        let c = resolve(None, Some(&image)).unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "wget -q -O- localhost:8000"]);
        assert_eq!((c.interval_ms, c.timeout_ms, c.retries), (5_000, DEFAULT_TIMEOUT_MS, 2));
        let service = config(&[], 1_000, 0);
        let c = resolve(Some(&service), Some(&image)).unwrap();
        assert_eq!((c.interval_ms, c.retries), (1_000, 2), "the image's test, the service's interval");
        let cmd = config(&["CMD", "true"], 0, 0);
        assert_eq!(resolve(Some(&cmd), Some(&image)).unwrap().argv, ["true"]);
        assert_eq!(resolve(Some(&config(&["NONE"], 0, 0)), Some(&image)), None, "--no-healthcheck");
        assert_eq!(resolve(None, Some(&config(&["NONE"], 0, 0))), None);
        assert_eq!(resolve(None, None), None);
        assert_eq!(resolve(Some(&service), None), None, "settings without a test check nothing");
    }

    #[test]
    fn tests_of_the_wrong_form_are_refused() {
        for bad in [&["CMD"][..], &["CMD-SHELL"], &["CMD-SHELL", "a", "b"], &["RUN", "x"], &["NONE", "x"]] {
            let e = config(bad, 0, 0).validate().unwrap_err();
            assert!(e.to_string().starts_with("invalid health check test"), "{e}");
        }
        for good in [&[][..], &["NONE"], &["CMD", "true"], &["CMD-SHELL", "exit 0"]] {
            config(good, 0, 0).validate().unwrap();
        }
    }

    fn check(start_period_ms: u64, retries: u32) -> Check {
        Check { argv: vec!["true".into()], interval_ms: 1_000, timeout_ms: 1_000, start_period_ms, retries }
    }

    #[test]
    fn starting_then_healthy_then_unhealthy_after_retries_in_a_row() {
        let mut t = Tracker::new(0, &check(0, 3));
        assert_eq!(t.health(), Health::Starting);
        assert_eq!(t.record(1_000, false), None, "one failure of three");
        assert_eq!(t.record(2_000, true), Some(Health::Healthy));
        assert_eq!(t.record(3_000, false), None);
        assert_eq!(t.record(4_000, false), None);
        assert_eq!(t.record(5_000, true), None, "a success resets the count");
        assert_eq!(t.record(6_000, false), None);
        assert_eq!(t.record(7_000, false), None);
        assert_eq!(t.record(8_000, false), Some(Health::Unhealthy));
        assert_eq!(t.record(9_000, true), None, "unhealthy is final");
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_pass() {
        let mut t = Tracker::new(1_000, &check(10_000, 1));
        for now in [2_000, 5_000, 10_999] {
            assert_eq!(t.record(now, false), None, "at {now}");
        }
        assert_eq!(t.record(11_000, false), Some(Health::Unhealthy), "the period is over");
        let mut t = Tracker::new(0, &check(10_000, 1));
        t.record(1_000, true);
        assert_eq!(t.record(2_000, false), Some(Health::Unhealthy), "passed once: failures count at once");
    }

    #[test]
    fn only_running_tasks_that_are_not_unwell_serve() {
        let mut s = TaskStatus::new(TaskState::Running, 0, "running");
        assert!(serves(&s), "no check");
        s.health = Some(Health::Starting);
        assert!(!serves(&s));
        s.health = Some(Health::Healthy);
        assert!(serves(&s));
        s.health = Some(Health::Unhealthy);
        assert!(!serves(&s));
        assert!(!serves(&TaskStatus::new(TaskState::Starting, 0, "")));
    }
}
