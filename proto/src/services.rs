//! Services and tasks: what the operator asks for (`ServiceSpec`), the units of work the
//! manager derives from it (`Task`), and the forward-only task state machine, plus the
//! parsers for the command-line forms (`--publish`, `--constraint`, `--limit-memory`, ...).
//!
//! This module is data and pure helpers only. It does not decide anything: the manager's
//! orchestrator and scheduler (`shoal-manager`, `core/`) do, and the agent runs what it
//! is given. The update and rollback settings are carried, not acted on, here.
//!
//! Three kinds of state are kept apart, as in swarmkit's task model: the spec (only the
//! operator writes it), a task's desired state (only the manager writes it) and its
//! observed status (only the agent reports it, and it only moves forward).

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{BadId, ID_LEN};
use crate::images::{ImageRef, Platform, MAX_PLATFORMS};
use crate::{BoundedString, BoundedVec, LabelKey, Message, NodeId, Text};

/// Most command arguments after the image.
pub const MAX_ARGS: usize = 64;
/// Most environment variables of one service.
pub const MAX_ENV: usize = 64;
/// Most placement constraints of one service.
pub const MAX_CONSTRAINTS: usize = 16;
/// Most published ports of one service.
pub const MAX_PORTS: usize = 32;
/// Most networks one service attaches to.
pub const MAX_NETWORKS: usize = 8;
/// Most replicas of one replicated service: far above any fleet of boards, low enough that
/// a typo (`--replicas 1000000000`) is refused instead of filling the store.
pub const MAX_REPLICAS: u32 = 100_000;
/// Smallest memory limit: Docker's 6 MiB. Below it a container cannot even start, so the
/// task would be rejected again and again instead of the spec being refused once.
pub const MIN_MEMORY_LIMIT: u64 = 6 << 20;
/// Largest memory limit or reservation (1 TiB): more than any board, and far enough from
/// `u64::MAX` that sums of reservations cannot overflow.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Smallest CPU limit or reservation, in thousandths of a CPU (Docker's 0.01 CPU).
pub const MIN_CPU_MILLIS: u32 = 10;
/// Largest CPU limit or reservation, in thousandths of a CPU (256 CPUs).
pub const MAX_CPU_MILLIS: u32 = 256_000;
/// Longest stop grace period (1 h): a removed or updated task is killed by then.
pub const MAX_STOP_GRACE_MS: u64 = 3_600_000;
/// Longest restart delay, restart window, update or rollback delay and monitor period
/// (24 h). A day is longer than any rollout means; a bound keeps timer arithmetic far
/// from overflow.
pub const MAX_POLICY_MS: u64 = 86_400_000;

/// A service name: a DNS label, since other services reach it by that name.
pub type ServiceName = Text<63>;
/// One command-line argument.
pub type Arg = BoundedString<1024>;
/// One `KEY=VALUE` environment variable.
pub type EnvVar = BoundedString<1024>;
/// A network name.
pub type NetworkName = Text<64>;
/// A constraint's value.
pub type ConstraintValue = Text<256>;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "heapless::String<ID_LEN>", into = "heapless::String<ID_LEN>")]
        pub struct $name(NodeId);

        impl $name {
            /// Derives an ID from 16 random bytes (the caller brings the randomness, so
            /// the core stays deterministic in tests).
            pub fn from_random(bytes: [u8; 16]) -> Self {
                Self(NodeId::from_random(bytes))
            }

            /// The ID as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The first 12 characters, as `docker ... ls` abbreviates.
            pub fn short(&self) -> &str {
                self.0.short()
            }
        }

        impl TryFrom<heapless::String<ID_LEN>> for $name {
            type Error = BadId;
            fn try_from(s: heapless::String<ID_LEN>) -> Result<Self, BadId> {
                s.as_str().parse()
            }
        }

        impl From<$name> for heapless::String<ID_LEN> {
            fn from(id: $name) -> Self {
                id.0.into()
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                s.parse().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

define_id!(
    /// A service's identity: 25 base-36 characters, like a node's.
    ServiceId
);
define_id!(
    /// A task's identity: 25 base-36 characters, like a node's.
    TaskId
);
define_id!(
    /// A network's identity: 25 base-36 characters, like a node's.
    NetworkId
);

/// A command-line form or spec that cannot be used, with what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `--publish`.
    #[error("invalid port {input:?}: {reason}")]
    Publish {
        /// What was typed.
        input: String,
        /// What is wrong and what to type.
        reason: String,
    },
    /// `--constraint`.
    #[error("invalid constraint {input:?}: {reason}")]
    Constraint {
        /// What was typed.
        input: String,
        /// What is wrong and what to type.
        reason: String,
    },
    /// `--limit-memory`, `--reserve-memory`.
    #[error(
        "invalid memory size {0:?}: expected a number and an optional unit (b, k, m, g, t), e.g. 64M, 1G or 512MiB"
    )]
    Memory(String),
    /// `--limit-cpu`, `--reserve-cpu`.
    #[error("invalid CPU count {0:?}: expected a decimal number of CPUs with at most 3 decimals, e.g. 0.5 or 2")]
    Cpus(String),
    /// `--restart-delay`, `--stop-grace-period`, ...
    #[error("invalid duration {0:?}: expected numbers with units (ms, s, m, h), e.g. 500ms, 5s or 1m30s")]
    Duration(String),
    /// One of a fixed set of words.
    #[error("invalid {what} {input:?}: expected {expected}")]
    Choice {
        /// Which option.
        what: &'static str,
        /// What was typed.
        input: String,
        /// The words accepted.
        expected: &'static str,
    },
    /// A spec that is well-formed but unusable.
    #[error("invalid service spec: {0}")]
    Invalid(String),
}

