//! The board's resolver for containers: one UDP socket on the bridge's gateway address
//! (port 53), named in every container's `/etc/resolv.conf`. It knows each container by
//! its source address on the bridge, answers the cluster names of the networks that
//! container is attached to ([`names`]), and forwards every other dotted name to the
//! board's own resolvers. Docker runs a resolver inside each container's namespace;
//! one socket per board does the same job with one task and no per-container state
//! beyond a map entry.
//!
//! [`respond`] is the whole decision, pure; [`Resolver::serve`] is the I/O around it.

pub mod names;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use names::{Names, Resolution};
use wire::{Rcode, WireError};

/// The DNS port.
pub const PORT: u16 = 53;
/// The largest UDP message read or forwarded (EDNS answers from upstreams can be larger
/// than 512 bytes).
pub const MAX_MESSAGE: usize = 4096;
/// How long an upstream gets to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; more are answered `SERVFAIL` at once, so a
/// container that floods the resolver cannot make it hold unbounded state.
pub const MAX_IN_FLIGHT: usize = 64;

/// What to do with one message from a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a cluster name: relay the message to the board's resolvers.
    Forward,
    /// Nothing can be answered (not even a header): ignore it.
    Drop,
}

/// The answer to `msg` from a container attached to `networks` (`None`: the sender is
/// no container of this board, refused so the bridge is no open resolver).
pub fn respond(names: &Names, networks: Option<&[String]>, msg: &[u8], rotate: usize) -> Decision {
    let q = match wire::parse_query(msg) {
        Ok(q) => q,
        Err(WireError::NoHeader(_)) => return Decision::Drop,
        Err(WireError::Malformed(_)) => return reply_bare(msg, Rcode::FormErr),
        Err(WireError::Unsupported) => return reply_bare(msg, Rcode::NotImp),
    };
    let Some(networks) = networks else {
        return Decision::Reply(wire::answer(&q, Rcode::Refused, &[], 0));
    };
    let nets: Vec<&str> = networks.iter().map(String::as_str).collect();
    match names.resolve(&nets, &q.name, rotate) {
        Resolution::Addresses(addrs, ttl) if q.qtype == wire::TYPE_A && q.qclass == wire::CLASS_IN => {
            Decision::Reply(wire::answer(&q, Rcode::NoError, &addrs, ttl))
        }
        // The name exists; it has no record of this type (AAAA, …): NOERROR with no
        // answer, never NXDOMAIN, or resolvers that ask A and AAAA at once give up.
        Resolution::Addresses(..) | Resolution::Empty => Decision::Reply(wire::answer(&q, Rcode::NoError, &[], 0)),
        Resolution::Unknown if q.name.contains('.') => Decision::Forward,
        // A single label that is no cluster name is no internet name either.
        Resolution::Unknown => Decision::Reply(wire::answer(&q, Rcode::NxDomain, &[], 0)),
    }
}

fn reply_bare(msg: &[u8], rcode: Rcode) -> Decision {
    match wire::id_of(msg) {
        Some(id) => Decision::Reply(wire::bare(id, rcode)),
        None => Decision::Drop,
    }
}

/// The board's own resolvers, from a `resolv.conf` text: IPv4 `nameserver` lines.
/// The agent runs in the board's namespace, so loopback resolvers (systemd-resolved's
/// 127.0.0.53) work as upstreams, unlike inside a container.
pub fn upstreams_from(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddr::from((ip, PORT)))
        .take(3)
        .collect()
}

