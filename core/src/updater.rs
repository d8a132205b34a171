//! The updater: rolls a service's tasks onto its current spec at the pace of its update
//! config, watches each new task through the monitor period, and acts on failures
//! (pause, continue, roll back), after swarmkit's updater. One [`Updater::step`] looks at
//! one service, its tasks and `now`, and returns what to change; the stored
//! [`UpdateProgress`] and the tasks themselves are all it needs to carry on after a
//! manager restart, so an update resumes where it was.
//!
//! Terms. A *slot* is a replicated slot, or a node for a global service. A task is
//! *fresh* when it carries the current task spec, *stale* otherwise. A slot is *dirty*
//! when its live tasks are all stale. A slot is *in flight* while its fresh task, created
//! by this update, is not *up*: Running, and healthy when it has a health check
//! ([`shoal_proto::health::serves`]; Swarm's worker waits exactly that long).
//!
//! Rules:
//! - at most `parallelism` slots (0: all) are in flight or inside their `delay` after
//!   their task came up; dirty slots are taken lowest slot (or node ID) first.
//! - stop-first: the stale task is stopped and the fresh one created *held* (desired
//!   state Ready: neither scheduled nor sent) until the stale one has stopped, or its
//!   node is down or gone.
//! - start-first: the fresh task is placed at once beside the stale one, which is
//!   stopped when the fresh one runs. When no node can take it — typically a host-mode
//!   port the stale task itself binds, moby/moby#36934 — the slot falls back to
//!   stop-first and the update's message says so: nothing waits forever on its own port.
//! - a task of this update that ends by itself (Complete, Failed, Rejected) before it has
//!   been up for `monitor` counts as a failure, at most one per slot; a task that never
//!   became healthy (the agent stops it, `task: unhealthy container`) is one. Once failures exceed
//!   `max_failure_ratio` of the slots that were dirty when the update began, the
//!   failure action applies: pause, continue, or roll back to the previous spec (whose
//!   pace is the rollback config of the spec being left).
//! - the update completes when no slot is dirty or in flight and every fresh task of the
//!   update has run for `monitor`.
//!
//! The only memory kept between calls is when each task of an update was first seen
//! running (monotonic), for the monitor window and the delay. After a restart it starts
//! again from the restart, which can only lengthen a wait.

use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_proto::dispatch::UpdateState;
use shoal_proto::health::serves;
use shoal_proto::{
    FailureAction, Message, NodeId, NodeStatus, Task, TaskId, TaskSpec, TaskState, UpdateConfig, UpdateOrder,
};

use crate::placement::ClusterNode;
use crate::plan::{earliest, Now, Plan};
use crate::scheduler::{self, Decision};
use crate::services::{self, ServiceRecord, UpdateProgress};
use crate::slots::{self, age_key, new_task, slot_of, SlotKey};
use crate::Millis;

/// What one step decided for one service.
#[derive(Debug, Default)]
pub struct Step {
    /// Tasks to create, stop, release, delete.
    pub plan: Plan,
    /// The service record, when its progress (or, by an automatic rollback, its spec)
    /// changed.
    pub record: Option<ServiceRecord>,
    /// What happened, for the log.
    pub events: Vec<String>,
}

/// The tasks of one slot, sorted out.
#[derive(Default)]
struct Slot<'a> {
    /// Newest live task of the current spec.
    fresh: Option<&'a Task>,
    /// Live tasks of another spec.
    stale: Vec<&'a Task>,
    /// Stale tasks asked to stop that a reachable node may still be running.
    stopping: usize,
}

/// The updater and its small memory.
#[derive(Debug, Default)]
pub struct Updater {
    /// When each task of an update was first seen Running or past it (monotonic).
    up_at: HashMap<TaskId, Millis>,
}

