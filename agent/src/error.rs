//! The agent's errors, each saying what to do.

use std::path::PathBuf;

use shoal_proto::ErrorReply;

/// What can stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `join` on a board that already belongs to a cluster.
    #[error(
        "this node is already part of a cluster (node {node_id}): start it with `shoal-agent run`; to leave \
         that cluster and join again (e.g. after `shoal node rm`), run `shoal-agent join --force --token TOKEN \
         MANAGER`, which replaces the identity in {}",
        .dir.display()
    )]
    AlreadyJoined {
        /// Its node ID.
        node_id: String,
        /// Where its identity lives.
        dir: PathBuf,
    },
    /// The manager removed this node (`shoal node rm`): its identity is no longer honoured.
    #[error(
        "this node ({node_id}) was removed from the cluster: join it again with `shoal-agent join --token TOKEN \
         MANAGER` (no --force needed; it replaces the old identity in {})",
        .dir.display()
    )]
    Removed {
        /// Its former node ID.
        node_id: String,
        /// Where its identity lives.
        dir: PathBuf,
    },
    /// `run` on a board that never joined.
    #[error("this node has not joined a cluster (no identity in {}): run `shoal-agent join --token TOKEN MANAGER` first", .0.display())]
    NotJoined(PathBuf),
    /// The token does not parse.
    #[error("{0}")]
    Token(#[from] shoal_proto::token::TokenError),
    /// The manager's CA is not the one the token names.
    #[error(
        "the manager at {0} is not the cluster this token belongs to (its CA does not match the token's digest): \
         check the address, and ask that manager for `shoal manager join-token worker`"
    )]
    CaMismatch(String),
    /// The manager's certificate is not from a CA this board trusts: the cluster's CA was
    /// rotated while the board was away (or another machine answers at that address).
    #[error(
        "the manager at {addr} presents a certificate of a CA this board does not trust: the cluster's CA was \
         probably rotated (`shoal manager ca --rotate`) while this board was offline. To re-join, run \
         `shoal node rm {node_id}` on the manager, then here `shoal-agent join --force --token TOKEN MANAGER` with \
         the token of `shoal manager join-token worker`"
    )]
    CaRotated {
        /// The manager's address.
        addr: String,
        /// This board's node ID.
        node_id: String,
    },
    /// The manager did not answer.
    #[error("cannot reach the manager at {addr}: {detail}")]
    Unreachable {
        /// Where.
        addr: String,
        /// What happened.
        detail: String,
    },
    /// The manager said no.
    #[error("the manager refused: {}", .0.message)]
    Refused(ErrorReply),
    /// Stored credentials are unusable.
    #[error("node identity in {0} is unusable: {1}")]
    BadIdentity(PathBuf, String),
    /// The task supervisor could not start.
    #[error("{0}")]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// Local file trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AgentError {
    /// Whether retrying later may help (the manager is down or unreachable).
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused(e) => !e.kind.is_permanent(),
            _ => false,
        }
    }
}
