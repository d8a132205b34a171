//! `shoal node upgrade` end to end: boards in network namespaces run their own copy of the
//! agent, which the upgrade replaces. A good build takes over without restarting the
//! board's task; a build for another machine is refused; a build that exits at once is
//! rolled back by the board's watchdog. Either failure pauses the rollout with the other
//! board untouched, and leaves the board Ready on the agent it ran.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_e2e::{bin, lab_image, wait_for, Cluster, Lab};

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A manager and `n` boards, each board running `<its data dir>/bin/shoal-agent`.
fn cluster_with_own_agents(n: usize) -> (Cluster, Vec<PathBuf>) {
    let lab = Lab::new(n + 1).unwrap();
    let m = &lab.hosts[0];
    let init = m.shoal(&["manager", "init", "--advertise-addr", &m.ip, "--hostname", "manager"]);
    let token = init.split_whitespace().find(|w| w.starts_with("SHOAL-1-")).unwrap().to_owned();
    let manager = m.spawn("shoal", &["manager", "run"]);
    wait_for("the manager to answer", Duration::from_secs(10), || {
        m.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    let mut agents = Vec::new();
    let mut exes = Vec::new();
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        let exe = h.data_dir.join("bin/shoal-agent");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::copy(bin("shoal-agent"), &exe).unwrap();
        let addr = format!("{}:4242", m.ip);
        agents.push(h.spawn_exe(&exe, &["join", "--token", &token, "--hostname", &format!("node{i}"), &addr]));
        exes.push(exe);
    }
    let c = Cluster { manager, agents, token, lab };
    c.wait_status_all("Ready", Duration::from_secs(15));
    (c, exes)
}

#[test]
#[ignore = "needs root"]
fn agents_upgrade_in_place_and_bad_builds_roll_back_and_pause_the_rollout() {
    let started = Instant::now();
    let (c, exes) = cluster_with_own_agents(2);
    let m = c.manager_host();
    let version_of = |hostname: &str| c.nodes().into_iter().find(|n| n.hostname == hostname).unwrap().version;
    let old = version_of("node1");
    assert_eq!(old, format!("{}+{}", env!("CARGO_PKG_VERSION"), &sha256_hex(&exes[0])[..12]));
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let svc = format!("{}up", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "--constraint", "node.hostname==node1", "demo/app:1.0"]);
    wait_for("the task running", Duration::from_secs(30), || c.replicas(&svc).starts_with("1/1").then_some(()));
    let shims = c.lab.hosts[1].shims();
    assert_eq!(shims.len(), 1, "{shims:?}");

    // A new build takes over node1: the same agent stripped of its debug lines (another
    // digest, and half the bytes to send), with bytes appended in case it had none.
    let scratch = c.lab.dir.join("builds");
    std::fs::create_dir_all(&scratch).unwrap();
    let new = scratch.join("shoal-agent-new");
    std::fs::copy(bin("shoal-agent"), &new).unwrap();
    let _ = std::process::Command::new("strip").arg(&new).status();
    let mut bytes = std::fs::read(&new).unwrap();
    bytes.extend_from_slice(b"\0shoal upgrade test build\0");
    std::fs::write(&new, &bytes).unwrap();
    let new_version = format!("{}+{}", env!("CARGO_PKG_VERSION"), &sha256_hex(&new)[..12]);
    let t = Instant::now();
    let out = m.shoal(&["node", "upgrade", "--agent", new.to_str().unwrap(), "node1"]);
    eprintln!("upgrade of node1 took {:?}", t.elapsed());
    assert!(out.contains(&format!("node1: upgraded: {new_version}")), "{out}");
    assert_eq!(version_of("node1"), new_version);
    assert_eq!(sha256_hex(&exes[0]), sha256_hex(&new));
    // Its task was neither restarted nor replaced: same container, same shim.
    assert_eq!(c.lab.hosts[1].shims(), shims);
    let ps = c.service_ps(&svc);
    assert_eq!(ps.len(), 1, "{ps:?}");
    // Upgrading again changes nothing.
    let out = m.shoal(&["node", "upgrade", "--agent", new.to_str().unwrap(), "node1"]);
    assert!(out.contains("node1: unchanged"), "{out}");

    // A build for another machine is refused by the board before it swaps anything: the
    // rollout pauses and node2, next in line, is not touched.
    let wrong = scratch.join("shoal-agent-aarch64");
    let mut elf = std::fs::read("/bin/false").unwrap();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    std::fs::write(&wrong, &elf).unwrap();
    let out = m.run("shoal", &["node", "upgrade", "--agent", wrong.to_str().unwrap(), "node1", "node2"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("node1: failed: the board refused the build: the build is for aarch64"), "{stdout}");
    assert!(stdout.contains("node2: skipped: rollout paused"), "{stdout}");
    assert!(stderr.contains("rollout paused"), "{stderr}");
    assert_eq!(version_of("node1"), new_version);
    assert_eq!(version_of("node2"), old);

    // A build that fits but exits at once: the board's watchdog restores the previous
    // binary and runs it; node1 comes back on it, the rollout pauses before node2.
    let exits = scratch.join("shoal-agent-exits");
    std::fs::copy("/bin/false", &exits).unwrap();
    let out = m.run("shoal", &["node", "upgrade", "--agent", exits.to_str().unwrap(), "--all", "--parallelism", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("node1: failed: it came back on {new_version}")), "{stdout}");
    assert!(stdout.contains("node2: skipped: rollout paused"), "{stdout}");
    c.wait_status("node1", "Ready", Duration::from_secs(5));
    assert_eq!(version_of("node1"), new_version);
    assert_eq!(sha256_hex(&exes[0]), sha256_hex(&new));
    assert_eq!(version_of("node2"), old);
    assert_eq!(c.lab.hosts[1].shims(), shims);
    assert_eq!(c.service_ps(&svc).len(), 1);

    // The file at node2's agent path becomes another program while that agent runs (as
    // between an update's swap and its restart, or after a rebuild): new containers
    // still start and `exec` still works, their shim and helper being the running build,
    // not whatever the path now holds.
    std::fs::remove_file(&exes[1]).unwrap();
    std::fs::copy("/bin/false", &exes[1]).unwrap();
    let after = format!("{}sw", c.lab.tag());
    m.shoal(&["service", "create", "--name", &after, "--constraint", "node.hostname==node2", "demo/app:1.0"]);
    wait_for("a task started after the swap", Duration::from_secs(30), || {
        c.replicas(&after).starts_with("1/1").then_some(())
    });
    let out = m.shoal(&["exec", &after, "echo", "the-running-build"]);
    assert!(out.contains("the-running-build"), "{out}");
    eprintln!("whole test took {:?}", started.elapsed());
}
