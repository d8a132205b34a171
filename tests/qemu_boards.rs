//! QEMU boards (issue 12): Debian's real arm64 kernel under `qemu-system-aarch64 -M virt
//! -cpu cortex-a53` and its armmp kernel under `qemu-system-arm -M virt,highmem=off -cpu
//! cortex-a15` (software emulation), as boards of a mixed fleet beside two namespace
//! boards on the same bridge (`scripts/qemu-board.sh`, `Lab::qemu_board`). One cluster
//! for every check: the VMs join and show arch aarch64 and arm; a service constrained
//! to each arch runs there only, on the image's variant for it (the guests' kernels run
//! no other), and its host-mode port answers from the host; the aarch64 one takes a
//! rolling update; powering the aarch64 VM off marks it Down within 3 s and a service
//! without a constraint moves its task to another board.
//!
//! Needs the static aarch64 and armv7 agents (`scripts/build-agents.sh`, or its
//! `--check` builds); the kernels, busybox and QEMU are fetched and cached in out/qemu/
//! by the script.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, running_containers, wait_for, Cluster, Lab, QemuBoard};

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
fn qemu_arm_boards_join_run_their_variants_update_and_fail_over() {
    let start = Instant::now();
    // 700 ms heartbeats: a board under emulation on a busy machine can miss three
    // 500 ms ones in a row while it sets up, and be marked Down for a moment; three
    // missed 700 ms ones still mark a dead board Down within 2.1 s.
    let c = Cluster::start_in_with(Lab::new(3).unwrap(), &["--heartbeat-period", "700ms"]).unwrap();
    let m = c.manager_host();
    for image in ["demo-app-1.0.tar", "demo-app-3.0.tar"] {
        m.shoal(&["image", "load", lab_image(image).to_str().unwrap()]);
    }

    // Boot → Ready: both VMs at once.
    let boot = Instant::now();
    let mut arm = c.lab.qemu_board("aarch64", 0, "arm1", &c.token).unwrap();
    let mut armv7 = c.lab.qemu_board("armv7", 1, "armv7", &c.token).unwrap();
    let mut ready = [None, None];
    wait_for("both QEMU boards to join and be Ready", Duration::from_secs(180), || {
        for (i, board) in [&mut arm, &mut armv7].into_iter().enumerate() {
            if let Some(code) = board.qemu.wait_exit(Duration::ZERO) {
                panic!(
                    "QEMU of {} exited ({code}) before it joined; its console:\n{}",
                    board.hostname,
                    board.console()
                );
            }
            if ready[i].is_none() && c.nodes().iter().any(|n| n.hostname == board.hostname && n.status == "Ready") {
                ready[i] = Some(boot.elapsed());
            }
        }
        ready.iter().all(Option::is_some).then_some(())
    });
    let [Some(to_ready), Some(to_ready_v7)] = ready else { unreachable!() };
    let rows = c.nodes();
    let arch = |host: &str| rows.iter().find(|n| n.hostname == host).map(|n| n.arch.clone()).unwrap_or_default();
    assert_eq!((arch("arm1").as_str(), arch("armv7").as_str()), ("aarch64", "arm"), "{rows:?}");
    assert_eq!(rows.iter().filter(|n| n.arch == "x86_64" && n.status == "Ready").count(), 3, "{rows:?}");
    // The guest's own uptime when its init had the network up (kernel and init alone).
    let kernel_up = |b: &QemuBoard| {
        b.console()
            .lines()
            .find_map(|l| l.strip_prefix("shoal-board: up after ").map(str::to_owned))
            .unwrap_or_default()
    };
    let (kernel_up, kernel_up_v7) = (kernel_up(&arm), kernel_up(&armv7));

    // Constrained to aarch64 and to arm: each lands on its QEMU board only, runs the
    // image's variant for it (linux/arm64, linux/arm/v7) and answers from the host.
    let created = Instant::now();
    let publish = "mode=host,target=8000,published=8000";
    for (name, arch) in [("armweb", "aarch64"), ("armv7web", "arm")] {
        let constraint = format!("node.arch=={arch}");
        m.shoal(&[
            "service",
            "create",
            "--name",
            name,
            "--constraint",
            &constraint,
            "--publish",
            publish,
            "-d",
            "demo/app:1.0",
        ]);
    }
    let mut answering = [None, None];
    wait_for("armweb and armv7web 1.0 to answer on their boards", Duration::from_secs(90), || {
        for (i, board) in [&arm, &armv7].into_iter().enumerate() {
            if answering[i].is_none() && get(&board.ip, 8000, "/version").as_deref() == Some("1.0") {
                answering[i] = Some(created.elapsed());
            }
        }
        answering.iter().all(Option::is_some).then_some(())
    });
    let [Some(to_answering), Some(to_answering_v7)] = answering else { unreachable!() };
    assert_eq!(running_on(&c, "armweb", "demo/app:1.0"), ["arm1"]);
    assert_eq!(running_on(&c, "armv7web", "demo/app:1.0"), ["armv7"]);
    // Nothing of them on the namespace boards (their containers are this machine's).
    assert_eq!(running_containers("armweb") + running_containers("armv7web"), 0);

    // A rolling update on the aarch64 board.
    let updated = Instant::now();
    m.shoal(&["service", "update", "--image", "demo/app:3.0", "-d", "armweb"]);
    wait_for("armweb 3.0 to answer", Duration::from_secs(60), || {
        (get(&arm.ip, 8000, "/version").as_deref() == Some("3.0")).then_some(())
    });
    wait_for("armweb's task to be Running 3.0 on arm1", Duration::from_secs(20), || {
        (running_on(&c, "armweb", "demo/app:3.0") == ["arm1"]).then_some(())
    });
    let to_updated = updated.elapsed();

    // Without a constraint: one task on each of the four boards.
    m.shoal(&["service", "create", "--name", "spread", "--replicas", "4", "-d", "demo/app:1.0"]);
    wait_for("spread on all four boards", Duration::from_secs(60), || {
        let mut nodes = running_on(&c, "spread", "demo/app:1.0");
        nodes.sort();
        (nodes == ["arm1", "armv7", "node1", "node2"]).then_some(())
    });

    // Boards marked Down before any was powered off: heartbeats an emulated board
    // missed while busy, seen while both VMs boot on a loaded machine (reported with the
    // figures; the checks above held regardless).
    let missed = c.manager.output().matches("node is down").count();

    // Power off: Down within 3 s, and its spread task moves to another board.
    arm.power_off();
    let off = Instant::now();
    c.wait_status("arm1", "Down", Duration::from_secs(10));
    let to_down = off.elapsed();
    assert!(to_down < Duration::from_secs(3), "the QEMU board took {to_down:?} to be marked Down");
    wait_for("spread's task of arm1 to run on another board", Duration::from_secs(30), || {
        let nodes = running_on(&c, "spread", "demo/app:1.0");
        (nodes.len() == 4 && nodes.iter().all(|n| n != "arm1")).then_some(())
    });
    let to_moved = off.elapsed();
    eprintln!(
        "qemu boards: boot → Ready aarch64 {to_ready:.1?}, armv7 {to_ready_v7:.1?} (kernel and init: {kernel_up}, \
         {kernel_up_v7}); service create → answering aarch64 {to_answering:.1?}, armv7 {to_answering_v7:.1?}; \
         update → 3.0 running {to_updated:.1?}; power off → Down {to_down:.1?}, → task moved {to_moved:.1?}; \
         marked Down before the power-off: {missed} times; \
         whole test {:.1?}",
        start.elapsed()
    );
}
