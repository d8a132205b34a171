//! QEMU boards (issue 12): a real Debian arm64 kernel under `qemu-system-aarch64 -M virt
//! -cpu cortex-a53` (software emulation) as a board of a mixed fleet, beside two
//! namespace boards on the same bridge (`scripts/qemu-board.sh`, `Lab::qemu_board`). One
//! cluster for every check: the board joins and shows arch aarch64; a service
//! constrained to `node.arch==aarch64` runs there only, on the arm64 variant of
//! demo/app (the guest's kernel runs no other), and its host-mode port answers from the
//! host; it takes a rolling update; powering the VM off marks it Down within 3 s and a
//! service without the constraint moves its task to the other boards.
//!
//! Needs the static aarch64 agent (`scripts/build-agents.sh`, or its `--check` build);
//! the kernel, busybox and QEMU are fetched and cached in out/qemu/ by the script.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, running_containers, wait_for, Cluster, Lab};

/// The body of `GET path` from `ip:port`, if it answers 200.
fn get(ip: &str, port: u16, path: &str) -> Option<String> {
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_owned())
}

/// Nodes of the tasks of `service` the manager wants running that run `image`.
fn running_on(c: &Cluster, service: &str, image: &str) -> Vec<String> {
    c.service_ps(service)
        .into_iter()
        .filter(|r| r["DESIRED STATE"] == "Running" && r["IMAGE"] == image && r["CURRENT STATE"].starts_with("Running"))
        .map(|r| r["NODE"].clone())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn qemu_aarch64_board_joins_runs_its_variant_updates_and_fails_over() {
    let start = Instant::now();
    // 800 ms heartbeats: a board under emulation on a busy machine can miss a 500 ms
    // one while it sets up (three missed would mark it Down); three missed 800 ms ones
    // still mark a dead board Down within 2.4 s.
    let c = Cluster::start_in_with(Lab::new(3).unwrap(), &["--heartbeat-period", "800ms"]).unwrap();
    let m = c.manager_host();
    for image in ["demo-app-1.0.tar", "demo-app-3.0.tar"] {
        m.shoal(&["image", "load", lab_image(image).to_str().unwrap()]);
    }

    // Boot → Ready.
    let boot = Instant::now();
    let mut arm = c.lab.qemu_board("aarch64", 0, "arm1", &c.token).unwrap();
    let row = wait_for("the QEMU board to join and be Ready", Duration::from_secs(150), || {
        if let Some(code) = arm.qemu.wait_exit(Duration::ZERO) {
            panic!("QEMU exited ({code}) before the board joined; its console:\n{}", arm.console());
        }
        c.nodes().into_iter().find(|n| n.hostname == "arm1" && n.status == "Ready")
    });
    let to_ready = boot.elapsed();
    assert_eq!(row.arch, "aarch64", "{row:?}");
    // The guest's own uptime when its init had the network up (kernel and init alone).
    let console = arm.console();
    let kernel_up = console.lines().find_map(|l| l.strip_prefix("shoal-board: up after ")).unwrap_or("?").to_owned();
    let rows = c.nodes();
    assert_eq!(rows.iter().filter(|n| n.arch == "x86_64" && n.status == "Ready").count(), 3, "{rows:?}");

    // Constrained to aarch64: lands on the QEMU board only, and answers from the host.
    let created = Instant::now();
    let publish = "mode=host,target=8000,published=8000";
    m.shoal(&[
        "service",
        "create",
        "--name",
        "armweb",
        "--constraint",
        "node.arch==aarch64",
        "--publish",
        publish,
        "-d",
        "demo/app:1.0",
    ]);
    let version =
        wait_for("armweb 1.0 to answer on the QEMU board", Duration::from_secs(60), || get(&arm.ip, 8000, "/version"));
    let to_answering = created.elapsed();
    assert_eq!(version, "1.0");
    assert_eq!(running_on(&c, "armweb", "demo/app:1.0"), ["arm1"]);
    // Nothing of it on the namespace boards (their containers are this machine's).
    assert_eq!(running_containers("armweb"), 0);

    // A rolling update on the board.
    let updated = Instant::now();
    m.shoal(&["service", "update", "--image", "demo/app:3.0", "-d", "armweb"]);
    wait_for("armweb 3.0 to answer", Duration::from_secs(60), || {
        (get(&arm.ip, 8000, "/version").as_deref() == Some("3.0")).then_some(())
    });
    wait_for("armweb's task to be Running 3.0 on arm1", Duration::from_secs(20), || {
        (running_on(&c, "armweb", "demo/app:3.0") == ["arm1"]).then_some(())
    });
    let to_updated = updated.elapsed();

    // Without the constraint: one task on each of the three boards.
    m.shoal(&["service", "create", "--name", "spread", "--replicas", "3", "-d", "demo/app:1.0"]);
    wait_for("spread on all three boards", Duration::from_secs(60), || {
        let mut nodes = running_on(&c, "spread", "demo/app:1.0");
        nodes.sort();
        (nodes == ["arm1", "node1", "node2"]).then_some(())
    });

    // Power off: Down within 3 s, and its spread task moves to the namespace boards.
    arm.power_off();
    let off = Instant::now();
    c.wait_status("arm1", "Down", Duration::from_secs(10));
    let to_down = off.elapsed();
    assert!(to_down < Duration::from_secs(3), "the QEMU board took {to_down:?} to be marked Down");
    wait_for("spread's third task to run on a namespace board", Duration::from_secs(30), || {
        let nodes = running_on(&c, "spread", "demo/app:1.0");
        (nodes.len() == 3 && nodes.iter().all(|n| n != "arm1")).then_some(())
    });
    let to_moved = off.elapsed();
    eprintln!(
        "qemu aarch64 board: boot → Ready {to_ready:.1?} (kernel and init: {kernel_up}), service create → answering {to_answering:.1?}, \
         update → 3.0 running {to_updated:.1?}, power off → Down {to_down:.1?}, → task moved {to_moved:.1?}; \
         whole test {:.1?}",
        start.elapsed()
    );
}
