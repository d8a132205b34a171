//! Overlay networks on a board, in the kernel: per network one bridge (`sob<VNI>`, no
//! address, so the host never routes into it, except `ingress`'s on a board of the
//! routing mesh: [`set_address`]) and one VXLAN device (`sov<VNI>`, UDP 4789, or a port
//! of its own when encrypted) enslaved to it; containers join through a veth whose far
//! end is their `ethN`.
//!
//! Nothing is learnt from the wire: VXLAN learning is off and ARP is answered by the
//! VXLAN device itself (its `proxy` mode) from neighbour entries the agent writes, so no
//! multicast, no flooding. Every container address on a network has a fixed MAC derived
//! from it ([`mac_of`], as Docker does), so the manager only needs to send, for each
//! remote task, its address and the underlay address of its board ([`Peer`]); the agent
//! turns that into one forwarding entry (MAC → board) and one neighbour entry (IP → MAC)
//! per peer ([`set_peers`], which also removes the entries of peers that went away).
//!
//! All of it through rtnetlink, no `ip` or `bridge` binary. Each function works in the
//! network namespace of the calling thread.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, InfoVxlan};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};
use rustix::io::Errno;

use super::error::{errno, NetError};
use super::link::{find, is, Conn};
use super::subnet::Subnet;

/// The IANA VXLAN port, as Docker and Linux use by default.
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN over IPv4 adds to each frame: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14). Containers' MTU is the underlay's minus this, so nothing fragments.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// What ESP in transport mode with AES-GCM adds to an encrypted overlay's packets, at
/// most: SPI and sequence (8), IV (8), padding, pad length and next header (≤ 5), tag (16),
/// rounded up.
pub const ESP_OVERHEAD: u32 = 40;
/// Encrypted networks' VXLAN packets go to UDP port `ENCRYPTED_PORT_BASE + VNI % ENCRYPTED_PORTS`
/// instead of 4789, so IPsec policies can select them (and only them) by port.
pub const ENCRYPTED_PORT_BASE: u16 = 24000;
/// How many ports encrypted networks spread over (all below Linux's ephemeral range).
pub const ENCRYPTED_PORTS: u32 = 8192;

/// One overlay network as a board sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay {
    /// The VXLAN network identifier, unique in the cluster (the manager hands them out).
    pub vni: u32,
    /// The network's subnet: container addresses come from it.
    pub subnet: Subnet,
    /// The MTU of the bridge, the VXLAN device and the containers' interfaces.
    pub mtu: u32,
    /// The UDP port its VXLAN packets go to ([`VXLAN_PORT`], or one of its own when
    /// encrypted: see [`Overlay::encrypted`]).
    pub port: u16,
}

impl Overlay {
    /// An overlay over an underlay of MTU `underlay_mtu` (usually 1500).
    pub fn new(vni: u32, subnet: Subnet, underlay_mtu: u32) -> Result<Self, NetError> {
        if vni == 0 || vni > MAX_VNI {
            return Err(NetError::Config(format!("VXLAN network identifier {vni} is outside 1..={MAX_VNI}")));
        }
        let mtu = underlay_mtu.checked_sub(VXLAN_OVERHEAD).filter(|m| *m >= 576).ok_or_else(|| {
            NetError::Config(format!("an underlay MTU of {underlay_mtu} leaves too little room for VXLAN"))
        })?;
        Ok(Self { vni, subnet, mtu, port: VXLAN_PORT })
    }

    /// The same overlay, encrypted: its own UDP port ([`encrypted_port`]) and room for ESP
    /// in its MTU.
    pub fn encrypted(self) -> Self {
        Self { mtu: self.mtu - ESP_OVERHEAD, port: encrypted_port(self.vni), ..self }
    }

    /// The bridge's name: `sob` and the VNI in decimal (at most 11 bytes).
    pub fn bridge(&self) -> String {
        format!("sob{}", self.vni)
    }

    /// The VXLAN device's name: `sov` and the VNI.
    pub fn vxlan(&self) -> String {
        format!("sov{}", self.vni)
    }
}