/// What the operator asks for: `shoal service create` and `service update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Name, also its DNS name on its networks.
    pub name: ServiceName,
    /// Image reference, e.g. `redis:latest`.
    pub image: ImageRef,
    /// Platforms the image offers (`linux/arm64`), filled in from the image store when
    /// known; empty means "any", and the scheduler does not filter by architecture.
    pub platforms: BoundedVec<Platform, MAX_PLATFORMS>,
    /// Command and arguments after the image; empty means the image's own.
    pub args: BoundedVec<Arg, MAX_ARGS>,
    /// `KEY=VALUE` environment variables.
    pub env: BoundedVec<EnvVar, MAX_ENV>,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// Placement constraints; all must hold.
    pub constraints: BoundedVec<Constraint, MAX_CONSTRAINTS>,
    /// Limits and reservations.
    pub resources: ResourceRequirements,
    /// What to do when a task ends.
    pub restart_policy: RestartPolicy,
    /// Time between SIGTERM and SIGKILL when a task is stopped, in milliseconds.
    pub stop_grace_period_ms: u64,
    /// How other services reach this one.
    pub endpoint_mode: EndpointMode,
    /// Published ports.
    pub ports: BoundedVec<PortConfig, MAX_PORTS>,
    /// Networks to attach to, by name.
    pub networks: BoundedVec<NetworkName, MAX_NETWORKS>,
    /// How to roll out a new spec (carried; acted on by the updater).
    pub update_config: UpdateConfig,
    /// How to roll back a failed update (carried; acted on by the updater).
    pub rollback_config: UpdateConfig,
    /// System-call filter of its containers.
    pub seccomp: Seccomp,
    /// The signal that asks its containers to stop (`--stop-signal`); `None`: the
    /// image's `StopSignal`, else SIGTERM.
    pub stop_signal: Option<Text<16>>,
    /// The containers' hostname (`--hostname`), Swarm's placeholders allowed (see
    /// [`crate::template`]); `None`: the task ID's first 12 characters. (Defaulted: a
    /// spec saved before it still loads from JSON.)
    #[serde(default)]
    pub hostname: Option<Text<MAX_HOSTNAME_TEMPLATE>>,
    /// Secrets its containers get under `/run/secrets` (`--secret`).
    #[serde(default)]
    pub secrets: BoundedVec<crate::secrets::SecretRef, { crate::secrets::MAX_REFS }>,
    /// Configs its containers get as files (`--config`).
    #[serde(default)]
    pub configs: BoundedVec<crate::secrets::SecretRef, { crate::secrets::MAX_REFS }>,
    /// The service's labels (Docker's `Spec.Labels`; stacks set
    /// `com.docker.stack.namespace`).
    #[serde(default)]
    pub labels: BoundedVec<crate::Label, { crate::MAX_LABELS }>,
}

/// Longest `--hostname` template; expanded, a hostname has at most 63 bytes.
pub const MAX_HOSTNAME_TEMPLATE: usize = 128;

/// The signals a stop may send: those a container's init forwards to its command.
/// Linux numbering on x86 and ARM, the architectures boards run.
pub const STOP_SIGNALS: [(&str, i32); 7] =
    [("SIGHUP", 1), ("SIGINT", 2), ("SIGQUIT", 3), ("SIGUSR1", 10), ("SIGUSR2", 12), ("SIGTERM", 15), ("SIGWINCH", 28)];

/// Reads a stop signal as Docker takes it: `SIGINT`, `INT` or `2`, in any case.
pub fn parse_stop_signal(s: &str) -> Result<i32, SpecError> {
    let upper = s.trim().to_ascii_uppercase();
    let found = STOP_SIGNALS.iter().find(|(name, n)| {
        *name == upper || name.strip_prefix("SIG") == Some(upper.as_str()) || upper.parse::<i32>().ok() == Some(*n)
    });
    found.map(|(_, n)| *n).ok_or_else(|| SpecError::Choice {
        what: "stop signal",
        input: s.to_owned(),
        expected: "SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM or SIGWINCH (by name or number)",
    })
}

impl ServiceSpec {
    /// A spec with Docker's defaults: one replica, restart on any exit after 5 s,
    /// 10 s stop grace period, VIP endpoint, no ports, no constraints.
    pub fn new(name: ServiceName, image: ImageRef) -> Self {
        Self {
            name,
            image,
            platforms: BoundedVec::new(),
            args: BoundedVec::new(),
            env: BoundedVec::new(),
            mode: ServiceMode::default(),
            constraints: BoundedVec::new(),
            resources: ResourceRequirements::default(),
            restart_policy: RestartPolicy::default(),
            stop_grace_period_ms: DEFAULT_STOP_GRACE_MS,
            endpoint_mode: EndpointMode::default(),
            ports: BoundedVec::new(),
            networks: BoundedVec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            seccomp: Seccomp::Default,
            stop_signal: None,
            hostname: None,
            secrets: BoundedVec::new(),
            configs: BoundedVec::new(),
            labels: BoundedVec::new(),
        }
    }

