//! The fleet simulator: thousands of boards against one real `shoal manager` process,
//! over real QUIC with mutual TLS, from one machine. Each simulated board is the real
//! agent's code (`session::join`, `session::run_embedded`, the `Supervisor`) with its
//! own identity, joined with the token; only the container runtime and the bridge are
//! the agent's fakes (tasks go Running at once, no containers) and it makes no overlays.
//! Boards run in a few worker processes (this binary again, `--worker`), several
//! hundred per UDP socket, each board on its own connection with its own certificate.
//!
//! Everything runs in a network namespace of its own (`unshare --net`): the manager's
//! port clashes with nothing, and its loopback counters are the fleet's bytes on the
//! wire. A power cut of many boards at once is a `SIGSTOP` of the worker that runs them:
//! they go silent without closing anything, as a board that loses power does.
//!
//! Prints a Markdown section on stdout (progress on stderr). Needs root (the namespace)
//! and `cargo build --bins`:
//!
//! ```text
//! fleet-bench [--boards N] [--tasks N] [--services N] [--cut N] [--per-process N]
//!             [--heartbeat-period DUR] [--idle SECS] [--image ARCHIVE]
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_agent::identity::NodeIdentity;
use shoal_agent::images::ImageStore;
use shoal_agent::net::fake::FakeNetwork;
use shoal_agent::net::{BridgeConfig, PortPublisher};
use shoal_agent::runtime::fake::FakeRuntime;
use shoal_agent::session::{self, Embedding};
use shoal_agent::supervisor::{Supervisor, SupervisorConfig};
use shoal_e2e::{bin, parse_node_ls, parse_table, SERVICE_LS};

/// The image every simulated task runs: tiny, so that 5,000 boards fetch it over their
/// sessions in seconds and keep it in a few kilobytes of disk each.
const IMAGE: &str = "fleet/tiny:1.0";
/// The manager's port inside the namespace.
const PORT: u16 = 4242;
/// Boards that share one UDP socket in a worker.
const PER_ENDPOINT: usize = 250;
/// Joins in flight at once in a worker (each is a handshake and a certificate signing).
const JOINING: usize = 16;