/// The UDP port of encrypted network `vni`'s VXLAN packets: every board computes the
/// same one, and two networks share one only if their VNIs differ by a multiple of
/// [`ENCRYPTED_PORTS`].
pub fn encrypted_port(vni: u32) -> u16 {
    ENCRYPTED_PORT_BASE + (vni % ENCRYPTED_PORTS) as u16
}

/// A container of the network on another board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The container's address on the overlay.
    pub ip: Ipv4Addr,
    /// Its board's underlay address (where its VXLAN packets go).
    pub board: Ipv4Addr,
}

/// The MAC address of overlay address `ip`: locally administered `02:42` and the four
/// address bytes, so both ends agree on it without asking anyone.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Makes the overlay's bridge and VXLAN device exist and be up, sending from `local`
/// (this board's underlay address). Idempotent: what exists is kept, so containers
/// already attached stay connected.
pub async fn ensure(o: &Overlay, local: Ipv4Addr) -> Result<(), NetError> {
    let c = Conn::open()?;
    let bridge = o.bridge();
    let bridge_index = match find(&c, &bridge).await? {
        Some((index, Some(InfoKind::Bridge))) => index,
        Some(_) => return Err(NetError::NotABridge(bridge)),
        None => {
            let msg = LinkBridge::new(&bridge).mtu(o.mtu).up().build();
            match c.handle().link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if is(&e, Errno::EXIST) => {}
                Err(e) => return Err(NetError::netlink(format!("creating bridge {bridge}"), e)),
            }
            find_index(&c, &bridge).await?
        }
    };
    let vxlan = o.vxlan();
    let vxlan_index = match find(&c, &vxlan).await? {
        Some((index, Some(InfoKind::Vxlan))) => index,
        Some(_) => {
            return Err(NetError::Config(format!(
                "network interface {vxlan} exists but is not a VXLAN device: delete it"
            )))
        }
        None => {
            let msg = LinkVxlan::new(&vxlan, o.vni)
                .local(local)
                .port(o.port)
                .learning(false)
                .append_info_data(InfoVxlan::Proxy(true))
                .append_info_data(InfoVxlan::Ttl(64))
                .mtu(o.mtu)
                .controller(bridge_index)
                .up()
                .build();
            match c.handle().link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if is(&e, Errno::EXIST) => {}
                // Unknown link kind: the kernel was built without VXLAN (or its module
                // is not loaded and cannot be).
                Err(e) if is(&e, Errno::OPNOTSUPP) || is(&e, Errno::NOTSUP) || is(&e, Errno::NOENT) => {
                    return Err(NetError::MissingKernelFeature { feature: "VXLAN", option: "CONFIG_VXLAN" })
                }
                Err(e) => return Err(NetError::netlink(format!("creating VXLAN device {vxlan}"), e)),
            }
            find_index(&c, &vxlan).await?
        }
    };
    for (index, name) in [(bridge_index, &bridge), (vxlan_index, &vxlan)] {
        c.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("bringing {name} up"), e))?;
    }
    Ok(())
}

/// Gives the overlay's bridge this board's own address on the network (`ip`, with the
/// MAC [`mac_of`] it, so the other boards' forwarding entries reach it) and no other:
/// what the routing mesh needs, on `ingress` only. The board then routes into the
/// overlay, and replies to the mesh's traffic come back to it.
pub async fn set_address(o: &Overlay, ip: Ipv4Addr) -> Result<(), NetError> {
    let c = Conn::open()?;
    let bridge = o.bridge();
    let index = find_index(&c, &bridge).await?;
    c.handle()
        .link()
        .set(LinkUnspec::new_with_index(index).address(mac_of(ip).to_vec()).up().build())
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("setting the MAC address of {bridge}"), e))?;
    let present: Vec<_> = c
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetError::netlink(format!("listing addresses of {bridge}"), e))?;
    let mut has = false;
    for m in present {
        let this = m.attributes.iter().any(
            |a| matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) if *a == ip),
        );
        if this && m.header.prefix_len == o.subnet.prefix() {
            has = true;
        } else if let Err(e) = c.handle().address().del(m).execute().await {
            if errno(&e) != Some(Errno::ADDRNOTAVAIL.raw_os_error()) {
                return Err(NetError::netlink(format!("removing an old address of {bridge}"), e));
            }
        }
    }
    if !has {
        match c.handle().address().add(index, IpAddr::V4(ip), o.subnet.prefix()).execute().await {
            Ok(()) => {}
            Err(e) if is(&e, Errno::EXIST) => {}
            Err(e) => return Err(NetError::netlink(format!("adding {ip}/{} to {bridge}", o.subnet.prefix()), e)),
        }
    }
    Ok(())
}

