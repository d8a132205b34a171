//! The names a container may resolve, per network, as Swarm defines them:
//!
//! - `<service>`: the service's virtual IP (endpoint mode `vip`), or the addresses of its
//!   running tasks (`dnsrr`);
//! - `tasks.<service>`: the addresses of its running tasks, in either mode;
//! - `<task name>` (`web.1.<task id>`) and the task ID alone: that task's address;
//! - a stack's service `<stack>_<name>` also as `<name>` (and `tasks.<name>`), Docker's
//!   alias of a stack service on its networks, when no other service there has that
//!   name.
//!
//! A container sees only the names of the networks it is attached to. Pure data: the
//! agent rebuilds a [`Names`] from what the manager sends and swaps it in whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// How long a virtual IP may be cached: it lives as long as the service.
pub const VIP_TTL: u32 = 600;
/// Task addresses change with failover and scaling: never cached.
pub const TASK_TTL: u32 = 0;

/// One service on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceNames {
    vip: Option<Ipv4Addr>,
    tasks: BTreeSet<Ipv4Addr>,
}

/// One network's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NetworkNames {
    services: BTreeMap<String, ServiceNames>,
    tasks: BTreeMap<String, Ipv4Addr>,
}

impl NetworkNames {
    /// The service `name`, or the one stack service (`<stack>_<name>`) it is short for.
    fn service(&self, name: &str) -> Option<&ServiceNames> {
        self.services.get(name).or_else(|| {
            let mut short =
                self.services.iter().filter(|(n, _)| n.split_once('_').is_some_and(|(_, rest)| rest == name));
            match (short.next(), short.next()) {
                (Some((_, s)), None) => Some(s),
                _ => None,
            }
        })
    }
}

/// What a name resolves to for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Addresses (at least one), with their time-to-live.
    Addresses(Vec<Ipv4Addr>, u32),
    /// A name of the cluster with no address now (a service with no running task).
    Empty,
    /// Not a cluster name on the client's networks.
    Unknown,
}

/// Every cluster name on a board, by network ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    networks: BTreeMap<String, NetworkNames>,
}

impl Names {
    /// Records service `service` on `network`, with its virtual IP when it has one
    /// (endpoint mode `vip`); `dnsrr` services have none.
    pub fn add_service(&mut self, network: &str, service: &str, vip: Option<Ipv4Addr>) {
        let net = self.networks.entry(network.to_owned()).or_default();
        net.services.entry(service.to_ascii_lowercase()).or_default().vip = vip;
    }

    /// Records a running task of `service` on `network` at `ip`, by its name
    /// (`web.1.<id>`) and its ID.
    pub fn add_task(&mut self, network: &str, service: &str, task_name: &str, task_id: &str, ip: Ipv4Addr) {
        let net = self.networks.entry(network.to_owned()).or_default();
        net.services.entry(service.to_ascii_lowercase()).or_default().tasks.insert(ip);
        net.tasks.insert(task_name.to_ascii_lowercase(), ip);
        net.tasks.insert(task_id.to_ascii_lowercase(), ip);
    }