#[derive(Debug, Clone)]
struct Args {
    boards: usize,
    tasks: usize,
    services: usize,
    cut: usize,
    per_process: usize,
    heartbeat: Option<String>,
    idle: u64,
    /// An OCI archive every board fetches after joining, before any task.
    image: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            boards: 100,
            tasks: 1000,
            services: 10,
            cut: 10,
            // Boards per worker process, each on one thread. At 1,250 a worker's thread
            // once ran 1.25 s late while its boards took a burst of tasks, and 17 of
            // them missed a beat: a board of the simulation, not of a fleet, where each
            // has its own cores.
            per_process: 500,
            heartbeat: None,
            idle: 10,
            image: None,
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args::default();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().with_context(|| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--boards" => a.boards = number(value()?)?,
            "--tasks" => a.tasks = number(value()?)?,
            "--services" => a.services = number(value()?)?.max(1),
            "--cut" => a.cut = number(value()?)?,
            "--per-process" => a.per_process = number(value()?)?.max(1),
            "--heartbeat-period" => a.heartbeat = Some(value()?),
            "--idle" => a.idle = number(value()?)? as u64,
            "--image" => a.image = Some(PathBuf::from(value()?)),
            other => bail!("unknown option {other}: see the usage in bench/src/fleet.rs"),
        }
    }
    if a.cut >= a.boards {
        bail!("--cut {} must leave some of the {} boards running", a.cut, a.boards);
    }
    Ok(a)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--worker") {
        args.next();
        return worker(args.collect());
    }
    let args = parse_args(args)?;
    if std::env::var_os("SHOAL_FLEET_NETNS").is_none() {
        // Again, alone in a fresh network namespace.
        let me = std::env::current_exe()?;
        let status = Command::new("unshare")
            .arg("--net")
            .arg("--")
            .arg(&me)
            .args(std::env::args().skip(1))
            .env("SHOAL_FLEET_NETNS", "1")
            .status()
            .context("cannot run unshare (util-linux): the simulator needs its own network namespace, as root")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    sh(&["ip", "link", "set", "lo", "up"])?;
    let dir = std::env::temp_dir().join(format!("shoal-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The boards' own directories go to a tmpfs when there is one: each board saves its
    // task set with an fsync, which on one disk shared by thousands of boards (and on one
    // thread per worker) would stall every board of the worker, an artefact of the
    // simulation. Not with `--image`: unpacked images would fill memory.
    let shm = Path::new("/dev/shm");
    let boards = if args.image.is_none() && shm.is_dir() {
        shm.join(format!("shoal-fleet-{}", std::process::id()))
    } else {
        dir.join("boards")
    };
    std::fs::create_dir_all(&boards)?;
    let result = simulate(&args, &dir, &boards);
    if std::env::var_os("SHOAL_FLEET_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&boards);
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {} and {}", dir.display(), boards.display());
    }
    print!("{}", section(&args, &result?));
    Ok(())
}

/// The Markdown section: what ran, the table, and the published figures beside it.
fn section(a: &Args, table: &str) -> String {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!(
        "### Fleet simulator ({} boards, {} tasks, one manager; `bench/src/fleet.rs`, {profile} build)\n\
         \n\
         Every simulated board is the agent's own join, session and supervisor code with its own\n\
         key and certificate, on its own QUIC connection to a real `shoal manager run` process\n\
         over loopback in a network namespace of its own; only the container runtime and the\n\
         bridge are the agent's fakes (tasks go Running at once). Boards and manager share this\n\
         machine's cores, so the manager's figures include the simulator's competition for them.\n\
         \n\
         {table}\n\
         Published figures of other orchestrators, for scale (not measured here, and on far\n\
         larger control planes than one process on 2 cores): Docker's Swarm scale test (Swarm\n\
         1.0, 2015) ran 30,000 containers on 1,000 nodes; Nomad's C1M scheduled 1,000,000\n\
         containers on 5,000 hosts in under 5 minutes (5 servers, 2016) and C2M 2,000,000 on\n\
         6,100 hosts in 22 minutes (3 schedulers, 2020); Kubernetes supports at most 5,000\n\
         nodes, 150,000 pods and 110 pods per node in one cluster.\n",
        a.boards, a.tasks
    )
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Kills the processes it holds when dropped, whatever happened.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // A stopped worker must be woken to die.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Manager {
    data: PathBuf,
    pid: u32,
}

impl Manager {
    fn shoal(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin("shoal")).arg("--data-dir").arg(&self.data).args(args).output()?;
        if !out.status.success() {
            bail!("shoal {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        status_kib(self.pid, "VmRSS:")
    }

    /// CPU time used so far (user + system).
    fn cpu(&self) -> Duration {
        cpu_of(self.pid)
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn cpu_of(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Bytes through the namespace's loopback (each packet is counted once). From
/// `/proc/net/dev`, which is the reader's namespace's (`/sys` would be the host's).
fn lo_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .and_then(|rest| rest.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or(0)
}

/// The workers' stalls over 300 ms (see [`report_stalls`]): how many, and the longest.
fn worker_stalls(dir: &Path) -> (usize, Duration) {
    let mut stalls = (0, Duration::ZERO);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("worker-") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            let late = line.strip_prefix("stall: the worker's thread ran ").and_then(|r| r.split(" ms").next());
            if let Some(ms) = late.and_then(|v| v.parse::<u64>().ok()) {
                stalls = (stalls.0 + 1, stalls.1.max(Duration::from_millis(ms)));
            }
        }
    }
    stalls
}

/// Datagrams the kernel dropped in this namespace because a UDP socket's receive buffer
/// was full (`RcvbufErrors` of `/proc/net/snmp`, the reader's namespace's): beats the
/// manager never saw, or packets to the boards, lost on the host rather than on a link.
fn udp_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/self/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors");
    column.and_then(|c| values.split_whitespace().nth(c)?.parse().ok()).unwrap_or(0)
}

fn poll<T>(what: &str, timeout: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// (Ready nodes, Down nodes) among the simulated boards.
fn board_states(m: &Manager) -> (usize, usize) {
    let rows = m.shoal(&["node", "ls"]).map(|t| parse_node_ls(&t)).unwrap_or_default();
    let boards = rows.iter().filter(|r| r.hostname.starts_with("sim"));
    boards.fold((0, 0), |(r, d), row| match row.status.as_str() {
        "Ready" => (r + 1, d),
        "Down" => (r, d + 1),
        _ => (r, d),
    })
}

/// Tasks running and wanted, over every service, from `service ls`.
fn replicas(m: &Manager) -> (usize, usize) {
    let rows = m.shoal(&["service", "ls"]).map(|t| parse_table(&t, &SERVICE_LS)).unwrap_or_default();
    rows.iter().fold((0, 0), |(run, want), r| {
        let (a, b) = r["REPLICAS"].split_once('/').unwrap_or(("0", "0"));
        (run + a.trim().parse().unwrap_or(0), want + b.trim().parse().unwrap_or(0))
    })
}

/// How many times the manager has marked a node Down so far (from its log).
fn downs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("manager.log")).unwrap_or_default().matches("node is down").count()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn share(cpu: Duration, wall: Duration) -> String {
    format!("{:.1}%", 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-3))
}

fn simulate(a: &Args, dir: &Path, boards: &Path) -> Result<String> {
    let mut procs = Procs::default();
    let data = dir.join("manager");
    let addr = format!("127.0.0.1:{PORT}");
    let init = Command::new(bin("shoal"))
        .arg("--data-dir")
        .arg(&data)
        .args(["manager", "init", "--advertise-addr", &addr, "--listen-addr", &addr, "--hostname", "fleet-manager"])
        .output()?;
    let init = String::from_utf8_lossy(&init.stdout).into_owned();
    let token = init.split_whitespace().find(|w| w.starts_with("SHOAL-1-")).context("no token in init output")?;
    let mut run = Command::new(bin("shoal"));
    run.arg("--data-dir").arg(&data).args(["manager", "run"]);
    if let Some(hb) = &a.heartbeat {
        run.args(["--heartbeat-period", hb]);
    }
    let log = std::fs::File::create(dir.join("manager.log"))?;
    let child = run.stdout(Stdio::null()).stderr(log).spawn()?;
    let m = Manager { data, pid: child.id() };
    procs.0.push(child);
    poll("the manager to answer", Duration::from_secs(30), Duration::from_millis(100), || {
        m.shoal(&["node", "ls"]).ok()
    })?;
    let rss_empty = m.rss_kib();

    let archive = dir.join("tiny.tar");
    let platforms: Vec<_> = shoal_oci::testing::PLATFORMS.to_vec();
    std::fs::write(&archive, shoal_oci::testing::ArchiveBuilder::multi_arch(IMAGE, &platforms).tar(&[]))?;
    m.shoal(&["image", "load", &archive.to_string_lossy()])?;

    // Boards: the ones to be cut run in a worker of their own.
    eprintln!("== {} boards joining", a.boards);
    let started = Instant::now();
    let mut first = 0;
    let mut slices = Vec::new();
    let kept = a.boards - a.cut;
    while first < kept {
        let n = a.per_process.min(kept - first);
        slices.push((first, n));
        first += n;
    }
    if a.cut > 0 {
        slices.push((first, a.cut));
    }
    let mut ready_lines = Vec::new();
    for (first, count) in &slices {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", &boards.to_string_lossy(), &addr, token, &first.to_string(), &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("worker-{first}.log")))?)
            .spawn()?;
        ready_lines.push(BufReader::new(child.stdout.take().context("worker stdout")?));
        procs.0.push(child);
    }
    let cut_pid = (a.cut > 0).then(|| procs.0.last().map(Child::id)).flatten();
    let mut joined_in = Duration::ZERO;
    for r in &mut ready_lines {
        let mut line = String::new();
        r.read_line(&mut line)?;
        if !line.starts_with("joined") {
            let mut logs = String::new();
            for (first, _) in &slices {
                let log = std::fs::read_to_string(dir.join(format!("worker-{first}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().filter(|l| !l.starts_with(' ')).collect();
                logs.push_str(&tail[tail.len().saturating_sub(5)..].join("\n"));
            }
            bail!("a worker failed before its boards joined; its log ends:\n{logs}");
        }
        joined_in = joined_in.max(started.elapsed());
    }
    // Each poll is a `node ls` of every board (650 KB at 5,000): no more often than the
    // cores can spare beside the joins.
    let every = Duration::from_millis((a.boards as u64 / 5).max(500));
    poll("every board Ready", Duration::from_secs(120 + a.boards as u64 / 5), every, || {
        (board_states(&m).0 == a.boards).then_some(())
    })?;
    let all_ready = started.elapsed();
    eprintln!("== all {} boards Ready in {}", a.boards, ms(all_ready));
    let rss_joined = m.rss_kib();
    let downs_joining = downs(dir);
    let drops_joining = udp_drops();

    let distribution = match &a.image {
        Some(path) => distribute(&m, path, a.boards)?,
        None => String::new(),
    };

    // Tasks.
    eprintln!("== {} tasks in {} services", a.tasks, a.services);
    let (cpu0, bytes0) = (m.cpu(), lo_bytes());
    let started = Instant::now();
    for s in 0..a.services {
        let n = a.tasks / a.services + usize::from(s < a.tasks % a.services);
        let (name, n) = (format!("s{s}"), n.to_string());
        m.shoal(&["service", "create", "--detach", "--name", &name, "--replicas", &n, IMAGE])?;
    }
    let created = started.elapsed();
    let timeout = Duration::from_secs(120 + a.tasks as u64 / 200);
    let mut said = Instant::now();
    poll("every task Running", timeout, Duration::from_millis(250), || {
        let (run, want) = replicas(&m);
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            let (since, downs, drops) = (started.elapsed(), downs(dir) - downs_joining, udp_drops() - drops_joining);
            eprintln!("   {} s: {run}/{want} Running, {downs} Down so far, {drops} datagrams dropped", since.as_secs());
        }
        (run == a.tasks && want == a.tasks).then_some(())
    })?;
    let converged = started.elapsed();
    let converge_cpu = m.cpu() - cpu0;
    let converge_bytes = lo_bytes() - bytes0;
    let rss_converged = m.rss_kib();
    eprintln!("== converged in {}", ms(converged));

    let (nodes, node_ls) = timed(|| m.shoal(&["node", "ls"]));
    let node_rows = parse_node_ls(&nodes?).len();
    let (ps, service_ps) = timed(|| m.shoal(&["service", "ps", "s0"]));
    let ps_rows = ps?.lines().count().saturating_sub(1);
    let (_, service_ls) = timed(|| m.shoal(&["service", "ls"]));

    // Idle: nothing to do but heartbeats.
    eprintln!("== idle for {} s", a.idle);
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, bytes0, t0) = (m.cpu(), lo_bytes(), Instant::now());
    std::thread::sleep(Duration::from_secs(a.idle));
    let idle_wall = t0.elapsed();
    let idle_cpu = m.cpu() - cpu0;
    let idle_bytes = lo_bytes() - bytes0;
    let rss_idle = m.rss_kib();
    let downs_running = downs(dir) - downs_joining;
    let drops_running = udp_drops() - drops_joining;
    let (stalls, longest_stall) = worker_stalls(dir);

    // A power cut of `cut` boards at once.
    let mut cut_rows = String::new();
    if let Some(pid) = cut_pid {
        eprintln!("== cutting {} boards", a.cut);
        sh(&["kill", "-STOP", &pid.to_string()])?;
        let t0 = Instant::now();
        poll("the cut boards Down", Duration::from_secs(120), Duration::from_millis(100), || {
            (board_states(&m).1 >= a.cut).then_some(())
        })?;
        let down = t0.elapsed();
        poll("their tasks running elsewhere", Duration::from_secs(300), Duration::from_millis(250), || {
            let (run, want) = replicas(&m);
            (run == want && want == a.tasks).then_some(())
        })?;
        let rescheduled = t0.elapsed();
        let moved = a.tasks * a.cut / a.boards;
        cut_rows = format!(
            "| {} boards cut at once (≈{moved} tasks): all Down | {} |\n\
             | … and all {} tasks Running again | {} |\n",
            a.cut,
            ms(down),
            a.tasks,
            ms(rescheduled)
        );
    }

    let per_board_idle = idle_bytes as f64 / a.boards as f64 / idle_wall.as_secs_f64();
    let heartbeat = a.heartbeat.clone().unwrap_or_else(|| "the default".to_owned());
    Ok(format!(
        "| What (manager: one process; boards: {} workers; heartbeat period {heartbeat}) | Measured |\n\
         |---|---|\n\
         | {} boards joined (token, CSR, certificate) and Ready | {} (joins done in {}) |\n\
         | {} tasks in {} services: created (`service create` × {}) | {} |\n\
         | … all reported Running (converged) | {} |\n\
         | manager CPU while converging | {} of a core ({} over {}) |\n\
         | bytes on the wire while converging, per board | {:.1} KiB |\n\
         | `node ls` ({node_rows} rows) | {} |\n\
         | `service ps s0` ({ps_rows} rows) | {} |\n\
         | `service ls` | {} |\n\
         | manager RSS: empty / {} boards joined / converged / idle after | {} / {} / {} / {} |\n\
         | manager CPU at idle ({} s) | {} of a core |\n\
         | bytes on the wire at idle, per board (both ways) | {per_board_idle:.0} B/s |\n\
         | boards marked Down by mistake: while joining / from the tasks to the end of idle | {downs_joining} / {downs_running} |\n\
         | UDP datagrams dropped by the kernel (a receive buffer full): while joining / from the tasks to the end of idle | {drops_joining} / {drops_running} |\n\
         | the simulator's own stalls: a worker's thread over 300 ms late (its boards' beats late too) | {stalls}, longest {} |\n\
         {cut_rows}{distribution}",
        slices.len(),
        a.boards,
        ms(all_ready),
        ms(joined_in),
        a.tasks,
        a.services,
        a.services,
        ms(created),
        ms(converged),
        share(converge_cpu, converged),
        ms(converge_cpu),
        ms(converged),
        converge_bytes as f64 / 1024.0 / a.boards as f64,
        ms(node_ls),
        ms(service_ps),
        ms(service_ls),
        a.boards,
        mib(rss_empty),
        mib(rss_joined),
        mib(rss_converged),
        mib(rss_idle),
        a.idle,
        share(idle_cpu, idle_wall),
        ms(longest_stall),
    ))
}

/// Loads `archive` into the manager and waits until every board holds it: the
/// manager's RSS before, once all hold it, and 10 s later.
fn distribute(m: &Manager, archive: &Path, boards: usize) -> Result<String> {
    let size = std::fs::metadata(archive).with_context(|| format!("cannot read {}", archive.display()))?.len();
    eprintln!("== every board fetches {}", archive.display());
    let before = m.rss_kib();
    let started = Instant::now();
    m.shoal(&["image", "load", &archive.to_string_lossy()])?;
    poll("every board to hold the image", Duration::from_secs(600), Duration::from_millis(500), || {
        let ls = m.shoal(&["image", "ls"]).ok()?;
        let holders = ls.lines().filter(|l| !l.starts_with("fleet/tiny")).map(|l| l.matches("sim").count()).max();
        (holders == Some(boards)).then_some(())
    })?;
    let took = started.elapsed();
    let (after, peak) = (m.rss_kib(), status_kib(m.pid, "VmHWM:"));
    std::thread::sleep(Duration::from_secs(10));
    let later = m.rss_kib();
    Ok(format!(
        "| {} MB image fetched by all {boards} boards | {} |\n\
         | manager RSS: before / peak / all hold it / 10 s later | {} / {} / {} / {} |\n",
        size / 1_000_000,
        ms(took),
        mib(before),
        mib(peak),
        mib(after),
        mib(later)
    ))
}

/// A worker: joins boards `first..first + count` and runs them until killed. Prints
/// `joined N` once every board of its slice has joined.
fn worker(args: Vec<String>) -> Result<()> {
    let [dir, addr, token, first, count] = &args[..] else {
        bail!("usage: fleet-bench --worker DIR MANAGER TOKEN FIRST COUNT");
    };
    let (dir, first, count) = (PathBuf::from(dir), first.parse::<usize>()?, count.parse::<usize>()?);
    shoal_link::logging::init("warn,quinn=error", false);
    // One thread, as the agent: the workers are the parallelism.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let manager: std::net::SocketAddr = addr.parse()?;
        let endpoints: Vec<quinn::Endpoint> =
            (0..count.div_ceil(PER_ENDPOINT)).map(|_| board_endpoint(manager)).collect::<Result<_>>()?;
        let slots = Arc::new(tokio::sync::Semaphore::new(JOINING));
        let mut joins = tokio::task::JoinSet::new();
        for i in first..first + count {
            let (dir, addr, token, slots) = (dir.join(format!("b{i}")), addr.clone(), token.clone(), slots.clone());
            let endpoint = endpoints[(i - first) / PER_ENDPOINT].clone();
            joins.spawn(async move {
                let permit = slots.acquire_owned().await;
                let hostname = format!("sim{i:05}");
                let identity = join(&dir, &addr, &token, &hostname).await?;
                drop(permit);
                start_board(dir, identity, hostname, endpoint).await
            });
        }
        let mut boards = Vec::new();
        while let Some(j) = joins.join_next().await {
            boards.push(j?.context("a board could not join")?);
        }
        println!("joined {count}");
        tokio::spawn(report_stalls());
        // The boards run in their own tasks; this one only keeps them alive.
        std::future::pending::<()>().await;
        drop(boards);
        Ok(())
    })
}

/// Says on the worker's log how late its thread ran a 100 ms timer, at worst, in each
/// 5 s that had a stall over 300 ms: a worker whose thread is busy (preparing a burst of
/// tasks for its boards) sends their beats late, which the manager rightly calls silence.
/// Real boards each have their own cores; this tells the simulation's stalls from the
/// manager's.
async fn report_stalls() {
    let started = Instant::now();
    let mut window = Instant::now();
    let mut worst = Duration::ZERO;
    loop {
        let before = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        worst = worst.max(before.elapsed().saturating_sub(Duration::from_millis(100)));
        if window.elapsed() >= Duration::from_secs(5) {
            if worst >= Duration::from_millis(300) {
                eprintln!("stall: the worker's thread ran {} late at {} s", ms(worst), started.elapsed().as_secs());
            }
            (window, worst) = (Instant::now(), Duration::ZERO);
        }
    }
}

/// A QUIC endpoint that [`PER_ENDPOINT`] boards share, as `shoal_link::client_endpoint`
/// makes an agent's, but with a receive buffer as large as the system allows: a real
/// board has a socket (and a link) to itself, and 250 boards behind the kernel's default
/// ~200 KiB lost ~1,000 datagrams each time the manager told all of them something.
fn board_endpoint(manager: std::net::SocketAddr) -> Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(shoal_link::any_local_for(manager))?;
    // Capped by `net.core.rmem_max`; whatever is granted beats the default.
    socket2::SockRef::from(&socket).set_recv_buffer_size(16 << 20)?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?)
}

