//! `shoal node ...`: ls, inspect, rm, update, upgrade (in [`super::upgrade`]).

use std::path::Path;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use shoal_proto::{Availability, BoundedVec, ControlReply, ControlRequest, Label, NodeView, Role};

use super::client::Client;
use super::output::{bytes, table, utc};
use shoal_proto::renewal::Validity;
use shoal_proto::services::format_duration_ms;

/// `shoal node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show one or more nodes in detail.
    Inspect {
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Pretty)]
        format: Format,
        /// Node IDs, ID prefixes or hostnames.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster; their certificates are refused afterwards.
    Rm {
        /// Remove even if the node is still up.
        #[arg(short, long)]
        force: bool,
        /// Node IDs, ID prefixes or hostnames.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update(UpdateArgs),
    /// Replace the agent on boards with a new build, a few boards at a time; a board
    /// whose new agent fails rolls back by itself and the rollout pauses.
    Upgrade(super::upgrade::UpgradeArgs),
}

/// Output formats of `inspect`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// For people.
    Pretty,
    /// Docker-shaped JSON.
    Json,
}

/// `node update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// active, pause or drain.
    #[arg(long)]
    pub availability: Option<Availability>,
    /// Add or replace a label (KEY=VALUE).
    #[arg(long = "label-add", value_parser = Label::parse)]
    pub label_add: Vec<Label>,
    /// Remove a label by key.
    #[arg(long = "label-rm")]
    pub label_rm: Vec<String>,
    /// Node ID, ID prefix or hostname.
    pub node: String,
}

fn arg<const N: usize>(s: &str) -> anyhow::Result<shoal_proto::Text<N>> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

/// Runs a `shoal node` subcommand.
pub async fn run(data_dir: &Path, cmd: NodeCommand) -> anyhow::Result<()> {
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd).await;
    client.close().await;
    result
}

