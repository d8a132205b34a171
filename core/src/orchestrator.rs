//! The orchestrator: compares each service's spec with its tasks and the nodes' states at
//! `now`, and returns a [`Plan`] of tasks to create, stop, mark orphaned and delete.
//!
//! It decides *which* tasks should exist, never *where* a replicated task runs (that is
//! [`super::scheduler`]), and it rolls out no spec changes (the updater's job: a task of
//! an older spec is left alone here, and so is one running beside its replacement). It
//! does no I/O and reads no clock; the only memory it keeps between calls is when it
//! first saw each task end, how often each slot was restarted, and since when each node
//! is Down, so restart delays, attempt limits and orphaning work on the caller's clock.
//!
//! Rules, after swarmkit's replicated and global orchestrators:
//! - replicated: slots 1..=replicas each hold one task the manager wants running. Extra
//!   slots are stopped highest first; missing ones are created in the lowest free slots.
//! - a task on a node that is Down, drained or gone is stopped and replaced in its slot
//!   at once (it did not end by itself, so the restart policy does not apply).
//! - a task that ended by itself is replaced in its slot `delay_ms` after it was seen to
//!   end, when the restart condition allows and `max_attempts` restarts within
//!   `window_ms` (counted back from the end) were not used up; otherwise it stays the
//!   slot's task, ended, as in Swarm.
//! - global: one task per Ready, Active worker that passes the constraints; a drained
//!   node's task is stopped; a Down node's task is left for the node's return.
//! - history: at most `task_history_limit` ended tasks per slot (or node) are kept.
//! - a removed service's tasks are stopped, then deleted once ended.

use std::collections::{HashMap, HashSet};

use shoal_proto::services::Placement;
use shoal_proto::{
    Availability, NodeId, NodeStatus, RestartCondition, Role, Service, ServiceId, ServiceMode, Task, TaskId, TaskSpec,
    TaskState,
};

use crate::placement::{placement_allows, ClusterNode};
use crate::plan::{earliest, Now, Plan, Stop};
use crate::slots::{self, age_key, new_task, newest, SlotKey};
use crate::Millis;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrchestratorConfig {
    /// Ended tasks kept per slot (Swarm: 5).
    pub task_history_limit: usize,
    /// How long a stopped task on a Down node may go unreported before it is marked
    /// Orphaned (Swarm: 24 h). Tasks on removed nodes are orphaned at once.
    pub orphan_after: Millis,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self { task_history_limit: 5, orphan_after: 24 * 3600 * 1000 }
    }
}

/// The orchestrator and its small memory (see the module doc).
#[derive(Debug, Default)]
pub struct Orchestrator {
    config: OrchestratorConfig,
    /// When each ended task was first seen ended (monotonic).
    ended_at: HashMap<TaskId, Millis>,
    /// Restart times per slot, kept only when attempts are limited.
    restarts: HashMap<(ServiceId, SlotKey), Vec<Millis>>,
    /// Since when each Down node is Down (monotonic).
    down_since: HashMap<NodeId, Millis>,
}

/// Lookups shared by one reconciliation.
struct View<'a> {
    now: Now,
    nodes: HashMap<&'a NodeId, &'a ClusterNode>,
}

