//! Overlay networks: what the operator asks for (`NetworkSpec`), the network the manager
//! keeps (`Network`: its subnet, gateway and VNI), a task's address on it, a service's
//! virtual IP, what a board is told to attach a container (`AttachmentConfig`, in the
//! assignment) and the per-board view of its networks (`NodeNetworks`: peers, names and
//! VIP backends) the manager sends on the session.
//!
//! Data and pure helpers only: the manager's IPAM (`shoal-core`'s `ipam`) decides the
//! addresses and the agent programs the data plane. Every list is bounded; a board's
//! view travels in chunks of [`MAX_VIEW_CHUNK`] networks so one message stays below half
//! the 1 MiB frame the agent reads (one network at its bounds, routing mesh included, is
//! under 250 KiB).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::services::{EndpointMode, ServiceName, TaskId};
use crate::{BoundedVec, Hostname, Label, Text};

pub use crate::services::{NetworkId, NetworkName};

/// Most labels on one network.
pub const MAX_NETWORK_LABELS: usize = 64;
/// Most networks in one listing.
pub const MAX_NETWORKS_LISTED: usize = 1024;
/// Most networks in one [`NodeNetworks`] message; larger views are chunked. A network
/// at every bound encodes to under 250 KiB, so a chunk stays below half a frame.
pub const MAX_VIEW_CHUNK: usize = 2;
/// Most peers of one network in a board's view: tasks on other boards.
pub const MAX_PEERS: usize = 1024;
/// Most services named on one network in a board's view.
pub const MAX_NAMED_SERVICES: usize = 256;
/// Most running tasks named on one network in a board's view.
pub const MAX_NAMED_TASKS: usize = 1024;
/// Most tasks (and nodes) `network inspect` lists.
pub const MAX_INSPECT_TASKS: usize = 1024;
/// The name of the network published ports go through, created with the cluster.
pub const INGRESS: &str = "ingress";
/// Most ports published through the routing mesh in one board's view of `ingress`.
pub const MAX_MESH_PORTS: usize = 64;
/// Most backends (running tasks) of one port published through the routing mesh.
pub const MAX_MESH_BACKENDS: usize = 64;
/// The first VXLAN network identifier handed out (Swarm's).
pub const FIRST_VNI: u32 = 4097;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// An IPv4 subnet, `10.0.1.0/24`: the network address (host bits zero) and its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "(Ipv4Addr, u8)", into = "(Ipv4Addr, u8)")]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Smallest prefix accepted: a /8, Swarm's whole default pool.
pub const MIN_PREFIX: u8 = 8;
/// Largest prefix accepted: a /29 leaves 5 addresses after the network, gateway and
/// broadcast addresses.
pub const MAX_PREFIX: u8 = 29;

/// A subnet, gateway or network request that cannot be used, with what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// `--subnet` is not `A.B.C.D/N`.
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.0.9.0/24")]
    Malformed(String),
    /// The prefix is out of range.
    #[error("invalid subnet {input:?}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}")]
    Prefix {
        /// What was typed.
        input: String,
    },
    /// Host bits are set.
    #[error("invalid subnet {input:?}: host bits are set; did you mean {suggest}?")]
    HostBits {
        /// What was typed.
        input: String,
        /// The network address with the same prefix.
        suggest: Subnet,
    },
    /// `--gateway` is not an IPv4 address.
    #[error("invalid gateway {0:?}: expected an IPv4 address such as 10.0.9.1")]
    Gateway(String),
    /// A spec that is well-formed but unusable.
    #[error("invalid network: {0}")]
    Invalid(String),
}

impl Subnet {
    /// A subnet from its network address and prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetworkError> {
        let input = format!("{addr}/{prefix}");
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(NetworkError::Prefix { input });
        }
        let net = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        if net != addr {
            return Err(NetworkError::HostBits { input, suggest: Subnet { addr: net, prefix } });
        }
        Ok(Self { addr, prefix })
    }

    /// Parses `A.B.C.D/N`.
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        let (a, p) = s.split_once('/').ok_or_else(|| NetworkError::Malformed(s.into()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| NetworkError::Malformed(s.into()))?;
        let prefix: u8 = p.parse().map_err(|_| NetworkError::Malformed(s.into()))?;
        Self::new(addr, prefix)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The `n`th address (0 is the network address), if inside.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// Whether `ip` is a host address of the subnet (not its network or broadcast address).
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        let off = u32::from(ip).wrapping_sub(u32::from(self.addr));
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr) && off != 0 && off != self.size() - 1
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.addr) & mask(p) == u32::from(other.addr) & mask(p)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl TryFrom<(Ipv4Addr, u8)> for Subnet {
    type Error = NetworkError;
    fn try_from((addr, prefix): (Ipv4Addr, u8)) -> Result<Self, NetworkError> {
        Self::new(addr, prefix)
    }
}

