//! `shoal network ...` requests and the boards' network views: the shell around
//! [`crate::core::ipam`] and [`crate::core::netview`]. The ingress network is made at the
//! first start of a manager whose store has none. A board's view is recomputed after each
//! reconciliation and queued only when it differs from the one last queued for its
//! session; a new session starts with none, so it gets its view at the next pass.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use shoal_proto::networks::{Network, NetworkId, NetworkReply, NetworkRequest, MAX_NETWORKS_LISTED};
use shoal_proto::{ErrorReply, ManagerMessage, NodeId};
use tracing::info;

use super::{internal, Manager, ServiceState, State};
use crate::core::nodes::NodeRecord;
use crate::core::{ipam, netkeys, netview};
use crate::store::Store;

/// The stored networks, with the ingress network created first if there is none.
pub(super) fn load_or_create_ingress(store: &Store) -> anyhow::Result<Vec<Network>> {
    let mut networks = store.networks()?;
    if !networks.iter().any(|n| n.ingress) {
        let ingress = ipam::ingress(NetworkId::from_random(shoal_link::random()), shoal_link::wall_ms());
        store.put_network(&ingress)?;
        info!(id = %ingress.id, subnet = %ingress.subnet, "ingress network created");
        networks.push(ingress);
    }
    Ok(networks)
}

/// Answers one network request.
pub(super) fn handle(mgr: &Manager, req: NetworkRequest, nodes: &[NodeRecord]) -> Result<NetworkReply, ErrorReply> {
    let mut svc = mgr.services.lock().expect("services lock");
    match req {
        NetworkRequest::Create(spec) => {
            let id = NetworkId::from_random(shoal_link::random());
            let network = ipam::create_network(&svc.networks, *spec, id.clone(), shoal_link::wall_ms())?;
            mgr.store.put_network(&network).map_err(internal)?;
            info!(name = %network.spec.name, %id, subnet = %network.subnet, vni = network.vni, "network created");
            svc.networks.push(network);
            Ok(NetworkReply::Created(id))
        }
        NetworkRequest::List => {
            let mut all = svc.networks.clone();
            all.sort_by(|a, b| (!a.ingress, &a.spec.name).cmp(&(!b.ingress, &b.spec.name)));
            all.truncate(MAX_NETWORKS_LISTED);
            Ok(NetworkReply::Networks(all.try_into().map_err(internal)?))
        }
        NetworkRequest::Inspect { network } => {
            let n = ipam::resolve(&svc.networks, &network)?;
            let services: Vec<_> = svc.records.values().map(|r| &r.service).collect();
            let tasks = svc.tasks.all();
            let hostname = |id: &NodeId| nodes.iter().find(|r| &r.id == id).map(|r| r.description.hostname.clone());
            let mut inspect = netview::inspect(n, &services, tasks, hostname);
            if n.ingress && ipam::mesh_active(services.iter().copied()) {
                // `ingress` exists on every board of the routing mesh, task or not.
                let cluster = super::reconcile::cluster_nodes(mgr).map_err(internal)?;
                let mut names: Vec<_> = inspect.nodes.iter().cloned().collect();
                names.extend(
                    mesh_members(nodes, &cluster)
                        .keys()
                        .filter_map(|id| nodes.iter().find(|r| &r.id == id))
                        .map(|r| r.description.hostname.clone()),
                );
                names.sort();
                names.dedup();
                names.truncate(shoal_proto::networks::MAX_INSPECT_TASKS);
                inspect.nodes = names.try_into().map_err(internal)?;
            }
            Ok(NetworkReply::Network(Box::new(inspect)))
        }
        NetworkRequest::Remove { network } => {
            let n = ipam::resolve(&svc.networks, &network)?.clone();
            let services: Vec<_> = svc.records.values().map(|r| r.service.clone()).collect();
            let tasks = svc.tasks.all();
            ipam::check_remove(&n, &services, tasks)?;
            mgr.store.remove_network(&n.id).map_err(internal)?;
            svc.networks.retain(|x| x.id != n.id);
            info!(name = %n.spec.name, id = %n.id, "network removed");
            Ok(NetworkReply::Removed(n.id))
        }
    }
}

