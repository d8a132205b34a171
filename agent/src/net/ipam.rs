//! IP address management: which container holds which address of the subnet, kept in
//! one small JSON file under the network's state directory and rewritten atomically
//! (temporary file, fsync, rename) on each change, so an agent restart or a power cut
//! never hands out an address that a running container still holds.
//!
//! [`Allocations`] is the pure part (no I/O); [`Ipam`] adds the file. Addresses are
//! handed out round-robin from a persisted cursor, so an address just released is the
//! last to be reused (stale ARP entries in peers fade first). One `Ipam` per file: the
//! agent is the only writer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::NetError;
use super::subnet::Subnet;
use super::valid_id;

/// The allocation file is refused beyond this size: a full /16 with long IDs fits.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Which container holds which address. Pure data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    subnet: Subnet,
    /// Offset (from the network address) where the next search starts.
    next: u32,
    by_id: BTreeMap<String, Ipv4Addr>,
    #[serde(skip)]
    in_use: BTreeSet<Ipv4Addr>,
}

impl Allocations {
    /// Nothing allocated yet.
    pub fn new(subnet: Subnet) -> Self {
        Self { subnet, next: 2, by_id: BTreeMap::new(), in_use: BTreeSet::new() }
    }

    /// The address `id` holds.
    pub fn get(&self, id: &str) -> Option<Ipv4Addr> {
        self.by_id.get(id).copied()
    }

    /// Every (container, address) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.by_id.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Gives `id` a free address. An `id` that holds one already keeps it.
    pub fn allocate(&mut self, id: &str) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = self.get(id) {
            return Ok(ip);
        }
        let size = self.subnet.size();
        for step in 0..size {
            let offset = (self.next.wrapping_add(step)) % size;
            if !self.subnet.is_assignable(offset) {
                continue;
            }
            let Some(ip) = self.subnet.nth(offset) else {
                continue;
            };
            if self.in_use.contains(&ip) {
                continue;
            }
            self.next = (offset + 1) % size;
            self.in_use.insert(ip);
            self.by_id.insert(id.to_string(), ip);
            return Ok(ip);
        }
        Err(NetError::SubnetExhausted { subnet: self.subnet.to_string(), in_use: self.by_id.len() })
    }

    /// Frees what `id` holds; `None` if it held nothing.
    pub fn release(&mut self, id: &str) -> Option<Ipv4Addr> {
        let ip = self.by_id.remove(id)?;
        self.in_use.remove(&ip);
        Some(ip)
    }

    /// Checks what came from disk and rebuilds the in-use index.
    fn validate(mut self, subnet: Subnet) -> Result<Self, String> {
        if self.subnet != subnet {
            return Err(format!("they are for subnet {} but the network is configured with {subnet}", self.subnet));
        }
        self.in_use.clear();
        for (id, ip) in &self.by_id {
            if !valid_id(id) {
                return Err(format!("container id {id:?} is invalid"));
            }
            let ok = self.subnet.offset(*ip).is_some_and(|o| self.subnet.is_assignable(o));
            if !ok {
                return Err(format!("{ip} (for {id}) is not assignable in {subnet}"));
            }
            if !self.in_use.insert(*ip) {
                return Err(format!("{ip} is allocated twice"));
            }
        }
        self.next %= self.subnet.size();
        Ok(self)
    }
}

/// [`Allocations`] backed by a file.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    state: Allocations,
}