impl From<Subnet> for (Ipv4Addr, u8) {
    fn from(s: Subnet) -> Self {
        (s.addr, s.prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Network drivers. Only overlay networks are made by the operator; `host` and `bridge`
/// are each board's own and only listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Driver {
    /// VXLAN between the boards that run its tasks.
    #[default]
    Overlay,
}

impl Driver {
    /// Docker's spelling.
    pub fn as_str(self) -> &'static str {
        "overlay"
    }

    /// Parses `-d`/`--driver`.
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        match s {
            "overlay" => Ok(Self::Overlay),
            other => Err(NetworkError::Invalid(format!(
                "driver {other:?} is not supported: shoal makes overlay networks (-d overlay)"
            ))),
        }
    }
}

/// What the operator asks for: `shoal network create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Name, unique in the cluster.
    pub name: NetworkName,
    /// Always overlay.
    pub driver: Driver,
    /// `--subnet`; the manager picks a free /24 of 10.0.0.0/8 when absent.
    pub subnet: Option<Subnet>,
    /// `--gateway`; the subnet's first host address when absent.
    pub gateway: Option<Ipv4Addr>,
    /// `--attachable` (carried: standalone containers are not run by shoal).
    pub attachable: bool,
    /// `--opt encrypted`: traffic between boards is encrypted.
    pub encrypted: bool,
    /// `--label KEY=VALUE`.
    pub labels: BoundedVec<Label, MAX_NETWORK_LABELS>,
}

impl NetworkSpec {
    /// An overlay network with Docker's defaults.
    pub fn new(name: NetworkName) -> Self {
        Self {
            name,
            driver: Driver::Overlay,
            subnet: None,
            gateway: None,
            attachable: false,
            encrypted: false,
            labels: BoundedVec::new(),
        }
    }

    /// Checks what the types cannot: a DNS-label name and a gateway inside the subnet.
    pub fn validate(&self) -> Result<(), NetworkError> {
        let name = self.name.as_str();
        let ok = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(NetworkError::Invalid(format!(
                "network name {name:?} must start with a letter or digit and hold only letters, digits, '-', '_' and '.'"
            )));
        }
        match (self.subnet, self.gateway) {
            (None, Some(g)) => {
                Err(NetworkError::Invalid(format!("gateway {g} needs a subnet: give --subnet CIDR with --gateway")))
            }
            (Some(s), Some(g)) if !s.contains_host(g) => Err(NetworkError::Invalid(format!(
                "gateway {g} is not a host address of subnet {s}: pick one inside it"
            ))),
            _ => Ok(()),
        }
    }
}

/// A network as the manager keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// ID.
    pub id: NetworkId,
    /// What was asked for.
    pub spec: NetworkSpec,
    /// The subnet in use (the spec's, or the one the manager picked).
    pub subnet: Subnet,
    /// The gateway address (never given to a task).
    pub gateway: Ipv4Addr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The routing mesh's network, made with the cluster; it can't be removed.
    pub ingress: bool,
}

/// A task's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network.
    pub network_id: NetworkId,
    /// The task's address in its subnet.
    pub address: Ipv4Addr,
}

/// A service's virtual IP on one network (`Endpoint.VirtualIPs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VirtualIp {
    /// The network.
    pub network_id: NetworkId,
    /// The VIP in its subnet.
    pub address: Ipv4Addr,
    /// The subnet's prefix length (`Addr` shows `10.0.1.2/24`, as Docker's).
    pub prefix: u8,
}