/// The routing mesh's boards now: while some service publishes an ingress-mode port, the
/// Ready, non-drained workers, each with its address on `ingress` (given here the first
/// time, from [`ipam::board_addresses`], and stored in its node record). Also every
/// address the node records hold, which no task may be given.
pub(super) fn mesh_boards(
    store: &Store,
    svc: &ServiceState,
    nodes: &[crate::core::placement::ClusterNode],
) -> Result<(BTreeMap<NodeId, Ipv4Addr>, Vec<Ipv4Addr>), crate::store::StoreError> {
    let shared = store.nodes_shared()?;
    // Copied only if a board is given its address now.
    let mut records = std::borrow::Cow::Borrowed(&*shared);
    let mut held: Vec<Ipv4Addr> = records.iter().filter_map(|r| r.ingress_address).collect();
    let services: Vec<_> = svc.records.values().map(|r| &r.service).collect();
    let Some(ingress) = svc.networks.iter().find(|n| n.ingress) else { return Ok((BTreeMap::new(), held)) };
    if !ipam::mesh_active(services.iter().copied()) {
        return Ok((BTreeMap::new(), held));
    }
    let eligible = mesh_eligible(nodes);
    let wanted: Vec<NodeId> = records
        .iter()
        .filter(|r| r.ingress_address.is_none() && eligible.contains(&&r.id))
        .map(|r| r.id.clone())
        .collect();
    for (id, address) in ipam::board_addresses(ingress, &services, svc.tasks.all(), &held, &wanted) {
        // Only this field, in the store's own transaction: the operator or the node's
        // session may be writing the same record meanwhile, or removing it.
        let Some(stored) = store.update_node(&id, |r| {
            r.ingress_address.get_or_insert(address);
        })?
        else {
            continue;
        };
        if stored.ingress_address == Some(address) {
            info!(node = %id, %address, "node joins the routing mesh");
        }
        held.extend(stored.ingress_address.filter(|a| !held.contains(a)));
        if let Some(r) = records.to_mut().iter_mut().find(|r| r.id == id) {
            *r = stored;
        }
    }
    Ok((mesh_members(&records, nodes), held))
}

/// The nodes that serve the routing mesh while it is active: Ready, non-drained workers.
fn mesh_eligible(nodes: &[crate::core::placement::ClusterNode]) -> Vec<&NodeId> {
    nodes
        .iter()
        .filter(|n| {
            n.role == shoal_proto::Role::Worker
                && n.status == shoal_proto::NodeStatus::Ready
                && n.availability != shoal_proto::Availability::Drain
        })
        .map(|n| &n.id)
        .collect()
}

/// The mesh's boards among `records`: the eligible ones that hold an ingress address.
fn mesh_members(records: &[NodeRecord], nodes: &[crate::core::placement::ClusterNode]) -> BTreeMap<NodeId, Ipv4Addr> {
    let eligible = mesh_eligible(nodes);
    records
        .iter()
        .filter(|r| eligible.contains(&&r.id))
        .filter_map(|r| Some((r.id.clone(), r.ingress_address?)))
        .collect()
}

/// Brings encrypted networks' keys to `now` (new networks get one, rotations step on);
/// returns when the next rotation step is due. Keys are never logged.
pub(super) fn step_keys(svc: &mut ServiceState, now: shoal_core::Millis) -> Option<shoal_core::Millis> {
    let mut random = || shoal_link::random::<32>();
    let (changed, next) = svc.keys.step(now, &svc.networks, &mut random);
    if changed {
        info!("encrypted networks' keys changed");
    }
    next
}

/// The views that changed since last queued, per node with a session, as messages; the
/// sessions remember them as queued. `mesh`: [`mesh_boards`].
pub(super) fn changed_views(
    svc: &ServiceState,
    st: &mut State,
    mesh: &BTreeMap<NodeId, Ipv4Addr>,
) -> Vec<(NodeId, Vec<ManagerMessage>)> {
    let underlay: HashMap<NodeId, std::net::IpAddr> =
        st.sessions.iter().map(|(id, s)| (id.clone(), s.underlay)).collect();
    let services: Vec<_> = svc.records.values().map(|r| &r.service).collect();
    // Only tasks with an address on some network appear in a view (as the board's own,
    // a peer, a name or a mesh backend): the others are left out once here rather than
    // skipped again for every board, which made each pass cost boards × tasks.
    // Borrowed: a clone made each pass copy every task with a network.
    let tasks: Vec<&shoal_proto::Task> = svc.tasks.values().filter(|t| !t.networks.is_empty()).collect();
    let mut out = Vec::new();
    for (node, session) in st.sessions.iter_mut() {
        let view = netview::node_view(node, &svc.networks, &services, &tasks, &underlay);
        let mut view = netview::with_mesh(node, view, &svc.networks, &services, &tasks, &underlay, mesh);
        netkeys::fill(&mut view, &svc.keys);
        if session.view.as_ref() != Some(&view) {
            session.view = Some(view.clone());
            out.push((node.clone(), netview::messages(view)));
        }
    }
    out
}
