//! The errors of the nf_tables client. Each message says what to do; classify them with
//! the `is_*` methods, never by their text.

/// A ruleset the renderer refuses, before anything reaches the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesetError {
    /// A service without backends would match and drop nothing useful.
    #[error("service {0} has no backends: give it at least one, or leave it out of the ruleset")]
    NoBackends(String),
    /// Port 0 can't be matched.
    #[error("service {0} has port 0: use a port from 1 to 65535")]
    ZeroPort(String),
    /// A port-less service ([`super::L4::Any`]) with a port.
    #[error("service {0} matches any protocol, so it can't match a port: use port 0 or a protocol")]
    PortOfAny(String),
    /// A backend with port 0 or address 0.0.0.0.
    #[error("service {service} has backend {backend}: backends need an address and a port from 1 to 65535")]
    Backend {
        /// The service.
        service: String,
        /// The bad backend.
        backend: String,
    },
    /// Two services for one destination, protocol and port.
    #[error("service {0} appears twice: merge the backends into one service")]
    Duplicate(String),
    /// An interface name Linux can't have.
    #[error("interface name {0:?} is invalid: use 1 to 15 characters from [A-Za-z0-9_.-]")]
    Interface(String),
    /// More of something than one batch should carry.
    #[error("{count} {what} is more than the {max} one ruleset may hold: split the services over fewer addresses")]
    TooMany {
        /// What there is too much of.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Applying a ruleset failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The ruleset was refused before anything was sent.
    #[error("invalid ruleset: {0}")]
    Invalid(#[from] RulesetError),
    /// No nf_tables in the kernel (or no netfilter netlink at all).
    #[error("the board's kernel lacks nf_tables (CONFIG_NF_TABLES, CONFIG_NETFILTER_NETLINK): {detail}; use a kernel built with them, see docs/networking.md")]
    NoNfTables {
        /// What showed it.
        detail: String,
    },
    /// nf_tables is there but a part this ruleset needs is not.
    #[error(
        "the board's kernel lacks what {what} needs ({config}): use a kernel with those options or load their modules"
    )]
    MissingFeature {
        /// The message that was refused.
        what: String,
        /// The kernel options it needs.
        config: &'static str,
    },
    /// The agent lacks CAP_NET_ADMIN, or the table belongs to another process.
    #[error("{what}: permission denied: shoal-agent must run as root (CAP_NET_ADMIN), and no other program may own table ip shoal")]
    PermissionDenied {
        /// The message that was refused.
        what: String,
    },
    /// The batch does not fit the socket's send buffer.
    #[error("the ruleset's batch of {bytes} bytes is larger than the kernel accepts in one message: raise net.core.wmem_default or apply fewer services")]
    TooLarge {
        /// The batch's size.
        bytes: usize,
    },
    /// The kernel refused one message of the batch; nothing was changed.
    #[error("the kernel refused {what}: {source}{}; nothing was changed, report this as a bug in shoal", .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        /// The message that was refused.
        what: String,
        /// The errno.
        source: std::io::Error,
        /// The kernel's extended-ack text, if any.
        message: Option<String>,
    },
    /// The socket failed, or the kernel's answer made no sense.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl NftError {
    /// Whether the board can't do this at all (kernel options missing): retrying won't help.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, NftError::NoNfTables { .. } | NftError::MissingFeature { .. })
    }

    /// Whether the agent lacks privileges.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NftError::PermissionDenied { .. })
    }

    /// The errno of a kernel refusal, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