impl Orchestrator {
    /// An orchestrator with these settings and no memory.
    pub fn new(config: OrchestratorConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Compares `services` with `tasks` (all tasks the manager holds) on `nodes` and says
    /// what to change. `new_id` provides IDs for created tasks.
    pub fn reconcile(
        &mut self,
        now: Now,
        services: &[Service],
        tasks: &[Task],
        nodes: &[ClusterNode],
        new_id: &mut dyn FnMut() -> TaskId,
    ) -> Plan {
        let view = View { now, nodes: nodes.iter().map(|n| (&n.id, n)).collect() };
        for n in nodes.iter().filter(|n| n.status == NodeStatus::Down) {
            self.down_since.entry(n.id.clone()).or_insert(now.mono);
        }
        self.down_since.retain(|id, _| view.nodes.get(id).is_some_and(|n| n.status == NodeStatus::Down));

        let mut by_service = crate::services::tasks_by_service(tasks);
        let mut plan = Plan::default();
        for service in services {
            let own = by_service.remove(&service.id).unwrap_or_default();
            match service.spec.mode {
                ServiceMode::Replicated { replicas } => {
                    self.replicated(&view, service, replicas, own, new_id, &mut plan);
                }
                ServiceMode::Global => self.global(&view, service, own, nodes, new_id, &mut plan),
            }
        }
        let mut removed: Vec<_> = by_service.into_iter().collect();
        removed.sort_by(|a, b| a.0.cmp(b.0));
        for (_, own) in removed {
            removed_service(&view, &own, &mut plan);
        }

        // Forget what no longer exists, so the memory stays as small as the cluster.
        if !self.ended_at.is_empty() {
            let ended: HashSet<&TaskId> =
                tasks.iter().filter(|t| t.status.state.is_terminal()).map(|t| &t.id).collect();
            self.ended_at.retain(|id, _| ended.contains(id));
        }
        let services: HashSet<&ServiceId> = services.iter().map(|s| &s.id).collect();
        self.restarts.retain(|(sid, _), _| services.contains(sid));
        plan
    }

    fn replicated(
        &mut self,
        view: &View,
        service: &Service,
        replicas: u32,
        own: Vec<&Task>,
        new_id: &mut dyn FnMut() -> TaskId,
        plan: &mut Plan,
    ) {
        let spec = service.spec.task_spec();
        let (mut own, stray): (Vec<&Task>, Vec<&Task>) = own.into_iter().partition(|t| t.slot != 0);
        for t in stray {
            // A global-style task in a replicated service (the mode changed): not ours.
            if t.is_desired_running() {
                stop(view, plan, t, "service is no longer global");
            }
            history(&self.config, &self.down_since, view, &[t], 0, plan);
        }
        // Sorted by slot, so each slot is a run and `current` comes out in slot order.
        own.sort_unstable_by_key(|t| t.slot);
        let slots: Vec<&[&Task]> = own.chunk_by(|a, b| a.slot == b.slot).collect();
        let mut current: Vec<(u32, &Task)> =
            slots.iter().filter_map(|tasks| keep_one(view, plan, tasks, &spec).map(|t| (t.slot, t))).collect();
        let excess = current.len().saturating_sub(replicas as usize);
        for (_, t) in current.drain(current.len() - excess..).rev() {
            stop(view, plan, t, "scaled down");
        }
        for &(slot, t) in &current {
            if let Some(reason) = self.needs_replacement(view, service, SlotKey::Slot(slot), t, plan) {
                stop(view, plan, t, &reason);
                plan.create.push(new_task(view.now, service, slot, None, new_id()));
            }
        }
        let taken: Vec<u32> = current.iter().map(|(slot, _)| *slot).collect();
        let mut missing = (replicas as usize).saturating_sub(taken.len());
        let (mut slot, mut k) = (1, 0);
        while missing > 0 {
            while k < taken.len() && taken[k] < slot {
                k += 1;
            }
            if taken.get(k) != Some(&slot) {
                plan.create.push(new_task(view.now, service, slot, None, new_id()));
                missing -= 1;
            }
            slot += 1;
        }
        for tasks in slots {
            let slot = tasks[0].slot;
            // A slot that no longer exists keeps no history.
            let gone = slot > replicas && taken.binary_search(&slot).is_err();
            let keep = if gone { 0 } else { self.config.task_history_limit };
            history(&self.config, &self.down_since, view, tasks, keep, plan);
        }
    }

    fn global(
        &mut self,
        view: &View,
        service: &Service,
        own: Vec<&Task>,
        nodes: &[ClusterNode],
        new_id: &mut dyn FnMut() -> TaskId,
        plan: &mut Plan,
    ) {
        let spec = service.spec.task_spec();
        let mut on_node: HashMap<&NodeId, Vec<&Task>> = HashMap::new();
        for t in own {
            match &t.node_id {
                Some(n) if t.slot == 0 => on_node.entry(n).or_default().push(t),
                // A replicated-style task in a global service (the mode changed): not ours.
                _ => {
                    if t.is_desired_running() {
                        stop(view, plan, t, "service is no longer replicated");
                    }
                    history(&self.config, &self.down_since, view, &[t], 0, plan);
                }
            }
        }
        let placement =
            Placement { constraints: service.spec.constraints.clone(), platforms: service.spec.platforms.clone() };
        for node in nodes {
            let tasks = on_node.remove(&node.id).unwrap_or_default();
            let eligible = node.takes_new_tasks() && placement_allows(node, &placement);
            match keep_one(view, plan, &tasks, &spec) {
                None if eligible => plan.create.push(new_task(view.now, service, 0, Some(node.id.clone()), new_id())),
                None => {}
                Some(t) if node.availability == Availability::Drain => stop(view, plan, t, "node drained"),
                Some(t) if node.role != Role::Worker || !placement_allows(node, &placement) => {
                    stop(view, plan, t, "node no longer satisfies the constraints");
                }
                Some(t) if eligible => {
                    let key = SlotKey::Node(node.id.clone());
                    if let Some(reason) = self.needs_replacement(view, service, key, t, plan) {
                        stop(view, plan, t, &reason);
                        plan.create.push(new_task(view.now, service, 0, Some(node.id.clone()), new_id()));
                    }
                }
                // Paused, Down or Unknown: keep what is there, start nothing new.
                Some(_) => {}
            }
            history(&self.config, &self.down_since, view, &tasks, self.config.task_history_limit, plan);
        }
        let mut gone: Vec<_> = on_node.into_iter().collect();
        gone.sort_by(|a, b| a.0.cmp(b.0));
        for (_, tasks) in gone {
            for t in tasks.iter().filter(|t| t.is_desired_running()) {
                stop(view, plan, t, "node removed");
            }
            history(&self.config, &self.down_since, view, &tasks, 0, plan);
        }
    }

    /// Why the slot's current task must be replaced now, if it must.
    fn needs_replacement(
        &mut self,
        view: &View,
        service: &Service,
        key: SlotKey,
        t: &Task,
        plan: &mut Plan,
    ) -> Option<String> {
        if t.status.state.is_terminal() {
            return self.restart_due(view.now, service, key, t, plan);
        }
        let node_id = t.node_id.as_ref()?;
        match view.nodes.get(node_id) {
            None => Some("node removed".into()),
            Some(n) if n.status == NodeStatus::Down => Some(format!("node {} is down", n.hostname)),
            Some(n) if n.availability == Availability::Drain => Some(format!("node {} drained", n.hostname)),
            Some(_) => None,
        }
    }

    /// Applies the restart policy to a task that ended by itself.
    fn restart_due(&mut self, now: Now, service: &Service, key: SlotKey, t: &Task, plan: &mut Plan) -> Option<String> {
        let policy = service.spec.restart_policy;
        let wanted = match policy.condition {
            RestartCondition::Any => true,
            RestartCondition::None => false,
            RestartCondition::OnFailure => t.status.state != TaskState::Complete,
        };
        if !wanted {
            return None;
        }
        let ended = *self.ended_at.entry(t.id.clone()).or_insert(now.mono);
        let since = if policy.window_ms == 0 { 0 } else { ended.saturating_sub(policy.window_ms) };
        let slot_key = (service.id.clone(), key);
        if let Some(max) = policy.max_attempts {
            let used = self.restarts.get(&slot_key).map_or(0, |h| h.iter().filter(|&&at| at >= since).count());
            if used >= max as usize {
                return None;
            }
        }
        let due = ended.saturating_add(policy.delay_ms);
        if now.mono < due {
            plan.wake_at = earliest(plan.wake_at, Some(due));
            return None;
        }
        if let Some(max) = policy.max_attempts {
            let h = self.restarts.entry(slot_key).or_default();
            h.push(now.mono);
            // Only the last `max` restarts inside the window can ever matter.
            h.retain(|&at| at >= since);
            let extra = h.len().saturating_sub(max as usize);
            h.drain(..extra);
        }
        Some(format!("restarting: task {}", t.status.state.as_str().to_ascii_lowercase()))
    }
}

/// The one task of a slot the manager wants running: the newest of the current spec, else
/// the newest. Other live tasks of the same spec (which should not exist) are stopped;
/// older-spec tasks beside a current one are the updater's (a start-first update keeps
/// the old task until its replacement runs), so they are left alone.
fn keep_one<'a>(view: &View, plan: &mut Plan, tasks: &[&'a Task], current: &TaskSpec) -> Option<&'a Task> {
    let live = tasks.iter().copied().filter(|t| t.is_desired_running());
    let chosen = newest(live.clone().filter(|t| &t.spec == current)).or_else(|| newest(live.clone()))?;
    for t in live.filter(|t| t.id != chosen.id) {
        if t.spec == chosen.spec || &chosen.spec != current {
            stop(view, plan, t, "duplicate task for one slot");
        }
    }
    Some(chosen)
}

