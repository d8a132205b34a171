//! The scheduler: a pure function from nodes and tasks to placement decisions, each
//! refusal explained the way `service ps` shows it
//! (`no suitable node (host-mode port 8000/tcp in use on 3 nodes; 1 node not ready)`).
//!
//! It is not the orchestrator (it never creates or stops tasks) and it changes nothing:
//! the shell applies the returned [`Decision`]s, e.g. with [`record`].
//!
//! Filters, in the order a node is tried against them: the node runs tasks at all (not
//! the manager), is Ready, is Active (Pause and Drain take no new tasks), has room on its
//! disk (the agent reports disk pressure on its data dir), supports one of
//! the image's platforms, satisfies the constraints, has the reserved CPU and memory free
//! (capacity minus the reservations of its other live tasks), and does not already bind
//! one of the task's host-mode published ports. Among the nodes that pass, spread: fewest
//! tasks of this service, then fewest tasks, then lowest node ID.
//!
//! Cost: tasks with the same service and spec version form a group that shares the
//! static filters (evaluated once per group, and once per distinct placement across
//! groups) and one heap of candidate nodes, so a call costs about
//! O(groups × nodes + tasks × log nodes), not O(tasks × nodes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use shoal_proto::services::Placement;
use shoal_proto::{
    apply_status, Backward, NodeId, NodeStatus, Protocol, PublishMode, Role, ServiceId, Task, TaskId, TaskState,
    TaskStatus,
};

use super::placement::{constraints_hold, platform_supported, ClusterNode};

/// What to do with one pending task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it on this node.
    Assign {
        /// The task.
        task: TaskId,
        /// The node.
        node: NodeId,
    },
    /// No node fits now; the task stays pending and `reason` is shown for it.
    Unassignable {
        /// The task.
        task: TaskId,
        /// Why, counted per filter.
        reason: String,
    },
}

impl Decision {
    /// The task it is about.
    pub fn task(&self) -> &TaskId {
        match self {
            Self::Assign { task, .. } | Self::Unassignable { task, .. } => task,
        }
    }
}

/// The filters, in evaluation order; each explains how many nodes it turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Worker,
    Ready,
    Available,
    Disk,
    Platform,
    Constraints,
    Resources,
    HostPort,
}

const FILTERS: usize = 8;

impl Filter {
    const ALL: [Filter; FILTERS] = [
        Filter::Worker,
        Filter::Ready,
        Filter::Available,
        Filter::Disk,
        Filter::Platform,
        Filter::Constraints,
        Filter::Resources,
        Filter::HostPort,
    ];

    fn explain(self, count: u32, host_ports: &str) -> String {
        let nodes = if count == 1 { "1 node".to_owned() } else { format!("{count} nodes") };
        match self {
            Self::Worker => format!("{nodes} reserved for the manager"),
            Self::Ready => format!("{nodes} not ready"),
            Self::Available => format!("{nodes} not available for new tasks"),
            Self::Disk => format!("disk full on {nodes}"),
            Self::Platform => format!("unsupported platform on {nodes}"),
            Self::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Self::Resources => format!("insufficient resources on {nodes}"),
            Self::HostPort => format!("{host_ports} in use on {nodes}"),
        }
    }
}

/// The first static filter `node` fails for `placement`, if any.
fn static_rejection(node: &ClusterNode, placement: &Placement) -> Option<Filter> {
    if node.role != Role::Worker {
        Some(Filter::Worker)
    } else if node.status != NodeStatus::Ready {
        Some(Filter::Ready)
    } else if node.availability != shoal_proto::Availability::Active {
        Some(Filter::Available)
    } else if node.disk_full {
        Some(Filter::Disk)
    } else if !platform_supported(node, &placement.platforms) {
        Some(Filter::Platform)
    } else if !constraints_hold(node, &placement.constraints) {
        Some(Filter::Constraints)
    } else {
        None
    }
}

/// Nodes that pass the static filters for one placement, and the count turned away by each.
struct Eligible {
    nodes: Vec<usize>,
    rejected: [u32; FILTERS],
}

/// What is in use on a node: reservations, bound host ports, task counts.
#[derive(Default)]
struct Load {
    cpu_millis: u64,
    memory: u64,
    host_ports: HashSet<(u16, Protocol)>,
    tasks: u32,
}

