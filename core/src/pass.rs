//! One reconcile pass, whole: the chain every change of the cluster goes through, as one
//! function the server, the simulation and the update tests all call.
//!
//! In order: task reports are recorded (a report only moves a task forward, and only
//! from the node the task is on); the orchestrator decides which tasks should exist;
//! the updater moves each service that needs it one step (see *gating*); a task waiting
//! for an image the manager no longer has is rejected with the reason; the scheduler
//! places what is pending; the dispatcher's diffs say what each node must be told.
//!
//! Gating: only services with an update running, or with live tasks of an older spec
//! (a paused update, a slot mid-replacement), are shown to the updater. The others have
//! nothing to roll, and a fleet of settled services costs one scan.
//!
//! A pending task refused again for the same reason keeps its status, and so the time
//! it was first refused: `service ps` shows how long it has waited, and the pass writes
//! nothing for it.
//!
//! Out comes what to write (in one transaction), what to send, what to log and when to
//! run again. Nothing here does I/O: the caller gives the time and the task IDs.

use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_proto::dispatch::TaskReport;
use shoal_proto::networks::Network;
use shoal_proto::services::{NetworkName, ServiceName};
use shoal_proto::{apply_status, Backward, Message, NodeId, ServiceId, Task, TaskId, TaskState, TaskStatus};

use crate::dispatcher::{self, NodeDiff};
use crate::images::ImageRecord;
use crate::ipam::{self, Ipam};
use crate::orchestrator::{Orchestrator, OrchestratorConfig};
use crate::placement::ClusterNode;
use crate::plan::{earliest, Now, Plan};
use crate::scheduler::{self, Decision};
use crate::services::ServiceRecord;
use crate::updater::Updater;
use crate::Millis;

/// What a pass reads besides the tasks: the manager's state as last persisted.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// Every service record, in any order (the updater takes them by ID).
    pub records: &'a [ServiceRecord],
    /// Every node, with its liveness now.
    pub nodes: &'a [ClusterNode],
    /// The images the manager has loaded.
    pub images: &'a [ImageRecord],
    /// Names of services that may no longer have a record (removed, tasks still
    /// stopping); a record's own name wins.
    pub names: &'a HashMap<ServiceId, ServiceName>,
    /// Every overlay network, ingress included: tasks get their addresses on them.
    pub networks: &'a [Network],
    /// The boards' own addresses on `ingress` (the routing mesh's): taken, never given to
    /// a task.
    pub boards: &'a [std::net::Ipv4Addr],
}

/// Something worth a log line, with the level the shell logs it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A report for a task the manager no longer has (debug).
    UnknownTask {
        /// The node that reported.
        node: NodeId,
        /// The task.
        task: TaskId,
    },
    /// A report for a task assigned to another node, ignored (warn).
    WrongNode {
        /// The node that reported.
        node: NodeId,
        /// The task.
        task: TaskId,
    },
    /// A task's observed state, as its node reported it (debug).
    TaskStatus {
        /// The node.
        node: NodeId,
        /// The task.
        task: TaskId,
        /// Its new state.
        state: TaskState,
    },
    /// A report that would move a task backwards, refused (warn).
    ReportRefused {
        /// The node that reported.
        node: NodeId,
        /// What was refused.
        error: Backward,
    },
    /// The orchestrator stops a task (info).
    Stopping {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// An update stops a task it replaces (debug).
    Replacing {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// What an update did: started slots, paused, completed (info).
    Update {
        /// The service.
        service: ServiceName,
        /// What happened.
        message: String,
    },
    /// A task waits: no node fits, for a reason it did not have before (info).
    Pending {
        /// The task.
        task: TaskId,
        /// Why, counted per filter.
        reason: String,
    },
    /// A task was placed (debug).
    Assigned {
        /// The task.
        task: TaskId,
        /// Where.
        node: NodeId,
    },
    /// A scheduler decision that would move a task backwards, refused (warn).
    DecisionRefused {
        /// What was refused.
        error: Backward,
    },
}

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every task after the pass, by ID: the manager's new task set.
    pub tasks: Vec<Task>,
    /// Indices into `tasks` of the tasks that are new or changed.
    changed: Vec<usize>,
    /// Tasks to delete.
    pub remove_tasks: Vec<TaskId>,
    /// Service records whose update progress (or, by an automatic rollback, spec)
    /// changed.
    pub records: Vec<ServiceRecord>,
    /// What each node must be told, once the above is stored.
    pub diffs: BTreeMap<NodeId, NodeDiff>,
    /// For the log, in the order they happened.
    pub events: Vec<Event>,
    /// When to run again even if nothing happens (monotonic), if ever.
    pub wake_at: Option<Millis>,
    /// Each task the pass touched as it was before; `None` for one it created. What
    /// [`Outcome::undo`] puts back: the tasks move through the pass, never copied whole.
    before: HashMap<TaskId, Option<Task>>,
}