/// What a board needs to attach one container to one network: in the assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentConfig {
    /// The network.
    pub network_id: NetworkId,
    /// Its VNI.
    pub vni: u32,
    /// Its subnet (the container's prefix length).
    pub subnet: Subnet,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// The container's address.
    pub address: Ipv4Addr,
    /// Whether traffic between boards is to be encrypted.
    pub encrypted: bool,
    /// This is the routing mesh's network: the task's ingress-mode ports are served by
    /// the mesh (nf_tables on every board), not by a proxy on its own board.
    #[serde(default)]
    pub ingress: bool,
}

/// One chunk of a board's view of its networks: every network that has a task on the
/// board. The view is sent whole whenever it changes for that board; `more` is true on
/// all chunks but the last, and the set is complete with the last.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeNetworks {
    /// More chunks of the same view follow.
    pub more: bool,
    /// Networks of this chunk.
    pub networks: BoundedVec<NetworkView, MAX_VIEW_CHUNK>,
}

/// One network as a board sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// ID.
    pub id: NetworkId,
    /// Name.
    pub name: NetworkName,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Subnet.
    pub subnet: Subnet,
    /// Gateway.
    pub gateway: Ipv4Addr,
    /// Encrypt traffic between boards.
    pub encrypted: bool,
    /// Every task on this network on another board that is placed and not finished:
    /// forwarding and neighbour entries. Cut at [`MAX_PEERS`] (`truncated` says so).
    pub peers: BoundedVec<Peer, MAX_PEERS>,
    /// The services on this network, for the resolver and the VIP load balancer.
    pub services: BoundedVec<ServiceEntry, MAX_NAMED_SERVICES>,
    /// The running tasks on this network, wherever they run, for the resolver and the
    /// VIP backends. Cut at [`MAX_NAMED_TASKS`] (`truncated` says so).
    pub tasks: BoundedVec<TaskEntry, MAX_NAMED_TASKS>,
    /// Some list was cut at its bound.
    pub truncated: bool,
    /// The routing mesh (only on `ingress`): this board's own address on the network,
    /// carried by its bridge; the mesh's traffic leaves the board from it.
    #[serde(default)]
    pub board_address: Option<Ipv4Addr>,
    /// The routing mesh (only on `ingress`): the ports published in ingress mode, each
    /// answering on every local address of the board and sent to its backends.
    #[serde(default)]
    pub published: BoundedVec<MeshPort, MAX_MESH_PORTS>,
    /// An encrypted network's keys (only in the views of boards where it is present;
    /// never in `network inspect`, and redacted in Debug output).
    #[serde(default)]
    pub keys: Option<OverlayKeys>,
}

/// A port published through the routing mesh: `(protocol, published)` on every board
/// goes to one of `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPort {
    /// TCP or UDP.
    pub protocol: crate::Protocol,
    /// The port every board answers on.
    pub published: u16,
    /// The service's running tasks: ingress address and target port. Cut at
    /// [`MAX_MESH_BACKENDS`].
    pub backends: BoundedVec<MeshBackend, MAX_MESH_BACKENDS>,
}

/// One backend of a [`MeshPort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshBackend {
    /// The task's address on `ingress`.
    pub address: Ipv4Addr,
    /// The container's port.
    pub port: u16,
}

/// An encrypted network's keys. Boards accept packets under both and send under `send`;
/// a rotation goes `{send: old}` → `{send: old, accept: new}` → `{send: new, accept: old}`
/// → `{send: new}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayKeys {
    /// The key boards send with (and accept).
    pub send: OverlayKey,
    /// Another key boards accept during a rotation.
    pub accept: Option<OverlayKey>,
}

/// One secret of an encrypted network: boards derive each SA's key, salt and SPI from
/// it. Its Debug output shows the ID only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayKey {
    /// Which key (new per rotation).
    pub id: u32,
    /// 32 random bytes.
    pub secret: [u8; 32],
}

impl fmt::Debug for OverlayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverlayKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// A task on another board: its overlay address and where to tunnel to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// The task's address on the network.
    pub address: Ipv4Addr,
    /// Its board's underlay address (as the manager sees the board's session).
    pub underlay: IpAddr,
}

/// A service on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Its name: the DNS name `<service>` (and `tasks.<service>`).
    pub name: ServiceName,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// Its VIP on this network (endpoint mode `vip`).
    pub vip: Option<Ipv4Addr>,
}

