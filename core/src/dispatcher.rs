//! The dispatcher's decisions: which tasks a node is told about, as a full set on each new
//! session and as diffs after each reconciliation, cut into messages of at most
//! [`MAX_ASSIGNMENTS`] entries and [`MAX_ASSIGNMENT_BYTES`] encoded bytes. It does not send anything (the server does) and keeps
//! no state: diffs are computed from the task lists before and after a change.
//!
//! A node is told about a task once the task is placed on it (Assigned or later) and
//! until the task has ended *and* the manager no longer wants it running; then it is
//! told to forget it. A task the manager wants stopped but that has not been reported
//! ended stays in the set with desired state Shutdown, so a node that comes back from a
//! partition stops what was replaced while it was away.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use shoal_proto::dispatch::{Assignment, MAX_ASSIGNMENTS, MAX_ASSIGNMENT_BYTES};
use shoal_proto::networks::Network;
use shoal_proto::services::ServiceName;
use shoal_proto::{BoundedVec, ManagerMessage, NodeId, ServiceId, Task, TaskId, TaskState};

/// Whether `node` is to be told about `t`.
pub fn dispatched_to(t: &Task) -> Option<&NodeId> {
    let told = t.status.state >= TaskState::Assigned && (t.is_desired_running() || !t.status.state.is_terminal());
    t.node_id.as_ref().filter(|_| told)
}

/// A task as its node sees it, with what it needs to attach to its `networks`.
pub fn assignment(t: &Task, service_name: &ServiceName, networks: &[Network]) -> Assignment {
    Assignment {
        task_id: t.id.clone(),
        service_name: service_name.clone(),
        slot: t.slot,
        spec: t.spec.clone(),
        desired_state: t.desired_state,
        hosts: BoundedVec::new(),
        networks: crate::netview::attachments(networks, t),
        service_id: Some(t.service_id.clone()),
    }
}

/// What changed for one node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeDiff {
    /// New to the node, or its desired state or spec changed.
    pub upsert: Vec<Assignment>,
    /// To forget.
    pub remove: Vec<TaskId>,
}

/// The node's complete set, as messages (`full: true`, `more` on all but the last).
pub fn full_set<'a>(
    node: &NodeId,
    tasks: impl Iterator<Item = &'a Task>,
    names: &HashMap<ServiceId, ServiceName>,
    networks: &[Network],
) -> Vec<ManagerMessage> {
    let mut set: Vec<Assignment> = tasks
        .filter(|t| dispatched_to(t) == Some(node))
        .filter_map(|t| names.get(&t.service_id).map(|n| assignment(t, n, networks)))
        .collect();
    set.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let mut chunks = chunked(set);
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, upsert)| ManagerMessage::Assignments {
            full: true,
            more: i < last,
            upsert: upsert.try_into().unwrap_or_default(),
            remove: BoundedVec::new(),
        })
        .collect()
}

/// Cuts `set` into runs of at most [`MAX_ASSIGNMENTS`] entries and
/// [`MAX_ASSIGNMENT_BYTES`] encoded bytes. A single larger entry goes alone: the spec's
/// bounds (arguments, environment, hosts, profile) keep one entry near 200 KiB at most,
/// well within the 1 MiB frame the agent reads.
fn chunked(set: Vec<Assignment>) -> Vec<Vec<Assignment>> {
    let mut chunks: Vec<Vec<Assignment>> = Vec::new();
    let mut bytes = 0;
    for a in set {
        let size = postcard::experimental::serialized_size(&a).unwrap_or(MAX_ASSIGNMENT_BYTES);
        let full = chunks.last().is_none_or(|c| c.len() == MAX_ASSIGNMENTS || bytes + size > MAX_ASSIGNMENT_BYTES);
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        chunks.last_mut().expect("pushed above").push(a);
    }
    chunks
}

