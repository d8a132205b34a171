//! `shoal image ...`: load, ls, rm. Images live on the manager; agents fetch them from
//! it, so a fleet needs no registry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use shoal_proto::images::{ImageView, MAX_ARCHIVE_BYTES};
use shoal_proto::{ControlReply, ControlRequest};

use super::client::Client;
use super::output::{bytes, table};

/// `shoal image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load the images of an OCI archive (`docker save`, `skopeo … oci-archive:`) into the
    /// manager; every node then fetches them.
    Load {
        /// The archive (plain or gzip-compressed tar).
        #[arg(conflicts_with = "input", required_unless_present = "input")]
        archive: Option<PathBuf>,
        /// The archive, as `docker load -i` takes it.
        #[arg(short, long)]
        input: Option<PathBuf>,
    },
    /// List images, with the nodes that hold them.
    #[command(alias = "list")]
    Ls {
        /// Only print digests (12 hex characters).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images from the manager; nodes drop them too unless a container uses them.
    #[command(alias = "rmi")]
    Rm {
        /// References (`demo/app:1.0`), digests or unique digest prefixes.
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove images that services use; their new tasks are rejected until it is
        /// loaded again.
        #[arg(short, long)]
        force: bool,
    },
}

/// Runs a `shoal image` subcommand.
pub async fn run(data_dir: &Path, cmd: ImageCommand) -> anyhow::Result<()> {
    // Check the archive before connecting: a typo should not wait for the network.
    let archive = match &cmd {
        ImageCommand::Load { archive, input } => {
            let path = archive.as_ref().or(input.as_ref()).expect("clap requires one");
            Some(open_archive(path).await?)
        }
        _ => None,
    };
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd, archive).await;
    client.close().await;
    result
}

async fn open_archive(path: &Path) -> anyhow::Result<(tokio::fs::File, u64)> {
    let cannot = |e: std::io::Error| anyhow::anyhow!("cannot read the archive {}: {e}", path.display());
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let meta = file.metadata().await.map_err(cannot)?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a file: give an OCI image archive (a .tar)", path.display());
    }
    if meta.len() > MAX_ARCHIVE_BYTES {
        anyhow::bail!(
            "{} is {}, more than the {} the manager accepts: split the images into several archives",
            path.display(),
            bytes(meta.len()),
            bytes(MAX_ARCHIVE_BYTES)
        );
    }
    Ok((file, meta.len()))
}

fn arg(s: &str) -> anyhow::Result<shoal_proto::ImageRef> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

async fn dispatch(client: &Client, cmd: ImageCommand, archive: Option<(tokio::fs::File, u64)>) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Load { .. } => {
            let (file, size) = archive.expect("opened before connecting");
            let ControlReply::ImagesLoaded(refs) = client.upload(file, size).await? else {
                anyhow::bail!("unexpected answer from the manager");
            };
            refs.iter().for_each(|r| println!("Loaded image: {r}"));
        }
        ImageCommand::Ls { quiet } => {
            let ControlReply::Images(images) = client.call(ControlRequest::ImageList).await? else {
                anyhow::bail!("unexpected answer from the manager");
            };
            if quiet {
                images.iter().for_each(|i| println!("{}", short_digest(&i.digest)));
            } else {
                let ControlReply::Nodes(nodes) = client.call(ControlRequest::NodeList).await? else {
                    anyhow::bail!("unexpected answer from the manager");
                };
                let names: HashMap<String, String> = nodes
                    .iter()
                    .filter(|n| !n.description.hostname.is_empty())
                    .map(|n| (n.id.to_string(), n.description.hostname.to_string()))
                    .collect();
                print!("{}", ls_table(&images, &names));
            }
        }
        ImageCommand::Rm { images, force } => {
            let mut failed = Vec::new();
            for image in images {
                match client.call(ControlRequest::ImageRemove { image: arg(&image)?, force }).await {
                    Ok(ControlReply::Done(text)) => println!("{text}"),
                    Ok(_) => println!("{image}"),
                    Err(e) => failed.push(format!("{image}: {e}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}

/// The 12 hex characters Docker shows for an image ID.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// Splits `demo/app:1.0` into repository and tag (a `:` before the last `/` is a port).
pub fn split_ref(reference: &str) -> (&str, &str) {
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "<none>"),
    }
}

/// The `image ls` table; NODES names holders by hostname (by ID when unknown).
pub fn ls_table(images: &[ImageView], hostnames: &HashMap<String, String>) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let (repo, tag) = split_ref(&i.reference);
            let mut nodes: Vec<String> = i
                .nodes
                .iter()
                .map(|id| hostnames.get(id.as_str()).cloned().unwrap_or_else(|| id.to_string()))
                .collect();
            nodes.sort();
            vec![
                repo.to_owned(),
                tag.to_owned(),
                short_digest(&i.digest).to_owned(),
                i.platforms.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","),
                bytes(i.size),
                if nodes.is_empty() { "-".to_owned() } else { nodes.join(",") },
            ]
        })
        .collect();
    table(&["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "NODES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_ref("demo/app:1.0"), ("demo/app", "1.0"));
        assert_eq!(split_ref("localhost:5000/app:2"), ("localhost:5000/app", "2"));
        assert_eq!(split_ref("localhost:5000/app"), ("localhost:5000/app", "<none>"));
    }

    #[test]
    fn image_ls_names_holders_by_hostname() {
        let id: shoal_proto::NodeId = "d7igf4r6f4sqf17wpnxkxo5a5".parse().unwrap();
        let view = ImageView {
            reference: shoal_proto::text("demo/app:1.0").unwrap(),
            digest: shoal_proto::text(&format!("sha256:{}", "ab".repeat(32))).unwrap(),
            platforms: vec![shoal_proto::text("linux/amd64").unwrap(), shoal_proto::text("linux/arm64").unwrap()]
                .try_into()
                .unwrap(),
            size: 3 * 1024 * 1024,
            nodes: vec![id.clone()].try_into().unwrap(),
        };
        let names = HashMap::from([(id.to_string(), "node1".to_owned())]);
        let table = ls_table(&[view], &names);
        let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "NODES"]);
        assert_eq!(lines[1], ["demo/app", "1.0", "abababababab", "linux/amd64,linux/arm64", "3.0MiB", "node1"]);
    }
}
