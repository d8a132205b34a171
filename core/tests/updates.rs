//! Rolling updates on a virtual clock: the manager's pure reconcile pass (the one the
//! server runs: orchestrator, updater, scheduler) with fake agents that run a task the moment it is assigned, stop it the
//! moment they are asked, and crash containers of chosen images a while after start.
//!
//! Every tick checks the invariants an operator relies on: stop-first never runs a new
//! task beside the one it replaces, no node binds a host port twice, and nothing waits
//! forever on a port.

use std::collections::HashMap;

use shoal_core::images::ImageRecord;
use shoal_core::pass::{Cluster, Event, Reconciler};
use shoal_core::placement::ClusterNode;
use shoal_core::plan::Now;
use shoal_core::services::{self, ServiceRecord};
use shoal_core::Millis;
use shoal_proto::dispatch::{TaskReport, UpdateState};
use shoal_proto::health::Health;
use shoal_proto::{
    text, Availability, BoundedVec, FailureAction, NodeId, NodeStatus, PortConfig, Resources, Role, ServiceId,
    ServiceMode, ServiceSpec, Task, TaskId, TaskState, TaskStatus, UpdateOrder,
};

const TICK: Millis = 100;
/// How long a never-healthy task runs before its agent stops it (interval × retries).
const UNHEALTHY_AFTER: Millis = 3_000;
const WALL0: u64 = 1_700_000_000_000;

fn node(n: u16) -> ClusterNode {
    let mut seed = [0x11; 16];
    seed[..2].copy_from_slice(&n.to_le_bytes());
    ClusterNode {
        id: NodeId::from_random(seed),
        hostname: text(&format!("node{n}")).unwrap(),
        role: Role::Worker,
        arch: text("x86_64").unwrap(),
        os: text("linux").unwrap(),
        labels: BoundedVec::new(),
        engine_labels: BoundedVec::new(),
        availability: Availability::Active,
        status: NodeStatus::Ready,
        resources: Resources { cpus: 4, memory_bytes: 4 << 30 },
        disk_full: false,
        devices: Default::default(),
    }
}

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

/// A cluster of fake boards running one service.
struct Lab {
    now: Millis,
    nodes: Vec<ClusterNode>,
    record: ServiceRecord,
    tasks: Vec<Task>,
    reconciler: Reconciler,
    ids: u32,
    images: Vec<ImageRecord>,
    /// Image → how long its containers run before exiting 1.
    crash_after: HashMap<&'static str, Millis>,
    /// Image → it has a health check passing this long after start (`None`: never; the
    /// agent then stops it as unhealthy after [`UNHEALTHY_AFTER`]).
    healthy_after: HashMap<&'static str, Option<Millis>>,
    /// When each task started running (virtual).
    started: HashMap<TaskId, Millis>,
    /// When each task was created (virtual), to catch tasks pending for ever.
    created: HashMap<TaskId, Millis>,
    /// Slots (or nodes) each update created a task for, in order.
    log: Vec<String>,
    stop_first: bool,
    /// Whether each tick checks the invariants (quadratic: off for fleet-sized runs).
    checks: bool,
    /// What the agents reported since the last pass, per node.
    reports: Vec<(NodeId, Vec<TaskReport>)>,
    /// When the pass last asked to be woken, as of which tick.
    wake_at: Option<(Millis, Millis)>,
}

impl Lab {
    fn new(nodes: u16, replicas: u32, configure: impl FnOnce(&mut ServiceSpec)) -> Self {
        let mut spec = ServiceSpec::new(text("appserver").unwrap(), text("demo/app:1.0").unwrap());
        spec.mode = ServiceMode::Replicated { replicas };
        configure(&mut spec);
        let images = ["demo/app:1.0", "demo/app:2.0", "demo/app:3.0"].map(image).to_vec();
        let record = services::create(&[], spec, &images, ServiceId::from_random([7; 16]), WALL0).unwrap();
        let mut lab = Self {
            now: 0,
            nodes: (1..=nodes).map(node).collect(),
            record,
            tasks: Vec::new(),
            reconciler: Reconciler::default(),
            ids: 0,
            images,
            crash_after: HashMap::from([("demo/app:2.0", 1_000)]),
            healthy_after: HashMap::new(),
            started: HashMap::new(),
            created: HashMap::new(),
            log: Vec::new(),
            stop_first: true,
            checks: true,
            wake_at: None,
            reports: Vec::new(),
        };
        lab.checks = replicas <= 100;
        lab.run_until("all running", 60_000, |l| l.running("demo/app:1.0") == replicas as usize);
        lab
    }