impl Updater {
    /// Decides the next step of `record`'s update. `own` are the service's tasks; `nodes`
    /// and `all` (every task) are for placing start-first tasks.
    pub fn step(
        &mut self,
        now: Now,
        record: &ServiceRecord,
        own: &[&Task],
        nodes: &[ClusterNode],
        all: &[Task],
        new_id: &mut dyn FnMut() -> TaskId,
    ) -> Step {
        let Some(progress) = &record.update else { return Step::default() };
        let mut p = progress.clone();
        let mut step = Step::default();
        let spec = record.service.spec.task_spec();
        let node_up: HashMap<&NodeId, bool> = nodes.iter().map(|n| (&n.id, n.status != NodeStatus::Down)).collect();
        let slots = sort_into_slots(own, &spec, &node_up);
        // Slots already moving finish their replacement even when the update is paused:
        // a held task still starts once its predecessor stopped.
        settle(&slots, &node_up, &mut step.plan);
        if !p.status.state.is_active() {
            return step;
        }
        let started = p.status.started_at_ms;
        let of_this_update = |t: &Task| t.spec == spec && t.created_at_ms >= started;
        for t in own.iter().filter(|t| of_this_update(t) && is_up(t)) {
            self.up_at.entry(t.id.clone()).or_insert(now.mono);
        }
        let dirty: Vec<&SlotKey> =
            slots.iter().filter(|(_, s)| s.fresh.is_none() && !s.stale.is_empty()).map(|(k, _)| k).collect();
        let total = *p.total.get_or_insert(dirty.len() as u32);

        // Failures first: they may stop everything else.
        if let Some(task) = self.count_failures(now, &mut p, own, &of_this_update) {
            let ratio_exceeded = u64::from(p.failed.len() as u32) * 1000
                > u64::from(p.config.max_failure_ratio_permille) * u64::from(total.max(1));
            let rolling_back = p.status.state.is_rollback();
            let action = match p.config.failure_action {
                FailureAction::Rollback if rolling_back => FailureAction::Pause,
                a => a,
            };
            if ratio_exceeded && action == FailureAction::Rollback {
                let message = format!("update rolled back due to failure or early termination of task {task}");
                if let Some(back) = services::roll_back_after_failure(record, &message, now.wall_ms) {
                    step.events.push(message);
                    let mut next = self.step(now, &back, own, nodes, all, new_id);
                    next.events.splice(0..0, step.events);
                    next.record.get_or_insert(back);
                    return next;
                }
                let message = format!(
                    "update paused due to failure or early termination of task {task}: \
                     there is no previous spec to roll back to"
                );
                return pause(record, p, UpdateState::Paused, message, step);
            }
            if ratio_exceeded && action == FailureAction::Pause {
                let (state, what) = if rolling_back {
                    (UpdateState::RollbackPaused, "rollback")
                } else {
                    (UpdateState::Paused, "update")
                };
                let message = format!("{what} paused due to failure or early termination of task {task}");
                return pause(record, p, state, message, step);
            }
            step.events.push(format!("task {task} failed; the update continues ({} failures)", p.failed.len()));
        }

        let mut in_flight = 0usize;
        let mut settling = false;
        for s in slots.values() {
            let Some(fresh) = s.fresh else { continue };
            if of_this_update(fresh) && !is_up(fresh) {
                in_flight += 1;
            }
            settling |= !s.stale.is_empty() || fresh.is_held();
        }

        // New slots, as far as parallelism and delay allow.
        let delay = p.config.delay_ms;
        let cooling: Vec<Millis> = if delay == 0 {
            Vec::new()
        } else {
            own.iter()
                .filter(|t| of_this_update(t))
                .filter_map(|t| self.up_at.get(&t.id))
                .map(|&up| up.saturating_add(delay))
                .filter(|&end| now.mono < end)
                .collect()
        };
        let busy = in_flight + cooling.len();
        let free = match p.config.parallelism {
            0 => usize::MAX,
            n => (n as usize).saturating_sub(busy),
        };
        if !dirty.is_empty() && free == 0 {
            if let Some(&next) = cooling.iter().min() {
                step.plan.wake_at = Some(next);
            }
        }
        let chosen: Vec<&Slot> = dirty.iter().take(free).map(|k| &slots[*k]).collect();
        if !chosen.is_empty() {
            let note = start_slots(now, record, &p.config, &chosen, nodes, &node_up, all, new_id, &mut step.plan);
            if let Some(note) = note {
                p.status.message = Message::lossy(&note);
                step.events.push(note);
            }
        }

        // Done when nothing is left to replace and every new task ran for `monitor`.
        let waiting = !dirty.is_empty() || in_flight > 0 || settling || !step.plan.create.is_empty();
        if !waiting {
            let monitor_end = own
                .iter()
                .filter(|t| of_this_update(t) && t.is_desired_running() && serves(&t.status))
                .filter_map(|t| self.up_at.get(&t.id))
                .map(|&up| up.saturating_add(p.config.monitor_ms))
                .max()
                .unwrap_or(0);
            if now.mono >= monitor_end {
                let (state, message) = if p.status.state.is_rollback() {
                    (UpdateState::RollbackCompleted, "rollback completed")
                } else {
                    (UpdateState::Completed, "update completed")
                };
                p.status.state = state;
                p.status.completed_at_ms = Some(now.wall_ms);
                p.status.message = Message::lossy(message);
                step.events.push(message.to_owned());
            } else {
                step.plan.wake_at = earliest(step.plan.wake_at, Some(monitor_end));
            }
        }
        if Some(&p) != record.update.as_ref() {
            let mut next = record.clone();
            next.update = Some(p);
            step.record = Some(next);
        }
        step
    }