/// Per node, what it must be told after `before` became `after` (both keyed by task).
/// Changes of observed status alone are not sent back.
/// Either map may hold the tasks or references to them.
pub fn diff<B: Borrow<Task>, A: Borrow<Task>>(
    before: &HashMap<TaskId, B>,
    after: &HashMap<TaskId, A>,
    names: &HashMap<ServiceId, ServiceName>,
    networks: &[Network],
) -> BTreeMap<NodeId, NodeDiff> {
    let mut out: BTreeMap<NodeId, NodeDiff> = BTreeMap::new();
    for (id, t) in after {
        let t = t.borrow();
        let Some(node) = dispatched_to(t) else { continue };
        let old = before.get(id).map(Borrow::borrow).filter(|o| dispatched_to(o) == Some(node));
        let changed =
            old.is_none_or(|o| o.desired_state != t.desired_state || o.spec != t.spec || o.networks != t.networks);
        if changed {
            if let Some(name) = names.get(&t.service_id) {
                out.entry(node.clone()).or_default().upsert.push(assignment(t, name, networks));
            }
        }
    }
    for (id, t) in before {
        let Some(node) = dispatched_to(t.borrow()) else { continue };
        let still = after.get(id).is_some_and(|a| dispatched_to(a.borrow()) == Some(node));
        if !still {
            out.entry(node.clone()).or_default().remove.push(id.clone());
        }
    }
    for d in out.values_mut() {
        d.upsert.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        d.remove.sort();
    }
    out
}

