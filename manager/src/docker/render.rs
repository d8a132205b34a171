//! shoal's views → the Engine API's JSON shapes (moby `api/types/swarm`), and the small
//! reverse mappings for nodes and networks. Pure. Services and nodes reuse the JSON
//! `shoal service inspect` and `shoal node inspect` print, so both CLIs show the same
//! object the same way; here only what Docker's client needs on top (times it parses as
//! RFC 3339, versions, the `Swarm` section).

use serde_json::{json, Value};
use shoal_proto::dispatch::{ServiceView, TaskView};
use shoal_proto::images::ImageView;
use shoal_proto::networks::{Network, NetworkInspect, NetworkSpec};
use shoal_proto::services::TaskState;
use shoal_proto::time::rfc3339;
use shoal_proto::{Availability, BoundedVec, CaStatus, Label, LabelKey, NodeView, Role, MAX_LABELS};

use super::api::{MAX_VERSION, MIN_VERSION};
use super::error::ApiError;

fn api_version((a, b): (u32, u32)) -> String {
    format!("{a}.{b}")
}

/// Docker's name for the architecture this manager runs on.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" | "armv7" => "arm",
        other => other,
    }
}

/// `/version`.
pub fn version() -> Value {
    let v = env!("CARGO_PKG_VERSION");
    json!({
        "Platform": { "Name": "shoal" },
        "Components": [{
            "Name": "Engine",
            "Version": v,
            "Details": { "ApiVersion": api_version(MAX_VERSION), "MinAPIVersion": api_version(MIN_VERSION), "Os": "linux" },
        }],
        "Version": v,
        "ApiVersion": api_version(MAX_VERSION),
        "MinAPIVersion": api_version(MIN_VERSION),
        "GitCommit": "",
        "GoVersion": "",
        "Os": std::env::consts::OS,
        "Arch": go_arch(std::env::consts::ARCH),
        "KernelVersion": "",
        "BuildTime": "",
    })
}

fn manager_of(nodes: &[NodeView]) -> Option<&NodeView> {
    nodes.iter().find(|n| n.role == Role::Manager)
}

fn cluster_id(ca: &CaStatus) -> String {
    // The CA is the cluster's identity; 25 characters like Swarm's IDs.
    shoal_proto::hex(&ca.digest)[..25].to_owned()
}

/// `/info`: what the docker CLI reads (`Swarm.NodeID` marks `*` in `node ls`).
pub fn info(nodes: &[NodeView], services: usize, ca: &CaStatus) -> Value {
    let me = manager_of(nodes);
    let id = me.map(|n| n.id.as_str()).unwrap_or("");
    let addr = me.and_then(|n| n.addr.as_deref()).unwrap_or("");
    let d = me.map(|n| &n.description);
    json!({
        "ID": id,
        "Name": d.map(|d| d.hostname.as_str()).unwrap_or(""),
        "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0, "Images": 0,
        "Driver": "", "ServerVersion": env!("CARGO_PKG_VERSION"),
        "OperatingSystem": "shoal manager", "OSType": "linux",
        "Architecture": d.map(|d| d.arch.as_str()).unwrap_or(std::env::consts::ARCH),
        "NCPU": d.map(|d| d.resources.cpus).unwrap_or(0),
        "MemTotal": d.map(|d| d.resources.memory_bytes).unwrap_or(0),
        "Labels": [],
        "Swarm": {
            "NodeID": id,
            "NodeAddr": addr,
            "LocalNodeState": "active",
            "ControlAvailable": true,
            "Error": "",
            "RemoteManagers": [{ "NodeID": id, "Addr": addr }],
            "Nodes": nodes.len(),
            "Managers": nodes.iter().filter(|n| n.role == Role::Manager).count(),
            "Cluster": cluster(ca),
        },
        "Warnings": [format!("shoal {} serves the swarm endpoints of the Engine API only ({services} services)", env!("CARGO_PKG_VERSION"))],
    })
}

fn cluster(ca: &CaStatus) -> Value {
    json!({
        "ID": cluster_id(ca),
        "Version": { "Index": 1 },
        "CreatedAt": rfc3339(0),
        "UpdatedAt": rfc3339(0),
        "Spec": {
            "Name": "default",
            "Labels": {},
            "Orchestration": { "TaskHistoryRetentionLimit": 5 },
            "Raft": { "SnapshotInterval": 0, "ElectionTick": 0, "HeartbeatTick": 0 },
            "Dispatcher": { "HeartbeatPeriod": 5_000_000_000u64 },
            "CAConfig": { "NodeCertExpiry": ca.cert_expiry_ms.saturating_mul(1_000_000) },
            "TaskDefaults": {},
            "EncryptionConfig": { "AutoLockManagers": false },
        },
        "TLSInfo": { "TrustRoot": "", "CertIssuerSubject": "", "CertIssuerPublicKey": "" },
        "RootRotationInProgress": ca.rotating,
        "DataPathPort": 4789,
        "DefaultAddrPool": ["10.0.0.0/8"],
        "SubnetSize": 24,
    })
}