    /// Forgets tasks that no longer exist.
    pub fn forget_gone(&mut self, tasks: &[Task]) {
        if self.up_at.is_empty() {
            return;
        }
        let live: HashSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
        self.up_at.retain(|id, _| live.contains(id));
    }

    /// Counts tasks of this update that ended early; returns the last one counted.
    fn count_failures(
        &mut self,
        now: Now,
        p: &mut UpdateProgress,
        own: &[&Task],
        of_this_update: &dyn Fn(&Task) -> bool,
    ) -> Option<TaskId> {
        let slot_by_task: HashMap<&TaskId, Option<SlotKey>> = own.iter().map(|t| (&t.id, slot_of(t))).collect();
        let mut failed_slots: HashSet<Option<SlotKey>> =
            p.failed.iter().filter_map(|id| slot_by_task.get(id).cloned()).collect();
        let mut ended: Vec<&&Task> =
            own.iter().filter(|t| of_this_update(t) && ended_by_itself(t) && !p.failed.contains(&t.id)).collect();
        ended.sort_by(|a, b| (a.status.timestamp_ms, &a.id).cmp(&(b.status.timestamp_ms, &b.id)));
        let mut last = None;
        for t in ended {
            let up = *self.up_at.entry(t.id.clone()).or_insert(now.mono);
            if now.mono.saturating_sub(up) > p.config.monitor_ms {
                continue;
            }
            if failed_slots.insert(slot_of(t)) {
                p.failed.push(t.id.clone());
                last = Some(t.id.clone());
            }
        }
        last
    }
}

/// Pauses the update (or rollback) in `p` with `message`.
fn pause(record: &ServiceRecord, mut p: UpdateProgress, state: UpdateState, message: String, mut step: Step) -> Step {
    p.status.state = state;
    p.status.message = Message::lossy(&message);
    step.events.push(message);
    let mut next = record.clone();
    next.update = Some(p);
    step.record = Some(next);
    step
}

/// Creates the fresh tasks of `chosen` slots. Returns a note when start-first had to
/// fall back to stop-first.
#[allow(clippy::too_many_arguments)]
fn start_slots(
    now: Now,
    record: &ServiceRecord,
    config: &UpdateConfig,
    chosen: &[&Slot],
    nodes: &[ClusterNode],
    node_up: &HashMap<&NodeId, bool>,
    all: &[Task],
    new_id: &mut dyn FnMut() -> TaskId,
    plan: &mut Plan,
) -> Option<String> {
    let service = &record.service;
    let mut start_first: Vec<Task> = Vec::new();
    // Each slot's new task, and whether its old one may still be running.
    let mut fresh_tasks: Vec<(Task, bool)> = Vec::with_capacity(chosen.len());
    for slot in chosen {
        let first = slot.stale[0];
        // A global task stays on its node; a replicated one is placed afresh.
        let node = if first.slot == 0 { first.node_id.clone() } else { None };
        let fresh = new_task(now, service, first.slot, node, new_id());
        let running = slot.stale.iter().any(|t| may_run(t, node_up));
        if running && config.order == UpdateOrder::StartFirst {
            start_first.push(fresh.clone());
        }
        fresh_tasks.push((fresh, running));
    }
    // Start-first: place them all now, beside their old tasks, in one pass so they
    // don't take the same free port twice.
    let mut placed: HashMap<TaskId, Decision> = HashMap::new();
    if !start_first.is_empty() {
        let mut tasks: Vec<Task> = all.to_vec();
        let ids: Vec<TaskId> = start_first.iter().map(|t| t.id.clone()).collect();
        tasks.extend(start_first);
        for d in scheduler::schedule(nodes, &tasks, &ids) {
            placed.insert(d.task().clone(), d);
        }
    }
    let mut note = None;
    for (slot, (mut fresh, running)) in chosen.iter().zip(fresh_tasks) {
        let wait = slot.stopping > 0 || running;
        match placed.remove(&fresh.id) {
            Some(d @ Decision::Assign { .. }) => {
                // Keeps the old task until this one runs.
                let _ = scheduler::record(&mut fresh, &d, now.wall_ms);
            }
            other => {
                if let Some(Decision::Unassignable { reason, .. }) = other {
                    let name = &service.spec.name;
                    let task = match fresh.node_id.as_ref().and_then(|n| nodes.iter().find(|c| &c.id == n)) {
                        Some(node) => format!("{name} on {}", node.hostname),
                        None => format!("{name}.{}", fresh.slot),
                    };
                    note = Some(format!("update in progress; {task}: start-first fell back to stop-first: {reason}"));
                }
                for old in &slot.stale {
                    stop(plan, old, "replaced by the update", node_up);
                }
                if wait {
                    fresh.desired_state = TaskState::Ready;
                }
            }
        }
        plan.create.push(fresh);
    }
    note
}

