//! What each board is told about its networks, and what `network inspect` shows: pure
//! functions of the networks, services, tasks and the boards' underlay addresses.
//!
//! A board's view holds every network that has a task on the board (placed, not ended):
//! the network's VNI, subnet and gateway; its **peers** (the tasks on other boards, with
//! their board's underlay address, for the VXLAN forwarding and neighbour entries); its
//! **services** (name, endpoint mode, VIP) and **running tasks** (name, ID, address), from
//! which the board's resolver answers and its load balancer takes each VIP's backends.
//! A peer whose board has no session (no known underlay address) is left out until it
//! has one. The shell sends a view only when it differs from the last one sent.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::IpAddr;

use shoal_proto::networks::{
    AttachmentConfig, MeshBackend, MeshPort, Network, NetworkInspect, NetworkTask, NetworkView, NodeNetworks, Peer,
    ServiceEntry, TaskEntry, MAX_INSPECT_TASKS, MAX_MESH_BACKENDS, MAX_MESH_PORTS, MAX_NAMED_SERVICES, MAX_NAMED_TASKS,
    MAX_PEERS, MAX_VIEW_CHUNK,
};
use shoal_proto::services::MAX_NETWORKS;
use shoal_proto::{BoundedVec, Hostname, ManagerMessage, NodeId, PublishMode, Service, Task, TaskState, Text};

use crate::ipam::holds_addresses;

/// Docker's task name: `<service>.<slot>.<task id>`, or `<service>.<node id>.<task id>`
/// for a global service's task.
pub fn task_name(service: &str, t: &Task) -> Text<128> {
    let middle = match (&t.node_id, t.slot) {
        (Some(node), 0) => node.to_string(),
        _ => t.slot.to_string(),
    };
    shoal_proto::text_lossy(&format!("{service}.{middle}.{}", t.id))
}

/// A backend: running, desired running, and healthy when it has a health check (a task
/// still starting its checks, or unhealthy, gets no traffic).
fn is_running(t: &Task) -> bool {
    shoal_proto::health::serves(&t.status) && t.is_desired_running()
}

/// The view of `node`'s networks: see the module doc. Deterministic: networks by ID,
/// lists by address or name.
pub fn node_view(
    node: &NodeId,
    networks: &[Network],
    services: &[&Service],
    tasks: &[impl Borrow<Task>],
    underlay: &HashMap<NodeId, IpAddr>,
) -> Vec<NetworkView> {
    let live: Vec<&Task> =
        tasks.iter().map(Borrow::borrow).filter(|t| holds_addresses(t) && t.node_id.is_some()).collect();
    let mut nets: Vec<&Network> = networks
        .iter()
        .filter(|n| {
            live.iter().any(|t| t.node_id.as_ref() == Some(node) && t.networks.iter().any(|a| a.network_id == n.id))
        })
        .collect();
    nets.sort_by(|a, b| a.id.cmp(&b.id));
    let by_id: HashMap<_, _> = services.iter().map(|s| (&s.id, *s)).collect();
    nets.into_iter()
        .map(|n| {
            let mut truncated = false;
            let on_net = |t: &&&Task| t.networks.iter().any(|a| a.network_id == n.id);
            let address = |t: &Task| t.networks.iter().find(|a| a.network_id == n.id).map(|a| a.address);
            let mut peers: Vec<Peer> = live
                .iter()
                .filter(on_net)
                .filter(|t| t.node_id.as_ref() != Some(node))
                .filter_map(|t| Some(Peer { address: address(t)?, underlay: *underlay.get(t.node_id.as_ref()?)? }))
                .collect();
            peers.sort();
            peers.dedup();
            let mut entries: Vec<&Service> = services
                .iter()
                .copied()
                .filter(|s| {
                    s.virtual_ips.iter().any(|v| v.network_id == n.id)
                        || crate::ipam::wanted_networks(&s.spec.task_spec()).contains(&n.spec.name.as_str())
                })
                .collect();
            entries.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            truncated |= entries.len() > MAX_NAMED_SERVICES || peers.len() > MAX_PEERS;
            entries.truncate(MAX_NAMED_SERVICES);
            peers.truncate(MAX_PEERS);
            let index: HashMap<_, _> = entries.iter().enumerate().map(|(i, s)| (&s.id, i)).collect();
            let mut named: Vec<TaskEntry> = live
                .iter()
                .filter(on_net)
                .filter(|t| is_running(t))
                .filter_map(|t| {
                    let i = *index.get(&t.service_id)?;
                    let svc = by_id.get(&t.service_id)?;
                    Some(TaskEntry {
                        service: u16::try_from(i).ok()?,
                        name: task_name(&svc.spec.name, t),
                        task_id: t.id.clone(),
                        address: address(t)?,
                    })
                })
                .collect();
            named.sort_by(|a, b| a.name.cmp(&b.name));
            truncated |= named.len() > MAX_NAMED_TASKS;
            named.truncate(MAX_NAMED_TASKS);
            let services: Vec<ServiceEntry> = entries
                .iter()
                .map(|s| ServiceEntry {
                    name: s.spec.name.clone(),
                    endpoint_mode: s.spec.endpoint_mode,
                    vip: s.virtual_ips.iter().find(|v| v.network_id == n.id).map(|v| v.address),
                })
                .collect();
            NetworkView {
                id: n.id.clone(),
                name: n.spec.name.clone(),
                vni: n.vni,
                subnet: n.subnet,
                gateway: n.gateway,
                encrypted: n.spec.encrypted,
                peers: peers.try_into().unwrap_or_default(),
                services: services.try_into().unwrap_or_default(),
                tasks: named.try_into().unwrap_or_default(),
                truncated,
                board_address: None,
                published: BoundedVec::new(),
                keys: None,
            }
        })
        .collect()
}