/// A diff as messages (`full: false`), each at most [`MAX_ASSIGNMENTS`] upserts and removals.
pub fn diff_messages(d: NodeDiff) -> Vec<ManagerMessage> {
    let upsert_chunks = chunked(d.upsert);
    let mut upserts = upsert_chunks.iter().map(Vec::as_slice);
    let mut removes = d.remove.chunks(MAX_ASSIGNMENTS);
    let mut out = Vec::new();
    loop {
        let (u, r) = (upserts.next(), removes.next());
        if u.is_none() && r.is_none() {
            return out;
        }
        out.push(ManagerMessage::Assignments {
            full: false,
            more: false,
            upsert: u.map(<[_]>::to_vec).unwrap_or_default().try_into().unwrap_or_default(),
            remove: r.map(<[_]>::to_vec).unwrap_or_default().try_into().unwrap_or_default(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{Service, ServiceSpec, TaskStatus};

    fn task(n: u32, node: Option<&NodeId>, state: TaskState, desired: TaskState) -> Task {
        let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        let svc = Service {
            id: ServiceId::from_random([1; 16]),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        };
        let mut seed = [7u8; 16];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        Task {
            id: TaskId::from_random(seed),
            service_id: svc.id.clone(),
            slot: n,
            node_id: node.cloned(),
            spec: svc.spec.task_spec(),
            spec_version: 1,
            desired_state: desired,
            status: TaskStatus::new(state, 0, ""),
            created_at_ms: 0,
            networks: Default::default(),
        }
    }

    fn names() -> HashMap<ServiceId, ServiceName> {
        HashMap::from([(ServiceId::from_random([1; 16]), shoal_proto::text("web").unwrap())])
    }

    fn upserts(m: &ManagerMessage) -> (bool, bool, usize, usize) {
        match m {
            ManagerMessage::Assignments { full, more, upsert, remove } => (*full, *more, upsert.len(), remove.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn full_sets_hold_placed_tasks_including_ones_to_stop_and_come_in_chunks() {
        use TaskState::*;
        let n1 = NodeId::from_random([1; 16]);
        let n2 = NodeId::from_random([2; 16]);
        let mut tasks = vec![
            task(1, Some(&n1), Running, Running),
            task(2, Some(&n1), Running, Shutdown),
            task(3, Some(&n1), Shutdown, Shutdown),
            task(4, Some(&n2), Running, Running),
            task(5, None, Pending, Running),
        ];
        let msgs = full_set(&n1, tasks.iter(), &names(), &[]);
        assert_eq!(msgs.iter().map(upserts).collect::<Vec<_>>(), vec![(true, false, 2, 0)]);
        assert_eq!(
            upserts(&full_set(&NodeId::from_random([3; 16]), tasks.iter(), &names(), &[])[0]),
            (true, false, 0, 0)
        );
        tasks = (0..600).map(|i| task(i, Some(&n1), Assigned, Running)).collect();
        let msgs: Vec<_> = full_set(&n1, tasks.iter(), &names(), &[]).iter().map(upserts).collect();
        assert_eq!(msgs, vec![(true, true, 256, 0), (true, true, 256, 0), (true, false, 88, 0)]);
    }

    #[test]
    fn big_tasks_are_cut_by_bytes_into_small_frames() {
        let n1 = NodeId::from_random([1; 16]);
        let profile = format!("{{\"defaultAction\":\"SCMP_ACT_ALLOW\",\"x\":\"{}\"}}", "a".repeat(15_000));
        let tasks: Vec<Task> = (0..10)
            .map(|i| {
                let mut t = task(i, Some(&n1), TaskState::Assigned, TaskState::Running);
                t.spec.seccomp = shoal_proto::services::Seccomp::Profile(profile.as_str().try_into().unwrap());
                t
            })
            .collect();
        let msgs = full_set(&n1, tasks.iter(), &names(), &[]);
        assert!(msgs.len() >= 4, "{} messages", msgs.len());
        assert_eq!(msgs.iter().map(|m| upserts(m).2).sum::<usize>(), 10);
        for m in &msgs {
            let bytes = shoal_proto::frame::encode(m, 64 * 1024).expect("fits a session frame");
            assert!(bytes.len() <= 64 * 1024);
        }
        let before: HashMap<TaskId, Task> = HashMap::new();
        let after: HashMap<TaskId, Task> = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
        let d = diff(&before, &after, &names(), &[]).remove(&n1).unwrap();
        let msgs = diff_messages(d);
        assert!(msgs.len() >= 4);
        assert_eq!(msgs.iter().map(|m| upserts(m).2).sum::<usize>(), 10);
    }

    #[test]
    fn diffs_send_placements_and_desired_changes_and_removals_not_status_changes() {
        use TaskState::*;
        let n1 = NodeId::from_random([1; 16]);
        let before: HashMap<TaskId, Task> = [
            task(1, Some(&n1), Running, Running),
            task(2, Some(&n1), Running, Running),
            task(3, Some(&n1), Running, Shutdown),
            task(4, None, Pending, Running),
        ]
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
        let mut after = before.clone();
        let id = |n: u32| task(n, None, New, New).id;
        after.get_mut(&id(1)).unwrap().status.timestamp_ms = 99; // status only: nothing to send
        after.get_mut(&id(2)).unwrap().desired_state = Shutdown;
        after.get_mut(&id(3)).unwrap().status.state = Shutdown; // ended and unwanted: forget
        let t4 = after.get_mut(&id(4)).unwrap();
        t4.node_id = Some(n1.clone());
        t4.status.state = Assigned;
        let d = diff(&before, &after, &names(), &[]);
        let d1 = &d[&n1];
        assert_eq!(d1.upsert.iter().map(|a| a.slot).collect::<Vec<_>>().len(), 2);
        assert!(d1.upsert.iter().any(|a| a.slot == 2 && a.desired_state == Shutdown));
        assert!(d1.upsert.iter().any(|a| a.slot == 4 && a.desired_state == Running));
        assert_eq!(d1.remove, vec![id(3)]);
        let msgs = diff_messages(d1.clone());
        assert_eq!(msgs.iter().map(upserts).collect::<Vec<_>>(), vec![(false, false, 2, 1)]);
        assert!(diff_messages(NodeDiff::default()).is_empty());
    }
}
