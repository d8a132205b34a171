//! `shoal service ...`: create, ls, ps, inspect, update, scale, rm, with Docker's flags
//! and output. Without `--detach`, create, update and scale follow the service until it
//! has converged (or say which task can't be placed, and why); an update or rollback is
//! followed through the manager's update status, as docker/cli does.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, ServiceView, TaskView, UpdateState, UpdateStatus};
use shoal_proto::services::{
    format_cpus, format_duration_ms, format_memory, parse_cpus, parse_duration_ms, parse_memory,
};
use shoal_proto::{
    BoundedString, BoundedVec, Constraint, ControlReply, ControlRequest, EndpointMode, FailureAction, PortConfig,
    PublishMode, RestartCondition, ServiceMode, ServiceSpec, TaskState, UpdateConfig, UpdateOrder,
};

use super::client::Client;
use super::output::table;
use super::template::Template;

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

/// What `service inspect --format` asks for.
#[derive(Debug)]
pub enum InspectFormat {
    /// For people (`--pretty`).
    Pretty,
    /// Docker-shaped JSON, all services in one array.
    Json,
    /// A Go template run over each service's JSON, one line each.
    Template(Template),
}

impl InspectFormat {
    /// Reads `--format` and `--pretty` as Docker does: `pretty`, `json` or nothing, else a
    /// template, checked here so a typo fails before anything is printed.
    pub fn new(format: Option<&str>, pretty: bool) -> anyhow::Result<Self> {
        Ok(match (format, pretty) {
            (None | Some("pretty"), true) | (Some("pretty"), false) => Self::Pretty,
            (Some(_), true) => anyhow::bail!("--format is incompatible with human friendly format (--pretty)"),
            (None | Some("" | "json"), false) => Self::Json,
            (Some(t), false) => Self::Template(Template::parse(t)?),
        })
    }

    /// The whole output for `views`, or the first error: nothing is printed half-way.
    pub fn render(&self, views: &[ServiceView], now_ms: u64) -> anyhow::Result<String> {
        Ok(match self {
            Self::Pretty => views.iter().map(|v| pretty(v, now_ms)).collect(),
            Self::Json => serde_json::to_string_pretty(&views.iter().map(json).collect::<Vec<_>>())? + "\n",
            Self::Template(t) => {
                views.iter().map(|v| Ok(t.execute(&json(v))? + "\n")).collect::<anyhow::Result<String>>()?
            }
        })
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A fixed number of tasks.
    Replicated,
    /// One task per eligible node.
    Global,
}

/// `service create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    pub name: String,
    /// Number of tasks.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// replicated or global.
    #[arg(long, value_enum, default_value_t = Mode::Replicated)]
    pub mode: Mode,
    /// Publish a port: `PUBLISHED:TARGET[/PROTO]` or `mode=host,target=N[,published=N][,protocol=P]`.
    #[arg(long, short = 'p', value_parser = PortConfig::parse)]
    pub publish: Vec<PortConfig>,
    /// Set an environment variable (`KEY=VALUE`).
    #[arg(long, short = 'e', value_parser = parse_env)]
    pub env: Vec<String>,
    /// Placement constraint, e.g. `node.labels.zone==eu`.
    #[arg(long, value_parser = Constraint::parse)]
    pub constraint: Vec<Constraint>,
    /// Memory limit, e.g. 64M.
    #[arg(long = "limit-memory", value_parser = parse_memory)]
    pub limit_memory: Option<u64>,
    /// CPU limit, e.g. 0.5.
    #[arg(long = "limit-cpu", value_parser = parse_cpus)]
    pub limit_cpu: Option<u32>,
    /// Memory a node must have free, e.g. 32M.
    #[arg(long = "reserve-memory", value_parser = parse_memory)]
    pub reserve_memory: Option<u64>,
    /// CPUs a node must have free, e.g. 0.25.
    #[arg(long = "reserve-cpu", value_parser = parse_cpus)]
    pub reserve_cpu: Option<u32>,
    /// any, on-failure or none.
    #[arg(long = "restart-condition")]
    pub restart_condition: Option<RestartCondition>,
    /// Wait between restarts, e.g. 5s.
    #[arg(long = "restart-delay", value_parser = parse_duration_ms)]
    pub restart_delay: Option<u64>,
    /// Most restarts of one slot.
    #[arg(long = "restart-max-attempts")]
    pub restart_max_attempts: Option<u32>,
    /// Time between SIGTERM and SIGKILL, e.g. 10s.
    #[arg(long = "stop-grace-period", value_parser = parse_duration_ms)]
    pub stop_grace_period: Option<u64>,
    /// Attach to a network (`host`: the node's own network).
    #[arg(long)]
    pub network: Vec<String>,
    /// vip or dnsrr.
    #[arg(long = "endpoint-mode")]
    pub endpoint_mode: Option<EndpointMode>,
    #[command(flatten)]
    pub policy: UpdatePolicyArgs,
    /// Return at once instead of waiting for the tasks (`--detach=false` waits).
    #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub detach: Option<bool>,
    /// Image reference, e.g. `redis` or `demo/app:1.0`.
    pub image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `service update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Number of tasks.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// New image.
    #[arg(long)]
    pub image: Option<String>,
    /// Add or change an environment variable (`KEY=VALUE`).
    #[arg(long = "env-add", value_parser = parse_env)]
    pub env_add: Vec<String>,
    /// Remove an environment variable by key.
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// Publish a port (same forms as `create --publish`).
    #[arg(long = "publish-add", value_parser = PortConfig::parse)]
    pub publish_add: Vec<PortConfig>,
    /// Unpublish a port: its published (or target) port, or the full form.
    #[arg(long = "publish-rm")]
    pub publish_rm: Vec<String>,
    /// Add a placement constraint.
    #[arg(long = "constraint-add", value_parser = Constraint::parse)]
    pub constraint_add: Vec<Constraint>,
    /// Remove a placement constraint (as it was given).
    #[arg(long = "constraint-rm", value_parser = Constraint::parse)]
    pub constraint_rm: Vec<Constraint>,
    #[command(flatten)]
    pub policy: UpdatePolicyArgs,
    /// Go back to the previous spec.
    #[arg(long)]
    pub rollback: bool,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub detach: Option<bool>,
    /// Service name, ID or ID prefix.
    pub service: String,
}

/// `--update-*` and `--rollback-*`, Docker's names and defaults: how an update replaces
/// tasks, and how a rollback does. Unset flags leave the spec as it is, so `service
/// update` changes only what is given.
#[derive(Debug, Default, Args)]
pub struct UpdatePolicyArgs {
    /// Maximum number of tasks updated simultaneously (0 to update all at once) [default: 1].
    #[arg(long = "update-parallelism", value_name = "N")]
    pub update_parallelism: Option<u32>,
    /// Delay between updates, e.g. 10s [default: 0s].
    #[arg(long = "update-delay", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub update_delay: Option<u64>,
    /// Action on update failure: pause, continue or rollback [default: pause].
    #[arg(long = "update-failure-action", value_name = "ACTION")]
    pub update_failure_action: Option<FailureAction>,
    /// Duration after each task update to monitor for failure [default: 5s].
    #[arg(long = "update-monitor", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub update_monitor: Option<u64>,
    /// Failure rate to tolerate during an update, 0 to 1 [default: 0].
    #[arg(long = "update-max-failure-ratio", value_name = "RATIO", value_parser = parse_ratio)]
    pub update_max_failure_ratio: Option<u16>,
    /// Update order: stop-first or start-first [default: stop-first].
    #[arg(long = "update-order", value_name = "ORDER")]
    pub update_order: Option<UpdateOrder>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once) [default: 1].
    #[arg(long = "rollback-parallelism", value_name = "N")]
    pub rollback_parallelism: Option<u32>,
    /// Delay between task rollbacks, e.g. 10s [default: 0s].
    #[arg(long = "rollback-delay", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub rollback_delay: Option<u64>,
    /// Action on rollback failure: pause or continue [default: pause].
    #[arg(long = "rollback-failure-action", value_name = "ACTION", value_parser = parse_rollback_failure_action)]
    pub rollback_failure_action: Option<FailureAction>,
    /// Duration after each task rollback to monitor for failure [default: 5s].
    #[arg(long = "rollback-monitor", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub rollback_monitor: Option<u64>,
    /// Failure rate to tolerate during a rollback, 0 to 1 [default: 0].
    #[arg(long = "rollback-max-failure-ratio", value_name = "RATIO", value_parser = parse_ratio)]
    pub rollback_max_failure_ratio: Option<u16>,
    /// Rollback order: stop-first or start-first [default: stop-first].
    #[arg(long = "rollback-order", value_name = "ORDER")]
    pub rollback_order: Option<UpdateOrder>,
}