    fn at(&self) -> Now {
        Now { mono: self.now, wall_ms: WALL0 + self.now }
    }

    /// The manager's pass: the same function `server::reconcile` calls.
    fn reconcile(&mut self) {
        let now = self.at();
        let mut ids = self.ids;
        let mut new_id = || {
            ids += 1;
            let mut seed = [0xCD; 16];
            seed[..4].copy_from_slice(&ids.to_le_bytes());
            TaskId::from_random(seed)
        };
        let records = [self.record.clone()];
        let names = HashMap::new();
        let cluster = Cluster {
            records: &records,
            nodes: &self.nodes,
            images: &self.images,
            names: &names,
            networks: &[],
            boards: &[],
        };
        let (tasks, reports) = (std::mem::take(&mut self.tasks), std::mem::take(&mut self.reports));
        let outcome = self.reconciler.pass(now, cluster, tasks, reports, &mut new_id);
        for event in outcome.events {
            if let Event::Update { message, .. } = event {
                self.log.push(message);
            }
        }
        self.wake_at = outcome.wake_at.map(|w| (now.mono, w));
        if let Some(r) = outcome.records.into_iter().next() {
            self.record = r;
        }
        self.tasks = outcome.tasks;
        self.ids = ids;
        for t in &self.tasks {
            if !self.created.contains_key(&t.id) {
                self.created.insert(t.id.clone(), self.now);
            }
        }
    }

    /// Every live board moves each of its tasks to where the manager wants it, and
    /// reports it for the next pass.
    fn agents(&mut self) {
        let wall = WALL0 + self.now;
        let down: Vec<NodeId> =
            self.nodes.iter().filter(|n| n.status == NodeStatus::Down).map(|n| n.id.clone()).collect();
        let mut reports: std::collections::BTreeMap<NodeId, Vec<TaskReport>> = Default::default();
        for t in self.tasks.iter() {
            let Some(node) = &t.node_id else { continue };
            if down.contains(node) || t.status.state < TaskState::Assigned || t.status.state.is_terminal() {
                continue;
            }
            let next = if t.desired_state > TaskState::Running {
                TaskStatus::new(TaskState::Shutdown, wall, "shutdown")
            } else if t.status.state < TaskState::Running {
                self.started.insert(t.id.clone(), self.now);
                let mut s = TaskStatus::new(TaskState::Running, wall, "running");
                if self.healthy_after.contains_key(t.spec.image.as_str()) {
                    s.health = Some(Health::Starting);
                }
                s
            } else if let Some(&after) = self.healthy_after.get(t.spec.image.as_str()) {
                let up_for = self.now - self.started[&t.id];
                match after {
                    Some(after) if up_for >= after && t.status.health != Some(Health::Healthy) => {
                        TaskStatus { health: Some(Health::Healthy), ..t.status.clone() }
                    }
                    None if up_for >= UNHEALTHY_AFTER => {
                        let mut s = TaskStatus::new(TaskState::Failed, wall, "unhealthy");
                        s.err = Some(shoal_proto::Message::lossy("task: unhealthy container"));
                        s.health = Some(Health::Unhealthy);
                        s
                    }
                    _ => continue,
                }
            } else {
                match self.crash_after.get(t.spec.image.as_str()) {
                    Some(&after) if self.now >= self.started[&t.id] + after => {
                        let mut s = TaskStatus::new(TaskState::Failed, wall, "exited");
                        s.exit_code = Some(1);
                        s
                    }
                    _ => continue,
                }
            };
            reports.entry(node.clone()).or_default().push(TaskReport { task_id: t.id.clone(), status: next });
        }
        self.reports.extend(reports);
    }

    fn tick(&mut self) {
        self.now += TICK;
        self.agents();
        self.reconcile();
        self.check_invariants();
    }

