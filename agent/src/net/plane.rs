//! The board's network plane: what the manager wants of this board's overlay networks
//! ([`BoardNetworks`], one whole desired state) turned into kernel state and resolver
//! state by [`NetworkPlane::apply`], which diffs against what it applied last.
//!
//! - An overlay (VXLAN device and bridge, [`overlay`]) exists for a network only while
//!   a container of this board is attached to it; it goes with the last one.
//! - Each overlay's forwarding and neighbour entries are the network's containers on
//!   other boards ([`overlay::set_peers`]).
//! - The resolver gets the names of every network and, per container (by its bridge
//!   address), the networks it may see.
//! - nf_tables gets one ruleset, in one batch: outbound masquerade of the bridge subnet.
//! - Each local container on an overlay gets its own load balancer, in its own network
//!   namespace ([`nft::SandboxRuleset`]): the VIPs of its networks, each a port-less DNAT
//!   spread over the service's running tasks, or refused when none runs. Only containers
//!   whose VIPs changed get a new batch.
//! - The ingress routing mesh ([`Mesh`]), when the board is in it: the `ingress`
//!   overlay exists even without a local container, its bridge carries the board's own
//!   address, each published port is DNATed from any local address to its backends, and
//!   what leaves through that bridge is masqueraded to the board's address.
//!
//! [`target`] and [`diff`] are the whole decision, pure; [`NetworkPlane`] performs the
//! [`Plan`] in the network namespace of the calling thread. Not here: attaching
//! containers (the supervisor does that with [`overlay::join`] when it makes their
//! sandbox).
//!
//! Encrypted networks ([`NetworkDef::encrypted`]) get their own VXLAN port and IPsec
//! between this board and each peer board, with the manager's keys ([`BoardNetworks::keys`]):
//! see [`super::xfrm`]. Their policies are applied before any overlay is made, so no
//! packet of theirs ever leaves in the clear.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use super::dns::names::Names;
use super::dns::{self, Resolver};
use super::nft::{self, Destination, Masquerade, NftError, Ruleset, RulesetError, SandboxRuleset, Service, L4};
use super::overlay::{self, Overlay, Peer};
use super::xfrm::{self, XfrmError};
use super::{NetError, Sandbox, Subnet};

/// At most this many networks on one board (each is two interfaces).
pub const MAX_NETWORKS: usize = 256;

/// One network present on this board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// The network's ID (what attachments and names refer to).
    pub id: String,
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// Its subnet.
    pub subnet: Subnet,
    /// Its gateway address (reserved in the subnet; no board carries it).
    pub gateway: Ipv4Addr,
    /// Whether traffic between boards is encrypted (IPsec, [`super::xfrm`]).
    pub encrypted: bool,
}

/// One local container's place on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The network's ID.
    pub network: String,
    /// The container's address on it.
    pub address: Ipv4Addr,
}

/// One of a container's overlay networks, as it joins it ([`join_container`]): the
/// network, the overlay's devices and the container's address on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAttachment {
    /// The network's ID.
    pub network: String,
    /// The overlay (VNI, subnet, MTU).
    pub overlay: Overlay,
    /// The container's address on it.
    pub address: Ipv4Addr,
}

/// Joins a container's sandbox to each of its overlay networks, as `eth1`, `eth2`, …
/// in order (its `eth0` is the bridge). The overlays must exist ([`NetworkPlane::apply`]
/// makes them before the container is prepared). The veths go with the sandbox's
/// namespace.
pub async fn join_container(sandbox: &Sandbox, attachments: &[NetworkAttachment]) -> Result<(), (String, NetError)> {
    for (i, at) in attachments.iter().enumerate() {
        let host = attachment_veth(&sandbox.container_id, &at.network);
        overlay::join(&at.overlay, &host, &sandbox.netns_path, &format!("eth{}", i + 1), at.address)
            .await
            .map_err(|e| (at.network.clone(), e))?;
    }
    Ok(())
}

/// The host end of a container's veth on an overlay: `so` and 12 hex digits of a hash
/// of container and network (Linux's 15-byte limit holds for any IDs).
pub fn attachment_veth(container_id: &str, network: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{container_id}/{network}").as_bytes());
    format!("so{}", shoal_proto::hex(&digest.as_ref()[..6]))
}

/// A running task as the resolver names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskName {
    /// `web.1.<id>`.
    pub name: String,
    /// The task's ID.
    pub id: String,
    /// Its address on the network.
    pub address: Ipv4Addr,
}

/// A service's names on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNames {
    /// The network's ID.
    pub network: String,
    /// The service's name.
    pub service: String,
    /// Its virtual IP (endpoint mode `vip`); `None` for `dnsrr`.
    pub vip: Option<Ipv4Addr>,
    /// Its running tasks.
    pub tasks: Vec<TaskName>,
}

