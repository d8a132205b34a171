//! The values a decision is made of: the time it is made at ([`Now`]) and what it
//! changes ([`Plan`]: tasks to create, start, stop, orphan, delete, and when to look
//! again). The orchestrator and the updater write plans; [`crate::pass`] applies them.

use std::collections::HashSet;

use shoal_proto::{apply_status, Task, TaskId, TaskState, TaskStatus};

use super::Millis;

/// The two clocks a decision needs: the monotonic one for delays, the wall one for the
/// timestamps people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (delays, windows).
    pub mono: Millis,
    /// Milliseconds since the Unix epoch (creation times and status timestamps).
    pub wall_ms: u64,
}

/// A task the manager no longer wants running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The task; its desired state becomes Shutdown.
    pub task: TaskId,
    /// Why, for logs.
    pub reason: String,
}

/// What to change, as values. Apply in order: create, start, shutdown, orphan, remove
/// ([`Plan::apply_to`] does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New tasks (observed Pending, desired Running); replicated ones await the scheduler.
    pub create: Vec<Task>,
    /// Tasks whose desired state becomes Shutdown.
    pub shutdown: Vec<Stop>,
    /// Tasks whose observed state becomes Orphaned: their node will not report again.
    pub orphan: Vec<TaskId>,
    /// Tasks to delete from the store.
    pub remove: Vec<TaskId>,
    /// Held tasks (desired Ready) whose desired state becomes Running: a stop-first
    /// update releases them once the task they replace has stopped.
    pub start: Vec<TaskId>,
    /// When to call again even if nothing happens (a restart delay ends).
    pub wake_at: Option<Millis>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.shutdown.is_empty()
            && self.orphan.is_empty()
            && self.remove.is_empty()
            && self.start.is_empty()
    }

    /// Applies the plan to an in-memory task list (tests, simulations; the server does the
    /// same in one store transaction).
    pub fn apply_to(self, tasks: &mut Vec<Task>, wall_ms: u64) {
        tasks.extend(self.create);
        if !self.start.is_empty() {
            let go: HashSet<&TaskId> = self.start.iter().collect();
            for t in tasks.iter_mut().filter(|t| go.contains(&t.id) && t.is_held()) {
                t.desired_state = TaskState::Running;
            }
        }
        if !self.shutdown.is_empty() {
            let stop: HashSet<&TaskId> = self.shutdown.iter().map(|s| &s.task).collect();
            for t in tasks.iter_mut().filter(|t| stop.contains(&t.id)) {
                // Desired state only moves forward too.
                t.desired_state = t.desired_state.max(TaskState::Shutdown);
            }
        }
        if !self.orphan.is_empty() {
            let orphan: HashSet<&TaskId> = self.orphan.iter().collect();
            for t in tasks.iter_mut().filter(|t| orphan.contains(&t.id)) {
                // Orphaned is the last state: the move cannot be backward.
                let _ = apply_status(t, TaskStatus::new(TaskState::Orphaned, wall_ms, "node is gone"));
            }
        }
        if !self.remove.is_empty() {
            let gone: HashSet<&TaskId> = self.remove.iter().collect();
            tasks.retain(|t| !gone.contains(&t.id));
        }
    }
}

/// The earlier of two wake-up times, either of which may be absent.
pub fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