    fn check_invariants(&self) {
        if !self.checks {
            return;
        }
        // Stop-first: no task of the current spec is placed while an older one of its slot may run.
        if self.stop_first {
            let spec = self.record.service.spec.task_spec();
            let may_run =
                |t: &Task| t.status.state >= TaskState::Assigned && !t.status.state.is_terminal() && !self.is_down(t);
            for t in self.tasks.iter().filter(|t| t.spec == spec && may_run(t)) {
                let same_place = |o: &&Task| o.slot == t.slot && (o.slot != 0 || o.node_id == t.node_id);
                let beside = self.tasks.iter().filter(same_place).any(|o| o.spec != spec && may_run(o));
                assert!(!beside, "stop-first ran slot {} twice", t.slot);
            }
        }
        // A host port is bound once per node.
        let mut bound: HashMap<(NodeId, u16), &Task> = HashMap::new();
        for t in self.tasks.iter().filter(|t| t.status.state >= TaskState::Assigned && !t.status.state.is_terminal()) {
            for p in t.spec.ports.iter().filter(|p| p.mode == shoal_proto::PublishMode::Host) {
                let Some(port) = p.published else { continue };
                let key = (t.node_id.clone().unwrap(), port);
                if self.is_down(t) {
                    continue;
                }
                assert!(bound.insert(key, t).is_none(), "port {port} bound twice on one node");
            }
        }
        // Nothing waits for a node for more than a few seconds.
        for t in self.tasks.iter().filter(|t| t.status.state <= TaskState::Pending && t.is_desired_running()) {
            let age = self.now - self.created[&t.id];
            assert!(age < 10_000, "task of slot {} pending for {age} ms: {}", t.slot, t.status.message);
        }
    }

    fn is_down(&self, t: &Task) -> bool {
        t.node_id.as_ref().is_some_and(|n| self.nodes.iter().any(|x| &x.id == n && x.status == NodeStatus::Down))
    }

