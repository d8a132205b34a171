//! The node's task set, pure: which tasks the node has, what each one's container is
//! doing, and what to do next, returned as [`Decision`] values that the shell in
//! [`crate::supervisor`] performs.
//!
//! A full set from the manager (possibly in chunks, complete at the last one) replaces the
//! set; a diff patches it. A task gone from the set keeps its entry until its container
//! is removed. Containers of no known task found at start ("orphans") are removed only
//! once a full set has arrived, so a board cut off from its manager keeps running what
//! it ran. [`Book::reconcile`] steps every idle task with [`super::step`]; the shell
//! reports what each operation did with [`Book::finished`].
//!
//! No I/O and no clock: `now_ms`, what the runtime shows and which images are present
//! come in as arguments. Live resources (published ports, sandboxes) stay with the
//! shell; the book only says when they must close ([`Decision::ClosePorts`]).

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::dispatch::Assignment;
use shoal_proto::services::DEFAULT_STOP_GRACE_MS;
use shoal_proto::{BoundedVec, PortConfig, TaskId, TaskState, TaskStatus};

use super::{container_id, rejected, step, Action, Container, Facts};

/// How many steps one pass takes for a task at most before it moves to the next (a
/// task needs at most four reports in a row; the bound keeps one pass finite whatever
/// [`super::step`] says).
const STEPS_PER_PASS: usize = 8;

/// How long a task on overlay networks keeps running after its stop is decided, before
/// it is signalled. The manager takes it out of every board's VIP tables, DNS answers
/// and routing mesh in the same pass that tells this board to stop it; the other boards
/// need a moment to apply that, and until they have, new connections may still come
/// here. (Swarm waits 2 s for gossip to converge at this point; the views here are sent
/// directly, so a LAN needs milliseconds: this leaves room for a loaded board.)
pub const BACKEND_DRAIN_MS: u64 = 400;

/// One of a task's overlay networks (the wire's assignment is mapped onto these where
/// the task enters the book).
pub use crate::net::plane::NetworkAttachment;

/// One task as the node knows it.
#[derive(Debug, Clone)]
pub struct Task {
    /// What the manager assigned (its desired state only moves forward).
    pub assignment: Assignment,
    /// The last status recorded (and reported).
    pub status: TaskStatus,
    /// Its container's ID (see [`container_id`]).
    pub container_id: String,
    /// What the runtime last showed of its container.
    pub container: Container,
    /// The agent stopped (or is stopping) its container on the manager's request.
    pub stop_requested: bool,
    /// An operation runs for it: it is not stepped until that finishes.
    pub busy: bool,
    /// Gone from the set: its container is removed, then it is forgotten.
    pub removed: bool,
    /// Its published ports, as reported once it runs.
    pub bound: Vec<PortConfig>,
    /// Whether the shell holds live publications for it.
    pub ports_open: bool,
    /// Top digest of its container's image.
    pub digest: Option<String>,
    /// Its overlay networks, in interface order (`eth1`, `eth2`, …); empty for a task
    /// on the board's bridge only.
    pub attachments: Vec<NetworkAttachment>,
}

/// The overlays an assignment's container joins, in the order the manager gave (its
/// `eth1`, `eth2`, …). An attachment that can't describe an overlay (a subnet or VNI
/// out of range, which the manager never sends) is left out.
fn attachments_of(a: &Assignment) -> Vec<NetworkAttachment> {
    a.networks
        .iter()
        .filter_map(|c| {
            let subnet = crate::net::Subnet::new(c.subnet.addr(), c.subnet.prefix()).ok()?;
            let overlay = crate::net::overlay::Overlay::new(c.vni, subnet, crate::board_net::UNDERLAY_MTU).ok()?;
            // An encrypted network's port and MTU, as the plane makes its overlay.
            let overlay = if c.encrypted { overlay.encrypted() } else { overlay };
            Some(NetworkAttachment { network: c.network_id.to_string(), overlay, address: c.address })
        })
        .collect()
}