/// Stops a task the way every caller does ([`slots::stop`]), with this pass's nodes.
fn stop(view: &View, plan: &mut Plan, t: &Task, reason: &str) {
    slots::stop(plan, t, reason, |n| view.nodes.contains_key(n));
}

/// Deals with the tasks of one slot the manager no longer wants: orphans those nobody will
/// report on, deletes the ones never placed, and trims ended ones to `keep`, oldest first.
fn history(
    config: &OrchestratorConfig,
    down_since: &HashMap<NodeId, Millis>,
    view: &View,
    tasks: &[&Task],
    keep: usize,
    plan: &mut Plan,
) {
    if tasks.iter().all(|t| t.is_desired_running()) {
        return;
    }
    let mut ended: Vec<&Task> = Vec::new();
    for &t in tasks.iter().filter(|t| !t.is_desired_running()) {
        if t.status.state.is_terminal() {
            ended.push(t);
            continue;
        }
        let Some(node) = &t.node_id else {
            plan.remove.push(t.id.clone());
            continue;
        };
        let orphaned = match down_since.get(node) {
            Some(&since) => view.now.mono.saturating_sub(since) >= config.orphan_after,
            None => !view.nodes.contains_key(node),
        };
        if orphaned {
            plan.orphan.push(t.id.clone());
        }
    }
    if ended.len() > keep {
        ended.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
        let extra = ended.len() - keep;
        plan.remove.extend(ended[..extra].iter().map(|t| t.id.clone()));
    }
}

