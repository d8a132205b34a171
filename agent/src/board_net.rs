//! The manager's word on networks, applied to this board: the tasks assigned here
//! (whose `networks` say which overlays their containers join, with which address)
//! and the manager's view of each network present here (peers, names, virtual IPs)
//! make one [`BoardNetworks`], which the network plane applies whole
//! ([`crate::net::plane`]).
//!
//! [`desired`] is that translation, pure. [`BoardNet`] keeps the latest of both inputs
//! across chunks and sessions and re-applies after each change: the assignments first,
//! so an overlay exists before a container of it is prepared; the views then add peers
//! and names once tasks run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use shoal_proto::dispatch::Assignment;
use shoal_proto::networks::{AttachmentConfig, NetworkView, NodeNetworks};
use shoal_proto::TaskId;
use tracing::{debug, warn};

use crate::net::dns::Resolver;
use crate::net::nft::L4;
use crate::net::plane::{
    Attachment, BoardNetworks, BoardSide, Mesh, MeshPort, NetworkDef, NetworkPlane, PlaneError, ServiceNames, TaskName,
};
use crate::net::xfrm::{EspKey, NetworkKeys};
use crate::net::{Network, Subnet};

/// The underlay MTU assumed for overlays (Ethernet's).
pub const UNDERLAY_MTU: u32 = 1500;

/// One local task's container and the networks it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTask {
    /// Its container's ID.
    pub container: String,
    /// Its attachments, in interface order.
    pub networks: Vec<AttachmentConfig>,
}

impl LocalTask {
    /// The local task of an assignment.
    pub fn of(a: &Assignment) -> Self {
        Self {
            container: crate::supervisor::core::container_id(&a.service_name, a.slot, a.task_id.as_str()),
            networks: a.networks.to_vec(),
        }
    }
}

fn subnet(s: &shoal_proto::networks::Subnet) -> Option<Subnet> {
    Subnet::new(s.addr(), s.prefix()).ok()
}

/// What this board should have, from the manager's views of its networks and the tasks
/// assigned to it. A network a local task joins is present even before its view
/// arrives; peers are IPv4 boards only (a board reached over IPv6 is not a VXLAN peer
/// yet).
pub fn desired(views: &[NetworkView], local: &BTreeMap<TaskId, LocalTask>) -> BoardNetworks {
    let mut d = BoardNetworks::default();
    for t in local.values() {
        for c in &t.networks {
            let Some(subnet) = subnet(&c.subnet) else { continue };
            let id = c.network_id.to_string();
            d.networks.entry(id.clone()).or_insert(NetworkDef {
                id: id.clone(),
                vni: c.vni,
                subnet,
                gateway: c.gateway,
                encrypted: c.encrypted,
            });
            d.attachments.entry(t.container.clone()).or_default().push(Attachment { network: id, address: c.address });
        }
    }
    for v in views {
        let Some(subnet) = subnet(&v.subnet) else { continue };
        let id = v.id.to_string();
        d.networks.insert(
            id.clone(),
            NetworkDef { id: id.clone(), vni: v.vni, subnet, gateway: v.gateway, encrypted: v.encrypted },
        );
        for p in v.peers.iter() {
            let board = match p.underlay {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(ip) => ip.to_ipv4_mapped(),
            };
            if let Some(board) = board {
                d.peers.insert(p.address, board);
            }
        }
        for (i, s) in v.services.iter().enumerate() {
            let tasks = v
                .tasks
                .iter()
                .filter(|t| usize::from(t.service) == i)
                .map(|t| TaskName { name: t.name.to_string(), id: t.task_id.to_string(), address: t.address })
                .collect();
            d.names.push(ServiceNames { network: id.clone(), service: s.name.to_string(), vip: s.vip, tasks });
        }
        for (vip, backends) in v.vip_backends() {
            d.vips.entry(vip).or_insert_with(BTreeSet::new).extend(backends);
        }
        if let Some(address) = v.board_address {
            d.mesh = Some(mesh(&id, address, v));
        }
        if let (true, Some(keys)) = (v.encrypted, &v.keys) {
            d.keys.insert(id.clone(), network_keys(keys));
        }
    }
    d
}

