//! `shoal network ...` requests and the boards' network views: the shell around
//! [`crate::core::ipam`] and [`crate::core::netview`]. The ingress network is made at the
//! first start of a manager whose store has none. A board's view is recomputed after each
//! reconciliation and queued only when it differs from the one last queued for its
//! session; a new session starts with none, so it gets its view at the next pass.

use std::collections::HashMap;

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
            let tasks: Vec<_> = svc.tasks.values().cloned().collect();
            let hostname = |id: &NodeId| nodes.iter().find(|r| &r.id == id).map(|r| r.description.hostname.clone());
            Ok(NetworkReply::Network(Box::new(netview::inspect(n, &services, &tasks, hostname))))
        }
        NetworkRequest::Remove { network } => {
            let n = ipam::resolve(&svc.networks, &network)?.clone();
            let services: Vec<_> = svc.records.values().map(|r| r.service.clone()).collect();
            let tasks: Vec<_> = svc.tasks.values().cloned().collect();
            ipam::check_remove(&n, &services, &tasks)?;
            mgr.store.remove_network(&n.id).map_err(internal)?;
            svc.networks.retain(|x| x.id != n.id);
            info!(name = %n.spec.name, id = %n.id, "network removed");
            Ok(NetworkReply::Removed(n.id))
        }
    }
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
/// sessions remember them as queued.
pub(super) fn changed_views(svc: &ServiceState, st: &mut State) -> Vec<(NodeId, Vec<ManagerMessage>)> {
    let underlay: HashMap<NodeId, std::net::IpAddr> =
        st.sessions.iter().map(|(id, s)| (id.clone(), s.underlay)).collect();
    let services: Vec<_> = svc.records.values().map(|r| &r.service).collect();
    let tasks: Vec<_> = svc.tasks.values().cloned().collect();
    let mut out = Vec::new();
    for (node, session) in st.sessions.iter_mut() {
        let mut view = netview::node_view(node, &svc.networks, &services, &tasks, &underlay);
        netkeys::fill(&mut view, &svc.keys);
        if session.view.as_ref() != Some(&view) {
            session.view = Some(view.clone());
            out.push((node.clone(), netview::messages(view)));
        }
    }
    out
}
