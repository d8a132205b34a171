//! What the agent wants of the kernel's NAT, as plain values: outbound masquerade for
//! container subnets and load-balanced DNAT for service addresses. [`Ruleset::validate`]
//! refuses what can't be rendered; nothing here touches the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::error::RulesetError;
use crate::net::Subnet;

/// At most this many services in one ruleset: each is a chain, and the whole ruleset
/// goes to the kernel in one message batch.
pub const MAX_SERVICES: usize = 4096;
/// At most this many backends per service (one rule each).
pub const MAX_BACKENDS: usize = 256;
/// At most this many masquerade rules.
pub const MAX_MASQUERADES: usize = 64;

/// The agent's whole NAT configuration; applying one replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Outbound NAT for container subnets.
    pub masquerades: Vec<Masquerade>,
    /// Load-balanced destinations.
    pub services: Vec<Service>,
    /// `oifname "<name>" masquerade`: everything routed out through these interfaces
    /// takes their address (the routing mesh's bridge, so replies come back to the board
    /// the connection entered by).
    pub masquerade_via: Vec<String>,
}

/// A container's own load balancer, applied in its network namespace (see
/// [`super::render::render_sandbox`]): connections it opens to one of `vips` go to one of
/// that VIP's backends, the port kept; a VIP without backends refuses them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxRuleset {
    /// Virtual IP → the addresses of its service's running tasks (empty: refused).
    pub vips: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

impl SandboxRuleset {
    /// The VIPs with backends as port-less services, and the VIPs to refuse.
    pub fn split(&self) -> (Ruleset, Vec<Ipv4Addr>) {
        let mut ruleset = Ruleset::default();
        let mut refused = Vec::new();
        for (vip, backends) in &self.vips {
            if backends.is_empty() {
                refused.push(*vip);
            } else {
                ruleset.services.push(Service {
                    destination: Destination::Address(*vip),
                    proto: L4::Any,
                    port: 0,
                    backends: backends.iter().map(|b| SocketAddrV4::new(*b, 0)).collect(),
                });
            }
        }
        (ruleset, refused)
    }
}

/// `ip saddr <source> oifname != "<except_out>" masquerade`: traffic from `source`
/// leaving through any interface but its own bridge takes the outgoing interface's
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The containers' subnet.
    pub source: Subnet,
    /// Their bridge, where traffic stays un-NATed.
    pub except_out: String,
}

/// Connections to `destination:port` over `proto` go to one of `backends`, chosen
/// uniformly at random per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The address matched.
    pub destination: Destination,
    /// The transport protocol matched.
    pub proto: L4,
    /// The destination port matched (not 0).
    pub port: u16,
    /// Where connections go (at least one; ports not 0).
    pub backends: Vec<SocketAddrV4>,
}

/// Which destination address a [`Service`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One address, such as a service VIP (no interface needs to carry it).
    Address(Ipv4Addr),
    /// Any address local to the board (`fib daddr type local`): a published port.
    Local,
}

/// A transport protocol, or every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Any protocol and port: the service matches its destination address alone and
    /// keeps the port (a service's virtual IP, which answers on every port its tasks
    /// listen on). Its `port` and its backends' ports are 0.
    Any,
}

impl L4 {
    /// Its IP protocol number (`None` for [`L4::Any`]).
    pub fn number(self) -> Option<u8> {
        match self {
            L4::Tcp => Some(6),
            L4::Udp => Some(17),
            L4::Any => None,
        }
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Any => "any",
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Address(a) => write!(f, "{a}"),
            Destination::Local => f.write_str("*"),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            L4::Any => write!(f, "{}/any", self.destination),
            _ => write!(f, "{}:{}/{}", self.destination, self.port, self.proto),
        }
    }
}

impl fmt::Display for Masquerade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "masquerade {} not via {}", self.source, self.except_out)
    }
}

impl Ruleset {
    /// Checks everything the renderer relies on; the first problem is the error.
    pub fn validate(&self) -> Result<(), RulesetError> {
        if self.masquerades.len() > MAX_MASQUERADES {
            return Err(RulesetError::TooMany {
                what: "masquerade rules",
                count: self.masquerades.len(),
                max: MAX_MASQUERADES,
            });
        }
        if self.services.len() > MAX_SERVICES {
            return Err(RulesetError::TooMany { what: "services", count: self.services.len(), max: MAX_SERVICES });
        }
        if self.masquerade_via.len() > MAX_MASQUERADES {
            return Err(RulesetError::TooMany {
                what: "masquerade rules",
                count: self.masquerade_via.len(),
                max: MAX_MASQUERADES,
            });
        }
        for name in self.masquerades.iter().map(|m| &m.except_out).chain(&self.masquerade_via) {
            let ok = !name.is_empty()
                && name.len() <= 15
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return Err(RulesetError::Interface(name.chars().take(32).collect()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.services {
            let any = s.proto == L4::Any;
            if any && s.port != 0 {
                return Err(RulesetError::PortOfAny(s.to_string()));
            }
            if !any && s.port == 0 {
                return Err(RulesetError::ZeroPort(s.to_string()));
            }
            if s.backends.is_empty() {
                return Err(RulesetError::NoBackends(s.to_string()));
            }
            if s.backends.len() > MAX_BACKENDS {
                return Err(RulesetError::TooMany {
                    what: "backends of one service",
                    count: s.backends.len(),
                    max: MAX_BACKENDS,
                });
            }
            // A port-less service keeps the connection's port: its backends name none.
            if let Some(b) = s.backends.iter().find(|b| (b.port() == 0) != any || b.ip().is_unspecified()) {
                return Err(RulesetError::Backend { service: s.to_string(), backend: b.to_string() });
            }
            if !seen.insert((s.destination, s.proto, s.port)) {
                return Err(RulesetError::Duplicate(s.to_string()));
            }
        }
        Ok(())
    }
}
