//! The real runtime: containers run through youki's libcontainer, each under its own
//! shim process (see [`super::shim`]), their root filesystems stacked with overlayfs
//! from shared read-only layers.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::{Pid, Signal};

use super::bundle::Bundle;
use super::{spec, validate_id, ContainerConfig, ContainerStatus, Runtime, RuntimeError};

/// How long a shim may take to report that its container started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this board enforces a spec's device rules: with cgroup v1 (also the hybrid
/// layout, where libcontainer uses v1) the `devices` controller does; under a pure v2
/// hierarchy that needs an eBPF program, which this agent does not load (libcgroups'
/// loader links the C libbpf), so the seccomp filter forbids device nodes instead.
fn device_cgroup_enforced() -> bool {
    Path::new("/sys/fs/cgroup/devices").is_dir()
}

/// Runs containers through libcontainer.
pub struct LibcontainerRuntime {
    containers: PathBuf,
    state: PathBuf,
    agent_exe: PathBuf,
    /// Shims this agent process started, to reap them when they exit.
    shims: Mutex<HashMap<String, Child>>,
    /// Shims of deleted containers, still removing their cgroups and libcontainer state
    /// after the recorded exit: reaped once finished, and waited for by a new container
    /// of the same ID before it starts.
    retiring: Mutex<Vec<(String, Child)>>,
}