/// Everything this board should have of the cluster's overlay networks. Applying one
/// replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardNetworks {
    /// The networks present on this board, by ID.
    pub networks: BTreeMap<String, NetworkDef>,
    /// The local containers' attachments, by container ID, in interface order (`eth1`, …).
    pub attachments: BTreeMap<String, Vec<Attachment>>,
    /// Containers on other boards: overlay address → underlay address of their board.
    pub peers: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// The names containers may resolve.
    pub names: Vec<ServiceNames>,
    /// Virtual IPs → the addresses of the service's running tasks.
    pub vips: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>>,
    /// The routing mesh, when this board is part of it.
    pub mesh: Option<Mesh>,
    /// Encrypted networks' keys, by network ID (from the manager; never logged).
    pub keys: BTreeMap<String, xfrm::NetworkKeys>,
}

/// The routing mesh on this board: the network (`ingress`) exists here even without a
/// local container, its bridge carries the board's own address, and each published
/// port answers on every local address, DNATed to its backends over the overlay and
/// masqueraded to the board's address on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// The network's ID.
    pub network: String,
    /// This board's address on it.
    pub address: Ipv4Addr,
    /// The published ports.
    pub ports: Vec<MeshPort>,
}

/// One port published through the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPort {
    /// TCP or UDP.
    pub proto: L4,
    /// The port every board answers on.
    pub port: u16,
    /// The running tasks: ingress address and target port (none: the port is closed).
    pub backends: Vec<SocketAddrV4>,
}

/// What the plane needs to know of the board itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardSide {
    /// This board's underlay address (VXLAN packets leave from it).
    pub underlay: Ipv4Addr,
    /// The underlay's MTU (usually 1500).
    pub underlay_mtu: u32,
    /// The container bridge's subnet (masqueraded outbound).
    pub bridge_subnet: Subnet,
    /// The container bridge's name.
    pub bridge: String,
}

/// Why a desired state can't be applied. Nothing is changed when it is refused.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The desired state contradicts itself.
    #[error("board networks refused: {0}")]
    Invalid(String),
    /// An overlay can't be set up or removed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The NAT ruleset can't be made.
    #[error("the board's NAT rules: {0}")]
    Ruleset(#[from] RulesetError),
    /// The kernel refused the NAT rules.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// The IPsec state of encrypted networks can't be made.
    #[error(transparent)]
    Xfrm(#[from] XfrmError),
}

/// The state the kernel and the resolver should be in, derived from a desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Overlays that exist, by network ID.
    pub overlays: BTreeMap<String, Overlay>,
    /// Each overlay's peers (local containers are not peers).
    pub peers: BTreeMap<String, BTreeSet<Peer>>,
    /// The resolver's names.
    pub names: Names,
    /// The resolver's clients: container bridge address → its networks.
    pub clients: BTreeMap<Ipv4Addr, Vec<String>>,
    /// The NAT ruleset.
    pub ruleset: Ruleset,
    /// Each local container's own load balancer (containers with a sandbox only), by
    /// container ID.
    pub sandboxes: BTreeMap<String, SandboxRuleset>,
    /// The board's own address on an overlay's bridge (the mesh's), by network ID.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// The IPsec SAs and policies of encrypted networks.
    pub xfrm: xfrm::Desired,
}

/// What one apply does, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Overlays to make (or check).
    pub ensure: Vec<Overlay>,
    /// Overlays whose peers to set (newly made ones included).
    pub peers: Vec<(Overlay, Vec<Peer>)>,
    /// Overlays to delete.
    pub remove: Vec<Overlay>,
    /// New names for the resolver.
    pub names: Option<Names>,
    /// New clients for the resolver.
    pub clients: Option<BTreeMap<Ipv4Addr, Vec<String>>>,
    /// A new NAT ruleset.
    pub ruleset: Option<Ruleset>,
    /// Containers whose load balancer to replace, with the new one.
    pub sandboxes: Vec<(String, SandboxRuleset)>,
    /// Bridges to give the board's address (after `ensure`, before the ruleset).
    pub addresses: Vec<(Overlay, Ipv4Addr)>,
    /// New IPsec state (done first).
    pub xfrm: Option<xfrm::Desired>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// What `desired` means for this board, given the bridge address of each local container