impl Outcome {
    /// Tasks to insert or replace.
    pub fn put_tasks(&self) -> impl Iterator<Item = &Task> {
        self.changed.iter().map(|&i| &self.tasks[i])
    }

    /// Whether the pass changes nothing that is stored.
    pub fn writes_nothing(&self) -> bool {
        self.changed.is_empty() && self.remove_tasks.is_empty() && self.records.is_empty()
    }

    /// The tasks exactly as they were given to the pass, sorted by ID: for a caller whose
    /// write of the outcome failed, so that memory stays as stored. Costs what the pass
    /// touched, plus one walk.
    pub fn undo(self) -> Vec<Task> {
        let Outcome { mut tasks, before, .. } = self;
        if before.is_empty() {
            return tasks;
        }
        tasks.retain(|t| !before.contains_key(&t.id));
        tasks.extend(before.into_values().flatten());
        tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        tasks
    }

    /// Every task whose node the pass changed, with its node before and after: `None`
    /// before for a task created (or placed) by the pass, `None` after for one it
    /// removed. For a caller that indexes the tasks by node.
    pub fn moves(&self) -> impl Iterator<Item = (&TaskId, Option<&NodeId>, Option<&NodeId>)> {
        self.before.iter().filter_map(|(id, old)| {
            let was = old.as_ref().and_then(|t| t.node_id.as_ref());
            let now = match self.tasks.binary_search_by(|t| t.id.cmp(id)) {
                Ok(i) => self.tasks[i].node_id.as_ref(),
                Err(_) => None,
            };
            (was != now).then_some((id, was, now))
        })
    }
}

/// The reconciler's memory between passes (the orchestrator's and the updater's: when
/// tasks ended or came up, since when nodes are down). Losing it, as a manager restart
/// does, only lengthens waits.
#[derive(Debug, Default)]
pub struct Reconciler {
    orchestrator: Orchestrator,
    updater: Updater,
}

impl Reconciler {
    /// A reconciler with these settings and no memory.
    pub fn new(config: OrchestratorConfig) -> Self {
        Self { orchestrator: Orchestrator::new(config), updater: Updater::default() }
    }

