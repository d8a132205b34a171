//! `shoal image ...`: load, pull, ls, rm, and `shoal login/logout`. Images live on the
//! manager (loaded from archives or pulled from registries); agents fetch them from it,
//! so boards need no registry access.

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
    /// Pull an image from a registry into the manager (Docker Hub by default); every
    /// node then fetches it from the manager. Only the platforms the boards need (and
    /// those given) are fetched.
    Pull {
        /// `nginx:1.27`, `registry.local:5000/team/app:2.1`, `app@sha256:…`.
        reference: String,
        /// Platforms to fetch besides the boards' own, e.g. `linux/arm64,linux/arm/v7`.
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// Print only the final lines, no per-layer progress.
        #[arg(short, long)]
        quiet: bool,
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
        ImageCommand::Pull { reference, platform, quiet } => {
            let pulled = pull(client, &reference, &platform, false, quiet).await?;
            println!("{}", pulled_line(&pulled));
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

/// Asks the manager to pull `reference` (only when it lacks it, with `if_missing`),
/// printing per-layer progress as `docker pull` does unless `quiet`.
pub async fn pull(
    client: &Client,
    reference: &str,
    platforms: &[String],
    if_missing: bool,
    quiet: bool,
) -> anyhow::Result<shoal_proto::images::Pulled> {
    pull_to(client, reference, platforms, if_missing, quiet, false).await
}

/// [`pull`], with the progress on stderr when `to_stderr` (`service create` keeps its
/// stdout for the service ID).
pub async fn pull_to(
    client: &Client,
    reference: &str,
    platforms: &[String],
    if_missing: bool,
    quiet: bool,
    to_stderr: bool,
) -> anyhow::Result<shoal_proto::images::Pulled> {
    let platforms: Vec<shoal_proto::Platform> = platforms
        .iter()
        .map(|p| shoal_proto::text(p.trim()).map_err(|e| anyhow::anyhow!("--platform {p:?}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let req = shoal_proto::images::ImagePull {
        reference: arg(reference)?,
        platforms: platforms.try_into().map_err(|_| anyhow::anyhow!("too many platforms: at most 16"))?,
        if_missing,
    };
    let tty = if to_stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let (repository, tag) = split_ref(reference);
    let header = Some(format!("{tag}: Pulling from {repository}"));
    let mut view = Progress { tty: tty && !quiet, quiet, to_stderr, header, lines: Vec::new(), drawn: 0 };
    let pulled = client.pull(req, |p| view.update(&p)).await;
    view.finish();
    Ok(pulled?)
}

/// `Digest: …` and `Status: …` lines after a pull, as Docker prints them.
pub fn pulled_line(p: &shoal_proto::images::Pulled) -> String {
    let status = if p.fetched > 0 {
        format!("Status: Downloaded newer image for {} ({})", p.reference, bytes(p.fetched))
    } else {
        format!("Status: Image is up to date for {}", p.reference)
    };
    format!("Digest: {}\n{status}", p.digest)
}

/// `docker pull`'s per-layer lines: redrawn in place on a terminal, one line per change
/// of state otherwise (logs and tests read those).
struct Progress {
    tty: bool,
    quiet: bool,
    to_stderr: bool,
    /// `TAG: Pulling from REPOSITORY`, printed before the first layer's line (never when
    /// nothing is pulled).
    header: Option<String>,
    /// Short digest → its line, in first-seen order.
    lines: Vec<(String, String)>,
    drawn: usize,
}

impl Progress {
    fn update(&mut self, p: &shoal_proto::images::PullProgress) {
        use shoal_proto::images::PullStatus;
        if self.quiet {
            return;
        }
        if let Some(h) = self.header.take() {
            self.write(&format!("{h}\n"));
        }
        let id = short_digest(&p.digest).to_owned();
        let text = match p.status {
            PullStatus::Exists => "Already exists".to_owned(),
            PullStatus::Complete => "Pull complete".to_owned(),
            PullStatus::Downloading => format!("Downloading {}/{}", bytes(p.current), bytes(p.total)),
            PullStatus::Resuming => format!("Resuming at {}/{}", bytes(p.current), bytes(p.total)),
        };
        let line = format!("{id}: {text}");
        let changed_state = |old: &str| old.split(' ').nth(1) != line.split(' ').nth(1);
        match self.lines.iter_mut().find(|(k, _)| *k == id) {
            Some((_, old)) => {
                if !self.tty && (!changed_state(old) || p.status == PullStatus::Downloading) {
                    *old = line;
                    return;
                }
                *old = line.clone();
            }
            None => self.lines.push((id, line.clone())),
        }
        if self.tty {
            // Move up over what was drawn and draw every line again.
            let mut out = String::new();
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for (_, l) in &self.lines {
                out.push_str(&format!("\x1b[2K{l}\n"));
            }
            self.drawn = self.lines.len();
            self.write(&out);
        } else {
            self.write(&format!("{line}\n"));
        }
    }

    fn write(&self, text: &str) {
        use std::io::Write;
        if self.to_stderr {
            let _ = std::io::stderr().write_all(text.as_bytes());
        } else {
            let mut out = std::io::stdout();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    fn finish(&mut self) {
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
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

/// `shoal login REGISTRY`: credentials kept on the manager only.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// `host[:port]` (`docker.io` for Docker Hub).
    pub registry: String,
    /// User name (asked for when not given).
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from standard input (else it is asked for).
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
}

fn read_line(prompt: Option<&str>) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    if let Some(p) = prompt {
        eprint!("{p}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Runs `shoal login`.
pub async fn login(data_dir: &Path, args: LoginArgs) -> anyhow::Result<()> {
    let username = match args.username {
        Some(u) => u,
        None if args.password_stdin => anyhow::bail!("--password-stdin needs --username"),
        None => read_line(Some("Username: "))?,
    };
    // Read from stdin either way: a terminal echoes it, so prefer --password-stdin from a
    // password manager or a file.
    let password = read_line((!args.password_stdin).then_some("Password: "))?;
    if password.is_empty() {
        anyhow::bail!("no password given: type it, or pipe it in with --password-stdin");
    }
    let req = shoal_proto::images::RegistryLogin {
        registry: shoal_proto::text(&args.registry).map_err(|e| anyhow::anyhow!("registry: {e}"))?,
        username: shoal_proto::text(&username).map_err(|e| anyhow::anyhow!("username: {e}"))?,
        password: shoal_proto::text(&password).map_err(|e| anyhow::anyhow!("password: {e}"))?,
    };
    let client = Client::connect(data_dir).await?;
    let reply = client.call(ControlRequest::RegistryLogin(Box::new(req))).await;
    client.close().await;
    if let ControlReply::Done(text) = reply? {
        println!("{text}");
    }
    Ok(())
}

/// Runs `shoal logout REGISTRY`.
pub async fn logout(data_dir: &Path, registry: &str) -> anyhow::Result<()> {
    let registry = shoal_proto::text(registry).map_err(|e| anyhow::anyhow!("registry: {e}"))?;
    let client = Client::connect(data_dir).await?;
    let reply = client.call(ControlRequest::RegistryLogout { registry }).await;
    client.close().await;
    if let ControlReply::Done(text) = reply? {
        println!("{text}");
    }
    Ok(())
}