impl UpdatePolicyArgs {
    /// Sets the update and rollback configs' fields these flags give.
    pub fn apply(&self, spec: &mut ServiceSpec) {
        fn set<T: Copy>(field: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *field = v;
            }
        }
        let UpdateConfig { parallelism, delay_ms, failure_action, monitor_ms, max_failure_ratio_permille, order } =
            &mut spec.update_config;
        set(parallelism, self.update_parallelism);
        set(delay_ms, self.update_delay);
        set(failure_action, self.update_failure_action);
        set(monitor_ms, self.update_monitor);
        set(max_failure_ratio_permille, self.update_max_failure_ratio);
        set(order, self.update_order);
        let UpdateConfig { parallelism, delay_ms, failure_action, monitor_ms, max_failure_ratio_permille, order } =
            &mut spec.rollback_config;
        set(parallelism, self.rollback_parallelism);
        set(delay_ms, self.rollback_delay);
        set(failure_action, self.rollback_failure_action);
        set(monitor_ms, self.rollback_monitor);
        set(max_failure_ratio_permille, self.rollback_max_failure_ratio);
        set(order, self.rollback_order);
    }
}

/// A failure ratio (0 to 1) in thousandths, as the spec keeps it.
fn parse_ratio(s: &str) -> Result<u16, String> {
    let bad = || format!("invalid failure ratio {s:?}: expected a number between 0 and 1, e.g. 0.2");
    let ratio: f64 = s.trim().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(bad());
    }
    Ok((ratio * 1000.0).round() as u16)
}

/// A rollback's failure action: a rollback that fails can't itself be rolled back.
fn parse_rollback_failure_action(s: &str) -> Result<FailureAction, String> {
    match s.parse::<FailureAction>().map_err(|e| e.to_string())? {
        FailureAction::Rollback => Err("a rollback can't itself be rolled back: use pause or continue".into()),
        action => Ok(action),
    }
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("invalid environment variable {s:?}: expected KEY=VALUE")),
    }
}

fn parse_scale(s: &str) -> Result<(String, u32), String> {
    let bad = || format!("invalid scale {s:?}: expected SERVICE=REPLICAS, e.g. web=3");
    let (name, n) = s.split_once('=').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    Ok((name.to_owned(), n.trim().parse().map_err(|_| bad())?))
}

fn text<const N: usize>(s: &str) -> anyhow::Result<shoal_proto::Text<N>> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

fn bounded<T, const N: usize>(items: Vec<T>, what: &str) -> anyhow::Result<BoundedVec<T, N>> {
    let n = items.len();
    items.try_into().map_err(|_| anyhow::anyhow!("too many {what}: {n}, at most {N}"))
}

fn strings<const L: usize, const N: usize>(
    items: &[String],
    what: &str,
) -> anyhow::Result<BoundedVec<BoundedString<L>, N>> {
    let v = items
        .iter()
        .map(|s| BoundedString::try_from(s.as_str()).map_err(|e| anyhow::anyhow!("{what} {s:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    bounded(v, what)
}

impl CreateArgs {
    /// The spec these flags describe.
    pub fn spec(&self) -> anyhow::Result<ServiceSpec> {
        let mut spec = ServiceSpec::new(text(&self.name)?, text(&self.image)?);
        spec.mode = match (self.mode, self.replicas) {
            (Mode::Global, Some(_)) => anyhow::bail!("--replicas can't be used with --mode global"),
            (Mode::Global, None) => ServiceMode::Global,
            (Mode::Replicated, n) => ServiceMode::Replicated { replicas: n.unwrap_or(1) },
        };
        spec.ports = bounded(self.publish.clone(), "published ports")?;
        spec.env = strings(&self.env, "environment variables")?;
        spec.args = strings(&self.args, "arguments")?;
        spec.constraints = bounded(self.constraint.clone(), "constraints")?;
        let r = &mut spec.resources;
        r.limit_memory = self.limit_memory.unwrap_or(0);
        r.limit_cpu_millis = self.limit_cpu.unwrap_or(0);
        r.reserve_memory = self.reserve_memory.unwrap_or(0);
        r.reserve_cpu_millis = self.reserve_cpu.unwrap_or(0);
        if let Some(c) = self.restart_condition {
            spec.restart_policy.condition = c;
        }
        if let Some(d) = self.restart_delay {
            spec.restart_policy.delay_ms = d;
        }
        spec.restart_policy.max_attempts = self.restart_max_attempts;
        if let Some(g) = self.stop_grace_period {
            spec.stop_grace_period_ms = g;
        }
        spec.networks = bounded(self.network.iter().map(|n| text(n)).collect::<anyhow::Result<_>>()?, "networks")?;
        if let Some(m) = self.endpoint_mode {
            spec.endpoint_mode = m;
        }
        self.policy.apply(&mut spec);
        spec.validate()?;
        Ok(spec)
    }
}

impl UpdateArgs {
    /// Applies these flags to `spec`.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if let Some(n) = self.replicas {
            match &mut spec.mode {
                ServiceMode::Replicated { replicas } => *replicas = n,
                ServiceMode::Global => anyhow::bail!("--replicas can only be used with replicated services"),
            }
        }
        if let Some(image) = &self.image {
            spec.image = text(image)?;
        }
        let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
        let mut env: Vec<String> = spec.env.iter().map(|e| e.to_string()).collect();
        env.retain(|e| !self.env_rm.contains(&key(e)) && !self.env_add.iter().any(|a| key(a) == key(e)));
        env.extend(self.env_add.iter().cloned());
        spec.env = strings(&env, "environment variables")?;

        let mut ports: Vec<PortConfig> = spec.ports.to_vec();
        for rm in &self.publish_rm {
            let before = ports.len();
            let full = PortConfig::parse(rm).ok();
            let number: Option<u16> = rm.split('/').next().and_then(|n| n.parse().ok());
            ports.retain(|p| {
                let by_number =
                    number.is_some_and(|n| p.published == Some(n) || (p.published.is_none() && p.target == n));
                let by_form =
                    full.is_some_and(|f| f.target == p.target && (f.published.is_none() || f.published == p.published));
                !(by_number || by_form)
            });
            if ports.len() == before {
                anyhow::bail!("--publish-rm {rm}: the service publishes no such port");
            }
        }
        for add in &self.publish_add {
            ports.retain(|p| !(p.published.is_some() && p.published == add.published && p.protocol == add.protocol));
            ports.push(*add);
        }
        spec.ports = bounded(ports, "published ports")?;

        let mut constraints: Vec<Constraint> = spec.constraints.to_vec();
        for rm in &self.constraint_rm {
            constraints.retain(|c| c != rm);
        }
        for add in &self.constraint_add {
            if !constraints.contains(add) {
                constraints.push(add.clone());
            }
        }
        spec.constraints = bounded(constraints, "constraints")?;
        self.policy.apply(spec);
        spec.validate()?;
        Ok(())
    }
}

/// Runs a `shoal service` subcommand.
pub async fn run(data_dir: &Path, cmd: ServiceCommand) -> anyhow::Result<()> {
    // Flags are checked before connecting: a typo should not wait for the network.
    let checked = match &cmd {
        ServiceCommand::Create(c) => Checked::Spec(Box::new(c.spec()?)),
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
                converge(client, id.as_str(), Watch::new(Follow::Tasks, 0)).await?;
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
                    converge(client, id.as_str(), Watch::new(Follow::Tasks, 0)).await?;
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
    crate::wall_ms()
}

/// Longest wait without any sign of progress (a new line to print).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long tasks may sit unplaceable, with nothing else progressing, before giving up.
const STUCK_AFTER: Duration = Duration::from_secs(15);

/// Where a service stands: tasks running the current spec out of those wanted, and the
/// scheduler's reasons for tasks it can't place.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Tasks of the current spec that run.
    pub running: u32,
    /// Tasks wanted.
    pub desired: u32,
    /// Whether tasks of an older spec still run or are wanted.
    pub outdated: bool,
    /// `NAME.SLOT: reason` for each task that can't be placed.
    pub unplaceable: Vec<String>,
}

impl Progress {
    /// Converged: every wanted task runs the current spec.
    pub fn converged(&self) -> bool {
        self.running == self.desired && !self.outdated
    }
}

/// Computes [`Progress`] from a service and its tasks.
pub fn progress(view: &ServiceView, tasks: &[TaskView]) -> Progress {
    let spec = view.service.spec.task_spec();
    let own: Vec<&TaskView> =
        tasks.iter().filter(|t| t.task.service_id == view.service.id && t.task.is_desired_running()).collect();
    let running = own.iter().filter(|t| t.task.spec == spec && t.task.status.state == TaskState::Running).count();
    let outdated = own.iter().any(|t| t.task.spec != spec);
    let unplaceable = own
        .iter()
        .filter(|t| t.task.status.state <= TaskState::Pending && t.task.status.message.starts_with("no suitable node"))
        .map(|t| format!("{}: {}", task_name(t), t.task.status.message))
        .collect();
    Progress { running: running as u32, desired: view.desired, outdated, unplaceable }
}

/// What a wait follows after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Only the tasks: a new service, or a change that started no update (a scale).
    Tasks,
    /// The update the command started: its pausing or rolling back is a failure.
    Update,
    /// The rollback the operator asked for: it completing is success.
    Rollback,
}

