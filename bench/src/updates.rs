//! Rolling-update timings on real processes and containers (as root), on three boards and
//! on one board in network namespaces: 6 replicas of demo/app:1.0 rolled to 3.0 with
//! parallelism 2 and no delay (until every task runs 3.0, and until the update reports
//! `completed` after Swarm's default 5 s monitor period), and a rollout of the failing
//! demo/app:2.0 until it reports `paused`. Docker Swarm's figures for the same steps,
//! measured by `bench/swarm.sh` in the same run, come in as `SWARM_*` variables. Prints a
//! Markdown section on stdout. Needs `cargo build --bins` and `images/build.sh` first
//! (`bench/run.sh` does all of it).

mod swarm_env;

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_e2e::{lab_image, wait_for, Cluster};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Whether the `n` tasks the manager wants running all run `image`.
fn all_on(c: &Cluster, service: &str, image: &str, n: usize) -> Option<()> {
    let rows: Vec<_> = c.service_ps(service).into_iter().filter(|r| r["DESIRED STATE"] == "Running").collect();
    let ok = rows.len() == n && rows.iter().all(|r| r["IMAGE"] == image && r["CURRENT STATE"].starts_with("Running"));
    ok.then_some(())
}

fn update_state(c: &Cluster, service: &str) -> String {
    let out = c.manager_host().shoal(&["service", "inspect", "-f", "{{.UpdateStatus.State}}", service]);
    out.trim().to_owned()
}

/// Timings of one cluster of `boards` boards.
struct Timings {
    rolled: Duration,
    completed: Duration,
    paused: Duration,
}

fn measure(boards: usize) -> Result<Timings> {
    let c = Cluster::start(boards)?;
    let m = c.manager_host();
    for image in ["demo-app-1.0.tar", "demo-app-2.0.tar", "demo-app-3.0.tar"] {
        m.shoal(&["image", "load", lab_image(image).to_str().unwrap_or_default()]);
    }
    let everywhere = (1..=boards).map(|n| format!("node{n}")).collect::<Vec<_>>().join(",");
    wait_for("the images on every board", Duration::from_secs(60), || {
        let ls = m.shoal(&["image", "ls"]);
        (ls.lines().filter(|l| l.trim_end().ends_with(&everywhere)).count() == 3).then_some(())
    });
    m.shoal(&["service", "create", "--name", "web", "--replicas", "6", "demo/app:1.0"]);
    wait_for("6 × 1.0", Duration::from_secs(60), || all_on(&c, "web", "demo/app:1.0", 6));

    let t = Instant::now();
    let roll = ["service", "update", "--image", "demo/app:3.0", "--update-parallelism", "2", "--update-delay", "0s"];
    m.shoal(&[&roll[..], &["-d", "web"]].concat());
    wait_for("6 × 3.0", Duration::from_secs(120), || all_on(&c, "web", "demo/app:3.0", 6));
    let rolled = t.elapsed();
    wait_for("completed", Duration::from_secs(60), || (update_state(&c, "web") == "completed").then_some(()));
    let completed = t.elapsed();

    let t = Instant::now();
    m.shoal(&["service", "update", "--image", "demo/app:2.0", "--update-failure-action", "pause", "-d", "web"]);
    wait_for("paused", Duration::from_secs(120), || (update_state(&c, "web") == "paused").then_some(()));
    let paused = t.elapsed();
    Ok(Timings { rolled, completed, paused })
}

fn main() -> Result<()> {
    let three = measure(3)?;
    let one = measure(1)?;
    let peer = swarm_env::peer();

    println!("### Rolling updates (boards in network namespaces, 6 real containers of demo/app)\n");
    println!("| what | shoal, 3 boards | shoal, 1 board | {peer}, 1 node, same run |");
    println!("|---|---|---|---|");
    println!(
        "| 6 replicas 1.0 → 3.0, `--update-parallelism 2 --update-delay 0s`: every task runs 3.0 | {} | {} | {} |",
        ms(three.rolled),
        ms(one.rolled),
        swarm_env::ms("ROLLED")
    );
    println!(
        "| … until `UpdateStatus` says `completed` (includes the default 5 s monitor period) | {} | {} | {} |",
        ms(three.completed),
        ms(one.completed),
        swarm_env::ms("COMPLETED")
    );
    println!(
        "| update to the failing 2.0 (exits 1 after ~1 s) → `paused` | {} | {} | {} |",
        ms(three.paused),
        ms(one.paused),
        swarm_env::ms("PAUSED")
    );
    Ok(())
}