    /// Checks what the types cannot: a DNS-label name, a sane replica count, limits not
    /// below reservations, no published port listed twice, DNSRR without ingress ports.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name = self.name.as_str();
        // `_` as Docker allows it: a stack's services are `<stack>_<name>`.
        let dns_label = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && !name.ends_with('-');
        if !dns_label {
            return Err(SpecError::Invalid(format!(
                "service name {name:?} must be a DNS label: letters, digits and inner dashes (and `_`, as a \
                 stack's `<stack>_<name>`)"
            )));
        }
        if self.image.is_empty() {
            return Err(SpecError::Invalid("an image is required".into()));
        }
        if let ServiceMode::Replicated { replicas } = self.mode {
            if replicas > MAX_REPLICAS {
                return Err(SpecError::Invalid(format!(
                    "{replicas} replicas is more than the limit of {MAX_REPLICAS}"
                )));
            }
        }
        let r = &self.resources;
        if r.limit_memory != 0 && r.limit_memory < MIN_MEMORY_LIMIT {
            return Err(SpecError::Invalid(format!(
                "the minimum allowed memory limit is {}: use --limit-memory 6M or more",
                format_memory(MIN_MEMORY_LIMIT)
            )));
        }
        for (flag, bytes) in [("--limit-memory", r.limit_memory), ("--reserve-memory", r.reserve_memory)] {
            if bytes > MAX_MEMORY {
                return Err(SpecError::Invalid(format!(
                    "{flag} {} is above the maximum of {}",
                    format_memory(bytes),
                    format_memory(MAX_MEMORY)
                )));
            }
        }
        for (flag, millis) in [("--limit-cpu", r.limit_cpu_millis), ("--reserve-cpu", r.reserve_cpu_millis)] {
            if millis != 0 && !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&millis) {
                return Err(SpecError::Invalid(format!(
                    "{flag} {} is out of range: use {} to {} CPUs",
                    format_cpus(millis),
                    format_cpus(MIN_CPU_MILLIS),
                    format_cpus(MAX_CPU_MILLIS)
                )));
            }
        }
        if let Some(signal) = &self.stop_signal {
            parse_stop_signal(signal)?;
        }
        if let Some(hostname) = &self.hostname {
            crate::template::check(hostname).map_err(|e| SpecError::Invalid(format!("--hostname: {e}")))?;
        }
        for env in &self.env {
            crate::template::check(env).map_err(|e| SpecError::Invalid(format!("--env: {e}")))?;
        }
        let durations = [
            ("--stop-grace-period", self.stop_grace_period_ms, MAX_STOP_GRACE_MS),
            ("--restart-delay", self.restart_policy.delay_ms, MAX_POLICY_MS),
            ("the restart window", self.restart_policy.window_ms, MAX_POLICY_MS),
            ("--update-delay", self.update_config.delay_ms, MAX_POLICY_MS),
            ("--update-monitor", self.update_config.monitor_ms, MAX_POLICY_MS),
            ("--rollback-delay", self.rollback_config.delay_ms, MAX_POLICY_MS),
            ("--rollback-monitor", self.rollback_config.monitor_ms, MAX_POLICY_MS),
        ];
        for (flag, ms, max) in durations {
            if ms > max {
                return Err(SpecError::Invalid(format!(
                    "{flag} {} is longer than the maximum of {}",
                    format_duration_ms(ms),
                    format_duration_ms(max)
                )));
            }
        }
        if r.limit_memory != 0 && r.reserve_memory > r.limit_memory {
            return Err(SpecError::Invalid("the memory reservation is above the memory limit".into()));
        }
        if r.limit_cpu_millis != 0 && r.reserve_cpu_millis > r.limit_cpu_millis {
            return Err(SpecError::Invalid("the CPU reservation is above the CPU limit".into()));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.target == 0 {
                return Err(SpecError::Invalid("a published port needs a target port (1-65535)".into()));
            }
            let dup = self.ports[..i]
                .iter()
                .any(|q| p.published.is_some() && q.published == p.published && q.protocol == p.protocol);
            if dup {
                return Err(SpecError::Invalid(format!("port {} is published twice", p.published_text())));
            }
            if self.endpoint_mode == EndpointMode::Dnsrr && p.mode == PublishMode::Ingress {
                return Err(SpecError::Invalid(
                    "endpoint mode dnsrr cannot publish ingress ports: use --publish mode=host,...".into(),
                ));
            }
        }
        self.validate_secret_refs()?;
        if self.rollback_config.failure_action == FailureAction::Rollback {
            return Err(SpecError::Invalid(
                "a rollback can't itself be rolled back: --rollback-failure-action is pause or continue".into(),
            ));
        }
        for (flag, c) in [("update", &self.update_config), ("rollback", &self.rollback_config)] {
            if c.max_failure_ratio_permille > 1000 {
                return Err(SpecError::Invalid(format!("--{flag}-max-failure-ratio is between 0 and 1")));
            }
        }
        Ok(())
    }

    /// The part of the spec a task carries: what the agent needs to run it and what the
    /// scheduler needs to place it.
    pub fn task_spec(&self) -> TaskSpec {
        TaskSpec {
            image: self.image.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            resources: self.resources,
            ports: self.ports.clone(),
            networks: self.networks.clone(),
            stop_grace_period_ms: self.stop_grace_period_ms,
            placement: Placement { constraints: self.constraints.clone(), platforms: self.platforms.clone() },
            seccomp: self.seccomp.clone(),
            stop_signal: self.stop_signal.clone(),
            hostname: self.hostname.clone(),
            secrets: self.secrets.clone(),
            configs: self.configs.clone(),
        }
    }

    /// Each reference well-formed, no two secrets at the same file, no two configs at
    /// the same path.
    fn validate_secret_refs(&self) -> Result<(), SpecError> {
        use crate::secrets::Kind;
        for (kind, refs) in [(Kind::Secret, &self.secrets), (Kind::Config, &self.configs)] {
            for (i, r) in refs.iter().enumerate() {
                r.validate(kind)?;
                if refs[..i].iter().any(|q| q.target == r.target) {
                    return Err(SpecError::Invalid(format!(
                        "two {kind}s have the target {}: give each its own target=",
                        r.target
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Largest custom seccomp profile a service carries: Docker's JSON, compacted.
pub const MAX_SECCOMP_PROFILE: usize = 16 * 1024;

/// How the system calls of a service's containers are filtered
/// (`--security-opt seccomp=…`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Seccomp {
    /// shoal's default profile: Docker's default policy.
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (`seccomp=PROFILE.json`), checked by the CLI
    /// and again by each board before a container starts.
    Profile(BoundedString<MAX_SECCOMP_PROFILE>),
}

impl Seccomp {
    /// Docker's name of the mode, as `service inspect` shows it.
    pub fn mode(&self) -> &'static str {
        match self {
            Seccomp::Default => "default",
            Seccomp::Unconfined => "unconfined",
            Seccomp::Profile(_) => "custom",
        }
    }
}

/// Docker's stop grace period: 10 s.
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// A service as the manager stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// ID.
    pub id: ServiceId,
    /// The current spec.
    pub spec: ServiceSpec,
    /// Increases by one with each spec change; tasks record the version they were made from.
    pub spec_version: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Its virtual IPs, one per network it is on (endpoint mode `vip`; none for
    /// `dnsrr`), allocated by the manager.
    pub virtual_ips: BoundedVec<crate::networks::VirtualIp, MAX_NETWORKS>,
}

/// Replicated (n tasks anywhere) or global (one task per eligible node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMode {
    /// `--replicas N`.
    Replicated {
        /// Number of tasks wanted.
        replicas: u32,
    },
    /// `--mode global`.
    Global,
}

impl Default for ServiceMode {
    fn default() -> Self {
        Self::Replicated { replicas: 1 }
    }
}

/// Limits (enforced by the agent's cgroups) and reservations (used by the scheduler).
/// Zero means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// Memory limit in bytes.
    pub limit_memory: u64,
    /// CPU limit in thousandths of a CPU.
    pub limit_cpu_millis: u32,
    /// Memory the node must have free, in bytes.
    pub reserve_memory: u64,
    /// CPU the node must have free, in thousandths of a CPU.
    pub reserve_cpu_millis: u32,
}

/// When a task that ended is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Which endings lead to a restart.
    pub condition: RestartCondition,
    /// Wait between the end of a task and its replacement, in milliseconds.
    pub delay_ms: u64,
    /// Most restarts of one slot within `window_ms`; `None` is unlimited.
    pub max_attempts: Option<u32>,
    /// Window over which restarts are counted, in milliseconds; 0 is "forever".
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self { condition: RestartCondition::Any, delay_ms: 5_000, max_attempts: None, window_ms: 0 }
    }
}

/// `--restart-condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RestartCondition {
    /// Restart whatever the exit.
    #[default]
    Any,
    /// Restart only after a non-zero exit or a failure to start.
    OnFailure,
    /// Never restart.
    None,
}

/// How other services find this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EndpointMode {
    /// One virtual IP balancing over the tasks.
    #[default]
    Vip,
    /// DNS round robin over the tasks' addresses.
    Dnsrr,
}

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortConfig {
    /// Port inside the container.
    pub target: u16,
    /// Port on the node(s); `None` lets the manager (ingress) or the node (host) choose.
    pub published: Option<u16>,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Through the routing mesh on every node, or only on the task's node.
    pub mode: PublishMode,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// Where a port is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum PublishMode {
    /// On every node, forwarded to some task (the routing mesh).
    #[default]
    Ingress,
    /// Only on the node running the task, straight to it: two such tasks can't share a node.
    Host,
}