    /// One whole pass over `cluster` and `tasks` (every task the manager holds, in any
    /// order) at `now` (see the module doc). `reports` are the task reports received
    /// since the last pass, per node; `new_id` names new tasks. The tasks come back in
    /// [`Outcome::tasks`], changed.
    pub fn pass(
        &mut self,
        now: Now,
        cluster: Cluster<'_>,
        tasks: Vec<Task>,
        reports: Vec<(NodeId, Vec<TaskReport>)>,
        new_id: &mut dyn FnMut() -> TaskId,
    ) -> Outcome {
        let Cluster { records, nodes, .. } = cluster;
        let mut events = Vec::new();
        let mut w = Working { tasks, before: HashMap::new() };
        w.tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        record_reports(&mut w, reports, &mut events);

        let services: Vec<_> = records.iter().map(|r| r.service.clone()).collect();
        let plan = self.orchestrator.reconcile(now, &services, &w.tasks, nodes, new_id);
        let mut wake_at = plan.wake_at;
        events.extend(plan.shutdown.iter().map(|s| Event::Stopping { task: s.task.clone(), reason: s.reason.clone() }));
        w.apply(plan, now.wall_ms);

        // Updates, one service at a time, each seeing the tasks the previous ones created.
        let mut by_id: Vec<&ServiceRecord> = records.iter().collect();
        by_id.sort_unstable_by(|a, b| a.service.id.cmp(&b.service.id));
        let gated = needs_updater(&by_id, &w.tasks);
        let mut changed_records = Vec::new();
        for record in by_id.into_iter().filter(|r| gated.contains(&r.service.id)) {
            let own: Vec<&Task> = w.tasks.iter().filter(|t| t.service_id == record.service.id).collect();
            let step = self.updater.step(now, record, &own, nodes, &w.tasks, new_id);
            let service = &record.service.spec.name;
            events.extend(step.events.into_iter().map(|message| Event::Update { service: service.clone(), message }));
            events.extend(
                step.plan.shutdown.iter().map(|s| Event::Replacing { task: s.task.clone(), reason: s.reason.clone() }),
            );
            wake_at = earliest(wake_at, step.plan.wake_at);
            w.apply(step.plan, now.wall_ms);
            changed_records.extend(step.record);
        }
        self.updater.forget_gone(&w.tasks);

        reject_without_image(&mut w, cluster.images, now.wall_ms);
        schedule(&mut w, nodes, now.wall_ms, &mut events);
        attach_addresses(&mut w, cluster.networks, records, cluster.boards);

        let Working { mut tasks, before } = w;
        tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let (mut changed, mut remove_tasks) = (Vec::new(), Vec::new());
        for (id, old) in &before {
            match (tasks.binary_search_by(|t| t.id.cmp(id)), old) {
                (Ok(i), Some(old)) if *old == tasks[i] => {}
                (Ok(i), _) => changed.push(i),
                (Err(_), Some(_)) => remove_tasks.push(id.clone()),
                // Created and deleted within the pass: it never existed.
                (Err(_), None) => {}
            }
        }
        changed.sort_unstable();
        remove_tasks.sort_unstable();

        // Only what changed can change what a node is told.
        let old: HashMap<TaskId, &Task> =
            before.values().flatten().filter(|t| !changed_nothing(&tasks, t)).map(|t| (t.id.clone(), t)).collect();
        let new: HashMap<TaskId, &Task> = changed.iter().map(|&i| (tasks[i].id.clone(), &tasks[i])).collect();
        let diffs = dispatcher::diff(&old, &new, &names(&cluster, &new), cluster.networks);

        Outcome { tasks, changed, remove_tasks, records: changed_records, diffs, events, wake_at, before }
    }
}

/// The tasks of a pass, and what each task the pass touched was before it: only those
/// are copied, so a pass over a large, quiet cluster copies next to nothing.
struct Working {
    /// Every task, as the pass has made them so far.
    tasks: Vec<Task>,
    /// Each touched task as it was before the pass; `None` for one the pass created.
    before: HashMap<TaskId, Option<Task>>,
}

impl Working {
    /// Keeps the task at `i` as it was, before it is changed.
    fn touch(&mut self, i: usize) {
        let t = &self.tasks[i];
        if !self.before.contains_key(&t.id) {
            self.before.insert(t.id.clone(), Some(t.clone()));
        }
    }

    /// Applies a plan, keeping what it touches as it was.
    fn apply(&mut self, plan: Plan, wall_ms: u64) {
        let touched: HashSet<&TaskId> = plan
            .start
            .iter()
            .chain(plan.shutdown.iter().map(|s| &s.task))
            .chain(&plan.orphan)
            .chain(&plan.remove)
            .collect();
        if !touched.is_empty() {
            for t in self.tasks.iter().filter(|t| touched.contains(&t.id)) {
                self.before.entry(t.id.clone()).or_insert_with(|| Some(t.clone()));
            }
        }
        for t in &plan.create {
            self.before.entry(t.id.clone()).or_insert(None);
        }
        plan.apply_to(&mut self.tasks, wall_ms);
    }
}

/// Gives every task that has not ended its addresses on its networks (new tasks, in
/// practice: addresses are never taken back from a live task). The allocator is rebuilt
/// from the records only when some task needs an address.
fn attach_addresses(w: &mut Working, networks: &[Network], records: &[ServiceRecord], boards: &[std::net::Ipv4Addr]) {
    if networks.is_empty() {
        return;
    }
    let by_name: HashMap<&NetworkName, &Network> = networks.iter().map(|n| (&n.spec.name, n)).collect();
    let needs: Vec<usize> = (0..w.tasks.len()).filter(|&i| ipam::needs_attach(&by_name, &w.tasks[i])).collect();
    if needs.is_empty() {
        return;
    }
    let mut ipam = Ipam::rebuild(networks, records.iter().map(|r| &r.service), &w.tasks);
    if let Some(ingress) = networks.iter().find(|n| n.ingress) {
        ipam.take_boards(&ingress.id, boards.iter().copied());
    }
    for i in needs {
        w.touch(i);
        ipam::attach(&mut ipam, &by_name, &mut w.tasks[i]);
    }
}