impl Task {
    fn new(assignment: Assignment, status: TaskStatus, stop_requested: bool) -> Self {
        let container_id = container_id(&assignment.service_name, assignment.slot, assignment.task_id.as_str());
        let attachments = attachments_of(&assignment);
        Self {
            assignment,
            status,
            container_id,
            container: Container::Absent,
            stop_requested,
            busy: false,
            removed: false,
            bound: Vec::new(),
            ports_open: false,
            digest: None,
            attachments,
        }
    }

    /// Whether the task runs on the node's network (`--network host`): no sandbox, no
    /// proxy.
    pub fn host_network(&self) -> bool {
        host_network(&self.assignment)
    }
}

/// Whether an assignment asks for the node's network.
pub fn host_network(a: &Assignment) -> bool {
    a.spec.networks.iter().any(|n| n.as_str() == "host")
}

/// Something the shell must do. Each operation it starts ends with a [`Book::finished`]
/// for the same task.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Record this status as the task's current one and send it to the manager.
    Report {
        /// The task.
        task: TaskId,
        /// Its new status (a forward move).
        status: TaskStatus,
    },
    /// The task left the set: stop reporting it.
    Forget(TaskId),
    /// Make the task's container (image, sandbox, ports, container), then
    /// [`Outcome::Prepared`] or [`Outcome::Failed`].
    Prepare {
        /// The task.
        task: TaskId,
        /// What to make.
        assignment: Box<Assignment>,
        /// The container's ID.
        container_id: String,
        /// Its overlay networks.
        attachments: Vec<NetworkAttachment>,
    },
    /// Start the created container, then [`Outcome::Started`] or [`Outcome::Failed`].
    Start {
        /// The task.
        task: TaskId,
        /// The container.
        container_id: String,
    },
    /// Stop the running container, then [`Outcome::Stopped`] or
    /// [`Outcome::StopFailed`].
    Stop {
        /// The task.
        task: TaskId,
        /// The container.
        container_id: String,
        /// SIGKILL after this long.
        grace_ms: u64,
        /// Wait this long before the stop signal: [`BACKEND_DRAIN_MS`] for a task that
        /// other boards reach over overlays, else 0.
        drain_ms: u64,
    },
    /// Stop (if running) and delete a container and its sandbox, closing the task's
    /// publications first, then [`Outcome::Removed`]. `task` is `None` for an orphan.
    Remove {
        /// The task, if the container belongs to one.
        task: Option<TaskId>,
        /// The container.
        container_id: String,
        /// SIGKILL after this long.
        grace_ms: u64,
    },
    /// Close the task's publications: its container is gone (or never started), and the
    /// port may be wanted by the next task.
    ClosePorts(TaskId),
}

/// What an operation the shell ran for a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The container exists, its ports (if any) are published.
    Prepared {
        /// The published ports to report once it runs.
        bound: Vec<PortConfig>,
        /// Top digest of its image.
        digest: String,
    },
    /// The container runs.
    Started,
    /// The container ended with this code.
    Stopped {
        /// Exit code (143: SIGTERM).
        code: i32,
    },
    /// Stopping failed; `seen` is the container as observed afterwards, so the next
    /// step is decided from what is there instead of the same stop again.
    StopFailed {
        /// The container, if it could be read.
        seen: Option<Container>,
    },
    /// Preparing or starting failed: the task is rejected with this reason (what
    /// `service ps` shows).
    Failed {
        /// The reason, for a user.
        reason: String,
    },
    /// The container and its sandbox are gone.
    Removed,
}

/// What the node observes besides each task's container, gathered by the shell before a
/// pass.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// How long a task waits for a missing image.
    pub image_wait_ms: u64,
    /// The disk's pressure, if short of space.
    pub disk_full: Option<&'a str>,
}

/// The node's task set.
#[derive(Debug, Default)]
pub struct Book {
    tasks: BTreeMap<TaskId, Task>,
    /// Containers of no known task, found at start.
    orphans: Vec<String>,
    /// A full set arriving in chunks.
    partial_full: Option<Vec<Assignment>>,
    /// Whether a full set arrived since start.
    full_seen: bool,
    /// What the supervisor remembers across restarts may have changed.
    dirty: bool,
}

