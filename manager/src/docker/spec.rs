//! Docker's `ServiceSpec` JSON → shoal's [`ServiceSpec`]: the one place the Engine API's
//! service shape is mapped onto shoal's. Pure: no I/O, no clock; the caller brings the
//! spec it starts from and a way to name networks.
//!
//! The rule that keeps it honest: a field is either **mapped** (read here into the spec),
//! or **carried** (the request sends it back exactly as shoal rendered it in `service
//! inspect`, or empty, so nothing changes), or **refused** with an error naming the
//! field. Nothing is dropped silently. Starting from the current spec (update) or from
//! [`ServiceSpec::new`] (create) makes a round trip through `docker service inspect` and
//! `docker service update` lossless for every field shoal knows, mapped here or not.
//!
//! Docker's semantics for absent values are kept: inside a present `UpdateConfig` a
//! missing `Delay` is 0 and a zero `Monitor` is Swarm's default; a missing
//! `RestartPolicy.Delay` keeps the current one.

use serde_json::{json, Map, Value};
use shoal_proto::secrets::{Kind, SecretRef};
use shoal_proto::services::{
    Constraint, EndpointMode, FailureAction, PortConfig, Protocol, PublishMode, RestartCondition, ServiceMode,
    ServiceSpec, UpdateConfig, UpdateOrder, MAX_POLICY_MS,
};
use shoal_proto::{BoundedVec, Label};

/// A Docker spec shoal cannot take, naming the field (`TaskTemplate.ContainerSpec.Mounts`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field shoal has no equivalent for.
    #[error("{field} is not supported by shoal's Docker API: remove it, or set it with `shoal service` flags")]
    Unsupported {
        /// Dotted path of the field.
        field: String,
    },
    /// A field shoal set (with its own CLI) that the request leaves out.
    #[error(
        "{field} is set on this service and the Docker API can't clear it: send it back as `docker service inspect` \
         shows it, or change it with `shoal service update`"
    )]
    Kept {
        /// Dotted path of the field.
        field: String,
    },
    /// A field shoal maps, with a value it cannot use.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong and what to send instead.
        reason: String,
    },
}

impl SpecError {
    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.to_owned(), reason: reason.into() }
    }

    /// The same error for a field of a nested object read on its own.
    fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid { field, reason } if !field.starts_with(prefix) => {
                Self::Invalid { field: format!("{prefix}{field}"), reason }
            }
            other => other,
        }
    }
}

/// A mapped spec, with the digest the client pinned its image to (`image@sha256:…`),
/// for the caller to check against the image the manager holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The spec to create or update with.
    pub spec: ServiceSpec,
    /// The digest after `@` in `ContainerSpec.Image`, if any.
    pub pinned_digest: Option<String>,
}