/// (`bridge_addresses`, from its sandbox; containers without one get no resolver entry
/// yet). Refuses contradictions: attachments to unknown networks, addresses outside
/// their network, two networks with one VNI or overlapping subnets.
pub fn target(
    desired: &BoardNetworks,
    board: &BoardSide,
    bridge_addresses: &BTreeMap<String, Ipv4Addr>,
) -> Result<Target, PlaneError> {
    let invalid = |m: String| Err(PlaneError::Invalid(m));
    if desired.networks.len() > MAX_NETWORKS {
        return invalid(format!("{} networks on one board, at most {MAX_NETWORKS}", desired.networks.len()));
    }
    let mut overlays_all = BTreeMap::new();
    let mut vnis = BTreeMap::new();
    for (id, n) in &desired.networks {
        if *id != n.id {
            return invalid(format!("network {id} is listed under another ID ({})", n.id));
        }
        if let Some(other) = vnis.insert(n.vni, id) {
            return invalid(format!("networks {other} and {id} share VNI {}", n.vni));
        }
        if let Some((other, _)) = overlays_all.iter().find(|(_, o): &(&String, &Overlay)| {
            o.subnet.contains(n.subnet.network()) || n.subnet.contains(o.subnet.network())
        }) {
            return invalid(format!("networks {other} and {id} have overlapping subnets"));
        }
        let o = Overlay::new(n.vni, n.subnet, board.underlay_mtu)
            .map_err(|e| PlaneError::Invalid(format!("network {id}: {e}")))?;
        let o = encrypted_overlay(&overlays_all, id, n, o)?;
        overlays_all.insert(id.clone(), o);
    }

    let mut overlays = BTreeMap::new();
    let mut local = BTreeSet::new();
    let mut clients = BTreeMap::new();
    let mut sandboxes = BTreeMap::new();
    for (cid, atts) in &desired.attachments {
        let mut nets = Vec::new();
        for a in atts {
            let Some(o) = overlays_all.get(&a.network) else {
                return invalid(format!("container {cid} is attached to unknown network {}", a.network));
            };
            if !o.subnet.contains(a.address) {
                return invalid(format!(
                    "container {cid} has address {} outside network {} ({})",
                    a.address, a.network, o.subnet
                ));
            }
            if nets.contains(&a.network) {
                return invalid(format!("container {cid} is attached to network {} twice", a.network));
            }
            if !local.insert(a.address) {
                return invalid(format!("address {} is given to two local containers", a.address));
            }
            overlays.insert(a.network.clone(), *o);
            nets.push(a.network.clone());
        }
        if let Some(ip) = bridge_addresses.get(cid) {
            sandboxes.insert(cid.clone(), sandbox_table(desired, &overlays_all, &nets)?);
            clients.insert(*ip, nets);
        }
    }

    let mut addresses = BTreeMap::new();
    if let Some(m) = &desired.mesh {
        let Some(o) = overlays_all.get(&m.network) else {
            return invalid(format!("the routing mesh is on unknown network {}", m.network));
        };
        if !o.subnet.contains(m.address) {
            return invalid(format!(
                "the board's mesh address {} is outside network {} ({})",
                m.address, m.network, o.subnet
            ));
        }
        if !local.insert(m.address) {
            return invalid(format!("the board's mesh address {} is also a local container's", m.address));
        }
        overlays.insert(m.network.clone(), *o);
        addresses.insert(m.network.clone(), m.address);
    }

    let mut peers: BTreeMap<String, BTreeSet<Peer>> = overlays.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    for (ip, board_ip) in &desired.peers {
        if local.contains(ip) {
            continue;
        }
        // Peers of networks not on this board are not needed here.
        if let Some((id, _)) = overlays.iter().find(|(_, o)| o.subnet.contains(*ip)) {
            if let Some(set) = peers.get_mut(id) {
                set.insert(Peer { ip: *ip, board: *board_ip });
            }
        }
    }

    let mut names = Names::default();
    for s in &desired.names {
        names.add_service(&s.network, &s.service, s.vip);
        for t in &s.tasks {
            names.add_task(&s.network, &s.service, &t.name, &t.id, t.address);
        }
    }

    // VIPs are not DNATed here: the board has no route into an overlay, so each
    // container balances its own connections (`sandboxes`).
    let mut ruleset = Ruleset {
        masquerades: vec![Masquerade { source: board.bridge_subnet, except_out: board.bridge.clone() }],
        services: Vec::new(),
        masquerade_via: Vec::new(),
    };
    if let Some(m) = &desired.mesh {
        ruleset.masquerade_via.push(overlays[&m.network].bridge());
        // A port with no running task matches nothing: connections are refused.
        for p in m.ports.iter().filter(|p| !p.backends.is_empty()) {
            ruleset.services.push(Service {
                destination: Destination::Local,
                proto: p.proto,
                port: p.port,
                backends: p.backends.clone(),
            });
        }
    }
    ruleset.validate()?;
    let xfrm = xfrm_target(desired, board, &overlays, &peers);
    Ok(Target { overlays, peers, names, clients, ruleset, sandboxes, addresses, xfrm })
}

/// The load balancer of a container attached to `networks`: every VIP inside one of
/// their subnets (a VIP is allocated in its network's subnet), with its backends.
fn sandbox_table(
    desired: &BoardNetworks,
    overlays: &BTreeMap<String, Overlay>,
    networks: &[String],
) -> Result<SandboxRuleset, PlaneError> {
    let subnets: Vec<Subnet> = networks.iter().filter_map(|n| overlays.get(n)).map(|o| o.subnet).collect();
    let vips: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> = desired
        .vips
        .iter()
        .filter(|(vip, _)| subnets.iter().any(|s| s.contains(**vip)))
        .map(|(vip, backends)| (*vip, backends.iter().copied().collect()))
        .collect();
    let table = SandboxRuleset { vips };
    // Refused here, so a bad table never reaches a container's kernel half-applied.
    nft::render::render_sandbox(&table, 0)?;
    Ok(table)
}

/// Network `n`'s overlay `o`, made encrypted if `n` is; two encrypted networks may not
/// share a VXLAN port (their IPsec policies would be one).
fn encrypted_overlay(
    others: &BTreeMap<String, Overlay>,
    id: &str,
    n: &NetworkDef,
    o: Overlay,
) -> Result<Overlay, PlaneError> {
    if !n.encrypted {
        return Ok(o);
    }
    let o = o.encrypted();
    if let Some((other, _)) = others.iter().find(|(_, x)| x.port == o.port) {
        return Err(PlaneError::Invalid(format!(
            "encrypted networks {other} and {id} share VXLAN port {}: remove one of them",
            o.port
        )));
    }
    Ok(o)
}