/// Host-mode published ports of a task: the ones that can collide on a node.
fn host_ports(task: &Task) -> Vec<(u16, Protocol)> {
    task.spec
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .filter_map(|p| p.published.map(|port| (port, p.protocol)))
        .collect()
}

/// Whether a task occupies its node: assigned and not yet ended. A task the manager wants
/// stopped still holds its ports and memory until the agent reports it gone.
fn occupies(task: &Task) -> bool {
    task.node_id.is_some() && (TaskState::Assigned..=TaskState::Running).contains(&task.status.state)
}

/// Decides where each task in `pending` goes. `tasks` are all the tasks the manager
/// knows (pending ones included), from which each node's load is computed. Tasks whose
/// `node_id` is already set (global services) are only checked against that node. IDs
/// in `pending` that are not in `tasks`, not New or Pending, or no longer wanted running
/// are skipped, so a stale list cannot place a task twice. Decisions come in `pending`
/// order within each group of tasks sharing a service and spec version.
pub fn schedule(nodes: &[ClusterNode], tasks: &[Task], pending: &[TaskId]) -> Vec<Decision> {
    let mut s = Scheduler::new(nodes, tasks);
    let by_id: HashMap<&TaskId, &Task> = tasks.iter().map(|t| (&t.id, t)).collect();

    // Group by (service, spec version) in order of first appearance; pinned tasks alone.
    let mut group_of: HashMap<(&ServiceId, u64), usize> = HashMap::new();
    let mut groups: Vec<Vec<&Task>> = Vec::new();
    let mut pinned: Vec<&Task> = Vec::new();
    for id in pending {
        let Some(&task) = by_id.get(id) else { continue };
        // Held tasks (a stop-first update's) wait for their predecessor to stop.
        if task.status.state > TaskState::Pending || task.desired_state != TaskState::Running {
            continue;
        }
        if task.node_id.is_some() {
            pinned.push(task);
            continue;
        }
        let g = *group_of.entry((&task.service_id, task.spec_version)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(task);
    }

    let mut out = Vec::with_capacity(pending.len());
    for task in pinned {
        out.push(s.place_pinned(task));
    }
    for group in groups {
        s.place_group(&group, &mut out);
    }
    out
}

struct Scheduler<'a> {
    nodes: &'a [ClusterNode],
    /// Each node's position in ID order: the last tie-breaker.
    rank: Vec<u32>,
    index: HashMap<&'a NodeId, usize>,
    load: Vec<Load>,
    /// Live tasks of each service per node, for spreading.
    per_service: HashMap<&'a ServiceId, HashMap<usize, u32>>,
    /// Static filter results shared by groups with the same placement rules.
    eligible: HashMap<&'a Placement, std::rc::Rc<Eligible>>,
}

