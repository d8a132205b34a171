//! Address management for overlay networks, as Swarm does it: a /24 per network from
//! 10.0.0.0/8 (10.0.0.0/24 is the `ingress` network's), `--subnet` honoured and
//! overlaps refused, VNIs from 4097 up, and within each subnet the task addresses and
//! service VIPs.
//!
//! The allocator keeps no state of its own: [`Ipam::rebuild`] derives what is taken from
//! the stored records (each network's gateway, each service's VIPs, the addresses of
//! tasks that have not ended), and every allocation takes the lowest free address. So an
//! address is never handed out while a record holds it, it is free again once its task
//! has ended or its service is deleted, and a restarted manager rebuilds exactly the same
//! allocator from the store. No I/O, no clock.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use shoal_proto::networks::{
    Network, NetworkAttachment, NetworkId, NetworkSpec, Subnet, VirtualIp, FIRST_VNI, INGRESS, MAX_VNI,
};
use shoal_proto::services::{NetworkName, MAX_NETWORKS};
use shoal_proto::{BoundedVec, EndpointMode, ErrorKind, ErrorReply, PublishMode, Service, ServiceSpec, Task, TaskSpec};

/// Swarm's default address pool.
const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 0, 0), 8);
/// The size of the subnets picked from the pool.
const POOL_PREFIX: u8 = 24;

fn refuse(kind: ErrorKind, message: &str) -> ErrorReply {
    ErrorReply::new(kind, message)
}

/// Whether a task still holds its addresses: until it has ended.
pub fn holds_addresses(t: &Task) -> bool {
    !t.status.state.is_terminal()
}

/// Each board's own networks: not manager objects, and they take no addresses here
/// (`--network host` shares the board's network namespace).
pub const LOCAL_NETWORKS: [&str; 2] = ["host", "bridge"];

/// The overlay networks a task of `spec` attaches to, by name: those it lists, and
/// `ingress` when it publishes a port through the routing mesh.
pub fn wanted_networks(spec: &TaskSpec) -> Vec<&str> {
    let mut out: Vec<&str> = spec.networks.iter().map(|n| n.as_str()).filter(|n| !LOCAL_NETWORKS.contains(n)).collect();
    if spec.ports.iter().any(|p| p.mode == PublishMode::Ingress) && !out.contains(&INGRESS) {
        out.insert(0, INGRESS);
    }
    out
}

/// The `ingress` network, made with the cluster.
pub fn ingress(id: NetworkId, wall_ms: u64) -> Network {
    let subnet = Subnet::new(Ipv4Addr::new(10, 0, 0, 0), POOL_PREFIX).expect("a valid /24");
    Network {
        id,
        spec: NetworkSpec::new(shoal_proto::text(INGRESS).expect("short")),
        subnet,
        gateway: subnet.nth(1).expect("inside"),
        vni: FIRST_VNI,
        created_at_ms: wall_ms,
        ingress: true,
    }
}

/// Finds the network `query` names: an exact ID, then a name, then a unique ID prefix.
pub fn resolve<'a>(networks: &'a [Network], query: &str) -> Result<&'a Network, ErrorReply> {
    if let Some(n) = networks.iter().find(|n| n.id.as_str() == query || n.spec.name.as_str() == query) {
        return Ok(n);
    }
    let by_prefix: Vec<_> = networks.iter().filter(|n| !query.is_empty() && n.id.as_str().starts_with(query)).collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(refuse(
            ErrorKind::NotFound,
            &format!("network {query} not found: create it with `shoal network create -d overlay {query}` (see `shoal network ls`)"),
        )),
        many => Err(refuse(
            ErrorKind::Ambiguous,
            &format!("network {query} is ambiguous ({} matches): use its name or more of its ID", many.len()),
        )),
    }
}

