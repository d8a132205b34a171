//! Flash-ready board images (issue 12), end to end: a stock OS disk image (a FAT boot
//! partition with Debian's arm64 kernel and cmdline.txt, an ext4 root with Debian's
//! userland and systemd as PID 1, a swap partition: `scripts/qemu-board.sh disk`) is
//! prepared with `shoal board
//! prepare`, then booted under QEMU as its firmware would boot it (kernel, initramfs and
//! command line read from the FAT partition, so what `board prepare` wrote is what
//! boots). The first boot runs the first-boot step and reboots; the second joins the
//! cluster; a service runs there; after a power cut the agent comes back by itself,
//! without a token, and runs its task again. On the board's cgroup v2 with swap on, a
//! container over its `--limit-memory` is OOM-killed rather than swapped.
//!
//! Slow (three boots under software emulation), so not in CI (`scripts/test.sh` skips
//! `qemu_` in its main step and runs only `qemu_aarch64_` later). Opt in with
//! `cargo build --bins && cargo test -p shoal-e2e --test board_image -- --include-ignored`
//! after `scripts/build-agents.sh` (docs/qemu-boards.md says how long it takes). The fast
//! part, `board prepare` on a synthetic image read back, is manager/tests/board_prepare.rs,
//! which CI runs.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_e2e::{cross_agent, http_get_within, lab_image, stock_board_image, wait_for, Cluster, Lab, QemuBoard};

/// The body of `GET path` from `ip:port`, if it answers 200 (2 s to connect, 4 s to read:
/// an emulated board).
fn get(ip: &str, port: u16, path: &str) -> Option<String> {
    http_get_within(format!("{ip}:{port}").parse().ok()?, path, Duration::from_secs(2)).ok()
}

fn wait_ready(c: &Cluster, board: &mut QemuBoard, what: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_for(what, timeout, || {
        if let Some(code) = board.qemu.wait_exit(Duration::ZERO) {
            panic!("QEMU of {} exited ({code}); its console:\n{}", board.hostname, board.console());
        }
        c.nodes().iter().any(|n| n.hostname == board.hostname && n.status == "Ready").then_some(())
    });
    start.elapsed()
}

/// The last task of `service` in `service ps`: (current state, error).
fn last_task(c: &Cluster, service: &str) -> Option<(String, String)> {
    c.service_ps(service).into_iter().next().map(|r| (r["CURRENT STATE"].clone(), r["ERROR"].clone()))
}

