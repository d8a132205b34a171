//! Cluster timings on real processes and containers (as root), three boards in network
//! namespaces: `service create --replicas 6` → 6/6 running; drain → every task running
//! elsewhere; a board's power cut → Down → its tasks running elsewhere. And the
//! scheduler alone: placements per second on 5,000 nodes and 100,000 tasks. Docker
//! Swarm's figures for the same steps on 3 nodes, measured by `bench/swarm.sh cluster`
//! in the same run, come in as `SWARM_*` variables. Prints a Markdown section on stdout. Needs `cargo build --bins` and `images/build.sh` first
//! (`bench/run.sh` does both).

mod swarm_env;

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_e2e::{lab_image, wait_for, Cluster};
use shoal_manager::core::placement::ClusterNode;
use shoal_manager::core::scheduler::{schedule, Decision};
use shoal_proto::{
    Availability, BoundedVec, NodeId, NodeStatus, Resources, Role, ServiceId, ServiceSpec, Task, TaskId, TaskState,
    TaskStatus,
};

fn all_running_off(c: &Cluster, service: &str, n: usize, off: Option<&str>) -> Option<()> {
    let rows: Vec<_> = c.service_ps(service).into_iter().filter(|r| r["DESIRED STATE"] == "Running").collect();
    let ok = rows.len() == n
        && rows.iter().all(|r| r["CURRENT STATE"].starts_with("Running"))
        && off.is_none_or(|node| rows.iter().all(|r| r["NODE"] != node));
    ok.then_some(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn scheduler_rate() -> (Duration, usize) {
    let nodes: Vec<ClusterNode> = (0..5000u32)
        .map(|i| {
            let mut seed = [7u8; 16];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            ClusterNode {
                id: NodeId::from_random(seed),
                hostname: shoal_proto::text_lossy(&format!("n{i}")),
                role: Role::Worker,
                arch: shoal_proto::text_lossy("x86_64"),
                os: shoal_proto::text_lossy("linux"),
                labels: BoundedVec::new(),
                engine_labels: BoundedVec::new(),
                availability: Availability::Active,
                status: NodeStatus::Ready,
                resources: Resources { cpus: 4, memory_bytes: 4 << 30 },
                disk_full: false,
                devices: Default::default(),
            }
        })
        .collect();
    let mut tasks = Vec::new();
    for service in 0..200u8 {
        let spec =
            ServiceSpec::new(shoal_proto::text_lossy(&format!("s{service}")), shoal_proto::text_lossy("demo/app:1.0"));
        for n in 0..500u32 {
            let mut seed = [service; 16];
            seed[..4].copy_from_slice(&n.to_le_bytes());
            tasks.push(Task {
                id: TaskId::from_random(seed),
                service_id: ServiceId::from_random([service; 16]),
                slot: n + 1,
                node_id: None,
                spec: spec.task_spec(),
                spec_version: 1,
                desired_state: TaskState::Running,
                status: TaskStatus::new(TaskState::Pending, 0, "pending"),
                created_at_ms: 0,
                networks: Default::default(),
            });
        }
    }
    let pending: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    let started = Instant::now();
    let decisions = schedule(&nodes, &tasks, &pending);
    let took = started.elapsed();
    (took, decisions.iter().filter(|d| matches!(d, Decision::Assign { .. })).count())
}

fn main() -> Result<()> {
    let (took, placed) = scheduler_rate();

    let mut c = Cluster::start(3)?;
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap_or_default()]);
    wait_for("the image on every board", Duration::from_secs(60), || {
        m.shoal(&["image", "ls"]).contains("node1,node2,node3").then_some(())
    });

    let t = Instant::now();
    m.shoal(&["service", "create", "--name", "web", "--replicas", "6", "--detach", "demo/app:1.0"]);
    wait_for("6/6", Duration::from_secs(60), || all_running_off(&c, "web", 6, None));
    let create = t.elapsed();

    // Bytes on each link while idle with the 6 tasks running, as `bench/swarm.sh cluster`
    // measures Swarm's.
    let idle_s: u64 = std::env::var("SHOAL_BENCH_IDLE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    std::thread::sleep(Duration::from_secs(5));
    let before: Vec<u64> = c.lab.hosts.iter().map(|h| h.link_bytes()).collect();
    std::thread::sleep(Duration::from_secs(idle_s));
    let idle: Vec<u64> = c.lab.hosts.iter().zip(&before).map(|(h, b)| (h.link_bytes() - b) / idle_s).collect();
    let idle_board = idle[1..].iter().sum::<u64>() / (idle.len() as u64 - 1);

    let t = Instant::now();
    m.shoal(&["node", "update", "--availability", "drain", "node2"]);
    wait_for("drained", Duration::from_secs(60), || all_running_off(&c, "web", 6, Some("node2")));
    let drain = t.elapsed();
    m.shoal(&["node", "update", "--availability", "active", "node2"]);

    let t = Instant::now();
    // A power cut: the cable goes first (no dying kernel answers), then every process.
    c.lab.hosts[3].cut_link();
    c.power_cut(3);
    let down = c.wait_status("node3", "Down", Duration::from_secs(20));
    let after_down = Instant::now();
    wait_for("failed over", Duration::from_secs(60), || all_running_off(&c, "web", 6, Some("node3")));
    let failover = t.elapsed();
    let running_after_down = after_down.elapsed();

    let swarm_after_down = match (swarm_env::figure("FAILOVER_MS"), swarm_env::figure("DOWN_MS")) {
        (Some(f), Some(d)) => format!("{} ms", f.saturating_sub(d)),
        _ => "not measured".to_owned(),
    };
    let swarm_bps =
        |key: &str| swarm_env::figure(key).map_or_else(|| "not measured".to_owned(), |b| format!("{b} B/s"));
    println!("### Cluster (3 boards in network namespaces, real containers of demo/app:1.0)\n");
    println!("| what | shoal, 3 boards + a manager | {}, 3 nodes, same run |", swarm_env::peer());
    println!("|---|---|---|");
    println!("| `service create --replicas 6` → 6/6 running | {} | {} |", ms(create), swarm_env::ms("CREATE"));
    println!(
        "| idle, 6 tasks running: bytes on a board's (worker's) link | {idle_board} B/s | {} |",
        swarm_bps("IDLE_WORKER_BPS")
    );
    println!("| idle: bytes on the manager's link | {} B/s | {} |", idle[0], swarm_bps("IDLE_MANAGER_BPS"));
    println!(
        "| `node update --availability drain` → all 6 running elsewhere | {} | {} |",
        ms(drain),
        swarm_env::ms("DRAIN")
    );
    println!("| power cut of a board → marked Down | {} | {} |", ms(down), swarm_env::ms("DOWN"));
    println!("| … Down → its tasks running elsewhere | {} | {swarm_after_down} |", ms(running_after_down));
    println!("| power cut → 6/6 running again | {} | {} |", ms(failover), swarm_env::ms("FAILOVER"));
    println!(
        "\nSwarm's manager also runs tasks (its node is one of the 3); shoal's manager runs none, so its \
         link carries only the boards' sessions. A power cut is the link going down, then every process \
         of the board killed, on both."
    );
    println!("\n### Scheduler alone (release build)\n");
    println!(
        "5,000 nodes, 100,000 pending tasks (200 services): {placed} placed in {} — {:.0} placements/s.",
        ms(took),
        placed as f64 / took.as_secs_f64()
    );
    Ok(())
}