/// Deletes the overlay's VXLAN device and bridge (and so every forwarding and neighbour
/// entry with them); missing ones are fine.
pub async fn remove(o: &Overlay) -> Result<(), NetError> {
    super::link::delete(&o.vxlan()).await?;
    super::link::delete(&o.bridge()).await
}

/// Connects a container to the overlay: a veth pair, `host` on the bridge, its peer made
/// directly inside `netns` as `ifname` with the MAC of `ip` and the overlay's MTU. The
/// address itself is set from inside the namespace ([`configure_inside`]).
pub async fn attach(
    o: &Overlay,
    host: &str,
    netns: &std::fs::File,
    ifname: &str,
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    if !o.subnet.contains(ip) {
        return Err(NetError::ForeignAddress { ip, subnet: o.subnet.to_string() });
    }
    let c = Conn::open()?;
    let bridge = o.bridge();
    let Some((bridge_index, _)) = find(&c, &bridge).await? else {
        return Err(NetError::Config(format!("overlay bridge {bridge} does not exist: call overlay::ensure first")));
    };
    let peer = LinkUnspec::new_with_name(ifname)
        .address(mac_of(ip).to_vec())
        .mtu(o.mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(o.mtu)
        .controller(bridge_index)
        .up()
        .build();
    c.handle().link().add(msg).execute().await.map_err(|e| NetError::netlink(format!("creating veth pair {host}"), e))
}

/// Connects the container whose namespace is pinned at `netns_path` to the overlay as
/// `ifname` with address `ip`: [`attach`], then [`configure_inside`] on a thread that
/// entered the namespace.
pub async fn join(
    o: &Overlay,
    host: &str,
    netns_path: &std::path::Path,
    ifname: &str,
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    let ns = std::fs::File::open(netns_path)
        .map_err(|e| NetError::io(format!("opening network namespace {}", netns_path.display()), e))?;
    attach(o, host, &ns, ifname, ip).await?;
    drop(ns);
    let (o, ifname) = (*o, ifname.to_owned());
    super::netns::run_in(netns_path, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| NetError::io("starting a runtime in the sandbox", e))?;
        rt.block_on(configure_inside(&o, &ifname, ip))
    })
    .await
}

/// Inside a container's namespace (on a thread that entered it): `ifname` up with
/// `ip` and the overlay's prefix. No route beyond the subnet: the default route stays
/// on the board's bridge network.
pub async fn configure_inside(o: &Overlay, ifname: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    let c = Conn::open()?;
    let index = find_index(&c, ifname).await?;
    c.handle()
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("bringing {ifname} up in the sandbox"), e))?;
    match c.handle().address().add(index, IpAddr::V4(ip), o.subnet.prefix()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is(&e, Errno::EXIST) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("adding {ip}/{} to {ifname}", o.subnet.prefix()), e)),
    }
}