/// `network create`: a new network with its subnet, gateway and VNI, unless the name is
/// taken, the spec is bad or its subnet overlaps another network's.
pub fn create_network(
    networks: &[Network],
    spec: NetworkSpec,
    id: NetworkId,
    wall_ms: u64,
) -> Result<Network, ErrorReply> {
    spec.validate().map_err(|e| refuse(ErrorKind::InvalidRequest, &e.to_string()))?;
    if networks.iter().any(|n| n.spec.name == spec.name) {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!("network with name {} already exists: choose another name (see `shoal network ls`)", spec.name),
        ));
    }
    let subnet = match spec.subnet {
        Some(s) => {
            if let Some(other) = networks.iter().find(|n| n.subnet.overlaps(&s)) {
                return Err(refuse(
                    ErrorKind::Conflict,
                    &format!(
                        "subnet {s} overlaps network {} ({}): pick a subnet that does not, or leave --subnet out",
                        other.spec.name, other.subnet
                    ),
                ));
            }
            s
        }
        None => free_subnet(networks).ok_or_else(|| {
            refuse(ErrorKind::Conflict, "the 10.0.0.0/8 pool has no free /24 left: remove a network or give --subnet")
        })?,
    };
    let gateway = spec.gateway.unwrap_or_else(|| subnet.nth(1).expect("a /29 or larger has a first host"));
    let used: BTreeSet<u32> = networks.iter().map(|n| n.vni).collect();
    let vni = (FIRST_VNI..=MAX_VNI)
        .find(|v| !used.contains(v))
        .ok_or_else(|| refuse(ErrorKind::Conflict, "no VXLAN identifier is free: remove a network first"))?;
    Ok(Network { id, spec, subnet, gateway, vni, created_at_ms: wall_ms, ingress: false })
}

/// The lowest /24 of the pool that overlaps no network; 10.0.0.0/24 stays the ingress
/// network's even before it exists.
fn free_subnet(networks: &[Network]) -> Option<Subnet> {
    let pool = Subnet::new(POOL.0, POOL.1).ok()?;
    let step = 1u32 << (32 - POOL_PREFIX);
    (1..pool.size() / step)
        .filter_map(|i| Subnet::new(pool.nth(i * step)?, POOL_PREFIX).ok())
        .find(|s| !networks.iter().any(|n| n.subnet.overlaps(s)))
}

/// `network rm`: refused for `ingress`, for a network a service lists, and for one a task
/// still holds an address on (a removed service's tasks still stopping).
pub fn check_remove(network: &Network, services: &[Service], tasks: &[Task]) -> Result<(), ErrorReply> {
    if network.ingress {
        return Err(refuse(
            ErrorKind::Conflict,
            "ingress is the routing mesh's network and can't be removed: publish ports in mode=host to avoid it",
        ));
    }
    let users: Vec<&str> = services
        .iter()
        .filter(|s| s.spec.networks.contains(&network.spec.name))
        .map(|s| s.spec.name.as_str())
        .collect();
    if !users.is_empty() {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!(
                "network {} is in use by service {}: remove the service or `shoal service update --network-rm {}` first",
                network.spec.name,
                users.join(", "),
                network.spec.name
            ),
        ));
    }
    let holding = tasks.iter().filter(|t| holds_addresses(t) && t.networks.iter().any(|a| a.network_id == network.id));
    if holding.count() > 0 {
        return Err(refuse(
            ErrorKind::Conflict,
            &format!("network {} still has tasks stopping on it: retry in a few seconds", network.spec.name),
        ));
    }
    Ok(())
}

/// What is taken in each subnet, derived from the records (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ipam {
    networks: HashMap<NetworkId, (Subnet, BTreeSet<Ipv4Addr>)>,
}

