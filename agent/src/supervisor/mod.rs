//! The task supervisor: runs the tasks the manager assigns to this node.
//!
//! Three parts, one job each:
//! - [`core`] decides, with no I/O and no clock: [`core::step`] says what one task needs
//!   next, [`core::book::Book`] keeps the node's task set (a full set replaces it, diffs
//!   patch it) and returns what to do as [`core::book::Decision`] values;
//! - [`persist`] keeps what must survive a restart in `<data-dir>/agent/tasks.json`
//!   (rewritten only when it changes, by a writer off the runtime thread: a stop or a
//!   removal waits until the set that records it is on disk, as it did when the write
//!   was inline);
//! - [`exec`] does it with the real runtime, image store and network (prepare, start,
//!   stop, remove) and fails with typed [`exec::ExecError`]s.
//!
//! This shell ties them together: it feeds the book the assignments, what the runtime
//! shows and what operations did, performs the decisions, holds the live publications,
//! and reports every status change. It lives outside the session: tasks keep running
//! while the manager is unreachable, and the latest status of each task waits for the
//! next session ([`Supervisor::next_reports`], [`Supervisor::resend_all`]).
//!
//! Long work (preparing, starting and stopping containers) runs as its own tokio task so
//! that one slow stop does not hold up the others. Exits are events: each running
//! container's monitor is watched through [`Runtime::exit_watch`] (a pidfd of its shim),
//! and its status is read once when that fires. The shell polls every
//! [`SupervisorConfig::poll`] only while something is not steady ([`Book::steady`]: a
//! task waits for its image or its next step, or a container could not be watched), and
//! otherwise every [`STEADY_POLL`], as a safety net: an idle board sleeps.
//!
//! On start the supervisor takes back the containers the runtime lists: a running one is
//! not started again, its ports are re-published; one that exited meanwhile is reported
//! with its code. Containers of no known task are removed only once a full set from the
//! manager has arrived.
//!
//! Health checks: a running task with a check gets a monitor ([`crate::health`]); its
//! health rides on the task's Running status, and a task that turns unhealthy is
//! stopped and reported Failed with `task: unhealthy container` ([`health_status`]).
//!
//! Not here: restart policies (the manager's orchestrator replaces failed tasks),
//! the overlays themselves (`net::plane` makes them; a task's container only joins its
//! networks when it is prepared), the ingress routing mesh (ingress-mode ports are published on the
//! task's node only, best effort).

pub mod core;
pub mod exec;
pub mod guest;
pub mod persist;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::dispatch::{Assignment, TaskReport, MAX_REPORTS};
use shoal_proto::health::Health;
use shoal_proto::{BoundedVec, TaskId, TaskState, TaskStatus};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use self::core::book::{Book, Decision, Observed, Outcome};
use self::core::Container;
use self::exec::{Exec, ExecError, Prepared};
use self::persist::{StateError, TaskFile, WriteFailed, Writer};
use crate::images::ImageStore;
use crate::net::{PortPublisher, Published, Sandboxes};
use crate::runtime::Runtime;

/// How often the shell looks at everything when nothing is pending and every running
/// container is watched: a safety net only (exits arrive as events), rare enough that an
/// idle agent barely wakes for it.
pub const STEADY_POLL: Duration = Duration::from_secs(30);

/// How the supervisor behaves.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The agent's data directory (`tasks.json` goes to `<data-dir>/agent/`).
    pub data_dir: PathBuf,
    /// How often container status is polled while something is not steady (see the
    /// module's documentation); exits of watched containers need no polling.
    pub poll: Duration,
    /// How long a task waits for a missing image before it is rejected.
    pub image_wait: Duration,
    /// The `/etc/resolv.conf` of containers on overlay networks (the board's resolver
    /// on the bridge gateway, see `net::dns::container_resolv_conf`); `None` leaves
    /// theirs as the image has it. Containers on the bridge only never get one.
    pub overlay_resolv_conf: Option<String>,
    /// The board's own `/etc/resolv.conf`, from which the other containers' are made
    /// (see [`guest`]).
    pub board_resolv_conf: String,
    /// What `{{.Node.…}}` placeholders stand for.
    pub node: guest::NodeFacts,
    /// Where health checks run from (`exec-in`); `None` runs none (the fakes' tests).
    pub health: Option<crate::exec::Paths>,
}

