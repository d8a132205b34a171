//! The flags of `service create` and `service update`, and how they make or change a spec.

use clap::{Args, ValueEnum};
use shoal_proto::services::{parse_cpus, parse_duration_ms, parse_memory};
use shoal_proto::services::{Seccomp, MAX_SECCOMP_PROFILE};
use shoal_proto::{
    BoundedString, BoundedVec, Constraint, EndpointMode, FailureAction, PortConfig, RestartCondition, ServiceMode,
    ServiceSpec, UpdateConfig, UpdateOrder,
};

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
    /// Security option: `seccomp=unconfined`, `seccomp=PROFILE.json` (Docker's format) or
    /// `no-new-privileges` (always on).
    #[arg(long = "security-opt", value_name = "OPTION", value_parser = SecurityOpt::parse)]
    pub security_opt: Vec<SecurityOpt>,
    #[command(flatten)]
    pub policy: UpdatePolicyArgs,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub objects: super::ObjectArgs,
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
    /// Attach to a network.
    #[arg(long = "network-add")]
    pub network_add: Vec<String>,
    /// Detach from a network.
    #[arg(long = "network-rm")]
    pub network_rm: Vec<String>,
    /// vip or dnsrr.
    #[arg(long = "endpoint-mode")]
    pub endpoint_mode: Option<EndpointMode>,
    /// Change a security option (same forms as `create --security-opt`; `seccomp=default`
    /// goes back to the default profile).
    #[arg(long = "security-opt", value_name = "OPTION", value_parser = SecurityOpt::parse)]
    pub security_opt: Vec<SecurityOpt>,
    #[command(flatten)]
    pub policy: UpdatePolicyArgs,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub container: ContainerArgs,
    #[command(flatten)]
    pub objects: super::ObjectUpdateArgs,
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
#[derive(Debug, Default, PartialEq, Eq, Args)]
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
pub(super) fn parse_ratio(s: &str) -> Result<u16, String> {
    let bad = || format!("invalid failure ratio {s:?}: expected a number between 0 and 1, e.g. 0.2");
    let ratio: f64 = s.trim().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(bad());
    }
    Ok((ratio * 1000.0).round() as u16)
}

/// A rollback's failure action: a rollback that fails can't itself be rolled back.
pub(super) fn parse_rollback_failure_action(s: &str) -> Result<FailureAction, String> {
    match s.parse::<FailureAction>().map_err(|e| e.to_string())? {
        FailureAction::Rollback => Err("a rollback can't itself be rolled back: use pause or continue".into()),
        action => Ok(action),
    }
}

pub(super) fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("invalid environment variable {s:?}: expected KEY=VALUE")),
    }
}

pub(super) fn parse_scale(s: &str) -> Result<(String, u32), String> {
    let bad = || format!("invalid scale {s:?}: expected SERVICE=REPLICAS, e.g. web=3");
    let (name, n) = s.split_once('=').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    Ok((name.to_owned(), n.trim().parse().map_err(|_| bad())?))
}

pub(super) fn text<const N: usize>(s: &str) -> anyhow::Result<shoal_proto::Text<N>> {
    shoal_proto::text(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

pub(crate) fn bounded<T, const N: usize>(items: Vec<T>, what: &str) -> anyhow::Result<BoundedVec<T, N>> {
    let n = items.len();
    items.try_into().map_err(|_| anyhow::anyhow!("too many {what}: {n}, at most {N}"))
}

pub(super) fn strings<const L: usize, const N: usize>(
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
        SecurityOpt::apply_all(&self.security_opt, &mut spec)?;
        self.policy.apply(&mut spec);
        self.stop.apply(&mut spec)?;
        self.container.apply(&mut spec)?;
        self.objects.apply(&mut spec)?;
        spec.validate()?;
        Ok(spec)
    }
}

impl UpdateArgs {
    /// Refuses `--rollback` with flags that change the spec: the rollback restores a whole
    /// previous spec, so the changes would be dropped without a word.
    pub fn check(&self) -> anyhow::Result<()> {
        let changes = self.replicas.is_some()
            || self.image.is_some()
            || !self.env_add.is_empty()
            || !self.env_rm.is_empty()
            || !self.publish_add.is_empty()
            || !self.publish_rm.is_empty()
            || !self.constraint_add.is_empty()
            || !self.constraint_rm.is_empty()
            || !self.network_add.is_empty()
            || !self.network_rm.is_empty()
            || self.endpoint_mode.is_some()
            || !self.security_opt.is_empty()
            || self.objects.changes()
            || self.policy != UpdatePolicyArgs::default();
        if self.rollback && changes {
            anyhow::bail!("--rollback can't be combined with flags that change the service: run them separately");
        }
        Ok(())
    }

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

        let mut networks: Vec<String> = spec.networks.iter().map(|n| n.to_string()).collect();
        for rm in &self.network_rm {
            if !networks.contains(rm) {
                anyhow::bail!("--network-rm {rm}: the service is not on that network (see `shoal service inspect`)");
            }
            networks.retain(|n| n != rm);
        }
        for add in &self.network_add {
            if !networks.contains(add) {
                networks.push(add.clone());
            }
        }
        spec.networks = bounded(networks.iter().map(|n| text(n)).collect::<anyhow::Result<_>>()?, "networks")?;
        if let Some(m) = self.endpoint_mode {
            spec.endpoint_mode = m;
        }
        SecurityOpt::apply_all(&self.security_opt, spec)?;
        self.policy.apply(spec);
        self.stop.apply(spec)?;
        self.container.apply(spec)?;
        self.objects.apply(spec)?;
        spec.validate()?;
        Ok(())
    }
}