#[test]
#[ignore = "needs root; slow (three QEMU boots), opt-in: see docs/qemu-boards.md"]
fn qemu_board_image_joins_on_first_boot_and_comes_back_after_a_power_cut() {
    let start = Instant::now();
    // 2 s heartbeats: nothing here times failover, and an emulated board on a loaded
    // machine missed three 700 ms ones in a row often enough to restart its tasks.
    let c = Cluster::start_in_with(Lab::new(1).unwrap(), &["--heartbeat-period", "2s"]).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let stock = stock_board_image("aarch64").unwrap();
    let sd = c.lab.dir.join("sd.img");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
    let agent = cross_agent("aarch64-unknown-linux-musl");
    let manager = format!("{}:4242", m.ip);
    let prepared = Instant::now();
    let out = m.shoal(&[
        "board",
        "prepare",
        "--board",
        "qemu-virt-aarch64",
        "--board-configs",
        configs.to_str().unwrap(),
        "--image",
        stock.to_str().unwrap(),
        "--out",
        sd.to_str().unwrap(),
        "--token",
        &c.token,
        "--manager",
        &manager,
        "--hostname",
        "pi1",
        "--label",
        "site=lab",
        "--agent",
        agent.to_str().unwrap(),
    ]);
    assert!(out.contains("is prepared for"), "{out}");
    let to_prepared = prepared.elapsed();

    // First boot: systemd runs the first-boot step (systemd.run=) and, as it succeeded,
    // reboots (QEMU exits: -no-reboot).
    let mut pi = c.lab.disk_board(0, "pi1").unwrap();
    c.lab.power_on_disk(&mut pi, "aarch64", &sd).unwrap();
    let first = Instant::now();
    let code = pi.qemu.wait_exit(Duration::from_secs(180));
    let console = pi.console();
    assert_eq!(code, Some(0), "the first boot did not reboot by itself; its console:\n{console}");
    assert!(console.contains("Finished kernel-command-line.service"), "{console}");
    assert!(console.contains("Reached target reboot.target"), "{console}");
    let to_first_reboot = first.elapsed();

    // Second boot: no first-boot step any more; the unit joins with the token.
    c.lab.power_on_disk(&mut pi, "aarch64", &sd).unwrap();
    let to_ready = wait_ready(&c, &mut pi, "pi1 to join on its second boot", Duration::from_secs(240));
    let console = pi.console();
    let second = console.rsplit("qemu-board: booting").next().unwrap();
    assert!(!second.contains("systemd.run="), "the first-boot step is still on cmdline.txt:\n{second}");
    assert!(second.contains("cgroup_enable=memory"), "{second}");
    assert!(second.contains("Started shoal-agent.service"), "{second}");
    // The agent's own lines reach the console through the journal.
    assert!(second.contains("This node joined"), "{second}");
    let inspect = m.shoal(&["node", "inspect", "pi1"]);
    assert!(inspect.contains("site") && inspect.contains("qemu-virt"), "labels missing:\n{inspect}");

    // A service on it, answering from the host.
    let created = Instant::now();
    let publish = "mode=host,target=8000,published=8000";
    m.shoal(
        &["service", "create", "--name", "web", "--constraint", "node.hostname==pi1", "--publish", publish, "-d"]
            .into_iter()
            .chain(["demo/app:1.0"])
            .collect::<Vec<_>>(),
    );
    let v = wait_for("web to answer on pi1", Duration::from_secs(120), || get(&pi.ip, 8000, "/version"));
    assert_eq!(v, "1.0");
    let to_answering = created.elapsed();

    // cgroup v2 with swap on: an 80 MiB buffer (busybox dd fills it from /dev/zero, so
    // every page is touched) in a 48 MiB container is OOM-killed. With memory.swap.max
    // left at max, 32 MiB of it would go to the 64 MiB of swap and dd would succeed.
    assert!(second.contains("Activated swap dev-vda3.swap"), "the board has no swap:\n{second}");
    let mut args = vec!["service", "create", "--name", "hog", "--constraint", "node.hostname==pi1"];
    args.extend(["--limit-memory", "48m", "--restart-condition", "none", "-d", "demo/app:1.0"]);
    args.extend(["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=83886080", "count=1"]);
    m.shoal(&args);
    let (state, error) = wait_for("hog to end", Duration::from_secs(120), || {
        last_task(&c, "hog").filter(|(s, _)| s.starts_with("Failed") || s.starts_with("Complete"))
    });
    let logs = m.run("shoal", &["service", "logs", "hog"]);
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    assert!(state.starts_with("Failed") && error.contains("137"), "hog: {state} {error}; its logs:\n{logs}");

    // A power cut, then power on: the agent comes back by itself (no token: it is spent
    // and deleted) and its task runs again.
    pi.power_off();
    c.wait_status("pi1", "Down", Duration::from_secs(20));
    let again = Instant::now();
    c.lab.power_on_disk(&mut pi, "aarch64", &sd).unwrap();
    let to_ready_again = wait_ready(&c, &mut pi, "pi1 to come back after a power cut", Duration::from_secs(240));
    let v = wait_for("web to answer on pi1 again", Duration::from_secs(120), || get(&pi.ip, 8000, "/version"));
    assert_eq!(v, "1.0");
    let to_answering_again = again.elapsed();
    let third = pi.console();
    let third = third.rsplit("qemu-board: booting").next().unwrap();
    assert!(third.contains("Started shoal-agent.service"), "{third}");
    assert!(!third.contains("This node joined"), "the agent joined again instead of running:\n{third}");
    eprintln!(
        "board image: prepare {to_prepared:.1?}; first boot → its reboot {to_first_reboot:.1?}; second boot → \
         Ready {to_ready:.1?}; service create → answering {to_answering:.1?}; power cut → Ready \
         {to_ready_again:.1?}, → answering {to_answering_again:.1?}; whole test {:.1?}",
        start.elapsed()
    );
}
