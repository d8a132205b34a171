//! The netlink side: the bridge, veth pairs and the addressing inside a sandbox, all
//! through rtnetlink (no `ip` binary). Each function opens its own short-lived netlink
//! connection on the runtime it is called from, so a connection is always in the
//! namespace of the thread that made it and no state outlives a call.
//!
//! Everything here is idempotent where the caller needs it to be: an existing bridge,
//! address or route is accepted, a missing link on deletion is fine.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use rustix::io::Errno;

use super::error::{errno, NetError};

/// A netlink connection whose driver task ends with it.
pub(super) struct Conn {
    handle: Handle,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Opens a connection in the calling thread's network namespace; needs a tokio runtime.
    pub(super) fn open() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::io("opening a netlink socket", e))?;
        let driver = tokio::spawn(conn);
        Ok(Self { handle, driver })
    }

    /// The request handle.
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub(super) fn is(e: &rtnetlink::Error, code: Errno) -> bool {
    errno(e) == Some(code.raw_os_error())
}

/// A link's index and kind, or `None` if there is no link of that name.
pub(super) async fn find(c: &Conn, name: &str) -> Result<Option<(u32, Option<InfoKind>)>, NetError> {
    let mut links = c.handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(msg)) => {
            let kind = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.clone()),
                    _ => None,
                }),
                _ => None,
            });
            Ok(Some((msg.header.index, kind)))
        }
        Ok(None) => Ok(None),
        Err(e) if is(&e, Errno::NODEV) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("looking up interface {name}"), e)),
    }
}

/// Makes the bridge `name` exist, carry `gateway/prefix`, keep one MAC address and be
/// up, leaving whatever else it has (ports, other addresses) alone, so running
/// containers are undisturbed.
///
/// The MAC is pinned because a bridge whose address was never set takes the lowest MAC
/// of its ports, and so changes when that port's container goes: the other containers
/// still hold the old MAC for their gateway and their packets to it (DNS to the board's
/// resolver, traffic leaving the board) are lost until their neighbour entry is probed
/// again, up to ~40 s. A new bridge gets the MAC of its gateway address
/// ([`super::overlay::mac_of`]); an existing one keeps the MAC
/// it has, set explicitly (which the kernel then never changes), so containers that
/// outlived an agent restart keep reaching it.
pub(super) async fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32, NetError> {
    let c = Conn::open()?;
    let mut created = false;
    let index = match find(&c, name).await? {
        Some((index, Some(InfoKind::Bridge))) => index,
        Some(_) => return Err(NetError::NotABridge(name.to_string())),
        None => {
            created = true;
            match c.handle.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => {}
                // Another caller made it in between: fine if it is a bridge (checked below).
                Err(e) if is(&e, Errno::EXIST) => {}
                Err(e) => return Err(NetError::netlink(format!("creating bridge {name}"), e)),
            }
            match find(&c, name).await? {
                Some((index, Some(InfoKind::Bridge))) => index,
                Some(_) => return Err(NetError::NotABridge(name.to_string())),
                None => {
                    return Err(NetError::io(
                        format!("creating bridge {name}"),
                        std::io::Error::other("the bridge vanished right after creation"),
                    ))
                }
            }
        }
    };
    let has_address = c
        .handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_filter(|m| {
            let hit = m.header.prefix_len == prefix
                && m.attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == gateway));
            futures_util::future::ready(hit)
        })
        .try_next()
        .await
        .map_err(|e| NetError::netlink(format!("listing addresses of {name}"), e))?
        .is_some();
    if !has_address {
        match c.handle.address().add(index, IpAddr::V4(gateway), prefix).execute().await {
            Ok(()) => {}
            Err(e) if is(&e, Errno::EXIST) => {}
            Err(e) => return Err(NetError::netlink(format!("adding {gateway}/{prefix} to {name}"), e)),
        }
    }
    let mac = match created {
        // As overlay addresses get theirs; each board's bridge is an L2 segment of
        // its own, so the same gateway on every board is no clash.
        true => super::overlay::mac_of(gateway).to_vec(),
        false => current_mac(&c, index, name).await?,
    };
    c.handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(mac).up().build())
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("pinning the MAC address of {name} and bringing it up"), e))?;
    Ok(index)
}

/// The MAC address link `index` has now.
async fn current_mac(c: &Conn, index: u32, name: &str) -> Result<Vec<u8>, NetError> {
    let msg = c
        .handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(|e| NetError::netlink(format!("looking up interface {name}"), e))?;
    msg.and_then(|m| {
        m.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(mac) if mac.len() == 6 => Some(mac),
            _ => None,
        })
    })
    .ok_or_else(|| NetError::io(format!("reading the MAC address of {name}"), std::io::Error::other("none reported")))
}

/// Creates a veth pair: `host` on the host, attached to `bridge` and up; its peer
/// created directly inside the namespace open as `netns` under the name `eth0`, so no
/// host-side name is ever taken by it.
pub(super) async fn create_veth(host: &str, bridge: &str, netns: &std::fs::File) -> Result<(), NetError> {
    let c = Conn::open()?;
    let Some((bridge_index, _)) = find(&c, bridge).await? else {
        return Err(NetError::Config(format!("bridge {bridge} does not exist: call ensure_bridge first")));
    };
    let peer = LinkUnspec::new_with_name("eth0").setns_by_fd(netns.as_raw_fd()).build();
    let msg = LinkVeth::new(host, "eth0")
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge_index)
        .up()
        .build();
    c.handle.link().add(msg).execute().await.map_err(|e| NetError::netlink(format!("creating veth pair {host}"), e))
}

/// Deletes the link `name`; a missing one is fine. Deleting one end of a veth pair
/// deletes both.
pub(super) async fn delete(name: &str) -> Result<(), NetError> {
    let c = Conn::open()?;
    let Some((index, _)) = find(&c, name).await? else {
        return Ok(());
    };
    match c.handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is(&e, Errno::NODEV) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("deleting interface {name}"), e)),
    }
}

/// Inside a sandbox (called on a thread that entered it): `lo` up, `eth0` up with
/// `ip/prefix`, default route via `gateway`.
pub(super) async fn configure_inside(ip: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<(), NetError> {
    let c = Conn::open()?;
    let Some((lo, _)) = find(&c, "lo").await? else {
        return Err(NetError::Config("the sandbox has no loopback interface".into()));
    };
    let Some((eth0, _)) = find(&c, "eth0").await? else {
        return Err(NetError::Config("the sandbox has no eth0 interface".into()));
    };
    for (index, name) in [(lo, "lo"), (eth0, "eth0")] {
        c.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("bringing {name} up in the sandbox"), e))?;
    }
    match c.handle.address().add(eth0, IpAddr::V4(ip), prefix).execute().await {
        Ok(()) => {}
        Err(e) if is(&e, Errno::EXIST) => {}
        Err(e) => return Err(NetError::netlink(format!("adding {ip}/{prefix} to eth0"), e)),
    }
    let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(eth0).build();
    match c.handle.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is(&e, Errno::EXIST) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("adding the default route via {gateway}"), e)),
    }
}
