//! The task supervisor: runs the tasks the manager assigns to this node.
//!
//! [`core`] decides, one step per call, what each task needs next; this shell holds the
//! node's assignment set (a full set replaces it, diffs patch it), gathers what the node
//! observes (container status, image present), performs the step with the real runtime,
//! image store and network, and reports every status change. It lives outside the
//! session: tasks keep running while the manager is unreachable, and the latest status of
//! each task waits for the next session ([`Supervisor::next_reports`],
//! [`Supervisor::resend_all`]).
//!
//! Long work (preparing, starting and stopping containers) runs as its own tokio task so
//! that one slow stop does not hold up the others; container status is polled every
//! [`SupervisorConfig::poll`] to notice exits.
//!
//! The set and each task's last status are kept in `<data-dir>/agent/tasks.json`
//! (rewritten only when they change). On start the supervisor takes back the containers
//! the runtime lists: a running one is not started again, its sandbox is re-attached and
//! its ports re-published; one that exited meanwhile is reported with its code.
//! Containers of no known task are removed only once a full set from the manager has
//! arrived.
//!
//! Not here: restart policies (the manager's orchestrator replaces failed tasks),
//! overlay networks, the ingress routing mesh (ingress-mode ports are published on the
//! task's node only, best effort), health checks.

pub mod core;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::dispatch::{Assignment, TaskReport, MAX_REPORTS};
use shoal_proto::services::Seccomp;
use shoal_proto::{BoundedVec, PortConfig, Protocol, PublishMode, TaskId, TaskState, TaskStatus};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use self::core::{Action, Container, Facts};
use crate::images::ImageStore;
use crate::net::{NetError, PortPublisher, Proto, Published, Sandbox, Sandboxes};
use crate::runtime::from_image::{container_config, Overrides};
use crate::runtime::seccomp::SeccompPolicy;
use crate::runtime::{ContainerStatus, NetworkMode, Runtime, RuntimeError};

/// How the supervisor behaves.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The agent's data directory (`tasks.json` goes to `<data-dir>/agent/`).
    pub data_dir: PathBuf,
    /// How often container status is polled.
    pub poll: Duration,
    /// How long a task waits for a missing image before it is rejected.
    pub image_wait: Duration,
}

impl SupervisorConfig {
    /// The defaults: poll every 250 ms, wait up to two minutes for an image.
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir, poll: Duration::from_millis(250), image_wait: Duration::from_millis(core::IMAGE_WAIT_MS) }
    }
}

/// What can stop the supervisor from starting.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `tasks.json` can't be read or parsed.
    #[error("task state in {} is unusable: {reason}; remove it to start with no tasks (their containers are then removed once the manager sends this node's tasks)", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The runtime can't list its containers.
    #[error("cannot list containers: {0}")]
    Runtime(#[from] RuntimeError),
}

/// The handle on the running supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    disk: Arc<crate::disk::Watch>,
}

