//! Crash consistency of every file the agent keeps across restarts: a child process
//! rewrites them in rounds through the agent's own code (identity, `ipam.json`, the task
//! set's writer, the image store's blobs, layers and `images.json`) and is killed with
//! SIGKILL at random moments, many times. After each kill every file must hold either
//! the last round the child reported done or the one it was writing, never a mix or a
//! torn file, and the agent's loaders must open everything without complaint.
//!
//! SIGKILL proves the all-or-nothing part (temporary file and rename: nothing half
//! written is ever visible under a file's name); the fsyncs that carry it over a power
//! cut are in the same code paths, but a test cannot cut the power under the page cache.
//! A blob torn by a power cut anyway is covered by the store's unit test
//! `a_torn_blob_is_caught_deleted_and_its_image_forgotten_at_open`.
//!
//! The child is this test binary run again with `SHOAL_CRASH_DIR` set (see
//! [`crash_writer`]); without it, that test writes a few rounds in-process and checks them.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_agent::identity::NodeIdentity;
use shoal_agent::images::{ImageRecord, ImageStore};
use shoal_agent::net::ipam::Ipam;
use shoal_agent::net::subnet::Subnet;

const ENV: &str = "SHOAL_CRASH_DIR";
/// Blobs span a few pages so a torn one would show.
const BLOB_BYTES: usize = 48 * 1024;

fn subnet() -> Subnet {
    Subnet::new(Ipv4Addr::new(10, 77, 0, 0), 16).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn blob(round: u64, what: &str) -> Vec<u8> {
    let mut b = format!("{what} of round {round}\n").into_bytes();
    b.resize(BLOB_BYTES, b'0' + (round % 10) as u8);
    b
}

fn identity(round: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: "crashnode".into(),
        manager_addr: "127.0.0.1:4242".into(),
        ca_pem: "ca".repeat(500),
        cert_pem: "cert".repeat(500),
        key_pem: "key".repeat(500),
        hostname: Some(format!("round-{round}")),
        advertise_addr: None,
        labels: vec![],
        manager_time_ms: round,
    }
}

fn tasks_path(dir: &Path) -> PathBuf {
    dir.join("agent/tasks.json")
}

fn tasks_json(round: u64) -> Vec<u8> {
    // Its length varies with the round, as a real task set's does.
    serde_json::to_vec(&serde_json::json!({ "round": round, "pad": "t".repeat((round as usize * 997) % 20_000) }))
        .unwrap()
}