/// The IPsec state of the encrypted networks that have an overlay here: their peers'
/// boards and their keys.
fn xfrm_target(
    desired: &BoardNetworks,
    board: &BoardSide,
    overlays: &BTreeMap<String, Overlay>,
    peers: &BTreeMap<String, BTreeSet<Peer>>,
) -> xfrm::Desired {
    let nets: Vec<xfrm::EncryptedNetwork> = overlays
        .iter()
        .filter(|(id, _)| desired.networks.get(*id).is_some_and(|n| n.encrypted))
        .map(|(id, o)| xfrm::EncryptedNetwork {
            vni: o.vni,
            port: o.port,
            peers: peers.get(id).map(|p| p.iter().map(|p| p.board).collect()).unwrap_or_default(),
            keys: desired.keys.get(id).cloned(),
        })
        .collect();
    xfrm::desired(board.underlay, &nets)
}

/// What turns `last` (what was applied; `None`: nothing known, so everything is set)
/// into `next`.
pub fn diff(last: Option<&Target>, next: &Target) -> Plan {
    let empty = Target::default();
    let known = last.is_some();
    let last = last.unwrap_or(&empty);
    let mut plan = Plan::default();
    for (id, o) in &next.overlays {
        let changed = last.overlays.get(id) != Some(o);
        if changed || !known {
            plan.ensure.push(*o);
        }
        let wanted = next.peers.get(id).cloned().unwrap_or_default();
        if changed || !known || last.peers.get(id) != Some(&wanted) {
            plan.peers.push((*o, wanted.into_iter().collect()));
        }
    }
    for (id, ip) in &next.addresses {
        let remade = plan.ensure.iter().any(|o| Some(o) == next.overlays.get(id));
        if remade || last.addresses.get(id) != Some(ip) {
            plan.addresses.extend(next.overlays.get(id).map(|o| (*o, *ip)));
        }
    }
    plan.remove = removals(last, next);
    if !known || last.names != next.names {
        plan.names = Some(next.names.clone());
    }
    if !known || last.clients != next.clients {
        plan.clients = Some(next.clients.clone());
    }
    if !known || last.ruleset != next.ruleset {
        plan.ruleset = Some(next.ruleset.clone());
    }
    for (cid, table) in &next.sandboxes {
        if !known || last.sandboxes.get(cid) != Some(table) {
            plan.sandboxes.push((cid.clone(), table.clone()));
        }
    }
    if !known || last.xfrm != next.xfrm {
        plan.xfrm = Some(next.xfrm.clone());
    }
    plan
}

/// What a plane remembers: the target last applied, and whether applying it went
/// through (when not, only its overlays are known to maybe exist).
#[derive(Debug, Default)]
struct Applied {
    target: Option<Target>,
    complete: bool,
    /// The desired state last given, for [`NetworkPlane::reapply`].
    desired: BoardNetworks,
}

/// Starts the containers' resolver on the bridge gateway, port 53, forwarding to the
/// nameservers of `board_conf` (the board's `/etc/resolv.conf`), and says what
/// `/etc/resolv.conf` containers on overlay networks get. Never fails: without the
/// bridge or with port 53 taken there, it logs a warning saying so and returns no
/// resolver, and those containers get the board's reachable nameservers instead.
pub async fn start_resolver(network: &super::Network, board_conf: &str) -> (Option<Arc<Resolver>>, Option<String>) {
    let gateway = network.config().gateway();
    if let Err(e) = network.ensure_bridge().await {
        tracing::warn!(error = %e, "no resolver for containers: the container bridge can't be set up");
        return (None, dns::board_resolv_conf(board_conf));
    }
    match dns::start(gateway, board_conf).await {
        Ok(resolver) => {
            tracing::info!(%gateway, "resolver for containers on overlay networks listening on port 53");
            (Some(resolver), Some(dns::container_resolv_conf(gateway, board_conf)))
        }
        Err(e) => {
            tracing::warn!(
                %gateway,
                error = %e,
                "port 53 on the bridge gateway is not available, so containers keep the board's resolvers and can't resolve service names: stop what listens on {gateway}:53 and restart the agent"
            );
            (None, dns::board_resolv_conf(board_conf))
        }
    }
}

/// The overlays of `last` that `next` no longer has (a network whose subnet changed
/// keeps its devices, made anew by `ensure` only if its VNI changed too).
fn removals(last: &Target, next: &Target) -> Vec<Overlay> {
    last.overlays
        .iter()
        .filter(|(id, o)| next.overlays.get(*id) != Some(*o) && !next.overlays.values().any(|n| n.vni == o.vni))
        .map(|(_, o)| *o)
        .collect()
}

/// Applies desired states to this board, remembering what it applied.
pub struct NetworkPlane {
    board: BoardSide,
    resolver: Option<Arc<Resolver>>,
    last: tokio::sync::Mutex<Applied>,
    /// Where containers' namespaces are pinned (`<dir>/<container ID>`); without it no
    /// container gets a load balancer.
    netns_dir: Option<PathBuf>,
}