/// The routing mesh of a view that gives this board an address (`ingress`'s).
fn mesh(network: &str, address: Ipv4Addr, v: &NetworkView) -> Mesh {
    let ports = v
        .published
        .iter()
        .map(|p| MeshPort {
            proto: match p.protocol {
                shoal_proto::Protocol::Tcp => L4::Tcp,
                shoal_proto::Protocol::Udp => L4::Udp,
            },
            port: p.published,
            // A target port of 0 can't be sent to: such a backend is left out.
            backends: p.backends.iter().filter(|b| b.port != 0).map(|b| SocketAddrV4::new(b.address, b.port)).collect(),
        })
        .filter(|p| p.port != 0)
        .collect();
    Mesh { network: network.to_owned(), address, ports }
}

/// An encrypted network's keys as the plane takes them.
fn network_keys(k: &shoal_proto::networks::OverlayKeys) -> NetworkKeys {
    let key = |k: &shoal_proto::networks::OverlayKey| EspKey { id: k.id, secret: k.secret };
    NetworkKeys { send: key(&k.send), accept: k.accept.as_ref().map(key) }
}

/// What [`BoardNet`] remembers between messages.
#[derive(Default)]
struct State {
    plane: Option<NetworkPlane>,
    views: Vec<NetworkView>,
    /// A view arriving in chunks.
    views_pending: Vec<NetworkView>,
    local: BTreeMap<TaskId, LocalTask>,
    /// A full set of assignments arriving in chunks.
    local_pending: Option<BTreeMap<TaskId, LocalTask>>,
}

/// This board's networks as the manager describes them, applied through the plane.
pub struct BoardNet {
    network: Arc<Network>,
    resolver: Option<Arc<Resolver>>,
    state: tokio::sync::Mutex<State>,
}