/// Whether `old` is unchanged in `tasks` (sorted by ID).
fn changed_nothing(tasks: &[Task], old: &Task) -> bool {
    tasks.binary_search_by(|t| t.id.cmp(&old.id)).is_ok_and(|i| tasks[i] == *old)
}

/// Records each node's reports on its tasks.
fn record_reports(w: &mut Working, reports: Vec<(NodeId, Vec<TaskReport>)>, events: &mut Vec<Event>) {
    if reports.is_empty() {
        return;
    }
    // The tasks are sorted by ID here (the pass's first step): a binary search per report
    // instead of an index of every task built for each pass (100,000 IDs copied and
    // hashed for a handful of reports).
    debug_assert!(w.tasks.is_sorted_by(|a, b| a.id < b.id));
    for (node, batch) in reports {
        for r in batch {
            let Ok(i) = w.tasks.binary_search_by(|t| t.id.cmp(&r.task_id)) else {
                events.push(Event::UnknownTask { node: node.clone(), task: r.task_id });
                continue;
            };
            if w.tasks[i].node_id.as_ref() != Some(&node) {
                events.push(Event::WrongNode { node: node.clone(), task: r.task_id });
                continue;
            }
            w.touch(i);
            let t = &mut w.tasks[i];
            let state = r.status.state;
            match apply_status(t, r.status) {
                Ok(()) => events.push(Event::TaskStatus { node: node.clone(), task: t.id.clone(), state }),
                Err(error) => events.push(Event::ReportRefused { node: node.clone(), error }),
            }
        }
    }
}

/// The services the updater must see (see *gating* in the module doc).
fn needs_updater(records: &[&ServiceRecord], tasks: &[Task]) -> HashSet<ServiceId> {
    let mut out: HashSet<ServiceId> = records
        .iter()
        .filter(|r| r.update.as_ref().is_some_and(|u| u.status.state.is_active()))
        .map(|r| r.service.id.clone())
        .collect();
    let specs: HashMap<&ServiceId, shoal_proto::TaskSpec> = records
        .iter()
        .filter(|r| r.update.is_some() && !out.contains(&r.service.id))
        .map(|r| (&r.service.id, r.service.spec.task_spec()))
        .collect();
    if specs.is_empty() {
        return out;
    }
    for t in tasks.iter().filter(|t| t.is_desired_running()) {
        if specs.get(&t.service_id).is_some_and(|s| t.is_held() || *s != t.spec) {
            out.insert(t.service_id.clone());
        }
    }
    out
}

/// Whether the manager wants `t` running and nothing has placed it yet.
fn waiting(t: &Task) -> bool {
    t.status.state <= TaskState::Pending && t.desired_state == TaskState::Running
}

/// A task whose image the manager no longer has (`image rm --force`) could never start:
/// it is rejected with the reason rather than left for a board to wait on. The
/// orchestrator replaces it after the restart delay, so loading the image again heals.
fn reject_without_image(w: &mut Working, images: &[ImageRecord], wall_ms: u64) {
    let loaded: HashSet<&str> = images.iter().map(|i| i.reference.as_str()).collect();
    for i in 0..w.tasks.len() {
        let t = &w.tasks[i];
        if !waiting(t) || loaded.contains(t.spec.image.as_str()) {
            continue;
        }
        w.touch(i);
        let t = &mut w.tasks[i];
        let message =
            format!("image {} is not loaded on the manager: load it with `shoal image load ARCHIVE`", t.spec.image);
        let mut status = TaskStatus::new(TaskState::Rejected, wall_ms, "rejected");
        status.err = Some(Message::lossy(&message));
        // Pending to Rejected is forward: this cannot fail.
        let _ = apply_status(t, status);
    }
}

