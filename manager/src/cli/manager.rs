//! `shoal manager ...`: init, run and join-token.

use std::net::SocketAddr;
use std::path::Path;

use clap::{Args, Subcommand};
use shoal_proto::services::format_duration_ms;
use shoal_proto::{CaStatus, ControlReply, ControlRequest};

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
    /// Change cluster settings (certificate expiry).
    Update(UpdateArgs),
    /// Show the cluster CA, or rotate it (`--rotate`).
    Ca(CaArgs),
    /// Print the variables that point the docker CLI at this manager's Docker API (the
    /// unix socket, or with --tcp the TLS listener, writing its certificate files).
    DockerEnv(super::docker_env::DockerEnvArgs),
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
    /// Validity of node and administrator certificates; they renew at 50–80% of it.
    #[arg(long, default_value = "2160h", value_parser = super::parse_cert_expiry)]
    pub cert_expiry: std::time::Duration,
}

/// `manager update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Validity of node and administrator certificates issued from now on (each takes it
    /// at its next renewal).
    #[arg(long, value_parser = super::parse_cert_expiry)]
    pub cert_expiry: Option<std::time::Duration>,
}

/// `manager ca`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Replace the CA: every board gets a certificate of a new CA over its session, then
    /// the old CA is retired and join tokens change.
    #[arg(long)]
    pub rotate: bool,
    /// With --rotate: start the rotation and return at once (`shoal manager ca` shows
    /// how far it is).
    #[arg(short, long)]
    pub detach: bool,
}

/// `manager run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How often agents on a clean link send heartbeats; a node is Down after a period
    /// and a second of silence (more on a link that loses heartbeats).
    #[arg(long, default_value = "1500ms", value_parser = super::parse_heartbeat_period)]
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
    /// Do not serve the Docker Engine API on the manager's `docker.sock`.
    #[arg(long, conflicts_with = "docker_tcp")]
    pub no_docker_api: bool,
    /// Also serve the Docker Engine API on TCP at IP[:PORT] (port 2376 by default): TLS
    /// only, and only for the administrator certificate of this cluster's CA (`shoal
    /// manager docker-env --tcp` writes it for docker). Never plain TCP.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_docker_tcp)]
    pub docker_tcp: Option<SocketAddr>,
}

fn parse_docker_tcp(s: &str) -> Result<SocketAddr, String> {
    init::parse_addr(s, crate::docker::DEFAULT_TLS_PORT).map_err(|e| e.to_string())
}

/// The names the Docker API's TLS certificate carries: the listening address (unless it
/// is every interface's), loopback, and this host's name; the manager adds its advertised
/// address.
fn docker_tls_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["127.0.0.1".to_owned(), "::1".to_owned(), "localhost".to_owned()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        names.push(host);
    }
    names
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

async fn ca_status(client: &Client, rotate: bool) -> anyhow::Result<CaStatus> {
    match client.call(ControlRequest::Ca { rotate }).await? {
        ControlReply::Ca(status) => Ok(status),
        other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
    }
}

fn rotation_line(s: &CaStatus) -> String {
    let mut line = format!("rotated {}/{} nodes", s.rotated, s.to_rotate);
    if !s.waiting_for.is_empty() {
        let names: Vec<&str> = s.waiting_for.iter().map(|h| h.as_str()).collect();
        line.push_str(&format!(" (waiting for {})", names.join(", ")));
    }
    line
}