impl SupervisorConfig {
    /// The defaults: poll every 250 ms, wait up to two minutes for an image.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            poll: Duration::from_millis(250),
            image_wait: Duration::from_millis(core::IMAGE_WAIT_MS),
            overlay_resolv_conf: None,
            board_resolv_conf: String::new(),
            node: guest::NodeFacts::default(),
            health: None,
        }
    }
}

/// What can stop the supervisor from starting.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `tasks.json` can't be read or parsed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The runtime can't list its containers.
    #[error("cannot list containers: {0}")]
    Runtime(#[from] ExecError),
}

/// The handle on the running supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    disk: Arc<crate::disk::Watch>,
    secrets: Arc<crate::secrets::Held>,
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
        let held = Arc::new(crate::secrets::Held::default());
        let (commands, rx) = mpsc::channel(64);
        let (done_tx, done_rx) = mpsc::channel(256);
        let (health_tx, health_rx) = mpsc::channel(64);
        let (exits_tx, exits_rx) = mpsc::channel(64);
        let disk = Arc::new(crate::disk::Watch::new(&config.data_dir));
        disk.sample();
        // One statvfs: quick enough not to need a blocking thread. The heartbeat samples
        // too, and this only when it has not. Beside the heartbeat on its thread: a
        // beat's sample then wakes this in the same wakeup, not the main runtime.
        crate::beat_thread::spawn(crate::disk::Watch::keep_sampled(Arc::downgrade(&disk), crate::disk::SAMPLE_EVERY));
        let file = TaskFile::new(&config.data_dir);
        let (writer, write_failed) = Writer::start(file.path().to_owned());
        let mut worker = Worker {
            exec: Arc::new(
                Exec::new(runtime, network, publisher, images, disk.clone())
                    .with_resolv_conf(config.overlay_resolv_conf.clone())
                    .with_guest(config.node.clone(), &config.board_resolv_conf)
                    .with_volumes(crate::volumes::dir(&config.data_dir))
                    .with_secrets(held.clone(), crate::secrets::root_for(&config.data_dir)),
            ),
            image_wait_ms: config.image_wait.as_millis() as u64,
            file,
            writer,
            gated: Vec::new(),
            poll: config.poll,
            shared: shared.clone(),
            book: Book::new(),
            ports: BTreeMap::new(),
            done_tx,
            health_paths: config.health.clone(),
            monitors: BTreeMap::new(),
            unhealthy: std::collections::BTreeSet::new(),
            health_tx,
            watches: BTreeMap::new(),
            exits_tx,
        };
        worker.load()?;
        if let Err(e) = worker.exec.ensure_bridge().await {
            warn!(error = %e, "cannot set up the container bridge; tasks that need it will be rejected");
        }
        worker.adopt().await?;
        tokio::spawn(worker.run(rx, done_rx, health_rx, exits_rx, write_failed));
        Ok(Self { commands, shared, disk, secrets: held })
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

    /// The secrets and configs the manager sent for this board's tasks (memory only).
    pub fn secrets(&self) -> &Arc<crate::secrets::Held> {
        &self.secrets
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

/// A finished operation.
enum Done {
    Prepared { task: TaskId, result: Result<Prepared, ExecError> },
    Started { task: TaskId, result: Result<(), ExecError> },
    Stopped { task: TaskId, result: Result<i32, exec::StopFailure> },
    Removed { task: Option<TaskId> },
}

/// The shell: owns the book, performs its decisions.
struct Worker<N> {
    exec: Arc<Exec<N>>,
    image_wait_ms: u64,
    file: TaskFile,
    /// Writes `file` off the runtime thread.
    writer: Writer,
    /// Stops and removals decided since the last save, waiting to learn which set must
    /// be on disk before they go (see [`Worker::gate`]).
    gated: Vec<oneshot::Sender<u64>>,
    poll: Duration,
    shared: Arc<Shared>,
    book: Book,
    /// Each task's live publications (dropping them closes the ports).
    ports: BTreeMap<TaskId, Vec<Published>>,
    done_tx: mpsc::Sender<Done>,
    /// Where health checks run from, if they do.
    health_paths: Option<crate::exec::Paths>,
    /// The health monitor of each running task with a check, and its last health.
    monitors: BTreeMap<TaskId, (tokio::task::JoinHandle<()>, Health)>,
    /// Tasks stopped for being unhealthy, until their end is reported.
    unhealthy: std::collections::BTreeSet<TaskId>,
    health_tx: mpsc::Sender<(TaskId, Health)>,
    /// The exit watch of each running container that has one (see [`Worker::watch_exits`]).
    watches: BTreeMap<TaskId, tokio::task::JoinHandle<()>>,
    /// Where a watch says its container's monitor ended.
    exits_tx: mpsc::Sender<TaskId>,
}

impl<N: Sandboxes + 'static> Worker<N> {
    fn load(&mut self) -> Result<(), SupervisorError> {
        for t in self.file.load()? {
            self.set_current(&t.assignment.task_id, &t.status, false);
            self.book.restore(t.assignment, t.status, t.stop_requested);
        }
        Ok(())
    }

    /// Hands the set to the writer if it changed, and lets the stops and removals
    /// decided meanwhile go once the newest set handed over is on disk.
    fn save(&mut self) {
        if let Some(tasks) = self.book.to_remember() {
            if let Some(bytes) = self.file.encode(tasks) {
                self.writer.submit(bytes);
            }
        }
        let newest = self.writer.submitted();
        for go in self.gated.drain(..) {
            let _ = go.send(newest);
        }
    }

    /// A write of the task set failed: noted (a full disk) and written again with the
    /// next change or loop.
    fn unsaved(&mut self, e: StateError) {
        self.exec.disk.noticed(&e);
        warn!(error = %e, "cannot save the task set");
        self.book.unsaved();
        self.file.unsaved();
    }

    /// What an operation that must follow the task set onto disk waits for: a stop, so
    /// that after a crash its container's exit still reads as the stop the manager asked
    /// for (`stop_requested`), not a failure; a removal, so that a task is never found
    /// on disk after its container is gone. The set is the one [`Worker::save`] hands
    /// over at the end of this turn of the loop.
    fn gate(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (go, set) = oneshot::channel();
        self.gated.push(go);
        let durable = self.writer.durable();
        async move {
            // Unsent: the supervisor stopped; go on, as before.
            let newest = set.await.unwrap_or(0);
            Writer::written(durable, newest).await;
        }
    }

    /// Takes back what the runtime already runs, and removes the network sandboxes
    /// whose containers are gone.
    async fn adopt(&mut self) -> Result<(), SupervisorError> {
        let listed = self.exec.list().await?;
        let ids: Vec<String> = listed.iter().map(|(cid, _)| cid.clone()).collect();
        let stray = self.exec.remove_stray_sandboxes(&ids).await;
        if stray > 0 {
            info!(sandboxes = stray, "removed the network sandboxes of containers that are gone");
        }
        for (cid, container) in listed {
            let Some(task) = self.book.adopt(cid.clone(), container) else { continue };
            let Some(a) = self.book.task(&task).map(|t| t.assignment.clone()) else { continue };
            self.book.set_digest(&task, self.exec.digest(&a.spec.image));
            if container == Container::Running {
                match self.exec.republish(&a, &cid).await {
                    Some(Ok((ports, bound))) => {
                        self.ports.insert(task.clone(), ports);
                        self.book.ports_opened(&task, bound);
                    }
                    Some(Err(e)) => {
                        warn!(container = %cid, error = %e, "cannot publish the ports of a running container again")
                    }
                    None => {}
                }
                info!(task = %task, container = %cid, "took back a running container");
            }
        }
        if self.book.orphans() > 0 {
            info!(containers = self.book.orphans(), "containers of unknown tasks wait for the manager's task list");
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut done: mpsc::Receiver<Done>,
        mut health: mpsc::Receiver<(TaskId, Health)>,
        mut exits: mpsc::Receiver<TaskId>,
        mut write_failed: WriteFailed,
    ) {
        // Tasks taken back running (an agent restart) are checked again from the start.
        let running: Vec<(TaskId, TaskStatus)> = self
            .book
            .tasks()
            .filter(|t| t.status.state == TaskState::Running)
            .map(|t| (t.assignment.task_id.clone(), t.status.clone()))
            .collect();
        for (task, status) in running {
            self.perform(vec![Decision::Report { task, status }]);
        }
        self.watch_exits();
        // None: a first poll at once, as a restarted agent needs.
        let mut polled: Option<tokio::time::Instant> = None;
        loop {
            // Lazy: the clock only runs fast while something waits on it.
            let period = if self.steady() { STEADY_POLL } else { self.poll };
            let next_poll = polled.map_or_else(tokio::time::Instant::now, |at| at + period);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Assignments { full, more, upsert, remove }) => {
                        let decisions = self.book.assign(full, more, upsert, remove);
                        self.perform(decisions);
                    }
                    Some(Command::NewSession) => self.book.new_session(),
                    Some(Command::Shutdown(ack)) => {
                        // The newest set is on disk before the next agent reads it.
                        Writer::written(self.writer.durable(), self.writer.submitted()).await;
                        // Publications close; containers keep running.
                        drop(self.ports);
                        self.watches.values().for_each(|w| w.abort());
                        let _ = ack.send(());
                        return;
                    }
                    None => return,
                },
                Some(d) = done.recv() => self.finished(d),
                Some((task, h)) = health.recv() => self.health_changed(task, h),
                Some(e) = write_failed.recv() => {
                    // Written again with the next event, as before: not in a loop
                    // against a full disk.
                    self.unsaved(e);
                    continue;
                }
                Some(task) = exits.recv() => {
                    self.watches.remove(&task);
                    self.poll_one(&task).await;
                }
                _ = tokio::time::sleep_until(next_poll) => {
                    self.poll_containers().await;
                    polled = Some(tokio::time::Instant::now());
                }
            }
            let disk_full = self.exec.disk.pressure();
            let node = Observed { image_wait_ms: self.image_wait_ms, disk_full: disk_full.as_deref() };
            let exec = self.exec.clone();
            let decisions = self.book.reconcile(shoal_link::wall_ms(), node, |image| exec.image_present(image));
            self.perform(decisions);
            *lock(&self.shared.in_use) = self.book.images_in_use();
            self.save();
            self.watch_exits();
        }
    }

    /// Whether the shell may sleep: the book is steady and every running container's
    /// exit will arrive as an event.
    fn steady(&self) -> bool {
        self.book.steady()
            && self.book.to_poll().iter().all(|(task, _)| {
                self.watches.contains_key(task)
                    || self.book.task(task).is_none_or(|t| t.container != Container::Running)
            })
    }

    /// Watches the exit of every running container not yet watched, and ends the watches
    /// of tasks that are gone. A container the runtime can't watch is polled instead.
    fn watch_exits(&mut self) {
        let book = &self.book;
        self.watches.retain(|task, w| {
            let keep = book.task(task).is_some_and(|t| !t.removed) && !w.is_finished();
            if !keep {
                w.abort();
            }
            keep
        });
        for (task, cid) in self.book.to_poll() {
            let running = self.book.task(&task).is_some_and(|t| t.container == Container::Running);
            if !running || self.watches.contains_key(&task) {
                continue;
            }
            let Some(fd) = self.exec.runtime.exit_watch(&cid) else { continue };
            let tx = self.exits_tx.clone();
            let id = task.clone();
            let watch = tokio::spawn(async move {
                match readable(fd) {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                    }
                    // Not pollable here: reading the status once makes the shell poll it.
                    Err(e) => debug!(error = %e, "cannot wait on a container's exit watch"),
                }
                let _ = tx.send(id).await;
            });
            self.watches.insert(task, watch);
        }
    }

    /// Reads one task's container status, after its exit watch fired.
    async fn poll_one(&mut self, task: &TaskId) {
        let Some(ids) = self.book.to_poll().into_iter().find(|(t, _)| t == task) else { return };
        for (task, container) in self.exec.poll(vec![ids]).await {
            self.book.observed(&task, container);
        }
    }

    fn set_current(&self, id: &TaskId, status: &TaskStatus, report: bool) {
        lock(&self.shared.current).insert(id.clone(), status.clone());
        if report {
            lock(&self.shared.pending).insert(id.clone(), status.clone());
            self.shared.notify.notify_one();
        }
    }

    fn finished(&mut self, done: Done) {
        let (task, outcome) = match done {
            Done::Removed { task: None } => return,
            Done::Removed { task: Some(task) } => {
                self.ports.remove(&task);
                (task, Outcome::Removed)
            }
            Done::Prepared { task, result: Ok(p) } => {
                // A task being prepared is busy, so it is still in the book; should it
                // not be, its publications close here.
                if self.book.task(&task).is_some() {
                    self.ports.insert(task.clone(), p.ports);
                }
                (task, Outcome::Prepared { bound: p.bound, digest: p.digest })
            }
            Done::Started { task, result: Ok(()) } => (task, Outcome::Started),
            Done::Prepared { task, result: Err(e) } | Done::Started { task, result: Err(e) } => {
                info!(task = %task, reason = %e, "task rejected");
                (task, Outcome::Failed { reason: e.to_string() })
            }
            Done::Stopped { task, result: Ok(code) } => (task, Outcome::Stopped { code }),
            Done::Stopped { task, result: Err(f) } => {
                warn!(task = %task, error = %f.error, "cannot stop the task's container; trying again");
                (task, Outcome::StopFailed { seen: f.seen })
            }
        };
        let decisions = self.book.finished(shoal_link::wall_ms(), &task, outcome);
        self.perform(decisions);
    }

    /// Starts a running task's health monitor, or ends a stopped one's, and gives the
    /// status the health it carries.
    fn watch_health(&mut self, task: &TaskId, status: TaskStatus) -> TaskStatus {
        if status.state != TaskState::Running {
            if let Some((h, _)) = self.monitors.remove(task) {
                h.abort();
            }
            return health_status(status, self.unhealthy.remove(task));
        }
        if let Some((_, health)) = self.monitors.get(task) {
            return TaskStatus { health: Some(*health), ..status };
        }
        let (Some(paths), Some(t)) = (self.health_paths.clone(), self.book.task(task)) else { return status };
        let image = self.exec.images.config(&t.assignment.spec.image).ok();
        let image_check =
            crate::health::from_image(image.as_ref().and_then(|c| c.config.as_ref()?.healthcheck.as_ref()));
        let Some(check) = shoal_proto::health::resolve(t.assignment.spec.health.as_ref(), image_check.as_ref()) else {
            return status;
        };
        let monitor =
            crate::health::monitor(paths, t.container_id.clone(), task.clone(), check, self.health_tx.clone());
        self.monitors.insert(task.clone(), (tokio::spawn(monitor), Health::Starting));
        TaskStatus { health: Some(Health::Starting), ..status }
    }

    /// A monitor saw the health change: reported with the Running status; unhealthy stops
    /// the container (its end is then reported as the health's failure).
    fn health_changed(&mut self, task: TaskId, health: Health) {
        let Some((_, last)) = self.monitors.get_mut(&task) else { return };
        *last = health;
        let Some(t) = self.book.task(&task) else { return };
        if t.status.state != TaskState::Running {
            return;
        }
        let status = TaskStatus { health: Some(health), ..t.status.clone() };
        self.set_current(&task, &status, true);
        if health == Health::Unhealthy {
            warn!(task = %task, container = %t.container_id, "unhealthy: stopping the container");
            self.unhealthy.insert(task.clone());
            let (exec, cid) = (self.exec.clone(), t.container_id.clone());
            let grace = Duration::from_millis(t.assignment.spec.stop_grace_period_ms);
            // The book sees the container exit by its polling and reports the end.
            tokio::spawn(async move {
                if let Err(e) = exec.stop(cid.clone(), grace).await {
                    warn!(container = %cid, error = %e.error, "cannot stop an unhealthy container");
                }
            });
        }
    }

    async fn poll_containers(&mut self) {
        let ids = self.book.to_poll();
        if ids.is_empty() {
            return;
        }
        for (task, container) in self.exec.poll(ids).await {
            self.book.observed(&task, container);
        }
    }

    /// Does what the book decided: records and queues statuses, closes ports, and starts
    /// each operation as its own tokio task that reports back on `done_tx`.
    fn perform(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            let (exec, tx) = (self.exec.clone(), self.done_tx.clone());
            match d {
                Decision::Report { task, status } => {
                    let status = self.watch_health(&task, status);
                    debug!(task = %task, state = %status.state, "task status");
                    self.set_current(&task, &status, true);
                }
                Decision::Forget(task) => {
                    if let Some((h, _)) = self.monitors.remove(&task) {
                        h.abort();
                    }
                    self.unhealthy.remove(&task);
                    lock(&self.shared.current).remove(&task);
                    lock(&self.shared.pending).remove(&task);
                }
                Decision::ClosePorts(task) => {
                    self.ports.remove(&task);
                }
                Decision::Prepare { task, assignment, container_id, attachments } => {
                    tokio::spawn(async move {
                        let result = exec.prepare(&assignment, &container_id, &attachments).await;
                        let _ = tx.send(Done::Prepared { task, result }).await;
                    });
                }
                Decision::Start { task, container_id } => {
                    tokio::spawn(async move {
                        let result = exec.start(container_id).await;
                        let _ = tx.send(Done::Started { task, result }).await;
                    });
                }
                Decision::Stop { task, container_id, grace_ms, drain_ms } => {
                    let gate = self.gate();
                    tokio::spawn(async move {
                        gate.await;
                        // Other boards are dropping it as a backend meanwhile.
                        tokio::time::sleep(Duration::from_millis(drain_ms)).await;
                        let result = exec.stop(container_id, Duration::from_millis(grace_ms)).await;
                        let _ = tx.send(Done::Stopped { task, result }).await;
                    });
                }
                Decision::Remove { task, container_id, grace_ms } => {
                    if task.is_none() {
                        info!(container = %container_id, "removing the container of a task this node no longer has");
                    }
                    // Its ports close before the container goes, for the next task.
                    if let Some(t) = &task {
                        self.ports.remove(t);
                    }
                    let gate = self.gate();
                    tokio::spawn(async move {
                        gate.await;
                        let grace = Duration::from_millis(grace_ms);
                        if let Err(e) = exec.remove_container(container_id.clone(), grace).await {
                            warn!(container = %container_id, error = %e, "cannot remove a container");
                        }
                        if let Err(e) = exec.remove_sandbox(&container_id).await {
                            warn!(container = %container_id, error = %e, "cannot remove a network sandbox");
                        }
                        let _ = tx.send(Done::Removed { task }).await;
                    });
                }
            }
        }
    }
}

