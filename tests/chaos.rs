//! Chaos (issue 9): a seeded schedule of faults against a manager and three boards
//! running two scaled services through rolling updates, with the cluster's invariants
//! checked all along. Faults: kill -9 of an agent, of the manager and of a container's
//! shim; a board's cable cut and restored; a board's disk (a tmpfs of its own) filled
//! and freed; the manager killed during a rolling update.
//!
//! Invariants, checked every ~0.3 s between the faults' steps and then until the cluster settles:
//! - **slots**: never more than one running container per slot (both services update
//!   stop-first), counted from the containers' cgroups on the boards we trust (below);
//! - **ports**: `web` publishes host port 8000, so never two of its containers on one
//!   trusted board, and never two listening sockets on one port on any board;
//! - **convergence**: once the last fault is healed, both services are back to every
//!   replica running, one container per slot, no update in flight, within
//!   `SHOAL_CHAOS_CONVERGE_SECS` (default 90);
//! - **leaks**: after `service rm` and stopping agents and manager, no process, cgroup,
//!   mount, network namespace, veth, runtime state or container directory is left.
//!
//! Trust: a board whose agent is dead or whose cable is cut keeps its containers running
//! (as a Swarm worker does) while the manager replaces them elsewhere, so its slots are
//! counted twice for a while by design. Such a board is left out of the slot and
//! per-board checks from the fault until `STALE_GRACE` after it is healed; how long its
//! stale containers actually lingered after the heal is measured and reported.
//!
//! See docs/chaos.md. The short run (seeds 1 and 2, 20 s of faults each) is part of
//! the test command. The long run is `bench/chaos.sh`, through `SHOAL_CHAOS_SEEDS` (`1,5,9` or `1..20`),
//! `SHOAL_CHAOS_SECS` (seconds of faults per seed), `SHOAL_CHAOS_FAULTS` (kinds to
//! inject, e.g. `agent,manager,shim,link,update-crash`; default all) and
//! `SHOAL_CHAOS_REPORT` (a file that receives one JSON line of figures per seed). A
//! failing seed prints its schedule and what was applied when; the same seed replays
//! the same schedule.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, running_container_ids, Cluster, Lab};

/// Boards in the lab.
const BOARDS: usize = 3;
/// Replicas of each service: `web` fills every board's port 8000, `steady` has more
/// replicas than boards.
const WEB_REPLICAS: usize = 3;
const STEADY_REPLICAS: usize = 4;
/// The release that fails a second after it starts (see `images/README.md`).
const BROKEN_IMAGE: &str = "demo/app:2.0";
/// Each board's disk: ample for the demo images (2 MB each) and a few containers.
const DISK_MIB: u32 = 48;
/// How long after a board is healed its stale containers may still run: a reconnect
/// back-off (≤ 5 s), the full assignment set, the stop.
const STALE_GRACE: Duration = Duration::from_secs(10);
/// Sampling period of the invariant checker.
const SAMPLE: Duration = Duration::from_millis(300);

/// splitmix64: a seed gives the same schedule on every machine, with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// kill -9 of a board's agent, started again after `hold`.
    Agent,
    /// kill -9 of the manager, started again after `hold`.
    Manager,
    /// kill -9 of one container's shim (picked by `pick` among the board's, by ID).
    Shim,
    /// A board's cable cut, plugged back after `hold`.
    Link,
    /// A board's disk filled, freed after `hold`.
    Disk,
    /// A rolling update of `steady` started, the manager killed `hold` later mid-way
    /// and started again at once.
    UpdateCrash,
}

impl Kind {
    const ALL: [Kind; 6] = [Kind::Agent, Kind::Manager, Kind::Shim, Kind::Link, Kind::Disk, Kind::UpdateCrash];

    fn name(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Manager => "manager",
            Kind::Shim => "shim",
            Kind::Link => "link",
            Kind::Disk => "disk",
            Kind::UpdateCrash => "update-crash",
        }
    }

    /// Whether the fault takes the manager (so the manager is its target) rather than a board.
    fn on_manager(self) -> bool {
        matches!(self, Kind::Manager | Kind::UpdateCrash)
    }
}

