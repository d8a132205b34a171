//! The agent's own cost per board, on one board in a network namespace (as root):
//! - its memory (RSS, its anonymous part, and PSS from `smaps_rollup`) joined and idle, with 100 tasks of
//!   `demo/app:1.0` running, and after the service is removed (it should come back to
//!   the idle figure: nothing kept per task), twice: a second round that adds nothing
//!   says the first one's rise is the allocator's high-water mark, not memory kept;
//! - its wakeups per second, idle and with the 100 tasks running: the context switches
//!   of all its threads (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` in
//!   `/proc/PID/task/*/status`) over a quiet window. Each switch away from the agent is
//!   one sleep that ended in a wakeup, so this counts timers and polls as a board's CPU
//!   (and its battery) sees them.
//!
//! Prints a Markdown section on stdout. Needs `cargo build --bins` and `images/build.sh`
//! first (`bench/run.sh` does both). `SHOAL_BIN_DIR` picks the binaries (the static agent
//! can be put beside a release `shoal`).
//!
//! Usage: agent-bench [TASKS] [WINDOW_SECS] [ROUNDS]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_e2e::{lab_image, wait_for, Cluster};

/// (RSS, PSS) in KiB.
fn mem_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`, …), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Context switches of each thread of `pid` so far, by thread ID.
fn switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Default::default() };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("status")).ok()?;
            let n = s
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((t.file_name().to_string_lossy().into_owned(), n))
        })
        .collect()
}

/// Waits (up to 30 s) until the agent's thread count stops falling: tokio's blocking
/// pool ends its idle threads after 10 s, and a window must not straddle that.
fn settle(pid: u32) {
    let t = Instant::now();
    let mut last = threads(pid);
    while t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(2));
        let now = threads(pid);
        if now == 1 || (now == last && t.elapsed() > Duration::from_secs(12)) {
            return;
        }
        last = now;
    }
}

/// CPU time of `pid` so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Wakeups per second of `pid` over `window`, and the share of a core it used (%).
fn wakeups(pid: u32, window: Duration) -> (f64, f64) {
    settle(pid);
    let (a, cpu, t) = (switches(pid), cpu_ticks(pid), Instant::now());
    std::thread::sleep(window);
    let (b, cpu2) = (switches(pid), cpu_ticks(pid));
    let secs = t.elapsed().as_secs_f64();
    // Per thread: one that ended in the window counts what it did until its last read.
    let n: u64 = b.iter().map(|(tid, n)| n.saturating_sub(a.get(tid).copied().unwrap_or(0))).sum();
    // USER_HZ is 100 on every Linux this runs on.
    (n as f64 / secs, cpu2.saturating_sub(cpu) as f64 / secs)
}

/// The board's containers on disk (the cgroups would count other agents' on this host).
fn containers_left(c: &Cluster) -> usize {
    std::fs::read_dir(c.lab.hosts[1].data_dir.join("agent/containers")).map(|d| d.count()).unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

fn row(what: &str, pid: u32, (per_s, cpu): (f64, f64)) -> String {
    let (rss, pss) = mem_kib(pid);
    let anon = status_kib(pid, "RssAnon:");
    format!("| {what} | {rss} KiB | {anon} KiB | {pss} KiB | {per_s:.1} | {cpu:.1} % | {} |", threads(pid))
}

fn main() -> Result<()> {
    shoal_e2e::require_root();
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let window = Duration::from_secs(std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(10));
    let rounds: usize = std::env::args().nth(3).and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let c = Cluster::start(1)?;
    let m = c.manager_host();
    let pid = c.agents[0].pid().context("the agent runs")?;
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap_or_default()]);
    let idle_wakeups = wakeups(pid, window);
    let idle = row("joined, idle (image loaded, no task)", pid, idle_wakeups);

    // Twice: what a second round adds on top of the first tells memory kept per task
    // (it grows again) from the allocator's high-water mark (it is reused).
    let mut rows = vec![idle];
    let mut timings = Vec::new();
    for round in 1..=rounds {
        let name = format!("many{round}");
        let t = Instant::now();
        m.shoal(&["service", "create", "--name", &name, "--replicas", &n.to_string(), "--detach", "demo/app:1.0"]);
        wait_for(&format!("{n} tasks running"), Duration::from_secs(300), || {
            // Replicas, not rows: a board marked Down under the load leaves old rows behind.
            (c.replicas(&name) == format!("{n}/{n}")).then_some(())
        });
        let started = t.elapsed();
        rows.push(row(&format!("{n} tasks running (round {round})"), pid, wakeups(pid, window)));
        let t = Instant::now();
        m.shoal(&["service", "rm", &name]);
        wait_for("every container gone", Duration::from_secs(300), || {
            (m.shoal(&["service", "ls"]).lines().count() <= 1 && containers_left(&c) == 0).then_some(())
        });
        timings.push((started, t.elapsed()));
        rows.push(row(&format!("after `service rm` of the {n} (round {round})"), pid, wakeups(pid, window)));
    }
    let (started, removed) = timings[0];

    println!("### The agent per board: memory and wakeups (one board)\n");
    println!("| agent | RSS | of it anonymous (heap, stacks) | PSS | wakeups/s | CPU | threads |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", rows.join("\n"));
    println!(
        "\n{n} tasks (round 1): created → all Running in {:.1} s, `service rm` → all gone in {:.1} s; \
         wakeups counted over {} s (context switches of all the agent's threads).",
        started.as_secs_f64(),
        removed.as_secs_f64(),
        window.as_secs()
    );
    Ok(())
}
