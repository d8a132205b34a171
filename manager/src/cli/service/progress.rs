//! Following a service until it converges: the pure verdict on one look at it, and the
//! loop that polls the manager, after docker/cli's progress output.

use std::time::{Duration, Instant};

use shoal_proto::dispatch::{ServiceView, TaskView, UpdateState, UpdateStatus};
use shoal_proto::TaskState;

use super::*;
use crate::cli::client::Client;

/// Longest wait without any sign of progress (a new line to print).
pub(super) const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long tasks may sit unplaceable, with nothing else progressing, before giving up.
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(15);

/// Where a service stands: tasks running the current spec out of those wanted, and the
/// scheduler's reasons for tasks it can't place.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Tasks of the current spec that run.
    pub running: u32,
    /// Tasks wanted.
    pub desired: u32,
    /// Whether tasks of an older spec still run or are wanted.
    pub outdated: bool,
    /// `NAME.SLOT: reason` for each task that can't be placed.
    pub unplaceable: Vec<String>,
}

impl Progress {
    /// Converged: every wanted task runs the current spec.
    pub fn converged(&self) -> bool {
        self.running == self.desired && !self.outdated
    }
}

/// Computes [`Progress`] from a service and its tasks.
pub fn progress(view: &ServiceView, tasks: &[TaskView]) -> Progress {
    let spec = view.service.spec.task_spec();
    let own: Vec<&TaskView> =
        tasks.iter().filter(|t| t.task.service_id == view.service.id && t.task.is_desired_running()).collect();
    let running = own.iter().filter(|t| t.task.spec == spec && t.task.status.state == TaskState::Running).count();
    let outdated = own.iter().any(|t| t.task.spec != spec);
    let unplaceable = own
        .iter()
        .filter(|t| t.task.status.state <= TaskState::Pending && t.task.status.message.starts_with("no suitable node"))
        .map(|t| format!("{}: {}", task_name(t), t.task.status.message))
        .collect();
    Progress { running: running as u32, desired: view.desired, outdated, unplaceable }
}

/// What a wait follows after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Only the tasks: a new service, or a change that started no update (a scale).
    Tasks,
    /// The update the command started: its pausing or rolling back is a failure.
    Update,
    /// The rollback the operator asked for: it completing is success.
    Rollback,
}

/// What to follow after `service update`: the update status if the request started an
/// update (a new start time), else the tasks, since changing only the replicas (or the
/// update config) leaves the status of the last update as it was.
pub fn follow(before: Option<&UpdateStatus>, after: Option<&UpdateStatus>, rollback: bool) -> Follow {
    let started = |s: Option<&UpdateStatus>| s.map(|s| s.started_at_ms);
    if after.is_none() || started(before) == started(after) {
        Follow::Tasks
    } else if rollback {
        Follow::Rollback
    } else {
        Follow::Update
    }
}

/// Where a wait stands after one look at the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching.
    Continue,
    /// The service converged.
    Done,
    /// It won't, as docker/cli words it (`service update paused: ...`).
    Failed(String),
}

/// Judges one look at the service, after docker/cli's progress: an update ends with its
/// status, tasks only when they all run the current spec.
pub fn verdict(view: &ServiceView, tasks: &[TaskView], follow: Follow) -> Verdict {
    let p = progress(view, tasks);
    match (follow, &view.update_status) {
        (Follow::Update | Follow::Rollback, Some(status)) => status_verdict(status, follow),
        _ if p.converged() => Verdict::Done,
        // Old tasks under a paused update stay: waiting for them to go would be in vain.
        (_, Some(status))
            if p.outdated && matches!(status.state, UpdateState::Paused | UpdateState::RollbackPaused) =>
        {
            status_verdict(status, follow)
        }
        _ => Verdict::Continue,
    }
}

pub(super) fn status_verdict(status: &UpdateStatus, follow: Follow) -> Verdict {
    let message = &status.message;
    match status.state {
        UpdateState::Updating | UpdateState::RollbackStarted => Verdict::Continue,
        UpdateState::Completed => Verdict::Done,
        UpdateState::RollbackCompleted if follow == Follow::Rollback => Verdict::Done,
        // An automatic rollback: the update asked for did not happen.
        UpdateState::RollbackCompleted => Verdict::Failed(format!("service rolled back: {message}")),
        UpdateState::Paused => Verdict::Failed(format!("service update paused: {message}")),
        UpdateState::RollbackPaused => Verdict::Failed(format!("service rollback paused: {message}")),
    }
}