impl<'a> Scheduler<'a> {
    fn new(nodes: &'a [ClusterNode], tasks: &'a [Task]) -> Self {
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|&a, &b| nodes[a].id.cmp(&nodes[b].id));
        let mut rank = vec![0u32; nodes.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r as u32;
        }
        let index: HashMap<&NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (&n.id, i)).collect();
        let mut load: Vec<Load> = nodes.iter().map(|_| Load::default()).collect();
        let mut per_service: HashMap<&ServiceId, HashMap<usize, u32>> = HashMap::new();
        for t in tasks.iter().filter(|t| occupies(t)) {
            let Some(&i) = t.node_id.as_ref().and_then(|n| index.get(n)) else { continue };
            let l = &mut load[i];
            l.cpu_millis += u64::from(t.spec.resources.reserve_cpu_millis);
            l.memory = l.memory.saturating_add(t.spec.resources.reserve_memory);
            l.host_ports.extend(host_ports(t));
            // A task on its way out does not count for spreading: its replacement should
            // be able to land where it was.
            if t.is_desired_running() {
                l.tasks += 1;
                *per_service.entry(&t.service_id).or_default().entry(i).or_default() += 1;
            }
        }
        Self { nodes, rank, index, load, per_service, eligible: HashMap::new() }
    }

    fn eligible(&mut self, placement: &'a Placement) -> std::rc::Rc<Eligible> {
        let nodes = self.nodes;
        self.eligible
            .entry(placement)
            .or_insert_with(|| {
                let mut e = Eligible { nodes: Vec::new(), rejected: [0; FILTERS] };
                for (i, n) in nodes.iter().enumerate() {
                    match static_rejection(n, placement) {
                        Some(f) => e.rejected[f as usize] += 1,
                        None => e.nodes.push(i),
                    }
                }
                std::rc::Rc::new(e)
            })
            .clone()
    }

    /// The dynamic filter `node` fails for `task`, if any.
    fn dynamic_rejection(&self, i: usize, task: &Task, ports: &[(u16, Protocol)]) -> Option<Filter> {
        let (node, load) = (&self.nodes[i], &self.load[i]);
        let r = &task.spec.resources;
        let cpu_free = u64::from(node.resources.cpus) * 1000;
        let cpu_short = r.reserve_cpu_millis != 0 && load.cpu_millis + u64::from(r.reserve_cpu_millis) > cpu_free;
        // A CPU limit above the node's CPUs cannot be set there (Docker refuses it too):
        // better pending with a reason than placed and rejected. Unknown CPUs (0) pass.
        let cpu_limit_over = node.resources.cpus != 0 && u64::from(r.limit_cpu_millis) > cpu_free;
        let mem_short =
            r.reserve_memory != 0 && load.memory.saturating_add(r.reserve_memory) > node.resources.memory_bytes;
        if cpu_short || mem_short || cpu_limit_over {
            Some(Filter::Resources)
        } else if ports.iter().any(|p| load.host_ports.contains(p)) {
            Some(Filter::HostPort)
        } else {
            None
        }
    }

    fn commit(&mut self, i: usize, task: &'a Task, ports: &[(u16, Protocol)]) {
        let l = &mut self.load[i];
        l.cpu_millis += u64::from(task.spec.resources.reserve_cpu_millis);
        l.memory = l.memory.saturating_add(task.spec.resources.reserve_memory);
        l.host_ports.extend(ports.iter().copied());
        l.tasks += 1;
        *self.per_service.entry(&task.service_id).or_default().entry(i).or_default() += 1;
    }

    fn place_pinned(&mut self, task: &'a Task) -> Decision {
        let Some(&i) = task.node_id.as_ref().and_then(|n| self.index.get(n)) else {
            return Decision::Unassignable {
                task: task.id.clone(),
                reason: "no suitable node (its node is no longer in the cluster)".into(),
            };
        };
        let ports = host_ports(task);
        let rejection =
            static_rejection(&self.nodes[i], &task.spec.placement).or_else(|| self.dynamic_rejection(i, task, &ports));
        match rejection {
            None => {
                self.commit(i, task, &ports);
                Decision::Assign { task: task.id.clone(), node: self.nodes[i].id.clone() }
            }
            Some(f) => {
                let mut rejected = [0; FILTERS];
                rejected[f as usize] = 1;
                Decision::Unassignable { task: task.id.clone(), reason: reason(&rejected, &ports, 1) }
            }
        }
    }

    fn place_group(&mut self, group: &[&'a Task], out: &mut Vec<Decision>) {
        let Some(first) = group.first() else { return };
        // Same service and spec version: same placement, reservations and ports.
        let eligible = self.eligible(&first.spec.placement);
        let ports = host_ports(first);
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32, usize)>> = {
            let counts = self.per_service.get(&first.service_id);
            eligible
                .nodes
                .iter()
                .map(|&i| {
                    let mine = counts.and_then(|c| c.get(&i)).copied().unwrap_or(0);
                    Reverse((mine, self.load[i].tasks, self.rank[i], i))
                })
                .collect()
        };
        let mut rejected = eligible.rejected;
        let mut full: Option<String> = None;
        for &task in group {
            if let Some(reason) = &full {
                out.push(Decision::Unassignable { task: task.id.clone(), reason: reason.clone() });
                continue;
            }
            loop {
                let Some(Reverse((mine, total, rank, i))) = heap.pop() else {
                    let r = reason(&rejected, &ports, self.nodes.len());
                    out.push(Decision::Unassignable { task: task.id.clone(), reason: r.clone() });
                    full = Some(r);
                    break;
                };
                // Within one call a node only fills up, so a node that fails a dynamic
                // filter for this group fails it for the rest of the group too.
                if let Some(f) = self.dynamic_rejection(i, task, &ports) {
                    rejected[f as usize] += 1;
                    continue;
                }
                self.commit(i, task, &ports);
                heap.push(Reverse((mine + 1, total + 1, rank, i)));
                out.push(Decision::Assign { task: task.id.clone(), node: self.nodes[i].id.clone() });
                break;
            }
        }
    }
}

