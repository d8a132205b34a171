//! `shoal secret ...` and `shoal config ...`: create, ls, inspect, rm and update, in
//! Docker's words and output shapes. Bytes come from a file or stdin (`-`); a secret's
//! are never shown back, a config's are shown by `inspect` as Docker's `Spec.Data`
//! (base64 there, plain text here when it is UTF-8).

use std::io::Read;
use std::path::Path;

use clap::Subcommand;
use serde_json::json;
use shoal_proto::secrets::{Data, Kind, ObjectReply, ObjectRequest, ObjectSpec, ObjectView, MAX_DATA};
use shoal_proto::{BoundedVec, ControlReply, ControlRequest, Label};

use super::client::Client;
use super::output::table;

/// `shoal secret` / `shoal config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ObjectCommand {
    /// Create one from a file, or from stdin with `-`.
    Create {
        /// `KEY=VALUE` labels.
        #[arg(short, long)]
        label: Vec<String>,
        /// Its name.
        name: String,
        /// A file, or `-` for stdin.
        file: String,
    },
    /// List them.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show them in detail (JSON; never a secret's bytes).
    Inspect {
        /// Names, IDs or unique ID prefixes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove them (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        /// Names, IDs or unique ID prefixes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give one new bytes: a new version, and every service using it rolls to it.
    Update {
        /// Its name.
        name: String,
        /// A file, or `-` for stdin.
        file: String,
    },
}

/// Reads the bytes of `file` (`-`: stdin), at most 500 KiB and not empty.
pub fn read_data(kind: Kind, file: &str) -> anyhow::Result<Data> {
    let mut bytes = Vec::new();
    let limit = MAX_DATA as u64 + 1;
    if file == "-" {
        std::io::stdin().take(limit).read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(file)
            .map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?
            .take(limit)
            .read_to_end(&mut bytes)?;
    }
    if bytes.is_empty() {
        anyhow::bail!("{kind} data is empty: give a file or pipe the bytes into `-`");
    }
    bytes.try_into().map_err(|_| anyhow::anyhow!("{kind} data is larger than 500 KiB: keep {kind}s to 500 KiB"))
}

/// `--label` values as labels.
pub fn labels(list: &[String]) -> anyhow::Result<BoundedVec<Label, { shoal_proto::MAX_LABELS }>> {
    let mut out = BoundedVec::new();
    for l in list {
        out.push(Label::parse(l).map_err(|e| anyhow::anyhow!(e))?)
            .map_err(|_| anyhow::anyhow!("too many labels: give at most 64"))?;
    }
    Ok(out)
}

fn name(kind: Kind, s: &str) -> anyhow::Result<shoal_proto::Text<64>> {
    shoal_proto::secrets::check_name(kind, s)?;
    Ok(shoal_proto::text(s)?)
}

fn query(s: &str) -> anyhow::Result<shoal_proto::Text<64>> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

/// Sends one request.
pub async fn call(client: &Client, req: ObjectRequest) -> anyhow::Result<ObjectReply> {
    match client.call(ControlRequest::Object(req)).await? {
        ControlReply::Object(r) => Ok(r),
        _ => anyhow::bail!("unexpected answer from the manager"),
    }
}

/// Runs a `shoal secret` or `shoal config` subcommand.
pub async fn run(data_dir: &Path, kind: Kind, cmd: ObjectCommand) -> anyhow::Result<()> {
    // Everything that can be refused locally is, before connecting.
    let request = match &cmd {
        ObjectCommand::Create { label, name: n, file } => Some(ObjectRequest::Create(Box::new(ObjectSpec {
            kind,
            name: name(kind, n)?,
            labels: labels(label)?,
            data: read_data(kind, file)?,
        }))),
        ObjectCommand::Update { name: n, file } => {
            Some(ObjectRequest::Update { kind, name: query(n)?, data: read_data(kind, file)? })
        }
        _ => None,
    };
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, kind, cmd, request).await;
    client.close().await;
    result
}