/// The update messages that only say an update or rollback runs: not worth a line.
pub(super) const PLAIN_MESSAGES: [&str; 2] = ["update in progress", "manually requested rollback"];

/// Task failures seen while following tasks before the wait gives up (Docker's CLI would
/// wait for ever; a crash-looping service is reported as failing instead).
pub const MAX_TASK_FAILURES: u32 = 3;

/// A wait's memory of what it printed, so that each line appears once.
#[derive(Debug)]
pub struct Watch {
    follow: Follow,
    /// Monitor period of the config in force, announced once the tasks all run.
    monitor_ms: u64,
    progress: String,
    message: String,
    verifying: bool,
    /// Following tasks: since when every task runs (milliseconds, the caller's clock).
    stable_since_ms: Option<u64>,
    /// Failed tasks already counted (or failed before the wait began), by ID.
    failed_seen: Option<std::collections::BTreeSet<String>>,
    failures: u32,
}

impl Watch {
    /// A wait that follows `follow`, paced by a config whose monitor period is `monitor_ms`.
    pub fn new(follow: Follow, monitor_ms: u64) -> Self {
        Self {
            follow,
            monitor_ms,
            progress: String::new(),
            message: String::new(),
            verifying: false,
            stable_since_ms: None,
            failed_seen: None,
            failures: 0,
        }
    }

    /// One look at the service at time `now_ms`: the lines to print now, and the verdict.
    /// Following tasks (create, scale), the service converges only once every task has
    /// run for the monitor period, and a task that fails meanwhile is reported as
    /// docker/cli does (`verify: Detected task failure`); after [`MAX_TASK_FAILURES`]
    /// the wait fails with the task's error.
    pub fn observe_at(&mut self, view: &ServiceView, tasks: &[TaskView], now_ms: u64) -> (Vec<String>, Verdict) {
        let (mut lines, verdict) = self.observe(view, tasks);
        if self.follow != Follow::Tasks || self.monitor_ms == 0 {
            return (lines, verdict);
        }
        let failed: Vec<&TaskView> = tasks
            .iter()
            .filter(|t| {
                t.task.service_id == view.service.id
                    && matches!(t.task.status.state, TaskState::Failed | TaskState::Rejected)
            })
            .collect();
        let first_look = self.failed_seen.is_none();
        let seen = self.failed_seen.get_or_insert_with(Default::default);
        let mut newest_error = None;
        for t in failed {
            if seen.insert(t.task.id.to_string()) && !first_look {
                let error = super::output::task_error(t);
                let why = if error.is_empty() { t.task.status.message.to_string() } else { error };
                newest_error = Some(format!("{}: {why}", task_name(t)));
            }
        }
        if let Some(error) = newest_error {
            self.failures += 1;
            self.stable_since_ms = None;
            lines.retain(|l| l != "verify: Service converged");
            lines.push("verify: Detected task failure".to_owned());
            if self.failures >= MAX_TASK_FAILURES {
                let name = &view.service.spec.name;
                return (
                    lines,
                    Verdict::Failed(format!("tasks of {name} keep failing ({error}): see `shoal service ps {name}`")),
                );
            }
            return (lines, Verdict::Continue);
        }
        if verdict != Verdict::Done {
            self.stable_since_ms = None;
            return (lines, verdict);
        }
        // Every task runs: done once they have for the monitor period.
        lines.retain(|l| l != "verify: Service converged");
        let since = *self.stable_since_ms.get_or_insert_with(|| {
            let secs = self.monitor_ms.div_ceil(1000);
            lines.push(format!("verify: Waiting {secs} seconds to verify that tasks are stable..."));
            now_ms
        });
        if now_ms.saturating_sub(since) >= self.monitor_ms {
            lines.push("verify: Service converged".to_owned());
            (lines, Verdict::Done)
        } else {
            (lines, Verdict::Continue)
        }
    }

