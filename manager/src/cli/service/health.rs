//! `--health-cmd`, `--health-interval`, `--health-timeout`, `--health-retries`,
//! `--health-start-period` and `--no-healthcheck`, on create and update, with Docker's
//! meanings: what is given overrides the image's `HEALTHCHECK` field by field, unset
//! flags keep what the spec (or else the image) says.

use clap::Args;
use shoal_proto::health::HealthConfig;
use shoal_proto::services::{parse_duration_ms, Arg};
use shoal_proto::ServiceSpec;

/// The health flags.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct HealthArgs {
    /// Command run in the container to check its health (through `/bin/sh -c`); exit 0
    /// is healthy.
    #[arg(long = "health-cmd", value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between checks, e.g. 5s [default: the image's, else 30s].
    #[arg(long = "health-interval", value_name = "DURATION", value_parser = parse_health_duration)]
    pub health_interval: Option<u64>,
    /// Time a check may take before it counts as failed [default: the image's, else 30s].
    #[arg(long = "health-timeout", value_name = "DURATION", value_parser = parse_health_duration)]
    pub health_timeout: Option<u64>,
    /// Failures in a row that make a task unhealthy [default: the image's, else 3].
    #[arg(long = "health-retries", value_name = "N")]
    pub health_retries: Option<u32>,
    /// Time after the start during which failures do not count [default: 0s].
    #[arg(long = "health-start-period", value_name = "DURATION", value_parser = parse_health_duration)]
    pub health_start_period: Option<u64>,
    /// Run no health check, not even the image's.
    #[arg(long = "no-healthcheck", conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,
}

/// A check's duration: at least 1 ms when set (0 means "not set" in the spec), at most
/// a day.
fn parse_health_duration(s: &str) -> Result<u64, String> {
    let ms = parse_duration_ms(s).map_err(|e| e.to_string())?;
    if !(1..=86_400_000).contains(&ms) {
        return Err(format!("health check duration {s:?} is out of range: use 1ms to 24h"));
    }
    Ok(ms)
}

impl HealthArgs {
    /// Whether any flag is given.
    pub fn any(&self) -> bool {
        self != &Self::default()
    }

    /// Applies the flags to `spec`'s health check.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if !self.any() {
            return Ok(());
        }
        let mut h = spec.health.clone().unwrap_or_default();
        let words = |w: &[&str]| -> anyhow::Result<_> {
            let args = w.iter().map(|a| Arg::try_from(*a)).collect::<Result<Vec<_>, _>>();
            let args =
                args.map_err(|_| anyhow::anyhow!("--health-cmd is longer than 1024 bytes: put it in a script"))?;
            Ok(args.try_into().expect("two words fit"))
        };
        if self.no_healthcheck {
            h = HealthConfig { test: words(&["NONE"])?, ..Default::default() };
        }
        if let Some(cmd) = &self.health_cmd {
            if cmd.trim().is_empty() {
                anyhow::bail!("--health-cmd is empty: give a command, or use --no-healthcheck");
            }
            h.test = words(&["CMD-SHELL", cmd])?;
        }
        if let Some(v) = self.health_interval {
            h.interval_ms = v;
        }
        if let Some(v) = self.health_timeout {
            h.timeout_ms = v;
        }
        if let Some(v) = self.health_start_period {
            h.start_period_ms = v;
        }
        if let Some(v) = self.health_retries {
            h.retries = v;
        }
        spec.health = Some(h);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap())
    }

    #[test]
    fn flags_set_a_shell_check_and_update_changes_only_what_is_given() {
        let mut s = spec();
        let create = HealthArgs {
            health_cmd: Some("wget -q -O- localhost:8000".into()),
            health_interval: Some(1_000),
            health_retries: Some(2),
            ..Default::default()
        };
        create.apply(&mut s).unwrap();
        let h = s.health.clone().unwrap();
        let test: Vec<&str> = h.test.iter().map(|a| &**a).collect();
        assert_eq!(test, ["CMD-SHELL", "wget -q -O- localhost:8000"]);
        assert_eq!((h.interval_ms, h.retries, h.timeout_ms), (1_000, 2, 0));
        HealthArgs { health_timeout: Some(500), ..Default::default() }.apply(&mut s).unwrap();
        let h = s.health.clone().unwrap();
        assert_eq!((h.interval_ms, h.timeout_ms, h.test.len()), (1_000, 500, 2), "the rest kept");
        HealthArgs { no_healthcheck: true, ..Default::default() }.apply(&mut s).unwrap();
        assert!(s.health.as_ref().unwrap().is_none());
        HealthArgs::default().apply(&mut s).unwrap();
        assert!(s.health.as_ref().unwrap().is_none(), "no flags, no change");
    }

    #[test]
    fn bad_health_flags_say_what_to_do() {
        let e = HealthArgs { health_cmd: Some(" ".into()), ..Default::default() }.apply(&mut spec()).unwrap_err();
        assert!(e.to_string().contains("--no-healthcheck"), "{e}");
        assert!(parse_health_duration("0s").unwrap_err().contains("out of range"));
        assert!(parse_health_duration("soon").is_err());
        assert_eq!(parse_health_duration("1m").unwrap(), 60_000);
    }
}
