//! Deterministic whole-cluster simulation: the manager's pure core (membership, and the
//! reconcile pass the server runs: orchestrator, updater, scheduler, dispatcher) driven
//! together with N fake agents on a virtual clock.
//!
//! No sockets, no threads, no real time: each step advances the clock and delivers the
//! live agents' heartbeats; like the server shell, the manager reconciles and schedules
//! only when something happened (a node changed status, an agent reported, the operator
//! changed something, or the orchestrator's `wake_at` came), and every agent with work
//! moves each of its tasks one state forward (Assigned → Accepted → Preparing → Starting
//! → Running, or to Shutdown when the manager wants it stopped). Scenarios follow the Swarm lab's tasks 3,
//! 5 and 6 at fleet scale. Each prints how long it took on the wall clock.

// Each scenario prints how long it took on the wall clock; the core it drives reads none.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use shoal_core::images::ImageRecord;
use shoal_core::membership::{LivenessConfig, Membership};
use shoal_core::pass::{Cluster, Reconciler};
use shoal_core::placement::ClusterNode;
use shoal_core::plan::Now;
use shoal_core::services::ServiceRecord;
use shoal_core::Millis;
use shoal_proto::{
    apply_status, text, Availability, BoundedVec, NodeId, NodeStatus, PortConfig, Resources, RestartCondition,
    RestartPolicy, Role, Service, ServiceId, ServiceMode, ServiceSpec, Task, TaskId, TaskState, TaskStatus,
};

/// Virtual time per step: a fifth of the heartbeat period.
const STEP: Millis = 100;

fn seeded(tag: u8, n: u32) -> [u8; 16] {
    let mut seed = [tag; 16];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    seed
}

/// The fake agent of one node: its behaviour lives in [`Sim::step`]; a dead one (power
/// lost) neither heartbeats nor reports.
struct Agent {
    alive: bool,
}

struct Sim {
    now: Millis,
    membership: Membership,
    reconciler: Reconciler,
    nodes: Vec<ClusterNode>,
    agents: HashMap<NodeId, Agent>,
    services: Vec<Service>,
    tasks: Vec<Task>,
    /// Tasks to exit at their agent's next step, with their exit code.
    exits: HashMap<TaskId, i32>,
    next_id: u32,
    /// Something happened that the manager has not reconciled yet.
    dirty: bool,
    /// When the pass asked to be called again.
    wake_at: Option<Millis>,
    /// The agents have tasks to move (something changed for them last step).
    agents_busy: bool,
}

impl Sim {
    fn new(node_count: u32) -> Self {
        let mut membership = Membership::new(LivenessConfig::default());
        let nodes: Vec<ClusterNode> = (0..node_count)
            .map(|i| ClusterNode {
                id: NodeId::from_random(seeded(1, i)),
                hostname: text(&format!("board{i}")).unwrap(),
                role: Role::Worker,
                arch: text("aarch64").unwrap(),
                os: text("linux").unwrap(),
                labels: BoundedVec::new(),
                engine_labels: BoundedVec::new(),
                availability: Availability::Active,
                status: NodeStatus::Unknown,
                resources: Resources { cpus: 4, memory_bytes: 4 << 30 },
                disk_full: false,
                devices: Default::default(),
            })
            .collect();
        for n in &nodes {
            membership.track(0, n.id.clone());
        }
        let agents = nodes.iter().map(|n| (n.id.clone(), Agent { alive: true })).collect();
        Self {
            now: 0,
            membership,
            reconciler: Reconciler::default(),
            nodes,
            agents,
            services: Vec::new(),
            tasks: Vec::new(),
            exits: HashMap::new(),
            next_id: 0,
            dirty: true,
            wake_at: None,
            agents_busy: false,
        }
    }

    fn add_service(&mut self, name: &str, replicas: u32, f: impl FnOnce(&mut ServiceSpec)) -> ServiceId {
        let mut spec = ServiceSpec::new(text(name).unwrap(), text("demo/app:1.0").unwrap());
        spec.mode = ServiceMode::Replicated { replicas };
        f(&mut spec);
        spec.validate().unwrap();
        let id = ServiceId::from_random(seeded(2, self.services.len() as u32));
        self.services.push(Service {
            id: id.clone(),
            spec,
            spec_version: 1,
            created_at_ms: 0,
            virtual_ips: Default::default(),
        });
        self.dirty = true;
        id
    }

