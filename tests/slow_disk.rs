//! A board whose disk stalls (an SD card busy with a long write: `fsync` and writeback
//! wait for seconds while the page cache still takes writes) is not called Down, and
//! none of its tasks moves: its heartbeats don't wait for its disk. The stall comes while
//! the board fetches an image, whose blobs the agent makes durable before it keeps them.

use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, wait_for, Cluster, Host, Lab};

/// Whether `host`'s `image ls` says node1 holds demo/app:`tag`.
fn on_node1(host: &Host, tag: &str) -> bool {
    host.image_ls().iter().any(|r| r["REPOSITORY"] == "demo/app" && r["TAG"] == tag && r["NODES"].contains("node1"))
}

/// Longer than the Down threshold of a clean link (1.5 s + 0.8 s) with room to spare.
const STALL: Duration = Duration::from_secs(8);

#[test]
#[ignore = "needs root"]
fn a_board_whose_disk_stalls_is_not_called_down_and_keeps_its_tasks() {
    let mut lab = Lab::new(2).unwrap();
    lab.give_stalling_disk(1, 256).unwrap();
    let c = Cluster::start_in(lab).unwrap();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    wait_for("the image on node1", Duration::from_secs(30), || on_node1(m, "1.0").then_some(()));
    let svc = format!("{}disk", c.lab.tag());
    m.shoal(&["service", "create", "--name", &svc, "--detach", "demo/app:1.0"]);
    let running = || {
        c.service_ps(&svc)
            .into_iter()
            .filter(|r| r["DESIRED STATE"] == "Running" && r["CURRENT STATE"].starts_with("Running"))
            .map(|r| r["ID"].clone())
            .collect::<Vec<_>>()
    };
    let task = wait_for("the task running", Duration::from_secs(30), || {
        let ids = running();
        (ids.len() == 1).then(|| ids[0].clone())
    });

    c.lab.stall_disk(true);
    let stalled = Instant::now();
    m.shoal(&["image", "load", lab_image("demo-app-3.0.tar").to_str().unwrap()]);
    while stalled.elapsed() < STALL {
        let nodes = c.nodes();
        let node1 = nodes.iter().find(|n| n.hostname == "node1").unwrap();
        assert_eq!(node1.status, "Ready", "node1 was called Down {:?} into its disk's stall", stalled.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The stall held the fetch: the blob can't be made durable, so the image isn't kept yet.
    assert!(!on_node1(m, "3.0"), "the stall held nothing up");
    c.lab.stall_disk(false);

    // The fetch that waited on the disk finishes, and nothing moved meanwhile.
    wait_for("the second image on node1", Duration::from_secs(30), || on_node1(m, "3.0").then_some(()));
    let log = std::fs::read_to_string(&c.manager.log).unwrap();
    assert!(!log.contains("node is down"), "a node was called Down: {log}");
    assert_eq!(running(), vec![task.clone()], "{:?}", c.service_ps(&svc));
    assert_eq!(c.service_ps(&svc).len(), 1, "a task was replaced: {:?}", c.service_ps(&svc));
}
