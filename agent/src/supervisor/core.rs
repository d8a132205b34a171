//! The task state machine of the agent, pure: given what the manager wants of a task
//! (its desired state), what was last reported of it (its status) and what the node
//! observes now (container, image), [`step`] returns the **one** next thing to do. The
//! shell in [`super`] performs it and calls again, like swarmkit's
//! `agent/exec/controller.go`.
//!
//! It does no I/O and never reads the clock: `now_ms` comes in. The observed state only
//! moves forward (New → Accepted → Preparing → Starting → Running → Complete / Failed /
//! Shutdown / Rejected); every [`Action::Report`] is a state at or after the current one.
//! [`book`] keeps the node's whole task set with the same rules and steps every task.

pub mod book;

use shoal_proto::{BoundedString, TaskState, TaskStatus};

/// How long a task waits in Preparing for an image the node does not hold yet (the
/// session may still be fetching it) before it is rejected.
pub const IMAGE_WAIT_MS: u64 = 120_000;

/// What the runtime shows of a task's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// There is none.
    Absent,
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended with this code (143: SIGTERM).
    Exited {
        /// The exit code.
        code: i32,
    },
    /// Its monitor vanished without recording an exit (the node rebooted).
    Lost,
}

/// What the node observes of one task, gathered by the shell before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The container.
    pub container: Container,
    /// The task's image reference.
    pub image: &'a str,
    /// Whether the image is held complete.
    pub image_present: bool,
    /// Whether the agent has stopped (or is stopping) the container because the
    /// manager wants the task shut down: its exit is a Shutdown, not a failure.
    pub stop_requested: bool,
    /// How long to wait for a missing image (see [`IMAGE_WAIT_MS`]).
    pub image_wait_ms: u64,
    /// The board's disk is short of space (what [`crate::disk::assess`] said): a missing
    /// image cannot arrive, so waiting for it would be silent and endless.
    pub disk_full: Option<&'a str>,
}

/// The one next thing to do for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes (the container exits, the desired state moves).
    Noop,
    /// The image is missing; look again later.
    WaitForImage,
    /// Record and report this status (a forward move).
    Report(TaskStatus),
    /// Make the container: network sandbox, published ports, the container itself. On
    /// failure report [`rejected`].
    Prepare,
    /// Start the created container. On failure report [`rejected`].
    Start,
    /// Stop the running container (SIGTERM, SIGKILL after the grace period), as the
    /// manager wants the task shut down.
    Stop,
}

/// Decides the next step of a task.
pub fn step(now_ms: u64, desired: TaskState, status: &TaskStatus, facts: &Facts<'_>) -> Action {
    use TaskState::*;
    let state = status.state;
    if state.is_terminal() {
        return Action::Noop;
    }
    if desired > Running {
        return match facts.container {
            Container::Running => Action::Stop,
            Container::Exited { code } => Action::Report(shutdown(now_ms, Some(code))),
            _ => Action::Report(shutdown(now_ms, None)),
        };
    }
    // What the container did settles the state whatever step the task was at (after an
    // agent restart a task may find its container already running, or already ended).
    match facts.container {
        Container::Exited { code } => return Action::Report(exited(now_ms, code, facts.stop_requested)),
        Container::Lost => {
            return Action::Report(failed(
                now_ms,
                "task: container lost: its monitor ended without recording an exit (did the node reboot?)",
                None,
            ))
        }
        Container::Running if state < Running => return Action::Report(TaskStatus::new(Running, now_ms, "started")),
        _ => {}
    }
    match state {
        New | Pending | Assigned => Action::Report(TaskStatus::new(Accepted, now_ms, "accepted")),
        Accepted => Action::Report(TaskStatus::new(Preparing, now_ms, "preparing")),
        Preparing => match facts.container {
            Container::Absent if facts.image_present => Action::Prepare,
            Container::Absent if facts.disk_full.is_some() => Action::Report(rejected(
                now_ms,
                &format!(
                    "image {} cannot be stored: {}",
                    facts.image,
                    facts.disk_full.unwrap_or("no space left on the board's disk")
                ),
            )),
            Container::Absent if now_ms >= status.timestamp_ms.saturating_add(facts.image_wait_ms) => {
                Action::Report(rejected(
                    now_ms,
                    &format!(
                        "image {} is not on this node (not received from the manager within {} s): \
                         load it with `shoal image load`",
                        facts.image,
                        facts.image_wait_ms / 1000
                    ),
                ))
            }
            Container::Absent => Action::WaitForImage,
            _ => Action::Report(TaskStatus::new(Starting, now_ms, "starting")),
        },
        Starting => match facts.container {
            Container::Created => Action::Start,
            _ => Action::Report(failed(now_ms, "task: container removed before it started", None)),
        },
        Running => match facts.container {
            Container::Running => Action::Noop,
            _ => Action::Report(failed(now_ms, "task: container removed while running", None)),
        },
        // Terminal states returned above; Remove and Orphaned are never observed states.
        _ => Action::Noop,
    }
}

