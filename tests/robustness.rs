//! Faults an unlucky operator meets on boards (issue 9): a board whose identity was
//! copied onto a second one, and a board whose disk fills up.

use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, running_containers, wait_for, Cluster};

/// Copies `from` to `to`, creating `to`'s folder.
fn copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}

#[test]
#[ignore = "needs root"]
fn a_board_with_a_copied_identity_is_refused_and_the_first_keeps_its_task() {
    let mut c = Cluster::start(2).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    m.shoal(&["service", "create", "--name", "dupid", "--constraint", "node.hostname==node1", "demo/app:1.0"]);
    wait_for("dupid running on node1", Duration::from_secs(30), || {
        c.service_ps("dupid")
            .iter()
            .any(|r| r["NODE"] == "node1" && r["CURRENT STATE"].starts_with("Running"))
            .then_some(())
    });

    // Board 2 becomes a clone of board 1, as a copied SD card would: its own agent goes
    // and board 1's identity, task set and images take the place of its data dir.
    c.agents[1].stop();
    let (first, second) = (&c.lab.hosts[1], &c.lab.hosts[2]);
    let (src, dst) = (first.data_dir.join("agent"), second.data_dir.join("agent"));
    std::fs::rename(&dst, second.data_dir.join("agent.own")).unwrap();
    copy(&src.join("identity.json"), &dst.join("identity.json"));
    copy(&src.join("tasks.json"), &dst.join("tasks.json"));
    let sessions_before = c.agents[0].output().matches("session established").count();
    let started = Instant::now();
    let clone = second.spawn("shoal-agent", &["run"]);

    let said = wait_for("the clone to be refused", Duration::from_secs(15), || {
        let out = clone.output();
        out.contains("is already connected from").then_some(out)
    });
    let refused_after = started.elapsed();
    assert!(said.contains(&format!("already connected from {}", first.ip)), "{said}");
    assert!(said.contains("shoal-agent join"), "the clone says how to fix it: {said}");
    let inspect = c.manager_host().shoal(&["node", "inspect", "node1"]);
    assert!(
        inspect.contains(&format!("another board with this node's identity connected from {}", second.ip)),
        "{inspect}"
    );
    let log = std::fs::read_to_string(&c.manager.log).unwrap();
    assert!(log.contains("two boards carry the identity of node"), "manager log: {log}");

    // Past the time the clone would have taken the session over a few times (it used
    // to, three times a second): the first board never lost it, and its task runs once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.agents[0].output().matches("session established").count(), sessions_before, "no flapping");
    assert!(c.nodes().iter().any(|n| n.hostname == "node1" && n.status == "Ready"));
    assert_eq!(running_containers("dupid"), 1, "the task's container runs on one board only");
    assert!(!clone.output().contains("session established"), "the clone never got a session: {}", clone.output());
    eprintln!("clone refused {refused_after:?} after it started");
}
