//! The keys of encrypted overlay networks (`--opt encrypted`) and their rotation: a
//! pure state machine driven by the manager's clock and a source of random bytes.
//!
//! Each encrypted network has a secret ([`OverlayKey`]: 32 random bytes and an ID)
//! from which boards derive their IPsec SAs. Every `period` (Swarm's: 12 h) a new one
//! replaces it in three steps, [`step_of`] apart, so that every board has a key before
//! any peer sends with it and still accepts the old one until no peer sends with it:
//!
//! 1. *introduced*: boards accept the new key too (`{send: old, accept: new}`);
//! 2. *switched*: boards send with the new one, still accept the old (`{send: new, accept: old}`);
//! 3. *steady*: the old one is gone (`{send: new}`).
//!
//! Keys live in the manager's memory only: a restarted manager makes new ones, which
//! boards take as one change of keys (traffic between two boards pauses until both
//! have the new view, usually milliseconds). They reach a board only in its view of a
//! network present on it ([`fill`]); nothing here logs them and their Debug output is
//! redacted.

use std::collections::BTreeMap;

use shoal_proto::networks::{Network, NetworkId, NetworkView, OverlayKey, OverlayKeys};

use crate::Millis;

/// Swarm's rotation period.
pub const DEFAULT_PERIOD: Millis = 12 * 60 * 60 * 1000;

