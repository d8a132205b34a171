//! What `service ls`, `ps` and `inspect` print: Docker's tables, Docker-shaped JSON, the
//! human form, and Go templates over the JSON.

use serde_json::json;
use shoal_proto::dispatch::{ServiceView, TaskView, UpdateState, UpdateStatus};
use shoal_proto::services::{format_cpus, format_duration_ms, format_memory};
use shoal_proto::{PortConfig, PublishMode, RestartCondition, ServiceMode, TaskState, UpdateConfig};

use crate::cli::output::table;
use crate::cli::template::Template;

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

/// A published port as `service ls` and `ps` show it: `*:8000->8000/tcp`.
pub fn port_text(p: &PortConfig) -> String {
    let published = p.published.map_or_else(|| "*".to_owned(), |n| n.to_string());
    format!("*:{published}->{}/{}", p.target, p.protocol)
}

/// A port in Docker's JSON shape (`service inspect`, and the Engine API's services and tasks).
pub fn port_json(p: &PortConfig) -> serde_json::Value {
    let mut port =
        json!({ "Protocol": p.protocol.to_string(), "TargetPort": p.target, "PublishMode": p.mode.to_string() });
    if let Some(published) = p.published {
        port["PublishedPort"] = json!(published);
    }
    port
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
            format!(
                "{} {} ago{}",
                status.state,
                human_duration(now_ms.saturating_sub(status.timestamp_ms)),
                health_note(status)
            ),
            task_error(t),
            ports.iter().map(|p| port_text(p)).collect::<Vec<_>>().join(", "),
        ]);
    }
    table(&["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"], &rows)
}

/// ` (healthy)`, ` (health: starting)` or ` (unhealthy)` after a running task's state,
/// as Docker shows a container's health.
pub(super) fn health_note(status: &shoal_proto::TaskStatus) -> String {
    match status.health {
        Some(h) if status.state == shoal_proto::TaskState::Running => format!(" ({h})"),
        _ => String::new(),
    }
}

pub(super) fn condition_text(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::Any => "any",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::None => "none",
    }
}

/// Docker's `UpdateStatus`, keys in Docker's order (the manager builds serde_json with
/// `preserve_order`, so `{{json .UpdateStatus}}` prints them as docker does).
pub(super) fn update_status_json(u: &UpdateStatus) -> serde_json::Value {
    let mut status = serde_json::Map::new();
    status.insert("State".into(), json!(u.state.as_str()));
    status.insert("StartedAt".into(), json!(shoal_proto::time::rfc3339(u.started_at_ms)));
    if let Some(done) = u.completed_at_ms {
        status.insert("CompletedAt".into(), json!(shoal_proto::time::rfc3339(done)));
    }
    status.insert("Message".into(), json!(&*u.message));
    serde_json::Value::Object(status)
}

pub(super) fn update_config_json(u: &shoal_proto::UpdateConfig) -> serde_json::Value {
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
pub(super) fn update_status_text(u: &UpdateStatus, now_ms: u64) -> String {
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
pub(super) fn update_config_text(title: &str, order_label: &str, c: &UpdateConfig) -> String {
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
    let ports: Vec<serde_json::Value> = spec.ports.iter().map(port_json).collect();
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
                    "StopSignal": spec.stop_signal.as_deref(),
                    "Hostname": spec.hostname.as_deref(),
                    "Privileges": { "NoNewPrivileges": true, "Seccomp": seccomp_json(&spec.seccomp) },
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
        "Endpoint": {
            "Spec": { "Mode": spec.endpoint_mode.to_string(), "Ports": ports.clone() },
            "Ports": ports,
            "VirtualIPs": v.service.virtual_ips.iter()
                .map(|ip| json!({ "NetworkID": ip.network_id.as_str(), "Addr": format!("{}/{}", ip.address, ip.prefix) }))
                .collect::<Vec<_>>(),
        },
        "ServiceStatus": { "RunningTasks": v.running, "DesiredTasks": v.desired },
    });
    if let Some(u) = &v.update_status {
        out["UpdateStatus"] = update_status_json(u);
    }
    if let Some(c) = out["Spec"]["TaskTemplate"]["ContainerSpec"].as_object_mut() {
        c.extend(super::options::container_spec_json(&spec.container));
    }
    super::object_args::inspect_json(spec, &mut out);
    if let Some(h) = &spec.health {
        out["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"] = healthcheck_json(h);
    }
    out
}

/// Docker's `Healthcheck` (durations in ns), only the fields that are set.
pub(super) fn healthcheck_json(h: &shoal_proto::health::HealthConfig) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if !h.test.is_empty() {
        out.insert("Test".into(), json!(h.test.iter().map(|a| a.to_string()).collect::<Vec<_>>()));
    }
    for (key, ms) in [("Interval", h.interval_ms), ("Timeout", h.timeout_ms), ("StartPeriod", h.start_period_ms)] {
        if ms > 0 {
            out.insert(key.into(), json!(ms.saturating_mul(1_000_000)));
        }
    }
    if h.retries > 0 {
        out.insert("Retries".into(), json!(h.retries));
    }
    serde_json::Value::Object(out)
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
    out.push_str(&super::options::pretty_text(&spec.container));
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

/// Docker's `Privileges.Seccomp`: the mode, and a custom profile's text.
fn seccomp_json(s: &shoal_proto::services::Seccomp) -> serde_json::Value {
    match s {
        shoal_proto::services::Seccomp::Profile(p) => json!({ "Mode": s.mode(), "Profile": &**p }),
        _ => json!({ "Mode": s.mode() }),
    }
}
