//! Slots, the unit both the orchestrator and the updater reason in: a replicated
//! service's slot number, or a global service's node. Here is how a task's slot is
//! found, which of a slot's tasks is the newest, how a new task for a slot is made and
//! how a task is stopped. One behaviour for both callers, so a task is stopped the same
//! way whoever decides it.

use shoal_proto::{BoundedVec, NodeId, Service, Task, TaskId, TaskState, TaskStatus};

use crate::plan::{Now, Plan, Stop};

/// Where a task belongs within its service: a replicated slot or a global node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    /// Slot `n` (from 1) of a replicated service.
    Slot(u32),
    /// A global service's node.
    Node(NodeId),
}

/// The slot `t` belongs to; a global-style task (slot 0) not placed yet has none.
pub fn slot_of(t: &Task) -> Option<SlotKey> {
    match (t.slot, &t.node_id) {
        (0, Some(n)) => Some(SlotKey::Node(n.clone())),
        (0, None) => None,
        (s, _) => Some(SlotKey::Slot(s)),
    }
}

/// The order of a slot's tasks by age: creation time, then ID so that ties (tasks made
/// in the same millisecond) still order the same way on every pass.
pub fn age_key(t: &Task) -> (u64, &TaskId) {
    (t.created_at_ms, &t.id)
}

/// The newest of `tasks` (see [`age_key`]).
pub fn newest<'a>(tasks: impl Iterator<Item = &'a Task>) -> Option<&'a Task> {
    tasks.max_by(|a, b| age_key(a).cmp(&age_key(b)))
}

/// Asks a task to stop. One that never reached a node is simply deleted. One whose node
/// is gone (`node_known` says no) is also marked Orphaned unless it already ended, since
/// nobody will ever report it stopped.
pub fn stop(plan: &mut Plan, t: &Task, reason: &str, node_known: impl Fn(&NodeId) -> bool) {
    if t.status.state < TaskState::Assigned {
        plan.remove.push(t.id.clone());
        return;
    }
    plan.shutdown.push(Stop { task: t.id.clone(), reason: reason.to_owned() });
    let node_gone = t.node_id.as_ref().is_some_and(|n| !node_known(n));
    if node_gone && !t.status.state.is_terminal() {
        plan.orphan.push(t.id.clone());
    }
}

/// A new task of `service`'s current spec for `slot` (0 with `node_id` for a global
/// service), observed Pending and desired Running.
pub fn new_task(now: Now, service: &Service, slot: u32, node_id: Option<NodeId>, id: TaskId) -> Task {
    Task {
        id,
        service_id: service.id.clone(),
        slot,
        node_id,
        spec: service.spec.task_spec(),
        spec_version: service.spec_version,
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Pending, now.wall_ms, "pending task scheduling"),
        created_at_ms: now.wall_ms,
        networks: BoundedVec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{text, ServiceSpec};

    fn task(slot: u32, node: Option<u8>, state: TaskState, created: u64, id: u8) -> Task {
        let service = Service {
            id: shoal_proto::ServiceId::from_random([1; 16]),
            spec: ServiceSpec::new(text("s").unwrap(), text("demo/app:1.0").unwrap()),
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: BoundedVec::new(),
        };
        let mut t = new_task(
            Now { mono: 0, wall_ms: created },
            &service,
            slot,
            node.map(|n| NodeId::from_random([n; 16])),
            TaskId::from_random([id; 16]),
        );
        t.status.state = state;
        t
    }

    #[test]
    fn a_stop_deletes_unplaced_tasks_and_orphans_those_on_gone_nodes() {
        let known = |n: &NodeId| *n == NodeId::from_random([1; 16]);
        let mut plan = Plan::default();
        stop(&mut plan, &task(1, None, TaskState::Pending, 0, 1), "x", known);
        assert_eq!((plan.remove.len(), plan.shutdown.len()), (1, 0), "never placed: deleted");

        let mut plan = Plan::default();
        stop(&mut plan, &task(1, Some(1), TaskState::Running, 0, 2), "x", known);
        assert_eq!((plan.shutdown.len(), plan.orphan.len()), (1, 0), "its node will report it stopped");

        let mut plan = Plan::default();
        stop(&mut plan, &task(1, Some(2), TaskState::Running, 0, 3), "x", known);
        assert_eq!((plan.shutdown.len(), plan.orphan.len()), (1, 1), "its node is gone: nobody will report");

        let mut plan = Plan::default();
        stop(&mut plan, &task(1, Some(2), TaskState::Failed, 0, 4), "x", known);
        assert_eq!((plan.shutdown.len(), plan.orphan.len()), (1, 0), "already ended");
    }

    #[test]
    fn slots_and_ages() {
        assert_eq!(slot_of(&task(3, Some(1), TaskState::Running, 0, 1)), Some(SlotKey::Slot(3)));
        assert_eq!(
            slot_of(&task(0, Some(1), TaskState::Running, 0, 1)),
            Some(SlotKey::Node(NodeId::from_random([1; 16])))
        );
        assert_eq!(slot_of(&task(0, None, TaskState::Pending, 0, 1)), None);
        let (a, b, c) = (
            task(1, None, TaskState::Running, 5, 1),
            task(1, None, TaskState::Running, 9, 2),
            task(1, None, TaskState::Running, 9, 3),
        );
        let later = if b.id > c.id { &b } else { &c };
        assert_eq!(newest([&a, &c, &b].into_iter()).unwrap().id, later.id, "same time: the higher ID");
        assert_eq!(newest([&a].into_iter()).unwrap().id, a.id);
        assert!(newest(std::iter::empty()).is_none());
    }
}