/// What to follow after `service update`: the update status if the request started an
/// update (a new start time), else the tasks, since changing only the replicas (or the
/// update config) leaves the status of the last update as it was.
pub fn follow(before: Option<&UpdateStatus>, after: Option<&UpdateStatus>, rollback: bool) -> Follow {
    let started = |s: Option<&UpdateStatus>| s.map(|s| s.started_at_ms);
    if after.is_none() || started(before) == started(after) {
        Follow::Tasks
    } else if rollback {
        Follow::Rollback
    } else {
        Follow::Update
    }
}

/// Where a wait stands after one look at the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching.
    Continue,
    /// The service converged.
    Done,
    /// It won't, as docker/cli words it (`service update paused: ...`).
    Failed(String),
}

/// Judges one look at the service, after docker/cli's progress: an update ends with its
/// status, tasks only when they all run the current spec.
pub fn verdict(view: &ServiceView, tasks: &[TaskView], follow: Follow) -> Verdict {
    let p = progress(view, tasks);
    match (follow, &view.update_status) {
        (Follow::Update | Follow::Rollback, Some(status)) => status_verdict(status, follow),
        _ if p.converged() => Verdict::Done,
        // Old tasks under a paused update stay: waiting for them to go would be in vain.
        (_, Some(status))
            if p.outdated && matches!(status.state, UpdateState::Paused | UpdateState::RollbackPaused) =>
        {
            status_verdict(status, follow)
        }
        _ => Verdict::Continue,
    }
}

fn status_verdict(status: &UpdateStatus, follow: Follow) -> Verdict {
    let message = &status.message;
    match status.state {
        UpdateState::Updating | UpdateState::RollbackStarted => Verdict::Continue,
        UpdateState::Completed => Verdict::Done,
        UpdateState::RollbackCompleted if follow == Follow::Rollback => Verdict::Done,
        // An automatic rollback: the update asked for did not happen.
        UpdateState::RollbackCompleted => Verdict::Failed(format!("service rolled back: {message}")),
        UpdateState::Paused => Verdict::Failed(format!("service update paused: {message}")),
        UpdateState::RollbackPaused => Verdict::Failed(format!("service rollback paused: {message}")),
    }
}

/// The update messages that only say an update or rollback runs: not worth a line.
const PLAIN_MESSAGES: [&str; 2] = ["update in progress", "manually requested rollback"];

/// A wait's memory of what it printed, so that each line appears once.
#[derive(Debug)]
pub struct Watch {
    follow: Follow,
    /// Monitor period of the config in force, announced once the tasks all run.
    monitor_ms: u64,
    progress: String,
    message: String,
    verifying: bool,
}

impl Watch {
    /// A wait that follows `follow`, paced by a config whose monitor period is `monitor_ms`.
    pub fn new(follow: Follow, monitor_ms: u64) -> Self {
        Self { follow, monitor_ms, progress: String::new(), message: String::new(), verifying: false }
    }

    /// One look at the service: the lines to print now, and the verdict.
    pub fn observe(&mut self, view: &ServiceView, tasks: &[TaskView]) -> (Vec<String>, Verdict) {
        let p = progress(view, tasks);
        let mut lines = Vec::new();
        let line = format!("overall progress: {} out of {} tasks", p.running, p.desired);
        if line != self.progress {
            self.progress.clone_from(&line);
            lines.push(line);
        }
        lines.extend(self.note(view));
        let mut verdict = verdict(view, tasks, self.follow);
        if let Verdict::Failed(e) = &mut verdict {
            // "rollback completed" says little: name the failure that caused it, when seen.
            if e.starts_with("service rolled back") && self.message.starts_with("update rolled back") {
                *e = format!("service rolled back: {}", self.message);
            }
        }
        if verdict == Verdict::Continue && p.converged() && !self.verifying && self.may_succeed(view) {
            // The manager completes the update once the new tasks stayed up this long.
            self.verifying = true;
            if self.monitor_ms > 0 {
                let secs = self.monitor_ms.div_ceil(1000);
                lines.push(format!("verify: Waiting {secs} seconds to verify that tasks are stable..."));
            }
        }
        if verdict == Verdict::Done {
            lines.push("verify: Service converged".to_owned());
        }
        (lines, verdict)
    }

    /// A new update message worth a line: a start-first fallback, an automatic rollback.
    fn note(&mut self, view: &ServiceView) -> Option<String> {
        let status = view.update_status.as_ref().filter(|s| self.follow != Follow::Tasks && s.state.is_active())?;
        if PLAIN_MESSAGES.contains(&&*status.message) || *status.message == self.message {
            return None;
        }
        self.message = status.message.to_string();
        let what = if status.state.is_rollback() { "rollback" } else { "update" };
        Some(format!("{what}: {}", status.message))
    }

    /// Whether the status is the one that can still end well: our update running, or
    /// the rollback the operator asked for.
    fn may_succeed(&self, view: &ServiceView) -> bool {
        let state = view.update_status.as_ref().map(|s| s.state);
        match self.follow {
            Follow::Tasks => false,
            Follow::Update => state == Some(UpdateState::Updating),
            Follow::Rollback => state == Some(UpdateState::RollbackStarted),
        }
    }
}

