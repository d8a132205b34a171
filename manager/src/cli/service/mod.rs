//! `shoal service ...`: create, ls, ps, inspect, update, scale, rm, with Docker's flags
//! and output. Without `--detach`, create, update and scale follow the service until it
//! has converged (or say which task can't be placed, and why); an update or rollback is
//! followed through the manager's update status, as docker/cli does.

use std::path::Path;

use clap::Subcommand;
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, ServiceView, TaskView};
use shoal_proto::{ControlReply, ControlRequest, ServiceMode, ServiceSpec};

use super::client::Client;

mod args;
mod object_args;
mod output;
mod progress;
#[cfg(test)]
mod tests;

pub use args::*;
pub use object_args::*;
pub use output::*;
pub use progress::*;

/// `shoal service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the tasks of one or more services.
    Ps {
        /// Service names, IDs or ID prefixes.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Show a service in detail.
    Inspect {
        /// `pretty`, `json` (the default) or a Go template, e.g. `{{json .UpdateStatus}}`.
        #[arg(long, short = 'f')]
        format: Option<String>,
        /// Same as `--format pretty`.
        #[arg(long)]
        pretty: bool,
        /// Service names, IDs or ID prefixes.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Change a service.
    Update(Box<UpdateArgs>),
    /// Set the number of replicas: `NAME=N`...
    Scale {
        /// Return at once instead of waiting for the tasks.
        #[arg(short, long)]
        detach: bool,
        /// `SERVICE=REPLICAS` pairs.
        #[arg(required = true, value_parser = parse_scale)]
        scales: Vec<(String, u32)>,
    },
    /// Remove services; their tasks are stopped.
    #[command(alias = "remove")]
    Rm {
        /// Service names, IDs or ID prefixes.
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// Runs a `shoal service` subcommand.
pub async fn run(data_dir: &Path, cmd: ServiceCommand) -> anyhow::Result<()> {
    // Flags are checked before connecting: a typo should not wait for the network.
    let checked = match &cmd {
        ServiceCommand::Create(c) => Checked::Spec(Box::new(c.spec()?)),
        ServiceCommand::Update(u) => {
            u.check()?;
            Checked::Nothing
        }
        ServiceCommand::Inspect { format, pretty, .. } => {
            Checked::Format(InspectFormat::new(format.as_deref(), *pretty)?)
        }
        _ => Checked::Nothing,
    };
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd, checked).await;
    client.close().await;
    result
}

/// What [`run`] made of the flags before connecting.
#[derive(Debug)]
enum Checked {
    Nothing,
    Spec(Box<ServiceSpec>),
    Format(InspectFormat),
}

async fn call(client: &Client, req: ServiceRequest) -> anyhow::Result<ServiceReply> {
    match client.call(ControlRequest::Service(req)).await? {
        ControlReply::Service(r) => Ok(r),
        other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
    }
}

async fn inspect(client: &Client, service: &str) -> anyhow::Result<ServiceView> {
    match call(client, ServiceRequest::Inspect { service: text(service)? }).await? {
        ServiceReply::Service(v) => Ok(*v),
        other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
    }
}

async fn tasks(client: &Client, services: &[String]) -> anyhow::Result<Vec<TaskView>> {
    let names = services.iter().map(|s| text(s)).collect::<anyhow::Result<Vec<_>>>()?;
    match call(client, ServiceRequest::Ps { services: bounded(names, "services")? }).await? {
        ServiceReply::Tasks(t) => Ok(t.into_vec()),
        other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
    }
}

async fn dispatch(client: &Client, cmd: ServiceCommand, checked: Checked) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(c) => {
            let Checked::Spec(spec) = checked else { unreachable!("checked before connecting") };
            let id = match call(client, ServiceRequest::Create(spec)).await? {
                ServiceReply::Created(id) => id,
                other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
            };
            println!("{id}");
            if !c.detach.unwrap_or(false) {
                let monitor_ms = inspect(client, id.as_str()).await?.service.spec.update_config.monitor_ms;
                converge(client, id.as_str(), Watch::new(Follow::Tasks, monitor_ms)).await?;
            }
        }
        ServiceCommand::Ls { quiet } => {
            let ServiceReply::Services(views) = call(client, ServiceRequest::List).await? else {
                anyhow::bail!("unexpected answer from the manager");
            };
            let mut views = views.into_vec();
            views.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
            if quiet {
                views.iter().for_each(|v| println!("{}", v.service.id));
            } else {
                print!("{}", ls_table(&views));
            }
        }
        ServiceCommand::Ps { services } => {
            let tasks = tasks(client, &services).await?;
            print!("{}", ps_table(&tasks, shoal_manager_now()));
        }
        ServiceCommand::Inspect { services, .. } => {
            let Checked::Format(format) = checked else { unreachable!("checked before connecting") };
            let mut views = Vec::new();
            for s in &services {
                views.push(inspect(client, s).await?);
            }
            print!("{}", format.render(&views, shoal_manager_now())?);
        }
        ServiceCommand::Update(u) => update(client, &u).await?,
        ServiceCommand::Scale { detach, scales } => {
            let mut failed = Vec::new();
            let mut scaled = Vec::new();
            for (name, n) in scales {
                let result = async {
                    let view = inspect(client, &name).await?;
                    let mut spec = view.service.spec.clone();
                    match &mut spec.mode {
                        ServiceMode::Replicated { replicas } => *replicas = n,
                        ServiceMode::Global => anyhow::bail!("scale can only be used with replicated services"),
                    }
                    let req = ServiceRequest::Update {
                        service: text(view.service.id.as_str())?,
                        spec: Box::new(spec),
                        version: view.service.spec_version,
                    };
                    call(client, req).await?;
                    Ok(view.service.id)
                }
                .await;
                match result {
                    Ok(id) => {
                        println!("{name} scaled to {n}");
                        scaled.push(id);
                    }
                    Err(e) => failed.push(format!("{name}: {e:#}")),
                }
            }
            if !detach {
                for id in scaled {
                    let monitor_ms = inspect(client, id.as_str()).await?.service.spec.update_config.monitor_ms;
                    converge(client, id.as_str(), Watch::new(Follow::Tasks, monitor_ms)).await?;
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
        ServiceCommand::Rm { services } => {
            let mut failed = Vec::new();
            for s in services {
                match call(client, ServiceRequest::Remove { service: text(&s)? }).await {
                    Ok(_) => println!("{s}"),
                    Err(e) => failed.push(format!("{s}: {e:#}")),
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}

/// `service update`, with `--rollback` or flags, then following what it started.
async fn update(client: &Client, u: &UpdateArgs) -> anyhow::Result<()> {
    let before = inspect(client, &u.service).await?;
    let id = before.service.id.as_str();
    // The monitor period of the config that paces what this starts: the rollback config
    // of the spec left behind, or the update config of the new spec.
    let monitor_ms = if u.rollback {
        call(client, ServiceRequest::Rollback { service: text(id)? }).await?;
        before.service.spec.rollback_config.monitor_ms
    } else {
        let mut spec = before.service.spec.clone();
        u.apply(&mut spec)?;
        let monitor_ms = spec.update_config.monitor_ms;
        let req =
            ServiceRequest::Update { service: text(id)?, spec: Box::new(spec), version: before.service.spec_version };
        call(client, req).await?;
        monitor_ms
    };
    println!("{}", u.service);
    if u.detach.unwrap_or(false) {
        return Ok(());
    }
    let after = inspect(client, id).await?;
    let follow = follow(before.update_status.as_ref(), after.update_status.as_ref(), u.rollback);
    converge(client, id, Watch::new(follow, monitor_ms)).await
}

fn shoal_manager_now() -> u64 {
    shoal_link::wall_ms()
}