/// One `--security-opt`, in Docker's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `seccomp=unconfined`, `seccomp=default` or `seccomp=FILE`.
    Seccomp(SeccompOpt),
    /// `no-new-privileges[=true]`: what shoal always does.
    NoNewPrivileges,
}

/// The seccomp part of a `--security-opt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompOpt {
    /// No filter.
    Unconfined,
    /// The default profile.
    Default,
    /// A profile file in Docker's JSON format, read when the spec is made.
    File(std::path::PathBuf),
}

impl SecurityOpt {
    /// Parses one option as `docker run --security-opt` takes it (`=` or the older `:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s.split_once(['=', ':']).map_or((s, None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("seccomp", Some("unconfined")) => Ok(Self::Seccomp(SeccompOpt::Unconfined)),
            ("seccomp", Some("default" | "builtin")) => Ok(Self::Seccomp(SeccompOpt::Default)),
            ("seccomp", Some(path)) if !path.is_empty() => Ok(Self::Seccomp(SeccompOpt::File(path.into()))),
            ("no-new-privileges", None | Some("true")) => Ok(Self::NoNewPrivileges),
            ("no-new-privileges", Some(_)) => Err("shoal always sets no-new-privileges; it can't be turned off".into()),
            ("apparmor" | "label" | "systempaths" | "mask" | "unmask", _) => {
                Err(format!("--security-opt {key} is not supported by shoal: use seccomp=… or no-new-privileges"))
            }
            _ => Err(format!(
                "invalid --security-opt {s:?}: expected seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges"
            )),
        }
    }

    /// Sets what `opts` say on `spec`; a profile file is read, checked and compacted here.
    fn apply_all(opts: &[SecurityOpt], spec: &mut ServiceSpec) -> anyhow::Result<()> {
        for opt in opts {
            if let SecurityOpt::Seccomp(s) = opt {
                spec.seccomp = match s {
                    SeccompOpt::Unconfined => Seccomp::Unconfined,
                    SeccompOpt::Default => Seccomp::Default,
                    SeccompOpt::File(path) => Seccomp::Profile(read_seccomp_profile(path)?),
                };
            }
        }
        Ok(())
    }
}

/// Reads a seccomp profile in Docker's format: JSON with a `defaultAction`, compacted
/// to at most [`MAX_SECCOMP_PROFILE`] bytes. Each board checks it fully again.
fn read_seccomp_profile(path: &std::path::Path) -> anyhow::Result<BoundedString<MAX_SECCOMP_PROFILE>> {
    use std::io::Read;
    let what = || format!("seccomp profile {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    // A profile much larger than the limit is refused without reading it all.
    const READ_LIMIT: u64 = 1 << 20;
    let mut text = String::new();
    file.take(READ_LIMIT + 1).read_to_string(&mut text).map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    if text.len() as u64 > READ_LIMIT {
        anyhow::bail!("{} is over 1 MiB; a service's profile may have at most {MAX_SECCOMP_PROFILE} bytes", what());
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", what()))?;
    if !value.get("defaultAction").is_some_and(serde_json::Value::is_string) {
        anyhow::bail!("{}: no \"defaultAction\" (is it a seccomp profile in Docker's format?)", what());
    }
    let compact = value.to_string();
    BoundedString::try_from(compact.as_str()).map_err(|_| {
        anyhow::anyhow!(
            "{} is {} bytes without spaces; a service's profile may have at most {MAX_SECCOMP_PROFILE}",
            what(),
            compact.len()
        )
    })
}

/// `--stop-signal`, on create and update.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct StopArgs {
    /// Signal that asks the containers to stop, e.g. SIGINT [default: the image's
    /// StopSignal, else SIGTERM].
    #[arg(long = "stop-signal", value_parser = parse_stop_signal_arg)]
    pub stop_signal: Option<String>,
}

impl StopArgs {
    /// Sets the spec's stop signal when given.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if let Some(s) = &self.stop_signal {
            spec.stop_signal = Some(text(s)?);
        }
        Ok(())
    }
}

/// `--hostname`, on create and update.
#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct ContainerArgs {
    /// Container hostname; Swarm's placeholders allowed, e.g. `{{.Service.Name}}-{{.Task.Slot}}`
    /// [default: the task ID's first 12 characters].
    #[arg(long, value_parser = parse_hostname_arg)]
    pub hostname: Option<String>,
}

impl ContainerArgs {
    /// Sets the spec's hostname when given (`--hostname ""` goes back to the default).
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if let Some(h) = &self.hostname {
            spec.hostname = if h.is_empty() { None } else { Some(text(h)?) };
        }
        Ok(())
    }
}

/// Checks a `--hostname` value: its placeholders, and its length when it has none.
fn parse_hostname_arg(s: &str) -> Result<String, String> {
    shoal_proto::template::check(s).map_err(|e| e.to_string())?;
    if !shoal_proto::template::is_template(s) && s.len() > 63 {
        return Err(format!("hostname {s:?} is {} bytes: a hostname has at most 63", s.len()));
    }
    Ok(s.to_owned())
}

/// Checks a `--stop-signal` value, keeping it as typed (Docker shows it so).
fn parse_stop_signal_arg(s: &str) -> Result<String, String> {
    shoal_proto::services::parse_stop_signal(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}