/// The round `tasks.json` (written last in each round) says was finished.
fn tasks_round(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(tasks_path(dir)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("tasks.json is whole");
    let round = v["round"].as_u64().expect("tasks.json has its round");
    assert_eq!(bytes, tasks_json(round), "tasks.json is exactly what round {round} wrote");
    Some(round)
}

/// One round: every persistent file gets round `n`'s content, through the agent's code.
fn write_round(dir: &Path, n: u64) {
    identity(n).save(dir).unwrap();

    let mut ipam = Ipam::load(&dir.join("agent/ipam.json"), subnet()).unwrap();
    if ipam.state().get(&format!("c{n}")).is_none() {
        ipam.allocate(&format!("c{n}")).unwrap();
    }
    let stale: Vec<String> =
        ipam.state().iter().map(|(id, _)| id.to_owned()).filter(|id| *id != format!("c{n}")).collect();
    for id in stale {
        ipam.release(&id).unwrap();
    }

    let store = ImageStore::open(&dir.join("agent/images")).unwrap();
    let mut digests = Vec::new();
    for what in ["index", "config"] {
        let bytes = blob(n, what);
        let d = sha256(&bytes);
        if !store.has_verified_blob(&d).unwrap() {
            std::fs::write(store.partial_path(&d).unwrap(), &bytes).unwrap();
            store.commit_partial(&d).unwrap();
        }
        digests.push(d);
    }
    let layer = sha256(format!("layer {n}").as_bytes());
    if !store.has_layer(&layer) {
        let tmp = store.begin_layer(&layer).unwrap();
        std::fs::write(tmp.join("file"), blob(n, "layer file")).unwrap();
        store.commit_layer(&layer, &tmp).unwrap();
    }
    let record = ImageRecord {
        references: vec![],
        digest: digests[0].clone(),
        manifest: digests[0].clone(),
        config: digests[1].clone(),
        layers: vec![layer],
    };
    store.record("crash/app:1.0", record).unwrap();
    store.gc(std::slice::from_ref(&digests[0]), &[]).unwrap();

    shoal_link::files::write_private(&tasks_path(dir), &tasks_json(n)).unwrap();
}

/// Checks every file holds round `done` or `done + 1` (the round being written when
/// the child died), whole, and that the agent's loaders open them.
fn check(dir: &Path, done: u64) {
    let ok = |round: u64| round == done || round == done + 1;
    let id = NodeIdentity::load(dir).expect("identity.json loads").expect("identity.json is there");
    let id_round: u64 = id.hostname.unwrap().trim_start_matches("round-").parse().unwrap();
    assert!(ok(id_round), "identity.json holds round {id_round}, done {done}");
    assert_eq!(id.key_pem, identity(id_round).key_pem, "identity.json is whole");

    let ipam = Ipam::load(&dir.join("agent/ipam.json"), subnet()).expect("ipam.json loads");
    let held: Vec<&str> = ipam.state().iter().map(|(id, _)| id).collect();
    assert!(!held.is_empty() && held.len() <= 2, "ipam.json holds {held:?}");
    for h in held {
        let round: u64 = h.trim_start_matches('c').parse().unwrap();
        assert!(ok(round), "ipam.json holds {h}, done {done}");
    }

    if let Some(round) = tasks_round(dir) {
        assert!(ok(round), "tasks.json holds round {round}, done {done}");
    }

    let store = ImageStore::open(&dir.join("agent/images")).expect("the image store opens");
    let image = store.image("crash/app:1.0").expect("the image is held");
    let round = (done..=done + 1)
        .find(|r| sha256(&blob(*r, "index")) == image.digest)
        .unwrap_or_else(|| panic!("images.json names {}, from neither round {done} nor the next", image.digest));
    assert_eq!(store.read_json_blob(&image.config).expect("config blob whole"), blob(round, "config"));
    let lower = store.lowerdirs("crash/app:1.0").unwrap();
    assert_eq!(std::fs::read(lower[0].join("file")).unwrap(), blob(round, "layer file"), "the layer is whole");
    assert!(std::fs::read_dir(dir.join("agent/images/tmp")).unwrap().next().is_none(), "tmp/ is emptied at open");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// In a child (`SHOAL_CRASH_DIR` set): writes rounds for ever, saying `ack N` after each,
/// until killed. Otherwise: writes a few rounds here and checks them.
#[test]
fn crash_writer() {
    match std::env::var_os(ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let mut n = tasks_round(&dir).unwrap_or(0) + 1;
            loop {
                write_round(&dir, n);
                println!("ack {n}");
                n += 1;
            }
        }
        None => {
            let dir = scratch("inline");
            for n in 1..=5 {
                write_round(&dir, n);
                check(&dir, n);
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// A small xorshift, seeded from the clock and printed, so a failure can be replayed
/// with `SHOAL_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn files_are_old_or_new_whenever_the_agent_is_killed() {
    let seed = std::env::var("SHOAL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let iterations: u32 = std::env::var("SHOAL_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    eprintln!("crash test seed {seed} (SHOAL_CRASH_SEED to replay), {iterations} kills");
    let mut rng = Rng(seed);
    let dir = scratch("kill");
    write_round(&dir, 1);
    let mut done = 1;
    let mut mid_round_kills = 0;
    for i in 0..iterations {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_writer", "--nocapture", "--test-threads=1"])
            .env(ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acks = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // libtest may start the line (`test crash_writer ... ack 8`).
                .filter_map(|l| l.split_once("ack ").and_then(|(_, n)| n.parse::<u64>().ok()))
                .last()
        });
        // Anywhere from before the child's first write to a few rounds in.
        std::thread::sleep(Duration::from_micros(rng.next() % 80_000));
        // SIGKILL, as std's `kill` sends on Unix: no destructor, no flush, no goodbye.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "iteration {i}: the writer must have been killed, not have ended: {status}");
        // Every round up to the last acknowledged one is complete; the next may be half done.
        let acked = acks.join().unwrap().unwrap_or(done);
        let id_round = NodeIdentity::load(&dir).unwrap().and_then(|id| id.hostname);
        if id_round != Some(format!("round-{}", tasks_round(&dir).unwrap())) {
            mid_round_kills += 1;
        }
        check(&dir, acked);
        done = tasks_round(&dir).unwrap();
    }
    eprintln!("{iterations} kills, {mid_round_kills} before the round's last file; reached round {done}");
    assert!(done > 1, "the writer made progress");
    std::fs::remove_dir_all(&dir).unwrap();
}