/// `no suitable node (...)`, with each filter's count of rejected nodes.
fn reason(rejected: &[u32; FILTERS], ports: &[(u16, Protocol)], node_count: usize) -> String {
    if node_count == 0 {
        return "no suitable node (no nodes in the cluster)".into();
    }
    let port_text = {
        let list: Vec<String> = ports.iter().map(|(p, proto)| format!("{p}/{proto}")).collect();
        let noun = if list.len() == 1 { "host-mode port" } else { "host-mode ports" };
        format!("{noun} {}", list.join(", "))
    };
    let parts: Vec<String> = Filter::ALL
        .iter()
        .filter(|f| rejected[**f as usize] > 0)
        .map(|f| f.explain(rejected[*f as usize], &port_text))
        .collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// Applies a decision to its task: an assignment moves it to Assigned on the node; a
/// refusal leaves it Pending with the reason as its message.
pub fn record(task: &mut Task, decision: &Decision, wall_ms: u64) -> Result<(), Backward> {
    match decision {
        Decision::Assign { node, .. } => {
            apply_status(task, TaskStatus::new(TaskState::Assigned, wall_ms, "assigned"))?;
            task.node_id = Some(node.clone());
        }
        Decision::Unassignable { reason, .. } => {
            apply_status(task, TaskStatus::new(TaskState::Pending, wall_ms, reason))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::node;
    use proptest::prelude::*;
    use shoal_proto::{Availability, Constraint, PortConfig, ServiceSpec};

    fn spec(f: impl FnOnce(&mut ServiceSpec)) -> ServiceSpec {
        let mut s = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1").unwrap());
        f(&mut s);
        s
    }

    fn task(n: u32, service: u8, spec: &ServiceSpec) -> Task {
        let mut seed = [service; 16];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        Task {
            id: TaskId::from_random(seed),
            service_id: ServiceId::from_random([service; 16]),
            slot: n + 1,
            node_id: None,
            spec: spec.task_spec(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Pending, 0, "pending"),
            created_at_ms: 0,
            networks: Default::default(),
        }
    }

    fn ids(tasks: &[Task]) -> Vec<TaskId> {
        tasks.iter().map(|t| t.id.clone()).collect()
    }

    fn assigned(d: &[Decision]) -> Vec<(TaskId, NodeId)> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Assign { task, node } => Some((task.clone(), node.clone())),
                Decision::Unassignable { .. } => None,
            })
            .collect()
    }

    #[test]
    fn tasks_spread_across_nodes() {
        let nodes: Vec<_> = (1..=3).map(|i| node(i, &format!("n{i}"), "x86_64", &[])).collect();
        let s = spec(|_| {});
        let tasks: Vec<_> = (0..6).map(|i| task(i, 1, &s)).collect();
        let d = schedule(&nodes, &tasks, &ids(&tasks));
        let mut per: HashMap<NodeId, u32> = HashMap::new();
        for (_, n) in assigned(&d) {
            *per.entry(n).or_default() += 1;
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|&c| c == 2));
    }

    #[test]
    fn a_node_short_of_disk_takes_no_new_task_and_the_reason_says_so() {
        let mut nodes: Vec<_> = (1..=2).map(|i| node(i, &format!("n{i}"), "x86_64", &[])).collect();
        nodes[0].disk_full = true;
        let s = spec(|_| {});
        let tasks: Vec<_> = (0..2).map(|i| task(i, 1, &s)).collect();
        let d = schedule(&nodes, &tasks, &ids(&tasks));
        assert!(assigned(&d).iter().all(|(_, n)| *n == nodes[1].id), "{d:?}");
        nodes[1].disk_full = true;
        let d = schedule(&nodes, &tasks, &ids(&tasks));
        let Decision::Unassignable { reason, .. } = &d[0] else { panic!("{d:?}") };
        assert_eq!(reason, "no suitable node (disk full on 2 nodes)");
        // Space came back: placed again.
        nodes[0].disk_full = false;
        assert_eq!(assigned(&schedule(&nodes, &tasks, &ids(&tasks))).len(), 2);
    }

    #[test]
    fn host_port_conflicts_leave_a_task_pending_with_the_port_named() {
        let nodes: Vec<_> = (1..=3).map(|i| node(i, &format!("n{i}"), "x86_64", &[])).collect();
        let s = spec(|s| {
            s.ports = vec![PortConfig::parse("mode=host,published=8000,target=80").unwrap()].try_into().unwrap()
        });
        let tasks: Vec<_> = (0..4).map(|i| task(i, 1, &s)).collect();
        let d = schedule(&nodes, &tasks, &ids(&tasks));
        assert_eq!(assigned(&d).len(), 3);
        let Decision::Unassignable { reason, .. } = &d[3] else { panic!("{d:?}") };
        assert_eq!(reason, "no suitable node (host-mode port 8000/tcp in use on 3 nodes)");
    }

    #[test]
    fn every_filter_explains_its_rejections() {
        let mut nodes: Vec<_> = (1..=7).map(|i| node(i, &format!("n{i}"), "x86_64", &["zone=a"])).collect();
        nodes[0].status = NodeStatus::Down;
        nodes[1].availability = Availability::Drain;
        nodes[2].availability = Availability::Pause;
        nodes[3].arch = shoal_proto::text("riscv64").unwrap();
        nodes[4].labels = Default::default();
        nodes[5].resources.memory_bytes = 1 << 20;
        nodes[6].role = Role::Manager;
        let s = spec(|s| {
            s.constraints = vec![Constraint::parse("node.labels.zone==a").unwrap()].try_into().unwrap();
            s.platforms = vec![shoal_proto::text("linux/amd64").unwrap()].try_into().unwrap();
            s.resources.reserve_memory = 64 << 20;
        });
        let t = task(0, 1, &s);
        let d = schedule(&nodes, std::slice::from_ref(&t), std::slice::from_ref(&t.id));
        let Decision::Unassignable { reason, .. } = &d[0] else { panic!("{d:?}") };
        assert_eq!(
            reason,
            "no suitable node (1 node reserved for the manager; 1 node not ready; 2 nodes not available for new \
             tasks; unsupported platform on 1 node; scheduling constraints not satisfied on 1 node; insufficient \
             resources on 1 node)"
        );
        assert_eq!(schedule(&[], std::slice::from_ref(&t), std::slice::from_ref(&t.id)).len(), 1);
    }

    #[test]
    fn a_cpu_limit_above_every_node_leaves_the_task_pending_with_the_reason() {
        let nodes: Vec<_> = (1..=2).map(|i| node(i, &format!("n{i}"), "x86_64", &[])).collect();
        let cpus = u32::from(nodes[0].resources.cpus);
        let over = spec(|s| s.resources.limit_cpu_millis = (cpus + 1) * 1000);
        let t = task(0, 1, &over);
        let d = schedule(&nodes, std::slice::from_ref(&t), std::slice::from_ref(&t.id));
        let Decision::Unassignable { reason, .. } = &d[0] else { panic!("{d:?}") };
        assert_eq!(reason, "no suitable node (insufficient resources on 2 nodes)");
        let fits = spec(|s| s.resources.limit_cpu_millis = cpus * 1000);
        let t = task(0, 1, &fits);
        let d = schedule(&nodes, std::slice::from_ref(&t), std::slice::from_ref(&t.id));
        assert!(matches!(d[0], Decision::Assign { .. }), "{d:?}");
    }

    #[test]
    fn reservations_of_running_tasks_count_against_capacity() {
        let nodes = vec![node(1, "n1", "x86_64", &[])]; // 4 CPUs
        let s = spec(|s| s.resources.reserve_cpu_millis = 1500);
        let mut running = task(0, 1, &s);
        running.node_id = Some(nodes[0].id.clone());
        running.status.state = TaskState::Running;
        let (a, b) = (task(1, 1, &s), task(2, 1, &s));
        let all = vec![running, a.clone(), b.clone()];
        let d = schedule(&nodes, &all, &[a.id.clone(), b.id.clone()]);
        assert!(matches!(d[0], Decision::Assign { .. }));
        assert_eq!(
            d[1],
            Decision::Unassignable { task: b.id, reason: "no suitable node (insufficient resources on 1 node)".into() }
        );
    }

    #[test]
    fn global_tasks_only_go_to_their_own_node() {
        let nodes = vec![node(1, "n1", "x86_64", &[]), node(2, "n2", "x86_64", &[])];
        let s = spec(|_| {});
        let mut t = task(0, 1, &s);
        t.node_id = Some(nodes[1].id.clone());
        let d = schedule(&nodes, std::slice::from_ref(&t), std::slice::from_ref(&t.id));
        assert_eq!(d, vec![Decision::Assign { task: t.id.clone(), node: nodes[1].id.clone() }]);
        let mut down = nodes.clone();
        down[1].status = NodeStatus::Down;
        let d = schedule(&down, std::slice::from_ref(&t), std::slice::from_ref(&t.id));
        assert!(matches!(&d[0], Decision::Unassignable { reason, .. } if reason.contains("1 node not ready")));
    }

    #[test]
    fn tasks_already_placed_or_unwanted_are_not_scheduled_again() {
        let nodes = vec![node(1, "n1", "x86_64", &[])];
        let s = spec(|_| {});
        let (mut placed, mut stopped) = (task(0, 1, &s), task(1, 1, &s));
        placed.status.state = TaskState::Assigned;
        placed.node_id = Some(nodes[0].id.clone());
        stopped.desired_state = TaskState::Shutdown;
        let tasks = vec![placed, stopped];
        assert!(schedule(&nodes, &tasks, &ids(&tasks)).is_empty());
    }

    #[test]
    fn decisions_apply_forward_only() {
        let s = spec(|_| {});
        let mut t = task(0, 1, &s);
        let n = NodeId::from_random([3; 16]);
        let id = t.id.clone();
        record(&mut t, &Decision::Assign { task: id.clone(), node: n.clone() }, 5).unwrap();
        assert_eq!((t.status.state, t.node_id.clone()), (TaskState::Assigned, Some(n)));
        assert!(record(&mut t, &Decision::Unassignable { task: id, reason: "x".into() }, 6).is_err());
    }

    /// 5,000 nodes and 100,000 tasks (200 services × 500 replicas). Run it with
    /// `cargo test -p shoal-manager --release --lib scheduler::tests::scale -- --ignored`.
    #[test]
    #[ignore = "timing check, meaningful in release builds"]
    fn scale_5000_nodes_100000_tasks() {
        let nodes: Vec<_> = (0..5000u32)
            .map(|i| {
                let mut n = node(0, &format!("n{i}"), "x86_64", &[if i % 2 == 0 { "zone=a" } else { "zone=b" }]);
                let mut seed = [7u8; 16];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                n.id = NodeId::from_random(seed);
                n
            })
            .collect();
        let mut tasks = Vec::new();
        for svc in 0..200u8 {
            let s = spec(|s| {
                if svc % 4 == 0 {
                    s.constraints = vec![Constraint::parse("node.labels.zone==a").unwrap()].try_into().unwrap();
                }
            });
            tasks.extend((0..500).map(|i| task(i, svc, &s)));
        }
        let pending = ids(&tasks);
        // The test times the scheduler; the scheduler itself reads no clock.
        #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
        let started = std::time::Instant::now();
        let d = schedule(&nodes, &tasks, &pending);
        let took = started.elapsed();
        eprintln!("5,000 nodes × 100,000 tasks scheduled in {took:?}");
        assert_eq!(assigned(&d).len(), 100_000);
    }

    fn arb_node(i: u8) -> impl Strategy<Value = ClusterNode> {
        (0u8..4, 0u8..3, 0u8..3, 1u16..4, prop::bool::weighted(0.1)).prop_map(
            move |(status, avail, zone, cpus, arm)| {
                let mut n =
                    node(i, &format!("n{i}"), if arm { "aarch64" } else { "x86_64" }, &[&format!("zone={zone}")]);
                n.status = if status == 0 { NodeStatus::Down } else { NodeStatus::Ready };
                n.availability = [Availability::Active, Availability::Active, Availability::Pause][avail as usize];
                n.resources.cpus = cpus;
                n
            },
        )
    }

    fn arb_spec() -> impl Strategy<Value = ServiceSpec> {
        (proptest::option::of(0u8..3), 0u32..1500, proptest::option::of(8000u16..8003), prop::bool::weighted(0.2))
            .prop_map(|(zone, cpu, port, amd)| {
                spec(|s| {
                    if let Some(z) = zone {
                        s.constraints =
                            vec![Constraint::parse(&format!("node.labels.zone!={z}")).unwrap()].try_into().unwrap();
                    }
                    s.resources.reserve_cpu_millis = cpu;
                    if let Some(p) = port {
                        s.ports = vec![PortConfig::parse(&format!("mode=host,published={p},target=80")).unwrap()]
                            .try_into()
                            .unwrap();
                    }
                    if amd {
                        s.platforms = vec![shoal_proto::text("linux/amd64").unwrap()].try_into().unwrap();
                    }
                })
            })
    }

    proptest! {
        /// Whatever the nodes and services, every assignment passes every filter, counting
        /// the tasks assigned before it in the same call.
        #[test]
        fn every_assignment_satisfies_every_filter(
            nodes in (1u8..12).prop_flat_map(|n| (1..=n).map(arb_node).collect::<Vec<_>>()),
            specs in proptest::collection::vec((arb_spec(), 1u32..8), 1..5),
        ) {
            let mut tasks = Vec::new();
            for (k, (s, n)) in specs.iter().enumerate() {
                tasks.extend((0..*n).map(|i| task(i, k as u8 + 1, s)));
            }
            let d = schedule(&nodes, &tasks, &ids(&tasks));
            prop_assert_eq!(d.len(), tasks.len());
            let by_id: HashMap<_, _> = tasks.iter().map(|t| (t.id.clone(), t)).collect();
            let mut cpu: HashMap<NodeId, u64> = HashMap::new();
            let mut ports: HashSet<(NodeId, u16)> = HashSet::new();
            for (t, n) in assigned(&d) {
                let (t, node) = (by_id[&t], nodes.iter().find(|x| x.id == n).unwrap());
                prop_assert!(node.takes_new_tasks());
                prop_assert!(crate::placement::placement_allows(node, &t.spec.placement));
                let used = cpu.entry(n.clone()).or_default();
                *used += u64::from(t.spec.resources.reserve_cpu_millis);
                prop_assert!(t.spec.resources.reserve_cpu_millis == 0 || *used <= u64::from(node.resources.cpus) * 1000);
                for (p, _) in host_ports(t) {
                    prop_assert!(ports.insert((n.clone(), p)), "port {} twice on a node", p);
                }
            }
        }

        /// With equal nodes and no filters in the way, a service's tasks per node differ by
        /// at most one.
        #[test]
        fn equal_nodes_get_an_even_spread(node_count in 1u8..20, replicas in 0u32..100, services in 1u8..4) {
            let nodes: Vec<_> = (1..=node_count).map(|i| node(i, &format!("n{i}"), "x86_64", &[])).collect();
            let s = spec(|_| {});
            let tasks: Vec<_> = (1..=services).flat_map(|k| (0..replicas).map(move |i| (k, i))).map(|(k, i)| task(i, k, &s)).collect();
            let d = schedule(&nodes, &tasks, &ids(&tasks));
            let by_id: HashMap<_, _> = tasks.iter().map(|t| (t.id.clone(), t)).collect();
            let mut per: HashMap<(ServiceId, NodeId), u32> = HashMap::new();
            for (t, n) in assigned(&d) {
                *per.entry((by_id[&t].service_id.clone(), n)).or_default() += 1;
            }
            for k in 1..=services {
                let sid = ServiceId::from_random([k; 16]);
                let counts: Vec<u32> = nodes.iter().map(|n| per.get(&(sid.clone(), n.id.clone())).copied().unwrap_or(0)).collect();
                let (min, max) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
                prop_assert!(max - min <= 1, "{:?}", counts);
            }
        }
    }
}