impl NetworkPlane {
    /// A plane for `board`, feeding `resolver` (none when it could not be started).
    pub fn new(board: BoardSide, resolver: Option<Arc<Resolver>>) -> Self {
        Self { board, resolver, last: tokio::sync::Mutex::new(Applied::default()), netns_dir: None }
    }

    /// Gives each container on an overlay its load balancer, in its namespace pinned at
    /// `<netns_dir>/<container ID>` (the board's [`super::BridgeConfig::netns_dir`]).
    pub fn with_sandboxes(mut self, netns_dir: PathBuf) -> Self {
        self.netns_dir = Some(netns_dir);
        self
    }

    /// The board as the plane sees it.
    pub fn board(&self) -> &BoardSide {
        &self.board
    }

    /// Makes the board match `desired`, doing only what changed since the last apply.
    /// A refused desired state changes nothing. When a kernel step fails, the steps
    /// before it stay done and the next apply does everything again (every step is
    /// idempotent). Runs in the network namespace of the calling thread.
    pub async fn apply(
        &self,
        desired: &BoardNetworks,
        bridge_addresses: &BTreeMap<String, Ipv4Addr>,
    ) -> Result<Plan, PlaneError> {
        let mut last = self.last.lock().await;
        self.apply_locked(&mut last, desired, bridge_addresses).await
    }

    /// Applies the last desired state again with new bridge addresses: what a container
    /// whose sandbox was made after that state arrived needs to become the resolver's
    /// client. Touches the kernel only if an earlier apply failed.
    pub async fn reapply(&self, bridge_addresses: &BTreeMap<String, Ipv4Addr>) -> Result<Plan, PlaneError> {
        let mut last = self.last.lock().await;
        let desired = last.desired.clone();
        self.apply_locked(&mut last, &desired, bridge_addresses).await
    }

    async fn apply_locked(
        &self,
        last: &mut Applied,
        desired: &BoardNetworks,
        bridge_addresses: &BTreeMap<String, Ipv4Addr>,
    ) -> Result<Plan, PlaneError> {
        let next = target(desired, &self.board, bridge_addresses)?;
        let plan = match (&last.target, last.complete) {
            (Some(t), true) => diff(Some(t), &next),
            (Some(t), false) => Plan { remove: removals(t, &next), ..diff(None, &next) },
            (None, _) => diff(None, &next),
        };
        // Overlays that may exist whatever happens next: the last ones and the new ones.
        let mut maybe = Target::default();
        for t in [last.target.as_ref(), Some(&next)].into_iter().flatten() {
            maybe.overlays.extend(t.overlays.iter().map(|(k, v)| (k.clone(), *v)));
        }
        match self.perform(&plan).await {
            Ok(()) => {
                *last = Applied { target: Some(next), complete: true, desired: desired.clone() };
                Ok(plan)
            }
            Err(e) => {
                *last = Applied { target: Some(maybe), complete: false, desired: desired.clone() };
                Err(e)
            }
        }
    }