/// `--update-*` / `--rollback-*`: how to replace tasks when the spec changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0: all at once).
    pub parallelism: u32,
    /// Wait between batches, in milliseconds.
    pub delay_ms: u64,
    /// What to do when a replaced task fails.
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure, in milliseconds.
    pub monitor_ms: u64,
    /// Failures tolerated before `failure_action`, in thousandths of the tasks.
    pub max_failure_ratio_permille: u16,
    /// Whether the old task stops before or after the new one starts.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio_permille: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum FailureAction {
    /// Stop the rollout and wait for the operator.
    #[default]
    Pause,
    /// Carry on.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one.
    #[default]
    StopFirst,
    /// Start the new task, then stop the old one.
    StartFirst,
}

/// A placement constraint: `node.labels.zone==eu`, `node.hostname!=pi3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraint {
    /// What of the node is compared.
    pub key: ConstraintKey,
    /// `==` or `!=`.
    pub op: ConstraintOp,
    /// Compared without regard to ASCII case, as Swarm does.
    pub value: ConstraintValue,
}

/// The node attribute a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintKey {
    /// `node.id`.
    NodeId,
    /// `node.hostname`.
    Hostname,
    /// `node.role` (`manager` or `worker`).
    Role,
    /// `node.arch` or `node.platform.arch`.
    Arch,
    /// `node.platform.os`.
    Os,
    /// `node.labels.KEY`: the operator's labels, then the node's own.
    NodeLabel(LabelKey),
    /// `engine.labels.KEY`: only the labels the node was started with.
    EngineLabel(LabelKey),
}

/// Comparison of a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintOp {
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
}

impl Constraint {
    /// Parses `ATTRIBUTE==VALUE` or `ATTRIBUTE!=VALUE`.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::Constraint { input: s.to_owned(), reason: reason.to_owned() };
        let (lhs, op, rhs) = if let Some((l, r)) = s.split_once("==") {
            (l, ConstraintOp::Eq, r)
        } else if let Some((l, r)) = s.split_once("!=") {
            (l, ConstraintOp::Ne, r)
        } else {
            return Err(bad("expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, e.g. node.labels.zone==eu"));
        };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        if rhs.is_empty() || rhs.contains("==") || rhs.contains("!=") {
            return Err(bad("expected one value after the operator"));
        }
        let label = |k: &str| -> Result<LabelKey, SpecError> {
            if k.is_empty() {
                return Err(bad("the label key is empty, e.g. node.labels.zone==eu"));
            }
            crate::text(k).map_err(|e| bad(&format!("label key: {e}")))
        };
        let key = match lhs {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::Hostname,
            "node.role" => ConstraintKey::Role,
            "node.arch" | "node.platform.arch" => ConstraintKey::Arch,
            "node.platform.os" => ConstraintKey::Os,
            _ => {
                if let Some(k) = lhs.strip_prefix("node.labels.") {
                    ConstraintKey::NodeLabel(label(k)?)
                } else if let Some(k) = lhs.strip_prefix("engine.labels.") {
                    ConstraintKey::EngineLabel(label(k)?)
                } else {
                    return Err(bad("unknown attribute: expected node.id, node.hostname, node.role, node.arch, \
                         node.platform.os, node.labels.KEY or engine.labels.KEY"));
                }
            }
        };
        let value = crate::text(rhs).map_err(|e| bad(&format!("value: {e}")))?;
        Ok(Self { key, op, value })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.key {
            ConstraintKey::NodeId => f.write_str("node.id")?,
            ConstraintKey::Hostname => f.write_str("node.hostname")?,
            ConstraintKey::Role => f.write_str("node.role")?,
            ConstraintKey::Arch => f.write_str("node.platform.arch")?,
            ConstraintKey::Os => f.write_str("node.platform.os")?,
            ConstraintKey::NodeLabel(k) => write!(f, "node.labels.{k}")?,
            ConstraintKey::EngineLabel(k) => write!(f, "engine.labels.{k}")?,
        }
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{op}{}", self.value)
    }
}

impl FromStr for Constraint {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse(s)
    }
}

impl PortConfig {
    /// Parses `--publish` in its short form (`8000:80`, `8000:80/udp`, `80`) or its long
    /// form (`mode=host,target=6379`, `published=8000,target=8000,protocol=udp`).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::Publish { input: s.to_owned(), reason };
        let port = |what: &str, v: &str| -> Result<u16, SpecError> {
            if v.contains('-') {
                return Err(bad("port ranges are not supported: publish each port".into()));
            }
            match v.trim().parse::<u16>() {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(bad(format!("{what} port {v:?} is not a number from 1 to 65535"))),
            }
        };
        let protocol =
            |v: &str| -> Result<Protocol, SpecError> { v.parse().map_err(|e: SpecError| bad(e.to_string())) };
        if s.contains('=') {
            let mut out = Self { target: 0, published: None, protocol: Protocol::Tcp, mode: PublishMode::Ingress };
            for field in s.split(',') {
                let Some((k, v)) = field.split_once('=') else {
                    return Err(bad(format!("{field:?} is not KEY=VALUE")));
                };
                match k.trim() {
                    "target" => out.target = port("target", v)?,
                    "published" => out.published = Some(port("published", v)?),
                    "protocol" => out.protocol = protocol(v)?,
                    "mode" => out.mode = v.parse().map_err(|e: SpecError| bad(e.to_string()))?,
                    other => {
                        return Err(bad(format!(
                            "unknown field {other:?}: expected mode, target, published or protocol"
                        )))
                    }
                }
            }
            if out.target == 0 {
                return Err(bad("a target port is required, e.g. target=80".into()));
            }
            return Ok(out);
        }
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, protocol(proto)?),
            None => (s, Protocol::Tcp),
        };
        let (published, target) = match ports.split_once(':') {
            Some((p, t)) if p.contains(':') || t.contains(':') => {
                return Err(bad("binding to an address is not supported: use PUBLISHED:TARGET".into()))
            }
            Some((p, t)) => (Some(port("published", p)?), port("target", t)?),
            None => (None, port("target", ports)?),
        };
        Ok(Self { target, published, protocol: proto, mode: PublishMode::Ingress })
    }

    /// The published port for people: the number, or `*` when not chosen yet.
    pub fn published_text(&self) -> String {
        match self.published {
            Some(p) => format!("{p}/{}", self.protocol),
            None => format!("*/{}", self.protocol),
        }
    }

    /// Docker's column form: `*:8000->8000/tcp` (the routing mesh listens on every node),
    /// `8000->6379/tcp (host)` for host mode.
    pub fn summary(&self) -> String {
        let published = self.published.map_or_else(|| "*".to_owned(), |p| p.to_string());
        match self.mode {
            PublishMode::Ingress => format!("*:{published}->{}/{}", self.target, self.protocol),
            PublishMode::Host => format!("{published}->{}/{} (host)", self.target, self.protocol),
        }
    }
}