/// Maps Docker's `ServiceSpec` (`req`) onto `base`, whose own rendering as Docker JSON is
/// `base_json` (the `Spec` object shoal's `service inspect` prints); `default_json` is the
/// rendering of a fresh spec, so that a field shoal set but Docker's client did not send
/// back is told from one that was never set. `network` turns a network ID or name into
/// its name, `None` when there is no such network.
pub fn map_spec(
    base: &ServiceSpec,
    base_json: &Value,
    default_json: &Value,
    req: &Value,
    network: &dyn Fn(&str) -> Option<String>,
) -> Result<Mapped, SpecError> {
    let Value::Object(req) = req else {
        return Err(SpecError::invalid("ServiceSpec", "expected a JSON object"));
    };
    let original = Value::Object(req.clone());
    let mut req = Value::Object(req.clone());
    // dockerd replaces a spec whole and Go leaves empty lists out: inside an object that
    // was sent, a list that was not is empty (`--secret-rm` of the last secret).
    absent_is_empty(&mut req, &[], &[("Labels", Value::Null)]);
    let cs = ["TaskTemplate", "ContainerSpec"];
    let lists = [("Args", Value::Null), ("Env", Value::Null), ("Hostname", json!("")), ("Secrets", Value::Null)];
    absent_is_empty(&mut req, &cs, &lists);
    absent_is_empty(&mut req, &cs, &[("Configs", Value::Null), ("Labels", Value::Null)]);
    absent_is_empty(&mut req, &["TaskTemplate", "Placement"], &[("Constraints", Value::Null)]);
    absent_is_empty(&mut req, &["TaskTemplate"], &[("Networks", Value::Null)]);
    absent_is_empty(&mut req, &["EndpointSpec"], &[("Ports", Value::Null)]);
    let mut spec = base.clone();
    let mut pinned_digest = None;

    if let Some(name) = take_str(&mut req, &["Name"])? {
        if name.is_empty() {
            return Err(SpecError::invalid("Name", "a service needs a name: set Name"));
        }
        spec.name = shoal_proto::text(&name).map_err(|e| SpecError::invalid("Name", e.to_string()))?;
    }
    if let Some(labels) = take(&mut req, &["Labels"]) {
        spec.labels = labels_of("Labels", &labels)?;
    }

    // The container.
    const CS: [&str; 2] = ["TaskTemplate", "ContainerSpec"];
    if let Some(image) = take_str(&mut req, &path(&CS, "Image"))? {
        let (reference, digest) = match image.split_once('@') {
            Some((r, d)) => (r.to_owned(), Some(d.to_owned())),
            None => (image.clone(), None),
        };
        if reference.is_empty() {
            return Err(SpecError::invalid("TaskTemplate.ContainerSpec.Image", "an image is required"));
        }
        spec.image = shoal_proto::text(&reference)
            .map_err(|e| SpecError::invalid("TaskTemplate.ContainerSpec.Image", e.to_string()))?;
        pinned_digest = digest;
    }
    if let Some(args) = take(&mut req, &path(&CS, "Args")) {
        spec.args = strings("TaskTemplate.ContainerSpec.Args", &args)?;
    }
    if let Some(env) = take(&mut req, &path(&CS, "Env")) {
        spec.env = strings("TaskTemplate.ContainerSpec.Env", &env)?;
    }
    if let Some(h) = take_str(&mut req, &path(&CS, "Hostname"))? {
        spec.hostname = if h.is_empty() {
            None
        } else {
            Some(
                shoal_proto::text(&h)
                    .map_err(|e| SpecError::invalid("TaskTemplate.ContainerSpec.Hostname", e.to_string()))?,
            )
        };
    }
    if let Some(ns) = take_u64(&mut req, &path(&CS, "StopGracePeriod"))? {
        spec.stop_grace_period_ms = ns / 1_000_000;
    }
    if let Some(sig) = take_str(&mut req, &path(&CS, "StopSignal"))? {
        spec.stop_signal = if sig.is_empty() {
            None
        } else {
            shoal_proto::services::parse_stop_signal(&sig)
                .map_err(|e| SpecError::invalid("TaskTemplate.ContainerSpec.StopSignal", e.to_string()))?;
            Some(
                shoal_proto::text(&sig)
                    .map_err(|e| SpecError::invalid("TaskTemplate.ContainerSpec.StopSignal", e.to_string()))?,
            )
        };
    }
    for kind in [Kind::Secret, Kind::Config] {
        let key = if kind == Kind::Secret { "Secrets" } else { "Configs" };
        if let Some(refs) = take(&mut req, &path(&CS, key)) {
            let refs =
                object_refs(kind, &refs).map_err(|e| e.within(&format!("TaskTemplate.ContainerSpec.{key}[].")))?;
            if kind == Kind::Secret {
                spec.secrets = refs;
            } else {
                spec.configs = refs;
            }
        }
    }
    if let Some(iso) = take_str(&mut req, &path(&CS, "Isolation"))? {
        if !(iso.is_empty() || iso == "default") {
            return Err(SpecError::invalid(
                "TaskTemplate.ContainerSpec.Isolation",
                format!("{iso:?} is a Windows isolation: boards run Linux containers, leave it \"default\""),
            ));
        }
    }

    // Resources, restarts, placement, networks.
    for (kind, field) in [("Limits", 0), ("Reservations", 1)] {
        let p = ["TaskTemplate", "Resources", kind];
        if let Some(nano) = take_u64(&mut req, &path(&p, "NanoCPUs"))? {
            let millis = u32::try_from(nano / 1_000_000)
                .map_err(|_| SpecError::invalid(&format!("TaskTemplate.Resources.{kind}.NanoCPUs"), "too large"))?;
            if field == 0 {
                spec.resources.limit_cpu_millis = millis;
            } else {
                spec.resources.reserve_cpu_millis = millis;
            }
        }
        if let Some(bytes) = take_u64(&mut req, &path(&p, "MemoryBytes"))? {
            if field == 0 {
                spec.resources.limit_memory = bytes;
            } else {
                spec.resources.reserve_memory = bytes;
            }
        }
    }
    const RP: [&str; 2] = ["TaskTemplate", "RestartPolicy"];
    if let Some(c) = take_str(&mut req, &path(&RP, "Condition"))? {
        if !c.is_empty() {
            spec.restart_policy.condition = c
                .parse::<RestartCondition>()
                .map_err(|e| SpecError::invalid("TaskTemplate.RestartPolicy.Condition", e.to_string()))?;
        }
    }
    if let Some(ns) = take_u64(&mut req, &path(&RP, "Delay"))? {
        spec.restart_policy.delay_ms = policy_ms("TaskTemplate.RestartPolicy.Delay", ns)?;
    }
    if let Some(n) = take_u64(&mut req, &path(&RP, "MaxAttempts"))? {
        spec.restart_policy.max_attempts = if n == 0 {
            None
        } else {
            Some(
                u32::try_from(n)
                    .map_err(|_| SpecError::invalid("TaskTemplate.RestartPolicy.MaxAttempts", "too large"))?,
            )
        };
    }
    if let Some(ns) = take_u64(&mut req, &path(&RP, "Window"))? {
        spec.restart_policy.window_ms = policy_ms("TaskTemplate.RestartPolicy.Window", ns)?;
    }
    if let Some(cs) = take(&mut req, &["TaskTemplate", "Placement", "Constraints"]) {
        let texts: Vec<String> = string_list("TaskTemplate.Placement.Constraints", &cs)?;
        let parsed = texts
            .iter()
            .map(|c| Constraint::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SpecError::invalid("TaskTemplate.Placement.Constraints", e.to_string()))?;
        spec.constraints = parsed
            .try_into()
            .map_err(|_| SpecError::invalid("TaskTemplate.Placement.Constraints", "too many constraints"))?;
    }
    if let Some(nets) = take(&mut req, &["TaskTemplate", "Networks"]) {
        spec.networks = networks_of(&nets, network, &spec.name)?;
    }
    if let Some(labels) = take(&mut req, &path(&CS, "Labels")) {
        spec.container.labels = labels_of("TaskTemplate.ContainerSpec.Labels", &labels)?;
    }

    // Mode, rollouts, endpoint.
    if let Some(mode) = take(&mut req, &["Mode"]) {
        spec.mode = mode_of(&mode)?;
    }
    for (key, config) in [("UpdateConfig", &mut spec.update_config), ("RollbackConfig", &mut spec.rollback_config)] {
        if let Some(v) = take(&mut req, &[key]) {
            if !v.is_null() {
                *config = update_config_of(key, &v)?;
            }
        }
    }
    if let Some(mode) = take_str(&mut req, &["EndpointSpec", "Mode"])? {
        spec.endpoint_mode = if mode.is_empty() {
            EndpointMode::Vip
        } else {
            mode.parse()
                .map_err(|e: shoal_proto::services::SpecError| SpecError::invalid("EndpointSpec.Mode", e.to_string()))?
        };
    }
    if let Some(ports) = take(&mut req, &["EndpointSpec", "Ports"]) {
        spec.ports = ports_of(&ports)?;
    }

    // Whatever is left must be empty or what shoal rendered: carried, not changed.
    carried(&req, base_json, "")?;
    kept(base_json, default_json, &original, "")?;
    spec.validate().map_err(|e| SpecError::invalid("ServiceSpec", e.to_string()))?;
    Ok(Mapped { spec, pinned_digest })
}