/// Registers an exit watch with tokio's reactor, to wait until it is readable.
#[allow(unsafe_code)]
fn readable(
    fd: std::os::fd::OwnedFd,
) -> Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>, tokio::io::unix::AsyncFdRegisterError<std::os::fd::OwnedFd>>
{
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor stays open and the same
    // until the `AsyncFd` is dropped, and `as_raw_fd` always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
}

/// The end of a task as reported: one stopped for being unhealthy has failed with
/// Docker's `task: unhealthy container`, whatever its exit code.
pub fn health_status(status: TaskStatus, was_unhealthy: bool) -> TaskStatus {
    let ended = matches!(status.state, TaskState::Failed | TaskState::Complete);
    if !was_unhealthy || !ended {
        return status;
    }
    TaskStatus {
        state: TaskState::Failed,
        err: Some(shoal_proto::Message::lossy("task: unhealthy container")),
        health: Some(Health::Unhealthy),
        ..status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake::FakeNetwork;
    use crate::net::BridgeConfig;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::NetworkMode;
    use std::collections::BTreeSet;

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
            networks: BoundedVec::new(),
            service_id: None,
        }
    }

    fn orphan_config() -> crate::runtime::ContainerConfig {
        crate::runtime::ContainerConfig {
            stop_signal: 15,
            id: "old.1.x".into(),
            hostname: "old".into(),
            addresses: vec![],
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![0],
            layers: vec![],
            network: NetworkMode::Host,
            memory_limit: None,
            cpu_millis: None,
            hosts: vec![],
            resolv_conf: None,
            seccomp: Default::default(),
            options: Default::default(),
            files: vec![],
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
            assert_eq!(TaskFile::new(&dir).load().unwrap().len(), 1);
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

    /// An agent stopped between a container's removal and its sandbox's leaves the
    /// sandbox: the next start removes it, and keeps those whose containers are there.
    #[test]
    fn sandboxes_of_containers_that_are_gone_are_removed_at_start() {
        let dir = std::env::temp_dir().join(format!("shoal-sup-stray-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let runtime = Arc::new(FakeRuntime::default());
            runtime.create(&orphan_config()).unwrap();
            let network = Arc::new(FakeNetwork::new(BridgeConfig::default()));
            network.create_sandbox("old.1.x").await.unwrap();
            network.create_sandbox("gone.1.x").await.unwrap();
            let sup = Supervisor::start(
                SupervisorConfig::new(dir.clone()),
                runtime.clone(),
                network.clone(),
                PortPublisher::new(),
                Arc::new(ImageStore::open(&dir.join("images")).unwrap()),
            )
            .await
            .unwrap();
            assert_eq!(network.sandbox_ids(), ["old.1.x"]);
            assert_eq!(runtime.list().unwrap(), ["old.1.x"]);
            sup.shutdown().await;
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unhealthy_task_fails_as_unhealthy_whatever_its_exit() {
        let mut killed = TaskStatus::new(TaskState::Failed, 1, "failed");
        killed.err = Some(shoal_proto::Message::lossy("task: non-zero exit (143)"));
        let s = health_status(killed.clone(), true);
        assert_eq!((s.state, s.err.as_deref()), (TaskState::Failed, Some("task: unhealthy container")));
        let s = health_status(TaskStatus::new(TaskState::Complete, 1, "finished"), true);
        assert_eq!(s.state, TaskState::Failed, "even when it exited 0 on SIGTERM");
        assert_eq!(health_status(killed.clone(), false), killed, "others end as they ended");
        let shutdown = TaskStatus::new(TaskState::Shutdown, 1, "shutdown");
        assert_eq!(health_status(shutdown.clone(), true), shutdown, "a stop the manager asked for stays one");
    }
}