    /// What `name` (lower case, no trailing dot) resolves to for a client attached to
    /// `networks`. `rotate` turns task lists round so successive queries spread load.
    pub fn resolve(&self, networks: &[&str], name: &str, rotate: usize) -> Resolution {
        let mut addresses: Vec<Ipv4Addr> = Vec::new();
        let mut known = false;
        let mut ttl = VIP_TTL;
        let (tasks_of, bare) = match name.strip_prefix("tasks.") {
            Some(service) => (true, service),
            None => (false, name),
        };
        for net in networks.iter().filter_map(|n| self.networks.get(*n)) {
            if let Some(s) = net.service(bare) {
                known = true;
                match (tasks_of, s.vip) {
                    (false, Some(vip)) => addresses.push(vip),
                    _ => {
                        ttl = TASK_TTL;
                        addresses.extend(&s.tasks);
                    }
                }
            } else if let Some(ip) = (!tasks_of).then(|| net.tasks.get(name)).flatten() {
                known = true;
                ttl = TASK_TTL;
                addresses.push(*ip);
            }
        }
        if !known {
            return Resolution::Unknown;
        }
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            return Resolution::Empty;
        }
        let n = addresses.len();
        addresses.rotate_left(rotate % n);
        Resolution::Addresses(addresses, ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, d)
    }

    fn lab() -> Names {
        let mut n = Names::default();
        n.add_service("atsea", "appserver", Some(ip(100)));
        n.add_task("atsea", "appserver", "appserver.1.abc", "abc", ip(2));
        n.add_task("atsea", "appserver", "appserver.2.def", "def", ip(3));
        n.add_service("atsea", "database", None);
        n.add_task("atsea", "database", "database.1.ghi", "ghi", ip(4));
        n.add_service("other", "hidden", Some(Ipv4Addr::new(10, 0, 2, 100)));
        n.add_service("atsea", "idle", None);
        n
    }

    #[test]
    fn swarm_names_resolve() {
        let n = lab();
        let on = ["atsea"];
        assert_eq!(n.resolve(&on, "appserver", 0), Resolution::Addresses(vec![ip(100)], VIP_TTL));
        assert_eq!(n.resolve(&on, "tasks.appserver", 0), Resolution::Addresses(vec![ip(2), ip(3)], TASK_TTL));
        assert_eq!(n.resolve(&on, "tasks.appserver", 1), Resolution::Addresses(vec![ip(3), ip(2)], TASK_TTL));
        assert_eq!(n.resolve(&on, "database", 0), Resolution::Addresses(vec![ip(4)], TASK_TTL));
        assert_eq!(n.resolve(&on, "appserver.2.def", 0), Resolution::Addresses(vec![ip(3)], TASK_TTL));
        assert_eq!(n.resolve(&on, "ghi", 0), Resolution::Addresses(vec![ip(4)], TASK_TTL));
        assert_eq!(n.resolve(&on, "idle", 0), Resolution::Empty);
        let mut stacks = lab();
        stacks.add_service("atsea", "lab_cache", None);
        stacks.add_task("atsea", "lab_cache", "lab_cache.1.jkl", "jkl", ip(5));
        assert_eq!(stacks.resolve(&on, "cache", 0), Resolution::Addresses(vec![ip(5)], TASK_TTL), "a stack's alias");
        assert_eq!(stacks.resolve(&on, "tasks.cache", 0), Resolution::Addresses(vec![ip(5)], TASK_TTL));
        stacks.add_service("atsea", "other_cache", None);
        assert_eq!(stacks.resolve(&on, "cache", 0), Resolution::Unknown, "two stacks' caches: no alias");
        assert_eq!(n.resolve(&on, "example.org", 0), Resolution::Unknown);
    }

    #[test]
    fn only_shared_networks_are_visible() {
        let n = lab();
        assert_eq!(n.resolve(&["atsea"], "hidden", 0), Resolution::Unknown);
        assert_eq!(n.resolve(&[], "appserver", 0), Resolution::Unknown);
        assert!(matches!(n.resolve(&["other"], "hidden", 0), Resolution::Addresses(..)));
    }

    proptest::proptest! {
        /// Every running task is resolvable by name, by ID and in `tasks.<service>`; no
        /// address appears twice in an answer.
        #[test]
        fn every_task_resolves(tasks in proptest::collection::btree_map(1u8..250, 0u8..4, 1..40)) {
            let mut n = Names::default();
            for (d, svc) in &tasks {
                let service = format!("s{svc}");
                n.add_service("net", &service, None);
                n.add_task("net", &service, &format!("{service}.{d}.t{d}"), &format!("t{d}"), ip(*d));
            }
            for (d, svc) in &tasks {
                let by_name = n.resolve(&["net"], &format!("s{svc}.{d}.t{d}"), 0);
                proptest::prop_assert_eq!(by_name, Resolution::Addresses(vec![ip(*d)], TASK_TTL));
                let Resolution::Addresses(all, _) = n.resolve(&["net"], &format!("tasks.s{svc}"), *d as usize) else {
                    panic!("tasks.s{svc} does not resolve");
                };
                proptest::prop_assert!(all.contains(&ip(*d)));
                let unique: BTreeSet<_> = all.iter().collect();
                proptest::prop_assert_eq!(unique.len(), all.len());
            }
        }
    }
}