fn path<'a>(prefix: &[&'a str], last: &'a str) -> Vec<&'a str> {
    let mut p = prefix.to_vec();
    p.push(last);
    p
}

/// Removes the value at `path` from `v`, if there.
fn take(v: &mut Value, path: &[&str]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = v;
    for p in parents {
        cur = cur.as_object_mut()?.get_mut(*p)?;
    }
    cur.as_object_mut()?.remove(*last)
}

fn take_str(v: &mut Value, path: &[&str]) -> Result<Option<String>, SpecError> {
    match take(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SpecError::invalid(&path.join("."), "expected a string")),
    }
}

fn take_u64(v: &mut Value, path: &[&str]) -> Result<Option<u64>, SpecError> {
    match take(v, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| SpecError::invalid(&path.join("."), "expected a whole number ≥ 0"))
        }
        Some(_) => Err(SpecError::invalid(&path.join("."), "expected a number")),
    }
}

fn policy_ms(field: &str, ns: u64) -> Result<u64, SpecError> {
    let ms = ns / 1_000_000;
    if ms > MAX_POLICY_MS {
        return Err(SpecError::invalid(field, "longer than 24h: use a shorter duration"));
    }
    Ok(ms)
}

fn string_list(field: &str, v: &Value) -> Result<Vec<String>, SpecError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| SpecError::invalid(field, "expected strings")))
            .collect(),
        _ => Err(SpecError::invalid(field, "expected a list of strings")),
    }
}