/// A container's `/etc/resolv.conf` when the board's resolver serves it on `gateway`:
/// that one nameserver, and the board's `search` and `options` lines (at most 8 of
/// them, each at most 256 bytes: the board's file is trusted no more than it must be).
pub fn container_resolv_conf(gateway: Ipv4Addr, board_conf: &str) -> String {
    let mut text = format!("nameserver {gateway}\n");
    for line in search_and_options(board_conf) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A container's `/etc/resolv.conf` when the board's resolver is not running: the
/// board's own nameservers that a container can reach (not loopback ones, which would
/// be the container's own), with the `search` and `options` lines. `None` when the
/// board has none of those: the container then keeps its image's file.
pub fn board_resolv_conf(board_conf: &str) -> Option<String> {
    let servers: Vec<Ipv4Addr> = upstreams_from(board_conf)
        .into_iter()
        .filter_map(|s| match s.ip() {
            IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
            _ => None,
        })
        .collect();
    if servers.is_empty() {
        return None;
    }
    let mut text: String = servers.iter().map(|ip| format!("nameserver {ip}\n")).collect();
    for line in search_and_options(board_conf) {
        text.push_str(line);
        text.push('\n');
    }
    Some(text)
}

fn search_and_options(board_conf: &str) -> impl Iterator<Item = &str> {
    board_conf
        .lines()
        .map(str::trim)
        .filter(|l| (l.starts_with("search ") || l.starts_with("options ")) && l.len() <= 256)
        .take(8)
}

/// Serves a new resolver on `gateway:53` (UDP) in the background, forwarding to the
/// nameservers of `board_conf` (the board's `/etc/resolv.conf`). Fails when the
/// address can't be bound (port 53 taken by another resolver, most often); the caller
/// then leaves containers with the board's resolvers.
pub async fn start(gateway: Ipv4Addr, board_conf: &str) -> std::io::Result<Arc<Resolver>> {
    let socket = tokio::net::UdpSocket::bind((gateway, PORT)).await?;
    let resolver = Resolver::new(upstreams_from(board_conf));
    let serving = resolver.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(socket).await {
            tracing::warn!(%gateway, error = %e, "the containers' resolver stopped: containers on overlay networks no longer resolve names");
        }
    });
    Ok(resolver)
}

/// The resolver's state: the names, and which container (by address) sees which
/// networks. Both are replaced whole as the manager's view changes.
#[derive(Debug, Default)]
pub struct Resolver {
    names: RwLock<Arc<Names>>,
    clients: RwLock<HashMap<Ipv4Addr, Vec<String>>>,
    upstreams: RwLock<Vec<SocketAddr>>,
    rotate: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Resolver {
    /// A resolver forwarding to `upstreams`.
    pub fn new(upstreams: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Self { upstreams: RwLock::new(upstreams), ..Self::default() })
    }