/// The time between the steps of one rotation: a quarter of the period, between 1 s and
/// 30 s (long enough for every board with a session to get each view).
pub fn step_of(period: Millis) -> Millis {
    (period / 4).clamp(1000, 30_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Steady,
    Introduced,
    Switched,
}

#[derive(Debug, Clone)]
struct Entry {
    keys: OverlayKeys,
    phase: Phase,
    /// When the next step is due.
    next: Millis,
}

/// Every encrypted network's keys.
#[derive(Debug, Clone)]
pub struct Keyring {
    period: Millis,
    entries: BTreeMap<NetworkId, Entry>,
}

impl Keyring {
    /// A keyring rotating every `period` milliseconds (at least 4 s).
    pub fn new(period: Millis) -> Self {
        Self { period: period.max(4000), entries: BTreeMap::new() }
    }

    /// Brings the keyring to `now` for `networks`: keys for new encrypted networks, none
    /// for removed ones, the due rotation steps. Returns whether any key changed and
    /// when the next step is due.
    pub fn step(
        &mut self,
        now: Millis,
        networks: &[Network],
        random: &mut dyn FnMut() -> [u8; 32],
    ) -> (bool, Option<Millis>) {
        let before = self.entries.len();
        self.entries.retain(|id, _| networks.iter().any(|n| n.spec.encrypted && &n.id == id));
        let mut changed = before != self.entries.len();
        let step = step_of(self.period);
        for n in networks.iter().filter(|n| n.spec.encrypted) {
            let e = self.entries.entry(n.id.clone()).or_insert_with(|| {
                changed = true;
                Entry {
                    keys: OverlayKeys { send: OverlayKey { id: 1, secret: random() }, accept: None },
                    phase: Phase::Steady,
                    next: now + self.period,
                }
            });
            while e.next <= now {
                changed = true;
                match e.phase {
                    Phase::Steady => {
                        let id = e.keys.send.id.wrapping_add(1);
                        e.keys.accept = Some(OverlayKey { id, secret: random() });
                        e.phase = Phase::Introduced;
                        e.next += step;
                    }
                    Phase::Introduced => {
                        let new = e.keys.accept.take().expect("an introduced key");
                        e.keys.accept = Some(std::mem::replace(&mut e.keys.send, new));
                        e.phase = Phase::Switched;
                        e.next += step;
                    }
                    Phase::Switched => {
                        e.keys.accept = None;
                        e.phase = Phase::Steady;
                        e.next += self.period - 2 * step;
                    }
                }
                // A manager that slept through steps takes them one per call, so boards
                // see each (the caller runs again at once: `next` is in the past).
                if e.next <= now {
                    e.next = now;
                    break;
                }
            }
        }
        (changed, self.entries.values().map(|e| e.next).min())
    }

    /// Network `id`'s keys, if it is encrypted and known.
    pub fn keys(&self, id: &NetworkId) -> Option<&OverlayKeys> {
        self.entries.get(id).map(|e| &e.keys)
    }
}

/// Puts each encrypted network's keys into a board's view (which holds only networks
/// present on the board).
pub fn fill(view: &mut [NetworkView], keys: &Keyring) {
    for v in view.iter_mut().filter(|v| v.encrypted) {
        v.keys = keys.keys(&v.id).cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::networks::NetworkSpec;

    fn network(n: u8, encrypted: bool) -> Network {
        let mut spec = NetworkSpec::new(shoal_proto::text(&format!("n{n}")).unwrap());
        spec.encrypted = encrypted;
        Network {
            id: NetworkId::from_random([n; 16]),
            spec,
            subnet: shoal_proto::networks::Subnet::parse(&format!("10.0.{n}.0/24")).unwrap(),
            gateway: std::net::Ipv4Addr::new(10, 0, n, 1),
            vni: 4096 + u32::from(n),
            created_at_ms: 0,
            ingress: false,
        }
    }

    fn counter() -> impl FnMut() -> [u8; 32] {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 32]
        }
    }

    #[test]
    fn only_encrypted_networks_get_keys_and_removed_ones_lose_them() {
        let mut r = Keyring::new(60_000);
        let mut rnd = counter();
        let nets = [network(1, true), network(2, false)];
        let (changed, next) = r.step(0, &nets, &mut rnd);
        assert!(changed);
        assert_eq!(next, Some(60_000));
        assert!(r.keys(&nets[0].id).is_some() && r.keys(&nets[1].id).is_none());
        assert_eq!(r.step(10, &nets, &mut rnd), (false, Some(60_000)));
        assert!(r.step(20, &nets[1..], &mut rnd).0);
        assert!(r.keys(&nets[0].id).is_none());
    }

    #[test]
    fn a_rotation_introduces_then_switches_then_drops() {
        let period = 40_000;
        let step = step_of(period);
        assert_eq!(step, 10_000);
        let mut r = Keyring::new(period);
        let mut rnd = counter();
        let nets = [network(1, true)];
        let id = &nets[0].id;
        r.step(0, &nets, &mut rnd);
        let first = r.keys(id).unwrap().clone();
        assert_eq!((first.send.id, first.accept.is_none()), (1, true));
        let mut seen = vec![first.clone()];
        let mut t = 0;
        for _ in 0..3 {
            let (_, next) = r.step(t, &nets, &mut rnd);
            t = next.unwrap();
            assert!(r.step(t, &nets, &mut rnd).0);
            seen.push(r.keys(id).unwrap().clone());
        }
        assert_eq!(seen[1].send, first.send);
        let new = seen[1].accept.clone().unwrap();
        assert_eq!(new.id, 2);
        assert_ne!(new.secret, first.send.secret);
        assert_eq!((seen[2].send.clone(), seen[2].accept.clone()), (new.clone(), Some(first.send.clone())));
        assert_eq!((seen[3].send.clone(), seen[3].accept.clone()), (new, None));
        // The next rotation starts a whole period after the first did.
        assert_eq!(r.step(t, &nets, &mut rnd).1, Some(2 * period));
    }

    #[test]
    fn a_late_manager_takes_one_step_per_call() {
        let mut r = Keyring::new(40_000);
        let mut rnd = counter();
        let nets = [network(1, true)];
        r.step(0, &nets, &mut rnd);
        let (changed, next) = r.step(1_000_000, &nets, &mut rnd);
        assert!(changed);
        assert_eq!(next, Some(1_000_000));
        assert!(r.keys(&nets[0].id).unwrap().accept.is_some());
    }

    #[test]
    fn views_get_the_keys_of_their_encrypted_networks_only() {
        let mut r = Keyring::new(60_000);
        let nets = [network(1, true), network(2, false)];
        r.step(0, &nets, &mut counter());
        let view = |n: &Network| NetworkView {
            id: n.id.clone(),
            name: n.spec.name.clone(),
            vni: n.vni,
            subnet: n.subnet,
            gateway: n.gateway,
            encrypted: n.spec.encrypted,
            peers: Default::default(),
            services: Default::default(),
            tasks: Default::default(),
            truncated: false,
            board_address: None,
            published: Default::default(),
            keys: None,
        };
        let mut views = vec![view(&nets[0]), view(&nets[1])];
        fill(&mut views, &r);
        assert_eq!(views[0].keys.as_ref(), r.keys(&nets[0].id));
        assert!(views[0].keys.is_some() && views[1].keys.is_none());
        // An encrypted network the keyring does not know (yet) gets none.
        let mut views = vec![view(&network(3, true))];
        fill(&mut views, &r);
        assert!(views[0].keys.is_none());
    }
}