/// Makes the VXLAN device's forwarding and neighbour entries exactly `peers`: missing
/// ones are added (or corrected), ones of peers no longer listed are deleted. Local
/// containers are not peers (the bridge finds them itself).
pub async fn set_peers(o: &Overlay, peers: &[Peer]) -> Result<(), NetError> {
    let c = Conn::open()?;
    let vxlan = o.vxlan();
    let index = find_index(&c, &vxlan).await?;
    let wanted: BTreeSet<Peer> = peers.iter().copied().filter(|p| o.subnet.contains(p.ip)).collect();

    // What is there now: forwarding entries (MAC → board) and neighbours (IP → MAC).
    let fdb: Vec<_> = c
        .handle()
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_filter(|m| futures_util::future::ready(m.header.ifindex == index))
        .try_collect()
        .await
        .map_err(|e| NetError::netlink(format!("listing forwarding entries of {vxlan}"), e))?;
    let neigh: Vec<_> = c
        .handle()
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_filter(|m| futures_util::future::ready(m.header.ifindex == index))
        .try_collect()
        .await
        .map_err(|e| NetError::netlink(format!("listing neighbour entries of {vxlan}"), e))?;

    let wanted_macs: BTreeSet<[u8; 6]> = wanted.iter().map(|p| mac_of(p.ip)).collect();
    let wanted_ips: BTreeSet<Ipv4Addr> = wanted.iter().map(|p| p.ip).collect();
    for m in fdb {
        let mac = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => None,
        });
        // The kernel's own entry for the device (all-zero MAC) is not ours to touch.
        if mac.is_some_and(|mac| mac != [0; 6] && !wanted_macs.contains(&mac)) {
            delete_entry(&c, m, &vxlan).await?;
        }
    }
    for m in neigh {
        let ip = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        if ip.is_some_and(|ip| !wanted_ips.contains(&ip)) {
            delete_entry(&c, m, &vxlan).await?;
        }
    }

    for p in &wanted {
        let mac = mac_of(p.ip);
        let mut fdb = c
            .handle()
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        fdb.message_mut().attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(p.board)));
        fdb.execute()
            .await
            .map_err(|e| NetError::netlink(format!("adding forwarding entry for {} on {vxlan}", p.ip), e))?;
        c.handle()
            .neighbours()
            .add(index, IpAddr::V4(p.ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("adding neighbour entry for {} on {vxlan}", p.ip), e))?;
    }
    Ok(())
}

async fn delete_entry(
    c: &Conn,
    m: rtnetlink::packet_route::neighbour::NeighbourMessage,
    vxlan: &str,
) -> Result<(), NetError> {
    match c.handle().neighbours().del(m).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(Errno::NOENT.raw_os_error()) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("deleting a stale entry of {vxlan}"), e)),
    }
}

async fn find_index(c: &Conn, name: &str) -> Result<u32, NetError> {
    match find(c, name).await? {
        Some((index, _)) => Ok(index),
        None => Err(NetError::Config(format!("network interface {name} vanished while it was being set up"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_and_macs_are_local() {
        let o = Overlay::new(MAX_VNI, Subnet::new(Ipv4Addr::new(10, 0, 1, 0), 24).unwrap(), 1500).unwrap();
        assert!(o.bridge().len() <= 15 && o.vxlan().len() <= 15);
        assert_eq!(o.mtu, 1450);
        let mac = mac_of(Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(mac, [0x02, 0x42, 10, 0, 1, 2]);
        // Locally administered, unicast.
        assert_eq!(mac[0] & 0b11, 0b10);
    }

    #[test]
    fn bad_overlays_are_refused() {
        let s = Subnet::new(Ipv4Addr::new(10, 0, 1, 0), 24).unwrap();
        assert!(Overlay::new(0, s, 1500).is_err());
        assert!(Overlay::new(MAX_VNI + 1, s, 1500).is_err());
        assert!(Overlay::new(7, s, 600).is_err());
    }

    #[test]
    fn encrypted_overlays_have_their_own_port_and_room_for_esp() {
        let s = Subnet::new(Ipv4Addr::new(10, 0, 1, 0), 24).unwrap();
        let plain = Overlay::new(4097, s, 1500).unwrap();
        assert_eq!(plain.port, VXLAN_PORT);
        let e = plain.encrypted();
        assert_eq!((e.port, e.mtu, e.vni), (24000 + 4097, 1410, 4097));
        assert_eq!(Overlay::new(MAX_VNI, s, 1500).unwrap().encrypted().port, 24000 + 8191);
        assert!(u32::from(ENCRYPTED_PORT_BASE) + ENCRYPTED_PORTS <= 32768);
    }
}