/// The status of a container that ended: Complete on 0, Failed otherwise, Shutdown when
/// the agent stopped it on the manager's request.
pub fn exited(now_ms: u64, code: i32, stop_requested: bool) -> TaskStatus {
    if stop_requested {
        return shutdown(now_ms, Some(code));
    }
    if code == 0 {
        let mut s = TaskStatus::new(TaskState::Complete, now_ms, "finished");
        s.exit_code = Some(0);
        return s;
    }
    failed(now_ms, &format!("task: non-zero exit ({code})"), Some(code))
}

/// Failed, with `err`.
pub fn failed(now_ms: u64, err: &str, code: Option<i32>) -> TaskStatus {
    let mut s = TaskStatus::new(TaskState::Failed, now_ms, "failed");
    s.err = Some(BoundedString::lossy(err));
    s.exit_code = code;
    s
}

/// Rejected by this node, with the reason.
pub fn rejected(now_ms: u64, reason: &str) -> TaskStatus {
    let mut s = TaskStatus::new(TaskState::Rejected, now_ms, "rejected");
    s.err = Some(BoundedString::lossy(reason));
    s
}

/// Shut down on the manager's request.
pub fn shutdown(now_ms: u64, code: Option<i32>) -> TaskStatus {
    let mut s = TaskStatus::new(TaskState::Shutdown, now_ms, "shutdown");
    s.exit_code = code;
    s
}

/// The container ID of a task: `<service>.<slot>.<task id>`, lowercase, characters the
/// runtime refuses replaced by `-`, the service name cut so that it fits 64 bytes (the
/// task ID alone keeps it unique).
pub fn container_id(service: &str, slot: u32, task_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' { c } else { '-' })
            .collect()
    };
    let tail = format!(".{slot}.{}", clean(task_id));
    let room = 64usize.saturating_sub(tail.len());
    let mut head: String = clean(service).chars().take(room).collect();
    if head.is_empty() {
        head.push('t');
    }
    let id = format!("{head}{tail}");
    id.chars().take(64).collect()
}