/// The long form, which [`PortConfig::parse`] reads back.
impl fmt::Display for PortConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "mode={},target={}", self.mode, self.target)?;
        if let Some(p) = self.published {
            write!(f, ",published={p}")?;
        }
        write!(f, ",protocol={}", self.protocol)
    }
}

impl FromStr for PortConfig {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse(s)
    }
}

/// Implements `FromStr` (case-insensitive) and `Display` for a fixed set of words.
macro_rules! words {
    ($ty:ident, $what:literal, $expected:literal, { $($word:literal => $variant:ident),+ $(,)? }) => {
        impl FromStr for $ty {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, SpecError> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(SpecError::Choice { what: $what, input: s.to_owned(), expected: $expected }),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $word,)+ })
            }
        }
    };
}

words!(RestartCondition, "restart condition", "any, on-failure or none",
    { "any" => Any, "on-failure" => OnFailure, "none" => None });
words!(EndpointMode, "endpoint mode", "vip or dnsrr", { "vip" => Vip, "dnsrr" => Dnsrr });
words!(Protocol, "protocol", "tcp or udp", { "tcp" => Tcp, "udp" => Udp });
words!(PublishMode, "publish mode", "ingress or host", { "ingress" => Ingress, "host" => Host });
words!(FailureAction, "failure action", "pause, continue or rollback",
    { "pause" => Pause, "continue" => Continue, "rollback" => Rollback });
words!(UpdateOrder, "update order", "stop-first or start-first",
    { "stop-first" => StopFirst, "start-first" => StartFirst });

/// Splits `12.5GiB` into the number and the unit.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Multiplies a decimal text by `scale`, exactly, refusing more decimals than `max_decimals`.
fn scaled_decimal(num: &str, scale: u64, max_decimals: usize) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > max_decimals || frac.contains('.') {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_value: u64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    let frac_scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
    int.checked_mul(scale)?.checked_add(frac_value.checked_mul(scale)? / frac_scale)
}

/// Parses a memory size as Docker does: binary units, case-insensitive, optional `b`/`ib`
/// suffix: `64M`, `1G`, `512MiB`, `1.5g`, `100` (bytes).
pub fn parse_memory(s: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Memory(s.to_owned());
    let (num, unit) = split_number(s.trim());
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    scaled_decimal(num, scale, 6).ok_or_else(bad)
}

/// Renders a byte count with the largest binary unit that keeps it readable: `64MiB`.
pub fn format_memory(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale {
            // Tenths from the remainder, which is below `scale`: no overflow near u64::MAX.
            let (whole, tenth) = (bytes / scale, (bytes % scale) * 10 / scale);
            return if tenth == 0 { format!("{whole}{unit}") } else { format!("{whole}.{tenth}{unit}") };
        }
    }
    format!("{bytes}B")
}

/// Parses a CPU count (`0.5`, `2`) into thousandths of a CPU.
pub fn parse_cpus(s: &str) -> Result<u32, SpecError> {
    let bad = || SpecError::Cpus(s.to_owned());
    let (num, rest) = split_number(s.trim());
    if !rest.is_empty() {
        return Err(bad());
    }
    scaled_decimal(num, 1000, 3).and_then(|m| u32::try_from(m).ok()).ok_or_else(bad)
}

/// Renders thousandths of a CPU as a decimal count: `500` → `0.5`.
pub fn format_cpus(millis: u32) -> String {
    let (int, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Parses a duration as Go does (`500ms`, `5s`, `1m30s`, `2h`) into milliseconds. A bare
/// `0` is allowed; other numbers need a unit.
pub fn parse_duration_ms(s: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Duration(s.to_owned());
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let part = scaled_decimal(num, scale, 3).ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = next;
    }
    Ok(total)
}

/// Renders milliseconds as [`parse_duration_ms`] reads them: `90000` → `1m30s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let (h, m, s, rem) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (rem, "ms")] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// What a task carries of its service's spec: enough for the agent to run it and for the
/// scheduler to place it, frozen when the task is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Image reference.
    pub image: ImageRef,
    /// Command and arguments after the image.
    pub args: BoundedVec<Arg, MAX_ARGS>,
    /// `KEY=VALUE` environment variables.
    pub env: BoundedVec<EnvVar, MAX_ENV>,
    /// Limits and reservations.
    pub resources: ResourceRequirements,
    /// Ports to publish.
    pub ports: BoundedVec<PortConfig, MAX_PORTS>,
    /// Networks to attach to.
    pub networks: BoundedVec<NetworkName, MAX_NETWORKS>,
    /// Time between SIGTERM and SIGKILL, in milliseconds.
    pub stop_grace_period_ms: u64,
    /// Where it may run (used by the manager only).
    pub placement: Placement,
    /// System-call filter.
    pub seccomp: Seccomp,
    /// The stop signal asked for (see [`ServiceSpec::stop_signal`]). (Defaulted: an
    /// agent's `tasks.json` from before it still loads.)
    #[serde(default)]
    pub stop_signal: Option<Text<16>>,
    /// The hostname template (see [`ServiceSpec::hostname`]). (Defaulted likewise.)
    #[serde(default)]
    pub hostname: Option<Text<MAX_HOSTNAME_TEMPLATE>>,
    /// Secrets by name, target and version: never their bytes, which reach the board
    /// apart ([`crate::ManagerMessage::Secrets`]) and are never written to its disk.
    #[serde(default)]
    pub secrets: BoundedVec<crate::secrets::SecretRef, { crate::secrets::MAX_REFS }>,
    /// Configs likewise.
    #[serde(default)]
    pub configs: BoundedVec<crate::secrets::SecretRef, { crate::secrets::MAX_REFS }>,
}

/// Placement rules of a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Placement {
    /// All must hold on the node.
    pub constraints: BoundedVec<Constraint, MAX_CONSTRAINTS>,
    /// The image's platforms; empty is "any".
    pub platforms: BoundedVec<Platform, MAX_PLATFORMS>,
}