/// Statuses and images, shared between the worker and the handles.
#[derive(Default)]
struct Shared {
    /// The latest status of every task in the set.
    current: Mutex<BTreeMap<TaskId, TaskStatus>>,
    /// Statuses not yet handed to a session, latest per task.
    pending: Mutex<BTreeMap<TaskId, TaskStatus>>,
    notify: Notify,
    /// Top digests of images that containers use.
    in_use: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Command {
    Assignments { full: bool, more: bool, upsert: Vec<Assignment>, remove: Vec<TaskId> },
    NewSession,
    Shutdown(oneshot::Sender<()>),
}

impl Supervisor {
    /// Loads the saved set, takes back the containers the runtime lists, and starts
    /// supervising. Needs a tokio runtime (blocking runtime calls go to
    /// `spawn_blocking`).
    pub async fn start<N: Sandboxes + 'static>(
        config: SupervisorConfig,
        runtime: Arc<dyn Runtime>,
        network: Arc<N>,
        publisher: PortPublisher,
        images: Arc<ImageStore>,
    ) -> Result<Self, SupervisorError> {
        let shared = Arc::new(Shared::default());
        let (commands, rx) = mpsc::channel(64);
        let (done_tx, done_rx) = mpsc::channel(256);
        let disk = Arc::new(crate::disk::Watch::new(&config.data_dir));
        disk.sample();
        let sampled = Arc::downgrade(&disk);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::disk::SAMPLE_EVERY).await;
                let Some(d) = sampled.upgrade() else { return };
                // One statvfs: quick enough not to need a blocking thread.
                d.sample();
            }
        });
        let mut worker = Worker {
            deps: Arc::new(Deps {
                runtime,
                network,
                publisher,
                images,
                bridge_ready: AtomicBool::new(false),
                image_wait_ms: config.image_wait.as_millis() as u64,
                disk: disk.clone(),
            }),
            state_path: crate::identity::agent_dir(&config.data_dir).join("tasks.json"),
            poll: config.poll,
            shared: shared.clone(),
            tasks: BTreeMap::new(),
            orphans: Vec::new(),
            partial_full: None,
            full_seen: false,
            done_tx,
            last_saved: Vec::new(),
            dirty: false,
        };
        worker.load()?;
        match worker.deps.network.ensure_bridge().await {
            Ok(()) => worker.deps.bridge_ready.store(true, Ordering::Relaxed),
            Err(e) => warn!(error = %e, "cannot set up the container bridge; tasks that need it will be rejected"),
        }
        worker.adopt().await?;
        tokio::spawn(worker.run(rx, done_rx));
        Ok(Self { commands, shared, disk })
    }

    /// Applies a `ManagerMessage::Assignments`: a full set (possibly in chunks, complete
    /// when `more` is false) replaces the node's set; otherwise `upsert` and `remove`
    /// patch it.
    pub async fn assign(&self, full: bool, more: bool, upsert: Vec<Assignment>, remove: Vec<TaskId>) {
        if self.commands.send(Command::Assignments { full, more, upsert, remove }).await.is_err() {
            warn!("the supervisor has stopped; assignments ignored");
        }
    }

    /// Waits for status changes not yet handed out and returns them (at most
    /// [`MAX_REPORTS`], the latest per task), for an `AgentMessage::TaskStatuses`.
    pub async fn next_reports(&self) -> BoundedVec<TaskReport, MAX_REPORTS> {
        loop {
            {
                let mut pending = lock(&self.shared.pending);
                if !pending.is_empty() {
                    let mut out = BoundedVec::new();
                    while out.len() < MAX_REPORTS {
                        let Some((task_id, status)) = pending.pop_first() else { break };
                        let _ = out.push(TaskReport { task_id, status });
                    }
                    if !pending.is_empty() {
                        self.shared.notify.notify_one();
                    }
                    return out;
                }
            }
            self.shared.notify.notified().await;
        }
    }

    /// Call when a session with the manager opens: the chunks of a full set that a lost
    /// session left unfinished are dropped (the manager starts the set again), and the
    /// current status of every task is queued (see [`Supervisor::resend_all`]).
    pub async fn new_session(&self) {
        let _ = self.commands.send(Command::NewSession).await;
        self.resend_all();
    }

    /// Queues the current status of every task again: a new session starts with them,
    /// since the manager may have missed reports while the node was unreachable.
    pub fn resend_all(&self) {
        let current = lock(&self.shared.current).clone();
        if current.is_empty() {
            return;
        }
        lock(&self.shared.pending).extend(current);
        self.shared.notify.notify_one();
    }

    /// The current status of every task in the set.
    pub fn statuses(&self) -> BTreeMap<TaskId, TaskStatus> {
        lock(&self.shared.current).clone()
    }

    /// The data dir's disk pressure, which the supervisor samples and the session reports.
    pub fn disk(&self) -> &Arc<crate::disk::Watch> {
        &self.disk
    }

    /// Top digests of the images the tasks' containers use (image GC keeps them).
    pub fn images_in_use(&self) -> Vec<String> {
        lock(&self.shared.in_use).clone()
    }

    /// Stops supervising: publications close, containers keep running (a new supervisor
    /// on the same data directory takes them back). For agent shutdown and tests.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The side-effecting parts, shared with the operations in flight.
struct Deps<N> {
    runtime: Arc<dyn Runtime>,
    network: Arc<N>,
    publisher: PortPublisher,
    images: Arc<ImageStore>,
    bridge_ready: AtomicBool,
    image_wait_ms: u64,
    disk: Arc<crate::disk::Watch>,
}

/// One task as the worker knows it.
struct Entry {
    assignment: Assignment,
    status: TaskStatus,
    container_id: String,
    container: Container,
    stop_requested: bool,
    /// An operation runs for it.
    busy: bool,
    /// Gone from the set: remove its container, then forget it.
    removed: bool,
    ports: Vec<Published>,
    bound: Vec<PortConfig>,
    sandbox: Option<Sandbox>,
    /// Top digest of its container's image.
    digest: Option<String>,
}

impl Entry {
    fn new(assignment: Assignment, status: TaskStatus, stop_requested: bool) -> Self {
        let container_id = core::container_id(&assignment.service_name, assignment.slot, assignment.task_id.as_str());
        Self {
            assignment,
            status,
            container_id,
            container: Container::Absent,
            stop_requested,
            busy: false,
            removed: false,
            ports: Vec::new(),
            bound: Vec::new(),
            sandbox: None,
            digest: None,
        }
    }

