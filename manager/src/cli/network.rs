//! `shoal network ...`: create, ls, inspect, rm, in Docker's words and output shapes.
//! `ls` also shows each board's local `host` and `bridge` networks as Docker does; they
//! are not objects of the manager.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;
use shoal_proto::networks::{Driver, Network, NetworkInspect, NetworkReply, NetworkRequest, NetworkSpec, Subnet};
use shoal_proto::{ControlReply, ControlRequest, Label};

use super::client::Client;
use super::output::table;

/// `shoal network` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create {
        /// Driver: overlay.
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form, e.g. 10.0.9.0/24 (default: a free /24 of 10.0.0.0/8).
        #[arg(long, value_parser = |s: &str| Subnet::parse(s).map_err(|e| e.to_string()))]
        subnet: Option<Subnet>,
        /// Gateway address inside the subnet (default: its first address).
        #[arg(long)]
        gateway: Option<String>,
        /// Let standalone containers attach (carried).
        #[arg(long)]
        attachable: bool,
        /// Driver options: `encrypted` encrypts traffic between boards.
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        /// `KEY=VALUE` labels.
        #[arg(long)]
        label: Vec<String>,
        /// Its name.
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks in detail (JSON).
    Inspect {
        /// Names, IDs or unique ID prefixes.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (not ingress; not while a service uses them).
    #[command(alias = "remove")]
    Rm {
        /// Names, IDs or unique ID prefixes.
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// The `network create` flags as a spec, checked before connecting.
pub fn spec_from_flags(
    driver: &str,
    subnet: Option<Subnet>,
    gateway: Option<&str>,
    attachable: bool,
    opts: &[String],
    labels: &[String],
    name: &str,
) -> anyhow::Result<NetworkSpec> {
    let name = shoal_proto::text(name).map_err(|e| anyhow::anyhow!("network name {name:?}: {e}"))?;
    let mut spec = NetworkSpec::new(name);
    spec.driver = Driver::parse(driver)?;
    spec.subnet = subnet;
    spec.gateway =
        gateway.map(|g| g.parse().map_err(|_| shoal_proto::networks::NetworkError::Gateway(g.into()))).transpose()?;
    spec.attachable = attachable;
    for o in opts {
        match o.as_str() {
            "encrypted" | "encrypted=true" | "encrypted=" => spec.encrypted = true,
            other => anyhow::bail!("unknown --opt {other:?}: shoal's overlay takes --opt encrypted"),
        }
    }
    for l in labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        let label = Label {
            key: shoal_proto::text(k).map_err(|e| anyhow::anyhow!("label {k:?}: {e}"))?,
            value: shoal_proto::text(v).map_err(|e| anyhow::anyhow!("label {k:?}: {e}"))?,
        };
        spec.labels.push(label).map_err(|_| anyhow::anyhow!("too many labels: give at most 64"))?;
    }
    spec.validate()?;
    Ok(spec)
}

/// Runs a `shoal network` subcommand.
pub async fn run(data_dir: &Path, cmd: NetworkCommand) -> anyhow::Result<()> {
    let spec = match &cmd {
        NetworkCommand::Create { driver, subnet, gateway, attachable, opt, label, name } => {
            Some(spec_from_flags(driver, *subnet, gateway.as_deref(), *attachable, opt, label, name)?)
        }
        _ => None,
    };
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd, spec).await;
    client.close().await;
    result
}

