//! `shoal manager ...`: init, run and join-token.

use std::net::SocketAddr;
use std::path::Path;

use clap::{Args, Subcommand};
use shoal_proto::{ControlReply, ControlRequest};

use super::client::Client;
use crate::core::membership::LivenessConfig;
use crate::init::{self, DEFAULT_PORT};
use crate::server::{self, RunConfig};

/// `shoal manager` subcommands.
#[derive(Debug, Subcommand)]
pub enum ManagerCommand {
    /// Create a cluster with this host as its manager and print the join command.
    Init(InitArgs),
    /// Run the manager (in the foreground; see docs/shoal-manager.service for systemd).
    Run(RunArgs),
    /// Print (or rotate) the token boards join with.
    JoinToken(JoinTokenArgs),
    /// Save a consistent copy of the manager's state (while it runs) to FILE.
    Backup(FileArg),
    /// Replace the manager's state with a backup (the manager must be stopped).
    Restore(FileArg),
    /// Check a state store file (used by `run` and `restore` in a child process).
    #[command(hide = true)]
    VerifyStore(FileArg),
}

/// A file argument.
#[derive(Debug, Args)]
pub struct FileArg {
    /// The file.
    pub file: std::path::PathBuf,
}

/// `manager init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address the boards reach the manager on: IP or IP:PORT (default port 4242).
    #[arg(long)]
    pub advertise_addr: String,
    /// Address to listen on (default: all interfaces, the advertised port).
    #[arg(long)]
    pub listen_addr: Option<SocketAddr>,
    /// Name of this host in `node ls` (default: the system hostname).
    #[arg(long)]
    pub hostname: Option<String>,
}

/// `manager run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How often agents send heartbeats; a node is Down after 3 missed ones.
    #[arg(long, default_value = "500ms", value_parser = super::parse_heartbeat_period)]
    pub heartbeat_period: std::time::Duration,
    /// How often each encrypted overlay network's key is replaced (Swarm: 12h).
    #[arg(long, default_value = "12h", value_parser = super::parse_key_rotation)]
    pub overlay_key_rotation: std::time::Duration,
    /// Overrides the listen address chosen at init.
    #[arg(long)]
    pub listen_addr: Option<SocketAddr>,
    /// A registry (`host:port`) `image pull` may reach over plain HTTP; repeatable.
    /// Loopback registries always may; every other one must speak HTTPS.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
}

/// `manager join-token`.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Role the token is for; only `worker` (shoal has one manager).
    pub role: String,
    /// Replace the token; the old one stops working at once (joined nodes are unaffected).
    #[arg(long)]
    pub rotate: bool,
    /// Print the token only.
    #[arg(short, long)]
    pub quiet: bool,
}

fn join_instructions(token: &str, addr: &str) -> String {
    format!("To add a worker to this cluster, run the following command on it:\n\n    shoal-agent join --token {token} {addr}\n")
}

/// Runs a `shoal manager` subcommand.
pub async fn run(data_dir: &Path, cmd: ManagerCommand) -> anyhow::Result<()> {
    match cmd {
        ManagerCommand::Init(args) => {
            let advertise = init::parse_addr(&args.advertise_addr, DEFAULT_PORT)?;
            let hostname = args.hostname.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
            let done = init::init(data_dir, advertise, args.listen_addr, &hostname)?;
            println!("Cluster initialized: current node ({}) is now a manager.\n", done.node_id);
            println!("{}", join_instructions(&done.token.to_string(), &done.advertise_addr.to_string()));
            println!("Start the manager with `shoal manager run` and keep it running.");
            Ok(())
        }
        ManagerCommand::Run(args) => {
            let period = args.heartbeat_period.as_millis().max(10) as u64;
            let liveness = LivenessConfig { heartbeat_period: period, ..LivenessConfig::default() };
            let key_rotation_ms = args.overlay_key_rotation.as_millis() as u64;
            server::run(
                data_dir,
                RunConfig {
                    liveness,
                    listen: args.listen_addr,
                    key_rotation_ms,
                    insecure_registries: args.insecure_registries,
                },
            )
            .await
        }
        ManagerCommand::Backup(args) => {
            let client = Client::connect(data_dir).await?;
            let size = client.backup(&args.file).await;
            client.close().await;
            let size = size?;
            // What was received must itself open as a store.
            crate::verify::in_child(&args.file)?;
            println!("Backed up the manager's state to {} ({size} bytes).", args.file.display());
            println!("Restore it with `shoal manager restore {}` while the manager is stopped.", args.file.display());
            Ok(())
        }
        ManagerCommand::Restore(args) => {
            let id = crate::init::restore(data_dir, &args.file)?;
            println!("Restored cluster {id} from {} into {}.", args.file.display(), data_dir.display());
            println!("Start the manager with `shoal manager run`.");
            Ok(())
        }
        ManagerCommand::VerifyStore(args) => crate::verify::run_check(&args.file),
        ManagerCommand::JoinToken(args) => {
            if args.role != "worker" {
                anyhow::bail!(
                    "unknown role {:?}: shoal has a single manager, so only `worker` tokens exist",
                    args.role
                );
            }
            let client = Client::connect(data_dir).await?;
            let reply = client.call(ControlRequest::JoinToken { rotate: args.rotate }).await?;
            client.close().await;
            let ControlReply::JoinToken { token, manager_addr } = reply else {
                anyhow::bail!("unexpected answer from the manager: {reply:?}");
            };
            if args.quiet {
                println!("{token}");
            } else {
                if args.rotate {
                    println!("Successfully rotated worker join token.\n");
                }
                println!("{}", join_instructions(&token, &manager_addr));
            }
            Ok(())
        }
    }
}