/// The routing mesh added to `view` (what [`node_view`] made for `node`). `boards` are
/// the mesh's boards, each with its own address on `ingress`: the Ready, non-drained
/// ones, while some service publishes an ingress-mode port. On such a board the view
/// holds `ingress` even with no local task of it, with the board's address, peers that
/// include every other mesh board's address (replies come back to the board a
/// connection entered by), and the published ports with their backends: the running
/// tasks' ingress addresses and target ports. Other boards' views are left as they are.
pub fn with_mesh(
    node: &NodeId,
    mut view: Vec<NetworkView>,
    networks: &[Network],
    services: &[&Service],
    tasks: &[impl Borrow<Task>],
    underlay: &HashMap<NodeId, IpAddr>,
    boards: &std::collections::BTreeMap<NodeId, std::net::Ipv4Addr>,
) -> Vec<NetworkView> {
    let (Some(ingress), Some(own)) = (networks.iter().find(|n| n.ingress), boards.get(node)) else { return view };
    let live: Vec<&Task> =
        tasks.iter().map(Borrow::borrow).filter(|t| holds_addresses(t) && t.node_id.is_some()).collect();
    let ingress_address = |t: &Task| t.networks.iter().find(|a| a.network_id == ingress.id).map(|a| a.address);
    let mut extra: Vec<Peer> = boards
        .iter()
        .filter(|(id, _)| *id != node)
        .filter_map(|(id, a)| Some(Peer { address: *a, underlay: *underlay.get(id)? }))
        .collect();
    extra.extend(
        live.iter()
            .filter(|t| t.node_id.as_ref() != Some(node))
            .filter_map(|t| Some(Peer { address: ingress_address(t)?, underlay: *underlay.get(t.node_id.as_ref()?)? })),
    );
    let mut ports: Vec<MeshPort> = Vec::new();
    let mut sorted: Vec<&&Service> = services.iter().collect();
    sorted.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    for s in sorted {
        for p in s.spec.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
            let Some(published) = p.published else { continue };
            let mut backends: Vec<MeshBackend> = live
                .iter()
                .filter(|t| t.service_id == s.id && is_running(t))
                .filter_map(|t| Some(MeshBackend { address: ingress_address(t)?, port: p.target }))
                .collect();
            backends.sort();
            backends.truncate(MAX_MESH_BACKENDS);
            ports.push(MeshPort { protocol: p.protocol, published, backends: backends.try_into().unwrap_or_default() });
        }
    }
    ports.truncate(MAX_MESH_PORTS);
    let i = match view.iter().position(|v| v.id == ingress.id) {
        Some(i) => i,
        None => {
            view.push(NetworkView {
                id: ingress.id.clone(),
                name: ingress.spec.name.clone(),
                vni: ingress.vni,
                subnet: ingress.subnet,
                gateway: ingress.gateway,
                encrypted: ingress.spec.encrypted,
                peers: BoundedVec::new(),
                services: BoundedVec::new(),
                tasks: BoundedVec::new(),
                truncated: false,
                board_address: None,
                published: BoundedVec::new(),
                keys: None,
            });
            view.sort_by(|a, b| a.id.cmp(&b.id));
            view.iter().position(|v| v.id == ingress.id).expect("just added")
        }
    };
    let v = &mut view[i];
    let mut peers: Vec<Peer> = v.peers.iter().copied().chain(extra).collect();
    peers.sort();
    peers.dedup();
    v.truncated |= peers.len() > MAX_PEERS;
    peers.truncate(MAX_PEERS);
    v.peers = peers.try_into().unwrap_or_default();
    v.board_address = Some(*own);
    v.published = ports.try_into().unwrap_or_default();
    view
}