async fn dispatch(client: &Client, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls { quiet } => {
            let ControlReply::Nodes(nodes) = client.call(ControlRequest::NodeList).await? else {
                anyhow::bail!("unexpected answer from the manager");
            };
            if quiet {
                nodes.iter().for_each(|n| println!("{}", n.id));
            } else {
                print!("{}", ls_table(&nodes));
                for w in expiry_warnings(&nodes) {
                    eprintln!("{w}");
                }
            }
        }
        NodeCommand::Inspect { format, nodes } => {
            let mut views = Vec::new();
            for node in nodes {
                match client.call(ControlRequest::NodeInspect { node: arg(&node)? }).await? {
                    ControlReply::Node(v) => views.push(*v),
                    other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
                }
            }
            match format {
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&views.iter().map(json).collect::<Vec<_>>())?)
                }
                Format::Pretty => views.iter().for_each(|v| print!("{}", pretty(v))),
            }
        }
        NodeCommand::Rm { force, nodes } => {
            let mut failed = Vec::new();
            for node in nodes {
                match client.call(ControlRequest::NodeRemove { node: arg(&node)?, force }).await {
                    Ok(_) => println!("{node}"),
                    Err(e) => failed.push(format!("{node}: {e}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
        NodeCommand::Update(u) => {
            let label_add: BoundedVec<Label, { shoal_proto::MAX_LABELS }> =
                u.label_add.try_into().map_err(|e| anyhow::anyhow!("too many labels: {e}"))?;
            let label_rm = u.label_rm.iter().map(|k| arg(k)).collect::<anyhow::Result<Vec<_>>>()?;
            let req = ControlRequest::NodeUpdate {
                node: arg(&u.node)?,
                availability: u.availability,
                label_add,
                label_rm: label_rm.try_into().map_err(|e| anyhow::anyhow!("too many labels: {e}"))?,
            };
            client.call(req).await?;
            println!("{}", u.node);
        }
        NodeCommand::Upgrade(args) => super::upgrade::run(client, args).await?,
    }
    Ok(())
}

/// The `node ls` table. The manager's own node is marked `*`: the CLI runs there.
pub fn ls_table(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let me = if n.role == Role::Manager { " *" } else { "" };
            vec![
                format!("{}{me}", n.id),
                n.description.hostname.to_string(),
                n.status.to_string(),
                n.availability.to_string(),
                if n.role == Role::Manager { "Leader".into() } else { String::new() },
                n.description.arch.to_string(),
                n.description.agent_version.to_string(),
            ]
        })
        .collect();
    table(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ARCH", "VERSION"], &rows)
}

/// `node ls`'s warnings about certificates close to their end (within a week, or the
/// last fifth of their life): a board that was offline through its renewal window.
pub fn expiry_warnings(nodes: &[NodeView]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        let Some(c) = n.certificate else { continue };
        let v = Validity { from_ms: c.valid_from_ms, until_ms: c.valid_until_ms };
        if !v.expires_soon(c.manager_now_ms) {
            continue;
        }
        let what = if n.role == Role::Manager { "the manager's certificate" } else { "the certificate of node" };
        let when = if c.manager_now_ms >= c.valid_until_ms {
            format!("expired {} ago", format_duration_ms(c.manager_now_ms - c.valid_until_ms))
        } else {
            format!("expires in {}", format_duration_ms(c.valid_until_ms - c.manager_now_ms))
        };
        let fix = if n.role == Role::Manager {
            "it renews while `shoal manager run` runs"
        } else {
            "it renews over the node's session: bring the board online, or re-join it (`shoal node rm` and a new \
             join token) once it has expired"
        };
        out.push(format!("warning: {what} {} ({}) {when}: {fix}", n.description.hostname, n.id));
    }
    out
}

fn labels(list: &[Label]) -> serde_json::Map<String, serde_json::Value> {
    list.iter().map(|l| (l.key.to_string(), json!(l.value.as_str()))).collect()
}

/// Docker-shaped JSON for `node inspect --format json`.
pub fn json(n: &NodeView) -> serde_json::Value {
    let d = &n.description;
    let mut v = json!({
        "ID": n.id.as_str(),
        "CreatedAt": utc(n.created_at_ms),
        "Spec": {
            "Labels": labels(&n.labels),
            "Role": if n.role == Role::Manager { "manager" } else { "worker" },
            "Availability": n.availability.to_string().to_lowercase(),
        },
        "Description": {
            "Hostname": d.hostname.as_str(),
            "Platform": { "Architecture": d.arch.as_str(), "OS": d.os.as_str() },
            "Resources": { "NanoCPUs": u64::from(d.resources.cpus) * 1_000_000_000, "MemoryBytes": d.resources.memory_bytes },
            "Engine": {
                "EngineVersion": format!("shoal-agent {}", d.agent_version),
                "Labels": labels(&d.labels),
                "MissingKernelFeatures": d.missing_features.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            },
            "Devices": d.devices.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        },
        "Status": {
            "State": n.status.to_string().to_lowercase(),
            "Message": &*n.status_message,
            "Addr": n.addr.as_deref().unwrap_or(""),
            "LastSeenMsAgo": n.last_seen_ago_ms,
            "ClockSkewMs": n.clock_skew_ms,
        },
    });
    if let Some(c) = n.certificate {
        v["Certificate"] = json!({
            "NotBefore": utc(c.valid_from_ms),
            "NotAfter": utc(c.valid_until_ms),
            "ExpiresInMs": c.valid_until_ms as i64 - c.manager_now_ms as i64,
            "CurrentCA": c.current_ca,
        });
    }
    if n.role == Role::Manager {
        v["ManagerStatus"] =
            json!({ "Leader": true, "Reachability": "reachable", "Addr": n.addr.as_deref().unwrap_or("") });
    }
    v
}

/// The human form of `node inspect`.
pub fn pretty(n: &NodeView) -> String {
    let d = &n.description;
    let mut out = format!(
        "ID:\t\t\t{}\nHostname:\t\t{}\nJoined at:\t\t{}\nStatus:\n State:\t\t\t{}\n Availability:\t\t{}\n Address:\t\t{}\n",
        n.id,
        d.hostname,
        utc(n.created_at_ms),
        n.status,
        n.availability,
        n.addr.as_deref().unwrap_or("-"),
    );
    if !n.status_message.is_empty() {
        out.push_str(&format!(" Message:\t\t{}\n", n.status_message));
    }
    if n.role == Role::Manager {
        out.push_str("Manager Status:\n Leader:\t\tYes\n");
    }
    out.push_str(&format!(
        "Platform:\n Operating System:\t{}\n Architecture:\t\t{}\nResources:\n CPUs:\t\t\t{}\n Memory:\t\t{}\n",
        d.os,
        d.arch,
        d.resources.cpus,
        bytes(d.resources.memory_bytes)
    ));
    let all: Vec<&Label> = n.labels.iter().chain(d.labels.iter()).collect();
    if !all.is_empty() {
        out.push_str("Labels:\n");
        for l in all {
            out.push_str(&format!(" - {}={}\n", l.key, l.value));
        }
    }
    out.push_str(&format!("Agent Version:\t\tshoal-agent {}\n", d.agent_version));
    if let Some(c) = n.certificate {
        let left = if c.manager_now_ms >= c.valid_until_ms {
            format!("expired {} ago", format_duration_ms(c.manager_now_ms - c.valid_until_ms))
        } else {
            format!("in {}", format_duration_ms(c.valid_until_ms - c.manager_now_ms))
        };
        out.push_str(&format!("Certificate:\n Expires:\t\t{} ({left})\n", utc(c.valid_until_ms)));
        if !c.current_ca {
            out.push_str(" CA:\t\t\tthe old one (a CA rotation is in progress)\n");
        }
    }
    if let Some(skew) = n.clock_skew_ms {
        let dir = if skew < 0 { "behind" } else { "ahead of" };
        out.push_str(&format!(
            "Clock Skew:\t\t{}{} ({} the manager)\n",
            if skew < 0 { "-" } else { "" },
            format_duration_ms(skew.unsigned_abs()),
            dir
        ));
    }
    if !d.missing_features.is_empty() {
        out.push_str("Missing Kernel Features:\n");
        for m in d.missing_features.iter() {
            out.push_str(&format!(" - {m}\n"));
        }
    }
    if !d.devices.is_empty() {
        let devices: Vec<&str> = d.devices.iter().map(|m| m.as_str()).collect();
        out.push_str(&format!("Devices:\t\t{}\n", devices.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{NodeDescription, NodeId, NodeStatus};

    fn node(missing: &[&str]) -> NodeView {
        NodeView {
            id: NodeId::from_random([1; 16]),
            role: Role::Worker,
            status: NodeStatus::Ready,
            availability: Availability::Active,
            description: NodeDescription {
                hostname: shoal_proto::text("node1").unwrap(),
                missing_features: missing
                    .iter()
                    .map(|m| shoal_proto::text(m).unwrap())
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap(),
                ..NodeDescription::default()
            },
            labels: BoundedVec::new(),
            addr: None,
            created_at_ms: 0,
            last_seen_ago_ms: Some(0),
            status_message: shoal_proto::Message::lossy(""),
            certificate: None,
            clock_skew_ms: None,
        }
    }

    #[test]
    fn a_board_without_kernel_features_says_so_in_node_inspect() {
        let n = node(&["vxlan: no overlay networks (CONFIG_VXLAN)"]);
        let text = pretty(&n);
        assert!(text.contains("Missing Kernel Features:\n - vxlan: no overlay networks (CONFIG_VXLAN)\n"), "{text}");
        let v = json(&n);
        assert_eq!(v["Description"]["Engine"]["MissingKernelFeatures"][0], "vxlan: no overlay networks (CONFIG_VXLAN)");
        // A board with everything shows no such section.
        assert!(!pretty(&node(&[])).contains("Missing Kernel"));
        assert_eq!(json(&node(&[]))["Description"]["Engine"]["MissingKernelFeatures"], json!([]));
    }

    #[test]
    fn node_inspect_shows_the_certificate_and_skew_and_node_ls_warns_near_the_end() {
        const DAY: u64 = 24 * 3_600_000;
        let mut n = node(&[]);
        n.certificate = Some(shoal_proto::NodeCertificate {
            valid_from_ms: 0,
            valid_until_ms: 90 * DAY,
            manager_now_ms: 30 * DAY,
            current_ca: true,
        });
        n.clock_skew_ms = Some(-3_600_000);
        let text = pretty(&n);
        assert!(text.contains("Certificate:\n Expires:\t\t1970-03-91".replace("03-91", "04-01").as_str()), "{text}");
        assert!(text.contains("(in 1440h)"), "{text}");
        assert!(text.contains("Clock Skew:\t\t-1h (behind the manager)"), "{text}");
        assert!(expiry_warnings(&[n.clone()]).is_empty());
        n.certificate.as_mut().unwrap().manager_now_ms = 85 * DAY;
        let w = expiry_warnings(&[n.clone()]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("node1") && w[0].contains("expires in 120h"), "{w:?}");
        n.certificate.as_mut().unwrap().manager_now_ms = 91 * DAY;
        assert!(expiry_warnings(&[n])[0].contains("expired 24h ago"));
    }
}