fn strings<const L: usize, const N: usize>(
    field: &str,
    v: &Value,
) -> Result<BoundedVec<shoal_proto::BoundedString<L>, N>, SpecError> {
    let items = string_list(field, v)?
        .iter()
        .map(|s| shoal_proto::BoundedString::<L>::try_from(s.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SpecError::invalid(field, e.to_string()))?;
    items.try_into().map_err(|_| SpecError::invalid(field, format!("more than {N} entries")))
}

fn labels_of<const N: usize>(field: &str, v: &Value) -> Result<BoundedVec<Label, N>, SpecError> {
    let Value::Object(map) = v else {
        return if v.is_null() { Ok(BoundedVec::new()) } else { Err(SpecError::invalid(field, "expected an object")) };
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let value = v.as_str().ok_or_else(|| SpecError::invalid(&format!("{field}.{k}"), "expected a string"))?;
        let bad = |e: shoal_proto::TooLong| SpecError::invalid(&format!("{field}.{k}"), e.to_string());
        out.push(Label { key: shoal_proto::text(k).map_err(bad)?, value: shoal_proto::text(value).map_err(bad)? });
    }
    out.try_into().map_err(|_| SpecError::invalid(field, format!("more than {N} labels")))
}

fn networks_of<const N: usize>(
    v: &Value,
    network: &dyn Fn(&str) -> Option<String>,
    service: &str,
) -> Result<BoundedVec<shoal_proto::services::NetworkName, N>, SpecError> {
    const FIELD: &str = "TaskTemplate.Networks";
    let items = match v {
        Value::Null => return Ok(BoundedVec::new()),
        Value::Array(items) => items,
        _ => return Err(SpecError::invalid(FIELD, "expected a list of {\"Target\": NETWORK}")),
    };
    let mut out = Vec::new();
    for item in items {
        let mut item = item.clone();
        let target =
            take_str(&mut item, &["Target"]).map_err(|e| e.within("TaskTemplate.Networks[]."))?.unwrap_or_default();
        let name = network(&target).ok_or_else(|| {
            SpecError::invalid(
                FIELD,
                format!("no network {target:?}: create it with `docker network create -d overlay`"),
            )
        })?;
        // The names shoal's resolver already gives a service on its networks: its own,
        // and a stack's service its short name (`lab_db` → `db`).
        let short = service.split_once('_').map_or(service, |(_, s)| s);
        if let Some(aliases) = take(&mut item, &["Aliases"]) {
            for a in string_list("TaskTemplate.Networks[].Aliases", &aliases)? {
                if a != service && a != short {
                    return Err(SpecError::invalid(
                        "TaskTemplate.Networks[].Aliases",
                        format!("{a:?}: a service answers to its name (and a stack's to its short name) only"),
                    ));
                }
            }
        }
        carried(&item, &Value::Null, "TaskTemplate.Networks[].")?;
        out.push(shoal_proto::text(&name).map_err(|e| SpecError::invalid(FIELD, e.to_string()))?);
    }
    out.try_into().map_err(|_| SpecError::invalid(FIELD, format!("more than {N} networks")))
}

/// Docker's `SecretReference` / `ConfigReference` list: the object by name (its ID is
/// Docker's own handle; the manager resolves names and fills in versions), and the file
/// it becomes.
fn object_refs<const N: usize>(kind: Kind, v: &Value) -> Result<BoundedVec<SecretRef, N>, SpecError> {
    let items = match v {
        Value::Null => return Ok(BoundedVec::new()),
        Value::Array(items) => items,
        _ => return Err(SpecError::invalid("", "expected a list")),
    };
    let (name_key, id_key) = if kind == Kind::Secret { ("SecretName", "SecretID") } else { ("ConfigName", "ConfigID") };
    let mut out = Vec::new();
    for item in items {
        let mut r = item.clone();
        let source = take_str(&mut r, &[name_key])?.filter(|s| !s.is_empty()).ok_or_else(|| {
            SpecError::invalid(name_key, "the name is required (shoal refers to secrets and configs by name)")
        })?;
        let _ = take(&mut r, &[id_key]);
        // shoal's own rendering carries the version the service uses; the manager sets it.
        let _ = take(&mut r, &["Version"]);
        let target = take_str(&mut r, &["File", "Name"])?.filter(|s| !s.is_empty()).ok_or_else(|| {
            SpecError::invalid("File.Name", "a file target is required (runtime configs are not supported)")
        })?;
        let num = |r: &mut Value, f: &str| -> Result<Option<String>, SpecError> {
            match take(r, &["File", f]) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(SpecError::invalid(&format!("File.{f}"), "expected a number")),
            }
        };
        let uid = num(&mut r, "UID")?.unwrap_or_else(|| "0".into());
        let gid = num(&mut r, "GID")?.unwrap_or_else(|| "0".into());
        let mode = take_u64(&mut r, &["File", "Mode"])?.unwrap_or(0o444);
        carried(&r, &Value::Null, "")?;
        let text = format!("source={source},target={target},uid={uid},gid={gid},mode={mode:o}");
        out.push(SecretRef::parse(kind, &text).map_err(|e| SpecError::invalid("File", e.to_string()))?);
    }
    out.try_into().map_err(|_| SpecError::invalid("", format!("more than {N} references")))
}