impl LibcontainerRuntime {
    /// A runtime keeping containers under `containers` and libcontainer's volatile
    /// state under `state` (a tmpfs such as `/run` spares SD cards). `agent_exe` is the
    /// `shoal-agent` binary, which runs the shims.
    pub fn new(containers: PathBuf, state: PathBuf, agent_exe: PathBuf) -> Self {
        // Directories of deleted containers whose removal an earlier agent did not finish.
        let leftovers: Vec<PathBuf> = std::fs::read_dir(&containers)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(REMOVED_PREFIX)))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        if !leftovers.is_empty() {
            remove_in_background(leftovers);
        }
        Self { containers, state, agent_exe, shims: Mutex::new(HashMap::new()), retiring: Mutex::new(Vec::new()) }
    }

    /// The runtime of an agent with this data directory: containers on disk next to the
    /// node's identity, libcontainer state in `/run/shoal/<hash of the data dir>`
    /// ([`shoal_link::runtime_state_dir`]).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        let p = Self::paths(data_dir);
        Self::new(p.containers, p.state, p.agent_exe)
    }

    /// Where the runtime of an agent with this data directory keeps things.
    pub fn paths(data_dir: &Path) -> crate::exec::Paths {
        crate::exec::Paths {
            containers: crate::identity::agent_dir(data_dir).join("containers"),
            state: shoal_link::runtime_state_dir(data_dir),
            // The binary this process was started from, not the file at its path: that
            // holds another build once an update swapped it (until the agent restarts)
            // or a rebuild replaced it, and a shim of another build than its agent
            // could misread its state, or not start at all ("No such file").
            agent_exe: PathBuf::from("/proc/self/exe"),
            volumes: crate::volumes::dir(data_dir),
        }
    }

    fn bundle(&self, id: &str) -> Result<Bundle, RuntimeError> {
        validate_id(id)?;
        let bundle = Bundle::new(&self.containers, id);
        if !bundle.dir().exists() {
            return Err(RuntimeError::NotFound(id.to_owned()));
        }
        Ok(bundle)
    }

    /// Whether the shim of `id` still runs: ours (a child), or one left by an earlier
    /// agent, recognised by its command line.
    fn shim_alive(&self, id: &str, bundle: &Bundle) -> bool {
        if let Ok(mut shims) = self.shims.lock() {
            if let Some(child) = shims.get_mut(id) {
                match child.try_wait() {
                    Ok(None) => return true,
                    _ => {
                        shims.remove(id);
                        return false;
                    }
                }
            }
        }
        let Some(pid) =
            std::fs::read_to_string(bundle.dir().join("shim.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return false;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.contains(&b"shim".as_slice()) && args.contains(&id.as_bytes())
    }

    /// Waits, up to `deadline`, until no shim of an earlier container `id` is still
    /// cleaning up: the new container's shim would find the old libcontainer state
    /// and cgroup in its way. Reaps every retiring shim that has finished.
    fn wait_for_retired(&self, id: &str, deadline: Instant) {
        loop {
            let pidfd = {
                let mut retiring = self.retiring.lock().expect("retiring shims");
                reap_finished(&mut retiring);
                // Opened while the child is known unreaped: the PID is still its own.
                let same = retiring.iter().find(|(other, _)| other == id);
                match same.and_then(|(_, child)| Pid::from_raw(i32::try_from(child.id()).ok()?)) {
                    Some(pid) => rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok(),
                    None => return,
                }
            };
            if Instant::now() >= deadline {
                tracing::warn!("the shim of an earlier container {id} is still cleaning up; starting anyway");
                return;
            }
            match &pidfd {
                Some(fd) => {
                    let _ = wait_readable(fd.as_fd(), deadline);
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    fn mount_rootfs(&self, config: &ContainerConfig, bundle: &Bundle) -> Result<(), RuntimeError> {
        if config.layers.is_empty() {
            return Err(RuntimeError::Spec("a container needs at least one image layer".into()));
        }
        let lower: Vec<String> = config.layers.iter().map(|p| p.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            bundle.upper().display(),
            bundle.work().display()
        );
        let c_string =
            |s: String| std::ffi::CString::new(s).map_err(|_| RuntimeError::Spec("layer path with a NUL byte".into()));
        let volatile = c_string(format!("{data},volatile"))?;
        let data = c_string(data)?;
        let mount = |data: &std::ffi::CStr| {
            rustix::mount::mount("overlay", bundle.rootfs(), "overlay", MountFlags::empty(), Some(data))
        };
        // `volatile` (Linux 5.10+): the overlay never syncs its upper layer. Without it
        // the overlay's last unmount, at delete, syncs the whole filesystem under the
        // upper directory (the board's data partition, with whatever else is dirty on
        // it: an image being pulled), and a container's fsync(2) of its own files reaches
        // the disk. Neither buys anything here: a writable layer is mounted once, at
        // create, and never again; after a crash or a power cut its container is lost
        // and its task gets a new container with a fresh layer, so what the old layer
        // held on disk is never read. Volumes are mounts of their own, not in the
        // overlay, and keep their fsyncs. An older kernel refuses the option (EINVAL):
        // then without it.
        match mount(&volatile) {
            Err(rustix::io::Errno::INVAL) => mount(&data),
            other => other,
        }
        .map_err(|e| RuntimeError::io("mounting the container's overlay rootfs")(e.into()))
    }

    fn prepare(&self, config: &ContainerConfig, bundle: &Bundle) -> Result<(), RuntimeError> {
        for dir in [bundle.rootfs(), bundle.upper(), bundle.work()] {
            std::fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        }
        // Read back by `stop`, which knows only the container's ID.
        super::bundle::write_state(&bundle.stop_signal_file(), config.stop_signal.to_string().as_bytes())
            .map_err(RuntimeError::io("writing the stop signal"))?;
        std::fs::write(bundle.dir().join("hosts"), spec::hosts_file(config))
            .map_err(RuntimeError::io("writing hosts"))?;
        std::fs::write(bundle.dir().join("hostname"), format!("{}\n", config.hostname))
            .map_err(RuntimeError::io("writing hostname"))?;
        if let Some(text) = &config.resolv_conf {
            std::fs::write(bundle.dir().join("resolv.conf"), text).map_err(RuntimeError::io("writing resolv.conf"))?;
        }
        let oci = spec::build(config, bundle, device_cgroup_enforced())?;
        oci.save(bundle.config()).map_err(|e| RuntimeError::Spec(e.to_string()))?;
        self.mount_rootfs(config, bundle)?;
        for m in config.options.mounts.iter().filter(|m| m.copy_up) {
            crate::volumes::copy_up(&bundle.rootfs(), &m.target, &m.source)
                .map_err(RuntimeError::io(format!("filling the new volume at {} from the image", m.target)))?;
        }
        make_working_dir(&bundle.rootfs(), &config.cwd)
    }

    fn wait_for_exit(&self, bundle: &Bundle, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((code, _)) = bundle.read_exit() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops a container whose shim died without recording an exit (a stray `kill -9`,
    /// the OOM killer): its init may still run, but no one holds its PID any more, so it
    /// is not signalled by PID. Its cgroup still names exactly its processes: libcontainer
    /// kills them all through it (freeze, SIGKILL, thaw). The exit is then recorded here,
    /// 137 as for any container killed by SIGKILL, so the container reads Exited from now
    /// on and can be deleted. Without this a lost container could never be stopped.
    fn stop_lost(&self, id: &str, bundle: &Bundle) -> Result<i32, RuntimeError> {
        let lost = |what| RuntimeError::State { id: id.to_owned(), state: "lost", what };
        let mut container = libcontainer::container::Container::load(self.state.join(id))
            .map_err(|_| lost("it can't be signalled and its runtime state is gone"))?;
        let sigkill = libcontainer::signal::Signal::try_from(9).map_err(|_| lost("SIGKILL is unknown"))?;
        container.kill(sigkill, true).map_err(|_| lost("killing it through its cgroup failed"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stopped = container.refresh_status().is_ok()
                && container.status() == libcontainer::container::ContainerStatus::Stopped;
            if stopped {
                break;
            }
            if Instant::now() >= deadline {
                return Err(lost("it did not exit even after SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        bundle.write_exit(137, now)?;
        Ok(137)
    }

    fn signal(&self, id: &str, bundle: &Bundle, signal: Signal) -> Result<(), RuntimeError> {
        match bundle.status(self.shim_alive(id, bundle)) {
            // The shim reaps only after writing the exit file, so while there is none the
            // PID still belongs to this container.
            ContainerStatus::Running { pid } => {
                if let Some(p) = Pid::from_raw(pid as i32) {
                    match rustix::process::kill_process(p, signal) {
                        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                        Err(e) => return Err(RuntimeError::io("signalling the container")(e.into())),
                    }
                }
                Ok(())
            }
            other => {
                Err(RuntimeError::State { id: id.to_owned(), state: state_name(other), what: "it can't be signalled" })
            }
        }
    }
}

/// Reaps the retiring shims that have exited, and forgets them.
fn reap_finished(retiring: &mut Vec<(String, Child)>) {
    retiring.retain_mut(|(_, child)| matches!(child.try_wait(), Ok(None)));
}

/// What a deleted container's directory is renamed to, before its removal in the
/// background: a name no container ID can have (IDs never start with a dot), so `list`,
/// `create` and the volumes' users never take it for a container.
const REMOVED_PREFIX: &str = ".removed-";

/// Removes `dirs` on a thread of their own. Nothing is mounted in them any more, and
/// nothing else writes there: their shims have exited.
fn remove_in_background(dirs: Vec<PathBuf>) {
    let spawned = std::thread::Builder::new().name("remove".into()).spawn(move || {
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("no thread to remove a deleted container's directory: {e}");
    }
}

/// The shim's answer: its first line on `fd`, read in this thread with poll(2) until
/// `deadline` (a thread of its own to read it, and a channel back, cost every start a
/// thread and one more wake-up). Whatever came before the deadline, the end of the pipe
/// or an error; at most 4 KiB, so a shim gone wrong can't make the agent hold more.
fn read_line_until(fd: std::os::fd::BorrowedFd<'_>, deadline: Instant) -> String {
    const MAX: usize = 4096;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    while !line.contains(&b'\n') && line.len() < MAX {
        if deadline <= Instant::now() {
            break;
        }
        match wait_readable(fd, deadline) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        match rustix::io::read(fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&chunk[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => break,
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    String::from_utf8_lossy(&line[..end]).into_owned()
}

/// Waits until `fd` is readable (a pipe with data, a pidfd whose process has exited) or
/// `deadline` passes: poll(2)'s count of ready descriptors, 0 at the deadline. An
/// interrupted or failed poll returns early, and the caller checks again.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, deadline: Instant) -> rustix::io::Result<usize> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
    poll(&mut [PollFd::from_borrowed_fd(fd, PollFlags::IN)], Some(&timeout))
}

fn state_name(s: ContainerStatus) -> &'static str {
    match s {
        ContainerStatus::Created => "created",
        ContainerStatus::Running { .. } => "running",
        ContainerStatus::Exited { .. } => "exited",
        ContainerStatus::Lost => "lost",
    }
}

/// Creates the working directory in `rootfs` when the image lacks it, as Docker does
/// (root-owned, 0755, in the container's own layer); libcontainer would fail the start
/// at its `chdir`. The image is hostile: no symlink on the way is followed (it could
/// lead out of the rootfs onto the board), and where one is, nothing more is made; the
/// container's own `chdir` then resolves it inside the container.
pub fn make_working_dir(rootfs: &std::path::Path, cwd: &str) -> Result<(), RuntimeError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let context = || format!("creating the working directory {cwd}");
    let mut dir = rustix::fs::open(rootfs, flags, Mode::empty()).map_err(|e| RuntimeError::io(context())(e.into()))?;
    for part in cwd.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Ok(());
        }
        dir = match rustix::fs::openat(&dir, part, flags, Mode::empty()) {
            Ok(next) => next,
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755))
                    .map_err(|e| RuntimeError::io(context())(e.into()))?;
                rustix::fs::openat(&dir, part, flags, Mode::empty())
                    .map_err(|e| RuntimeError::io(context())(e.into()))?
            }
            // A symlink (ELOOP) or a file (ENOTDIR): not ours to resolve.
            Err(_) => return Ok(()),
        };
    }
    Ok(())
}

impl Runtime for LibcontainerRuntime {
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        validate_id(&config.id)?;
        let bundle = Bundle::new(&self.containers, &config.id);
        if bundle.dir().exists() {
            return Err(RuntimeError::Exists(config.id.clone()));
        }
        // The shim's first cgroup move comes ~3 ms from now; its wait starts here.
        super::attach_warmup::start();
        std::fs::create_dir_all(bundle.dir()).map_err(RuntimeError::io("creating the container directory"))?;
        if let Err(e) = self.prepare(config, &bundle) {
            // Leave nothing half-made behind.
            let _ = rustix::mount::unmount(bundle.rootfs(), UnmountFlags::DETACH);
            let _ = std::fs::remove_dir_all(bundle.dir());
            return Err(e);
        }
        Ok(())
    }

    fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let bundle = self.bundle(id)?;
        let status = bundle.status(self.shim_alive(id, &bundle));
        if status != ContainerStatus::Created {
            return Err(RuntimeError::State {
                id: id.to_owned(),
                state: state_name(status),
                what: "only a created container can start",
            });
        }
        self.wait_for_retired(id, Instant::now() + Duration::from_secs(5));
        let shim_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle.shim_log())
            .map_err(RuntimeError::io("opening the shim log"))?;
        let mut child = crate::exec::agent_command(&self.agent_exe)
            .arg("shim")
            .arg("--containers")
            .arg(&self.containers)
            .arg("--state")
            .arg(&self.state)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            // Its own process group: a Ctrl-C to the agent must not stop containers.
            .process_group(0)
            .spawn()
            .map_err(RuntimeError::io("starting the container's shim"))?;
        // Read back after an agent restart to find the live shim: whole or absent, never torn.
        let _ = super::bundle::write_state(&bundle.dir().join("shim.pid"), format!("{}\n", child.id()).as_bytes());
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = read_line_until(stdout.as_fd(), Instant::now() + START_TIMEOUT);
        self.shims.lock().expect("shim table").insert(id.to_owned(), child);
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ok ").and_then(|p| p.parse().ok()) {
            return Ok(pid);
        }
        let reason = match line.strip_prefix("err ") {
            Some(r) => r.to_owned(),
            None => format!("the shim gave no answer; see {}", bundle.shim_log().display()),
        };
        Err(RuntimeError::StartFailed { id: id.to_owned(), reason })
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<i32, RuntimeError> {
        let bundle = self.bundle(id)?;
        if let Some((code, _)) = bundle.read_exit() {
            return Ok(code);
        }
        if let ContainerStatus::Lost = bundle.status(self.shim_alive(id, &bundle)) {
            return self.stop_lost(id, &bundle);
        }
        let first = Signal::from_named_raw(bundle.read_stop_signal()).unwrap_or(Signal::TERM);
        self.signal(id, &bundle, first)?;
        if let Some(code) = self.wait_for_exit(&bundle, grace) {
            return Ok(code);
        }
        self.signal(id, &bundle, Signal::KILL)?;
        self.wait_for_exit(&bundle, Duration::from_secs(10)).ok_or_else(|| RuntimeError::State {
            id: id.to_owned(),
            state: "running",
            what: "it did not exit even after SIGKILL",
        })
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let bundle = self.bundle(id)?;
        let alive = self.shim_alive(id, &bundle);
        if let ContainerStatus::Running { .. } = bundle.status(alive) {
            return Err(RuntimeError::State {
                id: id.to_owned(),
                state: "running",
                what: "stop it before deleting it",
            });
        }
        // The exit is recorded and the logs are drained: what the shim still does is
        // remove the container's cgroups and libcontainer state (~1.5 ms), which nobody
        // needs to wait for but a new container of the same ID (see `wait_for_retired`).
        // Ours goes on in the background; one an earlier agent started is not our child,
        // and is waited for here by its command line.
        let ours = self.shims.lock().expect("shim table").remove(id);
        let cleaning = match ours {
            Some(mut child) => match child.try_wait() {
                Ok(None) => {
                    let mut retiring = self.retiring.lock().expect("retiring shims");
                    reap_finished(&mut retiring);
                    retiring.push((id.to_owned(), child));
                    true
                }
                _ => false,
            },
            None => {
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.shim_alive(id, &bundle) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                false
            }
        };
        // A shim that died before it could clean up leaves the state behind (loading a
        // container whose state is gone makes libcontainer log an ERROR: checked first).
        let state = self.state.join(id);
        if !cleaning && state.join("state.json").exists() {
            if let Ok(mut c) = libcontainer::container::Container::load(state) {
                let _ = c.delete(true);
            }
        }
        match rustix::mount::unmount(bundle.rootfs(), UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(RuntimeError::io("unmounting the container's rootfs")(e.into())),
        }
        // One rename takes the directory out of the way, and its contents (the writable
        // layer's files, logs, the bundle: some thirty entries for a container that
        // wrote nothing, each a journal update on the data partition) go on a thread of
        // their own: removing them here made every delete wait for the disk. The ID is
        // free at once; a removal cut short (the agent stopped) is finished by the next
        // runtime made over this directory.
        let trash = self.containers.join(format!("{REMOVED_PREFIX}{id}-{}", shoal_link::wall_ms()));
        match std::fs::rename(bundle.dir(), &trash) {
            Ok(()) => remove_in_background(vec![trash]),
            Err(_) => {
                std::fs::remove_dir_all(bundle.dir()).map_err(RuntimeError::io("removing the container directory"))?
            }
        }
        Ok(())
    }

    fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let bundle = self.bundle(id)?;
        Ok(bundle.status(self.shim_alive(id, &bundle)))
    }

    /// A pidfd of the container's shim: the shim exits right after recording the exit
    /// (or dies without doing so: then the container is lost), so its end is exactly
    /// when the status changes. The shim may be an earlier agent's (not our child, so
    /// no SIGCHLD), which a pidfd watches as well. Checked after opening: the PID read
    /// from `shim.pid` could have been reused before the pidfd pinned it.
    fn exit_watch(&self, id: &str) -> Option<std::os::fd::OwnedFd> {
        let bundle = self.bundle(id).ok()?;
        let pid = std::fs::read_to_string(bundle.dir().join("shim.pid")).ok()?.trim().parse::<i32>().ok()?;
        let fd = rustix::process::pidfd_open(Pid::from_raw(pid)?, rustix::process::PidfdFlags::empty()).ok()?;
        matches!(bundle.status(self.shim_alive(id, &bundle)), ContainerStatus::Running { .. }).then_some(fd)
    }

    fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let entries = match std::fs::read_dir(&self.containers) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::io("listing containers")(e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_id(n).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_working_dir_is_made_without_following_symlinks() {
        let dir = std::env::temp_dir().join(format!("shoal-cwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (rootfs, outside) = (dir.join("rootfs"), dir.join("outside"));
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        make_working_dir(&rootfs, "/srv/app/./data").unwrap();
        let meta = std::fs::metadata(rootfs.join("srv/app/data")).unwrap();
        assert!(meta.is_dir());
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o755);
        make_working_dir(&rootfs, "/").unwrap();
        make_working_dir(&rootfs, "/srv/app").unwrap();
        // A symlink in the image, pointing at the board: nothing is made through it.
        std::os::unix::fs::symlink(&outside, rootfs.join("data")).unwrap();
        make_working_dir(&rootfs, "/data/x/y").unwrap();
        assert!(!outside.join("x").exists());
        make_working_dir(&rootfs, "/../escape").unwrap();
        assert!(!dir.join("escape").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The shim's answer is its first line, whatever follows; a shim that closes its end
    /// early or never answers gives what it wrote, and never hangs the agent past the
    /// deadline.
    #[test]
    fn the_shims_answer_is_its_first_line_and_waits_no_longer_than_the_deadline() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"ok 42\nsomething later").unwrap();
        assert_eq!(read_line_until(r.as_fd(), Instant::now() + Duration::from_secs(5)), "ok 42");

        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"err no newline").unwrap();
        drop(w);
        assert_eq!(read_line_until(r.as_fd(), Instant::now() + Duration::from_secs(5)), "err no newline");

        let (r, _w) = rustix::pipe::pipe().unwrap();
        let t = Instant::now();
        assert_eq!(read_line_until(r.as_fd(), t + Duration::from_millis(100)), "");
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2), "{waited:?}");

        // A line split across writes is put together.
        let (r, w) = rustix::pipe::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            rustix::io::write(&w, b"ok ").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            rustix::io::write(&w, b"7\n").unwrap();
        });
        assert_eq!(read_line_until(r.as_fd(), Instant::now() + Duration::from_secs(5)), "ok 7");
        writer.join().unwrap();
    }

    /// libcontainer's netlink client (`linux.netDevices`) is left out of the agent
    /// (patches/libcontainer-net-devices-feature.patch): a spec that names network devices
    /// is refused before anything runs, not run without them.
    #[test]
    fn a_spec_with_network_devices_is_refused() {
        use libcontainer::oci_spec::runtime::{
            LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxNetDevice, SpecBuilder,
        };
        let netns = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).build().unwrap();
        let devices = HashMap::from([("eth1".to_owned(), LinuxNetDevice::default())]);
        let linux = LinuxBuilder::default().namespaces(vec![netns]).net_devices(devices).build().unwrap();
        let spec = SpecBuilder::default().linux(linux).build().unwrap();
        let syscall = libcontainer::syscall::syscall::create_syscall();
        let err = libcontainer::utils::validate_spec_for_net_devices(&spec, &*syscall).unwrap_err();
        assert!(matches!(err, libcontainer::utils::NetDevicesError::FeatureDisabled), "{err}");
        assert!(err.to_string().contains("`net-devices` feature"), "{err}");
    }
}