/// A view as the messages that carry it: chunks of [`MAX_VIEW_CHUNK`] networks, `more`
/// on all but the last; an empty view is one empty message (the board has no networks).
pub fn messages(view: Vec<NetworkView>) -> Vec<ManagerMessage> {
    let mut chunks: Vec<Vec<NetworkView>> = Vec::new();
    for v in view {
        match chunks.last_mut() {
            Some(c) if c.len() < MAX_VIEW_CHUNK => c.push(v),
            _ => chunks.push(vec![v]),
        }
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            ManagerMessage::Networks(NodeNetworks { more: i < last, networks: c.try_into().unwrap_or_default() })
        })
        .collect()
}

/// What a board needs to attach `t`'s container: one entry per address the task holds.
pub fn attachments(networks: &[Network], t: &Task) -> BoundedVec<AttachmentConfig, MAX_NETWORKS> {
    let out: Vec<AttachmentConfig> = t
        .networks
        .iter()
        .filter_map(|a| {
            let n = networks.iter().find(|n| n.id == a.network_id)?;
            Some(AttachmentConfig {
                network_id: n.id.clone(),
                vni: n.vni,
                subnet: n.subnet,
                gateway: n.gateway,
                address: a.address,
                encrypted: n.spec.encrypted,
                ingress: n.ingress,
            })
        })
        .collect();
    out.try_into().unwrap_or_default()
}

/// `network inspect`: where the network exists (the nodes running a task of it) and its
/// tasks that have not ended, with their addresses.
pub fn inspect(
    network: &Network,
    services: &[&Service],
    tasks: &[Task],
    hostname: impl Fn(&NodeId) -> Option<Hostname>,
) -> NetworkInspect {
    let mut list: Vec<NetworkTask> = Vec::new();
    let mut nodes: Vec<Hostname> = Vec::new();
    for t in tasks.iter().filter(|t| holds_addresses(t)) {
        let Some(a) = t.networks.iter().find(|a| a.network_id == network.id) else { continue };
        let name = services.iter().find(|s| s.id == t.service_id).map(|s| s.spec.name.as_str()).unwrap_or("");
        let node = t.node_id.as_ref().and_then(&hostname);
        if t.status.state >= TaskState::Assigned {
            nodes.extend(node.clone());
        }
        list.push(NetworkTask { name: task_name(name, t), task_id: t.id.clone(), address: a.address, node });
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list.truncate(MAX_INSPECT_TASKS);
    nodes.sort();
    nodes.dedup();
    nodes.truncate(MAX_INSPECT_TASKS);
    let mut entries: Vec<ServiceEntry> = services
        .iter()
        .filter(|s| {
            s.virtual_ips.iter().any(|v| v.network_id == network.id)
                || crate::ipam::wanted_networks(&s.spec.task_spec()).contains(&network.spec.name.as_str())
        })
        .map(|s| ServiceEntry {
            name: s.spec.name.clone(),
            endpoint_mode: s.spec.endpoint_mode,
            vip: s.virtual_ips.iter().find(|v| v.network_id == network.id).map(|v| v.address),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.truncate(MAX_NAMED_SERVICES);
    NetworkInspect {
        network: network.clone(),
        nodes: nodes.try_into().unwrap_or_default(),
        tasks: list.try_into().unwrap_or_default(),
        services: entries.try_into().unwrap_or_default(),
    }
}
