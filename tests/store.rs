//! The manager's state store against damage: a truncated, overwritten or empty store
//! file is refused with what to do (never a panic), and `manager backup` / `manager
//! restore` bring a cluster back.

use std::time::Duration;

use shoal_e2e::{wait_for, Cluster};

/// Starts `shoal manager run` on a damaged store and returns its exit code and output.
fn run_refused(c: &Cluster) -> (Option<i32>, String) {
    let mut m = c.manager_host().spawn("shoal", &["manager", "run"]);
    let code = m.wait_exit(Duration::from_secs(20));
    (code, m.output())
}

#[test]
#[ignore = "needs root"]
fn a_damaged_store_says_how_to_restore_and_a_backup_brings_the_cluster_back() {
    let mut c = Cluster::start(1).unwrap();
    let host = c.manager_host();
    let data_dir = host.data_dir.clone();
    let backup = data_dir.join("backup.redb");
    let backup_arg = backup.to_str().unwrap();
    let out = host.shoal(&["manager", "backup", backup_arg]);
    assert!(out.contains("Backed up"), "{out}");

    // No restore under a running manager.
    let out = host.run("shoal", &["manager", "restore", backup_arg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a manager is running"), "{err}");

    c.manager.stop();
    let store = data_dir.join("manager/state.redb");
    let good = std::fs::read(&store).unwrap();
    let mut overwritten = good.clone();
    overwritten.iter_mut().skip(4096).take(512).for_each(|b| *b ^= 0x5a);
    let cases = [
        ("truncated", good[..good.len() / 2].to_vec(), "is damaged"),
        ("overwritten", overwritten, "is damaged"),
        ("empty", Vec::new(), "the file is empty"),
    ];
    for (what, bytes, expect) in cases {
        std::fs::write(&store, &bytes).unwrap();
        let (code, log) = run_refused(&c);
        assert_eq!(code, Some(1), "{what}: the manager did not stop with an error: {log}");
        assert!(log.contains(expect) && log.contains("shoal manager restore FILE"), "{what}: {log}");
        assert!(!log.contains("another"), "{what}: {log}");
    }

    let out = c.manager_host().shoal(&["manager", "restore", backup_arg]);
    assert!(out.contains("Restored cluster"), "{out}");
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    let host = c.manager_host();
    wait_for("the restored manager to answer", Duration::from_secs(10), || {
        host.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    assert_eq!(c.nodes().len(), 2);
    c.wait_status_all("Ready", Duration::from_secs(20));
}