    fn host_network(&self) -> bool {
        host_network(&self.assignment)
    }
}

fn host_network(a: &Assignment) -> bool {
    a.spec.networks.iter().any(|n| n.as_str() == "host")
}

/// What `tasks.json` holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    tasks: Vec<SavedTask>,
}

#[derive(Serialize, Deserialize)]
struct SavedTask {
    assignment: Assignment,
    status: TaskStatus,
    stop_requested: bool,
}

/// A finished operation.
enum Done {
    Prepared {
        task: TaskId,
        result: Result<Prepared, String>,
    },
    Started {
        task: TaskId,
        result: Result<(), String>,
    },
    /// `seen`: the container as observed after a failed stop, so the core decides the
    /// next step from what is there instead of retrying the same stop for ever.
    Stopped {
        task: TaskId,
        result: Result<i32, String>,
        seen: Option<Container>,
    },
    Removed {
        task: Option<TaskId>,
    },
}

struct Prepared {
    sandbox: Option<Sandbox>,
    ports: Vec<Published>,
    bound: Vec<PortConfig>,
    digest: String,
}

struct Worker<N> {
    deps: Arc<Deps<N>>,
    state_path: PathBuf,
    poll: Duration,
    shared: Arc<Shared>,
    tasks: BTreeMap<TaskId, Entry>,
    /// Containers of no known task, found at start.
    orphans: Vec<String>,
    /// A full set arriving in chunks.
    partial_full: Option<Vec<Assignment>>,
    /// Whether a full set arrived since start.
    full_seen: bool,
    done_tx: mpsc::Sender<Done>,
    last_saved: Vec<u8>,
    /// Something saved in `tasks.json` may have changed.
    dirty: bool,
}

fn observe(s: Result<ContainerStatus, RuntimeError>) -> Container {
    match s {
        Ok(ContainerStatus::Created) => Container::Created,
        Ok(ContainerStatus::Running { .. }) => Container::Running,
        Ok(ContainerStatus::Exited { code, .. }) => Container::Exited { code },
        Ok(ContainerStatus::Lost) => Container::Lost,
        Err(_) => Container::Absent,
    }
}