    async fn perform(&self, plan: &Plan) -> Result<(), PlaneError> {
        // IPsec first, so an encrypted network's policies stand before its overlay
        // exists. Its failure (a kernel without ESP, say) does not hold back the other
        // networks: it is returned at the end, so the next apply redoes everything.
        let mut failed: Option<XfrmError> = None;
        let mut guarded = true;
        if let Some(want) = &plan.xfrm {
            match xfrm::apply(want) {
                Ok(_) => {}
                // A kernel without IPsec has none of the agent's state to remove.
                Err(XfrmError::NoXfrm) if *want == xfrm::Desired::default() => {}
                Err(e) => {
                    // Without its policies an encrypted overlay would send in the clear:
                    // it is not made. With them and no SAs, its packets are dropped.
                    guarded = xfrm::current().is_ok_and(|(_, have)| want.policies.iter().all(|p| have.contains(p)));
                    failed = Some(e);
                }
            }
        }
        for o in plan.ensure.iter().filter(|o| guarded || o.port == overlay::VXLAN_PORT) {
            overlay::ensure(o, self.board.underlay).await?;
        }
        for (o, ip) in &plan.addresses {
            overlay::set_address(o, *ip).await?;
        }
        for (o, peers) in plan.peers.iter().filter(|(o, _)| guarded || o.port == overlay::VXLAN_PORT) {
            overlay::set_peers(o, peers).await?;
        }
        for o in &plan.remove {
            overlay::remove(o).await?;
        }
        if let Some(resolver) = &self.resolver {
            if let Some(names) = &plan.names {
                resolver.set_names(names.clone());
            }
            if let Some(clients) = &plan.clients {
                resolver.set_clients(clients.iter().map(|(ip, n)| (*ip, n.clone())).collect::<HashMap<_, _>>());
            }
        }
        if let Some(ruleset) = &plan.ruleset {
            nft::apply(ruleset)?;
        }
        if let Some(dir) = &self.netns_dir {
            for (cid, table) in &plan.sandboxes {
                apply_sandbox(&dir.join(cid), cid, table).await?;
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Replaces the load balancer of container `cid`, whose namespace is pinned at `netns`,
/// on a thread that enters it. A container whose namespace went meanwhile (it stopped)
/// needs none.
async fn apply_sandbox(netns: &std::path::Path, cid: &str, table: &SandboxRuleset) -> Result<(), PlaneError> {
    if !super::valid_id(cid) {
        return Err(PlaneError::Invalid(format!("container ID {cid:?} can't name a namespace")));
    }
    if !netns.exists() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let t = table.clone();
    let applied = super::netns::run_in(netns, move || Ok(nft::apply_sandbox(&t))).await??;
    tracing::debug!(
        container = cid,
        vips = table.vips.len(),
        bytes = applied.bytes,
        elapsed_us = started.elapsed().as_micros() as u64,
        "container load balancer applied"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, c, d)
    }

    fn board() -> BoardSide {
        BoardSide {
            underlay: Ipv4Addr::new(192, 168, 1, 10),
            underlay_mtu: 1500,
            bridge_subnet: Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap(),
            bridge: "shoal0".into(),
        }
    }

    fn net(id: &str, vni: u32, c: u8) -> NetworkDef {
        NetworkDef {
            id: id.into(),
            vni,
            subnet: Subnet::new(ip(c, 0), 24).unwrap(),
            gateway: ip(c, 1),
            encrypted: false,
        }
    }

    fn lab() -> BoardNetworks {
        let mut d = BoardNetworks::default();
        d.networks.insert("atsea".into(), net("atsea", 4097, 1));
        d.networks.insert("other".into(), net("other", 4098, 2));
        d.attachments.insert("app.1".into(), vec![Attachment { network: "atsea".into(), address: ip(1, 2) }]);
        d.peers.insert(ip(1, 2), Ipv4Addr::new(192, 168, 1, 10));
        d.peers.insert(ip(1, 3), Ipv4Addr::new(192, 168, 1, 11));
        d.peers.insert(ip(2, 3), Ipv4Addr::new(192, 168, 1, 11));
        d.names.push(ServiceNames {
            network: "atsea".into(),
            service: "app".into(),
            vip: Some(ip(1, 100)),
            tasks: vec![
                TaskName { name: "app.1.a".into(), id: "a".into(), address: ip(1, 2) },
                TaskName { name: "app.2.b".into(), id: "b".into(), address: ip(1, 3) },
            ],
        });
        d.vips.insert(ip(1, 100), [ip(1, 2), ip(1, 3)].into());
        d
    }

    fn addrs() -> BTreeMap<String, Ipv4Addr> {
        [("app.1".to_string(), Ipv4Addr::new(10, 88, 0, 5))].into()
    }

    #[test]
    fn only_networks_with_local_containers_exist_and_local_ones_are_no_peers() {
        let t = target(&lab(), &board(), &addrs()).unwrap();
        assert_eq!(t.overlays.keys().collect::<Vec<_>>(), ["atsea"]);
        assert_eq!(t.overlays["atsea"].mtu, 1450);
        assert_eq!(
            t.peers["atsea"].iter().copied().collect::<Vec<_>>(),
            [Peer { ip: ip(1, 3), board: Ipv4Addr::new(192, 168, 1, 11) }]
        );
        assert_eq!(t.clients[&Ipv4Addr::new(10, 88, 0, 5)], ["atsea"]);
        assert_eq!(t.ruleset.masquerades.len(), 1);
        assert!(t.ruleset.services.is_empty(), "a VIP DNATed on the board, which can't route into overlays");
        // The container balances its own connections to its network's VIP.
        assert_eq!(t.sandboxes.len(), 1);
        assert_eq!(t.sandboxes["app.1"].vips[&ip(1, 100)], [ip(1, 2), ip(1, 3)]);
    }

    #[test]
    fn a_container_gets_the_vips_of_its_networks_only_once_its_sandbox_exists() {
        let mut d = lab();
        d.vips.insert(ip(2, 100), [ip(2, 3)].into());
        d.vips.insert(ip(1, 101), BTreeSet::new());
        // Not yet prepared: no sandbox, no table.
        assert!(target(&d, &board(), &BTreeMap::new()).unwrap().sandboxes.is_empty());
        let t = target(&d, &board(), &addrs()).unwrap();
        let table = &t.sandboxes["app.1"];
        assert_eq!(table.vips.keys().copied().collect::<Vec<_>>(), [ip(1, 100), ip(1, 101)], "other's VIP leaked");
        // A VIP with no running task stays, to be refused rather than sent on-link.
        assert!(table.vips[&ip(1, 101)].is_empty());
        // A container joining later gets its table; the others are left alone.
        d.attachments.insert("x.1".into(), vec![Attachment { network: "other".into(), address: ip(2, 2) }]);
        let mut later = addrs();
        later.insert("x.1".into(), Ipv4Addr::new(10, 88, 0, 6));
        let plan = diff(Some(&t), &target(&d, &board(), &later).unwrap());
        assert_eq!(plan.sandboxes.len(), 1);
        assert_eq!(plan.sandboxes[0].0, "x.1");
        assert_eq!(plan.sandboxes[0].1.vips.keys().copied().collect::<Vec<_>>(), [ip(2, 100)]);
    }

    #[test]
    fn applying_the_same_state_twice_does_nothing_the_second_time() {
        let t = target(&lab(), &board(), &addrs()).unwrap();
        let first = diff(None, &t);
        assert_eq!(first.ensure.len(), 1);
        assert_eq!(first.peers.len(), 1);
        assert!(first.names.is_some() && first.clients.is_some() && first.ruleset.is_some());
        assert_eq!(first.sandboxes.len(), 1);
        assert!(diff(Some(&t), &t).is_empty());
    }

    #[test]
    fn changes_touch_only_what_changed() {
        let t0 = target(&lab(), &board(), &addrs()).unwrap();
        // A remote task moves: only the peers of its network are set again.
        let mut d = lab();
        d.peers.insert(ip(1, 3), Ipv4Addr::new(192, 168, 1, 12));
        let plan = diff(Some(&t0), &target(&d, &board(), &addrs()).unwrap());
        assert!(plan.ensure.is_empty() && plan.remove.is_empty());
        assert_eq!(plan.peers.len(), 1);
        assert!(plan.names.is_none() && plan.clients.is_none() && plan.ruleset.is_none());

        // A task dies: its name and its VIP backend go, nothing else.
        let mut d = lab();
        d.names[0].tasks.pop();
        d.vips.insert(ip(1, 100), [ip(1, 2)].into());
        let plan = diff(Some(&t0), &target(&d, &board(), &addrs()).unwrap());
        assert!(plan.names.is_some() && plan.sandboxes.len() == 1);
        assert_eq!(plan.sandboxes[0].1.vips[&ip(1, 100)], [ip(1, 2)]);
        assert!(plan.ensure.is_empty() && plan.peers.is_empty() && plan.clients.is_none() && plan.ruleset.is_none());
    }

    #[test]
    fn the_last_attachment_takes_the_overlay_with_it() {
        let t0 = target(&lab(), &board(), &addrs()).unwrap();
        let mut d = lab();
        d.attachments.clear();
        let t1 = target(&d, &board(), &addrs()).unwrap();
        assert!(t1.overlays.is_empty() && t1.clients.is_empty());
        let plan = diff(Some(&t0), &t1);
        assert_eq!(plan.remove, [t0.overlays["atsea"]]);
        assert!(plan.ensure.is_empty() && plan.peers.is_empty());
        // A second container on another network brings only that one.
        let mut d = lab();
        d.attachments.insert("x.1".into(), vec![Attachment { network: "other".into(), address: ip(2, 2) }]);
        let plan = diff(Some(&t0), &target(&d, &board(), &addrs()).unwrap());
        assert_eq!(plan.ensure.iter().map(|o| o.vni).collect::<Vec<_>>(), [4098]);
        assert_eq!(plan.peers.len(), 1);
        assert!(plan.remove.is_empty());
    }

    #[test]
    fn an_encrypted_network_gets_its_port_policies_and_sas_and_a_plain_one_none() {
        let mut d = lab();
        d.networks.get_mut("atsea").unwrap().encrypted = true;
        d.attachments.insert("x.1".into(), vec![Attachment { network: "other".into(), address: ip(2, 2) }]);
        let t = target(&d, &board(), &addrs()).unwrap();
        assert_eq!((t.overlays["atsea"].port, t.overlays["atsea"].mtu), (overlay::encrypted_port(4097), 1410));
        assert_eq!(t.overlays["other"].port, overlay::VXLAN_PORT);
        // Keys not here yet: the policies alone (nothing passes in the clear).
        assert_eq!((t.xfrm.policies.len(), t.xfrm.sas.len()), (2, 0));
        assert!(t.xfrm.policies.iter().all(|p| p.selector.dport == overlay::encrypted_port(4097)));
        let key = xfrm::EspKey { id: 1, secret: [1; 32] };
        d.keys.insert("atsea".into(), xfrm::NetworkKeys { send: key, accept: None });
        let t2 = target(&d, &board(), &addrs()).unwrap();
        // One peer board: an SA each way.
        assert_eq!(t2.xfrm.sas.len(), 2);
        let plan = diff(Some(&t), &t2);
        assert!(plan.xfrm.is_some() && plan.ensure.is_empty() && plan.ruleset.is_none());
        // The network leaves: its IPsec state goes too.
        d.attachments.remove("app.1");
        let t3 = target(&d, &board(), &addrs()).unwrap();
        assert_eq!(t3.xfrm, xfrm::Desired::default());
        // Two encrypted networks on one port are refused.
        let mut d = lab();
        d.networks.get_mut("atsea").unwrap().encrypted = true;
        d.networks.insert("twin".into(), NetworkDef { encrypted: true, ..net("twin", 4097 + 8192, 9) });
        assert!(target(&d, &board(), &addrs()).unwrap_err().to_string().contains("share VXLAN port"));
    }

    #[test]
    fn attachment_veths_fit_linux_and_differ() {
        let long = "x".repeat(128);
        assert_eq!(attachment_veth(&long, &long).len(), 14);
        assert_ne!(attachment_veth("a", "n1"), attachment_veth("a", "n2"));
        assert_ne!(attachment_veth("a", "n1"), attachment_veth("b", "n1"));
    }

    #[test]
    fn contradictions_are_refused_with_what_is_wrong() {
        let refused = |d: BoardNetworks| target(&d, &board(), &addrs()).unwrap_err().to_string();
        let mut d = lab();
        d.attachments.insert("x.1".into(), vec![Attachment { network: "nosuch".into(), address: ip(1, 9) }]);
        assert!(refused(d).contains("unknown network nosuch"));
        let mut d = lab();
        d.attachments.insert("x.1".into(), vec![Attachment { network: "atsea".into(), address: ip(2, 9) }]);
        assert!(refused(d).contains("outside network atsea"));
        let mut d = lab();
        d.attachments.insert("x.1".into(), vec![Attachment { network: "atsea".into(), address: ip(1, 2) }]);
        assert!(refused(d).contains("two local containers"));
        let mut d = lab();
        d.networks.insert("again".into(), net("again", 4097, 3));
        assert!(refused(d).contains("share VNI 4097"));
        let mut d = lab();
        d.networks
            .insert("wide".into(), NetworkDef { subnet: Subnet::new(ip(0, 0), 16).unwrap(), ..net("wide", 9, 0) });
        assert!(refused(d).contains("overlapping subnets"));
        let mut d = lab();
        d.networks.insert("zero".into(), net("zero", 0, 9));
        assert!(refused(d).contains("network zero"));
    }

    proptest::proptest! {
        /// Whatever the attachments, an overlay exists exactly for the networks with a
        /// local container, and going from any state to any other and back ends where it
        /// started with nothing left to do.
        #[test]
        fn overlays_follow_attachments(a in proptest::collection::vec(0u8..3, 0..6), b in proptest::collection::vec(0u8..3, 0..6)) {
            let state = |which: &[u8]| {
                let mut d = BoardNetworks::default();
                for k in 0..3u8 {
                    let id = format!("n{k}");
                    d.networks.insert(id.clone(), net(&id, 100 + u32::from(k), k + 1));
                }
                for (i, k) in which.iter().enumerate() {
                    d.attachments.insert(format!("c{i}"), vec![Attachment { network: format!("n{k}"), address: ip(k + 1, 2 + i as u8) }]);
                }
                target(&d, &board(), &BTreeMap::new()).unwrap()
            };
            let (ta, tb) = (state(&a), state(&b));
            let wanted: BTreeSet<String> = b.iter().map(|k| format!("n{k}")).collect();
            proptest::prop_assert_eq!(tb.overlays.keys().cloned().collect::<BTreeSet<_>>(), wanted);
            let plan = diff(Some(&ta), &tb);
            for o in &plan.remove {
                proptest::prop_assert!(!tb.overlays.values().any(|n| n.vni == o.vni));
            }
            for o in &plan.ensure {
                proptest::prop_assert!(!ta.overlays.values().any(|n| n == o));
            }
            proptest::prop_assert!(diff(Some(&tb), &tb).is_empty());
        }
    }

    #[test]
    fn the_mesh_makes_its_overlay_without_a_local_container() {
        let mut d = BoardNetworks::default();
        d.networks.insert("ingress".into(), net("ingress", 4097, 0));
        d.peers.insert(ip(0, 253), Ipv4Addr::new(192, 168, 1, 11));
        d.peers.insert(ip(0, 3), Ipv4Addr::new(192, 168, 1, 11));
        d.mesh = Some(Mesh {
            network: "ingress".into(),
            address: ip(0, 254),
            ports: vec![
                MeshPort { proto: L4::Tcp, port: 8000, backends: vec![SocketAddrV4::new(ip(0, 3), 8000)] },
                MeshPort { proto: L4::Udp, port: 53, backends: vec![] },
            ],
        });
        let t = target(&d, &board(), &BTreeMap::new()).unwrap();
        let o = t.overlays["ingress"];
        assert_eq!(t.addresses["ingress"], ip(0, 254));
        assert_eq!(t.peers["ingress"].len(), 2);
        assert_eq!(t.ruleset.masquerade_via, vec![o.bridge()]);
        // The port without a running task is not in the ruleset.
        assert_eq!(t.ruleset.services.len(), 1);
        assert_eq!(t.ruleset.services[0].destination, Destination::Local);
        let plan = diff(None, &t);
        assert_eq!(plan.addresses, vec![(o, ip(0, 254))]);
        // Applied again: nothing to do; the mesh gone: the overlay goes.
        assert!(diff(Some(&t), &t).is_empty());
        d.mesh = None;
        let gone = target(&d, &board(), &BTreeMap::new()).unwrap();
        assert_eq!(diff(Some(&t), &gone).remove, vec![o]);
    }

    #[test]
    fn a_mesh_address_outside_its_network_or_taken_is_refused() {
        let mut d = lab();
        d.mesh = Some(Mesh { network: "atsea".into(), address: ip(9, 9), ports: vec![] });
        assert!(target(&d, &board(), &BTreeMap::new()).unwrap_err().to_string().contains("outside"));
        d.mesh = Some(Mesh { network: "atsea".into(), address: ip(1, 2), ports: vec![] });
        assert!(target(&d, &board(), &BTreeMap::new()).unwrap_err().to_string().contains("local container"));
        d.mesh = Some(Mesh { network: "nope".into(), address: ip(1, 9), ports: vec![] });
        assert!(target(&d, &board(), &BTreeMap::new()).unwrap_err().to_string().contains("unknown network"));
    }
}