    /// Replaces every cluster name.
    pub fn set_names(&self, names: Names) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(names);
    }

    /// Records that the container at `ip` (its bridge address) is attached to `networks`;
    /// an empty list still makes it a client (it gets forwarding only).
    pub fn set_client(&self, ip: Ipv4Addr, networks: Vec<String>) {
        self.clients.write().unwrap_or_else(|p| p.into_inner()).insert(ip, networks);
    }

    /// Replaces every client at once (see [`Resolver::set_client`]).
    pub fn set_clients(&self, clients: HashMap<Ipv4Addr, Vec<String>>) {
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = clients;
    }

    /// Forgets the container at `ip`.
    pub fn remove_client(&self, ip: Ipv4Addr) {
        self.clients.write().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }

    fn decide(&self, from: SocketAddr, msg: &[u8]) -> Decision {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner()).clone();
        let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
        let networks = match from.ip() {
            IpAddr::V4(ip) => clients.get(&ip).map(Vec::as_slice),
            IpAddr::V6(_) => None,
        };
        respond(&names, networks, msg, self.rotate.fetch_add(1, Ordering::Relaxed))
    }

    /// Answers on `socket` until it fails. Forwarded queries run as their own tasks.
    pub async fn serve(self: Arc<Self>, socket: tokio::net::UdpSocket) -> std::io::Result<()> {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            let msg = &buf[..n];
            match self.decide(from, msg) {
                Decision::Reply(answer) => {
                    let _ = socket.send_to(&answer, from).await;
                }
                Decision::Drop => {}
                Decision::Forward => {
                    if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                        self.in_flight.fetch_sub(1, Ordering::AcqRel);
                        if let Decision::Reply(a) = reply_bare(msg, Rcode::ServFail) {
                            let _ = socket.send_to(&a, from).await;
                        }
                        continue;
                    }
                    let (me, socket, msg) = (self.clone(), socket.clone(), msg.to_vec());
                    tokio::spawn(async move {
                        let answer = me.forward(&msg).await;
                        me.in_flight.fetch_sub(1, Ordering::AcqRel);
                        let answer = answer.or_else(|| match reply_bare(&msg, Rcode::ServFail) {
                            Decision::Reply(a) => Some(a),
                            _ => None,
                        });
                        if let Some(a) = answer {
                            let _ = socket.send_to(&a, from).await;
                        }
                    });
                }
            }
        }
    }

    /// Asks each upstream in turn; the first answer with the query's ID wins.
    async fn forward(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let id = wire::id_of(msg)?;
        let upstreams = self.upstreams.read().unwrap_or_else(|p| p.into_inner()).clone();
        for up in upstreams {
            let Ok(sock) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else { continue };
            if sock.connect(up).await.is_err() || sock.send(msg).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; MAX_MESSAGE];
            // A connected socket only receives from `up`; a reply with another ID is
            // not ours (spoofing or a late answer) and is skipped.
            let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                if wire::id_of(&buf[..n]) == Some(id) {
                    return Some(buf[..n].to_vec());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
        m
    }

    fn rcode(d: &Decision) -> u8 {
        match d {
            Decision::Reply(a) => a[3] & 0xf,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn decisions() {
        let mut n = Names::default();
        n.add_service("net1", "web", Some(Ipv4Addr::new(10, 0, 1, 100)));
        let nets = vec!["net1".to_string()];
        assert_eq!(rcode(&respond(&n, Some(&nets), &query("web", wire::TYPE_A), 0)), 0);
        let aaaa = respond(&n, Some(&nets), &query("web", wire::TYPE_AAAA), 0);
        assert_eq!(rcode(&aaaa), 0, "AAAA of a cluster name is NODATA, not NXDOMAIN");
        assert_eq!(rcode(&respond(&n, Some(&nets), &query("nosuch", wire::TYPE_A), 0)), 3);
        assert_eq!(respond(&n, Some(&nets), &query("example.org", wire::TYPE_A), 0), Decision::Forward);
        assert_eq!(rcode(&respond(&n, None, &query("web", wire::TYPE_A), 0)), 5, "strangers are refused");
        assert_eq!(respond(&n, Some(&nets), &[1, 2, 3], 0), Decision::Drop);
        let mut bad = query("web", wire::TYPE_A);
        bad.truncate(14);
        assert_eq!(rcode(&respond(&n, Some(&nets), &bad, 0)), 1);
    }

    #[test]
    fn containers_get_the_gateway_or_the_boards_reachable_resolvers() {
        let board = "nameserver 127.0.0.53\nsearch lan example.org\noptions edns0 trust-ad\nnameserver 192.0.2.1\n";
        let gw = Ipv4Addr::new(10, 88, 0, 1);
        assert_eq!(
            container_resolv_conf(gw, board),
            "nameserver 10.88.0.1\nsearch lan example.org\noptions edns0 trust-ad\n"
        );
        assert_eq!(
            board_resolv_conf(board).unwrap(),
            "nameserver 192.0.2.1\nsearch lan example.org\noptions edns0 trust-ad\n"
        );
        assert_eq!(board_resolv_conf("nameserver 127.0.0.53\nsearch lan\n"), None);
        let hostile = format!("search {}\n", "a".repeat(10_000)).repeat(3) + &"options x\n".repeat(100);
        assert_eq!(container_resolv_conf(gw, &hostile).lines().count(), 9);
    }

    #[test]
    fn upstreams_are_read_from_resolv_conf() {
        let conf = "# comment\nnameserver 127.0.0.53\nnameserver ::1\nsearch lan\nnameserver 192.0.2.1\n";
        assert_eq!(
            upstreams_from(conf),
            vec![SocketAddr::from(([127, 0, 0, 53], 53)), SocketAddr::from(([192, 0, 2, 1], 53))]
        );
    }
}
