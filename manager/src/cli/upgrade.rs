//! `shoal node upgrade`: picks the agent build for each board's target (one `--agent
//! FILE` for all, or `<dir>/<target>/shoal-agent` as `scripts/build-agents.sh` leaves
//! them), sends them with their digests and shows the rollout as the manager reports it.

use std::path::{Path, PathBuf};

use clap::Args;
use shoal_proto::upgrade::{AgentBuild, NodeUpgrade, UpgradeState, DEFAULT_DEADLINE_MS, MAX_BUILDS};
use shoal_proto::{BoundedVec, ControlReply, ControlRequest, Role};

use super::client::Client;

/// `node upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Upgrade every worker node.
    #[arg(long, conflicts_with = "nodes")]
    pub all: bool,
    /// Send this one agent binary to every node named (each board checks it fits).
    #[arg(long, value_name = "FILE")]
    pub agent: Option<PathBuf>,
    /// Where the builds are, one per target: DIR/<target>/shoal-agent.
    #[arg(long, value_name = "DIR", default_value = "out/agents", conflicts_with = "agent")]
    pub builds: PathBuf,
    /// Boards restarting at once.
    #[arg(long, default_value_t = 1)]
    pub parallelism: u16,
    /// Seconds a board gives its new agent to reach the manager before it rolls back.
    #[arg(long, default_value_t = DEFAULT_DEADLINE_MS / 1000)]
    pub deadline: u32,
    /// Node IDs, ID prefixes or hostnames.
    #[arg(required_unless_present = "all")]
    pub nodes: Vec<String>,
}

/// The Rust target whose static agent a board of `arch` runs.
pub fn target_of(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("x86_64-unknown-linux-musl"),
        "aarch64" => Some("aarch64-unknown-linux-musl"),
        "arm" => Some("armv7-unknown-linux-gnueabihf"),
        _ => None,
    }
}

fn digest_of(path: &Path) -> anyhow::Result<(u64, String)> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok((bytes.len() as u64, format!("sha256:{}", shoal_proto::hex(digest.as_ref()))))
}

/// Runs `node upgrade`.
pub async fn run(client: &Client, args: UpgradeArgs) -> anyhow::Result<()> {
    let mut builds = Vec::new();
    let mut files = Vec::new();
    if let Some(file) = &args.agent {
        let (size, digest) = digest_of(file)?;
        builds.push(AgentBuild { arch: None, size, digest: shoal_proto::text(&digest)? });
        files.push(file.clone());
    } else {
        // Only the targets of the boards named are read and sent.
        let ControlReply::Nodes(nodes) = client.call(ControlRequest::NodeList).await? else {
            anyhow::bail!("unexpected answer from the manager");
        };
        let mut archs: Vec<String> = nodes
            .iter()
            .filter(|n| n.role == Role::Worker)
            .filter(|n| {
                args.all
                    || args.nodes.iter().any(|q| {
                        n.id.as_str() == q
                            || n.description.hostname.as_str() == q
                            || n.id.as_str().starts_with(q.as_str())
                    })
            })
            .map(|n| n.description.arch.to_string())
            .collect();
        archs.sort();
        archs.dedup();
        for arch in archs {
            let target = target_of(&arch).ok_or_else(|| {
                anyhow::anyhow!("no known agent target for boards of architecture {arch}: pass --agent FILE")
            })?;
            let file = args.builds.join(target).join("shoal-agent");
            if !file.exists() {
                anyhow::bail!(
                    "no agent build for {arch} boards at {}: run scripts/build-agents.sh, pass --builds DIR or --agent FILE",
                    file.display()
                );
            }
            let (size, digest) = digest_of(&file)?;
            builds.push(AgentBuild {
                arch: Some(shoal_proto::text(&arch)?),
                size,
                digest: shoal_proto::text(&digest)?,
            });
            files.push(file);
        }
    }
    let nodes = args.nodes.iter().map(|n| shoal_proto::text(n)).collect::<Result<Vec<_>, _>>()?;
    let req = NodeUpgrade {
        nodes: nodes.try_into().map_err(|e| anyhow::anyhow!("too many nodes: {e}"))?,
        all: args.all,
        parallelism: args.parallelism.max(1),
        deadline_ms: args.deadline.saturating_mul(1000),
        builds: BoundedVec::<_, MAX_BUILDS>::try_from(builds).map_err(|e| anyhow::anyhow!("too many builds: {e}"))?,
    };
    let summary = client
        .upgrade(req, files, |p| {
            let state = match p.state {
                UpgradeState::Sending => "sending",
                UpgradeState::Upgraded => "upgraded",
                UpgradeState::Unchanged => "unchanged",
                UpgradeState::Failed => "failed",
                UpgradeState::Skipped => "skipped",
            };
            println!("{}: {state}: {}", p.hostname, p.message);
        })
        .await?;
    println!(
        "{} upgraded, {} unchanged, {} failed, {} skipped",
        summary.upgraded, summary.unchanged, summary.failed, summary.skipped
    );
    if summary.paused {
        anyhow::bail!(
            "rollout paused after a failure: the failed board runs its previous agent; fix the build and run the \
             command again to resume"
        );
    }
    Ok(())
}
