//! Identifiers: node IDs are 25 lowercase base-36 characters, like Swarm's.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Length of a node ID.
pub const ID_LEN: usize = 25;

/// A node's cluster-wide identity, also the common name of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "heapless::String<ID_LEN>", into = "heapless::String<ID_LEN>")]
pub struct NodeId(heapless::String<ID_LEN>);

/// A string that is not a well-formed ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ID {0:?}: expected {ID_LEN} characters of a-z and 0-9")]
pub struct BadId(pub String);

impl NodeId {
    /// Derives an ID from 16 random bytes (the caller brings the randomness, so the core
    /// stays deterministic in tests).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        let mut n = u128::from_le_bytes(bytes);
        let mut s = heapless::String::new();
        for _ in 0..ID_LEN {
            let digit = (n % 36) as u32;
            n /= 36;
            let _ = s.push(char::from_digit(digit, 36).unwrap_or('0'));
        }
        Self(s)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, as `docker ... ls` abbreviates.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<heapless::String<ID_LEN>> for NodeId {
    type Error = BadId;
    fn try_from(s: heapless::String<ID_LEN>) -> Result<Self, BadId> {
        s.as_str().parse()
    }
}

impl From<NodeId> for heapless::String<ID_LEN> {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl core::str::FromStr for NodeId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        let ok = s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        match heapless::String::try_from(s) {
            Ok(h) if ok => Ok(Self(h)),
            _ => Err(BadId(s.to_owned())),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_random_bytes_are_well_formed_and_parse_back() {
        for seed in 0..50u8 {
            let id = NodeId::from_random([seed.wrapping_mul(37); 16]);
            assert_eq!(id.as_str().len(), ID_LEN);
            assert_eq!(id.as_str().parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn malformed_ids_are_refused_at_decode() {
        let bytes =
            postcard::to_allocvec(&heapless::String::<25>::try_from("UPPER-case-and-dashes-xxx").unwrap()).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bytes).is_err());
        assert!("short".parse::<NodeId>().is_err());
    }
}