/// The hostname inside a task's container: the first 12 characters of its task ID, as
/// Swarm uses the short container ID. No dot in it: resolvers take what follows a
/// hostname's first dot as the search domain when `resolv.conf` names none (a
/// `web.2` hostname made every lookup of `db` a lookup of `db.2`).
pub fn hostname(_service: &str, _slot: u32, task_id: &str) -> String {
    task_id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn at(state: TaskState, ms: u64) -> TaskStatus {
        TaskStatus::new(state, ms, "")
    }

    fn facts(container: Container) -> Facts<'static> {
        Facts {
            container,
            image: "demo/app:1.0",
            image_present: true,
            stop_requested: false,
            image_wait_ms: 1000,
            disk_full: None,
        }
    }

    fn report(a: Action) -> TaskStatus {
        match a {
            Action::Report(s) => s,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    /// Drives a task from `from` by applying reports and the shell's effects as a perfect
    /// runtime would, until the core has nothing left to do.
    fn drive(desired: TaskState, from: TaskState, mut container: Container) -> (Vec<TaskState>, Vec<Action>) {
        let mut status = at(from, 0);
        let (mut states, mut effects) = (vec![], vec![]);
        for now in 1..50 {
            match step(now, desired, &status, &facts(container)) {
                Action::Report(s) => {
                    assert!(s.state >= status.state, "{:?} after {:?}", s.state, status.state);
                    states.push(s.state);
                    status = s;
                }
                Action::Noop | Action::WaitForImage => break,
                a @ Action::Prepare => {
                    effects.push(a);
                    container = Container::Created;
                }
                a @ Action::Start => {
                    effects.push(a);
                    container = Container::Running;
                }
                a @ Action::Stop => {
                    effects.push(a);
                    container = Container::Exited { code: 143 };
                }
            }
        }
        (states, effects)
    }

    #[test]
    fn a_new_task_moves_one_step_at_a_time_to_running() {
        let (states, effects) = drive(Running, Assigned, Container::Absent);
        assert_eq!(states, [Accepted, Preparing, Starting, Running]);
        assert_eq!(effects, [Action::Prepare, Action::Start]);
    }

    #[test]
    fn desired_shutdown_stops_a_running_task_and_reports_shutdown_with_143() {
        let status = at(Running, 5);
        assert_eq!(step(10, Shutdown, &status, &facts(Container::Running)), Action::Stop);
        let done = report(step(11, Shutdown, &status, &facts(Container::Exited { code: 143 })));
        assert_eq!((done.state, done.exit_code, done.err), (Shutdown, Some(143), None));
        // Desired Remove is "later than Shutdown" and means the same to the agent.
        assert_eq!(step(10, Remove, &status, &facts(Container::Running)), Action::Stop);
    }

    #[test]
    fn a_task_shut_down_before_it_ran_reports_shutdown_without_starting() {
        for from in [Assigned, Accepted, Preparing, Starting] {
            for c in [Container::Absent, Container::Created] {
                let s = report(step(1, Shutdown, &at(from, 0), &facts(c)));
                assert_eq!((s.state, s.exit_code), (Shutdown, None));
            }
        }
    }

    #[test]
    fn exits_are_complete_on_zero_failed_otherwise_and_shutdown_when_stopped() {
        let running = at(Running, 0);
        let ok = report(step(2, Running, &running, &facts(Container::Exited { code: 0 })));
        assert_eq!((ok.state, ok.exit_code), (Complete, Some(0)));
        let bad = report(step(2, Running, &running, &facts(Container::Exited { code: 1 })));
        assert_eq!(bad.state, Failed);
        assert_eq!(bad.err.as_deref(), Some("task: non-zero exit (1)"));
        assert_eq!(bad.exit_code, Some(1));
        // Killed by someone else's SIGTERM: a failure with 143.
        let killed = report(step(2, Running, &running, &facts(Container::Exited { code: 143 })));
        assert_eq!((killed.state, killed.err.as_deref()), (Failed, Some("task: non-zero exit (143)")));
        // Stopped by the agent on the manager's request: Shutdown, not Failed.
        let f = Facts { stop_requested: true, ..facts(Container::Exited { code: 143 }) };
        let stopped = report(step(2, Running, &running, &f));
        assert_eq!((stopped.state, stopped.exit_code), (Shutdown, Some(143)));
    }

    #[test]
    fn a_missing_image_is_waited_for_then_rejected_with_its_name() {
        let preparing = at(Preparing, 100);
        let missing = Facts { image_present: false, ..facts(Container::Absent) };
        assert_eq!(step(500, Running, &preparing, &missing), Action::WaitForImage);
        // On a full disk the image will not come: said at once, not after the wait.
        let full = Facts { disk_full: Some("no space left on the board's disk (/d): 1.0 MiB free"), ..missing };
        let r = report(step(500, Running, &preparing, &full));
        assert_eq!(r.state, Rejected);
        assert!(
            r.err.as_deref().unwrap().contains("cannot be stored: no space left on the board's disk (/d)"),
            "{r:?}"
        );
        let r = report(step(1100, Running, &preparing, &missing));
        assert_eq!(r.state, Rejected);
        assert!(r.err.as_deref().unwrap().contains("image demo/app:1.0 is not on this node"), "{r:?}");
        // It arrived in time: prepare.
        assert_eq!(step(900, Running, &preparing, &facts(Container::Absent)), Action::Prepare);
    }

    #[test]
    fn preparation_and_start_failures_are_rejections_with_the_reason() {
        let r = rejected(3, "host port 8000 is already in use on this node (tcp)");
        assert_eq!(r.state, Rejected);
        assert_eq!(r.err.as_deref(), Some("host port 8000 is already in use on this node (tcp)"));
        assert!(r.state > Preparing && r.state > Starting);
    }

    #[test]
    fn adopted_containers_settle_the_state_at_once() {
        // After a restart: a task recorded as Starting whose container runs.
        assert_eq!(report(step(1, Running, &at(Starting, 0), &facts(Container::Running))).state, Running);
        // Recorded as Running, exited while the agent was down: its code is reported.
        let s = report(step(1, Running, &at(Running, 0), &facts(Container::Exited { code: 3 })));
        assert_eq!((s.state, s.exit_code), (Failed, Some(3)));
        // The node rebooted: the container is lost.
        assert_eq!(report(step(1, Running, &at(Running, 0), &facts(Container::Lost))).state, Failed);
        // A running task whose container runs needs nothing.
        assert_eq!(step(1, Running, &at(Running, 0), &facts(Container::Running)), Action::Noop);
    }

    #[test]
    fn terminal_tasks_never_move_again() {
        for s in [Complete, Shutdown, Failed, Rejected] {
            for c in [Container::Absent, Container::Running, Container::Exited { code: 0 }] {
                assert_eq!(step(1, Running, &at(s, 0), &facts(c)), Action::Noop);
                assert_eq!(step(1, Shutdown, &at(s, 0), &facts(c)), Action::Noop);
            }
        }
    }

    #[test]
    fn no_sequence_of_observations_moves_a_task_backwards() {
        let containers =
            [Container::Absent, Container::Created, Container::Running, Container::Exited { code: 1 }, Container::Lost];
        let states = [New, Assigned, Accepted, Preparing, Starting, Running, Complete, Failed, Shutdown, Rejected];
        for from in states {
            for c in containers {
                for desired in [Running, Shutdown] {
                    for present in [true, false] {
                        let f = Facts { image_present: present, ..facts(c) };
                        if let Action::Report(s) = step(10_000, desired, &at(from, 0), &f) {
                            assert!(s.state > from, "{from:?} -> {:?} ({c:?}, {desired:?})", s.state);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn container_ids_fit_the_runtime_and_stay_unique() {
        let task = "abcdefghijklmnopqrstuvwxy";
        assert_eq!(container_id("web", 1, task), "web.1.abcdefghijklmnopqrstuvwxy");
        let long = container_id(&"Long_Name".repeat(10), 12, task);
        assert!(long.len() <= 64 && long.ends_with(".12.abcdefghijklmnopqrstuvwxy"), "{long}");
        assert!(crate::runtime::validate_id(&long).is_ok());
        assert!(crate::runtime::validate_id(&container_id("", 0, task)).is_ok());
        assert_eq!(hostname("web", 2, task), "abcdefghijkl");
        assert_eq!(hostname("agent", 0, "abc"), "abc");
        assert!(!hostname("web.x", 2, task).contains('.'));
    }
}
