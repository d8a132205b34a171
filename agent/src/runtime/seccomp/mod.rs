//! Seccomp for containers without libseccomp: a profile (shoal's default, which is
//! Docker's default policy, or the user's in Docker's format) is resolved for the
//! container's capabilities and the board's architecture into the spec's OCI
//! `linux.seccomp` section ([`profile`]); the container's init compiles that section to
//! classic BPF ([`bpf`]) and loads it ([`install`]) just before the workload runs, after
//! libcontainer has set `no_new_privileges` and dropped capabilities.
//!
//! Why not libcontainer's own seccomp: it links the C library libseccomp, which would end
//! the agent's static pure-Rust build for three targets.

pub mod bpf;
pub mod install;
pub mod profile;

use oci_spec::runtime::LinuxSeccomp;

/// What is wrong with a seccomp profile, or with loading one.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile is malformed.
    #[error("seccomp profile: {0}")]
    Invalid(String),
    /// The profile asks for something a board cannot do.
    #[error("seccomp profile: {0} is not supported")]
    Unsupported(String),
    /// The compiled filter is longer than the kernel takes.
    #[error("seccomp profile: its filter needs {0} instructions; the kernel takes at most 4096")]
    TooLarge(usize),
    /// The kernel refused the filter.
    #[error("loading the seccomp filter: {0}")]
    Install(std::io::Error),
}

/// How a container's system calls are filtered (`--security-opt seccomp=…`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompPolicy {
    /// shoal's default profile (Docker's default policy).
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format.
    Profile(String),
}

/// The seccomp section of a container with `caps` under `policy` on this board, or
/// `None` when unconfined. `device_cgroup` says whether the board enforces a device
/// cgroup; where it cannot, device nodes may not be created either, even unconfined.
pub fn section(
    policy: &SeccompPolicy,
    caps: &[&str],
    device_cgroup: bool,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    let profile = match policy {
        SeccompPolicy::Unconfined if device_cgroup => return Ok(None),
        SeccompPolicy::Unconfined => profile::allow_all(),
        SeccompPolicy::Default => profile::default_profile(),
        SeccompPolicy::Profile(json) => profile::parse(json)?,
    };
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let target = profile::Target {
        caps,
        go_arch: profile::go_arch(),
        kernel: profile::kernel_version(&release).unwrap_or((0, 0)),
    };
    let mut seccomp = profile.resolve(&target);
    if !device_cgroup {
        profile::forbid_device_nodes(&mut seccomp);
    }
    // Compile once here so a profile the board cannot load fails the task at create,
    // with its reason, instead of inside the starting container.
    bpf::compile(&seccomp, bpf::Abi::native())?;
    Ok(Some(seccomp))
}