fn mode_of(v: &Value) -> Result<ServiceMode, SpecError> {
    let mut v = v.clone();
    let mode = if let Some(r) = take(&mut v, &["Replicated"]) {
        let mut r = r;
        let replicas = take_u64(&mut r, &["Replicas"]).map_err(|e| e.within("Mode.Replicated."))?.unwrap_or(1);
        carried(&r, &Value::Null, "Mode.Replicated.")?;
        let replicas =
            u32::try_from(replicas).map_err(|_| SpecError::invalid("Mode.Replicated.Replicas", "too large"))?;
        ServiceMode::Replicated { replicas }
    } else if let Some(g) = take(&mut v, &["Global"]) {
        carried(&g, &Value::Null, "Mode.Global.")?;
        ServiceMode::Global
    } else {
        ServiceMode::default()
    };
    carried(&v, &Value::Null, "Mode.")?;
    Ok(mode)
}

fn update_config_of(key: &str, v: &Value) -> Result<UpdateConfig, SpecError> {
    update_config_fields(key, v).map_err(|e| e.within(&format!("{key}.")))
}

fn update_config_fields(key: &str, v: &Value) -> Result<UpdateConfig, SpecError> {
    let mut v = v.clone();
    let field = |f: &str| format!("{key}.{f}");
    let defaults = UpdateConfig::default();
    let parallelism = take_u64(&mut v, &["Parallelism"])?.unwrap_or(0);
    let delay = take_u64(&mut v, &["Delay"])?.unwrap_or(0);
    let monitor = take_u64(&mut v, &["Monitor"])?.unwrap_or(0);
    let failure_action = match take_str(&mut v, &["FailureAction"])?.as_deref() {
        None | Some("") => defaults.failure_action,
        Some(s) => {
            s.parse::<FailureAction>().map_err(|e| SpecError::invalid(&field("FailureAction"), e.to_string()))?
        }
    };
    let order = match take_str(&mut v, &["Order"])?.as_deref() {
        None | Some("") => defaults.order,
        Some(s) => s.parse::<UpdateOrder>().map_err(|e| SpecError::invalid(&field("Order"), e.to_string()))?,
    };
    let ratio = match take(&mut v, &["MaxFailureRatio"]) {
        None | Some(Value::Null) => 0.0,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
        Some(_) => return Err(SpecError::invalid(&field("MaxFailureRatio"), "expected a number")),
    };
    if !(0.0..=1.0).contains(&ratio) {
        return Err(SpecError::invalid(&field("MaxFailureRatio"), "expected a fraction between 0 and 1"));
    }
    carried(&v, &Value::Null, &format!("{key}."))?;
    Ok(UpdateConfig {
        parallelism: u32::try_from(parallelism).map_err(|_| SpecError::invalid(&field("Parallelism"), "too large"))?,
        delay_ms: policy_ms(&field("Delay"), delay)?,
        failure_action,
        // Swarm's rule: an unset (zero) monitoring period is the default one.
        monitor_ms: if monitor == 0 { defaults.monitor_ms } else { policy_ms(&field("Monitor"), monitor)? },
        max_failure_ratio_permille: (ratio * 1000.0).round() as u16,
        order,
    })
}

fn ports_of<const N: usize>(v: &Value) -> Result<BoundedVec<PortConfig, N>, SpecError> {
    ports_fields(v).map_err(|e| e.within("EndpointSpec.Ports[]."))
}