/// Follows a service until `watch` has a verdict, printing its lines.
async fn converge(client: &Client, id: &str, mut watch: Watch) -> anyhow::Result<()> {
    let mut last_change = Instant::now();
    loop {
        let view = inspect(client, id).await?;
        let tasks = tasks(client, &[id.to_owned()]).await?;
        let (lines, verdict) = watch.observe(&view, &tasks);
        if !lines.is_empty() {
            last_change = Instant::now();
        }
        lines.iter().for_each(|l| println!("{l}"));
        match verdict {
            Verdict::Continue => {}
            Verdict::Done => return Ok(()),
            Verdict::Failed(e) => anyhow::bail!("{e}"),
        }
        give_up_if_stuck(&view, &progress(&view, &tasks), last_change.elapsed())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Ends a wait that can't end well: tasks no node can take, or nothing moving at all.
/// The timeout runs from the last change, so a slow, paced update is not cut short.
fn give_up_if_stuck(view: &ServiceView, p: &Progress, quiet_for: Duration) -> anyhow::Result<()> {
    let name = &view.service.spec.name;
    if !p.unplaceable.is_empty() && quiet_for >= STUCK_AFTER {
        anyhow::bail!(
            "service {name} can't be fully placed:\n  {}\nthe manager keeps trying; see `shoal service ps {name}`",
            p.unplaceable.join("\n  ")
        );
    }
    if quiet_for >= CONVERGE_TIMEOUT {
        anyhow::bail!(
            "service {name} made no progress for {CONVERGE_TIMEOUT:?} ({} of {} tasks running); \
             the manager keeps trying: see `shoal service ps {name}`",
            p.running,
            p.desired
        );
    }
    Ok(())
}

/// A published port as `service ls` and `ps` show it: `*:8000->8000/tcp`.
pub fn port_text(p: &PortConfig) -> String {
    let published = p.published.map_or_else(|| "*".to_owned(), |n| n.to_string());
    format!("*:{published}->{}/{}", p.target, p.protocol)
}

/// The REPLICAS column: running out of desired, then where an update stands while it
/// matters (`3/3 (updating 1/3)`, `3/3 (update paused)`); the update's count is of tasks
/// running the current spec.
pub fn replicas_text(v: &ServiceView) -> String {
    let counts = format!("{}/{}", v.running, v.desired);
    match v.update_status.as_ref().map(|u| u.state) {
        Some(UpdateState::Updating) => format!("{counts} (updating {}/{})", v.updated, v.desired),
        Some(UpdateState::Paused) => format!("{counts} (update paused)"),
        Some(UpdateState::RollbackStarted) => format!("{counts} (rolling back {}/{})", v.updated, v.desired),
        Some(UpdateState::RollbackPaused) => format!("{counts} (rollback paused)"),
        Some(UpdateState::Completed | UpdateState::RollbackCompleted) | None => counts,
    }
}

/// The `service ls` table.
pub fn ls_table(views: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let s = &v.service;
            let mode = match s.spec.mode {
                ServiceMode::Replicated { .. } => "replicated",
                ServiceMode::Global => "global",
            };
            let ports: Vec<String> = s
                .spec
                .ports
                .iter()
                .filter(|p| p.mode == PublishMode::Ingress || p.published.is_some())
                .map(|p| match p.mode {
                    PublishMode::Host => format!("{} (host)", port_text(p)),
                    PublishMode::Ingress => port_text(p),
                })
                .collect();
            vec![
                s.id.short().to_owned(),
                s.spec.name.to_string(),
                mode.to_owned(),
                replicas_text(v),
                s.spec.image.to_string(),
                ports.join(", "),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
}

/// `appserver.1`, or `agent.NODEID` for a global service's task.
pub fn task_name(t: &TaskView) -> String {
    match (&t.task.slot, &t.node_id) {
        (0, Some(node)) => format!("{}.{node}", t.service_name),
        (slot, _) => format!("{}.{slot}", t.service_name),
    }
}

/// `8 seconds`, `About a minute`, ... as Docker's `HumanDuration`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        _ if s < 3600 => format!("{} minutes", s / 60),
        _ if s < 2 * 3600 => "About an hour".into(),
        _ if s < 48 * 3600 => format!("{} hours", s / 3600),
        _ if s < 14 * 86_400 => format!("{} days", s / 86_400),
        _ if s < 60 * 86_400 => format!("{} weeks", s / (7 * 86_400)),
        _ if s < 2 * 365 * 86_400 => format!("{} months", s / (30 * 86_400)),
        _ => format!("{} years", s / (365 * 86_400)),
    }
}

/// The ERROR column: the agent's error, a non-zero exit, or the scheduler's reason.
pub fn task_error(t: &TaskView) -> String {
    let status = &t.task.status;
    if let Some(err) = &status.err {
        return err.to_string();
    }
    match status.exit_code {
        // Only a task that failed by itself: one the manager shut down (drain, scale
        // down, update) ended with 143 on purpose, and Swarm shows no error for it.
        Some(code) if code != 0 && status.state == TaskState::Failed => return format!("task: non-zero exit ({code})"),
        _ => {}
    }
    if status.state <= TaskState::Pending && status.message.starts_with("no suitable node") {
        return status.message.to_string();
    }
    String::new()
}

/// The `service ps` table: each slot's current task, then its history as ` \_ ` lines.
pub fn ps_table(tasks: &[TaskView], now_ms: u64) -> String {
    let mut rows = Vec::new();
    let mut previous: Option<(String, u32, Option<String>)> = None;
    for t in tasks {
        let key = (
            t.service_name.to_string(),
            t.task.slot,
            if t.task.slot == 0 { t.node_id.as_ref().map(|n| n.to_string()) } else { None },
        );
        let history = previous.as_ref() == Some(&key);
        previous = Some(key);
        let name = if history { format!(" \\_ {}", task_name(t)) } else { task_name(t) };
        let status = &t.task.status;
        let ports: Vec<&PortConfig> = if status.ports.is_empty() {
            t.task.spec.ports.iter().filter(|p| p.mode == PublishMode::Host && p.published.is_some()).collect()
        } else {
            status.ports.iter().collect()
        };
        rows.push(vec![
            t.task.id.short().to_owned(),
            name,
            t.task.spec.image.to_string(),
            t.node_hostname.as_deref().unwrap_or("").to_owned(),
            t.task.desired_state.to_string(),
            format!("{} {} ago", status.state, human_duration(now_ms.saturating_sub(status.timestamp_ms))),
            task_error(t),
            ports.iter().map(|p| port_text(p)).collect::<Vec<_>>().join(", "),
        ]);
    }
    table(&["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"], &rows)
}

fn condition_text(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::Any => "any",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::None => "none",
    }
}

/// Docker's `UpdateStatus`, keys in Docker's order (the manager builds serde_json with
/// `preserve_order`, so `{{json .UpdateStatus}}` prints them as docker does).
fn update_status_json(u: &UpdateStatus) -> serde_json::Value {
    let mut status = serde_json::Map::new();
    status.insert("State".into(), json!(u.state.as_str()));
    status.insert("StartedAt".into(), json!(shoal_proto::time::rfc3339(u.started_at_ms)));
    if let Some(done) = u.completed_at_ms {
        status.insert("CompletedAt".into(), json!(shoal_proto::time::rfc3339(done)));
    }
    status.insert("Message".into(), json!(&*u.message));
    serde_json::Value::Object(status)
}

fn update_config_json(u: &shoal_proto::UpdateConfig) -> serde_json::Value {
    json!({
        "Parallelism": u.parallelism,
        "Delay": u.delay_ms * 1_000_000,
        "FailureAction": u.failure_action.to_string(),
        "Monitor": u.monitor_ms * 1_000_000,
        "MaxFailureRatio": f64::from(u.max_failure_ratio_permille) / 1000.0,
        "Order": u.order.to_string(),
    })
}

