//! Named network namespaces, made the way `ip netns add` makes them: a short-lived
//! thread unshares `CLONE_NEWNET` and bind-mounts its `/proc/self/task/<tid>/ns/net`
//! onto a file in the namespace directory, which keeps the namespace alive with no
//! process in it. The OCI spec of a container points its network namespace at that
//! file.
//!
//! [`run_in`] runs a closure on a dedicated thread that has entered a namespace; the
//! thread ends with the closure, so no pooled thread (tokio's blocking pool) is ever
//! left in a container's namespace.
//!
//! This is the one module of `net` with `unsafe` (a single `unshare` call).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use super::error::NetError;

/// Makes `dir` exist and be a shared mount point, like `ip netns` does with
/// `/run/netns`: bind mounts made in it then propagate to mount namespaces cloned
/// later (containers), and an unmount here also frees their copies, so a removed
/// namespace does not linger.
pub(super) fn prepare_dir(dir: &Path) -> Result<(), NetError> {
    // Two concurrent callers could both find `dir` unmounted and stack two bind mounts.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    std::fs::create_dir_all(dir).map_err(|e| NetError::io(format!("creating {}", dir.display()), e))?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match rustix::mount::mount_change(dir, shared) {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one by binding it onto itself, then share it.
        Err(rustix::io::Errno::INVAL) => {
            rustix::mount::mount_bind(dir, dir)
                .map_err(|e| NetError::io(format!("bind-mounting {} onto itself", dir.display()), e.into()))?;
            rustix::mount::mount_change(dir, shared)
                .map_err(|e| NetError::io(format!("making {} a shared mount", dir.display()), e.into()))
        }
        Err(e) => Err(NetError::io(format!("making {} a shared mount", dir.display()), e.into())),
    }
}

/// Creates a new network namespace pinned at `path` (which must not exist).
pub(super) async fn create(path: &Path) -> Result<(), NetError> {
    let target = path.to_path_buf();
    let label = path.display().to_string();
    on_thread(&label, move || create_on_this_thread(&target)).await
}

fn create_on_this_thread(path: &Path) -> Result<(), NetError> {
    // The mount point: an empty file, created exclusively so two creators can't share it.
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| NetError::io(format!("creating {}", path.display()), e))?;
    let result = unshare_net().and_then(|()| {
        let tid = rustix::thread::gettid().as_raw_nonzero();
        let source = format!("/proc/self/task/{tid}/ns/net");
        rustix::mount::mount_bind(source.as_str(), path)
            .map_err(|e| NetError::io(format!("bind-mounting {source} onto {}", path.display()), e.into()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Whether `path` pins a namespace: the bind mount is done, not just the empty file
/// [`create`] makes first. Entering the file in between fails with EINVAL.
pub(super) fn is_pinned(path: &Path) -> bool {
    /// `NSFS_MAGIC`: the filesystem of `/proc/<pid>/ns/*`, and so of their bind mounts.
    const NSFS_MAGIC: u64 = 0x6e73_6673;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as u64 == NSFS_MAGIC)
}

#[allow(unsafe_code)]
fn unshare_net() -> Result<(), NetError> {
    // SAFETY: `unshare_unsafe` is unsafe only because of `UnshareFlags::FILES`, which
    // would split the file descriptor table under other threads' feet. NEWNET touches
    // nothing but this thread's network namespace, and this thread exits right after.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
        .map_err(|e| NetError::io("unsharing the network namespace", e.into()))
}

/// Unmounts and deletes the namespace file at `path`; a missing one is fine. The
/// namespace itself lives on while a process still runs in it.
pub(super) fn remove(path: &Path) -> Result<(), NetError> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        // EINVAL: not a mount point (a half-made namespace); ENOENT: already gone.
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(NetError::io(format!("unmounting {}", path.display()), e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NetError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Runs `f` on a new thread that has entered the namespace pinned at `path`, and
/// awaits its result without blocking the caller's runtime.
pub(super) async fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let ns = File::open(path).map_err(|e| NetError::io(format!("opening network namespace {}", path.display()), e))?;
    let label = path.display().to_string();
    let path: PathBuf = path.to_path_buf();
    on_thread(&label, move || {
        rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(|e| NetError::io(format!("entering network namespace {}", path.display()), e.into()))?;
        drop(ns);
        f()
    })
    .await
}

/// Runs `f` on a fresh OS thread (which exits with it) and awaits the answer.
async fn on_thread<T, F>(label: &str, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| NetError::io("starting a network namespace thread", e))?;
    rx.await.map_err(|_| NetError::Worker(label.to_string()))?
}