/// A task's lifecycle, ordered exactly as swarmkit's. The observed state only moves
/// forward (see [`apply_status`]); the desired state is `Running`, then `Shutdown` or
/// `Remove` when the manager wants the task gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Created, not yet considered for placement.
    New,
    /// Waiting for a node.
    Pending,
    /// Given to a node; the agent has not acknowledged it.
    Assigned,
    /// The agent took it.
    Accepted,
    /// The agent is fetching the image and preparing the container.
    Preparing,
    /// Desired state only, so far: created by a stop-first update and held back until the
    /// task it replaces has stopped. A held task is neither scheduled nor sent to a node.
    Ready,
    /// The container is starting.
    Starting,
    /// The container runs.
    Running,
    /// The container exited with status 0.
    Complete,
    /// The container was stopped on the manager's request.
    Shutdown,
    /// The container exited non-zero or could not be started.
    Failed,
    /// The agent refused the task (e.g. the image is missing for its platform).
    Rejected,
    /// Desired state only: the task is to be deleted.
    Remove,
    /// The task's node went away and nobody will report on it again.
    Orphaned,
}

impl TaskState {
    /// Whether the task has stopped for good (Complete and everything after it).
    pub fn is_terminal(self) -> bool {
        self > Self::Running
    }

    /// The `docker service ps` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "New",
            Self::Pending => "Pending",
            Self::Assigned => "Assigned",
            Self::Accepted => "Accepted",
            Self::Preparing => "Preparing",
            Self::Ready => "Ready",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Complete => "Complete",
            Self::Shutdown => "Shutdown",
            Self::Failed => "Failed",
            Self::Rejected => "Rejected",
            Self::Remove => "Remove",
            Self::Orphaned => "Orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent (or, before assignment, the manager) last observed of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The state.
    pub state: TaskState,
    /// When it was observed, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What is happening, for people (`starting`, `no suitable node (...)`).
    pub message: Message,
    /// Why it failed, if it did.
    pub err: Option<Message>,
    /// The container's exit status, once it exited.
    pub exit_code: Option<i32>,
    /// Ports as actually bound (published ports chosen by the node filled in).
    pub ports: BoundedVec<PortConfig, MAX_PORTS>,
}

impl TaskStatus {
    /// A status with a state and a message and nothing else.
    pub fn new(state: TaskState, timestamp_ms: u64, message: &str) -> Self {
        Self {
            state,
            timestamp_ms,
            message: BoundedString::lossy(message),
            err: None,
            exit_code: None,
            ports: BoundedVec::new(),
        }
    }
}

/// One unit of work: a container for one slot of a replicated service, or for one node of
/// a global service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// ID.
    pub id: TaskId,
    /// The service it belongs to.
    pub service_id: ServiceId,
    /// Replicated services: the slot, 1..=replicas, which replacements inherit. Global
    /// services: 0, the task being identified by its node instead.
    pub slot: u32,
    /// The node it runs on: set at creation for global services, by the scheduler otherwise.
    pub node_id: Option<NodeId>,
    /// The spec it was created from.
    pub spec: TaskSpec,
    /// The service's `spec_version` when the task was created.
    pub spec_version: u64,
    /// What the manager wants: `Running`; `Ready` while a stop-first update holds it
    /// back; `Shutdown`/`Remove` to stop it.
    pub desired_state: TaskState,
    /// What was last observed.
    pub status: TaskStatus,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Its address on each network of its spec, allocated by the manager when the task
    /// is created; held while the task has not ended.
    pub networks: BoundedVec<crate::networks::NetworkAttachment, MAX_NETWORKS>,
}

impl Task {
    /// Whether the manager still wants it running (or will, once an update releases it).
    pub fn is_desired_running(&self) -> bool {
        self.desired_state <= TaskState::Running
    }

    /// Whether a stop-first update holds it back until the task it replaces has stopped.
    pub fn is_held(&self) -> bool {
        self.desired_state < TaskState::Running
    }
}

/// A reported state that would move a task backwards: a stale or buggy report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task} cannot go back from {from} to {to}: observed state only moves forward")]
pub struct Backward {
    /// The task.
    pub task: TaskId,
    /// Its current observed state.
    pub from: TaskState,
    /// The refused state.
    pub to: TaskState,
}