/// The `UpdateStatus:` block of `--pretty`, Docker's: times as `2 minutes ago`.
fn update_status_text(u: &UpdateStatus, now_ms: u64) -> String {
    let ago = |ms: u64| format!("{} ago", human_duration(now_ms.saturating_sub(ms)));
    let mut out = format!("UpdateStatus:\n State:\t\t{}\n Started:\t{}\n", u.state, ago(u.started_at_ms));
    if let Some(done) = u.completed_at_ms {
        out.push_str(&format!(" Completed:\t{}\n", ago(done)));
    }
    out.push_str(&format!(" Message:\t{}\n", u.message));
    out
}

/// An `UpdateConfig:` or `RollbackConfig:` block of `--pretty`. As in Docker, the delay and
/// the monitoring period show only when set.
fn update_config_text(title: &str, order_label: &str, c: &UpdateConfig) -> String {
    let mut out = format!("{title}:\n Parallelism:\t{}\n", c.parallelism);
    if c.delay_ms > 0 {
        out.push_str(&format!(" Delay:\t\t{}\n", format_duration_ms(c.delay_ms)));
    }
    out.push_str(&format!(" On failure:\t{}\n", c.failure_action));
    if c.monitor_ms > 0 {
        out.push_str(&format!(" Monitoring Period: {}\n", format_duration_ms(c.monitor_ms)));
    }
    out.push_str(&format!(
        " Max failure ratio: {}\n {order_label}{}\n",
        f64::from(c.max_failure_ratio_permille) / 1000.0,
        c.order
    ));
    out
}

/// Docker-shaped JSON for `service inspect`.
pub fn json(v: &ServiceView) -> serde_json::Value {
    let s = &v.service;
    let spec = &s.spec;
    let r = &spec.resources;
    let mode = match spec.mode {
        ServiceMode::Replicated { replicas } => json!({ "Replicated": { "Replicas": replicas } }),
        ServiceMode::Global => json!({ "Global": {} }),
    };
    let ports: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({ "Protocol": p.protocol.to_string(), "TargetPort": p.target, "PublishMode": p.mode.to_string() });
            if let Some(published) = p.published {
                port["PublishedPort"] = json!(published);
            }
            port
        })
        .collect();
    let platforms: Vec<serde_json::Value> = spec
        .platforms
        .iter()
        .map(|p| {
            let mut parts = p.split('/');
            json!({ "OS": parts.next().unwrap_or(""), "Architecture": parts.next().unwrap_or("") })
        })
        .collect();
    let mut out = json!({
        "ID": s.id.as_str(),
        "Version": { "Index": s.spec_version },
        "CreatedAt": shoal_proto::time::rfc3339(s.created_at_ms),
        "Spec": {
            "Name": spec.name.as_str(),
            "Labels": {},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": spec.image.as_str(),
                    "Args": spec.args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "Env": spec.env.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "StopGracePeriod": spec.stop_grace_period_ms * 1_000_000,
                },
                "Resources": {
                    "Limits": { "NanoCPUs": u64::from(r.limit_cpu_millis) * 1_000_000, "MemoryBytes": r.limit_memory },
                    "Reservations": { "NanoCPUs": u64::from(r.reserve_cpu_millis) * 1_000_000, "MemoryBytes": r.reserve_memory },
                },
                "RestartPolicy": {
                    "Condition": condition_text(spec.restart_policy.condition),
                    "Delay": spec.restart_policy.delay_ms * 1_000_000,
                    "MaxAttempts": spec.restart_policy.max_attempts.unwrap_or(0),
                    "Window": spec.restart_policy.window_ms * 1_000_000,
                },
                "Placement": {
                    "Constraints": spec.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "Platforms": platforms,
                },
                "Networks": spec.networks.iter().map(|n| json!({ "Target": n.as_str() })).collect::<Vec<_>>(),
            },
            "Mode": mode,
            "UpdateConfig": update_config_json(&spec.update_config),
            "RollbackConfig": update_config_json(&spec.rollback_config),
            "EndpointSpec": { "Mode": spec.endpoint_mode.to_string(), "Ports": ports.clone() },
        },
        "Endpoint": { "Spec": { "Mode": spec.endpoint_mode.to_string(), "Ports": ports.clone() }, "Ports": ports },
        "ServiceStatus": { "RunningTasks": v.running, "DesiredTasks": v.desired },
    });
    if let Some(u) = &v.update_status {
        out["UpdateStatus"] = update_status_json(u);
    }
    out
}