/// One step of a schedule, at `at` after the faults begin.
#[derive(Debug, Clone)]
enum Action {
    Fault {
        kind: Kind,
        board: usize,
        hold: Duration,
        pick: u64,
    },
    /// `service update --image` of service `service` (0: web, 1: steady).
    Update {
        service: usize,
        image: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Event {
    at: Duration,
    action: Action,
}

/// The schedule of seed `seed`: faults every 1–4 s for `secs`, each on a target that is
/// not already faulted (at most two faults at once), and a rolling update every 3–8 s.
fn schedule(seed: u64, secs: u64, kinds: &[Kind]) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut events = Vec::new();
    // busy_until[0] is the manager, [1..] the boards.
    let mut busy_until = [Duration::ZERO; BOARDS + 1];
    let end = Duration::from_secs(secs);
    let mut t = Duration::from_millis(rng.range(500, 2000));
    while t < end && !kinds.is_empty() {
        let kind = kinds[rng.range(0, kinds.len() as u64 - 1) as usize];
        let hold = Duration::from_millis(match kind {
            Kind::Shim => 0,
            Kind::UpdateCrash => rng.range(500, 3000),
            Kind::Manager => rng.range(200, 3000),
            _ => rng.range(500, 6000),
        });
        let board = if kind.on_manager() { 0 } else { rng.range(1, BOARDS as u64) as usize };
        let pick = rng.next();
        let in_progress = busy_until.iter().filter(|b| **b > t).count();
        if busy_until[board] <= t && in_progress < 2 {
            events.push(Event { at: t, action: Action::Fault { kind, board, hold, pick } });
            busy_until[board] = t + hold + Duration::from_millis(500);
        }
        t += Duration::from_millis(rng.range(1000, 4000));
    }
    let mut t = Duration::from_millis(rng.range(1000, 4000));
    while t < end {
        let service = rng.range(0, 1) as usize;
        // 2.0 exits after a second: its updates fail and roll back by themselves.
        let image = ["demo/app:1.0", "demo/app:3.0", "demo/app:2.0"][rng.range(0, 2) as usize];
        events.push(Event { at: t, action: Action::Update { service, image } });
        t += Duration::from_millis(rng.range(3000, 8000));
    }
    events.sort_by_key(|e| e.at);
    events
}

fn describe(events: &[Event]) -> String {
    let mut s = String::new();
    for e in events {
        let _ = match &e.action {
            Action::Fault { kind, board, hold, pick } => writeln!(
                s,
                "  {:>6} ms  {:<12} {}  hold {} ms  pick {}",
                e.at.as_millis(),
                kind.name(),
                if *board == 0 { "manager".to_owned() } else { format!("node{board}") },
                hold.as_millis(),
                pick % 100
            ),
            Action::Update { service, image } => {
                writeln!(s, "  {:>6} ms  update       {}  → {image}", e.at.as_millis(), ["web", "steady"][*service])
            }
        };
    }
    s
}

/// What the checker must know of the faults in progress.
struct Shared {
    /// Per board (index = host index): trusted again from this instant; `None` while
    /// a fault that cuts it off is on.
    trusted_from: Vec<Option<Instant>>,
    /// Per board: when it was healed, while its stale containers are being measured.
    healed_at: Vec<Option<Instant>>,
    /// How long stale containers lingered after each heal (ms).
    stale_ms: Vec<u64>,
    /// Distinct violations, first seen at (ms since the faults began).
    violations: BTreeMap<String, u128>,
    samples: u64,
}

/// Service names and container IDs (`<service>.<slot>.<task id>`) of this lab.
struct Names {
    web: String,
    steady: String,
}

impl Names {
    fn services(&self) -> [&str; 2] {
        [&self.web, &self.steady]
    }
}

/// Running containers of our services on each board: host index → (service, slot, id).
fn running_by_board(c: &Cluster, names: &Names) -> Vec<Vec<(String, String, String)>> {
    let running: std::collections::HashSet<String> = running_container_ids().into_iter().collect();
    let mut per_board = vec![Vec::new(); BOARDS + 1];
    for (i, h) in c.lab.hosts.iter().enumerate().skip(1) {
        for e in std::fs::read_dir(h.data_dir.join("agent/containers")).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !running.contains(&id) {
                continue;
            }
            let mut parts = id.splitn(3, '.');
            let (Some(svc), Some(slot)) = (parts.next(), parts.next()) else { continue };
            if names.services().contains(&svc) {
                per_board[i].push((svc.to_owned(), slot.to_owned(), id.clone()));
            }
        }
    }
    per_board
}