/// Places every waiting task it can; the others keep (or get) the reason they wait.
fn schedule(w: &mut Working, nodes: &[ClusterNode], wall_ms: u64, events: &mut Vec<Event>) {
    // Indexed as found: only the waiting tasks, not every task of the fleet.
    let index: HashMap<TaskId, usize> =
        w.tasks.iter().enumerate().filter(|(_, t)| waiting(t)).map(|(i, t)| (t.id.clone(), i)).collect();
    if index.is_empty() {
        return;
    }
    let mut pending: Vec<TaskId> = index.keys().cloned().collect();
    // In the tasks' order, as before: the scheduler's choices depend on it.
    pending.sort_unstable_by_key(|id| index[id]);
    let decisions = scheduler::schedule(nodes, &w.tasks, &pending);
    for d in decisions {
        let Some(&i) = index.get(d.task()) else { continue };
        let t = &w.tasks[i];
        match &d {
            // The same refusal again: keep the time it was first given.
            Decision::Unassignable { reason, .. } if &*t.status.message == reason.as_str() => continue,
            Decision::Unassignable { reason, .. } => {
                events.push(Event::Pending { task: t.id.clone(), reason: reason.clone() })
            }
            Decision::Assign { node, .. } => events.push(Event::Assigned { task: t.id.clone(), node: node.clone() }),
        }
        w.touch(i);
        if let Err(error) = scheduler::record(&mut w.tasks[i], &d, wall_ms) {
            events.push(Event::DecisionRefused { error });
        }
    }
}

