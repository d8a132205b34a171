//! shoal's wire protocol and pure rules (messages, framing, join tokens, naming and
//! parsing helpers); it does no I/O and reads no clock.
//!
//! The messages agents, the manager and the CLI exchange, their framing, and the join
//! token format.
//!
//! This crate is pure data. It does no I/O, reads no clock and spawns nothing; the
//! QUIC shells in `shoal-link`, the agent and the manager move its bytes. Every type that
//! crosses the wire is bounded (`heapless::String`, [`BoundedVec`], [`Bytes`]) and every
//! frame's length is checked against a limit before its body is read, so malformed or
//! hostile input is refused at decode and cannot grow memory.
#![warn(missing_docs)]

pub mod bounded;
pub mod dispatch;
pub mod exec;
pub mod frame;
pub mod health;
pub mod ids;
pub mod images;
pub mod logs;
pub mod messages;
pub mod networks;
pub mod options;
pub mod renewal;
pub mod secrets;
pub mod services;
pub mod template;
pub mod time;
pub mod token;
pub mod upgrade;
pub mod volumes;

pub use bounded::{BoundedString, BoundedVec, Bytes};
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use ids::NodeId;
pub use images::{Digest, FetchBlob, ImageRef, ImageView, Platform, WantedImage};
pub use messages::*;
pub use services::{
    apply_status, Backward, Constraint, ConstraintKey, ConstraintOp, EndpointMode, FailureAction, PortConfig, Protocol,
    PublishMode, ResourceRequirements, RestartCondition, RestartPolicy, Service, ServiceId, ServiceMode, ServiceSpec,
    SpecError, Task, TaskId, TaskSpec, TaskState, TaskStatus, UpdateConfig, UpdateOrder,
};
pub use token::JoinToken;

/// Lowercase hex of `bytes` (digests, IDs in file names).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Version of the message schema below. Exchanged as the first field of every request;
/// a peer speaking another version is answered with [`ErrorKind::VersionMismatch`].
/// 3: specs carry their seccomp mode; disk pressure, store backups, forced image removal.
/// 4: `shoal exec` (CLI → manager → board streams); overlay networks (objects, task
/// addresses, VIPs, each board's network view); stop signals.
/// 5: the routing mesh (board addresses and published ports in the ingress view), keys of
/// encrypted networks, missing kernel features in node descriptions, hostnames and
/// templates in specs, the service ID in assignments.
/// 6: certificate renewal and CA rotation, `service logs`, health checks, registry pulls,
/// service options, volumes, devices, secrets and configs.
/// 7: heartbeats as datagrams beside the session and the manager's `HeartbeatPeriod`
/// advice; over-the-air agent updates (`node upgrade`).
pub const PROTOCOL_VERSION: u16 = 7;

/// ALPN protocol name negotiated by TLS, so a non-shoal QUIC peer fails at the handshake.
pub const ALPN: &[u8] = b"shoal/1";

/// Server name the manager's certificate carries and every client asks for. Clients
/// reach managers by IP address, so the name is fixed, like Swarm's `swarm-manager`.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

/// Short text of at most `N` bytes, rejected at decode when longer.
pub type Text<const N: usize> = heapless::String<N>;

/// Builds a bounded [`Text`] from a `&str`, failing when it is too long.
pub fn text<const N: usize>(s: &str) -> Result<Text<N>, TooLong> {
    Text::try_from(s).map_err(|_| TooLong { limit: N, len: s.len() })
}

/// Builds a bounded [`Text`], cutting `s` at a character boundary to fit. For messages
/// meant for people (errors), where a cut message beats no message.
pub fn text_lossy<const N: usize>(s: &str) -> Text<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Text::try_from(&s[..end]).unwrap_or_default()
}

/// A value was longer than its wire bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("value of {len} bytes is longer than the limit of {limit}")]
pub struct TooLong {
    /// The bound.
    pub limit: usize,
    /// The offered length.
    pub len: usize,
}