/// `/swarm`: the cluster with its join tokens. shoal has one manager, so there is no
/// manager token.
pub fn swarm(ca: &CaStatus, worker_token: &str, _addr: &str, _nodes: &[NodeView]) -> Value {
    let mut c = cluster(ca);
    c["JoinTokens"] = json!({ "Worker": worker_token, "Manager": "" });
    c
}

/// A node's version for optimistic concurrency: shoal keeps none per node, so it is a
/// digest of what `node update` can change (availability and labels). A client that
/// read an older state is refused with 409 as by dockerd.
pub fn node_version(n: &NodeView) -> u64 {
    let mut text = n.availability.to_string();
    for l in n.labels.iter() {
        text.push_str(&format!("\n{}={}", l.key, l.value));
    }
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    // 52 bits: exact in every JSON reader.
    u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes")) & ((1 << 52) - 1)
}

/// A node in Docker's shape.
pub fn node(n: &NodeView) -> Value {
    let mut v = crate::cli::node::json(n);
    v["Version"] = json!({ "Index": node_version(n) });
    v["CreatedAt"] = json!(rfc3339(n.created_at_ms));
    v["UpdatedAt"] = json!(rfc3339(n.created_at_ms));
    if let Some(d) = v.get_mut("Description") {
        d["Platform"]["Architecture"] = json!(n.description.arch.as_str());
    }
    // Docker's client reads these as times; shoal's are for people.
    if let Some(obj) = v.as_object_mut() {
        obj.remove("Certificate");
    }
    v
}

/// What a Docker `NodeSpec` changes on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeChange {
    /// New availability, if it differs.
    pub availability: Option<Availability>,
    /// Labels to set.
    pub label_add: BoundedVec<Label, MAX_LABELS>,
    /// Label keys to drop.
    pub label_rm: BoundedVec<LabelKey, MAX_LABELS>,
}

/// Maps a Docker `NodeSpec` onto what shoal can change: availability and labels; the
/// role only if unchanged (shoal has one manager), the name never.
pub fn node_change(current: &NodeView, body: &Value) -> Result<NodeChange, ApiError> {
    let Value::Object(spec) = body else { return Err(ApiError::bad_request("NodeSpec: expected a JSON object")) };
    let mut change = NodeChange::default();
    for (k, v) in spec {
        match k.as_str() {
            "Availability" => {
                let a = v.as_str().ok_or_else(|| ApiError::bad_request("Availability: expected a string"))?;
                let a: Availability = a
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("Availability: {a:?} is not active, pause or drain")))?;
                if a != current.availability {
                    change.availability = Some(a);
                }
            }
            "Role" => {
                let current_role = if current.role == Role::Manager { "manager" } else { "worker" };
                if !(v.is_null() || v.as_str() == Some("") || v.as_str() == Some(current_role)) {
                    return Err(ApiError::not_implemented(
                        "Role: shoal has one manager and boards are workers: promote and demote are not supported",
                    ));
                }
            }
            "Name" => {
                if !(v.is_null() || v.as_str() == Some("")) {
                    return Err(ApiError::bad_request("Name: nodes are named by their hostname in shoal"));
                }
            }
            "Labels" => {
                let wanted = match v {
                    Value::Null => serde_json::Map::new(),
                    Value::Object(m) => m.clone(),
                    _ => return Err(ApiError::bad_request("Labels: expected an object")),
                };
                for (key, value) in &wanted {
                    let value = value
                        .as_str()
                        .ok_or_else(|| ApiError::bad_request(format!("Labels.{key}: expected a string")))?;
                    if current.labels.iter().any(|l| l.key.as_str() == key && l.value.as_str() == value) {
                        continue;
                    }
                    let bad = |e: shoal_proto::TooLong| ApiError::bad_request(format!("Labels.{key}: {e}"));
                    let label = Label {
                        key: shoal_proto::text(key).map_err(bad)?,
                        value: shoal_proto::text(value).map_err(bad)?,
                    };
                    change.label_add.push(label).map_err(|_| ApiError::bad_request("Labels: too many labels"))?;
                }
                for l in current.labels.iter().filter(|l| !wanted.contains_key(l.key.as_str())) {
                    change
                        .label_rm
                        .push(l.key.clone())
                        .map_err(|_| ApiError::bad_request("Labels: too many labels"))?;
                }
            }
            other => {
                return Err(ApiError::bad_request(format!("{other} is not a NodeSpec field shoal knows: remove it")))
            }
        }
    }
    Ok(change)
}

