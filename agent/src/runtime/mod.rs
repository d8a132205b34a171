//! Running containers. [`Runtime`] is what the agent's supervisor drives; the real
//! backend, [`LibcontainerRuntime`], runs each container through youki's libcontainer
//! under a small per-container monitor process (the shim: `shoal-agent shim`), so
//! containers, their logs and their exit codes outlive agent restarts. [`fake`] is a
//! stand-in for unit tests of the pure core only.
//!
//! Not here: images (see `crate::images`), networks (see `crate::net`).

pub mod attach_warmup;
pub mod bundle;
pub mod exec_in;
pub mod fake;
pub mod from_image;
pub mod init;
pub mod libcontainer;
pub mod logs;
pub mod options;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod swap;
pub mod trim;
pub mod user;

use std::path::PathBuf;
use std::time::Duration;

pub use self::libcontainer::LibcontainerRuntime;

/// What to run: everything the OCI spec is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Container ID: lowercase letters, digits, `-`, `_`, `.`; at most 64 bytes.
    pub id: String,
    /// Hostname inside the container.
    pub hostname: String,
    /// The container's own addresses: `/etc/hosts` names the hostname at each (at
    /// `127.0.1.1` when it has none of its own, on the host's network).
    pub addresses: Vec<std::net::IpAddr>,
    /// The process: executable and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User and group IDs.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// Supplementary groups, the primary one first, as Docker sets them (see
    /// [`user`]).
    pub additional_gids: Vec<u32>,
    /// Read-only layer directories stacked with overlayfs, topmost first. The container
    /// writes to its own upper directory; the layers are shared, never copied.
    pub layers: Vec<PathBuf>,
    /// Network namespace.
    pub network: NetworkMode,
    /// Memory limit in bytes (swap included: no swapping past it).
    pub memory_limit: Option<u64>,
    /// CPU limit in thousandths of a CPU (1500 = one and a half CPUs).
    pub cpu_millis: Option<u64>,
    /// Extra `/etc/hosts` lines (`IP NAME...`).
    pub hosts: Vec<String>,
    /// System-call filter (`--security-opt seccomp=…`).
    pub seccomp: seccomp::SeccompPolicy,
    /// The signal a stop sends first (`--stop-signal`, else the image's `StopSignal`,
    /// else SIGTERM); SIGKILL follows after the grace period.
    pub stop_signal: i32,
    /// The container's `/etc/resolv.conf`; `None` keeps the image's own file.
    pub resolv_conf: Option<String>,
    /// Mounts, devices, capabilities, read-only root, init, sysctls, rlimits and
    /// annotations, as resolved on the board (see [`options`]).
    pub options: options::Resolved,
    /// Secrets and configs, bound read-only from the container's tmpfs (see
    /// [`crate::secrets`]).
    pub files: Vec<crate::secrets::FileMount>,
}

/// Which network namespace a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// The node's own (`--network host`).
    Host,
    /// A prepared namespace, bind-mounted at this path (see `crate::net`).
    Namespace(PathBuf),
}

/// A container's state as the runtime observes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running {
        /// Host PID of its init process.
        pid: u32,
    },
    /// Its process ended.
    Exited {
        /// Exit code; 128 + N when killed by signal N (143 for SIGTERM), like Docker.
        code: i32,
        /// When, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// The monitor vanished without recording an exit (the node rebooted, or it was
    /// killed): the container is gone and its exit code unknown.
    Lost,
}

/// Runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad container ID.
    #[error("invalid container id {0:?}: use at most 64 characters of a-z, 0-9, '-', '_', '.'")]
    BadId(String),
    /// No such container.
    #[error("no such container: {0}")]
    NotFound(String),
    /// The container exists already.
    #[error("container {0} already exists")]
    Exists(String),
    /// The request does not fit the container's state.
    #[error("container {id} is {state}: {what}")]
    State {
        /// Container.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was refused.
        what: &'static str,
    },
    /// The container could not start (missing executable, bad spec, ...).
    #[error("container {id} failed to start: {reason}")]
    StartFailed {
        /// Container.
        id: String,
        /// Why, as libcontainer said it.
        reason: String,
    },
    /// The OCI spec could not be built.
    #[error("invalid container spec: {0}")]
    Spec(String),
    /// File or mount trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// Whether the failure belongs to the container's configuration or image (retrying
    /// the same thing fails the same way), as opposed to the node.
    pub fn is_container_fault(&self) -> bool {
        matches!(self, Self::StartFailed { .. } | Self::Spec(_) | Self::BadId(_))
    }
}

/// The container lifecycle. Calls block (they wait on processes and files); the async
/// agent calls them from `spawn_blocking`.
pub trait Runtime: Send + Sync {
    /// Prepares a container (rootfs, bundle) without starting it.
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError>;
    /// Starts a created container, returning its init PID.
    fn start(&self, id: &str) -> Result<u32, RuntimeError>;
    /// SIGTERM, then SIGKILL after `grace`; returns the exit code (143 when SIGTERM
    /// ended it). Stopping an exited container returns its code.
    fn stop(&self, id: &str, grace: Duration) -> Result<i32, RuntimeError>;
    /// Removes a container that is not running, with its rootfs and logs.
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    /// Current state.
    fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// Every container this runtime knows, running or not (after an agent restart,
    /// these are the containers to take back).
    fn list(&self) -> Result<Vec<String>, RuntimeError>;
    /// A descriptor that turns readable when a running container's status changes on its
    /// own (its monitor exited, having recorded the exit or not), so the agent waits for
    /// exits instead of polling them. `None` when the runtime can't give one (the
    /// container is not running, the kernel has no pidfd): the caller then polls.
    fn exit_watch(&self, _id: &str) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

/// Checks a container ID before it names directories and cgroups.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::BadId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_checked_before_they_name_anything() {
        assert!(validate_id("appserver.1.abc-def_0").is_ok());
        for bad in ["", "..", "../x", "a/b", "UPPER", &"x".repeat(65), ".hidden"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