impl Book {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts back a task remembered from before a restart (its container is looked for
    /// with [`Book::adopt`]).
    pub fn restore(&mut self, assignment: Assignment, status: TaskStatus, stop_requested: bool) {
        let id = assignment.task_id.clone();
        self.tasks.insert(id, Task::new(assignment, status, stop_requested));
    }

    /// Notes a container the runtime lists at start: the task it belongs to, if any,
    /// takes it (`None` otherwise: an orphan, removed after the first full set).
    pub fn adopt(&mut self, container_id: String, container: Container) -> Option<TaskId> {
        let Some(task) = self.tasks.values_mut().find(|t| t.container_id == container_id) else {
            self.orphans.push(container_id);
            return None;
        };
        task.container = container;
        Some(task.assignment.task_id.clone())
    }

    /// How many containers of unknown tasks wait for the first full set.
    pub fn orphans(&self) -> usize {
        self.orphans.len()
    }

    /// A task of the set (or one being removed).
    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// Every task of the set (and those being removed).
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Sets a task's overlay networks, used when its container is next prepared (a
    /// container already made keeps the interfaces it has).
    pub fn set_attachments(&mut self, id: &TaskId, attachments: Vec<NetworkAttachment>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.attachments = attachments;
        }
    }

    /// Records the image digest of a task's adopted container.
    pub fn set_digest(&mut self, id: &TaskId, digest: Option<String>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.digest = digest;
        }
    }

    /// Records that the shell published a task's ports (an adopted running container's,
    /// again).
    pub fn ports_opened(&mut self, id: &TaskId, bound: Vec<PortConfig>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.bound = bound;
            t.ports_open = true;
        }
    }

    /// A new session: a full set left unfinished by the lost one is dropped (the manager
    /// sends the whole set again).
    pub fn new_session(&mut self) {
        self.partial_full = None;
    }

    /// Applies a `ManagerMessage::Assignments`: a full set (complete when `more` is
    /// false) replaces the set; otherwise `upsert` and `remove` patch it.
    pub fn assign(&mut self, full: bool, more: bool, upsert: Vec<Assignment>, remove: Vec<TaskId>) -> Vec<Decision> {
        self.dirty = true;
        let mut out = Vec::new();
        if full || self.partial_full.is_some() {
            let set = self.partial_full.get_or_insert_with(Vec::new);
            set.extend(upsert);
            if more {
                return out;
            }
            let set = self.partial_full.take().unwrap_or_default();
            let keep: BTreeSet<&TaskId> = set.iter().map(|a| &a.task_id).collect();
            let gone: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(id, t)| !t.removed && !keep.contains(id))
                .map(|(id, _)| id.clone())
                .collect();
            for a in set {
                self.upsert(a);
            }
            for id in gone {
                out.push(self.forget(id));
            }
            if !self.full_seen {
                self.full_seen = true;
                out.extend(std::mem::take(&mut self.orphans).into_iter().map(|container_id| Decision::Remove {
                    task: None,
                    container_id,
                    grace_ms: DEFAULT_STOP_GRACE_MS,
                }));
            }
            return out;
        }
        for a in upsert {
            self.upsert(a);
        }
        for id in remove {
            out.push(self.forget(id));
        }
        out
    }

    fn upsert(&mut self, a: Assignment) {
        match self.tasks.get_mut(&a.task_id) {
            Some(t) => {
                // The spec of a task never changes; the desired state only moves forward.
                if a.desired_state > t.assignment.desired_state {
                    t.assignment.desired_state = a.desired_state;
                }
                t.assignment.hosts = a.hosts;
                t.removed = false;
            }
            None => {
                let id = a.task_id.clone();
                let status = TaskStatus::new(TaskState::Assigned, 0, "assigned");
                self.tasks.insert(id, Task::new(a, status, false));
            }
        }
    }

    fn forget(&mut self, id: TaskId) -> Decision {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.removed = true;
        }
        Decision::Forget(id)
    }

    /// Records what an operation did for `task`. A failed preparation or start rejects
    /// the task (unless it already ended).
    pub fn finished(&mut self, now_ms: u64, task: &TaskId, outcome: Outcome) -> Vec<Decision> {
        self.dirty = true;
        let mut out = Vec::new();
        let Some(t) = self.tasks.get_mut(task) else { return out };
        t.busy = false;
        match outcome {
            Outcome::Removed => {
                if t.removed {
                    self.tasks.remove(task);
                } else {
                    // Assigned again while being removed.
                    t.container = Container::Absent;
                }
            }
            Outcome::Prepared { bound, digest } => {
                t.container = Container::Created;
                t.bound = bound;
                t.ports_open = true;
                t.digest = Some(digest);
            }
            Outcome::Started => t.container = Container::Running,
            Outcome::Stopped { code } => t.container = Container::Exited { code },
            Outcome::StopFailed { seen } => {
                if let Some(seen) = seen {
                    t.container = seen;
                }
            }
            Outcome::Failed { reason } => {
                if !t.status.state.is_terminal() {
                    t.status = rejected(now_ms, &reason);
                    if std::mem::take(&mut t.ports_open) {
                        out.push(Decision::ClosePorts(task.clone()));
                    }
                    out.push(Decision::Report { task: task.clone(), status: t.status.clone() });
                }
            }
        }
        out
    }

    /// The idle tasks whose container may change on its own (created or running), with
    /// their container IDs: the shell reads their status for [`Book::observed`].
    pub fn to_poll(&self) -> Vec<(TaskId, String)> {
        self.tasks
            .values()
            .filter(|t| !t.busy && !t.removed && matches!(t.container, Container::Created | Container::Running))
            .map(|t| (t.assignment.task_id.clone(), t.container_id.clone()))
            .collect()
    }

    /// Whether nothing here moves on without an event: every task is busy (its operation
    /// reports back), runs as desired with its container running (its exit is an event the
    /// shell waits for), or has ended with nothing of it running. A task waiting for an
    /// image, for disk space or for its next step is not steady: time and the node's state
    /// move it on, so the shell keeps polling while one is there.
    pub fn steady(&self) -> bool {
        self.tasks.values().all(|t| {
            t.busy
                || (t.status.state == TaskState::Running && t.container == Container::Running)
                || (t.status.state.is_terminal() && !matches!(t.container, Container::Running | Container::Created))
        })
    }

    /// Records what the runtime shows of an idle task's container.
    pub fn observed(&mut self, id: &TaskId, container: Container) {
        if let Some(t) = self.tasks.get_mut(id) {
            if !t.busy {
                t.container = container;
            }
        }
    }

    /// Steps every idle task until it needs to wait, and starts removals.
    /// `image_present` says whether the node holds an image complete.
    pub fn reconcile(
        &mut self,
        now_ms: u64,
        node: Observed<'_>,
        image_present: impl Fn(&str) -> bool,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            if t.busy {
                continue;
            }
            if t.ports_open && !matches!(t.container, Container::Running | Container::Created) {
                // Ports close as soon as the container is gone, for the next task.
                t.ports_open = false;
                out.push(Decision::ClosePorts(id.clone()));
            }
            if t.removed {
                t.busy = true;
                t.ports_open = false;
                out.push(Decision::Remove {
                    task: Some(id.clone()),
                    container_id: t.container_id.clone(),
                    grace_ms: t.assignment.spec.stop_grace_period_ms,
                });
                continue;
            }
            for _ in 0..STEPS_PER_PASS {
                let facts = Facts {
                    container: t.container,
                    image: &t.assignment.spec.image,
                    image_present: t.container != Container::Absent || image_present(&t.assignment.spec.image),
                    stop_requested: t.stop_requested,
                    image_wait_ms: node.image_wait_ms,
                    disk_full: node.disk_full,
                };
                match step(now_ms, t.assignment.desired_state, &t.status, &facts) {
                    Action::Noop | Action::WaitForImage => break,
                    Action::Report(mut status) => {
                        if status.state == TaskState::Running {
                            status.ports = BoundedVec::try_from(t.bound.clone()).unwrap_or_default();
                        }
                        self.dirty = true;
                        t.status = status.clone();
                        out.push(Decision::Report { task: id.clone(), status });
                    }
                    Action::Prepare => {
                        t.busy = true;
                        out.push(Decision::Prepare {
                            task: id.clone(),
                            assignment: Box::new(t.assignment.clone()),
                            container_id: t.container_id.clone(),
                            attachments: t.attachments.clone(),
                        });
                        break;
                    }
                    Action::Start => {
                        t.busy = true;
                        out.push(Decision::Start { task: id.clone(), container_id: t.container_id.clone() });
                        break;
                    }
                    Action::Stop => {
                        t.busy = true;
                        t.stop_requested = true;
                        self.dirty = true;
                        out.push(Decision::Stop {
                            task: id.clone(),
                            container_id: t.container_id.clone(),
                            grace_ms: t.assignment.spec.stop_grace_period_ms,
                            drain_ms: if t.attachments.is_empty() { 0 } else { BACKEND_DRAIN_MS },
                        });
                        break;
                    }
                }
            }
        }
        out
    }

    /// Top digests of the images that tasks' containers use (image GC keeps them).
    pub fn images_in_use(&self) -> Vec<String> {
        let digests: BTreeSet<&String> = self
            .tasks
            .values()
            .filter(|t| t.container != Container::Absent || t.busy)
            .filter_map(|t| t.digest.as_ref())
            .collect();
        digests.into_iter().cloned().collect()
    }

    /// What must survive a restart, if it may have changed since the last call (then
    /// `Some`): each task of the set with its last status and whether the agent stopped
    /// it. Call [`Book::unsaved`] when writing it failed.
    pub fn to_remember(&mut self) -> Option<Vec<(&Assignment, &TaskStatus, bool)>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.tasks.values().filter(|t| !t.removed).map(|t| (&t.assignment, &t.status, t.stop_requested)).collect())
    }

    /// Writing what [`Book::to_remember`] returned failed: offer it again next time.
    pub fn unsaved(&mut self) {
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn assignment(id: u8, desired: TaskState) -> Assignment {
        let mut spec = shoal_proto::ServiceSpec::new(
            shoal_proto::text("web").unwrap(),
            shoal_proto::text("demo/app:1.0").unwrap(),
        )
        .task_spec();
        spec.stop_grace_period_ms = 7_000;
        Assignment {
            task_id: TaskId::from_random([id; 16]),
            service_name: shoal_proto::text("web").unwrap(),
            slot: u32::from(id),
            spec,
            desired_state: desired,
            hosts: BoundedVec::new(),
            networks: BoundedVec::new(),
            service_id: None,
        }
    }

    /// The task's address on an overlay `atsea` (10.0.1.0/24, VNI 4097).
    fn atsea_attachment() -> NetworkAttachment {
        let subnet = crate::net::Subnet::new(std::net::Ipv4Addr::new(10, 0, 1, 0), 24).unwrap();
        NetworkAttachment {
            network: "atsea".into(),
            overlay: crate::net::overlay::Overlay::new(4097, subnet, 1500).unwrap(),
            address: std::net::Ipv4Addr::new(10, 0, 1, 2),
        }
    }

    const NODE: Observed<'static> = Observed { image_wait_ms: 1_000, disk_full: None };

    fn present(_: &str) -> bool {
        true
    }

    fn missing(_: &str) -> bool {
        false
    }

    fn reports(ds: &[Decision]) -> Vec<TaskState> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Report { status, .. } => Some(status.state),
                _ => None,
            })
            .collect()
    }

    fn ids(book: &Book) -> Vec<TaskId> {
        book.tasks().filter(|t| !t.removed).map(|t| t.assignment.task_id.clone()).collect()
    }

    #[test]
    fn a_full_set_in_chunks_applies_at_the_last_chunk_and_replaces_the_set() {
        let (a, b, c) = (assignment(1, Running), assignment(2, Running), assignment(3, Running));
        let mut book = Book::new();
        book.restore(c.clone(), TaskStatus::new(Running, 1, "started"), false);
        assert!(book.assign(true, true, vec![a.clone()], vec![]).is_empty());
        assert_eq!(ids(&book), std::slice::from_ref(&c.task_id), "nothing applies before the last chunk");
        let out = book.assign(true, false, vec![b.clone()], vec![]);
        assert_eq!(out, [Decision::Forget(c.task_id.clone())]);
        let mut want = vec![a.task_id.clone(), b.task_id.clone()];
        want.sort();
        assert_eq!(ids(&book), want);
        // A chunk left unfinished by a lost session is dropped.
        book.assign(true, true, vec![c.clone()], vec![]);
        book.new_session();
        book.assign(false, false, vec![], vec![a.task_id.clone()]);
        assert_eq!(ids(&book), std::slice::from_ref(&b.task_id));
    }

    #[test]
    fn a_diff_patches_and_desired_state_only_moves_forward() {
        let a = assignment(1, Shutdown);
        let mut book = Book::new();
        book.assign(false, false, vec![a.clone()], vec![]);
        book.assign(false, false, vec![assignment(1, Running)], vec![]);
        assert_eq!(book.task(&a.task_id).unwrap().assignment.desired_state, Shutdown);
        assert_eq!(book.task(&a.task_id).unwrap().status.state, Assigned, "not reported until stepped");
    }

    #[test]
    fn orphans_are_removed_only_after_the_first_full_set() {
        let a = assignment(1, Running);
        let mut book = Book::new();
        book.restore(a.clone(), TaskStatus::new(Running, 1, "started"), false);
        assert_eq!(book.adopt("old.1.x".into(), Container::Running), None);
        assert_eq!(
            book.adopt(book.task(&a.task_id).unwrap().container_id.clone(), Container::Running),
            Some(a.task_id.clone())
        );
        assert_eq!(book.orphans(), 1);
        // Diffs never remove them: the manager may not have sent everything yet.
        assert!(book.assign(false, false, vec![a.clone()], vec![]).is_empty());
        let out = book.assign(true, false, vec![a.clone()], vec![]);
        assert_eq!(
            out,
            [Decision::Remove { task: None, container_id: "old.1.x".into(), grace_ms: DEFAULT_STOP_GRACE_MS }]
        );
        assert!(book.assign(true, false, vec![a], vec![]).is_empty(), "only once");
    }

    #[test]
    fn a_tasks_attachments_go_with_its_preparation() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.assign(false, false, vec![a], vec![]);
        assert!(book.task(&id).unwrap().attachments.is_empty(), "none by default");
        let at = atsea_attachment();
        book.set_attachments(&id, vec![at.clone()]);
        let out = book.reconcile(10, NODE, present);
        let Some(Decision::Prepare { attachments, .. }) = out.last() else { panic!("{out:?}") };
        assert_eq!(attachments, &[at]);
    }

    #[test]
    fn a_task_on_an_overlay_is_drained_before_its_stop_signal() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.restore(a, TaskStatus::new(Running, 1, "started"), false);
        let cid = book.task(&id).unwrap().container_id.clone();
        book.adopt(cid.clone(), Container::Running);
        let at = atsea_attachment();
        book.set_attachments(&id, vec![at]);
        book.assign(false, false, vec![assignment(1, Shutdown)], vec![]);
        let out = book.reconcile(5, NODE, present);
        let stop = Decision::Stop { task: id, container_id: cid, grace_ms: 7_000, drain_ms: BACKEND_DRAIN_MS };
        assert_eq!(out, [stop]);
    }

    #[test]
    fn an_encrypted_networks_container_joins_with_its_port_and_mtu() {
        let mut a = assignment(1, Running);
        let config = |encrypted| shoal_proto::networks::AttachmentConfig {
            network_id: shoal_proto::networks::NetworkId::from_random([3; 16]),
            vni: 4097,
            subnet: shoal_proto::networks::Subnet::parse("10.0.1.0/24").unwrap(),
            gateway: std::net::Ipv4Addr::new(10, 0, 1, 1),
            address: std::net::Ipv4Addr::new(10, 0, 1, 2),
            encrypted,
            ingress: false,
        };
        a.networks = vec![config(true), config(false)].try_into().unwrap();
        let got = attachments_of(&a);
        assert_eq!((got[0].overlay.port, got[0].overlay.mtu), (crate::net::overlay::encrypted_port(4097), 1410));
        assert_eq!((got[1].overlay.port, got[1].overlay.mtu), (crate::net::overlay::VXLAN_PORT, 1450));
    }

    #[test]
    fn a_new_task_is_reported_prepared_started_and_reports_its_ports_when_running() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.assign(false, false, vec![a], vec![]);
        let out = book.reconcile(10, NODE, present);
        assert_eq!(reports(&out), [Accepted, Preparing]);
        let Some(Decision::Prepare { container_id, .. }) = out.last() else { panic!("{out:?}") };
        assert_eq!(container_id, &book.task(&id).unwrap().container_id);
        // Busy: nothing more until the preparation ends.
        assert!(book.reconcile(11, NODE, present).is_empty());
        let port = PortConfig {
            target: 80,
            published: Some(8000),
            protocol: shoal_proto::Protocol::Tcp,
            mode: shoal_proto::PublishMode::Host,
        };
        book.finished(12, &id, Outcome::Prepared { bound: vec![port], digest: "sha256:aa".into() });
        let out = book.reconcile(13, NODE, present);
        assert_eq!(reports(&out), [Starting]);
        assert!(matches!(out.last(), Some(Decision::Start { .. })), "{out:?}");
        assert_eq!(book.images_in_use(), ["sha256:aa"]);
        book.finished(14, &id, Outcome::Started);
        let out = book.reconcile(15, NODE, present);
        let [Decision::Report { status, .. }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((status.state, status.ports.as_slice()), (Running, &[port][..]));
        assert!(book.reconcile(16, NODE, present).is_empty(), "running needs nothing");
    }

    #[test]
    fn a_failed_preparation_rejects_with_the_reason_and_closes_ports() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.assign(false, false, vec![a], vec![]);
        book.reconcile(1, NODE, present);
        book.finished(2, &id, Outcome::Prepared { bound: vec![], digest: "sha256:aa".into() });
        book.reconcile(3, NODE, present);
        let out = book.finished(4, &id, Outcome::Failed { reason: "container x failed to start".into() });
        let [Decision::ClosePorts(closed), Decision::Report { status, .. }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(closed, &id);
        assert_eq!((status.state, status.err.as_deref()), (Rejected, Some("container x failed to start")));
        // Terminal: a late failure changes nothing.
        assert!(book.finished(5, &id, Outcome::Failed { reason: "again".into() }).is_empty());
        assert!(book.reconcile(6, NODE, present).is_empty());
    }

    #[test]
    fn a_missing_image_waits_then_rejects() {
        let a = assignment(1, Running);
        let mut book = Book::new();
        book.assign(false, false, vec![a], vec![]);
        assert_eq!(reports(&book.reconcile(100, NODE, missing)), [Accepted, Preparing]);
        assert!(book.reconcile(500, NODE, missing).is_empty(), "waits");
        let full = Observed { disk_full: Some("no space left on the board's disk (/d)"), ..NODE };
        let out = book.reconcile(600, full, missing);
        let [Decision::Report { status, .. }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(status.state, Rejected);
        assert!(status.err.as_deref().unwrap().contains("cannot be stored: no space left"), "{status:?}");
    }

    #[test]
    fn desired_shutdown_stops_once_and_the_exit_is_a_shutdown() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.restore(a.clone(), TaskStatus::new(Running, 1, "started"), false);
        let cid = book.task(&id).unwrap().container_id.clone();
        book.adopt(cid.clone(), Container::Running);
        book.to_remember();
        book.assign(false, false, vec![assignment(1, Shutdown)], vec![]);
        let out = book.reconcile(5, NODE, present);
        assert_eq!(out, [Decision::Stop { task: id.clone(), container_id: cid, grace_ms: 7_000, drain_ms: 0 }]);
        let remembered = book.to_remember().unwrap();
        assert!(remembered[0].2, "stop_requested is remembered: an exit after a restart is a Shutdown");
        assert!(book.reconcile(6, NODE, present).is_empty(), "one stop at a time");
        // A failed stop looks again at what is there: the container is gone.
        book.finished(7, &id, Outcome::StopFailed { seen: Some(Container::Absent) });
        assert_eq!(reports(&book.reconcile(8, NODE, present)), [Shutdown]);
        // Or, after a successful stop, it ended with 143.
        let mut book2 = Book::new();
        book2.restore(assignment(1, Shutdown), TaskStatus::new(Running, 1, "started"), true);
        book2.adopt(book2.task(&id).unwrap().container_id.clone(), Container::Exited { code: 143 });
        let out = book2.reconcile(9, NODE, present);
        let [Decision::Report { status, .. }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!((status.state, status.exit_code), (Shutdown, Some(143)));
    }

    #[test]
    fn a_removed_task_closes_its_ports_is_removed_once_and_then_forgotten() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.restore(a, TaskStatus::new(Running, 1, "started"), false);
        let cid = book.task(&id).unwrap().container_id.clone();
        book.adopt(cid.clone(), Container::Running);
        book.ports_opened(&id, vec![]);
        assert_eq!(book.assign(false, false, vec![], vec![id.clone()]), [Decision::Forget(id.clone())]);
        assert!(book.to_remember().unwrap().is_empty(), "a removed task is not remembered");
        let out = book.reconcile(2, NODE, present);
        assert_eq!(out, [Decision::Remove { task: Some(id.clone()), container_id: cid, grace_ms: 7_000 }]);
        assert!(book.reconcile(3, NODE, present).is_empty());
        assert!(book.task(&id).is_some(), "kept until its container is gone");
        book.finished(4, &id, Outcome::Removed);
        assert!(book.task(&id).is_none());
    }

    #[test]
    fn a_task_assigned_again_while_being_removed_starts_afresh() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.restore(a.clone(), TaskStatus::new(Preparing, 1, "preparing"), false);
        book.assign(false, false, vec![], vec![id.clone()]);
        book.reconcile(2, NODE, present);
        book.assign(false, false, vec![a], vec![]);
        book.finished(3, &id, Outcome::Removed);
        let t = book.task(&id).unwrap();
        assert_eq!((t.container, t.removed, t.busy), (Container::Absent, false, false));
        assert!(matches!(book.reconcile(4, NODE, present).last(), Some(Decision::Prepare { .. })));
    }

    #[test]
    fn ports_close_when_the_container_is_gone_and_polling_skips_busy_tasks() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        book.restore(a, TaskStatus::new(Running, 1, "started"), false);
        let cid = book.task(&id).unwrap().container_id.clone();
        book.adopt(cid.clone(), Container::Running);
        book.ports_opened(&id, vec![]);
        assert_eq!(book.to_poll(), [(id.clone(), cid)]);
        book.observed(&id, Container::Exited { code: 1 });
        assert!(book.to_poll().is_empty());
        let out = book.reconcile(2, NODE, present);
        assert_eq!(out[0], Decision::ClosePorts(id.clone()));
        assert_eq!(reports(&out), [Failed]);
        assert!(book.images_in_use().is_empty());
    }

    #[test]
    fn only_running_or_ended_tasks_are_steady() {
        let a = assignment(1, Running);
        let id = a.task_id.clone();
        let mut book = Book::new();
        assert!(book.steady(), "an empty book waits for nothing");
        book.assign(false, false, vec![a], vec![]);
        assert!(!book.steady(), "a new task has steps to take");
        // Waiting for its image: time moves it on (rejected after the wait).
        book.reconcile(1, NODE, missing);
        assert!(!book.steady());
        let out = book.reconcile(2, NODE, present);
        assert!(matches!(out.last(), Some(Decision::Prepare { .. })));
        assert!(book.steady(), "busy: the operation reports back");
        book.finished(3, &id, Outcome::Prepared { bound: vec![], digest: String::new() });
        book.reconcile(4, NODE, present);
        book.finished(5, &id, Outcome::Started);
        book.reconcile(6, NODE, present);
        let t = book.task(&id).unwrap();
        assert_eq!((t.status.state, t.container), (Running, Container::Running));
        assert!(book.steady(), "running: its exit is an event");
        book.observed(&id, Container::Exited { code: 0 });
        assert!(!book.steady(), "the exit is not reported yet");
        book.reconcile(7, NODE, present);
        assert!(book.steady(), "ended, nothing runs");
    }

    #[test]
    fn nothing_to_remember_until_something_changes() {
        let mut book = Book::new();
        assert!(book.to_remember().is_none());
        book.assign(false, false, vec![assignment(1, Running)], vec![]);
        assert_eq!(book.to_remember().unwrap().len(), 1);
        assert!(book.to_remember().is_none());
        book.unsaved();
        assert!(book.to_remember().is_some(), "a failed write is tried again");
    }
}