/// A service in Docker's shape: shoal's `service inspect --format json`, with the times
/// the client parses.
pub fn service(v: &ServiceView) -> Value {
    let mut out = crate::cli::service::json(v);
    out["UpdatedAt"] = json!(v
        .update_status
        .as_ref()
        .map_or_else(|| rfc3339(v.service.created_at_ms), |u| rfc3339(u.completed_at_ms.unwrap_or(u.started_at_ms))));
    if let Some(s) = out["ServiceStatus"].as_object_mut() {
        s.insert("CompletedTasks".into(), json!(0));
    }
    out
}

/// The `Spec` a fresh spec renders as: what a create request is compared against.
pub fn spec_json(spec: &shoal_proto::ServiceSpec) -> Value {
    let view = ServiceView {
        service: shoal_proto::Service {
            id: shoal_proto::ServiceId::from_random([0; 16]),
            spec: spec.clone(),
            spec_version: 0,
            created_at_ms: 0,
            virtual_ips: BoundedVec::new(),
        },
        running: 0,
        desired: 0,
        updated: 0,
        update_status: None,
    };
    crate::cli::service::json(&view)["Spec"].clone()
}

/// `appserver.1`, or `agent.NODEID` for a global service's task, as the docker CLI names
/// tasks (the `name` filter matches it).
pub fn task_name(t: &TaskView) -> String {
    crate::cli::service::task_name(t)
}

fn state(s: TaskState) -> String {
    s.as_str().to_ascii_lowercase()
}

/// A task in Docker's shape.
pub fn task(t: &TaskView) -> Value {
    let task = &t.task;
    let st = &task.status;
    let ports: Vec<Value> = st.ports.iter().map(crate::cli::service::port_json).collect();
    let mut status = json!({
        "Timestamp": rfc3339(st.timestamp_ms),
        "State": state(st.state),
        "Message": &*st.message,
        "PortStatus": { "Ports": ports },
    });
    if let Some(err) = &st.err {
        status["Err"] = json!(&**err);
    }
    if let Some(code) = st.exit_code {
        status["ContainerStatus"] = json!({ "ExitCode": code });
    }
    let mut v = json!({
        "ID": task.id.as_str(),
        "Version": { "Index": task.spec_version },
        "CreatedAt": rfc3339(task.created_at_ms),
        "UpdatedAt": rfc3339(st.timestamp_ms.max(task.created_at_ms)),
        "Labels": {},
        "Spec": {
            "ContainerSpec": {
                "Image": task.spec.image.as_str(),
                "Args": task.spec.args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "Env": task.spec.env.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            },
            "Networks": task.spec.networks.iter().map(|n| json!({ "Target": n.as_str() })).collect::<Vec<_>>(),
        },
        "ServiceID": task.service_id.as_str(),
        "Status": status,
        "DesiredState": state(task.desired_state),
        "NetworksAttachments": task.networks.iter()
            .map(|a| json!({ "Network": { "ID": a.network_id.as_str() }, "Addresses": [a.address.to_string()] }))
            .collect::<Vec<_>>(),
    });
    if task.slot > 0 {
        v["Slot"] = json!(task.slot);
    }
    if let Some(node) = &t.node_id {
        v["NodeID"] = json!(node.as_str());
    }
    v
}

/// A network in Docker's shape, as listed.
pub fn network(n: &Network) -> Value {
    let inspect = NetworkInspect {
        network: n.clone(),
        nodes: BoundedVec::new(),
        tasks: BoundedVec::new(),
        services: BoundedVec::new(),
    };
    let mut v = crate::cli::network::inspect_json(&inspect);
    if let Some(o) = v.as_object_mut() {
        o.remove("Services");
        o.remove("Peers");
    }
    v
}