/// One check of the slot and port invariants.
fn check(c: &Cluster, names: &Names, shared: &Mutex<Shared>, began: Instant) {
    let per_board = running_by_board(c, names);
    let now = Instant::now();
    let mut found = Vec::new();
    let mut sh = shared.lock().unwrap();
    let trusted: Vec<bool> = sh.trusted_from.iter().map(|t| t.is_some_and(|t| now >= t)).collect();

    let mut slots: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (board, list) in per_board.iter().enumerate() {
        if !trusted[board] {
            continue;
        }
        for (svc, slot, id) in list {
            slots.entry((svc.clone(), slot.clone())).or_default().push(format!("node{board}:{id}"));
        }
        let web: Vec<&str> = list.iter().filter(|(svc, ..)| *svc == names.web).map(|(.., id)| id.as_str()).collect();
        if web.len() > 1 {
            found.push(format!("port: {} containers of web (host port 8000) on node{board}: {web:?}", web.len()));
        }
    }
    for ((svc, slot), ids) in &slots {
        if ids.len() > 1 {
            found
                .push(format!("slot: {} running containers in {svc}.{slot} (stop-first allows 1): {ids:?}", ids.len()));
        }
    }
    for (board, h) in c.lab.hosts.iter().enumerate().skip(1) {
        for (port, n) in h.ports_bound_twice() {
            found.push(format!("port: {n} listening sockets on port {port} on node{board}"));
        }
    }
    // Stale containers of a healed board: gone once none shares a slot with a trusted board's.
    for board in 1..=BOARDS {
        let Some(healed) = sh.healed_at[board] else { continue };
        let stale = per_board[board].iter().any(|(svc, slot, _)| {
            per_board
                .iter()
                .enumerate()
                .any(|(b, l)| b != board && trusted[b] && l.iter().any(|x| &x.0 == svc && &x.1 == slot))
        });
        if !stale {
            sh.stale_ms.push(healed.elapsed().as_millis() as u64);
            sh.healed_at[board] = None;
        }
    }
    let at = began.elapsed().as_millis();
    for v in found {
        sh.violations.entry(v).or_insert(at);
    }
    sh.samples += 1;
}

/// Figures of one seed.
#[derive(Debug, Default)]
struct Outcome {
    seed: u64,
    faults: BTreeMap<&'static str, u32>,
    updates: u32,
    violations: Vec<String>,
    converge_ms: Option<u64>,
    stale_ms: Vec<u64>,
    leaks: Vec<String>,
    remains: Vec<String>,
    log: String,
    schedule: String,
    samples: u64,
    paused_updates: Vec<String>,
}

impl Outcome {
    fn failed(&self) -> bool {
        !self.violations.is_empty() || self.converge_ms.is_none() || !self.leaks.is_empty() || !self.remains.is_empty()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "faults": self.faults,
            "updates": self.updates,
            "violations": self.violations,
            "converge_ms": self.converge_ms,
            "stale_ms": self.stale_ms,
            "leaks": self.leaks.len() + self.remains.len(),
            "samples": self.samples,
            "paused_updates": self.paused_updates,
        })
    }
}