/// A removed service: stop what runs, delete what has ended or can no longer report.
fn removed_service(view: &View, own: &[&Task], plan: &mut Plan) {
    for &t in own {
        let node_up = t.node_id.as_ref().and_then(|n| view.nodes.get(n)).is_some_and(|n| n.status != NodeStatus::Down);
        let finished = t.status.state < TaskState::Assigned || t.status.state.is_terminal() || !node_up;
        if finished {
            plan.remove.push(t.id.clone());
        } else if t.is_desired_running() {
            plan.shutdown.push(Stop { task: t.id.clone(), reason: "service removed".into() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::node;
    use proptest::prelude::*;
    use shoal_proto::{RestartPolicy, ServiceSpec, TaskStatus};

    struct Ids(u32);
    impl Ids {
        fn next(&mut self) -> TaskId {
            self.0 += 1;
            let mut seed = [0xAB; 16];
            seed[..4].copy_from_slice(&self.0.to_le_bytes());
            TaskId::from_random(seed)
        }
    }

    fn service(mode: ServiceMode, policy: RestartPolicy) -> Service {
        let mut spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1").unwrap());
        spec.mode = mode;
        spec.restart_policy = policy;
        Service {
            id: ServiceId::from_random([9; 16]),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        }
    }

    fn replicated(n: u32) -> Service {
        service(ServiceMode::Replicated { replicas: n }, RestartPolicy::default())
    }

    fn at(mono: Millis) -> Now {
        Now { mono, wall_ms: 1_000_000 + mono }
    }

    /// Reconciles and applies; returns the plan for inspection.
    fn round(
        o: &mut Orchestrator,
        now: Now,
        svc: &[Service],
        tasks: &mut Vec<Task>,
        nodes: &[ClusterNode],
        ids: &mut Ids,
    ) -> Plan {
        let plan = o.reconcile(now, svc, tasks, nodes, &mut || ids.next());
        plan.clone().apply_to(tasks, now.wall_ms);
        plan
    }

    /// Pretends the scheduler and agents ran every pending task on `node`.
    fn run_all_on(tasks: &mut [Task], node: &ClusterNode) {
        for t in tasks.iter_mut().filter(|t| t.status.state == TaskState::Pending && t.is_desired_running()) {
            t.node_id.get_or_insert(node.id.clone());
            t.status.state = TaskState::Running;
        }
    }

    fn desired_running(tasks: &[Task]) -> Vec<u32> {
        let mut slots: Vec<u32> = tasks.iter().filter(|t| t.is_desired_running()).map(|t| t.slot).collect();
        slots.sort();
        slots
    }

    #[test]
    fn scaling_up_fills_the_lowest_free_slots_and_down_removes_the_highest() {
        let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
        let n = vec![node(1, "n1", "x86_64", &[])];
        round(&mut o, at(0), &[replicated(5)], &mut tasks, &n, &mut ids);
        assert_eq!(desired_running(&tasks), vec![1, 2, 3, 4, 5]);
        run_all_on(&mut tasks, &n[0]);
        let plan = round(&mut o, at(1), &[replicated(2)], &mut tasks, &n, &mut ids);
        assert_eq!(plan.shutdown.len(), 3);
        assert!(plan.shutdown.iter().all(|s| s.reason == "scaled down"));
        assert_eq!(desired_running(&tasks), vec![1, 2]);
        assert!(round(&mut o, at(2), &[replicated(2)], &mut tasks, &n, &mut ids).is_empty(), "steady state");
    }

    #[test]
    fn tasks_on_down_or_drained_nodes_are_replaced_in_their_slot_and_paused_ones_stay() {
        let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
        let mut n = vec![node(1, "n1", "x86_64", &[]), node(2, "n2", "x86_64", &[]), node(3, "n3", "x86_64", &[])];
        round(&mut o, at(0), &[replicated(3)], &mut tasks, &n, &mut ids);
        for (t, node) in tasks.iter_mut().zip(&n) {
            t.node_id = Some(node.id.clone());
            t.status.state = TaskState::Running;
        }
        n[0].status = NodeStatus::Down;
        n[1].availability = Availability::Drain;
        n[2].availability = Availability::Pause;
        let plan = round(&mut o, at(1), &[replicated(3)], &mut tasks, &n, &mut ids);
        assert_eq!(plan.create.iter().map(|t| t.slot).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(plan.shutdown[0].reason, "node n1 is down");
        assert_eq!(plan.shutdown[1].reason, "node n2 drained");
        assert_eq!(desired_running(&tasks), vec![1, 2, 3]);
    }

    #[test]
    fn a_failed_task_restarts_after_the_delay_and_not_beyond_max_attempts() {
        let policy = RestartPolicy { max_attempts: Some(2), ..RestartPolicy::default() };
        let svc = [service(ServiceMode::Replicated { replicas: 1 }, policy)];
        let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
        let n = vec![node(1, "n1", "x86_64", &[])];
        let mut now = 0;
        round(&mut o, at(now), &svc, &mut tasks, &n, &mut ids);
        for attempt in 0..3 {
            run_all_on(&mut tasks, &n[0]);
            let t = tasks.iter_mut().find(|t| t.is_desired_running()).unwrap();
            t.status.state = TaskState::Failed;
            t.status.exit_code = Some(1);
            now += 1000;
            let plan = round(&mut o, at(now), &svc, &mut tasks, &n, &mut ids);
            if attempt == 2 {
                assert!(plan.is_empty() && plan.wake_at.is_none(), "max attempts used up: {plan:?}");
                break;
            }
            assert!(plan.create.is_empty());
            assert_eq!(plan.wake_at, Some(now + 5000));
            assert!(round(&mut o, at(now + 4999), &svc, &mut tasks, &n, &mut ids).create.is_empty());
            now += 5000;
            let plan = round(&mut o, at(now), &svc, &mut tasks, &n, &mut ids);
            assert_eq!(plan.create.len(), 1, "attempt {attempt}");
            assert_eq!(plan.create[0].slot, 1);
            assert_eq!(desired_running(&tasks), vec![1]);
        }
        assert_eq!(tasks.len(), 3, "original and two restarts");
    }

    #[test]
    fn restart_conditions_decide_which_endings_restart() {
        let n = vec![node(1, "n1", "x86_64", &[])];
        for (condition, ending, restarts) in [
            (RestartCondition::OnFailure, TaskState::Complete, false),
            (RestartCondition::OnFailure, TaskState::Failed, true),
            (RestartCondition::OnFailure, TaskState::Rejected, true),
            (RestartCondition::None, TaskState::Failed, false),
            (RestartCondition::Any, TaskState::Complete, true),
        ] {
            let policy = RestartPolicy { condition, delay_ms: 0, ..RestartPolicy::default() };
            let svc = [service(ServiceMode::Replicated { replicas: 1 }, policy)];
            let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
            round(&mut o, at(0), &svc, &mut tasks, &n, &mut ids);
            run_all_on(&mut tasks, &n[0]);
            tasks[0].status.state = ending;
            let plan = round(&mut o, at(1), &svc, &mut tasks, &n, &mut ids);
            assert_eq!(plan.create.len() == 1, restarts, "{condition:?} after {ending:?}");
            assert_eq!(desired_running(&tasks), vec![1], "the ended task still holds its slot");
        }
    }

    #[test]
    fn history_keeps_the_newest_ended_tasks_per_slot() {
        let policy = RestartPolicy { delay_ms: 0, ..RestartPolicy::default() };
        let svc = [service(ServiceMode::Replicated { replicas: 1 }, policy)];
        let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
        let n = vec![node(1, "n1", "x86_64", &[])];
        for now in 0..10 {
            round(&mut o, at(now * 10), &svc, &mut tasks, &n, &mut ids);
            run_all_on(&mut tasks, &n[0]);
            for t in tasks.iter_mut().filter(|t| t.is_desired_running()) {
                t.status.state = TaskState::Failed;
            }
            round(&mut o, at(now * 10 + 1), &svc, &mut tasks, &n, &mut ids);
            run_all_on(&mut tasks, &n[0]);
            for t in tasks.iter_mut().filter(|t| !t.is_desired_running() && t.status.state == TaskState::Running) {
                t.status.state = TaskState::Shutdown;
            }
        }
        round(&mut o, at(1000), &svc, &mut tasks, &n, &mut ids);
        let ended = tasks.iter().filter(|t| !t.is_desired_running()).count();
        assert_eq!(ended, 5, "task_history_limit");
        let newest = tasks.iter().map(|t| t.created_at_ms).max().unwrap();
        assert!(tasks.iter().any(|t| t.created_at_ms == newest));
    }

    #[test]
    fn global_services_follow_the_nodes() {
        let svc = [service(ServiceMode::Global, RestartPolicy::default())];
        let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
        let mut n = vec![node(1, "n1", "x86_64", &[]), node(2, "n2", "x86_64", &[])];
        let plan = round(&mut o, at(0), &svc, &mut tasks, &n, &mut ids);
        assert_eq!(plan.create.len(), 2);
        assert!(plan.create.iter().all(|t| t.node_id.is_some() && t.slot == 0));
        for t in &mut tasks {
            t.status.state = TaskState::Running;
        }
        n.push(node(3, "n3", "x86_64", &[]));
        n[0].availability = Availability::Drain;
        n[1].status = NodeStatus::Down;
        let plan = round(&mut o, at(1), &svc, &mut tasks, &n, &mut ids);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].node_id, Some(n[2].id.clone()));
        assert_eq!(plan.shutdown.len(), 1, "the drained node's task; the Down node's waits");
        assert_eq!(plan.shutdown[0].reason, "node drained");
        let n2 = vec![n[0].clone(), n[2].clone()];
        let plan = round(&mut o, at(2), &svc, &mut tasks, &n2, &mut ids);
        assert_eq!(plan.orphan.len(), 1, "a removed node's task is orphaned at once");
    }

    #[test]
    fn a_removed_service_is_stopped_then_deleted() {
        let (mut o, mut ids, mut tasks) = (Orchestrator::default(), Ids(0), Vec::new());
        let n = vec![node(1, "n1", "x86_64", &[])];
        round(&mut o, at(0), &[replicated(3)], &mut tasks, &n, &mut ids);
        run_all_on(&mut tasks[..2], &n[0]);
        let plan = round(&mut o, at(1), &[], &mut tasks, &n, &mut ids);
        assert_eq!((plan.shutdown.len(), plan.remove.len()), (2, 1), "the never-placed task goes at once");
        for t in &mut tasks {
            t.status.state = TaskState::Shutdown;
        }
        round(&mut o, at(2), &[], &mut tasks, &n, &mut ids);
        assert!(tasks.is_empty());
    }

    #[test]
    fn stopped_tasks_on_a_down_node_are_orphaned_after_the_grace() {
        let config = OrchestratorConfig { orphan_after: 10_000, ..OrchestratorConfig::default() };
        let (mut o, mut ids, mut tasks) = (Orchestrator::new(config), Ids(0), Vec::new());
        let mut n = vec![node(1, "n1", "x86_64", &[])];
        round(&mut o, at(0), &[replicated(1)], &mut tasks, &n, &mut ids);
        run_all_on(&mut tasks, &n[0]);
        n[0].status = NodeStatus::Down;
        round(&mut o, at(1_000), &[replicated(1)], &mut tasks, &n, &mut ids);
        assert!(round(&mut o, at(10_999), &[replicated(1)], &mut tasks, &n, &mut ids).orphan.is_empty());
        assert_eq!(round(&mut o, at(11_000), &[replicated(1)], &mut tasks, &n, &mut ids).orphan.len(), 1);
    }

    fn arb_task(svc: ServiceId, nodes: usize) -> impl Strategy<Value = (u32, bool, usize, Option<usize>)> {
        let _ = svc;
        (0u32..10, any::<bool>(), 0usize..13, proptest::option::of(0..nodes))
    }

    proptest! {
        /// Whatever the starting tasks, node states and restart policy, after every round
        /// the service has exactly `replicas` tasks the manager wants running, at most one
        /// per slot, none in slot 0.
        #[test]
        fn replicas_are_exact_and_slots_unique(
            replicas in 0u32..8,
            statuses in proptest::collection::vec((0u8..3, 0u8..3), 1..5),
            raw in proptest::collection::vec(arb_task(ServiceId::from_random([9; 16]), 4), 0..20),
            condition in 0u8..3,
            max_attempts in proptest::option::of(0u32..3),
            delay in 0u64..3000,
        ) {
            use TaskState::*;
            let all = [New, Pending, Assigned, Accepted, Preparing, Starting, Running, Complete, Shutdown, Failed,
                       Rejected, Remove, Orphaned];
            let nodes: Vec<ClusterNode> = statuses.iter().enumerate().map(|(i, (s, a))| {
                let mut n = node(i as u8 + 1, &format!("n{i}"), "x86_64", &[]);
                n.status = [NodeStatus::Ready, NodeStatus::Down, NodeStatus::Unknown][*s as usize];
                n.availability = [Availability::Active, Availability::Drain, Availability::Pause][*a as usize];
                n
            }).collect();
            let condition = [RestartCondition::Any, RestartCondition::OnFailure, RestartCondition::None][condition as usize];
            let policy = RestartPolicy { condition, delay_ms: delay, max_attempts, window_ms: 0 };
            let svc = [service(ServiceMode::Replicated { replicas }, policy)];
            let mut ids = Ids(1000);
            let mut tasks: Vec<Task> = raw.iter().enumerate().map(|(i, (slot, running, state, node))| Task {
                id: ids.next(),
                service_id: svc[0].id.clone(),
                slot: *slot,
                node_id: node.and_then(|n| nodes.get(n)).map(|n| n.id.clone()),
                spec: svc[0].spec.task_spec(),
                spec_version: 1,
                desired_state: if *running { Running } else { Shutdown },
                status: TaskStatus::new(all[*state], 0, ""),
                created_at_ms: i as u64,
                networks: Default::default(),
            }).collect();
            let mut o = Orchestrator::default();
            for step in 0..6u64 {
                round(&mut o, at(step * 1000), &svc, &mut tasks, &nodes, &mut ids);
                let live: Vec<&Task> = tasks.iter().filter(|t| t.is_desired_running()).collect();
                prop_assert_eq!(live.len(), replicas as usize);
                let slots: HashSet<u32> = live.iter().map(|t| t.slot).collect();
                prop_assert_eq!(slots.len(), live.len(), "two desired-running tasks share a slot");
                prop_assert!(!slots.contains(&0));
                // Let some of them end, so restarts are exercised.
                for t in tasks.iter_mut().filter(|t| t.is_desired_running()) {
                    if t.id.as_str().as_bytes()[0] % 3 == step as u8 % 3 && t.status.state <= Running {
                        t.status.state = Failed;
                    }
                }
            }
        }
    }
}
