//! `shoal volume ls|inspect|rm`: the named volumes of the boards, through the manager
//! (the CLI never reaches a board). A volume is local to its board, so one name may
//! exist on several boards; `ls` shows each with its NODE.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;
use shoal_proto::volumes::{VolumeControl, VolumeReply, VolumeView};
use shoal_proto::{ControlReply, ControlRequest};

use super::client::Client;
use super::output::{bytes, table};

/// `shoal volume` subcommands.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List the volumes of the connected boards.
    #[command(alias = "list")]
    Ls {
        /// Only print names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes in detail (JSON), on every board that has them.
    Inspect {
        /// Names.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (refused while a container or a service's task uses them).
    #[command(alias = "remove")]
    Rm {
        /// Only on this node (ID, ID prefix or hostname); default: every board that has it.
        #[arg(long)]
        node: Option<String>,
        /// Names.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
}

/// Runs a `shoal volume` subcommand.
pub async fn run(data_dir: &Path, cmd: VolumeCommand) -> anyhow::Result<()> {
    if let VolumeCommand::Rm { volumes, .. } | VolumeCommand::Inspect { volumes } = &cmd {
        for v in volumes {
            shoal_proto::options::check_volume_name(v).map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd).await;
    client.close().await;
    result
}

async fn call(client: &Client, req: VolumeControl) -> anyhow::Result<VolumeReply> {
    match client.call(ControlRequest::Volume(req)).await? {
        ControlReply::Volume(r) => Ok(r),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

async fn list(client: &Client) -> anyhow::Result<Vec<VolumeView>> {
    let VolumeReply::Volumes { volumes, unreachable } = call(client, VolumeControl::List).await? else {
        anyhow::bail!("unexpected answer from the manager");
    };
    if !unreachable.is_empty() {
        let names: Vec<&str> = unreachable.iter().map(|h| h.as_str()).collect();
        eprintln!("warning: no answer from {}: their volumes are not listed", names.join(", "));
    }
    Ok(volumes.into_vec())
}

async fn dispatch(client: &Client, cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Ls { quiet } => {
            let views = list(client).await?;
            if quiet {
                views.iter().for_each(|v| println!("{}", v.volume.name));
            } else {
                print!("{}", ls_table(&views));
            }
        }
        VolumeCommand::Inspect { volumes } => {
            let views = list(client).await?;
            let mut out = Vec::new();
            for name in &volumes {
                let found: Vec<_> = views.iter().filter(|v| v.volume.name.as_str() == name).collect();
                if found.is_empty() {
                    anyhow::bail!("no such volume: {name} (see `shoal volume ls`)");
                }
                out.extend(found.into_iter().map(inspect_json));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { node, volumes } => {
            let mut failed = Vec::new();
            for name in volumes {
                let req = VolumeControl::Remove {
                    name: shoal_proto::text(&name).map_err(|e| anyhow::anyhow!("{name:?}: {e}"))?,
                    node: node
                        .as_deref()
                        .map(shoal_proto::text)
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--node: {e}"))?,
                };
                match call(client, req).await {
                    Ok(_) => println!("{name}"),
                    Err(e) => failed.push(format!("{name}: {e}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}

/// `volume ls`: DRIVER, NODE, NAME, SIZE, USED BY.
pub fn ls_table(views: &[VolumeView]) -> String {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let users: Vec<&str> = v.volume.used_by.iter().map(|u| u.as_str()).collect();
            vec![
                "local".into(),
                v.hostname.to_string(),
                v.volume.name.to_string(),
                bytes(v.volume.size_bytes),
                if users.is_empty() { "-".into() } else { users.join(",") },
            ]
        })
        .collect();
    table(&["DRIVER", "NODE", "NAME", "SIZE", "USED BY"], &rows)
}

/// `volume inspect`, in Docker's JSON shape, plus the node and its users.
pub fn inspect_json(v: &VolumeView) -> serde_json::Value {
    let options: serde_json::Map<String, serde_json::Value> =
        v.volume.options.iter().filter_map(|o| o.split_once('=').map(|(k, val)| (k.to_owned(), json!(val)))).collect();
    json!({
        "CreatedAt": shoal_proto::time::rfc3339(v.volume.created_at_ms),
        "Driver": "local",
        "Labels": {},
        "Mountpoint": &*v.volume.mountpoint,
        "Name": v.volume.name.as_str(),
        "Options": if options.is_empty() { serde_json::Value::Null } else { json!(options) },
        "Scope": "local",
        "Node": { "ID": v.node.as_str(), "Hostname": v.hostname.as_str() },
        "UsageData": { "Size": v.volume.size_bytes, "RefCount": v.volume.used_by.len() },
        "UsedBy": v.volume.used_by.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::volumes::VolumeInfo;

    fn view(name: &str, users: &[&str]) -> VolumeView {
        VolumeView {
            node: shoal_proto::NodeId::from_random([3; 16]),
            hostname: shoal_proto::text("pi4").unwrap(),
            volume: VolumeInfo {
                name: shoal_proto::text(name).unwrap(),
                size_bytes: 3 << 20,
                used_by: users.iter().map(|u| shoal_proto::text(u).unwrap()).collect::<Vec<_>>().try_into().unwrap(),
                created_at_ms: 0,
                options: vec![shoal_proto::text("type=tmpfs").unwrap()].try_into().unwrap(),
                mountpoint: shoal_proto::BoundedString::lossy("/var/lib/shoal/agent/volumes/pgdata/_data"),
            },
        }
    }

    #[test]
    fn ls_and_inspect_show_node_size_and_users() {
        let t = ls_table(&[view("pgdata", &["db.1.abc"]), view("cache", &[])]);
        assert!(t.starts_with("DRIVER"), "{t}");
        assert!(t.contains("USED BY") && t.contains("pgdata") && t.contains("db.1.abc") && t.contains("pi4"), "{t}");
        let j = inspect_json(&view("pgdata", &["db.1.abc"]));
        assert_eq!(j["Name"], "pgdata");
        assert_eq!(j["Options"]["type"], "tmpfs");
        assert_eq!(j["UsageData"]["RefCount"], 1);
        assert_eq!(j["Node"]["Hostname"], "pi4");
    }
}