    /// `node update --availability` on a range of nodes.
    fn set_availability(&mut self, range: std::ops::Range<usize>, availability: Availability) {
        for n in &mut self.nodes[range] {
            n.availability = availability;
        }
        self.dirty = true;
    }

    /// Makes a task exit with `code` at its agent's next step.
    fn exit(&mut self, task: TaskId, code: i32) {
        self.exits.insert(task, code);
        self.agents_busy = true;
    }

    /// One step of the whole cluster; returns whether anything changed.
    fn step(&mut self) -> bool {
        self.now += STEP;
        let now = self.now;
        let mut changed = false;
        for n in &self.nodes {
            if self.agents[&n.id].alive && self.membership.heard(now, &n.id).is_some() {
                changed = true;
            }
        }
        if !self.membership.tick(now).is_empty() {
            changed = true;
        }
        if changed {
            for n in &mut self.nodes {
                n.status = self.membership.status(now, &n.id).0;
            }
            self.dirty = true;
        }

        if self.dirty || self.wake_at.is_some_and(|w| w <= now) {
            self.dirty = false;
            self.manager(now);
            changed = true;
        }
        if self.agents_busy {
            self.agents_busy = self.agents(now);
            // The agents reported: the manager hears about it next step.
            self.dirty |= self.agents_busy;
            changed |= self.agents_busy;
        }
        changed
    }

    /// The manager's turn: one reconcile pass, as the server runs it. The agents' steps
    /// reach the task list directly (a report delivered at once), so no reports go in.
    fn manager(&mut self, now: Millis) {
        let next_id = &mut self.next_id;
        let mut new_id = || {
            *next_id += 1;
            TaskId::from_random(seeded(3, *next_id))
        };
        let records: Vec<ServiceRecord> = self
            .services
            .iter()
            .map(|s| ServiceRecord { service: s.clone(), previous: None, update: None, updated_at_ms: 0 })
            .collect();
        let images = [ImageRecord {
            reference: "demo/app:1.0".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platforms: vec!["linux/arm64".into()],
            size: 1,
            blobs: vec![],
            loaded_at_ms: 0,
        }];
        let names = HashMap::new();
        let cluster = Cluster {
            records: &records,
            nodes: &self.nodes,
            images: &images,
            names: &names,
            networks: &[],
            boards: &[],
        };
        let tasks = std::mem::take(&mut self.tasks);
        let outcome = self.reconciler.pass(Now { mono: now, wall_ms: now }, cluster, tasks, Vec::new(), &mut new_id);
        self.wake_at = outcome.wake_at;
        // Something changed for a node: its agent has work.
        self.agents_busy |= !outcome.diffs.is_empty();
        self.tasks = outcome.tasks;
    }

    /// The agents' turn: each moves each of its tasks one step, forward only. Returns
    /// whether any task changed.
    fn agents(&mut self, now: Millis) -> bool {
        let mut changed = false;
        for t in &mut self.tasks {
            let state = t.status.state;
            // Cheap checks first: most tasks are Running and wanted.
            let exiting = state == TaskState::Running && self.exits.contains_key(&t.id);
            let moving = (TaskState::Assigned..TaskState::Running).contains(&state);
            let stopping = !t.is_desired_running() && !state.is_terminal() && state >= TaskState::Assigned;
            if !(exiting || moving || stopping) {
                continue;
            }
            let Some(node) = &t.node_id else { continue };
            if !self.agents.get(node).is_some_and(|a| a.alive) {
                continue;
            }
            let next = if stopping {
                TaskStatus::new(TaskState::Shutdown, now, "shutdown")
            } else if exiting {
                match self.exits.remove(&t.id) {
                    Some(0) => {
                        TaskStatus { exit_code: Some(0), ..TaskStatus::new(TaskState::Complete, now, "finished") }
                    }
                    code => TaskStatus {
                        exit_code: code,
                        ..TaskStatus::new(TaskState::Failed, now, &format!("task: non-zero exit ({code:?})"))
                    },
                }
            } else {
                let s = match state {
                    TaskState::Assigned => TaskState::Accepted,
                    TaskState::Accepted => TaskState::Preparing,
                    TaskState::Preparing => TaskState::Starting,
                    _ => TaskState::Running,
                };
                TaskStatus::new(s, now, s.as_str())
            };
            apply_status(t, next).unwrap();
            changed = true;
        }
        changed
    }

