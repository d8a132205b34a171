//! `shoal-agent`: joins a board to a shoal cluster and keeps it there.

mod cli;

use cli::{Cli, Command, ImageCommand, NodeArgs};
use shoal_agent::identity::NodeIdentity;
use std::sync::Arc;

use shoal_agent::images::ImageStore;
use shoal_agent::net::{BridgeConfig, Network, PortPublisher};
use shoal_agent::runtime::LibcontainerRuntime;
use shoal_agent::supervisor::{Supervisor, SupervisorConfig};
use shoal_agent::{host, session, AgentError};
use shoal_proto::Label;

impl NodeArgs {
    /// The same flags as arguments, for restarting the agent after an update.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        if let Some(h) = &self.hostname {
            out.extend(["--hostname".into(), h.into()]);
        }
        if let Some(a) = &self.advertise_addr {
            out.extend(["--advertise-addr".into(), a.into()]);
        }
        for l in &self.labels {
            out.extend(["--label".into(), format!("{}={}", l.key, l.value).into()]);
        }
        out
    }
}

/// What the agent restarts with after an update: `run`, never the `join` it may have
/// started with, and the same data dir and board flags.
fn restart_args(data_dir: &std::path::Path, node: &NodeArgs) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["--data-dir".into(), data_dir.into(), "run".into()];
    args.extend(node.to_args());
    args
}

