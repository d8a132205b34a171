//! `service logs` throughput and the agent's memory while it streams, on one board in a
//! network namespace (as root): one noisy task (`seq` as fast as it goes, every line
//! through the shim into the rotated log), then
//! - `service logs -f --tail 0`: lines per second reaching the CLI for 10 s, against the
//!   lines the task wrote in the same time (from its numbers: a writer faster than the
//!   stream rotates lines away before they are read);
//! - `service logs` of the whole kept log (up to 3 MiB): lines per second of a read that
//!   the writer does not pace;
//! - the agent's RSS idle with the task running, and its peak while streaming.
//!
//! Prints a Markdown section on stdout. Needs `cargo build --bins` and `images/build.sh`
//! first (`bench/run.sh` does all of it).

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_e2e::{lab_image, wait_for, Cluster};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
fn main() -> Result<()> {
    shoal_e2e::require_root();
    let c = Cluster::start(1)?;
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap_or_default()]);
    m.shoal(&["service", "create", "--name", "noisy", "demo/app:1.0", "seq", "1", "100000000"]);
    wait_for("the noisy task running", Duration::from_secs(60), || {
        c.service_ps("noisy").iter().any(|r| r["CURRENT STATE"].starts_with("Running")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let idle = c.agents[0].rss().unwrap_or(0);

    // Following: what arrives in 10 s, against what was written meanwhile.
    let follow_for = Duration::from_secs(10);
    let mut follow = m.spawn("shoal", &["service", "logs", "-f", "--tail", "0", "noisy"]);
    let t = Instant::now();
    let mut peak = idle;
    while t.elapsed() < follow_for {
        peak = peak.max(c.agents[0].rss().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    follow.stop();
    // The task numbers its lines: the first and last received say how far it got.
    let numbers: Vec<u64> =
        follow.output().lines().filter_map(|l| l.rsplit("| ").next()?.trim().parse().ok()).collect();
    let secs = follow_for.as_secs_f64();
    let follow_rate = numbers.len() as f64 / secs;
    let write_rate = match (numbers.first(), numbers.last()) {
        (Some(a), Some(b)) => b.saturating_sub(*a) as f64 / secs,
        _ => 0.0,
    };

    // A whole read of the kept log, not paced by the writer.
    let t = Instant::now();
    let out = m.run("shoal", &["service", "logs", "noisy"]);
    let took = t.elapsed().as_secs_f64();
    let lines = String::from_utf8_lossy(&out.stdout).lines().count() as f64;
    peak = peak.max(c.agents[0].rss().unwrap_or(0));

    println!("## service logs");
    println!();
    println!("One board, one task writing `seq` as fast as the shim takes it (every line stamped");
    println!("and appended to the rotated log), the CLI on the manager's host (`bench/src/logs.rs`).");
    println!();
    println!("| | |");
    println!("|---|---|");
    println!("| lines written by the task | {write_rate:.0} lines/s |");
    println!("| `service logs -f` (10 s) | {follow_rate:.0} lines/s |");
    println!("| `service logs` of the kept log ({lines:.0} lines) | {:.0} lines/s |", lines / took);
    println!("| agent RSS, idle with the task running | {} |", mib(idle));
    println!("| agent RSS, peak while streaming | {} |", mib(peak));
    m.shoal(&["service", "rm", "noisy"]);
    Ok(())
}