/// The name each task's node knows its service by: the record's, else one kept for a
/// removed service, else the short ID.
fn names(cluster: &Cluster<'_>, tasks: &HashMap<TaskId, &Task>) -> HashMap<ServiceId, ServiceName> {
    let mut out: HashMap<ServiceId, ServiceName> = HashMap::new();
    for t in tasks.values() {
        if out.contains_key(&t.service_id) {
            continue;
        }
        let name = cluster
            .records
            .iter()
            .find(|r| r.service.id == t.service_id)
            .map(|r| r.service.spec.name.clone())
            .or_else(|| cluster.names.get(&t.service_id).cloned())
            .unwrap_or_else(|| shoal_proto::text_lossy(t.service_id.short()));
        out.insert(t.service_id.clone(), name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::node;
    use crate::services;
    use shoal_proto::dispatch::UpdateState;
    use shoal_proto::{text, PortConfig, ServiceMode, ServiceSpec};

    const WALL0: u64 = 1_700_000_000_000;

    fn image(reference: &str) -> ImageRecord {
        ImageRecord {
            reference: reference.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platforms: vec!["linux/amd64".into()],
            size: 1,
            blobs: vec![],
            loaded_at_ms: 0,
        }
    }

    /// A manager's state between passes, with the pass applied as the server does.
    struct World {
        reconciler: Reconciler,
        records: Vec<ServiceRecord>,
        tasks: Vec<Task>,
        nodes: Vec<ClusterNode>,
        images: Vec<ImageRecord>,
        /// Service names the server keeps, removed services' included.
        names: HashMap<ServiceId, ServiceName>,
        /// Overlay networks (none unless a test adds them).
        networks: Vec<Network>,
        ids: u32,
    }

    impl World {
        fn new(replicas: u32, configure: impl FnOnce(&mut ServiceSpec)) -> Self {
            let images = vec![image("demo/app:1.0"), image("demo/app:2.0")];
            let mut spec = ServiceSpec::new(text("web").unwrap(), text("demo/app:1.0").unwrap());
            spec.mode = ServiceMode::Replicated { replicas };
            configure(&mut spec);
            let record = services::create(&[], spec, &images, ServiceId::from_random([7; 16]), WALL0).unwrap();
            let nodes = vec![node(1, "n1", "x86_64", &[])];
            let names = HashMap::from([(record.service.id.clone(), record.service.spec.name.clone())]);
            Self {
                reconciler: Reconciler::default(),
                records: vec![record],
                tasks: vec![],
                nodes,
                images,
                names,
                networks: Vec::new(),
                ids: 0,
            }
        }

        fn pass(&mut self, mono: Millis, reports: Vec<(NodeId, Vec<TaskReport>)>) -> Outcome {
            let ids = &mut self.ids;
            let mut new_id = || {
                *ids += 1;
                let mut seed = [0xCD; 16];
                seed[..4].copy_from_slice(&ids.to_le_bytes());
                TaskId::from_random(seed)
            };
            let cluster = Cluster {
                records: &self.records,
                nodes: &self.nodes,
                images: &self.images,
                names: &self.names,
                networks: &self.networks,
                boards: &[],
            };
            let now = Now { mono, wall_ms: WALL0 + mono };
            let outcome = self.reconciler.pass(now, cluster, self.tasks.clone(), reports, &mut new_id);
            // What the pass says it changed is exactly what differs, task by task.
            let before: HashMap<&TaskId, &Task> = self.tasks.iter().map(|t| (&t.id, t)).collect();
            let after: HashMap<&TaskId, &Task> = outcome.tasks.iter().map(|t| (&t.id, t)).collect();
            let mut put: Vec<&TaskId> =
                outcome.tasks.iter().filter(|t| before.get(&t.id) != Some(t)).map(|t| &t.id).collect();
            let mut gone: Vec<&TaskId> = before.keys().copied().filter(|id| !after.contains_key(id)).collect();
            put.sort();
            gone.sort();
            assert_eq!(outcome.put_tasks().map(|t| &t.id).collect::<Vec<_>>(), put);
            assert_eq!(outcome.remove_tasks.iter().collect::<Vec<_>>(), gone);
            let full = dispatcher::diff(
                &self.tasks.iter().map(|t| (t.id.clone(), t)).collect::<HashMap<_, _>>(),
                &outcome.tasks.iter().map(|t| (t.id.clone(), t)).collect::<HashMap<_, _>>(),
                &self.names,
                &self.networks,
            );
            assert_eq!(outcome.diffs, full, "the diffs of the changed tasks are the diffs of all tasks");
            // The moves are exactly the tasks whose node differs.
            let node = |m: &HashMap<&TaskId, &Task>, id: &TaskId| m.get(id).and_then(|t| t.node_id.clone());
            let mut moved: Vec<_> = outcome.moves().map(|(id, a, b)| (id.clone(), a.cloned(), b.cloned())).collect();
            let mut differ: Vec<_> = before
                .keys()
                .chain(after.keys())
                .collect::<HashSet<_>>()
                .into_iter()
                .map(|id| ((*id).clone(), node(&before, id), node(&after, id)))
                .filter(|(_, a, b)| a != b)
                .collect();
            moved.sort();
            differ.sort();
            assert_eq!(moved, differ);
            self.tasks = outcome.tasks.clone();
            for r in &outcome.records {
                let i = self.records.iter().position(|x| x.service.id == r.service.id).unwrap();
                self.records[i] = r.clone();
            }
            outcome
        }

        /// A pass whose write failed: undone, it gives back the tasks as they were.
        fn undone(&mut self, mono: Millis, reports: Vec<(NodeId, Vec<TaskReport>)>) -> usize {
            let cluster = Cluster {
                records: &self.records,
                nodes: &self.nodes,
                images: &self.images,
                names: &self.names,
                networks: &self.networks,
                boards: &[],
            };
            let mut n = 0u8;
            let mut new_id = || {
                n += 1;
                TaskId::from_random([n; 16])
            };
            let now = Now { mono, wall_ms: WALL0 + mono };
            let outcome = self.reconciler.pass(now, cluster, self.tasks.clone(), reports, &mut new_id);
            let changes = outcome.put_tasks().count() + outcome.remove_tasks.len();
            let mut as_given = self.tasks.clone();
            as_given.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            assert_eq!(outcome.undo(), as_given);
            changes
        }

        /// The node's reports: what it was asked to run runs, what to stop has stopped.
        fn node_reports(&self, mono: Millis) -> Vec<(NodeId, Vec<TaskReport>)> {
            let wall = WALL0 + mono;
            let mut out: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
            for t in
                self.tasks.iter().filter(|t| t.status.state >= TaskState::Assigned && !t.status.state.is_terminal())
            {
                let status = if t.desired_state > TaskState::Running {
                    TaskStatus::new(TaskState::Shutdown, wall, "shutdown")
                } else if t.status.state < TaskState::Running {
                    TaskStatus::new(TaskState::Running, wall, "running")
                } else {
                    continue;
                };
                let node = t.node_id.clone().unwrap();
                out.entry(node).or_default().push(TaskReport { task_id: t.id.clone(), status });
            }
            out.into_iter().collect()
        }

        fn update_state(&self) -> Option<UpdateState> {
            self.records[0].update.as_ref().map(|u| u.status.state)
        }
    }

    #[test]
    fn new_tasks_get_addresses_their_assignments_carry_and_replacements_never_reuse_a_live_one() {
        let mut w = World::new(3, |s| s.networks.push(text("atsea").unwrap()).unwrap());
        let ingress = crate::ipam::ingress(shoal_proto::networks::NetworkId::from_random([1; 16]), 0);
        let spec = shoal_proto::networks::NetworkSpec::new(text("atsea").unwrap());
        let atsea = crate::ipam::create_network(
            std::slice::from_ref(&ingress),
            spec,
            shoal_proto::networks::NetworkId::from_random([2; 16]),
            0,
        )
        .unwrap();
        w.networks = vec![ingress, atsea.clone()];
        let out = w.pass(0, vec![]);
        let addresses: HashSet<_> = w.tasks.iter().map(|t| t.networks[0].address).collect();
        assert_eq!(addresses.len(), 3, "three tasks, three addresses");
        let sent: Vec<_> = out.diffs.values().flat_map(|d| d.upsert.iter()).collect();
        assert_eq!(sent.len(), 3);
        for a in sent {
            assert_eq!((a.networks.len(), a.networks[0].vni, a.networks[0].subnet), (1, 4098, atsea.subnet));
            assert!(addresses.contains(&a.networks[0].address));
        }
        let reports = w.node_reports(1);
        w.pass(1, reports);
        assert!(w.pass(2, vec![]).writes_nothing(), "a settled cluster allocates nothing");

        // An update replaces each task; while the old ones live, their addresses stay theirs.
        let next = {
            let mut spec = w.records[0].service.spec.clone();
            spec.image = text("demo/app:2.0").unwrap();
            services::update(&w.records[0], spec, 1, &w.images, WALL0).unwrap()
        };
        w.records[0] = next;
        for mono in 3..60 {
            let reports = w.node_reports(mono);
            w.pass(mono * 1000, reports);
            let live: Vec<_> =
                w.tasks.iter().filter(|t| crate::ipam::holds_addresses(t)).map(|t| t.networks[0].address).collect();
            let unique: HashSet<_> = live.iter().collect();
            assert_eq!(unique.len(), live.len(), "no address held twice at {mono}");
        }
        assert_eq!(w.update_state(), Some(UpdateState::Completed));
    }

    #[test]
    fn a_paused_update_still_finishes_the_slot_it_was_replacing_and_a_settled_service_is_left_alone() {
        let mut w = World::new(1, |_| {});
        w.pass(0, vec![]);
        w.pass(100, w.node_reports(100));
        assert_eq!(w.tasks[0].status.state, TaskState::Running);

        // Stop-first: the old task is asked to stop, the new one waits held.
        let spec = ServiceSpec { image: text("demo/app:2.0").unwrap(), ..w.records[0].service.spec.clone() };
        w.records[0] = services::update(&w.records[0], spec, 1, &w.images, WALL0 + 200).unwrap();
        w.pass(200, vec![]);
        let fresh = w.tasks.iter().find(|t| t.spec.image.as_str() == "demo/app:2.0").unwrap().id.clone();
        assert!(w.tasks.iter().find(|t| t.id == fresh).unwrap().is_held());

        // The update pauses (as a failure would make it) before the old task stopped.
        w.records[0].update.as_mut().unwrap().status.state = UpdateState::Paused;
        let out = w.pass(300, w.node_reports(300));
        let t = w.tasks.iter().find(|t| t.id == fresh).unwrap();
        assert_eq!(t.desired_state, TaskState::Running, "released: its slot's old task has stopped");
        assert_eq!(t.status.state, TaskState::Assigned);
        assert!(out.records.is_empty(), "a paused update stays paused");
        assert_eq!(w.update_state(), Some(UpdateState::Paused));

        // Once the slot runs the current spec, nothing is left for anyone to do.
        w.pass(400, w.node_reports(400));
        let out = w.pass(500, vec![]);
        assert!(out.writes_nothing() && out.diffs.is_empty() && out.events.is_empty(), "{:?}", out.events);
    }

    #[test]
    fn an_active_update_is_stepped_until_it_completes() {
        let mut w = World::new(2, |s| s.update_config.monitor_ms = 0);
        for at in [0, 100] {
            w.pass(at, w.node_reports(at));
        }
        let spec = ServiceSpec { image: text("demo/app:2.0").unwrap(), ..w.records[0].service.spec.clone() };
        w.records[0] = services::update(&w.records[0], spec, 1, &w.images, WALL0 + 200).unwrap();
        let mut at = 200;
        while w.update_state() != Some(UpdateState::Completed) {
            w.pass(at, w.node_reports(at));
            at += 100;
            assert!(at < 5_000, "{:?}", w.records[0].update);
        }
        let live: Vec<&Task> = w.tasks.iter().filter(|t| t.is_desired_running()).collect();
        assert!(live.len() == 2 && live.iter().all(|t| t.spec.image.as_str() == "demo/app:2.0"));
    }

    #[test]
    fn a_repeated_refusal_keeps_the_time_it_was_first_given_and_writes_nothing() {
        let mut w = World::new(2, |s| {
            s.ports = vec![PortConfig::parse("mode=host,published=8000,target=80").unwrap()].try_into().unwrap();
        });
        let out = w.pass(0, vec![]);
        let pending: Vec<&Task> = w.tasks.iter().filter(|t| t.status.state == TaskState::Pending).collect();
        assert_eq!(pending.len(), 1, "one node, one host port 8000");
        let (id, first) = (pending[0].id.clone(), pending[0].status.clone());
        assert!(first.message.contains("host-mode port 8000"), "{}", first.message);
        assert_eq!(out.events.iter().filter(|e| matches!(e, Event::Pending { .. })).count(), 1);

        let out = w.pass(5_000, vec![]);
        let t = w.tasks.iter().find(|t| t.id == id).unwrap();
        assert_eq!(t.status, first, "the same refusal keeps its first time");
        assert_eq!(t.status.timestamp_ms, WALL0);
        assert!(out.writes_nothing(), "nothing changed, nothing is written");
        assert!(!out.events.iter().any(|e| matches!(e, Event::Pending { .. })), "and it is not logged again");
    }

    #[test]
    fn reports_move_tasks_forward_from_their_own_node_only() {
        let mut w = World::new(1, |_| {});
        w.pass(0, vec![]);
        let t = w.tasks[0].clone();
        let stranger = NodeId::from_random([9; 16]);
        let report = |state| TaskReport { task_id: t.id.clone(), status: TaskStatus::new(state, WALL0 + 1, "x") };
        let out = w.pass(100, vec![(stranger.clone(), vec![report(TaskState::Running)])]);
        assert_eq!(w.tasks[0].status.state, TaskState::Assigned);
        assert_eq!(out.events, vec![Event::WrongNode { node: stranger, task: t.id.clone() }]);

        let own = t.node_id.clone().unwrap();
        w.pass(200, vec![(own.clone(), vec![report(TaskState::Running)])]);
        let out = w.pass(300, vec![(own, vec![report(TaskState::Accepted)])]);
        assert_eq!(w.tasks[0].status.state, TaskState::Running);
        assert!(matches!(out.events[..], [Event::ReportRefused { .. }]), "{:?}", out.events);
        assert!(out.writes_nothing());
    }

    #[test]
    fn an_undone_pass_gives_back_the_tasks_it_created_changed_and_removed_as_they_were() {
        let mut w = World::new(3, |_| {});
        assert_eq!(w.undone(0, vec![]), 3, "three created, then undone");
        w.pass(0, vec![]);
        assert_eq!(w.undone(100, w.node_reports(100)), 3, "three reports recorded, then undone");
        w.pass(100, w.node_reports(100));
        w.records.clear();
        w.pass(200, vec![]);
        assert_eq!(w.undone(300, w.node_reports(300)), 3, "three stopped tasks removed, then undone");
        assert_eq!(w.tasks.len(), 3);
    }

    #[test]
    fn a_removed_service_is_stopped_under_its_name_then_deleted() {
        let mut w = World::new(1, |_| {});
        w.pass(0, vec![]);
        w.pass(100, w.node_reports(100));
        let task = w.tasks[0].id.clone();
        w.records.clear();
        let out = w.pass(200, vec![]);
        let (node, diff) = out.diffs.iter().next().unwrap();
        assert_eq!(diff.upsert[0].desired_state, TaskState::Shutdown);
        assert_eq!(diff.upsert[0].service_name.as_str(), "web", "the name outlives the record");
        assert_eq!(out.put_tasks().count(), 1);
        let out = w.pass(300, w.node_reports(300));
        assert_eq!(out.remove_tasks, vec![task.clone()]);
        assert_eq!(out.diffs[node].remove, vec![task]);
        assert!(w.tasks.is_empty());
    }
}
