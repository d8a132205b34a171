//! The network's errors. Each message says what to do; callers classify them with the
//! `is_*` methods, never by their text.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use shoal_proto::Protocol;

/// What can go wrong while setting up or tearing down container networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration can't work (bad bridge name, subnet too small or too large).
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// A container ID that can't name a namespace file or an interface.
    #[error("invalid container id {0:?}: use 1 to 128 characters from [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    /// `create_sandbox` for a container that already has one.
    #[error("container {0} already has a network sandbox: remove it first (remove_sandbox)")]
    SandboxExists(String),
    /// Every address of the subnet is in use.
    #[error(
        "no free address left in {subnet} ({in_use} in use): remove stopped containers or configure a larger subnet"
    )]
    SubnetExhausted {
        /// The subnet, as `a.b.c.d/n`.
        subnet: String,
        /// How many addresses are allocated.
        in_use: usize,
    },
    /// The allocation file is unreadable, corrupt or for another subnet.
    #[error("address allocations in {} are unusable: {reason}; remove the file once no container of this network runs", .path.display())]
    IpamState {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A link with the bridge's name exists but is something else.
    #[error("network interface {0} exists but is not a bridge: delete it or configure another bridge name")]
    NotABridge(String),
    /// The host port is taken by another process or another publication.
    #[error(
        "host port {port} is already in use on this node ({proto}): stop what listens there or publish another port"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// Its protocol.
        proto: Protocol,
    },
    /// A kernel refusal that means the agent lacks privileges.
    #[error("{op}: permission denied: shoal-agent must run as root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    PermissionDenied {
        /// What was being done.
        op: String,
    },
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The board's kernel can't give the container what its networks need (nf_tables
    /// for its load balancer and outbound NAT); the text says which option is missing.
    #[error("this board can't set up the container's service VIPs and outbound NAT: {0}")]
    Unsupported(String),
    /// The thread working inside a namespace died without answering.
    #[error("the network namespace worker for {0} stopped unexpectedly: see the agent log")]
    Worker(String),
    /// An address outside the network was given where one of its own was expected.
    #[error("address {ip} is not in {subnet}")]
    ForeignAddress {
        /// The address.
        ip: Ipv4Addr,
        /// The subnet.
        subnet: String,
    },
    /// The board's kernel lacks something a network needs.
    #[error("this board's kernel has no {feature} support: build it with {option} (see docs/networking.md)")]
    MissingKernelFeature {
        /// What is missing, as users know it.
        feature: &'static str,
        /// The kernel configuration option that provides it.
        option: &'static str,
    },
}

impl NetError {
    /// Whether the host port asked for is taken.
    pub fn is_port_in_use(&self) -> bool {
        matches!(self, Self::PortInUse { .. })
    }

    /// Whether the subnet has no free address left.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, Self::SubnetExhausted { .. })
    }

    /// Whether the agent lacks the privileges to do it.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::PermissionDenied { .. })
    }

    /// Wraps a netlink error, turning EPERM/EACCES into [`NetError::PermissionDenied`].
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        let op = op.into();
        match errno(&source) {
            Some(code) if is_permission_errno(code) => Self::PermissionDenied { op },
            _ => Self::Netlink { op, source },
        }
    }

    /// Wraps an I/O error, turning EPERM/EACCES into [`NetError::PermissionDenied`].
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        let op = op.into();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            Self::PermissionDenied { op }
        } else {
            Self::Io { op, source }
        }
    }
}

/// The positive errno a netlink NACK carries, if that is what `e` is.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn is_permission_errno(errno: i32) -> bool {
    let kind = std::io::Error::from_raw_os_error(errno).kind();
    kind == std::io::ErrorKind::PermissionDenied
}