/// Moves slots that are mid-replacement along: a held task (stop-first) is released once
/// nothing of the old spec may still run in its slot; an old task beside a fresh one that
/// runs (start-first) is stopped.
fn settle(slots: &BTreeMap<SlotKey, Slot>, node_up: &HashMap<&NodeId, bool>, plan: &mut Plan) {
    for s in slots.values() {
        let Some(fresh) = s.fresh else { continue };
        if fresh.is_held() {
            for old in &s.stale {
                stop(plan, old, "replaced by the update", node_up);
            }
            if s.stopping == 0 && !s.stale.iter().any(|t| may_run(t, node_up)) {
                plan.start.push(fresh.id.clone());
            }
        } else if serves(&fresh.status) {
            for old in &s.stale {
                stop(plan, old, "replaced by the update (start-first)", node_up);
            }
        }
    }
}

/// Whether a task came up: it runs (healthy, when it has a check), or already ended
/// after that (an end before it is counted by the failure rule instead).
fn is_up(t: &Task) -> bool {
    serves(&t.status) || t.status.state > TaskState::Running
}

/// Whether a task may still be running: placed, not ended, on a node that is up.
fn may_run(t: &Task, node_up: &HashMap<&NodeId, bool>) -> bool {
    t.status.state >= TaskState::Assigned
        && !t.status.state.is_terminal()
        && t.node_id.as_ref().and_then(|n| node_up.get(n)).copied().unwrap_or(false)
}

/// Whether a task stopped without being asked to.
fn ended_by_itself(t: &Task) -> bool {
    matches!(t.status.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected)
}

/// Sorts a service's tasks into slots.
fn sort_into_slots<'a>(
    own: &[&'a Task],
    spec: &TaskSpec,
    node_up: &HashMap<&NodeId, bool>,
) -> BTreeMap<SlotKey, Slot<'a>> {
    let mut slots: BTreeMap<SlotKey, Slot<'a>> = BTreeMap::new();
    for &t in own {
        let Some(key) = slot_of(t) else { continue };
        let slot = slots.entry(key).or_default();
        if t.is_desired_running() {
            if &t.spec == spec {
                if slot.fresh.is_none_or(|f| age_key(f) < age_key(t)) {
                    slot.fresh = Some(t);
                }
            } else {
                slot.stale.push(t);
            }
        } else if &t.spec != spec && may_run(t, node_up) {
            slot.stopping += 1;
        }
    }
    slots.retain(|_, s| s.fresh.is_some() || !s.stale.is_empty() || s.stopping > 0);
    slots
}

/// Stops a task the way every caller does ([`slots::stop`]): a task on a node that is
/// gone is also marked Orphaned.
fn stop(plan: &mut Plan, t: &Task, reason: &str, node_up: &HashMap<&NodeId, bool>) {
    slots::stop(plan, t, reason, |n| node_up.contains_key(n));
}