    /// Steps until every task the manager wants running is Running on a live node, the
    /// counts match the specs and every task it wants stopped on a live node has stopped.
    fn settle(&mut self, max_steps: u32) -> u32 {
        for step in 1..=max_steps {
            if self.step() && self.settled() {
                return step;
            }
        }
        panic!("not settled after {max_steps} steps: {}", self.summary());
    }

    fn settled(&self) -> bool {
        let wanted: u32 = self
            .services
            .iter()
            .map(|s| match s.spec.mode {
                ServiceMode::Replicated { replicas } => replicas,
                ServiceMode::Global => 0,
            })
            .sum();
        let mut running = 0;
        for t in &self.tasks {
            let on_live = t.node_id.as_ref().is_some_and(|n| self.agents[n].alive);
            if t.is_desired_running() {
                if t.status.state != TaskState::Running || !on_live {
                    return false;
                }
                running += 1;
            } else if on_live && !t.status.state.is_terminal() {
                return false;
            }
        }
        running == wanted
    }

    fn summary(&self) -> String {
        let mut by_state: HashMap<(TaskState, TaskState), usize> = HashMap::new();
        for t in &self.tasks {
            *by_state.entry((t.desired_state, t.status.state)).or_default() += 1;
        }
        format!("(desired, observed) counts: {by_state:?}")
    }

    /// Tasks the manager wants running, per service and node.
    fn placement(&self) -> HashMap<(ServiceId, NodeId), u32> {
        let mut out = HashMap::new();
        for t in self.tasks.iter().filter(|t| t.is_desired_running()) {
            if let Some(n) = &t.node_id {
                *out.entry((t.service_id.clone(), n.clone())).or_default() += 1;
            }
        }
        out
    }

    /// Exact replica counts and at most one desired-running task per slot.
    fn assert_replicas_exact(&self) {
        for s in &self.services {
            let ServiceMode::Replicated { replicas } = s.spec.mode else { continue };
            let live: Vec<&Task> =
                self.tasks.iter().filter(|t| t.service_id == s.id && t.is_desired_running()).collect();
            assert_eq!(live.len(), replicas as usize, "service {}", s.spec.name);
            let slots: HashSet<u32> = live.iter().map(|t| t.slot).collect();
            assert_eq!(slots.len(), live.len(), "a slot of {} has two desired-running tasks", s.spec.name);
            assert!(slots.iter().all(|&slot| (1..=replicas).contains(&slot)));
        }
    }
}

/// Lab tasks 3, 5 and 6 at fleet scale: (a) 1,000 boards run 30,000 tasks spread evenly,
/// (b) draining 100 boards moves their tasks, (c) 50 boards losing power get theirs
/// replaced once membership calls them Down.
#[test]
fn a_thousand_boards_place_drain_and_survive_failures() {
    let started = Instant::now();
    let mut sim = Sim::new(1000);
    // 10 × 1,234 + 10 × 1,766 = 30,000 tasks; uneven counts so the spread bound matters.
    for i in 0..20 {
        let replicas = if i % 2 == 0 { 1234 } else { 1766 };
        sim.add_service(&format!("svc{i}"), replicas, |s| {
            if i % 5 == 0 {
                s.resources.reserve_memory = 16 << 20;
                s.resources.reserve_cpu_millis = 50;
            }
        });
    }
    let steps = sim.settle(50);
    sim.assert_replicas_exact();
    let placement = sim.placement();
    for s in &sim.services {
        let counts: Vec<u32> =
            sim.nodes.iter().map(|n| placement.get(&(s.id.clone(), n.id.clone())).copied().unwrap_or(0)).collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{}: {min}..{max} tasks per node", s.spec.name);
    }
    assert_eq!(sim.tasks.len(), 30_000);
    println!(
        "(a) 1,000 nodes, 30,000 tasks placed and Running in {steps} steps ({} ms virtual), wall {:?}",
        sim.now,
        started.elapsed()
    );

    // (b) Drain 100 boards.
    let started = Instant::now();
    let drained: HashSet<NodeId> = sim.nodes[..100].iter().map(|n| n.id.clone()).collect();
    sim.set_availability(0..100, Availability::Drain);
    let before = sim.now;
    let steps = sim.settle(50);
    sim.assert_replicas_exact();
    for t in &sim.tasks {
        let on_drained = t.node_id.as_ref().is_some_and(|n| drained.contains(n));
        if on_drained {
            assert!(!t.is_desired_running(), "a task is still wanted on a drained node");
            assert!(t.status.state.is_terminal(), "a task still runs on a drained node");
        }
    }
    let moved = sim.tasks.iter().filter(|t| t.status.state == TaskState::Shutdown).count();
    assert!(moved >= 2_900, "{moved} tasks shut down on the drained nodes");
    println!(
        "(b) drained 100 nodes: {moved} tasks moved in {steps} steps ({} ms virtual), wall {:?}",
        sim.now - before,
        started.elapsed()
    );

    // (c) 50 boards lose power: no more heartbeats.
    let started = Instant::now();
    let dead: Vec<NodeId> = sim.nodes[100..150].iter().map(|n| n.id.clone()).collect();
    let lost: usize =
        sim.tasks.iter().filter(|t| t.is_desired_running() && dead.contains(t.node_id.as_ref().unwrap())).count();
    for id in &dead {
        sim.agents.get_mut(id).unwrap().alive = false;
    }
    let before = sim.now;
    let steps = sim.settle(100);
    sim.assert_replicas_exact();
    for n in &sim.nodes[100..150] {
        assert_eq!(n.status, NodeStatus::Down);
    }
    assert!(!sim.tasks.iter().any(|t| t.is_desired_running() && dead.contains(t.node_id.as_ref().unwrap())));
    println!(
        "(c) 50 nodes lost: {lost} tasks Running elsewhere {} ms (virtual) after their last heartbeat, {steps} steps, wall {:?}",
        sim.now - before,
        started.elapsed()
    );
}