/// A running task on a network: named `<service>.<slot>.<task id>` (global services:
/// `<service>.<node id>.<task id>`, like Docker), also by its ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntry {
    /// Index of its service in [`NetworkView::services`].
    pub service: u16,
    /// Its name (`web.1.<task id>`).
    pub name: Text<128>,
    /// Its ID.
    pub task_id: TaskId,
    /// Its address on the network.
    pub address: Ipv4Addr,
}

impl NetworkView {
    /// The VIP load balancer's sets: each VIP with the addresses of its service's running
    /// tasks on this network.
    pub fn vip_backends(&self) -> Vec<(Ipv4Addr, Vec<Ipv4Addr>)> {
        self.services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let vip = s.vip?;
                let backends = self.tasks.iter().filter(|t| usize::from(t.service) == i).map(|t| t.address).collect();
                Some((vip, backends))
            })
            .collect()
    }

    /// The addresses `name` resolves to on this network: a service (its VIP, or its
    /// tasks' addresses for `dnsrr`), `tasks.<service>`, a task's name or ID.
    pub fn resolve(&self, name: &str) -> Vec<Ipv4Addr> {
        let of_service = |i: usize| -> Vec<Ipv4Addr> {
            self.tasks.iter().filter(|t| usize::from(t.service) == i).map(|t| t.address).collect()
        };
        // A stack's service `<stack>_<name>` also answers to `<name>` (Docker's alias of a
        // stack service on its networks), when no other service takes that name.
        let find = |wanted: &str| {
            self.services.iter().position(|s| s.name.as_str() == wanted).or_else(|| {
                let mut alias = self
                    .services
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.name.as_str().split_once('_').is_some_and(|(_, short)| short == wanted));
                match (alias.next(), alias.next()) {
                    (Some((i, _)), None) => Some(i),
                    _ => None,
                }
            })
        };
        if let Some(svc) = name.strip_prefix("tasks.") {
            if let Some(i) = find(svc) {
                return of_service(i);
            }
        }
        if let Some(i) = find(name) {
            return match self.services[i].vip {
                Some(vip) => vec![vip],
                None => of_service(i),
            };
        }
        self.tasks.iter().filter(|t| t.name.as_str() == name || t.task_id.as_str() == name).map(|t| t.address).collect()
    }
}

/// `shoal network ...` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkRequest {
    /// `network create`.
    Create(Box<NetworkSpec>),
    /// `network ls`.
    List,
    /// `network inspect NETWORK`.
    Inspect {
        /// Name, ID or unique ID prefix.
        network: Text<64>,
    },
    /// `network rm NETWORK`.
    Remove {
        /// Name, ID or unique ID prefix.
        network: Text<64>,
    },
}

/// Answers to [`NetworkRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkReply {
    /// Created; its ID.
    Created(NetworkId),
    /// Listing.
    Networks(BoundedVec<Network, MAX_NETWORKS_LISTED>),
    /// One network.
    Network(Box<NetworkInspect>),
    /// Removed; its ID.
    Removed(NetworkId),
}

/// `network inspect`: the network, where it exists and its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInspect {
    /// The network.
    pub network: Network,
    /// Hostnames of the nodes it exists on: those running a task of it.
    pub nodes: BoundedVec<Hostname, MAX_INSPECT_TASKS>,
    /// Its tasks that have not ended, with their addresses.
    pub tasks: BoundedVec<NetworkTask, MAX_INSPECT_TASKS>,
    /// Services on it, with their VIPs.
    pub services: BoundedVec<ServiceEntry, MAX_NAMED_SERVICES>,
}