    fn run_until(&mut self, what: &str, limit: Millis, done: impl Fn(&Lab) -> bool) -> Millis {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start < limit,
                "{what}: not after {limit} ms; state {:?}; log {:?}",
                self.state(),
                self.log
            );
            self.tick();
        }
        self.now - start
    }

    fn update(&mut self, change: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.record.service.spec.clone();
        change(&mut spec);
        let version = self.record.service.spec_version;
        self.record = services::update(&self.record, spec, version, &self.images, WALL0 + self.now).unwrap();
    }

    fn rollback(&mut self) {
        self.record = services::rollback(&self.record, WALL0 + self.now).unwrap();
    }

    fn state(&self) -> Option<UpdateState> {
        self.record.update.as_ref().map(|u| u.status.state)
    }

    fn message(&self) -> String {
        self.record.update.as_ref().map(|u| u.status.message.to_string()).unwrap_or_default()
    }

    /// Live tasks of `image` that run.
    fn running(&self, image: &str) -> usize {
        self.tasks
            .iter()
            .filter(|t| {
                t.is_desired_running() && t.status.state == TaskState::Running && t.spec.image.as_str() == image
            })
            .count()
    }

    /// Live tasks of `image`, running or on their way.
    fn live(&self, image: &str) -> usize {
        self.tasks.iter().filter(|t| t.is_desired_running() && t.spec.image.as_str() == image).count()
    }

    fn to(image: &'static str) -> impl FnOnce(&mut ServiceSpec) {
        move |s| s.image = text(image).unwrap()
    }

    /// Ticks until the update completes (within `limit` virtual ms); returns how long it
    /// took and the most tasks of `image` that were on their way at once.
    fn roll_to_completion(&mut self, image: &str, limit: Millis) -> (Millis, usize) {
        let (start, mut most_in_flight) = (self.now, 0);
        while self.state() != Some(UpdateState::Completed) {
            self.tick();
            let in_flight = self
                .tasks
                .iter()
                .filter(|t| t.spec.image.as_str() == image && t.is_desired_running())
                .filter(|t| t.status.state < TaskState::Running)
                .count();
            most_in_flight = most_in_flight.max(in_flight);
            assert!(self.now - start < limit, "not completed after {limit} ms: {:?}", self.log);
        }
        (self.now - start, most_in_flight)
    }

    fn settled(&self) -> bool {
        self.state().is_some_and(|s| !s.is_active())
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Whatever the pace in a stored update (the wire and the store are not trusted, so
    /// not only what validation lets through) and however long the manager has run, the
    /// updater neither overflows nor asks to be woken in the past, which would spin the
    /// reconcile loop.
    #[test]
    fn the_updater_never_overflows_nor_wakes_in_the_past(
        delay in proptest::prelude::any::<u64>(),
        monitor in proptest::prelude::any::<u64>(),
        parallelism in 0u32..3,
        replicas in 1u32..4,
        uptime in 0u64..u64::MAX / 2,
    ) {
        let mut lab = Lab::new(2, replicas, |_| {});
        lab.now = lab.now.max(uptime);
        lab.update(Lab::to("demo/app:3.0"));
        let p = lab.record.update.as_mut().unwrap();
        p.config.delay_ms = delay;
        p.config.monitor_ms = monitor;
        p.config.parallelism = parallelism;
        for _ in 0..40 {
            lab.tick();
            if let Some((at, wake)) = lab.wake_at {
                proptest::prop_assert!(wake > at, "woken at {wake}, asked at {at}");
            }
        }
    }
}

#[test]
fn stop_first_replaces_one_slot_at_a_time_and_completes_after_the_monitor_period() {
    let mut lab = Lab::new(3, 3, |_| {});
    lab.update(Lab::to("demo/app:3.0"));
    let (took, most_in_flight) = lab.roll_to_completion("demo/app:3.0", 30_000);
    assert_eq!(most_in_flight, 1, "parallelism 1");
    assert_eq!(lab.running("demo/app:3.0"), 3);
    assert_eq!(lab.live("demo/app:1.0"), 0);
    assert!(took >= 5_000, "the last task is watched for the 5 s monitor period ({took} ms)");
    assert!(took < 7_000, "{took} ms");
    assert_eq!(lab.message(), "update completed");
    let done = lab.record.update.as_ref().unwrap().status.completed_at_ms.unwrap();
    assert_eq!(done, WALL0 + lab.now);
}

#[test]
fn parallelism_and_delay_pace_the_rollout() {
    let mut lab = Lab::new(3, 6, |s| {
        s.update_config.parallelism = 2;
        s.update_config.delay_ms = 10_000;
        s.update_config.monitor_ms = 0;
    });
    lab.update(Lab::to("demo/app:3.0"));
    let mut first_seen: Vec<Millis> = Vec::new();
    let before = lab.now;
    while lab.state() != Some(UpdateState::Completed) {
        lab.tick();
        let n = lab.live("demo/app:3.0");
        while first_seen.len() < n {
            first_seen.push(lab.now - before);
        }
        assert!(lab.now - before < 60_000, "{:?}", lab.log);
    }
    // Two at once, then ten seconds after they came up, the next two, and so on.
    assert_eq!(first_seen.len(), 6);
    assert_eq!(first_seen[0], first_seen[1]);
    assert!(first_seen[2] >= first_seen[0] + 10_000 && first_seen[2] < first_seen[0] + 10_500, "{first_seen:?}");
    assert!(first_seen[4] >= first_seen[2] + 10_000, "{first_seen:?}");
}

#[test]
fn a_failing_image_pauses_the_update_with_swarms_message_and_rollback_restores_every_replica() {
    let mut lab = Lab::new(3, 3, |_| {});
    // It dies at once here, so the update has not reached every slot when it pauses.
    lab.crash_after.insert("demo/app:2.0", TICK);
    lab.update(|s| {
        s.image = text("demo/app:2.0").unwrap();
        s.update_config.failure_action = FailureAction::Pause;
    });
    lab.run_until("paused", 10_000, |l| l.state() == Some(UpdateState::Paused));
    let failed = lab.record.update.as_ref().unwrap().failed.clone();
    assert_eq!(failed.len(), 1);
    assert_eq!(lab.message(), format!("update paused due to failure or early termination of task {}", failed[0]));
    // Paused: nothing more is replaced.
    let old_left = lab.live("demo/app:1.0");
    assert!(old_left >= 1, "the update stopped before the last slot");
    for _ in 0..100 {
        lab.tick();
    }
    assert_eq!(lab.live("demo/app:1.0"), old_left);
    assert_eq!(lab.state(), Some(UpdateState::Paused));

    lab.rollback();
    assert_eq!(lab.message(), "manually requested rollback");
    lab.run_until("rolled back", 30_000, |l| l.state() == Some(UpdateState::RollbackCompleted));
    assert_eq!(lab.running("demo/app:1.0"), 3);
    assert_eq!(lab.live("demo/app:2.0"), 0);
    assert_eq!(lab.message(), "rollback completed");

    // Rollback of the rollback goes forward again (to the failing 2.0).
    lab.rollback();
    assert_eq!(lab.record.service.spec.image.as_str(), "demo/app:2.0");
    assert_eq!(lab.state(), Some(UpdateState::RollbackStarted));

    // And a good image completes.
    lab.update(Lab::to("demo/app:3.0"));
    lab.run_until("3.0 completed", 30_000, |l| l.state() == Some(UpdateState::Completed));
    assert_eq!(lab.running("demo/app:3.0"), 3);
}

#[test]
fn failure_action_rollback_rolls_back_by_itself_and_forgets_the_failed_spec() {
    let mut lab = Lab::new(3, 3, |_| {});
    lab.update(|s| {
        s.image = text("demo/app:2.0").unwrap();
        s.update_config.failure_action = FailureAction::Rollback;
        s.rollback_config.parallelism = 0;
        s.rollback_config.monitor_ms = 1_000;
    });
    lab.run_until("rolled back", 30_000, |l| l.state() == Some(UpdateState::RollbackCompleted));
    assert!(
        lab.log.iter().any(|e| e.starts_with("update rolled back due to failure or early termination of task")),
        "{:?}",
        lab.log
    );
    assert_eq!(lab.record.service.spec.image.as_str(), "demo/app:1.0");
    assert!(lab.record.previous.is_none(), "an automatic rollback leaves nothing to roll back to");
    assert_eq!(lab.running("demo/app:1.0"), 3);
    assert_eq!(lab.live("demo/app:2.0"), 0);
}

#[test]
fn continue_carries_on_through_failures_and_completes() {
    let mut lab = Lab::new(3, 3, |_| {});
    lab.update(|s| {
        s.image = text("demo/app:2.0").unwrap();
        s.update_config.failure_action = FailureAction::Continue;
    });
    lab.run_until("completed", 60_000, |l| l.state() == Some(UpdateState::Completed));
    assert_eq!(lab.live("demo/app:1.0"), 0, "every slot was replaced");
    assert_eq!(lab.record.update.as_ref().unwrap().failed.len(), 3, "one failure per slot");
}

#[test]
fn the_max_failure_ratio_tolerates_that_share_of_slots() {
    // 4 slots, ratio 0.5: two failing slots are tolerated, the third pauses.
    let mut lab = Lab::new(4, 4, |s| {
        s.update_config.max_failure_ratio_permille = 500;
        s.update_config.parallelism = 1;
    });
    lab.update(Lab::to("demo/app:2.0"));
    lab.run_until("paused", 60_000, |l| l.state() == Some(UpdateState::Paused));
    assert_eq!(lab.record.update.as_ref().unwrap().failed.len(), 3);
    assert_eq!(lab.record.update.as_ref().unwrap().total, Some(4));
}

#[test]
fn a_task_failing_after_the_monitor_period_is_not_an_update_failure() {
    let mut lab = Lab::new(3, 3, |s| s.update_config.monitor_ms = 500);
    // 2.0 runs for a second, longer than the monitor period.
    lab.update(Lab::to("demo/app:2.0"));
    lab.run_until("completed", 60_000, |l| l.settled());
    assert_eq!(lab.state(), Some(UpdateState::Completed), "{}", lab.message());
    assert!(lab.record.update.as_ref().unwrap().failed.is_empty());

    // With a monitor longer than its life, the same image pauses.
    let mut lab = Lab::new(3, 3, |s| s.update_config.monitor_ms = 1_500);
    lab.update(|s| {
        s.image = text("demo/app:2.0").unwrap();
        s.update_config.monitor_ms = 1_500;
    });
    lab.run_until("paused", 60_000, |l| l.settled());
    assert_eq!(lab.state(), Some(UpdateState::Paused));
}

#[test]
fn start_first_runs_the_new_task_before_stopping_the_old_one() {
    let mut lab = Lab::new(3, 3, |s| s.update_config.order = UpdateOrder::StartFirst);
    lab.stop_first = false;
    lab.update(|s| {
        s.image = text("demo/app:3.0").unwrap();
        s.update_config.order = UpdateOrder::StartFirst;
    });
    let mut overlap = false;
    while lab.state() != Some(UpdateState::Completed) {
        lab.tick();
        // Never fewer than 3 running tasks: the old one goes only once the new one runs.
        let running = lab.tasks.iter().filter(|t| t.status.state == TaskState::Running).count();
        assert!(running >= 3, "a slot went dark during a start-first update");
        overlap |= running > 3;
        assert!(lab.now < 60_000);
    }
    assert!(overlap, "old and new ran side by side");
    assert_eq!(lab.running("demo/app:3.0"), 3);
}

fn host_port(s: &mut ServiceSpec) {
    s.ports = vec![PortConfig::parse("mode=host,published=8000,target=8000").unwrap()].try_into().unwrap();
    s.update_config.order = UpdateOrder::StartFirst;
}

#[test]
fn start_first_with_a_host_port_on_every_node_falls_back_to_stop_first_instead_of_deadlocking() {
    // moby/moby#36934: 3 replicas on 3 nodes, host port 8000 everywhere.
    let mut lab = Lab::new(3, 3, host_port);
    lab.stop_first = false;
    lab.update(|s| {
        host_port(s);
        s.image = text("demo/app:3.0").unwrap();
    });
    lab.run_until("completed", 30_000, |l| l.state() == Some(UpdateState::Completed));
    assert_eq!(lab.running("demo/app:3.0"), 3);
    let fell_back: Vec<&String> =
        lab.log.iter().filter(|e| e.contains("start-first fell back to stop-first")).collect();
    assert_eq!(fell_back.len(), 3, "{:?}", lab.log);
    assert!(fell_back[0].ends_with("no suitable node (host-mode port 8000/tcp in use on 3 nodes)"), "{}", fell_back[0]);
}

#[test]
fn start_first_with_a_host_port_uses_a_node_where_the_port_is_free() {
    // 2 replicas on 3 nodes: the third node's port is free, so start-first can go there.
    let mut lab = Lab::new(3, 2, host_port);
    lab.stop_first = false;
    lab.update(|s| {
        host_port(s);
        s.image = text("demo/app:3.0").unwrap();
    });
    let mut overlap = false;
    while lab.state() != Some(UpdateState::Completed) {
        lab.tick();
        overlap |= lab.tasks.iter().filter(|t| t.status.state == TaskState::Running).count() > 2;
        assert!(lab.now < 30_000, "{:?}", lab.log);
    }
    assert!(overlap, "the first slot started first on the free node");
    assert!(!lab.log.iter().any(|e| e.contains("fell back")) || lab.running("demo/app:3.0") == 2);
    assert_eq!(lab.running("demo/app:3.0"), 2);
}

#[test]
fn a_manager_restart_mid_update_resumes_without_replacing_a_slot_twice() {
    let mut lab = Lab::new(3, 6, |s| s.update_config.parallelism = 2);
    lab.update(Lab::to("demo/app:3.0"));
    lab.run_until("half way", 30_000, |l| l.running("demo/app:3.0") >= 3);
    // The manager restarts: its memory is gone, the store (record, tasks) remains.
    lab.reconciler = Reconciler::default();
    lab.run_until("completed", 30_000, |l| l.state() == Some(UpdateState::Completed));
    let created: usize = lab.tasks.iter().filter(|t| t.spec.image.as_str() == "demo/app:3.0").count();
    assert_eq!(created, 6, "one new task per slot, none twice");
}

#[test]
fn a_node_dying_mid_update_does_not_stall_it() {
    let mut lab = Lab::new(3, 3, |s| s.update_config.delay_ms = 2_000);
    lab.update(Lab::to("demo/app:3.0"));
    lab.run_until("first slot", 10_000, |l| l.running("demo/app:3.0") == 1);
    // A board loses power with a 1.0 task that the update has not reached yet.
    let victim = lab
        .tasks
        .iter()
        .find(|t| t.is_desired_running() && t.spec.image.as_str() == "demo/app:1.0")
        .and_then(|t| t.node_id.clone())
        .unwrap();
    lab.nodes.iter_mut().find(|n| n.id == victim).unwrap().status = NodeStatus::Down;
    lab.run_until("completed", 30_000, |l| l.state() == Some(UpdateState::Completed));
    assert_eq!(lab.running("demo/app:3.0"), 3);
    assert!(lab.tasks.iter().filter(|t| t.is_desired_running()).all(|t| t.node_id.as_ref() != Some(&victim)));
}

#[test]
fn global_services_update_in_place_node_by_node() {
    let mut lab = Lab::new(3, 0, |s| {
        s.mode = ServiceMode::Global;
        host_port(s);
        s.update_config.order = UpdateOrder::StopFirst;
    });
    lab.run_until("global running", 10_000, |l| l.running("demo/app:1.0") == 3);
    let nodes_before: Vec<Option<NodeId>> = {
        let mut v: Vec<_> = lab.tasks.iter().filter(|t| t.is_desired_running()).map(|t| t.node_id.clone()).collect();
        v.sort();
        v
    };
    lab.update(Lab::to("demo/app:3.0"));
    lab.run_until("completed", 30_000, |l| l.state() == Some(UpdateState::Completed));
    let mut nodes_after: Vec<_> =
        lab.tasks.iter().filter(|t| t.is_desired_running()).map(|t| t.node_id.clone()).collect();
    nodes_after.sort();
    assert_eq!(nodes_before, nodes_after);
    assert_eq!(lab.running("demo/app:3.0"), 3);
}

#[test]
fn scaling_alone_starts_no_update() {
    let mut lab = Lab::new(3, 3, |_| {});
    lab.update(|s| s.mode = ServiceMode::Replicated { replicas: 5 });
    assert_eq!(lab.state(), None);
    lab.run_until("scaled", 10_000, |l| l.running("demo/app:1.0") == 5);
}

#[test]
// It prints how long it took on the wall clock; the core it drives reads none.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn a_fleet_rolls_a_hundred_tasks_at_a_time() {
    // A tenth of the fleet in debug builds (the test command), the whole in release.
    let (boards, replicas) = if cfg!(debug_assertions) { (100, 1_000) } else { (1_000, 10_000) };
    let started = std::time::Instant::now();
    let mut lab = Lab::new(boards, replicas, |s| s.update_config.parallelism = 100);
    let placed = started.elapsed();
    lab.update(|s| {
        s.image = text("demo/app:3.0").unwrap();
        s.update_config.monitor_ms = 1_000;
    });
    let wall = std::time::Instant::now();
    let (took, most_in_flight) = lab.roll_to_completion("demo/app:3.0", 600_000);
    assert_eq!(lab.running("demo/app:3.0"), replicas as usize);
    assert_eq!(most_in_flight, 100, "parallelism 100");
    let ticks = took / TICK;
    eprintln!(
        "{replicas} tasks on {boards} boards: placed in {placed:?}; rolled 100 at a time in {ticks} manager \
         passes, {:?} of wall time ({:?} per pass, with the fake boards and scheduler)",
        wall.elapsed(),
        wall.elapsed() / ticks as u32
    );
}

