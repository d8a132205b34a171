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
    // It holds the CA's and the manager's private keys.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backup mode {mode:o}");

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

    // A backup copied around with a looser mode still restores to a private store.
    std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.manager_host().shoal(&["manager", "restore", backup_arg]);
    assert!(out.contains("Restored cluster"), "{out}");
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o600);
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    let host = c.manager_host();
    wait_for("the restored manager to answer", Duration::from_secs(10), || {
        host.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    assert_eq!(c.nodes().len(), 2);
    c.wait_status_all("Ready", Duration::from_secs(20));
}

#[test]
#[ignore = "needs root"]
fn a_full_disk_refuses_changes_clearly_and_the_manager_recovers_when_space_returns() {
    let mut c = Cluster::start(1).unwrap();
    let dir = c.manager_host().data_dir.join("manager");
    let keep = c.manager_host().data_dir.join("manager-copy");
    // The manager's directory moves onto a small tmpfs.
    c.manager.stop();
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        assert!(std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
    };
    cp(&dir, &keep);
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&dir).status();
    assert!(mounted.unwrap().success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    for entry in std::fs::read_dir(&keep).unwrap() {
        cp(&entry.unwrap().path(), &dir);
    }
    c.manager = c.manager_host().spawn("shoal", &["manager", "run"]);
    let host = c.manager_host();
    wait_for("the manager to answer", Duration::from_secs(10), || {
        host.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    host.shoal(&["image", "load", shoal_e2e::lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let filler = dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]);
    // A change that needs room: the service record fits in the file's free pages, its
    // 4000 tasks (placed nowhere, so no container starts) do not.
    let create = ["service", "create", "--detach", "--name", "many", "--replicas", "4000"];
    let out = host.run("shoal", &[&create[..], &["--constraint", "node.labels.nowhere==1", "demo/app:1.0"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(stderr.contains("the manager's disk is full: free space under"), "{stderr}");
    }
    std::thread::sleep(Duration::from_secs(10));
    let log = c.manager.output();
    let failures = log.lines().filter(|l| l.contains("reconciliation failed")).count();
    assert!(log.contains("the manager's disk is full: free space under"), "{log}");
    assert!(!log.contains("re-open"), "{log}");
    assert!(failures <= 4, "{failures} failed reconciliations in 10 s: it should wait between tries");
    assert_eq!(c.nodes().len(), 2, "reads go on");
    if out.status.success() {
        assert!(c.service_ps("many").is_empty(), "tasks were saved on a full disk");
    } else {
        // The create itself was refused: nothing of it may exist.
        let ps = host.run("shoal", &["service", "ps", "many"]);
        assert!(!ps.status.success(), "a refused create left a service behind");
    }
    // Space returns: the same manager catches up by itself, no restart.
    std::fs::remove_file(&filler).unwrap();
    if !out.status.success() {
        host.shoal(&[&create[..], &["--constraint", "node.labels.nowhere==1", "demo/app:1.0"]].concat());
    }
    wait_for("the tasks to be saved", Duration::from_secs(20), || (c.service_ps("many").len() >= 2048).then_some(()));
    c.wait_status_all("Ready", Duration::from_secs(10));
}