fn ports_fields<const N: usize>(v: &Value) -> Result<BoundedVec<PortConfig, N>, SpecError> {
    const FIELD: &str = "EndpointSpec.Ports";
    let items = match v {
        Value::Null => return Ok(BoundedVec::new()),
        Value::Array(items) => items,
        _ => return Err(SpecError::invalid(FIELD, "expected a list of ports")),
    };
    let mut out = Vec::new();
    for item in items {
        let mut p = item.clone();
        let port = |v: Option<u64>, f: &str| -> Result<Option<u16>, SpecError> {
            v.map(|n| u16::try_from(n).map_err(|_| SpecError::invalid(&format!("{FIELD}[].{f}"), "not a port number")))
                .transpose()
        };
        let target = port(take_u64(&mut p, &["TargetPort"])?, "TargetPort")?.filter(|t| *t > 0).ok_or_else(|| {
            SpecError::invalid(&format!("{FIELD}[].TargetPort"), "a published port needs its TargetPort")
        })?;
        let published = port(take_u64(&mut p, &["PublishedPort"])?, "PublishedPort")?.filter(|p| *p > 0);
        let protocol = match take_str(&mut p, &["Protocol"])?.as_deref() {
            None | Some("") => Protocol::Tcp,
            Some(s) => s.parse().map_err(|e: shoal_proto::services::SpecError| {
                SpecError::invalid(&format!("{FIELD}[].Protocol"), e.to_string())
            })?,
        };
        let mode = match take_str(&mut p, &["PublishMode"])?.as_deref() {
            None | Some("") => PublishMode::Ingress,
            Some(s) => s.parse().map_err(|e: shoal_proto::services::SpecError| {
                SpecError::invalid(&format!("{FIELD}[].PublishMode"), e.to_string())
            })?,
        };
        // A port's name is only a label in Docker.
        let _ = take(&mut p, &["Name"]);
        carried(&p, &Value::Null, &format!("{FIELD}[]."))?;
        out.push(PortConfig { target, published, protocol, mode });
    }
    out.try_into().map_err(|_| SpecError::invalid(FIELD, format!("more than {N} ports")))
}

fn absent_is_empty(req: &mut Value, parent: &[&str], keys: &[(&str, Value)]) {
    let mut cur = req;
    for p in parent {
        match cur.as_object_mut().and_then(|o| o.get_mut(*p)) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut() {
        for (k, empty) in keys {
            obj.entry(*k).or_insert_with(|| empty.clone());
        }
    }
}

/// Fields read by [`map_spec`] (a request without them clears them): the reverse check
/// ([`kept`]) leaves them alone.
const MAPPED: [&str; 15] = [
    "TaskTemplate.ContainerSpec.Labels",
    "Name",
    "Labels",
    "TaskTemplate.ContainerSpec.Image",
    "TaskTemplate.ContainerSpec.Args",
    "TaskTemplate.ContainerSpec.Env",
    "TaskTemplate.ContainerSpec.Hostname",
    "TaskTemplate.ContainerSpec.StopGracePeriod",
    "TaskTemplate.ContainerSpec.StopSignal",
    "TaskTemplate.ContainerSpec.Secrets",
    "TaskTemplate.ContainerSpec.Configs",
    "TaskTemplate.Resources",
    "TaskTemplate.RestartPolicy",
    "TaskTemplate.Placement",
    "TaskTemplate.Networks",
];

/// What shoal set on the service beyond its defaults, in a field the request does not map,
/// must come back in the request: a client that leaves it out (an older API version, or
/// a `--mount-rm`) would otherwise have it kept without a word.
fn kept(base: &Value, default: &Value, req: &Value, prefix: &str) -> Result<(), SpecError> {
    let Value::Object(base) = base else { return Ok(()) };
    for (k, b) in base {
        let path = format!("{prefix}{k}");
        if MAPPED.contains(&path.as_str())
            || ["Mode", "UpdateConfig", "RollbackConfig", "EndpointSpec"].contains(&path.as_str())
            || is_empty(b)
        {
            continue;
        }
        let d = default.get(k).unwrap_or(&Value::Null);
        if b == d {
            continue;
        }
        let r = req.get(k).unwrap_or(&Value::Null);
        if b.is_object() {
            kept(b, d, r, &format!("{path}."))?;
        } else if is_empty(r) {
            return Err(SpecError::Kept { field: path });
        }
    }
    Ok(())
}

/// Whether a value says nothing: Go's zero values and empty containers.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
    }
}