fn description(args: &NodeArgs, saved: Option<&NodeIdentity>) -> shoal_proto::NodeDescription {
    let hostname =
        args.hostname.clone().or_else(|| saved.and_then(|s| s.hostname.clone())).unwrap_or_else(host::hostname);
    let advertise = args.advertise_addr.clone().or_else(|| saved.and_then(|s| s.advertise_addr.clone()));
    let labels = if args.labels.is_empty() {
        saved.map(|s| s.labels.iter().filter_map(|l| Label::parse(l).ok()).collect()).unwrap_or_default()
    } else {
        args.labels.clone()
    };
    host::describe(&hostname, advertise.as_deref(), &labels)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn main_async(cli: Cli) -> Result<(), AgentError> {
    let identity = match cli.command {
        Command::Join { token, manager, force, node } => {
            shoal_agent::upgrade::set_restart_args(restart_args(&cli.data_dir, &node));
            let labels = node.labels.iter().map(|l| format!("{}={}", l.key, l.value)).collect();
            let saved = NodeIdentity::unjoined(node.hostname.clone(), node.advertise_addr.clone(), labels);
            let identity =
                session::join(&cli.data_dir, &manager, &token, description(&node, None), saved, force).await?;
            println!("This node joined a cluster as a worker.");
            identity
        }
        Command::Shim { .. } | Command::ExecIn { .. } | Command::UpgradeWatch { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Image(cmd) => return image_command(&cli.data_dir, cmd).await,
        Command::Run { node } => {
            shoal_agent::upgrade::set_restart_args(restart_args(&cli.data_dir, &node));
            shoal_agent::upgrade::on_start();
            let identity =
                NodeIdentity::load(&cli.data_dir)?.ok_or_else(|| AgentError::NotJoined(cli.data_dir.join("agent")))?;
            let description = description(&node, Some(&identity));
            return run(&cli.data_dir, &identity, description).await;
        }
    };
    let description = description(&NodeArgs::default(), Some(&identity));
    run(&cli.data_dir, &identity, description).await
}

/// The agent proper: the task supervisor (which outlives every session) and the session.
async fn run(
    data_dir: &std::path::Path,
    identity: &NodeIdentity,
    description: shoal_proto::NodeDescription,
) -> Result<(), AgentError> {
    for m in description.missing_features.iter() {
        tracing::warn!("this board's kernel lacks {m}: use a kernel with that option, see docs/networking.md");
    }
    let store = session::open_images(data_dir)?;
    let runtime = LibcontainerRuntime::for_data_dir(data_dir);
    let network = Network::new(BridgeConfig::default(), &shoal_agent::identity::agent_dir(data_dir).join("net"))
        .map_err(|e| AgentError::Io(std::io::Error::other(e)))?;
    // A missing file is a board with no resolver configured: forwarding then fails
    // with SERVFAIL, cluster names still resolve.
    let board_conf = std::fs::read_to_string(BOARD_RESOLV_CONF).unwrap_or_default();
    // Fed with names by the network plane once the manager sends them.
    let (resolver, overlay_resolv_conf) = shoal_agent::net::plane::start_resolver(&network, &board_conf).await;
    let mut config = SupervisorConfig::new(data_dir.to_path_buf());
    config.overlay_resolv_conf = overlay_resolv_conf;
    config.board_resolv_conf = board_conf.clone();
    config.node = shoal_agent::supervisor::guest::NodeFacts {
        id: identity.node_id.clone(),
        hostname: description.hostname.to_string(),
        os: description.os.to_string(),
        arch: description.arch.to_string(),
    };
    config.health = Some(shoal_agent::runtime::LibcontainerRuntime::paths(data_dir));
    let network = Arc::new(network);
    let networks = shoal_agent::board_net::BoardNet::new(network.clone(), resolver);
    let supervisor = Supervisor::start(config, Arc::new(runtime), network, PortPublisher::new(), store.clone()).await?;
    let result = session::run(data_dir, identity, description, store, &supervisor, &networks, shutdown_signal()).await;
    // Containers keep running under their shims; the next agent takes them back.
    supervisor.shutdown().await;
    result
}

/// Where the board's own resolvers are listed.
const BOARD_RESOLV_CONF: &str = "/etc/resolv.conf";

fn main() -> std::process::ExitCode {
    let cli = match cli::parse(std::env::args_os().skip(1), std::env::var_os("SHOAL_DATA_DIR")) {
        Ok(cli) => cli,
        Err(stop) => {
            if stop.code == 0 {
                print!("{}", stop.text);
            } else {
                eprint!("{}", stop.text);
            }
            return std::process::ExitCode::from(stop.code);
        }
    };
    // The shim runs without an async runtime: it lives as long as its container and
    // should cost as little as possible.
    if let Command::Shim { containers, state, id } = &cli.command {
        // Its stderr is the container's shim.log; inside the container (before the workload
        // runs) it is the container's stderr, so libcontainer's errors reach its log, and
        // only its errors: not the agent's SHOAL_LOG, whose `info` let libcontainer's
        // "seccomp not available" warning (shoal installs its own filter) open every
        // container's output. SHOAL_SHIM_LOG sets it when debugging.
        shoal_link::logging::init_from("SHOAL_SHIM_LOG", "error", false);
        return exit_code(shoal_agent::runtime::shim::run(containers, state, id));
    }
    if let Command::ExecIn { containers, state, id, args } = &cli.command {
        // Like the shim: no async runtime, since libcontainer forks from this process. No
        // log subscriber either: its stderr is the command's, which must carry only what
        // the command writes (and exec-in's own errors, printed plainly).
        return exit_code(shoal_agent::runtime::exec_in::run(containers, state, id, args));
    }
    shoal_link::logging::init("info,quinn=warn", shoal_link::logging::stderr_is_terminal());
    if let Command::UpgradeWatch { pid, exe, detach, args } = cli.command {
        return exit_code(shoal_agent::upgrade::watch(pid, &exe, detach, args));
    }
    // One thread: a board's agent has little to do at once, and each thread costs memory.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(main_async(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn image_command(data_dir: &std::path::Path, cmd: ImageCommand) -> Result<(), AgentError> {
    let dir = shoal_agent::identity::agent_dir(data_dir).join("images");
    let store =
        std::sync::Arc::new(ImageStore::open(&dir).map_err(|e| AgentError::Io(std::io::Error::other(e.to_string())))?);
    match cmd {
        ImageCommand::Load { archive } => {
            let loaded = shoal_agent::images::archive::load(&store, &archive)
                .await
                .map_err(|e| AgentError::Io(std::io::Error::other(e.to_string())))?;
            for (reference, _) in loaded {
                println!("Loaded image: {reference}");
            }
        }
        ImageCommand::Ls => {
            for digest in store.held() {
                let refs = store.image(&digest).map(|r| r.references.join(", ")).unwrap_or_default();
                println!("{refs}\t{digest}");
            }
        }
    }
    Ok(())
}

fn exit_code(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255))
}