async fn call(client: &Client, req: NetworkRequest) -> anyhow::Result<NetworkReply> {
    match client.call(ControlRequest::Network(req)).await? {
        ControlReply::Network(r) => Ok(r),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

fn arg(s: &str) -> anyhow::Result<shoal_proto::Text<64>> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

async fn dispatch(client: &Client, cmd: NetworkCommand, spec: Option<NetworkSpec>) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create { .. } => {
            let spec = spec.expect("built before connecting");
            let NetworkReply::Created(id) = call(client, NetworkRequest::Create(Box::new(spec))).await? else {
                anyhow::bail!("unexpected answer from the manager");
            };
            println!("{id}");
        }
        NetworkCommand::Ls { quiet } => {
            let NetworkReply::Networks(list) = call(client, NetworkRequest::List).await? else {
                anyhow::bail!("unexpected answer from the manager");
            };
            if quiet {
                list.iter().for_each(|n| println!("{}", n.id.short()));
            } else {
                print!("{}", ls_table(&list));
            }
        }
        NetworkCommand::Inspect { networks } => {
            let mut out = Vec::new();
            for n in &networks {
                let NetworkReply::Network(i) = call(client, NetworkRequest::Inspect { network: arg(n)? }).await? else {
                    anyhow::bail!("unexpected answer from the manager");
                };
                out.push(inspect_json(&i));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { networks } => {
            let mut failed = Vec::new();
            for n in networks {
                match call(client, NetworkRequest::Remove { network: arg(&n)? }).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => failed.push(format!("{n}: {e}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}

/// `network ls`: the manager's networks (ingress first), then the boards' local ones.
pub fn ls_table(list: &[Network]) -> String {
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| vec![n.id.short().to_owned(), n.spec.name.to_string(), n.spec.driver.as_str().into(), "swarm".into()])
        .collect();
    for local in ["bridge", "host"] {
        rows.push(vec!["-".into(), local.into(), local.into(), "local".into()]);
    }
    table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
}

/// `network inspect`, in Docker's JSON shape, plus where it exists and its tasks.
pub fn inspect_json(i: &NetworkInspect) -> serde_json::Value {
    let n = &i.network;
    let containers: serde_json::Map<String, serde_json::Value> = i
        .tasks
        .iter()
        .map(|t| {
            let v = json!({
                "Name": t.name.as_str(),
                "IPv4Address": format!("{}/{}", t.address, n.subnet.prefix()),
                "Node": t.node.as_ref().map(|h| h.as_str()).unwrap_or(""),
            });
            (t.task_id.to_string(), v)
        })
        .collect();
    let services: serde_json::Map<String, serde_json::Value> = i
        .services
        .iter()
        .map(|s| {
            let vip = s.vip.map(|a| a.to_string()).unwrap_or_default();
            (s.name.to_string(), json!({ "VIP": vip, "EndpointMode": s.endpoint_mode.to_string() }))
        })
        .collect();
    let labels: serde_json::Map<String, serde_json::Value> =
        n.spec.labels.iter().map(|l| (l.key.to_string(), json!(l.value.as_str()))).collect();
    let mut options = serde_json::Map::new();
    options.insert("com.docker.network.driver.overlay.vxlanid_list".into(), json!(n.vni.to_string()));
    if n.spec.encrypted {
        options.insert("encrypted".into(), json!(""));
    }
    json!({
        "Name": n.spec.name.as_str(),
        "Id": n.id.as_str(),
        "Created": shoal_proto::time::rfc3339(n.created_at_ms),
        "Scope": "swarm",
        "Driver": n.spec.driver.as_str(),
        "IPAM": { "Driver": "default", "Config": [{ "Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string() }] },
        "Attachable": n.spec.attachable,
        "Ingress": n.ingress,
        "Containers": containers,
        "Services": services,
        "Options": options,
        "Labels": labels,
        "Peers": i.nodes.iter().map(|h| json!({ "Name": h.as_str() })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_create_flags_are_refused_before_connecting() {
        let e = |r: anyhow::Result<NetworkSpec>| r.unwrap_err().to_string();
        assert!(e(spec_from_flags("bridge", None, None, false, &[], &[], "n")).contains("overlay"));
        let s = Some(Subnet::parse("10.0.9.0/24").unwrap());
        assert!(e(spec_from_flags("overlay", s, Some("10.0.8.1"), false, &[], &[], "n")).contains("not a host address"));
        assert!(e(spec_from_flags("overlay", None, Some("10.0.8.1"), false, &[], &[], "n")).contains("needs a subnet"));
        assert!(e(spec_from_flags("overlay", s, Some("nope"), false, &[], &[], "n")).contains("invalid gateway"));
        assert!(e(spec_from_flags("overlay", None, None, false, &["mtu=1".into()], &[], "n")).contains("--opt"));
        let ok = spec_from_flags("overlay", s, None, true, &["encrypted".into()], &["a=b".into()], "n").unwrap();
        assert!(ok.encrypted && ok.attachable && ok.labels.len() == 1);
    }

    #[test]
    fn ls_shows_the_local_networks_as_docker_does() {
        let n = crate::core::ipam::ingress(shoal_proto::networks::NetworkId::from_random([1; 16]), 0);
        let out = ls_table(&[n]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NETWORK ID"));
        assert!(lines[1].contains("ingress") && lines[1].contains("overlay") && lines[1].contains("swarm"));
        assert!(lines[3].contains("host") && lines[3].contains("local"));
    }
}
