//! An IPv4 subnet (`10.88.0.0/16`): parsing, membership and the host addresses it offers.
//! Pure values, no I/O. IPv6 is not handled.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The smallest prefix accepted: a /16 holds 65,534 hosts, which bounds the allocation
/// table (and its file) on a board.
pub const MIN_PREFIX: u8 = 16;
/// The largest prefix accepted: a /30 leaves two hosts, the gateway and one container.
pub const MAX_PREFIX: u8 = 30;

/// An IPv4 network address and prefix length; the address has no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet from its network address and prefix, refusing host bits and prefixes
    /// outside [`MIN_PREFIX`]..=[`MAX_PREFIX`].
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!("prefix /{prefix} is outside /{MIN_PREFIX}../{MAX_PREFIX}"));
        }
        let s = Self { network, prefix };
        if u32::from(network) & !s.mask() != 0 {
            return Err(format!(
                "{network}/{prefix} has host bits set: use {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & s.mask())
            ));
        }
        Ok(s)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// How many addresses the subnet spans, network and broadcast included.
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The address at `offset` from the network address, if inside the subnet.
    pub fn nth(&self, offset: u32) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + offset))
    }

    /// The offset of `ip` from the network address, if inside the subnet.
    pub fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| u32::from(ip) - u32::from(self.network))
    }

    /// The gateway: the first host address (`.1`), which the bridge carries.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `offset` names an address a container may get: not the network
    /// address, not the gateway, not the broadcast address.
    pub fn is_assignable(&self, offset: u32) -> bool {
        offset >= 2 && offset < self.size() - 1
    }

    /// How many addresses containers can get.
    pub fn assignable(&self) -> u32 {
        self.size() - 3
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not of the form a.b.c.d/n"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        Self::new(network, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.size(), 65536);
        assert_eq!(s.assignable(), 65533);
        assert!(s.contains(Ipv4Addr::new(10, 88, 255, 254)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 0, 1)));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in ["10.88.0.1/16", "10.88.0.0/8", "10.88.0.0/31", "10.88.0.0", "x/16", "10.88.0.0/x"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn assignable_skips_network_gateway_broadcast() {
        let s: Subnet = "10.77.3.0/30".parse().unwrap();
        let ok: Vec<u32> = (0..s.size()).filter(|o| s.is_assignable(*o)).collect();
        assert_eq!(ok, vec![2]);
        assert_eq!(s.assignable(), 1);
        assert_eq!(s.offset(Ipv4Addr::new(10, 77, 3, 2)), Some(2));
        assert_eq!(s.nth(4), None);
    }
}
