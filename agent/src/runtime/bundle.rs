//! A container's directory on disk: the OCI bundle, its overlay rootfs, logs, and the
//! files the shim leaves for the agent (PID, exit code). The layout is the contract
//! between the agent and the shims it starts, and survives agent restarts.
//!
//! ```text
//! <containers>/<id>/config.json   OCI runtime spec
//!                  /rootfs/       overlay mount point (layers + upper)
//!                  /upper/ work/  the container's own writable layer
//!                  /hosts hostname  bind-mounted into /etc
//!                  /resolv.conf   likewise, when the task has one (overlay networks)
//!                  /container.log  stdout+stderr, rotated (container.log.1, ...)
//!                  /shim.log      the shim's own messages
//!                  /pid           init PID, once started
//!                  /exit          "<code> <unix ms>", once exited
//! ```

use std::path::{Path, PathBuf};

use super::{ContainerStatus, RuntimeError};

/// Writes one of the files the agent and the shims leave each other (`pid`, `exit`,
/// `shim.pid`, `stop-signal`): owner-only, whole or not at all for any reader (a
/// temporary file, then a rename), but not fsynced. They describe processes, which a power
/// cut ends: after a reboot a container is over whatever they say (a missing `pid` makes
/// it read Created rather than Lost, and its task fails either way), while an agent
/// restart reads them from the page cache. The eight fsyncs (file and directory, four
/// files) cost ~6 ms each on a busy disk, up to 290 ms, in every container's start-up.
pub fn write_state(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    shoal_link::files::write_private_unsynced(path, bytes)
}

/// Paths of one container.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// The container `id` under `root`.
    pub fn new(root: &Path, id: &str) -> Self {
        Self { dir: root.join(id) }
    }

    /// Its directory (the OCI bundle).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// OCI spec.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Overlay mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Overlay upper directory.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Overlay work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The container's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// The shim's own log.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }

    /// The signal a stop sends first, as a number (written at create).
    pub fn stop_signal_file(&self) -> PathBuf {
        self.dir.join("stop-signal")
    }

    /// The stop signal recorded at create; SIGTERM for a container made before it was.
    pub fn read_stop_signal(&self) -> i32 {
        std::fs::read_to_string(self.stop_signal_file()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(15)
    }

    /// PID file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// Exit file.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit")
    }

    /// The PID the shim recorded, if started.
    pub fn read_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
    }

    /// The exit the shim recorded, if any.
    pub fn read_exit(&self) -> Option<(i32, u64)> {
        let text = std::fs::read_to_string(self.exit_file()).ok()?;
        let mut parts = text.split_whitespace();
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// Records the exit (by the shim), for the agent to read now or after it restarts.
    pub fn write_exit(&self, code: i32, at_ms: u64) -> Result<(), RuntimeError> {
        write_state(&self.exit_file(), format!("{code} {at_ms}\n").as_bytes())
            .map_err(RuntimeError::io("writing the exit file"))
    }

    /// The state these files describe; `shim_alive` says whether the monitor process
    /// still runs (only it can tell a running container from a lost one).
    pub fn status(&self, shim_alive: bool) -> ContainerStatus {
        if let Some((code, at_ms)) = self.read_exit() {
            return ContainerStatus::Exited { code, at_ms };
        }
        match self.read_pid() {
            None if !shim_alive => ContainerStatus::Created,
            Some(pid) if shim_alive => ContainerStatus::Running { pid },
            None => ContainerStatus::Created,
            Some(_) => ContainerStatus::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_replaced_whole_owner_only_and_leave_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = Bundle::new(&dir, "c1");
        std::fs::create_dir_all(b.dir()).unwrap();
        b.write_exit(1, 5).unwrap();
        b.write_exit(143, 1_700_000_000_000).unwrap();
        assert_eq!(b.read_exit(), Some((143, 1_700_000_000_000)));
        let mode = std::fs::metadata(b.exit_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(b.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["exit"], "no temporary file left");
        // A write that can't land (a directory in the way) leaves no temporary either.
        std::fs::create_dir(b.pid_file()).unwrap();
        assert!(write_state(&b.pid_file(), b"42\n").is_err());
        assert!(!b.dir().join("pid.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
