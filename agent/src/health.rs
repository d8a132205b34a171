//! Health checks on the board: each running task whose service or image has a check
//! gets a monitor that runs the check's command inside the container (as `shoal exec`
//! does: a short-lived `shoal-agent exec-in` child, so the check has the container's
//! namespaces, cgroup and confinement) every interval, kills it at its timeout, and feeds
//! the result to the pure [`Tracker`]. Health changes go to the supervisor, which reports
//! them in the task's status and stops a task that turned unhealthy.
//!
//! The settings come from [`shoal_proto::health::resolve`] (the service's over the
//! image's `Healthcheck`, over Docker's defaults); the state machine and the rule of
//! which tasks serve are in [`shoal_proto::health`].

use std::process::Stdio;
use std::time::Duration;

use shoal_proto::health::{Check, Health, HealthConfig, Tracker};
use shoal_proto::TaskId;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::exec::Paths;

/// An image's `Healthcheck` in the service's terms (ns → ms; negative or absurd values
/// are "not set"); `None` when the image has none.
pub fn from_image(h: Option<&shoal_oci::spec::Healthcheck>) -> Option<HealthConfig> {
    let h = h?;
    let ms = |ns: Option<i64>| ns.filter(|n| *n > 0).map_or(0, |n| (n / 1_000_000) as u64);
    let mut test = shoal_proto::BoundedVec::new();
    for word in h.test.iter().flatten() {
        // A test that does not fit the wire's bounds is not run rather than run cut.
        test.push(shoal_proto::services::Arg::try_from(word.as_str()).ok()?).ok()?;
    }
    let config = HealthConfig {
        test,
        interval_ms: ms(h.interval),
        timeout_ms: ms(h.timeout),
        start_period_ms: ms(h.start_period),
        retries: h.retries.filter(|r| *r > 0).map_or(0, |r| r.min(i64::from(u32::MAX)) as u32),
    };
    config.validate().ok().map(|()| config)
}

/// Runs `check` once in container `cid`: true when it exited 0 within its timeout.
pub async fn probe(paths: &Paths, cid: &str, check: &Check) -> bool {
    let child = tokio::process::Command::from(crate::exec::agent_command(&paths.agent_exe))
        .arg("exec-in")
        .arg("--containers")
        .arg(&paths.containers)
        .arg("--state")
        .arg(&paths.state)
        .arg(cid)
        .arg("--")
        .args(&check.argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return false };
    match tokio::time::timeout(Duration::from_millis(check.timeout_ms), child.wait()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(_)) => false,
        Err(_) => {
            debug!(container = %cid, "health check timed out");
            // Dropping the child kills `exec-in`, and with it the check's process.
            false
        }
    }
}

/// Watches one container: sends `Starting` at once, then every change, and ends after
/// `Unhealthy` (or when the receiver is gone or the task is aborted).
pub async fn monitor(paths: Paths, cid: String, task: TaskId, check: Check, tx: mpsc::Sender<(TaskId, Health)>) {
    let mut tracker = Tracker::new(shoal_link::wall_ms(), &check);
    if tx.send((task.clone(), tracker.health())).await.is_err() {
        return;
    }
    let interval = Duration::from_millis(check.interval_ms.max(100));
    loop {
        tokio::time::sleep(interval).await;
        let passed = probe(&paths, &cid, &check).await;
        if let Some(health) = tracker.record(shoal_link::wall_ms(), passed) {
            info!(task = %task, container = %cid, %health, "health changed");
            if tx.send((task.clone(), health)).await.is_err() || health == Health::Unhealthy {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_healthcheck_in_nanoseconds_becomes_milliseconds() {
        let h = shoal_oci::spec::Healthcheck {
            test: Some(vec!["CMD-SHELL".into(), "wget -q localhost".into()]),
            interval: Some(2_000_000_000),
            timeout: Some(-5),
            start_period: None,
            retries: Some(4),
        };
        let c = from_image(Some(&h)).unwrap();
        assert_eq!((c.interval_ms, c.timeout_ms, c.start_period_ms, c.retries), (2_000, 0, 0, 4));
        let check = shoal_proto::health::resolve(None, Some(&c)).unwrap();
        assert_eq!(check.argv, ["/bin/sh", "-c", "wget -q localhost"]);
        let bad = shoal_oci::spec::Healthcheck { test: Some(vec!["CMD".into()]), ..Default::default() };
        assert_eq!(from_image(Some(&bad)), None, "a malformed test is not run");
        assert_eq!(from_image(None), None);
    }
}