fn inspect(c: &Cluster, service: &str) -> Option<serde_json::Value> {
    let out = c.manager_host().run("shoal", &["service", "inspect", "--format", "json", service]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().map(|v| v[0].clone())
}

/// Whether `service` has settled: no update in flight (completed, rolled back, or paused
/// by its failure action), every replica running as the manager sees it and on the
/// boards exactly one running container per slot; when paused, at most one per slot.
fn settled(c: &Cluster, service: &str, replicas: usize, per_board: &[Vec<(String, String, String)>]) -> bool {
    let Some(v) = inspect(c, service) else { return false };
    let state = v["UpdateStatus"]["State"].as_str().unwrap_or("");
    if matches!(state, "updating" | "rollback_started") {
        return false;
    }
    let mut slots: HashMap<&str, usize> = HashMap::new();
    for (svc, slot, _) in per_board.iter().flatten() {
        if svc == service {
            *slots.entry(slot).or_default() += 1;
        }
    }
    // An update (or rollback) a fault made fail and that its failure action paused is
    // settled: it did what it says, and waits for the operator, possibly with the failing
    // image (2.0) restarting in its slots, so not every replica runs. Never two in a slot
    // all the same; such updates are counted apart.
    if state.ends_with("paused") {
        return slots.values().all(|n| *n <= 1);
    }
    // An update to 2.0 issued while 2.0 was already the spec (an earlier update still in
    // flight) keeps 2.0 as its previous spec, as Swarm's `UpdateService` does; when it fails
    // its rollback "completes" at once, still on the broken image. Settled the same way.
    let image = v["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].as_str().unwrap_or("");
    if image.starts_with(BROKEN_IMAGE) {
        return slots.values().all(|n| *n <= 1);
    }
    let cell = c.replicas(service);
    if cell.split_whitespace().next() != Some(format!("{replicas}/{replicas}").as_str()) {
        return false;
    }
    slots.len() == replicas && slots.values().all(|n| *n == 1)
}

/// Applies one fault; [`heal`] undoes it `hold` later.
fn apply(c: &mut Cluster, names: &Names, kind: Kind, board: usize, pick: u64, log: &mut String) {
    match kind {
        Kind::Agent => c.agents[board - 1].kill9(),
        Kind::Manager => c.manager.kill9(),
        Kind::Shim => {
            let shims = c.lab.hosts[board].shims();
            if shims.is_empty() {
                let _ = write!(log, " (no shim to kill)");
            } else {
                let (pid, id) = &shims[(pick % shims.len() as u64) as usize];
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
                let _ = write!(log, " (shim {pid} of {id})");
            }
        }
        Kind::Link => c.lab.hosts[board].cut_link(),
        Kind::Disk => {
            let bytes = c.lab.hosts[board].fill_disk();
            let _ = write!(log, " ({} KiB written)", bytes / 1024);
        }
        Kind::UpdateCrash => {
            let image = if pick.is_multiple_of(2) { "demo/app:3.0" } else { "demo/app:1.0" };
            let out = c.manager_host().run("shoal", &update_args(&names.steady, image, "1s"));
            let _ =
                write!(log, " (update steady → {image}: {})", if out.status.success() { "started" } else { "refused" });
        }
    }
}

fn heal(c: &mut Cluster, kind: Kind, board: usize) {
    match kind {
        Kind::Agent => c.restart_agent(board),
        Kind::Manager => c.restart_manager(),
        Kind::Shim => {}
        Kind::Link => c.lab.hosts[board].restore_link(),
        Kind::Disk => c.lab.hosts[board].free_disk(),
        Kind::UpdateCrash => {
            c.manager.kill9();
            c.restart_manager();
        }
    }
}

fn update_args<'a>(service: &'a str, image: &'a str, delay: &'a str) -> Vec<&'a str> {
    vec![
        "service",
        "update",
        "--detach=true",
        "--image",
        image,
        "--update-delay",
        delay,
        "--update-monitor",
        "2s",
        "--update-failure-action",
        "rollback",
        service,
    ]
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn seeds() -> Vec<u64> {
    let spec = std::env::var("SHOAL_CHAOS_SEEDS").unwrap_or_else(|_| "1,2".into());
    if let Some((a, b)) = spec.split_once("..") {
        let (a, b): (u64, u64) =
            (a.trim().parse().expect("SHOAL_CHAOS_SEEDS"), b.trim().parse().expect("SHOAL_CHAOS_SEEDS"));
        return (a..=b).collect();
    }
    spec.split(',').map(|s| s.trim().parse().expect("SHOAL_CHAOS_SEEDS: numbers, `1,2,3` or `1..20`")).collect()
}

fn kinds() -> Vec<Kind> {
    match std::env::var("SHOAL_CHAOS_FAULTS") {
        Err(_) => Kind::ALL.to_vec(),
        Ok(list) => list
            .split(',')
            .map(|k| {
                *Kind::ALL.iter().find(|x| x.name() == k.trim()).unwrap_or_else(|| {
                    panic!(
                        "SHOAL_CHAOS_FAULTS: unknown fault {k:?}: use agent, manager, shim, link, disk, update-crash"
                    )
                })
            })
            .collect(),
    }
}

/// Runs one seed on a cluster of its own.
fn run_seed(seed: u64, secs: u64, kinds: &[Kind], converge_bound: Duration) -> Outcome {
    let events = schedule(seed, secs, kinds);
    let mut out = Outcome { seed, schedule: describe(&events), ..Outcome::default() };
    eprintln!("chaos seed {seed}: {secs} s of faults, schedule:\n{}", out.schedule);

    let mut lab = Lab::new(BOARDS + 1).unwrap();
    lab.give_disks(DISK_MIB).unwrap();
    let tag = lab.tag().to_owned();
    let lab_dir = lab.dir.clone();
    let names = Names { web: format!("{tag}w"), steady: format!("{tag}s") };
    let mut c = Cluster::start_in(lab).unwrap();
    for image in ["demo-app-1.0.tar", "demo-app-2.0.tar", "demo-app-3.0.tar"] {
        c.manager_host().shoal(&["image", "load", lab_image(image).to_str().unwrap()]);
    }
    let m = c.manager_host();
    let publish = "mode=host,target=8000,published=8000";
    let web_n = WEB_REPLICAS.to_string();
    let steady_n = STEADY_REPLICAS.to_string();
    m.shoal(&["service", "create", "--name", &names.web, "--replicas", &web_n, "--publish", publish, "demo/app:1.0"]);
    m.shoal(&["service", "create", "--name", &names.steady, "--replicas", &steady_n, "demo/app:1.0"]);

    let began = Instant::now();
    let shared = Mutex::new(Shared {
        trusted_from: vec![Some(began); BOARDS + 1],
        healed_at: vec![None; BOARDS + 1],
        stale_ms: Vec::new(),
        violations: BTreeMap::new(),
        samples: 0,
    });

    // Faults and heals, in time order; the checker runs between them.
    let mut timeline: Vec<(Duration, usize, bool)> = Vec::new(); // (when, event index, is_heal)
    for (i, e) in events.iter().enumerate() {
        timeline.push((e.at, i, false));
        if let Action::Fault { hold, .. } = e.action {
            timeline.push((e.at + hold, i, true));
        }
    }
    timeline.sort();
    let mut next_check = Instant::now();
    let mut step = 0;
    while step < timeline.len() {
        let (when, i, is_heal) = timeline[step];
        if began.elapsed() < when {
            if Instant::now() >= next_check {
                check(&c, &names, &shared, began);
                next_check = Instant::now() + SAMPLE;
            }
            std::thread::sleep(Duration::from_millis(20).min(when.saturating_sub(began.elapsed())));
            continue;
        }
        step += 1;
        let _ = write!(out.log, "  {:>6} ms  ", began.elapsed().as_millis());
        match (&events[i].action, is_heal) {
            (Action::Update { service, image }, _) => {
                let svc = [&names.web, &names.steady][*service];
                let res = c.manager_host().run("shoal", &update_args(svc, image, "0s"));
                out.updates += 1;
                let said = String::from_utf8_lossy(&res.stderr).trim().to_owned();
                let _ = writeln!(
                    out.log,
                    "update {} → {image}: {}",
                    ["web", "steady"][*service],
                    if res.status.success() { "started".to_owned() } else { format!("refused ({said})") }
                );
            }
            (Action::Fault { kind, board, pick, .. }, false) => {
                let _ = write!(
                    out.log,
                    "{} {}",
                    kind.name(),
                    if *board == 0 { "manager".into() } else { format!("node{board}") }
                );
                if matches!(kind, Kind::Agent | Kind::Link) {
                    shared.lock().unwrap().trusted_from[*board] = None;
                }
                apply(&mut c, &names, *kind, *board, *pick, &mut out.log);
                *out.faults.entry(kind.name()).or_default() += 1;
                out.log.push('\n');
            }
            (Action::Fault { kind, board, .. }, true) => {
                heal(&mut c, *kind, *board);
                if matches!(kind, Kind::Agent | Kind::Link) {
                    let mut sh = shared.lock().unwrap();
                    sh.trusted_from[*board] = Some(Instant::now() + STALE_GRACE);
                    sh.healed_at[*board] = Some(Instant::now());
                }
                let _ = writeln!(
                    out.log,
                    "healed {} {}",
                    kind.name(),
                    if *board == 0 { "manager".into() } else { format!("node{board}") }
                );
            }
        }
    }
    let last_heal = Instant::now();
    let _ = writeln!(out.log, "  {:>6} ms  last fault healed", began.elapsed().as_millis());

    // Convergence, with the invariants still checked.
    while last_heal.elapsed() < converge_bound {
        check(&c, &names, &shared, began);
        // Exactly one running container per slot on all the boards, stale ones included:
        // no need to wait for a healed board's grace.
        let per_board = running_by_board(&c, &names);
        if settled(&c, &names.web, WEB_REPLICAS, &per_board) && settled(&c, &names.steady, STEADY_REPLICAS, &per_board)
        {
            out.converge_ms = Some(last_heal.elapsed().as_millis() as u64);
            break;
        }
        std::thread::sleep(SAMPLE);
    }
    // A few more checks once settled: nothing moves back.
    for _ in 0..5 {
        check(&c, &names, &shared, began);
        std::thread::sleep(SAMPLE);
    }
    for svc in names.services() {
        if let Some(v) = inspect(&c, svc) {
            let state = v["UpdateStatus"]["State"].as_str().unwrap_or("none").to_owned();
            if state.ends_with("paused") {
                out.paused_updates.push(format!("{svc}: {state}: {}", v["UpdateStatus"]["Message"]));
            }
        }
    }
    {
        let sh = shared.lock().unwrap();
        out.violations = sh.violations.iter().map(|(v, at)| format!("at {at} ms: {v}")).collect();
        out.stale_ms = sh.stale_ms.clone();
        out.samples = sh.samples;
    }
    if out.converge_ms.is_none() {
        let mut state = String::new();
        for svc in names.services() {
            let ps = c.manager_host().run("shoal", &["service", "ps", svc]);
            let update = inspect(&c, svc).map(|v| v["UpdateStatus"].to_string()).unwrap_or_default();
            let _ = writeln!(state, "{svc} UpdateStatus {update}\n{}", String::from_utf8_lossy(&ps.stdout));
        }
        out.violations.push(format!(
            "convergence: not settled {converge_bound:?} after the last fault; running: {:?}; service ps:\n{state}",
            running_by_board(&c, &names),
        ));
    }

    // Teardown as an operator would, then look for what the product left behind.
    for svc in names.services() {
        let _ = c.manager_host().run("shoal", &["service", "rm", svc]);
    }
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(30) {
        if running_by_board(&c, &names).iter().all(|l| l.is_empty()) && c.lab.leaks(&names.services()).is_empty() {
            break;
        }
        std::thread::sleep(SAMPLE);
    }
    for a in &mut c.agents {
        a.stop();
    }
    c.manager.stop();
    out.leaks = c.lab.leaks(&names.services());
    if out.failed() {
        c.lab.keep_logs();
    }
    drop(c);
    out.remains = Lab::remains(&tag, &lab_dir);
    out
}

fn report_line(o: &Outcome) -> String {
    format!(
        "seed {}: faults {:?}, updates {}, violations {}, converged {}, stale containers gone after {:?} ms, leaks {}",
        o.seed,
        o.faults,
        o.updates,
        o.violations.len(),
        o.converge_ms.map_or("never".to_owned(), |ms| format!("{ms} ms after the last fault")),
        o.stale_ms,
        o.leaks.len() + o.remains.len()
    )
}

#[test]
#[ignore = "needs root"]
fn chaos_seeded_faults_keep_every_invariant() {
    let secs = env_u64("SHOAL_CHAOS_SECS", 20);
    let converge = Duration::from_secs(env_u64("SHOAL_CHAOS_CONVERGE_SECS", 90));
    let kinds = kinds();
    let mut failures = String::new();
    for seed in seeds() {
        let o = run_seed(seed, secs, &kinds, converge);
        eprintln!("{}", report_line(&o));
        if let Ok(path) = std::env::var("SHOAL_CHAOS_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("SHOAL_CHAOS_REPORT");
            writeln!(f, "{}", o.json()).expect("SHOAL_CHAOS_REPORT");
        }
        if o.failed() {
            let _ = writeln!(
                failures,
                "\n=== seed {seed} failed (replay: SHOAL_CHAOS_SEEDS={seed} SHOAL_CHAOS_SECS={secs})\n{}\nschedule:\n{}applied:\n{}violations:\n  {}\nleaks:\n  {}\nharness remains:\n  {}",
                report_line(&o),
                o.schedule,
                o.log,
                o.violations.join("\n  "),
                o.leaks.join("\n  "),
                o.remains.join("\n  ")
            );
        }
    }
    assert!(failures.is_empty(), "chaos found problems:{failures}");
}

/// Found by the chaos run (seed 1): a shim killed while its container runs leaves the
/// container running without a monitor ("lost"). When the manager then wants the task
/// stopped (here: a stop-first update), the agent must still stop that container and
/// say the task is shut down, or the update waits for ever, the port stays taken and
/// `service rm` leaves the container behind. End to end, the agent often notices the
/// lost container before the stop arrives (and reports it failed), so this test can pass
/// without the fix; `agent/tests/runtime.rs`
/// `a_container_whose_shim_was_killed_is_still_stopped` is the one that fails without it.
#[test]
#[ignore = "needs root"]
fn a_container_whose_shim_was_killed_is_still_stopped_and_removed() {
    let lab = Lab::new(2).unwrap();
    let svc = format!("{}k", lab.tag());
    let c = Cluster::start_in(lab).unwrap();
    for image in ["demo-app-1.0.tar", "demo-app-3.0.tar"] {
        c.manager_host().shoal(&["image", "load", lab_image(image).to_str().unwrap()]);
    }
    let publish = "mode=host,target=8000,published=8000";
    c.manager_host().shoal(&["service", "create", "--name", &svc, "--publish", publish, "demo/app:1.0"]);
    let board = &c.lab.hosts[1];
    let (shim, id) = board.shims().into_iter().next().expect("a shim");
    let init: u32 = std::fs::read_to_string(board.data_dir.join("agent/containers").join(&id).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::process::Command::new("kill").args(["-9", &shim.to_string()]).status();
    c.manager_host().shoal(&["service", "update", "--detach=true", "--image", "demo/app:3.0", &svc]);
    shoal_e2e::wait_for("the old container to be stopped", Duration::from_secs(30), || {
        (!std::path::Path::new(&format!("/proc/{init}")).exists()).then_some(())
    });
    shoal_e2e::wait_for("the update to complete", Duration::from_secs(30), || {
        let v = inspect(&c, &svc)?;
        (v["UpdateStatus"]["State"] == "completed").then_some(())
    });
    c.manager_host().shoal(&["service", "rm", &svc]);
    shoal_e2e::wait_for("nothing left of the service", Duration::from_secs(30), || {
        c.lab.leaks(&[&svc]).is_empty().then_some(())
    });
}