/// A Docker `NetworkCreateRequest` as shoal's spec: overlay only; the IPAM subnet and
/// gateway, `--attachable`, labels and the `encrypted` option are honoured, everything
/// else that is set is refused by name.
pub fn network_spec(body: &Value) -> Result<NetworkSpec, ApiError> {
    let Value::Object(req) = body else { return Err(ApiError::bad_request("expected a JSON object")) };
    let mut name = String::new();
    let mut driver = "overlay".to_owned();
    let (mut subnet, mut gateway, mut attachable) = (None, None, false);
    let mut opts = Vec::new();
    let mut labels = Vec::new();
    let refuse =
        |f: &str| Err(ApiError::bad_request(format!("{f} is not supported by shoal's overlay networks: remove it")));
    for (k, v) in req {
        let empty = v.is_null() || v == &json!(false) || v == &json!("") || v == &json!({}) || v == &json!([]);
        match k.as_str() {
            "Name" => name = v.as_str().unwrap_or_default().to_owned(),
            "Driver" => {
                if let Some(d) = v.as_str().filter(|d| !d.is_empty()) {
                    driver = d.to_owned();
                }
            }
            "Attachable" => attachable = v.as_bool().unwrap_or(false),
            "Scope" if empty || v == "swarm" => {}
            "CheckDuplicate" | "ConfigOnly" | "Ingress" | "Internal" | "EnableIPv6" | "EnableIPv4" | "ConfigFrom"
                if empty || (k == "EnableIPv4" && v == &json!(true)) => {}
            "Options" => {
                for (o, val) in v.as_object().into_iter().flatten() {
                    let val = val.as_str().unwrap_or_default();
                    opts.push(if val.is_empty() { o.clone() } else { format!("{o}={val}") });
                }
            }
            "Labels" => {
                for (l, val) in v.as_object().into_iter().flatten() {
                    labels.push(format!("{l}={}", val.as_str().unwrap_or_default()));
                }
            }
            "IPAM" => {
                let configs = v.get("Config").and_then(Value::as_array).cloned().unwrap_or_default();
                match configs.as_slice() {
                    [] => {}
                    [c] => {
                        subnet = c.get("Subnet").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                        gateway = c.get("Gateway").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
                        if c.get("IPRange").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                            return refuse("IPAM.Config.IPRange");
                        }
                    }
                    _ => return refuse("IPAM.Config with more than one subnet"),
                }
                if v.get("Driver").and_then(Value::as_str).is_some_and(|d| !d.is_empty() && d != "default") {
                    return refuse("IPAM.Driver");
                }
            }
            _ if empty => {}
            other => return refuse(other),
        }
    }
    if name.is_empty() {
        return Err(ApiError::bad_request("Name: a network needs a name"));
    }
    let subnet = subnet
        .map(|s| {
            shoal_proto::networks::Subnet::parse(&s)
                .map_err(|e| ApiError::bad_request(format!("IPAM.Config.Subnet: {e}")))
        })
        .transpose()?;
    crate::cli::network::spec_from_flags(&driver, subnet, gateway.as_deref(), attachable, &opts, &labels, &name)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))
}

/// `/distribution/{name}/json`: the digest the manager holds the image under, which the
/// docker CLI pins a service to. No platforms: shoal fills them in from its own store.
pub fn distribution(i: &ImageView) -> Value {
    json!({
        "Descriptor": {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": i.digest.as_str(),
            "size": 0,
        },
        "Platforms": [],
    })
}

/// An image the manager holds, as `GET /images/json` lists it (`docker images`,
/// Portainer's image list). Its layers are not unpacked on the manager: no creation
/// time (0) and no container counts (-1, "not computed", as dockerd says).
pub fn image_summary(i: &ImageView) -> Value {
    let reference = shoal_proto::images::normalize_ref(&i.reference);
    let repo = reference.rsplit_once(':').map_or(reference.as_str(), |(r, _)| r);
    json!({
        "Id": i.digest.as_str(),
        "ParentId": "",
        "RepoTags": [reference],
        "RepoDigests": [format!("{repo}@{}", i.digest.as_str())],
        "Created": 0,
        "Size": i.size,
        "SharedSize": -1,
        "VirtualSize": i.size,
        "Labels": {},
        "Containers": -1,
    })
}

/// `GET /system/df`: the manager's images; containers and volumes live on the boards
/// (`shoal service ps`, `shoal volume ls`), none on the manager.
pub fn system_df(images: &[ImageView]) -> Value {
    let list: Vec<Value> = images.iter().map(image_summary).collect();
    json!({
        "LayersSize": images.iter().map(|i| i.size).sum::<u64>(),
        "Images": list,
        "Containers": [],
        "Volumes": [],
        "BuildCache": [],
    })
}

/// The swarm spec fields `docker swarm update` can change, which shoal changes with its
/// own commands: a request that changes one is refused naming it.
pub const SWARM_SPEC_FIXED: [(&str, &str); 5] = [
    ("/Name", "the cluster has no name to change"),
    ("/CAConfig/NodeCertExpiry", "use `shoal manager update --cert-expiry`"),
    ("/Dispatcher/HeartbeatPeriod", "use `shoal manager run --heartbeat-period`"),
    ("/Orchestration/TaskHistoryRetentionLimit", "shoal keeps 5 tasks of history per slot"),
    ("/EncryptionConfig/AutoLockManagers", "shoal's manager is never locked"),
];

/// The first field of a swarm spec sent back that differs from the cluster's, with what
/// to use instead.
pub fn swarm_spec_change(ca: &CaStatus, sent: &Value) -> Option<String> {
    let current = &cluster(ca)["Spec"];
    SWARM_SPEC_FIXED.iter().find_map(|(path, instead)| {
        let v = sent.pointer(path).filter(|v| !v.is_null())?;
        (Some(v) != current.pointer(path)).then(|| format!("Spec{}: {instead}", path.replace('/', ".")))
    })
}