impl Ipam {
    /// The allocator the records imply.
    pub fn rebuild<'a>(networks: &[Network], services: impl IntoIterator<Item = &'a Service>, tasks: &[Task]) -> Self {
        Self::rebuild_from(networks, services, tasks)
    }

    /// [`Ipam::rebuild`] from borrowed tasks.
    pub fn rebuild_from<'a, 't>(
        networks: &[Network],
        services: impl IntoIterator<Item = &'a Service>,
        tasks: impl IntoIterator<Item = &'t Task>,
    ) -> Self {
        let mut ipam = Ipam::default();
        for n in networks {
            ipam.networks.insert(n.id.clone(), (n.subnet, BTreeSet::from([n.gateway])));
        }
        for vip in services.into_iter().flat_map(|s| s.virtual_ips.iter()) {
            ipam.take(&vip.network_id, vip.address);
        }
        for a in tasks.into_iter().filter(|t| holds_addresses(t)).flat_map(|t| t.networks.iter()) {
            ipam.take(&a.network_id, a.address);
        }
        ipam
    }

    fn take(&mut self, network: &NetworkId, address: Ipv4Addr) {
        if let Some((_, used)) = self.networks.get_mut(network) {
            used.insert(address);
        }
    }

    /// Whether `address` is taken on `network`.
    pub fn is_taken(&self, network: &NetworkId, address: Ipv4Addr) -> bool {
        self.networks.get(network).is_some_and(|(_, used)| used.contains(&address))
    }

    /// The lowest free host address of `network`, now taken; `None` when the subnet is
    /// full or the network unknown.
    pub fn allocate(&mut self, network: &NetworkId) -> Option<Ipv4Addr> {
        let (subnet, used) = self.networks.get_mut(network)?;
        let free = (1..subnet.size() - 1).filter_map(|i| subnet.nth(i)).find(|a| !used.contains(a))?;
        used.insert(free);
        Some(free)
    }

    /// Marks the boards' own addresses on `network` (the routing mesh's, on `ingress`)
    /// as taken: they live in the node records, not in tasks or services.
    pub fn take_boards(&mut self, network: &NetworkId, boards: impl IntoIterator<Item = Ipv4Addr>) {
        for a in boards {
            self.take(network, a);
        }
    }

    /// The highest free host address of `network`, now taken: boards' addresses come from
    /// the top of the subnet, tasks' and VIPs' from the bottom, so the two rarely meet.
    pub fn allocate_high(&mut self, network: &NetworkId) -> Option<Ipv4Addr> {
        let (subnet, used) = self.networks.get_mut(network)?;
        let free = (1..subnet.size() - 1).rev().filter_map(|i| subnet.nth(i)).find(|a| !used.contains(a))?;
        used.insert(free);
        Some(free)
    }

    /// Gives `address` back.
    pub fn free(&mut self, network: &NetworkId, address: Ipv4Addr) {
        if let Some((_, used)) = self.networks.get_mut(network) {
            used.remove(&address);
        }
    }
}

/// Checks that every network `spec` names exists (and that they fit in a task) before
/// a service is created or updated.
pub fn check_service_networks(networks: &[Network], spec: &ServiceSpec) -> Result<(), ErrorReply> {
    let host = spec.networks.iter().any(|n| n.as_str() == "host");
    if host && spec.networks.len() > 1 {
        return Err(refuse(
            ErrorKind::InvalidRequest,
            "--network host shares the board's network and can't be combined with other networks: give one or the other",
        ));
    }
    for (i, name) in spec.networks.iter().enumerate() {
        if spec.networks[..i].contains(name) {
            return Err(refuse(ErrorKind::InvalidRequest, &format!("network {name} is given twice: give it once")));
        }
        if LOCAL_NETWORKS.contains(&name.as_str()) {
            continue;
        }
        resolve(networks, name)?;
        if name.as_str() == INGRESS {
            return Err(refuse(
                ErrorKind::InvalidRequest,
                "services can't attach to ingress by --network: publish a port (--publish 8000:80) instead",
            ));
        }
    }
    if wanted_networks(&spec.task_spec()).len() > MAX_NETWORKS {
        return Err(refuse(
            ErrorKind::InvalidRequest,
            &format!("a service attaches to at most {MAX_NETWORKS} networks, ingress included: give fewer --network"),
        ));
    }
    Ok(())
}