/// A task of a network as `network inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkTask {
    /// Its name (`web.1.<task id>`).
    pub name: Text<128>,
    /// Its ID.
    pub task_id: TaskId,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its node's hostname, if placed.
    pub node: Option<Hostname>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_refuse_what_they_should() {
        let s = Subnet::parse("10.0.9.0/24").unwrap();
        assert_eq!(s.to_string(), "10.0.9.0/24");
        assert!(s.contains_host("10.0.9.1".parse().unwrap()));
        assert!(!s.contains_host("10.0.9.0".parse().unwrap()));
        assert!(!s.contains_host("10.0.9.255".parse().unwrap()));
        assert!(!s.contains_host("10.0.10.1".parse().unwrap()));
        assert!(matches!(Subnet::parse("10.0.9.0"), Err(NetworkError::Malformed(_))));
        assert!(matches!(Subnet::parse("10.0.9.300/24"), Err(NetworkError::Malformed(_))));
        assert!(matches!(Subnet::parse("10.0.9.0/31"), Err(NetworkError::Prefix { .. })));
        let e = Subnet::parse("10.0.9.7/24").unwrap_err();
        assert_eq!(e.to_string(), "invalid subnet \"10.0.9.7/24\": host bits are set; did you mean 10.0.9.0/24?");
        assert!(Subnet::parse("10.0.0.0/16").unwrap().overlaps(&s));
        assert!(!Subnet::parse("10.1.0.0/16").unwrap().overlaps(&s));
    }

    #[test]
    fn a_subnet_with_host_bits_is_refused_at_decode() {
        let bytes = postcard::to_allocvec(&(Ipv4Addr::new(10, 0, 0, 5), 24u8)).unwrap();
        assert!(postcard::from_bytes::<Subnet>(&bytes).is_err());
    }

    #[test]
    fn a_chunk_of_the_largest_networks_fits_half_a_frame() {
        let id = |n: u32| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&n.to_le_bytes());
            b
        };
        let addr = Ipv4Addr::new(10, 0, 0, 2);
        let name = crate::text::<63>(&"s".repeat(63)).unwrap();
        let view = NetworkView {
            id: NetworkId::from_random(id(0)),
            name: crate::text(&"n".repeat(64)).unwrap(),
            vni: MAX_VNI,
            subnet: Subnet::parse("10.0.0.0/8").unwrap(),
            gateway: addr,
            encrypted: true,
            peers: vec![Peer { address: addr, underlay: IpAddr::from([0xffff_u16; 8]) }; MAX_PEERS].try_into().unwrap(),
            services: vec![
                ServiceEntry { name, endpoint_mode: EndpointMode::Vip, vip: Some(addr) };
                MAX_NAMED_SERVICES
            ]
            .try_into()
            .unwrap(),
            tasks: (0..MAX_NAMED_TASKS as u32)
                .map(|n| TaskEntry {
                    service: u16::MAX,
                    name: crate::text(&"t".repeat(128)).unwrap(),
                    task_id: TaskId::from_random(id(n)),
                    address: addr,
                })
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
            truncated: true,
            board_address: Some(addr),
            published: vec![
                MeshPort {
                    protocol: crate::Protocol::Udp,
                    published: u16::MAX,
                    backends: vec![MeshBackend { address: addr, port: u16::MAX }; MAX_MESH_BACKENDS]
                        .try_into()
                        .unwrap(),
                };
                MAX_MESH_PORTS
            ]
            .try_into()
            .unwrap(),
            keys: Some(OverlayKeys {
                send: OverlayKey { id: u32::MAX, secret: [0xff; 32] },
                accept: Some(OverlayKey { id: u32::MAX, secret: [0xff; 32] }),
            }),
        };
        let chunk = crate::ManagerMessage::Networks(NodeNetworks {
            more: true,
            networks: vec![view; MAX_VIEW_CHUNK].try_into().unwrap(),
        });
        let size = postcard::to_allocvec(&chunk).unwrap().len();
        assert!(size < crate::MAX_FRAME_LEN / 2, "{size} bytes");
        assert!(size < MAX_VIEW_CHUNK * 250 * 1024, "{size} bytes");
    }

    #[test]
    fn overlay_keys_are_redacted_in_debug_output() {
        let keys = OverlayKeys { send: OverlayKey { id: 7, secret: [0xab; 32] }, accept: None };
        let text = format!("{keys:?}");
        assert!(text.contains("id: 7") && text.contains("<redacted>") && !text.contains("171"), "{text}");
    }

    #[test]
    fn a_gateway_outside_the_subnet_or_without_one_is_refused() {
        let mut spec = NetworkSpec::new(crate::text("net").unwrap());
        spec.gateway = Some("10.0.9.1".parse().unwrap());
        assert!(spec.validate().unwrap_err().to_string().contains("needs a subnet"));
        spec.subnet = Some(Subnet::parse("10.0.8.0/24").unwrap());
        assert!(spec.validate().unwrap_err().to_string().contains("not a host address"));
        spec.subnet = Some(Subnet::parse("10.0.9.0/24").unwrap());
        spec.validate().unwrap();
        spec.name = crate::text("-bad").unwrap();
        assert!(spec.validate().is_err());
    }
}
