//! Crash consistency of the manager's files: `shoal manager init` is killed with SIGKILL
//! at random points, many times over, and what it leaves must be either nothing (a new
//! `init` then works) or the whole cluster (the store opens with the cluster and the
//! manager's node in it, and `admin.json` parses) — never a half-made cluster that
//! `run` calls empty and `init` refuses.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_manager::paths;
use shoal_manager::store::Store;

fn init(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
    c.arg("--data-dir").arg(data_dir).args(["manager", "init", "--advertise-addr", "127.0.0.1", "--hostname", "m"]);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    c
}

/// Either no cluster (and `init` succeeds now) or a complete one.
fn check_old_or_new(data_dir: &Path, what: &str) -> bool {
    let store_path = paths::store_path(data_dir);
    if !store_path.exists() {
        assert!(!paths::admin_path(data_dir).exists(), "{what}: credentials without a store");
        return false;
    }
    let store = Store::open(&store_path).unwrap_or_else(|e| panic!("{what}: the store does not open: {e}"));
    let cluster = store.cluster().unwrap_or_else(|e| panic!("{what}: no cluster in the store: {e}"));
    let nodes = store.nodes().unwrap();
    assert_eq!(nodes.len(), 1, "{what}: the manager's node record is missing");
    assert_eq!(nodes[0].id, cluster.manager_node, "{what}");
    let admin = std::fs::read_to_string(paths::admin_path(data_dir)).unwrap_or_else(|e| panic!("{what}: {e}"));
    serde_json::from_str::<paths::AdminCredentials>(&admin).unwrap_or_else(|e| panic!("{what}: admin.json: {e}"));
    true
}

#[test]
fn init_killed_at_random_points_leaves_no_cluster_or_a_whole_one() {
    let root = std::env::temp_dir().join(format!("shoal-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // How long a whole init takes here, to spread the kills over it.
    let start = Instant::now();
    assert!(init(&root.join("timing")).status().unwrap().success());
    let span = start.elapsed().as_micros() as u64;
    let mut seed: u64 = std::env::var("SHOAL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    eprintln!("init takes {span} µs; seed {seed}");
    let (mut whole, mut none) = (0, 0);
    for i in 0..30 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = (seed >> 33) % (span + span / 4);
        let dir = root.join(format!("run{i}"));
        let mut child = init(&dir).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let _ = child.wait();
        let what = format!("killed after {delay} µs (run {i})");
        if check_old_or_new(&dir, &what) {
            whole += 1;
        } else {
            none += 1;
            // What a crashed init left does not stand in the way of the next one.
            assert!(init(&dir).status().unwrap().success(), "{what}: init failed after the crash");
            assert!(check_old_or_new(&dir, &what), "{what}: init after the crash");
        }
    }
    eprintln!("{whole} kills left a whole cluster, {none} left none");
    assert!(whole > 0 && none > 0, "the kills missed the window: {whole} whole, {none} none");
    let _ = std::fs::remove_dir_all(&root);
}