/// A service's VIPs for `spec`: one per network its tasks attach to in endpoint mode
/// `vip` (kept from `current` where the network stays), none for `dnsrr`. Those of
/// `current` not kept are freed.
pub fn service_vips(
    ipam: &mut Ipam,
    networks: &[Network],
    spec: &ServiceSpec,
    current: &[VirtualIp],
) -> Result<BoundedVec<VirtualIp, MAX_NETWORKS>, ErrorReply> {
    let mut out = Vec::new();
    if spec.endpoint_mode == EndpointMode::Vip {
        for name in wanted_networks(&spec.task_spec()) {
            let net = resolve(networks, name)?;
            let vip = match current.iter().find(|v| v.network_id == net.id) {
                Some(v) => v.clone(),
                None => {
                    let address = ipam.allocate(&net.id).ok_or_else(|| full(net))?;
                    VirtualIp { network_id: net.id.clone(), address, prefix: net.subnet.prefix() }
                }
            };
            out.push(vip);
        }
    }
    for v in current.iter().filter(|v| !out.contains(v)) {
        ipam.free(&v.network_id, v.address);
    }
    Ok(out.try_into().unwrap_or_default())
}

fn full(net: &Network) -> ErrorReply {
    refuse(
        ErrorKind::Conflict,
        &format!("network {} ({}) has no free address: remove tasks or services from it", net.spec.name, net.subnet),
    )
}

/// Gives a task an address on each network it attaches to that it has none on yet.
/// Returns whether it changed; a network that is unknown or full is left out (the task
/// runs without it and the shell logs it).
pub fn attach(ipam: &mut Ipam, by_name: &HashMap<&NetworkName, &Network>, t: &mut Task) -> bool {
    if !holds_addresses(t) {
        return false;
    }
    let mut changed = false;
    for name in wanted_networks(&t.spec) {
        let Some(net) = by_name.iter().find(|(n, _)| n.as_str() == name).map(|(_, n)| *n) else { continue };
        if t.networks.iter().any(|a| a.network_id == net.id) {
            continue;
        }
        let Some(address) = ipam.allocate(&net.id) else { continue };
        if t.networks.push(NetworkAttachment { network_id: net.id.clone(), address }).is_ok() {
            changed = true;
        } else {
            ipam.free(&net.id, address);
        }
    }
    changed
}

/// Whether a task lacks an address it should have.
pub fn needs_attach(by_name: &HashMap<&NetworkName, &Network>, t: &Task) -> bool {
    holds_addresses(t)
        && wanted_networks(&t.spec).iter().any(|name| {
            by_name
                .iter()
                .find(|(n, _)| n.as_str() == *name)
                .is_some_and(|(_, net)| !t.networks.iter().any(|a| a.network_id == net.id))
        })
}

/// Whether some service publishes a port through the routing mesh: then every Ready,
/// non-drained board carries `ingress`.
pub fn mesh_active<'a>(services: impl IntoIterator<Item = &'a Service>) -> bool {
    services.into_iter().any(|s| s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress))
}

/// The routing mesh's addresses for the boards in `wanted` that have none yet (Swarm's
/// ingress-sbox address), from the top of `ingress`'s subnet; `held` are the boards'
/// addresses already given. The caller persists each in its node record, which keeps it
/// until the node is removed. Boards left without one (the subnet full) are left out.
pub fn board_addresses(
    ingress: &Network,
    services: &[&Service],
    tasks: &[impl std::borrow::Borrow<Task>],
    held: &[Ipv4Addr],
    wanted: &[shoal_proto::NodeId],
) -> Vec<(shoal_proto::NodeId, Ipv4Addr)> {
    if wanted.is_empty() {
        return Vec::new();
    }
    let tasks = tasks.iter().map(std::borrow::Borrow::borrow);
    let mut ipam = Ipam::rebuild_from(std::slice::from_ref(ingress), services.iter().copied(), tasks);
    ipam.take_boards(&ingress.id, held.iter().copied());
    wanted.iter().filter_map(|n| Some((n.clone(), ipam.allocate_high(&ingress.id)?))).collect()
}

