//! Over-the-air agent updates (`shoal node upgrade`).
//!
//! The CLI sends [`NodeUpgrade`] with the builds' sizes and digests, then each build's
//! raw bytes in order on the same stream; the manager answers with
//! [`crate::ControlReply::UpgradeProgress`] frames and one final
//! [`crate::ControlReply::Upgraded`]. To each board it opens a stream over the board's
//! session connection carrying [`AgentUpgrade`] and the bytes; the board answers
//! [`crate::Response::UpgradeAccepted`] (it swapped its binary and restarts) or an error,
//! and comes back on a new session whose version names the build.
//!
//! An agent's version is `VERSION+BUILD`, where `BUILD` is the first [`BUILD_ID_LEN`] hex
//! digits of the SHA-256 of its own binary ([`agent_version`]): two builds of one release
//! are told apart, and the manager sees which build came back without another field.

use serde::{Deserialize, Serialize};

use crate::messages::{Hostname, Message};
use crate::{BoundedVec, Digest, Text};

/// Largest agent build accepted (a release build weighs under 10 MiB, a debug one ~70).
pub const MAX_AGENT_BYTES: u64 = 128 * 1024 * 1024;
/// Most builds in one request: one per board target.
pub const MAX_BUILDS: usize = 4;
/// Most nodes named in one request.
pub const MAX_UPGRADE_NODES: usize = 1024;
/// Hex digits of the binary's SHA-256 in an agent version.
pub const BUILD_ID_LEN: usize = 12;
/// How long a board waits by default for its new agent to open a session before it
/// restores the previous binary.
pub const DEFAULT_DEADLINE_MS: u32 = 60_000;
/// Bounds of the deadline: long enough to start, short enough that a bad build does not
/// keep a board out for long.
pub const DEADLINE_RANGE_MS: (u32, u32) = (2_000, 600_000);

/// `shoal node upgrade`: which nodes, how many at once, and the builds that follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpgrade {
    /// Nodes by ID, ID prefix or hostname; empty with `all`.
    pub nodes: BoundedVec<Text<64>, MAX_UPGRADE_NODES>,
    /// Every worker node.
    pub all: bool,
    /// Boards restarting at once (at least 1).
    pub parallelism: u16,
    /// How long each board gives its new agent to open a session, ms.
    pub deadline_ms: u32,
    /// The builds whose bytes follow, in this order.
    pub builds: BoundedVec<AgentBuild, MAX_BUILDS>,
}

/// One agent build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBuild {
    /// Boards of this architecture (as [`crate::NodeDescription::arch`] names it) get it;
    /// `None`: every board named gets it (`--agent FILE`), and the board checks it fits.
    pub arch: Option<Text<16>>,
    /// Exact length of the bytes that follow.
    pub size: u64,
    /// `sha256:<hex>` of those bytes.
    pub digest: Digest,
}

/// From the manager to a board, over its session connection: `size` bytes of a new
/// agent binary follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpgrade {
    /// Exact length of the binary.
    pub size: u64,
    /// `sha256:<hex>` the board checks the bytes against.
    pub digest: Digest,
    /// How long the new agent has to open a session before the board restores the
    /// previous binary, ms.
    pub deadline_ms: u32,
}

/// How one node's upgrade went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeState {
    /// Its binary is on its way.
    Sending,
    /// It came back on the new build.
    Upgraded,
    /// It already runs that build.
    Unchanged,
    /// It refused the build, or came back on its previous one, or not at all.
    Failed,
    /// Not tried: the rollout paused on a failure, or the node is not connected.
    Skipped,
}

/// One step of a rollout, for the CLI to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeProgress {
    /// The node's hostname.
    pub hostname: Hostname,
    /// Where it is.
    pub state: UpgradeState,
    /// The version it runs now, or why it failed.
    pub message: Message,
}

/// The end of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeSummary {
    /// Nodes now on the new build.
    pub upgraded: u32,
    /// Nodes that already ran it.
    pub unchanged: u32,
    /// Nodes that failed (each rolled back or refused the build).
    pub failed: u32,
    /// Nodes not tried because the rollout paused.
    pub skipped: u32,
    /// The rollout stopped at a failure; running the command again resumes it.
    pub paused: bool,
}

/// `VERSION+BUILD` for a binary whose SHA-256 hex is `sha256_hex`.
pub fn agent_version(version: &str, sha256_hex: &str) -> String {
    format!("{version}+{}", &sha256_hex[..sha256_hex.len().min(BUILD_ID_LEN)])
}

/// Whether an agent reporting `version` runs the build of `digest` (`sha256:<hex>`).
pub fn runs_build(version: &str, digest: &str) -> bool {
    let Some(hex) = crate::images::sha256_hex(digest) else { return false };
    version.rsplit_once('+').is_some_and(|(_, build)| build.len() == BUILD_ID_LEN && hex.starts_with(build))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_names_its_build() {
        let hex = "ab".repeat(32);
        let v = agent_version("0.1.0", &hex);
        assert_eq!(v, "0.1.0+abababababab");
        assert!(runs_build(&v, &format!("sha256:{hex}")));
        assert!(!runs_build(&v, &format!("sha256:{}", "cd".repeat(32))));
        assert!(!runs_build("0.1.0", &format!("sha256:{hex}")));
        assert!(!runs_build("0.1.0+ab", &format!("sha256:{hex}")));
        assert!(!runs_build(&v, "sha256:short"));
        // It fits the description's field.
        assert!(crate::text::<32>(&v).is_ok());
    }
}