/// (d) Lab task 3's `--publish mode=host`: three boards, four replicas of a service
/// binding host port 8000: three run, one waits and says why.
#[test]
fn a_host_mode_port_fits_once_per_node_and_the_rest_wait_with_the_reason() {
    let started = Instant::now();
    let mut sim = Sim::new(3);
    sim.add_service("web", 4, |s| {
        s.ports = vec![PortConfig::parse("mode=host,published=8000,target=80").unwrap()].try_into().unwrap();
    });
    for _ in 0..30 {
        sim.step();
    }
    let running: Vec<&Task> = sim.tasks.iter().filter(|t| t.status.state == TaskState::Running).collect();
    assert_eq!(running.len(), 3);
    let nodes: HashSet<&NodeId> = running.iter().filter_map(|t| t.node_id.as_ref()).collect();
    assert_eq!(nodes.len(), 3, "one per node");
    let pending: Vec<&Task> = sim.tasks.iter().filter(|t| t.status.state == TaskState::Pending).collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(&*pending[0].status.message, "no suitable node (host-mode port 8000/tcp in use on 3 nodes)");
    println!("(d) host-port conflict, wall {:?}", started.elapsed());
}

/// (e) A task that exits 1 is restarted in its slot after the restart delay, and no more
/// than `max_attempts` times.
#[test]
fn a_failing_task_restarts_after_the_delay_up_to_max_attempts() {
    let started = Instant::now();
    let mut sim = Sim::new(2);
    sim.add_service("flaky", 1, |s| {
        s.restart_policy = RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: 5_000,
            max_attempts: Some(2),
            window_ms: 0,
        };
    });
    sim.settle(20);
    for attempt in 0..3 {
        let current = sim.tasks.iter().find(|t| t.is_desired_running()).unwrap().id.clone();
        sim.exit(current.clone(), 1);
        sim.step();
        let failed_at = sim.now;
        let t = sim.tasks.iter().find(|t| t.id == current).unwrap();
        assert_eq!((t.status.state, t.status.exit_code), (TaskState::Failed, Some(1)));
        // Nothing new before the delay is over.
        while sim.now + STEP < failed_at + 5_000 {
            sim.step();
            assert_eq!(sim.tasks.len(), attempt + 1, "restarted before the delay, at {}", sim.now - failed_at);
        }
        for _ in 0..20 {
            sim.step();
        }
        if attempt == 2 {
            assert_eq!(sim.tasks.len(), 3, "a third restart: max_attempts is 2");
            let t = sim.tasks.iter().find(|t| t.id == current).unwrap();
            assert!(t.is_desired_running() && t.status.state == TaskState::Failed, "the slot keeps its failed task");
            break;
        }
        let restarted: Vec<&Task> =
            sim.tasks.iter().filter(|t| t.is_desired_running() && t.status.state == TaskState::Running).collect();
        assert_eq!(restarted.len(), 1, "attempt {attempt}");
        assert_eq!(restarted[0].slot, 1);
        assert_ne!(restarted[0].id, current);
    }
    println!("(e) restart policy, wall {:?}", started.elapsed());
}