#[test]
fn a_task_counts_as_up_only_once_healthy() {
    let mut lab = Lab::new(3, 3, |_| {});
    lab.healthy_after.insert("demo/app:3.0", Some(2_000));
    lab.update(|s| {
        s.image = text("demo/app:3.0").unwrap();
        s.update_config.parallelism = 1;
        s.update_config.monitor_ms = 500;
    });
    // One slot at a time, each waiting for its new task to pass its check: at least
    // three times the time to healthy, where running alone would take a few ticks each.
    let (took, most) = lab.roll_to_completion("demo/app:3.0", 60_000);
    assert!(took >= 3 * 2_000, "completed after {took} ms");
    assert_eq!(most, 1);
    assert_eq!(lab.running("demo/app:3.0"), 3);
}

#[test]
fn a_new_task_that_never_becomes_healthy_pauses_the_update_or_rolls_it_back() {
    let mut lab = Lab::new(3, 3, |_| {});
    lab.healthy_after.insert("demo/app:3.0", None);
    lab.update(|s| {
        s.image = text("demo/app:3.0").unwrap();
        s.update_config.failure_action = FailureAction::Pause;
    });
    lab.run_until("paused", 20_000, |l| l.state() == Some(UpdateState::Paused));
    assert!(lab.message().starts_with("update paused due to failure"), "{}", lab.message());
    assert!(lab.live("demo/app:1.0") >= 2, "the other slots keep the old tasks");

    let mut lab = Lab::new(3, 3, |_| {});
    lab.healthy_after.insert("demo/app:3.0", None);
    lab.update(|s| {
        s.image = text("demo/app:3.0").unwrap();
        s.update_config.failure_action = FailureAction::Rollback;
        s.rollback_config.monitor_ms = 500;
    });
    lab.run_until("rolled back", 30_000, |l| l.state() == Some(UpdateState::RollbackCompleted));
    assert_eq!(lab.record.service.spec.image.as_str(), "demo/app:1.0");
    assert_eq!(lab.running("demo/app:1.0"), 3);
}