/// Checks that what is left of a request is empty or equal to shoal's own rendering at
/// the same place; names the first field that is neither.
fn carried(rest: &Value, base: &Value, prefix: &str) -> Result<(), SpecError> {
    let Value::Object(rest) = rest else {
        return if is_empty(rest) || rest == base {
            Ok(())
        } else {
            Err(SpecError::Unsupported { field: prefix.trim_end_matches('.').to_owned() })
        };
    };
    let empty = Map::new();
    let base = base.as_object().unwrap_or(&empty);
    for (k, v) in rest {
        let b = base.get(k).unwrap_or(&Value::Null);
        if is_empty(v) || v == b {
            continue;
        }
        if v.is_object() {
            carried(v, b, &format!("{prefix}{k}."))?;
            continue;
        }
        return Err(SpecError::Unsupported { field: format!("{prefix}{k}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> ServiceSpec {
        ServiceSpec::new(shoal_proto::text("x").unwrap(), shoal_proto::text("x:1").unwrap())
    }

    fn nets(n: &str) -> Option<String> {
        match n {
            "atsea" | "n0000000000000000000000001" => Some("atsea".into()),
            _ => None,
        }
    }

    fn map(req: Value) -> Result<Mapped, SpecError> {
        map_spec(&base(), &json!({}), &json!({}), &req, &nets)
    }

    /// What docker 28's CLI sends for the lab's `docker service create` of the database.
    #[test]
    fn docker_cli_create_body_maps_every_field() {
        let req = json!({
            "Name": "database", "Labels": {},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "redis:latest@sha256:abc", "Labels": {}, "Init": false,
                    "Privileges": {"CredentialSpec": null, "SELinuxContext": null},
                    "DNSConfig": {}, "Isolation": "default"
                },
                "Resources": {"Limits": {}, "Reservations": {}},
                "RestartPolicy": {}, "Placement": {}, "ForceUpdate": 0, "Runtime": "",
                "Networks": [{"Target": "n0000000000000000000000001"}]
            },
            "Mode": {"Replicated": {"Replicas": 3}},
            "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "MaxFailureRatio": 0, "Order": "stop-first"},
            "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "MaxFailureRatio": 0, "Order": "stop-first"},
            "EndpointSpec": {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": 6379, "PublishMode": "host"}]}
        });
        let m = map(req).unwrap();
        assert_eq!(m.spec.name.as_str(), "database");
        assert_eq!(m.spec.image.as_str(), "redis:latest");
        assert_eq!(m.pinned_digest.as_deref(), Some("sha256:abc"));
        assert_eq!(m.spec.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(m.spec.endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(m.spec.networks[0].as_str(), "atsea");
        assert_eq!(
            m.spec.ports.as_slice(),
            [PortConfig { target: 6379, published: None, protocol: Protocol::Tcp, mode: PublishMode::Host }]
        );
        // An unset monitor is Swarm's default; the restart policy keeps its defaults.
        assert_eq!(m.spec.update_config, UpdateConfig::default());
        assert_eq!(m.spec.restart_policy, base().restart_policy);
    }

    #[test]
    fn fields_shoal_lacks_are_refused_by_name() {
        let req = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "x:1",
            "Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}}});
        assert_eq!(map(req).unwrap_err(), SpecError::Unsupported { field: "TaskTemplate.ContainerSpec.Mounts".into() });
        let req = json!({"Name": "x", "TaskTemplate": {"LogDriver": {"Name": "syslog"}}});
        assert_eq!(map(req).unwrap_err().to_string().split(' ').next(), Some("TaskTemplate.LogDriver.Name"));
        let req = json!({"Name": "x", "Mode": {"ReplicatedJob": {"MaxConcurrent": 1}}});
        assert!(map(req).unwrap_err().to_string().starts_with("Mode.ReplicatedJob"));
        let req = json!({"Name": "x", "TaskTemplate": {"Networks": [{"Target": "atsea", "Aliases": ["db"]}]}});
        assert!(map(req).unwrap_err().to_string().starts_with("TaskTemplate.Networks[].Aliases"));
        // What `docker stack deploy` sends: the short name, and the stack label on containers.
        let req = json!({"Name": "lab_db", "Labels": {"com.docker.stack.namespace": "lab"},
            "TaskTemplate": {"Networks": [{"Target": "atsea", "Aliases": ["db"]}],
            "ContainerSpec": {"Labels": {"com.docker.stack.namespace": "lab"}}}});
        assert_eq!(map(req).unwrap().spec.container.labels[0].value.as_str(), "lab");
    }

    #[test]
    fn fields_sent_back_as_rendered_are_carried_unchanged() {
        let rendered = json!({"TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "volume"}]}}});
        let req = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "volume"}]}}});
        assert!(map_spec(&base(), &rendered, &json!({}), &req, &nets).is_ok());
        let changed = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Mounts": [{"Type": "bind"}]}}});
        assert!(map_spec(&base(), &rendered, &json!({}), &changed, &nets).is_err());
        // Left out (`--mount-rm`, or a client that does not know the field): refused, not kept silently.
        let dropped = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "x:1"}}});
        let e = map_spec(&base(), &rendered, &json!({}), &dropped, &nets).unwrap_err();
        assert_eq!(e, SpecError::Kept { field: "TaskTemplate.ContainerSpec.Mounts".into() });
        // A field at its default may be left out.
        assert!(map_spec(&base(), &rendered, &rendered, &dropped, &nets).is_ok());
    }

    #[test]
    fn secrets_and_configs_map_by_name_with_their_files() {
        // What docker 28 sends for `--secret db_password --config source=conf,target=/etc/app.conf,mode=0440`.
        let req = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {
            "Secrets": [{"File": {"Name": "db_password", "UID": "0", "GID": "0", "Mode": 292},
                         "SecretID": "abc", "SecretName": "db_password"}],
            "Configs": [{"File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 288},
                         "ConfigID": "def", "ConfigName": "conf"}]}}});
        let m = map(req).unwrap();
        let s = &m.spec.secrets[0];
        assert_eq!((s.source.as_str(), s.target.as_str(), s.mode), ("db_password", "db_password", 0o444));
        let c = &m.spec.configs[0];
        assert_eq!((c.source.as_str(), c.target.as_str(), c.mode), ("conf", "/etc/app.conf", 0o440));
        let e = map(json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Configs": [{"ConfigName": "c",
            "Runtime": {}}]}}}))
        .unwrap_err();
        assert!(e.to_string().starts_with("TaskTemplate.ContainerSpec.Configs[].File.Name"), "{e}");
    }

    #[test]
    fn lists_left_out_of_a_sent_object_are_cleared_as_dockerd_does() {
        let mut with = base();
        with.env = strings("Env", &json!(["A=1"])).unwrap();
        with.secrets = object_refs(Kind::Secret, &json!([{"SecretName": "s", "File": {"Name": "s"}}])).unwrap();
        let req = json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "x:1"}}});
        let m = map_spec(&with, &json!({}), &json!({}), &req, &nets).unwrap();
        assert!(m.spec.env.is_empty() && m.spec.secrets.is_empty());
        // Not sent at all: a partial request keeps them.
        let m = map_spec(&with, &json!({}), &json!({}), &json!({"Name": "x"}), &nets).unwrap();
        assert_eq!(m.spec.env.len(), 1);
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = map(json!({"Name": "x", "Mode": {"Replicated": {"Replicas": "three"}}})).unwrap_err();
        assert_eq!(e.to_string(), "Mode.Replicated.Replicas: expected a number");
        let e = map(json!({"Name": "x", "TaskTemplate": {"Networks": [{"Target": "nope"}]}})).unwrap_err();
        assert!(e.to_string().starts_with("TaskTemplate.Networks: no network \"nope\""));
        let e = map(json!({"Name": "x", "UpdateConfig": {"FailureAction": "explode"}})).unwrap_err();
        assert!(e.to_string().starts_with("UpdateConfig.FailureAction:"));
        let e = map(json!({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Isolation": "hyperv"}}})).unwrap_err();
        assert!(e.to_string().contains("leave it \"default\""));
        assert!(map(json!([1, 2])).is_err());
    }

    #[test]
    fn update_config_absent_values_follow_docker() {
        let m = map(json!({"Name": "x", "UpdateConfig": {"Parallelism": 2, "Delay": 3_000_000_000u64,
            "Monitor": 1_000_000_000u64, "MaxFailureRatio": 0.25, "FailureAction": "rollback", "Order": "start-first"}}))
        .unwrap();
        let u = m.spec.update_config;
        assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms, u.max_failure_ratio_permille), (2, 3000, 1000, 250));
        assert_eq!((u.failure_action, u.order), (FailureAction::Rollback, UpdateOrder::StartFirst));
        // The rollback config was not sent: it stays as it was.
        assert_eq!(m.spec.rollback_config, UpdateConfig::default());
    }
}