/// The human form of `service inspect`, after Docker's `--pretty`; times are relative to `now_ms`.
pub fn pretty(v: &ServiceView, now_ms: u64) -> String {
    let s = &v.service;
    let spec = &s.spec;
    let mut out = format!("\nID:\t\t{}\nName:\t\t{}\n", s.id, spec.name);
    match spec.mode {
        ServiceMode::Replicated { replicas } => {
            out.push_str(&format!("Service Mode:\tReplicated\n Replicas:\t{replicas}\n"))
        }
        ServiceMode::Global => out.push_str("Service Mode:\tGlobal\n"),
    }
    if let Some(u) = &v.update_status {
        out.push_str(&update_status_text(u, now_ms));
    }
    out.push_str(&format!(
        "Placement:\n Constraints:\t[{}]\n",
        spec.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
    ));
    out.push_str(&update_config_text("UpdateConfig", "Update order:      ", &spec.update_config));
    out.push_str(&update_config_text("RollbackConfig", "Rollback order:    ", &spec.rollback_config));
    out.push_str(&format!("ContainerSpec:\n Image:\t\t{}\n", spec.image));
    if !spec.args.is_empty() {
        out.push_str(&format!(" Args:\t\t{}\n", spec.args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ")));
    }
    if !spec.env.is_empty() {
        out.push_str(&format!(" Env:\t\t{}\n", spec.env.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ")));
    }
    let r = &spec.resources;
    if r.limit_memory + r.reserve_memory + u64::from(r.limit_cpu_millis) + u64::from(r.reserve_cpu_millis) > 0 {
        out.push_str("Resources:\n");
        if r.reserve_cpu_millis + r.reserve_memory as u32 > 0 || r.reserve_memory > 0 {
            out.push_str(" Reservations:\n");
            if r.reserve_cpu_millis > 0 {
                out.push_str(&format!("  CPU:\t\t{}\n", format_cpus(r.reserve_cpu_millis)));
            }
            if r.reserve_memory > 0 {
                out.push_str(&format!("  Memory:\t{}\n", format_memory(r.reserve_memory)));
            }
        }
        if r.limit_cpu_millis > 0 || r.limit_memory > 0 {
            out.push_str(" Limits:\n");
            if r.limit_cpu_millis > 0 {
                out.push_str(&format!("  CPU:\t\t{}\n", format_cpus(r.limit_cpu_millis)));
            }
            if r.limit_memory > 0 {
                out.push_str(&format!("  Memory:\t{}\n", format_memory(r.limit_memory)));
            }
        }
    }
    out.push_str(&format!("Endpoint Mode:\t{}\n", spec.endpoint_mode));
    if !spec.ports.is_empty() {
        out.push_str("Ports:\n");
        for p in &spec.ports {
            if let Some(published) = p.published {
                out.push_str(&format!(" PublishedPort = {published}\n"));
            }
            out.push_str(&format!(
                "  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}\n",
                p.protocol, p.target, p.mode
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use shoal_proto::{NodeId, Service, ServiceId, Task, TaskId, TaskStatus};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ServiceCommand,
    }

    fn parse(args: &[&str]) -> ServiceCommand {
        Cli::try_parse_from(std::iter::once("service").chain(args.iter().copied())).unwrap().cmd
    }

    #[test]
    fn create_flags_parse_like_docker() {
        let ServiceCommand::Create(c) = parse(&[
            "create",
            "--name",
            "appserver",
            "--replicas",
            "3",
            "--publish",
            "mode=host,target=8000,published=8000",
            "-e",
            "A=1",
            "--constraint",
            "node.labels.zone==eu",
            "--limit-memory",
            "64M",
            "--limit-cpu",
            "0.5",
            "--reserve-memory",
            "32M",
            "--reserve-cpu",
            "0.25",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--restart-max-attempts",
            "3",
            "--stop-grace-period",
            "1s",
            "--network",
            "host",
            "--endpoint-mode",
            "dnsrr",
            "--detach=true",
            "demo/app:1.0",
            "httpd",
            "-f",
            "-p",
            "8000",
        ]) else {
            panic!()
        };
        let spec = c.spec().unwrap();
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(spec.ports[0].mode, PublishMode::Host);
        assert_eq!(spec.ports[0].published, Some(8000));
        assert_eq!(spec.env[0].to_string(), "A=1");
        assert_eq!(spec.resources.limit_memory, 64 << 20);
        assert_eq!((spec.resources.limit_cpu_millis, spec.resources.reserve_cpu_millis), (500, 250));
        assert_eq!(spec.restart_policy.condition, RestartCondition::OnFailure);
        assert_eq!((spec.restart_policy.delay_ms, spec.restart_policy.max_attempts), (2000, Some(3)));
        assert_eq!(spec.stop_grace_period_ms, 1000);
        assert_eq!(spec.endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(spec.args.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["httpd", "-f", "-p", "8000"]);
        assert_eq!(c.detach, Some(true));

        let ServiceCommand::Create(c) = parse(&["create", "--name", "agent", "--mode", "global", "-d", "redis"]) else {
            panic!()
        };
        assert_eq!(c.spec().unwrap().mode, ServiceMode::Global);
        assert_eq!(c.detach, Some(true));
        let ServiceCommand::Create(c) =
            parse(&["create", "--name", "x", "--mode", "global", "--replicas", "2", "redis"])
        else {
            panic!()
        };
        assert!(c.spec().unwrap_err().to_string().contains("--mode global"));
        assert!(Cli::try_parse_from(["s", "create", "--name", "x", "--publish", "mode=host", "redis"]).is_err());
        assert!(Cli::try_parse_from(["s", "create", "--name", "x", "--env", "NOEQUALS", "redis"]).is_err());
    }

    #[test]
    fn update_flags_change_the_spec() {
        let mut spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        spec.env = vec![BoundedString::lossy("A=1"), BoundedString::lossy("B=2")].try_into().unwrap();
        spec.ports = vec![PortConfig::parse("8000:80").unwrap()].try_into().unwrap();
        let ServiceCommand::Update(u) = parse(&[
            "update",
            "--replicas",
            "6",
            "--image",
            "demo/app:2.0",
            "--env-add",
            "A=3",
            "--env-rm",
            "B",
            "--publish-rm",
            "8000",
            "--publish-add",
            "9000:90",
            "--constraint-add",
            "node.hostname!=node2",
            "web",
        ]) else {
            panic!()
        };
        u.apply(&mut spec).unwrap();
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 6 });
        assert_eq!(spec.image.as_str(), "demo/app:2.0");
        assert_eq!(spec.env.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["A=3"]);
        assert_eq!(spec.ports.iter().map(|p| p.published).collect::<Vec<_>>(), [Some(9000)]);
        assert_eq!(spec.constraints.len(), 1);
        let ServiceCommand::Update(u) = parse(&["update", "--publish-rm", "1234", "web"]) else { panic!() };
        assert!(u.apply(&mut spec).unwrap_err().to_string().contains("no such port"));
        let ServiceCommand::Update(u) = parse(&["update", "--rollback", "-d", "web"]) else { panic!() };
        assert!(u.rollback && u.detach == Some(true));
        let ServiceCommand::Scale { scales, .. } = parse(&["scale", "web=6", "db=1"]) else { panic!() };
        assert_eq!(scales, vec![("web".to_owned(), 6), ("db".to_owned(), 1)]);
        assert!(Cli::try_parse_from(["s", "scale", "web"]).is_err());
    }

    fn view(replicas: u32, running: u32) -> ServiceView {
        let mut spec =
            ServiceSpec::new(shoal_proto::text("appserver").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        spec.mode = ServiceMode::Replicated { replicas };
        spec.ports = vec![PortConfig::parse("mode=host,target=8000,published=8000").unwrap()].try_into().unwrap();
        ServiceView {
            service: Service { id: ServiceId::from_random([1; 16]), spec, spec_version: 1, created_at_ms: 0 },
            running,
            desired: replicas,
            updated: running,
            update_status: None,
        }
    }

    fn task_view(v: &ServiceView, n: u8, slot: u32, state: TaskState, desired: TaskState, at: u64) -> TaskView {
        let node = NodeId::from_random([9; 16]);
        TaskView {
            task: Task {
                id: TaskId::from_random([n; 16]),
                service_id: v.service.id.clone(),
                slot,
                node_id: Some(node.clone()),
                spec: v.service.spec.task_spec(),
                spec_version: 1,
                desired_state: desired,
                status: TaskStatus::new(state, at, ""),
                created_at_ms: at,
            },
            service_name: v.service.spec.name.clone(),
            node_hostname: Some(shoal_proto::text("node1").unwrap()),
            node_id: Some(node),
        }
    }

    #[test]
    fn ls_shows_replicas_and_ports_like_docker() {
        let out = ls_table(&[view(6, 4)]);
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("ID ") && header.contains("NAME") && header.ends_with("PORTS"));
        let row = lines.next().unwrap();
        assert!(row.contains("appserver") && row.contains("replicated") && row.contains("4/6"), "{row}");
        assert!(row.ends_with("demo/app:1.0   *:8000->8000/tcp (host)"), "{row}");
    }

    #[test]
    fn ps_shows_history_states_errors_and_reasons() {
        let v = view(2, 1);
        let mut failed = task_view(&v, 2, 1, TaskState::Failed, TaskState::Shutdown, 1_000);
        failed.task.status.exit_code = Some(143);
        let mut pending = task_view(&v, 3, 2, TaskState::Pending, TaskState::Running, 50_000);
        pending.task.node_id = None;
        pending.node_hostname = None;
        pending.task.status.message =
            BoundedString::lossy("no suitable node (host-mode port 8000/tcp in use on 3 nodes)");
        let tasks = vec![task_view(&v, 1, 1, TaskState::Running, TaskState::Running, 52_000), failed, pending];
        let out = ps_table(&tasks, 60_000);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID ") && lines[0].contains("DESIRED STATE   CURRENT STATE"), "{out}");
        assert!(lines[1].contains("appserver.1 ") && lines[1].contains("Running 8 seconds ago"), "{out}");
        assert!(lines[1].contains("*:8000->8000/tcp"), "{out}");
        assert!(lines[2].contains(" \\_ appserver.1") && lines[2].contains("Failed 59 seconds ago"), "{out}");
        assert!(lines[2].contains("task: non-zero exit (143)"), "{out}");
        assert!(lines[3].contains("appserver.2") && lines[3].contains("no suitable node (host-mode port"), "{out}");
    }

    #[test]
    fn progress_counts_tasks_of_the_current_spec_and_collects_reasons() {
        let v = view(2, 1);
        let mut pending = task_view(&v, 3, 2, TaskState::Pending, TaskState::Running, 0);
        pending.task.status.message = BoundedString::lossy("no suitable node (1 node not ready)");
        let tasks = vec![task_view(&v, 1, 1, TaskState::Running, TaskState::Running, 0), pending];
        let p = progress(&v, &tasks);
        assert_eq!((p.running, p.desired, p.outdated, p.converged()), (1, 2, false, false));
        assert_eq!(p.unplaceable, vec!["appserver.2: no suitable node (1 node not ready)"]);
        let mut newer = v.clone();
        newer.service.spec.image = shoal_proto::text("demo/app:2.0").unwrap();
        assert!(progress(&newer, &tasks).outdated);
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(500), "Less than a second");
        assert_eq!(human_duration(8_000), "8 seconds");
        assert_eq!(human_duration(90_000), "About a minute");
        assert_eq!(human_duration(180_000), "3 minutes");
        assert_eq!(human_duration(5 * 3_600_000), "5 hours");
    }

    #[test]
    fn inspect_json_is_docker_shaped() {
        let j = json(&view(3, 3));
        assert_eq!(j["Spec"]["Name"], "appserver");
        assert_eq!(j["Spec"]["Mode"]["Replicated"]["Replicas"], 3);
        assert_eq!(j["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"], "demo/app:1.0");
        assert_eq!(j["Spec"]["EndpointSpec"]["Ports"][0]["PublishedPort"], 8000);
        assert_eq!(j["Spec"]["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(j["Version"]["Index"], 1);
        assert!(pretty(&view(3, 3), 0).contains("Replicas:\t3"));
    }

    fn status(state: UpdateState, message: &str) -> UpdateStatus {
        UpdateStatus { state, started_at_ms: 1_000, completed_at_ms: None, message: BoundedString::lossy(message) }
    }

    fn with_status(mut v: ServiceView, state: UpdateState, message: &str) -> ServiceView {
        v.update_status = Some(status(state, message));
        v
    }

    #[test]
    fn update_and_rollback_flags_set_the_configs() {
        let ServiceCommand::Create(c) = parse(&["create", "--name", "web", "redis"]) else { panic!() };
        let spec = c.spec().unwrap();
        assert_eq!((spec.update_config, spec.rollback_config), (UpdateConfig::default(), UpdateConfig::default()));
        let ServiceCommand::Create(c) = parse(&[
            "create",
            "--name",
            "web",
            "--update-parallelism",
            "0",
            "--update-delay",
            "10s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1m30s",
            "--update-max-failure-ratio",
            "0.25",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "2",
            "--rollback-delay",
            "500ms",
            "--rollback-failure-action",
            "continue",
            "--rollback-monitor",
            "0s",
            "--rollback-max-failure-ratio",
            "1",
            "--rollback-order",
            "start-first",
            "redis",
        ]) else {
            panic!()
        };
        let spec = c.spec().unwrap();
        let u = spec.update_config;
        assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms, u.max_failure_ratio_permille), (0, 10_000, 90_000, 250));
        assert_eq!((u.failure_action, u.order), (FailureAction::Rollback, UpdateOrder::StartFirst));
        let r = spec.rollback_config;
        assert_eq!((r.parallelism, r.delay_ms, r.monitor_ms, r.max_failure_ratio_permille), (2, 500, 0, 1000));
        assert_eq!((r.failure_action, r.order), (FailureAction::Continue, UpdateOrder::StartFirst));

        // On update, only the flags given change.
        let mut updated = spec.clone();
        let ServiceCommand::Update(u) =
            parse(&["update", "--update-parallelism", "3", "--rollback-delay", "0s", "web"])
        else {
            panic!()
        };
        u.apply(&mut updated).unwrap();
        assert_eq!(updated.update_config, UpdateConfig { parallelism: 3, ..spec.update_config });
        assert_eq!(updated.rollback_config, UpdateConfig { delay_ms: 0, ..spec.rollback_config });

        for bad in [
            ["--rollback-failure-action", "rollback"],
            ["--update-failure-action", "retry"],
            ["--update-max-failure-ratio", "1.5"],
            ["--rollback-max-failure-ratio", "-0.1"],
            ["--update-order", "sideways"],
            ["--update-delay", "soon"],
            ["--update-parallelism", "-1"],
        ] {
            let args = ["s", "update", bad[0], bad[1], "web"];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} should be refused");
        }
        let e = Cli::try_parse_from(["s", "update", "--rollback-failure-action", "rollback", "web"]).unwrap_err();
        assert!(e.to_string().contains("can't itself be rolled back"), "{e}");
    }

    #[test]
    fn inspect_formats_are_pretty_json_or_a_template() {
        assert!(matches!(InspectFormat::new(None, false).unwrap(), InspectFormat::Json));
        assert!(matches!(InspectFormat::new(Some("json"), false).unwrap(), InspectFormat::Json));
        assert!(matches!(InspectFormat::new(Some("pretty"), false).unwrap(), InspectFormat::Pretty));
        assert!(matches!(InspectFormat::new(None, true).unwrap(), InspectFormat::Pretty));
        assert!(InspectFormat::new(Some("{{.ID}}"), true).unwrap_err().to_string().contains("incompatible"));
        let e = InspectFormat::new(Some("{{nope .ID}}"), false).unwrap_err();
        assert_eq!(e.to_string(), r#"template: :1: function "nope" not defined"#);
        let ServiceCommand::Inspect { format, .. } = parse(&["inspect", "-f", "{{json .UpdateStatus}}", "web"]) else {
            panic!()
        };
        assert_eq!(format.as_deref(), Some("{{json .UpdateStatus}}"));

        let paused = with_status(view(3, 3), UpdateState::Paused, "update paused due to failure");
        let views = [paused, view(1, 1)];
        let render = |f: &str| InspectFormat::new(Some(f), false).unwrap().render(&views, 0).unwrap();
        let id = views[0].service.id.to_string();
        assert_eq!(render("{{.Spec.Name}} {{.ID}}"), format!("appserver {id}\nappserver {id}\n"));
        assert_eq!(render("{{.UpdateStatus.State}}"), "paused\n<no value>\n");
        assert_eq!(
            render("{{json .UpdateStatus}}"),
            "{\"State\":\"paused\",\"StartedAt\":\"1970-01-01T00:00:01.000Z\",\
             \"Message\":\"update paused due to failure\"}\nnull\n"
        );
        let whole: serde_json::Value = serde_json::from_str(render("{{json .}}").lines().next().unwrap()).unwrap();
        assert_eq!(whole, json(&views[0]));
        let array: serde_json::Value = serde_json::from_str(&render("json")).unwrap();
        assert_eq!(array[0]["UpdateStatus"]["State"], "paused");
        let bad = InspectFormat::new(Some("{{.Spec.Name.X}}"), false).unwrap().render(&views, 0).unwrap_err();
        assert!(bad.to_string().starts_with("template: "), "{bad}");
    }

    #[test]
    fn ls_shows_where_an_update_stands() {
        let mut updating = with_status(view(3, 3), UpdateState::Updating, "update in progress");
        updating.updated = 1;
        let mut rolling_back = with_status(view(3, 3), UpdateState::RollbackStarted, "manually requested rollback");
        rolling_back.updated = 2;
        let cases = [
            (updating, "3/3 (updating 1/3)"),
            (with_status(view(3, 3), UpdateState::Paused, "update paused"), "3/3 (update paused)"),
            (rolling_back, "3/3 (rolling back 2/3)"),
            (with_status(view(3, 3), UpdateState::RollbackPaused, "rollback paused"), "3/3 (rollback paused)"),
            (with_status(view(3, 3), UpdateState::Completed, "update completed"), "3/3"),
            (with_status(view(3, 3), UpdateState::RollbackCompleted, "rollback completed"), "3/3"),
            (view(3, 2), "2/3"),
        ];
        for (v, want) in cases {
            assert_eq!(replicas_text(&v), want);
            assert!(ls_table(&[v]).lines().nth(1).unwrap().contains(&format!("   {want}   ")));
        }
    }

    #[test]
    fn waits_follow_the_update_the_command_started() {
        let at = |ms| UpdateStatus { started_at_ms: ms, ..status(UpdateState::Updating, "update in progress") };
        assert_eq!(follow(None, Some(&at(5)), false), Follow::Update);
        assert_eq!(follow(Some(&at(1)), Some(&at(5)), false), Follow::Update);
        assert_eq!(follow(Some(&at(1)), Some(&at(5)), true), Follow::Rollback);
        // A scale leaves the last update's status alone: only tasks tell.
        assert_eq!(follow(Some(&at(1)), Some(&at(1)), false), Follow::Tasks);
        assert_eq!(follow(None, None, false), Follow::Tasks);
    }

    /// A service at image 2.0 whose two slots run `fresh` tasks of 2.0, the rest 1.0.
    fn updating(state: UpdateState, message: &str, fresh: u8) -> (ServiceView, Vec<TaskView>) {
        let old = view(2, 2);
        let mut new = with_status(old.clone(), state, message);
        new.service.spec.image = shoal_proto::text("demo/app:2.0").unwrap();
        let tasks = (1..=2)
            .map(|slot| {
                let v = if slot <= fresh { &new } else { &old };
                task_view(v, slot, u32::from(slot), TaskState::Running, TaskState::Running, 0)
            })
            .collect();
        (new, tasks)
    }

    #[test]
    fn verdicts_end_updates_as_docker_does() {
        let verdict_of = |state, message: &str, follow| {
            let (v, t) = updating(state, message, 2);
            verdict(&v, &t, follow)
        };
        assert_eq!(verdict_of(UpdateState::Updating, "update in progress", Follow::Update), Verdict::Continue);
        assert_eq!(verdict_of(UpdateState::Completed, "update completed", Follow::Update), Verdict::Done);
        assert_eq!(
            verdict_of(
                UpdateState::Paused,
                "update paused due to failure or early termination of task x",
                Follow::Update
            ),
            Verdict::Failed(
                "service update paused: update paused due to failure or early termination of task x".into()
            )
        );
        assert_eq!(
            verdict_of(UpdateState::RollbackPaused, "rollback paused due to failure", Follow::Rollback),
            Verdict::Failed("service rollback paused: rollback paused due to failure".into())
        );
        assert_eq!(
            verdict_of(UpdateState::RollbackCompleted, "rollback completed", Follow::Update),
            Verdict::Failed("service rolled back: rollback completed".into())
        );
        assert_eq!(verdict_of(UpdateState::RollbackCompleted, "rollback completed", Follow::Rollback), Verdict::Done);
        // Following tasks (after a scale), they decide; a paused update only ends a wait
        // for old tasks it will not replace.
        assert_eq!(verdict_of(UpdateState::Paused, "update paused", Follow::Tasks), Verdict::Done);
        let (v, t) = updating(UpdateState::Paused, "update paused", 1);
        assert_eq!(verdict(&v, &t, Follow::Tasks), Verdict::Failed("service update paused: update paused".into()));
        let (mut v, t) = updating(UpdateState::Paused, "update paused", 2);
        v.desired = 3;
        assert_eq!(verdict(&v, &t, Follow::Tasks), Verdict::Continue);
        let (v, t) = updating(UpdateState::Completed, "update completed", 1);
        assert_eq!(verdict(&v, &t, Follow::Tasks), Verdict::Continue);
    }

    #[test]
    fn watching_an_update_prints_progress_notes_and_verify_lines_once() {
        let mut w = Watch::new(Follow::Update, 5_000);
        let mut look = |state, message: &str, fresh| {
            let (v, t) = updating(state, message, fresh);
            w.observe(&v, &t)
        };
        let fallback = "update in progress; appserver.2: start-first fell back to stop-first: no suitable node \
                        (host-mode port 8000/tcp in use on 3 nodes)";
        assert_eq!(
            look(UpdateState::Updating, "update in progress", 0),
            (vec!["overall progress: 0 out of 2 tasks".to_owned()], Verdict::Continue)
        );
        assert_eq!(
            look(UpdateState::Updating, fallback, 1),
            (vec!["overall progress: 1 out of 2 tasks".to_owned(), format!("update: {fallback}")], Verdict::Continue)
        );
        assert_eq!(look(UpdateState::Updating, fallback, 1), (vec![], Verdict::Continue));
        assert_eq!(
            look(UpdateState::Updating, fallback, 2),
            (
                vec![
                    "overall progress: 2 out of 2 tasks".to_owned(),
                    "verify: Waiting 5 seconds to verify that tasks are stable...".to_owned()
                ],
                Verdict::Continue
            )
        );
        assert_eq!(look(UpdateState::Updating, fallback, 2), (vec![], Verdict::Continue));
        assert_eq!(
            look(UpdateState::Completed, "update completed", 2),
            (vec!["verify: Service converged".to_owned()], Verdict::Done)
        );
    }

    #[test]
    fn watching_rollbacks_names_them_and_fails_automatic_ones() {
        let rolled = "update rolled back due to failure or early termination of task abc";
        let mut w = Watch::new(Follow::Update, 5_000);
        let (v, t) = updating(UpdateState::RollbackStarted, rolled, 2);
        let (lines, verdict) = w.observe(&v, &t);
        // No verify line: this rollback can't end well for the update asked for.
        assert_eq!(lines, ["overall progress: 2 out of 2 tasks".to_owned(), format!("rollback: {rolled}")]);
        assert_eq!(verdict, Verdict::Continue);
        let (v, t) = updating(UpdateState::RollbackCompleted, "rollback completed", 2);
        assert_eq!(w.observe(&v, &t), (vec![], Verdict::Failed(format!("service rolled back: {rolled}"))));

        let mut w = Watch::new(Follow::Rollback, 1_500);
        let (v, t) = updating(UpdateState::RollbackStarted, "manually requested rollback", 2);
        let (lines, _) = w.observe(&v, &t);
        assert_eq!(lines[1..], ["verify: Waiting 2 seconds to verify that tasks are stable...".to_owned()]);
        let (v, t) = updating(UpdateState::RollbackCompleted, "rollback completed", 2);
        assert_eq!(w.observe(&v, &t), (vec!["verify: Service converged".to_owned()], Verdict::Done));
    }

    #[test]
    fn waits_give_up_on_unplaceable_tasks_and_silence() {
        let v = view(2, 1);
        let mut p = Progress { running: 1, desired: 2, outdated: false, unplaceable: vec![] };
        assert!(give_up_if_stuck(&v, &p, STUCK_AFTER).is_ok());
        assert!(give_up_if_stuck(&v, &p, CONVERGE_TIMEOUT).unwrap_err().to_string().contains("made no progress"));
        p.unplaceable.push("appserver.2: no suitable node (1 node not ready)".into());
        assert!(give_up_if_stuck(&v, &p, STUCK_AFTER).unwrap_err().to_string().contains("can't be fully placed"));
    }

    #[test]
    fn pretty_shows_the_update_status_and_both_configs() {
        let mut v = with_status(view(3, 3), UpdateState::Completed, "update completed");
        v.update_status.as_mut().unwrap().completed_at_ms = Some(61_000);
        v.service.spec.update_config.delay_ms = 10_000;
        v.service.spec.rollback_config.order = UpdateOrder::StartFirst;
        let out = pretty(&v, 121_000);
        assert!(
            out.contains(
                "UpdateStatus:\n State:\t\tcompleted\n Started:\t2 minutes ago\n Completed:\tAbout a minute ago\n \
                 Message:\tupdate completed\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "UpdateConfig:\n Parallelism:\t1\n Delay:\t\t10s\n On failure:\tpause\n Monitoring Period: 5s\n \
                 Max failure ratio: 0\n Update order:      stop-first\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "RollbackConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n \
                 Max failure ratio: 0\n Rollback order:    start-first\n"
            ),
            "{out}"
        );
    }
}
