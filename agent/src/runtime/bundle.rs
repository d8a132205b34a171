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

    /// Records the exit (by the shim), durably: the agent may only read it much later.
    pub fn write_exit(&self, code: i32, at_ms: u64) -> Result<(), RuntimeError> {
        shoal_link::files::write_private(&self.exit_file(), format!("{code} {at_ms}\n").as_bytes())
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