impl Ipam {
    /// Loads `path` (an absent file means nothing is allocated).
    pub fn load(path: &Path, subnet: Subnet) -> Result<Self, NetError> {
        let bad = |reason: String| NetError::IpamState { path: path.to_path_buf(), reason };
        let state = match std::fs::File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::new(subnet),
            Err(e) => return Err(bad(e.to_string())),
            Ok(f) => {
                let mut text = String::new();
                f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
                if text.len() as u64 > MAX_FILE_BYTES {
                    return Err(bad(format!("larger than {MAX_FILE_BYTES} bytes")));
                }
                let parsed: Allocations = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                parsed.validate(subnet).map_err(bad)?
            }
        };
        Ok(Self { path: path.to_path_buf(), state })
    }

    /// What is allocated.
    pub fn state(&self) -> &Allocations {
        &self.state
    }

    /// Allocates for `id` and persists; on a write failure nothing changes.
    pub fn allocate(&mut self, id: &str) -> Result<Ipv4Addr, NetError> {
        let before = self.state.clone();
        let ip = self.state.allocate(id)?;
        if before != self.state {
            if let Err(e) = self.save() {
                self.state = before;
                return Err(e);
            }
        }
        Ok(ip)
    }

    /// Releases what `id` holds and persists; releasing nothing is fine.
    pub fn release(&mut self, id: &str) -> Result<Option<Ipv4Addr>, NetError> {
        let before = self.state.clone();
        let ip = self.state.release(id);
        if ip.is_some() {
            if let Err(e) = self.save() {
                self.state = before;
                return Err(e);
            }
        }
        Ok(ip)
    }

    /// Allocates for `id` in memory only: the caller then writes [`Ipam::to_write`]
    /// (off the runtime's thread: [`super::Network`]) and releases again if that fails.
    pub fn allocate_unsaved(&mut self, id: &str) -> Result<Ipv4Addr, NetError> {
        self.state.allocate(id)
    }

    /// Releases what `id` holds in memory only; the file keeps holding it (which is
    /// safe: the address is only kept from reuse) until the caller writes.
    pub fn release_unsaved(&mut self, id: &str) -> Option<Ipv4Addr> {
        self.state.release(id)
    }

    /// The file's path and the bytes it should hold now, for [`Ipam::write`].
    pub fn to_write(&self) -> Result<(PathBuf, Vec<u8>), NetError> {
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| NetError::io("encoding address allocations", e.into()))?;
        Ok((self.path.clone(), json))
    }

    /// Replaces the file at `path` with `bytes`, atomically and durably (two fsyncs).
    pub fn write(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
        shoal_link::files::write_private(path, bytes)
            .map_err(|e| NetError::io(format!("writing {}", path.display()), e))
    }

    fn save(&self) -> Result<(), NetError> {
        let (path, bytes) = self.to_write()?;
        Self::write(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn never_twice_while_in_use_and_exhaustion_is_clear() {
        let mut a = Allocations::new(subnet("10.77.0.0/29")); // 5 assignable: .2 .. .6
        let ips: Vec<_> = (0..5).map(|i| a.allocate(&format!("c{i}")).unwrap()).collect();
        let distinct: BTreeSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), 5);
        assert!(!ips.contains(&Ipv4Addr::new(10, 77, 0, 1)));
        assert!(!ips.contains(&Ipv4Addr::new(10, 77, 0, 7)));
        let err = a.allocate("c5").unwrap_err();
        assert!(err.is_exhausted(), "{err}");
        assert!(err.to_string().contains("no free address left in 10.77.0.0/29"));
        // Releasing one frees exactly that one.
        assert_eq!(a.release("c2"), Some(ips[2]));
        assert_eq!(a.allocate("c6").unwrap(), ips[2]);
        // Same id keeps its address.
        assert_eq!(a.allocate("c0").unwrap(), ips[0]);
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let mut a = Allocations::new(subnet("10.77.0.0/24"));
        let first = a.allocate("a").unwrap();
        a.release("a");
        let second = a.allocate("b").unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn file_round_trip_and_validation() {
        let dir = std::env::temp_dir().join(format!("shoal-ipam-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ipam.json");
        let _ = std::fs::remove_file(&path);
        let s = subnet("10.77.9.0/24");
        let mut ipam = Ipam::load(&path, s).unwrap();
        let ip = ipam.allocate("one").unwrap();
        let again = Ipam::load(&path, s).unwrap();
        assert_eq!(again.state().get("one"), Some(ip));
        // Another subnet is refused, clearly.
        let err = Ipam::load(&path, subnet("10.77.8.0/24")).unwrap_err();
        assert!(err.to_string().contains("configured with 10.77.8.0/24"), "{err}");
        // A corrupt file is refused.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Ipam::load(&path, s).is_err());
        // A duplicate address is refused.
        let dup = r#"{"subnet":"10.77.9.0/24","next":2,"by_id":{"a":"10.77.9.2","b":"10.77.9.2"}}"#;
        std::fs::write(&path, dup).unwrap();
        let err = Ipam::load(&path, s).unwrap_err();
        assert!(err.to_string().contains("allocated twice"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
