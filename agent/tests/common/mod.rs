//! Helpers shared by the agent's integration tests (real containers, as root).
#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fails the test, saying why, unless it runs as root. Tests that need root are marked
/// `#[ignore = "needs root"]`; `scripts/test.sh` runs them as root with `--include-ignored`.
pub(crate) fn require_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    assert!(root, "this test needs root (real containers): run it as root, as scripts/test.sh does");
}

/// Builds the lab images if needed (fast when they are up to date) and returns their folder.
pub(crate) fn lab_images() -> PathBuf {
    let status = std::process::Command::new(repo().join("images/build.sh")).status().expect("images/build.sh");
    assert!(status.success(), "images/build.sh failed");
    repo().join("out/images")
}

/// A TCP port free right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

/// Sends `request` to 127.0.0.1:`port` until the answer contains `until`.
pub(crate) fn ask(port: u16, request: &[u8], until: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(request);
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                last = String::from_utf8_lossy(&buf[..n]).into_owned();
                if last.contains(until) {
                    return last;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no answer containing {until:?} on port {port}; last: {last:?}");
}

/// Moves the calling thread into the network namespace pinned at `path`.
pub(crate) fn enter_netns(path: &Path) {
    use std::os::fd::AsFd;
    let file = std::fs::File::open(path).expect("opening the namespace");
    rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .expect("entering the namespace");
}

/// Runs the future `f` makes on a thread that entered the namespace pinned at `path`,
/// on a runtime of its own.
pub(crate) fn in_netns_async<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    let path = path.to_owned();
    std::thread::spawn(move || {
        enter_netns(&path);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f())
    })
    .join()
    .expect("the namespace thread panicked")
}