/// Records a newly observed status, refusing one whose state is before the current one.
/// The same state again is accepted (a repeated report may carry a newer message).
pub fn apply_status(task: &mut Task, reported: TaskStatus) -> Result<(), Backward> {
    if reported.state < task.status.state {
        return Err(Backward { task: task.id.clone(), from: task.status.state, to: reported.state });
    }
    task.status = reported;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn port(target: u16, published: Option<u16>, protocol: Protocol, mode: PublishMode) -> PortConfig {
        PortConfig { target, published, protocol, mode }
    }

    #[test]
    fn publish_short_forms_parse_like_docker() {
        use PublishMode::Ingress;
        assert_eq!(PortConfig::parse("8000:8000").unwrap(), port(8000, Some(8000), Protocol::Tcp, Ingress));
        assert_eq!(PortConfig::parse("53:5353/udp").unwrap(), port(5353, Some(53), Protocol::Udp, Ingress));
        assert_eq!(PortConfig::parse("80").unwrap(), port(80, None, Protocol::Tcp, Ingress));
    }

    #[test]
    fn publish_long_forms_parse_like_docker() {
        assert_eq!(
            PortConfig::parse("mode=host,target=6379").unwrap(),
            port(6379, None, Protocol::Tcp, PublishMode::Host)
        );
        assert_eq!(
            PortConfig::parse("published=8000,target=8000,protocol=udp").unwrap(),
            port(8000, Some(8000), Protocol::Udp, PublishMode::Ingress)
        );
        assert_eq!(
            PortConfig::parse("published=8000,target=80,mode=host").unwrap(),
            port(80, Some(8000), Protocol::Tcp, PublishMode::Host)
        );
    }

    #[test]
    fn bad_publish_forms_say_what_is_wrong() {
        let err = |s: &str| PortConfig::parse(s).unwrap_err().to_string();
        assert!(err("mode=host").contains("target port is required"));
        assert!(err("target=0").contains("1 to 65535"));
        assert!(err("target=70000").contains("1 to 65535"));
        assert!(err("target=80,colour=red").contains("unknown field \"colour\""));
        assert!(err("target=80,mode=bridge").contains("ingress or host"));
        assert!(err("8000:80/sctp").contains("tcp or udp"));
        assert!(err("8000-8010:80").contains("ranges are not supported"));
        assert!(err("127.0.0.1:8000:80").contains("binding to an address"));
        assert!(err("x:80").contains("published port \"x\""));
        assert!(err("target=80,host").contains("not KEY=VALUE"));
        assert!(err("").contains("target port"));
    }

    #[test]
    fn ports_render_for_people_and_round_trip() {
        let p = port(6379, Some(8000), Protocol::Tcp, PublishMode::Host);
        assert_eq!(p.summary(), "8000->6379/tcp (host)");
        assert_eq!(port(80, Some(8000), Protocol::Tcp, PublishMode::Ingress).summary(), "*:8000->80/tcp");
        assert_eq!(PortConfig::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn constraints_parse_every_attribute() {
        let c = Constraint::parse("node.labels.zone==eu").unwrap();
        assert_eq!(c.key, ConstraintKey::NodeLabel(crate::text("zone").unwrap()));
        assert_eq!((c.op, c.value.as_str()), (ConstraintOp::Eq, "eu"));
        assert_eq!(Constraint::parse("node.hostname != pi3").unwrap().op, ConstraintOp::Ne);
        assert_eq!(Constraint::parse("node.arch==aarch64").unwrap().key, ConstraintKey::Arch);
        assert_eq!(Constraint::parse("node.platform.arch==arm").unwrap().key, ConstraintKey::Arch);
        assert_eq!(Constraint::parse("node.id==abc").unwrap().key, ConstraintKey::NodeId);
        assert_eq!(Constraint::parse("node.role==worker").unwrap().key, ConstraintKey::Role);
        assert_eq!(Constraint::parse("node.platform.os==linux").unwrap().key, ConstraintKey::Os);
        assert!(matches!(Constraint::parse("engine.labels.gpu==yes").unwrap().key, ConstraintKey::EngineLabel(_)));
        let c = Constraint::parse("node.labels.zone!=eu").unwrap();
        assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c);
    }

    #[test]
    fn bad_constraints_say_what_is_wrong() {
        let err = |s: &str| Constraint::parse(s).unwrap_err().to_string();
        assert!(err("node.labels.zone=eu").contains("expected ATTRIBUTE==VALUE"));
        assert!(err("node.colour==red").contains("unknown attribute"));
        assert!(err("node.labels.==x").contains("label key is empty"));
        assert!(err("node.hostname==").contains("one value"));
        assert!(err("node.hostname==a==b").contains("one value"));
        assert!(err(&format!("node.hostname=={}", "x".repeat(300))).contains("longer than the limit"));
    }

    #[test]
    fn restart_conditions_and_other_words_parse_case_insensitively() {
        assert_eq!("on-failure".parse::<RestartCondition>().unwrap(), RestartCondition::OnFailure);
        assert_eq!("ANY".parse::<RestartCondition>().unwrap(), RestartCondition::Any);
        assert_eq!("none".parse::<RestartCondition>().unwrap(), RestartCondition::None);
        let e = "always".parse::<RestartCondition>().unwrap_err().to_string();
        assert_eq!(e, "invalid restart condition \"always\": expected any, on-failure or none");
        assert_eq!("dnsrr".parse::<EndpointMode>().unwrap(), EndpointMode::Dnsrr);
        assert_eq!("start-first".parse::<UpdateOrder>().unwrap(), UpdateOrder::StartFirst);
        assert_eq!("rollback".parse::<FailureAction>().unwrap(), FailureAction::Rollback);
        assert_eq!(RestartCondition::OnFailure.to_string(), "on-failure");
        assert!("sideways".parse::<UpdateOrder>().is_err());
    }

    #[test]
    fn memory_sizes_parse_with_binary_units() {
        assert_eq!(parse_memory("64M").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_memory("512mb").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("100").unwrap(), 100);
        assert_eq!(parse_memory("4k").unwrap(), 4096);
        for bad in ["", "M", "64X", "-1M", "1.2.3G", "64 MiBs", "99999999999999T"] {
            let e = parse_memory(bad).unwrap_err().to_string();
            assert!(e.contains("e.g. 64M"), "{bad}: {e}");
        }
        assert_eq!(format_memory(64 << 20), "64MiB");
        assert_eq!(format_memory(3 << 29), "1.5GiB");
        assert_eq!(format_memory(100), "100B");
        // Found by the `messages` fuzz target: a spec from the wire with a huge limit.
        assert_eq!(format_memory(u64::MAX), "16777215.9TiB");
    }

    #[test]
    fn cpu_counts_parse_into_thousandths() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert_eq!(parse_cpus(".25").unwrap(), 250);
        assert_eq!(parse_cpus("1.125").unwrap(), 1125);
        for bad in ["", "half", "0.1234", "1,5", "-1", "9999999999"] {
            let e = parse_cpus(bad).unwrap_err().to_string();
            assert!(e.contains("e.g. 0.5"), "{bad}: {e}");
        }
        assert_eq!(format_cpus(500), "0.5");
        assert_eq!(format_cpus(2000), "2");
        assert_eq!(format_cpus(1250), "1.25");
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration_ms("5s").unwrap(), 5_000);
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("1m30s").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1_500);
        assert_eq!(parse_duration_ms("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration_ms("0").unwrap(), 0);
        for bad in ["", "5", "5x", "s", "1m30"] {
            assert!(parse_duration_ms(bad).unwrap_err().to_string().contains("e.g. 500ms"), "{bad}");
        }
        assert_eq!(format_duration_ms(90_500), "1m30s500ms");
        assert_eq!(format_duration_ms(0), "0s");
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::new(crate::text("web").unwrap(), crate::text("demo/app:1.0").unwrap())
    }

    #[test]
    fn specs_default_like_docker_and_validate() {
        let s = spec();
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
        assert_eq!(s.restart_policy.delay_ms, 5_000);
        assert_eq!(s.stop_grace_period_ms, 10_000);
        assert_eq!(s.update_config.parallelism, 1);
        assert_eq!(s.update_config.monitor_ms, 5_000);
        assert!(s.validate().is_ok());

        let mut bad = spec();
        bad.name = crate::text("-web").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("DNS label"));
        let mut bad = spec();
        bad.ports =
            vec![PortConfig::parse("8000:80").unwrap(), PortConfig::parse("8000:81").unwrap()].try_into().unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("8000/tcp is published twice"));
        let mut bad = spec();
        bad.endpoint_mode = EndpointMode::Dnsrr;
        bad.ports = vec![PortConfig::parse("8000:80").unwrap()].try_into().unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("mode=host"));
        let mut bad = spec();
        bad.resources.limit_memory = 8 << 20;
        bad.resources.reserve_memory = 9 << 20;
        assert!(bad.validate().unwrap_err().to_string().contains("reservation is above"));
        let mut bad = spec();
        bad.mode = ServiceMode::Replicated { replicas: MAX_REPLICAS + 1 };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn values_that_would_hurt_later_are_refused_with_the_bound() {
        type Edit = fn(&mut ServiceSpec);
        let cases: &[(&str, Edit, &str)] = &[
            ("limit-memory 1", |s| s.resources.limit_memory = 1, "minimum allowed memory limit is 6MiB"),
            ("limit-memory 6M-1", |s| s.resources.limit_memory = (6 << 20) - 1, "minimum allowed"),
            ("limit-memory 2T", |s| s.resources.limit_memory = 2 << 40, "--limit-memory 2TiB is above"),
            ("reserve-memory 2T", |s| s.resources.reserve_memory = 2 << 40, "--reserve-memory 2TiB is above"),
            ("limit-cpu 1000", |s| s.resources.limit_cpu_millis = 1_000_000, "--limit-cpu 1000 is out of range"),
            ("limit-cpu 0.001", |s| s.resources.limit_cpu_millis = 1, "use 0.01 to 256 CPUs"),
            ("reserve-cpu 300", |s| s.resources.reserve_cpu_millis = 300_000, "--reserve-cpu 300 is out of range"),
            ("stop-grace 99999999h", |s| s.stop_grace_period_ms = 99_999_999 * 3_600_000, "--stop-grace-period"),
            ("stop-grace 1h1ms", |s| s.stop_grace_period_ms = 3_600_001, "maximum of 1h"),
            ("restart-delay max", |s| s.restart_policy.delay_ms = u64::MAX, "--restart-delay"),
            ("restart window max", |s| s.restart_policy.window_ms = u64::MAX, "the restart window"),
            ("update-delay max", |s| s.update_config.delay_ms = u64::MAX, "--update-delay"),
            ("update-monitor 25h", |s| s.update_config.monitor_ms = 25 * 3_600_000, "--update-monitor"),
            ("rollback-delay max", |s| s.rollback_config.delay_ms = u64::MAX, "--rollback-delay"),
            ("rollback-monitor max", |s| s.rollback_config.monitor_ms = u64::MAX, "--rollback-monitor"),
        ];
        for (what, edit, expect) in cases {
            let mut s = spec();
            edit(&mut s);
            let e = s.validate().expect_err(what).to_string();
            assert!(e.contains(expect), "{what}: {e}");
            assert!(!e.ends_with('.'), "{what}: {e}");
        }
        // The bounds themselves are allowed.
        let mut s = spec();
        s.resources.limit_memory = MIN_MEMORY_LIMIT;
        s.resources.reserve_memory = MIN_MEMORY_LIMIT;
        s.resources.limit_cpu_millis = MAX_CPU_MILLIS;
        s.resources.reserve_cpu_millis = MIN_CPU_MILLIS;
        s.stop_grace_period_ms = MAX_STOP_GRACE_MS;
        s.update_config.delay_ms = MAX_POLICY_MS;
        s.update_config.monitor_ms = MAX_POLICY_MS;
        s.restart_policy.delay_ms = MAX_POLICY_MS;
        assert_eq!(s.validate(), Ok(()));
    }

    fn task() -> Task {
        Task {
            id: TaskId::from_random([1; 16]),
            service_id: ServiceId::from_random([2; 16]),
            slot: 1,
            node_id: None,
            spec: spec().task_spec(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Pending, 0, "pending"),
            created_at_ms: 0,
            networks: BoundedVec::new(),
        }
    }

    #[test]
    fn tasks_and_services_round_trip_through_postcard() {
        let t = task();
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<Task>(&bytes).unwrap(), t);
        let s = Service {
            id: t.service_id.clone(),
            spec: spec(),
            spec_version: 3,
            created_at_ms: 9,
            virtual_ips: BoundedVec::new(),
        };
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<Service>(&bytes).unwrap(), s);
    }

    #[test]
    fn ids_of_each_kind_parse_back_and_refuse_garbage() {
        let id = TaskId::from_random([9; 16]);
        assert_eq!(id.as_str().parse::<TaskId>().unwrap(), id);
        assert_eq!(id.short().len(), 12);
        assert!("Not-An-Id".parse::<ServiceId>().is_err());
    }

    #[test]
    fn task_states_are_ordered_as_swarmkit() {
        use TaskState::*;
        let order = [
            New, Pending, Assigned, Accepted, Preparing, Starting, Running, Complete, Shutdown, Failed, Rejected,
            Remove, Orphaned,
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert!(!Running.is_terminal() && Complete.is_terminal());
    }

    #[test]
    fn observed_state_only_moves_forward() {
        let mut t = task();
        apply_status(&mut t, TaskStatus::new(TaskState::Running, 1, "started")).unwrap();
        apply_status(&mut t, TaskStatus::new(TaskState::Running, 2, "still running")).unwrap();
        assert_eq!(t.status.message.to_string(), "still running");
        let err = apply_status(&mut t, TaskStatus::new(TaskState::Starting, 3, "late report")).unwrap_err();
        assert_eq!((err.from, err.to), (TaskState::Running, TaskState::Starting));
        assert!(err.to_string().contains("only moves forward"));
        assert_eq!(t.status.timestamp_ms, 2, "a refused report changes nothing");
        apply_status(&mut t, TaskStatus::new(TaskState::Failed, 4, "exit 1")).unwrap();
        assert!(apply_status(&mut t, TaskStatus::new(TaskState::Running, 5, "")).is_err());
    }

    proptest! {
        /// Any sequence of reports leaves the observed state at the maximum reported so far.
        #[test]
        fn applied_states_never_decrease(reports in proptest::collection::vec(0usize..13, 0..30)) {
            use TaskState::*;
            let all = [New, Pending, Assigned, Accepted, Preparing, Starting, Running, Complete, Shutdown,
                       Failed, Rejected, Remove, Orphaned];
            let mut t = task();
            let mut max = t.status.state;
            for r in reports {
                let ok = apply_status(&mut t, TaskStatus::new(all[r], 0, "")).is_ok();
                prop_assert_eq!(ok, all[r] >= max);
                max = max.max(all[r]);
                prop_assert_eq!(t.status.state, max);
            }
        }

        /// CPU counts, durations and ports render to text that parses back to the same value.
        #[test]
        fn cpus_round_trip(m in 0u32..1_000_000) {
            prop_assert_eq!(parse_cpus(&format_cpus(m)).unwrap(), m);
        }

        #[test]
        fn durations_round_trip(ms in 0u64..1_000_000_000) {
            prop_assert_eq!(parse_duration_ms(&format_duration_ms(ms)).unwrap(), ms);
        }

        #[test]
        fn ports_round_trip(
            target in 1u16..=u16::MAX,
            published in proptest::option::of(1u16..=u16::MAX),
            udp in any::<bool>(),
            host in any::<bool>(),
        ) {
            let p = PortConfig {
                target, published,
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                mode: if host { PublishMode::Host } else { PublishMode::Ingress },
            };
            prop_assert_eq!(PortConfig::parse(&p.to_string()).unwrap(), p);
        }
    }
}