impl BoardNet {
    /// For the board's container `network`, feeding `resolver` (none if it could not start).
    /// Must be called inside a tokio runtime: it watches containers joining overlays
    /// ([`Network::watch_joins`]) to give each its load balancer before it starts.
    pub fn new(network: Arc<Network>, resolver: Option<Arc<Resolver>>) -> Arc<Self> {
        let mut joins = network.watch_joins();
        let me = Arc::new(Self { network, resolver, state: tokio::sync::Mutex::new(State::default()) });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            while let Some(joined) = joins.recv().await {
                let Some(me) = weak.upgrade() else { break };
                let refused = me.joined(&joined.container).await;
                let _ = joined.done.send(refused);
            }
        });
        me
    }

    /// A container joined its overlays: the last desired state is applied again, which
    /// now knows its sandbox (resolver client, load balancer). Returns why the container
    /// can't run here, if the board can't ever set it up.
    async fn joined(&self, container: &str) -> Option<String> {
        let mut st = self.state.lock().await;
        debug!(container, "container joined its overlays");
        self.apply(&mut st).await.err().as_ref().and_then(refusal)
    }

    /// A session is open and VXLAN packets leave from `underlay`: the plane is made the
    /// first time (it lives as long as the agent).
    pub async fn connected(&self, underlay: Ipv4Addr) {
        self.network.set_underlay(underlay);
        let mut st = self.state.lock().await;
        if st.plane.is_none() {
            let config = self.network.config();
            let board = BoardSide {
                underlay,
                underlay_mtu: UNDERLAY_MTU,
                bridge_subnet: config.subnet,
                bridge: config.name.clone(),
            };
            st.plane = Some(NetworkPlane::new(board, self.resolver.clone()).with_sandboxes(config.netns_dir.clone()));
        }
        let _ = self.apply(&mut st).await; // logged; retried with the next change
    }

    /// Assignments from the manager, as the supervisor gets them.
    pub async fn assignments(&self, full: bool, more: bool, upsert: &[Assignment], remove: &[TaskId]) {
        let mut st = self.state.lock().await;
        if full {
            let set = st.local_pending.get_or_insert_with(BTreeMap::new);
            set.extend(upsert.iter().map(|a| (a.task_id.clone(), LocalTask::of(a))));
            if more {
                return;
            }
            st.local = st.local_pending.take().unwrap_or_default();
        } else {
            st.local.extend(upsert.iter().map(|a| (a.task_id.clone(), LocalTask::of(a))));
            for id in remove {
                st.local.remove(id);
            }
        }
        let _ = self.apply(&mut st).await; // logged; retried with the next change
    }

    /// A (chunk of the) manager's view of this board's networks.
    pub async fn view(&self, chunk: NodeNetworks) {
        let mut st = self.state.lock().await;
        st.views_pending.extend(chunk.networks.into_vec());
        if chunk.more {
            return;
        }
        st.views = std::mem::take(&mut st.views_pending);
        let _ = self.apply(&mut st).await; // logged; retried with the next change
    }

    async fn apply(&self, st: &mut State) -> Result<(), PlaneError> {
        let Some(plane) = &st.plane else { return Ok(()) };
        let want = desired(&st.views, &st.local);
        let bridge: BTreeMap<String, Ipv4Addr> =
            want.attachments.keys().filter_map(|cid| self.network.sandbox(cid).map(|s| (cid.clone(), s.ip))).collect();
        match plane.apply(&want, &bridge).await {
            Ok(plan) if !plan.is_empty() => debug!(?plan, "board networks applied"),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot apply this board's networks; retrying with the next change");
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Whether a failed apply means containers on overlays can't work on this board at all
/// (the kernel lacks nf_tables or a part of it), and then the task's error.
fn refusal(e: &PlaneError) -> Option<String> {
    match e {
        PlaneError::Nft(n) if n.is_unsupported() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::networks::{NetworkId, Peer, ServiceEntry, TaskEntry};

    fn net_subnet(third: u8) -> shoal_proto::networks::Subnet {
        shoal_proto::networks::Subnet::new(Ipv4Addr::new(10, 0, third, 0), 24).unwrap()
    }

    #[test]
    fn only_a_kernel_without_nf_tables_fails_a_joining_container() {
        use crate::net::nft::NftError;
        let missing = PlaneError::Nft(NftError::NoNfTables { detail: "no NETLINK_NETFILTER sockets".into() });
        let why = refusal(&missing).expect("a board without nf_tables refuses the container");
        assert!(why.contains("CONFIG_NF_TABLES"), "{why}");
        let e = crate::net::NetError::Unsupported(why);
        assert!(e.to_string().starts_with("this board can't set up the container's service VIPs"), "{e}");
        // Passing trouble (a busy kernel, a contradiction in the state) is retried, not
        // pinned on the task.
        assert_eq!(refusal(&PlaneError::Invalid("x".into())), None);
        let denied = PlaneError::Nft(NftError::PermissionDenied { what: "x".into() });
        assert_eq!(refusal(&denied), None);
    }

    #[test]
    fn views_and_assignments_make_one_desired_state() {
        let id = NetworkId::from_random([3; 16]);
        let task = TaskId::from_random([4; 16]);
        let config = AttachmentConfig {
            network_id: id.clone(),
            vni: 4097,
            subnet: net_subnet(1),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            address: Ipv4Addr::new(10, 0, 1, 2),
            encrypted: false,
            ingress: false,
        };
        let local = BTreeMap::from([(task.clone(), LocalTask { container: "web.1.x".into(), networks: vec![config] })]);
        // Before any view: the network and the attachment, nothing else.
        let d = desired(&[], &local);
        assert_eq!(d.networks[id.as_str()].vni, 4097);
        assert_eq!(d.attachments["web.1.x"][0].address, Ipv4Addr::new(10, 0, 1, 2));
        assert!(d.peers.is_empty() && d.names.is_empty());

        let mut view = NetworkView {
            id: id.clone(),
            name: shoal_proto::text("atsea").unwrap(),
            vni: 4097,
            subnet: net_subnet(1),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            encrypted: false,
            peers: Default::default(),
            services: Default::default(),
            tasks: Default::default(),
            truncated: false,
            board_address: None,
            published: Default::default(),
            keys: None,
        };
        let _ =
            view.peers.push(Peer { address: Ipv4Addr::new(10, 0, 1, 3), underlay: "192.168.1.12".parse().unwrap() });
        let _ = view
            .peers
            .push(Peer { address: Ipv4Addr::new(10, 0, 1, 4), underlay: "::ffff:192.168.1.13".parse().unwrap() });
        let _ = view.services.push(ServiceEntry {
            name: shoal_proto::text("db").unwrap(),
            endpoint_mode: shoal_proto::EndpointMode::Dnsrr,
            vip: None,
        });
        let _ = view.tasks.push(TaskEntry {
            service: 0,
            name: shoal_proto::text("db.1.y").unwrap(),
            task_id: TaskId::from_random([5; 16]),
            address: Ipv4Addr::new(10, 0, 1, 3),
        });
        let d = desired(&[view], &local);
        assert_eq!(d.peers.len(), 2, "IPv4-mapped underlays count as IPv4");
        assert_eq!(d.peers[&Ipv4Addr::new(10, 0, 1, 4)], Ipv4Addr::new(192, 168, 1, 13));
        assert_eq!(d.names.len(), 1);
        assert_eq!(d.names[0].tasks[0].name, "db.1.y");
        assert_eq!(d.attachments.len(), 1);
        assert!(d.keys.is_empty());
    }

    #[test]
    fn an_encrypted_networks_keys_reach_the_plane() {
        let id = NetworkId::from_random([3; 16]);
        let key = |id: u32, b: u8| shoal_proto::networks::OverlayKey { id, secret: [b; 32] };
        let view = NetworkView {
            id: id.clone(),
            name: shoal_proto::text("secure").unwrap(),
            vni: 4097,
            subnet: net_subnet(1),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            encrypted: true,
            peers: Default::default(),
            services: Default::default(),
            tasks: Default::default(),
            truncated: false,
            board_address: None,
            published: Default::default(),
            keys: Some(shoal_proto::networks::OverlayKeys { send: key(2, 2), accept: Some(key(1, 1)) }),
        };
        let d = desired(std::slice::from_ref(&view), &BTreeMap::new());
        let k = &d.keys[id.as_str()];
        assert_eq!((k.send.id, k.send.secret), (2, [2; 32]));
        assert_eq!(k.accept.as_ref().map(|k| k.id), Some(1));
        // Keys for a network not marked encrypted are ignored.
        let d = desired(&[NetworkView { encrypted: false, ..view }], &BTreeMap::new());
        assert!(d.keys.is_empty());
    }

    #[test]
    fn a_view_with_a_board_address_makes_the_mesh() {
        use shoal_proto::networks::{MeshBackend, MeshPort as WirePort};
        let id = NetworkId::from_random([9; 16]);
        let mut view = NetworkView {
            id: id.clone(),
            name: shoal_proto::text("ingress").unwrap(),
            vni: 4097,
            subnet: net_subnet(0),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            encrypted: false,
            peers: Default::default(),
            services: Default::default(),
            tasks: Default::default(),
            truncated: false,
            board_address: Some(Ipv4Addr::new(10, 0, 0, 254)),
            published: Default::default(),
            keys: None,
        };
        let backends = vec![
            MeshBackend { address: Ipv4Addr::new(10, 0, 0, 3), port: 8000 },
            // Hostile: a target port of 0 can't be DNATed to; it is left out.
            MeshBackend { address: Ipv4Addr::new(10, 0, 0, 4), port: 0 },
        ];
        let _ = view.published.push(WirePort {
            protocol: shoal_proto::Protocol::Tcp,
            published: 8000,
            backends: backends.try_into().unwrap(),
        });
        // No local task: the network is still there, with the mesh.
        let d = desired(&[view], &BTreeMap::new());
        assert!(d.networks.contains_key(id.as_str()) && d.attachments.is_empty());
        let mesh = d.mesh.unwrap();
        assert_eq!((mesh.network.as_str(), mesh.address), (id.as_str(), Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(mesh.ports.len(), 1);
        assert_eq!(mesh.ports[0].backends, vec![SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 8000)]);
    }
}