/// `shoal manager ca [--rotate [--detach]]`.
async fn ca(client: &Client, args: CaArgs) -> anyhow::Result<()> {
    let mut status = ca_status(client, args.rotate).await?;
    if args.rotate && !args.detach {
        println!("CA rotation started: every board gets a certificate of the new CA over its session.");
        let mut last = String::new();
        let mut to_rotate = status.to_rotate;
        while status.rotating {
            to_rotate = status.to_rotate;
            let line = rotation_line(&status);
            if line != last {
                println!("{line}");
                last = line;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            status = ca_status(client, false).await?;
        }
        println!("rotated {to_rotate}/{to_rotate} nodes");
        println!("CA rotation complete: the old CA is retired; boards that were down must re-join.");
        println!("Join tokens changed with the CA: get the new one with `shoal manager join-token worker`.");
        println!("admin.json here was renewed; copies of it elsewhere must be copied again.");
        return Ok(());
    }
    println!("CA digest:\t\tsha256:{}", shoal_proto::hex(&status.digest));
    println!("CA valid until:\t\t{}", shoal_proto::time::utc(status.ca_until_ms));
    println!("Certificate expiry:\t{}", format_duration_ms(status.cert_expiry_ms));
    if status.rotating {
        println!("Rotation:\t\tin progress, {}", rotation_line(&status));
    }
    if let Some(next) = status.rotating_to {
        println!("Rotating to:\t\tsha256:{}", shoal_proto::hex(&next));
    }
    Ok(())
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
            let expiry = args.cert_expiry.as_millis() as u64;
            let done = init::init(data_dir, advertise, args.listen_addr, &hostname, expiry)?;
            println!("Cluster initialized: current node ({}) is now a manager.\n", done.node_id);
            println!("{}", join_instructions(&done.token.to_string(), &done.advertise_addr.to_string()));
            println!("Start the manager with `shoal manager run` and keep it running.");
            Ok(())
        }
        ManagerCommand::Run(args) => {
            let period = args.heartbeat_period.as_millis().max(10) as u64;
            let liveness = LivenessConfig::with_period(period);
            let key_rotation_ms = args.overlay_key_rotation.as_millis() as u64;
            let (configs, docker_tls) = tokio::sync::watch::channel(None);
            let tcp = args.docker_tcp.map(|addr| (addr, docker_tls));
            let manager = server::run(
                data_dir,
                RunConfig {
                    liveness,
                    listen: args.listen_addr,
                    key_rotation_ms,
                    insecure_registries: args.insecure_registries,
                    docker_tls: tcp
                        .as_ref()
                        .map(|(addr, _)| server::DockerTls { names: docker_tls_names(*addr), configs }),
                },
            );
            if args.no_docker_api || !crate::paths::store_path(data_dir).exists() {
                return manager.await;
            }
            serve_with_docker_api(data_dir, manager, tcp).await
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
        ManagerCommand::Update(args) => {
            let Some(expiry) = args.cert_expiry else {
                anyhow::bail!("nothing to update: give --cert-expiry DURATION");
            };
            let client = Client::connect(data_dir).await?;
            let reply =
                client.call(ControlRequest::ManagerUpdate { cert_expiry_ms: Some(expiry.as_millis() as u64) }).await;
            client.close().await;
            reply?;
            println!(
                "Certificate expiry set to {}; certificates take it at their next renewal.",
                format_duration_ms(expiry.as_millis() as u64)
            );
            Ok(())
        }
        ManagerCommand::Ca(args) => {
            let client = Client::connect(data_dir).await?;
            let result = ca(&client, args).await;
            client.close().await;
            result
        }
        ManagerCommand::VerifyStore(args) => crate::verify::run_check(&args.file),
        ManagerCommand::DockerEnv(args) => super::docker_env::run(data_dir, args),
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

/// Where the manager publishes the Docker API's TLS configuration.
type DockerTlsConfigs = tokio::sync::watch::Receiver<Option<std::sync::Arc<rustls::ServerConfig>>>;

/// Runs the manager with the Docker Engine API beside it. The API answers through the
/// manager's control requests, so it can't outlive it; a socket that can't be served is
/// logged and the manager runs on without it.
async fn serve_with_docker_api(
    data_dir: &Path,
    manager: impl std::future::Future<Output = anyhow::Result<()>>,
    tcp: Option<(SocketAddr, DockerTlsConfigs)>,
) -> anyhow::Result<()> {
    let socket = crate::docker::socket_path(data_dir);
    let backend = crate::docker::backend::ManagerBackend::new(data_dir.to_owned());
    let unix = async {
        if let Err(e) = crate::docker::serve(socket, backend).await {
            tracing::warn!(error = %e, "the Docker API is not served");
        }
    };
    let tcp = async {
        if let Some((addr, configs)) = tcp {
            // A backend of its own: one QUIC connection per listener.
            let backend = crate::docker::backend::ManagerBackend::new(data_dir.to_owned());
            if let Err(e) = crate::docker::serve_tcp(addr, configs, backend).await {
                tracing::warn!(error = %e, "the Docker API is not served on TCP");
            }
        }
    };
    let api = async {
        tokio::join!(unix, tcp);
        std::future::pending::<()>().await
    };
    // Dropping the API's future takes its socket away.
    tokio::select! {
        r = manager => r,
        () = api => unreachable!("the Docker API task never ends by itself"),
    }
}