/// Refuses a spec whose published ports collide with another service's: an ingress port
/// answers on every board, so it clashes with any other service's port of the same
/// number and protocol, ingress or host mode (two host-mode ports only clash on one
/// board, which the scheduler handles).
pub fn check_published(others: &[&Service], service: &Service) -> Result<(), ErrorReply> {
    for p in service.spec.ports.iter() {
        let Some(port) = p.published else { continue };
        for o in others.iter().filter(|o| o.id != service.id) {
            let clash = o.spec.ports.iter().find(|q| {
                q.published == Some(port)
                    && q.protocol == p.protocol
                    && (p.mode == PublishMode::Ingress || q.mode == PublishMode::Ingress)
            });
            if let Some(q) = clash {
                let mode = |m: PublishMode| if m == PublishMode::Ingress { "ingress" } else { "host" };
                return Err(refuse(
                    ErrorKind::Conflict,
                    &format!(
                        "port {port}/{} is already published by service {} (mode {}), and an ingress port answers on every board: choose another published port",
                        p.protocol,
                        o.spec.name,
                        mode(q.mode)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The range ingress-mode ports without a published port are given one from (Swarm's).
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Gives each ingress-mode port of `service` that has no published port one from
/// [`DYNAMIC_PORTS`], written into its spec (so it is stored, and shown by `service
/// inspect` and `service ls`): the one `current` (the record before this change) had
/// for the same target and protocol, else the lowest that no other service publishes.
pub fn allocate_ingress_ports(
    others: &[&Service],
    current: Option<&Service>,
    service: &mut Service,
) -> Result<(), ErrorReply> {
    let mut used: BTreeSet<(u16, shoal_proto::Protocol)> = others
        .iter()
        .filter(|o| o.id != service.id)
        .flat_map(|o| o.spec.ports.iter())
        .filter_map(|p| Some((p.published?, p.protocol)))
        .collect();
    used.extend(service.spec.ports.iter().filter_map(|p| Some((p.published?, p.protocol))));
    let before: Vec<shoal_proto::PortConfig> = current.map(|c| c.spec.ports.to_vec()).unwrap_or_default();
    let mut ports = service.spec.ports.to_vec();
    for p in ports.iter_mut() {
        if p.mode != PublishMode::Ingress || p.published.is_some() {
            continue;
        }
        let kept = before
            .iter()
            .find(|q| q.mode == PublishMode::Ingress && q.target == p.target && q.protocol == p.protocol)
            .and_then(|q| q.published)
            .filter(|port| DYNAMIC_PORTS.contains(port) && !used.contains(&(*port, p.protocol)));
        let port = kept
            .or_else(|| DYNAMIC_PORTS.clone().find(|port| !used.contains(&(*port, p.protocol))))
            .ok_or_else(|| {
                refuse(
                    ErrorKind::Conflict,
                    "no published port is free in 30000-32767: give one with --publish PUBLISHED:TARGET",
                )
            })?;
        used.insert((port, p.protocol));
        p.published = Some(port);
    }
    // As many ports as before: it fits.
    service.spec.ports = ports.try_into().unwrap_or_default();
    Ok(())
}

/// Sets `record`'s VIPs for its current spec (keeping those of networks it stays on),
/// refusing unknown networks. `others` are the other services; `tasks` every task.
pub fn assign_vips(
    networks: &[Network],
    others: &[&Service],
    tasks: &[Task],
    service: &mut Service,
) -> Result<(), ErrorReply> {
    assign_vips_beside(networks, others, tasks, &[], service)
}

/// [`assign_vips`], with `boards` the boards' addresses on `ingress` (taken too).
pub fn assign_vips_beside(
    networks: &[Network],
    others: &[&Service],
    tasks: &[Task],
    boards: &[Ipv4Addr],
    service: &mut Service,
) -> Result<(), ErrorReply> {
    check_service_networks(networks, &service.spec)?;
    check_published(others, service)?;
    let mut ipam = Ipam::rebuild(networks, others.iter().copied().chain([&*service]), tasks);
    if let Some(ingress) = networks.iter().find(|n| n.ingress) {
        ipam.take_boards(&ingress.id, boards.iter().copied());
    }
    service.virtual_ips = service_vips(&mut ipam, networks, &service.spec, &service.virtual_ips)?;
    Ok(())
}

#[cfg(test)]
mod mesh_tests;
#[cfg(test)]
mod tests;