impl<N: Sandboxes + 'static> Worker<N> {
    fn load(&mut self) -> Result<(), SupervisorError> {
        let bytes = match std::fs::read(&self.state_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SupervisorError::State { path: self.state_path.clone(), reason: e.to_string() }),
        };
        let saved: Saved = serde_json::from_slice(&bytes)
            .map_err(|e| SupervisorError::State { path: self.state_path.clone(), reason: e.to_string() })?;
        for t in saved.tasks {
            let id = t.assignment.task_id.clone();
            self.set_current(&id, &t.status, false);
            self.tasks.insert(id, Entry::new(t.assignment, t.status, t.stop_requested));
        }
        self.last_saved = bytes;
        Ok(())
    }

    fn save(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let saved = Saved {
            tasks: self
                .tasks
                .values()
                .filter(|e| !e.removed)
                .map(|e| SavedTask {
                    assignment: e.assignment.clone(),
                    status: e.status.clone(),
                    stop_requested: e.stop_requested,
                })
                .collect(),
        };
        let Ok(bytes) = serde_json::to_vec(&saved) else { return };
        if bytes == self.last_saved {
            return;
        }
        if let Some(dir) = self.state_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match shoal_link::files::write_private(&self.state_path, &bytes) {
            Ok(()) => self.last_saved = bytes,
            Err(e) => {
                self.deps.disk.noticed(&e);
                warn!(error = %e, path = %self.state_path.display(), "cannot save the task set");
                self.dirty = true;
            }
        }
    }

    /// Takes back what the runtime already runs.
    async fn adopt(&mut self) -> Result<(), SupervisorError> {
        let runtime = self.deps.runtime.clone();
        let found = tokio::task::spawn_blocking(move || {
            let ids = runtime.list()?;
            Ok::<_, RuntimeError>(ids.into_iter().map(|id| (id.clone(), observe(runtime.status(&id)))).collect())
        })
        .await
        .map_err(|e| RuntimeError::Spec(format!("listing containers panicked: {e}")))??;
        let found: BTreeMap<String, Container> = found;
        let by_container: BTreeMap<String, TaskId> =
            self.tasks.values().map(|e| (e.container_id.clone(), e.assignment.task_id.clone())).collect();
        for (cid, container) in found {
            let Some(task) = by_container.get(&cid) else {
                self.orphans.push(cid);
                continue;
            };
            let deps = self.deps.clone();
            let entry = self.tasks.get_mut(task).expect("indexed above");
            entry.container = container;
            entry.digest = deps.images.image(&entry.assignment.spec.image).map(|r| r.digest);
            if !entry.host_network() {
                entry.sandbox = deps.network.sandbox(&cid);
            }
            if container == Container::Running {
                let ip = match (&entry.sandbox, entry.host_network()) {
                    (_, true) => None,
                    (Some(s), false) => Some(IpAddr::V4(s.ip)),
                    (None, false) => {
                        warn!(container = %cid, "running container without its network sandbox; its ports are not published");
                        None
                    }
                };
                if let Some(ip) = ip {
                    match publish_all(&deps.publisher, &entry.assignment, ip).await {
                        Ok((ports, bound)) => {
                            entry.ports = ports;
                            entry.bound = bound;
                        }
                        Err(e) => {
                            warn!(container = %cid, error = %e, "cannot publish the ports of a running container again")
                        }
                    }
                }
                info!(task = %task, container = %cid, "took back a running container");
            }
        }
        if !self.orphans.is_empty() {
            info!(containers = self.orphans.len(), "containers of unknown tasks wait for the manager's task list");
        }
        Ok(())
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut done: mpsc::Receiver<Done>) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Assignments { full, more, upsert, remove }) => self.apply(full, more, upsert, remove),
                    Some(Command::NewSession) => self.partial_full = None,
                    Some(Command::Shutdown(ack)) => {
                        // Publications close with the entries; containers keep running.
                        drop(self.tasks);
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                },
                Some(d) = done.recv() => self.finished(d),
                _ = tick.tick() => self.poll_containers().await,
            }
            self.reconcile();
            self.publish_in_use();
            self.save();
        }
    }

    fn apply(&mut self, full: bool, more: bool, upsert: Vec<Assignment>, remove: Vec<TaskId>) {
        self.dirty = true;
        if full || self.partial_full.is_some() {
            let set = self.partial_full.get_or_insert_with(Vec::new);
            set.extend(upsert);
            if more {
                return;
            }
            let set = self.partial_full.take().unwrap_or_default();
            let keep: BTreeSet<TaskId> = set.iter().map(|a| a.task_id.clone()).collect();
            let gone: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(id, e)| !e.removed && !keep.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            debug!(tasks = set.len(), removed = gone.len(), "full task set from the manager");
            for a in set {
                self.upsert(a);
            }
            for id in gone {
                self.forget(&id);
            }
            if !self.full_seen {
                self.full_seen = true;
                for cid in std::mem::take(&mut self.orphans) {
                    info!(container = %cid, "removing the container of a task this node no longer has");
                    self.spawn_remove(
                        None,
                        cid,
                        Vec::new(),
                        Duration::from_millis(shoal_proto::services::DEFAULT_STOP_GRACE_MS),
                    );
                }
            }
            return;
        }
        for a in upsert {
            self.upsert(a);
        }
        for id in remove {
            self.forget(&id);
        }
    }

    fn upsert(&mut self, a: Assignment) {
        match self.tasks.get_mut(&a.task_id) {
            Some(e) => {
                // The spec of a task never changes; the desired state only moves forward.
                if a.desired_state > e.assignment.desired_state {
                    e.assignment.desired_state = a.desired_state;
                }
                e.assignment.hosts = a.hosts;
                e.removed = false;
            }
            None => {
                let id = a.task_id.clone();
                let status = TaskStatus::new(TaskState::Assigned, 0, "assigned");
                self.tasks.insert(id, Entry::new(a, status, false));
            }
        }
    }

    fn forget(&mut self, id: &TaskId) {
        if let Some(e) = self.tasks.get_mut(id) {
            e.removed = true;
        }
        lock(&self.shared.current).remove(id);
        lock(&self.shared.pending).remove(id);
    }

    fn set_current(&self, id: &TaskId, status: &TaskStatus, report: bool) {
        lock(&self.shared.current).insert(id.clone(), status.clone());
        if report {
            lock(&self.shared.pending).insert(id.clone(), status.clone());
            self.shared.notify.notify_one();
        }
    }

    fn finished(&mut self, done: Done) {
        self.dirty = true;
        let now = shoal_link::wall_ms();
        let (task, outcome) = match done {
            Done::Removed { task: None } => return,
            Done::Removed { task: Some(task) } => {
                if self.tasks.get(&task).is_some_and(|e| e.removed) {
                    self.tasks.remove(&task);
                } else if let Some(e) = self.tasks.get_mut(&task) {
                    // Assigned again while being removed.
                    e.busy = false;
                    e.container = Container::Absent;
                }
                return;
            }
            Done::Prepared { task, result } => (task, Outcome::Prepared(result)),
            Done::Started { task, result } => (task, Outcome::Started(result)),
            Done::Stopped { task, result, seen } => {
                if let (Err(_), Some(seen), Some(e)) = (&result, seen, self.tasks.get_mut(&task)) {
                    e.container = seen;
                }
                (task, Outcome::Stopped(result))
            }
        };
        let Some(e) = self.tasks.get_mut(&task) else { return };
        e.busy = false;
        let failure = match outcome {
            Outcome::Prepared(Ok(p)) => {
                e.container = Container::Created;
                e.sandbox = p.sandbox;
                e.ports = p.ports;
                e.bound = p.bound;
                e.digest = Some(p.digest);
                None
            }
            Outcome::Prepared(Err(reason)) | Outcome::Started(Err(reason)) => Some(reason),
            Outcome::Started(Ok(())) => {
                e.container = Container::Running;
                None
            }
            Outcome::Stopped(Ok(code)) => {
                e.container = Container::Exited { code };
                None
            }
            Outcome::Stopped(Err(reason)) => {
                warn!(task = %task, error = %reason, "cannot stop the task's container; trying again");
                None
            }
        };
        if let Some(reason) = failure {
            if !e.status.state.is_terminal() {
                let status = core::rejected(now, &reason);
                info!(task = %task, reason = %reason, "task rejected");
                e.ports.clear();
                e.status = status.clone();
                self.set_current(&task, &status, true);
            }
        }
    }

    async fn poll_containers(&mut self) {
        let ids: Vec<(TaskId, String)> = self
            .tasks
            .values()
            .filter(|e| !e.busy && !e.removed && matches!(e.container, Container::Created | Container::Running))
            .map(|e| (e.assignment.task_id.clone(), e.container_id.clone()))
            .collect();
        if ids.is_empty() {
            return;
        }
        let runtime = self.deps.runtime.clone();
        let seen = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .filter_map(|(t, c)| match runtime.status(&c) {
                    // Only a container that is not there is absent; trouble reading its
                    // state is not a reason to fail the task.
                    Err(RuntimeError::NotFound(_)) => Some((t, Container::Absent)),
                    Err(e) => {
                        debug!(container = %c, error = %e, "cannot read container status");
                        None
                    }
                    ok => {
                        let seen = observe(ok);
                        if seen == Container::Lost {
                            // Its shim died but its processes may run on: kill them (the
                            // runtime does it through the cgroup) before the task is
                            // reported failed, or the manager would place its
                            // replacement, port and all, beside a container still running.
                            if let Err(e) = runtime.stop(&c, Duration::ZERO) {
                                warn!(container = %c, error = %e, "cannot kill a lost container");
                            }
                        }
                        Some((t, seen))
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (task, container) in seen {
            if let Some(e) = self.tasks.get_mut(&task) {
                if !e.busy {
                    e.container = container;
                }
            }
        }
    }

    /// Steps every idle task until it needs to wait, and starts removals.
    fn reconcile(&mut self) {
        let now = shoal_link::wall_ms();
        let ids: Vec<TaskId> = self.tasks.keys().cloned().collect();
        let mut removals = Vec::new();
        for id in ids {
            let deps = self.deps.clone();
            let Some(e) = self.tasks.get_mut(&id) else { continue };
            if e.busy {
                continue;
            }
            if !matches!(e.container, Container::Running | Container::Created) {
                // Ports close as soon as the container is gone, for the next task.
                e.ports.clear();
            }
            if e.removed {
                e.busy = true;
                let ports = std::mem::take(&mut e.ports);
                let (cid, grace) =
                    (e.container_id.clone(), Duration::from_millis(e.assignment.spec.stop_grace_period_ms));
                removals.push((id, cid, ports, grace));
                continue;
            }
            let disk_full = deps.disk.pressure();
            for _ in 0..8 {
                let image_present =
                    e.container != Container::Absent || deps.images.image(&e.assignment.spec.image).is_some();
                let facts = Facts {
                    container: e.container,
                    image: &e.assignment.spec.image,
                    image_present,
                    stop_requested: e.stop_requested,
                    image_wait_ms: deps.image_wait_ms,
                    disk_full: disk_full.as_deref(),
                };
                match core::step(now, e.assignment.desired_state, &e.status, &facts) {
                    Action::Noop | Action::WaitForImage => break,
                    Action::Report(mut status) => {
                        if status.state == TaskState::Running {
                            status.ports = BoundedVec::try_from(e.bound.clone()).unwrap_or_default();
                        }
                        debug!(task = %id, state = %status.state, "task status");
                        self.dirty = true;
                        e.status = status.clone();
                        lock(&self.shared.current).insert(id.clone(), status.clone());
                        lock(&self.shared.pending).insert(id.clone(), status);
                        self.shared.notify.notify_one();
                    }
                    Action::Prepare => {
                        e.busy = true;
                        let (tx, a, cid) = (self.done_tx.clone(), e.assignment.clone(), e.container_id.clone());
                        let task = id.clone();
                        tokio::spawn(async move {
                            let result = prepare(&deps, &a, &cid).await;
                            let _ = tx.send(Done::Prepared { task, result }).await;
                        });
                        break;
                    }
                    Action::Start => {
                        e.busy = true;
                        let (tx, cid, task) = (self.done_tx.clone(), e.container_id.clone(), id.clone());
                        tokio::spawn(async move {
                            let rt = deps.runtime.clone();
                            let result = match tokio::task::spawn_blocking(move || rt.start(&cid)).await {
                                Ok(Ok(_pid)) => Ok(()),
                                Ok(Err(RuntimeError::StartFailed { reason, .. })) => Err(reason),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(e) => Err(format!("starting the container panicked: {e}")),
                            };
                            let _ = tx.send(Done::Started { task, result }).await;
                        });
                        break;
                    }
                    Action::Stop => {
                        e.busy = true;
                        e.stop_requested = true;
                        self.dirty = true;
                        let (tx, cid, task) = (self.done_tx.clone(), e.container_id.clone(), id.clone());
                        let grace = Duration::from_millis(e.assignment.spec.stop_grace_period_ms);
                        tokio::spawn(async move {
                            let rt = deps.runtime.clone();
                            let (result, seen) = tokio::task::spawn_blocking(move || match rt.stop(&cid, grace) {
                                Ok(code) => (Ok(code), None),
                                // A container that can't be stopped may be gone or lost
                                // (its shim died): say what is there.
                                Err(e) => {
                                    let seen = match rt.status(&cid) {
                                        Err(RuntimeError::NotFound(_)) => Some(Container::Absent),
                                        Err(_) => None,
                                        ok => Some(observe(ok)),
                                    };
                                    (Err(e.to_string()), seen)
                                }
                            })
                            .await
                            .unwrap_or_else(|e| (Err(format!("stopping the container panicked: {e}")), None));
                            let _ = tx.send(Done::Stopped { task, result, seen }).await;
                        });
                        break;
                    }
                }
            }
        }
        for (id, cid, ports, grace) in removals {
            self.spawn_remove(Some(id), cid, ports, grace);
        }
    }

    /// Stops (if running) and deletes a container and removes its sandbox.
    fn spawn_remove(&self, task: Option<TaskId>, cid: String, ports: Vec<Published>, grace: Duration) {
        let (deps, tx) = (self.deps.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            drop(ports);
            let rt = deps.runtime.clone();
            let id = cid.clone();
            let result = tokio::task::spawn_blocking(move || {
                if let Ok(ContainerStatus::Running { .. }) = rt.status(&id) {
                    rt.stop(&id, grace)?;
                }
                match rt.delete(&id) {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(container = %cid, error = %e, "cannot remove a container"),
                Err(e) => warn!(container = %cid, error = %e, "removing a container panicked"),
            }
            if let Err(e) = deps.network.remove_sandbox(&cid).await {
                warn!(container = %cid, error = %e, "cannot remove a network sandbox");
            }
            let _ = tx.send(Done::Removed { task }).await;
        });
    }

    fn publish_in_use(&self) {
        let digests: BTreeSet<String> = self
            .tasks
            .values()
            .filter(|e| e.container != Container::Absent || e.busy)
            .filter_map(|e| e.digest.clone())
            .collect();
        *lock(&self.shared.in_use) = digests.into_iter().collect();
    }
}

enum Outcome {
    Prepared(Result<Prepared, String>),
    Started(Result<(), String>),
    Stopped(Result<i32, String>),
}

/// Publishes the task's ports that go to this node (host mode, and ingress mode best
/// effort while there is no routing mesh) to `ip`. A host-mode port in use fails; an
/// ingress-mode one is skipped.
async fn publish_all(
    publisher: &PortPublisher,
    a: &Assignment,
    ip: IpAddr,
) -> Result<(Vec<Published>, Vec<PortConfig>), NetError> {
    let (mut live, mut bound) = (Vec::new(), Vec::new());
    for p in a.spec.ports.iter() {
        let proto = proto(p.protocol);
        match publisher.publish(p.published.unwrap_or(0), proto, ip, p.target).await {
            Ok(published) => {
                bound.push(PortConfig { published: Some(published.local_addr().port()), ..*p });
                live.push(published);
            }
            Err(e) if p.mode == PublishMode::Ingress && e.is_port_in_use() => {
                warn!(task = %a.task_id, error = %e, "ingress port not published on this node");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((live, bound))
}

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

/// With `--network host` the container binds the node's ports itself, on its target
/// ports (there is no proxy to map another port): check they are free now, so a clash
/// is a clear rejection rather than a crashing container.
fn probe_host_ports(a: &Assignment) -> Result<Vec<PortConfig>, NetError> {
    let mut bound = Vec::new();
    for p in a.spec.ports.iter() {
        let port = p.target;
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let taken = match p.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(addr).err(),
            Protocol::Udp => std::net::UdpSocket::bind(addr).err(),
        };
        match taken {
            Some(e) if e.kind() == std::io::ErrorKind::AddrInUse && p.mode == PublishMode::Host => {
                return Err(NetError::PortInUse { port, proto: proto(p.protocol) })
            }
            _ => bound.push(PortConfig { published: Some(port), ..*p }),
        }
    }
    Ok(bound)
}

/// Makes a task's container: its sandbox and ports (or, on the host network, a check of
/// its ports) and the container itself. Undoes what it made when it fails.
async fn prepare<N: Sandboxes>(deps: &Deps<N>, a: &Assignment, cid: &str) -> Result<Prepared, String> {
    let reference = a.spec.image.as_str();
    let record = deps.images.image(reference).ok_or_else(|| format!("image {reference} is not on this node"))?;
    let image = deps.images.config(reference).map_err(|e| format!("image {reference}: {e}"))?;
    let layers = deps.images.lowerdirs(reference).map_err(|e| format!("image {reference}: {e}"))?;
    let host = host_network(a);
    let (sandbox, ports, bound) = if host {
        (None, Vec::new(), probe_host_ports(a).map_err(|e| e.to_string())?)
    } else {
        if !deps.bridge_ready.load(Ordering::Relaxed) {
            deps.network.ensure_bridge().await.map_err(|e| format!("cannot set up the container bridge: {e}"))?;
            deps.bridge_ready.store(true, Ordering::Relaxed);
        }
        // A sandbox left by a crash between its creation and the container's.
        if deps.network.sandbox(cid).is_some() {
            let _ = deps.network.remove_sandbox(cid).await;
        }
        let sandbox = match deps.network.create_sandbox(cid).await {
            Ok(s) => s,
            Err(NetError::SandboxExists(_)) => {
                let _ = deps.network.remove_sandbox(cid).await;
                deps.network.create_sandbox(cid).await.map_err(|e| deps.disk.explain(&e))?
            }
            Err(e) => return Err(deps.disk.explain(&e)),
        };
        match publish_all(&deps.publisher, a, IpAddr::V4(sandbox.ip)).await {
            Ok((ports, bound)) => (Some(sandbox), ports, bound),
            Err(e) => {
                let _ = deps.network.remove_sandbox(cid).await;
                return Err(e.to_string());
            }
        }
    };
    let overrides = Overrides {
        args: a.spec.args.iter().map(|s| s.to_string()).collect(),
        env: a.spec.env.iter().map(|s| s.to_string()).collect(),
        hostname: core::hostname(&a.service_name, a.slot, a.task_id.as_str()),
        network: Some(match &sandbox {
            Some(s) => NetworkMode::Namespace(s.netns_path.clone()),
            None => NetworkMode::Host,
        }),
        memory_limit: (a.spec.resources.limit_memory > 0).then_some(a.spec.resources.limit_memory),
        cpu_millis: (a.spec.resources.limit_cpu_millis > 0).then_some(u64::from(a.spec.resources.limit_cpu_millis)),
        hosts: a.hosts.iter().map(|h| h.to_string()).collect(),
        seccomp: match &a.spec.seccomp {
            Seccomp::Default => SeccompPolicy::Default,
            Seccomp::Unconfined => SeccompPolicy::Unconfined,
            Seccomp::Profile(json) => SeccompPolicy::Profile(json.to_string()),
        },
    };
    let created = match container_config(cid, &image, layers, &overrides) {
        Ok(config) => {
            let rt = deps.runtime.clone();
            tokio::task::spawn_blocking(move || match rt.create(&config) {
                // Left by a crash before the task's status was saved: make it afresh.
                Err(RuntimeError::Exists(_)) => {
                    rt.delete(&config.id)?;
                    rt.create(&config)
                }
                other => other,
            })
            .await
            .unwrap_or_else(|e| Err(RuntimeError::Spec(format!("creating the container panicked: {e}"))))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = created {
        drop(ports);
        if sandbox.is_some() {
            let _ = deps.network.remove_sandbox(cid).await;
        }
        return Err(deps.disk.explain(&e));
    }
    Ok(Prepared { sandbox, ports, bound, digest: record.digest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake::FakeNetwork;
    use crate::net::BridgeConfig;
    use crate::runtime::fake::FakeRuntime;

    fn assignment(id: u8, desired: TaskState) -> Assignment {
        let spec = shoal_proto::ServiceSpec::new(
            shoal_proto::text("web").unwrap(),
            shoal_proto::text("demo/app:1.0").unwrap(),
        )
        .task_spec();
        Assignment {
            task_id: TaskId::from_random([id; 16]),
            service_name: shoal_proto::text("web").unwrap(),
            slot: u32::from(id),
            spec,
            desired_state: desired,
            hosts: BoundedVec::new(),
        }
    }

    fn orphan_config() -> crate::runtime::ContainerConfig {
        crate::runtime::ContainerConfig {
            id: "old.1.x".into(),
            hostname: "old".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            layers: vec![],
            network: NetworkMode::Host,
            memory_limit: None,
            cpu_millis: None,
            hosts: vec![],
            seccomp: Default::default(),
        }
    }

    /// The shell's bookkeeping of assignment sets, with fakes (no image: tasks wait).
    #[test]
    fn full_sets_replace_diffs_patch_and_chunks_complete_at_the_last() {
        let dir = std::env::temp_dir().join(format!("shoal-sup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let images = Arc::new(ImageStore::open(&dir.join("images")).unwrap());
            let runtime = Arc::new(FakeRuntime::default());
            // A container of a task this node no longer has, from before a restart.
            runtime.create(&orphan_config()).unwrap();
            let mut config = SupervisorConfig::new(dir.clone());
            config.poll = Duration::from_millis(5);
            let sup = Supervisor::start(
                config.clone(),
                runtime.clone(),
                Arc::new(FakeNetwork::new(BridgeConfig::default())),
                PortPublisher::new(),
                images.clone(),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(runtime.list().unwrap(), ["old.1.x"], "kept until the manager's full set");
            let (a, b, c) = (
                assignment(1, TaskState::Running),
                assignment(2, TaskState::Running),
                assignment(3, TaskState::Running),
            );
            // First chunk of a full set: nothing applied yet.
            sup.assign(true, true, vec![a.clone()], vec![]).await;
            sup.assign(true, false, vec![b.clone()], vec![]).await;
            let reports = tokio::time::timeout(Duration::from_secs(5), sup.next_reports()).await.unwrap();
            let ids: BTreeSet<_> = reports.iter().map(|r| r.task_id.clone()).collect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !runtime.list().unwrap().is_empty() {
                assert!(tokio::time::Instant::now() < deadline, "the orphan stays: {:?}", runtime.list());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(ids, [a.task_id.clone(), b.task_id.clone()].into_iter().collect());
            // Without the image the tasks wait in Preparing.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while sup.statuses().values().any(|s| s.state != TaskState::Preparing) {
                assert!(tokio::time::Instant::now() < deadline, "{:?}", sup.statuses());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // A diff adds c and removes a; a new full set of {c} drops b.
            sup.assign(false, false, vec![c.clone()], vec![a.task_id.clone()]).await;
            sup.assign(true, false, vec![c.clone()], vec![]).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while sup.statuses().keys().cloned().collect::<Vec<_>>() != vec![c.task_id.clone()] {
                assert!(tokio::time::Instant::now() < deadline, "{:?}", sup.statuses());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sup.shutdown().await;
            // The set survives a restart.
            let saved: Saved = serde_json::from_slice(&std::fs::read(dir.join("agent/tasks.json")).unwrap()).unwrap();
            assert_eq!(saved.tasks.len(), 1);
            let again = Supervisor::start(
                config,
                runtime,
                Arc::new(FakeNetwork::new(BridgeConfig::default())),
                PortPublisher::new(),
                images,
            )
            .await
            .unwrap();
            assert_eq!(again.statuses().len(), 1);
            again.resend_all();
            let reports = again.next_reports().await;
            assert_eq!(reports.len(), 1);
            assert_eq!(reports[0].status.state, TaskState::Preparing);
            again.shutdown().await;
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