async fn dispatch(
    client: &Client,
    kind: Kind,
    cmd: ObjectCommand,
    request: Option<ObjectRequest>,
) -> anyhow::Result<()> {
    let unexpected = || anyhow::anyhow!("unexpected answer from the manager");
    match cmd {
        ObjectCommand::Create { .. } => {
            let ObjectReply::Created(id) = call(client, request.expect("built above")).await? else {
                return Err(unexpected());
            };
            println!("{id}");
        }
        ObjectCommand::Update { name, .. } => {
            let ObjectReply::Updated { version, services } = call(client, request.expect("built above")).await? else {
                return Err(unexpected());
            };
            let names: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
            if names.is_empty() {
                println!("{name} (version {version})");
            } else {
                println!("{name} (version {version}); updating {}", names.join(", "));
            }
        }
        ObjectCommand::Ls { quiet } => {
            let ObjectReply::Objects(list) = call(client, ObjectRequest::List(kind)).await? else {
                return Err(unexpected());
            };
            if quiet {
                list.iter().for_each(|o| println!("{}", o.id.short()));
            } else {
                print!("{}", ls_table(&list, shoal_link::wall_ms()));
            }
        }
        ObjectCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                let ObjectReply::Object(o) = call(client, ObjectRequest::Inspect { kind, name: query(n)? }).await?
                else {
                    return Err(unexpected());
                };
                out.push(inspect_json(&o));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ObjectCommand::Rm { names } => {
            let mut failed = Vec::new();
            for n in names {
                match call(client, ObjectRequest::Remove { kind, name: query(&n)? }).await {
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

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => "Less than a minute ago".into(),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// `secret ls` / `config ls`: ID NAME VERSION CREATED UPDATED.
pub fn ls_table(list: &[ObjectView], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o.id.short().to_owned(),
                o.name.to_string(),
                o.version.to_string(),
                ago(now_ms, o.created_at_ms),
                ago(now_ms, o.updated_at_ms),
            ]
        })
        .collect();
    table(&["ID", "NAME", "VERSION", "CREATED", "UPDATED"], &rows)
}

/// `inspect`, in Docker's JSON shape, plus the services that use it.
pub fn inspect_json(o: &ObjectView) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> =
        o.labels.iter().map(|l| (l.key.to_string(), json!(l.value.as_str()))).collect();
    let mut spec = json!({ "Name": o.name.as_str(), "Labels": labels });
    if let (Kind::Config, Some(data)) = (o.kind, &o.data) {
        spec["Data"] = match std::str::from_utf8(data.as_slice()) {
            Ok(text) => json!(text),
            Err(_) => json!(format!("({} bytes, not text)", data.as_slice().len())),
        };
    }
    json!({
        "ID": o.id.as_str(),
        "Version": { "Index": o.version },
        "CreatedAt": shoal_proto::time::rfc3339(o.created_at_ms),
        "UpdatedAt": shoal_proto::time::rfc3339(o.updated_at_ms),
        "Spec": spec,
        "Size": o.size,
        "UsedBy": o.used_by.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_shown_without_its_bytes() {
        let o = ObjectView {
            kind: Kind::Secret,
            id: shoal_proto::NodeId::from_random([3; 16]),
            name: shoal_proto::text("db").unwrap(),
            labels: labels(&["com.docker.stack.namespace=lab".into()]).unwrap(),
            version: 2,
            size: 6,
            created_at_ms: 0,
            updated_at_ms: 0,
            used_by: vec![shoal_proto::text("web").unwrap()].try_into().unwrap(),
            data: Some(b"s3cret".as_slice().try_into().unwrap()),
        };
        let shown = inspect_json(&o).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"UsedBy\":[\"web\"]") && shown.contains("com.docker.stack.namespace"), "{shown}");
        assert!(ls_table(&[o], 120_000).contains("2 minutes ago"));
    }

    #[test]
    fn empty_and_oversized_data_are_refused() {
        let dir = std::env::temp_dir().join(format!("shoal-obj-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (empty, big) = (dir.join("empty"), dir.join("big"));
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&big, vec![b'x'; MAX_DATA + 1]).unwrap();
        assert!(read_data(Kind::Secret, empty.to_str().unwrap()).unwrap_err().to_string().contains("empty"));
        assert!(read_data(Kind::Config, big.to_str().unwrap()).unwrap_err().to_string().contains("500 KiB"));
        assert!(read_data(Kind::Secret, dir.join("none").to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