async fn join(dir: &Path, addr: &str, token: &str, hostname: &str) -> Result<NodeIdentity> {
    let saved = NodeIdentity::unjoined(Some(hostname.to_owned()), None, Vec::new());
    let description = shoal_agent::host::describe(hostname, None, &[]);
    // A refused or lost join is retried: a busy manager may drop a handshake.
    let mut last = None;
    for _ in 0..30 {
        match session::join(dir, addr, token, description.clone(), saved.clone(), true).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("join failed")))
}

/// One board: its image store, a supervisor on the fake runtime and bridge, and its
/// session on the shared `endpoint`.
async fn start_board(
    dir: PathBuf,
    identity: NodeIdentity,
    hostname: String,
    endpoint: quinn::Endpoint,
) -> Result<tokio::task::JoinHandle<()>> {
    let store: Arc<ImageStore> = session::open_images(&dir)?;
    let mut config = SupervisorConfig::new(dir.clone());
    // The fake runtime's containers never exit by themselves: a slower poll is plenty
    // (it also retries tasks waiting for an image), and 5,000 boards polling 4 times a
    // second would eat the cores the manager needs.
    config.poll = Duration::from_secs(1);
    let supervisor = Supervisor::start(
        config,
        Arc::new(FakeRuntime::default()),
        Arc::new(FakeNetwork::new(BridgeConfig::default())),
        PortPublisher::new(),
        store.clone(),
    )
    .await?;
    let description = shoal_agent::host::describe(&hostname, None, &[]);
    Ok(tokio::spawn(async move {
        let embedding = Embedding { endpoint: Some(endpoint), networks: None };
        let pending = std::future::pending::<()>();
        if let Err(e) =
            session::run_embedded(&dir, &identity, description, store, &supervisor, embedding, pending).await
        {
            eprintln!("board {hostname} stopped: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed_and_bad_ones_refused() {
        let a = parse_args(["--boards", "500", "--tasks", "5000", "--cut", "50"].map(String::from).into_iter())
            .expect("parse");
        assert_eq!((a.boards, a.tasks, a.cut), (500, 5000, 50));
        let e = parse_args(["--boards", "x"].map(String::from).into_iter()).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
        let e = parse_args(["--boards", "10", "--cut", "10"].map(String::from).into_iter()).unwrap_err();
        assert!(e.to_string().contains("must leave"), "{e}");
        let e = parse_args(["--frobnicate"].map(String::from).into_iter()).unwrap_err();
        assert!(e.to_string().contains("unknown option"), "{e}");
    }
}