    /// One look at the service, with no clock: what [`Watch::observe_at`] builds on.
    pub fn observe(&mut self, view: &ServiceView, tasks: &[TaskView]) -> (Vec<String>, Verdict) {
        let p = progress(view, tasks);
        let mut lines = Vec::new();
        let line = format!("overall progress: {} out of {} tasks", p.running, p.desired);
        if line != self.progress {
            self.progress.clone_from(&line);
            lines.push(line);
        }
        lines.extend(self.note(view));
        let mut verdict = verdict(view, tasks, self.follow);
        if let Verdict::Failed(e) = &mut verdict {
            // "rollback completed" says little: name the failure that caused it, when seen.
            if e.starts_with("service rolled back") && self.message.starts_with("update rolled back") {
                *e = format!("service rolled back: {}", self.message);
            }
        }
        if verdict == Verdict::Continue && p.converged() && !self.verifying && self.may_succeed(view) {
            // The manager completes the update once the new tasks stayed up this long.
            self.verifying = true;
            if self.monitor_ms > 0 {
                let secs = self.monitor_ms.div_ceil(1000);
                lines.push(format!("verify: Waiting {secs} seconds to verify that tasks are stable..."));
            }
        }
        if verdict == Verdict::Done {
            lines.push("verify: Service converged".to_owned());
        }
        (lines, verdict)
    }

    /// A new update message worth a line: a start-first fallback, an automatic rollback.
    fn note(&mut self, view: &ServiceView) -> Option<String> {
        let status = view.update_status.as_ref().filter(|s| self.follow != Follow::Tasks && s.state.is_active())?;
        if PLAIN_MESSAGES.contains(&&*status.message) || *status.message == self.message {
            return None;
        }
        self.message = status.message.to_string();
        let what = if status.state.is_rollback() { "rollback" } else { "update" };
        Some(format!("{what}: {}", status.message))
    }

    /// Whether the status is the one that can still end well: our update running, or
    /// the rollback the operator asked for.
    fn may_succeed(&self, view: &ServiceView) -> bool {
        let state = view.update_status.as_ref().map(|s| s.state);
        match self.follow {
            Follow::Tasks => false,
            Follow::Update => state == Some(UpdateState::Updating),
            Follow::Rollback => state == Some(UpdateState::RollbackStarted),
        }
    }
}

/// Follows a service until `watch` has a verdict, printing its lines.
pub(super) async fn converge(client: &Client, id: &str, mut watch: Watch) -> anyhow::Result<()> {
    let mut last_change = Instant::now();
    loop {
        let view = inspect(client, id).await?;
        let tasks = tasks(client, &[id.to_owned()]).await?;
        let (lines, verdict) = watch.observe_at(&view, &tasks, shoal_link::wall_ms());
        if !lines.is_empty() {
            last_change = Instant::now();
        }
        lines.iter().for_each(|l| println!("{l}"));
        match verdict {
            Verdict::Continue => {}
            Verdict::Done => return Ok(()),
            Verdict::Failed(e) => anyhow::bail!("{e}"),
        }
        give_up_if_stuck(&view, &progress(&view, &tasks), last_change.elapsed())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Ends a wait that can't end well: tasks no node can take, or nothing moving at all.
/// The timeout runs from the last change, so a slow, paced update is not cut short.
pub(super) fn give_up_if_stuck(view: &ServiceView, p: &Progress, quiet_for: Duration) -> anyhow::Result<()> {
    let name = &view.service.spec.name;
    if !p.unplaceable.is_empty() && quiet_for >= STUCK_AFTER {
        anyhow::bail!(
            "service {name} can't be fully placed:\n  {}\nthe manager keeps trying; see `shoal service ps {name}`",
            p.unplaceable.join("\n  ")
        );
    }
    if quiet_for >= CONVERGE_TIMEOUT {
        anyhow::bail!(
            "service {name} made no progress for {CONVERGE_TIMEOUT:?} ({} of {} tasks running); \
             the manager keeps trying: see `shoal service ps {name}`",
            p.running,
            p.desired
        );
    }
    Ok(())
}
