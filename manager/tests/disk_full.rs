//! A full disk under the manager's store (a small tmpfs, as root): a write that finds no
//! space says so clearly, changes nothing, the store does not stay wedged on redb's
//! "previous I/O error", and it works again by itself once space is freed.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_manager::core::nodes::NodeRecord;
use shoal_manager::images::ImageRecord;
use shoal_manager::store::{ClusterRecord, Store};
use shoal_proto::{Availability, BoundedVec, NodeId, Role};

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shoal-diskfull-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs (this test needs root)");
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn image(n: usize) -> ImageRecord {
    ImageRecord {
        reference: format!("img{n}:1"),
        digest: format!("sha256:{}", "a".repeat(64)),
        platforms: vec!["linux/arm64".into()],
        size: 1,
        // About 70 KiB a record: a few dozen fill the disk.
        blobs: vec![format!("sha256:{}", "b".repeat(64)); 1000],
        loaded_at_ms: 1,
    }
}

fn new_store(path: &Path) -> Store {
    let id = NodeId::from_random([1; 16]);
    let cluster = ClusterRecord {
        cluster_id: "c".into(),
        ca_cert: vec![],
        ca_key_pem: String::new(),
        server_cert: vec![],
        server_key_pem: String::new(),
        worker_secret: String::new(),
        advertise_addr: "127.0.0.1:4242".into(),
        listen_addr: "127.0.0.1:4242".into(),
        manager_node: id.clone(),
    };
    let node = NodeRecord {
        id,
        role: Role::Manager,
        availability: Availability::Active,
        labels: BoundedVec::new(),
        description: Default::default(),
        addr: None,
        created_at_ms: 0,
        ingress_address: None,
    };
    Store::create(path, &cluster, &node).unwrap()
}

#[test]
#[ignore = "needs root"]
fn a_full_disk_is_reported_changes_nothing_and_the_store_recovers_when_space_returns() {
    let fs = Tmpfs::mount("6m");
    let path = fs.0.join("state.redb");
    let store = new_store(&path);
    for n in 0..3 {
        store.update_images(&[image(n)], &[]).unwrap();
    }
    // Fill what the store leaves with a file that can be deleted later.
    let filler = fs.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 8 << 20]);
    let mut saved = 3;
    let err = loop {
        match store.update_images(&[image(saved)], &[]) {
            Ok(()) => saved += 1,
            Err(e) => break e,
        }
        assert!(saved < 1000, "the disk never filled");
    };
    let msg = err.to_string();
    eprintln!("after {saved} records: {msg}");
    assert!(err.is_disk_full(), "{msg}");
    assert!(
        msg.contains("the manager's disk is full: free space under") && msg.contains(fs.0.to_str().unwrap()),
        "{msg}"
    );
    // Still full: the same clear refusal, not redb's "previous I/O error" for ever.
    for _ in 0..3 {
        let again = store.update_images(&[image(saved)], &[]).unwrap_err().to_string();
        assert!(again.contains("disk is full"), "{again}");
        assert!(!again.contains("re-open"), "{again}");
    }
    // Nothing half-written: what was saved before is all there.
    assert_eq!(store.images().unwrap().len(), saved);
    // Space returns: the same store works again by itself.
    std::fs::remove_file(&filler).unwrap();
    store.update_images(&[image(saved)], &[]).unwrap();
    assert_eq!(store.images().unwrap().len(), saved + 1);
    drop(store);
    assert_eq!(Store::open(&path).unwrap().images().unwrap().len(), saved + 1);
}
