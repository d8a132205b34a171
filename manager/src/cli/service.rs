//! `shoal service ...`: create, ls, ps, inspect, update, scale, rm, with Docker's flags
//! and output. Without `--detach`, create, update and scale follow the tasks until the
//! service has converged (or say which task can't be placed, and why).

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, ServiceView, TaskView};
use shoal_proto::services::{
    format_cpus, format_duration_ms, format_memory, parse_cpus, parse_duration_ms, parse_memory,
};
use shoal_proto::{
    BoundedString, BoundedVec, Constraint, ControlReply, ControlRequest, EndpointMode, PortConfig, PublishMode,
    RestartCondition, ServiceMode, ServiceSpec, TaskState,
};

use super::client::Client;
use super::output::{table, utc};

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
        /// Output format (Docker's default is JSON).
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Json)]
        format: Format,
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

/// Output formats of `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Pretty,
    /// Docker-shaped JSON.
    Json,
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
    /// Go back to the previous spec.
    #[arg(long)]
    pub rollback: bool,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub detach: Option<bool>,
    /// Service name, ID or ID prefix.
    pub service: String,
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
        spec.validate()?;
        Ok(())
    }
}

/// Runs a `shoal service` subcommand.
pub async fn run(data_dir: &Path, cmd: ServiceCommand) -> anyhow::Result<()> {
    // Flags are checked before connecting: a typo should not wait for the network.
    let spec = match &cmd {
        ServiceCommand::Create(c) => Some(c.spec()?),
        _ => None,
    };
    let client = Client::connect(data_dir).await?;
    let result = dispatch(&client, cmd, spec).await;
    client.close().await;
    result
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

async fn dispatch(client: &Client, cmd: ServiceCommand, spec: Option<ServiceSpec>) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(c) => {
            let spec = spec.expect("checked before connecting");
            let id = match call(client, ServiceRequest::Create(Box::new(spec))).await? {
                ServiceReply::Created(id) => id,
                other => anyhow::bail!("unexpected answer from the manager: {other:?}"),
            };
            println!("{id}");
            if !c.detach.unwrap_or(false) {
                converge(client, id.as_str()).await?;
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
        ServiceCommand::Inspect { format, pretty: p, services } => {
            let mut views = Vec::new();
            for s in &services {
                views.push(inspect(client, s).await?);
            }
            if p || format == Format::Pretty {
                views.iter().for_each(|v| print!("{}", pretty(v)));
            } else {
                println!("{}", serde_json::to_string_pretty(&views.iter().map(json).collect::<Vec<_>>())?);
            }
        }
        ServiceCommand::Update(u) => {
            let view = inspect(client, &u.service).await?;
            if u.rollback {
                call(client, ServiceRequest::Rollback { service: text(view.service.id.as_str())? }).await?;
            } else {
                let mut spec = view.service.spec.clone();
                u.apply(&mut spec)?;
                let req = ServiceRequest::Update {
                    service: text(view.service.id.as_str())?,
                    spec: Box::new(spec),
                    version: view.service.spec_version,
                };
                call(client, req).await?;
            }
            println!("{}", u.service);
            if !u.detach.unwrap_or(false) {
                converge(client, view.service.id.as_str()).await?;
            }
        }
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
                    converge(client, id.as_str()).await?;
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

fn shoal_manager_now() -> u64 {
    crate::wall_ms()
}

/// Longest wait for a service to converge.
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

async fn converge(client: &Client, id: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last_line = String::new();
    let mut last_change = Instant::now();
    loop {
        let view = inspect(client, id).await?;
        let tasks = tasks(client, &[id.to_owned()]).await?;
        let p = progress(&view, &tasks);
        let line = format!("overall progress: {} out of {} tasks", p.running, p.desired);
        if line != last_line {
            println!("{line}");
            last_line = line;
            last_change = Instant::now();
        }
        if p.converged() {
            println!("verify: Service converged");
            return Ok(());
        }
        let name = &view.service.spec.name;
        if !p.unplaceable.is_empty() && last_change.elapsed() >= STUCK_AFTER {
            anyhow::bail!(
                "service {name} can't be fully placed:\n  {}\nthe manager keeps trying; see `shoal service ps {name}`",
                p.unplaceable.join("\n  ")
            );
        }
        if start.elapsed() >= CONVERGE_TIMEOUT {
            anyhow::bail!(
                "service {name} did not converge within {CONVERGE_TIMEOUT:?} ({} of {} tasks running); \
                 the manager keeps trying: see `shoal service ps {name}`",
                p.running,
                p.desired
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A published port as `service ls` and `ps` show it: `*:8000->8000/tcp`.
pub fn port_text(p: &PortConfig) -> String {
    let published = p.published.map_or_else(|| "*".to_owned(), |n| n.to_string());
    format!("*:{published}->{}/{}", p.target, p.protocol)
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
                format!("{}/{}", v.running, v.desired),
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
        let mut status = json!({
            "State": u.state.as_str(),
            "StartedAt": shoal_proto::time::rfc3339(u.started_at_ms),
            "Message": &*u.message,
        });
        if let Some(done) = u.completed_at_ms {
            status["CompletedAt"] = json!(shoal_proto::time::rfc3339(done));
        }
        out["UpdateStatus"] = status;
    }
    out
}

/// The human form of `service inspect`, after Docker's `--pretty`.
pub fn pretty(v: &ServiceView) -> String {
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
        out.push_str(&format!(
            "UpdateStatus:\n State:\t\t{}\n Started:\t{}\n Message:\t{}\n",
            u.state,
            utc(u.started_at_ms),
            u.message
        ));
    }
    out.push_str(&format!(
        "Placement:\n Constraints:\t[{}]\n",
        spec.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
    ));
    let u = &spec.update_config;
    out.push_str(&format!(
        "UpdateConfig:\n Parallelism:\t{}\n On failure:\t{}\n Monitoring Period: {}\n Max failure ratio: {}\n Update order:      {}\n",
        u.parallelism,
        u.failure_action,
        format_duration_ms(u.monitor_ms),
        f64::from(u.max_failure_ratio_permille) / 1000.0,
        u.order
    ));
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

    #[derive(Parser)]
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
        assert!(pretty(&view(3, 3)).contains("Replicas:\t3"));
    }
}
