//! `shoal`: the manager daemon (`shoal manager run`) and the command line that manages
//! a cluster from the manager's host.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shoal_link::DEFAULT_DATA_DIR;
use shoal_manager::cli::{image::ImageCommand, manager::ManagerCommand, node::NodeCommand, service::ServiceCommand};

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "Manage a fleet of shoal boards", propagate_version = true)]
struct Cli {
    /// Directory holding the manager's state and the CLI's credentials.
    #[arg(long, global = true, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, run and administer the manager.
    #[command(subcommand)]
    Manager(ManagerCommand),
    /// Manage the nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage the images the manager distributes to the nodes.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(shoal_manager::cli::network::NetworkCommand),
    /// Manage services: replicated or global sets of containers on the boards.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage secrets: encrypted on the manager, given only to the boards that use them.
    #[command(subcommand)]
    Secret(shoal_manager::cli::object::ObjectCommand),
    /// Manage configs: files given to services' containers.
    #[command(subcommand)]
    Config(shoal_manager::cli::object::ObjectCommand),
    /// Deploy and manage stacks from compose files.
    #[command(subcommand)]
    Stack(shoal_manager::cli::stack::StackCommand),
    /// Run a command in a running task's container, wherever it runs.
    Exec(shoal_manager::cli::exec::ExecArgs),
    /// Manage the named volumes of the boards.
    #[command(subcommand)]
    Volume(shoal_manager::cli::volume::VolumeCommand),
    /// Keep credentials for a registry on the manager (`image pull` uses them).
    Login(shoal_manager::cli::image::LoginArgs),
    /// Forget the manager's credentials for a registry.
    Logout {
        /// `host[:port]`.
        registry: String,
    },
    /// Prepare boards' OS images (`board prepare`), from the laptop.
    #[command(subcommand)]
    Board(shoal_manager::cli::board::BoardCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    shoal_link::logging::init("info,quinn=warn", shoal_link::logging::stderr_is_terminal());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    if let Command::Exec(args) = cli.command {
        // The command's own exit code, as `docker exec` passes it through.
        return match runtime.block_on(shoal_manager::cli::exec::run(&cli.data_dir, args)) {
            Ok(code) => std::process::ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
            Err(e) => {
                eprintln!("Error: {e:#}");
                // Docker's code for "the exec itself failed".
                std::process::ExitCode::from(126)
            }
        };
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Manager(cmd) => shoal_manager::cli::manager::run(&cli.data_dir, cmd).await,
            Command::Node(cmd) => shoal_manager::cli::node::run(&cli.data_dir, cmd).await,
            Command::Image(cmd) => shoal_manager::cli::image::run(&cli.data_dir, cmd).await,
            Command::Network(cmd) => shoal_manager::cli::network::run(&cli.data_dir, cmd).await,
            Command::Service(cmd) => shoal_manager::cli::service::run(&cli.data_dir, cmd).await,
            Command::Volume(cmd) => shoal_manager::cli::volume::run(&cli.data_dir, cmd).await,
            Command::Secret(cmd) => {
                shoal_manager::cli::object::run(&cli.data_dir, shoal_proto::secrets::Kind::Secret, cmd).await
            }
            Command::Config(cmd) => {
                shoal_manager::cli::object::run(&cli.data_dir, shoal_proto::secrets::Kind::Config, cmd).await
            }
            Command::Stack(cmd) => shoal_manager::cli::stack::run(&cli.data_dir, cmd).await,
            Command::Login(args) => shoal_manager::cli::image::login(&cli.data_dir, args).await,
            Command::Logout { registry } => shoal_manager::cli::image::logout(&cli.data_dir, &registry).await,
            Command::Board(cmd) => shoal_manager::cli::board::run(cmd),
            Command::Exec(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
